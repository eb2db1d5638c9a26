//! A bounded in-memory pipe between a producer (archive writer, encryptor) and a store's streaming
//! upload, whose reader fails instead of ending when the producer gave up.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

/// An in-memory pipe of `capacity` bytes whose reader fails instead of reporting end-of-file when the
/// writer was dropped without being shut down, so a failed producer can never look like a short but
/// complete upload.
pub fn pipe(capacity: usize) -> (PipeWriter, PipeReader) {
    let (write, read) = tokio::io::duplex(capacity);
    let complete = Arc::new(AtomicBool::new(false));
    (
        PipeWriter {
            inner: write,
            complete: complete.clone(),
        },
        PipeReader {
            inner: read,
            complete,
        },
    )
}

/// The writing end of a [`pipe`]: `shutdown` marks the data complete.
pub struct PipeWriter {
    inner: DuplexStream,
    complete: Arc<AtomicBool>,
}

/// The reading end of a [`pipe`].
pub struct PipeReader {
    inner: DuplexStream,
    complete: Arc<AtomicBool>,
}

impl AsyncWrite for PipeWriter {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.complete.store(true, Ordering::Release);
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for PipeReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let at_end =
            matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0;
        if at_end && !self.complete.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive writer stopped before finishing",
            )));
        }
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn given_writer_shut_down_when_read_then_data_then_clean_end() {
        let (mut w, mut r) = pipe(16);
        let writing = async move {
            w.write_all(b"hello pipe").await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut out = Vec::new();
        let (_, read) = tokio::join!(writing, r.read_to_end(&mut out));
        read.unwrap();
        assert_eq!(out, b"hello pipe");
    }

    #[tokio::test]
    async fn given_writer_dropped_without_shutdown_when_read_then_error_not_end_of_file() {
        let (mut w, mut r) = pipe(16);
        let writing = async move {
            w.write_all(b"partial").await.unwrap();
            drop(w);
        };
        let mut out = Vec::new();
        let (_, read) = tokio::join!(writing, r.read_to_end(&mut out));
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
