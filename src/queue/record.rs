//! The states a stored message goes through, the keys that name each of its copies, and the
//! record the queue keeps with each copy (its metadata).
//!
//! A message keeps its Maildir name in every state. Every copy a worker writes carries, in its
//! key, the fencing number of the lease it was written under, so that a holder only ever
//! writes, rewrites or deletes its own copies:
//!
//! | state | key |
//! |---|---|
//! | [`State::Cur`] | `cur/<name>` (the filter's), `cur/<name>@<fence>` (requeued) |
//! | [`State::Processing`] | `processing/<name>@<fence>` |
//! | [`State::Retry`] | `retry/<due>_<name>@<fence>`, due as `YYYYMMDDTHHMMSS.mmmZ` (UTC) |
//! | [`State::Failed`] | `failed/<name>@<fence>` |
//! | [`State::Done`] | `done/<name>@<fence>` |
//!
//! Names sort by the time the filter received them and `retry/` keys by their due time, so
//! a listing in key order gives the oldest mail first and the due retries first. Where a
//! move is a copy and a delete (Swift, S3), a copy in `retry/` has a marker,
//! `retry/marker+<name>@<fence>`, whose body is the copy's key, so that the copy can be found
//! by its name (listing) and by its name and fencing number (one read, which, unlike a
//! listing, sees a new object at once); markers sort after every due key.
//!
//! Keys of older versions (`processing/<name>`, `retry/<name>`, `done/<name>`...) read as
//! copies written under fencing number 0 (a `retry/` one due at once): every newer copy
//! outranks them.
//!
//! A copy's **rank** is its fencing number, then its state in the order
//! `cur < processing < retry < failed < done` (two copies of one lease: the later move's).
//! The copy with the highest rank is the message; any other is outranked, and whoever sees
//! both may delete it (see `ARCHITECTURE.md`).
//!
//! The record travels with the copy, so it survives the loss of the lock engine's data:
//!
//! | metadata key | value |
//! |---|---|
//! | `queue-attempt` | claims so far (0 under `cur/`) |
//! | `queue-fence` | fencing number of the lease under which this copy was written (also in its key) |
//! | `queue-lease` | under `processing/`: the claim's lease length in milliseconds |
//! | `queue-not-before` | RFC 3339 time before which a `retry/` message is not claimed (also in its key), or `-` |
//! | `queue-reason` | why the message is where it is (percent-encoded), or `-` |
//! | `queue-done`, `queue-done-2`... | ids of work already done, comma-separated |

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use object_store::path::{Path, PathPart};
use object_store::{Attribute, Attributes};

use crate::store::key::MessageKey;
use crate::store::metadata;

/// Longest reason kept, in bytes of its encoded form (Swift allows 256 per value).
const MAX_REASON: usize = 200;
/// The due time in a `retry/` key: fixed width, so that keys sort by it.
const DUE_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
/// Characters of [`DUE_FORMAT`]'s output.
const DUE_LEN: usize = 20;
/// What begins a `retry/` marker's name: it sorts after every due time (digits).
const MARKER: &str = "marker+";

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

    /// The folder as an object_store prefix.
    pub fn prefix(self) -> Path {
        Path::from(self.folder())
    }

    /// Whether a message in this state is finished (it stays there).
    pub fn is_final(self) -> bool {
        matches!(self, State::Done | State::Failed)
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

/// The key of one copy of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CopyKey {
    /// Its state folder.
    pub state: State,
    /// The message's Maildir name.
    pub name: String,
    /// The fencing number it was written under; 0 for the filter's copy in `cur/`.
    pub fence: u64,
    /// In `retry/`: when the copy becomes claimable.
    pub due: Option<DateTime<Utc>>,
}

impl CopyKey {
    /// The key of `name` in `state`, written under `fence` (a `retry/` key also needs its
    /// due time: [`CopyKey::retry`]).
    pub fn new(state: State, name: &str, fence: u64) -> CopyKey {
        CopyKey {
            state,
            name: name.to_string(),
            fence,
            due: None,
        }
    }

    /// The `retry/` key of `name` written under `fence`, due at `due`.
    pub fn retry(name: &str, fence: u64, due: DateTime<Utc>) -> CopyKey {
        CopyKey {
            state: State::Retry,
            name: name.to_string(),
            fence,
            // The key keeps milliseconds: the copy's due time is what its key says.
            due: Some(truncate_to_millis(due)),
        }
    }

    /// The object key, e.g. `processing/<name>@<fence>`.
    pub fn path(&self) -> Path {
        Path::from(self.to_string())
    }

    /// The copy's rank: the later copy of two has the higher fence, or (two moves of one
    /// lease) the later state.
    pub fn rank(&self) -> (u64, State) {
        (self.fence, self.state)
    }

    /// For a `retry/` copy: the key of its marker (see the module docs).
    pub fn marker(&self) -> Option<Path> {
        (self.state == State::Retry && self.fence > 0).then(|| marker_of(&self.name, self.fence))
    }

    /// Parses an object key made by [`CopyKey::path`]; `None` for anything else (other
    /// objects, markers, names this crate did not make).
    pub fn parse(key: &str) -> Option<CopyKey> {
        let (folder, rest) = key.split_once('/')?;
        let state: State = folder.parse().ok()?;
        let due = (state == State::Retry)
            .then(|| {
                let due = parse_due(rest.get(..DUE_LEN)?)?;
                Some((due, rest.get(DUE_LEN..)?.strip_prefix('_')?))
            })
            .flatten();
        let (due, rest) = match due {
            Some((due, rest)) => (Some(due), rest),
            // Not a due time: a key of an older version, `retry/<name>`.
            None => (None, rest),
        };
        let (name, fence) = match rest.rsplit_once('@') {
            Some((name, fence)) => (name, parse_fence(fence)?),
            // The filter's copy, or a key of an older version.
            None => (rest, 0),
        };
        // Fenced keys carry a fencing number above 0; a fenced retry key, its due time.
        let fenced = fence > 0;
        if !is_message_name(name)
            || (rest.contains('@') != fenced)
            || (due.is_some() != (fenced && state == State::Retry))
        {
            return None;
        }
        Some(CopyKey {
            state,
            name: name.to_string(),
            fence,
            due,
        })
    }

    /// Parses a `retry/` marker's key: the name and fencing number of the copy it stands for.
    pub fn parse_marker(key: &str) -> Option<(String, u64)> {
        let rest = key
            .strip_prefix(State::Retry.folder())?
            .strip_prefix('/')?
            .strip_prefix(MARKER)?;
        let (name, fence) = rest.rsplit_once('@')?;
        let fence = parse_fence(fence).filter(|f| *f > 0)?;
        is_message_name(name).then(|| (name.to_string(), fence))
    }

    /// The prefixes under which every copy and marker of `name` is found: one per folder,
    /// and in `retry/` the markers and the key of an older version (`retry/<name>`). A
    /// listing by prefix may also return longer names, which the caller leaves out.
    pub fn prefixes_of(name: &str) -> [String; 6] {
        [
            format!("{}/{name}", State::Cur.folder()),
            format!("{}/{name}", State::Processing.folder()),
            format!("{}/{MARKER}{name}@", State::Retry.folder()),
            format!("{}/{name}", State::Retry.folder()),
            format!("{}/{name}", State::Failed.folder()),
            format!("{}/{name}", State::Done.folder()),
        ]
    }
}

impl fmt::Display for CopyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let folder = self.state.folder();
        match (self.state, self.due, self.fence) {
            (_, _, 0) => write!(f, "{folder}/{}", self.name),
            (State::Retry, Some(due), fence) => write!(
                f,
                "{folder}/{}_{}@{fence}",
                due.format(DUE_FORMAT),
                self.name
            ),
            (_, _, fence) => write!(f, "{folder}/{}@{fence}", self.name),
        }
    }
}

/// The key of the marker of the `retry/` copy of `name` written under `fence`.
pub fn marker_of(name: &str, fence: u64) -> Path {
    Path::from(format!("{}/{MARKER}{name}@{fence}", State::Retry.folder()))
}

/// A due time as keys write it ([`DUE_FORMAT`]), and only so (see [`parse_fence`]).
fn parse_due(s: &str) -> Option<DateTime<Utc>> {
    let due = NaiveDateTime::parse_from_str(s, DUE_FORMAT).ok()?;
    (due.format(DUE_FORMAT).to_string() == s).then(|| due.and_utc())
}

fn truncate_to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// A KEY as users give it: a Maildir name, with or without a state folder in front, or a
/// copy's whole key as `list` and `claim` print it.
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
        let what = "a key is a message's name as `swiftdrop queue list` prints it, with or without its state folder (cur/<name> or <name>), not a file path";
        if let Some(copy) = CopyKey::parse(key) {
            return Ok(MessageRef {
                state: Some(copy.state),
                name: copy.name,
            });
        }
        let (state, name) = match key.split_once('/') {
            Some((folder, name)) => match folder.parse::<State>() {
                Ok(state) => (Some(state), name),
                // `retyr/<name>`: a mistyped state.
                Err(e) if is_message_name(name) => return Err(e),
                Err(_) => {
                    // A file path (`/srv/maildir/cur/<name>`): its last two parts may be a key.
                    let mut tail = key.rsplitn(3, '/');
                    let (name, folder) = (tail.next().unwrap_or(""), tail.next().unwrap_or(""));
                    let hint = match folder.parse::<State>() {
                        Ok(_) if is_message_name(name) => format!(" (here: {folder}/{name})"),
                        _ => String::new(),
                    };
                    return Err(format!("{key:?} is not a message key: {what}{hint}"));
                }
            },
            None => (None, key),
        };
        if !is_message_name(name) {
            return Err(format!("{key:?} is not a message key: {what}"));
        }
        Ok(MessageRef {
            state,
            name: name.to_string(),
        })
    }
}

/// Whether `name` can be a message's name: one path segment, printable, not `.` or `..`,
/// without the `@` and `+` of the queue's keys, and written in an object key as it is (a
/// character object_store would percent-encode, such as `%` or `~`, would make the key of
/// a copy name another object than the one listed).
pub fn is_message_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '@', '+'])
        && !name.chars().any(|c| c.is_control() || c.is_whitespace())
        && PathPart::from(name).as_ref() == name
}

/// A fencing number as keys write it: decimal digits without a sign or leading zero, so
/// that the key made from the number is the key it was read from.
fn parse_fence(digits: &str) -> Option<u64> {
    let fence: u64 = digits.parse().ok()?;
    (fence.to_string() == digits).then_some(fence)
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
const FENCE: &str = "queue-fence";
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
    fn copy_keys_round_trip_and_sort() {
        let name = "1700000000.M5P6Q7.mx,S=10";
        let due = DateTime::from_timestamp_millis(1_800_000_000_123).unwrap();
        for key in [
            CopyKey::new(State::Cur, name, 0),
            CopyKey::new(State::Cur, name, 9),
            CopyKey::new(State::Processing, name, 1_764_000_000_123_456),
            CopyKey::retry(name, 12, due),
            CopyKey::new(State::Failed, name, 13),
            CopyKey::new(State::Done, name, 14),
        ] {
            assert_eq!(CopyKey::parse(&key.to_string()), Some(key.clone()), "{key}");
            let reference: MessageRef = key.to_string().parse().unwrap();
            assert_eq!(
                (reference.state, reference.name.as_str()),
                (Some(key.state), name)
            );
        }
        assert_eq!(
            CopyKey::new(State::Cur, name, 0).to_string(),
            format!("cur/{name}")
        );
        let retry = CopyKey::retry(name, 12, due);
        assert_eq!(
            retry.to_string(),
            format!("retry/20270115T080000.123Z_{name}@12")
        );
        let marker = retry.marker().unwrap();
        assert_eq!(marker.as_ref(), format!("retry/marker+{name}@12"));
        assert_eq!(
            CopyKey::parse_marker(marker.as_ref()),
            Some((name.to_string(), 12))
        );
        assert_eq!(CopyKey::parse(marker.as_ref()), None);
        assert!(
            marker.as_ref() > retry.to_string().as_str(),
            "markers sort after every due key"
        );
        let later = CopyKey::retry(name, 1, due + chrono::Duration::milliseconds(1));
        assert!(
            later.to_string() > retry.to_string(),
            "retry keys sort by due time"
        );
        assert!(retry.rank() > CopyKey::new(State::Processing, name, 12).rank());
        assert!(CopyKey::new(State::Processing, name, 13).rank() > retry.rank());
        for bad in [
            "new/x",
            "cur/",
            "cur/../x",
            "processing/x@y",
            "processing/x@0",
            "retry/x@1",
            "done/a+b@1",
            // Found by fuzzing: keys that parsed, but whose copy's key names another
            // object (a leading zero, a character object_store would encode).
            "processing/x@06",
            "processing/x@+6",
            "processing/a~b@6",
            "cur/a%b",
            "cur/x]y",
            "retry/20270115T080000.123Z_x@-1",
        ] {
            assert_eq!(CopyKey::parse(bad), None, "{bad:?}");
        }
        // Keys of older versions: fencing number 0, due at once, outranked by any other.
        for legacy in [
            format!("processing/{name}"),
            format!("retry/{name}"),
            format!("done/{name}"),
        ] {
            let key = CopyKey::parse(&legacy).unwrap();
            assert_eq!((key.fence, key.due, key.to_string()), (0, None, legacy));
            assert!(key.rank() < CopyKey::new(State::Cur, name, 1).rank());
        }
    }

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
            "", "new/x", "cur/", "cur/../x", "..", ".hidden", "a b", "cur/a/b", "a@b",
        ] {
            assert!(bad.parse::<MessageRef>().is_err(), "{bad:?}");
        }
        // A mistyped state is named as such.
        let said = format!("retyr/{name}").parse::<MessageRef>().unwrap_err();
        assert!(said.contains("\"retyr\" is not a state"), "{said}");
        // A file path is explained, with the key it holds.
        let path = format!("/srv/spool/maildir/cur/{name}");
        let said = path.parse::<MessageRef>().unwrap_err();
        assert!(said.contains("not a file path"), "{said}");
        assert!(said.ends_with(&format!("(here: cur/{name})")), "{said}");
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
