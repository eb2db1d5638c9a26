//! The filesystem backend: objects are files under a root directory (`file:///path`).
//!
//! Writes are atomic and durable: data goes to a hidden temp file in the target directory, is fsynced,
//! renamed over the key, and the directory is fsynced. Temp files are never listed.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{ByteReader, Error, HashingReader, ObjectInfo, ObjectStore, Result, Written, check_key};

const TEMP_MARKER: &str = ".tmp-";
const COPY_BUFFER: usize = 256 * 1024;

/// A directory holding objects as files.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> FsStore {
        FsStore { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.display().to_string();
    move |source| Error::Io {
        operation,
        path,
        source,
    }
}

/// Removes a temp file when dropped while still armed: on errors and when the `put` future is dropped
/// (cancelled) before it finished.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

#[async_trait::async_trait]
impl ObjectStore for FsStore {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, body: &mut (dyn AsyncRead + Send + Unpin)) -> Result<Written> {
        let path = self.path(key)?;
        let dir = path
            .parent()
            .expect("a key has at least one segment")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io("create directory", &dir))?;
        let name = path.file_name().expect("checked key").to_string_lossy();
        let temp = dir.join(format!(".{name}{TEMP_MARKER}{}", uuid::Uuid::new_v4().simple()));
        let mut guard = TempGuard(Some(temp.clone()));
        let result = async {
            let mut file = tokio::fs::File::create(&temp)
                .await
                .map_err(io("create", &temp))?;
            let mut reader = HashingReader::new(body);
            let mut buffer = vec![0; COPY_BUFFER];
            loop {
                let n = reader.read(&mut buffer).await.map_err(|source| Error::Body {
                    key: key.to_string(),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                file.write_all(&buffer[..n]).await.map_err(io("write", &temp))?;
            }
            file.sync_all().await.map_err(io("fsync", &temp))?;
            Ok(reader.finish())
        }
        .await;
        let written = result?;
        tokio::fs::rename(&temp, &path)
            .await
            .map_err(io("rename into", &path))?;
        guard.0 = None;
        let directory = tokio::fs::File::open(&dir)
            .await
            .map_err(io("open directory", &dir))?;
        directory.sync_all().await.map_err(io("fsync directory", &dir))?;
        Ok(written)
    }

    async fn get(&self, key: &str) -> Result<ByteReader> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Box::pin(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound { key: key.into() }),
            Err(e) => Err(io("open", &path)(e)),
        }
    }

    async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("stat", &path)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // Walk from the deepest directory the prefix names; the rest of the prefix filters names.
        let start_dir = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let mut out = Vec::new();
        let mut pending = vec![(self.root.join(start_dir), start_dir.to_string())];
        while let Some((dir, key_dir)) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("read directory", &dir)(e)),
            };
            while let Some(entry) = entries.next_entry().await.map_err(io("read directory", &dir))? {
                let name = entry.file_name().to_string_lossy().into_owned();
                let key = if key_dir.is_empty() {
                    name.clone()
                } else {
                    format!("{key_dir}/{name}")
                };
                let kind = entry.file_type().await.map_err(io("stat", &entry.path()))?;
                if kind.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        pending.push((entry.path(), key));
                    }
                } else if kind.is_file() && !is_temp(&name) && key.starts_with(prefix) {
                    let size = entry.metadata().await.map_err(io("stat", &entry.path()))?.len();
                    out.push(ObjectInfo { key, size });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            let path = self.path(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &path)(e)),
            }
            // Remove directories left empty, up to (not including) the root; stop at the first non-empty.
            let mut dir = path.parent();
            while let Some(d) = dir.filter(|d| *d != self.root && d.starts_with(&self.root)) {
                if tokio::fs::remove_dir(d).await.is_err() {
                    break;
                }
                dir = d.parent();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BackupId, Layout, get_bytes, put_bytes, verify};

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        (dir, store)
    }

    /// A reader that yields some bytes, then fails.
    struct Failing(usize);

    impl AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("source broke")));
            }
            let n = self.0.min(buf.remaining());
            buf.put_slice(&vec![7; n]);
            self.0 -= n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn given_object_put_when_read_back_then_bytes_size_and_checksum_match() {
        let (_dir, store) = store();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();

        let written = put_bytes(&store, "a/b/c.bin", &data).await.unwrap();

        assert_eq!(written.size, data.len() as u64);
        assert_eq!(get_bytes(&store, "a/b/c.bin").await.unwrap(), data);
        assert_eq!(store.head("a/b/c.bin").await.unwrap(), Some(data.len() as u64));
        verify(&store, "a/b/c.bin", &written).await.unwrap();
    }

    #[tokio::test]
    async fn given_body_that_fails_midway_when_put_then_no_object_and_no_temp_file_remain() {
        let (dir, store) = store();

        let error = store.put("x/obj", &mut Failing(300_000)).await.unwrap_err();

        assert!(matches!(error, Error::Body { .. }), "{error:?}");
        assert_eq!(store.head("x/obj").await.unwrap(), None);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("x")).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn given_objects_when_listed_by_prefix_then_only_matching_keys_sorted_with_sizes() {
        let (dir, store) = store();
        for key in ["b/p/2/m", "b/p/1/m", "b/p/1/dumps/x/y", "b/q/1/m", "b/p10/1/m"] {
            put_bytes(&store, key, key.as_bytes()).await.unwrap();
        }
        std::fs::write(dir.path().join("b/p/1/.m.tmp-abc"), "partial").unwrap();

        let listed = store.list("b/p/").await.unwrap();
        let keys: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
        let partial: Vec<String> = store
            .list("b/p")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();

        assert_eq!(keys, ["b/p/1/dumps/x/y", "b/p/1/m", "b/p/2/m"]);
        assert_eq!(listed[1].size, "b/p/1/m".len() as u64);
        assert_eq!(partial.len(), 4, "{partial:?}");
        assert!(store.list("nothing/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn given_keys_when_deleted_then_gone_and_empty_directories_removed() {
        let (dir, store) = store();
        put_bytes(&store, "b/p/1/m", b"1").await.unwrap();
        put_bytes(&store, "b/p/2/m", b"2").await.unwrap();

        store
            .delete(&["b/p/1/m".into(), "b/p/missing".into()])
            .await
            .unwrap();

        assert_eq!(store.head("b/p/1/m").await.unwrap(), None);
        assert!(!dir.path().join("b/p/1").exists());
        assert_eq!(store.head("b/p/2/m").await.unwrap(), Some(1));
    }

    #[tokio::test]
    async fn given_put_cancelled_midway_when_dropped_then_no_temp_file_remains() {
        let (dir, store) = store();
        let (mut writer, mut reader) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut writer, &[1; 512])
            .await
            .unwrap();
        let put = store.put("x/obj", &mut reader);

        // The writer never finishes, so the put is still waiting when the timeout drops it.
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(100), put).await;

        assert!(timed_out.is_err());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("x")).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn given_escaping_key_when_used_then_rejected_before_touching_disk() {
        let (_dir, store) = store();
        let error = put_bytes(&store, "../outside", b"x").await.unwrap_err();
        assert!(matches!(error, Error::InvalidKey { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn given_missing_object_when_get_then_not_found() {
        let (_dir, store) = store();
        assert!(matches!(store.get("nope").await, Err(Error::NotFound { .. })));
    }

    #[tokio::test]
    async fn given_id_taken_when_allocating_in_same_second_then_suffix_makes_it_unique() {
        let (_dir, store) = store();
        let layout = Layout::new("");
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .to_utc();

        let first = BackupId::allocate(&store, &layout, "p", now).await.unwrap();
        put_bytes(&store, &layout.backup("p", &first).manifest(), b"{}")
            .await
            .unwrap();
        let second = BackupId::allocate(&store, &layout, "p", now).await.unwrap();
        put_bytes(&store, &layout.backup("p", &second).resources(), b"x")
            .await
            .unwrap();
        let third = BackupId::allocate(&store, &layout, "p", now).await.unwrap();

        assert_eq!(first.as_str(), "20261123T120000Z");
        assert_eq!(second.as_str(), "20261123T120000Z-1");
        assert_eq!(third.as_str(), "20261123T120000Z-2");
    }
}
