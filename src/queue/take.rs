//! Claiming: which message a claim takes next, and the moves that take it.
//!
//! Claims take `cur/` first in first out (by the time in the Maildir name), then due
//! `retry/` copies (earliest due first: their keys begin with the due time), then
//! `processing/` copies without a live lease. Once every `poll_interval` the `retry/` and
//! `processing/` folders are looked at first, so that a backlog in `cur/` cannot hold back
//! a due retry or an abandoned claim for longer.
//!
//! Every look at a folder lists its first page in key order, so a claim costs the same
//! whatever the depth: a page of `cur/` serves many claims and is listed again when it runs
//! out or is a `poll_interval` old (so a name skipped because another worker held it is
//! tried again then, not after the whole backlog). A `cur/` or `retry/` candidate that
//! another worker holds costs one lock-engine call (on a Maildir, one taken since the
//! listing costs a stat); a `processing/` one is listed only when the lock engine shows no
//! lease on it, and costs a read of its record and of the engine's data age before any
//! lease.
//!
//! A take moves the message to `processing/<name>@<fence>` under the new lease. Where a move
//! copies (Swift, S3) the source is deleted before the claim is handed out; if that fails
//! the new copy stays (it is never undone: the delete may have been applied) and the claim
//! is not handed out, so a copy left under `cur/` or `retry/` is never the start of a
//! second claim of a message already being processed. A copy the filter wrote is taken
//! without looking for others: only a take that crashed before its delete leaves one (its
//! `processing/` copy, never handed out, which the next look at `processing/` finds
//! outranked). Any other candidate is taken only after every copy of its message was looked
//! at, and only if it is the newest.

use std::time::{Duration, Instant};

use chrono::Utc;
use object_store::ObjectMeta;

use super::candidates::ANNOUNCED;
use super::claim::Claim;
use super::handle::{
    ClaimOptions, Copies, KeyPage, PAGE, Queue, QueueError, TOO_MANY_ATTEMPTS, moved,
};
use super::lock::Token;
use super::record::{CopyKey, Record, State};
use super::wake;
use crate::util::failpoint;

/// Tries of deleting a take's source before the take gives up (its copy stays).
const SOURCE_DELETE_TRIES: u32 = 3;
/// Pages of one folder a look lists at most, when the first ones hold no candidate.
const PAGES_PER_LOOK: usize = 8;

impl Queue {
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
            let Some(next) = self.next_look(now) else {
                continue;
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(next.min(deadline)) => {}
            }
        }
    }

    /// When a waiting claim looks again: a `poll_interval` from `now`, or earlier when a
    /// `retry/` copy becomes due or a `processing/` copy claimable; `None` when that is now
    /// (the folder is marked for listing).
    fn next_look(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let mut next = instant_after(now, self.inner.settings.poll_interval);
        let mut candidates = self.inner.candidates.lock().unwrap();
        if let Some(due) = candidates.next_due {
            match (due - Utc::now()).to_std() {
                Ok(until) => next = next.min(instant_after(now, until)),
                Err(_) => {
                    candidates.next_due = None;
                    candidates.page(State::Retry).listed = None;
                    return None;
                }
            }
        }
        if let Some(at) = candidates.next_abandoned {
            if at <= Instant::now() {
                candidates.next_abandoned = None;
                candidates.page(State::Processing).listed = None;
                return None;
            }
            next = next.min(tokio::time::Instant::from_std(at));
        }
        Some(next)
    }

    async fn claim_once(&self, lease: Duration) -> Result<Option<Claim>, QueueError> {
        let poll = self.inner.settings.poll_interval;
        let periodic = {
            let mut candidates = self.inner.candidates.lock().unwrap();
            let opened = candidates.opened;
            [State::Retry, State::Processing].into_iter().any(|s| {
                candidates
                    .page(s)
                    .listed
                    .map_or(opened.elapsed() >= poll, |t| t.elapsed() >= poll)
            })
        };
        let order = if periodic {
            [State::Retry, State::Processing, State::Cur]
        } else {
            [State::Cur, State::Retry, State::Processing]
        };
        for state in order {
            // Each folder is listed at most once per look: a page of candidates that cannot
            // be taken now must not be listed again and again while it is walked.
            let mut listed = false;
            loop {
                let candidate = match self.next_candidate(state) {
                    Some(candidate) => candidate,
                    None if !listed && self.listing_due(state) => {
                        listed = true;
                        self.list_candidates(state).await?;
                        continue;
                    }
                    None => break,
                };
                let key = candidate.0.to_string();
                match self.take(candidate, lease).await {
                    Ok(Some(claim)) => return Ok(Some(claim)),
                    Ok(None) => {}
                    // One object the store cannot move (refused metadata, a copy that does
                    // not verify, a source it cannot delete) must not stop every claim: it
                    // is met again at the next listing, and logged each time.
                    Err(QueueError::Store(e)) => {
                        tracing::warn!(key, error = %e, "cannot claim a message; skipping it for now");
                        self.inner.candidates.lock().unwrap().failed(key);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    }

    /// The next candidate of `state`'s page; a page a `poll_interval` old is dropped first.
    fn next_candidate(&self, state: State) -> Option<(CopyKey, ObjectMeta)> {
        let poll = self.inner.settings.poll_interval;
        let mut candidates = self.inner.candidates.lock().unwrap();
        let page = candidates.page(state);
        if page.listed.is_some_and(|t| t.elapsed() >= poll) {
            page.keys.clear();
            page.listed = None;
        }
        page.keys.pop_front()
    }

    /// Whether `state`'s page should be listed: it never was, it was dropped, or (for
    /// `cur/`, whose backlog goes on past one page) it ran out.
    fn listing_due(&self, state: State) -> bool {
        let mut candidates = self.inner.candidates.lock().unwrap();
        let page = candidates.page(state);
        page.listed.is_none() || (state == State::Cur && page.keys.is_empty())
    }

    /// Lists the first page of `state` into its candidates.
    async fn list_candidates(&self, state: State) -> Result<(), QueueError> {
        let size = if self.renamer().is_some() {
            // A Maildir folder is read whole anyway: keep more of it.
            10 * PAGE
        } else {
            PAGE
        };
        // Pages in key order until one holds a candidate: keys that cannot be taken now
        // (foreign objects, held claims, keys that failed lately) never hide what follows
        // them for long, and a look still costs a bounded number of listings.
        let mut keys: Vec<(CopyKey, ObjectMeta)> = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..PAGES_PER_LOOK {
            let KeyPage {
                keys: listed, next, ..
            } = self.list_keys(state, after.as_deref(), size).await?;
            let mut later_due = false;
            let usable: Vec<(CopyKey, ObjectMeta)> = match state {
                State::Retry => {
                    let now = Utc::now();
                    let due = listed
                        .iter()
                        .position(|(k, _)| k.due.is_some_and(|d| d > now))
                        .unwrap_or(listed.len());
                    let mut listed = listed;
                    let later = listed.split_off(due);
                    if let Some(at) = later.first().and_then(|(k, _)| k.due) {
                        self.inner.candidates.lock().unwrap().note_due_at(at);
                        later_due = true;
                    }
                    listed
                }
                State::Processing => {
                    let names: Vec<String> = listed.iter().map(|(k, _)| k.name.clone()).collect();
                    let holders = self.inner.lock.holders(&names).await?;
                    let mut free = Vec::new();
                    let now = Instant::now();
                    let mut candidates = self.inner.candidates.lock().unwrap();
                    for (entry, holder) in listed.into_iter().zip(holders) {
                        match holder {
                            None => free.push(entry),
                            Some(h) => candidates.note_abandoned_at(now + h.remaining),
                        }
                    }
                    free
                }
                _ => listed,
            };
            {
                let candidates = self.inner.candidates.lock().unwrap();
                keys.extend(
                    usable
                        .into_iter()
                        .filter(|(k, _)| !candidates.failing_lately(&k.to_string())),
                );
            }
            // Retry keys sort by due time: past a key not yet due, none is due.
            if !keys.is_empty() || later_due {
                break;
            }
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let mut candidates = self.inner.candidates.lock().unwrap();
        let page = candidates.page(state);
        page.keys = keys.into();
        page.listed = Some(Instant::now());
        Ok(())
    }

    /// Adds a name announced as new under `cur/` to the page of `cur/` (after the older
    /// mail there), up to [`ANNOUNCED`] names; the next listing finds the others anyway.
    pub(super) fn announced(&self, key: CopyKey, meta: ObjectMeta) {
        let mut candidates = self.inner.candidates.lock().unwrap();
        let page = candidates.page(State::Cur);
        if page.keys.len() < ANNOUNCED && page.keys.iter().all(|(k, _)| *k != key) {
            page.keys.push_back((key, meta));
        }
    }

    /// Notes that a message in `retry/` becomes due at `at`, so that a waiting claim lists
    /// `retry/` again then.
    pub(super) fn retry_due_at(&self, at: chrono::DateTime<Utc>) {
        self.inner.candidates.lock().unwrap().note_due_at(at);
    }

    /// Tries to claim one candidate: `None` when somebody else holds it, has moved it on,
    /// or it is not the message's newest copy.
    async fn take(
        &self,
        (key, meta): (CopyKey, ObjectMeta),
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        if key.state == State::Processing {
            // Before the lease: a claim whose lease the lock engine lost with its data must
            // have learnt it before anybody takes the message from it.
            let Some(copy) = self.head(&key).await? else {
                return Ok(None);
            };
            if let Some(wait) = self.until_abandoned(&copy.record).await? {
                let at = Instant::now() + wait;
                self.inner.candidates.lock().unwrap().note_abandoned_at(at);
                return Ok(None);
            }
        }
        if let Some(renamer) = self.renamer() {
            // A rename leaves one copy, so a key moved on since the listing is simply gone:
            // a stat (microseconds, on this thread) spares the lease table two operations.
            if !renamer.exists(&key.path()) {
                return Ok(None);
            }
        }
        let name = key.name.clone();
        // A fresh retired mark (a claim just finished it) stops takes from cur/ and the
        // take-over of a leftover under processing/; a release's retry/ copy is due at once.
        let respect_mark = key.state != State::Retry;
        let Some(token) = self.acquire(&name, lease, respect_mark).await? else {
            if key.state == State::Processing && self.renamer().is_none() {
                // Held again, or marked finished: a crashed take's copy beside a newer
                // claim's is deleted now, not when the mark has run out.
                self.delete_if_outranked(&key).await?;
            }
            return Ok(None);
        };
        failpoint::hit("claim.leased");
        let taken = self.take_leased(&key, &meta, &token, lease).await;
        let taken = match taken {
            // Moved on by another worker since it was listed, or this lease ran out
            // during the take (a pause): either way, not ours.
            Err(e @ (QueueError::NotFound(_) | QueueError::LeaseLost { .. })) => {
                tracing::debug!(name, error = %e, "not taken: moved on, or the lease ran out during the take");
                Ok(None)
            }
            other => other,
        };
        if !matches!(taken, Ok(Some(_))) {
            self.release_lease(&name, &token).await;
        }
        taken
    }

    /// Deletes `key` (and what else is outranked) when a newer copy of its message exists;
    /// no lease is needed to delete what is outranked.
    async fn delete_if_outranked(&self, key: &CopyKey) -> Result<(), QueueError> {
        let found = self.look_around(key).await?;
        match found.newest() {
            Some(newest) if newest.key != *key => {
                let newest = newest.key.clone();
                self.delete_outranked(&found, &newest).await
            }
            _ => Ok(()),
        }
    }

    /// The take of `key` under the lease `token` holds: the source's record, the newest-copy
    /// check where it is needed, then the move to `processing/`.
    async fn take_leased(
        &self,
        key: &CopyKey,
        meta: &ObjectMeta,
        token: &Token,
        lease: Duration,
    ) -> Result<Option<Claim>, QueueError> {
        let from_filter = key.state == State::Cur && key.fence == 0;
        let (source, others) = if from_filter {
            // Never claimed: its record is empty, and it has no other copy (a take deletes
            // it before anybody works on the message).
            (Record::default(), Copies::default())
        } else if self.renamer().is_some() {
            // A rename leaves no second copy.
            let copy = self
                .head(key)
                .await?
                .ok_or_else(|| QueueError::NotFound(key.to_string()))?;
            (copy.record, Copies::default())
        } else {
            let mut found = self.look_around(key).await?;
            if key.state == State::Processing {
                // What the claim under this fence finished to, read by its exact keys: a
                // listing may not show it yet.
                for copy in self.finished_by(&key.name, key.fence).await? {
                    if !found.copies.iter().any(|c| c.key == copy.key) {
                        found.copies.push(copy);
                    }
                }
            }
            failpoint::hit("resolve.looked");
            let Some(newest) = found.newest().cloned() else {
                return Ok(None);
            };
            if newest.key != *key {
                if let Err(e) = self.delete_outranked(&found, &newest.key).await {
                    tracing::debug!(key = %key, error = %e, "an outranked copy stays for now");
                }
                return Ok(None);
            }
            found.copies.retain(|c| c.key != *key);
            (newest.record, found)
        };
        if key.state == State::Retry && key.due.is_some_and(|d| d > Utc::now()) {
            return Ok(None);
        }
        // A copy this one was taken from is still there: that take never handed the message
        // out (it does so only once its source is gone), so it counts no attempt.
        let handed_out = !others.copies.iter().any(|c| {
            c.key.rank() < key.rank()
                && matches!(c.state(), State::Cur | State::Retry | State::Processing)
        });
        let attempt = match key.state {
            State::Processing if !handed_out => source.attempt,
            _ => source.attempt + 1,
        };
        let record = Record {
            attempt,
            fence: token.fence(),
            lease: Some(lease),
            not_before: None,
            reason: source.reason,
            done: source.done,
        };
        self.take_to_processing(key, meta, token, lease, record, &others, from_filter)
            .await
    }

    /// Moves the message from `source` to `processing/<name>@<fence>` as `record` (to
    /// `failed/` when that would pass `max_attempts`), deleting the source and the outranked
    /// copies `others` where the move copies. The claim is handed out only once no other
    /// copy a claim could start from is left and the lease still holds; otherwise its copy
    /// stays, an abandoned claim that the next take-over finds beside its source.
    #[allow(clippy::too_many_arguments)]
    async fn take_to_processing(
        &self,
        source: &CopyKey,
        meta: &ObjectMeta,
        token: &Token,
        lease: Duration,
        mut record: Record,
        others: &Copies,
        from_filter: bool,
    ) -> Result<Option<Claim>, QueueError> {
        let name = &source.name;
        let too_many = record.attempt > self.inner.settings.max_attempts;
        let last_reason = record.reason.clone().unwrap_or_default();
        let target = if too_many {
            record.attempt -= 1;
            record.lease = None;
            record.reason = Some(TOO_MANY_ATTEMPTS.to_string());
            CopyKey::new(State::Failed, name, token.fence())
        } else {
            CopyKey::new(State::Processing, name, token.fence())
        };
        match self.renamer() {
            Some(renamer) => {
                self.rename_held(renamer, token, lease, source, &target, &record)
                    .await?;
                if !self.inner.lock.steps_under_lock() {
                    // The rename ran after the check: a pause in between may have outlasted
                    // the lease, and a claim that may be lost is not handed out.
                    self.check_lease(name, token, lease).await?;
                }
            }
            None => {
                self.copy_to(meta, &target, &record).await?;
                failpoint::hit("take.copied");
                // A delete that failed may still have been applied (a quorum not reached, an
                // answer lost): the new copy stays whatever happens, never undone.
                if let Err(e) = self.delete_patiently(source, meta).await {
                    return Err(QueueError::Store(format!(
                        "{name}: its copy {source} could not be deleted ({e}): not handed out; {target} waits as an abandoned claim"
                    )));
                }
                self.delete_outranked(others, &target).await?;
                self.check_lease(name, token, lease).await?;
            }
        }
        if too_many {
            tracing::warn!(
                name,
                attempts = record.attempt,
                last_reason,
                "message failed: {TOO_MANY_ATTEMPTS}"
            );
            return Ok(None);
        }
        Ok(Some(Claim::new(
            self.clone(),
            target.clone(),
            token.clone(),
            record,
            moved(meta, &target),
            lease,
            from_filter,
        )))
    }

    /// Deletes a take's source, trying a few times: a claim is handed out only once it is
    /// gone.
    async fn delete_patiently(&self, key: &CopyKey, meta: &ObjectMeta) -> Result<(), QueueError> {
        let mut pause = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match self.delete_copy(key, meta).await {
                Ok(()) => return Ok(()),
                Err(e) if tries + 1 >= SOURCE_DELETE_TRIES => return Err(e),
                Err(e) => {
                    tracing::debug!(key = %key, error = %e, "cannot delete a take's source; trying again");
                    tries += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 4;
                }
            }
        }
    }
}

/// `t` plus `d`, or a year later where that would overflow (a library caller may pass any
/// duration).
fn instant_after(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    t.checked_add(d)
        .unwrap_or_else(|| t + Duration::from_secs(365 * 24 * 3600))
}
