//! The retry policy of every API call ([`tower::retry::Policy`]): which answers are retried, how long to
//! wait before the next attempt, and the bounds per call and per run.
//!
//! Retried: 429 (waiting `Retry-After` when the server sends it, at most [`MAX_RETRY_AFTER`]), 500, 502,
//! 503, 504, and calls that got no answer ([`super::Unreachable`]: refused, dropped, timed out). Not
//! retried: any other status (the caller sees it), connection upgrades (exec, attach: a started command
//! must never run twice) and requests whose body is a stream (it cannot be sent again).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use kube::client::Body;
use rand::Rng;
use tower::BoxError;

/// The first backoff; each further one doubles, up to [`MAX_BACKOFF`], and is jittered down by up to half.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest backoff between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The longest `Retry-After` honoured (a longer one is shortened to this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Retries left to a whole run, shared by all its calls.
#[derive(Debug)]
pub struct Budget(AtomicU32);

impl Budget {
    /// A budget of `retries`.
    pub fn new(retries: u32) -> Budget {
        Budget(AtomicU32::new(retries))
    }

    /// Take one retry; false when none is left.
    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// Why an attempt is worth repeating.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Retryable {
    /// The server asked for a pause (429/503 with `Retry-After`).
    After(Duration),
    /// A server error or no answer: back off.
    Backoff(String),
}

/// The per-call state of the policy (tower clones it for each call).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    max: u32,
    attempt: u32,
    budget: Arc<Budget>,
}

impl RetryPolicy {
    /// At most `max` retries per call, all calls together at most what `budget` holds.
    pub fn new(max: u32, budget: Arc<Budget>) -> RetryPolicy {
        RetryPolicy {
            max,
            attempt: 0,
            budget,
        }
    }

    /// The jittered exponential backoff before retry number `attempt` (1-based).
    fn backoff(attempt: u32) -> Duration {
        let full = FIRST_BACKOFF
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Whether `result` of `request` is worth another attempt, and why.
fn classify<B>(request: &Request<Body>, result: &Result<Response<B>, BoxError>) -> Option<Retryable> {
    if request.headers().contains_key(header::UPGRADE) {
        return None;
    }
    match result {
        Ok(response) => {
            let status = response.status();
            if !matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::INTERNAL_SERVER_ERROR
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            ) {
                return None;
            }
            let after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            Some(match after {
                Some(d) => Retryable::After(d),
                None => Retryable::Backoff(status.to_string()),
            })
        }
        Err(e) if e.is::<super::Unreachable>() => Some(Retryable::Backoff(e.to_string())),
        Err(_) => None,
    }
}

impl<B> tower::retry::Policy<Request<Body>, Response<B>, BoxError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Request<Body>,
        result: &mut Result<Response<B>, BoxError>,
    ) -> Option<Self::Future> {
        let why = classify(request, result)?;
        if self.attempt >= self.max {
            return None;
        }
        if !self.budget.take() {
            tracing::warn!(
                "the run's API retry budget is spent: not retrying {}",
                request.uri()
            );
            return None;
        }
        self.attempt += 1;
        let (delay, reason) = match why {
            Retryable::After(d) => (d, "asked to retry later".to_string()),
            Retryable::Backoff(reason) => (Self::backoff(self.attempt), reason),
        };
        tracing::info!(
            "{} {}: {reason}; retry {}/{} in {}ms",
            request.method(),
            request.uri().path(),
            self.attempt,
            self.max,
            delay.as_millis()
        );
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &Request<Body>) -> Option<Request<Body>> {
        if self.max == 0 || request.headers().contains_key(header::UPGRADE) {
            return None;
        }
        let mut copy = Request::new(request.body().try_clone()?);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::retry::Policy;

    fn get() -> Request<Body> {
        Request::get("/api/v1/pods").body(Body::empty()).unwrap()
    }

    fn answer(status: u16, retry_after: Option<&str>) -> Result<Response<()>, BoxError> {
        let mut r = Response::builder().status(status);
        if let Some(a) = retry_after {
            r = r.header(header::RETRY_AFTER, a);
        }
        Ok(r.body(()).unwrap())
    }

    #[test]
    fn given_throttling_and_server_errors_then_they_are_retried_and_client_errors_are_not() {
        assert_eq!(
            classify(&get(), &answer(429, Some("3"))),
            Some(Retryable::After(Duration::from_secs(3)))
        );
        for status in [500, 502, 503, 504] {
            assert!(matches!(
                classify(&get(), &answer(status, None)),
                Some(Retryable::Backoff(_))
            ));
        }
        for status in [200, 400, 403, 404, 409, 410, 422] {
            assert_eq!(classify(&get(), &answer(status, None)), None, "{status}");
        }
    }

    #[test]
    fn given_an_exec_upgrade_then_nothing_is_retried_or_copied() {
        let exec = Request::get("/api/v1/namespaces/a/pods/p/exec")
            .header(header::UPGRADE, "websocket")
            .body(Body::empty())
            .unwrap();
        assert_eq!(classify(&exec, &answer(503, None)), None);
        let mut policy = RetryPolicy::new(3, Arc::new(Budget::new(10)));
        let copy = Policy::<Request<Body>, Response<()>, BoxError>::clone_request(&mut policy, &exec);
        assert!(copy.is_none());
    }

    #[test]
    fn given_no_answer_then_it_is_retried_and_other_errors_are_not() {
        let unreachable: BoxError = Box::new(super::super::Unreachable::Timeout {
            server: "https://k".into(),
            timeout: Duration::from_secs(1),
        });
        assert!(classify::<()>(&get(), &Err(unreachable)).is_some());
        assert_eq!(classify::<()>(&get(), &Err("other".into())), None);
    }

    #[test]
    fn given_a_long_retry_after_then_it_is_capped() {
        assert_eq!(
            classify(&get(), &answer(429, Some("3600"))),
            Some(Retryable::After(MAX_RETRY_AFTER))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn given_retries_per_call_and_per_run_then_both_bound_the_attempts() {
        let budget = Arc::new(Budget::new(3));
        let mut first = RetryPolicy::new(2, budget.clone());
        let mut req = get();
        assert!(first.retry(&mut req, &mut answer(503, None)).is_some());
        assert!(first.retry(&mut req, &mut answer(503, None)).is_some());
        assert!(
            first.retry(&mut req, &mut answer(503, None)).is_none(),
            "per call"
        );
        let mut second = RetryPolicy::new(2, budget);
        assert!(second.retry(&mut req, &mut answer(503, None)).is_some());
        assert!(
            second.retry(&mut req, &mut answer(503, None)).is_none(),
            "per run"
        );
    }

    #[test]
    fn given_attempts_then_the_backoff_grows_jittered_and_capped() {
        for attempt in 1..=20 {
            let full = FIRST_BACKOFF
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            let d = RetryPolicy::backoff(attempt);
            assert!(d <= full && d >= full / 2, "{attempt}: {d:?}");
        }
    }
}
