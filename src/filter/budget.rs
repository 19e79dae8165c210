//! The memory budget shared by all sessions (`max_memory`): message bytes held in memory
//! are reserved from it before they are held, so that a burst of large messages waits for
//! room (its clients held back by TCP: the sessions read nothing meanwhile) instead of
//! growing the process past its pod's limit; a session that waited `memory_wait` in vain
//! refuses with `452 4.3.1`.
//!
//! What is counted is what [`crate::config::memory`] figures: a transaction's buffered
//! message bytes (up to `stream_threshold`) and, from when it begins to stream, the upload
//! parts each destination holds and, for relayed recipients, the spool's buffers. Not
//! counted: each session's 64 KiB read buffer and the process itself.
//! Bytes past `stream_threshold` are never held whole: they go on to the stores as they
//! arrive, and to a spool file when recipients are relayed ([`crate::filter::spool`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::telemetry::metrics::metrics;

/// `bytes` as a gauge's value.
fn gauge(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// A limit on bytes held at once, shared by every session.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    /// Woken whenever bytes are given back: the sessions waiting for room look again.
    freed: Notify,
    /// What the sessions that wait while they hold memory need in all, each what it holds
    /// and what it waits for ([`MemoryBudget::holding_wait`]).
    holders_need: Arc<AtomicUsize>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        metrics().memory_limit_bytes.set(gauge(limit));
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            holders_need: Arc::default(),
        })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// An empty reservation that may grow from this budget.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Whether `bytes` more would fit now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit
    }

    /// Waits until `bytes` more would fit, or until `until`; whether they fit then. Room
    /// that shows is not reserved: another session may take it first, and the caller's
    /// reservation tells.
    pub async fn wait_for_room(&self, bytes: usize, until: Instant) -> bool {
        loop {
            // Registered before the look, so that bytes given back in between still wake.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.has_room(bytes) {
                return true;
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return self.has_room(bytes);
            }
        }
    }

    /// Lets a session that holds memory wait for more, its whole `need` (held and
    /// wanted) counted, when the needs of all such waiters fit within the limit together
    /// (`None` otherwise: the session refuses instead). So they can all be served once the
    /// sessions that do not wait have given theirs back, and none waits for what another
    /// waiter holds. Given back when dropped.
    pub fn holding_wait(&self, need: usize) -> Option<HoldingWait> {
        self.holders_need
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                total.checked_add(need).filter(|&sum| sum <= self.limit)
            })
            .ok()
            .map(|_| HoldingWait {
                need,
                total: Arc::clone(&self.holders_need),
            })
    }

    fn try_add(&self, bytes: usize) -> bool {
        let added = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            });
        if added.is_ok() {
            // Added, not set: two threads' updates cannot land out of order.
            metrics().memory_in_use_bytes.inc_by(gauge(bytes));
        }
        added.is_ok()
    }

    fn sub(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        metrics().memory_in_use_bytes.dec_by(gauge(bytes));
        self.freed.notify_waiters();
    }
}

/// A session's place among those that wait while they hold memory
/// ([`MemoryBudget::holding_wait`]); its need is taken off when dropped.
#[derive(Debug)]
pub struct HoldingWait {
    need: usize,
    total: Arc<AtomicUsize>,
}

impl Drop for HoldingWait {
    fn drop(&mut self) {
        self.total.fetch_sub(self.need, Ordering::AcqRel);
    }
}

/// Bytes one transaction holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sets the reservation to `bytes`. Shrinking always succeeds; growing succeeds only
    /// within the budget, and a failure (`Err` with the bytes that found no room) leaves
    /// the reservation as it was.
    pub fn resize(&mut self, bytes: usize) -> Result<(), usize> {
        if bytes <= self.bytes {
            self.budget.sub(self.bytes - bytes);
        } else if !self.budget.try_add(bytes - self.bytes) {
            return Err(bytes - self.bytes);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.sub(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_within_the_limit_and_give_back_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.resize(60).is_ok());
        assert_eq!(b.resize(50), Err(50), "60 + 50 is past the limit");
        assert_eq!(
            b.bytes(),
            0,
            "a failed growth leaves the reservation as it was"
        );
        assert!(b.resize(40).is_ok());
        assert_eq!(budget.used(), 100);
        assert!(!budget.has_room(1));
        assert!(a.resize(10).is_ok(), "shrinking always succeeds");
        assert_eq!(budget.used(), 50);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.has_room(100));
    }

    #[tokio::test]
    async fn a_wait_for_room_ends_when_bytes_are_given_back_or_at_its_deadline() {
        use std::time::Duration;
        let budget = MemoryBudget::new(100);
        let mut a = budget.reservation();
        a.resize(90).unwrap();
        // Nothing given back: the wait ends at its deadline, without room.
        let until = Instant::now() + Duration::from_millis(100);
        assert!(!budget.wait_for_room(20, until).await);
        assert!(Instant::now() >= until);

        // Bytes given back wake a waiter whose deadline is an hour away.
        let waiter = {
            let budget = Arc::clone(&budget);
            let until = Instant::now() + Duration::from_secs(3600);
            tokio::spawn(async move { budget.wait_for_room(20, until).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.resize(50).unwrap();
        let room = tokio::time::timeout(Duration::from_secs(600), waiter)
            .await
            .expect("woken by the bytes given back, not by its deadline");
        assert!(room.unwrap());
    }

    #[test]
    fn holders_wait_only_while_all_their_needs_fit_together() {
        let budget = MemoryBudget::new(100);
        let a = budget.holding_wait(60).expect("60 of 100");
        assert!(
            budget.holding_wait(50).is_none(),
            "60 + 50 could not all be served"
        );
        let b = budget.holding_wait(40).expect("60 + 40 can");
        drop(a);
        let c = budget.holding_wait(60).expect("a's need was taken off");
        drop((b, c));
        assert!(budget.holding_wait(100).is_some());
    }
}
