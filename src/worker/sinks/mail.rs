//! The e-mail sink: `mailto:` alerts and unmatched mail forwarded unchanged, sent with
//! mail-send to one SMTP server (`remote-smtp`), one connection per message.
//!
//! The stored message begins with the filter's trace headers (`Return-Path:`,
//! `Delivered-To:`): they are dropped, since the receiving server writes its own. A
//! `mailto:` alert is the message with its `To:` replaced by the alert's address and, when
//! `mailto_from` is set, its `From:` (and the envelope sender) replaced too; every other
//! byte is unchanged. A forward keeps the message and its envelope as they were.

use std::time::Duration;

use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Message;

use super::SinkError;
use crate::worker::mail_view::without_trace;

/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(60);

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

    /// Sends `message` (as stored) to `to` as an alert, with `from` replacing the sender
    /// when given.
    pub async fn mailto(
        &self,
        message: &[u8],
        envelope_from: &str,
        to: &str,
        from: Option<&str>,
    ) -> Result<(), SinkError> {
        let body = rewrite_headers(without_trace(message), to, from);
        self.send(from.unwrap_or(envelope_from), &[to], body).await
    }

    /// Sends `message` (as stored, less the trace headers) to its own envelope.
    pub async fn forward(
        &self,
        message: &[u8],
        envelope_from: &str,
        envelope_to: &[String],
    ) -> Result<(), SinkError> {
        if envelope_to.is_empty() {
            return Err(SinkError::Permanent(
                "no envelope recipient (Delivered-To) to forward to".into(),
            ));
        }
        let to: Vec<&str> = envelope_to.iter().map(String::as_str).collect();
        self.send(envelope_from, &to, without_trace(message).to_vec())
            .await
    }

    async fn send(&self, from: &str, to: &[&str], body: Vec<u8>) -> Result<(), SinkError> {
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

/// The header section with `To:` (and `From:` when `from` is given) replaced, unfolded
/// continuation lines of the replaced fields dropped; the body unchanged.
pub fn rewrite_headers(message: &[u8], to: &str, from: Option<&str>) -> Vec<u8> {
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
        if name.eq_ignore_ascii_case(b"to") {
            skipping = true;
            if !wrote_to {
                out.extend_from_slice(format!("To: <{to}>\r\n").as_bytes());
                wrote_to = true;
            }
            continue;
        }
        if let (true, Some(from)) = (name.eq_ignore_ascii_case(b"from"), from) {
            skipping = true;
            if !wrote_from {
                out.extend_from_slice(format!("From: <{from}>\r\n").as_bytes());
                wrote_from = true;
            }
            continue;
        }
        out.extend_from_slice(line);
    }
    if !wrote_to {
        out.extend_from_slice(format!("To: <{to}>\r\n").as_bytes());
    }
    if let (false, Some(from)) = (wrote_from, from) {
        out.extend_from_slice(format!("From: <{from}>\r\n").as_bytes());
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
        assert!(text.starts_with("To: <b@y>"), "{text}");
        assert!(text.ends_with("\nbody\nTo: not a header\n"), "{text}");
        assert_eq!(text.matches("To: <b@y>").count(), 1, "{text}");
    }

    const STORED: &[u8] = b"Return-Path: <nagios@example.org>\r\nDelivered-To: ops@example.com\r\n\
From: Nagios <nagios@example.org>\r\nTo: ops@example.com,\r\n  dba@example.com\r\nSubject: disk\r\n\r\nTo: not a header\r\n";

    #[test]
    fn trace_headers_are_dropped_and_to_and_from_replaced_body_unchanged() {
        assert!(without_trace(STORED).starts_with(b"From: Nagios"));
        let alert = rewrite_headers(without_trace(STORED), "oncall@example.com", None);
        assert_eq!(
            String::from_utf8(alert).unwrap(),
            "From: Nagios <nagios@example.org>\r\nTo: <oncall@example.com>\r\nSubject: disk\r\n\r\nTo: not a header\r\n"
        );
        let alert = rewrite_headers(
            without_trace(STORED),
            "oncall@example.com",
            Some("alerts@example.com"),
        );
        assert_eq!(
            String::from_utf8(alert).unwrap(),
            "From: <alerts@example.com>\r\nTo: <oncall@example.com>\r\nSubject: disk\r\n\r\nTo: not a header\r\n"
        );
    }

    #[test]
    fn a_message_without_to_gets_one() {
        let alert = rewrite_headers(b"Subject: x\r\n\r\nbody\r\n", "a@example.com", None);
        assert_eq!(alert, b"Subject: x\r\nTo: <a@example.com>\r\n\r\nbody\r\n");
    }
}
