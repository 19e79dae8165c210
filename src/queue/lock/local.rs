//! The local lock engine: leases in a file on this machine, for workers that share it.
//!
//! Everything lives in the state directory (by default `<maildir>/.swiftdrop-queue`):
//!
//! | file | holds |
//! |---|---|
//! | `leases` | the lease table, read and rewritten in place under its `flock` by every operation |
//! | `finished/<sha256>` | `<key> <finished, Unix ms> <forget after, Unix ms>` |
//! | `shared/<key>` | a value the workers share (a GoCD pipeline's last state), replaced by a rename under the table's `flock` |
//!
//! The table's first line holds the last fencing number and the epoch (when the table's
//! data began); then one line `<token> <expiry, Unix ms> <name>` per live lease and one line
//! `retired <expiry, Unix ms> <name>` per retired mark (only where moves copy: a Maildir's
//! claims release instead); a line `end <checksum>` proves the table whole (anything after
//! it is ignored). A table that is not whole (a power loss in the middle of a write) counts
//! as lost data, like a Redis restart: its leases are gone and the epoch starts again.
//! Leases expire by the clock like Redis leases do, so a stopped worker loses its claim
//! after the lease. The `flock` is held for one operation: reading and writing the table,
//! and the one rename or attribute write of a step under a lease (no fsync); the kernel
//! releases it when a process dies. No operation creates a file except the first (the
//! table), a finish (its dedup entry) and a swap of a shared value. This protects nothing beyond one machine: the
//! queue refuses `local` for a remote store unless it is chosen explicitly.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{FinishedRef, Holder, LockEngine, LockError, Step, Token, next_fence, now_micros};

/// First word of the table's first line, with the format's version.
const TABLE_HEADER: &str = "swiftdrop-leases 1";
/// First word of the line of a retired mark (a token never reads so).
const RETIRED: &str = "retired";

/// Leases in a table file under one directory.
#[derive(Debug, Clone)]
pub struct LocalEngine {
    dir: PathBuf,
}

/// The lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    fence: u64,
    epoch_ms: i64,
    /// By name: the holder's token and the lease's expiry (Unix ms).
    leases: BTreeMap<String, (Token, u64)>,
    /// By name: until when (Unix ms) a message that left `cur/` is marked so
    /// ([`LockEngine::retire`]).
    retired: BTreeMap<String, u64>,
}

impl Table {
    /// A table whose data begins now.
    fn fresh(fence: u64) -> Table {
        Table {
            fence,
            epoch_ms: now_ms() as i64,
            leases: BTreeMap::new(),
            retired: BTreeMap::new(),
        }
    }

    fn parse(text: &str) -> Option<Table> {
        // The first `end` line whose checksum matches ends the table: what follows is the
        // tail of a longer table that was being cut short.
        let mut offset = 0;
        let body = loop {
            let line_end = text[offset..].find('\n').map(|i| offset + i + 1)?;
            let line = &text[offset..line_end];
            if let Some(sum) = line.strip_prefix("end ") {
                if sum.trim_end() == format!("{:016x}", checksum(&text[..offset])) {
                    break &text[..offset];
                }
            }
            offset = line_end;
        };
        let mut lines = body.lines();
        let header = lines.next()?.strip_prefix(TABLE_HEADER)?;
        let mut fence = None;
        let mut epoch_ms = None;
        for field in header.split_whitespace() {
            match field.split_once('=') {
                Some(("fence", v)) => fence = v.parse().ok(),
                Some(("epoch", v)) => epoch_ms = v.parse().ok(),
                _ => {}
            }
        }
        let (mut leases, mut retired) = (BTreeMap::new(), BTreeMap::new());
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let (Some(token), Some(expiry), Some(name)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            if token == RETIRED {
                retired.insert(name.to_string(), expiry.parse().ok()?);
            } else {
                leases.insert(
                    name.to_string(),
                    (Token::parse(token).ok()?, expiry.parse().ok()?),
                );
            }
        }
        Some(Table {
            fence: fence?,
            epoch_ms: epoch_ms?,
            leases,
            retired,
        })
    }

    fn render(&self) -> String {
        let mut body = format!(
            "{TABLE_HEADER} fence={} epoch={}\n",
            self.fence, self.epoch_ms
        );
        for (name, (token, expiry)) in &self.leases {
            let _ = writeln!(body, "{token} {expiry} {name}");
        }
        for (name, expiry) in &self.retired {
            let _ = writeln!(body, "{RETIRED} {expiry} {name}");
        }
        let sum = checksum(&body);
        let _ = writeln!(body, "end {sum:016x}");
        body
    }

    /// The live lease on `name`.
    fn live(&self, name: &str) -> Option<&(Token, u64)> {
        self.leases
            .get(name)
            .filter(|(_, expiry)| *expiry > now_ms())
    }
}

/// FNV-1a over the table's text: enough to tell a torn write from a whole one.
fn checksum(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl LocalEngine {
    /// An engine keeping its files in `dir`, created when missing.
    pub fn open(dir: &Path) -> Result<LocalEngine, LockError> {
        fs::create_dir_all(dir.join("finished"))
            .and_then(|()| fs::create_dir_all(dir.join("shared")))
            .map_err(|e| {
                LockError(format!(
                    "cannot create the state directory {}: {e}",
                    dir.display()
                ))
            })?;
        Ok(LocalEngine {
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `op` on the lease table under its `flock` and writes the table back when `op`
    /// (or the expiry of a lease) changed it. When nobody holds the `flock` (the common
    /// case) that is microseconds of page-cache I/O, done on this thread; a wait for it goes
    /// to a blocking thread, which waits as long as another process holds it (microseconds,
    /// but a holder stopped by SIGSTOP holds it until SIGCONT): a caller that gave up after
    /// [`LOCK_PATIENCE`] has its `op` skipped when the lock comes, so no step runs for a
    /// caller that is gone.
    async fn with_table<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Table) -> T + Send + 'static,
    ) -> Result<T, LockError> {
        let path = self.dir.join("leases");
        let shown = self.dir.display().to_string();
        let fail = move |e: io::Error| LockError(format!("local lock in {shown}: {e}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(&fail)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return change_table(file, &path, op).map_err(fail),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {}
            Err(e) => return Err(fail(e.into())),
        }
        // Who goes first once the flock comes: the waiting thread (it runs `op`) or the
        // caller giving up (then `op` never runs). Never both: a caller told that the
        // operation failed must not have it done behind its back.
        let turn = Arc::new(AtomicU8::new(WAITING));
        let thread_turn = turn.clone();
        let blocking_fail = fail.clone();
        let mut work = tokio::task::spawn_blocking(move || -> Result<Option<T>, LockError> {
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| blocking_fail(e.into()))?;
            if thread_turn
                .compare_exchange(WAITING, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                return Ok(None);
            }
            change_table(file, &path, op)
                .map(Some)
                .map_err(blocking_fail)
        });
        let done = match tokio::time::timeout(LOCK_PATIENCE, &mut work).await {
            Ok(done) => done,
            Err(_) => {
                if turn
                    .compare_exchange(WAITING, GAVE_UP, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Err(LockError(format!(
                        "the lease table {}/leases stayed locked for {LOCK_PATIENCE:?} (a process stopped while holding it?)",
                        self.dir.display()
                    )));
                }
                // The lock came just now and `op` runs: its outcome is the answer.
                work.await
            }
        };
        match done {
            Ok(Ok(Some(result))) => Ok(result),
            Ok(Ok(None)) => unreachable!("only a caller that gave up skips its step"),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(LockError(format!("local lock: {e}"))),
        }
    }
}

/// Reads the table from `file` (whose `flock` the caller holds), runs `op` on it and writes
/// it back if it changed; closing the file releases the `flock`.
fn change_table<T>(mut file: File, path: &Path, op: impl FnOnce(&mut Table) -> T) -> io::Result<T> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    // Junk that is not UTF-8 (a torn write on a damaged disk) fails the checksum like any
    // other damage.
    let text = String::from_utf8_lossy(&bytes);
    let mut table = match Table::parse(&text) {
        Some(table) => table,
        None => {
            if !text.is_empty() {
                tracing::warn!(file = %path.display(), "the lease table is damaged: its leases are lost");
            }
            Table::fresh(0)
        }
    };
    let now = now_ms();
    table.leases.retain(|_, (_, expiry)| *expiry > now);
    table.retired.retain(|_, expiry| *expiry > now);
    let result = op(&mut table);
    let rendered = table.render();
    if rendered.as_bytes() != bytes.as_slice() {
        // In place: no new inode per operation. A process killed between the two calls
        // leaves the new table followed by the old one's tail, which parsing ignores.
        file.write_all_at(rendered.as_bytes(), 0)?;
        file.set_len(rendered.len() as u64)?;
    }
    Ok(result)
}

impl LocalEngine {
    /// Takes the lease on `name` when nobody holds it; `respect_mark`: not while the name is
    /// marked finished either (any other taker replaces the mark).
    async fn take(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
        respect_mark: bool,
    ) -> Result<Option<Token>, LockError> {
        let (name, owner) = (name.to_string(), owner.to_string());
        self.with_table(move |table| {
            if table.live(&name).is_some() || (respect_mark && table.retired.contains_key(&name)) {
                return None;
            }
            table.retired.remove(&name);
            table.fence = next_fence(table.fence, now_micros());
            let token = Token::new(table.fence, &owner);
            let expiry = now_ms() + ttl.as_millis() as u64;
            table.leases.insert(name, (token.clone(), expiry));
            Some(token)
        })
        .await
    }
}

/// The turns of a wait for the lease table's lock ([`LocalEngine::with_table`]).
const WAITING: u8 = 0;
const RUNNING: u8 = 1;
const GAVE_UP: u8 = 2;

/// How long an operation waits for the lease table's lock before it fails.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<key> <at ms> <forget ms>` → the entry, if it is still remembered.
fn parse_finished(text: &str) -> Option<FinishedRef> {
    let (entry, forget) = text.trim().rsplit_once(' ')?;
    if forget.parse::<u64>().ok()? <= now_ms() {
        return None;
    }
    super::redis::parse_finished(entry)
}

#[async_trait]
impl LockEngine for LocalEngine {
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Token>, LockError> {
        self.take(name, owner, ttl, false).await
    }

    async fn acquire_unmarked(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Token>, LockError> {
        self.take(name, owner, ttl, true).await
    }

    async fn retire(&self, name: &str, token: &Token, keep: Duration) -> Result<bool, LockError> {
        let (name, token) = (name.to_string(), token.clone());
        self.with_table(move |table| match table.leases.get(&name) {
            Some((held, _)) if *held == token => {
                table.leases.remove(&name);
                table
                    .retired
                    .insert(name, now_ms() + keep.as_millis().max(1) as u64);
                true
            }
            _ => false,
        })
        .await
    }

    async fn taken(&self, name: &str) -> Result<bool, LockError> {
        let name = name.to_string();
        self.with_table(move |table| {
            table.live(&name).is_some() || table.retired.contains_key(&name)
        })
        .await
    }

    async fn renew(&self, name: &str, token: &Token, ttl: Duration) -> Result<bool, LockError> {
        let (name, token) = (name.to_string(), token.clone());
        self.with_table(move |table| match table.leases.get_mut(&name) {
            Some((held, expiry)) if *held == token => {
                *expiry = now_ms() + ttl.as_millis() as u64;
                true
            }
            _ => false,
        })
        .await
    }

    /// The step runs inline, under the table's `flock`: every lease check of every process
    /// on this machine waits for it, so no other holder can take the lease between the
    /// check and the step. The step is one rename or one attribute write (microseconds).
    fn steps_under_lock(&self) -> bool {
        true
    }

    async fn with_lease(
        &self,
        name: &str,
        token: &Token,
        ttl: Duration,
        step: Step,
    ) -> Result<Option<object_store::Result<()>>, LockError> {
        let (name, token) = (name.to_string(), token.clone());
        self.with_table(move |table| match table.leases.get_mut(&name) {
            Some((held, expiry)) if *held == token => {
                *expiry = now_ms() + ttl.as_millis() as u64;
                Some(step())
            }
            _ => None,
        })
        .await
    }

    async fn release(&self, name: &str, token: &Token) -> Result<bool, LockError> {
        let (name, token) = (name.to_string(), token.clone());
        self.with_table(move |table| match table.leases.get(&name) {
            Some((held, _)) if *held == token => {
                table.leases.remove(&name);
                true
            }
            _ => false,
        })
        .await
    }

    async fn holders(&self, names: &[String]) -> Result<Vec<Option<Holder>>, LockError> {
        let names = names.to_vec();
        self.with_table(move |table| {
            let now = now_ms();
            names
                .iter()
                .map(|name| {
                    table.live(name).map(|(token, expiry)| Holder {
                        token: token.clone(),
                        remaining: Duration::from_millis(expiry.saturating_sub(now)),
                    })
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
        if !is_sha256(sha256) {
            return Err(LockError(format!("{sha256:?} is not a SHA-256")));
        }
        let path = self.dir.join("finished").join(sha256);
        let forget = now_ms() + window.as_millis() as u64;
        let line = format!(
            "{} {} {forget}\n",
            finished.key,
            finished.at.timestamp_millis()
        );
        // A torn write reads as "not remembered": the index is a hint, never the record.
        tokio::task::spawn_blocking(move || File::create(&path)?.write_all(line.as_bytes()))
            .await
            .map_err(|e| LockError(format!("local dedup index: {e}")))?
            .map_err(|e| LockError(format!("local dedup index: {e}")))
    }

    async fn finished(&self, sha256: &str) -> Result<Option<FinishedRef>, LockError> {
        if !is_sha256(sha256) {
            return Ok(None);
        }
        let path = self.dir.join("finished").join(sha256);
        tokio::task::spawn_blocking(move || Ok(read(&path)?.and_then(|t| parse_finished(&t))))
            .await
            .map_err(|e| LockError(format!("local dedup index: {e}")))?
            .map_err(|e: io::Error| LockError(format!("local dedup index: {e}")))
    }

    async fn shared_value(&self, key: &str) -> Result<Option<String>, LockError> {
        super::check_shared(key, None)?;
        let path = self.dir.join("shared").join(key);
        tokio::task::spawn_blocking(move || read(&path))
            .await
            .map_err(|e| LockError(format!("local shared value: {e}")))?
            .map_err(|e| LockError(format!("local shared value {key}: {e}")))
    }

    async fn swap_shared_value(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, LockError> {
        super::check_shared(key, Some(value))?;
        let path = self.dir.join("shared").join(key);
        let (expected, value) = (expected.map(str::to_string), value.to_string());
        // The table's flock orders every swap of this machine's workers.
        self.with_table(move |_| -> io::Result<bool> {
            if read(&path)? != expected {
                return Ok(false);
            }
            // `~` is never in a key: no other value's file.
            let mut staged = path.clone().into_os_string();
            staged.push("~");
            fs::write(&staged, &value)?;
            fs::rename(&staged, &path)?;
            Ok(true)
        })
        .await?
        .map_err(|e| LockError(format!("local shared value {key}: {e}")))
    }

    async fn announce(&self, _name: &str) -> Result<(), LockError> {
        // A local Maildir announces itself: waiting claims watch `cur/` with inotify.
        Ok(())
    }

    async fn data_age(&self) -> Result<Duration, LockError> {
        let epoch_ms = self.with_table(|table| table.epoch_ms).await?;
        Ok(Duration::from_millis(
            (now_ms() as i64 - epoch_ms).max(0) as u64
        ))
    }

    async fn check(&self) -> Result<String, LockError> {
        self.with_table(|_| ()).await?;
        Ok(format!("local lock in {}", self.dir.display()))
    }

    async fn forget_expired(&self) -> Result<usize, LockError> {
        let dir = self.dir.join("finished");
        tokio::task::spawn_blocking(move || -> io::Result<usize> {
            let mut forgotten = 0;
            for entry in fs::read_dir(dir)? {
                let path = entry?.path();
                if read(&path)?.and_then(|t| parse_finished(&t)).is_none() {
                    remove(&path)?;
                    forgotten += 1;
                }
            }
            Ok(forgotten)
        })
        .await
        .map_err(|e| LockError(format!("local dedup index: {e}")))?
        .map_err(|e| LockError(format!("local dedup index: {e}")))
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
        // A torn table is lost data: leases gone, epoch new, fences still growing.
        let age = engine.data_age().await.unwrap();
        let held = engine
            .acquire("n", "c", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let table = dir.path().join("leases");
        let text = fs::read_to_string(&table).unwrap();
        fs::write(&table, &text[..text.len() - 5]).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(engine.holders(&["n".into()]).await.unwrap()[0].is_none());
        assert!(engine.data_age().await.unwrap() < age);
        let c = engine.acquire("n", "c", ttl).await.unwrap().unwrap();
        assert!(c.fence() > held.fence());
    }

    #[test]
    fn a_table_cut_short_in_place_keeps_its_leases() {
        let mut table = Table::fresh(7);
        table
            .leases
            .insert("a".into(), (Token::new(7, "o"), u64::MAX / 2));
        let long = table.render();
        table.leases.clear();
        let short = table.render();
        // Killed between the write and the truncation: the old table's tail follows.
        let mixed = format!("{short}{}", &long[short.len()..]);
        assert_eq!(Table::parse(&mixed), Some(table));
        assert_eq!(Table::parse(&long[..long.len() - 3]), None);
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
