//! A claim: the lease on one message in `processing/`, renewed in the background while the
//! claim lives, and the fenced moves that end it ([`Claim::finish`], [`Claim::release`]).
//!
//! Every move first renews the lease in the lock engine (compare-and-expire on the token):
//! a claim whose token no longer holds the lease gets [`QueueError::LeaseLost`] and moves
//! nothing. The lease keeps being renewed while the move runs, so a slow store cannot let
//! it expire under the move.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::{Attributes, ObjectMeta, ObjectStoreExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::dedup::DedupDigest;
use super::handle::{
    Held, Queue, QueueError, Restorable, StoredCopy, TOO_MANY_ATTEMPTS, later, newest_copy,
};
use super::lock::{FinishedRef, Token};
use super::record::{Record, State};
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
    /// Its new key, `<state>/<name>`.
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
    /// For a claim taken by this process (not one resumed from a token handed over, whose
    /// lease may have run out long ago): the lease its record holds, within which a lease
    /// lost with the lock engine's data may be taken back.
    restorable: Option<Duration>,
}

impl LeaseState {
    /// What a renewal presents: a claim of this process may take back a lease lost with
    /// the lock engine's data until its lease runs out by this process's clock.
    fn held<'a>(&self, token: &'a Token, lease: Duration) -> Held<'a> {
        Held {
            token,
            lease,
            restorable: self.restorable.map(|recorded| Restorable {
                recorded,
                until: *self.until.lock().unwrap(),
            }),
        }
    }
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
    name: String,
    token: Token,
    record: Record,
    /// The object under `processing/`.
    meta: ObjectMeta,
    state: Arc<LeaseState>,
    renewer: Option<JoinHandle<()>>,
    /// The duplicate digest ([`DedupDigest`]), once known.
    digest: Mutex<Option<String>>,
    /// Finished or released: nothing more to do.
    spent: bool,
    /// The folder an earlier finish or release that failed midway may have copied to.
    attempted: Option<State>,
}

impl Claim {
    /// A claim just taken: renews itself every third of `lease`.
    pub(super) fn new(
        queue: Queue,
        name: String,
        token: Token,
        record: Record,
        meta: ObjectMeta,
        lease: Duration,
    ) -> Claim {
        let mut claim = Claim::resumed_with(queue, name, token, record, meta, lease, true);
        claim.start_renewing();
        claim
    }

    /// Renews the lease every third of its length in the background, until stopped; marks
    /// the claim lost when the lock engine refuses, or cannot be reached before the lease
    /// ends.
    fn start_renewing(&mut self) {
        if self.renewer.is_some() {
            return;
        }
        let state = Arc::downgrade(&self.state);
        let queue = self.queue.clone();
        let (name, token) = (self.name.clone(), self.token.clone());
        let mut wait = self.lease() / 3;
        self.renewer = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(wait).await;
                let Some(state) = state.upgrade() else { return };
                let lease = *state.length.lock().unwrap();
                let every = lease / 3;
                match queue.hold(&name, state.held(&token, lease)).await {
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

    /// A claim on a message claimed by another process, which handed the token over; it
    /// does not renew itself.
    pub(super) fn resumed(
        queue: Queue,
        name: String,
        token: Token,
        copy: StoredCopy,
        lease: Duration,
    ) -> Claim {
        Claim::resumed_with(queue, name, token, copy.record, copy.meta, lease, false)
    }

    /// `ours`: taken by this process, so that a lease lost with the lock engine's data may
    /// be taken back.
    #[allow(clippy::too_many_arguments)]
    fn resumed_with(
        queue: Queue,
        name: String,
        token: Token,
        record: Record,
        meta: ObjectMeta,
        lease: Duration,
        ours: bool,
    ) -> Claim {
        let restorable = ours.then(|| queue.recorded_lease(&record));
        Claim {
            queue,
            name,
            token,
            record,
            meta,
            state: Arc::new(LeaseState {
                lost: AtomicBool::new(false),
                lost_notify: Notify::new(),
                until: Mutex::new(later(Utc::now(), lease)),
                length: Mutex::new(lease),
                restorable,
            }),
            renewer: None,
            digest: Mutex::new(None),
            spent: false,
            attempted: None,
        }
    }

    /// The message's Maildir name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its key, `processing/<name>`.
    pub fn key(&self) -> String {
        format!("processing/{}", self.name)
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
        let result = self.queue.inner().store().get(&self.meta.location).await?;
        let attributes = result.attributes.clone();
        let bytes = result.bytes().await?;
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
            Err(QueueError::NotFound(_)) => {
                return Err(self.lost_error());
            }
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
        let digest = self.digest().await?;
        self.queue.duplicate_of(&self.name, &digest).await
    }

    /// Extends the lease to `lease` (default: the claim's) from now; a new length also
    /// applies to the background renewals that follow.
    pub async fn renew(&self, lease: Option<Duration>) -> Result<DateTime<Utc>, QueueError> {
        let lease = lease.unwrap_or(self.lease());
        if self.is_lost() || !self.queue.hold(&self.name, self.held(lease)).await? {
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
        let mut record = self.record.clone();
        record
            .done
            .extend(ids.iter().map(|id| id.replace(',', "_")));
        record.done_fits()
    }

    /// Records that the work `id` succeeded, on the message under `processing/` and under
    /// this claim's lease (refused once the lease is lost), so that a later attempt of the
    /// message skips it. Ids must not contain `,`; the list holds about 1000 bytes (short
    /// ids: a hash prefix), past that the record is refused.
    pub async fn record_done(&mut self, id: &str) -> Result<(), QueueError> {
        self.record_done_replacing(id, &[]).await
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
        record.done.retain(|d| !replaced.contains(d) && d != id);
        record.done.push(id.replace(',', "_"));
        if !record.done_fits() {
            return Err(QueueError::Refused(format!(
                "{}: no room left to record done ids",
                self.name
            )));
        }
        let lease = self.lease();
        self.queue
            .update_in_place(&self.name, &self.meta, &record, self.held(lease))
            .await?;
        self.record = record;
        Ok(())
    }

    /// Moves the message on: `done/`, `failed/` or `retry/`. After a store error the claim
    /// keeps its lease (still renewed) and the finish can be tried again.
    pub async fn finish(&mut self, outcome: Outcome) -> Result<Finished, QueueError> {
        let settings = self.queue.inner().settings().clone();
        let now = Utc::now();
        let (state, reason, not_before) = match outcome {
            Outcome::Done { reason } => (State::Done, reason, None),
            Outcome::Failed { reason } => (State::Failed, Some(reason), None),
            Outcome::Retry { reason, .. } if self.record.attempt >= settings.max_attempts => {
                tracing::warn!(
                    name = self.name,
                    attempts = self.record.attempt,
                    last_reason = reason.as_deref().unwrap_or(""),
                    "message failed: {TOO_MANY_ATTEMPTS}"
                );
                (State::Failed, Some(TOO_MANY_ATTEMPTS.to_string()), None)
            }
            Outcome::Retry { reason, not_before } => {
                let wait = not_before.unwrap_or_else(|| {
                    backoff(
                        self.record.attempt,
                        settings.retry_backoff,
                        settings.retry_backoff_max,
                    )
                });
                let at = later(now, wait);
                (State::Retry, reason, Some(at))
            }
        };
        // The dedup index needs the digest; read it while the object is still here. Only
        // handled mail is remembered: the twin of a failed message deserves its own try.
        let digest = match state {
            State::Done => match self.digest().await {
                Ok(digest) => Some(digest),
                Err(e) => {
                    tracing::warn!(name = self.name, error = %e, "cannot read the message; it stays out of the dedup index");
                    None
                }
            },
            _ => None,
        };
        let record = Record {
            attempt: self.record.attempt,
            fence: self.token.fence(),
            lease: None,
            not_before,
            reason,
            done: self.record.done.clone(),
        };
        let finished = self.fenced_move(state, record).await?;
        if let Some(digest) = digest {
            let remembered = FinishedRef {
                key: finished.key.clone(),
                at: now,
            };
            let lock = self.queue.inner().lock();
            if let Err(e) = lock
                .remember_finished(&digest, &remembered, settings.dedup_window)
                .await
            {
                tracing::warn!(name = self.name, error = %e, "cannot record the message in the dedup index");
            }
        }
        Ok(finished)
    }

    /// Gives the message back at once, counting no attempt: to `retry/`, due now, with the
    /// attempt count it had before this claim, so the next claim has this claim's number.
    pub async fn release(&mut self) -> Result<Finished, QueueError> {
        let record = Record {
            attempt: self.record.attempt.saturating_sub(1),
            fence: self.token.fence(),
            lease: None,
            not_before: Some(Utc::now()),
            reason: self.record.reason.clone(),
            done: self.record.done.clone(),
        };
        self.fenced_move(State::Retry, record).await
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

    /// This claim's lease, renewed to `lease`.
    fn held(&self, lease: Duration) -> Held<'_> {
        self.state.held(&self.token, lease)
    }

    fn lost_error(&self) -> QueueError {
        QueueError::LeaseLost {
            name: self.name.clone(),
        }
    }

    /// Checks the lease in the lock engine, then moves `processing/<name>` to `state` with
    /// `record` while the lease keeps being renewed, then gives the lease up.
    async fn fenced_move(&mut self, state: State, record: Record) -> Result<Finished, QueueError> {
        if self.spent {
            return Err(QueueError::Refused(format!(
                "the claim on {} has already ended",
                self.name
            )));
        }
        let checked = if self.is_lost() {
            Err(self.lost_error())
        } else {
            let held = self.held(self.lease());
            self.queue.check_lease(&self.name, held).await.map(drop)
        };
        let moved = match checked {
            Ok(()) => {
                failpoint::hit("finish.checked");
                self.start_renewing();
                match self.earlier_copy(state).await {
                    Ok(earlier) => {
                        self.attempted = Some(state);
                        let moved = self.move_to(state, &record).await;
                        if let (Ok(()), Some(earlier)) = (&moved, earlier) {
                            self.delete_earlier(&earlier).await;
                        }
                        moved
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let mut holds_lease = true;
        match moved {
            Ok(()) => {}
            Err(e @ QueueError::LeaseLost { .. }) => {
                self.stop_renewing();
                self.state.mark_lost();
                holds_lease = false;
                // The move may have landed all the same: a Maildir rename before the lease
                // check after it, or an earlier try of this move whose source a worker that
                // met both copies deleted (the later state wins). Then the message is
                // finished, by this claim.
                if self.attempted != Some(state) || !self.landed_once_settled(state).await? {
                    return Err(e);
                }
                tracing::warn!(
                    name = self.name,
                    "the lease was lost, but the move had landed: finished"
                );
            }
            // The claim still holds its lease, renewed: the caller may try again.
            Err(e) => return Err(e),
        }
        self.stop_renewing();
        self.spent = true;
        if let (State::Retry, Some(at)) = (state, record.not_before) {
            // This process's waiting claims need not wait for a listing to see it.
            self.queue.retry_due_at(at).await;
        }
        failpoint::hit("finish.moved");
        if holds_lease {
            let lock = self.queue.inner().lock();
            match lock.retire(&self.name, &self.token, RETIRED_MARK).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    name = self.name,
                    "the lease ended during the move: a newer claim's copy supersedes this one"
                ),
                Err(e) => {
                    tracing::warn!(name = self.name, error = %e, "cannot release the lease; it expires by itself")
                }
            }
        }
        Ok(Finished {
            key: format!("{state}/{}", self.name),
            state,
        })
    }

    /// The copy an earlier, failed finish or release of this claim left in another folder
    /// than `state`, which must not stay beside this move's (a message in two end states):
    /// - if it outranks `state` (the later state wins), the move is refused: deleting or
    ///   moving it down is unsafe, as a worker that met both copies while this one was
    ///   paused may have kept it and deleted `processing/`. Finish to its state again, or
    ///   drop the claim (that copy then wins);
    /// - with `processing/` gone, that move landed (a Maildir rename): its copy is the
    ///   message and becomes this move's source;
    /// - otherwise it is returned, to be deleted once this move's copy, which outranks
    ///   it, has landed.
    async fn earlier_copy(&mut self, state: State) -> Result<Option<StoredCopy>, QueueError> {
        let Some(earlier) = self.attempted.filter(|s| *s != state) else {
            return Ok(None);
        };
        let Some(copy) = self.queue.head(earlier, &self.name).await? else {
            return Ok(None);
        };
        if copy.record.fence != self.token.fence() {
            return Ok(None);
        }
        if earlier > state {
            return Err(QueueError::Refused(format!(
                "an earlier move of {} to {earlier}/ may have landed: finish to {earlier}/ again, or drop the claim",
                self.name
            )));
        }
        if self
            .queue
            .head(State::Processing, &self.name)
            .await?
            .is_none()
        {
            self.meta = copy.meta;
            return Ok(None);
        }
        Ok(Some(copy))
    }

    /// Deletes the outranked copy an earlier try of this claim left, under the lease (best
    /// effort: the next claim that meets both copies deletes it too).
    async fn delete_earlier(&self, earlier: &StoredCopy) {
        let held = self.held(self.lease());
        if let Err(e) = self
            .queue
            .delete_under_lease(&self.name, earlier, held, &mut None)
            .await
        {
            tracing::warn!(
                name = self.name,
                key = %earlier.meta.location,
                error = %e,
                "the copy of an earlier try is left; it is outranked by this move's"
            );
        }
    }

    /// The move of a fenced finish or release. A source already gone is fine only when an
    /// earlier try of this very move (same lease) landed.
    async fn move_to(&self, state: State, record: &Record) -> Result<(), QueueError> {
        let moved = self
            .queue
            .transfer(
                &self.name,
                &self.meta,
                state,
                record,
                self.held(self.lease()),
            )
            .await;
        match moved {
            Err(QueueError::NotFound(_)) if self.landed(state).await? => Ok(()),
            Err(QueueError::NotFound(_)) => Err(self.lost_error()),
            other => other,
        }
    }

    /// Whether this claim's move to `state` is the message's last: no copy is left under
    /// `processing/`, and the newest copy is this claim's in `state` (a newer holder's
    /// copies carry a higher fence, and it copies before it deletes). Nobody takes the
    /// message over then: takers start from the newest copy.
    async fn landed(&self, state: State) -> Result<bool, QueueError> {
        let copies = self.queue.copies(&self.name).await?;
        Ok(self.landed_in(&copies, state))
    }

    fn landed_in(&self, copies: &[StoredCopy], state: State) -> bool {
        if copies.iter().any(|c| c.state == State::Processing) {
            return false;
        }
        newest_copy(copies)
            .is_some_and(|c| c.state == state && c.record.fence == self.token.fence())
    }

    /// [`Claim::landed`] after a lost lease, waiting (up to a lease) while this claim's own
    /// copy under `processing/` is still there: the worker that took the lease meanwhile may
    /// be about to delete it, having met this move's copy, which outranks it. Without the
    /// wait the message would be finished but reported by nobody.
    async fn landed_once_settled(&self, state: State) -> Result<bool, QueueError> {
        let give_up = std::time::Instant::now() + self.lease();
        loop {
            let copies = self.queue.copies(&self.name).await?;
            let own_source_left = copies
                .iter()
                .any(|c| c.state == State::Processing && c.record.fence == self.token.fence());
            if !own_source_left || std::time::Instant::now() >= give_up {
                return Ok(self.landed_in(&copies, state));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
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
pub fn backoff(attempt: u32, first: Duration, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    first.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

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
