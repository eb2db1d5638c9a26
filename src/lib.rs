//! freezeframe library: application-consistent disaster recovery for Kubernetes.
//!
//! The binary (`src/main.rs`) only parses the CLI and maps [`run`](cli::run)'s result to an exit code;
//! everything else lives here so integration tests can drive it.

pub mod app;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod exit;
pub mod export;
pub mod hooks;
pub mod k8s;
pub mod lease;
pub mod mover;
pub mod offsite;
pub mod policy;
pub mod report;
pub mod restore;
pub mod retention;
pub mod snapshot;
pub mod store;

/// Choose rustls' crypto provider once per process. The AWS SDK pulls in both aws-lc-rs and ring, so
/// rustls cannot pick one itself and a `kube::Client` or S3 client would panic without this.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first, which is just as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}
