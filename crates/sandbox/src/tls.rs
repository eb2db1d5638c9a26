//! The sandbox's HTTPS listener, next to its plain-HTTP one.
//!
//! kubectl (client-go's `clientcmd`) reads a kubeconfig's credentials only when the server is reached
//! over TLS: against `http://` it sends no bearer token at all. So ServiceAccount kubeconfigs point at
//! this listener, with the sandbox's CA in `certificate-authority-data`. A CA and a serving certificate
//! for `127.0.0.1` and `localhost` are made at every start (nothing is written to disk). Connections
//! speak HTTP/1.1 (ALPN `http/1.1`), so WebSocket exec upgrades work as on the plain listener.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the HTTPS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating the CA or the serving certificate failed.
    #[error("cannot generate the sandbox's serving certificate")]
    Certificate(#[source] rcgen::Error),
    /// rustls refused the generated certificate or key.
    #[error("cannot configure TLS with the generated certificate")]
    Config(#[source] rustls::Error),
}

/// Marks requests that arrived over the HTTPS listener (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverTls;

/// The CA (PEM, for kubeconfigs) and the server's TLS configuration.
pub struct ServingCert {
    ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl ServingCert {
    /// A fresh CA and a serving certificate it signed for `127.0.0.1` and `localhost`.
    pub fn generate() -> Result<ServingCert, TlsError> {
        let ca_key = KeyPair::generate().map_err(TlsError::Certificate)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::Certificate)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "freezeframe-sandbox-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(TlsError::Certificate)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(TlsError::Certificate)?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(TlsError::Certificate)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let cert = params.signed_by(&key, &issuer).map_err(TlsError::Certificate)?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), ca_cert.der().clone()], private)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ServingCert {
            ca_pem: ca_cert.pem(),
            config: Arc::new(config),
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// Serve `app` over TLS on `listener` until `stop` is cancelled (then connections are closed
/// gracefully). Requests carry the [`OverTls`] extension.
pub fn spawn_https(listener: TcpListener, cert: &ServingCert, app: Router, stop: CancellationToken) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.config.clone());
    let app = app.layer(axum::Extension(OverTls));
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "sandbox HTTPS accept failed");
                        continue;
                    }
                },
                _ = stop.cancelled() => return,
            };
            let (acceptor, app, stop) = (acceptor.clone(), app.clone(), stop.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(error = %e, "sandbox TLS handshake failed");
                        return;
                    }
                };
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .with_upgrades();
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    });
}
