//! The dequeue worker: claims stored mail with the queue library, decides what each message
//! means with the [rules](crate::worker::rules), takes the actions through the [sinks](crate::worker::sinks)
//! and moves the message on:
//!
//! | what happened | where it goes | reason |
//! |---|---|---|
//! | a duplicate finished within `dedup_window` | `done/` | `duplicate of <key>` |
//! | every action succeeded | `done/` | — |
//! | an action failed for good (5xx, unknown room, rule error) | `failed/` | the failures |
//! | an action failed for now | `retry/` (backoff) | the failures |
//! | a manager wanted it, no rule matched | `done/` | `no rule matched` |
//! | no manager wanted it | as `unmatched` says | `unmatched: ...` |
//!
//! Each action that succeeds is recorded on the claim ([`Claim::record_done`]) before the
//! next one, so an attempt after a failure, a crash or a lost lease never repeats it (no
//! second chat message). A claim whose lease is lost stops at once and moves nothing.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::queue::{Claim, ClaimOptions, Outcome, Queue, QueueError};
use crate::worker::mail_view::MailView;
use crate::worker::rules::matcher::any_matches;
use crate::worker::rules::{Action, Disposal, Rules, Unmatched};
use crate::worker::sinks::mail::MailSink;
use crate::worker::sinks::mattermost::{Delivery, MattermostSink};
use crate::worker::sinks::xmpp::{Target, XmppSink};
use crate::worker::sinks::{Progress, SinkError};

/// How long one claim call waits for mail before the loop looks at the shutdown signal.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// The worker's parts, shared by its jobs.
pub struct Worker {
    pub queue: Queue,
    pub rules: Arc<Rules>,
    /// `remote-smtp`, for `mailto:` and forwarding.
    pub mail: Option<MailSink>,
    /// The XMPP connection, for `xmpp:` actions.
    pub xmpp: Option<XmppSink>,
    /// The Mattermost server, for `mattermost:` actions.
    pub mattermost: Option<MattermostSink>,
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResult {
    Sent,
    /// Deliberately not taken (why), e.g. a sender outside the XMPP account's `valid_from`.
    Skipped(String),
    /// Recorded as done by an earlier attempt: not taken again.
    DoneBefore,
    /// Taken, but some recipients refused for good or were not allowed (who and why).
    Partly(String),
    Failed(SinkError),
}

/// What the worker did with one message: the one log line's fields.
#[derive(Debug, Clone)]
pub struct Report {
    /// The message's key when claimed (`processing/<name>@<fence>`).
    pub key: String,
    pub manager: Option<String>,
    pub rules: Vec<String>,
    /// Each action (`<rule>: <uri>`) and what happened.
    pub actions: Vec<(String, ActionResult)>,
    /// Where the message went (`done/<name>@<fence>`...), and why.
    pub finished: String,
    pub reason: Option<String>,
}

impl Worker {
    /// A worker over `queue` with the sinks `rules` configure (`remote-smtp`, `xmpp:`,
    /// `mattermost:`); an error names the sink that cannot be set up.
    pub fn new(queue: Queue, rules: Rules) -> Result<Worker, String> {
        let helo = gethostname::gethostname().to_string_lossy().into_owned();
        let mail = rules
            .remote_smtp
            .as_deref()
            .map(|r| MailSink::new(r, &helo).map_err(|e| format!("remote-smtp: {e}")))
            .transpose()?;
        let xmpp = rules.xmpp.as_ref().map(XmppSink::start).transpose()?;
        let mattermost = rules
            .mattermost
            .clone()
            .map(MattermostSink::new)
            .transpose()?;
        Ok(Worker {
            queue,
            rules: Arc::new(rules),
            mail,
            xmpp,
            mattermost,
        })
    }

    /// Runs `concurrency` jobs that claim and handle messages until `stop` says so; jobs in
    /// flight end their message first.
    pub async fn run(
        self: Arc<Self>,
        concurrency: usize,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let jobs: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let (worker, stop) = (self.clone(), stop.clone());
                tokio::spawn(async move { worker.job(stop).await })
            })
            .collect();
        for job in jobs {
            let _ = job.await;
        }
    }

    async fn job(&self, stop: tokio::sync::watch::Receiver<bool>) {
        let options = ClaimOptions {
            lease: None,
            wait: Some(CLAIM_WAIT),
        };
        while !*stop.borrow() {
            let mut claim = match self.queue.claim(&options).await {
                Ok(Some(claim)) => claim,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim; trying again");
                    tokio::time::sleep(CLAIM_WAIT).await;
                    continue;
                }
            };
            if *stop.borrow() {
                // Claimed while the stop came: not started, so handed back at once.
                if let Err(e) = claim.release().await {
                    tracing::warn!(key = claim.key(), error = %e, "cannot release; its lease will run out");
                }
                break;
            }
            // Errors are in the message's log line; the message is claimed again later.
            let _ = self.handle(&mut claim).await;
        }
    }

    /// Handles one claimed message to its end (see the module documentation) and logs its
    /// line. An error means the message was not moved on (a lost lease, a store failure):
    /// it is claimed again once its lease runs out (actions recorded as done are not
    /// taken again).
    pub async fn handle(&self, claim: &mut Claim) -> Result<Report, QueueError> {
        let mut report = Report {
            key: claim.key(),
            manager: None,
            rules: Vec::new(),
            actions: Vec::new(),
            finished: String::new(),
            reason: None,
        };
        let result = match self.act(claim, &mut report).await {
            Ok(outcome) => {
                report.reason = match &outcome {
                    Outcome::Done { reason } | Outcome::Retry { reason, .. } => reason.clone(),
                    Outcome::Failed { reason } => Some(reason.clone()),
                };
                claim.finish(outcome).await.map(|f| f.key)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(finished) => {
                report.finished = finished;
                log(&report, None);
                Ok(report)
            }
            Err(e) => {
                log(&report, Some(&e));
                Err(e)
            }
        }
    }

    /// Takes the actions the rules decide for the message; where it goes next.
    async fn act(&self, claim: &mut Claim, report: &mut Report) -> Result<Outcome, QueueError> {
        let (bytes, _) = claim.read().await?;
        if let Some(original) = claim.duplicate_of().await? {
            return Ok(Outcome::Done {
                reason: Some(format!("duplicate of {}", original.key)),
            });
        }
        // Parsing (an HTML body turned into text, the rules' regexes) is CPU work that a
        // large message makes long: off the runtime's threads.
        let rules = self.rules.clone();
        let parsed = bytes.clone();
        let (mail, decision) = tokio::task::spawn_blocking(move || {
            let mail = MailView::parse(&parsed);
            let decision = rules.decide(&mail);
            (mail, decision)
        })
        .await
        .map_err(|e| QueueError::Refused(format!("parsing the message failed: {e}")))?;
        report.manager = decision.manager.clone();
        report.rules = decision.fired.iter().map(|f| f.rule.clone()).collect();
        let outcome = match decision.disposal {
            Disposal::NoRuleMatched => Outcome::Done {
                reason: Some("no rule matched".into()),
            },
            Disposal::Unmatched(Unmatched::Done) => Outcome::Done {
                reason: Some("unmatched: no manager wants it".into()),
            },
            Disposal::Unmatched(Unmatched::Fail) => Outcome::Failed {
                reason: "unmatched: no manager wants it".into(),
            },
            Disposal::Unmatched(Unmatched::Forward(to)) => {
                let label = format!("unmatched: forward to {to}");
                let result = match done_before(claim, &label).await? {
                    Some(result) => result,
                    None => {
                        let taken = async {
                            MailSink::new(&to, &self.helo())
                                .map_err(SinkError::Permanent)?
                                .forward(&bytes, &mail.envelope_from, &mail.envelope_to)
                                .await
                                .map(|()| Taken::Sent)
                        };
                        settle(claim, &label, taken.await).await?
                    }
                };
                report.actions.push((label.clone(), result));
                outcome_of(&report.actions, Some(label))
            }
            Disposal::Act => {
                // The same alert, or the same post with the same text, from two rules is
                // sent once (mail2alert merges them); other texts are each posted.
                let mut taken = std::collections::HashSet::new();
                for fired in &decision.fired {
                    for action in &fired.actions {
                        let same = match action {
                            Action::Mailto(_) => Some(action.to_string().to_ascii_lowercase()),
                            Action::Mattermost(_) => {
                                Some(format!("{action}\n{:?}", fired.markdown))
                            }
                            _ => None,
                        };
                        if same.is_some_and(|key| !taken.insert(key)) {
                            continue;
                        }
                        let label = format!("{}: {action}", fired.rule);
                        let text = match action {
                            Action::Mattermost(_) => fired.markdown.clone().unwrap_or_else(|| {
                                Err("no Markdown rendered for a mattermost: action".into())
                            }),
                            _ => fired.text.clone(),
                        };
                        let result = match (text, done_before(claim, &label).await?) {
                            (_, Some(result)) => result,
                            (Err(e), None) => ActionResult::Failed(SinkError::Permanent(e)),
                            (Ok(text), None) => {
                                let taken =
                                    self.take(claim, &label, action, &text, &bytes, &mail).await;
                                settle(claim, &label, taken).await?
                            }
                        };
                        report.actions.push((label, result));
                    }
                }
                outcome_of(&report.actions, None)
            }
        };
        Ok(outcome)
    }

    /// Takes one action (`label`: its rule and URI, under which its steps are recorded).
    async fn take(
        &self,
        claim: &mut Claim,
        label: &str,
        action: &Action,
        text: &str,
        bytes: &[u8],
        mail: &MailView,
    ) -> Result<Taken, SinkError> {
        let (address, room) = match action {
            Action::Mattermost(target) => {
                let sink = self.mattermost.as_ref().ok_or_else(|| {
                    SinkError::Permanent("mattermost: actions need the mattermost: server".into())
                })?;
                let mut steps = Steps { claim, label };
                let delivery = sink.deliver(target, mail, text, bytes, &mut steps).await?;
                return Ok(Taken::from(delivery));
            }
            Action::Mailto(to) => {
                let sink = self
                    .mail
                    .as_ref()
                    .ok_or_else(|| SinkError::Permanent("mailto: needs remote-smtp".into()))?;
                return sink
                    .mailto(
                        bytes,
                        &mail.envelope_from,
                        to,
                        self.rules.mailto_from.as_deref(),
                    )
                    .await
                    .map(|()| Taken::Sent);
            }
            Action::XmppRoom(room) => (room, true),
            Action::XmppDirect(user) => (user, false),
        };
        let settings = self.rules.xmpp.as_ref();
        let sink =
            self.xmpp.as_ref().zip(settings).ok_or_else(|| {
                SinkError::Permanent("xmpp: actions need the xmpp: account".into())
            })?;
        let allowed = &sink.1.valid_from;
        if !allowed.is_empty() && !any_matches(allowed, [mail.envelope_from.as_str()]) {
            return Ok(Taken::Skipped(format!(
                "sender {:?} is not in valid_from",
                mail.envelope_from
            )));
        }
        let target = Target::parse(address, room)?;
        sink.0
            .post(target, text.to_string())
            .await
            .map(|()| Taken::Sent)
    }

    fn helo(&self) -> String {
        gethostname::gethostname().to_string_lossy().into_owned()
    }
}

/// Returns what an earlier attempt did with the action `label` when it recorded it as
/// done; else renews the lease before the action is taken: an error when it is lost
/// (nothing more may be done). An action there is no room to record fails for good, since
/// every later attempt would take it again.
async fn done_before(claim: &Claim, label: &str) -> Result<Option<ActionResult>, QueueError> {
    let id = action_id(label);
    if claim.done().contains(&id) {
        return Ok(Some(ActionResult::DoneBefore));
    }
    claim.renew(None).await?;
    if !claim.has_room_for(&id) {
        return Ok(Some(ActionResult::Failed(SinkError::Permanent(
            "no room left on the message to record the action".into(),
        ))));
    }
    Ok(None)
}

/// Records the action `label` as done when it was taken (a lease lost on the way is an
/// error: nothing more is done); what happened, for the report.
async fn settle(
    claim: &mut Claim,
    label: &str,
    taken: Result<Taken, SinkError>,
) -> Result<ActionResult, QueueError> {
    let result = match taken {
        Ok(Taken::Sent) => ActionResult::Sent,
        Ok(Taken::Partly(why)) => ActionResult::Partly(why),
        Ok(Taken::Skipped(why)) => return Ok(ActionResult::Skipped(why)),
        Err(e) => return Ok(ActionResult::Failed(e)),
    };
    // The action went out: the message goes on to its finish even when the record fails
    // for a reason other than a lost lease (only a later attempt could repeat it).
    match claim.record_done(&action_id(label)).await {
        Err(e @ QueueError::LeaseLost { .. }) => return Err(e),
        Err(e) => {
            tracing::warn!(key = claim.key(), label, error = %e, "action taken but not recorded")
        }
        Ok(()) => {}
    }
    Ok(result)
}

/// What taking an action did.
enum Taken {
    Sent,
    /// Not taken, and why.
    Skipped(String),
    /// Taken for some recipients; the others refused for good or not allowed (why).
    Partly(String),
}

impl From<Delivery> for Taken {
    fn from(d: Delivery) -> Taken {
        let others: Vec<String> = d.refused.iter().chain(&d.skipped).cloned().collect();
        match (d.delivered, d.refused.is_empty()) {
            (_, true) if d.skipped.is_empty() => Taken::Sent,
            (0, true) => Taken::Skipped(format!("no allowed recipient: {}", others.join(", "))),
            _ => Taken::Partly(format!("not delivered to {}", others.join(", "))),
        }
    }
}

/// An action's steps on the claim: each step's id is the [`action_id`] of the action's
/// label and the step, with the step's value after `=`.
struct Steps<'a> {
    claim: &'a mut Claim,
    label: &'a str,
}

impl Steps<'_> {
    /// A step's id: 12 hex digits (48 bits) of the SHA-256 of the action's label and the
    /// step, so that two steps of one message practically never share an id (one that did
    /// would be taken as done and skipped).
    fn id(&self, step: &str) -> String {
        let digest = Sha256::digest(format!("{}|{step}", self.label).as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Steps<'_> {
    /// The entries of the claim's done list that record `step`.
    fn entries(&self, step: &str) -> Vec<String> {
        let id = self.id(step);
        self.claim
            .done()
            .iter()
            .filter(|entry| entry.split('=').next() == Some(id.as_str()))
            .cloned()
            .collect()
    }
}

impl Progress for Steps<'_> {
    fn done(&self, step: &str) -> Option<String> {
        self.entries(step)
            .first()
            .map(|entry| entry.split_once('=').map_or("", |(_, v)| v).to_string())
    }

    fn held(&self) -> bool {
        // The renewer marks a lost lease a little late when the lock engine is cut off;
        // its end is known for sure.
        !self.claim.is_lost() && chrono::Utc::now() < self.claim.lease_until()
    }

    fn has_room(&self, steps: &[(String, usize)]) -> bool {
        let mut entries: Vec<String> = steps
            .iter()
            .map(|(step, value_len)| match value_len {
                0 => self.id(step),
                n => format!("{}={}", self.id(step), "x".repeat(*n)),
            })
            .collect();
        entries.push(action_id(self.label));
        self.claim.has_room_for_all(&entries)
    }
    async fn record(
        &mut self,
        step: &str,
        value: Option<&str>,
        replaced: &[String],
    ) -> Result<(), SinkError> {
        let entry = match value {
            Some(v) => format!("{}={v}", self.id(step)),
            None => self.id(step),
        };
        let replaced: Vec<String> = replaced.iter().flat_map(|r| self.entries(r)).collect();
        match self.claim.record_done_replacing(&entry, &replaced).await {
            Ok(()) => Ok(()),
            Err(QueueError::Refused(why)) => Err(SinkError::Permanent(format!(
                "cannot record progress: {why}"
            ))),
            Err(e) => Err(SinkError::Transient(format!("cannot record progress: {e}"))),
        }
    }
}

/// The outcome of a message whose actions ended as `actions`: any permanent failure sends
/// it to `failed/`, else any transient one to `retry/`, else it is done (with `reason`).
fn outcome_of(actions: &[(String, ActionResult)], reason: Option<String>) -> Outcome {
    let failures = |permanent: bool| -> Vec<String> {
        actions
            .iter()
            .filter_map(|(label, result)| match result {
                ActionResult::Failed(e) if e.is_permanent() == permanent => {
                    Some(format!("{label}: {e}"))
                }
                _ => None,
            })
            .collect()
    };
    let permanent = failures(true);
    if !permanent.is_empty() {
        return Outcome::Failed {
            reason: permanent.join("; "),
        };
    }
    let transient = failures(false);
    if !transient.is_empty() {
        return Outcome::Retry {
            reason: Some(transient.join("; ")),
            not_before: None,
        };
    }
    // Recipients left out on purpose or refused for good are named in the reason.
    let notes: Vec<String> = reason
        .into_iter()
        .chain(actions.iter().filter_map(|(label, result)| match result {
            ActionResult::Skipped(why) | ActionResult::Partly(why) => {
                Some(format!("{label}: {why}"))
            }
            _ => None,
        }))
        .collect();
    Outcome::Done {
        reason: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// A short id for an action, for the claim's record of work done: 8 hex digits of the
/// SHA-256 of its label (rule name and URI).
pub fn action_id(label: &str) -> String {
    let digest = Sha256::digest(label.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The one log line of a message; `error`: why it was not moved on.
fn log(report: &Report, error: Option<&QueueError>) {
    let actions: Vec<String> = report
        .actions
        .iter()
        .map(|(label, result)| match result {
            ActionResult::Sent => format!("{label} sent"),
            ActionResult::Skipped(why) => format!("{label} skipped: {why}"),
            ActionResult::DoneBefore => format!("{label} done before"),
            ActionResult::Partly(why) => format!("{label} sent, {why}"),
            ActionResult::Failed(e) => format!("{label} {e}"),
        })
        .collect();
    let manager = report.manager.as_deref().unwrap_or("-");
    match error {
        None => tracing::info!(
            key = report.key,
            manager,
            rules = ?report.rules,
            actions = ?actions,
            to = report.finished,
            reason = report.reason.as_deref().unwrap_or("-"),
            "message handled"
        ),
        Some(e) => tracing::warn!(
            key = report.key,
            manager,
            rules = ?report.rules,
            actions = ?actions,
            error = %e,
            "message left for a later attempt"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(permanent: bool) -> ActionResult {
        ActionResult::Failed(if permanent {
            SinkError::Permanent("550 no".into())
        } else {
            SinkError::Transient("refused".into())
        })
    }

    #[test]
    fn permanent_failures_win_then_transient_ones() {
        let a = |r| ("r: mailto:a@b".to_string(), r);
        assert_eq!(
            outcome_of(&[a(ActionResult::Sent), a(ActionResult::DoneBefore)], None),
            Outcome::Done { reason: None }
        );
        assert!(matches!(
            outcome_of(&[a(failed(false)), a(ActionResult::Sent)], None),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            outcome_of(&[a(failed(false)), a(failed(true))], None),
            Outcome::Failed {
                reason: "r: mailto:a@b: permanent: 550 no".into()
            }
        );
    }

    #[test]
    fn action_ids_are_short_and_stable() {
        assert_eq!(action_id("disk: mailto:a@b"), action_id("disk: mailto:a@b"));
        assert_ne!(action_id("disk: mailto:a@b"), action_id("disk: mailto:a@c"));
        assert_eq!(action_id("x").len(), 8);
    }
}
