//! Routing rules for the dequeue worker: the mail2alert model, made safe.
//!
//! An ordered list of **managers**; the first that wants a message (by envelope or header
//! addresses, see [`matcher`]) gets it. Each of its **rules** whose filter matches fires:
//! its **actions** (URIs: `mailto:`, `xmpp:`) are taken with a text rendered from the
//! rule's template. Mail no manager wants is forwarded unchanged, failed or dropped as
//! `unmatched` says; mail a manager wants but none of its rules matches is done ("no rule
//! matched"). [`file`] reads the YAML file (a mail2alert `configuration.yml` works
//! unchanged) and checks every part of it, naming the line of each problem.

pub mod file;
pub mod matcher;

use std::collections::BTreeMap;

use minijinja::Environment;
use regex::Regex;

use crate::mail_view::MailView;
use matcher::{AddressPattern, any_matches};

pub use file::{RulesError, load, parse};

/// The text an action sends when its rule has no template: `[subject] from: text body`.
pub const DEFAULT_TEMPLATE: &str = "[{{ subject }}] {{ from }}: {{ body }}";
/// A Mattermost post when neither `mattermost.template` nor the rule's
/// `mattermost_template` is set: the subject as a bold first line, then the body (the
/// text part, or the HTML part turned into Markdown).
pub const DEFAULT_MATTERMOST_TEMPLATE: &str = "**{{ subject }}**\n\n{{ body }}";
/// Characters of the text body a template gets when `body_limit` is not set.
pub const DEFAULT_BODY_LIMIT: usize = 4000;
/// The variables a template can use.
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "subject",
    "from",
    "to",
    "envelope_from",
    "envelope_to",
    "body",
    "message_id",
    "captures",
    "manager",
    "rule",
];

/// Checked rules, ready to decide.
#[derive(Debug)]
pub struct Rules {
    pub managers: Vec<Manager>,
    /// Where `mailto:` alerts and forwarded mail go (`remote-smtp`, host:port).
    pub remote_smtp: Option<String>,
    /// The From of `mailto:` alerts (`mailto_from`); unset: the original From is kept.
    pub mailto_from: Option<String>,
    pub unmatched: Unmatched,
    /// Characters of the text body given to templates (`body_limit`).
    pub body_limit: usize,
    pub xmpp: Option<XmppSettings>,
    pub mattermost: Option<MattermostSettings>,
    /// Compiled templates, by the name [`Rule::template`] holds.
    templates: Environment<'static>,
}

/// One manager: which messages it wants, and its rules.
#[derive(Debug)]
pub struct Manager {
    pub name: String,
    pub wants: Wants,
    pub rules: Vec<Rule>,
}

/// Which messages a manager wants: every pattern given must match (none given: all).
#[derive(Debug, Default)]
pub struct Wants {
    /// Envelope recipients (`to`): any recipient matching counts.
    pub to: Vec<AddressPattern>,
    /// The envelope sender (`from`).
    pub from: Vec<AddressPattern>,
    /// Header `To:`/`Cc:` addresses (`header-to`).
    pub header_to: Vec<AddressPattern>,
    /// The header `From:` address (`header-from`).
    pub header_from: Vec<AddressPattern>,
}

impl Wants {
    fn matches(&self, mail: &MailView) -> bool {
        let all = |patterns: &[AddressPattern], addresses: Vec<&str>| {
            patterns.is_empty() || any_matches(patterns, addresses)
        };
        all(
            &self.to,
            mail.envelope_to.iter().map(String::as_str).collect(),
        ) && all(&self.from, vec![mail.envelope_from.as_str()])
            && all(
                &self.header_to,
                mail.to.iter().map(String::as_str).collect(),
            )
            && all(&self.header_from, vec![mail.from.as_str()])
    }
}

/// One rule: a filter, actions and the template of their text.
#[derive(Debug)]
pub struct Rule {
    /// `name`, else `rule <n>` (1-based within its manager).
    pub name: String,
    pub filter: Filter,
    pub actions: Vec<Action>,
    /// The name of its template in [`Rules`].
    template: String,
    /// The name of the template of its `mattermost:` posts in [`Rules`].
    mattermost_template: String,
}

/// What a rule's message must have: every condition given must hold (none: every message).
#[derive(Debug, Default)]
pub struct Filter {
    /// The subject contains each word (any case): mail2alert's `mail.in_subject`.
    pub subject_words: Vec<String>,
    /// A regex on the subject; named captures become template variables.
    pub subject: Option<Regex>,
    /// A regex on the text body.
    pub body: Option<Regex>,
    /// Regexes on named headers (any value of the header may match).
    pub headers: Vec<(String, Regex)>,
    pub wants: Wants,
}

impl Filter {
    /// The named captures when the filter matches, else `None`.
    fn matches(&self, mail: &MailView) -> Option<BTreeMap<String, String>> {
        let subject = mail.subject.to_lowercase();
        if !self
            .subject_words
            .iter()
            .all(|w| subject.contains(&w.to_lowercase()))
        {
            return None;
        }
        if !self.wants.matches(mail) {
            return None;
        }
        let mut captures = BTreeMap::new();
        let mut capture = |re: &Regex, text: &str| -> bool {
            let Some(found) = re.captures(text) else {
                return false;
            };
            for name in re.capture_names().flatten() {
                if let Some(m) = found.name(name) {
                    captures.insert(name.to_string(), m.as_str().to_string());
                }
            }
            true
        };
        if let Some(re) = &self.subject {
            if !capture(re, &mail.subject) {
                return None;
            }
        }
        if let Some(re) = &self.body {
            if !capture(re, &mail.body) {
                return None;
            }
        }
        for (name, re) in &self.headers {
            if !mail.header_values(name).any(|v| capture(re, v)) {
                return None;
            }
        }
        Some(captures)
    }
}

/// What a rule does: an action URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `mailto:addr`: the message re-sent to `addr` through `remote-smtp`.
    Mailto(String),
    /// `xmpp:room@conference.host`: a groupchat message to a room.
    XmppRoom(String),
    /// `xmpp:user@host`: a chat message to one address.
    XmppDirect(String),
    /// `mattermost:...`: a post from the sender's application bot.
    Mattermost(MattermostTarget),
}

/// Where a `mattermost:` action posts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MattermostTarget {
    /// `mattermost:dm`: a direct message to every envelope recipient, found by address.
    Dm,
    /// `mattermost:@user`: a direct message to one user, by username.
    User(String),
    /// `mattermost:~team/channel`: a post in a channel, by team and channel name.
    Channel { team: String, channel: String },
    /// `mattermost:webhook`: a post through the incoming webhook (`webhook_env`).
    Webhook,
}

impl std::fmt::Display for MattermostTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MattermostTarget::Dm => write!(f, "mattermost:dm"),
            MattermostTarget::User(u) => write!(f, "mattermost:@{u}"),
            MattermostTarget::Channel { team, channel } => {
                write!(f, "mattermost:~{team}/{channel}")
            }
            MattermostTarget::Webhook => write!(f, "mattermost:webhook"),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Mailto(a) => write!(f, "mailto:{a}"),
            Action::XmppRoom(r) => write!(f, "xmpp:{r}?join"),
            Action::XmppDirect(u) => write!(f, "xmpp:{u}"),
            Action::Mattermost(target) => target.fmt(f),
        }
    }
}

/// The Mattermost server and bots (top-level `mattermost:`).
#[derive(Debug, Clone)]
pub struct MattermostSettings {
    /// The server's base URL, without a trailing `/` (`url`).
    pub url: String,
    /// Maps the sender address to an application: the named group `app` (`sender_app`).
    pub sender_app: Regex,
    /// Each application's bot token, from the variable its `token_env` names (`bots`).
    pub bots: BTreeMap<String, crate::config::Secret>,
    /// Recipients who may receive (`allow`); empty: everyone not blocked.
    pub allow: Vec<AddressPattern>,
    /// Recipients who never receive (`block`).
    pub block: Vec<AddressPattern>,
    pub ldap: Option<LdapSettings>,
    /// The incoming webhook's URL, from the variable `webhook_env` names.
    pub webhook: Option<crate::config::Secret>,
    /// The longest post, overriding the server's `MaxPostSize` (`max_post_chars`).
    pub max_post_chars: Option<usize>,
    /// How long one request may take (`timeout`, default 30 s).
    pub timeout: std::time::Duration,
}

/// The directory that says who may receive which application's messages (`mattermost.ldap`).
#[derive(Debug, Clone)]
pub struct LdapSettings {
    /// `ldap://host:port` or `ldaps://host:port` (`url`).
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS (`starttls`).
    pub starttls: bool,
    /// Where users are searched by `mail` (`base`).
    pub base: String,
    /// The service account to bind as (`bind_dn`, password from `password_env`);
    /// unset: anonymous.
    pub bind: Option<(String, crate::config::Secret)>,
    /// Per application, the group whose members may receive its messages (`app_groups`).
    pub app_groups: BTreeMap<String, String>,
    /// The group whose members never receive (`block_group`).
    pub block_group: Option<String>,
    /// How long an answer is reused (`cache`, default 5 min).
    pub cache: std::time::Duration,
}

/// What happens to mail no manager wants (`unmatched`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatched {
    /// Sent unchanged to this SMTP server (host:port), as mail2alert does.
    Forward(String),
    /// Moved to `failed/` with the reason.
    Fail,
    /// Moved to `done/` with the reason.
    Done,
}

/// The XMPP account (top-level `xmpp:`, named as milter-xmpp names them).
#[derive(Debug, Clone)]
pub struct XmppSettings {
    pub jabberid: String,
    /// From `password`, or the variable `password_env` names.
    pub password: crate::config::Secret,
    /// host:port; unset: from the JID's domain.
    pub server: Option<String>,
    /// Senders whose mail may be posted (`valid_from`); empty: everyone.
    pub valid_from: Vec<AddressPattern>,
    pub tls: bool,
    pub nick: String,
    /// How long one post may take, connecting and joining included (`timeout`, default
    /// 30 s); past it the action failed for now.
    pub timeout: std::time::Duration,
}

/// What the rules decided for one message.
#[derive(Debug)]
pub struct Decision {
    /// The manager that wanted it, if any.
    pub manager: Option<String>,
    /// The rules that fired, in order.
    pub fired: Vec<Fired>,
    pub disposal: Disposal,
}

/// One rule that fired.
#[derive(Debug)]
pub struct Fired {
    pub rule: String,
    pub actions: Vec<Action>,
    /// The rendered text, or why it could not be rendered (a rule error: permanent).
    pub text: Result<String, String>,
    /// The Markdown of its `mattermost:` posts (the whole body, not cut), when it has any.
    pub markdown: Option<Result<String, String>>,
}

/// Where the message goes once the actions are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposal {
    /// Rules fired: `done/` when every action succeeded.
    Act,
    /// A manager wanted it, no rule of it matched: `done/`, "no rule matched".
    NoRuleMatched,
    /// No manager wanted it.
    Unmatched(Unmatched),
}

impl Rules {
    /// Decides what to do with `mail`.
    pub fn decide(&self, mail: &MailView) -> Decision {
        let Some(manager) = self.managers.iter().find(|m| m.wants.matches(mail)) else {
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
                let captures = rule.filter.matches(mail)?;
                let body = truncate(mail.body.trim(), self.body_limit);
                let render = |template: &str, body: &str| {
                    self.render(template, mail, body, &captures, &manager.name, &rule.name)
                };
                let posts_to_mattermost = rule
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Mattermost(_)));
                Some(Fired {
                    rule: rule.name.clone(),
                    actions: rule.actions.clone(),
                    text: render(&rule.template, &body),
                    markdown: posts_to_mattermost
                        .then(|| render(&rule.mattermost_template, mail.markdown().trim())),
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

    fn render(
        &self,
        template: &str,
        mail: &MailView,
        body: &str,
        captures: &BTreeMap<String, String>,
        manager: &str,
        rule: &str,
    ) -> Result<String, String> {
        let context = minijinja::context! {
            subject => &mail.subject,
            from => &mail.from,
            to => mail.to.join(", "),
            envelope_from => &mail.envelope_from,
            envelope_to => mail.envelope_to.join(", "),
            body => body,
            message_id => &mail.message_id,
            captures => captures,
            manager => manager,
            rule => rule,
        };
        self.templates
            .get_template(template)
            .and_then(|t| t.render(context))
            .map_err(|e| format!("template of {rule}: {e}"))
    }
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
        let d = rules.decide(&mail(
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
                Action::XmppRoom("ops@conference.example.com".into()),
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
            [Action::XmppDirect("audit@example.com".into())]
        );
    }

    #[test]
    fn words_must_all_be_in_the_subject_and_a_header_regex_must_match() {
        let rules = parse(RULES, "rules.yml").unwrap();
        let d = rules.decide(&mail(
            "nagios@mon.example.org",
            "ops@example.com",
            "disk ok",
            "",
        ));
        assert_eq!(
            d.fired.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(),
            ["everything"]
        );
        let failed = rules.decide(&mail(
            "ci@example.org",
            "web-ci@example.com",
            "build 7",
            "X-Build-Status: failed\r\n",
        ));
        assert_eq!(failed.manager.as_deref(), Some("ci"));
        assert_eq!(failed.fired[0].rule, "rule 1");
        let passed = rules.decide(&mail(
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
        let d = rules.decide(&mail("x@example.net", "y@example.com", "hi", ""));
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
