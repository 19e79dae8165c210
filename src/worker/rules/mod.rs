//! Routing rules for the dequeue worker: the mail2alert model, made safe.
//!
//! An ordered list of **managers**; the first that wants a message (by envelope or header
//! addresses, see [`matcher`]) gets it. Each of its **rules** whose filter matches fires:
//! its **actions** (URIs: `mailto:`, `xmpp:`) are taken with a text rendered from the
//! rule's template. Mail no manager wants is forwarded unchanged, failed or dropped as
//! `unmatched` says; mail a manager wants but none of its rules matches is done ("no rule
//! matched"). [`mod@file`] reads the YAML file (a mail2alert `configuration.yml` works
//! unchanged) and checks every part of it, naming the line of each problem.

pub mod file;
pub mod gocd;
pub mod matcher;
pub mod milter_xmpp;
mod model;
mod positions;
mod shape;

use std::collections::BTreeMap;

use crate::worker::chat_text;
use crate::worker::mail_view::MailView;

pub use file::{Purpose, RulesError, load, milter_xmpp_rules, parse, parse_for};
use gocd::GocdFacts;
pub use model::{
    Action, DEFAULT_BODY_LIMIT, DEFAULT_MATTERMOST_TEMPLATE, DEFAULT_TEMPLATE, Decision, Disposal,
    Filter, Fired, GocdSettings, LdapSettings, Manager, MattermostSettings, MattermostTarget, Rule,
    Rules, TEMPLATE_VARIABLES, Unmatched, ValidFrom, Wants, XmppSettings,
};

impl Rules {
    /// The place of the manager that wants `mail`: the first whose `messages-we-want`
    /// match.
    pub fn manager_at(&self, mail: &MailView) -> Option<usize> {
        self.managers.iter().position(|m| m.wants.matches(mail))
    }

    /// The manager that wants `mail` ([`Rules::manager_at`]).
    pub fn manager_for(&self, mail: &MailView) -> Option<&Manager> {
        self.manager_at(mail).map(|at| &self.managers[at])
    }

    /// Decides what to do with `mail`; `gocd`: what a `gocd` manager knows of it (its
    /// stage result, event and the pipeline groups), when that manager wants it.
    pub fn decide(&self, mail: &MailView, gocd: Option<&GocdFacts>) -> Decision {
        let Some(manager) = self.manager_for(mail) else {
            return Decision {
                manager: None,
                fired: Vec::new(),
                disposal: Disposal::Unmatched(self.unmatched.clone()),
            };
        };
        let fired: Vec<Fired> = manager
            .rules
            .iter()
            .filter_map(|rule| {
                let gocd = gocd.filter(|_| manager.gocd.is_some());
                let captures = rule.filter.matches(mail, gocd)?;
                let body = truncate(mail.body.trim(), self.body_limit);
                let render = |template: &str, body: &str, chat: bool| {
                    let names = Names {
                        captures: &captures,
                        manager: &manager.name,
                        rule: &rule.name,
                        gocd,
                    };
                    self.render(template, mail, body, &names, chat)
                };
                let posts_to_mattermost = rule
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Mattermost(_)));
                Some(Fired {
                    rule: rule.name.clone(),
                    actions: rule.actions.clone(),
                    text: render(&rule.template, &body, false),
                    markdown: posts_to_mattermost
                        .then(|| render(&rule.mattermost_template, mail.markdown().trim(), true)),
                })
            })
            .collect();
        let disposal = if fired.is_empty() {
            Disposal::NoRuleMatched
        } else {
            Disposal::Act
        };
        Decision {
            manager: Some(manager.name.clone()),
            fired,
            disposal,
        }
    }

    /// Renders `template` for `mail`; for a chat (`chat`: Mattermost), what comes from
    /// the mail is [`chat_text::quiet`]ed first (the template's own mentions stay).
    fn render(
        &self,
        template: &str,
        mail: &MailView,
        body: &str,
        names: &Names,
        chat: bool,
    ) -> Result<String, String> {
        let Names {
            captures,
            manager,
            rule,
            gocd,
        } = *names;
        let mailed = |text: &str| {
            if chat {
                chat_text::quiet(text)
            } else {
                text.to_string()
            }
        };
        // Each header by its lower-case name (the first of several).
        let mut headers = BTreeMap::new();
        for (name, value) in &mail.headers {
            headers
                .entry(name.to_ascii_lowercase())
                .or_insert_with(|| mailed(value));
        }
        let captures: BTreeMap<String, String> = captures
            .iter()
            .map(|(k, v)| (k.clone(), mailed(v)))
            .collect();
        let stage = gocd.and_then(|g| g.stage.as_ref());
        let context = minijinja::context! {
            subject => mailed(&mail.subject),
            from => mailed(&mail.from),
            to => mailed(&mail.to.join(", ")),
            envelope_from => mailed(&mail.envelope_from),
            envelope_to => mailed(&mail.envelope_to.join(", ")),
            body => mailed(body),
            message_id => mail.message_id.as_deref().map(mailed),
            captures => captures,
            manager => manager,
            rule => rule,
            date => mailed(mail.header_values("date").next().unwrap_or_default().trim()),
            headers => headers,
            event => gocd.and_then(|g| g.event).map(|e| e.to_string()),
            pipeline => stage.map(|s| mailed(&s.pipeline)),
            stage => stage.map(|s| mailed(&s.stage)),
        };
        self.templates
            .get_template(template)
            .and_then(|t| t.render(context))
            .map_err(|e| format!("template of {rule}: {e}"))
    }
}

/// What a template is told besides the message.
#[derive(Clone, Copy)]
struct Names<'a> {
    captures: &'a BTreeMap<String, String>,
    manager: &'a str,
    rule: &'a str,
    gocd: Option<&'a GocdFacts>,
}

/// `text` cut to `limit` characters, with `…` when cut.
pub fn truncate(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
remote-smtp: 127.0.0.1:2525
xmpp:
  jabberid: bot@example.com
  password: not-used-here
managers:
  - name: nagios
    messages-we-want:
      from: "@mon.example.org"
    rules:
      - name: disk
        filter:
          function: mail.in_subject
          args: [DISK, full]
          subject: '^(?P<state>\w+): disk full on (?P<host>\S+)'
        actions:
          - xmpp:ops@conference.example.com
          - mailto:oncall@example.com
        template: "{{ captures.host }} is {{ captures.state }} ({{ rule }}@{{ manager }})"
      - name: everything
        actions: [xmpp:audit@example.com]
  - name: ci
    messages-we-want:
      to: "*-ci@example.com"
    rules:
      - filter:
          headers:
            X-Build-Status: '^failed$'
        actions: [xmpp:ci@conference.example.com]
"#;

    impl Rules {
        fn decide_plain(&self, mail: &MailView) -> Decision {
            self.decide(mail, None)
        }
    }

    fn mail(from: &str, to: &str, subject: &str, extra: &str) -> MailView {
        MailView::parse(
            format!(
                "Return-Path: <{from}>\r\nDelivered-To: {to}\r\nFrom: {from}\r\nSubject: {subject}\r\n{extra}\r\nThe body\r\n"
            )
            .as_bytes(),
        )
    }

    #[test]
    fn the_first_manager_that_wants_it_gets_it_and_every_matching_rule_fires() {
        let rules = parse(RULES, "rules.yml").unwrap();
        let d = rules.decide_plain(&mail(
            "nagios@mon.example.org",
            "ops@example.com",
            "CRITICAL: disk full on db1",
            "",
        ));
        assert_eq!(d.manager.as_deref(), Some("nagios"));
        assert_eq!(d.disposal, Disposal::Act);
        assert_eq!(d.fired.len(), 2);
        assert_eq!(
            d.fired[0].actions,
            [
                Action::Xmpp("ops@conference.example.com".into()),
                Action::Mailto("oncall@example.com".into())
            ]
        );
        assert_eq!(
            d.fired[0].text.as_deref(),
            Ok("db1 is CRITICAL (disk@nagios)")
        );
        assert_eq!(
            d.fired[1].text.as_deref(),
            Ok("[CRITICAL: disk full on db1] nagios@mon.example.org: The body")
        );
        assert_eq!(
            d.fired[1].actions,
            [Action::Xmpp("audit@example.com".into())]
        );
    }

    #[test]
    fn words_must_all_be_in_the_subject_and_a_header_regex_must_match() {
        let rules = parse(RULES, "rules.yml").unwrap();
        let d = rules.decide_plain(&mail(
            "nagios@mon.example.org",
            "ops@example.com",
            "disk ok",
            "",
        ));
        assert_eq!(
            d.fired.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
            ["everything"]
        );
        let failed = rules.decide_plain(&mail(
            "ci@example.org",
            "web-ci@example.com",
            "build 7",
            "X-Build-Status: failed\r\n",
        ));
        assert_eq!(failed.manager.as_deref(), Some("ci"));
        assert_eq!(failed.fired[0].rule, "rule 1");
        let passed = rules.decide_plain(&mail(
            "ci@example.org",
            "web-ci@example.com",
            "build 8",
            "X-Build-Status: passed\r\n",
        ));
        assert_eq!(passed.disposal, Disposal::NoRuleMatched);
    }

    #[test]
    fn mail_no_manager_wants_is_forwarded_to_remote_smtp_by_default() {
        let rules = parse(RULES, "rules.yml").unwrap();
        let d = rules.decide_plain(&mail("x@example.net", "y@example.com", "hi", ""));
        assert_eq!(d.manager, None);
        assert_eq!(
            d.disposal,
            Disposal::Unmatched(Unmatched::Forward("127.0.0.1:2525".into()))
        );
    }

    #[test]
    fn long_bodies_are_cut() {
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("ééé", 2), "éé…");
    }
}
