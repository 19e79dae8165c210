//! Destinations: every section but `[SERVER]` and `[QUEUE]` (and `[DEFAULT]`'s inherited
//! options): which recipients each takes, its backend (Maildir, Swift, S3) and that
//! backend's settings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::sources::{ENV_PREFIX, RawSection, RawValue, problem};
use super::values::{parse_bool, parse_duration};

/// Options every destination understands.
pub(super) const COMMON_OPTIONS: &[&str] = &["recipients", "backend"];
/// Options of a Maildir destination.
pub(super) const MAILDIR_OPTIONS: &[&str] = &["path"];
/// Options of a Swift destination (the original SwiftDrop's names), besides `os_options_*`.
pub(super) const SWIFT_OPTIONS: &[&str] = &[
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
pub(super) const SWIFT_OS_OPTIONS: &[&str] = &[
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
pub(super) const S3_OPTIONS: &[&str] = &[
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
pub(super) const DEFAULT_REQUEST_TIMEOUT: &str = "20s";

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

/// Every option a destination of `backend` knows, `os_options_*` included.
fn options_of(backend: &str) -> Vec<String> {
    let own: &[&str] = match backend {
        "maildir" => MAILDIR_OPTIONS,
        "swift" => SWIFT_OPTIONS,
        _ => S3_OPTIONS,
    };
    let mut known: Vec<String> = COMMON_OPTIONS
        .iter()
        .chain(own)
        .map(|o| o.to_string())
        .collect();
    if backend == "swift" {
        known.extend(SWIFT_OS_OPTIONS.iter().map(|o| format!("os_options_{o}")));
    }
    known
}

/// The backends that have `option`, in words: `swift and s3 destinations`.
fn backends_with(option: &str) -> String {
    let have: Vec<&str> = ["maildir", "swift", "s3"]
        .into_iter()
        .filter(|backend| options_of(backend).iter().any(|o| o == option))
        .collect();
    format!("{} destinations", have.join(" and "))
}

/// How a destination of `backend` should read its unknown `option`: the nearest known
/// option a slip away (`auth_url` → `authurl`, `contianer` → `container`), its own
/// backend's first, with the other backends that have it named; or the backends that
/// have `option` itself. `None` when nothing is near.
fn suggestion(option: &str, backend: &str) -> Option<String> {
    let squeezed = |s: &str| s.replace(['_', '-'], "");
    let distance = |known: &str| {
        if squeezed(known) == squeezed(option) {
            0
        } else {
            strsim::damerau_levenshtein(known, option)
        }
    };
    let own = options_of(backend);
    let near_in = |known: &[String]| {
        known
            .iter()
            .map(|k| (distance(k), k.clone()))
            .filter(|(d, k)| *d <= 2 && k != option)
            .min()
    };
    let others: Vec<String> = ["maildir", "swift", "s3"]
        .into_iter()
        .filter(|b| *b != backend)
        .flat_map(options_of)
        .filter(|o| !own.contains(o))
        .collect();
    if others.iter().any(|o| o == option) {
        return Some(format!("it is an option of {}", backends_with(option)));
    }
    match (near_in(&own), near_in(&others)) {
        (Some((d, near)), Some((other_d, _))) if d <= other_d => {
            Some(format!("did you mean {near}?"))
        }
        (Some((_, near)), None) => Some(format!("did you mean {near}?")),
        (_, Some((_, near))) => Some(format!(
            "did you mean {near} (an option of {})?",
            backends_with(&near)
        )),
        (None, None) => None,
    }
}

pub(super) fn validate_destination(
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
        let hint = suggestion(option, &backend_name)
            .map(|s| format!("; {s}"))
            .unwrap_or_default();
        let message = if backend_name == "swift" && os_option.is_some() {
            format!(
                "unknown Keystone option{hint}; known: {}",
                SWIFT_OS_OPTIONS
                    .iter()
                    .map(|o| format!("os_options_{o}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            // A destination without `backend` and `authurl` is a Maildir: an option of the
            // others there most often means that `authurl` is missing or misspelled.
            let foreign = hint.contains("an option of");
            let why = if backend_name == "maildir" && !options.contains_key("backend") && foreign {
                " (without authurl or backend, a destination is a Maildir)"
            } else {
                ""
            };
            format!(
                "not an option of a {backend_name} destination [{name}]{why}{hint}; known: {}",
                options_of(&backend_name).join(", ")
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
pub(super) struct DestinationOptions<'a> {
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
pub(super) fn parse_url(s: &str) -> Result<String, String> {
    match s.split_once("://") {
        Some(("http" | "https", rest))
            if !rest.is_empty() && !rest.contains(char::is_whitespace) =>
        {
            Ok(s.to_string())
        }
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
}

pub(super) fn swift_backend(
    options: &DestinationOptions,
    problems: &mut Vec<String>,
) -> Option<SwiftConfig> {
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

pub(super) fn s3_backend(
    options: &DestinationOptions,
    problems: &mut Vec<String>,
) -> Option<S3Config> {
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

/// Two destinations claiming the same address, domain or `*` is ambiguous: refuse it.
pub(super) fn check_overlaps(destinations: &[DestinationConfig], problems: &mut Vec<String>) {
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
