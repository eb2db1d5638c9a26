//! The freeze budget (`rules.maxFreeze`): how long a pod group may stay frozen, from the first pre
//! action to the thaw. Work inside the freeze (pre actions, the snapshot cut, frozen dumps) names itself
//! with [`Budget::track`] and stops when [`Budget::cut_off`] fires; the engine fires it at the deadline,
//! notes what was still pending, and thaws at once.
//!
//! Time is tokio's, so unit tests run under paused time without sleeping.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::policy::values::format_duration;

/// A budget as users write it in messages: whole seconds (`60s`, as in "freeze exceeded maxFreeze
/// (60s)"), else the duration's usual form.
pub fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format_duration(d)
    }
}

/// A freeze's budget; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `rules.maxFreeze`; `None` = unbounded.
    max: Option<Duration>,
    /// Set when the freeze starts (the first pre action).
    deadline: Mutex<Option<Instant>>,
    cut: CancellationToken,
    next: AtomicU64,
    /// What is in progress inside the freeze, by registration.
    pending: Mutex<BTreeMap<u64, String>>,
    exceeded: Mutex<Option<Exceeded>>,
}

/// The budget ran out: what the freeze was still waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// `rules.maxFreeze`.
    pub max: Duration,
    /// What was in progress at the deadline (`dump `all` on db/db-0`, ...), in start order.
    pub waiting_for: Vec<String>,
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waiting = if self.waiting_for.is_empty() {
            "the work inside the freeze".to_string()
        } else {
            self.waiting_for.join(", ")
        };
        write!(
            f,
            "freeze exceeded maxFreeze ({}): waiting for {waiting}",
            seconds(self.max)
        )
    }
}

impl Budget {
    /// A budget of `max` (`None` = unbounded); its clock starts with [`Budget::start`].
    pub fn new(max: Option<Duration>) -> Self {
        Budget {
            inner: Arc::new(Inner {
                max,
                ..Inner::default()
            }),
        }
    }

    /// Start the clock now (the first pre action starts); later calls keep the first start.
    pub fn start(&self) {
        let mut deadline = lock(&self.inner.deadline);
        if deadline.is_none() {
            *deadline = self.inner.max.map(|m| Instant::now() + m);
        }
    }

    /// `rules.maxFreeze`.
    pub fn max(&self) -> Option<Duration> {
        self.inner.max
    }

    /// Mark `what` as in progress inside the freeze until the returned guard is dropped.
    pub fn track(&self, what: impl Into<String>) -> Tracked {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.pending).insert(id, what.into());
        Tracked {
            budget: self.clone(),
            id,
        }
    }

    /// Resolves once the budget is exceeded (never for an unbounded or unstarted budget): stop, close
    /// streams, remove what was half-written.
    pub async fn cut_off(&self) {
        self.inner.cut.cancelled().await
    }

    /// Whether the budget is exceeded.
    pub fn is_cut_off(&self) -> bool {
        self.inner.cut.is_cancelled()
    }

    /// What ran out, once it did.
    pub fn exceeded(&self) -> Option<Exceeded> {
        lock(&self.inner.exceeded).clone()
    }

    /// Wait for the deadline, then record what is pending and fire [`Budget::cut_off`]. Pending forever
    /// while the budget is unbounded or not started.
    pub async fn expire(&self) {
        let deadline = *lock(&self.inner.deadline);
        let (Some(deadline), Some(max)) = (deadline, self.inner.max) else {
            return std::future::pending().await;
        };
        tokio::time::sleep_until(deadline).await;
        let mut exceeded = lock(&self.inner.exceeded);
        if exceeded.is_none() {
            let e = Exceeded {
                max,
                waiting_for: lock(&self.inner.pending).values().cloned().collect(),
            };
            tracing::warn!(%e, "thawing now");
            *exceeded = Some(e);
        }
        drop(exceeded);
        self.inner.cut.cancel();
    }
}

/// Removes its work from the pending list when dropped.
#[derive(Debug)]
pub struct Tracked {
    budget: Budget,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock(&self.budget.inner.pending).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn given_started_budget_when_deadline_passes_then_cut_off_fires_naming_what_is_pending() {
        let budget = Budget::new(Some(2 * SEC));
        budget.start();
        let done = budget.track("dump `a` on db/db-0");
        let slow = budget.track("dump `b` on db/db-1");
        drop(done);
        let start = Instant::now();
        budget.expire().await;
        assert_eq!(start.elapsed(), 2 * SEC);
        assert!(budget.is_cut_off());
        budget.cut_off().await;
        assert_eq!(
            budget.exceeded().unwrap().to_string(),
            "freeze exceeded maxFreeze (2s): waiting for dump `b` on db/db-1"
        );
        drop(slow);
    }

    #[tokio::test(start_paused = true)]
    async fn given_unbounded_or_unstarted_budget_then_it_never_expires() {
        for budget in [Budget::new(None), Budget::new(Some(SEC))] {
            if budget.max().is_none() {
                budget.start();
            }
            let expired = tokio::time::timeout(3600 * SEC, budget.expire()).await;
            assert!(expired.is_err());
            assert!(!budget.is_cut_off() && budget.exceeded().is_none());
        }
    }
}
