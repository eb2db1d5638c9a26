//! The demo's webhook receiver: an HTTP server on 127.0.0.1 that records each delivery freezeframe sends
//! and checks its `X-Freezeframe-Signature` the way docs/webhooks.md tells receivers to.

use std::fmt;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::task::JoinHandle;

/// The path deliveries are posted to.
pub const PATH: &str = "/freezeframe";

/// How far a delivery's timestamp may be from the receiver's clock (docs/webhooks.md: 5 minutes).
pub const TOLERANCE_SECS: i64 = 300;

/// What checking a delivery's signature found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// HMAC-SHA256 of `<timestamp>.<body>` with the key matches, and the timestamp is recent.
    Valid,
    /// No `X-Freezeframe-Signature` or `X-Freezeframe-Timestamp` header.
    Missing,
    /// The signature does not match (wrong key, body or timestamp changed on the way).
    Invalid,
    /// The signature matches but the timestamp is more than [`TOLERANCE_SECS`] away: a replay.
    Stale,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signature::Valid => "signature valid",
            Signature::Missing => "signature MISSING",
            Signature::Invalid => "signature INVALID",
            Signature::Stale => "signature valid but timestamp STALE",
        })
    }
}

/// Check `signature` (`sha256=<hex>`) of `body` sent at `timestamp` (unix seconds, as text) against
/// `key`, at `now` (unix seconds): the HMAC is compared in constant time over the raw body bytes. Pure.
pub fn verify(
    key: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Signature {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Signature::Missing;
    };
    let Some(Ok(expected)) = signature.strip_prefix("sha256=").map(hex::decode) else {
        return Signature::Invalid;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    if mac.verify_slice(&expected).is_err() {
        return Signature::Invalid;
    }
    match timestamp.parse::<i64>() {
        Ok(sent) if (now - sent).abs() <= TOLERANCE_SECS => Signature::Valid,
        _ => Signature::Stale,
    }
}

/// One delivery as the receiver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// `event` of the body (`?` when the body is not the documented JSON).
    pub event: String,
    /// `phase` of the body.
    pub phase: String,
    /// `policy/backupId` of the body, or `policy` when it names no backup.
    pub subject: String,
    /// What the signature check found.
    pub signature: Signature,
}

impl Received {
    /// Read a delivery's body and check its signature with `key` at `now` (unix seconds). Pure.
    pub fn parse(key: &[u8], headers: &HeaderMap, body: &[u8], now: i64) -> Received {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signature = verify(
            key,
            header("x-freezeframe-timestamp"),
            header("x-freezeframe-signature"),
            body,
            now,
        );
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let text = |field: &str| json[field].as_str().unwrap_or("?").to_string();
        let subject = match json["backupId"].as_str() {
            Some(id) => format!("{}/{id}", text("policy")),
            None => text("policy"),
        };
        Received {
            event: text("event"),
            phase: text("phase"),
            subject,
            signature,
        }
    }
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<17} {:<10} {:<35} {}",
            self.event, self.phase, self.subject, self.signature
        )
    }
}

struct Shared {
    key: Vec<u8>,
    received: Mutex<Vec<Received>>,
}

/// An HTTP server on `127.0.0.1:<random port>` answering `POST` [`PATH`] with 200; stops on drop.
pub struct Receiver {
    url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// Start a receiver that checks signatures with `key`.
    pub async fn start(key: &[u8]) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            key: key.to_vec(),
            received: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route(PATH, axum::routing::post(record))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("warning: the demo's webhook receiver stopped: {e}");
            }
        });
        Ok(Receiver {
            url: format!("http://{address}{PATH}"),
            shared,
            server,
        })
    }

    /// The URL deliveries go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every delivery so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("receiver lock").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let received = Received::parse(&shared.key, &headers, &body, chrono::Utc::now().timestamp());
    shared.received.lock().expect("receiver lock").push(received);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"whsec-test-key";
    const BODY: &[u8] = br#"{"event":"backup.succeeded"}"#;
    /// Computed independently with Python:
    /// `hmac.new(b'whsec-test-key', b'1700000000.{"event":"backup.succeeded"}', hashlib.sha256).hexdigest()`
    const SIGNATURE: &str = "sha256=b8770482dea412c0c27832a8a2eed4ef62005c6ae1d1b7a9547b2ee3325431cb";
    const SENT: i64 = 1_700_000_000;

    fn check(key: &[u8], timestamp: &str, body: &[u8], now: i64) -> Signature {
        verify(key, Some(timestamp), Some(SIGNATURE), body, now)
    }

    #[test]
    fn given_signature_of_timestamp_dot_body_with_key_then_valid() {
        assert_eq!(check(KEY, "1700000000", BODY, SENT + 10), Signature::Valid);
    }

    #[test]
    fn given_other_key_body_or_timestamp_then_invalid() {
        assert_eq!(check(b"other-key", "1700000000", BODY, SENT), Signature::Invalid);
        assert_eq!(
            check(KEY, "1700000000", br#"{"event":"backup.failed"}"#, SENT),
            Signature::Invalid
        );
        assert_eq!(check(KEY, "1700000001", BODY, SENT), Signature::Invalid);
        assert_eq!(
            verify(KEY, Some("1700000000"), Some("b877"), BODY, SENT),
            Signature::Invalid,
            "without the sha256= prefix"
        );
    }

    #[test]
    fn given_valid_signature_older_than_five_minutes_then_stale() {
        assert_eq!(check(KEY, "1700000000", BODY, SENT + 301), Signature::Stale);
        assert_eq!(check(KEY, "1700000000", BODY, SENT - 301), Signature::Stale);
    }

    #[test]
    fn given_no_signature_or_timestamp_header_then_missing() {
        assert_eq!(
            verify(KEY, Some("1700000000"), None, BODY, SENT),
            Signature::Missing
        );
        assert_eq!(verify(KEY, None, Some(SIGNATURE), BODY, SENT), Signature::Missing);
    }

    #[test]
    fn given_delivery_body_then_event_phase_and_backup_are_read() {
        let body = br#"{"event":"prune.completed","policy":"demo-shop","backupId":"20261124T000000Z","phase":"Completed"}"#;
        let mut headers = HeaderMap::new();
        headers.insert("x-freezeframe-timestamp", "1700000000".parse().unwrap());
        headers.insert("x-freezeframe-signature", SIGNATURE.parse().unwrap());
        let r = Received::parse(KEY, &headers, body, SENT);
        assert_eq!(r.event, "prune.completed");
        assert_eq!(r.phase, "Completed");
        assert_eq!(r.subject, "demo-shop/20261124T000000Z");
        assert_eq!(r.signature, Signature::Invalid, "signed another body");
    }

    #[tokio::test]
    async fn given_signed_post_when_received_then_recorded_as_valid() {
        crate::install_crypto_provider();
        let receiver = Receiver::start(KEY).await.unwrap();
        let now = chrono::Utc::now().timestamp();
        let body = br#"{"event":"backup.started","policy":"demo-shop","backupId":null,"phase":"Running"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(KEY).unwrap();
        mac.update(format!("{now}.").as_bytes());
        mac.update(body);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let answer = reqwest::Client::new()
            .post(receiver.url())
            .header("X-Freezeframe-Timestamp", now.to_string())
            .header("X-Freezeframe-Signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        let received = receiver.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].event, "backup.started");
        assert_eq!(received[0].subject, "demo-shop", "no backup id yet");
        assert_eq!(received[0].signature, Signature::Valid);
    }
}
