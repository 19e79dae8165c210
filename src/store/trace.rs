//! The trace lines that begin every stored message: `Return-Path: <sender>` and one
//! `Delivered-To: <recipient>` per recipient of the destination, written by the filter
//! ([`lines_for`]) and read by the queue view and the worker ([`envelope`], [`kinds`],
//! [`strip`]). Only the lines before the first other line count: the same headers further
//! down were written by the sender and are not the envelope.

/// The lines for one destination's copy. The filter refuses addresses with a control
/// character ([`envelope`] could not read them back); CR and LF are dropped here all the
/// same, so that an address can never add a header of its own.
pub fn lines_for(sender: &str, recipients: &[&str]) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], "");
    let mut out = format!("Return-Path: <{}>\r\n", clean(sender));
    for rcpt in recipients {
        out.push_str(&format!("Delivered-To: {}\r\n", clean(rcpt)));
    }
    out.into_bytes()
}

/// The envelope a message's trace lines give.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The sender, without brackets (empty for a bounce); `None` without a `Return-Path:`.
    pub sender: Option<String>,
    /// The recipients, in order.
    pub recipients: Vec<String>,
}

/// Reads the envelope from the trace lines at the start of `message`: what [`lines_for`]
/// wrote, the same addresses. A value ends at its first control character: a line the
/// filter wrote has none, and in a message from elsewhere a CR or NUL in the middle of a
/// line must not carry a line break into an address (they go into SMTP commands).
pub fn envelope(message: &[u8]) -> Envelope {
    let mut found = Envelope::default();
    for line in leading_lines(message) {
        let text = String::from_utf8_lossy(line);
        let (name, value) = text.split_once(':').unwrap_or((&text, ""));
        // Only the spaces SMTP's header syntax puts around a value: an address (quoted) may
        // begin or end with another kind.
        let value = value
            .split(char::is_control)
            .next()
            .unwrap_or("")
            .trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("return-path") {
            // One pair of brackets, no more: a quoted local part may hold more.
            let unbracketed = value.strip_prefix('<').and_then(|v| v.strip_suffix('>'));
            found.sender = Some(unbracketed.unwrap_or(value).to_string());
        } else {
            found.recipients.push(value.to_string());
        }
    }
    found
}

/// The message without its leading trace lines.
pub fn strip(message: &[u8]) -> &[u8] {
    let skipped: usize = leading_lines(message).map(<[u8]>::len).sum();
    &message[skipped..]
}

/// Which trace lines `message` begins with: a stored message has both kinds; one exported
/// from a mail client or written by hand often neither, or only one (a mailbox download
/// starts with `Delivered-To:` or `Return-Path:`).
pub fn kinds(message: &[u8]) -> TraceLines {
    let mut found = TraceLines::default();
    for line in leading_lines(message) {
        found.sender |= starts_with(line, RETURN_PATH);
        found.recipients |= starts_with(line, DELIVERED_TO);
    }
    found
}

/// The kinds of trace line a message begins with ([`kinds`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceLines {
    /// A `Return-Path:` line: the envelope sender.
    pub sender: bool,
    /// At least one `Delivered-To:` line: the envelope recipients.
    pub recipients: bool,
}

const RETURN_PATH: &[u8] = b"return-path:";
const DELIVERED_TO: &[u8] = b"delivered-to:";

/// The trace lines at the start of `message`, each with its line ending, up to the first
/// other line.
fn leading_lines(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    message
        .split_inclusive(|&b| b == b'\n')
        .take_while(|line| starts_with(line, RETURN_PATH) || starts_with(line, DELIVERED_TO))
}

fn starts_with(line: &[u8], name: &[u8]) -> bool {
    line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_only_leading_lines_count() {
        let mut stored = lines_for("a@example.org", &["ops@example.com", "dba@example.com"]);
        stored.extend_from_slice(
            b"Received: from x\r\nDelivered-To: victim@outside.example\r\nReturn-Path: <boss@example.com>\r\n\r\nbody\r\n",
        );
        assert_eq!(
            envelope(&stored),
            Envelope {
                sender: Some("a@example.org".into()),
                recipients: vec!["ops@example.com".into(), "dba@example.com".into()],
            }
        );
        assert!(strip(&stored).starts_with(b"Received: from x\r\n"));
        assert_eq!(
            kinds(&stored),
            TraceLines {
                sender: true,
                recipients: true
            }
        );
        assert_eq!(envelope(b"Subject: no trace\r\n\r\n"), Envelope::default());
        assert_eq!(
            lines_for("<>\r\n", &["a\nb"]),
            b"Return-Path: <<>>\r\nDelivered-To: ab\r\n"
        );
        let quoted = lines_for("\"<boss\"@example.com>", &["\" ops\"@example.com"]);
        assert_eq!(
            envelope(&quoted),
            Envelope {
                sender: Some("\"<boss\"@example.com>".into()),
                recipients: vec!["\" ops\"@example.com".into()],
            }
        );
    }

    #[test]
    fn a_control_character_ends_a_value() {
        // Found by fuzzing: a CR inside a line came through into the envelope.
        let found =
            envelope(b"Return-Path: <a@b>\r*Delivered-To: x\r\nDelivered-To: c@d\0e\r\n\r\n");
        assert_eq!(found.sender.as_deref(), Some("a@b"));
        assert_eq!(found.recipients, ["c@d"]);
    }
}
