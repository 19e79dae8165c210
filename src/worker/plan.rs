//! What the worker does for one message: the rules' decision turned into actions, in order,
//! each with the label the report gives it and the receipt its record on the claim is kept
//! under. A receipt names what an action does (its target and text), never the rule that
//! asked for it: a rules file changed while the message waits in `retry/` repeats nothing.
//!
//! `mailto:` actions are taken as mail2alert takes them: one alert per message, to every
//! address of every rule that fired (each once), its `To:` listing them; each recipient has
//! a receipt of its own, so a retry sends only to those the server did not take.

use crate::worker::rules::{Action, Decision};

/// One action the worker takes for a message.
#[derive(Debug, Clone)]
pub struct Planned {
    /// How the report names it: `<rule>: <uri>` (`<rule>+<rule>: mailto:<a>,<b>` for the
    /// alert of several rules).
    pub label: String,
    /// What it does (its target and text): its record on the claim, and the id in the loop
    /// mark of what it sends, come from it.
    pub receipt: String,
    pub what: What,
}

/// The kinds of action.
#[derive(Debug, Clone)]
pub enum What {
    /// A message through an SMTP server.
    Mail(MailJob),
    /// A post, with its text (or why it could not be rendered).
    Post(Action, Result<String, String>),
}

/// A message sent by SMTP: the alert, or unmatched mail forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailJob {
    pub kind: MailKind,
    /// The recipients, each once (any case), as written.
    pub to: Vec<String>,
}

/// What a [`MailJob`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailKind {
    /// The alert through `remote-smtp`, for these rules.
    Alert { rules: Vec<String> },
    /// The message unchanged to this server (host:port).
    Forward { server: String },
}

impl MailJob {
    /// The receipt of the copy for `recipient`.
    pub fn receipt(&self, recipient: &str) -> String {
        let recipient = recipient.to_ascii_lowercase();
        match &self.kind {
            MailKind::Alert { .. } => format!("mailto:{recipient}"),
            MailKind::Forward { server } => format!("forward:{server}:{recipient}"),
        }
    }

    /// The receipts that recorded the copy for `recipient` in the version before
    /// per-recipient receipts (a rule's `<rule>: mailto:<address>`; a whole forward).
    pub fn earlier_receipts(&self, recipient: &str) -> Vec<String> {
        match &self.kind {
            MailKind::Alert { rules } => rules
                .iter()
                .map(|rule| format!("{rule}: mailto:{recipient}"))
                .collect(),
            MailKind::Forward { server } => vec![format!("unmatched: forward to {server}")],
        }
    }
}

/// The actions for the rules that fired, in order: the alert where the first `mailto:`
/// appears, then each post; a post with the same target and text as one before it is
/// taken once.
pub fn plan(decision: &Decision) -> Vec<Planned> {
    let mut planned: Vec<Planned> = Vec::new();
    let mut alert_at = None;
    let (mut rules, mut addresses): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    let mut receipts = std::collections::HashSet::new();
    for fired in &decision.fired {
        for action in &fired.actions {
            if let Action::Mailto(address) = action {
                alert_at.get_or_insert(planned.len());
                if !rules.contains(&fired.rule) {
                    rules.push(fired.rule.clone());
                }
                if !addresses.iter().any(|a| a.eq_ignore_ascii_case(address)) {
                    addresses.push(address.clone());
                }
                continue;
            }
            let text = match action {
                Action::Mattermost(_) => fired
                    .markdown
                    .clone()
                    .unwrap_or_else(|| Err("no Markdown rendered for a mattermost: action".into())),
                _ => fired.text.clone(),
            };
            let receipt = match &text {
                Ok(text) => format!("{action}\n{text}"),
                Err(_) => format!("{}: {action}", fired.rule),
            };
            if receipts.insert(receipt.clone()) {
                planned.push(Planned {
                    label: format!("{}: {action}", fired.rule),
                    receipt,
                    what: What::Post(action.clone(), text),
                });
            }
        }
    }
    if let Some(at) = alert_at {
        let mut sorted: Vec<String> = addresses.iter().map(|a| a.to_ascii_lowercase()).collect();
        sorted.sort();
        let alert = Planned {
            label: format!("{}: mailto:{}", rules.join("+"), addresses.join(",")),
            receipt: format!("mailto:{}", sorted.join(",")),
            what: What::Mail(MailJob {
                kind: MailKind::Alert { rules },
                to: addresses,
            }),
        };
        planned.insert(at, alert);
    }
    planned
}

/// Unmatched mail forwarded unchanged to `server` (host:port), to its envelope recipients.
pub fn forward(server: &str, envelope_to: &[String]) -> Planned {
    let mut to: Vec<String> = Vec::new();
    for recipient in envelope_to {
        if !to.iter().any(|t| t.eq_ignore_ascii_case(recipient)) {
            to.push(recipient.clone());
        }
    }
    Planned {
        label: format!("unmatched: forward to {server}"),
        receipt: format!("forward:{server}"),
        what: What::Mail(MailJob {
            kind: MailKind::Forward {
                server: server.to_string(),
            },
            to,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::rules::{Disposal, Fired, MattermostTarget};

    fn fired(rule: &str, actions: Vec<Action>, text: &str) -> Fired {
        Fired {
            rule: rule.into(),
            actions,
            text: Ok(text.into()),
            markdown: Some(Ok(format!("**{text}**"))),
        }
    }

    #[test]
    fn one_alert_to_every_address_where_the_first_appears_and_posts_once_each() {
        let room = Action::XmppRoom("ops@conference.example.com".into());
        let decision = Decision {
            manager: Some("m".into()),
            fired: vec![
                fired(
                    "a",
                    vec![room.clone(), Action::Mailto("Ops@Example.com".into())],
                    "disk",
                ),
                fired(
                    "b",
                    vec![
                        Action::Mailto("ops@example.com".into()),
                        Action::Mailto("dba@example.com".into()),
                        room.clone(),
                        Action::Mattermost(MattermostTarget::Dm),
                    ],
                    "disk",
                ),
                fired("c", vec![room.clone()], "other text"),
            ],
            disposal: Disposal::Act,
        };
        let planned = plan(&decision);
        let labels: Vec<&str> = planned.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "a: xmpp:ops@conference.example.com?join",
                "a+b: mailto:Ops@Example.com,dba@example.com",
                "b: mattermost:dm",
                "c: xmpp:ops@conference.example.com?join",
            ]
        );
        assert_eq!(planned[1].receipt, "mailto:dba@example.com,ops@example.com");
        let What::Mail(job) = &planned[1].what else {
            panic!("{planned:?}")
        };
        assert_eq!(job.to, ["Ops@Example.com", "dba@example.com"]);
        assert_eq!(job.receipt("Ops@Example.com"), "mailto:ops@example.com");
        assert_eq!(
            job.earlier_receipts("dba@example.com"),
            ["a: mailto:dba@example.com", "b: mailto:dba@example.com"]
        );
        // Same target, same text: one receipt whatever the rule.
        assert_eq!(
            planned[0].receipt,
            "xmpp:ops@conference.example.com?join\ndisk"
        );
        let forwarded = forward("relay:25", &["a@x".into(), "A@x".into(), "b@x".into()]);
        let What::Mail(job) = forwarded.what else {
            panic!()
        };
        assert_eq!(job.to, ["a@x", "b@x"]);
        assert_eq!(job.receipt("a@x"), "forward:relay:25:a@x");
    }
}
