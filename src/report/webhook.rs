//! Webhook delivery: the JSON body, the headers and the HMAC-SHA256 signature, and the POST with its
//! retries. The HTTP call is behind [`Transport`] ([`HttpTransport`] in production, an in-memory fake in
//! unit tests), so signing, filtering and the retry policy are tested without a network.
//!
//! Retry policy: up to [`Retry::attempts`] attempts (3), waiting [`Retry::backoff`] and then twice as
//! long between them, on connection errors, timeouts, `429` and `5xx`; any other status ends the
//! delivery (`2xx` delivered, the rest rejected: redirects are not followed). Each attempt is signed
//! anew with its own timestamp; the `deliveryId` stays the same so receivers can drop duplicates.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use uuid::Uuid;

use super::payload::{Payload, WebhookEvent};
use crate::policy::Webhook;

/// The `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("freezeframe/", env!("CARGO_PKG_VERSION"));

/// The signature of `body` sent at `timestamp` (unix seconds) with `key`: `sha256=` and the lower-case
/// hex HMAC-SHA256 of `<timestamp>.<body>`. Pure.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body of one delivery: `event`, `deliveryId`, `time`, then the payload's fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Body<'a> {
    /// The event name.
    pub event: &'static str,
    /// Unique per delivery (the same for its retries): a UUID.
    pub delivery_id: String,
    /// When the delivery was made.
    pub time: DateTime<Utc>,
    /// What happened.
    #[serde(flatten)]
    pub payload: &'a Payload,
}

impl Body<'_> {
    /// The JSON bytes sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a payload always serializes")
    }
}

/// One HTTP POST attempt, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The webhook's URL.
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Vec<u8>,
    /// How long the attempt may take.
    pub timeout: Duration,
}

/// One delivery of one event to one webhook: what every attempt sends.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The receiver.
    pub webhook: &'a Webhook,
    /// The event.
    pub event: WebhookEvent,
    /// The body's `deliveryId` (also `X-Freezeframe-Delivery`).
    pub delivery_id: Uuid,
    /// The JSON body.
    pub body: &'a [u8],
    /// The HMAC key from the webhook's `secretRef`; `None` sends no signature.
    pub key: Option<&'a [u8]>,
}

impl Outgoing<'_> {
    /// The request of the attempt made at `timestamp` (unix seconds): headers, with
    /// `X-Freezeframe-Signature` when there is a key. Pure.
    pub fn request(&self, timestamp: i64) -> Request {
        let mut headers = vec![
            ("Content-Type", "application/json".to_string()),
            ("User-Agent", USER_AGENT.to_string()),
            ("X-Freezeframe-Event", self.event.name().to_string()),
            ("X-Freezeframe-Delivery", self.delivery_id.to_string()),
            ("X-Freezeframe-Timestamp", timestamp.to_string()),
        ];
        if let Some(key) = self.key {
            headers.push(("X-Freezeframe-Signature", sign(key, timestamp, self.body)));
        }
        Request {
            url: self.webhook.url.clone(),
            headers,
            body: self.body.to_vec(),
            timeout: self.webhook.timeout,
        }
    }
}

/// Sends one request; `Ok(status)` for any HTTP answer, `Err(reason)` when none came (connection
/// refused, TLS, timeout).
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// POST `request`.
    async fn post(&self, request: &Request) -> Result<u16, String>;
}

/// [`Transport`] over reqwest (rustls), following no redirects.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
}

impl HttpTransport {
    /// A client that does not follow redirects (a signed body is never re-sent elsewhere).
    pub fn new() -> HttpTransport {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        HttpTransport { client }
    }
}

impl Default for HttpTransport {
    fn default() -> Self {
        HttpTransport::new()
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn post(&self, request: &Request) -> Result<u16, String> {
        let mut builder = self
            .client
            .post(&request.url)
            .timeout(request.timeout)
            .body(request.body.clone());
        for (name, value) in &request.headers {
            builder = builder.header(*name, value);
        }
        match builder.send().await {
            Ok(response) => Ok(response.status().as_u16()),
            Err(e) if e.is_timeout() => Err(format!("no answer within {:?}", request.timeout)),
            Err(e) => {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason.push_str(&format!(": {s}"));
                    source = s.source();
                }
                Err(reason)
            }
        }
    }
}

/// How often and how patiently a delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each later one.
    pub backoff: Duration,
}

impl Default for Retry {
    /// 3 attempts, 500 ms then 1 s apart.
    fn default() -> Self {
        Retry {
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

/// What one attempt's result means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `2xx`: done.
    Delivered,
    /// No answer, `429` or `5xx`: try again (while attempts remain).
    Retry,
    /// Any other status: the receiver refused it; retrying would not help.
    Rejected,
}

/// The retry policy as a function of one attempt's result. Pure.
pub fn verdict(result: &Result<u16, String>) -> Verdict {
    match result {
        Ok(s) if (200..300).contains(s) => Verdict::Delivered,
        Ok(s) if *s == 429 || (500..600).contains(s) => Verdict::Retry,
        Ok(_) => Verdict::Rejected,
        Err(_) => Verdict::Retry,
    }
}

/// A delivery's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Attempts made.
    pub attempts: u32,
    /// The last answer's status, or why none came.
    pub last: Result<u16, String>,
}

impl Delivery {
    /// True when the receiver answered `2xx`.
    pub fn delivered(&self) -> bool {
        verdict(&self.last) == Verdict::Delivered
    }

    /// Why it was not delivered, for the operator: `HTTP 503 after 3 attempt(s)`.
    pub fn reason(&self) -> String {
        match &self.last {
            Ok(status) => format!("HTTP {status} after {} attempt(s)", self.attempts),
            Err(e) => format!("{e} (after {} attempt(s))", self.attempts),
        }
    }
}

/// Deliver `out` under the retry policy, signing each attempt at `now()`.
pub async fn deliver(
    transport: &dyn Transport,
    retry: Retry,
    now: &(dyn Fn() -> DateTime<Utc> + Send + Sync),
    out: &Outgoing<'_>,
) -> Delivery {
    let mut wait = retry.backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = transport.post(&out.request(now().timestamp())).await;
        if verdict(&last) != Verdict::Retry || attempts >= retry.attempts.max(1) {
            return Delivery { attempts, last };
        }
        tracing::debug!(webhook = %out.webhook.name, event = %out.event, attempt = attempts, result = ?last,
            "webhook delivery failed; retrying");
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fake::FakeTransport;

    fn hook(key: bool) -> Webhook {
        Webhook {
            name: "ops".into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: vec![],
            secret_ref: key.then(|| crate::policy::SecretKeyRef {
                name: "s".into(),
                key: "k".into(),
            }),
            timeout: Duration::from_secs(2),
        }
    }

    /// Computed independently with Python:
    /// `hmac.new(b'whsec-test-key', b'1700000000.{"event":"backup.succeeded"}', hashlib.sha256).hexdigest()`
    const KNOWN_SIGNATURE: &str = "b8770482dea412c0c27832a8a2eed4ef62005c6ae1d1b7a9547b2ee3325431cb";

    #[test]
    fn given_key_timestamp_and_body_then_signature_is_hmac_sha256_of_timestamp_dot_body() {
        let signature = sign(
            b"whsec-test-key",
            1_700_000_000,
            br#"{"event":"backup.succeeded"}"#,
        );
        assert_eq!(signature, format!("sha256={KNOWN_SIGNATURE}"));
        assert_ne!(
            sign(
                b"whsec-test-key",
                1_700_000_001,
                br#"{"event":"backup.succeeded"}"#
            ),
            signature,
            "the timestamp is part of the signed text"
        );
    }

    #[test]
    fn given_key_then_request_has_every_header_and_the_signature_and_without_key_no_signature() {
        let signed = hook(true);
        let out = Outgoing {
            webhook: &signed,
            event: WebhookEvent::BackupStarted,
            delivery_id: Uuid::nil(),
            body: b"{}",
            key: Some(b"k"),
        };
        let req = out.request(1_700_000_000);
        let names: Vec<&str> = req.headers.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "Content-Type",
                "User-Agent",
                "X-Freezeframe-Event",
                "X-Freezeframe-Delivery",
                "X-Freezeframe-Timestamp",
                "X-Freezeframe-Signature"
            ]
        );
        let header = |n: &str| req.headers.iter().find(|(h, _)| *h == n).unwrap().1.clone();
        assert_eq!(
            header("User-Agent"),
            format!("freezeframe/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(header("X-Freezeframe-Event"), "backup.started");
        assert_eq!(header("X-Freezeframe-Timestamp"), "1700000000");
        assert_eq!(
            header("X-Freezeframe-Signature"),
            sign(b"k", 1_700_000_000, b"{}")
        );
        assert_eq!(req.timeout, Duration::from_secs(2));
        let unsigned = Outgoing { key: None, ..out }.request(1);
        assert!(
            !unsigned
                .headers
                .iter()
                .any(|(n, _)| *n == "X-Freezeframe-Signature")
        );
    }

    #[test]
    fn given_attempt_results_then_5xx_429_and_no_answer_are_retried_and_other_statuses_are_not() {
        assert_eq!(verdict(&Ok(200)), Verdict::Delivered);
        assert_eq!(verdict(&Ok(204)), Verdict::Delivered);
        for s in [500, 502, 503, 429] {
            assert_eq!(verdict(&Ok(s)), Verdict::Retry, "{s}");
        }
        for s in [301, 400, 401, 404, 410] {
            assert_eq!(verdict(&Ok(s)), Verdict::Rejected, "{s}");
        }
        assert_eq!(verdict(&Err("connection refused".into())), Verdict::Retry);
    }

    async fn run(answers: Vec<Result<u16, String>>) -> (Delivery, FakeTransport) {
        let transport = FakeTransport::answering(answers);
        let webhook = hook(false);
        let out = Outgoing {
            webhook: &webhook,
            event: WebhookEvent::BackupSucceeded,
            delivery_id: Uuid::new_v4(),
            body: b"{}",
            key: None,
        };
        let d = deliver(&transport, Retry::default(), &Utc::now, &out).await;
        (d, transport)
    }

    #[tokio::test(start_paused = true)]
    async fn given_503_then_200_when_delivered_then_retried_with_backoff_and_delivered() {
        let start = tokio::time::Instant::now();
        let (d, transport) = run(vec![Ok(503), Err("connection reset".into()), Ok(200)]).await;
        assert!(d.delivered());
        assert_eq!(d.attempts, 3);
        assert_eq!(transport.requests().len(), 3);
        assert_eq!(start.elapsed(), Duration::from_millis(1500), "500 ms then 1 s");
        let ids: Vec<String> = transport
            .requests()
            .iter()
            .map(|r| {
                r.headers
                    .iter()
                    .find(|(n, _)| *n == "X-Freezeframe-Delivery")
                    .unwrap()
                    .1
                    .clone()
            })
            .collect();
        assert!(
            ids.iter().all(|i| *i == ids[0]),
            "one delivery id for all attempts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn given_4xx_when_delivered_then_not_retried() {
        let (d, transport) = run(vec![Ok(404), Ok(200)]).await;
        assert!(!d.delivered());
        assert_eq!((d.attempts, transport.requests().len()), (1, 1));
        assert_eq!(d.reason(), "HTTP 404 after 1 attempt(s)");
    }

    #[tokio::test(start_paused = true)]
    async fn given_receiver_always_503_when_delivered_then_three_attempts_and_failure() {
        let (d, transport) = run(vec![Ok(503), Ok(503), Ok(503), Ok(200)]).await;
        assert!(!d.delivered());
        assert_eq!((d.attempts, transport.requests().len()), (3, 3));
        assert_eq!(d.reason(), "HTTP 503 after 3 attempt(s)");
    }
}
