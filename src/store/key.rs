//! Object keys: the only place Maildir-style names are made and parsed.
//!
//! A stored message is named `cur/<secs>.M<usec>P<pid>Q<n>.<host>,S=<size>`, the Maildir
//! convention (<https://cr.yp.to/proto/maildir.html>, Dovecot's `M`, `P`, `Q` and `,S=` fields):
//! seconds and microseconds of the delivery time, the process id, a per-process delivery
//! counter, the sanitised host name and the exact byte size of the object.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The folder new messages are published to.
pub const CUR: &str = "cur";

/// Delivery counter shared by every transaction of this process: with the pid and the host
/// name it makes names unique even when two messages arrive in the same microsecond.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

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
            host: sanitize_host(host),
            size,
        }
    }

    /// The object name inside its folder, e.g. `1700000000.M12P34Q5.mx.example,S=241`.
    pub fn file_name(&self) -> String {
        format!(
            "{}.M{}P{}Q{}.{},S={}",
            self.secs, self.usec, self.pid, self.seq, self.host, self.size
        )
    }

    /// The full object key under `cur/`.
    pub fn cur_path(&self) -> String {
        format!("{CUR}/{}", self.file_name())
    }

    /// Parses a file name (without folder) made by [`MessageKey::file_name`]. Maildir info
    /// suffixes (`:2,S`) are ignored. Returns `None` for names this crate did not make.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.split(':').next()?;
        let (secs, rest) = name.split_once(".M")?;
        let (usec, rest) = rest.split_once('P')?;
        let (pid, rest) = rest.split_once('Q')?;
        let (seq, rest) = rest.split_once('.')?;
        let (host, size) = rest.rsplit_once(",S=")?;
        Some(MessageKey {
            secs: secs.parse().ok()?,
            usec: usec.parse().ok()?,
            pid: pid.parse().ok()?,
            seq: seq.parse().ok()?,
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
    fn foreign_names_do_not_parse() {
        assert_eq!(
            MessageKey::parse("1567067375.M6337175P228.f87ce1e3553a,S=241"),
            None
        );
        assert_eq!(MessageKey::parse("README"), None);
    }
}
