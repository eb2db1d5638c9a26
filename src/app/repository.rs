//! A storage's repository for the commands that prune: [`MovedData`] over [`crate::mover::Repository`],
//! with the password (and S3 keys) read from the storage's Secrets in freezeframe's namespace. The
//! repository is opened per operation on a blocking thread (rustic's API is synchronous).

use std::sync::Arc;

use anyhow::Context as _;

use super::Invocation;
use crate::mover::{Password, PruneMode, Repository, RepositoryLocation, S3Credentials};
use crate::policy::{Backend, Storage};
use crate::retention::repository::MovedData;

/// How long a pack marked unreferenced stays before a later prune deletes it (movers of a backup running
/// at the same time may still reference it).
const PRUNE_GRACE: std::time::Duration = std::time::Duration::from_secs(23 * 3600);

/// The repository of one storage, ready to open.
pub struct StorageRepository {
    location: RepositoryLocation,
    credentials: S3Credentials,
    password: Password,
}

impl StorageRepository {
    /// The repository of `storage` (`None` when it has none), its Secrets read now.
    pub async fn for_storage(
        invocation: &Invocation,
        storage: &Storage,
    ) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(repository) = &storage.repository else {
            return Ok(None);
        };
        let secret = &repository.password_secret;
        let password = invocation
            .secret_value(&secret.name, &secret.key)
            .await
            .context("reading the repository password (storage repository.passwordSecret)")?;
        let password = Password::new(String::from_utf8_lossy(&password).into_owned())?;
        let mut credentials = S3Credentials::from_env();
        if let Backend::S3(s3) = &storage.backend {
            if let Some(name) = &s3.credentials_secret {
                let keys = invocation.s3_credentials(name).await?;
                credentials.access_key_id = Some(keys.access_key_id);
                credentials.secret_access_key = Some(keys.secret_access_key);
                credentials.session_token = keys.session_token;
            }
            if s3.region.is_some() {
                credentials.region.clone_from(&s3.region);
            }
        }
        Ok(Some(Arc::new(StorageRepository {
            location: RepositoryLocation::for_storage(&storage.backend),
            credentials,
            password,
        })))
    }

    /// Where it is (restic's syntax).
    pub fn location(&self) -> &RepositoryLocation {
        &self.location
    }

    /// Run `op` on the opened repository on a blocking thread.
    async fn with<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&Repository) -> crate::mover::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let repository = Repository::open(&this.location, &this.credentials, &this.password)?;
            op(&repository)
        })
        .await
        .map_err(|e| format!("the repository task failed: {e}"))?
        .map_err(|e| crate::k8s::errors::chain(&e))
    }
}

/// [`MovedData`] for an `Arc<StorageRepository>` (the blocking tasks share it).
pub struct Moved(pub Arc<StorageRepository>);

#[async_trait::async_trait]
impl MovedData for Moved {
    async fn forget(&self, snapshot_ids: &[String]) -> Result<usize, String> {
        let wanted = snapshot_ids.to_vec();
        self.0
            .with(move |repository| {
                // Ids already forgotten (a retried prune) are skipped, not failures.
                let present: Vec<String> = repository
                    .snapshots()?
                    .into_iter()
                    .map(|s| s.id)
                    .filter(|id| wanted.iter().any(|w| id.starts_with(w.as_str())))
                    .collect();
                if !present.is_empty() {
                    repository.forget(&present)?;
                }
                Ok(present.len())
            })
            .await
    }

    async fn prune(&self) -> Result<(), String> {
        self.0
            .with(|repository| repository.prune(PruneMode::Marked { grace: PRUNE_GRACE }))
            .await
    }
}
