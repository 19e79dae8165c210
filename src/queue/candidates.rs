//! What one process's claims share: the candidates they take next ([`Candidates`], filled
//! by listings and announcements) and what waiting claims wait on ([`Wake`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use chrono::{DateTime, Utc};
use object_store::ObjectMeta;
use tokio::sync::Notify;

use super::record::Record;

/// Messages a claim may take next, listed or announced.
#[derive(Debug, Default)]
pub(super) struct Candidates {
    /// When the queue was opened: a fresh process looks at `cur/` first too, and gives
    /// `retry/` and `processing/` their turn first only a `poll_interval` later.
    pub(super) opened: Option<Instant>,
    pub(super) cur: VecDeque<ObjectMeta>,
    /// Names in `cur`, so that an announcement does not queue a name twice.
    pub(super) queued: HashSet<String>,
    pub(super) cur_listed: Option<Instant>,
    pub(super) retry: VecDeque<ObjectMeta>,
    pub(super) retry_listed: Option<Instant>,
    /// Records of `retry/` messages by name, with the object time they were read at.
    pub(super) retry_records: HashMap<String, (DateTime<Utc>, Record)>,
    /// The earliest not-before time among `retry/` messages that are not due yet.
    pub(super) next_due: Option<DateTime<Utc>>,
    /// The earliest time a `processing/` message seen with a live lease, or not yet
    /// abandoned long enough, may become claimable: a waiting claim lists again then.
    pub(super) next_abandoned: Option<Instant>,
    pub(super) processing: VecDeque<ObjectMeta>,
    pub(super) processing_listed: Option<Instant>,
}

impl Candidates {
    /// No candidates yet, for a queue opened now.
    pub(super) fn new() -> Candidates {
        Candidates {
            opened: Some(Instant::now()),
            ..Candidates::default()
        }
    }
}

/// What waiting claims wait on.
#[derive(Debug, Default)]
pub(super) struct Wake {
    /// Notified when a name was announced.
    pub(super) notify: Notify,
    pub(super) started: AtomicBool,
}
