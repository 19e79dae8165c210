//! The memory budget shared by all sessions (`max_memory`): message bytes held in memory
//! are reserved from it before they are held, so that a burst of large messages waits for
//! room (its clients held back by TCP: the sessions read nothing meanwhile) instead of
//! growing the process past its pod's limit; a session that waited `memory_wait` in vain
//! refuses with `452 4.3.1`.
//!
//! Room goes first to transactions that have begun (they hold memory and need more: a
//! buffer that grows, a message that begins to stream): they are under way, and what they
//! finish gives room back. A transaction that has not begun yet (at DATA, or its first BDAT
//! chunk) takes room only beside what every waiter before it still needs and what the
//! waiting holders are short of: that room is set aside for them, so a large message is not
//! passed for the whole `memory_wait` by small ones that keep taking the room it waits for,
//! while a small one may still go on in room that nobody before it could use.
//!
//! What is counted is what [`crate::config::memory`] figures: a transaction's buffered
//! message bytes (up to `stream_threshold`) and, from when it begins to stream, the upload
//! parts each destination holds and, for relayed recipients, the spool's buffers. Not
//! counted: each session's 64 KiB read buffer and the process itself.
//! Bytes past `stream_threshold` are never held whole: they go on to the stores as they
//! arrive, and to a spool file when recipients are relayed ([`crate::filter::spool`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    holders_need: AtomicUsize,
    /// What those sessions wait for in all: set aside for them.
    holders_short: AtomicUsize,
    /// The reservations that have not begun and wait, in the order they began to wait:
    /// their tickets and the bytes each waits for.
    queue: Mutex<VecDeque<(u64, usize)>>,
    next_ticket: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryBudget> {
        metrics().memory_limit_bytes.set(gauge(limit));
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            holders_need: AtomicUsize::new(0),
            holders_short: AtomicUsize::new(0),
            queue: Mutex::default(),
            next_ticket: AtomicU64::new(0),
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
            begun: false,
            ticket: None,
        }
    }

    /// Whether `bytes` more would fit now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.limit
    }

    /// Whether a reservation that has not begun, with `ticket` if it waits, may take its
    /// first `bytes` now: they fit beside what the holders that wait are short of and what
    /// every reservation that began to wait before it waits for.
    fn may_begin(&self, ticket: Option<u64>, bytes: usize) -> bool {
        let set_aside = bytes.saturating_add(self.holders_short.load(Ordering::Acquire));
        if !self.has_room(set_aside) {
            // The common answer while many wait: no need to look at the queue.
            return false;
        }
        let ahead: usize = {
            let queue = self.queue.lock().expect("budget queue");
            queue
                .iter()
                .take_while(|(t, _)| Some(*t) != ticket)
                .map(|&(_, wanted)| wanted)
                .fold(0, usize::saturating_add)
        };
        self.has_room(set_aside.saturating_add(ahead))
    }

    /// Puts `ticket` in the queue, waiting for `bytes`, or, when it is there, notes what
    /// it waits for now.
    fn queue_up(&self, ticket: u64, bytes: usize) {
        let less = {
            let mut queue = self.queue.lock().expect("budget queue");
            match queue.iter_mut().find(|(t, _)| *t == ticket) {
                Some(entry) => std::mem::replace(&mut entry.1, bytes) > bytes,
                None => {
                    queue.push_back((ticket, bytes));
                    false
                }
            }
        };
        if less {
            // Less set aside: those behind it may go on now.
            self.freed.notify_waiters();
        }
    }

    /// Takes `ticket` out of the queue, and lets those behind it look again.
    fn leave_queue(&self, ticket: u64) {
        self.queue
            .lock()
            .expect("budget queue")
            .retain(|(t, _)| *t != ticket);
        self.freed.notify_waiters();
    }

    /// Lets a session that holds `held` bytes wait for `short` more, its whole need (held
    /// and wanted) counted, when the needs of all such waiters fit within the limit together
    /// (`None` otherwise: the session refuses instead). So they can all be served once the
    /// sessions that do not wait have given theirs back, and none waits for what another
    /// waiter holds. What it is short of is set aside from then on. Given back when dropped.
    pub fn holding_wait(self: &Arc<Self>, held: usize, short: usize) -> Option<HoldingWait> {
        let need = held.saturating_add(short);
        self.holders_need
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |total| {
                total.checked_add(need).filter(|&sum| sum <= self.limit)
            })
            .ok()?;
        self.holders_short.fetch_add(short, Ordering::AcqRel);
        Some(HoldingWait {
            need,
            short,
            budget: Arc::clone(self),
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
    short: usize,
    budget: Arc<MemoryBudget>,
}

impl Drop for HoldingWait {
    fn drop(&mut self) {
        self.budget
            .holders_need
            .fetch_sub(self.need, Ordering::AcqRel);
        self.budget
            .holders_short
            .fetch_sub(self.short, Ordering::AcqRel);
        // The room set aside for it is free for reservations that have not begun.
        self.budget.freed.notify_waiters();
    }
}

/// Bytes one transaction holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
    /// It held bytes once: its transaction is under way.
    begun: bool,
    /// Its place in the queue of reservations that wait to begin.
    ticket: Option<u64>,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether it held bytes once: its transaction is under way (a holder, even when it
    /// gave them all back), and it no longer waits in the queue of those that begin.
    pub fn begun(&self) -> bool {
        self.begun
    }

    /// Sets the reservation to `bytes`. Shrinking always succeeds; growing succeeds only
    /// within the budget (and, for a reservation that has not begun, beside the room set
    /// aside for others: see the module documentation), and a failure (`Err` with the
    /// bytes that found no room) leaves the reservation as it was.
    pub fn resize(&mut self, bytes: usize) -> Result<(), usize> {
        if bytes <= self.bytes {
            self.budget.sub(self.bytes - bytes);
        } else {
            let more = bytes - self.bytes;
            if (!self.begun && !self.budget.may_begin(self.ticket, more))
                || !self.budget.try_add(more)
            {
                return Err(more);
            }
        }
        self.bytes = bytes;
        if bytes > 0 {
            self.begun = true;
            self.leave_queue();
        }
        Ok(())
    }

    /// Gives up its place in the queue, if it has one: its transaction stopped waiting
    /// (it got its room, or refused).
    pub fn leave_queue(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.budget.leave_queue(ticket);
        }
    }

    /// Waits until `bytes` more would fit (for a reservation that has not begun: beside the
    /// room set aside for those before it in the queue, where it takes its place now if it
    /// has none), or until `until`; whether they fit then. Room that shows is not
    /// reserved: a holder may take it first, and [`Reservation::resize`] tells.
    pub async fn wait_for_room(&mut self, bytes: usize, until: Instant) -> bool {
        let budget = Arc::clone(&self.budget);
        let ticket = (!self.begun).then(|| {
            let ticket = *self
                .ticket
                .get_or_insert_with(|| budget.next_ticket.fetch_add(1, Ordering::Relaxed));
            budget.queue_up(ticket, bytes);
            ticket
        });
        let fits = || match ticket {
            Some(ticket) => budget.may_begin(Some(ticket), bytes),
            None => budget.has_room(bytes),
        };
        loop {
            // Registered before the look, so that bytes given back in between still wake.
            let freed = budget.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if fits() {
                return true;
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return fits();
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.leave_queue();
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
        assert!(!budget.reservation().wait_for_room(20, until).await);
        assert!(Instant::now() >= until);

        // Bytes given back wake a waiter whose deadline is an hour away.
        let waiter = {
            let mut b = budget.reservation();
            let until = Instant::now() + Duration::from_secs(3600);
            tokio::spawn(async move { b.wait_for_room(20, until).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.resize(50).unwrap();
        let room = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the bytes given back, not by its deadline");
        assert!(room.unwrap());
    }

    #[tokio::test]
    async fn room_an_earlier_waiter_needs_is_set_aside_for_it() {
        use std::time::Duration;
        let budget = MemoryBudget::new(100);
        let mut a = budget.reservation();
        a.resize(90).unwrap();
        // A large one waits first; a small one that would fit now does not pass it.
        let mut large = budget.reservation();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!large.wait_for_room(60, soon).await, "60 does not fit yet");
        let mut small = budget.reservation();
        assert_eq!(small.resize(5), Err(5), "the large one waits first");
        let small_waits = {
            let until = Instant::now() + Duration::from_secs(3600);
            tokio::spawn(async move {
                let fits = small.wait_for_room(5, until).await;
                let resized = small.resize(5);
                (fits, resized, small)
            })
        };
        // 60 free: all of it set aside for the large one.
        a.resize(40).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!small_waits.is_finished(), "behind the large one");
        let until = Instant::now() + Duration::from_secs(3600);
        assert!(large.wait_for_room(60, until).await);
        assert!(large.resize(60).is_ok(), "its room, set aside");
        drop(large);
        let (fits, resized, _small) = tokio::time::timeout(Duration::from_secs(10), small_waits)
            .await
            .expect("woken when the large one gave its room back")
            .unwrap();
        assert!(fits && resized.is_ok());
        assert_eq!(budget.used(), 45);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_the_queue() {
        use std::time::Duration;
        let budget = MemoryBudget::new(100);
        let mut a = budget.reservation();
        a.resize(90).unwrap();
        let mut large = budget.reservation();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!large.wait_for_room(60, soon).await);
        a.resize(50).unwrap();
        let mut small = budget.reservation();
        assert!(small.resize(5).is_err(), "the large one is first");
        drop(large);
        assert!(small.resize(5).is_ok(), "nobody waits before it now");
    }

    #[test]
    fn room_a_waiting_holder_is_short_of_is_set_aside() {
        let budget = MemoryBudget::new(100);
        let mut holder = budget.reservation();
        holder.resize(10).unwrap();
        let waits = budget.holding_wait(10, 50).expect("60 of 100");
        let mut fresh = budget.reservation();
        assert_eq!(fresh.resize(45), Err(45), "10 held, 50 set aside");
        assert!(fresh.resize(40).is_ok(), "what is left");
        assert!(holder.resize(60).is_ok(), "the holder's room");
        drop(waits);
        let mut after = budget.reservation();
        assert!(after.resize(0).is_ok());
        assert!(!after.begun(), "nothing held yet");
        // A holder that gave all back is still under way: it does not queue.
        assert!(fresh.resize(0).is_ok());
        assert!(fresh.begun());
    }

    #[tokio::test]
    async fn holders_are_not_held_back_by_room_set_aside_for_those_that_begin() {
        use std::time::Duration;
        let budget = MemoryBudget::new(100);
        let mut holder = budget.reservation();
        holder.resize(50).unwrap();
        let mut large = budget.reservation();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(
            !large.wait_for_room(60, soon).await,
            "queued for 60 of the 50 free"
        );
        assert!(holder.resize(80).is_ok(), "a holder takes free room");
        // A holder that gave all back is still under way: it neither queues nor waits
        // behind the large one.
        assert!(holder.resize(0).is_ok());
        let until = Instant::now() + Duration::from_secs(10);
        assert!(holder.wait_for_room(10, until).await);
        assert!(holder.resize(10).is_ok());
        drop(large);
    }

    #[tokio::test]
    async fn a_waiter_that_wants_less_wakes_those_behind_it() {
        use std::time::Duration;
        let budget = MemoryBudget::new(100);
        let mut a = budget.reservation();
        a.resize(50).unwrap();
        let mut large = budget.reservation();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(!large.wait_for_room(60, soon).await, "60 of the 50 free");
        let mut small = budget.reservation();
        let small_waits = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(3600);
            small.wait_for_room(20, until).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!small_waits.is_finished(), "behind the 60 set aside");
        // The first now wants 30: 30 + 20 fit in the 50 free.
        let soon = Instant::now() + Duration::from_millis(1);
        assert!(large.wait_for_room(30, soon).await);
        let room = tokio::time::timeout(Duration::from_secs(10), small_waits)
            .await
            .expect("woken when the one before it asked for less");
        assert!(room.unwrap());
    }

    #[tokio::test]
    async fn a_holder_that_stops_waiting_wakes_those_that_begin() {
        use std::time::Duration;
        let budget = MemoryBudget::new(100);
        let mut holder = budget.reservation();
        holder.resize(10).unwrap();
        let waits = budget.holding_wait(10, 80).expect("90 of 100");
        let mut fresh = budget.reservation();
        let waiter = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(3600);
            fresh.wait_for_room(20, until).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "80 of the 90 free are set aside");
        drop(waits);
        let room = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken when the holder stopped waiting");
        assert!(room.unwrap());
    }

    #[test]
    fn holders_wait_only_while_all_their_needs_fit_together() {
        let budget = MemoryBudget::new(100);
        let a = budget.holding_wait(40, 20).expect("60 of 100");
        assert!(
            budget.holding_wait(30, 20).is_none(),
            "60 + 50 could not all be served"
        );
        let b = budget.holding_wait(30, 10).expect("60 + 40 can");
        drop(a);
        let c = budget.holding_wait(50, 10).expect("a's need was taken off");
        drop((b, c));
        assert!(budget.holding_wait(50, 50).is_some());
    }
}
