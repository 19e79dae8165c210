//! The `[QUEUE]` section: how workers claim stored mail (`swiftdrop queue`, the library's
//! [`crate::queue`]) and, for the filter, where new messages are announced.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `lock` | `local` for a Maildir | `local`, `redis://[:password@]host:port/db` (`rediss://` for TLS), or `redis+sentinel://[:password@]host:port[,host:port...]/service[/db]` |
//! | `lease` | `5m` | how long a claim lasts without renewal |
//! | `max_attempts` | `5` | claims before a message goes to `failed/` |
//! | `retry_backoff` | `1m` | wait before the first retry, doubled for each next one |
//! | `retry_backoff_max` | `1h` | longest wait between retries |
//! | `dedup_window` | `24h` | how long a finished message's duplicate digest is remembered (`0`: not at all) |
//! | `poll_interval` | `5s` | how often a waiting claim lists the store anyway |
//! | `state_dir` | `<maildir>/.swiftdrop-queue` | where the `local` lock keeps its files |

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{RawSection, Secret, parse_count, parse_duration, problem};

/// The section that holds the queue settings.
pub const QUEUE_SECTION: &str = "QUEUE";
/// The variable that chooses the lock engine, named in errors about it.
pub const LOCK_VARIABLE: &str = "SWIFTDROP_QUEUE_LOCK";

/// The shortest lease: a claim renews itself at a third of it, which must leave a
/// round trip to the lock engine some room.
pub const MIN_LEASE: Duration = Duration::from_millis(300);

/// Parses a lease length, refusing one shorter than [`MIN_LEASE`].
pub fn parse_lease(s: &str) -> Result<Duration, String> {
    let lease = super::parse_duration(s)?;
    if lease < MIN_LEASE {
        return Err(format!(
            "a lease must be at least {}ms: a claim renews itself at a third of it",
            MIN_LEASE.as_millis()
        ));
    }
    Ok(lease)
}

/// Options of the `[QUEUE]` section.
const QUEUE_OPTIONS: &[&str] = &[
    "lock",
    "lease",
    "max_attempts",
    "retry_backoff",
    "retry_backoff_max",
    "dedup_window",
    "poll_interval",
    "state_dir",
];

/// Validated `[QUEUE]` settings.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// The lock engine (`lock`); `None` when not set, which means `local` for a Maildir
    /// destination and is refused for a remote one.
    pub lock: Option<LockSetting>,
    /// Lease length of a claim (`lease`, default 5 min).
    pub lease: Duration,
    /// Claims after which a message is failed (`max_attempts`, default 5).
    pub max_attempts: u32,
    /// First retry delay (`retry_backoff`, default 1 min), doubled per attempt.
    pub retry_backoff: Duration,
    /// Longest retry delay (`retry_backoff_max`, default 1 h).
    pub retry_backoff_max: Duration,
    /// How long finished messages' duplicate digests are remembered (`dedup_window`, default 24 h).
    pub dedup_window: Duration,
    /// How often a waiting claim lists the store when no announcement came
    /// (`poll_interval`, default 5 s).
    pub poll_interval: Duration,
    /// Directory of the `local` lock's files (`state_dir`; default inside the Maildir).
    pub state_dir: Option<PathBuf>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            lock: None,
            lease: Duration::from_secs(300),
            max_attempts: 5,
            retry_backoff: Duration::from_secs(60),
            retry_backoff_max: Duration::from_secs(3600),
            dedup_window: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(5),
            state_dir: None,
        }
    }
}

/// Where `redis+sentinel://` finds the primary: ask these Sentinels for `service`.
#[derive(Debug, Clone)]
pub struct SentinelTarget {
    /// `redis://host:port` of each Sentinel.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary by.
    pub service: String,
    /// The database on the primary.
    pub db: i64,
    /// The primary's password (the Sentinels are asked without one).
    pub password: Option<Secret>,
}

/// Which lock engine holds the leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockSetting {
    /// File locks on this machine.
    Local,
    /// A Redis server shared by every worker.
    Redis(RedisUrl),
}

/// A `redis://` or `rediss://` URL, or a `redis+sentinel://` (`rediss+sentinel://`) one that
/// names Sentinels and the service whose primary they point to; its password never shows in
/// `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: Secret,
    shown: String,
}

impl RedisUrl {
    /// Parses a `redis://`, `rediss://`, `redis+sentinel://` or `rediss+sentinel://` URL.
    pub fn parse(s: &str) -> Result<RedisUrl, String> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| "is not a URL such as redis://127.0.0.1:6379/0".to_string())?;
        if !["redis", "rediss", "redis+sentinel", "rediss+sentinel"].contains(&scheme) {
            return Err(format!(
                "scheme {scheme:?} is not a lock engine: use local, redis://, rediss:// or redis+sentinel://"
            ));
        }
        let (userinfo, hostpart) = match rest.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, rest),
        };
        let host = hostpart.split('/').next().unwrap_or("");
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err("has no host: use redis://host:port/db".to_string());
        }
        let path: Vec<&str> = hostpart.split('/').skip(1).collect();
        let user = userinfo
            .and_then(|u| u.split_once(':'))
            .map(|(user, _)| user);
        if scheme.ends_with("+sentinel") && user.is_some_and(|u| !u.is_empty()) {
            // Not passed on to the primary: refused rather than dropped unseen.
            return Err(
                "names a user: redis+sentinel:// takes a password only (:password@)".to_string(),
            );
        }
        let db = if scheme.ends_with("+sentinel") {
            if path.first().is_none_or(|service| service.is_empty()) {
                return Err(
                    "names no service: use redis+sentinel://host:port[,host:port...]/service[/db]"
                        .to_string(),
                );
            }
            path.get(1)
        } else {
            if host.contains(',') {
                return Err("names several hosts: use redis+sentinel:// for Sentinels".into());
            }
            path.first()
        };
        if let Some(db) = db {
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err(format!("database {db:?} is not a number"));
            }
        }
        // The password (user:password@ or :password@) is replaced by *** when shown.
        let shown = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{hostpart}"),
                None => format!("{scheme}://***@{hostpart}"),
            },
            None => s.to_string(),
        };
        Ok(RedisUrl {
            url: Secret::new(s),
            shown,
        })
    }

    /// The URL with its password, for the one place that connects.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// Whether the connection uses TLS (`rediss://`, `rediss+sentinel://`).
    pub fn tls(&self) -> bool {
        self.url.expose().starts_with("rediss")
    }

    /// For a `redis+sentinel://` URL: the Sentinels, the service, the database and the
    /// password of the primary.
    pub fn sentinel(&self) -> Option<SentinelTarget> {
        let url = self.url.expose();
        let (scheme, rest) = url.split_once("://")?;
        if !scheme.ends_with("+sentinel") {
            return None;
        }
        let (userinfo, hostpart) = match rest.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, rest),
        };
        let mut parts = hostpart.split('/');
        let hosts = parts.next()?;
        let service = parts.next()?.to_string();
        let db = parts.next().and_then(|db| db.parse().ok()).unwrap_or(0);
        let plain = if self.tls() { "rediss" } else { "redis" };
        Some(SentinelTarget {
            sentinels: hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{plain}://{h}"))
                .collect(),
            service,
            db,
            password: userinfo
                .map(|u| u.split_once(':').map_or(u, |(_, p)| p))
                .filter(|p| !p.is_empty())
                .map(Secret::new),
        })
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

impl fmt::Display for LockSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockSetting::Local => f.write_str("local"),
            LockSetting::Redis(url) => url.fmt(f),
        }
    }
}

/// Validates the `[QUEUE]` section; every problem names its variable or file line.
pub(super) fn validate_queue(section: &RawSection, problems: &mut Vec<String>) -> QueueSettings {
    let mut settings = QueueSettings::default();
    for (option, value) in section {
        let ok = match option.as_str() {
            "lock" => parse_lock(&value.value).map(|l| settings.lock = Some(l)),
            "lease" => parse_lease(&value.value).map(|d| settings.lease = d),
            "max_attempts" => parse_count(&value.value).and_then(|n| {
                u32::try_from(n)
                    .map(|n| settings.max_attempts = n)
                    .map_err(|_| format!("{n} attempts is too many"))
            }),
            "retry_backoff" => parse_duration(&value.value).map(|d| settings.retry_backoff = d),
            "retry_backoff_max" => {
                parse_duration(&value.value).map(|d| settings.retry_backoff_max = d)
            }
            // 0 turns the duplicate index off.
            "dedup_window" => match value.value.trim() {
                "0" => {
                    settings.dedup_window = Duration::ZERO;
                    Ok(())
                }
                v => parse_duration(v).map(|d| settings.dedup_window = d),
            },
            "poll_interval" => parse_duration(&value.value).map(|d| settings.poll_interval = d),
            "state_dir" => match value.value.trim() {
                "" => Err("must not be empty".to_string()),
                dir => {
                    settings.state_dir = Some(dir.into());
                    Ok(())
                }
            },
            _ => Err(format!(
                "unknown option; [QUEUE] knows {}",
                QUEUE_OPTIONS.join(", ")
            )),
        };
        if let Err(e) = ok {
            problems.push(problem(&value.origin, e));
        }
    }
    settings
}

fn parse_lock(s: &str) -> Result<LockSetting, String> {
    match s.trim() {
        "local" => Ok(LockSetting::Local),
        url => RedisUrl::parse(url).map(LockSetting::Redis).map_err(|e| {
            if url.contains("://") {
                format!("{:?}: {e}", mask(url))
            } else {
                format!("{url:?} is not a lock engine: use local, redis://host:port/db or rediss://host:port/db")
            }
        }),
    }
}

/// A URL for an error message, without what could be a password.
fn mask(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_passwords_never_show() {
        let url = RedisUrl::parse("redis://:s3cret@10.0.0.1:6379/2").unwrap();
        assert_eq!(url.to_string(), "redis://:***@10.0.0.1:6379/2");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.expose(), "redis://:s3cret@10.0.0.1:6379/2");
        let url = RedisUrl::parse("rediss://worker:pw@redis.example:6380").unwrap();
        assert_eq!(url.to_string(), "rediss://worker:***@redis.example:6380");
        assert!(url.tls());
        let err = parse_lock("http://:hunter2@x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn sentinel_urls_name_sentinels_service_and_database() {
        let url =
            RedisUrl::parse("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/queue/2").unwrap();
        assert_eq!(
            url.to_string(),
            "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26379/queue/2"
        );
        let target = url.sentinel().unwrap();
        assert_eq!(
            target.sentinels,
            ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"]
        );
        assert_eq!((target.service.as_str(), target.db), ("queue", 2));
        assert_eq!(target.password.unwrap().expose(), "pw");
        assert!(RedisUrl::parse("redis+sentinel://10.0.0.1:26379").is_err());
        assert!(RedisUrl::parse("redis+sentinel://user:pw@10.0.0.1:26379/queue").is_err());
        assert!(RedisUrl::parse("redis://a:1,b:2/0").is_err());
        assert!(
            RedisUrl::parse("redis://127.0.0.1:6379/0")
                .unwrap()
                .sentinel()
                .is_none()
        );
    }

    #[test]
    fn lock_values() {
        assert_eq!(parse_lock("local").unwrap(), LockSetting::Local);
        assert!(parse_lock("redis://127.0.0.1:6390/0").is_ok());
        assert!(parse_lock("redis://127.0.0.1:6390/x").is_err());
        assert!(parse_lock("etcd").is_err());
        assert!(parse_lock("redis://").is_err());
    }
}
