//! The one integration-test binary: every module here shares the [`harness`] (`TestEnv`).
//!
//! Run everything with `scripts/test` (installs SeaweedFS into .venv first).

mod api_calls;
mod backup_run;
mod cron_run;
mod databases;
#[cfg(feature = "demo")]
mod demo;
mod docs;
mod encryption;
mod export;
mod harness;
mod hooks;
mod mover;
mod object_lock;
mod offsite;
mod packaging;
mod policy_store;
mod rbac;
mod replay;
mod report;
mod restore;
mod restore_volumes;
mod retention;
mod s3;
mod sandbox_api;
mod sandbox_kubectl;
mod sandbox_kubelet;
mod sandbox_rbac;
mod sandbox_volumes;
mod snapshots;
mod webhook;
