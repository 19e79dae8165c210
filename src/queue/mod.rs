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
//! `retry/`, and [`Claim::release`] gives it back. Every copy a claim writes carries the
//! fencing number of its lease in its key ([`record::CopyKey`]), so a holder only ever
//! writes, rewrites or deletes its own copies; the copy with the highest rank (fencing
//! number, then state) is the message.
//!
//! Guarantees (README.rst says them for users; ARCHITECTURE.md argues them step by step):
//! - **Nothing is lost**: a crash or a pause at any instant leaves the message in at least
//!   one folder; no copy is deleted before a copy ranked above it exists, and a copy is only
//!   deleted by its own holder or by whoever has seen a copy that outranks it.
//! - **One holder, fenced finish**: a finish reports by its lease: where a move copies, the
//!   lease is checked again once the copy has landed, before the claim's own copy is
//!   deleted; on a Maildir the rename runs under the lease table's lock. A claim whose lease
//!   is lost gets [`QueueError::LeaseLost`]. Each message is *finished* once; processing is
//!   at least once.
//! - **Slow jobs keep their claim**: a [`Claim`] renews its lease at a third of its length.
//!   A message in `processing/` with no live lease is claimable again (a new attempt), once
//!   the lock engine's data is older than the claim's lease.
//! - **Poison messages stop**: a claim that would pass `max_attempts` moves the message to
//!   `failed/` with the reason "too many attempts"; `retry/` waits with backoff.
//!
//! Claims take `cur/` first in first out (by the time in the Maildir name), then due
//! `retry/` copies (their keys begin with the due time), then `processing/` copies without
//! a live lease, one page at a time whatever the depth. A claim that waits wakes on
//! announcements of new mail (Redis pub/sub from the filter, inotify on a local Maildir)
//! and lists the store every `poll_interval` anyway.

pub mod claim;
pub mod dedup;
pub mod lock;
pub mod record;

mod candidates;
mod handle;
mod inspect;
mod operator;
mod take;
mod wake;

pub use claim::{Claim, Finished, Outcome, replace_in_place};
pub use dedup::DedupDigest;
pub use handle::moved_on;
pub use handle::{
    ClaimOptions, Digests, Entry, PurgeReport, Queue, QueueError, STATE_DIR_IN_MAILDIR, StateStats,
    StoredCopy, TOO_MANY_ATTEMPTS, newest_copy, open_lock, queue_id,
};
pub use inspect::{Glance, Inspection, header_fields};
pub use lock::{FinishedRef, Holder, LockEngine, LockError, Token};
pub use record::{CopyKey, MessageRef, Record, State};
pub use wake::Announcer;
