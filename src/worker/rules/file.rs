//! The rules file (YAML): read with yaml_serde into plain structs that refuse unknown keys,
//! then checked part by part into [`Rules`]. Every problem is collected (not only the
//! first) and named as `FILE:LINE: what is wrong`; YAML and key errors carry the parser's
//! line, the others the line where the offending value is written in the part being checked
//! (the parser's positions: [`super::positions`]).
//!
//! A mail2alert `configuration.yml` is read unchanged: `local-smtp` and `admin-email` are
//! accepted and ignored, a rule's `owner` too; a manager's `name` is a label, except
//! `gocd`, mail2alert's GoCD manager (`url`, `user`, `passwd`; rules with `events:` and
//! `pipelines.*` functions). As mail2alert does, `$VAR` and `${VAR}` are replaced by the
//! environment's values in the values of settings, addresses, actions, filter args and
//! regexes (not in names, templates or `unmatched`; `\$` keeps a dollar sign), and a
//! `remote-smtp` without a port means port 25. A variable that is not set, where it is the
//! whole value, is a problem when the rules are read to run and a warning for `--check`
//! (which may run where the secrets are not; the value is then not checked); inside
//! other text (`pa$word`) it is taken as written, with a warning.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use minijinja::Environment;
use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use super::gocd::{Event, GocdFilter, PipelineFunction};
use super::matcher::{AddressPattern, one_line};
use super::model::{
    Action, DEFAULT_BODY_LIMIT, DEFAULT_MATTERMOST_TEMPLATE, DEFAULT_TEMPLATE, Filter,
    GocdSettings, LdapSettings, Manager, MattermostSettings, MattermostTarget, Rule, Rules,
    TEMPLATE_VARIABLES, Unmatched, ValidFrom, Wants, XmppSettings,
};
use super::positions::{Positions, Step};
use super::shape;
use crate::config::Secret;

/// Everything wrong with a rules file, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesError {
    pub problems: Vec<String>,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for RulesError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(rename = "remote-smtp")]
    remote_smtp: Option<String>,
    /// mail2alert's own listening address: the filter receives mail here.
    #[serde(rename = "local-smtp")]
    _local_smtp: Option<yaml_serde::Value>,
    #[serde(rename = "admin-email")]
    _admin_email: Option<yaml_serde::Value>,
    mailto_from: Option<String>,
    unmatched: Option<String>,
    template: Option<String>,
    body_limit: Option<usize>,
    xmpp: Option<XmppDoc>,
    mattermost: Option<MattermostDoc>,
    /// A milter-xmpp ini file whose account, room and `valid_from` to use.
    #[serde(rename = "milter-xmpp")]
    milter_xmpp: Option<String>,
    #[serde(default)]
    managers: Vec<ManagerDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagerDoc {
    name: String,
    /// The `gocd` manager's server, and its basic auth.
    url: Option<String>,
    user: Option<String>,
    passwd: Option<String>,
    #[serde(rename = "messages-we-want", default)]
    wants: WantsDoc,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    template: Option<String>,
    /// Made from a milter-xmpp ini, not written in the rules file.
    #[serde(skip)]
    from_ini: bool,
}

/// One pattern or a list of them.
#[derive(Deserialize, Default)]
#[serde(untagged, expecting = "an address pattern or a list of them")]
enum Patterns {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Patterns {
    fn list(&self) -> Vec<&str> {
        match self {
            Patterns::None => Vec::new(),
            Patterns::One(p) => vec![p.as_str()],
            Patterns::Many(ps) => ps.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WantsDoc {
    #[serde(default)]
    to: Patterns,
    #[serde(default)]
    from: Patterns,
    #[serde(rename = "header-to", default)]
    header_to: Patterns,
    #[serde(rename = "header-from", default)]
    header_from: Patterns,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: Option<String>,
    /// mail2alert's rule owner: accepted, unused.
    #[serde(rename = "owner")]
    _owner: Option<yaml_serde::Value>,
    filter: Option<FilterDoc>,
    #[serde(default)]
    actions: Vec<String>,
    template: Option<String>,
    mattermost_template: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilterDoc {
    function: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    /// The `gocd` manager's events (mail2alert's README once says `event`).
    #[serde(default, alias = "event")]
    events: Vec<String>,
    subject: Option<String>,
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    to: Patterns,
    #[serde(default)]
    from: Patterns,
    #[serde(rename = "header-to", default)]
    header_to: Patterns,
    #[serde(rename = "header-from", default)]
    header_from: Patterns,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct XmppDoc {
    jabberid: String,
    password: Option<String>,
    password_env: Option<String>,
    server: Option<String>,
    #[serde(default)]
    valid_from: Patterns,
    tls: Option<bool>,
    nick: Option<String>,
    timeout: Option<String>,
    /// Made from a milter-xmpp ini: its values are taken as written (no `$VAR`).
    #[serde(skip)]
    from_ini: bool,
    /// The ini's `valid_from`: always a `From:` header, as milter-xmpp compares it.
    #[serde(skip)]
    valid_from_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MattermostDoc {
    url: String,
    sender_app: Option<String>,
    #[serde(default)]
    bots: BTreeMap<String, BotDoc>,
    #[serde(default)]
    allow: Patterns,
    #[serde(default)]
    block: Patterns,
    ldap: Option<LdapDoc>,
    webhook_env: Option<String>,
    max_post_chars: Option<usize>,
    template: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    require_sasl_login: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotDoc {
    token_env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LdapDoc {
    url: String,
    #[serde(default)]
    starttls: bool,
    base: String,
    bind_dn: Option<String>,
    password_env: Option<String>,
    #[serde(default)]
    app_groups: BTreeMap<String, String>,
    block_group: Option<String>,
    cache: Option<String>,
}

/// Why a rules file is read: to run it (every variable it names must be set), or for
/// `--check` and `--dry-run` (an unset variable is a warning: they may run where secrets
/// are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Run,
    Check,
}

/// Reads and checks the rules file at `path` (a file ending in `.ini` is a milter-xmpp
/// ini: [`milter_xmpp_rules`]); secrets named by `*_env` and `$VAR` come from the process
/// environment.
pub fn load(path: &Path, purpose: Purpose) -> Result<Rules, RulesError> {
    if path.extension().is_some_and(|e| e == "ini") {
        return milter_xmpp_rules(path, purpose);
    }
    let text = std::fs::read_to_string(path).map_err(|e| RulesError {
        problems: vec![format!("{}: cannot read: {e}", path.display())],
    })?;
    parse_for(&text, &path.display().to_string(), purpose)
}

/// Checks the rules in `text` (named `shown` in errors) for running them.
pub fn parse(text: &str, shown: &str) -> Result<Rules, RulesError> {
    parse_for(text, shown, Purpose::Run)
}

/// The rules a milter-xmpp ini file stood for (`dequeue --milter-xmpp FILE`): every
/// message whose `From:` header is its `valid_from` posted to its room, other mail done.
pub fn milter_xmpp_rules(ini: &Path, purpose: Purpose) -> Result<Rules, RulesError> {
    let text = format!(
        "unmatched: done\nmilter-xmpp: {:?}\n",
        ini.display().to_string()
    );
    parse_for(&text, &ini.display().to_string(), purpose)
}

/// Checks the rules in `text` (named `shown` in errors) for `purpose`.
pub fn parse_for(text: &str, shown: &str, purpose: Purpose) -> Result<Rules, RulesError> {
    let mut doc: FileDoc = yaml_serde::from_str(text).map_err(|e| {
        let line = e.location().map_or(0, |l| l.line());
        RulesError {
            problems: vec![format!(
                "{shown}:{line}: {}",
                shape::in_plain_words(&e.to_string())
            )],
        }
    })?;
    let mut check = Checker {
        positions: Positions::of(text),
        scope: Vec::new(),
        shown,
        problems: Vec::new(),
        warnings: Vec::new(),
        purpose,
        kept_reference: false,
        first_xmpp: None,
        first_mailto: None,
        first_mattermost: None,
        first_webhook: None,
    };
    if let Some(ini) = doc.milter_xmpp.take() {
        match super::milter_xmpp::read(Path::new(&ini)) {
            Ok(ini) => check.milter_xmpp(&mut doc, ini),
            Err(problems) => check.problems.extend(problems),
        }
    }
    let mut rules = check.rules(doc);
    if check.problems.is_empty() {
        rules.warnings = check.warnings;
        Ok(rules)
    } else {
        Err(RulesError {
            problems: check.problems,
        })
    }
}

/// Collects the problems of one file.
struct Checker<'a> {
    /// Where each value is written, and the part of the file being checked.
    positions: Positions,
    scope: Vec<Step>,
    shown: &'a str,
    problems: Vec<String>,
    warnings: Vec<String>,
    purpose: Purpose,
    /// The last [`Checker::expand`] met a value that is an unset variable.
    kept_reference: bool,
    /// The first `xmpp:` and `mailto:` actions, as written: what needs an account.
    first_xmpp: Option<String>,
    first_mailto: Option<String>,
    /// The first `mattermost:` and `mattermost:webhook` actions.
    first_mattermost: Option<String>,
    first_webhook: Option<String>,
}

impl Checker<'_> {
    /// Records a problem at the line where `near` is written in the part being checked
    /// ([`Positions::line_of`]).
    fn problem(&mut self, near: &str, message: impl fmt::Display) {
        let line = self.line_of(near);
        self.problems
            .push(format!("{}:{line}: {message}", self.shown));
    }

    /// Records a warning, as [`Checker::problem`] names its line.
    fn warning(&mut self, near: &str, message: impl fmt::Display) {
        let line = self.line_of(near);
        self.warnings
            .push(format!("{}:{line}: warning: {message}", self.shown));
    }

    fn line_of(&self, near: &str) -> usize {
        self.positions.line_of(&self.scope, near)
    }

    /// Checks the part of the file at `scope` (problems are looked for there first).
    fn within<T>(&mut self, scope: &[Step], check: impl FnOnce(&mut Self) -> T) -> T {
        let outer = std::mem::replace(&mut self.scope, scope.to_vec());
        let result = check(self);
        self.scope = outer;
        result
    }

    /// A variable `value` names that is not set: a problem to run, a warning to check.
    fn unset(&mut self, near: &str, message: String) {
        match self.purpose {
            Purpose::Run => self.problem(near, message),
            Purpose::Check => self.warning(
                near,
                format!("{message} here (set it where the worker runs)"),
            ),
        }
    }

    /// `value` with `$VAR` and `${VAR}` replaced by the environment's values (as
    /// mail2alert's `os.path.expandvars`; `\$` keeps a dollar sign and its backslash). A
    /// variable that is not set stays as written: a value that is nothing but it is a
    /// problem to run (a warning to check); one inside other text (`pa$word`) is taken as
    /// written, with a warning. [`Checker::judged`] then says whether to check the value.
    fn expand(&mut self, value: &str) -> String {
        self.kept_reference = false;
        let lone = value.trim().strip_prefix('$').is_some_and(|name| {
            is_variable(name)
                || name
                    .strip_prefix('{')
                    .and_then(|n| n.strip_suffix('}'))
                    .is_some_and(is_variable)
        });
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(at) = rest.find('$') {
            let (before, after) = (&rest[..at], &rest[at + 1..]);
            out.push_str(before);
            let (name, written) = match after.strip_prefix('{') {
                Some(inner) => match inner.find('}') {
                    Some(end) if is_variable(&inner[..end]) => (&inner[..end], end + 2),
                    _ => ("", 0),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (&after[..end], end)
                }
            };
            if !is_variable(name) || before.ends_with('\\') {
                out.push('$');
                rest = after;
                continue;
            }
            match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => {
                    if lone {
                        self.unset(value, format!("{name} is not set"));
                        self.kept_reference = true;
                    } else {
                        self.warning(
                            value,
                            format!("{name} is not set: ${name} is taken as written"),
                        );
                    }
                    out.push_str(&rest[at..at + 1 + written]);
                }
            }
            rest = &after[written..];
        }
        out.push_str(rest);
        out
    }

    /// Whether the value [`Checker::expand`] gave last can be checked: not when it is an
    /// unset variable (already named as such).
    fn judged(&self) -> bool {
        !self.kept_reference
    }

    fn rules(&mut self, doc: FileDoc) -> Rules {
        let mut templates = Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
        // Each template is compiled, its variables named, the capture groups it reads
        // looked for in its rule's regexes, and it is rendered once with sample values, so
        // that a filter or test minijinja does not know is found now, not at run time.
        let mut add_template =
            |checker: &mut Self,
             name: String,
             source: String,
             rule: &str,
             captures: &std::collections::BTreeSet<String>| {
                let used = match templates.template_from_str(&source) {
                    Ok(t) => t.undeclared_variables(true),
                    Err(e) => {
                        checker.problem(&source, format!("bad template: {e}"));
                        return;
                    }
                };
                let mut unknown = std::collections::BTreeSet::new();
                for variable in &used {
                    let (top, nested) = variable.split_once('.').unwrap_or((variable, ""));
                    if !TEMPLATE_VARIABLES.contains(&top) {
                        unknown.insert(top.to_string());
                    } else if top == "captures"
                        && !nested.is_empty()
                        && !captures.contains(nested.split('.').next().unwrap_or(nested))
                    {
                        // A warning: a template shared by several rules may read groups
                        // that only some define; it renders empty for the others.
                        checker.warning(
                        &source,
                        format!("the template of rule {rule:?} reads captures.{nested}, which no regex of the rule defines (named groups: {})", captures.iter().cloned().collect::<Vec<_>>().join(", ")),
                    );
                    }
                }
                for variable in unknown {
                    checker.problem(
                        &source,
                        format!(
                            "unknown template variable {variable:?}; known: {}",
                            TEMPLATE_VARIABLES.join(", ")
                        ),
                    );
                }
                if let Err(e) = templates.add_template_owned(name.clone(), source.clone()) {
                    checker.problem(&source, format!("bad template: {e}"));
                    return;
                }
                let sample: BTreeMap<&str, String> = captures
                    .iter()
                    .map(|c| (c.as_str(), "x".to_string()))
                    .collect();
                let rendered = templates.get_template(&name).and_then(|t| {
                    t.render(minijinja::context! {
                        subject => "s", from => "a@b", to => "a@b", envelope_from => "a@b",
                        envelope_to => "a@b", body => "b", message_id => "m", captures => sample,
                        manager => "m", rule => rule, date => "d",
                        headers => BTreeMap::<String, String>::new(), event => "BREAKS",
                        pipeline => "p", stage => "s",
                    })
                });
                if let Err(e) = rendered {
                    use minijinja::ErrorKind::*;
                    if matches!(
                        e.kind(),
                        UnknownFilter | UnknownTest | UnknownFunction | UnknownMethod
                    ) {
                        checker.problem(&source, format!("template of rule {rule:?}: {e}"));
                    }
                }
            };
        let default_template = doc.template.unwrap_or_else(|| DEFAULT_TEMPLATE.into());
        let mattermost_template = doc
            .mattermost
            .as_ref()
            .and_then(|m| m.template.clone())
            .unwrap_or_else(|| DEFAULT_MATTERMOST_TEMPLATE.into());

        let remote_smtp = doc.remote_smtp.and_then(|r| {
            let r = self.expand(&r);
            match self.judged() {
                true => self.smtp_server("remote-smtp", &r),
                false => Some(r),
            }
        });
        let unmatched = match doc.unmatched.as_deref().map(str::trim) {
            None | Some("forward") => match &remote_smtp {
                Some(r) => Unmatched::Forward(r.clone()),
                None => {
                    self.problem(
                        "unmatched",
                        "unmatched mail is forwarded to remote-smtp (the default), which is not set: set remote-smtp, or unmatched: done or fail",
                    );
                    Unmatched::Done
                }
            },
            Some("fail") => Unmatched::Fail,
            Some("done") => Unmatched::Done,
            Some(other) => match other
                .strip_prefix("forward smtp://")
                .filter(|hp| self.host_port("unmatched", hp))
            {
                Some(hp) => Unmatched::Forward(hp.to_string()),
                None => {
                    self.problem(
                        other,
                        format!("unmatched: {other:?} is none of forward, forward smtp://host:port, fail, done"),
                    );
                    Unmatched::Done
                }
            },
        };
        let xmpp = doc
            .xmpp
            .map(|x| self.within(&["xmpp".into()], |c| c.xmpp(x)));
        let mattermost = doc
            .mattermost
            .map(|m| self.within(&["mattermost".into()], |c| c.mattermost(m)));
        let mut managers = Vec::new();
        for (m, manager) in doc.managers.into_iter().enumerate() {
            // Problems of this manager are named where it is written; the scope is set
            // here, not with `within`, as the template closure is borrowed across it.
            let at_manager: Vec<Step> = vec!["managers".into(), m.into()];
            self.scope = at_manager.clone();
            let manager_template = manager.template.clone();
            let gocd = self.gocd(&manager);
            let gocd_rules = is_gocd(&manager);
            let mut rules = Vec::new();
            for (r, rule) in manager.rules.into_iter().enumerate() {
                self.scope = [at_manager.as_slice(), &["rules".into(), r.into()]].concat();
                let name = rule
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("rule {}", r + 1));
                let template_name = format!("{m}/{r}");
                let source = rule
                    .template
                    .clone()
                    .or_else(|| manager_template.clone())
                    .unwrap_or_else(|| default_template.clone());
                let filter = self.filter(rule.filter.unwrap_or_default(), gocd_rules);
                let captures = filter.capture_names();
                add_template(self, template_name.clone(), source, &name, &captures);
                let mattermost_template_name = format!("{m}/{r}/mattermost");
                add_template(
                    self,
                    mattermost_template_name.clone(),
                    rule.mattermost_template
                        .clone()
                        .unwrap_or_else(|| mattermost_template.clone()),
                    &name,
                    &captures,
                );
                let actions = rule
                    .actions
                    .iter()
                    .filter_map(|a| {
                        let a = self.expand(a);
                        self.judged().then(|| self.action(&a)).flatten()
                    })
                    .collect::<Vec<_>>();
                if rule.actions.is_empty() {
                    // An unnamed rule is named by its place: its first line.
                    self.problem(
                        rule.name.as_deref().unwrap_or_default(),
                        format!("rule {name:?} of {:?} has no actions", manager.name),
                    );
                }
                rules.push(Rule {
                    name,
                    filter,
                    actions,
                    template: template_name,
                    mattermost_template: mattermost_template_name,
                });
            }
            self.scope = at_manager;
            let wants = self.wants(&manager.wants);
            if !manager.from_ini
                && wants.to.is_empty()
                && wants.from.is_empty()
                && wants.header_to.is_empty()
                && wants.header_from.is_empty()
            {
                self.warning(
                    &manager.name,
                    format!("manager {:?} has no messages-we-want: it takes every message, and no manager after it gets any (mail2alert failed on the first message for such a manager)", manager.name),
                );
            }
            managers.push(Manager {
                name: manager.name,
                wants,
                rules,
                gocd,
            });
        }
        self.scope.clear();
        if let (Some(action), None) = (self.first_xmpp.clone(), &xmpp) {
            self.problem(
                &action,
                format!("{action} needs an xmpp: account (jabberid, password_env)"),
            );
        }
        if let (Some(action), None) = (self.first_mattermost.clone(), &mattermost) {
            self.problem(
                &action,
                format!("{action} needs a mattermost: server (url, bots)"),
            );
        }
        if let (Some(action), Some(m)) = (self.first_webhook.clone(), &mattermost) {
            if m.webhook.is_none() {
                self.problem(
                    &action,
                    format!("{action} needs mattermost webhook_env (the variable holding the webhook URL)"),
                );
            }
        }
        if let (Some(action), None) = (self.first_mailto.clone(), &remote_smtp) {
            self.problem(&action, format!("{action} needs remote-smtp (host:port)"));
        }
        let mailto_from = doc.mailto_from.map(|f| self.expand(&f));
        if let Some(from) = mailto_from.as_ref().filter(|_| self.judged()) {
            if !from.contains('@') {
                self.problem(from, format!("mailto_from {from:?} is not an address"));
            }
        }
        Rules {
            managers,
            remote_smtp,
            mailto_from,
            warnings: Vec::new(),
            unmatched,
            body_limit: doc.body_limit.unwrap_or(DEFAULT_BODY_LIMIT),
            xmpp,
            mattermost,
            templates,
        }
    }

    /// An SMTP server as `host:port`, port 25 when `value` has none (as mail2alert reads
    /// it); `None` (a problem recorded) when it is neither.
    fn smtp_server(&mut self, option: &str, value: &str) -> Option<String> {
        let value = value.trim();
        if !value.starts_with('[') && value.matches(':').count() > 1 {
            self.problem(
                value,
                format!("{option}: {value:?}: write an IPv6 address in brackets, [::1]:25"),
            );
            return None;
        }
        let has_port = match value.strip_prefix('[') {
            Some(v6) => v6.contains("]:"),
            None => value.contains(':'),
        };
        let full = if has_port {
            value.to_string()
        } else {
            format!("{value}:25")
        };
        self.host_port(option, &full).then_some(full)
    }

    /// The `gocd` manager's server (mail2alert's `url`, `user`, `passwd`); settings of
    /// the kind on another manager, or a `gocd` manager without a URL, are problems.
    fn gocd(&mut self, manager: &ManagerDoc) -> Option<GocdSettings> {
        let Some(url) = manager.url.as_deref().filter(|_| is_gocd(manager)) else {
            if is_gocd(manager) {
                self.problem(
                    &manager.name,
                    "the gocd manager needs url (the server's base, e.g. https://gocd.example.com:8154/go), user and passwd",
                );
            } else if let Some(setting) = [&manager.url, &manager.user, &manager.passwd]
                .into_iter()
                .flatten()
                .next()
            {
                self.problem(
                    setting,
                    format!("url, user and passwd are settings of the gocd manager (name: gocd), not of {:?}", manager.name),
                );
            }
            return None;
        };
        let url = self.expand(url).trim().trim_end_matches('/').to_string();
        let checked = self.judged();
        let mut unresolved = !checked;
        let authority = url.split_once("://").map_or("", |(_, rest)| rest);
        if authority
            .split('/')
            .next()
            .unwrap_or_default()
            .contains('@')
        {
            // A URL's user:password would be logged with every error about it.
            self.problem(
                manager.url.as_deref().unwrap_or_default(),
                "gocd url: put the login in user and passwd, not in the URL",
            );
        }
        match url.split_once("://").filter(|_| checked) {
            None if !checked => {}
            Some(("https", rest)) if !rest.is_empty() => {}
            Some(("http", rest)) if is_loopback(rest) || manager.user.is_none() => {}
            Some(("http", _)) => self.warning(
                &url,
                "gocd url: http:// sends user and passwd in clear beyond this machine; use https://",
            ),
            _ => self.problem(
                manager.url.as_deref().unwrap_or(&url),
                format!("gocd url {url:?} is not http(s)://host[:port]/go"),
            ),
        }
        let login = match (&manager.user, &manager.passwd) {
            (Some(user), Some(passwd)) => {
                let passwd = self.expand(passwd);
                unresolved |= !self.judged();
                let user = self.expand(user);
                unresolved |= !self.judged();
                Some((user, Secret::new(passwd)))
            }
            (None, None) => None,
            (Some(user), None) => {
                self.problem(user, "gocd: user without passwd");
                None
            }
            (None, Some(_)) => {
                self.problem("passwd", "gocd: passwd without user");
                None
            }
        };
        Some(GocdSettings {
            url,
            login,
            unresolved,
        })
    }

    /// Whether `value` is host:port (else a problem is recorded).
    fn host_port(&mut self, option: &str, value: &str) -> bool {
        let ok = value.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !ok {
            self.problem(value, format!("{option}: {value:?} is not host:port"));
        }
        ok
    }

    /// The address patterns of `patterns`; one that is a variable not set here (possible
    /// only for `--check` and `--dry-run`) matches nothing.
    fn patterns(&mut self, what: &str, patterns: &Patterns) -> Vec<AddressPattern> {
        let mut parsed = Vec::new();
        for p in patterns.list() {
            let expanded = self.expand(p);
            if !self.judged() {
                parsed.push(AddressPattern::Unresolved(p.to_string()));
                continue;
            }
            match AddressPattern::parse(&expanded) {
                Ok(pattern) => parsed.push(pattern),
                Err(e) => self.problem(p, format!("{what}: {e}")),
            }
        }
        parsed
    }

    /// The senders an XMPP account posts for: address patterns on the envelope sender, or
    /// (a value with `<` or `"`) a `From:` header as milter-xmpp compares it, exactly.
    fn valid_from(&mut self, patterns: &Patterns) -> Vec<ValidFrom> {
        let mut valid = Vec::new();
        for p in patterns.list() {
            if p.contains(['<', '"']) {
                valid.push(ValidFrom::Header(p.trim().to_string()));
            } else {
                let list = Patterns::One(p.to_string());
                valid.extend(
                    self.patterns("valid_from", &list)
                        .into_iter()
                        .map(ValidFrom::Sender),
                );
            }
        }
        valid
    }

    fn wants(&mut self, doc: &WantsDoc) -> Wants {
        Wants {
            to: self.patterns("to", &doc.to),
            from: self.patterns("from", &doc.from),
            header_to: self.patterns("header-to", &doc.header_to),
            header_from: self.patterns("header-from", &doc.header_from),
        }
    }

    fn regex(&mut self, what: &str, source: &str) -> Option<Regex> {
        match RegexBuilder::new(source).case_insensitive(true).build() {
            Ok(re) => Some(re),
            Err(e) => {
                self.problem(
                    source,
                    format!("{what}: bad regex {source:?}: {}", one_line(&e.to_string())),
                );
                None
            }
        }
    }

    fn filter(&mut self, doc: FilterDoc, is_gocd: bool) -> Filter {
        let args: Vec<String> = doc.args.iter().map(|a| self.expand(a)).collect();
        let mut gocd = GocdFilter::default();
        let function = doc.function.as_deref().map(str::trim);
        let wrong_args = |checker: &mut Self, function: &str, wanted: &str| {
            checker.problem(function, format!("{function} takes {wanted}, not {args:?}"));
        };
        let subject_words = match function {
            None if args.is_empty() => Vec::new(),
            Some("mail.in_subject") => args.clone(),
            Some(f) if f.starts_with("pipelines.") && !is_gocd => {
                self.problem(
                    f,
                    format!("filter function {f} is the gocd manager's (name: gocd)"),
                );
                Vec::new()
            }
            Some(f @ ("pipelines.any" | "pipelines.all")) => {
                if !args.is_empty() {
                    wrong_args(self, f, "no args");
                }
                gocd.function = Some(PipelineFunction::Any);
                Vec::new()
            }
            Some(f @ "pipelines.in_group") => {
                match args.as_slice() {
                    [group] => gocd.function = Some(PipelineFunction::InGroup(group.clone())),
                    _ => wrong_args(self, f, "one arg (the group)"),
                }
                Vec::new()
            }
            Some(f @ "pipelines.name_like_in_group") => {
                match args.as_slice() {
                    [pattern, group] => match Regex::new(pattern) {
                        Ok(re) if re.captures_len() > 1 => {
                            gocd.function =
                                Some(PipelineFunction::NameLikeInGroup(re, group.clone()))
                        }
                        Ok(_) => self.problem(
                            pattern,
                            format!("{f}: the regex {pattern:?} needs a group, (...), naming the pipeline to look up"),
                        ),
                        Err(e) => self.problem(
                            pattern,
                            format!("{f}: bad regex {pattern:?}: {}", one_line(&e.to_string())),
                        ),
                    },
                    _ => wrong_args(self, f, "two args (a regex with a group, and the group)"),
                }
                Vec::new()
            }
            None => {
                self.problem("args", "filter args without a function (mail.in_subject)");
                Vec::new()
            }
            Some(other) => {
                self.problem(other, format!("filter function {other:?} is not known: use mail.in_subject, pipelines.any, pipelines.in_group or pipelines.name_like_in_group (gocd manager), or subject/body/headers regexes"));
                Vec::new()
            }
        };
        for name in &doc.events {
            match Event::parse(name) {
                Some(_) if !is_gocd => {
                    self.problem(
                        name,
                        format!(
                            "events ({name}) are for the gocd manager's notifications (name: gocd)"
                        ),
                    );
                }
                Some(event) => {
                    gocd.events.insert(event);
                }
                None => self.problem(
                    name,
                    format!("event {name:?} is none of PASSES, FAILS, BREAKS, FIXED, CANCELLED"),
                ),
            }
        }
        let subject = doc.subject.as_deref().and_then(|s| {
            let s = self.expand(s);
            self.regex("subject", &s)
        });
        let body = doc.body.as_deref().and_then(|s| {
            let s = self.expand(s);
            self.regex("body", &s)
        });
        let headers = doc
            .headers
            .iter()
            .filter_map(|(name, source)| {
                let source = self.expand(source);
                Some((name.clone(), self.regex(name, &source)?))
            })
            .collect();
        let wants = Wants {
            to: self.patterns("to", &doc.to),
            from: self.patterns("from", &doc.from),
            header_to: self.patterns("header-to", &doc.header_to),
            header_from: self.patterns("header-from", &doc.header_from),
        };
        Filter {
            subject_words,
            subject,
            body,
            headers,
            wants,
            gocd,
        }
    }

    /// Parses an action URI.
    fn action(&mut self, uri: &str) -> Option<Action> {
        let address = |s: &str| {
            let s = s.trim();
            let ok = s
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
                && !s.contains(|c: char| c.is_whitespace() || c == ',' || c == '<' || c == '>');
            ok.then(|| s.to_string())
        };
        let action = if let Some(to) = uri.strip_prefix("mailto:") {
            address(to).map(Action::Mailto)
        } else if let Some(jid) = uri.strip_prefix("xmpp:") {
            let (jid, query) = jid.split_once('?').unwrap_or((jid, ""));
            match (address(jid), query) {
                (Some(jid), "join") => Some(Action::XmppRoom(jid)),
                (Some(jid), "message") => Some(Action::XmppDirect(jid)),
                (Some(jid), "") => Some(Action::Xmpp(jid)),
                _ => None,
            }
        } else if let Some(target) = uri.strip_prefix("mattermost:") {
            mattermost_target(target.trim()).map(Action::Mattermost)
        } else {
            None
        };
        match &action {
            Some(Action::Mailto(_)) => self.first_mailto.get_or_insert_with(|| uri.to_string()),
            Some(Action::Mattermost(target)) => {
                if *target == MattermostTarget::Webhook {
                    self.first_webhook.get_or_insert_with(|| uri.to_string());
                }
                self.first_mattermost.get_or_insert_with(|| uri.to_string())
            }
            Some(_) => self.first_xmpp.get_or_insert_with(|| uri.to_string()),
            None => uri,
        };
        if action.is_none() {
            self.problem(
                uri,
                format!("action {uri:?} is not mailto:user@host, xmpp:room@conference.host, xmpp:user@host, mattermost:dm, mattermost:@user, mattermost:~team/channel or mattermost:webhook"),
            );
        }
        action
    }

    /// The value of the environment variable `var` that `what` names (a problem when it is
    /// unset or empty).
    fn secret_env(&mut self, what: &str, var: &str) -> Secret {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => Secret::new(v),
            _ => {
                self.unset(var, format!("{what} names {var}, which is not set"));
                Secret::new(String::new())
            }
        }
    }

    fn duration(&mut self, what: &str, value: Option<&str>, default: Duration) -> Duration {
        match value.map(crate::config::parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(value.unwrap_or_default(), format!("{what}: {e}"));
                default
            }
        }
    }

    fn mattermost(&mut self, doc: MattermostDoc) -> MattermostSettings {
        let url = self.expand(&doc.url);
        let url = url.trim().trim_end_matches('/').to_string();
        let checked = self.judged();
        match url.split_once("://").filter(|_| checked) {
            None if !checked => {}
            Some(("https", rest)) if !rest.is_empty() => {}
            Some(("http", rest)) if is_loopback(rest) => {}
            Some(("http", _)) => self.problem(
                &doc.url,
                "mattermost url: http:// sends the bots' tokens in clear; only for a loopback host",
            ),
            _ => self.problem(
                &doc.url,
                format!("mattermost url {:?} is not https://host[:port]", doc.url),
            ),
        }
        let source = doc
            .sender_app
            .as_deref()
            .unwrap_or(MattermostSettings::DEFAULT_SENDER_APP);
        let sender_app = match self.regex("sender_app", source) {
            Some(re) if re.capture_names().flatten().any(|n| n == "app") => re,
            Some(_) => {
                self.problem(source, "sender_app needs a named group app: (?P<app>...)");
                Regex::new(MattermostSettings::DEFAULT_SENDER_APP).expect("valid")
            }
            None => Regex::new(MattermostSettings::DEFAULT_SENDER_APP).expect("valid"),
        };
        if doc.bots.is_empty() && doc.webhook_env.is_none() {
            self.problem(
                "mattermost",
                "mattermost: set bots (application: {token_env: VARIABLE}) or webhook_env",
            );
        }
        // Applications are matched in lower case (as sender_app's capture is).
        let bots = doc
            .bots
            .iter()
            .map(|(app, bot)| {
                let what = format!("mattermost bot {app:?} token_env");
                (
                    app.to_ascii_lowercase(),
                    self.secret_env(&what, &bot.token_env),
                )
            })
            .collect();
        let webhook = doc
            .webhook_env
            .as_deref()
            .map(|var| self.secret_env("mattermost webhook_env", var));
        if let (Some(url), Some(var)) = (&webhook, &doc.webhook_env) {
            let url = url.expose();
            let plain = url
                .strip_prefix("http://")
                .is_some_and(|rest| !is_loopback(rest));
            if plain || !(url.starts_with("https://") || url.starts_with("http://")) {
                // The URL is a secret: only the variable is named.
                self.problem(
                    var,
                    format!("mattermost webhook_env: {var} does not hold an https:// URL (http:// only for a loopback host)"),
                );
            }
        }
        if doc.max_post_chars == Some(0) {
            self.problem(
                "max_post_chars",
                "mattermost max_post_chars must be above 0",
            );
        }
        let ldap = doc.ldap.map(|l| self.ldap(l, &bots));
        MattermostSettings {
            url,
            sender_app,
            bots,
            allow: self.patterns("allow", &doc.allow),
            block: self.patterns("block", &doc.block),
            ldap,
            webhook,
            max_post_chars: doc.max_post_chars.filter(|&m| m > 0),
            timeout: self.duration(
                "mattermost timeout",
                doc.timeout.as_deref(),
                MattermostSettings::DEFAULT_TIMEOUT,
            ),
            require_sasl_login: doc.require_sasl_login,
        }
    }

    fn ldap<T>(&mut self, doc: LdapDoc, bots: &BTreeMap<String, T>) -> LdapSettings {
        if !(doc.url.starts_with("ldap://") || doc.url.starts_with("ldaps://")) {
            self.problem(
                &doc.url,
                format!(
                    "ldap url {:?} is not ldap://host:port or ldaps://host:port",
                    doc.url
                ),
            );
        }
        if doc.bind_dn.is_some()
            && !doc.starttls
            && doc
                .url
                .strip_prefix("ldap://")
                .is_some_and(|rest| !is_loopback(rest))
        {
            self.problem(
                &doc.url,
                "ldap: bind_dn over ldap:// sends the password in clear: use ldaps:// or starttls: true",
            );
        }
        let bind = match (&doc.bind_dn, &doc.password_env) {
            (Some(dn), Some(var)) => Some((dn.clone(), self.secret_env("ldap password_env", var))),
            (None, None) => None,
            (Some(dn), None) => {
                self.problem(dn, "ldap bind_dn needs password_env");
                None
            }
            (None, Some(var)) => {
                self.problem(var, "ldap password_env without bind_dn");
                None
            }
        };
        // A key that names no bot (a typo) would leave that application open to the whole
        // directory.
        for app in doc.app_groups.keys() {
            if !bots.contains_key(&app.to_ascii_lowercase()) {
                self.problem(
                    app,
                    format!(
                        "ldap app_groups: {app:?} names no bot (bots: {})",
                        bots.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        LdapSettings {
            url: doc.url,
            starttls: doc.starttls,
            base: doc.base,
            bind,
            app_groups: doc
                .app_groups
                .into_iter()
                .map(|(app, group)| (app.to_ascii_lowercase(), group))
                .collect(),
            block_group: doc.block_group,
            cache: self.duration(
                "ldap cache",
                doc.cache.as_deref(),
                LdapSettings::DEFAULT_CACHE,
            ),
        }
    }

    /// Adds what a milter-xmpp ini stands for to `doc`: its account (unless `doc` has
    /// one: a problem) and a manager posting every message from `valid_from` to its room
    /// in milter-xmpp's form.
    fn milter_xmpp(&mut self, doc: &mut FileDoc, ini: super::milter_xmpp::MilterXmpp) {
        if doc.xmpp.is_some() {
            self.problem(
                "milter-xmpp",
                "milter-xmpp: the ini file names the XMPP account: leave xmpp: out",
            );
            return;
        }
        if ini
            .valid_from
            .as_deref()
            .is_some_and(|v| v.starts_with('"') && v.ends_with('"'))
        {
            self.warning(
                "milter-xmpp",
                "milter-xmpp valid_from is quoted: as milter-xmpp, the quotes are compared too, so only a From: header written with them matches (its README: do not quote the value)",
            );
        }
        doc.xmpp = Some(XmppDoc {
            jabberid: ini.jabberid,
            password: Some(ini.password.expose().to_string()),
            password_env: None,
            // xmpppy used STARTTLS when offered: here it is required, but on loopback.
            tls: ini.server.as_deref().map(|s| !is_loopback(s)),
            server: ini.server,
            valid_from: Patterns::None,
            valid_from_header: ini.valid_from,
            nick: None,
            timeout: None,
            from_ini: true,
        });
        doc.managers.push(ManagerDoc {
            name: "milter-xmpp".into(),
            url: None,
            user: None,
            passwd: None,
            wants: WantsDoc::default(),
            rules: vec![RuleDoc {
                name: Some("milter-xmpp".into()),
                _owner: None,
                filter: None,
                actions: vec![format!("xmpp:{}?join", ini.room)],
                template: Some(super::milter_xmpp::TEMPLATE.into()),
                mattermost_template: None,
            }],
            template: None,
            from_ini: true,
        });
    }

    fn xmpp(&mut self, mut doc: XmppDoc) -> XmppSettings {
        let mut server_checked = true;
        if !doc.from_ini {
            doc.jabberid = self.expand(&doc.jabberid);
            doc.password = doc.password.map(|p| self.expand(&p));
            doc.server = doc.server.map(|s| {
                let s = self.expand(&s);
                server_checked = self.judged();
                s
            });
        }
        if address_of(&doc.jabberid).is_none() {
            self.problem(
                &doc.jabberid,
                format!("xmpp jabberid {:?} is not user@host", doc.jabberid),
            );
        }
        let password = match (&doc.password, &doc.password_env) {
            (Some(p), None) => Secret::new(p.clone()),
            (None, Some(var)) => self.secret_env("xmpp password_env", var),
            (Some(_), Some(_)) => {
                self.problem("password", "xmpp: set password or password_env, not both");
                Secret::new(String::new())
            }
            (None, None) => {
                self.problem(
                    "xmpp",
                    "xmpp: password_env (the variable holding the password) is missing",
                );
                Secret::new(String::new())
            }
        };
        let server = doc.server.as_deref().and_then(|server| {
            let server = server.trim();
            let has_port = match server.strip_prefix('[') {
                Some(v6) => v6.contains("]:"),
                None => server.contains(':'),
            };
            let with_port = if has_port {
                server.to_string()
            } else {
                format!("{server}:5222")
            };
            (!server_checked || self.host_port("xmpp server", &with_port)).then_some(with_port)
        });
        let mut valid_from = self.valid_from(&doc.valid_from);
        valid_from.extend(doc.valid_from_header.map(ValidFrom::Header));
        let timeout = self.duration(
            "xmpp timeout",
            doc.timeout.as_deref(),
            XmppSettings::DEFAULT_TIMEOUT,
        );
        XmppSettings {
            timeout,
            nick: doc.nick.unwrap_or_else(|| {
                doc.jabberid
                    .split('@')
                    .next()
                    .unwrap_or("swiftdrop")
                    .to_string()
            }),
            jabberid: doc.jabberid,
            password,
            server,
            valid_from,
            tls: doc.tls.unwrap_or(true),
        }
    }
}

/// The target of a `mattermost:` action URI (what follows `mattermost:`).
fn mattermost_target(target: &str) -> Option<MattermostTarget> {
    let name = |s: &str| {
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        ok.then(|| s.to_string())
    };
    match target {
        "dm" => Some(MattermostTarget::Dm),
        "webhook" => Some(MattermostTarget::Webhook),
        _ => {
            if let Some(user) = target.strip_prefix('@') {
                name(user).map(MattermostTarget::User)
            } else {
                let (team, channel) = target.strip_prefix('~')?.split_once('/')?;
                Some(MattermostTarget::Channel {
                    team: name(team)?,
                    channel: name(channel)?,
                })
            }
        }
    }
}

/// Whether the host of `rest` (what follows `scheme://`) is a loopback address.
fn is_loopback(rest: &str) -> bool {
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether `manager` is mail2alert's GoCD manager (`name: gocd`).
fn is_gocd(manager: &ManagerDoc) -> bool {
    manager.name.trim() == "gocd"
}

/// Whether `name` is a variable's name (`[A-Za-z_][A-Za-z0-9_]*`).
fn is_variable(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `user@host` with both parts.
fn address_of(s: &str) -> Option<(&str, &str)> {
    s.split_once('@')
        .filter(|(l, d)| !l.is_empty() && !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::mail_view::MailView;

    const MAIL2ALERT: &str = "---
local-smtp: localhost:1025
remote-smtp: localhost:8025
managers:
  - name: mail
    messages-we-want:
      from: go@example.com
    rules:
      - actions:
          - mailto:sys@example.com
          - mailto:op@example.com
        filter:
          function: mail.in_subject
          args:
            - server
            - backup
";

    /// `- mailto:` with nothing after it (the action written on the next line, as a YAML
    /// newcomer does) is said in the author's words, at its line.
    #[test]
    fn a_file_of_the_wrong_shape_is_said_in_plain_words() {
        let text = MAIL2ALERT.replace(
            "          - mailto:op@example.com\n",
            "          - mailto:\n",
        );
        let err = parse(&text, "configuration.yml").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.problems[0].starts_with("configuration.yml:11: managers[0].rules[0].actions[1]: this is a mapping (`key:` lines), where a text belongs: "),
            "{err}"
        );
        let err = parse("just a string\n", "r.yml").unwrap_err();
        assert!(!err.problems[0].contains("FileDoc"), "{err}");
    }

    #[test]
    fn a_mail2alert_configuration_is_read_unchanged() {
        let rules = parse(MAIL2ALERT, "configuration.yml").unwrap();
        assert_eq!(rules.remote_smtp.as_deref(), Some("localhost:8025"));
        assert_eq!(rules.unmatched, Unmatched::Forward("localhost:8025".into()));
        let m = &rules.managers[0];
        assert_eq!(m.name, "mail");
        assert_eq!(m.rules[0].filter.subject_words, ["server", "backup"]);
        assert_eq!(
            m.rules[0].actions,
            [
                Action::Mailto("sys@example.com".into()),
                Action::Mailto("op@example.com".into())
            ]
        );
    }

    /// mail2alert's README example (its addresses, which the README's copy lost, made up).
    const MAIL2ALERT_README: &str = include_str!("../../../tests/mail2alert/configuration.yml");

    #[test]
    fn mail2alerts_readme_example_is_read_with_its_gocd_manager() {
        let rules = parse(MAIL2ALERT_README, "configuration.yml").unwrap();
        assert_eq!(rules.remote_smtp.as_deref(), Some("localhost:8025"));
        let gocd = &rules.managers[0];
        let server = gocd.gocd.as_ref().unwrap();
        assert_eq!(server.url, "http://localhost:8080/go");
        let (user, passwd) = server.login.as_ref().unwrap();
        assert_eq!((user.as_str(), passwd.expose()), ("olle", "pelle"));
        let first = &gocd.rules[0].filter.gocd;
        assert_eq!(first.events, [Event::Breaks].into());
        assert!(
            matches!(first.function, Some(PipelineFunction::InGroup(ref g)) if g == "my-group")
        );
        let second = &gocd.rules[1].filter.gocd;
        assert_eq!(second.events, [Event::Breaks, Event::Fixed].into());
        assert!(
            matches!(second.function, Some(PipelineFunction::NameLikeInGroup(_, ref g)) if g == "my-group")
        );
        assert!(rules.managers[1].gocd.is_none());
        assert!(rules.warnings.is_empty(), "{:?}", rules.warnings);
    }

    #[test]
    fn variables_are_expanded_in_values_and_unset_ones_named() {
        // SAFETY: variables only this test uses.
        unsafe {
            std::env::set_var("SWIFTDROP_TEST_GOUSER", "olle");
            std::env::set_var("SWIFTDROP_TEST_GOPASS", "p#s: 'x\"");
            std::env::set_var("SWIFTDROP_TEST_RELAY", "relay.example.com");
        }
        let text = "remote-smtp: $SWIFTDROP_TEST_RELAY
managers:
  - name: gocd
    url: https://gocd.example.com/go/
    user: ${SWIFTDROP_TEST_GOUSER}
    passwd: $SWIFTDROP_TEST_GOPASS
    messages-we-want:
      to: ci@example.com
    rules:
      - actions: [mailto:a@example.com]
        filter:
          subject: 'cost \\$SWIFTDROP_TEST_GOUSER$'
";
        let rules = parse(text, "r.yml").unwrap();
        assert_eq!(rules.remote_smtp.as_deref(), Some("relay.example.com:25"));
        let server = rules.managers[0].gocd.as_ref().unwrap();
        assert_eq!(server.url, "https://gocd.example.com/go");
        let (user, passwd) = server.login.as_ref().unwrap();
        assert_eq!((user.as_str(), passwd.expose()), ("olle", "p#s: 'x\""));
        let subject = rules.managers[0].rules[0].filter.subject.as_ref().unwrap();
        assert!(subject.is_match("cost $SWIFTDROP_TEST_GOUSER"), "{subject}");

        let unset = text.replace("SWIFTDROP_TEST_GOPASS", "SWIFTDROP_TEST_UNSET_GOPASS");
        let p = problems(&unset);
        assert_eq!(p, ["r.yml:6: SWIFTDROP_TEST_UNSET_GOPASS is not set"]);
        let checked = parse_for(&unset, "r.yml", Purpose::Check).unwrap();
        assert_eq!(
            checked.warnings,
            [
                "r.yml:6: warning: SWIFTDROP_TEST_UNSET_GOPASS is not set here (set it where the worker runs)"
            ]
        );
        // GoCD is then not asked (a dry run would send `$VAR` as the password).
        assert!(checked.managers[0].gocd.as_ref().unwrap().unresolved);
        assert!(!rules.managers[0].gocd.as_ref().unwrap().unresolved);
        let unset_user = text.replace("SWIFTDROP_TEST_GOUSER}", "SWIFTDROP_TEST_UNSET_GOUSER}");
        let checked = parse_for(&unset_user, "r.yml", Purpose::Check).unwrap();
        assert!(checked.managers[0].gocd.as_ref().unwrap().unresolved);
        // An unset messages-we-want pattern matches nothing: the manager is not taken to
        // want every message (and no warning says it does).
        let unset_wants = text.replace("to: ci@example.com", "to: $SWIFTDROP_TEST_UNSET_CI");
        let checked = parse_for(&unset_wants, "r.yml", Purpose::Check).unwrap();
        let view = MailView {
            envelope_to: vec!["anyone@example.com".into()],
            ..MailView::default()
        };
        assert_eq!(checked.manager_at(&view), None);
        assert!(
            !checked
                .warnings
                .iter()
                .any(|w| w.contains("no messages-we-want")),
            "{:?}",
            checked.warnings
        );
        // Inside other text, as mail2alert does: taken as written, with a warning.
        let literal = text.replace("$SWIFTDROP_TEST_GOPASS", "pa$SWIFTDROP_TEST_UNSET_word");
        let rules = parse(&literal, "r.yml").unwrap();
        let (_, passwd) = rules.managers[0]
            .gocd
            .as_ref()
            .unwrap()
            .login
            .clone()
            .unwrap();
        assert_eq!(passwd.expose(), "pa$SWIFTDROP_TEST_UNSET_word");
        assert!(
            rules.warnings[0].contains("taken as written"),
            "{:?}",
            rules.warnings
        );
        // A value --check cannot see is not judged there; to run, it is a problem.
        let unset_url = text.replace(
            "https://gocd.example.com/go/",
            "$SWIFTDROP_TEST_UNSET_GOCD_URL",
        ) + "      - actions: [$SWIFTDROP_TEST_UNSET_ONCALL]\n";
        let checked = parse_for(&unset_url, "r.yml", Purpose::Check).unwrap();
        assert_eq!(checked.warnings.len(), 2, "{:?}", checked.warnings);
        assert_eq!(problems(&unset_url).len(), 2, "{:?}", problems(&unset_url));
    }

    #[test]
    fn gocd_settings_and_functions_are_checked() {
        let text = "remote-smtp: h
managers:
  - name: builds
    url: https://gocd.example.com/go
    rules:
      - actions: [mailto:a@example.com]
        filter:
          events: [BREAKS]
          function: pipelines.any
  - name: gocd
    messages-we-want:
      to: ci@example.com
    rules:
      - actions: [mailto:a@example.com]
        filter:
          events: [BROKEN]
          function: pipelines.name_like_in_group
          args: ['.+-release', my-group]
      - actions: [mailto:a@example.com]
        filter:
          function: pipelines.in_group
";
        let p = problems(text);
        let expect = [
            "r.yml:4: url, user and passwd are settings of the gocd manager",
            "r.yml:8: events (BREAKS) are for the gocd manager's notifications",
            "r.yml:9: filter function pipelines.any is the gocd manager's",
            "r.yml:10: the gocd manager needs url",
            "r.yml:16: event \"BROKEN\" is none of",
            "r.yml:18: pipelines.name_like_in_group: the regex \".+-release\" needs a group",
            "r.yml:21: pipelines.in_group takes one arg",
        ];
        for e in expect {
            assert!(p.iter().any(|l| l.starts_with(e)), "{e} not in {p:#?}");
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        let rules = parse(
            "remote-smtp: '[::1]'\nmanagers: [{name: all, rules: [{actions: [mailto:a@b.c]}]}]\n",
            "r.yml",
        )
        .unwrap();
        assert_eq!(rules.remote_smtp.as_deref(), Some("[::1]:25"));
        assert!(
            rules.warnings[0].contains("manager \"all\" has no messages-we-want"),
            "{:?}",
            rules.warnings
        );
    }

    #[test]
    fn a_problem_is_named_where_its_part_writes_it_not_where_the_words_come_first() {
        // The same words in a comment and in a good rule before the bad one: the line
        // is the bad rule's (a text search named line 1, then line 9).
        let text = "# pipelines.in_group is for the gocd manager; mailto:ops@example.com gets all
remote-smtp: h
managers:
  - name: gocd
    url: https://gocd.example.com/go
    messages-we-want: {to: ci@example.com}
    rules:
      - actions: [mailto:ops@example.com]
        filter: {function: pipelines.in_group, args: [g]}
  - name: other
    messages-we-want: {to: x@example.com}
    rules:
      - actions: [mailto:ops@example.com]
        filter: {function: pipelines.in_group, args: [g]}
      - name: gocd
        filter: {subject: '(?P<n>x)'}
";
        assert_eq!(
            problems(text),
            [
                "r.yml:14: filter function pipelines.in_group is the gocd manager's (name: gocd)",
                "r.yml:15: rule \"gocd\" of \"other\" has no actions",
            ]
        );
    }

    fn problems(text: &str) -> Vec<String> {
        parse(text, "r.yml").unwrap_err().problems
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let text = "remote-smtp: localhost:25
unmatched: bounce
managers:
  - name: a
    messages-we-want:
      to: '/(unclosed/'
    rules:
      - filter:
          subject: '(?P<x'
          function: gocd.in_group
        actions:
          - xmpp:ops@conference.example.com
          - sms:+100
        template: '{{ subjekt }}'
";
        let p = problems(text);
        let expect = [
            "r.yml:2: unmatched: \"bounce\"",
            "r.yml:6: to: bad regex",
            "r.yml:9: subject: bad regex",
            "r.yml:10: filter function \"gocd.in_group\"",
            "r.yml:13: action \"sms:+100\"",
            "r.yml:14: unknown template variable \"subjekt\"",
            "r.yml:12: xmpp:ops@conference.example.com needs an xmpp: account",
        ];
        for e in expect {
            assert!(p.iter().any(|l| l.starts_with(e)), "{e} not in {p:#?}");
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn templates_are_tried_before_they_run() {
        let p = problems(
            "unmatched: done
remote-smtp: h:25
managers:
  - name: a
    rules:
      - name: r
        filter:
          subject: '(?P<host>\\S+) down'
        actions: [mailto:a@b.c]
        template: '{{ captures.host }} {{ captures.hots }} {{ subject | shout }}'
",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with("r.yml:10: template of rule \"r\": unknown filter"),
            "{p:?}"
        );
        // A group no regex of the rule defines: a warning (a template shared by rules may
        // read groups only some define).
        let rules = parse(
            "unmatched: done\nxmpp: {jabberid: b@b.c, password: p}\nmanagers:\n  - name: a\n    rules:\n      - name: r\n        filter: {subject: '(?P<host>\\S+) down'}\n        actions: [xmpp:a@b.c]\n        template: '{{ captures.host }} {{ captures.hots.x }}'\n",
            "r.yml",
        )
        .unwrap();
        assert_eq!(rules.warnings.len(), 2, "{:?}", rules.warnings);
        assert!(
            rules.warnings[1]
                .starts_with("r.yml:4: warning: manager \"a\" has no messages-we-want")
        );
        assert!(
            rules.warnings[0].starts_with("r.yml:9: warning: the template of rule \"r\" reads captures.hots.x, which no regex of the rule defines (named groups: host)"),
            "{:?}",
            rules.warnings
        );
    }

    #[test]
    fn mattermost_problems_are_named_with_their_line() {
        let text = "unmatched: done
mattermost:
  url: ftp://chat.example.com
  sender_app: '^svc-(?P<application>[^@]+)@'
  bots:
    jira: {token_env: SWIFTDROP_TEST_UNSET_TOKEN}
  ldap:
    url: ldap://127.0.0.1:389
    base: dc=example,dc=com
    bind_dn: cn=reader,dc=example,dc=com
managers:
  - name: a
    rules:
      - actions:
          - mattermost:dm
          - mattermost:webhook
          - mattermost:#general
        mattermost_template: '{{ bodie }}'
";
        let p = problems(text);
        let expect = [
            "r.yml:3: mattermost url \"ftp://chat.example.com\"",
            "r.yml:4: sender_app needs a named group app",
            "r.yml:6: mattermost bot \"jira\" token_env names SWIFTDROP_TEST_UNSET_TOKEN, which is not set",
            "r.yml:10: ldap bind_dn needs password_env",
            "r.yml:17: action \"mattermost:#general\"",
            "r.yml:18: unknown template variable \"bodie\"",
            "r.yml:16: mattermost:webhook needs mattermost webhook_env",
        ];
        for e in expect {
            assert!(p.iter().any(|l| l.starts_with(e)), "{e} not in {p:#?}");
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        let p = problems(
            "unmatched: done\nmanagers:\n  - name: a\n    rules:\n      - actions: [mattermost:dm]\n",
        );
        assert!(
            p[0].starts_with("r.yml:5: mattermost:dm needs a mattermost: server"),
            "{p:?}"
        );
    }

    #[test]
    fn secrets_do_not_go_in_clear_beyond_loopback() {
        // SAFETY: a variable only this test uses.
        unsafe { std::env::set_var("SWIFTDROP_TEST_MM_TOKEN", "t") };
        let text = |url: &str, ldap: &str| {
            format!(
                "unmatched: done\nmattermost:\n  url: {url}\n  bots:\n    Jira: {{token_env: SWIFTDROP_TEST_MM_TOKEN}}\n  ldap:\n    url: {ldap}\n    base: dc=x\n    bind_dn: cn=r,dc=x\n    password_env: SWIFTDROP_TEST_MM_TOKEN\n    app_groups: {{JIRA: 'cn=g,dc=x'}}\n"
            )
        };
        let p = problems(&text("http://chat.example.com", "ldap://ldap.example.com"));
        assert!(
            p.iter()
                .any(|l| l.contains("http:// sends the bots' tokens in clear")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|l| l.contains("bind_dn over ldap://")),
            "{p:?}"
        );
        assert_eq!(p.len(), 2, "{p:?}");
        for (url, ldap) in [
            ("http://127.0.0.1:8065", "ldap://127.0.0.1:389"),
            ("https://chat.example.com", "ldaps://ldap.example.com"),
            ("http://[::1]:8065", "ldap://localhost"),
        ] {
            let rules = parse(&text(url, ldap), "r.yml").unwrap();
            let m = rules.mattermost.unwrap();
            assert!(
                m.bots.contains_key("jira"),
                "application names in lower case"
            );
            assert!(m.ldap.unwrap().app_groups.contains_key("jira"));
        }
    }

    #[test]
    fn mattermost_actions_parse() {
        let target = |uri: &str| mattermost_target(uri.strip_prefix("mattermost:").unwrap());
        assert_eq!(target("mattermost:dm"), Some(MattermostTarget::Dm));
        assert_eq!(
            target("mattermost:webhook"),
            Some(MattermostTarget::Webhook)
        );
        assert_eq!(
            target("mattermost:@jane.doe"),
            Some(MattermostTarget::User("jane.doe".into()))
        );
        assert_eq!(
            target("mattermost:~ops/town-square"),
            Some(MattermostTarget::Channel {
                team: "ops".into(),
                channel: "town-square".into()
            })
        );
        for bad in [
            "mattermost:",
            "mattermost:@",
            "mattermost:~ops",
            "mattermost:~/x",
            "mattermost:@a/b",
        ] {
            assert_eq!(target(bad), None, "{bad}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_yaml_name_their_line() {
        let p = problems("remote-smtp: a:25\nmanagers:\n  - name: a\n    colour: red\n");
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("r.yml:4: ") && p[0].contains("colour"),
            "{p:?}"
        );
        let p = problems("managers: [\n");
        assert!(
            p[0].starts_with("r.yml:2: ") || p[0].starts_with("r.yml:1: "),
            "{p:?}"
        );
    }

    #[test]
    fn the_xmpp_password_comes_from_the_variable_named() {
        let text = "xmpp:\n  jabberid: bot@example.com\n  password_env: SWIFTDROP_TEST_UNSET_PASSWORD\nunmatched: done\n";
        let p = problems(text);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("r.yml:3: xmpp password_env names SWIFTDROP_TEST_UNSET_PASSWORD"),
            "{p:?}"
        );
        let rules = parse(
            "xmpp:\n  jabberid: bot@example.com\n  password_env: PATH\nunmatched: done\n",
            "r.yml",
        )
        .unwrap();
        let x = rules.xmpp.unwrap();
        assert_eq!((x.nick.as_str(), x.tls), ("bot", true));
        assert_eq!(x.password.expose(), std::env::var("PATH").unwrap());
    }

    #[test]
    fn xmpp_addresses_are_rooms_by_query_or_asked_of_the_server() {
        let text = "remote-smtp: h:25\nxmpp:\n  jabberid: b@x.org\n  password: p\nmanagers:\n  - name: m\n    rules:\n      - actions: [xmpp:a@conference.x.org, xmpp:b@chat.x.org, xmpp:c@x.org?join, xmpp:d@muc.x.org?message]\n";
        let rules = parse(text, "r.yml").unwrap();
        assert_eq!(
            rules.managers[0].rules[0].actions,
            [
                Action::Xmpp("a@conference.x.org".into()),
                Action::Xmpp("b@chat.x.org".into()),
                Action::XmppRoom("c@x.org".into()),
                Action::XmppDirect("d@muc.x.org".into()),
            ]
        );
    }
}
