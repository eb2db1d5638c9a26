//! The one key layout: every object-store key freezeframe reads or writes is built (and parsed) here.
//!
//! ```text
//! <prefix>/backups/<policy>/<backup-id>/resources.tar.zst
//!                                      /dumps/<dump>/<namespace>/<pod>
//!                                      /volumes.json
//!                                      /manifest.json      (written last: a backup without it is incomplete)
//! <prefix>/repository/                     the restic-format repository of moved volume data (`crate::mover`)
//! ```

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{ObjectStore, Result};

/// The archive of exported objects.
pub const RESOURCES: &str = "resources.tar.zst";
/// Volume snapshot references.
pub const VOLUMES: &str = "volumes.json";
/// The commit marker, written last.
pub const MANIFEST: &str = "manifest.json";
/// Directory of logical dumps.
pub const DUMPS: &str = "dumps";

const BACKUPS: &str = "backups";
const REPOSITORY: &str = "repository";
const ID_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// The key layout under a store prefix (e.g. an S3 storage's `prefix`; empty for the store root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// The layout under `prefix` (leading/trailing `/` ignored).
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// `<prefix>/backups/`: every backup of every policy.
    pub fn backups(&self) -> String {
        self.join(&format!("{BACKUPS}/"))
    }

    /// `<prefix>/backups/<policy>/`: every backup of one policy.
    pub fn policy(&self, policy: &str) -> String {
        self.join(&format!("{BACKUPS}/{policy}/"))
    }

    /// `<prefix>/repository/`: the restic-format repository that moved volume data lives in, shared by
    /// every policy and backup of this storage (deduplicated across them).
    pub fn repository(&self) -> String {
        self.join(&format!("{REPOSITORY}/"))
    }

    /// `<prefix>/repository-pruned.json`: when the repository was last pruned (outside the repository,
    /// which stock restic reads, and outside `backups/`).
    pub fn repository_pruned(&self) -> String {
        self.join("repository-pruned.json")
    }

    /// `<prefix>/.preflight/<unique>`: the probe written (and deleted) before a backup freezes anything.
    pub fn preflight_probe(&self, unique: &str) -> String {
        self.join(&format!(".preflight/{unique}"))
    }

    /// The keys of one backup.
    pub fn backup(&self, policy: &str, id: &BackupId) -> BackupKeys {
        BackupKeys {
            root: format!("{}{id}/", self.policy(policy)),
        }
    }

    /// Split a key of this layout into (policy, backup id, artifact path inside the backup).
    pub fn parse<'k>(&self, key: &'k str) -> Option<(&'k str, BackupId, &'k str)> {
        let rest = key.strip_prefix(&self.backups())?;
        let mut parts = rest.splitn(3, '/');
        let policy = parts.next().filter(|p| !p.is_empty())?;
        let id = BackupId::parse(parts.next()?)?;
        let artifact = parts.next().filter(|a| !a.is_empty())?;
        Some((policy, id, artifact))
    }

    fn join(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }
}

/// The keys of one backup: `<prefix>/backups/<policy>/<backup-id>/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupKeys {
    root: String,
}

impl BackupKeys {
    /// The backup's directory, ending in `/`.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `resources.tar.zst`.
    pub fn resources(&self) -> String {
        self.artifact(RESOURCES)
    }

    /// `volumes.json`.
    pub fn volumes(&self) -> String {
        self.artifact(VOLUMES)
    }

    /// `manifest.json`.
    pub fn manifest(&self) -> String {
        self.artifact(MANIFEST)
    }

    /// `dumps/<dump>/<namespace>/<pod>`.
    pub fn dump(&self, dump: &str, namespace: &str, pod: &str) -> String {
        self.artifact(&format!("{DUMPS}/{dump}/{namespace}/{pod}"))
    }

    /// The key of an artifact given by its path inside the backup (as the manifest records it).
    pub fn artifact(&self, name: &str) -> String {
        format!("{}{name}", self.root)
    }
}

/// A backup's id: its start time in UTC, `20261123T120000Z`, with `-N` appended when that second is
/// already taken. Ids sort by time as plain strings.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(String);

impl BackupId {
    /// The id for a backup started at `time` (to the second).
    pub fn at(time: DateTime<Utc>) -> BackupId {
        BackupId(time.format(ID_FORMAT).to_string())
    }

    /// Parse an id as written in keys; `None` if it is not one.
    pub fn parse(text: &str) -> Option<BackupId> {
        let (stamp, suffix) = match text.split_once('-') {
            Some((stamp, n)) => (stamp, Some(n)),
            None => (text, None),
        };
        NaiveDateTime::parse_from_str(stamp, ID_FORMAT).ok()?;
        if let Some(n) = suffix
            && (n.is_empty() || n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        Some(BackupId(text.to_string()))
    }

    /// The time the backup started (to the second).
    pub fn time(&self) -> DateTime<Utc> {
        let stamp = self.0.split('-').next().unwrap_or(&self.0);
        NaiveDateTime::parse_from_str(stamp, ID_FORMAT)
            .expect("validated on construction")
            .and_utc()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A new id for `policy` at `time` that no stored backup uses: `at(time)`, else `at(time)-1`, `-2`, ...
    pub async fn allocate(
        store: &dyn ObjectStore,
        layout: &Layout,
        policy: &str,
        time: DateTime<Utc>,
    ) -> Result<BackupId> {
        let base = BackupId::at(time);
        let taken: std::collections::BTreeSet<String> = store
            .list(&format!("{}{base}", layout.policy(policy)))
            .await?
            .iter()
            .filter_map(|o| layout.parse(&o.key).map(|(_, id, _)| id.0))
            .collect();
        let mut id = base.clone();
        let mut n = 0;
        while taken.contains(&id.0) {
            n += 1;
            id = BackupId(format!("{base}-{n}"));
        }
        Ok(id)
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn given_prefix_when_backup_keys_built_then_every_artifact_is_under_policy_and_id() {
        let layout = Layout::new("/clusters/prod/");
        let keys = layout.backup("shop", &BackupId::at(time("2026-11-23T12:00:00.7Z")));

        assert_eq!(keys.root(), "clusters/prod/backups/shop/20261123T120000Z/");
        assert_eq!(
            keys.resources(),
            "clusters/prod/backups/shop/20261123T120000Z/resources.tar.zst"
        );
        assert_eq!(
            keys.manifest(),
            "clusters/prod/backups/shop/20261123T120000Z/manifest.json"
        );
        assert_eq!(
            keys.volumes(),
            "clusters/prod/backups/shop/20261123T120000Z/volumes.json"
        );
        assert_eq!(
            keys.dump("pg", "shop", "db-0"),
            "clusters/prod/backups/shop/20261123T120000Z/dumps/pg/shop/db-0"
        );
    }

    #[test]
    fn given_prefix_when_repository_asked_then_it_sits_beside_backups() {
        assert_eq!(
            Layout::new("/clusters/prod/").repository(),
            "clusters/prod/repository/"
        );
        assert_eq!(Layout::new("").repository(), "repository/");
        assert!(Layout::new("x").parse("x/repository/config").is_none());
    }

    #[test]
    fn given_empty_prefix_when_keys_built_then_they_start_at_backups() {
        let keys = Layout::new("").backup("p", &BackupId::at(time("2026-01-01T00:00:00Z")));
        assert_eq!(keys.manifest(), "backups/p/20260101T000000Z/manifest.json");
    }

    #[test]
    fn given_built_key_when_parsed_then_policy_id_and_artifact_come_back() {
        let layout = Layout::new("x");
        let id = BackupId::parse("20261123T120000Z-2").unwrap();
        let key = layout.backup("shop", &id).dump("pg", "shop", "db-0");

        let (policy, parsed, artifact) = layout.parse(&key).unwrap();

        assert_eq!((policy, parsed, artifact), ("shop", id, "dumps/pg/shop/db-0"));
        assert!(layout.parse("x/backups/shop/not-an-id/manifest.json").is_none());
        assert!(
            layout
                .parse("y/backups/shop/20261123T120000Z/manifest.json")
                .is_none()
        );
    }

    #[test]
    fn given_ids_in_same_and_later_seconds_then_string_order_is_time_order() {
        let mut ids = [
            "20261123T120001Z",
            "20261123T120000Z-1",
            "20261123T120000Z",
            "20261123T115959Z",
        ]
        .map(|s| BackupId::parse(s).unwrap())
        .to_vec();
        ids.sort();
        let sorted: Vec<&str> = ids.iter().map(BackupId::as_str).collect();
        assert_eq!(
            sorted,
            [
                "20261123T115959Z",
                "20261123T120000Z",
                "20261123T120000Z-1",
                "20261123T120001Z"
            ]
        );
        assert_eq!(ids[2].time(), time("2026-11-23T12:00:00Z"));
    }

    #[test]
    fn given_malformed_ids_when_parsed_then_rejected() {
        for text in [
            "",
            "2026",
            "20261323T120000Z",
            "20261123T120000Z-",
            "20261123T120000Z-01",
            "x-1",
        ] {
            assert!(BackupId::parse(text).is_none(), "{text:?} accepted");
        }
    }
}
