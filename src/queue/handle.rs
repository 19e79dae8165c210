//! The [`Queue`] handle of one destination: opening it (lock engine, queue id), finding a
//! message's copies and the newest of them, the store steps every move is made of, lease
//! checks, stats, lists and dedup lookups. Claiming is [`super::take`]'s, a claim's life
//! [`super::claim`]'s, operators' moves [`super::operator`]'s.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use super::candidates::{Candidates, Wake};
use super::dedup::DedupDigest;
use super::lock::{self, FinishedRef, Holder, LockEngine, LockError, Token};
use super::record::{CopyKey, MessageRef, Record, State};
use crate::config::{Config, LOCK_VARIABLE, LockSetting, QueueSettings};
use crate::store::Destination;
use crate::store::mover::{Mover, Renamer};
use crate::util::hex::hex;

/// The reason given to a message failed for having been claimed too often.
pub const TOO_MANY_ATTEMPTS: &str = "too many attempts";
/// The state directory's name inside a Maildir, for the `local` lock.
pub const STATE_DIR_IN_MAILDIR: &str = ".swiftdrop-queue";
/// Keys asked for in one listing request.
pub(super) const PAGE: usize = 1000;

/// What went wrong with a queue operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The token no longer holds the message's lease: the claim moves nothing more.
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
#[derive(Debug, Clone, Default)]
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

/// One copy of a message: its key, its object and its record.
#[derive(Debug, Clone)]
pub struct StoredCopy {
    /// Its key: state, name, fence.
    pub key: CopyKey,
    /// The object, as a HEAD saw it.
    pub meta: ObjectMeta,
    /// The queue's record in its metadata.
    pub record: Record,
    /// All of its metadata.
    pub attributes: object_store::Attributes,
}

impl StoredCopy {
    /// Its state folder.
    pub fn state(&self) -> State {
        self.key.state
    }
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The copy's key, e.g. `processing/<name>@<fence>`.
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
    /// Objects in the state's folder that are no key of the queue (nor a `retry/` marker):
    /// files other software put there, names the queue could not write back as they are
    /// ([`super::record::is_message_name`]). Never taken, never deleted: an operator's to
    /// look at.
    pub foreign: u64,
}

/// One page of a state's folder ([`Queue::list_keys`]).
pub(super) struct KeyPage {
    /// The copies, in key order.
    pub keys: Vec<(CopyKey, ObjectMeta)>,
    /// Where the next page begins; `None` after the last.
    pub next: Option<String>,
    /// Objects of the page that are no key of the queue ([`StateStats::foreign`]).
    pub foreign: u64,
}

/// What `purge` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Messages old enough.
    pub matched: u64,
    /// Of those, deleted (0 with `dry_run`).
    pub deleted: u64,
    /// Of those, left alone: held by a worker (or possibly held: the lock engine's data is
    /// younger than a lease), or a newer copy is elsewhere.
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

pub(super) struct Inner {
    pub(super) destination: Destination,
    pub(super) mover: Arc<dyn Mover>,
    /// Where a move is one rename (a Maildir): made under the lease table's lock.
    pub(super) renamer: Option<Arc<dyn Renamer>>,
    pub(super) lock: Arc<dyn LockEngine>,
    pub(super) settings: QueueSettings,
    pub(super) owner: String,
    /// Held only to take or put candidates, never across a request.
    pub(super) candidates: Mutex<Candidates>,
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

/// Whether `name`, not under `cur/` any more, was taken on by a worker: the lock engine
/// that workers take it under has (or lately had) a lease on it, or a copy of it is in a
/// later folder. For the filter, which must not write again a message that left `cur/`.
pub async fn moved_on(
    destination: &Destination,
    lock: Option<&dyn LockEngine>,
    name: &str,
) -> Result<bool, QueueError> {
    if let Some(lock) = lock {
        if lock.taken(name).await? {
            return Ok(true);
        }
    }
    let found = look(destination.mover().as_ref(), &destination.store, name).await?;
    Ok(found.keys.iter().any(|k| k.state != State::Cur))
}

/// What the store holds of one message by name: the keys of its copies, and the `retry/`
/// markers whose copies could not be read (an orphan: its copy is gone, or was never
/// made).
#[derive(Debug, Default)]
struct Found {
    keys: Vec<CopyKey>,
    orphans: Vec<(u64, Path)>,
}

/// Finds the copies of `name` by listing each folder by the name. A `retry/` copy is found
/// by its marker where moves copy (the marker's body is its key); on a Maildir, where no
/// move leaves two copies and only operators ask, by one look at all of `retry/`.
async fn look(
    mover: &dyn Mover,
    store: &Arc<dyn ObjectStore>,
    name: &str,
) -> Result<Found, QueueError> {
    let renames = mover.renamer().is_some();
    let mut found = Found::default();
    let mut retry_read = false;
    for prefix in CopyKey::prefixes_of(name) {
        let retry = prefix.starts_with(State::Retry.folder());
        let (prefix, max) = if renames && retry {
            if std::mem::replace(&mut retry_read, true) {
                continue;
            }
            (format!("{}/", State::Retry.folder()), usize::MAX)
        } else {
            (prefix, PAGE)
        };
        let mut after: Option<String> = None;
        loop {
            let page = mover.list_page(&prefix, after.as_deref(), max).await?;
            after = page.objects.last().map(|m| m.location.to_string());
            for meta in &page.objects {
                let key = meta.location.as_ref();
                if let Some(k) = CopyKey::parse(key).filter(|k| k.name == name) {
                    if !found.keys.contains(&k) {
                        found.keys.push(k);
                    }
                } else if let Some((marked, fence)) = CopyKey::parse_marker(key) {
                    if marked == name {
                        match read_marker(store, &meta.location).await? {
                            Some(k) if k.name == name && !found.keys.contains(&k) => {
                                found.keys.push(k)
                            }
                            Some(_) => {}
                            None => found.orphans.push((fence, meta.location.clone())),
                        }
                    }
                }
            }
            if !page.more || page.objects.is_empty() {
                break;
            }
        }
    }
    Ok(found)
}

/// The key a `retry/` marker names (its body); `None` when it is gone or unreadable.
async fn read_marker(
    store: &Arc<dyn ObjectStore>,
    marker: &Path,
) -> Result<Option<CopyKey>, QueueError> {
    match store.get(marker).await {
        Ok(result) => {
            let body = result.bytes().await?;
            Ok(CopyKey::parse(String::from_utf8_lossy(&body).trim()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
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
        let mover = destination.mover();
        Queue {
            inner: Arc::new(Inner {
                renamer: mover.renamer(),
                mover,
                destination,
                lock,
                settings: settings.clone(),
                owner: lock::new_owner_id(hostname),
                candidates: Mutex::new(Candidates::new()),
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

    /// Every copy of `name` there is, with its record.
    pub async fn copies(&self, name: &str) -> Result<Vec<StoredCopy>, QueueError> {
        Ok(self.look_at(name).await?.copies)
    }

    /// Every copy of `name` there is, with its record, and the orphan `retry/` markers.
    pub(super) async fn look_at(&self, name: &str) -> Result<Copies, QueueError> {
        let found = look(
            self.inner.mover.as_ref(),
            &self.inner.destination.store,
            name,
        )
        .await?;
        let heads = futures::future::join_all(found.keys.iter().map(|k| self.head(k))).await;
        let copies = heads
            .into_iter()
            .filter_map(Result::transpose)
            .collect::<Result<Vec<_>, _>>()?;
        let mut orphans = found.orphans;
        // A marker whose copy is not there is an orphan too.
        for key in found.keys.iter().filter(|k| k.state == State::Retry) {
            if let Some(marker) = key.marker() {
                if !copies.iter().any(|c| c.key == *key) {
                    orphans.push((key.fence, marker));
                }
            }
        }
        Ok(Copies { copies, orphans })
    }

    /// The copies of `key`'s message, `key` itself included when it is there: a listing may
    /// not show it yet, and a copy the look by name cannot find (a `retry/` copy whose
    /// marker is gone) must still be weighed against the others.
    pub(super) async fn look_around(&self, key: &CopyKey) -> Result<Copies, QueueError> {
        let mut found = self.look_at(&key.name).await?;
        if !found.copies.iter().any(|c| c.key == *key) {
            if let Some(copy) = self.head(key).await? {
                found.copies.push(copy);
            }
        }
        Ok(found)
    }

    /// The copies a claim under `fence` left in the folders after `processing/` (its
    /// finish), looked up by their exact keys: a read, unlike a listing, sees an object the
    /// moment it is written.
    pub(super) async fn finished_by(
        &self,
        name: &str,
        fence: u64,
    ) -> Result<Vec<StoredCopy>, QueueError> {
        let mut keys = vec![
            CopyKey::new(State::Failed, name, fence),
            CopyKey::new(State::Done, name, fence),
        ];
        if self.inner.renamer.is_none() {
            let marker = super::record::marker_of(name, fence);
            if let Some(key) = read_marker(&self.inner.destination.store, &marker).await? {
                keys.push(key);
            }
        }
        let heads = futures::future::join_all(keys.iter().map(|k| self.head(k))).await;
        heads.into_iter().filter_map(Result::transpose).collect()
    }

    /// The copy at `key`, if there is one.
    pub async fn head(&self, key: &CopyKey) -> Result<Option<StoredCopy>, QueueError> {
        let store = &self.inner.destination.store;
        match store
            .get_opts(&key.path(), GetOptions::new().with_head(true))
            .await
        {
            Ok(result) => Ok(Some(StoredCopy {
                key: key.clone(),
                record: Record::from_attributes(&result.attributes),
                meta: result.meta,
                attributes: result.attributes,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `max` objects of `state` in key order after `after`: its keys in claim order
    /// (oldest mail first; in `retry/`, earliest due first), without markers, and how many
    /// objects were no key at all.
    pub(super) async fn list_keys(
        &self,
        state: State,
        after: Option<&str>,
        max: usize,
    ) -> Result<KeyPage, QueueError> {
        let prefix = format!("{}/", state.folder());
        let page = self.inner.mover.list_page(&prefix, after, max).await?;
        let next = page
            .more
            .then(|| page.objects.last().map(|m| m.location.to_string()))
            .flatten();
        let mut keys = Vec::with_capacity(page.objects.len());
        let mut foreign = 0;
        for meta in page.objects {
            let key = meta.location.as_ref();
            match CopyKey::parse(key) {
                Some(copy) => keys.push((copy, meta)),
                None if CopyKey::parse_marker(key).is_some() => {}
                None => foreign += 1,
            }
        }
        Ok(KeyPage {
            keys,
            next,
            foreign,
        })
    }

    /// Every key of `state`, page after page (operators' commands; a claim never does this).
    pub(super) async fn all_keys(
        &self,
        state: State,
    ) -> Result<Vec<(CopyKey, ObjectMeta)>, QueueError> {
        Ok(self.whole_folder(state).await?.keys)
    }

    /// The whole folder of `state` as one page.
    async fn whole_folder(&self, state: State) -> Result<KeyPage, QueueError> {
        let mut all = KeyPage {
            keys: Vec::new(),
            next: None,
            foreign: 0,
        };
        loop {
            let page = self.list_keys(state, all.next.as_deref(), PAGE).await?;
            all.keys.extend(page.keys);
            all.foreign += page.foreign;
            all.next = page.next;
            if all.next.is_none() {
                return Ok(all);
            }
        }
    }

    /// Count, bytes and the oldest entry time of every state.
    pub async fn stats(&self) -> Result<Vec<(State, StateStats)>, QueueError> {
        let lists = futures::future::join_all(State::ALL.map(|s| async move {
            let folder = self.whole_folder(s).await?;
            let listed = &folder.keys;
            Ok::<_, QueueError>((
                s,
                StateStats {
                    count: listed.len() as u64,
                    bytes: listed.iter().map(|(_, m)| m.size).sum(),
                    oldest: listed.iter().map(|(_, m)| m.last_modified).min(),
                    foreign: folder.foreign,
                },
            ))
        }))
        .await;
        lists.into_iter().collect()
    }

    /// Whether the lock engine answers (`swiftdrop check`, the worker's readiness): what it
    /// is, e.g. `redis 7.0.15 at 127.0.0.1:6379`.
    pub async fn check_lock(&self) -> Result<String, LockError> {
        self.inner.lock.check().await
    }

    /// The first `limit` messages of `state`, in claim order, with their attempt counts.
    pub async fn list(&self, state: State, limit: usize) -> Result<Vec<Entry>, QueueError> {
        self.list_after(state, None, limit).await
    }

    /// [`Queue::list`] from the message after the copy key `after` (a page that follows
    /// another: its last [`Entry::key`]).
    pub async fn list_after(
        &self,
        state: State,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entry>, QueueError> {
        let mut listed = Vec::new();
        let mut after = after.map(str::to_string);
        while listed.len() < limit {
            let want = (limit - listed.len()).min(PAGE);
            let page = self.list_keys(state, after.as_deref(), want).await?;
            listed.extend(page.keys);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let entries = futures::stream::iter(listed.into_iter().take(limit))
            .map(|(key, meta)| async move {
                // Messages under cur/ were never claimed since they got there.
                let attempt = match state {
                    State::Cur => 0,
                    _ => self
                        .head(&key)
                        .await?
                        .map(|c| c.record.attempt)
                        .unwrap_or(0),
                };
                Ok::<_, QueueError>(Entry {
                    key: key.to_string(),
                    received: super::record::received(&key.name).unwrap_or(meta.last_modified),
                    name: key.name,
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
        copies.sort_by_key(|c| std::cmp::Reverse(c.key.rank()));
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
        Ok(found.filter(|f| f.key.parse::<MessageRef>().map_or(true, |r| r.name != name)))
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

    /// Announces a new copy under `cur/`: its name (the filter's copy) or its key (a
    /// requeued copy). Best effort: the periodic listing finds what an announcement misses.
    pub(super) async fn announce(&self, name_or_key: &str) {
        if let Err(e) = self.inner.lock.announce(name_or_key).await {
            tracing::debug!(name_or_key, error = %e, "announcement failed");
        }
    }

    /// Takes the lease on `name` for this queue's owner; `None` when somebody holds it (or,
    /// `respect_mark`, when it carries the mark of a claim that lately finished it).
    pub(super) async fn acquire(
        &self,
        name: &str,
        lease: Duration,
        respect_mark: bool,
    ) -> Result<Option<Token>, QueueError> {
        let (lock, owner) = (&self.inner.lock, &self.inner.owner);
        Ok(if respect_mark {
            lock.acquire_unmarked(name, owner, lease).await?
        } else {
            lock.acquire(name, owner, lease).await?
        })
    }

    /// Gives a lease up (best effort: it runs out by itself).
    pub(super) async fn release_lease(&self, name: &str, token: &Token) {
        if let Err(e) = self.inner.lock.release(name, token).await {
            tracing::warn!(name, error = %e, "could not release a lease; it expires by itself");
        }
    }

    /// Renews the lease of `token` on `name` to `lease`; [`QueueError::LeaseLost`] when it
    /// no longer holds it. A lock engine that cannot be reached (restarting) is asked again
    /// for up to one lease before the error is returned: this check stands between a
    /// landed copy and what follows it. A check that took half a lease or more is made
    /// again, so that what follows has at least half a lease left.
    pub(super) async fn check_lease(
        &self,
        name: &str,
        token: &Token,
        lease: Duration,
    ) -> Result<(), QueueError> {
        let give_up = Instant::now().checked_add(lease);
        let mut pause = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let past = |wait: Duration| give_up.is_none_or(|g| Instant::now() + wait >= g);
            match self.inner.lock.renew(name, token, lease).await {
                Ok(true) if started.elapsed() < lease / 2 => return Ok(()),
                Ok(true) if !past(Duration::ZERO) => {
                    tracing::warn!(name, "the lease check took half a lease; checking again");
                }
                Ok(true) if started.elapsed() < lease => return Ok(()),
                Ok(_) => {
                    return Err(QueueError::LeaseLost {
                        name: name.to_string(),
                    });
                }
                Err(e) if !past(pause) => {
                    tracing::warn!(name, error = %e, "cannot check the lease; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// How long until a claim under `processing/` whose record is `record` and that has no
    /// live lease may be taken over: `None` once the lock engine's data is older than the
    /// claim's lease, so that a lease lost with the engine's data (renewed at most when the
    /// data began) has run out and its claim has learnt it. Both durations come from the
    /// engine's clock, none from the store's timestamps or this machine's.
    pub(super) async fn until_abandoned(
        &self,
        record: &Record,
    ) -> Result<Option<Duration>, QueueError> {
        let lease = record.lease.unwrap_or(self.inner.settings.lease);
        let age = self.inner.lock.data_age().await?;
        Ok(lease.checked_sub(age).filter(|wait| !wait.is_zero()))
    }

    /// On a store where a move is a rename: renames `from` to `to` with `record` while
    /// `token` holds the lease, under the lease table's lock where the lock engine has one,
    /// then makes it durable. [`QueueError::NotFound`]: `from` is not there (moved on).
    pub(super) async fn rename_held(
        &self,
        renamer: &Arc<dyn Renamer>,
        token: &Token,
        lease: Duration,
        from: &CopyKey,
        to: &CopyKey,
        record: &Record,
    ) -> Result<(), QueueError> {
        let (from_path, to_path, update) = (from.path(), to.path(), record.to_update());
        let step_renamer = Arc::clone(renamer);
        let (f, t) = (from_path.clone(), to_path.clone());
        let step = Box::new(move || step_renamer.rename(&f, &t, &update));
        match self
            .inner
            .lock
            .with_lease(&from.name, token, lease, step)
            .await?
        {
            None => Err(QueueError::LeaseLost {
                name: from.name.clone(),
            }),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(())) => {
                let renamer = Arc::clone(renamer);
                blocking(move || renamer.sync(&from_path, &to_path)).await
            }
        }
    }

    /// On a store where a move copies: copies `from` to `to` with `record`, verified.
    pub(super) async fn copy_to(
        &self,
        from: &ObjectMeta,
        to: &CopyKey,
        record: &Record,
    ) -> Result<(), QueueError> {
        self.inner
            .mover
            .copy_verified(from, &to.path(), &record.to_update())
            .await
            .map_err(QueueError::from)
    }

    /// Deletes one copy (and, where moves copy, its marker); a missing one is fine.
    pub(super) async fn delete_copy(
        &self,
        key: &CopyKey,
        meta: &ObjectMeta,
    ) -> Result<(), QueueError> {
        self.inner.mover.remove(meta).await?;
        if let Some(marker) = key.marker().filter(|_| self.inner.renamer.is_none()) {
            self.delete_object(&marker).await?;
        }
        Ok(())
    }

    /// Deletes the object at `path`; a missing one is fine.
    pub(super) async fn delete_object(&self, path: &Path) -> Result<(), QueueError> {
        match self.inner.destination.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the marker of a `retry/` copy (its body the copy's key), before the copy.
    pub(super) async fn put_marker(&self, key: &CopyKey) -> Result<(), QueueError> {
        if let Some(marker) = key.marker() {
            self.inner
                .destination
                .store
                .put(&marker, PutPayload::from(key.to_string().into_bytes()))
                .await?;
        }
        Ok(())
    }

    /// Deletes what `newest` outranks in `found`: copies, and orphan markers of lower
    /// fencing numbers. Anyone who has seen a copy outranked may delete it, since no copy
    /// ranked above another ever goes away before a copy ranked higher still exists
    /// (`ARCHITECTURE.md`). A copy a claim could start from (`cur/`, `retry/`) must go before
    /// a claim is handed out: an error then; others are best effort (logged), met again by
    /// the next look.
    pub(super) async fn delete_outranked(
        &self,
        found: &Copies,
        newest: &CopyKey,
    ) -> Result<(), QueueError> {
        let mut takeable_left = None;
        for copy in found.copies.iter().filter(|c| c.key.rank() < newest.rank()) {
            match self.delete_copy(&copy.key, &copy.meta).await {
                Ok(()) => {
                    tracing::info!(key = %copy.key, newest = %newest, "outranked copy deleted")
                }
                Err(e) if matches!(copy.state(), State::Cur | State::Retry) => {
                    takeable_left = Some(QueueError::Store(format!(
                        "cannot delete the outranked copy {}: {e}",
                        copy.key
                    )));
                }
                Err(e) => {
                    tracing::warn!(key = %copy.key, error = %e, "cannot delete an outranked copy; the next look deletes it")
                }
            }
        }
        for (fence, marker) in found.orphans.iter().filter(|(f, _)| *f < newest.fence) {
            if let Err(e) = self.delete_object(marker).await {
                tracing::warn!(%marker, fence, error = %e, "cannot delete an orphan marker");
            }
        }
        takeable_left.map_or(Ok(()), Err)
    }

    /// Whether moves on this store are renames.
    pub(super) fn renamer(&self) -> Option<&Arc<dyn Renamer>> {
        self.inner.renamer.as_ref()
    }
}

/// `t` plus `d`, at most the latest time chrono knows (a library caller may pass any
/// duration; a sum must not panic).
pub(super) fn later(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t` minus `d`, at least the earliest time chrono knows.
pub(super) fn earlier(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The copies of one message, and the orphan `retry/` markers met on the way.
#[derive(Debug, Default)]
pub(super) struct Copies {
    pub(super) copies: Vec<StoredCopy>,
    pub(super) orphans: Vec<(u64, Path)>,
}

impl Copies {
    /// The newest copy.
    pub(super) fn newest(&self) -> Option<&StoredCopy> {
        newest_copy(&self.copies)
    }
}

/// The newest of several copies of one message: the highest rank.
pub fn newest_copy(copies: &[StoredCopy]) -> Option<&StoredCopy> {
    copies.iter().max_by_key(|c| c.key.rank())
}

/// The object `source` became at `target` after a verified move: the same size and ETag.
pub(super) fn moved(source: &ObjectMeta, target: &CopyKey) -> ObjectMeta {
    ObjectMeta {
        location: target.path(),
        last_modified: Utc::now(),
        size: source.size,
        e_tag: source.e_tag.clone(),
        version: None,
    }
}

/// Runs blocking store work off the runtime's threads.
pub(super) async fn blocking(
    work: impl FnOnce() -> object_store::Result<()> + Send + 'static,
) -> Result<(), QueueError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| QueueError::Store(e.to_string()))?
        .map_err(QueueError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(state: State, fence: u64) -> StoredCopy {
        let key = CopyKey {
            state,
            name: "m".into(),
            fence,
            due: (state == State::Retry).then(Utc::now),
        };
        StoredCopy {
            meta: ObjectMeta {
                location: key.path(),
                last_modified: Utc::now(),
                size: 1,
                e_tag: None,
                version: None,
            },
            key,
            record: Record::default(),
            attributes: object_store::Attributes::new(),
        }
    }

    #[test]
    fn the_later_copy_wins_by_fence_then_state() {
        let newest = |copies: &[StoredCopy]| newest_copy(copies).map(|c| (c.state(), c.key.fence));
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
