//! The digest that recognises one message delivered twice.
//!
//! The common duplicate is a resend after a proxy timeout: the store succeeded, Postfix
//! answered `451` anyway, and the client sent the message again. That copy goes through
//! Postfix again and gets a new `Received:` line (another time, another queue id) on top,
//! so the SHA-256 of the stored bytes differs. The digest therefore leaves out that one
//! line: the `Received:` field that comes first after the envelope lines swiftdrop writes
//! (`Return-Path:`, `Delivered-To:`), and only in a message with a valid `Message-ID`,
//! which is what says "the same message". Everything else counts:
//! - without a `Message-ID`, two alerts with the same text sent a minute apart are two
//!   events, told apart only by their `Received:` times: the digest is then the SHA-256
//!   of all the bytes;
//! - a message re-injected through Postfix (by an operator, a forward) carries one more
//!   `Received:` line, so it is not taken for the original;
//! - the envelope counts: one message sent to two recipients in two transactions is not a
//!   duplicate.

use sha2::{Digest, Sha256};

use crate::util::hex::hex;

/// A header section longer than this is hashed as it is (no sane message has one).
const MAX_HEADER: usize = 1 << 20;

/// Computes the duplicate digest of a message fed in chunks of any size: the same digest
/// whatever the chunks.
#[derive(Default)]
pub struct DedupDigest {
    /// The header section read so far (at most `MAX_HEADER` + 1 bytes), until its end.
    header: Vec<u8>,
    /// Past the header section: the rest is hashed as it comes.
    in_body: bool,
    hasher: Sha256,
}

impl DedupDigest {
    /// The digest of a whole message.
    pub fn of(message: &[u8]) -> String {
        let mut digest = DedupDigest::default();
        digest.update(message);
        digest.finish()
    }

    /// Feeds the next bytes of the message.
    pub fn update(&mut self, chunk: &[u8]) {
        if self.in_body {
            self.hasher.update(chunk);
            return;
        }
        // The blank line may straddle chunks: search from a little before the new bytes.
        let from = self.header.len().saturating_sub(3);
        // Never hold more than one byte past the limit: a message is not copied whole.
        let room = (MAX_HEADER + 1).saturating_sub(self.header.len());
        let (head, tail) = chunk.split_at(chunk.len().min(room));
        self.header.extend_from_slice(head);
        match header_end(&self.header, from) {
            Some(end) => {
                let rest = self.header.split_off(end);
                self.hash_header();
                self.hasher.update(&rest);
            }
            None if self.header.len() > MAX_HEADER => self.hash_header(),
            None => return,
        }
        self.hasher.update(tail);
        self.in_body = true;
    }

    /// The digest, as lowercase hex.
    pub fn finish(mut self) -> String {
        if !self.in_body {
            self.hash_header();
        }
        hex(&self.hasher.finalize())
    }

    /// Hashes the header section, without its first `Received:` field after the envelope
    /// lines if it has a valid `Message-ID`; a section over the limit as it is.
    fn hash_header(&mut self) {
        let header = std::mem::take(&mut self.header);
        if header.len() > MAX_HEADER {
            self.hasher.update(&header);
            return;
        }
        let fields = fields(&header);
        if !fields.iter().any(|f| has_message_id(f)) {
            self.hasher.update(&header);
            return;
        }
        let envelope = fields
            .iter()
            .take_while(|f| is_named(f, b"return-path") || is_named(f, b"delivered-to"))
            .count();
        let skipped =
            Some(envelope).filter(|&i| fields.get(i).is_some_and(|f| is_named(f, b"received")));
        for (i, field) in fields.iter().enumerate() {
            if Some(i) != skipped {
                self.hasher.update(field);
            }
        }
    }
}

/// Whether `field` is a `Message-ID` with a usable id: `<left@right>`, both sides non-empty.
fn has_message_id(field: &[u8]) -> bool {
    if !is_named(field, b"message-id") {
        return false;
    }
    let value = &field[field.iter().position(|&b| b == b':').map_or(0, |c| c + 1)..];
    let value = value.trim_ascii();
    let Some(id) = value.strip_prefix(b"<").and_then(|v| v.strip_suffix(b">")) else {
        return false;
    };
    match id.iter().position(|&b| b == b'@') {
        Some(at) => at > 0 && at + 1 < id.len(),
        None => false,
    }
}

/// Where the body starts: just past the first empty line (CRLF or bare LF) at or after
/// `from`, or at 0 for a message that starts with one.
fn header_end(bytes: &[u8], from: usize) -> Option<usize> {
    if bytes.starts_with(b"\r\n") {
        return Some(2);
    }
    if bytes.starts_with(b"\n") {
        return Some(1);
    }
    let mut i = from;
    while let Some(pos) = bytes[i..].iter().position(|&b| b == b'\n') {
        let at = i + pos + 1;
        match &bytes[at..] {
            [b'\n', ..] => return Some(at + 1),
            [b'\r', b'\n', ..] => return Some(at + 2),
            _ => i = at,
        }
    }
    None
}

/// The header section cut into fields, each with its continuation lines and line ends; the
/// blank line that ends the section is a field of its own (it has no name).
fn fields(header: &[u8]) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut line = 0;
    while line < header.len() {
        let end = header[line..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| line + p + 1);
        let continues = matches!(header.get(end), Some(b' ' | b'\t'));
        if !continues {
            fields.push(&header[start..end]);
            start = end;
        }
        line = end;
    }
    fields
}

/// Whether `field` is named `name` (lowercase), whatever the case and the space before `:`.
fn is_named(field: &[u8], name: &[u8]) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    field[..colon].trim_ascii_end().eq_ignore_ascii_case(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &[u8] = b"Return-Path: <a@example.org>\r\nDelivered-To: ops@example.com\r\n\
        Received: from client (client [192.0.2.1])\r\n\tby mx with ESMTP id 4AbC; Sat, 28 Nov 2026 03:00:00 +0000\r\n\
        Message-ID: <1@example.org>\r\nSubject: disk full\r\n\r\nbody\r\n";
    const RESENT: &[u8] = b"Return-Path: <a@example.org>\r\nDelivered-To: ops@example.com\r\n\
        Received: from client (client [192.0.2.1])\r\n\tby mx with ESMTP id 9XyZ; Sat, 28 Nov 2026 03:05:00 +0000\r\n\
        Message-ID: <1@example.org>\r\nSubject: disk full\r\n\r\nbody\r\n";

    fn without_message_id(message: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(message.to_vec()).unwrap();
        text.replace("Message-ID: <1@example.org>\r\n", "")
            .into_bytes()
    }

    #[test]
    fn a_resend_with_a_new_received_line_has_the_same_digest() {
        assert_eq!(DedupDigest::of(FIRST), DedupDigest::of(RESENT));
    }

    #[test]
    fn without_a_message_id_the_received_line_tells_two_sends_apart() {
        let first = without_message_id(FIRST);
        let second = without_message_id(RESENT);
        assert_ne!(DedupDigest::of(&first), DedupDigest::of(&second));
        // And then the digest is the SHA-256 of the bytes, like the `sha256` metadata.
        assert_eq!(DedupDigest::of(&first), hex(&Sha256::digest(&first)));
    }

    #[test]
    fn the_envelope_and_the_body_count() {
        let other_recipient = String::from_utf8(RESENT.to_vec())
            .unwrap()
            .replace("ops@", "dev@");
        assert_ne!(
            DedupDigest::of(FIRST),
            DedupDigest::of(other_recipient.as_bytes())
        );
        let other_body = String::from_utf8(RESENT.to_vec())
            .unwrap()
            .replace("body", "bodY");
        assert_ne!(
            DedupDigest::of(FIRST),
            DedupDigest::of(other_body.as_bytes())
        );
        // A "Received:" line in the body is the body's.
        let in_body = [FIRST, b"Received: x\r\n"].concat();
        let in_body_resent = [RESENT, b"Received: y\r\n"].concat();
        assert_ne!(DedupDigest::of(&in_body), DedupDigest::of(&in_body_resent));
    }

    #[test]
    fn a_reinjected_copy_or_a_bad_message_id_is_not_a_duplicate() {
        // Through Postfix once more: one more Received: line under the new one.
        let reinjected = String::from_utf8(RESENT.to_vec()).unwrap().replacen(
            "Message-ID",
            "Received: from mx by mx2; Sat, 28 Nov 2026 04:00:00 +0000\r\nMessage-ID",
            1,
        );
        assert_ne!(
            DedupDigest::of(FIRST),
            DedupDigest::of(reinjected.as_bytes())
        );
        for id in ["", "<>", "<@example.org>", "<nobody>"] {
            let with = |m: &[u8]| {
                String::from_utf8(m.to_vec())
                    .unwrap()
                    .replace("<1@example.org>", id)
            };
            let (first, resent) = (with(FIRST), with(RESENT));
            assert_ne!(
                DedupDigest::of(first.as_bytes()),
                DedupDigest::of(resent.as_bytes()),
                "{id:?}"
            );
        }
    }

    #[test]
    fn chunks_of_any_size_give_the_same_digest() {
        let bare_lf = String::from_utf8(FIRST.to_vec())
            .unwrap()
            .replace("\r\n", "\n");
        let no_body = &FIRST[..FIRST.len() - "\r\nbody\r\n".len()];
        for message in [
            FIRST,
            bare_lf.as_bytes(),
            no_body,
            b"\r\nbody only",
            b"Subject: x",
        ] {
            let whole = DedupDigest::of(message);
            for size in 1..message.len() {
                let mut digest = DedupDigest::default();
                for chunk in message.chunks(size) {
                    digest.update(chunk);
                }
                assert_eq!(digest.finish(), whole, "chunks of {size}");
            }
        }
        assert_eq!(
            DedupDigest::of(no_body),
            DedupDigest::of(&RESENT[..no_body.len()])
        );
    }

    #[test]
    fn a_header_section_over_the_limit_is_hashed_whole_whatever_the_chunks() {
        let many = "Delivered-To: x@example.com\r\n".repeat(MAX_HEADER / 29 + 1);
        let message = |received: &str| {
            format!("{many}Received: {received}\r\nMessage-ID: <1@example.org>\r\n\r\nbody\r\n")
        };
        let (first, resent) = (message("a"), message("b"));
        let whole = DedupDigest::of(first.as_bytes());
        assert_eq!(whole, hex(&Sha256::digest(first.as_bytes())));
        assert_ne!(whole, DedupDigest::of(resent.as_bytes()));
        for size in [1000, 4096, 65536, MAX_HEADER - 1, MAX_HEADER + 1] {
            let mut digest = DedupDigest::default();
            for chunk in first.as_bytes().chunks(size) {
                digest.update(chunk);
            }
            assert_eq!(digest.finish(), whole, "chunks of {size}");
        }
    }

    #[test]
    fn fields_keep_their_continuation_lines() {
        let header = b"A: 1\r\n 2\r\nB: 3\r\n\r\n";
        assert_eq!(
            fields(header),
            vec![&b"A: 1\r\n 2\r\n"[..], &b"B: 3\r\n"[..], &b"\r\n"[..]]
        );
        assert!(is_named(b"Message-Id : <x>\r\n", b"message-id"));
        assert!(has_message_id(b"Message-Id:\r\n <a.b@c>\r\n"));
        assert!(!is_named(b"X-Received: y\r\n", b"received"));
    }
}
