//! What one process's claims share: the candidates they take next ([`Candidates`], one page
//! of each folder a claim takes from, filled by listings and announcements) and what waiting
//! claims wait on ([`Wake`]).
//!
//! Memory is bounded whatever the queue's depth: a page holds at most one listing's keys
//! (`PAGE`, ten times that on a Maildir), announcements join a page up to [`ANNOUNCED`],
//! keys that failed lately are remembered up to [`FAILING`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use chrono::{DateTime, Utc};
use object_store::ObjectMeta;
use tokio::sync::Notify;

use super::record::{CopyKey, State};

/// Announced names a page takes while it waits for its next listing.
pub(super) const ANNOUNCED: usize = 1024;
/// Keys whose take failed lately, remembered so that a listing passes over them.
const FAILING: usize = 1024;
/// How long a key whose take failed is passed over.
const FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The folders a claim takes from, in the order of the [`Candidates::folders`] array.
pub(super) const CLAIMED_FROM: [State; 3] = [State::Cur, State::Retry, State::Processing];

/// One folder's page of candidates.
#[derive(Debug, Default)]
pub(super) struct Page {
    /// Keys to try, in claim order.
    pub(super) keys: VecDeque<(CopyKey, ObjectMeta)>,
    /// When the page was listed; `None`: list at the next look.
    pub(super) listed: Option<Instant>,
}

/// Messages a claim may take next.
#[derive(Debug)]
pub(super) struct Candidates {
    /// When the queue was opened: a fresh process looks at `cur/` first too, and gives
    /// `retry/` and `processing/` their turn first only a `poll_interval` later.
    pub(super) opened: Instant,
    /// `cur/`, `retry/`, `processing/` ([`CLAIMED_FROM`]).
    pub(super) folders: [Page; 3],
    /// The earliest due time of a `retry/` copy that is not due yet.
    pub(super) next_due: Option<DateTime<Utc>>,
    /// The earliest time a `processing/` copy seen with a live lease, or not yet abandoned
    /// long enough, may become claimable.
    pub(super) next_abandoned: Option<Instant>,
    /// Keys whose take failed on a store error, and until when they are passed over.
    failing: HashMap<String, Instant>,
}

impl Candidates {
    /// No candidates yet, for a queue opened now.
    pub(super) fn new() -> Candidates {
        Candidates {
            opened: Instant::now(),
            folders: Default::default(),
            next_due: None,
            next_abandoned: None,
            failing: HashMap::new(),
        }
    }

    /// The page of `state` (one of [`CLAIMED_FROM`]).
    pub(super) fn page(&mut self, state: State) -> &mut Page {
        let index = CLAIMED_FROM
            .iter()
            .position(|s| *s == state)
            .expect("claims take from cur/, retry/ and processing/ only");
        &mut self.folders[index]
    }

    /// Keeps the earliest of the times a `processing/` copy may become claimable.
    pub(super) fn note_abandoned_at(&mut self, at: Instant) {
        self.next_abandoned = Some(self.next_abandoned.map_or(at, |e| e.min(at)));
    }

    /// Notes that the take of `key` failed: listings pass over it for a while.
    pub(super) fn failed(&mut self, key: String) {
        let now = Instant::now();
        self.failing.retain(|_, until| *until > now);
        if self.failing.len() < FAILING {
            self.failing.insert(key, now + FAILING_FOR);
        }
    }

    /// Whether the take of `key` failed lately.
    pub(super) fn failing_lately(&self, key: &str) -> bool {
        self.failing
            .get(key)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Keeps the earliest due time of a `retry/` copy.
    pub(super) fn note_due_at(&mut self, at: DateTime<Utc>) {
        self.next_due = Some(self.next_due.map_or(at, |due| due.min(at)));
    }
}

/// What waiting claims wait on.
#[derive(Debug, Default)]
pub(super) struct Wake {
    /// Notified when a name was announced, or a listing may find something new.
    pub(super) notify: Notify,
    pub(super) started: AtomicBool,
}
