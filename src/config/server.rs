//! `[SERVER]`: the filter's global settings, their defaults and their checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::destination::Secret;
use super::sources::{ENV_PREFIX, RawSection, SERVER_SECTION, problem};
use super::values::{
    parse_bool, parse_count, parse_duration, parse_duration_or_zero, parse_networks, parse_relay,
    parse_size,
};

/// What a delivery may take beyond `store_timeout`: its rollback (5 s) and its reply.
/// Shutdown stops starting deliveries this long plus `store_timeout` before `drain_timeout`
/// ends, so that none is cut off halfway.
pub const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// Options of the `[SERVER]` section, with their defaults, as documented in README.rst.
pub(super) const SERVER_OPTIONS: &[&str] = &[
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
    "memory_wait",
    "spool_dir",
    "admin_listen",
    "admin_token",
    "ready_max_age",
    "queue_stats_interval",
];

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
    /// 192 MiB, for a 256 MiB pod), figured in [`super::memory`]; a transaction that finds
    /// no room waits for it (see `memory_wait`).
    pub max_memory: usize,
    /// How long a transaction waits for room in `max_memory` (reading nothing meanwhile, so
    /// that its client is held back by TCP) before it gets `452 4.3.1` (`memory_wait`,
    /// default 30 s: well inside Postfix's `smtpd_proxy_timeout` of 100 s).
    pub memory_wait: Duration,
    /// Where relayed messages past `stream_threshold` wait for the relay, in files that have
    /// no name (`spool_dir`, default the system's temporary directory, `$TMPDIR` or `/tmp`).
    pub spool_dir: PathBuf,
    /// The operators' HTTP listener: `/metrics`, `/healthz`, `/readyz`, the queue's web
    /// view (`admin_listen`: off unless set; a port alone means `127.0.0.1:PORT`).
    pub admin_listen: Option<SocketAddr>,
    /// What the web view asks before it requeues or purges (`admin_token`); unset: the
    /// view is read-only.
    pub admin_token: Option<Secret>,
    /// `/readyz` answers 200 while every check (a destination's store check, a worker's
    /// lock engine and sinks) passed within this age (`ready_max_age`, default 60 s).
    pub ready_max_age: Duration,
    /// The queue's counts (web view, the worker's queue metrics) are listed at most this
    /// often (`queue_stats_interval`, default 30 s): listing a large queue is work for
    /// the store.
    pub queue_stats_interval: Duration,
}

/// How log lines are written (`log_format`; `--log-format` of `serve` and the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

pub(super) fn validate_server(
    section: &RawSection,
    problems: &mut Vec<String>,
) -> Option<ServerSettings> {
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
        // It goes into the greeting and EHLO as it is: printable ASCII only.
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic()) {
            Err(format!(
                "{s:?} is not a host name (printable ASCII, no spaces)"
            ))
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
    let memory_wait = get("memory_wait", "30s", &|s| {
        parse_duration_or_zero(s).map(drop)
    });
    let system_tmp = std::env::temp_dir().to_string_lossy().into_owned();
    let spool_dir = get("spool_dir", &system_tmp, &|s| {
        if Path::new(s).is_dir() {
            Ok(())
        } else {
            Err(format!("{s:?} is not a directory"))
        }
    });
    let admin_listen = get("admin_listen", "off", &|s| parse_admin_listen(s).map(drop));
    let ready_max_age = get("ready_max_age", "60s", &|s| {
        parse_duration(s).and_then(|d| {
            if d < Duration::from_secs(3) {
                Err("must be 3 s or more: the checks run three times within it".into())
            } else {
                Ok(())
            }
        })
    });
    let queue_stats_interval = get("queue_stats_interval", "30s", &|s| {
        parse_duration(s).map(drop)
    });
    let admin_token = section
        .get("admin_token")
        .map(|v| v.value.trim().to_string())
        .filter(|t| !t.is_empty());
    if let (Some(token), Some(v)) = (&admin_token, section.get("admin_token")) {
        if token.len() < 16 {
            problems.push(problem(
                &v.origin,
                "must be 16 characters or more: it is all that guards requeue and purge",
            ));
        }
    }
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
        memory_wait: parse_duration_or_zero(&memory_wait).ok()?,
        spool_dir: PathBuf::from(spool_dir),
        admin_listen: parse_admin_listen(&admin_listen).ok()?,
        admin_token: admin_token.map(Secret::new),
        ready_max_age: parse_duration(&ready_max_age).ok()?,
        queue_stats_interval: parse_duration(&queue_stats_interval).ok()?,
    })
}

/// `admin_listen`: `off`, `PORT` (on loopback) or `ADDRESS:PORT`.
pub fn parse_admin_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(None);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(Some(SocketAddr::from(([127, 0, 0, 1], port))));
    }
    s.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| format!("{s:?} is not off, a port, or an address:port such as 127.0.0.1:9187"))
}

/// `max_memory` must hold at least one transaction at its largest, or a large message could
/// never be accepted.
pub(super) fn check_memory(
    server: &ServerSettings,
    destinations: usize,
    problems: &mut Vec<String>,
) {
    let peak = super::memory::transaction_peak(server.stream_threshold, destinations);
    if server.max_memory < peak {
        problems.push(format!(
            "[{SERVER_SECTION}] max_memory ({ENV_PREFIX}{SERVER_SECTION}_MAX_MEMORY) is {} bytes but one message may need {peak}: its buffer up to stream_threshold, then 15 MiB of upload parts for each of {destinations} destination(s) when it streams; raise max_memory or lower stream_threshold",
            server.max_memory
        ));
    }
}

pub(super) fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("{other:?} is not a log format: use text or json")),
    }
}
