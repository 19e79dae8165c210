//! The states a stored message goes through, the keys that name it in each, and the record
//! the queue keeps with the object (its metadata).
//!
//! A message keeps its Maildir name in every state; only the folder changes:
//! `cur/<name>` → `processing/<name>` → `done/<name>` | `failed/<name>` | `retry/<name>`.
//!
//! The record travels with the object, so it survives the loss of the lock engine's data:
//!
//! | metadata key | value |
//! |---|---|
//! | `queue-attempt` | claims so far (0 under `cur/`, which holds only never-claimed mail) |
//! | `queue-fence` | fencing number of the lease under which this copy was written |
//! | `queue-lease` | under `processing/`: the claim's lease length in milliseconds |
//! | `queue-not-before` | RFC 3339 time before which a `retry/` message is not claimed, or `-` |
//! | `queue-reason` | why the message is where it is (percent-encoded), or `-` |
//!
//! When a crash leaves one message in two folders, the copy with the higher fencing number
//! is the later one; for equal numbers (two moves under one lease) the later folder in
//! `cur < processing < retry < failed < done` wins.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use object_store::path::Path;
use object_store::{Attribute, Attributes};

use crate::store::key::MessageKey;
use crate::store::metadata;

/// Longest reason kept, in bytes of its encoded form (Swift allows 256 per value).
const MAX_REASON: usize = 200;

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Stored by the filter (or requeued), never claimed since.
    Cur,
    /// Claimed by a worker.
    Processing,
    /// Waiting for another attempt, not before a given time.
    Retry,
    /// Given up on.
    Failed,
    /// Handled.
    Done,
}

impl State {
    /// Every state, in the order of a message's life.
    pub const ALL: [State; 5] = [
        State::Cur,
        State::Processing,
        State::Retry,
        State::Failed,
        State::Done,
    ];

    /// The folder name, e.g. `processing`.
    pub fn folder(self) -> &'static str {
        match self {
            State::Cur => "cur",
            State::Processing => "processing",
            State::Retry => "retry",
            State::Failed => "failed",
            State::Done => "done",
        }
    }

    /// The object key of `name` in this state.
    pub fn path(self, name: &str) -> Path {
        Path::from_iter([self.folder(), name])
    }

    /// The folder as an object_store prefix.
    pub fn prefix(self) -> Path {
        Path::from(self.folder())
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

impl FromStr for State {
    type Err = String;

    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .into_iter()
            .find(|st| st.folder() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a state: use cur, processing, retry, failed or done")
            })
    }
}

/// A KEY as users give it: a Maildir name, with or without a state folder in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRef {
    /// The state named in the key, if any.
    pub state: Option<State>,
    /// The Maildir name.
    pub name: String,
}

impl FromStr for MessageRef {
    type Err = String;

    fn from_str(key: &str) -> Result<MessageRef, String> {
        let (state, name) = match key.split_once('/') {
            Some((folder, name)) => (Some(folder.parse::<State>()?), name),
            None => (None, key),
        };
        if !is_message_name(name) {
            return Err(format!(
                "{key:?} is not a message key such as cur/<name> or <name>"
            ));
        }
        Ok(MessageRef {
            state,
            name: name.to_string(),
        })
    }
}

/// Whether `name` can be a message's name: one path segment, printable, not `.` or `..`.
pub fn is_message_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// When the filter received a message, from its Maildir name (seconds and microseconds).
pub fn received(name: &str) -> Option<DateTime<Utc>> {
    let key = MessageKey::parse(name)?;
    DateTime::from_timestamp(i64::try_from(key.secs).ok()?, key.usec.saturating_mul(1000))
}

/// What the queue knows about one copy of a message, kept as its metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Claims so far.
    pub attempt: u32,
    /// Fencing number of the lease this copy was written under (0: written by the filter).
    pub fence: u64,
    /// The claim's lease length (under `processing/`).
    pub lease: Option<Duration>,
    /// Not claimable before this time (in `retry/`).
    pub not_before: Option<DateTime<Utc>>,
    /// Why the message is where it is.
    pub reason: Option<String>,
    /// Ids of the work already done for this message (a worker's actions that succeeded),
    /// kept across attempts so that a retry does not repeat them ([`Claim::record_done`]).
    ///
    /// [`Claim::record_done`]: super::Claim::record_done
    pub done: Vec<String>,
}

const ATTEMPT: &str = "queue-attempt";
const FENCE: &str = crate::store::mover::FENCE_KEY;
const LEASE: &str = "queue-lease";
const NOT_BEFORE: &str = "queue-not-before";
const REASON: &str = "queue-reason";
/// The done list's keys: `queue-done`, then `queue-done-2` ... as it grows.
const DONE: &str = "queue-done";
/// Bytes one done key's value may take (Swift keeps metadata values up to 256 bytes).
const MAX_DONE_VALUE: usize = 250;
/// Keys the done list may spread over: with the filter's metadata (at most 7 values of
/// 256 bytes) and the other queue keys, the object stays under Swift's 4096 bytes.
const MAX_DONE_KEYS: usize = 4;
/// Written for "no value": some stores drop metadata with an empty value.
const NONE: &str = "-";

impl Record {
    /// The record in an object's attributes; missing keys read as their defaults.
    pub fn from_attributes(attributes: &Attributes) -> Record {
        let get = |key: &str| {
            attributes
                .get(&Attribute::Metadata(key.to_string().into()))
                .map(|v| v.as_ref().to_string())
                .filter(|v| v != NONE && !v.is_empty())
        };
        Record {
            attempt: get(ATTEMPT).and_then(|v| v.parse().ok()).unwrap_or(0),
            fence: get(FENCE).and_then(|v| v.parse().ok()).unwrap_or(0),
            lease: get(LEASE)
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
            not_before: get(NOT_BEFORE)
                .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
                .map(|t| t.with_timezone(&Utc)),
            reason: get(REASON).map(|v| metadata::decode(&v)),
            done: (1..=MAX_DONE_KEYS)
                .filter_map(|n| get(&done_key(n)))
                .flat_map(|v| {
                    v.split(',')
                        .filter(|id| !id.is_empty())
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect(),
        }
    }

    /// Every key of the record, for a move or an update (absent values as `-`).
    pub fn to_update(&self) -> Vec<(String, String)> {
        vec![
            (ATTEMPT.into(), self.attempt.to_string()),
            (FENCE.into(), self.fence.to_string()),
            (
                LEASE.into(),
                self.lease
                    .map(|l| l.as_millis().to_string())
                    .unwrap_or_else(|| NONE.into()),
            ),
            (
                NOT_BEFORE.into(),
                self.not_before
                    .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
                    .unwrap_or_else(|| NONE.into()),
            ),
            (
                REASON.into(),
                self.reason
                    .as_deref()
                    .map(|r| metadata::encode_cut(r, MAX_REASON))
                    .unwrap_or_else(|| NONE.into()),
            ),
        ]
        .into_iter()
        .chain(self.done_values().into_iter().enumerate().map(|(i, v)| {
            let value = if v.is_empty() { NONE.to_string() } else { v };
            (done_key(i + 1), value)
        }))
        .collect()
    }

    /// The done list packed into [`MAX_DONE_KEYS`] values of whole ids (empty ones
    /// included, so that an update clears what an earlier one wrote); past that room the
    /// last ids are left out (see [`Record::done_fits`]).
    fn done_values(&self) -> Vec<String> {
        let mut values = vec![String::new(); MAX_DONE_KEYS];
        let mut key = 0;
        for id in &self.done {
            while key < MAX_DONE_KEYS && values[key].len() + id.len() + 1 > MAX_DONE_VALUE {
                key += 1;
            }
            let Some(value) = values.get_mut(key) else {
                break;
            };
            if !value.is_empty() {
                value.push(',');
            }
            value.push_str(id);
        }
        values
    }

    /// Whether every id of the done list has room in the metadata.
    pub fn done_fits(&self) -> bool {
        let kept: usize = self
            .done_values()
            .iter()
            .map(|v| v.split(',').filter(|id| !id.is_empty()).count())
            .sum();
        kept == self.done.len()
    }
}

/// The metadata key of the done list's `n`th part (1-based).
fn done_key(n: usize) -> String {
    if n == 1 {
        DONE.to_string()
    } else {
        format!("{DONE}-{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_and_without_a_state() {
        let name = "1700000000.M5P6Q7.mx,S=10";
        assert_eq!(
            format!("processing/{name}").parse::<MessageRef>().unwrap(),
            MessageRef {
                state: Some(State::Processing),
                name: name.into()
            }
        );
        assert_eq!(name.parse::<MessageRef>().unwrap().state, None);
        for bad in [
            "", "new/x", "cur/", "cur/../x", "..", ".hidden", "a b", "cur/a/b",
        ] {
            assert!(bad.parse::<MessageRef>().is_err(), "{bad:?}");
        }
        assert_eq!(State::Retry.path(name).as_ref(), format!("retry/{name}"));
    }

    #[test]
    fn record_round_trips_through_metadata() {
        let record = Record {
            attempt: 3,
            fence: 1_764_000_000_123_456,
            lease: Some(Duration::from_millis(1500)),
            not_before: DateTime::from_timestamp(1_800_000_000, 123_000_000),
            reason: Some("SMTP 451 4.3.0 try later; 100% sure\r\nnext line".into()),
            done: vec!["a1b2c3d4".into(), "e5f6a7b8".into()],
        };
        let mut attributes = Attributes::new();
        for (k, v) in record.to_update() {
            assert!(v.bytes().all(|b| (0x20..0x7f).contains(&b)), "{k}: {v}");
            attributes.insert(Attribute::Metadata(k.into()), v.into());
        }
        assert_eq!(Record::from_attributes(&attributes), record);
        assert_eq!(
            Record::from_attributes(&Attributes::new()),
            Record::default()
        );
        let cleared = Record {
            attempt: 1,
            ..Record::default()
        };
        let mut attributes = Attributes::new();
        for (k, v) in cleared.to_update() {
            attributes.insert(Attribute::Metadata(k.into()), v.into());
        }
        assert_eq!(Record::from_attributes(&attributes), cleared);
    }

    #[test]
    fn a_long_done_list_spreads_over_keys_within_swift_limits() {
        let id = |i: usize| format!("{i:08x}=root{i:022}");
        let mut record = Record {
            done: (0..20).map(id).collect(),
            ..Record::default()
        };
        assert!(record.done_fits());
        let mut attributes = Attributes::new();
        for (k, v) in record.to_update() {
            assert!(v.len() <= MAX_DONE_VALUE, "{k}: {} bytes", v.len());
            attributes.insert(Attribute::Metadata(k.into()), v.into());
        }
        assert_eq!(Record::from_attributes(&attributes).done, record.done);
        record.done = (0..40).map(id).collect();
        assert!(
            !record.done_fits(),
            "40 ids of 35 bytes do not fit in 4 x 250"
        );
    }

    #[test]
    fn received_time_comes_from_the_name() {
        let t = received("1700000000.M250P1Q2.h,S=3").unwrap();
        assert_eq!(t.timestamp(), 1_700_000_000);
        assert_eq!(t.timestamp_subsec_micros(), 250);
        assert_eq!(received("foreign-name"), None);
    }
}
