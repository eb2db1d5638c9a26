//! The rule engine: freeze a pod group together (pre actions on all pods at once), run the caller's
//! snapshot step inside the freeze, and always thaw (held sessions released, post actions run).
//!
//! Pod and container choice is [`select`]. Every command goes through the narrow [`exec::PodExecutor`]
//! side-effect type: [`exec::KubeExecutor`] in production, [`fake::FakeExecutor`] (records order and
//! timing) in unit tests.

pub mod exec;
pub mod fake;
pub mod select;

pub use exec::{ExecOutput, KubeExecutor, PodExecutor, Target, Termination};
