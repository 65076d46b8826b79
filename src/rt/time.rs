//! Timers for the worker runtime: a deadline-ordered map the loop consults
//! for how long it may wait, and fires from after each wait.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{try_with_inner, with_inner};

/// Far enough to mean never, near enough not to overflow an `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Registered timers by `(deadline, sequence)`; the sequence keeps equal
/// deadlines apart.
#[derive(Default)]
pub(super) struct Timers {
    map: BTreeMap<(Instant, u64), Waker>,
    next: u64,
}

impl Timers {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.map.first_key_value().map(|(k, _)| k.0)
    }

    #[cfg(test)]
    pub(super) fn count(&self) -> usize {
        self.map.len()
    }

    /// Removes and returns the waker of the earliest timer due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Waker> {
        let entry = self.map.first_entry()?;
        (entry.key().0 <= now).then(|| entry.remove())
    }
}

/// Completes at its deadline. Registers with the runtime only when polled
/// before the deadline; dropped, it unregisters.
pub struct Sleep {
    deadline: Instant,
    key: Option<(Instant, u64)>,
}

pub fn sleep(duration: Duration) -> Sleep {
    let now = Instant::now();
    let deadline = now
        .checked_add(duration)
        .unwrap_or_else(|| now + FAR_FUTURE);
    sleep_until(deadline)
}

pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        key: None,
    }
}

/// The time the worker's loop last came back from the kernel: at most one
/// turn of the loop behind the clock, never ahead of it. The data path
/// stamps activity with it instead of reading the clock per read.
pub fn now() -> Instant {
    try_with_inner(|inner| inner.now.get()).unwrap_or_else(Instant::now)
}

impl Sleep {
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline; the next poll registers the new one.
    pub fn reset(&mut self, deadline: Instant) {
        self.unregister();
        self.deadline = deadline;
    }

    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            // Off the runtime (it is being torn down) there is nothing to remove.
            try_with_inner(|inner| inner.timers.borrow_mut().map.remove(&key));
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Never early: `now()` is never ahead of the clock. When it lags past
        // the deadline, the timer registered below fires on the next turn.
        if now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let key = self.key;
        self.key = Some(with_inner(|inner| {
            let mut timers = inner.timers.borrow_mut();
            if let Some(key) = key
                && let Some(w) = timers.map.get_mut(&key)
            {
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
                return key;
            }
            timers.next += 1;
            let key = (deadline, timers.next);
            timers.map.insert(key, cx.waker().clone());
            key
        }));
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Ticks every `period`, the first tick at once (as tokio's `interval`).
pub struct Interval {
    period: Duration,
    next: Instant,
}

pub fn interval(period: Duration) -> Interval {
    Interval {
        period,
        next: Instant::now(),
    }
}

impl Interval {
    pub async fn tick(&mut self) {
        sleep_until(self.next).await;
        // Missed ticks are skipped, not made up in a burst.
        self.next = (self.next + self.period).max(Instant::now());
    }
}
