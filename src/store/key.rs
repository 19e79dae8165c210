//! Object keys: the only place Maildir-style names are made and parsed.
//!
//! A stored message is named `cur/<secs>.M<usec>P<pid>Q<n>R<random>.<host>,S=<size>`, the
//! Maildir convention (<https://cr.yp.to/proto/maildir.html>: its `M`, `P`, `Q` and `R` fields,
//! Dovecot's `,S=`): seconds and microseconds of the delivery time, the process id, a
//! per-process delivery counter, 64 random bits drawn once per process start (16 hex
//! digits), the sanitised host name and the exact byte size of the object. Host name, pid and
//! counter repeat across replicas (every container is `swiftdrop` with pid 1, counting from
//! 0) and restarts; the random part does not. Names without `R` (written before it existed)
//! still parse.

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The folder new messages are published to.
pub const CUR: &str = "cur";
/// Where objects wait until they may appear under `cur/`; workers never look there.
pub const STAGING: &str = "tmp";
/// A prefix that holds nothing: listing it proves a bucket and the credentials.
pub const PROBE_FOLDER: &str = "swiftdrop-check";

/// Delivery counter shared by every transaction of this process: with the pid and the host
/// name it makes names unique even when two messages arrive in the same microsecond.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// This process start's random part of every name.
static BOOT: LazyLock<u64> = LazyLock::new(|| {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"))
});

/// The parts of a message object's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageKey {
    /// Seconds since the Unix epoch at delivery.
    pub secs: u64,
    /// Microseconds within that second.
    pub usec: u32,
    /// Process id of the writer.
    pub pid: u32,
    /// Per-process delivery counter.
    pub seq: u64,
    /// Random per process start (`None` in names made before it existed).
    pub random: Option<u64>,
    /// Sanitised host name of the writer.
    pub host: String,
    /// Exact size of the stored object in bytes.
    pub size: u64,
}

impl MessageKey {
    /// A fresh, unique key for an object of `size` bytes written now by this process.
    pub fn new(host: &str, size: u64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        MessageKey {
            secs: now.as_secs(),
            usec: now.subsec_micros(),
            pid: std::process::id(),
            seq: DELIVERIES.fetch_add(1, Ordering::Relaxed),
            random: Some(*BOOT),
            host: sanitize_host(host),
            size,
        }
    }

    /// The object name inside its folder, e.g.
    /// `1700000000.M12P34Q5R0123456789abcdef.mx.example,S=241`.
    pub fn file_name(&self) -> String {
        let random = self
            .random
            .map(|r| format!("R{r:016x}"))
            .unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}{random}.{},S={}",
            self.secs, self.usec, self.pid, self.seq, self.host, self.size
        )
    }

    /// The same message under a new name (a new counter value): for a write that found its
    /// name taken, which never replaces what is there.
    pub fn renamed(&self) -> Self {
        MessageKey {
            seq: DELIVERIES.fetch_add(1, Ordering::Relaxed),
            ..self.clone()
        }
    }

    /// The full object key under `cur/`.
    pub fn cur_path(&self) -> String {
        format!("{CUR}/{}", self.file_name())
    }

    /// The key under the staging folder `tmp/`, where an object waits until every other
    /// step of its message succeeded.
    pub fn staged_path(&self) -> String {
        format!("{STAGING}/{}", self.file_name())
    }

    /// Parses a file name (without folder) made by [`MessageKey::file_name`]. Maildir info
    /// suffixes (`:2,S`) are ignored. Returns `None` for names this crate did not make.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.split(':').next()?;
        let (secs, rest) = name.split_once(".M")?;
        let (usec, rest) = rest.split_once('P')?;
        let (pid, rest) = rest.split_once('Q')?;
        let (unique, rest) = rest.split_once('.')?;
        let (seq, random) = match unique.split_once('R') {
            Some((seq, random)) if random.len() == 16 => {
                (seq, Some(u64::from_str_radix(random, 16).ok()?))
            }
            Some(_) => return None,
            None => (unique, None),
        };
        let (host, size) = rest.rsplit_once(",S=")?;
        Some(MessageKey {
            secs: secs.parse().ok()?,
            usec: usec.parse().ok()?,
            pid: pid.parse().ok()?,
            seq: seq.parse().ok()?,
            random,
            host: host.to_string(),
            size: size.parse().ok()?,
        })
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cur_path())
    }
}

/// Makes a host name safe inside a key: anything but ASCII letters, digits, `.`, `-` and `_`
/// becomes `_`, so `/` cannot add a folder and `:` or `,` cannot be read as a Maildir field.
pub fn sanitize_host(host: &str) -> String {
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

/// The staging key of a message streamed while it arrives (its size, and so its name, is
/// known only at its end).
pub fn stream_staging_path(received: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{STAGING}/{}.{}.streaming",
        received.timestamp(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_round_trips() {
        let key = MessageKey::new("mx.example.org", 241);
        let name = key.file_name();
        assert!(name.ends_with(".mx.example.org,S=241"), "{name}");
        assert_eq!(MessageKey::parse(&name), Some(key.clone()));
        assert_eq!(MessageKey::parse(&format!("{name}:2,S")), Some(key));
    }

    #[test]
    fn hosts_cannot_escape_the_folder_or_fake_fields() {
        assert_eq!(sanitize_host("a/b:c,S=1 d"), "a_b_c_S_1_d");
        assert_eq!(sanitize_host(""), "localhost");
        let key = MessageKey::new("evil/../host:2,S", 7);
        assert!(!key.file_name().contains('/'));
        assert_eq!(MessageKey::parse(&key.file_name()).unwrap().size, 7);
    }

    #[test]
    fn keys_are_unique_within_one_microsecond() {
        let a = MessageKey::new("h", 1);
        let b = MessageKey::new("h", 1);
        assert_ne!(a.file_name(), b.file_name());
    }

    #[test]
    fn names_carry_a_random_part_and_older_names_still_parse() {
        let name = MessageKey::new("h", 1).file_name();
        let random = name.split_once('R').unwrap().1.split_once('.').unwrap().0;
        assert_eq!(random.len(), 16, "{name}");
        let old = MessageKey::parse("1700000000.M250P1Q2.h,S=3").unwrap();
        assert_eq!((old.seq, old.random), (2, None));
        assert_eq!(old.file_name(), "1700000000.M250P1Q2.h,S=3");
        let key = MessageKey::new("h", 1);
        assert_ne!(key.renamed().file_name(), key.file_name());
        assert_eq!(MessageKey::parse("1.M2P3Q4Rxyz.h,S=1"), None);
    }

    #[test]
    fn foreign_names_do_not_parse() {
        assert_eq!(
            MessageKey::parse("1567067375.M6337175P228.f87ce1e3553a,S=241"),
            None
        );
        assert_eq!(MessageKey::parse("README"), None);
    }
}
