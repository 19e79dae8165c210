//! Configuration: the only place the environment and the ini file are read.
//!
//! Two sources, each read by one crate: `envy` turns `SWIFTDROP_<SECTION>_<OPTION>` variables
//! into a map, `config` parses the ini file given with `--config`. Both become one raw table
//! of sections (a variable overrides the same option from the file), which [`Config::load`]
//! validates once at start into typed settings. Every raw value remembers where it came from,
//! so an error names the variable or the file line and says what is wrong.
//!
//! Sections: `[SERVER]` holds the global settings; `[DEFAULT]` holds options that every
//! destination inherits (except `recipients`, which each destination owns) and is itself a
//! destination when it has `recipients`; every other section is a destination.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// The section that holds global settings.
pub const SERVER_SECTION: &str = "SERVER";
/// The section whose options every destination inherits.
pub const DEFAULT_SECTION: &str = "DEFAULT";
/// Prefix of every configuration variable.
pub const ENV_PREFIX: &str = "SWIFTDROP_";

/// Options of the `[SERVER]` section, with their defaults, as documented in README.rst.
const SERVER_OPTIONS: &[&str] = &[
    "listen",
    "hostname",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "error_limit",
    "idle_timeout",
    "store_timeout",
    "drain_timeout",
    "xforward_networks",
    "relay",
    "log_format",
];

/// Options a destination section understands.
const DESTINATION_OPTIONS: &[&str] = &["recipients", "backend", "path"];

/// Options of the original SwiftDrop's Swift accounts: recognised, so that such a
/// configuration gets a precise error instead of "unknown option".
const OBJECT_STORE_OPTIONS: &[&str] = &[
    "container",
    "bucket",
    "auth_version",
    "authurl",
    "user",
    "key",
    "tenant_name",
    "timeout",
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
];

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Global settings (`[SERVER]`).
    pub server: ServerSettings,
    /// Where mail goes, in configuration order.
    pub destinations: Vec<DestinationConfig>,
    /// True when no destination was configured and every recipient goes to the catch-all
    /// destination built from `[DEFAULT]` (by default the Maildir `./maildir`).
    pub embedded_default: bool,
}

/// Global settings of the filter.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on (`listen`, default `127.0.0.1:10025`).
    pub listen: SocketAddr,
    /// Name in the greeting and in object keys (`hostname`, default the system host name).
    pub hostname: String,
    /// Largest message accepted, in bytes (`max_message_size`, default 50 MiB).
    pub max_message_size: usize,
    /// Most recipients in one transaction (`max_recipients`, default 1000).
    pub max_recipients: usize,
    /// Most concurrent SMTP sessions (`max_connections`, default 256).
    pub max_connections: usize,
    /// Errors a session may make before it is disconnected (`error_limit`, default 20).
    pub error_limit: usize,
    /// How long to wait for a client's next bytes (`idle_timeout`, default 300 s).
    pub idle_timeout: Duration,
    /// Deadline for confirming every write of one message (`store_timeout`, default 60 s).
    pub store_timeout: Duration,
    /// How long shutdown waits for transactions in flight (`drain_timeout`, default 30 s).
    pub drain_timeout: Duration,
    /// Clients allowed to send XFORWARD (`xforward_networks`, default loopback).
    pub xforward_networks: Vec<IpNet>,
    /// Where recipients that no destination takes are relayed (`relay`, default
    /// `127.0.0.1:10026`, Postfix's after-queue smtpd); `None` (`relay = off`) refuses them.
    pub relay: Option<SocketAddr>,
    /// Log line format (`log_format`: `text` or `json`).
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One destination: which recipients it takes and where their mail is stored.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    /// Section name as written in the configuration.
    pub name: String,
    /// Recipients routed here.
    pub recipients: Vec<RecipientPattern>,
    /// The store that holds this destination's objects.
    pub backend: Backend,
}

/// A recipient pattern from a `recipients` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecipientPattern {
    /// One address, compared case-insensitively (stored lowercased).
    Address(String),
    /// Every address of a domain (`@example.com`, stored lowercased without the `@`).
    Domain(String),
    /// Every recipient (`*`).
    Any,
}

impl fmt::Display for RecipientPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecipientPattern::Address(a) => f.write_str(a),
            RecipientPattern::Domain(d) => write!(f, "@{d}"),
            RecipientPattern::Any => f.write_str("*"),
        }
    }
}

/// The storage behind a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A local Maildir directory.
    Maildir {
        /// Root of the Maildir (holds `tmp/`, `new/`, `cur/`).
        path: PathBuf,
    },
}

/// Everything wrong with a configuration, one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// One message per problem, each naming its variable or file line.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Where a raw value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Env(String),
    File {
        path: String,
        line: Option<usize>,
        section: String,
        option: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => f.write_str(var),
            Origin::File {
                path,
                line: Some(line),
                section,
                option,
            } => write!(f, "{path}:{line}: [{section}] {option}"),
            Origin::File {
                path,
                line: None,
                section,
                option,
            } => write!(f, "{path}: [{section}] {option}"),
        }
    }
}

#[derive(Debug, Clone)]
struct RawValue {
    value: String,
    origin: Origin,
}

/// Options of one section, by lowercased option name.
type RawSection = BTreeMap<String, RawValue>;

/// Sections by uppercased name, remembering the name as first written and the order.
#[derive(Debug, Default)]
struct RawConfig {
    sections: Vec<(String, RawSection)>,
}

impl RawConfig {
    fn section_mut(&mut self, name: &str) -> &mut RawSection {
        let idx = match self
            .sections
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(idx) => idx,
            None => {
                self.sections.push((name.to_string(), RawSection::new()));
                self.sections.len() - 1
            }
        };
        &mut self.sections[idx].1
    }

    fn section(&self, name: &str) -> Option<&RawSection> {
        self.sections
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, s)| s)
    }
}

impl Config {
    /// Loads the configuration from the process environment and, if given, an ini file.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_sources(file, process_environment())
    }

    /// Loads the configuration from the given variables (only `SWIFTDROP_*` ones are read)
    /// and, if given, an ini file. Tests use this to avoid touching the process environment.
    pub fn from_sources(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut raw = RawConfig::default();
        if let Some(path) = file {
            if let Err(problem) = read_file(path, &mut raw) {
                problems.push(problem);
            }
        }
        read_env(vars, &mut raw, &mut problems);
        let config = validate(&raw, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError { problems }),
        }
    }
}

/// The process environment: every other module gets its variables from here.
pub fn process_environment() -> Vec<(String, String)> {
    std::env::vars().collect()
}

/// Reads the ini file into `raw` with the `config` crate; values keep their file line.
fn read_file(path: &Path, raw: &mut RawConfig) -> Result<(), String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let parsed = config::Source::collect(&config::File::from_str(&text, config::FileFormat::Ini))
        .map_err(|e| format!("{shown}: not a valid ini file: {e}"))?;
    // The order of sections in the file decides the order of destinations.
    let mut sections: Vec<(String, config::Map<String, config::Value>)> = Vec::new();
    for (name, value) in parsed {
        match value.into_table() {
            Ok(table) => sections.push((name, table)),
            Err(_) => {
                return Err(format!(
                    "{shown}:{}: option {name:?} is outside any section: put it under [SERVER] or [DEFAULT]",
                    find_line(&text, None, &name).unwrap_or(0)
                ));
            }
        }
    }
    sections.sort_by_key(|(name, _)| find_section_line(&text, name).unwrap_or(usize::MAX));
    for (section, table) in sections {
        let target = raw.section_mut(&section);
        for (option, value) in table {
            let value = value
                .into_string()
                .map_err(|e| format!("{shown}: [{section}] {option}: {e}"))?;
            let line = find_line(&text, Some(&section), &option);
            target.insert(
                option.to_ascii_lowercase(),
                RawValue {
                    value,
                    origin: Origin::File {
                        path: shown.clone(),
                        line,
                        section: section.clone(),
                        option: option.clone(),
                    },
                },
            );
        }
    }
    Ok(())
}

/// Line (1-based) of the `[section]` header.
fn find_section_line(text: &str, section: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim()
                .strip_prefix('[')
                .and_then(|l| l.strip_suffix(']'))
                .is_some_and(|name| name.trim().eq_ignore_ascii_case(section))
        })
        .map(|i| i + 1)
}

/// Line (1-based) where `option` is set inside `section` (`None`: before any section).
fn find_line(text: &str, section: Option<&str>, option: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            continue;
        }
        let in_section = match (section, &current) {
            (None, None) => true,
            (Some(want), Some(cur)) => want.eq_ignore_ascii_case(cur),
            _ => false,
        };
        let key = line.split(['=', ':']).next().unwrap_or("").trim();
        if in_section && key.eq_ignore_ascii_case(option) {
            return Some(i + 1);
        }
    }
    None
}

/// Reads `SWIFTDROP_<SECTION>_<OPTION>` variables with `envy`.
fn read_env(
    vars: impl IntoIterator<Item = (String, String)>,
    raw: &mut RawConfig,
    problems: &mut Vec<String>,
) {
    let vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    let map: HashMap<String, String> = match envy::prefixed(ENV_PREFIX).from_iter(vars) {
        Ok(map) => map,
        Err(e) => {
            problems.push(format!("{ENV_PREFIX}*: {e}"));
            return;
        }
    };
    // Sorted, so that destinations that exist only in the environment have a stable order.
    let mut entries: Vec<_> = map.into_iter().collect();
    entries.sort();
    for (name, value) in entries {
        let var = format!("{ENV_PREFIX}{}", name.to_ascii_uppercase());
        match name.split_once('_') {
            Some((section, option)) if !section.is_empty() && !option.is_empty() => {
                raw.section_mut(&section.to_ascii_uppercase()).insert(
                    option.to_string(),
                    RawValue {
                        value,
                        origin: Origin::Env(var),
                    },
                );
            }
            _ => problems.push(format!(
                "{var}: not a configuration variable: expected {ENV_PREFIX}<SECTION>_<OPTION>"
            )),
        }
    }
}

fn validate(raw: &RawConfig, problems: &mut Vec<String>) -> Option<Config> {
    let empty = RawSection::new();
    let server = validate_server(raw.section(SERVER_SECTION).unwrap_or(&empty), problems);
    let defaults = raw.section(DEFAULT_SECTION).unwrap_or(&empty);

    let mut destinations = Vec::new();
    if defaults.contains_key("recipients") {
        destinations.push(validate_destination(
            DEFAULT_SECTION,
            defaults,
            &empty,
            problems,
        ));
    }
    for (name, section) in &raw.sections {
        if name.eq_ignore_ascii_case(SERVER_SECTION) || name.eq_ignore_ascii_case(DEFAULT_SECTION) {
            continue;
        }
        destinations.push(validate_destination(name, section, defaults, problems));
    }
    let embedded_default = destinations.is_empty();
    if embedded_default {
        let mut catch_all = RawSection::new();
        catch_all.insert(
            "recipients".into(),
            RawValue {
                value: "*".into(),
                origin: Origin::Env("(embedded default)".into()),
            },
        );
        destinations.push(validate_destination(
            DEFAULT_SECTION,
            &catch_all,
            defaults,
            problems,
        ));
    }
    let destinations: Vec<DestinationConfig> = destinations.into_iter().flatten().collect();
    check_overlaps(&destinations, problems);
    Some(Config {
        server: server?,
        destinations,
        embedded_default,
    })
}

fn problem(origin: &Origin, message: impl fmt::Display) -> String {
    format!("{origin}: {message}")
}

fn validate_server(section: &RawSection, problems: &mut Vec<String>) -> Option<ServerSettings> {
    let before = problems.len();
    for (option, value) in section {
        if !SERVER_OPTIONS.contains(&option.as_str()) {
            problems.push(problem(
                &value.origin,
                format!(
                    "unknown option; [SERVER] knows {}",
                    SERVER_OPTIONS.join(", ")
                ),
            ));
        }
    }
    let mut get =
        |option: &str, default: &str, parse: &dyn Fn(&str) -> Result<(), String>| match section
            .get(option)
        {
            Some(v) => match parse(v.value.trim()) {
                Ok(()) => v.value.trim().to_string(),
                Err(e) => {
                    problems.push(problem(&v.origin, e));
                    default.to_string()
                }
            },
            None => default.to_string(),
        };
    let listen = get("listen", "127.0.0.1:10025", &|s| {
        s.parse::<SocketAddr>()
            .map(drop)
            .map_err(|_| format!("{s:?} is not an address:port such as 127.0.0.1:10025"))
    });
    let system_host = gethostname::gethostname().to_string_lossy().into_owned();
    let hostname = get("hostname", &system_host, &|s| {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!("{s:?} is not a host name"))
        } else {
            Ok(())
        }
    });
    let max_message_size = get("max_message_size", "50MiB", &|s| parse_size(s).map(drop));
    let max_recipients = get("max_recipients", "1000", &|s| parse_count(s).map(drop));
    let max_connections = get("max_connections", "256", &|s| parse_count(s).map(drop));
    let error_limit = get("error_limit", "20", &|s| parse_count(s).map(drop));
    let idle_timeout = get("idle_timeout", "300s", &|s| parse_duration(s).map(drop));
    let store_timeout = get("store_timeout", "60s", &|s| parse_duration(s).map(drop));
    let drain_timeout = get("drain_timeout", "30s", &|s| parse_duration(s).map(drop));
    let xforward = get("xforward_networks", "127.0.0.0/8, ::1/128", &|s| {
        parse_networks(s).map(drop)
    });
    let relay = get("relay", "127.0.0.1:10026", &|s| parse_relay(s).map(drop));
    let log_format = get("log_format", "text", &|s| parse_log_format(s).map(drop));
    if problems.len() > before {
        return None;
    }
    // Every value below was checked by its parser above.
    Some(ServerSettings {
        listen: listen.parse().ok()?,
        hostname,
        max_message_size: parse_size(&max_message_size).ok()?,
        max_recipients: parse_count(&max_recipients).ok()?,
        max_connections: parse_count(&max_connections).ok()?,
        error_limit: parse_count(&error_limit).ok()?,
        idle_timeout: parse_duration(&idle_timeout).ok()?,
        store_timeout: parse_duration(&store_timeout).ok()?,
        drain_timeout: parse_duration(&drain_timeout).ok()?,
        xforward_networks: parse_networks(&xforward).ok()?,
        relay: parse_relay(&relay).ok()?,
        log_format: parse_log_format(&log_format).ok()?,
    })
}

fn validate_destination(
    name: &str,
    own: &RawSection,
    defaults: &RawSection,
    problems: &mut Vec<String>,
) -> Option<DestinationConfig> {
    let before = problems.len();
    // Effective options: DEFAULT's, overridden by the section's own; `recipients` is not
    // inherited, so that a section never silently takes over DEFAULT's addresses.
    let mut options: BTreeMap<&str, &RawValue> = defaults
        .iter()
        .filter(|(k, _)| k.as_str() != "recipients")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    options.extend(own.iter().map(|(k, v)| (k.as_str(), v)));

    for (option, value) in &options {
        let known = DESTINATION_OPTIONS.contains(option)
            || OBJECT_STORE_OPTIONS.contains(option)
            || option.starts_with("os_options_");
        if !known {
            problems.push(problem(
                &value.origin,
                format!(
                    "unknown option for destination [{name}]; known: {}",
                    DESTINATION_OPTIONS.join(", ")
                ),
            ));
        }
    }

    let recipients = match options.get("recipients") {
        None => {
            problems.push(format!(
                "[{name}]: destination has no recipients: set {ENV_PREFIX}{}_RECIPIENTS or `recipients` in its section",
                name.to_ascii_uppercase()
            ));
            Vec::new()
        }
        Some(v) => match parse_recipients(&v.value) {
            Ok(list) => list,
            Err(e) => {
                problems.push(problem(&v.origin, e));
                Vec::new()
            }
        },
    };

    let implied = if options.contains_key("authurl") {
        "swift"
    } else {
        "maildir"
    };
    let backend_name = options
        .get("backend")
        .map(|v| v.value.trim().to_ascii_lowercase())
        .unwrap_or_else(|| implied.to_string());
    let backend = match backend_name.as_str() {
        "maildir" => {
            if let Some(v) = options
                .iter()
                .find(|(k, _)| OBJECT_STORE_OPTIONS.contains(k) || k.starts_with("os_options_"))
            {
                problems.push(problem(
                    &v.1.origin,
                    "is an object-store option, but this destination's backend is maildir",
                ));
            }
            let path = options
                .get("path")
                .map(|v| v.value.trim().to_string())
                .unwrap_or_else(|| "./maildir".to_string());
            if path.is_empty() {
                let origin = &options["path"].origin;
                problems.push(problem(origin, "must not be empty"));
            }
            Some(Backend::Maildir { path: path.into() })
        }
        other => {
            let origin = options
                .get("backend")
                .or_else(|| options.get("authurl"))
                .map(|v| v.origin.to_string())
                .unwrap_or_else(|| format!("[{name}]"));
            problems.push(format!(
                "{origin}: backend {other:?} is not available in this version (known: maildir)"
            ));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(DestinationConfig {
        name: name.to_string(),
        recipients,
        backend: backend?,
    })
}

/// Two destinations claiming the same address, domain or `*` is ambiguous: refuse it.
fn check_overlaps(destinations: &[DestinationConfig], problems: &mut Vec<String>) {
    let mut owner: HashMap<&RecipientPattern, &str> = HashMap::new();
    for dest in destinations {
        for pattern in &dest.recipients {
            if let Some(first) = owner.insert(pattern, &dest.name) {
                if first != dest.name {
                    problems.push(format!(
                        "recipient {pattern} is listed by both [{first}] and [{}]",
                        dest.name
                    ));
                }
            }
        }
    }
}

/// Parses a comma-separated `recipients` list.
pub fn parse_recipients(list: &str) -> Result<Vec<RecipientPattern>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let lower = item.to_lowercase();
        let pattern = if lower == "*" {
            RecipientPattern::Any
        } else if let Some(domain) = lower.strip_prefix('@') {
            if domain.is_empty() || domain.contains('@') || domain.contains(char::is_whitespace) {
                return Err(format!("{item:?} is not a domain such as @example.com"));
            }
            RecipientPattern::Domain(domain.to_string())
        } else {
            match lower.rsplit_once('@') {
                Some((local, domain))
                    if !local.is_empty()
                        && !domain.is_empty()
                        && !lower.contains(char::is_whitespace)
                        && !lower.contains(['<', '>']) =>
                {
                    RecipientPattern::Address(lower.clone())
                }
                _ => {
                    return Err(format!(
                        "{item:?} is not an address (user@example.com), a domain (@example.com) or *"
                    ));
                }
            }
        };
        if !out.contains(&pattern) {
            out.push(pattern);
        }
    }
    if out.is_empty() {
        return Err("is empty: list addresses, @domains or *".to_string());
    }
    Ok(out)
}

/// Parses a byte size: a number with an optional K, M or G suffix (binary units; `KiB`,
/// `MB` and the like are read the same way).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = s[digits.len()..].to_ascii_lowercase();
    let mult: usize = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?} is not a size such as 52428800 or 50M")),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 52428800 or 50M"))?;
    match n.checked_mul(mult) {
        Some(0) | None => Err(format!("{s:?} must be between 1 byte and 16 EiB")),
        Some(v) => Ok(v),
    }
}

/// Parses a positive count.
pub fn parse_count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

/// Parses a duration: whole seconds, or humantime such as `90s`, `5m`, `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|_| format!("{s:?} is not a duration such as 60 or 60s or 5m"))?,
    };
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

/// Parses a comma- or space-separated list of networks (`10.0.0.0/8`) or single addresses.
pub fn parse_networks(s: &str) -> Result<Vec<IpNet>, String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not a network such as 127.0.0.0/8 or ::1"))
        })
        .collect()
}

/// Parses the `relay` setting: `address:port`, or `off`/`no`/`none` to refuse recipients no
/// destination takes.
pub fn parse_relay(s: &str) -> Result<Option<SocketAddr>, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "no" | "none" | "false" => Ok(None),
        addr => addr
            .parse()
            .map(Some)
            .map_err(|_| format!("{s:?} is not an address:port such as 127.0.0.1:10026, nor off")),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not a log format: use text or json")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("swiftdrop.ini");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        Config::from_sources(file.map(|_| path.as_path()), env(vars))
    }

    #[test]
    fn nothing_configured_is_a_catch_all_maildir() {
        let c = load(None, &[("HOME", "/root")]).unwrap();
        assert!(c.embedded_default);
        assert_eq!(c.destinations.len(), 1);
        assert_eq!(c.destinations[0].recipients, vec![RecipientPattern::Any]);
        assert_eq!(
            c.destinations[0].backend,
            Backend::Maildir {
                path: "./maildir".into()
            }
        );
        assert_eq!(c.server.listen, "127.0.0.1:10025".parse().unwrap());
        assert_eq!(c.server.max_message_size, 50 << 20);
        assert_eq!(c.server.max_recipients, 1000);
        assert_eq!(c.server.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.server.store_timeout, Duration::from_secs(60));
        assert_eq!(c.server.relay, Some("127.0.0.1:10026".parse().unwrap()));
    }

    #[test]
    fn env_sections_inherit_default_but_not_its_recipients() {
        let c = load(
            None,
            &[
                ("SWIFTDROP_DEFAULT_PATH", "/srv/mail"),
                ("SWIFTDROP_DEFAULT_RECIPIENTS", "ops@example.com"),
                (
                    "SWIFTDROP_ALERTS_RECIPIENTS",
                    "Alerts@Example.com, @alerts.example.com",
                ),
                ("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE", "10M"),
            ],
        )
        .unwrap();
        assert!(!c.embedded_default);
        assert_eq!(c.server.max_message_size, 10 << 20);
        let names: Vec<_> = c.destinations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["DEFAULT", "ALERTS"]);
        let alerts = &c.destinations[1];
        assert_eq!(
            alerts.recipients,
            vec![
                RecipientPattern::Address("alerts@example.com".into()),
                RecipientPattern::Domain("alerts.example.com".into())
            ]
        );
        assert_eq!(
            alerts.backend,
            Backend::Maildir {
                path: "/srv/mail".into()
            }
        );
    }

    #[test]
    fn env_overrides_the_file_and_file_order_is_kept() {
        let c = load(
            Some("[DEFAULT]\npath = /a\n\n[zeta]\nrecipients = z@example.com\n\n[alpha]\nrecipients = a@example.com\npath = /b\n"),
            &[("SWIFTDROP_ALPHA_PATH", "/c")],
        )
        .unwrap();
        let names: Vec<_> = c.destinations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        assert_eq!(
            c.destinations[0].backend,
            Backend::Maildir { path: "/a".into() }
        );
        assert_eq!(
            c.destinations[1].backend,
            Backend::Maildir { path: "/c".into() }
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let err = load(None, &[("SWIFTDROP_SERVER_MAX_RECIPIENTS", "lots")]).unwrap_err();
        assert_eq!(
            err.problems,
            ["SWIFTDROP_SERVER_MAX_RECIPIENTS: \"lots\" is not a positive whole number"]
        );
        let err = load(None, &[("SWIFTDROP_SERVER_LISTEN", "nowhere")]).unwrap_err();
        assert!(
            err.problems[0].starts_with("SWIFTDROP_SERVER_LISTEN: "),
            "{err}"
        );
        let err = load(None, &[("SWIFTDROP_X_RECIPIENTS", "not an address")]).unwrap_err();
        assert!(
            err.problems[0].starts_with("SWIFTDROP_X_RECIPIENTS: "),
            "{err}"
        );
        let err = load(None, &[("SWIFTDROP_NOSECTION", "1")]).unwrap_err();
        assert!(
            err.problems[0].contains("expected SWIFTDROP_<SECTION>_<OPTION>"),
            "{err}"
        );
    }

    #[test]
    fn errors_name_the_file_line() {
        let err = load(
            Some("[server]\nlisten = 127.0.0.1:1\n# comment\nidle_timeout = soon\n\n[box]\nrecipients = a@example.com\nflavour = vanilla\n"),
            &[],
        )
        .unwrap_err();
        let path_end = "swiftdrop.ini:";
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].contains(&format!("{path_end}4: [server] idle_timeout: ")),
            "{err}"
        );
        assert!(
            err.problems[1].contains(&format!("{path_end}8: [box] flavour: unknown option")),
            "{err}"
        );
    }

    #[test]
    fn ambiguous_and_missing_recipients_are_refused() {
        let err = load(
            None,
            &[
                ("SWIFTDROP_A_RECIPIENTS", "x@example.com"),
                ("SWIFTDROP_B_RECIPIENTS", "X@example.com"),
                ("SWIFTDROP_C_PATH", "/tmp/c"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems
                .iter()
                .any(|p| p.contains("[C]: destination has no recipients"))
        );
        assert!(
            err.problems
                .iter()
                .any(|p| p.contains("listed by both [A] and [B]"))
        );
    }

    #[test]
    fn swift_options_get_a_precise_error_for_now() {
        let err = load(
            None,
            &[
                ("SWIFTDROP_DEFAULT_RECIPIENTS", "a@example.com"),
                (
                    "SWIFTDROP_DEFAULT_AUTHURL",
                    "http://127.0.0.1:8080/auth/v1.0",
                ),
            ],
        )
        .unwrap_err();
        assert!(
            err.problems[0].contains("backend \"swift\" is not available"),
            "{err}"
        );
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_networks("10.0.0.0/8, ::1").unwrap().len(), 2);
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert_eq!(parse_relay("OFF"), Ok(None));
        assert!(parse_relay("somewhere").is_err());
    }
}
