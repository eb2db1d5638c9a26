//! The archive format: a tar stream (one file per object) compressed with zstd, written incrementally
//! into a [`pipe`] whose other end is uploaded, so nothing is collected in memory.

//!
//! Entries longer than tar's 100-byte name field get a GNU long-name record, which every tar reader
//! (GNU tar, bsdtar, the `tar` crate) understands.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use crate::store::pipe::{PipeReader, PipeWriter, pipe};

const BLOCK: usize = 512;
const NAME_FIELD: usize = 100;

/// Writes tar entries to an async writer.
pub struct TarWriter<W> {
    inner: W,
    mtime: u64,
}

impl<W: AsyncWrite + Unpin> TarWriter<W> {
    /// A writer stamping every entry with `mtime` (seconds since the epoch).
    pub fn new(inner: W, mtime: u64) -> Self {
        TarWriter { inner, mtime }
    }

    /// Append a regular file.
    pub async fn append(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let name = path.as_bytes();
        if name.len() > NAME_FIELD {
            let mut long = name.to_vec();
            long.push(0);
            let header = self.header(b"././@LongLink", long.len(), tar::EntryType::GNULongName);
            self.write_entry(&header, &long).await?;
        }
        let header = self.header(name, data.len(), tar::EntryType::Regular);
        self.write_entry(&header, data).await
    }

    /// Write the end-of-archive marker and return the inner writer (not shut down).
    pub async fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&[0; 2 * BLOCK]).await?;
        self.inner.flush().await?;
        Ok(self.inner)
    }

    fn header(&self, name: &[u8], size: usize, kind: tar::EntryType) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        let field = &mut header.as_old_mut().name;
        let n = name.len().min(NAME_FIELD);
        field[..n].copy_from_slice(&name[..n]);
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_mtime(self.mtime);
        header.set_entry_type(kind);
        header.set_cksum();
        header
    }

    async fn write_entry(&mut self, header: &tar::Header, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(header.as_bytes()).await?;
        self.inner.write_all(data).await?;
        let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.inner.write_all(&[0; BLOCK][..padding]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn given_entries_with_long_and_short_names_when_read_by_tar_crate_then_all_come_back() {
        let long = format!(
            "resources/apiextensions.k8s.io/v1/{}/ns/name.yaml",
            "x".repeat(120)
        );
        let mut writer = TarWriter::new(Vec::new(), 1_700_000_000);
        writer.append("a.yaml", b"kind: A\n").await.unwrap();
        writer.append(&long, &[1; 1000]).await.unwrap();
        writer.append("empty", b"").await.unwrap();
        let bytes = writer.finish().await.unwrap();

        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            seen.push((path, data.len()));
        }
        assert_eq!(
            seen,
            vec![("a.yaml".into(), 8), (long, 1000), ("empty".into(), 0)]
        );
    }
}
