//! The memory budget shared by all sessions (`max_memory`): message bytes held in memory
//! are reserved from it before they are held, so that a burst of large messages is refused
//! with `452 4.3.1` instead of growing the process past its pod's limit.
//!
//! What is counted is what [`crate::config::memory`] figures: a transaction's buffered
//! message bytes (up to `stream_threshold`) and, from when it begins to stream, the upload
//! parts each destination holds and, for relayed recipients, the spool's buffers. Not
//! counted: each session's 64 KiB read buffer and the process itself.
//! Bytes past `stream_threshold` are never held whole: they go on to the stores as they
//! arrive, and to a spool file when recipients are relayed ([`crate::filter::spool`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        metrics().memory_limit_bytes.set(gauge(limit));
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
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
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        metrics().memory_in_use_bytes.dec_by(gauge(bytes));
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
    /// within the budget, and a failure leaves the reservation as it was.
    pub fn resize(&mut self, bytes: usize) -> bool {
        if bytes <= self.bytes {
            self.budget.sub(self.bytes - bytes);
        } else if !self.budget.try_add(bytes - self.bytes) {
            return false;
        }
        self.bytes = bytes;
        true
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
        assert!(a.resize(60));
        assert!(!b.resize(50), "60 + 50 is past the limit");
        assert_eq!(
            b.bytes(),
            0,
            "a failed growth leaves the reservation as it was"
        );
        assert!(b.resize(40));
        assert_eq!(budget.used(), 100);
        assert!(!budget.has_room(1));
        assert!(a.resize(10), "shrinking always succeeds");
        assert_eq!(budget.used(), 50);
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
        assert!(budget.has_room(100));
    }
}
