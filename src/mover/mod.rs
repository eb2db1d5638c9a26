//! Volume data to and from the repository: a restic-format repository (encrypted, content-defined
//! chunking, deduplicated, zstd-compressed) that stock `restic` can read.
//!
//! The repository is written with the `rustic_core` crate through `rustic_backend` (a local directory,
//! or S3 through opendal); nothing here chunks, packs or encrypts by hand. rustic_core is synchronous
//! (it runs its own threads, and its S3 backend its own tokio runtime): every function here blocks and
//! must not be called on an async runtime's thread (the S3 backend panics there), so async callers use
//! `tokio::task::spawn_blocking`. The mover Job runs them directly (`freezeframe mover`, `crate::app::mover`).
//!
//! - [`RepositoryLocation`]: where the repository is, in restic's repository syntax
//!   (`s3:http://host:port/bucket/prefix`, `/abs/path`), or derived from a storage
//!   (`<storage prefix>/repository/`, [`crate::store::Layout::repository`]).
//! - [`Repository`]: open or create it, back a directory up, restore a snapshot, forget, prune, list,
//!   measure.

mod location;
mod repository;

pub use location::{RepositoryLocation, S3Credentials, S3Location};
pub use repository::{
    MoverReport, Password, PruneMode, Repository, RepositoryStats, RestoreReport, SnapshotInfo, SnapshotSpec,
};

/// Result of mover operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the mover and its repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A repository string is not one of the accepted forms.
    #[error(
        "repository {given:?}: {reason}; accepted: s3:http(s)://host[:port]/bucket[/prefix], \
         s3:s3.amazonaws.com/bucket[/prefix], /absolute/path or local:/absolute/path"
    )]
    Location {
        /// What was given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot setting (host, path label, tag) is unusable.
    #[error("{field} {value:?}: {reason}")]
    Invalid {
        /// The setting (`--host`, `--path-label`, `--tag`).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and how to fix it.
        reason: &'static str,
    },
    /// An S3 repository needs a region and none was given.
    #[error(
        "repository {location}: no region; set AWS_REGION (or AWS_DEFAULT_REGION) to the bucket's region"
    )]
    NoRegion {
        /// The repository.
        location: String,
    },
    /// The password does not open any key of the repository.
    #[error(
        "repository {location}: the password opens none of its keys (is FREEZEFRAME_REPOSITORY_PASSWORD \
         the password the repository was created with?)"
    )]
    WrongPassword {
        /// The repository.
        location: String,
    },
    /// The password is empty.
    #[error("the repository password is empty; set FREEZEFRAME_REPOSITORY_PASSWORD or --password-file")]
    EmptyPassword,
    /// No snapshot has that id (or id prefix).
    #[error("repository {location}: no snapshot {id}")]
    NoSnapshot {
        /// The repository.
        location: String,
        /// The id asked for.
        id: String,
    },
    /// A local directory (backup source, restore target) cannot be used.
    #[error("cannot {operation} {path}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A repository operation failed in rustic_core or its backend.
    #[error("repository {location}: {operation} failed")]
    Repository {
        /// The repository.
        location: String,
        /// What was attempted (`open`, `init`, `backup of /data`, ...).
        operation: String,
        /// rustic's error, in one line.
        #[source]
        source: RusticCause,
    },
}

/// A rustic_core error, shown as one line (rustic's own `Display` is a multi-paragraph report meant
/// for its CLI), with rustic's cause kept as the source.
#[derive(Debug)]
pub struct RusticCause(Box<rustic_core::RusticError>);

impl From<Box<rustic_core::RusticError>> for RusticCause {
    fn from(error: Box<rustic_core::RusticError>) -> Self {
        RusticCause(error)
    }
}

impl std::fmt::Display for RusticCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let line = self.0.display_log();
        f.write_str(line.strip_prefix("Error: ").unwrap_or(&line))
    }
}

impl std::error::Error for RusticCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}
