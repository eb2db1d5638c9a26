//! One open repository and what the mover does with it: back up, restore, forget, prune, list, measure.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustic_core::repofile::{SnapshotFile, SnapshotId};
use rustic_core::{
    BackupOptions, ConfigOptions, Credentials, KeyOptions, LocalDestination, LsOptions, OpenStatus,
    ParentOptions, PathList, PruneOptions, RepositoryBackends, RepositoryOptions, RestoreOptions,
    SnapshotGroupCriterion, SnapshotOptions,
};
use serde::{Deserialize, Serialize};

use super::location::{RepositoryLocation, S3Credentials};
use super::{Error, Result};

/// Repository format 2: compressed packs; restic reads it from 0.14 on.
const REPOSITORY_VERSION: u32 = 2;

/// The repository password (`FREEZEFRAME_REPOSITORY_PASSWORD`, `RESTIC_PASSWORD` for stock restic).
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// A password; empty ones are refused (restic refuses them too).
    pub fn new(text: impl Into<String>) -> Result<Password> {
        let text = text.into();
        if text.is_empty() {
            return Err(Error::EmptyPassword);
        }
        Ok(Password(text))
    }

    /// A password read from a file: its first line, as restic's `--password-file` reads it.
    pub fn from_file_content(content: &str) -> Result<Password> {
        Password::new(content.lines().next().unwrap_or_default())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// What a backup records besides the data: who and what it is, so the next backup of the same
/// volume finds this one as its parent (same host, same path) and reads only changed files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    host: String,
    path_label: String,
    tags: Vec<String>,
}

impl SnapshotSpec {
    /// `host`: the snapshot's host (e.g. the namespace); `path_label`: the one path segment the
    /// directory is recorded as (`/<label>`, e.g. the PVC name), whatever its mount point; `tags`:
    /// `key=value` labels (e.g. `policy=shop`, `backup=20261123T120000Z`).
    pub fn new(
        host: impl Into<String>,
        path_label: impl Into<String>,
        tags: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<SnapshotSpec> {
        let host = host.into();
        let path_label = path_label.into();
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        let invalid = |field, value: &str, reason| Error::Invalid {
            field,
            value: value.to_string(),
            reason,
        };
        if host.trim().is_empty() || host.contains(char::is_control) {
            return Err(invalid(
                "--host",
                &host,
                "must be non-empty text without control characters",
            ));
        }
        if path_label.is_empty()
            || path_label == "."
            || path_label == ".."
            || path_label.contains(['/', '\\'])
            || path_label.contains(char::is_control)
        {
            return Err(invalid(
                "--path-label",
                &path_label,
                "must be one path segment (e.g. the PVC name), without `/`",
            ));
        }
        for tag in &tags {
            let valid_key = tag.split_once('=').is_some_and(|(k, _)| !k.trim().is_empty());
            if !valid_key || tag.contains(',') || tag.contains(char::is_control) {
                return Err(invalid(
                    "--tag",
                    tag,
                    "must be key=value with a non-empty key and no comma (restic splits tags at commas)",
                ));
            }
        }
        Ok(SnapshotSpec {
            host,
            path_label,
            tags,
        })
    }

    /// The path the snapshot records: `/<path label>`.
    pub fn snapshot_path(&self) -> PathBuf {
        PathBuf::from(format!("/{}", self.path_label))
    }
}

/// What a backup did: the contract printed by `freezeframe mover backup` as its last stdout line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoverReport {
    /// The repository snapshot id (64 hex digits; restic accepts any unique prefix).
    pub snapshot_id: String,
    /// Files in the snapshot.
    pub files: u64,
    /// Directories in the snapshot (the root included).
    pub dirs: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Of those, bytes that were new to the repository (before compression).
    pub bytes_new: u64,
    /// Of those, bytes the repository already held (deduplicated).
    pub bytes_reused: u64,
    /// Wall time of the backup.
    pub duration_seconds: f64,
}

/// What a restore did: the contract printed by `freezeframe mover restore` as its last stdout line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    /// The snapshot restored (full id).
    pub snapshot_id: String,
    /// Files restored (including ones already present and unchanged).
    pub files: u64,
    /// Bytes of file content restored.
    pub bytes: u64,
    /// Wall time of the restore.
    pub duration_seconds: f64,
}

/// One snapshot of the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// Full id.
    pub id: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// Its host.
    pub host: String,
    /// The paths it records (`/<path label>`).
    pub paths: Vec<String>,
    /// Its tags.
    pub tags: Vec<String>,
}

/// The repository's size as it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStats {
    /// Bytes of every file of the repository (config, keys, snapshots, index, packs).
    pub total_bytes: u64,
    /// Bytes of the pack files (the data and trees).
    pub pack_bytes: u64,
    /// Number of pack files.
    pub packs: u64,
    /// Number of snapshots.
    pub snapshots: u64,
}

/// How prune deletes the packs that no remaining snapshot references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    /// Two-phase, safe while other movers write: unreferenced packs are marked, and packs marked at
    /// least `grace` ago are deleted. Run regularly, each run deletes what an earlier one marked.
    Marked {
        /// How long a marked pack is kept before deletion (rustic's and this default: 23 h).
        grace: Duration,
    },
    /// Delete unreferenced packs at once. Only when nothing else uses the repository.
    Instant,
}

impl Default for PruneMode {
    fn default() -> Self {
        PruneMode::Marked {
            grace: Duration::from_secs(23 * 3600),
        }
    }
}

/// An open repository.
#[derive(Debug)]
pub struct Repository {
    inner: rustic_core::Repository<OpenStatus>,
    /// To open it again by its master key (no password hashing): indexing consumes an open repository,
    /// and rustic's open state cannot be cloned.
    backends: RepositoryBackends,
    location: RepositoryLocation,
}

impl Repository {
    /// Open the repository at `location`, creating it (format 2, zstd) when it does not exist yet.
    ///
    /// Creation is not safe against a concurrent creation of the same repository: create it once
    /// (e.g. from the backup run) before starting several movers.
    pub fn open_or_init(
        location: &RepositoryLocation,
        credentials: &S3Credentials,
        password: &Password,
    ) -> Result<Repository> {
        let backends = location.backends(credentials)?;
        let repo = Self::unopened(location, &backends)?;
        let exists = repo
            .config_id()
            .map_err(|source| location.failed("look for the config", source))?
            .is_some();
        let key = Credentials::password(&password.0);
        let inner = if exists {
            repo.open(&key)
                .map_err(|source| location.failed("open", source))?
        } else {
            tracing::info!(repository = %location, "creating the repository (format 2, zstd)");
            let config = ConfigOptions::default().set_version(REPOSITORY_VERSION);
            repo.init(&key, &KeyOptions::default(), &config)
                .map_err(|source| location.failed("create", source))?
        };
        Ok(Repository {
            inner,
            backends,
            location: location.clone(),
        })
    }

    /// Open an existing repository (restores never create one).
    pub fn open(
        location: &RepositoryLocation,
        credentials: &S3Credentials,
        password: &Password,
    ) -> Result<Repository> {
        let backends = location.backends(credentials)?;
        let inner = Self::unopened(location, &backends)?
            .open(&Credentials::password(&password.0))
            .map_err(|source| location.failed("open", source))?;
        Ok(Repository {
            inner,
            backends,
            location: location.clone(),
        })
    }

    /// This repository opened once more, by its master key, to be indexed for one operation.
    fn reopened(&self) -> Result<rustic_core::Repository<OpenStatus>> {
        Self::unopened(&self.location, &self.backends)?
            .open(&Credentials::Masterkey(self.inner.key()))
            .map_err(|source| self.location.failed("open", source))
    }

    fn unopened(
        location: &RepositoryLocation,
        backends: &RepositoryBackends,
    ) -> Result<rustic_core::Repository<()>> {
        // No local cache: a mover Job starts with an empty disk, and its pod may not have a writable home.
        let options = RepositoryOptions::default().no_cache(true);
        rustic_core::Repository::new(&options, backends).map_err(|source| location.failed("set up", source))
    }

    /// Where this repository is.
    pub fn location(&self) -> &RepositoryLocation {
        &self.location
    }

    /// Back `source` up as one snapshot recording the path `/<path label>`.
    ///
    /// The parent is the latest snapshot with the same host and path, so an unchanged volume is not
    /// read again: files whose size and mtime match the parent's are taken from it. ctime and inode
    /// are ignored, since every backup mounts a fresh copy of the volume (a PVC from a snapshot).
    pub fn backup(&self, source: &Path, spec: &SnapshotSpec) -> Result<MoverReport> {
        let started = Instant::now();
        let source = std::fs::canonicalize(source).map_err(|source_error| Error::Io {
            operation: "read the backup source",
            path: source.display().to_string(),
            source: source_error,
        })?;
        let metadata = std::fs::metadata(&source).map_err(|e| Error::Io {
            operation: "read the backup source",
            path: source.display().to_string(),
            source: e,
        })?;
        if !metadata.is_dir() {
            return Err(Error::Io {
                operation: "back up",
                path: source.display().to_string(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let source_text = source.to_str().ok_or_else(|| Error::Io {
            operation: "back up",
            path: source.display().to_string(),
            source: std::io::Error::other("the path is not UTF-8"),
        })?;
        let operation = format!(
            "backup of {} as {}",
            source.display(),
            spec.snapshot_path().display()
        );
        let failed = |source| self.location.failed(operation.clone(), source);

        let mut options = SnapshotOptions::default().host(spec.host.clone());
        for tag in &spec.tags {
            options = options.add_tags(tag).map_err(failed)?;
        }
        let snapshot = options.to_snapshot().map_err(failed)?;
        let parent = ParentOptions::default()
            .group_by(
                SnapshotGroupCriterion::new()
                    .hostname(true)
                    .paths(true)
                    .label(false)
                    .tags(false),
            )
            .ignore_ctime(true);
        // Note: rustic 0.13 compares inodes only when `ignore_inode` is *set* (the flag is inverted in
        // `Parent::is_parent`), so leaving it unset is what ignores them.
        let backup = BackupOptions::default()
            .as_path(Some(spec.snapshot_path()))
            .parent_opts(parent);
        let paths = PathList::from_string(source_text).map_err(failed)?;

        let indexed = self.reopened()?.to_indexed_ids().map_err(failed)?;
        let snapshot = indexed.backup(&backup, &paths, snapshot).map_err(failed)?;
        let summary = snapshot.summary.clone().unwrap_or_default();
        let report = MoverReport {
            snapshot_id: full_id(&snapshot.id),
            files: summary.total_files_processed,
            dirs: summary.total_dirs_processed,
            bytes: summary.total_bytes_processed,
            bytes_new: summary.data_added_files,
            bytes_reused: summary
                .total_bytes_processed
                .saturating_sub(summary.data_added_files),
            duration_seconds: started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            repository = %self.location,
            snapshot = %report.snapshot_id,
            files = report.files,
            bytes = report.bytes,
            bytes_new = report.bytes_new,
            "backed up {}",
            source.display()
        );
        Ok(report)
    }

    /// Restore snapshot `id` (full id or unique prefix) into `target`, which is created if missing:
    /// the recorded directory's contents become `target`'s contents (modes, symlinks, empty files,
    /// nested directories, times; ownership by numeric id where the process may set it).
    pub fn restore(&self, id: &str, target: &Path) -> Result<RestoreReport> {
        let started = Instant::now();
        let snapshot = self.snapshot(id)?;
        let snapshot_id = full_id(&snapshot.id);
        let operation = format!("restore of snapshot {snapshot_id} into {}", target.display());
        let failed = |source| self.location.failed(operation.clone(), source);
        let root = snapshot.paths.iter().next().cloned().unwrap_or_default();

        std::fs::create_dir_all(target).map_err(|source| Error::Io {
            operation: "create the restore target",
            path: target.display().to_string(),
            source,
        })?;
        let indexed = self.reopened()?.to_indexed().map_err(failed)?;
        let node = match indexed.node_from_snapshot_and_path(&snapshot, &root) {
            Ok(node) => node,
            // An empty volume is recorded without its directory node: there is nothing to write.
            Err(_)
                if snapshot
                    .summary
                    .as_ref()
                    .is_some_and(|s| s.total_files_processed == 0) =>
            {
                return Ok(RestoreReport {
                    snapshot_id,
                    files: 0,
                    bytes: 0,
                    duration_seconds: started.elapsed().as_secs_f64(),
                });
            }
            Err(source) => return Err(failed(source)),
        };
        let entries = indexed.ls(&node, &LsOptions::default()).map_err(failed)?;
        let destination =
            LocalDestination::new(&format!("{}/", target.display()), true, false).map_err(failed)?;
        let options = RestoreOptions::default().numeric_id(true);
        let plan = indexed
            .prepare_restore(&options, entries.clone(), &destination, false)
            .map_err(failed)?;
        let files = plan.stats.files;
        let report = RestoreReport {
            snapshot_id,
            files: files.restore + files.unchanged + files.verified + files.modify,
            bytes: plan.restore_size + plan.matched_size,
            duration_seconds: 0.0,
        };
        indexed
            .restore(plan, &options, entries, &destination)
            .map_err(failed)?;
        Ok(RestoreReport {
            duration_seconds: started.elapsed().as_secs_f64(),
            ..report
        })
    }

    /// Forget snapshots (full ids or unique prefixes). Their data stays until [`Repository::prune`].
    pub fn forget(&self, ids: &[String]) -> Result<()> {
        let snapshots: Vec<SnapshotFile> = ids.iter().map(|id| self.snapshot(id)).collect::<Result<_>>()?;
        let ids: Vec<_> = snapshots.iter().map(|s| s.id).collect();
        self.inner
            .delete_snapshots(&ids)
            .map_err(|source| self.location.failed("forget", source))
    }

    /// Remove the data no remaining snapshot references (see [`PruneMode`]); data of every remaining
    /// snapshot is kept. Packs that are only partly unused are kept or repacked by rustic's defaults
    /// (at most 5 % of the repository left unused).
    pub fn prune(&self, mode: PruneMode) -> Result<()> {
        let failed = |source| self.location.failed("prune", source);
        let mut options = PruneOptions::default();
        match mode {
            PruneMode::Marked { grace } => {
                let grace = rustic_core::jiff::Span::new()
                    .try_seconds(i64::try_from(grace.as_secs()).unwrap_or(i64::MAX))
                    .unwrap_or_else(|_| rustic_core::jiff::Span::new().hours(23));
                options.keep_delete = grace;
            }
            PruneMode::Instant => options.instant_delete = true,
        }
        let plan = self.inner.prune_plan(&options).map_err(failed)?;
        self.inner.prune(&options, plan).map_err(failed)
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut snapshots = self
            .inner
            .get_all_snapshots()
            .map_err(|source| self.location.failed("list snapshots", source))?;
        snapshots.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(snapshots
            .into_iter()
            .map(|s| SnapshotInfo {
                id: full_id(&s.id),
                time: s.time.timestamp().to_string(),
                host: s.hostname,
                paths: s.paths.iter().cloned().collect(),
                tags: s.tags.iter().cloned().collect(),
            })
            .collect())
    }

    /// The repository's stored size.
    pub fn stats(&self) -> Result<RepositoryStats> {
        let infos = self
            .inner
            .infos_files()
            .map_err(|source| self.location.failed("measure", source))?;
        let mut stats = RepositoryStats {
            total_bytes: 0,
            pack_bytes: 0,
            packs: 0,
            snapshots: 0,
        };
        for info in &infos.repo {
            stats.total_bytes += info.size;
            match info.tpe {
                rustic_core::FileType::Pack => {
                    stats.pack_bytes += info.size;
                    stats.packs += info.count;
                }
                rustic_core::FileType::Snapshot => stats.snapshots += info.count,
                _ => {}
            }
        }
        Ok(stats)
    }

    /// The snapshot with this id or unique id prefix.
    fn snapshot(&self, id: &str) -> Result<SnapshotFile> {
        let not_found = || Error::NoSnapshot {
            location: self.location.to_string(),
            id: id.to_string(),
        };
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let ids: Vec<SnapshotId> = self
            .inner
            .list()
            .map_err(|source| self.location.failed("list snapshots", source))?
            .filter(|s: &SnapshotId| full_id(s).starts_with(&id.to_ascii_lowercase()))
            .collect();
        let [found] = ids.as_slice() else {
            return Err(not_found());
        };
        let mut snapshots = self
            .inner
            .get_snapshots(&[full_id(found)])
            .map_err(|source| self.location.failed(format!("read snapshot {found}"), source))?;
        snapshots.pop().ok_or_else(not_found)
    }
}

/// A snapshot id as 64 hex digits (rustic's `Display` shortens it to 8).
fn full_id(id: &SnapshotId) -> String {
    id.to_hex().as_str().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_specs_when_validated_then_bad_host_label_and_tags_are_named() {
        SnapshotSpec::new("shop", "data-db-0", ["policy=shop", "backup=20261123T120000Z"]).unwrap();
        for (host, label, tag, field) in [
            ("", "data", "a=b", "--host"),
            ("shop", "", "a=b", "--path-label"),
            ("shop", "a/b", "a=b", "--path-label"),
            ("shop", "..", "a=b", "--path-label"),
            ("shop", "data", "novalue", "--tag"),
            ("shop", "data", "=v", "--tag"),
            ("shop", "data", "a=b,c", "--tag"),
        ] {
            let message = SnapshotSpec::new(host, label, [tag]).unwrap_err().to_string();
            assert!(message.starts_with(field), "{message}");
        }
    }

    #[test]
    fn given_label_then_snapshot_path_is_one_absolute_segment() {
        let spec = SnapshotSpec::new("h", "data-db-0", Vec::<String>::new()).unwrap();
        assert_eq!(spec.snapshot_path(), PathBuf::from("/data-db-0"));
    }

    #[test]
    fn given_passwords_then_empty_is_refused_file_takes_first_line_and_debug_hides_it() {
        assert!(matches!(Password::new(""), Err(Error::EmptyPassword)));
        let password = Password::from_file_content("s3cret\nignored\n").unwrap();
        assert_eq!(password.0, "s3cret");
        assert!(!format!("{password:?}").contains("s3cret"));
        assert!(Password::from_file_content("\n").is_err());
    }

    #[test]
    fn given_report_when_serialized_then_field_names_are_the_mover_contract() {
        let report = MoverReport {
            snapshot_id: "ab".into(),
            files: 1,
            dirs: 2,
            bytes: 3,
            bytes_new: 1,
            bytes_reused: 2,
            duration_seconds: 0.5,
        };
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"snapshotId":"ab","files":1,"dirs":2,"bytes":3,"bytesNew":1,"bytesReused":2,"durationSeconds":0.5}"#
        );
        let restore = RestoreReport {
            snapshot_id: "ab".into(),
            files: 1,
            bytes: 3,
            duration_seconds: 0.5,
        };
        assert_eq!(
            serde_json::to_string(&restore).unwrap(),
            r#"{"snapshotId":"ab","files":1,"bytes":3,"durationSeconds":0.5}"#
        );
    }
}
