//! The queue: workers on many machines claim stored mail under leases, process it, and
//! finish it exactly once.
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
pub mod lock;
pub mod record;
mod wake;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

pub use claim::{Claim, Finished, Outcome};
pub use lock::{FinishedRef, Holder, LockEngine, LockError, Token};
pub use record::{MessageRef, Record, State};
pub use wake::Announcer;

use crate::config::{Config, LOCK_VARIABLE, LockSetting, QueueSettings};
use crate::failpoint;
use crate::store::Destination;
use crate::store::mover::Mover;
use crate::store::swift::hex;

/// The reason given to a message failed for having been claimed too often.
pub const TOO_MANY_ATTEMPTS: &str = "too many attempts";
/// The state directory's name inside a Maildir, for the `local` lock.
pub const STATE_DIR_IN_MAILDIR: &str = ".swiftdrop-queue";

/// What went wrong with a queue operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The token no longer holds the message's lease: nothing was moved.
    LeaseLost {
        /// The message's name.
        name: String,
    },
    /// No message by that key.
    NotFound(String),
    /// The message is not in a state that allows the operation.
    Refused(String),
    /// The store failed.
    Store(String),
    /// The lock engine failed.
    Lock(String),
    /// The configuration does not allow a queue (names the setting to change).
    Config(String),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::LeaseLost { name } => write!(
                f,
                "lease lost: the token no longer holds the claim on {name}; nothing was moved"
            ),
            QueueError::NotFound(key) => write!(f, "no message {key}"),
            QueueError::Refused(why)
            | QueueError::Store(why)
            | QueueError::Lock(why)
            | QueueError::Config(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for QueueError {}

impl From<LockError> for QueueError {
    fn from(e: LockError) -> Self {
        QueueError::Lock(e.0)
    }
}

impl From<object_store::Error> for QueueError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => QueueError::NotFound(path),
            e => QueueError::Store(e.to_string()),
        }
    }
}

/// How to claim.
#[derive(Debug, Clone, Default)]
pub struct ClaimOptions {
    /// Lease length (default: the `lease` setting).
    pub lease: Option<Duration>,
    /// Wait up to this long for a message to become claimable (default: do not wait).
    pub wait: Option<Duration>,
}

/// One copy of a message: where it is, its object and its record.
#[derive(Debug, Clone)]
pub struct StoredCopy {
    /// Its state folder.
    pub state: State,
    /// The object, as a HEAD saw it.
    pub meta: ObjectMeta,
    /// The queue's record in its metadata.
    pub record: Record,
    /// All of its metadata.
    pub attributes: object_store::Attributes,
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `<state>/<name>`.
    pub key: String,
    /// The Maildir name.
    pub name: String,
    /// Its state.
    pub state: State,
    /// Size in bytes.
    pub size: u64,
    /// When the filter received it (from the name; else the object's time).
    pub received: DateTime<Utc>,
    /// Claims so far.
    pub attempt: u32,
}

/// Count and age of one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateStats {
    /// Messages in the state.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When the longest-waiting one entered the state.
    pub oldest: Option<DateTime<Utc>>,
}

/// What `purge` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Messages old enough.
    pub matched: u64,
    /// Of those, deleted (0 with `dry_run`).
    pub deleted: u64,
    /// Deletions that failed.
    pub failed: u64,
    /// Bytes of the matched messages.
    pub bytes: u64,
}

/// Messages a claim may take next, listed or announced; refreshed every `poll_interval`.
#[derive(Debug, Default)]
struct Candidates {
    cur: VecDeque<ObjectMeta>,
    queued: HashSet<String>,
    cur_listed: Option<Instant>,
    retry: VecDeque<ObjectMeta>,
    retry_listed: Option<Instant>,
    /// Records of `retry/` messages by name, with the object time they were read at.
    retry_records: HashMap<String, (DateTime<Utc>, Record)>,
    /// The earliest not-before time among `retry/` messages that are not due yet.
    next_due: Option<DateTime<Utc>>,
    processing: VecDeque<ObjectMeta>,
    processing_listed: Option<Instant>,
}

/// A queue over one destination; cheap to clone, shared by its claims.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    destination: Destination,
    mover: Arc<dyn Mover>,
    lock: Arc<dyn LockEngine>,
    settings: QueueSettings,
    owner: String,
    candidates: tokio::sync::Mutex<Candidates>,
    wake: wake::Wake,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Queue([{}] {}, {:?}, owner {})",
            self.inner.destination.name,
            self.inner.destination.store,
            self.inner.lock,
            self.inner.owner
        )
    }
}

/// A stable id of a destination's store, shared by the filter and every worker: it names the
/// queue's keys in a shared lock engine.
pub fn queue_id(destination: &Destination) -> String {
    let digest = Sha256::digest(destination.store.to_string().as_bytes());
    format!("q{}", &hex(&digest)[..12])
}

/// Opens the lock engine `settings` choose for `destination`.
pub fn open_lock(
    destination: &Destination,
    settings: &QueueSettings,
) -> Result<Arc<dyn LockEngine>, QueueError> {
    let maildir = destination.maildir_root();
    match (&settings.lock, maildir) {
        (Some(LockSetting::Redis(url)), _) => Ok(Arc::new(lock::redis::RedisEngine::new(
            url,
            &queue_id(destination),
        )?)),
        (None, None) => Err(QueueError::Config(format!(
            "[{}] is a remote store, usually shared by several machines, where a local lock protects nothing: set {LOCK_VARIABLE} to redis://host:port/db (or to local if only this machine claims from it)",
            destination.name
        ))),
        (Some(LockSetting::Local) | None, _) => {
            let dir = match (&settings.state_dir, maildir) {
                (Some(dir), _) => dir.clone(),
                (None, Some(root)) => root.join(STATE_DIR_IN_MAILDIR),
                (None, None) => {
                    return Err(QueueError::Config(format!(
                        "[{}]: the local lock on a remote store needs a directory for its files: set SWIFTDROP_QUEUE_STATE_DIR",
                        destination.name
                    )));
                }
            };
            Ok(Arc::new(lock::local::LocalEngine::open(&dir)?))
        }
    }
}

impl Queue {
    /// Opens the queue of the destination named `destination` (a section name, any case).
    pub fn open(config: &Config, destination: &str) -> Result<Queue, QueueError> {
        let dest_config = config
            .destinations
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(destination))
            .ok_or_else(|| {
                let names: Vec<&str> = config
                    .destinations
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect();
                QueueError::Config(format!(
                    "no destination [{destination}]; configured: {}",
                    names.join(", ")
                ))
            })?;
        let destination = Destination::open(dest_config)
            .map_err(|e| QueueError::Config(format!("cannot open destination {e}")))?;
        Queue::new(destination, &config.queue, &config.server.hostname)
    }

    /// A queue over an opened destination; `hostname` goes into the owner id.
    pub fn new(
        destination: Destination,
        settings: &QueueSettings,
        hostname: &str,
    ) -> Result<Queue, QueueError> {
        let lock = open_lock(&destination, settings)?;
        Ok(Queue::with_lock(destination, settings, hostname, lock))
    }

    /// A queue with a lock engine of the caller's choice.
    pub fn with_lock(
        destination: Destination,
        settings: &QueueSettings,
        hostname: &str,
        lock: Arc<dyn LockEngine>,
    ) -> Queue {
        Queue {
            inner: Arc::new(Inner {
                mover: destination.mover(),
                destination,
                lock,
                settings: settings.clone(),
                owner: lock::new_owner_id(hostname),
                candidates: tokio::sync::Mutex::new(Candidates::default()),
                wake: wake::Wake::default(),
            }),
        }
    }

    /// This process's owner id, written into every token it takes.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The destination the queue works on.
    pub fn destination(&self) -> &Destination {
        &self.inner.destination
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &QueueSettings {
        &self.inner.settings
    }

    /// The lock engine.
    pub fn lock(&self) -> &Arc<dyn LockEngine> {
        &self.inner.lock
    }

    /// Checks the lock engine (reachable; Redis recent enough).
    pub async fn check(&self) -> Result<String, QueueError> {
        Ok(self.inner.lock.check().await?)
    }

    /// Claims the next due message: `cur/` first in first out, then due `retry/`, then
    /// `processing/` without a live lease. With `wait`, blocks until one is due or the wait
    /// is over. `None`: nothing claimable.
    pub async fn claim(&self, options: &ClaimOptions) -> Result<Option<Claim>, QueueError> {
        let lease = options.lease.unwrap_or(self.inner.settings.lease);
        let deadline = options.wait.map(|w| tokio::time::Instant::now() + w);
        if deadline.is_some() {
            wake::start(&self.inner);
        }
        loop {
            // Registered before looking, so that an announcement in between is not missed.
            let notified = self.inner.wake.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(claim) = self.claim_once(lease).await? {
                return Ok(Some(claim));
            }
            let Some(deadline) = deadline else {
                return Ok(None);
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut next = now + self.inner.settings.poll_interval;
            if let Some(due) = self.inner.candidates.lock().await.next_due {
                let until = (due - Utc::now()).to_std().unwrap_or_default();
                next = next.min(now + until + Duration::from_millis(1));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(next.min(deadline)) => {}
            }
        }
    }

    async fn claim_once(&self, lease: Duration) -> Result<Option<Claim>, QueueError> {
        for state in [State::Cur, State::Retry, State::Processing] {
            while let Some(meta) = self.next_candidate(state).await? {
                if let Some(claim) = self.claim_candidate(state, &meta, lease).await? {
                    return Ok(Some(claim));
                }
            }
        }
        Ok(None)
    }

    /// The next message of `state` to try, from the candidates. `cur/` is listed again when
    /// its candidates ran out and the last listing is older than `poll_interval` (new mail
    /// in between comes by announcement); the other folders whenever their listing is older.
    async fn next_candidate(&self, state: State) -> Result<Option<ObjectMeta>, QueueError> {
        let poll = self.inner.settings.poll_interval;
        let mut candidates = self.inner.candidates.lock().await;
        let stale = |listed: Option<Instant>| listed.is_none_or(|t| t.elapsed() >= poll);
        match state {
            State::Cur => {
                if candidates.cur.is_empty() && stale(candidates.cur_listed) {
                    let listed = self.list_folder(State::Cur).await?;
                    candidates.queued = listed.iter().map(name_of).collect();
                    candidates.cur = listed.into();
                    candidates.cur_listed = Some(Instant::now());
                }
                let next = candidates.cur.pop_front();
                if let Some(meta) = &next {
                    candidates.queued.remove(&name_of(meta));
                }
                Ok(next)
            }
            State::Retry => {
                if stale(candidates.retry_listed) {
                    let listed = self.list_folder(State::Retry).await?;
                    let (due, next_due) = self.due_retries(&mut candidates, listed).await?;
                    candidates.retry = due.into();
                    candidates.next_due = next_due;
                    candidates.retry_listed = Some(Instant::now());
                }
                Ok(candidates.retry.pop_front())
            }
            State::Processing => {
                if stale(candidates.processing_listed) {
                    let listed = self.list_folder(State::Processing).await?;
                    let names: Vec<String> = listed.iter().map(name_of).collect();
                    let holders = self.inner.lock.holders(&names).await?;
                    candidates.processing = listed
                        .into_iter()
                        .zip(holders)
                        .filter(|(_, holder)| holder.is_none())
                        .map(|(meta, _)| meta)
                        .collect();
                    candidates.processing_listed = Some(Instant::now());
                }
                Ok(candidates.processing.pop_front())
            }
            State::Failed | State::Done => Ok(None),
        }
    }

    /// The `retry/` messages that are due, oldest due first, and the earliest time one that
    /// is not due yet becomes due. Records are read once per object version.
    async fn due_retries(
        &self,
        candidates: &mut Candidates,
        listed: Vec<ObjectMeta>,
    ) -> Result<(Vec<ObjectMeta>, Option<DateTime<Utc>>), QueueError> {
        let unknown: Vec<ObjectMeta> = listed
            .iter()
            .filter(|m| {
                candidates
                    .retry_records
                    .get(&name_of(m))
                    .is_none_or(|(at, _)| *at != m.last_modified)
            })
            .cloned()
            .collect();
        let read: Vec<(ObjectMeta, Option<StoredCopy>)> = futures::stream::iter(unknown)
            .map(|meta| async move {
                let copy = self.head(State::Retry, &name_of(&meta)).await;
                copy.map(|c| (meta, c))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        for (meta, copy) in read {
            if let Some(copy) = copy {
                candidates
                    .retry_records
                    .insert(name_of(&meta), (meta.last_modified, copy.record));
            }
        }
        let names: HashSet<String> = listed.iter().map(name_of).collect();
        candidates
            .retry_records
            .retain(|name, _| names.contains(name));
        let now = Utc::now();
        let mut due = Vec::new();
        let mut next_due: Option<DateTime<Utc>> = None;
        for meta in listed {
            let not_before = candidates
                .retry_records
                .get(&name_of(&meta))
                .and_then(|(_, r)| r.not_before);
            match not_before {
                Some(t) if t > now => next_due = Some(next_due.map_or(t, |n| n.min(t))),
                t => due.push((t, meta)),
            }
        }
        due.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.last_modified.cmp(&b.1.last_modified))
        });
        Ok((due.into_iter().map(|(_, m)| m).collect(), next_due))
    }

    /// Tries to claim one candidate: takes its lease, then moves it to `processing/`.
    /// `None` when somebody else holds or took it.
    async fn claim_candidate(
        &self,
        state: State,
        meta: &ObjectMeta,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let name = name_of(meta);
        let Some(token) = self
            .inner
            .lock
            .acquire(&name, &self.inner.owner, lease)
            .await?
        else {
            return Ok(None);
        };
        failpoint::hit("claim.leased");
        let taken = match state {
            State::Cur => self.take_from_cur(&name, meta, &token, lease).await,
            _ => self.take_resolved(&name, &token, lease).await,
        };
        match taken {
            Ok(Some(claim)) => Ok(Some(claim)),
            other => {
                if let Err(e) = self.inner.lock.release(&name, &token).await {
                    tracing::warn!(name, error = %e, "could not release a lease; it expires by itself");
                }
                other
            }
        }
    }

    /// Moves a never-claimed message from `cur/` to `processing/` as attempt 1. A leftover
    /// under `processing/` (a claim, release or requeue of this message interrupted after its
    /// copy) is replaced: nobody holds it, since this claim holds the lease, and it
    /// describes the same never-finished message.
    async fn take_from_cur(
        &self,
        name: &str,
        meta: &ObjectMeta,
        token: &Token,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let record = Record {
            attempt: 1,
            fence: token.fence(),
            lease: Some(lease),
            not_before: None,
            reason: None,
        };
        let target = State::Processing.path(name);
        match self
            .inner
            .mover
            .move_object(meta, &target, &record.to_update())
            .await
        {
            Ok(()) => Ok(Some(self.new_claim(name, token, record, meta, lease))),
            // Claimed and moved on by another worker since it was listed.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Claims `name` from whichever folder holds its newest copy, after deleting the
    /// leftovers of interrupted moves. The caller holds the lease.
    async fn take_resolved(
        &self,
        name: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let Some(newest) = self.resolve(name).await? else {
            return Ok(None);
        };
        let due = newest.record.not_before.is_none_or(|t| t <= Utc::now());
        match newest.state {
            State::Cur => {
                let record = Record {
                    attempt: 1,
                    fence: token.fence(),
                    lease: Some(lease),
                    not_before: None,
                    reason: None,
                };
                self.inner
                    .mover
                    .move_object(
                        &newest.meta,
                        &State::Processing.path(name),
                        &record.to_update(),
                    )
                    .await?;
                Ok(Some(self.new_claim(
                    name,
                    token,
                    record,
                    &newest.meta,
                    lease,
                )))
            }
            State::Retry if due => self.take_again(name, newest, token, lease).await,
            State::Processing if self.abandoned(&newest).await? => {
                self.take_again(name, newest, token, lease).await
            }
            State::Processing => Ok(None),
            State::Retry | State::Failed | State::Done => Ok(None),
        }
    }

    /// Whether a claim under `processing/` may be taken over: its recorded lease has passed
    /// since the copy was written, and since the lock engine's data began (a lease lost
    /// with the engine's data was renewed at most then).
    async fn abandoned(&self, copy: &StoredCopy) -> Result<bool, QueueError> {
        let lease = copy.record.lease.unwrap_or(self.inner.settings.lease);
        let epoch = self.inner.lock.epoch().await?;
        let since = copy.meta.last_modified.max(epoch);
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        Ok(Utc::now() >= since + lease)
    }

    /// Claims a message that was claimed before: a new attempt, or `failed/` when that
    /// would pass `max_attempts`.
    async fn take_again(
        &self,
        name: &str,
        copy: StoredCopy,
        token: &Token,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let attempt = copy.record.attempt + 1;
        if attempt > self.inner.settings.max_attempts {
            let record = Record {
                attempt: copy.record.attempt,
                fence: token.fence(),
                lease: None,
                not_before: None,
                reason: Some(TOO_MANY_ATTEMPTS.to_string()),
            };
            self.inner
                .mover
                .move_object(&copy.meta, &State::Failed.path(name), &record.to_update())
                .await?;
            tracing::warn!(
                name,
                attempts = copy.record.attempt,
                last_reason = copy.record.reason.as_deref().unwrap_or(""),
                "message failed: {TOO_MANY_ATTEMPTS}"
            );
            return Ok(None);
        }
        let record = Record {
            attempt,
            fence: token.fence(),
            lease: Some(lease),
            not_before: None,
            reason: copy.record.reason.clone(),
        };
        match copy.state {
            // An abandoned claim is taken over where it is.
            State::Processing => {
                self.inner
                    .mover
                    .update_metadata(&copy.meta, &record.to_update())
                    .await?
            }
            _ => {
                self.inner
                    .mover
                    .move_object(
                        &copy.meta,
                        &State::Processing.path(name),
                        &record.to_update(),
                    )
                    .await?
            }
        }
        Ok(Some(self.new_claim(name, token, record, &copy.meta, lease)))
    }

    /// The claim on `name`, now under `processing/`, moved there from `source` (whose size
    /// and ETag it keeps: a verified copy has both).
    fn new_claim(
        &self,
        name: &str,
        token: &Token,
        record: Record,
        source: &ObjectMeta,
        lease: Duration,
    ) -> Claim {
        let meta = ObjectMeta {
            location: State::Processing.path(name),
            last_modified: Utc::now(),
            size: source.size,
            e_tag: source.e_tag.clone(),
            version: None,
        };
        Claim::new(
            self.clone(),
            name.to_string(),
            token.clone(),
            record,
            meta,
            lease,
        )
    }

    /// Every copy of `name`, one per folder that holds it.
    pub async fn copies(&self, name: &str) -> Result<Vec<StoredCopy>, QueueError> {
        let heads = futures::future::join_all(State::ALL.map(|s| self.head(s, name))).await;
        heads.into_iter().filter_map(Result::transpose).collect()
    }

    /// The copy of `name` in `state`, if there is one.
    pub async fn head(&self, state: State, name: &str) -> Result<Option<StoredCopy>, QueueError> {
        let store = &self.inner.destination.store;
        match store
            .get_opts(&state.path(name), GetOptions::new().with_head(true))
            .await
        {
            Ok(result) => Ok(Some(StoredCopy {
                state,
                record: Record::from_attributes(&result.attributes),
                meta: result.meta,
                attributes: result.attributes,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The newest copy of `name`; older copies (leftovers of interrupted moves) are deleted.
    /// Only called under the message's lease.
    async fn resolve(&self, name: &str) -> Result<Option<StoredCopy>, QueueError> {
        let copies = self.copies(name).await?;
        let Some(newest) = newest_copy(&copies).cloned() else {
            return Ok(None);
        };
        for stale in copies.iter().filter(|c| c.state != newest.state) {
            tracing::warn!(
                name,
                kept = %newest.state,
                deleted = %stale.state,
                "message found in two states (an interrupted move): keeping the later copy"
            );
            match self
                .inner
                .destination
                .store
                .delete(&stale.meta.location)
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(newest))
    }

    /// Lists the messages directly under a state folder, in the order claims take them:
    /// by the time in the name (else the object's time), then by name.
    async fn list_folder(&self, state: State) -> Result<Vec<ObjectMeta>, QueueError> {
        let prefix = state.prefix();
        let mut listed: Vec<ObjectMeta> = self
            .inner
            .destination
            .store
            .list(Some(&prefix))
            .try_filter(|m| {
                let direct = m.location.parts().count() == 2;
                std::future::ready(direct && record::is_message_name(&name_of(m)))
            })
            .try_collect()
            .await?;
        listed.sort_by_cached_key(|m| {
            let name = name_of(m);
            (record::received(&name).unwrap_or(m.last_modified), name)
        });
        Ok(listed)
    }

    /// Count, bytes and the oldest entry time of every state.
    pub async fn stats(&self) -> Result<Vec<(State, StateStats)>, QueueError> {
        let lists = futures::future::join_all(State::ALL.map(|s| async move {
            let listed = self.list_folder(s).await?;
            Ok::<_, QueueError>((
                s,
                StateStats {
                    count: listed.len() as u64,
                    bytes: listed.iter().map(|m| m.size).sum(),
                    oldest: listed.iter().map(|m| m.last_modified).min(),
                },
            ))
        }))
        .await;
        lists.into_iter().collect()
    }

    /// Up to `limit` messages of `state`, in claim order, with their attempt counts.
    pub async fn list(&self, state: State, limit: usize) -> Result<Vec<Entry>, QueueError> {
        let listed = self.list_folder(state).await?;
        let entries = futures::stream::iter(listed.into_iter().take(limit))
            .map(|meta| async move {
                let name = name_of(&meta);
                // Messages under cur/ were never claimed: no need to read their record.
                let attempt = match state {
                    State::Cur => 0,
                    _ => self
                        .head(state, &name)
                        .await?
                        .map(|c| c.record.attempt)
                        .unwrap_or(0),
                };
                Ok::<_, QueueError>(Entry {
                    key: format!("{state}/{name}"),
                    received: record::received(&name).unwrap_or(meta.last_modified),
                    name,
                    state,
                    size: meta.size,
                    attempt,
                })
            })
            .buffered(16)
            .try_collect()
            .await?;
        Ok(entries)
    }

    /// The message named by `key`: every copy, the newest first.
    pub async fn find(&self, key: &str) -> Result<Vec<StoredCopy>, QueueError> {
        let reference: MessageRef = key.parse().map_err(QueueError::Refused)?;
        let mut copies = self.copies(&reference.name).await?;
        if copies.is_empty() {
            return Err(QueueError::NotFound(key.to_string()));
        }
        copies.sort_by_key(|c| std::cmp::Reverse((c.record.fence, c.state)));
        Ok(copies)
    }

    /// The SHA-256 of a message's bytes: the `sha256` metadata the filter wrote, else
    /// computed from the object.
    pub async fn sha256(&self, copy: &StoredCopy) -> Result<String, QueueError> {
        let stored = copy
            .attributes
            .get(&object_store::Attribute::Metadata("sha256".into()))
            .map(|v| v.as_ref().to_string())
            .filter(|v| v.len() == 64);
        if let Some(sha) = stored {
            return Ok(sha);
        }
        let mut stream = self
            .inner
            .destination
            .store
            .get(&copy.meta.location)
            .await?
            .into_stream();
        let mut hasher = Sha256::new();
        while let Some(chunk) = stream.next().await {
            hasher.update(chunk?);
        }
        Ok(hex(&hasher.finalize()))
    }

    /// A finished message with the same bytes, finished within `dedup_window`, other than
    /// `name` itself.
    pub async fn duplicate_of(
        &self,
        name: &str,
        sha256: &str,
    ) -> Result<Option<FinishedRef>, QueueError> {
        let found = self.inner.lock.finished(sha256).await?;
        Ok(found.filter(|f| f.key.rsplit('/').next() != Some(name)))
    }

    /// The holder of `name`'s lease, if any.
    pub async fn holder(&self, name: &str) -> Result<Option<Holder>, QueueError> {
        Ok(self
            .inner
            .lock
            .holders(&[name.to_string()])
            .await?
            .pop()
            .flatten())
    }

    /// The claim that `token` holds on the message `key` (for a token handed to another
    /// process, as the CLI does): [`QueueError::LeaseLost`] when the message in
    /// `processing/` was written under another lease, or is not there.
    pub async fn resume(&self, key: &str, token: &Token) -> Result<Claim, QueueError> {
        let reference: MessageRef = key.parse().map_err(QueueError::Refused)?;
        let name = reference.name;
        let lost = || QueueError::LeaseLost { name: name.clone() };
        let copy = self
            .head(State::Processing, &name)
            .await?
            .ok_or_else(lost)?;
        if copy.record.fence != token.fence() {
            return Err(lost());
        }
        let lease = self.inner.settings.lease;
        let claim = Claim::resumed(self.clone(), name.clone(), token.clone(), copy, lease);
        Ok(claim)
    }

    /// Moves a `failed/`, `retry/` or `done/` message back to `cur/`, as never claimed.
    pub async fn requeue(&self, key: &str) -> Result<Finished, QueueError> {
        let reference: MessageRef = key.parse().map_err(QueueError::Refused)?;
        let name = reference.name;
        let lease = self.inner.settings.lease;
        let Some(token) = self
            .inner
            .lock
            .acquire(&name, &self.inner.owner, lease)
            .await?
        else {
            let holder = self.holder(&name).await?;
            return Err(QueueError::Refused(match holder {
                Some(h) => format!(
                    "{name} is claimed by {} for another {}s",
                    h.token.owner(),
                    h.remaining.as_secs()
                ),
                None => format!("{name} is claimed; try again"),
            }));
        };
        let result = self.requeue_leased(&name, &token).await;
        if let Err(e) = self.inner.lock.release(&name, &token).await {
            tracing::warn!(name, error = %e, "could not release a lease; it expires by itself");
        }
        let finished = result?;
        self.announce(&name).await;
        Ok(finished)
    }

    /// The requeue under the lease: through `processing/`, so that a crash halfway leaves
    /// a copy there, which claims resolve, and never a second copy beside `cur/`, which
    /// they would not meet.
    async fn requeue_leased(&self, name: &str, token: &Token) -> Result<Finished, QueueError> {
        let newest = self
            .resolve(name)
            .await?
            .ok_or_else(|| QueueError::NotFound(name.to_string()))?;
        let from = newest.state;
        match from {
            State::Cur => return Err(QueueError::Refused(format!("{name} is already in cur/"))),
            State::Processing => {
                return Err(QueueError::Refused(format!(
                    "{name} is in processing/: finish or release its claim, or wait until its lease expires"
                )));
            }
            _ => {}
        }
        let mut record = Record {
            attempt: 0,
            fence: token.fence(),
            lease: Some(self.inner.settings.lease),
            not_before: None,
            reason: Some(format!("requeued from {from}/")),
        };
        let processing = State::Processing.path(name);
        self.inner
            .mover
            .move_object(&newest.meta, &processing, &record.to_update())
            .await?;
        failpoint::hit("requeue.half");
        let moved = ObjectMeta {
            location: processing,
            last_modified: Utc::now(),
            ..newest.meta
        };
        record.lease = None;
        self.inner
            .mover
            .move_object(&moved, &State::Cur.path(name), &record.to_update())
            .await?;
        tracing::info!(name, %from, "requeued");
        Ok(Finished {
            key: format!("cur/{name}"),
            state: State::Cur,
        })
    }

    /// Says that `name` is new under `cur/` (best effort: the periodic listing finds what
    /// an announcement misses).
    async fn announce(&self, name: &str) {
        if let Err(e) = self.inner.lock.announce(name).await {
            tracing::debug!(name, error = %e, "announcement failed");
        }
    }

    /// Deletes the messages of `state` that entered it more than `older_than` ago (in
    /// `processing/`, only those without a live lease). `progress` is called after each.
    pub async fn purge(
        &self,
        state: State,
        older_than: Duration,
        dry_run: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<PurgeReport, QueueError> {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(older_than).unwrap_or(chrono::Duration::MAX);
        let mut old: Vec<ObjectMeta> = self
            .list_folder(state)
            .await?
            .into_iter()
            .filter(|m| m.last_modified < cutoff)
            .collect();
        if state == State::Processing {
            let names: Vec<String> = old.iter().map(name_of).collect();
            let holders = self.inner.lock.holders(&names).await?;
            old = old
                .into_iter()
                .zip(holders)
                .filter(|(_, h)| h.is_none())
                .map(|(m, _)| m)
                .collect();
        }
        let mut report = PurgeReport {
            matched: old.len() as u64,
            bytes: old.iter().map(|m| m.size).sum(),
            ..PurgeReport::default()
        };
        if dry_run {
            return Ok(report);
        }
        if let Err(e) = self.inner.lock.forget_expired().await {
            tracing::warn!(error = %e, "cannot clean the dedup index");
        }
        let total = report.matched;
        let store = self.inner.destination.store.clone();
        let mut deletions = futures::stream::iter(old)
            .map(|meta| {
                let store = store.clone();
                async move {
                    let result = store.delete(&meta.location).await;
                    (meta, result)
                }
            })
            .buffer_unordered(8);
        while let Some((meta, result)) = deletions.next().await {
            match result {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => report.deleted += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(key = %meta.location, error = %e, "could not purge");
                }
            }
            progress(report.deleted + report.failed, total);
        }
        Ok(report)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> &Arc<dyn LockEngine> {
        &self.lock
    }

    pub(crate) fn mover(&self) -> &Arc<dyn Mover> {
        &self.mover
    }

    pub(crate) fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.destination.store
    }
}

/// The newest of several copies of one message: highest fencing number, then latest state.
pub fn newest_copy(copies: &[StoredCopy]) -> Option<&StoredCopy> {
    copies.iter().max_by_key(|c| (c.record.fence, c.state))
}

/// The Maildir name of a listed object (its last path segment).
fn name_of(meta: &ObjectMeta) -> String {
    meta.location.filename().unwrap_or_default().to_string()
}
