//! The name parsers: a Maildir name ([`MessageKey`]), a copy's key in the queue
//! ([`CopyKey`]), a `retry/` marker, and a KEY as an operator types it ([`MessageRef`]).
//! Names come from listings of stores that others may write to, so any string must be
//! answered without a panic, and what a parser accepts must name the same object again.

use std::str::FromStr;

use crate::queue::record::{CopyKey, MessageRef, is_message_name, marker_of, received};
use crate::store::key::{MessageKey, sanitize_host};

/// Checks the name parsers on `input` (ignored unless UTF-8: object names are strings).
///
/// Invariants: no parser panics; a parsed copy's key or marker written out is the key it
/// was read from (the object it names is the one listed), and an operator's KEY naming it
/// names the same message; a parsed [`MessageKey`] written out parses to the same value
/// (its parser is lenient, `01` is `1`: it is read for the time and size only, never
/// written back); a key made from any host name is a message name and parses back.
pub fn names(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Some(key) = MessageKey::parse(text) {
        let written = key.file_name();
        assert_eq!(
            MessageKey::parse(&written).as_ref(),
            Some(&key),
            "{text:?} parsed, written as {written:?}"
        );
        let _ = received(text);
    }
    let made = MessageKey {
        host: sanitize_host(text),
        ..MessageKey::new("fuzz.test", input.len() as u64)
    };
    let name = made.file_name();
    assert!(is_message_name(&name), "{name:?} is a message name");
    assert_eq!(MessageKey::parse(&name), Some(made), "{name:?} parses back");

    if let Some(copy) = CopyKey::parse(text) {
        let path = copy.path();
        assert_eq!(
            path.as_ref(),
            text,
            "{text:?} names the object it was read from"
        );
        assert_eq!(CopyKey::parse(path.as_ref()).as_ref(), Some(&copy));
        // An operator who pastes a key `queue list` printed means that message.
        let named = MessageRef::from_str(text).map(|r| (r.state, r.name));
        assert_eq!(named, Ok((Some(copy.state), copy.name.clone())), "{text:?}");
        if let Some(marker) = copy.marker() {
            assert_eq!(
                CopyKey::parse_marker(marker.as_ref()),
                Some((copy.name.clone(), copy.fence)),
                "the marker of {text:?}"
            );
        }
    }
    if let Some((name, fence)) = CopyKey::parse_marker(text) {
        let marker = marker_of(&name, fence);
        assert_eq!(marker.as_ref(), text, "{text:?} is the marker it names");
    }
    let _ = MessageRef::from_str(text);
}
