//! The integration-test binary: every module runs against real servers on loopback.

mod sandbox_api;
mod sandbox_kubectl;
