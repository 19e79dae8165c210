//! The queue: workers on many machines claim stored mail under leases, process it, and
//! finish it exactly once.
//!
//! Owns: leases and their lock engines, the state folders, the record kept with each
//! message, duplicate digests, wake-ups. May use: `store/`, `config/`, `util/`; the worker,
//! the filter and the CLI use it, never the other way round.
//!
//! A message lives under one state folder of its destination ([`record::State`]): the filter
//! writes `cur/`; [`Queue::claim`] moves the oldest message to `processing/` under a lease
//! from a [`lock::LockEngine`]; [`Claim::finish`] moves it on to `done/`, `failed/` or
//! `retry/`, and [`Claim::release`] gives it back. Every move is a copy, a check and a
//! delete ([`crate::store::mover`]), and every move is made under the message's lease, whose
//! token the lock engine checks first.
//!
//! Guarantees (README.rst says them for users):
//! - **Nothing is lost**: a crash at any instant leaves the message in at least one folder;
//!   a message found in two (the leftover of a crash) is resolved by the next claim or
//!   finish that meets it: the copy with the higher fencing number, then the later folder,
//!   wins, and the other is deleted.
//! - **One holder, fenced finish**: finish, renew and release first check in the lock
//!   engine that the token still holds the lease; if not, [`QueueError::LeaseLost`] and
//!   nothing moves. Each message is *finished* once; processing is at least once.
//! - **Slow jobs keep their claim**: a [`Claim`] renews its lease at a third of its length.
//!   A message in `processing/` with no live lease is claimable again (a new attempt).
//! - **Poison messages stop**: a claim that would pass `max_attempts` moves the message to
//!   `failed/` with the reason "too many attempts"; `retry/` waits with backoff.
//!
//! Claims take `cur/` first in first out (by the time in the Maildir name), then due
//! `retry/` messages, then `processing/` messages without a live lease. A claim that waits
//! wakes on announcements of new mail (Redis pub/sub from the filter, inotify on a local
//! Maildir) and lists the store every `poll_interval` anyway.

pub mod claim;
pub mod dedup;
pub mod lock;
pub mod record;

mod candidates;
mod handle;
mod operator;
mod take;
mod wake;

pub use claim::{Claim, Finished, Outcome};
pub use dedup::DedupDigest;
pub use handle::{
    ClaimOptions, Digests, Entry, PurgeReport, Queue, QueueError, STATE_DIR_IN_MAILDIR, StateStats,
    StoredCopy, TOO_MANY_ATTEMPTS, newest_copy, open_lock, queue_id,
};
pub use lock::{FinishedRef, Holder, LockEngine, LockError, Token};
pub use record::{MessageRef, Record, State};
pub use wake::Announcer;
