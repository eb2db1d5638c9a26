//! A real HTTP receiver on 127.0.0.1 that records every request, for webhook (and fake endpoint) tests.
//!
//! Tests wait for requests with [`WebhookReceiver::wait_for_requests`], which is woken by each recorded
//! request (a `watch` channel), never by polling.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// The path without the query, e.g. `/hooks/run`.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    /// A header's value as text (`None` if absent or not UTF-8).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

struct Shared {
    requests: watch::Sender<Vec<RecordedRequest>>,
    responses: Mutex<Responses>,
}

struct Responses {
    /// Answers for the next requests, in order; each is used once.
    scripted: VecDeque<StatusCode>,
    /// The answer once the script is used up.
    default: StatusCode,
}

/// An HTTP server on `127.0.0.1:<random port>` answering every method and path; stops on drop.
pub struct WebhookReceiver {
    url: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Starts a receiver that answers `200 OK` to everything.
    pub async fn start() -> anyhow::Result<WebhookReceiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding webhook receiver")?;
        let address = listener.local_addr().context("webhook receiver address")?;
        let shared = Arc::new(Shared {
            requests: watch::Sender::new(Vec::new()),
            responses: Mutex::new(Responses {
                scripted: VecDeque::new(),
                default: StatusCode::OK,
            }),
        });
        let app = axum::Router::new()
            .fallback(record)
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("webhook receiver stopped: {error}");
            }
        });
        Ok(WebhookReceiver {
            url: format!("http://{address}"),
            shared,
            server,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of `path` on this receiver; `path` starts with `/`.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Answer every later request with `status` (e.g. 500 to simulate a failing receiver).
    pub fn respond_with(&self, status: StatusCode) {
        self.shared.responses.lock().expect("responses lock").default = status;
    }

    /// Answer the next requests with these statuses, one each, then fall back to [`Self::respond_with`]'s.
    pub fn respond_next(&self, statuses: impl IntoIterator<Item = StatusCode>) {
        self.shared
            .responses
            .lock()
            .expect("responses lock")
            .scripted
            .extend(statuses);
    }

    /// Every request recorded so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.borrow().clone()
    }

    /// Waits until at least `count` requests were recorded and returns all of them; fails after `timeout`
    /// with what did arrive.
    pub async fn wait_for_requests(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<RecordedRequest>> {
        let mut updates = self.shared.requests.subscribe();
        let waited =
            tokio::time::timeout(timeout, updates.wait_for(|requests| requests.len() >= count)).await;
        match waited {
            Ok(Ok(requests)) => Ok(requests.clone()),
            Ok(Err(_)) => unreachable!("the sender lives as long as the receiver"),
            Err(_) => {
                let seen = self.requests();
                let summary: Vec<String> = seen.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
                anyhow::bail!(
                    "expected {count} request(s) at {} within {timeout:?}, got {}: {summary:?}",
                    self.url,
                    seen.len()
                )
            }
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = {
        let mut responses = shared.responses.lock().expect("responses lock");
        let default = responses.default;
        responses.scripted.pop_front().unwrap_or(default)
    };
    let request = RecordedRequest {
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body,
    };
    shared.requests.send_modify(|requests| requests.push(request));
    status
}
