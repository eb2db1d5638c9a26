//! The rule engine: freeze a pod group together (pre actions on all pods at once), run the caller's
//! snapshot step inside the freeze, and always thaw (held sessions released, post actions run).
//!
//! The steps, top to bottom:
//! - [`plan`] turns a [`Policy`](crate::policy::Policy)'s rules (native, Stork, Velero annotations) into a
//!   [`Plan`]: ordered steps, each a set of (pod, container, action) invocations that run concurrently.
//!   Pod and container choice is [`select`].
//! - [`engine`] runs a plan: [`Engine::freeze`] → [`FrozenGroup`] → [`FrozenGroup::thaw`], or
//!   [`Engine::with_freeze`] which runs a step inside the freeze and guarantees the thaw.
//! - [`budget`] bounds the freeze (`rules.maxFreeze`): work inside it names itself and stops when the
//!   budget runs out; the engine then thaws at once.
//! - Every command goes through the narrow [`exec::PodExecutor`] side-effect type: [`exec::KubeExecutor`]
//!   in production, [`fake::FakeExecutor`] (records order and timing) in unit tests.
//!
//! RBAC needed (mirror in `manifests/`): `pods` get/list, `pods/exec` create (the WebSocket upgrade is
//! a GET, which RBAC maps to `create` since Kubernetes 1.31; grant both `get` and `create` for older
//! clusters), `namespaces` list (for a namespace selector).

pub mod budget;
pub mod engine;
pub mod exec;
#[cfg(test)]
pub mod fake;
pub mod plan;
pub mod report;
pub mod select;
pub mod velero;

pub use budget::{Budget, Exceeded};
pub use engine::{Engine, FrozenGroup};
pub use exec::{ExecOutput, KubeExecutor, PodExecutor, Target, Termination};
pub use plan::{Invocation, Plan, Step};
pub use report::{Failure, GroupReport, GroupStatus, InvocationReport, InvocationResult, StepReport};
