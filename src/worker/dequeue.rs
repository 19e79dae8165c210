//! The dequeue worker: claims stored mail with the queue library, decides what each message
//! means with the [rules](crate::worker::rules), takes the actions through the [sinks](crate::worker::sinks)
//! and moves the message on:
//!
//! | what happened | where it goes | reason |
//! |---|---|---|
//! | a duplicate finished within `dedup_window` | `done/` | `duplicate of <key>` |
//! | it carries this queue's own loop mark ([`LOOP_HEADER`]) | `done/` | `mail loop: ...` |
//! | every action succeeded | `done/` | — |
//! | an action failed for now | `retry/` (backoff) | the failures (those for good too) |
//! | actions failed for good (5xx, unknown room, rule error), none for now | `failed/` | the failures |
//! | a manager wanted it, no rule matched | `done/` | `no rule matched` |
//! | no manager wanted it | as `unmatched` says | `unmatched: ...` |
//!
//! Each action that succeeds is recorded on the claim ([`Claim::record_done`]) before the
//! next one, so an attempt after a failure, a crash or a lost lease never repeats it (no
//! second chat message); one that failed for good is recorded too, so that the attempts
//! for its transient neighbours do not try it again. The record is keyed by what the
//! action does (its target and text: [`Planned::receipt`]), not by the rule that asked for
//! it, so a rules file changed meanwhile repeats nothing. A claim whose lease is lost stops
//! at once and moves nothing.
//!
//! `mailto:` actions are taken as mail2alert takes them: one alert per message, to every
//! address of every rule that fired, its `To:` listing them. Everything the worker sends
//! carries [`LOOP_HEADER`] with the queue's id and the ids of the message's actions, and
//! alerts `Auto-Submitted: auto-generated` (RFC 3834): mail that comes back to the same
//! queue is not sent again by the same actions. A GoCD notification's event is recorded
//! on it (`gocd-event=<EVENT>`), so a later attempt decides as the first did.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::queue::{Claim, ClaimOptions, Outcome, Queue, QueueError, replace_in_place};
use crate::store::key::MessageKey;
use crate::telemetry::health::Check;
use crate::telemetry::metrics::{Kind, Sink, SinkFailure, metrics};
use crate::util::logging::list;
use crate::worker::gocd::Gocd;
use crate::worker::mail_view::MailView;
use crate::worker::plan::{self, MailJob, MailKind, Planned, What};
use crate::worker::rules::gocd::{Event, GocdFacts};
use crate::worker::rules::{Action, Decision, Disposal, MattermostTarget, Rules, Unmatched};
use crate::worker::sinks::mail::{LOOP_HEADER, MailSink, Marks};
use crate::worker::sinks::mattermost::{Delivery, MattermostSink};
use crate::worker::sinks::xmpp::{Target, XmppSink};
use crate::worker::sinks::{Progress, SinkError};

/// The prefix of the record of a message's GoCD event (`gocd-event=BREAKS`).
const GOCD_EVENT: &str = "gocd-event=";

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
    /// The GoCD server of each `gocd` manager, by the manager's place in the rules.
    pub gocd: std::collections::BTreeMap<usize, Arc<Gocd>>,
    /// The marks on everything sent: the queue's id in [`LOOP_HEADER`].
    pub marks: Marks,
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionResult {
    Sent,
    /// Deliberately not taken (why), e.g. a sender outside the XMPP account's `valid_from`.
    Skipped(String),
    /// Recorded as done by an earlier attempt: not taken again.
    DoneBefore,
    /// Recorded as failed for good by an earlier attempt: not taken again.
    FailedBefore,
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
        let mut gocd = std::collections::BTreeMap::new();
        for (at, manager) in rules.managers.iter().enumerate() {
            if manager.gocd.is_some() {
                gocd.insert(at, Arc::new(Gocd::new(manager, queue.lock().clone())?));
            }
        }
        let marks = Marks::for_queue(&crate::queue::queue_id(queue.destination()));
        Ok(Worker {
            queue,
            rules: Arc::new(rules),
            mail,
            xmpp,
            mattermost,
            gocd,
            marks,
        })
    }

    /// Seeds each GoCD manager's shared history from its server's cctray.xml (pipelines
    /// another worker already knows keep what it learnt).
    pub async fn seed_gocd_history(&self) {
        for gocd in self.gocd.values() {
            gocd.seed_history().await;
        }
    }

    /// The readiness checks of the sinks the rules use: the SMTP server greets, the XMPP
    /// session is online, the Mattermost server answers its ping.
    pub fn sink_checks(self: &Arc<Self>) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Some(mail) = &self.mail {
            let mail = mail.clone();
            checks.push(Check::new("sink mail (remote-smtp)", move || {
                let mail = mail.clone();
                async move { mail.reachable().await }
            }));
        }
        if let Some(xmpp) = &self.xmpp {
            let xmpp = xmpp.clone();
            checks.push(Check::new("sink xmpp", move || {
                let result = xmpp.reachable();
                async move { result }
            }));
        }
        if self.mattermost.is_some() {
            let worker = Arc::clone(self);
            checks.push(Check::new("sink mattermost", move || {
                let worker = Arc::clone(&worker);
                async move {
                    match &worker.mattermost {
                        Some(mattermost) => mattermost.reachable().await,
                        None => Ok(()),
                    }
                }
            }));
        }
        checks
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
                Ok(Some(claim)) => {
                    metrics().claims.inc();
                    claim
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim; trying again");
                    tokio::time::sleep(CLAIM_WAIT).await;
                    continue;
                }
            };
            if *stop.borrow() {
                // Claimed while the stop came: not started, so handed back at once.
                match claim.release().await {
                    Ok(_) => {
                        metrics()
                            .finished
                            .get_or_create(&Kind { kind: "released" })
                            .inc();
                    }
                    Err(e) => {
                        tracing::warn!(key = claim.key(), error = %e, "cannot release; its lease will run out")
                    }
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
                let kind = match &outcome {
                    Outcome::Done { .. } => "done",
                    Outcome::Retry { .. } => "retry",
                    Outcome::Failed { .. } => "failed",
                };
                report.reason = match &outcome {
                    Outcome::Done { reason } | Outcome::Retry { reason, .. } => reason.clone(),
                    Outcome::Failed { reason } => Some(reason.clone()),
                };
                let finished = claim.finish(outcome).await.map(|f| f.key);
                if finished.is_ok() {
                    metrics().finished.get_or_create(&Kind { kind }).inc();
                }
                finished
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => {}
            Err(QueueError::LeaseLost { .. }) => {
                metrics().lease_losses.inc();
            }
            Err(_) => {
                metrics()
                    .finished
                    .get_or_create(&Kind { kind: "error" })
                    .inc();
            }
        }
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

    /// What the rules decide for `bytes` (of `claim`): the message parsed once; for a
    /// `gocd` manager, the notification's event (the one an earlier attempt recorded on the
    /// claim, else from the shared history, then recorded) and the pipeline groups. An
    /// error: the history or the groups a rule needs cannot be had (tried again later).
    async fn decide(
        &self,
        claim: &mut Claim,
        bytes: &bytes::Bytes,
    ) -> Result<(Arc<MailView>, Decision), QueueError> {
        // Parsing (an HTML body turned into text, the rules' regexes) is CPU work that a
        // large message makes long: off the runtime's threads.
        let parsed = bytes.clone();
        let mail = tokio::task::spawn_blocking(move || Arc::new(MailView::parse(&parsed)))
            .await
            .map_err(|e| QueueError::Refused(format!("parsing the message failed: {e}")))?;
        let manager = self.rules.manager_at(&mail);
        let facts = match manager.and_then(|at| self.gocd.get(&at)) {
            Some(gocd) => {
                let recorded = claim
                    .done()
                    .iter()
                    .find_map(|d| d.strip_prefix(GOCD_EVENT).and_then(Event::parse));
                // A copy of what this queue sent, come back, is no new notification.
                let join = self.marks.actions_in(bytes).is_empty();
                let (stage, event) = gocd
                    .event(&mail.subject, claim.name(), join, recorded)
                    .await
                    .map_err(|e| QueueError::Lock(format!("gocd history: {e}")))?;
                // Recorded before anything else can fail: a later attempt decides alike.
                if let (None, Some(event)) = (recorded, event) {
                    record(claim, "gocd event", &format!("{GOCD_EVENT}{event}")).await?;
                }
                let groups = gocd
                    .groups()
                    .await
                    .map_err(|e| QueueError::Store(format!("gocd: {e}")))?;
                Some(GocdFacts {
                    stage,
                    event,
                    groups,
                })
            }
            None => None,
        };
        let (rules, view) = (self.rules.clone(), mail.clone());
        let decision = tokio::task::spawn_blocking(move || rules.decide(&view, facts.as_ref()))
            .await
            .map_err(|e| QueueError::Refused(format!("the rules failed: {e}")))?;
        Ok((mail, decision))
    }

    /// Takes the actions the rules decide for the message; where it goes next.
    async fn act(&self, claim: &mut Claim, report: &mut Report) -> Result<Outcome, QueueError> {
        let (bytes, _) = claim.read().await?;
        if let Some(original) = claim.duplicate_of().await? {
            return Ok(Outcome::Done {
                reason: Some(format!("duplicate of {}", original.key)),
            });
        }
        let (mail, decision) = self.decide(claim, &bytes).await?;
        report.manager = decision.manager.clone();
        report.rules = decision.fired.iter().map(|f| f.rule.clone()).collect();
        let (planned, reason) = match &decision.disposal {
            Disposal::NoRuleMatched => {
                return Ok(Outcome::Done {
                    reason: Some("no rule matched".into()),
                });
            }
            Disposal::Unmatched(Unmatched::Done) => {
                return Ok(Outcome::Done {
                    reason: Some("unmatched: no manager wants it".into()),
                });
            }
            Disposal::Unmatched(Unmatched::Fail) => {
                return Ok(Outcome::Failed {
                    reason: "unmatched: no manager wants it".into(),
                });
            }
            Disposal::Unmatched(Unmatched::Forward(server)) => {
                let forward = plan::forward(server, &mail.envelope_to);
                let reason = forward.label.clone();
                (vec![forward], Some(reason))
            }
            Disposal::Act => (plan::plan(&decision), None),
        };
        // What this queue's workers sent before, by which action: the same action again
        // would be a loop (an alert or forward that came back); another one is a chain.
        let sent_by = self.marks.actions_in(&bytes);
        let looped = |p: &Planned| sent_by.contains(&action_id(&p.receipt));
        // What leaves carries the ids of all this message's actions: if it comes back, the
        // same rules' posts are loops too, not only the mail that brought it.
        let ids: Vec<String> = planned.iter().map(|p| action_id(&p.receipt)).collect();
        if !planned.is_empty() && planned.iter().all(looped) {
            return Ok(Outcome::Done {
                reason: Some(format!(
                    "mail loop: this queue sent the message before by the same actions ({LOOP_HEADER}: {} ...); not sent again",
                    self.marks.id()
                )),
            });
        }
        for planned in planned {
            let result = if looped(&planned) {
                ActionResult::Skipped(format!(
                    "mail loop: this queue sent the message by this action before ({LOOP_HEADER}: {} {})",
                    self.marks.id(),
                    action_id(&planned.receipt)
                ))
            } else {
                let started = std::time::Instant::now();
                let result = self.take_once(claim, &planned, &bytes, &mail, &ids).await?;
                count_action(&planned.what, started, &result);
                result
            };
            report.actions.push((planned.label, result));
        }
        Ok(outcome_of(&report.actions, reason, claim.previous_reason()))
    }

    /// Takes `planned` unless an earlier attempt recorded it (done, or failed for good),
    /// and records what happened.
    async fn take_once(
        &self,
        claim: &mut Claim,
        planned: &Planned,
        bytes: &[u8],
        mail: &MailView,
        ids: &[String],
    ) -> Result<ActionResult, QueueError> {
        let (action, text) = match &planned.what {
            What::Mail(job) => {
                return self.send_mail(claim, planned, job, bytes, mail, ids).await;
            }
            What::Post(action, text) => (action, text),
        };
        if let Some(result) = done_before(claim, planned).await? {
            return Ok(result);
        }
        let taken = match text {
            Err(e) => Err(SinkError::Permanent(e.clone())),
            Ok(text) => self.take(claim, &planned.receipt, action, text, mail).await,
        };
        settle(claim, planned, taken).await
    }

    /// Sends the alert or forward `job` to each recipient no earlier attempt recorded, and
    /// records each recipient's end (taken, or refused for good) in one update; its loop
    /// mark names `ids`, the message's actions.
    async fn send_mail(
        &self,
        claim: &mut Claim,
        planned: &Planned,
        job: &MailJob,
        bytes: &[u8],
        mail: &MailView,
        ids: &[String],
    ) -> Result<ActionResult, QueueError> {
        if job.to.is_empty() {
            return Ok(ActionResult::Failed(SinkError::Permanent(
                "no recipient to send to (no Delivered-To)".into(),
            )));
        }
        let id = |recipient: &str| action_id(&job.receipt(recipient));
        let done = claim.done();
        // Recorded whole: by the version before, or with too many recipients to record each.
        let whole_id = action_id(&planned.receipt);
        if done.contains(&whole_id) {
            return Ok(ActionResult::DoneBefore);
        }
        if done.contains(&format!("{whole_id}!")) {
            return Ok(ActionResult::FailedBefore);
        }
        let (mut pending, mut refused_before) = (Vec::new(), Vec::new());
        for recipient in &job.to {
            let before = job.earlier_receipts(recipient);
            if done.contains(&id(recipient)) || before.iter().any(|r| done.contains(&action_id(r)))
            {
                continue;
            }
            if done.contains(&format!("{}!", id(recipient))) {
                refused_before.push(recipient.clone());
            } else {
                pending.push(recipient.clone());
            }
        }
        if pending.is_empty() {
            return Ok(match refused_before.len() {
                0 => ActionResult::DoneBefore,
                n if n == job.to.len() => ActionResult::FailedBefore,
                _ => ActionResult::Partly(format!(
                    "not delivered to {} (refused for good before)",
                    refused_before.join(", ")
                )),
            });
        }
        claim.renew(None).await?;
        let entries: Vec<String> = pending.iter().map(|r| format!("{}!", id(r))).collect();
        // Too many recipients to record each: the whole job is recorded once it went to
        // any, and those refused for now are not tried again (said in the result).
        let whole = !claim.has_room_for_all(&entries);
        if whole && !claim.has_room_for(&format!("{whole_id}!")) {
            return Ok(ActionResult::Failed(SinkError::Permanent(
                "no room left on the message to record the action".into(),
            )));
        }
        let loop_mark = self.marks.line(ids);
        let sent = match &job.kind {
            MailKind::Alert { .. } => match &self.mail {
                Some(sink) => {
                    let from = self.rules.mailto_from.as_deref();
                    sink.mailto(
                        bytes,
                        &mail.envelope_from,
                        &pending,
                        &job.to,
                        from,
                        &loop_mark,
                    )
                    .await
                }
                None => Err(SinkError::Permanent("mailto: needs remote-smtp".into())),
            },
            MailKind::Forward { server } => match MailSink::new(server, &self.helo()) {
                Ok(sink) => {
                    sink.forward(bytes, &mail.envelope_from, &pending, &loop_mark)
                        .await
                }
                Err(e) => Err(SinkError::Permanent(e)),
            },
        };
        let sent = match sent {
            Ok(sent) => sent,
            Err(e) => {
                // Nobody got it (the sender refused, or no connection): all pending.
                if e.is_permanent() {
                    let entries: Vec<String> = match whole {
                        true => vec![format!("{whole_id}!")],
                        false => pending.iter().map(|r| format!("{}!", id(r))).collect(),
                    };
                    record_all(claim, &planned.label, &entries).await?;
                }
                return Ok(ActionResult::Failed(e));
            }
        };
        if whole {
            if !sent.accepted.is_empty() {
                record(claim, &planned.label, &whole_id).await?;
                let missed: Vec<String> = refused_before
                    .iter()
                    .map(|r| format!("{r} (refused for good before)"))
                    .chain(
                        sent.refused
                            .iter()
                            .chain(&sent.deferred)
                            .map(|(_, why)| why.clone()),
                    )
                    .collect();
                return Ok(match missed.is_empty() {
                    true => ActionResult::Sent,
                    false => ActionResult::Partly(format!(
                        "not delivered to {} (too many recipients to record each: not tried again)",
                        missed.join("; ")
                    )),
                });
            }
        } else {
            let entries: Vec<String> = sent
                .accepted
                .iter()
                .map(|r| id(r))
                .chain(sent.refused.iter().map(|(r, _)| format!("{}!", id(r))))
                .collect();
            record_all(claim, &planned.label, &entries).await?;
        }
        let refused: Vec<String> = refused_before
            .iter()
            .map(|r| format!("{r} (refused for good before)"))
            .chain(sent.refused.iter().map(|(_, why)| why.clone()))
            .collect();
        Ok(if !sent.deferred.is_empty() {
            let deferred: Vec<&str> = sent.deferred.iter().map(|(_, why)| why.as_str()).collect();
            ActionResult::Failed(SinkError::Transient(format!(
                "refused for now: {}",
                deferred.join("; ")
            )))
        } else if refused.is_empty() {
            ActionResult::Sent
        } else if sent.accepted.is_empty() && refused.len() == job.to.len() {
            ActionResult::Failed(SinkError::Permanent(format!(
                "refused: {}",
                refused.join("; ")
            )))
        } else {
            ActionResult::Partly(format!("not delivered to {}", refused.join("; ")))
        })
    }

    /// Takes one post (`receipt`: what it does, under which its steps are recorded).
    async fn take(
        &self,
        claim: &mut Claim,
        receipt: &str,
        action: &Action,
        text: &str,
        mail: &MailView,
    ) -> Result<Taken, SinkError> {
        let (address, room) = match action {
            Action::Mattermost(target) => {
                let sink = self.mattermost.as_ref().ok_or_else(|| {
                    SinkError::Permanent("mattermost: actions need the mattermost: server".into())
                })?;
                let mut steps = Steps {
                    claim,
                    label: receipt,
                };
                let delivery = sink.deliver(target, mail, text, &mut steps).await?;
                return Ok(Taken::from(delivery));
            }
            Action::Mailto(_) => unreachable!("mailto: actions are planned as the alert"),
            Action::XmppRoom(room) => (room, Some(true)),
            Action::XmppDirect(user) => (user, Some(false)),
            Action::Xmpp(jid) => (jid, None),
        };
        let settings = self.rules.xmpp.as_ref();
        let sink =
            self.xmpp.as_ref().zip(settings).ok_or_else(|| {
                SinkError::Permanent("xmpp: actions need the xmpp: account".into())
            })?;
        let allowed = &sink.1.valid_from;
        if !allowed.is_empty() && !allowed.iter().any(|v| v.allows(mail)) {
            let from = mail.header_values("from").next().unwrap_or_default();
            return Ok(Taken::Skipped(format!(
                "sender {:?} (From: {from}) is not in valid_from",
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

/// Returns what an earlier attempt did with `planned` when it recorded it (done, or failed
/// for good); else renews the lease before the action is taken: an error when it is lost
/// (nothing more may be done). An action there is no room to record fails for good, since
/// every later attempt would take it again.
async fn done_before(claim: &Claim, planned: &Planned) -> Result<Option<ActionResult>, QueueError> {
    let id = action_id(&planned.receipt);
    // Records of the version before receipts were keyed by the rule and URI (a room by
    // its domain's name then: `?join`).
    let earlier = [
        action_id(&planned.label),
        action_id(&format!("{}?join", planned.label)),
    ];
    if claim.done().contains(&id) || earlier.iter().any(|e| claim.done().contains(e)) {
        return Ok(Some(ActionResult::DoneBefore));
    }
    if claim.done().contains(&format!("{id}!")) {
        return Ok(Some(ActionResult::FailedBefore));
    }
    claim.renew(None).await?;
    // The longer of its two records.
    if !claim.has_room_for(&format!("{id}!")) {
        return Ok(Some(ActionResult::Failed(SinkError::Permanent(
            "no room left on the message to record the action".into(),
        ))));
    }
    Ok(None)
}

/// Counts an action taken now (not one an earlier attempt recorded): its time at the sink,
/// and its failure by class.
fn count_action(what: &What, started: std::time::Instant, result: &ActionResult) {
    let sink = match what {
        What::Mail(_) => "mail",
        What::Post(Action::Mattermost(MattermostTarget::Webhook), _) => "webhook",
        What::Post(Action::Mattermost(_), _) => "mattermost",
        What::Post(_, _) => "xmpp",
    };
    let m = metrics();
    match result {
        ActionResult::DoneBefore | ActionResult::FailedBefore | ActionResult::Skipped(_) => return,
        ActionResult::Failed(e) => {
            let class = if e.is_permanent() {
                "permanent"
            } else {
                "transient"
            };
            m.action_failures
                .get_or_create(&SinkFailure { sink, class })
                .inc();
        }
        ActionResult::Sent | ActionResult::Partly(_) => {}
    }
    m.action_seconds
        .get_or_create(&Sink { sink })
        .observe(started.elapsed().as_secs_f64());
}

/// Records `planned` as done when it was taken, or as failed for good (a lease lost on the
/// way is an error: nothing more is done); what happened, for the report.
async fn settle(
    claim: &mut Claim,
    planned: &Planned,
    taken: Result<Taken, SinkError>,
) -> Result<ActionResult, QueueError> {
    let id = action_id(&planned.receipt);
    let (result, entry) = match taken {
        Ok(Taken::Sent) => (ActionResult::Sent, id),
        Ok(Taken::Partly(why)) => (ActionResult::Partly(why), id),
        Ok(Taken::Skipped(why)) => return Ok(ActionResult::Skipped(why)),
        Err(e @ SinkError::Permanent(_)) => (ActionResult::Failed(e), format!("{id}!")),
        Err(e) => return Ok(ActionResult::Failed(e)),
    };
    record(claim, &planned.label, &entry).await?;
    Ok(result)
}

/// Records `entry` (an action's end) on the claim. The action went out (or never will):
/// the message goes on to its finish even when the record fails for a reason other than
/// a lost lease (only a later attempt could repeat it).
async fn record(claim: &mut Claim, label: &str, entry: &str) -> Result<(), QueueError> {
    record_all(claim, label, &[entry.to_string()]).await
}

/// [`record`] for several entries, in one update.
async fn record_all(claim: &mut Claim, label: &str, entries: &[String]) -> Result<(), QueueError> {
    match claim.record_done_all(entries).await {
        Err(e @ QueueError::LeaseLost { .. }) => Err(e),
        Err(e) => {
            tracing::warn!(key = claim.key(), label, error = %e, "action's end not recorded");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
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
        // The first few are named (the sink logs each); a message to hundreds keeps a
        // readable reason.
        const NAMED: usize = 5;
        let mut named = others
            .iter()
            .take(NAMED)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if others.len() > NAMED {
            named += &format!(" and {} more", others.len() - NAMED);
        }
        match (d.delivered, d.refused.is_empty()) {
            (_, true) if d.skipped.is_empty() => Taken::Sent,
            (0, true) => Taken::Skipped(format!("no allowed recipient: {named}")),
            _ => Taken::Partly(format!("not delivered to {named}")),
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

    fn stored_at_ms(&self) -> i64 {
        MessageKey::parse(self.claim.name()).map_or(0, |key| key.secs as i64 * 1000)
    }

    fn identity(&self, step: &str) -> String {
        let digest = Sha256::digest(format!("{}|{}|{step}", self.claim.name(), self.label));
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn has_room(&self, steps: &[(String, usize)]) -> bool {
        // The list as recording each step would leave it: a step recorded again in its
        // entry's place, a new one at the end.
        let mut done = self.claim.done().to_vec();
        for (step, value_len) in steps {
            let entry = match value_len {
                0 => self.id(step),
                n => format!("{}={}", self.id(step), "x".repeat(*n)),
            };
            replace_in_place(&mut done, entry, &self.entries(step));
        }
        done.push(action_id(self.label));
        self.claim.fits(done)
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

/// The outcome of a message whose actions ended as `actions`: any transient failure sends
/// it to `retry/` (what failed for good is recorded and not tried again), else any
/// permanent one to `failed/` (`previous`: the reason of the attempt before, which named
/// the failures recorded then), else it is done (with `reason`).
fn outcome_of(
    actions: &[(String, ActionResult)],
    reason: Option<String>,
    previous: Option<&str>,
) -> Outcome {
    let failures = |permanent: bool| -> Vec<String> {
        actions
            .iter()
            .filter_map(|(label, result)| match result {
                ActionResult::Failed(e) if e.is_permanent() == permanent => {
                    Some(format!("{label}: {e}"))
                }
                ActionResult::FailedBefore if permanent => Some(match previous {
                    Some(before) => format!(
                        "{label}: failed for good in an earlier attempt (it said: {before})"
                    ),
                    None => format!("{label}: failed for good in an earlier attempt"),
                }),
                _ => None,
            })
            .collect()
    };
    let (transient, permanent) = (failures(false), failures(true));
    if !transient.is_empty() {
        return Outcome::Retry {
            reason: Some(
                transient
                    .into_iter()
                    .chain(permanent)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            not_before: None,
        };
    }
    if !permanent.is_empty() {
        return Outcome::Failed {
            reason: permanent.join("; "),
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
            ActionResult::FailedBefore => format!("{label} failed for good before"),
            ActionResult::Partly(why) => format!("{label} sent, {why}"),
            ActionResult::Failed(e) => format!("{label} {e}"),
        })
        .collect();
    let manager = report.manager.as_deref().unwrap_or("-");
    match error {
        None => tracing::info!(
            key = report.key,
            manager,
            rules = list(&report.rules),
            actions = list(&actions),
            to = report.finished,
            reason = report.reason.as_deref().unwrap_or("-"),
            "message handled"
        ),
        Some(e) => tracing::warn!(
            key = report.key,
            manager,
            rules = list(&report.rules),
            actions = list(&actions),
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
    fn transient_failures_are_retried_beside_permanent_ones() {
        let a = |r| ("r: mailto:a@b".to_string(), r);
        assert_eq!(
            outcome_of(
                &[a(ActionResult::Sent), a(ActionResult::DoneBefore)],
                None,
                None
            ),
            Outcome::Done { reason: None }
        );
        assert!(matches!(
            outcome_of(&[a(failed(false)), a(ActionResult::Sent)], None, None),
            Outcome::Retry { .. }
        ));
        assert_eq!(
            outcome_of(&[a(failed(true)), a(failed(false))], None, None),
            Outcome::Retry {
                reason: Some(
                    "r: mailto:a@b: transient: refused; r: mailto:a@b: permanent: 550 no".into()
                ),
                not_before: None
            }
        );
        assert_eq!(
            outcome_of(
                &[a(ActionResult::FailedBefore), a(ActionResult::Sent)],
                None,
                None
            ),
            Outcome::Failed {
                reason: "r: mailto:a@b: failed for good in an earlier attempt".into()
            }
        );
        assert_eq!(
            outcome_of(&[a(failed(true))], None, None),
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
