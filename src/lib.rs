//! freezeframe library: application-consistent disaster recovery for Kubernetes.
//!
//! The binary (`src/main.rs`) only parses the CLI and maps [`run`](cli::run)'s result to an exit code;
//! everything else lives here so integration tests can drive it.

pub mod cli;
pub mod clock;
pub mod config;
pub mod exit;
pub mod policy;
pub mod sandbox;
