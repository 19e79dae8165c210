//! The local lock engine: leases in files on this machine, for workers that share it.
//!
//! Everything lives in the state directory (by default `<maildir>/.swiftdrop-queue`):
//!
//! | file | holds |
//! |---|---|
//! | `lock` | the `flock` that every operation below holds while it reads and writes |
//! | `fence` | the last fencing number given |
//! | `epoch` | when the directory's data began (Unix ms) |
//! | `leases/<name>` | `<token> <expiry, Unix ms>` of the lease on a message |
//! | `finished/<sha256>` | `<key> <finished, Unix ms> <forget after, Unix ms>` |
//!
//! Leases expire by the clock like Redis leases do, so a stopped worker loses its claim
//! after the lease; the `flock` is held only for the microseconds of one operation and is
//! released by the kernel when a process dies. Writes replace whole files (write, rename),
//! so a crash never leaves half a lease. This protects nothing beyond one machine: the queue
//! refuses `local` for a remote store unless it is chosen explicitly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{FinishedRef, Holder, LockEngine, LockError, Token, next_fence, now_micros};

/// Leases in files under one directory.
#[derive(Debug, Clone)]
pub struct LocalEngine {
    dir: PathBuf,
}

impl LocalEngine {
    /// An engine keeping its files in `dir`, created when missing.
    pub fn open(dir: &Path) -> Result<LocalEngine, LockError> {
        for sub in ["leases", "finished"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| {
                LockError(format!(
                    "cannot create the state directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        Ok(LocalEngine {
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `op` holding the engine's `flock`, on a blocking thread.
    async fn locked<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
    ) -> Result<T, LockError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join("lock"))?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            let result = op(&dir);
            drop(file); // closing releases the flock
            result
        })
        .await
        .map_err(|e| LockError(format!("local lock: {e}")))?
        .map_err(|e| LockError(format!("local lock in {}: {e}", self.dir.display())))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Replaces `path` with `contents` atomically: written to `<dir>/.staged`, renamed over.
/// Only called under the flock, so one staging file serves every write.
fn replace(dir: &Path, path: &Path, contents: &str) -> io::Result<()> {
    let staged = dir.join(".staged");
    let mut file = File::create(&staged)?;
    file.write_all(contents.as_bytes())?;
    drop(file);
    fs::rename(&staged, path)
}

fn read(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The live lease in `leases/<name>`: its token and expiry.
fn live_lease(dir: &Path, name: &str) -> io::Result<Option<(Token, u64)>> {
    let Some(text) = read(&dir.join("leases").join(name))? else {
        return Ok(None);
    };
    let mut parts = text.split_whitespace();
    let (Some(token), Some(expiry)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (Ok(token), Ok(expiry)) = (Token::parse(token), expiry.parse::<u64>()) else {
        return Ok(None);
    };
    Ok((expiry > now_ms()).then_some((token, expiry)))
}

fn lease_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("leases").join(name)
}

#[async_trait]
impl LockEngine for LocalEngine {
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Token>, LockError> {
        let (name, owner) = (name.to_string(), owner.to_string());
        self.locked(move |dir| {
            if live_lease(dir, &name)?.is_some() {
                return Ok(None);
            }
            let last = read(&dir.join("fence"))?
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let fence = next_fence(last, now_micros());
            replace(dir, &dir.join("fence"), &fence.to_string())?;
            let token = Token::new(fence, &owner);
            let expiry = now_ms() + ttl.as_millis() as u64;
            replace(dir, &lease_path(dir, &name), &format!("{token} {expiry}\n"))?;
            Ok(Some(token))
        })
        .await
    }

    async fn renew(&self, name: &str, token: &Token, ttl: Duration) -> Result<bool, LockError> {
        let (name, token) = (name.to_string(), token.clone());
        self.locked(move |dir| match live_lease(dir, &name)? {
            Some((held, _)) if held == token => {
                let expiry = now_ms() + ttl.as_millis() as u64;
                replace(dir, &lease_path(dir, &name), &format!("{token} {expiry}\n"))?;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn release(&self, name: &str, token: &Token) -> Result<bool, LockError> {
        let (name, token) = (name.to_string(), token.clone());
        self.locked(move |dir| match live_lease(dir, &name)? {
            Some((held, _)) if held == token => {
                remove(&lease_path(dir, &name))?;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }

    async fn holders(&self, names: &[String]) -> Result<Vec<Option<Holder>>, LockError> {
        let names = names.to_vec();
        self.locked(move |dir| {
            let now = now_ms();
            names
                .iter()
                .map(|name| {
                    Ok(live_lease(dir, name)?.map(|(token, expiry)| Holder {
                        token,
                        remaining: Duration::from_millis(expiry.saturating_sub(now)),
                    }))
                })
                .collect()
        })
        .await
    }

    async fn remember_finished(
        &self,
        sha256: &str,
        finished: &FinishedRef,
        window: Duration,
    ) -> Result<(), LockError> {
        if !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(LockError(format!("{sha256:?} is not a SHA-256")));
        }
        let path = self.dir.join("finished").join(sha256);
        let forget = now_ms() + window.as_millis() as u64;
        let line = format!(
            "{} {} {forget}\n",
            finished.key,
            finished.at.timestamp_millis()
        );
        self.locked(move |dir| replace(dir, &path, &line)).await
    }

    async fn finished(&self, sha256: &str) -> Result<Option<FinishedRef>, LockError> {
        if !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let path = self.dir.join("finished").join(sha256);
        self.locked(move |_| {
            let Some(text) = read(&path)? else {
                return Ok(None);
            };
            let Some((entry, forget)) = text.trim().rsplit_once(' ') else {
                return Ok(None);
            };
            if forget.parse::<u64>().map_or(true, |f| f <= now_ms()) {
                remove(&path)?;
                return Ok(None);
            }
            Ok(super::redis::parse_finished(entry))
        })
        .await
    }

    async fn announce(&self, _name: &str) -> Result<(), LockError> {
        // A local Maildir announces itself: waiting claims watch `cur/` with inotify.
        Ok(())
    }

    async fn epoch(&self) -> Result<DateTime<Utc>, LockError> {
        let ms = self
            .locked(|dir| {
                let path = dir.join("epoch");
                match read(&path)?.and_then(|s| s.trim().parse::<i64>().ok()) {
                    Some(ms) => Ok(ms),
                    None => {
                        let now = now_ms() as i64;
                        replace(dir, &path, &now.to_string())?;
                        Ok(now)
                    }
                }
            })
            .await?;
        DateTime::<Utc>::from_timestamp_millis(ms)
            .ok_or_else(|| LockError(format!("epoch {ms} is not a time")))
    }

    async fn check(&self) -> Result<String, LockError> {
        let dir = self.dir.display().to_string();
        self.locked(|_| Ok(())).await?;
        Ok(format!("local lock in {dir}"))
    }
}

impl LocalEngine {
    /// Forgets finished messages whose window has passed; returns how many.
    pub async fn forget_expired(&self) -> Result<usize, LockError> {
        self.locked(|dir| {
            let mut forgotten = 0;
            for entry in fs::read_dir(dir.join("finished"))? {
                let path = entry?.path();
                let expired = read(&path)?
                    .and_then(|t| t.trim().rsplit_once(' ').map(|(_, f)| f.to_string()))
                    .and_then(|f| f.parse::<u64>().ok())
                    .is_none_or(|f| f <= now_ms());
                if expired {
                    remove(&path)?;
                    forgotten += 1;
                }
            }
            Ok(forgotten)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_are_exclusive_fenced_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let engine = LocalEngine::open(dir.path()).unwrap();
        let ttl = Duration::from_millis(300);
        let a = engine.acquire("m", "a", ttl).await.unwrap().unwrap();
        assert_eq!(engine.acquire("m", "b", ttl).await.unwrap(), None);
        assert!(engine.renew("m", &a, ttl).await.unwrap());
        let holders = engine.holders(&["m".into(), "n".into()]).await.unwrap();
        assert_eq!(holders[0].as_ref().unwrap().token, a);
        assert_eq!(holders[1], None);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let b = engine.acquire("m", "b", ttl).await.unwrap().unwrap();
        assert!(b.fence() > a.fence());
        assert!(!engine.renew("m", &a, ttl).await.unwrap());
        assert!(!engine.release("m", &a).await.unwrap());
        assert!(engine.release("m", &b).await.unwrap());
        // Fences keep growing after the state is lost.
        fs::remove_file(dir.path().join("fence")).unwrap();
        let c = engine.acquire("m", "c", ttl).await.unwrap().unwrap();
        assert!(c.fence() > b.fence());
    }

    #[tokio::test]
    async fn finished_messages_are_forgotten_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let engine = LocalEngine::open(dir.path()).unwrap();
        let sha = "ab".repeat(32);
        let at = chrono::Utc::now();
        let finished = FinishedRef {
            key: "done/x".into(),
            at: chrono::DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap(),
        };
        engine
            .remember_finished(&sha, &finished, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(engine.finished(&sha).await.unwrap(), Some(finished));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(engine.finished(&sha).await.unwrap(), None);
        assert!(
            engine
                .remember_finished(
                    "../x",
                    &FinishedRef {
                        key: "k".into(),
                        at
                    },
                    Duration::from_secs(1)
                )
                .await
                .is_err()
        );
    }
}
