//! Moved volume data under retention: a pruned backup's repository snapshots are forgotten with it
//! ([`moved_snapshots`] reads them from its `volumes.json`), and the repository's own prune (deleting
//! packs that no remaining snapshot references) runs on its cadence, `repository.pruneEvery`
//! ([`prune_if_due`]), its last run recorded in the store next to the repository.
//!
//! Neither can remove data a kept backup needs: forgetting touches only the pruned backup's snapshots,
//! and the repository's prune keeps every pack a remaining snapshot references.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{self, Layout, ObjectStore};

/// The storage's repository as retention needs it: one narrow seam.
#[async_trait::async_trait]
pub trait MovedData: Send + Sync {
    /// Forget these repository snapshots (ids as recorded); ids no longer in the repository are fine.
    /// Returns how many were forgotten.
    async fn forget(&self, snapshot_ids: &[String]) -> Result<usize, String>;
    /// Delete the packs no remaining snapshot references (two-phase: safe while movers write).
    async fn prune(&self) -> Result<(), String>;
}

/// The repository snapshots (successful movers) a backup's `volumes.json` records.
pub fn moved_snapshots(volumes_json: &[u8]) -> Result<Vec<String>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Moved {
        #[serde(default)]
        snapshot_id: Option<String>,
    }
    #[derive(Deserialize)]
    struct Volume {
        #[serde(default)]
        moved: Option<Moved>,
    }
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        volumes: Vec<Volume>,
    }
    let file: File = serde_json::from_slice(volumes_json)?;
    Ok(file
        .volumes
        .into_iter()
        .filter_map(|v| v.moved?.snapshot_id)
        .collect())
}

/// The record of the repository's last prune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PruneRecord {
    /// When it finished.
    pub pruned_at: DateTime<Utc>,
}

/// Whether the repository's prune is due at `now`, last run at `last`, every `every`. Pure.
pub fn is_due(last: Option<DateTime<Utc>>, every: std::time::Duration, now: DateTime<Utc>) -> bool {
    match last {
        None => true,
        Some(last) => now
            .signed_duration_since(last)
            .to_std()
            .is_ok_and(|since| since >= every),
    }
}

/// What [`prune_if_due`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryPrune {
    /// Pruned now.
    Pruned,
    /// Not due: last pruned then.
    NotDue {
        /// The last prune.
        last: DateTime<Utc>,
    },
}

/// Prune the repository when its last prune (recorded at [`Layout::repository_pruned`]) is at least
/// `every` ago, then record this one. `Err` says what failed (the record is then unchanged, so the next
/// prune tries again).
pub async fn prune_if_due(
    store: &dyn ObjectStore,
    layout: &Layout,
    data: &dyn MovedData,
    every: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<RepositoryPrune, String> {
    let key = layout.repository_pruned();
    let last = match store::get_bytes(store, &key).await {
        Ok(bytes) => serde_json::from_slice::<PruneRecord>(&bytes)
            .ok()
            .map(|r| r.pruned_at),
        Err(store::Error::NotFound { .. }) => None,
        Err(e) => return Err(format!("reading {key}: {}", crate::k8s::errors::chain(&e))),
    };
    if let Some(last) = last.filter(|last| !is_due(Some(*last), every, now)) {
        return Ok(RepositoryPrune::NotDue { last });
    }
    data.prune().await?;
    let record = serde_json::to_vec(&PruneRecord { pruned_at: now }).expect("a record serializes");
    store::put_bytes(store, &key, &record)
        .await
        .map_err(|e| format!("writing {key}: {}", crate::k8s::errors::chain(&e)))?;
    Ok(RepositoryPrune::Pruned)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[test]
    fn given_volumes_json_when_reading_moved_snapshots_then_only_successful_movers_count() {
        let ids = moved_snapshots(
            br#"{"volumes": [
                {"namespace": "a", "pvc": "x", "moved": {"status": "Succeeded", "snapshotId": "s1"}},
                {"namespace": "a", "pvc": "y", "moved": {"status": "Failed", "error": "e"}},
                {"namespace": "a", "pvc": "z"}
            ], "groups": []}"#,
        )
        .unwrap();
        assert_eq!(ids, ["s1"]);
        assert!(moved_snapshots(b"[").is_err());
    }

    #[test]
    fn given_last_prune_when_checking_the_cadence_then_due_only_after_prune_every() {
        let now = "2026-12-04T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let week = Duration::from_secs(7 * 86_400);
        assert!(is_due(None, week, now));
        assert!(!is_due(Some(now - chrono::Duration::days(6)), week, now));
        assert!(is_due(Some(now - chrono::Duration::days(7)), week, now));
        assert!(
            !is_due(Some(now + chrono::Duration::days(1)), week, now),
            "a clock behind the record waits"
        );
    }

    #[derive(Default)]
    struct Repo {
        pruned: Mutex<u32>,
    }

    #[async_trait::async_trait]
    impl MovedData for Repo {
        async fn forget(&self, ids: &[String]) -> Result<usize, String> {
            Ok(ids.len())
        }
        async fn prune(&self) -> Result<(), String> {
            *self.pruned.lock().unwrap() += 1;
            Ok(())
        }
    }

    #[tokio::test]
    async fn given_a_recorded_prune_when_pruning_again_then_the_repository_is_pruned_once_per_cadence() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::fs::FsStore::new(dir.path());
        let layout = Layout::new("prod");
        let repo = Repo::default();
        let now = "2026-12-04T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let week = Duration::from_secs(7 * 86_400);

        let first = prune_if_due(&store, &layout, &repo, week, now).await.unwrap();
        let second = prune_if_due(&store, &layout, &repo, week, now + chrono::Duration::days(1))
            .await
            .unwrap();
        let third = prune_if_due(&store, &layout, &repo, week, now + chrono::Duration::days(8))
            .await
            .unwrap();

        assert_eq!(first, RepositoryPrune::Pruned);
        assert_eq!(second, RepositoryPrune::NotDue { last: now });
        assert_eq!(third, RepositoryPrune::Pruned);
        assert_eq!(*repo.pruned.lock().unwrap(), 2);
    }
}
