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
//! destination when it has `recipients`; `[QUEUE]` holds the queue's settings ([`queue`]);
//! every other section is a destination.

pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use queue::{LOCK_VARIABLE, LockSetting, QueueSettings, RedisUrl};
use queue::{QUEUE_SECTION, validate_queue};

/// The section that holds global settings.
pub const SERVER_SECTION: &str = "SERVER";
/// The section whose options every destination inherits.
pub const DEFAULT_SECTION: &str = "DEFAULT";
/// Prefix of every configuration variable.
pub const ENV_PREFIX: &str = "SWIFTDROP_";

/// Options of the `[SERVER]` section, with their defaults, as documented in README.rst.
/// What a delivery may take beyond `store_timeout`: its rollback (5 s) and its reply.
/// Shutdown stops starting deliveries this long plus `store_timeout` before `drain_timeout`
/// ends, so that none is cut off halfway.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(10);

const SERVER_OPTIONS: &[&str] = &[
    "listen",
    "hostname",
    "max_message_size",
    "max_recipients",
    "max_connections",
    "error_limit",
    "idle_timeout",
    "data_timeout",
    "session_timeout",
    "store_timeout",
    "drain_timeout",
    "xforward_networks",
    "relay",
    "relay_networks",
    "log_format",
    "startup_check",
    "stream_threshold",
    "max_memory",
    "spool_dir",
];

/// Options every destination understands.
const COMMON_OPTIONS: &[&str] = &["recipients", "backend"];
/// Options of a Maildir destination.
const MAILDIR_OPTIONS: &[&str] = &["path"];
/// Options of a Swift destination (the original SwiftDrop's names), besides `os_options_*`.
const SWIFT_OPTIONS: &[&str] = &[
    "container",
    "auth_version",
    "authurl",
    "user",
    "key",
    "tenant_name",
    "timeout",
    "create_container",
];
/// The `os_options_*` a Swift destination understands (Keystone v3 settings).
const SWIFT_OS_OPTIONS: &[&str] = &[
    "user_domain_name",
    "project_name",
    "project_domain_name",
    "project_id",
    "region_name",
    "interface",
    "endpoint_type",
    "service_type",
    "object_storage_url",
];
/// Options of an S3 destination.
const S3_OPTIONS: &[&str] = &[
    "bucket",
    "container",
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "path_style",
    "allow_http",
    "timeout",
    "create_container",
];
/// Timeout of one HTTP request to an object store when `timeout` is not set.
const DEFAULT_REQUEST_TIMEOUT: &str = "20s";

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
    /// How workers claim stored mail (`[QUEUE]`).
    pub queue: QueueSettings,
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
    /// Longest time from DATA (or the first BDAT) to the end of the message's data
    /// (`data_timeout`, default 10 min), so that a trickling client cannot hold a slot.
    pub data_timeout: Duration,
    /// Longest time of a whole session (`session_timeout`, default 1 h).
    pub session_timeout: Duration,
    /// Deadline for confirming every write of one message (`store_timeout`, default 60 s).
    pub store_timeout: Duration,
    /// How long shutdown waits for transactions in flight (`drain_timeout`, default
    /// `store_timeout` + [`DELIVERY_GRACE`], at least 75 s; never less than that sum).
    pub drain_timeout: Duration,
    /// Clients allowed to send XFORWARD (`xforward_networks`, default loopback).
    pub xforward_networks: Vec<IpNet>,
    /// Where recipients that no destination takes are relayed (`relay`, default
    /// `127.0.0.1:10026`, Postfix's after-queue smtpd); `None` (`relay = off`) refuses them.
    pub relay: Option<SocketAddr>,
    /// Clients whose recipients that no destination takes may be relayed (`relay_networks`,
    /// default loopback, where Postfix connects from); others get `550 5.7.1` for them.
    pub relay_networks: Vec<IpNet>,
    /// Log line format (`log_format`: `text` or `json`).
    pub log_format: LogFormat,
    /// Whether `serve` checks every destination before it listens (`startup_check`,
    /// default yes).
    pub startup_check: bool,
    /// Messages larger than this are streamed to the stores in parts while DATA arrives
    /// (`stream_threshold`, default 8 MiB).
    pub stream_threshold: usize,
    /// Message bytes all sessions may hold in memory at once (`max_memory`, default
    /// 192 MiB, for a 256 MiB pod); past it, new transactions get `452 4.3.1`
    /// ([`crate::memory`]).
    pub max_memory: usize,
    /// Where relayed messages past `stream_threshold` wait for the relay, in files that have
    /// no name (`spool_dir`, default the system's temporary directory, `$TMPDIR` or `/tmp`).
    pub spool_dir: PathBuf,
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
    /// An OpenStack Swift container (native API).
    Swift(SwiftConfig),
    /// An S3 bucket (AWS or any S3-compatible store).
    S3(S3Config),
}

/// A password, key or token: never shown by `Debug` or `Display`, so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A Swift destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwiftConfig {
    /// Container that holds the objects (`container`).
    pub container: String,
    /// How to get a token (`auth_version`, `authurl`, `user`, `key`, ...).
    pub auth: SwiftAuth,
    /// Timeout of one HTTP request (`timeout`, default 20 s).
    pub timeout: Duration,
    /// Create the container at start when it is missing (`create_container`, default no).
    pub create_container: bool,
}

/// Swift credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwiftAuth {
    /// Auth v1 (tempauth, swauth): `GET authurl` with `X-Auth-User`/`X-Auth-Key`.
    V1 {
        /// Auth endpoint, such as `http://127.0.0.1:8080/auth/v1.0`.
        authurl: String,
        /// User, `account:user` for tempauth.
        user: String,
        /// Key (password).
        key: Secret,
        /// Joined to `user` as `tenant:user` when `user` has no account part.
        tenant_name: Option<String>,
    },
    /// Keystone v3 password authentication.
    V3(KeystoneV3),
}

impl SwiftAuth {
    /// The identity endpoint.
    pub fn authurl(&self) -> &str {
        match self {
            SwiftAuth::V1 { authurl, .. } => authurl,
            SwiftAuth::V3(v3) => &v3.authurl,
        }
    }
}

/// Keystone v3 settings (`os_options_*` as in python-swiftclient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeystoneV3 {
    /// Identity endpoint, such as `https://keystone.example:5000/v3`.
    pub authurl: String,
    /// User name.
    pub user: String,
    /// Password.
    pub key: Secret,
    /// Domain of the user (`os_options_user_domain_name`, default `Default`).
    pub user_domain_name: String,
    /// Project to scope the token to (`os_options_project_name`, or `tenant_name`).
    pub project_name: Option<String>,
    /// Project by id instead of name (`os_options_project_id`).
    pub project_id: Option<String>,
    /// Domain of the project (`os_options_project_domain_name`, default `Default`).
    pub project_domain_name: String,
    /// Region of the object-store endpoint (`os_options_region_name`; any when unset).
    pub region_name: Option<String>,
    /// Endpoint interface: `public` (default), `internal` or `admin`
    /// (`os_options_interface` or `os_options_endpoint_type`).
    pub interface: String,
    /// Catalog service type (`os_options_service_type`, default `object-store`).
    pub service_type: String,
    /// Storage URL to use instead of the catalog's (`os_options_object_storage_url`).
    pub object_storage_url: Option<String>,
}

/// An S3 destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket (`bucket`, or `container` as for Swift).
    pub bucket: String,
    /// Endpoint of an S3-compatible store (`endpoint`); AWS when unset.
    pub endpoint: Option<String>,
    /// Region used for signing (`region`, default `us-east-1`).
    pub region: String,
    /// Access key id (`access_key_id`).
    pub access_key_id: String,
    /// Secret access key (`secret_access_key`).
    pub secret_access_key: Secret,
    /// Path-style requests, `endpoint/bucket/key` (`path_style`, default yes with an
    /// `endpoint`, no for AWS).
    pub path_style: bool,
    /// Allow a plain `http://` endpoint (`allow_http`, default no).
    pub allow_http: bool,
    /// Timeout of one HTTP request (`timeout`, default 20 s).
    pub timeout: Duration,
    /// Create the bucket at start when it is missing (`create_container`, default no).
    pub create_container: bool,
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

/// The variable that names a fail-point for crash tests (see [`crate::failpoint`]); it is
/// not a configuration option.
pub const FAILPOINT_VARIABLE: &str = "SWIFTDROP_FAILPOINT";

/// The fail-point named by `SWIFTDROP_FAILPOINT`, if any.
pub fn failpoint() -> Option<String> {
    std::env::var(FAILPOINT_VARIABLE)
        .ok()
        .filter(|s| !s.is_empty())
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
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != FAILPOINT_VARIABLE)
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
    let queue = validate_queue(raw.section(QUEUE_SECTION).unwrap_or(&empty), problems);
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
        if [SERVER_SECTION, DEFAULT_SECTION, QUEUE_SECTION]
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s))
        {
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
    if let Some(server) = &server {
        check_memory(server, destinations.len(), problems);
    }
    Some(Config {
        server: server?,
        destinations,
        embedded_default,
        queue,
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
    let data_timeout = get("data_timeout", "10min", &|s| parse_duration(s).map(drop));
    let session_timeout = get("session_timeout", "1h", &|s| parse_duration(s).map(drop));
    let store_timeout = get("store_timeout", "60s", &|s| parse_duration(s).map(drop));
    let drain_timeout = get("drain_timeout", "", &|s| parse_duration(s).map(drop));
    let xforward = get("xforward_networks", "127.0.0.0/8, ::1/128", &|s| {
        parse_networks(s).map(drop)
    });
    let relay = get("relay", "127.0.0.1:10026", &|s| parse_relay(s).map(drop));
    let relay_networks = get("relay_networks", "127.0.0.0/8, ::1/128", &|s| {
        parse_networks(s).map(drop)
    });
    let log_format = get("log_format", "text", &|s| parse_log_format(s).map(drop));
    let startup_check = get("startup_check", "yes", &|s| parse_bool(s).map(drop));
    let stream_threshold = get("stream_threshold", "8MiB", &|s| parse_size(s).map(drop));
    let max_memory = get("max_memory", "192MiB", &|s| parse_size(s).map(drop));
    let system_tmp = std::env::temp_dir().to_string_lossy().into_owned();
    let spool_dir = get("spool_dir", &system_tmp, &|s| {
        if Path::new(s).is_dir() {
            Ok(())
        } else {
            Err(format!("{s:?} is not a directory"))
        }
    });
    if problems.len() > before {
        return None;
    }
    // Shutdown lets every delivery that began end with its reply or its rollback.
    let store_timeout = parse_duration(&store_timeout).ok()?;
    let needed = store_timeout + DELIVERY_GRACE;
    let drain_timeout = match section.get("drain_timeout") {
        None => needed.max(Duration::from_secs(75)),
        Some(set) => {
            let drain = parse_duration(&drain_timeout).ok()?;
            if drain < needed {
                problems.push(problem(
                    &set.origin,
                    format!(
                        "drain_timeout {drain:?} cannot cover store_timeout {store_timeout:?} plus {DELIVERY_GRACE:?} of rollback: raise drain_timeout to at least {needed:?} or lower store_timeout"
                    ),
                ));
                return None;
            }
            drain
        }
    };
    // Every value below was checked by its parser above.
    Some(ServerSettings {
        listen: listen.parse().ok()?,
        hostname,
        max_message_size: parse_size(&max_message_size).ok()?,
        max_recipients: parse_count(&max_recipients).ok()?,
        max_connections: parse_count(&max_connections).ok()?,
        error_limit: parse_count(&error_limit).ok()?,
        idle_timeout: parse_duration(&idle_timeout).ok()?,
        data_timeout: parse_duration(&data_timeout).ok()?,
        session_timeout: parse_duration(&session_timeout).ok()?,
        store_timeout,
        drain_timeout,
        xforward_networks: parse_networks(&xforward).ok()?,
        relay: parse_relay(&relay).ok()?,
        relay_networks: parse_networks(&relay_networks).ok()?,
        log_format: parse_log_format(&log_format).ok()?,
        startup_check: parse_bool(&startup_check).ok()?,
        stream_threshold: parse_size(&stream_threshold).ok()?,
        max_memory: parse_size(&max_memory).ok()?,
        spool_dir: PathBuf::from(spool_dir),
    })
}

/// `max_memory` must hold at least one transaction at its largest, or a large message could
/// never be accepted.
fn check_memory(server: &ServerSettings, destinations: usize, problems: &mut Vec<String>) {
    let peak = crate::memory::transaction_peak(server.stream_threshold, destinations);
    if server.max_memory < peak {
        problems.push(format!(
            "[{SERVER_SECTION}] max_memory ({ENV_PREFIX}{SERVER_SECTION}_MAX_MEMORY) is {} bytes but one message may need {peak}: its buffer up to stream_threshold, then 15 MiB of upload parts for each of {destinations} destination(s) when it streams; raise max_memory or lower stream_threshold",
            server.max_memory
        ));
    }
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

    // As in the original SwiftDrop, `authurl` alone makes a destination a Swift one.
    let implied = if options.contains_key("authurl") {
        "swift"
    } else {
        "maildir"
    };
    let backend_name = options
        .get("backend")
        .map(|v| v.value.trim().to_ascii_lowercase())
        .unwrap_or_else(|| implied.to_string());
    let own_options: &[&str] = match backend_name.as_str() {
        "maildir" => MAILDIR_OPTIONS,
        "swift" => SWIFT_OPTIONS,
        "s3" => S3_OPTIONS,
        other => {
            let origin = &options["backend"].origin;
            problems.push(problem(
                origin,
                format!("{other:?} is not a backend: use maildir, swift or s3"),
            ));
            return None;
        }
    };
    for (option, value) in &options {
        let os_option = option.strip_prefix("os_options_");
        let known = COMMON_OPTIONS.contains(option)
            || own_options.contains(option)
            || (backend_name == "swift"
                && os_option.is_some_and(|o| SWIFT_OS_OPTIONS.contains(&o)));
        // DEFAULT serves destinations of every backend: an inherited option that belongs
        // to another backend is not this destination's concern.
        let inherited = !own.contains_key(*option);
        let known_anywhere = MAILDIR_OPTIONS.contains(option)
            || SWIFT_OPTIONS.contains(option)
            || S3_OPTIONS.contains(option)
            || os_option.is_some_and(|o| SWIFT_OS_OPTIONS.contains(&o));
        if known || (inherited && known_anywhere) {
            continue;
        }
        let message = if backend_name == "swift" && os_option.is_some() {
            format!(
                "unknown Keystone option; known: {}",
                SWIFT_OS_OPTIONS
                    .iter()
                    .map(|o| format!("os_options_{o}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "not an option of a {backend_name} destination [{name}]; known: {}",
                COMMON_OPTIONS
                    .iter()
                    .chain(own_options)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        problems.push(problem(&value.origin, message));
    }

    let options = DestinationOptions {
        name,
        options: &options,
    };
    let backend = match backend_name.as_str() {
        "maildir" => {
            let path = options.text("path").unwrap_or("./maildir");
            if path.is_empty() {
                problems.push(options.problem("path", "must not be empty"));
            }
            Some(Backend::Maildir { path: path.into() })
        }
        "swift" => swift_backend(&options, problems).map(Backend::Swift),
        _ => s3_backend(&options, problems).map(Backend::S3),
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

/// A destination's effective options, with helpers that report problems by origin.
struct DestinationOptions<'a> {
    name: &'a str,
    options: &'a BTreeMap<&'a str, &'a RawValue>,
}

impl DestinationOptions<'_> {
    /// The trimmed value of `option`, if set.
    fn text(&self, option: &str) -> Option<&str> {
        self.options.get(option).map(|v| v.value.trim())
    }

    /// The value of `option`, which must be set and not empty.
    fn required(&self, option: &str, what: &str, problems: &mut Vec<String>) -> Option<String> {
        match self.text(option) {
            Some(v) if !v.is_empty() => Some(v.to_string()),
            Some(_) => {
                problems.push(self.problem(option, format!("must not be empty: {what}")));
                None
            }
            None => {
                problems.push(format!(
                    "[{}]: {option} is missing: {what} (set {ENV_PREFIX}{}_{} or `{option}` in its section)",
                    self.name,
                    self.name.to_ascii_uppercase(),
                    option.to_ascii_uppercase()
                ));
                None
            }
        }
    }

    /// `option` parsed by `parse`, or `default` when unset.
    fn parsed<T>(
        &self,
        option: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
        problems: &mut Vec<String>,
    ) -> Option<T> {
        match self.text(option) {
            None => Some(default),
            Some(v) => match parse(v) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(self.problem(option, e));
                    None
                }
            },
        }
    }

    /// A problem with `option`, naming where it was set.
    fn problem(&self, option: &str, message: impl fmt::Display) -> String {
        match self.options.get(option) {
            Some(v) => problem(&v.origin, message),
            None => format!("[{}]: {option}: {message}", self.name),
        }
    }
}

/// An `http://` or `https://` URL.
fn parse_url(s: &str) -> Result<String, String> {
    match s.split_once("://") {
        Some(("http" | "https", rest))
            if !rest.is_empty() && !rest.contains(char::is_whitespace) =>
        {
            Ok(s.to_string())
        }
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
}

fn swift_backend(options: &DestinationOptions, problems: &mut Vec<String>) -> Option<SwiftConfig> {
    let before = problems.len();
    let container = options.required("container", "the Swift container to store into", problems);
    let authurl = options.required("authurl", "the identity endpoint", problems);
    let authurl = authurl.and_then(|u| match parse_url(&u) {
        Ok(u) => Some(u),
        Err(e) => {
            problems.push(options.problem("authurl", e));
            None
        }
    });
    let user = options.required("user", "the Swift user", problems);
    let key = options.required("key", "the Swift user's key or password", problems);
    // Without auth_version, an authurl ending in /v3 means Keystone v3, anything else v1.
    let implied = match &authurl {
        Some(u) if u.trim_end_matches('/').ends_with("/v3") => "3",
        _ => "1",
    };
    let version = options.parsed(
        "auth_version",
        implied.to_string(),
        |s| match s.trim_start_matches('v') {
            "1" | "1.0" => Ok("1".to_string()),
            "3" | "3.0" => Ok("3".to_string()),
            _ => Err(format!("{s:?} is not an auth version: use 1 or 3")),
        },
        problems,
    );
    let timeout = options.parsed(
        "timeout",
        parse_duration(DEFAULT_REQUEST_TIMEOUT).ok()?,
        parse_duration,
        problems,
    );
    let create_container = options.parsed("create_container", false, parse_bool, problems);
    let tenant_name = options.text("tenant_name").filter(|s| !s.is_empty());
    let os = |o: &str| {
        options
            .text(&format!("os_options_{o}"))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let auth = match version.as_deref() {
        Some("3") => {
            let project_name = os("project_name").or(tenant_name.map(str::to_string));
            let project_id = os("project_id");
            if project_name.is_none() && project_id.is_none() {
                problems.push(format!(
                    "[{}]: Keystone v3 needs a project: set os_options_project_name (or tenant_name, or os_options_project_id)",
                    options.name
                ));
            }
            let interface = os("interface")
                .or(os("endpoint_type"))
                .unwrap_or_else(|| "public".into());
            let interface = interface.trim_end_matches("URL").to_ascii_lowercase();
            if !["public", "internal", "admin"].contains(&interface.as_str()) {
                problems.push(options.problem(
                    "os_options_interface",
                    format!("{interface:?} is not an interface: use public, internal or admin"),
                ));
            }
            if let Some(url) = os("object_storage_url") {
                if let Err(e) = parse_url(&url) {
                    problems.push(options.problem("os_options_object_storage_url", e));
                }
            }
            SwiftAuth::V3(KeystoneV3 {
                authurl: authurl.clone().unwrap_or_default(),
                user: user.clone().unwrap_or_default(),
                key: Secret::new(key.clone().unwrap_or_default()),
                user_domain_name: os("user_domain_name").unwrap_or_else(|| "Default".into()),
                project_name,
                project_id,
                project_domain_name: os("project_domain_name").unwrap_or_else(|| "Default".into()),
                region_name: os("region_name"),
                interface,
                service_type: os("service_type").unwrap_or_else(|| "object-store".into()),
                object_storage_url: os("object_storage_url"),
            })
        }
        _ => SwiftAuth::V1 {
            authurl: authurl.clone().unwrap_or_default(),
            user: user.clone().unwrap_or_default(),
            key: Secret::new(key.clone().unwrap_or_default()),
            tenant_name: tenant_name.map(str::to_string),
        },
    };
    if problems.len() > before {
        return None;
    }
    Some(SwiftConfig {
        container: container?,
        auth,
        timeout: timeout?,
        create_container: create_container?,
    })
}

fn s3_backend(options: &DestinationOptions, problems: &mut Vec<String>) -> Option<S3Config> {
    let before = problems.len();
    let bucket = if options.text("bucket").is_some() {
        options.required("bucket", "the S3 bucket to store into", problems)
    } else if options.text("container").is_some() {
        options.required("container", "the S3 bucket to store into", problems)
    } else {
        options.required("bucket", "the S3 bucket to store into", problems)
    };
    let endpoint = options.text("endpoint").filter(|s| !s.is_empty());
    if let Some(e) = endpoint {
        if let Err(msg) = parse_url(e) {
            problems.push(options.problem("endpoint", msg));
        }
    }
    let access_key_id = options.required("access_key_id", "the S3 access key id", problems);
    let secret = options.required("secret_access_key", "the S3 secret access key", problems);
    let path_style = options.parsed("path_style", endpoint.is_some(), parse_bool, problems);
    let allow_http = options.parsed("allow_http", false, parse_bool, problems);
    if let (Some(e), Some(false)) = (endpoint, allow_http) {
        if e.starts_with("http://") {
            problems.push(options.problem(
                "endpoint",
                "is plain http://: set allow_http = yes to allow it, or use https://",
            ));
        }
    }
    let timeout = options.parsed(
        "timeout",
        parse_duration(DEFAULT_REQUEST_TIMEOUT).ok()?,
        parse_duration,
        problems,
    );
    let create_container = options.parsed("create_container", false, parse_bool, problems);
    if problems.len() > before {
        return None;
    }
    Some(S3Config {
        bucket: bucket?,
        endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
        region: options.text("region").unwrap_or("us-east-1").to_string(),
        access_key_id: access_key_id?,
        secret_access_key: Secret::new(secret?),
        path_style: path_style?,
        allow_http: allow_http?,
        timeout: timeout?,
        create_container: create_container?,
    })
}

/// Parses yes/no, true/false, on/off, 1/0.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("{s:?} is not yes or no")),
    }
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
    // Durations are added to clocks; a century is beyond any sensible setting and keeps
    // every such sum far from overflowing.
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than 100 years"));
    }
    Ok(d)
}

/// The longest duration any setting or option accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

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
    fn drain_timeout_covers_a_delivery_and_its_rollback() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_secs(75));
        // Unset, it grows with store_timeout.
        let c = load(None, &[("SWIFTDROP_SERVER_STORE_TIMEOUT", "120s")]).unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_secs(130));
        // Set too short, it is refused, naming the settings to change.
        let err = load(None, &[("SWIFTDROP_SERVER_DRAIN_TIMEOUT", "30s")]).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let text = &err.problems[0];
        assert!(
            text.starts_with("SWIFTDROP_SERVER_DRAIN_TIMEOUT: "),
            "{text}"
        );
        assert!(
            text.contains("at least 70s") && text.contains("store_timeout"),
            "{text}"
        );
        let c = load(
            None,
            &[
                ("SWIFTDROP_SERVER_STORE_TIMEOUT", "5s"),
                ("SWIFTDROP_SERVER_DRAIN_TIMEOUT", "15s"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.drain_timeout, Duration::from_secs(15));
    }

    #[test]
    fn max_memory_must_hold_one_message_at_its_largest() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.server.max_memory, 192 << 20);
        assert_eq!(c.server.spool_dir, std::env::temp_dir());
        // 8 MiB buffer + 64 KiB + 15 MiB of parts for each of two destinations.
        let two = [
            ("SWIFTDROP_A_RECIPIENTS", "a@example.com"),
            ("SWIFTDROP_A_PATH", "/srv/a"),
            ("SWIFTDROP_B_RECIPIENTS", "b@example.com"),
            ("SWIFTDROP_B_PATH", "/srv/b"),
        ];
        let fits = [&two[..], &[("SWIFTDROP_SERVER_MAX_MEMORY", "39MiB")]].concat();
        assert_eq!(load(None, &fits).unwrap().server.max_memory, 39 << 20);
        let short = [&two[..], &[("SWIFTDROP_SERVER_MAX_MEMORY", "38MiB")]].concat();
        let err = load(None, &short).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let text = &err.problems[0];
        assert!(
            text.contains("SWIFTDROP_SERVER_MAX_MEMORY") && text.contains("2 destination(s)"),
            "{text}"
        );
        let err = load(
            None,
            &[("SWIFTDROP_SERVER_SPOOL_DIR", "/nonexistent/spool")],
        )
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("SWIFTDROP_SERVER_SPOOL_DIR: "),
            "{err}"
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
            err.problems[1].contains(&format!(
                "{path_end}8: [box] flavour: not an option of a maildir destination"
            )),
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
    fn original_swiftdrop_environment_is_understood() {
        let config = load(
            None,
            &[
                ("SWIFTDROP_DEFAULT_AUTH_VERSION", "3"),
                (
                    "SWIFTDROP_DEFAULT_AUTHURL",
                    "https://keystone.example:5000/v3",
                ),
                ("SWIFTDROP_DEFAULT_USER", "mailer"),
                ("SWIFTDROP_DEFAULT_KEY", "s3cret"),
                ("SWIFTDROP_DEFAULT_OS_OPTIONS_USER_DOMAIN_NAME", "users"),
                ("SWIFTDROP_DEFAULT_OS_OPTIONS_PROJECT_NAME", "mail"),
                ("SWIFTDROP_DEFAULT_OS_OPTIONS_REGION_NAME", "RegionTwo"),
                ("SWIFTDROP_DEFAULT_TIMEOUT", "15"),
                ("SWIFTDROP_OPS_RECIPIENTS", "ops@example.com"),
                ("SWIFTDROP_OPS_CONTAINER", "ops-mail"),
                ("SWIFTDROP_LEGACY_RECIPIENTS", "@legacy.example"),
                ("SWIFTDROP_LEGACY_CONTAINER", "old"),
                ("SWIFTDROP_LEGACY_AUTH_VERSION", "1"),
                (
                    "SWIFTDROP_LEGACY_AUTHURL",
                    "http://127.0.0.1:8080/auth/v1.0",
                ),
                ("SWIFTDROP_LEGACY_TENANT_NAME", "test"),
            ],
        )
        .unwrap();
        let ops = config
            .destinations
            .iter()
            .find(|d| d.name == "OPS")
            .unwrap();
        let Backend::Swift(swift) = &ops.backend else {
            panic!("{:?}", ops.backend)
        };
        assert_eq!(swift.container, "ops-mail");
        assert_eq!(swift.timeout, Duration::from_secs(15));
        let SwiftAuth::V3(v3) = &swift.auth else {
            panic!("{:?}", swift.auth)
        };
        assert_eq!(v3.user_domain_name, "users");
        assert_eq!(v3.project_name.as_deref(), Some("mail"));
        assert_eq!(v3.project_domain_name, "Default");
        assert_eq!(v3.region_name.as_deref(), Some("RegionTwo"));
        assert_eq!(v3.interface, "public");
        assert_eq!(v3.key.expose(), "s3cret");
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "secrets never show in Debug"
        );
        let legacy = config
            .destinations
            .iter()
            .find(|d| d.name == "LEGACY")
            .unwrap();
        let Backend::Swift(SwiftConfig {
            auth: SwiftAuth::V1 { tenant_name, .. },
            ..
        }) = &legacy.backend
        else {
            panic!("{:?}", legacy.backend)
        };
        assert_eq!(tenant_name.as_deref(), Some("test"));
    }

    #[test]
    fn object_store_problems_are_precise() {
        let err = load(
            None,
            &[
                ("SWIFTDROP_A_RECIPIENTS", "a@example.com"),
                ("SWIFTDROP_A_AUTHURL", "ftp://x"),
                ("SWIFTDROP_A_USER", "u"),
                ("SWIFTDROP_A_OS_OPTIONS_FLAVOUR", "x"),
                ("SWIFTDROP_B_RECIPIENTS", "b@example.com"),
                ("SWIFTDROP_B_BACKEND", "s3"),
                ("SWIFTDROP_B_BUCKET", "mail"),
                ("SWIFTDROP_B_ENDPOINT", "http://127.0.0.1:8080"),
                ("SWIFTDROP_B_ACCESS_KEY_ID", "k"),
                ("SWIFTDROP_B_SECRET_ACCESS_KEY", "s"),
                ("SWIFTDROP_B_PATH", "/tmp"),
            ],
        )
        .unwrap_err();
        let all = err.to_string();
        for expected in [
            "SWIFTDROP_A_AUTHURL: \"ftp://x\" is not an http:// or https:// URL",
            "[A]: container is missing",
            "[A]: key is missing",
            "SWIFTDROP_A_OS_OPTIONS_FLAVOUR: unknown Keystone option",
            "SWIFTDROP_B_ENDPOINT: is plain http://: set allow_http = yes",
            "SWIFTDROP_B_PATH: not an option of a s3 destination [B]",
        ] {
            assert!(all.contains(expected), "{expected:?} not in:\n{all}");
        }
    }

    #[test]
    fn s3_destination_defaults() {
        let config = load(
            Some("[mail]\nrecipients = *\nbackend = s3\ncontainer = box\nendpoint = http://127.0.0.1:8080\nallow_http = yes\naccess_key_id = test:tester\nsecret_access_key = testing\n"),
            &[],
        )
        .unwrap();
        let Backend::S3(s3) = &config.destinations[0].backend else {
            panic!()
        };
        assert_eq!(s3.bucket, "box");
        assert_eq!(s3.region, "us-east-1");
        assert!(s3.path_style && s3.allow_http && !s3.create_container);
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
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(parse_duration("99y").is_ok());
        assert!(parse_duration("101y").is_err());
        assert_eq!(parse_networks("10.0.0.0/8, ::1").unwrap().len(), 2);
        assert!(parse_networks("10.0.0.0/33").is_err());
        assert_eq!(parse_relay("OFF"), Ok(None));
        assert!(parse_relay("somewhere").is_err());
    }
}
