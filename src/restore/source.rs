//! Reading a backup back: locate it (id or latest), verify every artifact against the manifest, and
//! extract the resources archive into a private temp dir, refusing unsafe entries.
//!
//! The archive is downloaded once into a temp file while its sha256 is computed; it is only
//! decrypted and decompressed after the digest (of the stored bytes, the ciphertext when encrypted)
//! matched the manifest, so a tampered archive is never even parsed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::io::AsyncWriteExt;

use super::{Error, Result, io_error, store_error};
use crate::backup::{Manifest, Status};
use crate::store::crypt::Opening;
use crate::store::{self, BackupId, BackupKeys, HashingReader, Layout, ObjectStore, Written, layout};

/// Which backup to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupRef {
    /// The newest complete (not Failed) backup.
    Latest,
    /// One backup id.
    Id(BackupId),
}

impl FromStr for BackupRef {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "latest" {
            return Ok(BackupRef::Latest);
        }
        BackupId::parse(s)
            .map(BackupRef::Id)
            .ok_or_else(|| format!("{s:?} is neither `latest` nor a backup id like 20261123T120000Z"))
    }
}

impl std::fmt::Display for BackupRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupRef::Latest => f.write_str("latest"),
            BackupRef::Id(id) => write!(f, "{id}"),
        }
    }
}

/// A backup found in the store, with its parsed manifest.
#[derive(Debug, Clone)]
pub struct Located {
    /// Policy.
    pub policy: String,
    /// Id.
    pub id: BackupId,
    /// Its keys.
    pub keys: BackupKeys,
    /// Its manifest.
    pub manifest: Manifest,
    /// How its artifacts are read (decrypted with a matching identity when encrypted); `Plain` until
    /// the restore checked the identities.
    pub opening: Opening,
}

/// Find the backup `wanted` (of `policy`, or of any policy when the id is unambiguous).
///
/// `latest` skips incomplete and Failed backups; an explicit id that is incomplete or Failed is an error.
pub async fn locate(
    store: &dyn ObjectStore,
    layout: &Layout,
    policy: Option<&str>,
    wanted: &BackupRef,
) -> Result<Located> {
    let prefix = policy.map_or_else(|| layout.backups(), |p| layout.policy(p));
    let objects = store
        .list(&prefix)
        .await
        .map_err(store_error(format!("listing {prefix}")))?;
    // (id, policy) → has a manifest
    let mut found: BTreeMap<(BackupId, String), bool> = BTreeMap::new();
    for object in &objects {
        if let Some((p, id, artifact)) = layout.parse(&object.key) {
            *found.entry((id, p.to_string())).or_default() |= artifact == layout::MANIFEST;
        }
    }
    let not_found = || Error::NotFound {
        wanted: match policy {
            Some(p) => format!("{wanted} of policy {p}"),
            None => wanted.to_string(),
        },
        location: store.location(),
    };
    match wanted {
        BackupRef::Id(id) => {
            let matching: Vec<(&String, bool)> = found
                .iter()
                .filter(|((i, _), _)| i == id)
                .map(|((_, p), m)| (p, *m))
                .collect();
            let (p, has_manifest) = match matching.as_slice() {
                [] => return Err(not_found()),
                [one] => *one,
                many => {
                    return Err(Error::Ambiguous {
                        id: id.to_string(),
                        policies: many.iter().map(|(p, _)| p.to_string()).collect(),
                    });
                }
            };
            let keys = layout.backup(p, id);
            if !has_manifest {
                return Err(Error::Incomplete {
                    key: keys.root().to_string(),
                });
            }
            let manifest = read_manifest(store, &keys, p, id).await?;
            if manifest.status == Status::Failed {
                return Err(Error::FailedBackup { id: id.to_string() });
            }
            Ok(Located {
                policy: p.clone(),
                id: id.clone(),
                keys,
                manifest,
                opening: Opening::Plain,
            })
        }
        BackupRef::Latest => {
            for ((id, p), has_manifest) in found.iter().rev() {
                if !has_manifest {
                    continue;
                }
                let keys = layout.backup(p, id);
                let manifest = read_manifest(store, &keys, p, id).await?;
                if manifest.status == Status::Failed {
                    continue;
                }
                return Ok(Located {
                    policy: p.clone(),
                    id: id.clone(),
                    keys,
                    manifest,
                    opening: Opening::Plain,
                });
            }
            Err(not_found())
        }
    }
}

async fn read_manifest(
    store: &dyn ObjectStore,
    keys: &BackupKeys,
    policy: &str,
    id: &BackupId,
) -> Result<Manifest> {
    let key = keys.manifest();
    let bytes = store::get_bytes(store, &key)
        .await
        .map_err(store_error(format!("reading {key}")))?;
    let manifest = Manifest::from_json(&bytes).map_err(|source| Error::Manifest {
        key: key.clone(),
        source,
    })?;
    if manifest.policy != policy || manifest.backup_id != id.as_str() {
        return Err(Error::WrongManifest {
            key,
            expected: format!("{policy}/{id}"),
            found: format!("{}/{}", manifest.policy, manifest.backup_id),
        });
    }
    Ok(manifest)
}

/// The verified backup's objects, extracted into a temp dir removed on drop.
#[derive(Debug)]
pub struct Extracted {
    dir: tempfile::TempDir,
    /// Archive paths of the objects, in archive order.
    pub paths: Vec<String>,
}

impl Extracted {
    /// Where the object at archive `path` was extracted (the path was validated on extraction).
    pub fn file(&self, path: &str) -> PathBuf {
        self.dir.path().join("objects").join(path)
    }

    /// Read and parse the object at archive `path`.
    pub fn object(&self, path: &str) -> Result<serde_json::Value> {
        let file = self.file(path);
        let text = std::fs::read(&file).map_err(io_error("read", file))?;
        serde_yaml::from_slice(&text).map_err(|source| Error::Object {
            path: path.to_string(),
            source,
        })
    }
}

fn describe(w: &Written) -> String {
    format!("{} bytes sha256 {}", w.size, w.sha256)
}

fn check(artifact: &str, expected: &Written, actual: &Written) -> Result<()> {
    if expected != actual {
        return Err(Error::Tampered {
            artifact: artifact.to_string(),
            expected: describe(expected),
            actual: describe(actual),
        });
    }
    Ok(())
}

/// Verify every artifact the manifest lists (size, then sha256 of the stored bytes) and extract the
/// resources archive. Any mismatch is an error before anything is parsed or written.
pub async fn verify_and_extract(store: &dyn ObjectStore, located: &Located) -> Result<Extracted> {
    let artifacts = &located.manifest.artifacts;
    let Some(resources) = artifacts.get(layout::RESOURCES) else {
        return Err(Error::MissingArtifact {
            artifact: layout::RESOURCES.to_string(),
        });
    };
    // Cheap checks first: every listed artifact exists with the recorded size.
    for (name, expected) in artifacts {
        store::check_key(name).map_err(|_| Error::UnsafeEntry {
            path: name.clone(),
            reason: "artifact path in the manifest is not a plain relative path".into(),
        })?;
        let key = located.keys.artifact(name);
        let size = store
            .head(&key)
            .await
            .map_err(store_error(format!("checking {key}")))?
            .ok_or_else(|| Error::MissingArtifact {
                artifact: name.clone(),
            })?;
        if size != expected.size {
            return Err(Error::Tampered {
                artifact: name.clone(),
                expected: describe(expected),
                actual: format!("{size} bytes"),
            });
        }
    }
    for (name, expected) in artifacts.iter().filter(|(n, _)| *n != layout::RESOURCES) {
        let actual = hash_artifact(store, &located.keys.artifact(name), None).await?;
        check(name, expected, &actual)?;
    }
    let dir = tempfile::Builder::new()
        .prefix("freezeframe-restore-")
        .tempdir()
        .map_err(io_error("create a temp dir in", std::env::temp_dir()))?;
    let download = dir.path().join(layout::RESOURCES);
    let actual = hash_artifact(store, &located.keys.resources(), Some(&download)).await?;
    check(layout::RESOURCES, resources, &actual)?;
    let objects = dir.path().join("objects");
    let opening = located.opening.clone();
    let paths = tokio::task::spawn_blocking(move || extract(&download, &objects, &opening))
        .await
        .map_err(|e| Error::Io {
            operation: "extract",
            path: layout::RESOURCES.into(),
            source: std::io::Error::other(e),
        })??;
    Ok(Extracted { dir, paths })
}

/// Stream an artifact through sha256, optionally saving it to `save`.
async fn hash_artifact(store: &dyn ObjectStore, key: &str, save: Option<&Path>) -> Result<Written> {
    let reader = store
        .get(key)
        .await
        .map_err(store_error(format!("reading {key}")))?;
    let mut hashing = HashingReader::new(reader);
    let read_error = |source| Error::Io {
        operation: "read",
        path: key.into(),
        source,
    };
    match save {
        Some(path) => {
            let mut file = tokio::fs::File::create(path)
                .await
                .map_err(io_error("create", path))?;
            tokio::io::copy(&mut hashing, &mut file)
                .await
                .map_err(read_error)?;
            file.flush().await.map_err(io_error("write", path))?;
        }
        None => {
            tokio::io::copy(&mut hashing, &mut tokio::io::sink())
                .await
                .map_err(read_error)?;
        }
    }
    Ok(hashing.finish())
}

/// Check an archive entry path: `resources/<group>/<version>/<plural>/<namespace>/<name>.yaml` or
/// `cluster/<group>/<version>/<plural>/<name>.yaml`, relative, no `.`/`..`/empty segments.
pub fn check_entry_path(path: &str) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::UnsafeEntry {
            path: path.to_string(),
            reason: reason.to_string(),
        })
    };
    if store::check_key(path).is_err() {
        return refuse("not a plain relative path (absolute, `..`, `.` or empty segment)");
    }
    let segments: Vec<&str> = path.split('/').collect();
    let expected = match segments[0] {
        "resources" => 6,
        "cluster" => 5,
        _ => return refuse("outside resources/ and cluster/"),
    };
    if segments.len() != expected || !path.ends_with(".yaml") {
        return refuse("not <group>/<version>/<plural>/[<namespace>/]<name>.yaml");
    }
    Ok(())
}

/// Decrypt (when encrypted), decompress and unpack the verified archive into `objects`, refusing
/// anything but regular files at safe paths. Returns the archive paths in order.
fn extract(archive: &Path, objects: &Path, opening: &Opening) -> Result<Vec<String>> {
    let file = std::fs::File::open(archive).map_err(io_error("open", archive))?;
    let plain = opening
        .sync_reader(layout::RESOURCES, file)
        .map_err(Error::Encryption)?;
    let decoder = zstd::Decoder::new(plain).map_err(io_error("decompress", archive))?;
    let mut tar = tar::Archive::new(decoder);
    let read_error = io_error("read", archive);
    let entries = tar.entries().map_err(read_error)?;
    let mut paths = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(io_error("read", archive))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(Error::UnsafeEntry {
                path: raw,
                reason: format!("{kind:?} entries are not allowed (only regular files)"),
            });
        }
        check_entry_path(&raw)?;
        let target = objects.join(&raw);
        if target.exists() {
            return Err(Error::UnsafeEntry {
                path: raw,
                reason: "appears twice in the archive".into(),
            });
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        let mut out = std::fs::File::create(&target).map_err(io_error("create", &target))?;
        std::io::copy(&mut entry, &mut out).map_err(io_error("extract", &target))?;
        paths.push(raw);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_safe_and_unsafe_entry_paths_then_only_the_archive_layout_is_accepted() {
        check_entry_path("resources/core/v1/configmaps/shop/web.yaml").unwrap();
        check_entry_path("cluster/apiextensions.k8s.io/v1/customresourcedefinitions/carts.x.yaml").unwrap();
        for bad in [
            "/etc/passwd",
            "resources/core/v1/configmaps/../../../../etc/x.yaml",
            "resources/core/v1/configmaps/shop/./x.yaml",
            "resources//v1/configmaps/shop/x.yaml",
            "elsewhere/core/v1/configmaps/shop/x.yaml",
            "resources/core/v1/configmaps/x.yaml",
            "cluster/core/v1/namespaces/shop.json",
        ] {
            assert!(check_entry_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn given_backup_ref_text_then_latest_or_id_parse_and_garbage_is_refused() {
        assert_eq!("latest".parse::<BackupRef>().unwrap(), BackupRef::Latest);
        assert_eq!(
            "20261123T120000Z-1".parse::<BackupRef>().unwrap().to_string(),
            "20261123T120000Z-1"
        );
        assert!("yesterday".parse::<BackupRef>().is_err());
    }
}
