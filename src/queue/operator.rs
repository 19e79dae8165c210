//! What operators and other processes do to the queue besides claiming: take over a claim by
//! its token ([`Queue::resume`]), move finished mail back ([`Queue::requeue`]) and delete old
//! mail ([`Queue::purge`]).

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStoreExt};

use super::claim::{Claim, Finished};
use super::handle::{Held, PurgeReport, Queue, QueueError, earlier, name_of};
use super::lock::Token;
use super::record::{MessageRef, Record, State};
use crate::util::failpoint;

impl Queue {
    /// The claim that `token` holds on the message `key` (a token handed to another process,
    /// as the CLI does): [`QueueError::LeaseLost`] when the message in `processing/` was
    /// written under another lease, or is not there.
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
        let lease = self.recorded_lease(&copy.record);
        Ok(Claim::resumed(
            self.clone(),
            name.clone(),
            token.clone(),
            copy,
            lease,
        ))
    }

    /// Moves a `failed/`, `retry/` or `done/` message back to `cur/`, with a new attempt
    /// count. The record of work done is kept (a worker does not repeat what succeeded),
    /// unless `forget_done`: then the message is handled again in full.
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
        if let Err(e) = self.inner.lock.release(&name, &token).await {
            tracing::warn!(name, error = %e, "could not release a lease; it expires by itself");
        }
        let finished = result?;
        self.announce(&name).await;
        Ok(finished)
    }

    /// The requeue under the lease: through `processing/`, so that a crash halfway leaves a
    /// copy there, which claims resolve, and never a second copy beside `cur/` in a folder
    /// that claims from `cur/` would not look at.
    async fn requeue_leased(
        &self,
        name: &str,
        token: &Token,
        lease: Duration,
        forget_done: bool,
    ) -> Result<Finished, QueueError> {
        let newest = self
            .resolve(name, Held::taking(token, lease))
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
            lease: Some(lease),
            not_before: None,
            reason: Some(format!("requeued from {from}/")),
            done: if forget_done {
                Vec::new()
            } else {
                newest.record.done.clone()
            },
        };
        self.transfer(
            name,
            &newest.meta,
            State::Processing,
            &record,
            Held::taking(token, lease),
        )
        .await?;
        failpoint::hit("requeue.half");
        let moved = ObjectMeta {
            location: State::Processing.path(name),
            last_modified: Utc::now(),
            ..newest.meta
        };
        record.lease = None;
        self.transfer(
            name,
            &moved,
            State::Cur,
            &record,
            Held::taking(token, lease),
        )
        .await?;
        tracing::info!(name, %from, "requeued");
        Ok(Finished {
            key: format!("cur/{name}"),
            state: State::Cur,
        })
    }

    /// Deletes the messages of `state` that entered it more than `older_than` ago.
    /// `progress` is called after each.
    ///
    /// A message that also has a copy in a folder claims work from (`cur/`, `processing/`,
    /// `retry/`: the leftover of an interrupted move), and every message of `processing/`,
    /// is handled under its lease: its copies are resolved first, and it is deleted only when
    /// the copy being purged is the newest, so that a purge never leaves an older copy to be
    /// claimed again. Messages held by a worker are skipped.
    pub async fn purge(
        &self,
        state: State,
        older_than: Duration,
        dry_run: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<PurgeReport, QueueError> {
        let cutoff = earlier(Utc::now(), older_than);
        let old: Vec<ObjectMeta> = self
            .list_folder(state)
            .await?
            .into_iter()
            .filter(|m| m.last_modified < cutoff)
            .collect();
        let mut report = PurgeReport {
            matched: old.len() as u64,
            bytes: old.iter().map(|m| m.size).sum(),
            ..PurgeReport::default()
        };
        if dry_run {
            return Ok(report);
        }
        // A name also found in another folder is a leftover pair: resolved under its lease
        // (the newest copy stays), never just deleted.
        let mut elsewhere = HashSet::new();
        for other in State::ALL {
            if other != state {
                elsewhere.extend(self.list_folder(other).await?.iter().map(name_of));
            }
        }
        if let Err(e) = self.inner.lock.forget_expired().await {
            tracing::warn!(error = %e, "cannot clean the dedup index");
        }
        let total = report.matched;
        let elsewhere = &elsewhere;
        let mut deletions = futures::stream::iter(old)
            .map(|meta| async move {
                let name = name_of(&meta);
                let result = if state == State::Processing || elsewhere.contains(&name) {
                    self.purge_leased(&name, state, cutoff).await
                } else {
                    match self.inner.destination.store.delete(&meta.location).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                        Err(e) => Err(QueueError::from(e)),
                    }
                };
                (meta, result)
            })
            .buffer_unordered(8);
        while let Some((meta, result)) = deletions.next().await {
            match result {
                Ok(true) => report.deleted += 1,
                Ok(false) => report.skipped += 1,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(key = %meta.location, error = %e, "could not purge");
                }
            }
            progress(report.deleted + report.skipped + report.failed, total);
        }
        Ok(report)
    }

    /// Purges `name` from `state` under its lease, after resolving its copies: `false` when
    /// it is held, or its newest copy is elsewhere or young.
    async fn purge_leased(
        &self,
        name: &str,
        state: State,
        cutoff: chrono::DateTime<Utc>,
    ) -> Result<bool, QueueError> {
        let lease = self.inner.settings.lease;
        let Some(token) = self.acquire(name, lease, false).await? else {
            return Ok(false);
        };
        let purged = async {
            let held = Held::taking(&token, lease);
            let Some(newest) = self.resolve(name, held).await? else {
                return Ok(true);
            };
            if newest.state != state || newest.meta.last_modified >= cutoff {
                return Ok(false);
            }
            self.delete_under_lease(name, &newest, held, &mut None)
                .await?;
            Ok(true)
        }
        .await;
        if let Err(e) = self.inner.lock.release(name, &token).await {
            tracing::warn!(name, error = %e, "could not release a lease; it expires by itself");
        }
        purged
    }
}
