//! Claiming: which message a claim takes next, and the moves that take it.
//!
//! Claims take `cur/` first in first out (by the time in the Maildir name), then due
//! `retry/` messages, then `processing/` messages without a live lease. Once every
//! `poll_interval` the `retry/` and `processing/` folders are looked at first, so that a
//! backlog in `cur/` cannot hold back a due retry or an abandoned claim for longer.
//!
//! Candidates come from listings and from announcements. `cur/` is listed again only when
//! the candidates of the last listing ran out (and that listing is older than
//! `poll_interval`): new mail in between arrives by announcement. A candidate that another
//! worker holds costs one lock-engine call; one that another worker already moved on costs
//! one failed copy.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;

use super::candidates::Candidates;
use super::claim::Claim;
use super::handle::{
    ClaimOptions, Held, Queue, QueueError, StoredCopy, TOO_MANY_ATTEMPTS, name_of,
};
use super::record::{Record, State};
use super::wake;
use crate::util::failpoint;

impl Queue {
    /// Notes that a message in `retry/` becomes due at `at`, so that a waiting claim lists
    /// `retry/` again then.
    pub(super) async fn retry_due_at(&self, at: DateTime<Utc>) {
        let mut candidates = self.inner.candidates.lock().await;
        candidates.next_due = Some(candidates.next_due.map_or(at, |due| due.min(at)));
    }

    /// Claims the next due message (see the module docs for the order). With `wait`, blocks
    /// until one is claimable or the wait is over. `None`: nothing claimable.
    pub async fn claim(&self, options: &ClaimOptions) -> Result<Option<Claim>, QueueError> {
        let lease = options.lease.unwrap_or(self.inner.settings.lease);
        let deadline = options
            .wait
            .map(|w| instant_after(tokio::time::Instant::now(), w));
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
            let mut next = instant_after(now, self.inner.settings.poll_interval);
            {
                let mut candidates = self.inner.candidates.lock().await;
                if let Some(due) = candidates.next_due {
                    match (due - Utc::now()).to_std() {
                        Ok(until) => next = next.min(instant_after(now, until)),
                        // Due now: the next look lists retry/ again.
                        Err(_) => {
                            candidates.retry_listed = None;
                            candidates.next_due = None;
                            continue;
                        }
                    }
                }
            }
            {
                let mut candidates = self.inner.candidates.lock().await;
                if let Some(at) = candidates.next_abandoned {
                    if at <= Instant::now() {
                        candidates.processing_listed = None;
                        candidates.next_abandoned = None;
                        continue;
                    }
                    next = next.min(tokio::time::Instant::from_std(at));
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(next.min(deadline)) => {}
            }
        }
    }

    async fn claim_once(&self, lease: Duration) -> Result<Option<Claim>, QueueError> {
        let poll = self.inner.settings.poll_interval;
        let periodic = {
            let candidates = self.inner.candidates.lock().await;
            [candidates.retry_listed, candidates.processing_listed]
                .iter()
                .any(|listed| {
                    listed
                        .or(candidates.opened)
                        .is_none_or(|t| t.elapsed() >= poll)
                })
        };
        let order = if periodic {
            [State::Retry, State::Processing, State::Cur]
        } else {
            [State::Cur, State::Retry, State::Processing]
        };
        // Each folder is listed at most once per look: a long list of candidates that cannot
        // be taken (leases lost with Redis's data, not yet a lease old) must not be listed
        // again and again while it is being walked.
        let mut listed = HashSet::new();
        for state in order {
            while let Some(meta) = self.next_candidate(state, &mut listed).await? {
                match self.claim_candidate(state, &meta, lease).await {
                    Ok(Some(claim)) => return Ok(Some(claim)),
                    Ok(None) => {}
                    // One object the store cannot move (refused metadata, a copy that does
                    // not verify) must not stop every claim: it is met again at the next
                    // listing, and logged each time.
                    Err(QueueError::Store(e)) => {
                        tracing::warn!(name = %name_of(&meta), error = %e, "cannot claim a message; skipping it for now");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    }

    /// The next message of `state` to try. `cur/` is listed again when its candidates ran
    /// out and the last listing is older than `poll_interval`; the other folders whenever
    /// their listing is older; none twice in one look (`listed`).
    async fn next_candidate(
        &self,
        state: State,
        listed: &mut HashSet<State>,
    ) -> Result<Option<ObjectMeta>, QueueError> {
        let poll = self.inner.settings.poll_interval;
        let mut candidates = self.inner.candidates.lock().await;
        let may_list = !listed.contains(&state);
        let stale = |at: Option<Instant>| may_list && at.is_none_or(|t| t.elapsed() >= poll);
        match state {
            State::Cur => {
                if candidates.cur.is_empty() && stale(candidates.cur_listed) {
                    listed.insert(state);
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
                    listed.insert(state);
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
                    listed.insert(state);
                    let listed = self.list_folder(State::Processing).await?;
                    let names: Vec<String> = listed.iter().map(name_of).collect();
                    let holders = self.inner.lock.holders(&names).await?;
                    let now = Instant::now();
                    let mut processing = VecDeque::new();
                    for (meta, holder) in listed.into_iter().zip(holders) {
                        match holder {
                            None => processing.push_back(meta),
                            Some(holder) => note_abandoned_at(
                                &mut candidates.next_abandoned,
                                now + holder.remaining,
                            ),
                        }
                    }
                    candidates.processing = processing;
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
    /// `None` when somebody else holds it or has moved it on.
    async fn claim_candidate(
        &self,
        state: State,
        meta: &ObjectMeta,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let name = name_of(meta);
        let Some(token) = self.acquire(&name, lease, state == State::Cur).await? else {
            return Ok(None);
        };
        failpoint::hit("claim.leased");
        let taken = match state {
            State::Cur => self.take_from_cur(&name, meta, &token, lease).await,
            _ => self.take_resolved(&name, &token, lease).await,
        };
        let taken = match taken {
            // Moved on by another worker since it was listed, or this lease ran out
            // during the move (a pause): either way, not ours.
            Err(e @ (QueueError::NotFound(_) | QueueError::LeaseLost { .. })) => {
                tracing::debug!(name, error = %e, "not taken: moved on, or the lease ran out during the move");
                Ok(None)
            }
            other => other,
        };
        if !matches!(taken, Ok(Some(_))) {
            if let Err(e) = self.inner.lock.release(&name, &token).await {
                tracing::warn!(name, error = %e, "could not release a lease; it expires by itself");
            }
        }
        taken
    }

    /// Moves a message from `cur/` (never claimed, or requeued) to `processing/` as attempt
    /// 1, with the work done that a requeue kept. A leftover
    /// under `processing/` (a claim or requeue of this message interrupted after its copy)
    /// is replaced: nobody holds it, since this claim holds the lease, and it describes the
    /// same never-finished message.
    async fn take_from_cur(
        &self,
        name: &str,
        meta: &ObjectMeta,
        token: &super::Token,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        // A requeued message carries the work done before it (kept unless forgotten).
        let done = self
            .head(State::Cur, name)
            .await?
            .map(|copy| copy.record.done)
            .unwrap_or_default();
        let record = Record {
            attempt: 1,
            fence: token.fence(),
            lease: Some(lease),
            not_before: None,
            reason: None,
            done,
        };
        self.transfer(
            name,
            meta,
            State::Processing,
            &record,
            Held::taking(token, lease),
        )
        .await?;
        Ok(Some(self.new_claim(name, token, record, meta, lease)))
    }

    /// Claims `name` from whichever folder holds its newest copy, after deleting the
    /// leftovers of interrupted moves. The caller holds the lease.
    async fn take_resolved(
        &self,
        name: &str,
        token: &super::Token,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let Some(newest) = self.resolve(name, Held::taking(token, lease)).await? else {
            return Ok(None);
        };
        let due = newest.record.not_before.is_none_or(|t| t <= Utc::now());
        match newest.state {
            State::Cur => self.take_from_cur(name, &newest.meta, token, lease).await,
            State::Retry if due => self.take_again(name, newest, token, lease).await,
            State::Processing => match self.abandoned(&newest).await? {
                None => self.take_again(name, newest, token, lease).await,
                Some(wait) => {
                    let at = Instant::now() + wait;
                    note_abandoned_at(&mut self.inner.candidates.lock().await.next_abandoned, at);
                    Ok(None)
                }
            },
            State::Retry | State::Failed | State::Done => Ok(None),
        }
    }

    /// Whether a claim under `processing/` without a live lease may be taken over (`None`)
    /// or how long until it may: only once the lock engine's data is older than the claim's
    /// lease, so that a lease lost with the engine's data (renewed at most when the data
    /// began) has run out. Both durations come from the engine's clock, none from the
    /// store's timestamps or this machine's.
    async fn abandoned(&self, copy: &StoredCopy) -> Result<Option<Duration>, QueueError> {
        let lease = self.recorded_lease(&copy.record);
        let age = self.inner.lock.data_age().await?;
        Ok(lease.checked_sub(age).filter(|wait| !wait.is_zero()))
    }

    /// Claims a message that was claimed before: a new attempt, or `failed/` when that
    /// would pass `max_attempts`.
    async fn take_again(
        &self,
        name: &str,
        copy: StoredCopy,
        token: &super::Token,
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
                done: copy.record.done.clone(),
            };
            self.transfer(
                name,
                &copy.meta,
                State::Failed,
                &record,
                Held::taking(token, lease),
            )
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
            done: copy.record.done.clone(),
        };
        match copy.state {
            // An abandoned claim is taken over where it is.
            State::Processing => {
                self.update_in_place(name, &copy.meta, &record, Held::taking(token, lease))
                    .await?
            }
            _ => {
                self.transfer(
                    name,
                    &copy.meta,
                    State::Processing,
                    &record,
                    Held::taking(token, lease),
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
        token: &super::Token,
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
}

/// Keeps the earliest of the times a `processing/` message may become claimable.
fn note_abandoned_at(earliest: &mut Option<Instant>, at: Instant) {
    *earliest = Some(earliest.map_or(at, |e| e.min(at)));
}

/// `t` plus `d`, or a year later where that would overflow (a library caller may pass any
/// duration).
fn instant_after(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(365 * 24 * 3600))
}
