//! The e-mail sink: `mailto:` alerts and unmatched mail forwarded unchanged, sent with
//! mail-send to one SMTP server (`remote-smtp`), one connection per message.
//!
//! The stored message begins with the filter's trace headers (`Return-Path:`,
//! `Delivered-To:`): they are dropped, since the receiving server writes its own. Both kinds
//! begin with the queue's loop mark ([`LOOP_HEADER`]), which a worker of the same queue that
//! meets it again ends as a loop. A `mailto:` alert is the message with its `To:` replaced
//! by the alert's addresses (`To: a@example.com, b@example.com`, as mail2alert writes it),
//! `Auto-Submitted: auto-generated` (RFC 3834) in place of any `Auto-Submitted:` it had and,
//! when `mailto_from` is set, its `From:` (and the envelope sender) replaced too; every
//! other byte is unchanged. A forward is the stored message after the trace headers, byte
//! for byte, under the loop mark, to its own envelope: it is the sender's message, not
//! ours, so it gets no `Auto-Submitted:` (which would silence its recipients' replies).

use std::time::Duration;

use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Message;

use super::SinkError;
use crate::worker::mail_view::without_trace;

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The header on everything the worker sends, holding the id of the queue it came from.
pub const LOOP_HEADER: &str = "X-Swiftdrop-Loop";

/// The marks a worker puts on what it sends, and finds on what comes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    /// The queue's id (`swiftdrop check` prints it): every worker of the queue shares it.
    id: String,
}

impl Marks {
    /// The marks of the queue `queue_id`.
    pub fn for_queue(queue_id: &str) -> Marks {
        Marks {
            id: queue_id.to_string(),
        }
    }

    /// The id in [`LOOP_HEADER`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether `message` (as stored) carries this queue's [`LOOP_HEADER`] in its header
    /// section: a worker of this queue sent it.
    pub fn is_ours(&self, message: &[u8]) -> bool {
        let head = &message[..header_end(message)];
        head.split(|&b| b == b'\n').any(|line| {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return false;
            };
            line[..colon].eq_ignore_ascii_case(LOOP_HEADER.as_bytes())
                && line[colon + 1..].trim_ascii() == self.id.as_bytes()
        })
    }

    /// The loop mark's line, with `eol` (the message's own line ending).
    fn line(&self, eol: &str) -> String {
        format!("{LOOP_HEADER}: {}{eol}", self.id)
    }
}

/// The line ending `message` uses: CRLF unless its first line ends with a bare LF.
fn line_ending(message: &[u8]) -> &'static str {
    match memchr::memchr(b'\n', message) {
        Some(at) if at == 0 || message[at - 1] != b'\r' => "\n",
        _ => "\r\n",
    }
}

/// An SMTP server to send to.
#[derive(Debug, Clone)]
pub struct MailSink {
    host: String,
    port: u16,
    /// The name said in EHLO.
    helo: String,
}

impl MailSink {
    /// A sink for `host_port` (`host:port`, checked by the rules file).
    pub fn new(host_port: &str, helo: &str) -> Result<MailSink, String> {
        let (host, port) = host_port
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse().ok()?)))
            .ok_or_else(|| format!("{host_port:?} is not host:port"))?;
        Ok(MailSink {
            host: host.to_string(),
            port,
            helo: helo.to_string(),
        })
    }

    /// Sends `message` (as stored) to `to` as one alert, with `from` replacing the sender
    /// when given.
    pub async fn mailto(
        &self,
        message: &[u8],
        envelope_from: &str,
        to: &[String],
        from: Option<&str>,
        marks: &Marks,
    ) -> Result<(), SinkError> {
        let content = without_trace(message);
        let eol = line_ending(content);
        let mut body = marks.line(eol).into_bytes();
        body.extend_from_slice(format!("Auto-Submitted: auto-generated{eol}").as_bytes());
        body.extend(rewrite_headers(content, &to.join(", "), from));
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        self.send(from.unwrap_or(envelope_from), &to, body).await
    }

    /// Sends `message` (as stored, less the trace headers, under the loop mark) to its own
    /// envelope.
    pub async fn forward(
        &self,
        message: &[u8],
        envelope_from: &str,
        envelope_to: &[String],
        marks: &Marks,
    ) -> Result<(), SinkError> {
        if envelope_to.is_empty() {
            return Err(SinkError::Permanent(
                "no envelope recipient (Delivered-To) to forward to".into(),
            ));
        }
        let to: Vec<&str> = envelope_to.iter().map(String::as_str).collect();
        let content = without_trace(message);
        let mut body = marks.line(line_ending(content)).into_bytes();
        body.extend_from_slice(content);
        self.send(envelope_from, &to, body).await
    }

    /// Sends `body` (the message's bytes) in one SMTP transaction.
    async fn send(&self, from: &str, to: &[&str], mut body: Vec<u8>) -> Result<(), SinkError> {
        // mail-send ends the data with CRLF "." CRLF whatever the message ends with: the
        // message's own last line ending is that first CRLF, not one more line.
        if body.ends_with(b"\r\n") {
            body.truncate(body.len() - 2);
        } else if body.ends_with(b"\n") {
            body.truncate(body.len() - 1);
        }
        let transient = |e: &dyn std::fmt::Display| {
            SinkError::Transient(format!("{}:{}: {e}", self.host, self.port))
        };
        let conversation = async {
            let builder = SmtpClientBuilder::new(self.host.as_str(), self.port)
                .map_err(|e| SinkError::Permanent(e.to_string()))?
                .implicit_tls(false)
                .helo_host(self.helo.clone())
                .timeout(SMTP_TIMEOUT);
            let mut client = builder.connect_plain().await.map_err(|e| transient(&e))?;
            let message = Message::new(from, to.to_vec(), body);
            client.send(message).await.map_err(|e| match e {
                mail_send::Error::UnexpectedReply(r) if r.code >= 500 => {
                    SinkError::Permanent(format!(
                        "{}:{} answered {} {}",
                        self.host, self.port, r.code, r.message
                    ))
                }
                e => transient(&e),
            })?;
            let _ = client.quit().await;
            Ok(())
        };
        tokio::time::timeout(SMTP_TIMEOUT, conversation)
            .await
            .unwrap_or_else(|_| Err(transient(&"no answer in time")))
    }
}

/// The header section with `To:` set to `to` (and `From:` to `<from>` when given) and any
/// `Auto-Submitted:` dropped (the caller writes its own), the continuation lines of the
/// replaced fields dropped too; written with the message's own line ending; the body
/// unchanged.
pub fn rewrite_headers(message: &[u8], to: &str, from: Option<&str>) -> Vec<u8> {
    let eol = line_ending(message);
    let header_end = header_end(message);
    let (head, body) = message.split_at(header_end);
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut skipping = false;
    let (mut wrote_to, mut wrote_from) = (false, from.is_none());
    for line in head.split_inclusive(|&b| b == b'\n') {
        if skipping && matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        skipping = false;
        let name = line
            .iter()
            .position(|&b| b == b':')
            .map(|i| &line[..i])
            .unwrap_or_default();
        if name.eq_ignore_ascii_case(b"auto-submitted") {
            skipping = true;
            continue;
        }
        if name.eq_ignore_ascii_case(b"to") {
            skipping = true;
            if !wrote_to {
                out.extend_from_slice(format!("To: {to}{eol}").as_bytes());
                wrote_to = true;
            }
            continue;
        }
        if let (true, Some(from)) = (name.eq_ignore_ascii_case(b"from"), from) {
            skipping = true;
            if !wrote_from {
                out.extend_from_slice(format!("From: <{from}>{eol}").as_bytes());
                wrote_from = true;
            }
            continue;
        }
        out.extend_from_slice(line);
    }
    if !wrote_to {
        out.extend_from_slice(format!("To: {to}{eol}").as_bytes());
    }
    if let (false, Some(from)) = (wrote_from, from) {
        out.extend_from_slice(format!("From: <{from}>{eol}").as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// Where the header section ends: after the line before the first empty line (CRLF or a
/// bare LF), else the whole message.
fn header_end(message: &[u8]) -> usize {
    let mut at = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            return at;
        }
        at += line.len();
    }
    message.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lf_mail_keeps_its_body_below_the_headers() {
        let alert = rewrite_headers(
            b"To: a@x\nSubject: s\n\nbody\nTo: not a header\n",
            "b@y",
            None,
        );
        let text = String::from_utf8(alert).unwrap();
        assert!(text.starts_with("To: b@y\nSubject"), "{text}");
        assert!(text.ends_with("\nbody\nTo: not a header\n"), "{text}");
        assert_eq!(text.matches("To: b@y").count(), 1, "{text}");
    }

    const STORED: &[u8] = b"Return-Path: <nagios@example.org>\r\nDelivered-To: ops@example.com\r\n\
From: Nagios <nagios@example.org>\r\nTo: ops@example.com,\r\n  dba@example.com\r\nSubject: disk\r\n\r\nTo: not a header\r\n";

    #[test]
    fn trace_headers_are_dropped_and_to_and_from_replaced_body_unchanged() {
        assert!(without_trace(STORED).starts_with(b"From: Nagios"));
        let alert = rewrite_headers(without_trace(STORED), "oncall@example.com", None);
        assert_eq!(
            String::from_utf8(alert).unwrap(),
            "From: Nagios <nagios@example.org>\r\nTo: oncall@example.com\r\nSubject: disk\r\n\r\nTo: not a header\r\n"
        );
        let alert = rewrite_headers(
            without_trace(STORED),
            "oncall@example.com",
            Some("alerts@example.com"),
        );
        assert_eq!(
            String::from_utf8(alert).unwrap(),
            "From: <alerts@example.com>\r\nTo: oncall@example.com\r\nSubject: disk\r\n\r\nTo: not a header\r\n"
        );
    }

    #[test]
    fn a_message_without_to_gets_one() {
        let alert = rewrite_headers(
            b"Subject: x\r\nAuto-Submitted: no\r\n\r\nbody\r\n",
            "a@example.com, b@example.com",
            None,
        );
        assert_eq!(
            alert,
            b"Subject: x\r\nTo: a@example.com, b@example.com\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn the_loop_mark_is_found_in_the_header_section_only() {
        let marks = Marks::for_queue("q0123456789ab");
        assert!(marks.is_ours(b"Return-Path: <a@b>\r\nx-swiftdrop-loop:  q0123456789ab \r\nSubject: s\r\n\r\nbody\r\n"));
        assert!(!marks.is_ours(b"X-Swiftdrop-Loop: q999\r\n\r\nbody\r\n"));
        assert!(!marks.is_ours(b"Subject: s\r\n\r\nX-Swiftdrop-Loop: q0123456789ab\r\n"));
        assert_eq!(line_ending(b"a: b\nc"), "\n");
        assert_eq!(line_ending(b"a: b\r\nc"), "\r\n");
    }
}
