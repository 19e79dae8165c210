//! What a rules file means: managers and their rules, filters and actions, the sinks'
//! settings with their defaults, and what the rules decide for one message. [`super::file`]
//! reads a file into it; [`super::Rules::decide`] applies it.

use std::collections::BTreeMap;

use minijinja::Environment;
use regex::Regex;

use super::gocd::{GocdFacts, GocdFilter};
use super::matcher::{AddressPattern, any_matches};
use crate::worker::mail_view::MailView;

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
    "date",
    "headers",
    "event",
    "pipeline",
    "stage",
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
    /// What `--check` had to say that does not stop the rules from running (a variable
    /// not set where the check runs).
    pub warnings: Vec<String>,
    /// Compiled templates, by the name [`Rule::template`] holds.
    pub(super) templates: Environment<'static>,
}

/// One manager: which messages it wants, and its rules.
#[derive(Debug)]
pub struct Manager {
    pub name: String,
    pub wants: Wants,
    pub rules: Vec<Rule>,
    /// The GoCD server of mail2alert's `gocd` manager (`url`, `user`, `passwd`).
    pub gocd: Option<GocdSettings>,
}

/// The GoCD server a `gocd` manager asks for pipeline groups and build states.
#[derive(Debug, Clone)]
pub struct GocdSettings {
    /// The base URL including `/go`, without a trailing `/` (`url`).
    pub url: String,
    /// HTTP basic auth (`user`, `passwd`); unset: none (a GoCD without security).
    pub login: Option<(String, crate::config::Secret)>,
    /// A setting names a variable that is not set here (possible only for `--check` and
    /// `--dry-run`): GoCD is not asked, lest it get `$VAR` as a password.
    pub unresolved: bool,
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
    pub(super) fn matches(&self, mail: &MailView) -> bool {
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
    pub(super) template: String,
    /// The name of the template of its `mattermost:` posts in [`Rules`].
    pub(super) mattermost_template: String,
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
    /// A `gocd` manager's `events:` and `pipelines.*` function.
    pub gocd: GocdFilter,
}

impl Filter {
    /// The named groups of its regexes: what `captures.<name>` can give a template.
    pub fn capture_names(&self) -> std::collections::BTreeSet<String> {
        self.subject
            .iter()
            .chain(&self.body)
            .chain(self.headers.iter().map(|(_, re)| re))
            .flat_map(|re| re.capture_names().flatten().map(str::to_string))
            .collect()
    }

    /// The named captures when the filter matches, else `None`.
    pub(super) fn matches(
        &self,
        mail: &MailView,
        gocd: Option<&GocdFacts>,
    ) -> Option<BTreeMap<String, String>> {
        if !self.gocd.matches(gocd) {
            return None;
        }
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
    /// `xmpp:room@conference.host?join`: a groupchat message to a room.
    XmppRoom(String),
    /// `xmpp:user@host?message`: a chat message to one address.
    XmppDirect(String),
    /// `xmpp:jid`: a room or a user, as the server of its domain says (disco#info).
    Xmpp(String),
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
            Action::XmppDirect(u) => write!(f, "xmpp:{u}?message"),
            Action::Xmpp(jid) => write!(f, "xmpp:{jid}"),
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
    /// Post only mail that Postfix took from the application's own SASL login: the login
    /// in Postfix's `Received:` header (`(Authenticated sender: <login>@<host>)`) must be
    /// the application the sender names (`require_sasl_login`; see `swiftdrop
    /// postfix-config`'s `SENDER_LOGINS`).
    pub require_sasl_login: bool,
}

impl MattermostSettings {
    /// `sender_app` when not set: `svc-jira@example.com` is application `jira`.
    pub const DEFAULT_SENDER_APP: &str = r"^svc-(?P<app>[^@]+)@";
    /// How long one request may take when `timeout` is not set.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
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

impl LdapSettings {
    /// How long a directory answer is reused when `cache` is not set.
    pub const DEFAULT_CACHE: std::time::Duration = std::time::Duration::from_secs(300);
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
    /// host:port (`server`, port 5222 when not given); unset: the JID's domain, by its
    /// `_xmpp-client._tcp` SRV record (else port 5222).
    pub server: Option<String>,
    /// Senders whose mail may be posted (`valid_from`); empty: everyone.
    pub valid_from: Vec<ValidFrom>,
    pub tls: bool,
    pub nick: String,
    /// How long one post may take, connecting and joining included (`timeout`, default
    /// 30 s); past it the action failed for now.
    pub timeout: std::time::Duration,
}

/// One `valid_from` entry.
#[derive(Debug, Clone)]
pub enum ValidFrom {
    /// The envelope sender matches this pattern.
    Sender(AddressPattern),
    /// The `From:` header is this, exactly (as milter-xmpp compares it: display name and
    /// quotes included, white space around it aside).
    Header(String),
}

impl ValidFrom {
    /// Whether `mail` comes from a sender this entry allows.
    pub fn allows(&self, mail: &MailView) -> bool {
        match self {
            ValidFrom::Sender(pattern) => pattern.matches(&mail.envelope_from),
            ValidFrom::Header(exact) => mail.header_values("from").any(|v| v.trim() == exact),
        }
    }
}

impl XmppSettings {
    /// How long one post may take, connecting and joining included, when `timeout` is not
    /// set.
    pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
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
