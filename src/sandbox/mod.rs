//! The sandbox: an embedded Kubernetes API server over real HTTP that kubectl and kube-rs talk to.
//!
//! It is the foundation of every integration test and of `freezeframe demo`: objects live in memory,
//! workload controllers create the pods and claims a real cluster would, and `pods/exec` runs host
//! processes inside a per-pod directory under the state dir.

pub mod cli;
pub mod exec;
pub mod patch;
pub mod selector;
pub mod status;

pub use status::ApiError;
