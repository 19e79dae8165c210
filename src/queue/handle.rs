//! The [`Queue`] handle of one destination: opening it (lock engine, queue id), a message's
//! copies and their resolution (fence, then state), the fenced `transfer` every move uses,
//! lease checks, stats, lists and dedup lookups. Claiming is [`super::take`]'s, a claim's
//! life [`super::claim`]'s, operators' moves [`super::operator`]'s.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::{GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};

use super::candidates::{Candidates, Wake};
use super::dedup::DedupDigest;
use super::lock::{self, FinishedRef, Holder, LockEngine, LockError, Token};
use super::record::{self, MessageRef, Record, State};
use crate::config::{Config, LOCK_VARIABLE, LockSetting, QueueSettings};
use crate::store::Destination;
use crate::store::mover::Mover;
use crate::util::failpoint;
use crate::util::hex::hex;

/// The reason given to a message failed for having been claimed too often.
pub const TOO_MANY_ATTEMPTS: &str = "too many attempts";
/// The state directory's name inside a Maildir, for the `local` lock.
pub const STATE_DIR_IN_MAILDIR: &str = ".swiftdrop-queue";

/// What went wrong with a queue operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The token no longer holds the message's lease: the claim moves nothing more (a copy
    /// it made before it learnt so may remain, outranked by a newer holder's).
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
                "lease lost: the token no longer holds the claim on {name}; the claim can move nothing more"
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

/// The digests of a message's bytes.
#[derive(Debug, Clone)]
pub struct Digests {
    /// SHA-256 of all the bytes.
    pub sha256: String,
    /// What the duplicate index knows the message by ([`DedupDigest`]).
    pub dedup: String,
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
    /// Of those, left alone: held by a worker, or a newer copy is elsewhere.
    pub skipped: u64,
    /// Deletions that failed.
    pub failed: u64,
    /// Bytes of the matched messages.
    pub bytes: u64,
}

/// A queue over one destination; cheap to clone, shared by its claims.
#[derive(Clone)]
pub struct Queue {
    pub(super) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(super) destination: Destination,
    pub(super) mover: Arc<dyn Mover>,
    pub(super) lock: Arc<dyn LockEngine>,
    pub(super) settings: QueueSettings,
    pub(super) owner: String,
    pub(super) candidates: tokio::sync::Mutex<Candidates>,
    pub(super) wake: Wake,
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
/// queue's keys in a shared lock engine. It is derived from [`Destination::identity`], so
/// every machine that reaches the same container or bucket by the same address agrees on it
/// (`swiftdrop check` prints it, to compare across machines).
pub fn queue_id(destination: &Destination) -> String {
    let digest = Sha256::digest(destination.identity().as_bytes());
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
                candidates: tokio::sync::Mutex::new(Candidates::new()),
                wake: Wake::default(),
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

    /// The newest copy of `name`; older copies (leftovers of interrupted moves) are deleted,
    /// each under the lease `held` ([`Queue::delete_under_lease`]).
    pub(super) async fn resolve(
        &self,
        name: &str,
        held: Held<'_>,
    ) -> Result<Option<StoredCopy>, QueueError> {
        let copies = self.copies(name).await?;
        failpoint::hit("resolve.looked");
        let Some(newest) = newest_copy(&copies).cloned() else {
            return Ok(None);
        };
        let mut confirmed = None;
        for stale in copies.iter().filter(|c| c.state != newest.state) {
            tracing::warn!(
                name,
                kept = %newest.state,
                deleted = %stale.state,
                "message found in two states (an interrupted move): keeping the later copy"
            );
            self.delete_under_lease(name, stale, held, &mut confirmed)
                .await?;
        }
        Ok(Some(newest))
    }

    /// Deletes `copy` under the lease `held`, confirmed in the lock engine unless `confirmed`
    /// (when the last confirmation began) leaves at least half the lease, and only if the
    /// object is still that copy (same fence and ETag, looked at again just before). The
    /// copies were looked at earlier: a worker paused past its lease since then must not
    /// delete what a newer holder has written at the same key meanwhile.
    pub(crate) async fn delete_under_lease(
        &self,
        name: &str,
        copy: &StoredCopy,
        held: Held<'_>,
        confirmed: &mut Option<Instant>,
    ) -> Result<(), QueueError> {
        if confirmed.is_none_or(|c| c.elapsed() >= held.lease / 2) {
            *confirmed = Some(self.check_lease(name, held).await?);
        }
        failpoint::hit("delete.checked");
        let Some(now) = self.head(copy.state, name).await? else {
            return Ok(());
        };
        if now.record.fence != copy.record.fence || now.meta.e_tag != copy.meta.e_tag {
            tracing::warn!(
                name,
                state = %copy.state,
                "not deleted: the copy changed since it was looked at (a newer holder wrote it)"
            );
            return Err(QueueError::LeaseLost {
                name: name.to_string(),
            });
        }
        match self
            .inner
            .destination
            .store
            .delete(&copy.meta.location)
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Lists the messages directly under a state folder, in the order claims take them:
    /// by the time in the name (else the object's time), then by name.
    pub(super) async fn list_folder(&self, state: State) -> Result<Vec<ObjectMeta>, QueueError> {
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
        copies.sort_by_key(|c| std::cmp::Reverse(recency(c)));
        Ok(copies)
    }

    /// A message's digests, read from the object at `meta` in one pass.
    pub async fn digests(&self, meta: &ObjectMeta) -> Result<Digests, QueueError> {
        let mut stream = self
            .inner
            .destination
            .store
            .get(&meta.location)
            .await?
            .into_stream();
        let (mut sha256, mut dedup) = (Sha256::new(), DedupDigest::default());
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            sha256.update(&chunk);
            dedup.update(&chunk);
        }
        Ok(Digests {
            sha256: hex(&sha256.finalize()),
            dedup: dedup.finish(),
        })
    }

    /// A message with the duplicate digest `digest` finished within `dedup_window`, other
    /// than `name` itself.
    pub async fn duplicate_of(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<Option<FinishedRef>, QueueError> {
        let found = self.inner.lock.finished(digest).await?;
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

    /// Says that `name` is new under `cur/` (best effort: the periodic listing finds what
    /// an announcement misses).
    pub(super) async fn announce(&self, name: &str) {
        if let Err(e) = self.inner.lock.announce(name).await {
            tracing::debug!(name, error = %e, "announcement failed");
        }
    }

    /// Moves `name` from `from` to `state` with `record`, under the lease `held`: a verified
    /// copy, then the lease checked again in the lock engine, then the delete of the source.
    /// A holder that lost its lease since its last check (paused, partitioned) gets
    /// [`QueueError::LeaseLost`] and deletes nothing: its copy, written under an older
    /// fencing number, gives way to the newer holder's when the two meet.
    pub(crate) async fn transfer(
        &self,
        name: &str,
        from: &ObjectMeta,
        state: State,
        record: &Record,
        held: Held<'_>,
    ) -> Result<(), QueueError> {
        let mover = &self.inner.mover;
        mover
            .copy_verified(from, &state.path(name), &record.to_update())
            .await
            .map_err(|e| fenced_error(name, e))?;
        failpoint::hit("move.verified");
        self.check_lease(name, held).await?;
        mover.delete_source(from).await?;
        Ok(())
    }

    /// Sets `record` on the copy at `at` in place (the take-over of an abandoned claim),
    /// under the lease `held`, checked again afterwards: a holder paused during the update
    /// must not go on as if it held the claim.
    pub(crate) async fn update_in_place(
        &self,
        name: &str,
        at: &ObjectMeta,
        record: &Record,
        held: Held<'_>,
    ) -> Result<(), QueueError> {
        self.inner
            .mover
            .update_metadata(at, &record.to_update())
            .await
            .map_err(|e| fenced_error(name, e))?;
        self.check_lease(name, held).await.map(drop)
    }

    /// Takes the lease on `name` for this queue's owner; `None` when somebody holds it (or,
    /// `from_cur`, when it is marked as having left `cur/`).
    pub(crate) async fn acquire(
        &self,
        name: &str,
        lease: Duration,
        from_cur: bool,
    ) -> Result<Option<Token>, QueueError> {
        let (lock, owner) = (&self.inner.lock, &self.inner.owner);
        Ok(if from_cur {
            lock.acquire_from_cur(name, owner, lease).await?
        } else {
            lock.acquire(name, owner, lease).await?
        })
    }

    /// Renews the lease `held`; `false` when it is lost. A live claim's lease that the lock
    /// engine lost with its data (a Redis restart without persistence) is taken back when
    /// nobody holds it and the engine's new data is younger than the lease the claim
    /// recorded ([`LockEngine::restore`]): before then nobody takes a `processing/` message
    /// over. It is kept only if the copy under `processing/`, looked at once the lease is
    /// held again (so that nobody can take the message meanwhile), is still the claim's:
    /// its fence and recorded lease. Any doubt gives the lease up: the claim is lost.
    pub(crate) async fn hold(&self, name: &str, held: Held<'_>) -> Result<bool, QueueError> {
        let lock = &self.inner.lock;
        if lock.renew(name, held.token, held.lease).await? {
            return Ok(true);
        }
        let Some(Restorable { recorded, .. }) = held.restorable.filter(|r| Utc::now() < r.until)
        else {
            return Ok(false);
        };
        if !lock.restore(name, held.token, held.lease, recorded).await? {
            return Ok(false);
        }
        let ours = match self.head(State::Processing, name).await {
            Ok(copy) => copy.is_some_and(|c| {
                c.record.fence == held.token.fence() && self.recorded_lease(&c.record) == recorded
            }),
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot check the copy of a lease taken back; giving it up");
                false
            }
        };
        if !ours {
            if let Err(e) = lock.release(name, held.token).await {
                tracing::warn!(name, error = %e, "could not give a lease back; it expires by itself");
            }
            return Ok(false);
        }
        // An incident for the operator: the lock engine lost its data.
        tracing::warn!(name, "lease taken back after the lock engine lost its data");
        Ok(true)
    }

    /// [`Queue::hold`], or [`QueueError::LeaseLost`]. A lock engine that cannot be reached
    /// (restarting) is asked again for up to one lease before the error is returned: this
    /// check stands between a landed copy and the delete of its source, and a move left
    /// half done there is one its caller believes failed. Returns when the confirming check
    /// began; a check that took half a lease or more is made again, so that what follows
    /// has at least half a lease left.
    pub(crate) async fn check_lease(
        &self,
        name: &str,
        held: Held<'_>,
    ) -> Result<Instant, QueueError> {
        let give_up = Instant::now().checked_add(held.lease);
        let mut pause = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let past = |wait: Duration| give_up.is_some_and(|g| Instant::now() + wait >= g);
            match self.hold(name, held).await {
                // What follows a check (a delete) relies on most of the lease being left.
                Ok(true) if started.elapsed() < held.lease / 2 => return Ok(started),
                Ok(true) if !past(Duration::ZERO) => {
                    tracing::warn!(name, "the lease check took half a lease; checking again");
                }
                // Renewed after `started`, so held until at least `started` + lease; the
                // caller judges whether that leaves enough.
                Ok(true) if started.elapsed() < held.lease => return Ok(started),
                Ok(_) => {
                    return Err(QueueError::LeaseLost {
                        name: name.to_string(),
                    });
                }
                Err(QueueError::Lock(e)) if !past(pause) => {
                    tracing::warn!(name, error = %e, "cannot check the lease; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The lease a claim's record names (the queue's default for records without one):
    /// the time a claim without a live lease waits before it is taken over.
    pub(crate) fn recorded_lease(&self, record: &Record) -> Duration {
        record.lease.unwrap_or(self.inner.settings.lease)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> &Arc<dyn LockEngine> {
        &self.lock
    }

    pub(crate) fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.destination.store
    }
}

/// `t` plus `d`, at most the latest time chrono knows (a library caller may pass any
/// duration; a sum must not panic).
pub(crate) fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t` minus `d`, at least the earliest time chrono knows.
pub(crate) fn earlier(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A store error of a move: a refusal by the fence a newer holder wrote means this holder's
/// lease is gone.
pub(super) fn fenced_error(name: &str, e: object_store::Error) -> QueueError {
    match e {
        object_store::Error::Precondition { .. } => QueueError::LeaseLost {
            name: name.to_string(),
        },
        e => e.into(),
    }
}

/// How recent a copy of a message is: the later of two copies has the higher fencing
/// number, or (two moves under one lease) the later state.
pub(super) fn recency(copy: &StoredCopy) -> (u64, State) {
    (copy.record.fence, copy.state)
}

/// A lease as a move or a renewal presents it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held<'a> {
    /// The token that holds it.
    pub token: &'a Token,
    /// The length each renewal asks for.
    pub lease: Duration,
    /// For a live claim of this process: the lease lost with the lock engine's data that
    /// it may take back ([`Queue::hold`]).
    pub restorable: Option<Restorable>,
}

/// What a live claim of this process may take back after the lock engine lost its data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Restorable {
    /// The lease its copy under `processing/` records.
    pub recorded: Duration,
    /// When its lease runs out by this process's clock: never taken back after that (a
    /// worker paused past its lease may have been taken over).
    pub until: DateTime<Utc>,
}

impl<'a> Held<'a> {
    /// The lease of a take, never taken back: the message may still be in the folder it
    /// is taken from, where others may take it without waiting.
    pub(crate) fn taking(token: &'a Token, lease: Duration) -> Held<'a> {
        Held {
            token,
            lease,
            restorable: None,
        }
    }
}

/// The newest of several copies of one message.
pub fn newest_copy(copies: &[StoredCopy]) -> Option<&StoredCopy> {
    copies.iter().max_by_key(|c| recency(c))
}

/// The Maildir name of a listed object (its last path segment).
pub(super) fn name_of(meta: &ObjectMeta) -> String {
    meta.location.filename().unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(state: State, fence: u64) -> StoredCopy {
        StoredCopy {
            state,
            meta: ObjectMeta {
                location: state.path("m"),
                last_modified: Utc::now(),
                size: 1,
                e_tag: None,
                version: None,
            },
            record: Record {
                fence,
                ..Record::default()
            },
            attributes: object_store::Attributes::new(),
        }
    }

    #[test]
    fn the_later_copy_wins_by_fence_then_state() {
        let newest = |copies: &[StoredCopy]| newest_copy(copies).map(|c| (c.state, c.record.fence));
        // A newer lease's copy wins whatever its folder (a requeue's cur/ over done/).
        assert_eq!(
            newest(&[copy(State::Done, 5), copy(State::Cur, 9)]),
            Some((State::Cur, 9))
        );
        // Two moves under one lease: the later folder.
        assert_eq!(
            newest(&[copy(State::Processing, 5), copy(State::Done, 5)]),
            Some((State::Done, 5))
        );
        assert_eq!(
            newest(&[copy(State::Retry, 5), copy(State::Processing, 5)]),
            Some((State::Retry, 5))
        );
        assert_eq!(newest(&[]), None);
    }
}
