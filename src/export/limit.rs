//! Client-side rate limit of the export's API calls: a token bucket (`qps` tokens a second, at most
//! `burst` saved up), the same model as client-go's `QPS`/`Burst`, which kube-rs does not have.
//!
//! Every list page and every get of the export takes one token first. A caller that finds the bucket
//! empty reserves the next token (the balance goes negative) and sleeps until it is due, so waiting
//! callers are served in arrival order at exactly `qps` and no timer or background task is needed. A
//! reservation whose caller is dropped while sleeping is not given back (the bucket errs on the slow side).
//!
//! Scope: the export (discovery excepted), which makes nearly all of a backup's API calls; hooks, dumps
//! and snapshots make a handful and are not limited.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ClientLimits;

/// A token bucket shared by the export's concurrent API calls.
#[derive(Debug)]
pub struct RateLimiter {
    qps: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens available at `at`; negative = reserved ahead.
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// A full bucket for `limits`.
    pub fn new(limits: ClientLimits) -> RateLimiter {
        let burst = f64::from(limits.burst.max(1));
        RateLimiter {
            qps: limits.qps,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// Take one token, waiting until one is due.
    pub async fn acquire(&self) {
        let wait = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.qps;
            bucket.tokens = (bucket.tokens + refill).min(self.burst) - 1.0;
            bucket.at = now;
            (bucket.tokens < 0.0).then(|| Duration::from_secs_f64(-bucket.tokens / self.qps))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(qps: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(ClientLimits { qps, burst })
    }

    #[tokio::test(start_paused = true)]
    async fn given_full_bucket_when_burst_calls_then_none_waits_and_the_next_waits_one_interval() {
        let l = limiter(10.0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn given_sustained_calls_then_rate_is_qps_after_the_burst() {
        let l = limiter(20.0, 5);
        let start = Instant::now();
        for _ in 0..45 {
            l.acquire().await;
        }
        // 5 from the bucket, 40 at 20/s.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn given_concurrent_callers_then_they_are_spaced_not_released_together() {
        let l = std::sync::Arc::new(limiter(4.0, 1));
        let start = Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.acquire().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        done.sort();
        let ms: Vec<u128> = done.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [0, 250, 500, 750, 1000]);
    }

    #[tokio::test(start_paused = true)]
    async fn given_idle_time_then_bucket_refills_but_never_beyond_burst() {
        let l = limiter(10.0, 2);
        l.acquire().await;
        l.acquire().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        l.acquire().await;
        l.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        l.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
