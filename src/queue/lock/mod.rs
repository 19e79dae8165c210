//! Lock engines: where leases live, where fencing numbers come from, and where finished
//! messages' SHA-256 are remembered.
//!
//! A lease is held by a [`Token`], `<fence>:<owner>:<nonce>`: the fencing number it was given
//! (it only grows, across restarts of the engine too), the owner that took it (unique per
//! process start) and a random nonce. Renewing, releasing and the check before a finish
//! compare the token atomically inside the engine; a token that no longer holds the lease
//! (expired, taken by another, or lost with the engine's data) is refused.
//!
//! | engine | for | guarantees |
//! |---|---|---|
//! | [`redis`] | many machines | `SET NX PX` leases, Lua compare-and-expire / compare-and-delete, fencing numbers seeded from the server's clock so they keep growing after a restart without data; an epoch key tells when its data began |
//! | [`local`] | one machine | lease files changed under one `flock`, fencing numbers seeded from the clock; nothing outside this machine is protected |
//!
//! Swift cannot be a lock engine: it has no atomic conditional write. Another engine (etcd, a
//! store with atomic conditional writes) implements [`LockEngine`].

pub mod local;
pub mod redis;

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The proof of holding a lease: `<fence>:<owner>:<nonce>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// A new token for `owner` with fencing number `fence`.
    pub fn new(fence: u64, owner: &str) -> Token {
        Token(format!(
            "{fence}:{owner}:{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ))
    }

    /// Parses a token given back by a user (`--token`).
    pub fn parse(s: &str) -> Result<Token, String> {
        let bad = || format!("{s:?} is not a lease token (<fence>:<owner>:<nonce>)");
        let (fence, rest) = s.split_once(':').ok_or_else(bad)?;
        let (owner, nonce) = rest.rsplit_once(':').ok_or_else(bad)?;
        if fence.parse::<u64>().is_err() || owner.is_empty() || nonce.is_empty() {
            return Err(bad());
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        Ok(Token(s.to_string()))
    }

    /// The fencing number of the lease.
    pub fn fence(&self) -> u64 {
        self.0
            .split(':')
            .next()
            .and_then(|f| f.parse().ok())
            .unwrap_or(0)
    }

    /// Who took the lease.
    pub fn owner(&self) -> &str {
        let rest = self.0.split_once(':').map(|(_, r)| r).unwrap_or("");
        rest.rsplit_once(':').map(|(o, _)| o).unwrap_or(rest)
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.0)
    }
}

/// A process-start-unique owner id: `<host>-<pid>-<random>`, readable and never reused.
pub fn new_owner_id(host: &str) -> String {
    let host: String = crate::store::key::sanitize_host(host)
        .chars()
        .filter(|c| *c != ':')
        .take(40)
        .collect();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Who holds a lease and for how much longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The holder's token.
    pub token: Token,
    /// Time left on the lease.
    pub remaining: Duration,
}

/// A message remembered as finished, found by the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRef {
    /// Its key when it was finished, e.g. `done/<name>@<fence>`.
    pub key: String,
    /// When it was finished.
    pub at: DateTime<Utc>,
}

/// A lock engine that cannot be reached or answered nonsense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockError(pub String);

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LockError {}

/// What an engine's announcement subscriber passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// This name (or, for a requeued copy, this key `cur/<name>@<fence>`) is new under `cur/`.
    New(String),
    /// Announcements may have been missed (the subscription began or began again): what
    /// arrived meanwhile is found only by listing.
    Gap,
}

/// A blocking store step run under a lease ([`LockEngine::with_lease`]).
pub type Step = Box<dyn FnOnce() -> object_store::Result<()> + Send>;

/// Leases, fencing numbers and the finished-message index of one queue.
#[async_trait]
pub trait LockEngine: Send + Sync + fmt::Debug {
    /// Takes the lease on `name` for `ttl` when nobody holds it; `None` when somebody does.
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Token>, LockError>;

    /// Takes the lease for a claim from `cur/` or the take-over of a `processing/` copy: as
    /// [`LockEngine::acquire`], and also `None` while the name carries the mark of
    /// [`LockEngine::retire`]. Workers walk listings that may be older than the moves of
    /// other workers (and on Swift, older than its deletes); the mark stops them from taking
    /// a message a claim lately finished. Takes from `retry/` and requeues replace the mark.
    async fn acquire_unmarked(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Token>, LockError> {
        self.acquire(name, owner, ttl).await
    }

    /// Gives the lease up, if `token` still holds it, after the message left `cur/` and
    /// `processing/` (finished or released), marking the name for `keep` (engines without
    /// marks just release); `false` if the token did not hold it.
    async fn retire(&self, name: &str, token: &Token, keep: Duration) -> Result<bool, LockError> {
        let _ = keep;
        self.release(name, token).await
    }

    /// Extends the lease to `ttl` from now if `token` still holds it; `false` if not.
    async fn renew(&self, name: &str, token: &Token, ttl: Duration) -> Result<bool, LockError>;

    /// Whether [`LockEngine::with_lease`] runs its step under the lock every check of a
    /// lease takes (no check of another holder can come between); otherwise the step runs
    /// right after the check, and a pause in between can outlast the lease.
    fn steps_under_lock(&self) -> bool {
        false
    }

    /// Runs the blocking `step` while `token` holds the lease on `name` (renewed to `ttl`);
    /// `None`, and `step` not run, when it does not. Where the engine can (the local table),
    /// `step` runs under the lock every other check of the lease takes, so that no other
    /// holder's check comes between the two; elsewhere it runs right after the check.
    async fn with_lease(
        &self,
        name: &str,
        token: &Token,
        ttl: Duration,
        step: Step,
    ) -> Result<Option<object_store::Result<()>>, LockError> {
        if !self.renew(name, token, ttl).await? {
            return Ok(None);
        }
        Ok(Some(
            tokio::task::spawn_blocking(step).await.unwrap_or_else(|e| {
                Err(object_store::Error::Generic {
                    store: "queue",
                    source: Box::new(e),
                })
            }),
        ))
    }

    /// Whether `name` has a lease, live or lately given up (the mark of
    /// [`LockEngine::retire`]): a worker took it on. Engines without marks: a live lease.
    async fn taken(&self, name: &str) -> Result<bool, LockError> {
        Ok(self
            .holders(&[name.to_string()])
            .await?
            .pop()
            .flatten()
            .is_some())
    }

    /// Gives the lease up if `token` still holds it; `false` if it did not.
    async fn release(&self, name: &str, token: &Token) -> Result<bool, LockError>;

    /// The holder of each name's lease, in order.
    async fn holders(&self, names: &[String]) -> Result<Vec<Option<Holder>>, LockError>;

    /// Remembers that the message with this duplicate digest (hex SHA-256) was finished, for
    /// `window`.
    async fn remember_finished(
        &self,
        sha256: &str,
        finished: &FinishedRef,
        window: Duration,
    ) -> Result<(), LockError>;

    /// The message with this duplicate digest finished within the window, if any.
    async fn finished(&self, sha256: &str) -> Result<Option<FinishedRef>, LockError>;

    /// A small value the workers of the queue share (the GoCD pipelines' history), by
    /// `key` (letters, digits and `._:-`); `None` when it is unset.
    async fn shared_value(&self, key: &str) -> Result<Option<String>, LockError>;

    /// Sets the shared value of `key` to `value` (one line, not empty) if it still is
    /// `expected` (`None`: unset), in one step no other worker can come between; whether
    /// it was set. Redis forgets a value [`SHARED_VALUE_KEEP`] after its last change; the
    /// local engine keeps it until its file is removed.
    async fn swap_shared_value(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, LockError>;

    /// Says that `name` (the filter's copy; or the key `cur/<name>@<fence>` of a requeued
    /// copy) is new under `cur/`, to the claims waiting for mail (engines without
    /// announcements do nothing).
    async fn announce(&self, name: &str) -> Result<(), LockError>;

    /// Forgets finished messages whose window has passed, where the engine does not expire
    /// them by itself; returns how many.
    async fn forget_expired(&self) -> Result<usize, LockError> {
        Ok(0)
    }

    /// Names announced as new under `cur/` by any process, if the engine carries
    /// announcements.
    fn announcements(&self) -> Option<tokio::sync::broadcast::Receiver<Announcement>> {
        None
    }

    /// How long the engine's data has existed, by the engine's own clock: leases taken
    /// before it began may have been lost (a Redis restart without persistence), so a claim
    /// found without a lease is taken over only once this age reaches that claim's lease.
    async fn data_age(&self) -> Result<Duration, LockError>;

    /// Checks that the engine is reachable and fit; `Ok` describes it.
    async fn check(&self) -> Result<String, LockError>;
}

/// How long a shared value ([`LockEngine::swap_shared_value`]) is kept after its last
/// change: a pipeline not built for a year is forgotten.
pub const SHARED_VALUE_KEEP: Duration = Duration::from_secs(400 * 24 * 3600);

/// Whether `key` may name a shared value: letters, digits and `._:-`, at most 200 bytes.
pub fn is_shared_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `key` can name a shared value (see [`is_shared_key`]) and `value`, when given,
/// can be kept as one (one line, not empty): an error names them otherwise.
pub fn check_shared(key: &str, value: Option<&str>) -> Result<(), LockError> {
    if !is_shared_key(key) {
        return Err(LockError(format!("{key:?} cannot name a shared value")));
    }
    match value {
        Some(v) if v.is_empty() || v.contains('\n') => {
            Err(LockError(format!("{key:?} = {v:?} cannot be shared")))
        }
        _ => Ok(()),
    }
}

/// The next fencing number: one more than the last, but never less than the clock in
/// microseconds, so that numbers keep growing when the engine restarts without its data.
pub fn next_fence(last: u64, now_micros: u64) -> u64 {
    (last + 1).max(now_micros)
}

/// Microseconds since the Unix epoch, by this machine's clock.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_fence_and_owner() {
        let owner = new_owner_id("mx:1.example");
        assert!(!owner.contains(':'));
        let token = Token::new(42, &owner);
        assert_eq!(token.fence(), 42);
        assert_eq!(token.owner(), owner);
        assert_eq!(Token::parse(token.as_str()).unwrap(), token);
        assert_ne!(Token::new(42, &owner), token);
        for bad in ["", "x:y:z", "1:owner", "1::n", "1:o:n m"] {
            assert!(Token::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn owner_ids_differ_per_start() {
        assert_ne!(new_owner_id("h"), new_owner_id("h"));
    }

    #[test]
    fn fences_grow_past_a_reset() {
        assert_eq!(next_fence(10, 5), 11);
        assert_eq!(next_fence(0, 1_000), 1_000);
    }
}
