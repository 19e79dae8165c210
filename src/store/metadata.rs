//! Envelope metadata carried by each stored object, within Swift's limits.
//!
//! Keys (as `X-Object-Meta-<key>` on Swift, `x-amz-meta-<key>` on S3):
//!
//! | key | value |
//! |---|---|
//! | `sender` | the envelope sender (empty for `<>`) |
//! | `recipients` | this destination's recipients, comma-separated |
//! | `client-addr` | the original client's address (XFORWARD ADDR, else the peer) |
//! | `client-helo` | the original client's HELO (XFORWARD HELO, else the peer's) |
//! | `received` | when swiftdrop received the message, RFC 3339 UTC |
//! | `sha256` | SHA-256 (hex) of the stored bytes |
//! | `message-id` | the message's `Message-ID` header, if any |
//!
//! Values are printable ASCII: other bytes and `%` are percent-encoded (UTF-8), so a reader
//! percent-decodes every value. Swift allows at most 90 keys, 256 bytes per value and
//! 4096 bytes in all: a value that is too long is cut (a recipient list at a whole
//! address, followed by `,...`), and an entry that would break the total is left out.
//! Metadata never makes a store fail.

use chrono::{DateTime, SecondsFormat, Utc};
use object_store::{Attribute, Attributes};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// Longest value Swift accepts.
pub const MAX_VALUE: usize = 256;
/// Most bytes of keys and values together.
pub const MAX_TOTAL: usize = 4096;
/// Most metadata keys.
pub const MAX_KEYS: usize = 90;
/// The content type of stored messages.
pub const CONTENT_TYPE: &str = "message/rfc822";

/// Bytes that are percent-encoded in a value: controls, non-ASCII (always) and `%`.
const ENCODED: &AsciiSet = &CONTROLS.add(b'%');
/// In the `recipients` list, a comma inside an address (a quoted local part) is escaped too.
const LISTED: &AsciiSet = &ENCODED.add(b',');

/// What the metadata of one object describes: one destination's copy of a message.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Envelope sender.
    pub sender: String,
    /// This destination's recipients.
    pub recipients: Vec<String>,
    /// The original client's address (XFORWARD's, else the peer's).
    pub client_addr: String,
    /// The original client's HELO name (XFORWARD's, else the one the peer gave), if any.
    pub client_helo: Option<String>,
    /// When the message was received.
    pub received: DateTime<Utc>,
    /// The Message-ID header's value.
    pub message_id: Option<String>,
}

/// The object attributes for `envelope` and the SHA-256 (hex) of the stored bytes, when
/// known: content type and metadata within the limits.
pub fn attributes(envelope: &Envelope, sha256: Option<String>) -> Attributes {
    let entries: [(&str, Option<String>); 7] = [
        ("sender", Some(encode(&envelope.sender))),
        ("recipients", Some(recipient_list(&envelope.recipients))),
        ("client-addr", Some(encode(&envelope.client_addr))),
        ("client-helo", envelope.client_helo.as_deref().map(encode)),
        (
            "received",
            Some(
                envelope
                    .received
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
        ),
        ("sha256", sha256),
        ("message-id", envelope.message_id.as_deref().map(encode)),
    ];
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, CONTENT_TYPE.into());
    let mut total = 0;
    let mut keys = 0;
    for (key, value) in entries {
        let Some(value) = value else { continue };
        let value = cut(&value, MAX_VALUE);
        if keys == MAX_KEYS || total + key.len() + value.len() > MAX_TOTAL {
            continue;
        }
        total += key.len() + value.len();
        keys += 1;
        attributes.insert(Attribute::Metadata(key.into()), value.into());
    }
    attributes
}

/// Percent-encodes what is not printable ASCII, and `%`.
pub fn encode(value: &str) -> String {
    utf8_percent_encode(value, ENCODED).to_string()
}

/// Percent-encodes `value` and cuts it to at most `max` bytes, never inside an escape.
pub fn encode_cut(value: &str, max: usize) -> String {
    cut(&encode(value), max)
}

/// Undoes [`encode`] (a cut value decodes to its beginning).
pub fn decode(value: &str) -> String {
    percent_encoding::percent_decode_str(value)
        .decode_utf8_lossy()
        .into_owned()
}

/// The addresses of a `recipients` value as [`recipient_list`] wrote it (a `...` at the end
/// says that more were cut off).
pub fn recipients(value: &str) -> Vec<String> {
    value.split(',').map(decode).collect()
}

/// The recipients, comma-separated, cut at a whole address with `,...` when too long.
fn recipient_list(recipients: &[String]) -> String {
    let mut out = String::new();
    for (i, rcpt) in recipients.iter().enumerate() {
        let item = utf8_percent_encode(rcpt, LISTED).to_string();
        let sep = if i == 0 { "" } else { "," };
        let more = if i + 1 < recipients.len() { 4 } else { 0 };
        if out.len() + sep.len() + item.len() + more > MAX_VALUE {
            out.push_str(if out.is_empty() { "..." } else { ",..." });
            return out;
        }
        out.push_str(sep);
        out.push_str(&item);
    }
    out
}

/// At most `max` bytes of an encoded value, never splitting a `%XX` escape.
fn cut(value: &str, max: usize) -> String {
    if value.len() <= max {
        return value.to_string();
    }
    let mut end = max;
    // An escape is 3 bytes: back off when one of the last two bytes is its `%`.
    if let Some(pos) = value[end.saturating_sub(2)..end].find('%') {
        end = end - 2 + pos;
    }
    value[..end].to_string()
}

/// The value of the first `Message-ID` header in the header section, unfolded and trimmed.
pub fn message_id(message: &[u8]) -> Option<String> {
    let mut lines = message.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None; // end of the header section
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"message-id")
        {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                value.extend_from_slice(next.strip_suffix(b"\r").unwrap_or(next));
                lines.next();
            } else {
                break;
            }
        }
        let value = String::from_utf8_lossy(&value).trim().to_string();
        return (!value.is_empty()).then_some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(attributes: &Attributes, key: &'static str) -> Option<String> {
        attributes
            .get(&Attribute::Metadata(key.into()))
            .map(|v| v.to_string())
    }

    #[test]
    fn envelope_becomes_metadata() {
        let envelope = Envelope {
            sender: "Grüße%@example.org".into(),
            recipients: vec!["ops@example.com".into(), "dev@example.com".into()],
            client_addr: "192.0.2.7".into(),
            client_helo: Some("mx.example.org".into()),
            received: DateTime::from_timestamp(1_700_000_000, 5_000).unwrap(),
            message_id: Some("<1@example.org>".into()),
        };
        let attributes = attributes(&envelope, Some("ab".repeat(32)));
        assert_eq!(
            meta(&attributes, "sender").unwrap(),
            "Gr%C3%BC%C3%9Fe%25@example.org"
        );
        assert_eq!(
            meta(&attributes, "recipients").unwrap(),
            "ops@example.com,dev@example.com"
        );
        assert_eq!(meta(&attributes, "client-addr").unwrap(), "192.0.2.7");
        assert_eq!(meta(&attributes, "client-helo").unwrap(), "mx.example.org");
        assert_eq!(
            meta(&attributes, "received").unwrap(),
            "2023-11-14T22:13:20.000005Z"
        );
        assert_eq!(meta(&attributes, "message-id").unwrap(), "<1@example.org>");
        assert_eq!(
            attributes.get(&Attribute::ContentType).unwrap().as_ref(),
            CONTENT_TYPE
        );
    }

    #[test]
    fn limits_hold_for_any_envelope() {
        let huge = "ü\r\n".repeat(500);
        let envelope = Envelope {
            sender: huge.clone(),
            recipients: (0..1000)
                .map(|i| format!("recipient{i}@example.com"))
                .collect(),
            client_addr: "192.0.2.7".into(),
            client_helo: Some("mx.example.org".into()),
            received: Utc::now(),
            message_id: Some(huge),
        };
        let attributes = attributes(&envelope, None);
        let mut total = 0;
        for (key, value) in &attributes {
            if let Attribute::Metadata(k) = key {
                assert!(value.len() <= MAX_VALUE, "{k}: {} bytes", value.len());
                assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{k}");
                total += k.len() + value.len();
            }
        }
        assert!(total <= MAX_TOTAL);
        let list = meta(&attributes, "recipients").unwrap();
        assert!(list.ends_with(",..."), "{list}");
        assert!(list.starts_with("recipient0@example.com,recipient1@"));
        // A cut value never ends inside a %XX escape.
        let sender = meta(&attributes, "sender").unwrap();
        assert!(!sender.ends_with('%') && !sender[..sender.len() - 1].ends_with('%'));
    }

    #[test]
    fn message_id_is_read_from_the_header_section_only() {
        assert_eq!(
            message_id(b"Received: x\r\nMessage-ID:\r\n <a@b>\r\nSubject: s\r\n\r\nbody"),
            Some("<a@b>".into())
        );
        assert_eq!(
            message_id(b"Subject: s\r\n\r\nMessage-ID: <not@header>\r\n"),
            None
        );
        assert_eq!(message_id(b"message-id: <x@y>\n\nb"), Some("<x@y>".into()));
    }
}
