//! A claim: the lease on one message's copy `processing/<name>@<fence>`, renewed in the
//! background while the claim lives, and the fenced moves that end it ([`Claim::finish`],
//! [`Claim::release`]).
//!
//! A claim only ever writes, rewrites or deletes keys that carry its own fencing number, so
//! a claim paused past its lease can touch nothing of the claim that took the message over.
//! A finish reports by its lease alone: where a move copies (Swift, S3), the lease is
//! checked before the copy and again once the copy has landed, and only then is the claim's
//! own `processing/` copy deleted; on a Maildir the rename runs under the lease table's lock,
//! the lease checked in the same step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{Attributes, ObjectMeta, ObjectStoreExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::dedup::DedupDigest;
use super::handle::{Queue, QueueError, StoredCopy, TOO_MANY_ATTEMPTS, later, moved};
use super::lock::{FinishedRef, Token};
use super::record::{CopyKey, Record, State};
use crate::util::failpoint;

/// How a worker ends a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: to `done/`.
    Done {
        /// Why, for the record (e.g. "duplicate of ...").
        reason: Option<String>,
    },
    /// Failed for good: to `failed/`.
    Failed {
        /// Why.
        reason: String,
    },
    /// Failed for now: to `retry/`, claimable again after `not_before` (default: the
    /// backoff for this attempt). At `max_attempts`, to `failed/` instead.
    Retry {
        /// Why.
        reason: Option<String>,
        /// How long to wait before the next attempt.
        not_before: Option<Duration>,
    },
}

/// Where a message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Its new key, e.g. `done/<name>@<fence>`.
    pub key: String,
    /// Its new state.
    pub state: State,
}

/// Lease state shared with the renewal task.
#[derive(Debug)]
struct LeaseState {
    lost: AtomicBool,
    lost_notify: Notify,
    until: Mutex<DateTime<Utc>>,
    /// The lease's length, which every renewal asks for ([`Claim::renew`] may change it).
    length: Mutex<Duration>,
}

impl LeaseState {
    fn mark_lost(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.lost_notify.notify_waiters();
    }
}

/// A claimed message. Dropping it stops the renewals and leaves the lease to expire (the
/// message is claimable again a lease later); [`Claim::release`] gives it back at once.
#[derive(Debug)]
pub struct Claim {
    queue: Queue,
    /// Its copy: `processing/<name>@<fence>`.
    key: CopyKey,
    token: Token,
    record: Record,
    /// The object at `key`.
    meta: ObjectMeta,
    state: Arc<LeaseState>,
    renewer: Option<JoinHandle<()>>,
    /// The duplicate digest ([`DedupDigest`]), once known.
    digest: Mutex<Option<String>>,
    /// Finished or released: nothing more to do.
    spent: bool,
    /// The copy an earlier finish or release that failed midway may have made.
    attempted: Option<CopyKey>,
    /// Taken from the filter's own copy: no other copy of the message ever was. Any other
    /// claim's final move looks for lower copies left beside it (a stale claim's finish,
    /// paused after its last check, may land after this claim looked) and deletes them.
    from_filter: bool,
}

impl Claim {
    /// A claim just taken: renews itself every third of `lease`.
    pub(super) fn new(
        queue: Queue,
        key: CopyKey,
        token: Token,
        record: Record,
        meta: ObjectMeta,
        lease: Duration,
        from_filter: bool,
    ) -> Claim {
        let mut claim = Claim::with(queue, key, token, record, meta, lease);
        claim.from_filter = from_filter;
        claim.start_renewing();
        claim
    }

    /// A claim on a message claimed by another process, which handed the token over; it
    /// does not renew itself.
    pub(super) fn resumed(queue: Queue, token: Token, copy: StoredCopy, lease: Duration) -> Claim {
        Claim::with(queue, copy.key, token, copy.record, copy.meta, lease)
    }

    fn with(
        queue: Queue,
        key: CopyKey,
        token: Token,
        record: Record,
        meta: ObjectMeta,
        lease: Duration,
    ) -> Claim {
        Claim {
            queue,
            key,
            token,
            record,
            meta,
            state: Arc::new(LeaseState {
                lost: AtomicBool::new(false),
                lost_notify: Notify::new(),
                until: Mutex::new(later(Utc::now(), lease)),
                length: Mutex::new(lease),
            }),
            renewer: None,
            digest: Mutex::new(None),
            spent: false,
            attempted: None,
            from_filter: false,
        }
    }

    /// Renews the lease every third of its length in the background, until stopped; marks
    /// the claim lost when the lock engine refuses, or cannot be reached before the lease
    /// ends.
    fn start_renewing(&mut self) {
        if self.renewer.is_some() {
            return;
        }
        let state = Arc::downgrade(&self.state);
        let lock = self.queue.lock().clone();
        let (name, token) = (self.key.name.clone(), self.token.clone());
        let mut wait = self.lease() / 3;
        self.renewer = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(wait).await;
                let Some(state) = state.upgrade() else { return };
                let lease = *state.length.lock().unwrap();
                let every = lease / 3;
                match lock.renew(&name, &token, lease).await {
                    Ok(true) => {
                        *state.until.lock().unwrap() = later(Utc::now(), lease);
                        wait = every;
                    }
                    Ok(false) => {
                        tracing::warn!(
                            name,
                            "lease lost: another worker may take the message; this claim can move nothing"
                        );
                        state.mark_lost();
                        return;
                    }
                    Err(e) => {
                        if Utc::now() >= *state.until.lock().unwrap() {
                            tracing::warn!(name, error = %e, "lease expired while the lock engine was unreachable");
                            state.mark_lost();
                            return;
                        }
                        tracing::warn!(name, error = %e, "cannot renew the lease; trying again");
                        wait = (every / 4).max(Duration::from_millis(50));
                    }
                }
            }
        }));
    }

    /// The message's Maildir name.
    pub fn name(&self) -> &str {
        &self.key.name
    }

    /// Its key, `processing/<name>@<fence>`.
    pub fn key(&self) -> String {
        self.key.to_string()
    }

    /// The token that holds the lease.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Which claim of the message this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.record.attempt
    }

    /// The reason the message was last given (e.g. by the previous attempt).
    pub fn previous_reason(&self) -> Option<&str> {
        self.record.reason.as_deref()
    }

    /// Size of the message in bytes.
    pub fn size(&self) -> u64 {
        self.meta.size
    }

    /// The lease's length.
    pub fn lease(&self) -> Duration {
        *self.state.length.lock().unwrap()
    }

    /// When the lease ends unless renewed.
    pub fn lease_until(&self) -> DateTime<Utc> {
        *self.state.until.lock().unwrap()
    }

    /// Whether the lease is known to be lost (then every move is refused).
    pub fn is_lost(&self) -> bool {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// Completes when the lease is found lost, at the next renewal at the latest.
    pub async fn lost(&self) {
        loop {
            let notified = self.state.lost_notify.notified();
            if self.is_lost() {
                return;
            }
            notified.await;
        }
    }

    /// The message's bytes and metadata. Remembers their duplicate digest.
    pub async fn read(&self) -> Result<(Bytes, Attributes), QueueError> {
        let result = self
            .queue
            .destination()
            .store
            .get(&self.meta.location)
            .await
            .map_err(|e| self.moved_away(e))?;
        let attributes = result.attributes.clone();
        let bytes = result.bytes().await.map_err(|e| self.moved_away(e))?;
        if self.digest.lock().unwrap().is_none() {
            let digest = DedupDigest::of(&bytes);
            *self.digest.lock().unwrap() = Some(digest);
        }
        Ok((bytes, attributes))
    }

    /// The message's duplicate digest ([`DedupDigest`]): from its bytes if [`Claim::read`]
    /// read them, else read for it.
    pub async fn digest(&self) -> Result<String, QueueError> {
        if let Some(digest) = self.digest.lock().unwrap().clone() {
            return Ok(digest);
        }
        let digest = match self.queue.digests(&self.meta).await {
            Err(QueueError::NotFound(_)) => return Err(self.lost_error()),
            other => other?.dedup,
        };
        *self.digest.lock().unwrap() = Some(digest.clone());
        Ok(digest)
    }

    /// The same message finished within `dedup_window`, if any ([`DedupDigest`]: the same
    /// bytes, or a resend that differs only in the `Received:` line Postfix added). Call it
    /// after [`Claim::read`], which computes the digest on the way; before, it reads the
    /// object for it.
    pub async fn duplicate_of(&self) -> Result<Option<FinishedRef>, QueueError> {
        if self.queue.settings().dedup_window.is_zero() {
            return Ok(None);
        }
        let digest = self.digest().await?;
        self.queue.duplicate_of(self.name(), &digest).await
    }

    /// Gives the claim a lease of `lease` from now, for the renewals that follow too; a
    /// longer one than its record names is written into the record first (a take-over after
    /// the lock engine lost its data waits for the recorded lease).
    pub async fn set_lease(&mut self, lease: Duration) -> Result<DateTime<Utc>, QueueError> {
        if Some(lease) > self.record.lease {
            let mut record = self.record.clone();
            record.lease = Some(lease);
            self.write_record(record).await?;
        }
        self.renew(Some(lease)).await
    }

    /// Extends the lease to `lease` (default: the claim's) from now; a new length also
    /// applies to the background renewals that follow ([`Claim::set_lease`] writes a longer
    /// one into the record).
    pub async fn renew(&self, lease: Option<Duration>) -> Result<DateTime<Utc>, QueueError> {
        let lease = lease.unwrap_or(self.lease());
        let held = !self.is_lost()
            && self
                .queue
                .lock()
                .renew(self.name(), &self.token, lease)
                .await?;
        if !held {
            self.state.mark_lost();
            return Err(self.lost_error());
        }
        let until = later(Utc::now(), lease);
        *self.state.until.lock().unwrap() = until;
        *self.state.length.lock().unwrap() = lease;
        Ok(until)
    }

    /// The ids of the work recorded as done for this message, by this claim or an
    /// earlier attempt's ([`Claim::record_done`]).
    pub fn done(&self) -> &[String] {
        &self.record.done
    }

    /// Whether the done list has room to record `id`.
    pub fn has_room_for(&self, id: &str) -> bool {
        self.has_room_for_all(&[id.to_string()])
    }

    /// Whether the done list has room to record every id of `ids`.
    pub fn has_room_for_all(&self, ids: &[String]) -> bool {
        let mut done = self.record.done.clone();
        done.extend(ids.iter().map(|id| id.replace(',', "_")));
        self.fits(done)
    }

    /// Whether `done`, as the done list, would fit in the record (see
    /// [`replace_in_place`] to build it as an update would).
    pub fn fits(&self, done: Vec<String>) -> bool {
        let mut record = self.record.clone();
        record.done = done;
        record.done_fits()
    }

    /// Records that the work `id` succeeded, on the claim's own copy under `processing/`
    /// and under this claim's lease (refused once the lease is lost), so that a later
    /// attempt of the message skips it. Ids must not contain `,`; the list holds about 1000
    /// bytes (short ids: a hash prefix), past that the record is refused.
    pub async fn record_done(&mut self, id: &str) -> Result<(), QueueError> {
        self.record_done_replacing(id, &[]).await
    }

    /// [`Claim::record_done`] for several ids in one update (each recipient of one
    /// message sent: a lost lease between single records would resend to the rest).
    pub async fn record_done_all(&mut self, ids: &[String]) -> Result<(), QueueError> {
        if self.spent || self.is_lost() {
            return Err(self.lost_error());
        }
        let mut record = self.record.clone();
        for id in ids {
            let id = id.replace(',', "_");
            if !record.done.contains(&id) {
                record.done.push(id);
            }
        }
        if record.done == self.record.done {
            return Ok(());
        }
        if !record.done_fits() {
            return Err(QueueError::Refused(format!(
                "{}: no room left to record done ids",
                self.name()
            )));
        }
        self.write_record(record).await
    }

    /// [`Claim::record_done`], with the ids `replaced` taken off the list in the same
    /// update (work that `id` sums up, to keep the list short).
    pub async fn record_done_replacing(
        &mut self,
        id: &str,
        replaced: &[String],
    ) -> Result<(), QueueError> {
        if self.spent || self.is_lost() {
            return Err(self.lost_error());
        }
        if self.record.done.iter().any(|d| d == id) && replaced.is_empty() {
            return Ok(());
        }
        let mut record = self.record.clone();
        replace_in_place(&mut record.done, id.replace(',', "_"), replaced);
        if !record.done_fits() {
            return Err(QueueError::Refused(format!(
                "{}: no room left to record done ids",
                self.name()
            )));
        }
        self.write_record(record).await
    }

    /// Writes `record` on the claim's own copy under `processing/`, under the lease.
    async fn write_record(&mut self, record: Record) -> Result<(), QueueError> {
        if self.spent || self.is_lost() {
            return Err(self.lost_error());
        }
        let lease = self.lease();
        let update = record.to_update();
        match self.queue.renamer().cloned() {
            Some(renamer) => {
                failpoint::hit("record.checked");
                let at = self.key.path();
                let (step_renamer, step_at) = (renamer.clone(), at.clone());
                let step = Box::new(move || step_renamer.update(&step_at, &update));
                match self
                    .queue
                    .lock()
                    .with_lease(self.name(), &self.token, lease, step)
                    .await?
                {
                    None => return Err(self.mark_lost()),
                    Some(result) => result.map_err(|e| self.moved_away(e))?,
                }
                // After the lock: an fsync must not hold every other lease operation up.
                super::handle::blocking(move || renamer.sync_file(&at)).await?;
            }
            None => {
                self.queue
                    .check_lease(self.name(), &self.token, lease)
                    .await
                    .map_err(|e| self.lost_if(e))?;
                failpoint::hit("record.checked");
                // The claim's own key: a holder that took the message over wrote its copy
                // under another, and this write cannot reach it.
                self.queue
                    .destination()
                    .mover()
                    .update_metadata(&self.meta, &update)
                    .await
                    .map_err(|e| self.moved_away(e))?;
            }
        }
        self.record = record;
        Ok(())
    }

    /// Moves the message on: `done/`, `failed/` or `retry/`. After a store error the claim
    /// keeps its lease (still renewed) and the finish can be tried again.
    pub async fn finish(&mut self, outcome: Outcome) -> Result<Finished, QueueError> {
        let settings = self.queue.settings().clone();
        let now = Utc::now();
        let fence = self.token.fence();
        let name = self.name().to_string();
        let (target, reason) = match outcome {
            Outcome::Done { reason } => (CopyKey::new(State::Done, &name, fence), reason),
            Outcome::Failed { reason } => (CopyKey::new(State::Failed, &name, fence), Some(reason)),
            Outcome::Retry { reason, .. } if self.record.attempt >= settings.max_attempts => {
                tracing::warn!(
                    name,
                    attempts = self.record.attempt,
                    last_reason = reason.as_deref().unwrap_or(""),
                    "message failed: {TOO_MANY_ATTEMPTS}"
                );
                (
                    CopyKey::new(State::Failed, &name, fence),
                    Some(TOO_MANY_ATTEMPTS.to_string()),
                )
            }
            Outcome::Retry { reason, not_before } => {
                let wait = not_before.unwrap_or_else(|| {
                    backoff(
                        self.record.attempt,
                        settings.retry_backoff,
                        settings.retry_backoff_max,
                    )
                });
                (CopyKey::retry(&name, fence, later(now, wait)), reason)
            }
        };
        // The dedup index needs the digest; read it while the object is still here. Only
        // handled mail is remembered: the twin of a failed message deserves its own try.
        let digest = match target.state {
            State::Done if !settings.dedup_window.is_zero() => match self.digest().await {
                Ok(digest) => Some(digest),
                Err(e) => {
                    tracing::warn!(name, error = %e, "cannot read the message; it stays out of the dedup index");
                    None
                }
            },
            _ => None,
        };
        let record = Record {
            attempt: self.record.attempt,
            fence,
            lease: None,
            not_before: target.due,
            reason,
            done: self.record.done.clone(),
        };
        let finished = self.move_out(target, record).await?;
        if let Some(digest) = digest {
            let remembered = FinishedRef {
                key: finished.key.clone(),
                at: now,
            };
            if let Err(e) = self
                .queue
                .lock()
                .remember_finished(&digest, &remembered, settings.dedup_window)
                .await
            {
                tracing::warn!(name, error = %e, "cannot record the message in the dedup index");
            }
        }
        Ok(finished)
    }

    /// Gives the message back at once, counting no attempt: to `retry/`, due now, with the
    /// attempt count it had before this claim, so the next claim has this claim's number.
    pub async fn release(&mut self) -> Result<Finished, QueueError> {
        let target = CopyKey::retry(self.name(), self.token.fence(), Utc::now());
        let record = Record {
            attempt: self.record.attempt.saturating_sub(1),
            fence: self.token.fence(),
            lease: None,
            not_before: target.due,
            reason: self.record.reason.clone(),
            done: self.record.done.clone(),
        };
        self.move_out(target, record).await
    }

    /// Stops renewing without giving the lease back (for a token handed to another
    /// process, which renews or finishes with [`Queue::resume`]).
    pub fn detach(mut self) {
        self.stop_renewing();
    }

    fn stop_renewing(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }

    fn lost_error(&self) -> QueueError {
        QueueError::LeaseLost {
            name: self.name().to_string(),
        }
    }

    /// Marks the claim lost; the error to return.
    fn mark_lost(&mut self) -> QueueError {
        self.stop_renewing();
        self.state.mark_lost();
        self.lost_error()
    }

    /// A lost lease also marks the claim lost; other errors pass.
    fn lost_if(&mut self, e: QueueError) -> QueueError {
        match e {
            QueueError::LeaseLost { .. } => self.mark_lost(),
            e => e,
        }
    }

    /// The claim's own copy is gone: a worker that took the message over (after this lease
    /// ran out) deleted it, so this claim has lost the message.
    fn moved_away(&self, e: object_store::Error) -> QueueError {
        match e {
            object_store::Error::NotFound { .. } => {
                self.state.mark_lost();
                self.lost_error()
            }
            e => e.into(),
        }
    }

    /// Moves the claim's copy to `target` with `record`, under the lease, then gives the
    /// lease up. A second try after a failed one may not go to a folder ranked below the
    /// first's: its copy may have landed, and would win. A second try to `retry/` goes to
    /// the first try's key (its due time): both would share one marker, which the clean-up
    /// of the first key would otherwise delete from under the second.
    async fn move_out(
        &mut self,
        mut target: CopyKey,
        mut record: Record,
    ) -> Result<Finished, QueueError> {
        if let Some(earlier) = self
            .attempted
            .as_ref()
            .filter(|e| e.state == State::Retry && target.state == State::Retry)
        {
            target = earlier.clone();
            record.not_before = earlier.due;
        }
        if self.spent {
            return Err(QueueError::Refused(format!(
                "the claim on {} has already ended",
                self.name()
            )));
        }
        if let Some(earlier) = self.attempted.as_ref().filter(|e| e.rank() > target.rank()) {
            return Err(QueueError::Refused(format!(
                "an earlier move of {} to {}/ may have landed: finish to {}/ again, or drop the claim",
                self.name(),
                earlier.state,
                earlier.state
            )));
        }
        if self.is_lost() {
            return Err(self.lost_error());
        }
        let lease = self.lease();
        match self.queue.renamer().cloned() {
            Some(renamer) => {
                failpoint::hit("finish.checked");
                let earlier = self.attempted.replace(target.clone());
                let moved = self
                    .queue
                    .rename_held(&renamer, &self.token, lease, &self.key, &target, &record)
                    .await;
                match moved {
                    Ok(()) => {}
                    // An earlier try of this move renamed it, and failed after: it is there.
                    Err(QueueError::NotFound(_)) if self.queue.head(&target).await?.is_some() => {}
                    Err(QueueError::NotFound(_)) => match earlier {
                        Some(earlier) if self.queue.head(&earlier).await?.is_some() => {
                            self.attempted = Some(earlier.clone());
                            return Err(QueueError::Refused(format!(
                                "an earlier move of {} to {}/ landed: finish to {}/ again",
                                self.name(),
                                earlier.state,
                                earlier.state
                            )));
                        }
                        _ => return Err(self.mark_lost()),
                    },
                    Err(QueueError::LeaseLost { .. }) => return Err(self.mark_lost()),
                    Err(e) => return Err(e),
                }
            }
            None => {
                self.queue
                    .check_lease(self.name(), &self.token, lease)
                    .await
                    .map_err(|e| self.lost_if(e))?;
                failpoint::hit("finish.checked");
                self.start_renewing();
                let earlier = self.attempted.replace(target.clone());
                self.queue.put_marker(&target).await?;
                self.queue
                    .copy_to(&self.meta, &target, &record)
                    .await
                    .map_err(|e| match e {
                        QueueError::NotFound(_) => self.lost_error(),
                        e => e,
                    })?;
                failpoint::hit("move.verified");
                // The finish's report: the lease still held once the copy had landed.
                self.queue
                    .check_lease(self.name(), &self.token, lease)
                    .await
                    .map_err(|e| self.lost_if(e))?;
                failpoint::hit("move.checked");
                self.delete_own(&self.key.clone(), &self.meta.clone()).await;
                if let Some(earlier) = earlier.filter(|e| *e != target) {
                    let meta = moved(&self.meta, &earlier);
                    self.delete_own(&earlier, &meta).await;
                }
                if !self.from_filter && target.state.is_final() {
                    self.sweep_older_copies(&target).await;
                }
            }
        }
        self.stop_renewing();
        self.spent = true;
        if let Some(due) = target.due {
            // This process's waiting claims need not wait for a listing to see it.
            self.queue.retry_due_at(due);
        }
        failpoint::hit("finish.moved");
        // The mark spares other workers' older listings a take that fails on a copy already
        // gone; where moves rename, that failure costs a rename, and the mark (a line of the
        // local table that every lease operation reads) would cost more.
        let lock = self.queue.lock();
        let given_up = if self.queue.renamer().is_some() {
            lock.release(self.name(), &self.token).await
        } else {
            lock.retire(self.name(), &self.token, RETIRED_MARK).await
        };
        match given_up {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                name = self.name(),
                "the lease ended during the move: a newer claim's copy supersedes this one"
            ),
            Err(e) => {
                tracing::warn!(name = self.name(), error = %e, "cannot release the lease; it expires by itself")
            }
        }
        Ok(Finished {
            key: target.to_string(),
            state: target.state,
        })
    }

    /// Deletes one of the claim's own copies (best effort: a copy left is outranked by the
    /// one just made, and whoever meets both deletes it).
    async fn delete_own(&self, key: &CopyKey, meta: &ObjectMeta) {
        if let Err(e) = self.queue.delete_copy(key, meta).await {
            tracing::warn!(key = %key, error = %e, "cannot delete a copy this claim moved on from; it is outranked");
        }
    }

    /// After the final move of a claim taken over from a stale one: the copies of the
    /// message with lower fencing numbers in the final folders and `retry/` (the stale
    /// claim's finish may have landed after this claim looked), deleted as outranked.
    async fn sweep_older_copies(&self, newest: &CopyKey) {
        let swept = match self.queue.look_at(self.name()).await {
            Ok(found) => self.queue.delete_outranked(&found, newest).await,
            Err(e) => Err(e),
        };
        if let Err(e) = swept {
            tracing::warn!(name = self.name(), error = %e, "an outranked copy of a finished message stays; the next look deletes it");
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.stop_renewing();
    }
}

/// How long a finished or released message stays marked in the lock engine, so that other
/// workers' older listings of `cur/` skip it without asking the store.
const RETIRED_MARK: Duration = Duration::from_secs(120);

/// The wait before the next attempt after attempt `attempt` (1-based): `first`, doubled
/// for each attempt after the first, at most `max`.
/// `done` with `id` where the first of `replaced` (or an entry equal to `id`) was, the rest
/// of `replaced` taken off; `id` at the end when none was there. In place, because the
/// list is packed into its metadata values in order: an entry that grows where it is
/// needs no new room at the end.
pub fn replace_in_place(done: &mut Vec<String>, id: String, replaced: &[String]) {
    let at = done.iter().position(|d| *d == id || replaced.contains(d));
    let before = at.map_or(0, |at| {
        done[..at]
            .iter()
            .filter(|d| !(**d == id || replaced.contains(d)))
            .count()
    });
    done.retain(|d| !(*d == id || replaced.contains(d)));
    match at {
        Some(_) => done.insert(before, id),
        None => done.push(id),
    }
}

pub fn backoff(attempt: u32, first: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    first.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_entry_keeps_its_place() {
        let v = |items: &[&str]| items.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        let mut done = v(&["plan=1", "dm.0=00", "t#0", "t#1", "other"]);
        replace_in_place(&mut done, "dm.0=01".into(), &v(&["dm.0=00", "t#0", "t#1"]));
        assert_eq!(done, v(&["plan=1", "dm.0=01", "other"]));
        replace_in_place(&mut done, "new".into(), &v(&["absent"]));
        assert_eq!(done, v(&["plan=1", "dm.0=01", "other", "new"]));
        replace_in_place(&mut done, "other".into(), &[]);
        assert_eq!(done, v(&["plan=1", "dm.0=01", "other", "new"]));
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let m = Duration::from_secs(60);
        let h = Duration::from_secs(3600);
        assert_eq!(backoff(1, m, h), m);
        assert_eq!(backoff(2, m, h), 2 * m);
        assert_eq!(backoff(4, m, h), 8 * m);
        assert_eq!(backoff(7, m, h), h);
        assert_eq!(backoff(100, m, h), h);
        assert_eq!(backoff(0, m, h), m);
    }
}
