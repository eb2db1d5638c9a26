//! The store layer: where finished backups are written to, listed from and pruned in.
//!
//! Every backend implements [`ObjectStore`] (streaming put with size and sha256 computed on the way,
//! streaming get, head, paginated list, batch delete), so export, list, restore and prune use one
//! interface and tests can wrap a backend to inject failures. Keys are never built by hand: they come
//! from [`layout::Layout`], the one place that knows `<prefix>/backups/<policy>/<backup-id>/...`.
//!
//! Backends: [`fs::FsStore`] (a directory, `file:///path`) and [`s3::S3Store`] (S3 and S3-compatible).

pub mod crypt;
pub mod fs;
pub mod layout;
pub mod pipe;
pub mod s3;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

pub use layout::{BackupId, BackupKeys, Layout};

use crate::policy::{Backend, S3Storage};

/// A stream of an object's bytes.
pub type ByteReader = Pin<Box<dyn AsyncRead + Send>>;

/// Result of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the object store layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key is empty, absolute or has `.`/`..`/empty segments (it could escape a directory store).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The object does not exist.
    #[error("object {key} does not exist")]
    NotFound {
        /// The key.
        key: String,
    },
    /// Reading the body given to `put` failed; nothing was committed.
    #[error("reading the data for {key} failed; nothing was written")]
    Body {
        /// The key being written.
        key: String,
        /// The reader's error.
        #[source]
        source: std::io::Error,
    },
    /// A filesystem operation failed.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An S3 request failed.
    #[error("S3 {operation} s3://{bucket}/{key} failed")]
    S3 {
        /// The API call.
        operation: &'static str,
        /// Bucket.
        bucket: String,
        /// Key or prefix.
        key: String,
        /// The SDK error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A storage URL is malformed or names an unknown scheme.
    #[error("storage URL {url:?}: {reason}; allowed: file:///absolute/path or s3://bucket[/prefix]")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// What the store holds differs from what was written.
    #[error("object {key}: wrote {expected}, the store has {actual}")]
    Mismatch {
        /// The key.
        key: String,
        /// What was written (size/sha256).
        expected: String,
        /// What the store reports.
        actual: String,
    },
    /// The storage asks for Object Lock but the bucket does not have it enabled.
    #[error(
        "bucket {bucket} does not have S3 Object Lock enabled ({reason}), but the storage sets s3.objectLock; create the bucket with Object Lock enabled (it cannot be turned on for every existing bucket) or remove s3.objectLock"
    )]
    ObjectLockDisabled {
        /// The bucket.
        bucket: String,
        /// What the store answered.
        reason: String,
    },
    /// An injected or otherwise unclassified failure (e.g. from a test wrapper).
    #[error("{0}")]
    Other(String),
}

/// What a completed `put` wrote: its size and sha256, computed while streaming.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    /// Bytes written.
    pub size: u64,
    /// Lower-case hex sha256 of the bytes.
    pub sha256: String,
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// An object store: a flat namespace of `/`-separated keys holding immutable blobs.
///
/// `put` commits atomically: a reader never sees a partial object, and an error (including one from the
/// body reader) leaves no object behind.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// A human-readable location (`file:///backups`, `s3://bucket`), for messages.
    fn location(&self) -> String;

    /// Stream `body` to `key` (replacing it), returning its size and sha256.
    async fn put(&self, key: &str, body: &mut (dyn AsyncRead + Send + Unpin)) -> Result<Written>;

    /// Stream the object's bytes.
    async fn get(&self, key: &str) -> Result<ByteReader>;

    /// The object's size, or `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>>;

    /// Every object whose key starts with `prefix`, sorted by key (all pages).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Delete the keys; keys that do not exist are not an error.
    async fn delete(&self, keys: &[String]) -> Result<()>;

    /// Until when the object cannot be deleted (S3 Object Lock retention); `None` = deletable now as
    /// far as the store knows. Stores without locks (the filesystem) always answer `None`.
    async fn locked_until(&self, _key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(None)
    }

    /// Whether every object written is kept by Object Lock retention (a probe could not be removed).
    fn locks_objects(&self) -> bool {
        false
    }

    /// Check, before a backup writes anything, that the store can honour its settings (an S3 bucket
    /// asked to lock objects has Object Lock enabled).
    async fn check_ready(&self) -> Result<()> {
        Ok(())
    }
}

/// Prove, before anything is frozen, that the store takes writes (and the credentials work): a small
/// probe object is written under `<prefix>/.preflight/` and deleted at once. Skipped on a store that
/// locks every object (the probe would stay; its `check_ready` already reached the bucket).
pub async fn probe_writable(store: &dyn ObjectStore, layout: &Layout) -> Result<()> {
    if store.locks_objects() {
        return Ok(());
    }
    let key = layout.preflight_probe(&uuid::Uuid::new_v4().simple().to_string());
    put_bytes(store, &key, b"freezeframe preflight: safe to delete\n").await?;
    store.delete(std::slice::from_ref(&key)).await
}

/// Write a small in-memory object.
pub async fn put_bytes(store: &dyn ObjectStore, key: &str, bytes: &[u8]) -> Result<Written> {
    let mut reader = bytes;
    store.put(key, &mut reader).await
}

/// Read a whole object into memory (manifests and other small objects only).
pub async fn get_bytes(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>> {
    let mut reader = store.get(key).await?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.map_err(|source| Error::Io {
        operation: "read",
        path: format!("{}/{key}", store.location()),
        source,
    })?;
    Ok(out)
}

/// Re-read `key` from the store and check it has exactly the size and sha256 that were written.
pub async fn verify(store: &dyn ObjectStore, key: &str, expected: &Written) -> Result<()> {
    let mut reader = store.get(key).await?;
    let mut hashing = HashingReader::new(&mut reader);
    tokio::io::copy(&mut hashing, &mut tokio::io::sink())
        .await
        .map_err(|source| Error::Io {
            operation: "read back",
            path: format!("{}/{key}", store.location()),
            source,
        })?;
    let actual = hashing.finish();
    if &actual != expected {
        return Err(Error::Mismatch {
            key: key.to_string(),
            expected: format!("{} bytes sha256 {}", expected.size, expected.sha256),
            actual: format!("{} bytes sha256 {}", actual.size, actual.sha256),
        });
    }
    Ok(())
}

/// Check a key is safe for every backend: relative, non-empty segments, no `.`/`..`, no NUL or `\`.
pub fn check_key(key: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.starts_with('/') {
        return bad("starts with /");
    }
    if key.contains('\0') || key.contains('\\') {
        return bad("contains NUL or backslash");
    }
    if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return bad("has an empty, `.` or `..` segment");
    }
    Ok(())
}

/// An `AsyncRead` adapter counting and hashing what passes through.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Size and sha256 of everything read so far.
    pub fn finish(self) -> Written {
        Written {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &poll {
            let new = &buf.filled()[before..];
            this.hasher.update(new);
            this.size += new.len() as u64;
        }
        poll
    }
}

/// Parse a `--storage` URL into a backend: `file:///abs/path` or
/// `s3://bucket[/prefix][?region=R&endpoint=URL&forcePathStyle=true]`.
pub fn backend_from_url(url: &str) -> Result<Backend> {
    let bad = |reason: &str| Error::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("file URLs need an absolute path (file:///path)"));
        }
        let trimmed = path.trim_end_matches('/');
        let path = if trimmed.is_empty() { "/" } else { trimmed };
        return Ok(Backend::Filesystem {
            path: path.to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket"));
        }
        let mut storage = S3Storage {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            region: None,
            endpoint: None,
            force_path_style: false,
            credentials_secret: None,
            server_side_encryption: None,
            kms_key_id: None,
            object_lock: None,
        };
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "region" => storage.region = Some(value.into_owned()),
                "endpoint" => storage.endpoint = Some(value.into_owned()),
                "forcePathStyle" => storage.force_path_style = value == "true",
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        return Ok(Backend::S3(storage));
    }
    Err(bad("unknown scheme"))
}

/// Open the store a backend describes, with the key layout for its prefix.
///
/// S3 credentials: `credentials` when given (read from the policy's Secret by the caller), else the
/// default AWS chain.
pub async fn open(
    backend: &Backend,
    credentials: Option<&s3::StaticCredentials>,
) -> (Arc<dyn ObjectStore>, Layout) {
    match backend {
        Backend::Filesystem { path } => (Arc::new(fs::FsStore::new(path)), Layout::new("")),
        Backend::S3(storage) => {
            let settings = s3::S3Settings {
                bucket: storage.bucket.clone(),
                prefix: Some(storage.prefix.clone()),
                region: storage.region.clone(),
                endpoint: storage.endpoint.clone(),
                force_path_style: storage.force_path_style,
            };
            let client = match credentials {
                Some(c) => s3::client_with_credentials(&settings, c).await,
                None => s3::client(&settings).await,
            };
            let store = s3::S3Store::new(client, &storage.bucket)
                .with_encryption(storage.server_side_encryption.clone(), storage.kms_key_id.clone())
                .with_object_lock(storage.object_lock);
            (Arc::new(store), Layout::new(&storage.prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn given_a_writable_store_when_probed_then_it_passes_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = fs::FsStore::new(dir.path());

        probe_writable(&store, &Layout::new("prod")).await.unwrap();

        assert!(store.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn given_a_store_that_cannot_be_written_when_probed_then_it_fails_naming_the_place() {
        let store = fs::FsStore::new("/proc/freezeframe-preflight");

        let err = probe_writable(&store, &Layout::new("")).await.unwrap_err();

        let text = crate::k8s::errors::chain(&err);
        assert!(text.contains("/proc/freezeframe-preflight"), "{text}");
    }

    use super::*;

    #[test]
    fn given_unsafe_keys_when_checked_then_each_is_rejected() {
        for key in ["", "/abs", "a//b", "a/../b", "./a", "a/.", "a\\b", "trailing/"] {
            assert!(check_key(key).is_err(), "{key:?} accepted");
        }
        check_key("backups/p/20260101T000000Z/manifest.json").unwrap();
    }

    #[test]
    fn given_file_url_when_parsed_then_filesystem_backend_with_path() {
        assert_eq!(
            backend_from_url("file:///var/backups/").unwrap(),
            Backend::Filesystem {
                path: "/var/backups".into()
            }
        );
        assert!(backend_from_url("file://relative").is_err());
        assert!(backend_from_url("ftp://x").is_err());
    }

    #[test]
    fn given_s3_url_with_query_when_parsed_then_settings_are_taken_from_it() {
        let Backend::S3(s3) = backend_from_url(
            "s3://bkt/clusters/prod/?region=eu-west-1&endpoint=http://m:9000&forcePathStyle=true",
        )
        .unwrap() else {
            panic!("not s3")
        };
        assert_eq!(s3.bucket, "bkt");
        assert_eq!(s3.prefix, "clusters/prod");
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://m:9000"));
        assert!(s3.force_path_style);
        assert!(backend_from_url("s3://bkt?colour=red").is_err());
    }

    #[tokio::test]
    async fn given_bytes_when_read_through_hashing_reader_then_size_and_sha256_match() {
        let data = b"hello world";
        let mut reader = HashingReader::new(&data[..]);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.unwrap();
        let written = reader.finish();
        assert_eq!(written.size, 11);
        assert_eq!(
            written.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }
}
