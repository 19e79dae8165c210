//! The Redis lock engine, for workers on many machines.
//!
//! Keys of one queue share the hash tag `{<queue id>}` (one Redis Cluster slot):
//!
//! | key | holds |
//! |---|---|
//! | `swiftdrop:{id}:lease:<name>` | the holder's token, with the lease as its expiry (`SET PX` after a check); after a finish or release `retired` for two minutes, which stops takes from `cur/` and take-overs of `processing/` (takes from `retry/` and requeues replace it) |
//! | `swiftdrop:{id}:fence` | the last fencing number given |
//! | `swiftdrop:{id}:epoch` | when this Redis's data for the queue began (Unix ms, server clock) |
//! | `swiftdrop:{id}:epoch-server` | the `run_id` of the server that began it: another server (restarted from a snapshot, a promoted replica) begins it again |
//! | `swiftdrop:{id}:finished:<digest>` | `<key> <unix ms>` of a finished message, expiring after the dedup window |
//! | `swiftdrop:{id}:shared:<key>` | a value the workers share (a GoCD pipeline's last state), set by a compare-and-set script, kept 400 days |
//! | `swiftdrop:{id}:new` (channel) | names of new `cur/` messages, published by the filter |
//!
//! Renew, release and the finish check are Lua scripts that compare the token and act in
//! one step. A fencing number is one more than the last, but at least the Redis server's
//! clock in microseconds (`TIME`), so numbers keep growing when Redis restarts without
//! data; the epoch tells takers of `processing/` messages how long to wait after such a
//! restart. The connection is re-established after errors by redis-rs's
//! `ConnectionManager`; a call that fails meanwhile returns a [`LockError`]. The
//! announcement subscription is checked with a `PING` every [`KEEPALIVE`] and made again
//! when it does not answer (a NAT that forgot an idle connection never says so).

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

use super::{Announcement, FinishedRef, Holder, LockEngine, LockError, Token};
use crate::config::RedisUrl;

/// Oldest Redis with everything the engine uses (`SET ... GET`-era scripts, `PX`).
pub const MIN_VERSION: (u32, u32) = (6, 2);
/// Bound on connecting and on each answer, so that a hung Redis cannot hang a worker.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often the announcement subscription is asked for a `PING`'s answer: a subscription
/// that went quiet is noticed, and made again, within this plus [`TIMEOUT`].
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// Sets `KEYS[1]` to `ARGV[2]` (expiring after `ARGV[3]` seconds) if it holds `ARGV[1]`
/// (`''`: if it is unset).
const SWAP_SHARED: &str = r"
local held = redis.call('GET', KEYS[1])
if (held == false and ARGV[1] == '') or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
";

/// `ARGV[4]` is `cur` for a claim from `cur/`, which the mark of a retired lease also
/// stops; other takers replace the mark.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and (held ~= 'retired' or ARGV[4] == 'cur') then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('SET', KEYS[3], string.format('%d', math.floor(now / 1000)), 'NX')
local fence = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
if now > fence then fence = now end
redis.call('SET', KEYS[2], string.format('%d', fence))
local token = string.format('%d', fence) .. ':' .. ARGV[1] .. ':' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ARGV[3])
return token
";

const RETIRE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'retired', 'PX', ARGV[2])
  return 1
end
return 0
";

/// `data_age(epoch_key, server_key, run_id)`: the age in ms of the queue's data, since
/// the epoch key was set by the server with the run id `run_id`. Another server (a restart,
/// which may have restored an older snapshot, or a promoted replica, which may lag) begins
/// the epoch again: leases may be missing. Prefixed to the scripts that need it.
const DATA_AGE_FUNCTION: &str = r"
local function data_age(epoch_key, server_key, run_id)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local epoch = redis.call('GET', epoch_key)
  local server = redis.call('GET', server_key)
  if not server then
    -- The first look since the data began (ACQUIRE sets the epoch): this server began it.
    redis.call('SET', server_key, run_id)
    if not epoch then
      epoch = string.format('%d', now)
      redis.call('SET', epoch_key, epoch)
    end
  elseif server ~= run_id or not epoch then
    redis.call('SET', epoch_key, string.format('%d', now))
    redis.call('SET', server_key, run_id)
    return 0
  end
  return now - tonumber(epoch)
end
";

const DATA_AGE: &str = "return data_age(KEYS[1], KEYS[2], ARGV[1])";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Where the engine's Redis is: one server, or the primary Sentinels point to now.
enum Connector {
    Direct(redis::Client),
    Sentinel {
        sentinel: tokio::sync::Mutex<redis::sentinel::Sentinel>,
        service: String,
        node: redis::sentinel::SentinelNodeConnectionInfo,
    },
}

impl Connector {
    fn open(url: &RedisUrl) -> redis::RedisResult<Connector> {
        let Some(target) = url.sentinel() else {
            return Ok(Connector::Direct(redis::Client::open(url.expose())?));
        };
        let mut info = redis::RedisConnectionInfo::default().set_db(target.db);
        if let Some(password) = &target.password {
            info = info.set_password(password.expose());
        }
        let mut node =
            redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
        if url.tls() {
            node = node.set_tls_mode(redis::TlsMode::Secure);
        }
        Ok(Connector::Sentinel {
            sentinel: tokio::sync::Mutex::new(redis::sentinel::Sentinel::build(target.sentinels)?),
            service: target.service,
            node,
        })
    }

    /// A client of the server to talk to now: with Sentinels, the primary they name now
    /// (checked to be one).
    async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Connector::Direct(client) => Ok(client.clone()),
            Connector::Sentinel {
                sentinel,
                service,
                node,
            } => tokio::time::timeout(
                TIMEOUT,
                sentinel.lock().await.async_master_for(service, Some(node)),
            )
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer from the Sentinels in time",
                ))
            })?,
        }
    }

    fn follows_failovers(&self) -> bool {
        matches!(self, Connector::Sentinel { .. })
    }
}

/// Leases in a Redis server shared by every worker of a queue.
pub struct RedisEngine {
    connector: std::sync::Arc<Connector>,
    /// The connection to the server of [`Connector::client`], made at the first call and
    /// again (with Sentinels: to the primary they name then) after a connection error.
    connection: std::sync::Mutex<Option<ConnectionManager>>,
    namespace: String,
    url: RedisUrl,
    scripts: Scripts,
    announcements: OnceLock<broadcast::Sender<Announcement>>,
}

struct Scripts {
    acquire: Script,
    data_age: Script,
    renew: Script,
    release: Script,
    retire: Script,
    swap_shared: Script,
}

impl fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisEngine({} {})", self.url, self.namespace)
    }
}

impl RedisEngine {
    /// Runs the ACQUIRE script; `mode` is `cur` (a retired mark stops it) or `any`.
    async fn take(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
        mode: &str,
    ) -> Result<Option<Token>, LockError> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let token: Option<String> = self
            .scripts
            .acquire
            .key(self.key("lease", name))
            .key(format!("{}:fence", self.namespace))
            .key(format!("{}:epoch", self.namespace))
            .arg(owner)
            .arg(&nonce[..16])
            .arg(ttl.as_millis() as u64)
            .arg(mode)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(|e| self.error(e))?;
        token
            .map(|t| Token::parse(&t).map_err(LockError))
            .transpose()
    }

    /// An engine for the queue `queue_id` at `url`. Connects lazily: nothing is sent until
    /// the first call.
    pub fn new(url: &RedisUrl, queue_id: &str) -> Result<RedisEngine, LockError> {
        let connector = Connector::open(url)
            .map_err(|e| LockError(format!("{url}: {}", redact(&e.to_string(), url))))?;
        Ok(RedisEngine {
            connector: std::sync::Arc::new(connector),
            connection: std::sync::Mutex::new(None),
            namespace: format!("swiftdrop:{{{queue_id}}}"),
            url: url.clone(),
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                data_age: Script::new(&format!("{DATA_AGE_FUNCTION}{DATA_AGE}")),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                swap_shared: Script::new(SWAP_SHARED),
                retire: Script::new(RETIRE),
            },
            announcements: OnceLock::new(),
        })
    }

    /// The connection to use: the one made, or a new one.
    async fn conn(&self) -> Result<ConnectionManager, LockError> {
        if let Some(connection) = self.connection.lock().unwrap().clone() {
            return Ok(connection);
        }
        let client = self.connector.client().await.map_err(|e| self.error(e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let connection = client
            .get_connection_manager_lazy(config)
            .map_err(|e| self.error(e))?;
        *self.connection.lock().unwrap() = Some(connection.clone());
        Ok(connection)
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.namespace)
    }

    fn channel(&self) -> String {
        format!("{}:new", self.namespace)
    }

    /// `INFO server` of the server answering now.
    async fn server_info(&self) -> Result<String, LockError> {
        redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn().await?)
            .await
            .map_err(|e| self.error(e))
    }

    /// The `run_id` of the server answering now: it changes with every restart.
    async fn run_id(&self) -> Result<String, LockError> {
        let info = self.server_info().await?;
        Ok(info_field(&info, "run_id").unwrap_or_default())
    }

    /// The error as a [`LockError`]. With Sentinels, a connection that failed or a server
    /// that is no primary any more (after a failover) is dropped: the next call asks the
    /// Sentinels for the primary again.
    fn error(&self, e: redis::RedisError) -> LockError {
        let stale = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if stale && self.connector.follows_failovers() {
            *self.connection.lock().unwrap() = None;
        }
        LockError(format!(
            "Redis {}: {}",
            self.url,
            redact(&e.to_string(), &self.url)
        ))
    }
}

/// Subscribes to `channel` and forwards every message into `tx`, reconnecting with backoff,
/// for as long as the process lives (a send without receivers is simply dropped).
async fn subscribe(
    connector: std::sync::Arc<Connector>,
    channel: String,
    url: RedisUrl,
    tx: broadcast::Sender<Announcement>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let client = connector.client().await.map_err(|e| e.to_string())?;
            let mut pubsub = tokio::time::timeout(TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| "connection timed out".to_string())?
                .map_err(|e| e.to_string())?;
            // A server that takes the connection and never answers must not hold the
            // subscriber forever: it tries again.
            tokio::time::timeout(TIMEOUT, pubsub.subscribe(&channel))
                .await
                .map_err(|_| "SUBSCRIBE timed out".to_string())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                delay = Duration::from_millis(100);
                tracing::debug!(channel, "subscribed to new-mail announcements");
                // Whatever was published before this moment was missed.
                let _ = tx.send(Announcement::Gap);
                let (mut sink, mut messages) = pubsub.split();
                let mut keepalive = tokio::time::interval(KEEPALIVE);
                keepalive.tick().await;
                let why = loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                if let Ok(name) = message.get_payload::<String>() {
                                    let _ = tx.send(Announcement::New(name));
                                }
                            }
                            None => break "the subscription ended".to_string(),
                        },
                        _ = keepalive.tick() => {
                            // Subscribed, the answer is the array ["pong", ""]: any answer will do.
                            match tokio::time::timeout(TIMEOUT, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => break format!("PING failed: {e}"),
                                Err(_) => break format!("no answer to PING within {TIMEOUT:?}"),
                            }
                        }
                    }
                };
                tracing::warn!(redis = %url, reason = %redact(&why, &url), "announcement subscription lost; subscribing again (claims poll meanwhile)");
            }
            Err(e) => {
                tracing::warn!(redis = %url, error = %redact(&e, &url), "cannot subscribe to announcements; retrying (claims poll meanwhile)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// An error text without the URL's password, should the client have quoted it.
fn redact(text: &str, url: &RedisUrl) -> String {
    let full = url.expose();
    match full
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
    {
        Some((userinfo, _)) if !userinfo.is_empty() => {
            let password = userinfo.rsplit(':').next().unwrap_or(userinfo);
            if password.is_empty() {
                text.to_string()
            } else {
                text.replace(password, "***")
            }
        }
        _ => text.to_string(),
    }
}

#[async_trait]
impl LockEngine for RedisEngine {
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Token>, LockError> {
        self.take(name, owner, ttl, "any").await
    }

    async fn acquire_unmarked(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Token>, LockError> {
        self.take(name, owner, ttl, "cur").await
    }

    async fn retire(&self, name: &str, token: &Token, keep: Duration) -> Result<bool, LockError> {
        let retired: i64 = self
            .scripts
            .retire
            .key(self.key("lease", name))
            .arg(token.as_str())
            .arg(keep.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(|e| self.error(e))?;
        Ok(retired == 1)
    }

    async fn renew(&self, name: &str, token: &Token, ttl: Duration) -> Result<bool, LockError> {
        let renewed: i64 = self
            .scripts
            .renew
            .key(self.key("lease", name))
            .arg(token.as_str())
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(|e| self.error(e))?;
        Ok(renewed == 1)
    }

    async fn taken(&self, name: &str) -> Result<bool, LockError> {
        let exists: bool = self
            .conn()
            .await?
            .exists(self.key("lease", name))
            .await
            .map_err(|e| self.error(e))?;
        Ok(exists)
    }

    async fn release(&self, name: &str, token: &Token) -> Result<bool, LockError> {
        let released: i64 = self
            .scripts
            .release
            .key(self.key("lease", name))
            .arg(token.as_str())
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(|e| self.error(e))?;
        Ok(released == 1)
    }

    async fn holders(&self, names: &[String]) -> Result<Vec<Option<Holder>>, LockError> {
        let mut out = Vec::with_capacity(names.len());
        for chunk in names.chunks(500) {
            let mut pipe = redis::pipe();
            for name in chunk {
                let key = self.key("lease", name);
                pipe.get(&key).pttl(&key);
            }
            let answers: Vec<(Option<String>, i64)> = pipe
                .query_async(&mut self.conn().await?)
                .await
                .map_err(|e| self.error(e))?;
            out.extend(answers.into_iter().map(|(token, pttl)| {
                let token = Token::parse(&token?).ok()?;
                Some(Holder {
                    token,
                    remaining: Duration::from_millis(pttl.max(0) as u64),
                })
            }));
        }
        Ok(out)
    }

    async fn remember_finished(
        &self,
        sha256: &str,
        finished: &FinishedRef,
        window: Duration,
    ) -> Result<(), LockError> {
        let value = format!("{} {}", finished.key, finished.at.timestamp_millis());
        let _: () = self
            .conn()
            .await?
            .pset_ex(
                self.key("finished", sha256),
                value,
                window.as_millis() as u64,
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn finished(&self, sha256: &str) -> Result<Option<FinishedRef>, LockError> {
        let value: Option<String> = self
            .conn()
            .await?
            .get(self.key("finished", sha256))
            .await
            .map_err(|e| self.error(e))?;
        Ok(value.and_then(|v| parse_finished(&v)))
    }

    async fn shared_value(&self, key: &str) -> Result<Option<String>, LockError> {
        super::check_shared(key, None)?;
        self.conn()
            .await?
            .get(self.key("shared", key))
            .await
            .map_err(|e| self.error(e))
    }

    async fn swap_shared_value(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, LockError> {
        super::check_shared(key, Some(value))?;
        let swapped: i64 = self
            .scripts
            .swap_shared
            .key(self.key("shared", key))
            .arg(expected.unwrap_or(""))
            .arg(value)
            .arg(super::SHARED_VALUE_KEEP.as_secs())
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(|e| self.error(e))?;
        Ok(swapped == 1)
    }

    async fn announce(&self, name: &str) -> Result<(), LockError> {
        let _: i64 = self
            .conn()
            .await?
            .publish(self.channel(), name)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Names announced on the queue's channel, from a subscriber task started at the first
    /// call. The task reconnects after errors; names published meanwhile are missed (the
    /// periodic listing finds them).
    fn announcements(&self) -> Option<broadcast::Receiver<Announcement>> {
        let sender = self.announcements.get_or_init(|| {
            let (tx, _) = broadcast::channel(1024);
            tokio::spawn(subscribe(
                self.connector.clone(),
                self.channel(),
                self.url.clone(),
                tx.clone(),
            ));
            tx
        });
        Some(sender.subscribe())
    }

    async fn data_age(&self) -> Result<Duration, LockError> {
        let run_id = self.run_id().await?;
        let ms: i64 = self
            .scripts
            .data_age
            .key(format!("{}:epoch", self.namespace))
            .key(format!("{}:epoch-server", self.namespace))
            .arg(run_id)
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Duration::from_millis(ms.max(0) as u64))
    }

    async fn check(&self) -> Result<String, LockError> {
        let info = self.server_info().await?;
        let version = info_field(&info, "redis_version").unwrap_or_else(|| "unknown".into());
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < MIN_VERSION {
            return Err(LockError(format!(
                "Redis {} is version {version}; the queue needs {}.{} or later",
                self.url, MIN_VERSION.0, MIN_VERSION.1
            )));
        }
        Ok(format!("Redis {version} at {}", self.url))
    }
}

/// The value of `field` in an `INFO` answer.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// `<key> <unix ms>` → a [`FinishedRef`].
pub(super) fn parse_finished(value: &str) -> Option<FinishedRef> {
    let (key, ms) = value.trim().rsplit_once(' ')?;
    Some(FinishedRef {
        key: key.to_string(),
        at: DateTime::<Utc>::from_timestamp_millis(ms.parse().ok()?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_errors() {
        let url = RedisUrl::parse("redis://:sekrit@127.0.0.1:1/0").unwrap();
        assert_eq!(
            redact("auth failed for sekrit at 127.0.0.1", &url),
            "auth failed for *** at 127.0.0.1"
        );
    }

    #[test]
    fn finished_values_parse() {
        let f = parse_finished("done/1.M2P3Q4.h,S=5 1700000000123").unwrap();
        assert_eq!(f.key, "done/1.M2P3Q4.h,S=5");
        assert_eq!(f.at.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(parse_finished("nonsense"), None);
    }
}
