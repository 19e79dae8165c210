//! What operators and other processes do to the queue besides claiming: take over a claim by
//! its token ([`Queue::resume`]), move finished mail back ([`Queue::requeue`]) and delete old
//! mail ([`Queue::purge`]).

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;

use super::claim::{Claim, Finished};
use super::handle::{PurgeReport, Queue, QueueError, earlier, newest_copy};
use super::lock::Token;
use super::record::{CopyKey, MessageRef, Record, State};
use crate::util::failpoint;

impl Queue {
    /// The claim that `token` holds on the message `key` (a token handed to another process,
    /// as the CLI does). [`QueueError::NotFound`] when no copy of the message is anywhere
    /// (a mistyped key); [`QueueError::Refused`] when the claim already finished it;
    /// [`QueueError::LeaseLost`] when its copy under `processing/` is gone otherwise (the
    /// message was taken over).
    pub async fn resume(&self, key: &str, token: &Token) -> Result<Claim, QueueError> {
        let reference: MessageRef = key.parse().map_err(QueueError::Refused)?;
        let name = reference.name;
        let own = CopyKey::new(State::Processing, &name, token.fence());
        if let Some(copy) = self.head(&own).await? {
            let lease = copy.record.lease.unwrap_or(self.inner.settings.lease);
            return Ok(Claim::resumed(self.clone(), token.clone(), copy, lease));
        }
        let copies = self.copies(&name).await?;
        match newest_copy(&copies) {
            None => Err(QueueError::NotFound(key.to_string())),
            Some(newest) if newest.key.fence == token.fence() && newest.state().is_final() => {
                Err(QueueError::Refused(format!(
                    "{name} is already finished by this claim: {}",
                    newest.key
                )))
            }
            Some(_) => Err(QueueError::LeaseLost { name }),
        }
    }

    /// Moves a `failed/`, `retry/` or `done/` message, or one in `processing/` whose claim
    /// was abandoned, back to `cur/`, with a new attempt count. The record of work done is
    /// kept (a worker does not repeat what succeeded), unless `forget_done`: then the
    /// message is handled again in full.
    pub async fn requeue(&self, key: &str, forget_done: bool) -> Result<Finished, QueueError> {
        let reference: MessageRef = key.parse().map_err(QueueError::Refused)?;
        let name = reference.name;
        let lease = self.inner.settings.lease;
        let Some(token) = self.acquire(&name, lease, false).await? else {
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
        let result = self.requeue_leased(&name, &token, lease, forget_done).await;
        self.release_lease(&name, &token).await;
        let finished = result?;
        self.announce(&finished.key).await;
        Ok(finished)
    }

    /// The requeue under the lease: the newest copy goes to `cur/<name>@<fence>`, and every
    /// other copy is deleted once it is there.
    async fn requeue_leased(
        &self,
        name: &str,
        token: &Token,
        lease: Duration,
        forget_done: bool,
    ) -> Result<Finished, QueueError> {
        let found = self.look_at(name).await?;
        let newest = found
            .newest()
            .cloned()
            .ok_or_else(|| QueueError::NotFound(name.to_string()))?;
        let from = newest.state();
        match from {
            State::Cur => return Err(QueueError::Refused(format!("{name} is already in cur/"))),
            State::Processing => {
                if let Some(wait) = self.until_abandoned(&newest.record).await? {
                    return Err(QueueError::Refused(format!(
                        "{name} is in processing/ and its claim may still be alive (the lock engine's data is younger than its lease): try again in {}s",
                        wait.as_secs() + 1
                    )));
                }
            }
            _ => {}
        }
        let record = Record {
            attempt: 0,
            fence: token.fence(),
            lease: None,
            not_before: None,
            reason: Some(format!("requeued from {from}/")),
            // Work that failed for good (`<id>!`) is tried again: the operator requeues
            // after fixing its cause. Work done stays done.
            done: if forget_done {
                Vec::new()
            } else {
                newest
                    .record
                    .done
                    .iter()
                    .filter(|id| !id.ends_with('!'))
                    .cloned()
                    .collect()
            },
        };
        let target = CopyKey::new(State::Cur, name, token.fence());
        match self.renamer() {
            Some(renamer) => {
                self.rename_held(renamer, token, lease, &newest.key, &target, &record)
                    .await?
            }
            None => {
                self.copy_to(&newest.meta, &target, &record).await?;
                failpoint::hit("requeue.half");
                // Its copy outranks every other: the requeue is done, whatever the lease.
                // What stays of the others, the take of the new copy deletes.
                if let Err(e) = self.delete_outranked(&found, &target).await {
                    tracing::warn!(name, error = %e, "an outranked copy stays for now");
                }
            }
        }
        tracing::info!(name, %from, "requeued");
        Ok(Finished {
            key: target.to_string(),
            state: State::Cur,
        })
    }

    /// Deletes the messages of `state` that entered it more than `older_than` ago.
    /// `progress` is called after each.
    ///
    /// Every copy in `processing/` is deleted under its lease, and only when its claim is
    /// abandoned (no live lease, and the lock engine's data older than the claim's lease);
    /// so is a copy whose message has a copy in another folder too (found by listing every
    /// folder once): then only when the copy being purged is the newest, so that a purge
    /// never leaves an older copy to be claimed again.
    pub async fn purge(
        &self,
        state: State,
        older_than: Duration,
        dry_run: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<PurgeReport, QueueError> {
        let cutoff = earlier(Utc::now(), older_than);
        let old: Vec<(CopyKey, object_store::ObjectMeta)> = self
            .all_keys(state)
            .await?
            .into_iter()
            .filter(|(_, m)| m.last_modified < cutoff)
            .collect();
        let mut report = PurgeReport {
            matched: old.len() as u64,
            bytes: old.iter().map(|(_, m)| m.size).sum(),
            ..PurgeReport::default()
        };
        if dry_run {
            return Ok(report);
        }
        // A name also found in another folder is a leftover pair: resolved under its lease
        // (the newest copy stays), never just deleted.
        let mut elsewhere = HashSet::new();
        for other in State::ALL.into_iter().filter(|s| *s != state) {
            elsewhere.extend(self.all_keys(other).await?.into_iter().map(|(k, _)| k.name));
        }
        if let Err(e) = self.inner.lock.forget_expired().await {
            tracing::warn!(error = %e, "cannot clean the dedup index");
        }
        let total = report.matched;
        let elsewhere = &elsewhere;
        let mut deletions = futures::stream::iter(old)
            .map(|(key, meta)| async move {
                let result = if state == State::Processing || elsewhere.contains(&key.name) {
                    self.purge_leased(&key, cutoff).await
                } else {
                    self.delete_copy(&key, &meta).await.map(|()| true)
                };
                (key, result)
            })
            .buffer_unordered(8);
        while let Some((key, result)) = deletions.next().await {
            match result {
                Ok(true) => report.deleted += 1,
                Ok(false) => report.skipped += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(key = %key, error = %e, "could not purge");
                }
            }
            progress(report.deleted + report.skipped + report.failed, total);
        }
        Ok(report)
    }

    /// Purges the copy `key` under its message's lease: `false` when the message is held,
    /// its claim may be alive, or its newest copy is another or young.
    async fn purge_leased(
        &self,
        key: &CopyKey,
        cutoff: chrono::DateTime<Utc>,
    ) -> Result<bool, QueueError> {
        let name = &key.name;
        if key.state == State::Processing {
            // Before the lease: after the lock engine lost its data, nobody knows for a
            // lease whether a claim in processing/ is alive.
            let Some(copy) = self.head(key).await? else {
                return Ok(true);
            };
            if self.until_abandoned(&copy.record).await?.is_some() {
                return Ok(false);
            }
        }
        let lease = self.inner.settings.lease;
        let Some(token) = self.acquire(name, lease, false).await? else {
            return Ok(false);
        };
        let purged = async {
            let found = self.look_around(key).await?;
            let Some(newest) = found.newest().cloned() else {
                return Ok(true);
            };
            // The outranked ones go in any case: whoever has seen them outranked may.
            let outranked = self.delete_outranked(&found, &newest.key).await;
            if newest.key != *key || newest.meta.last_modified >= cutoff {
                return Ok(false);
            }
            outranked?;
            self.check_lease(name, &token, lease).await?;
            self.delete_copy(&newest.key, &newest.meta).await?;
            Ok(true)
        }
        .await;
        self.release_lease(name, &token).await;
        purged
    }
}
