//! What the rules and the sinks see of a stored message: its envelope (from the trace
//! lines the filter put first: `Return-Path:` and `Delivered-To:`; the same headers
//! further down were written by the sender and are not trusted), subject, header From and
//! To, other headers, its text body (an HTML-only message turned into text) and its
//! attachments, parsed once per message with mail-parser: every action of the message
//! shares the one view, and an attachment's decoded bytes are held once (moved out of the
//! parser's tree, not copied), so a job holds at most the message and its decoded parts.

use mail_parser::{HeaderValue, MessageParser, MimeHeaders};

use crate::store::trace;

/// The parsed facts of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailView {
    /// The envelope sender (`Return-Path:`, without brackets; empty for a bounce).
    pub envelope_from: String,
    /// The envelope recipients of this copy (`Delivered-To:`).
    pub envelope_to: Vec<String>,
    /// The `Subject:`, decoded; empty when missing.
    pub subject: String,
    /// The address of the header `From:`, else the envelope sender.
    pub from: String,
    /// The addresses of the header `To:` and `Cc:`.
    pub to: Vec<String>,
    /// `Message-ID:` without brackets, if any.
    pub message_id: Option<String>,
    /// Every header as (name, value): decoded text where mail-parser has it, else raw.
    pub headers: Vec<(String, String)>,
    /// The first text body (HTML converted to text when that is all there is).
    pub body: String,
    /// The HTML body when the message has no text part (for [`MailView::markdown`]).
    pub html_only: Option<String>,
    /// Its attachments (inline images included), in order.
    pub attachments: Vec<Attachment>,
    /// The SASL login the client gave Postfix, from the first `Received:` header (the one
    /// Postfix in front of the filter wrote: `(Authenticated sender: <login>)`); `None`
    /// when the client did not log in. Headers further down are the sender's own.
    pub sasl_login: Option<String>,
}

impl MailView {
    /// Parses `bytes`; a message mail-parser cannot read at all gives empty fields (the
    /// rules then see an empty subject and body, and a manager can still want it by its
    /// envelope).
    pub fn parse(bytes: &[u8]) -> MailView {
        let Some(mut message) = MessageParser::default().parse(bytes) else {
            return MailView::default();
        };
        let attachments = take_attachments(&mut message);
        let headers: Vec<(String, String)> = message
            .headers()
            .iter()
            .map(|h| {
                let value = match h.value() {
                    HeaderValue::Text(text) => text.to_string(),
                    _ => raw_value(&message, h),
                };
                (h.name().to_string(), value)
            })
            .collect();
        let trace::Envelope {
            sender,
            recipients: envelope_to,
        } = trace::envelope(bytes);
        let envelope_from = sender.unwrap_or_default();
        let addresses = |address: Option<&mail_parser::Address>| -> Vec<String> {
            address
                .map(|a| {
                    a.iter()
                        .filter_map(|addr| addr.address().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let from = addresses(message.from())
            .into_iter()
            .next()
            .unwrap_or_else(|| envelope_from.clone());
        let mut to = addresses(message.to());
        to.extend(addresses(message.cc()));
        MailView {
            envelope_from,
            envelope_to,
            subject: message.subject().unwrap_or_default().to_string(),
            from,
            to,
            message_id: message.message_id().map(str::to_string),
            html_only: html_only(&message),
            body: message
                .body_text(0)
                .map(|b| b.into_owned())
                .unwrap_or_default(),
            sasl_login: sasl_login(&headers),
            headers,
            attachments,
        }
    }

    /// The body as Markdown: the text part where there is one, else the HTML part turned
    /// into Markdown (links, lists, tables and code kept).
    pub fn markdown(&self) -> String {
        let markdown = match &self.html_only {
            Some(html) => htmd::HtmlToMarkdown::builder()
                .skip_tags(vec!["script", "style", "head"])
                .build()
                .convert(html)
                .unwrap_or_else(|_| self.body.clone()),
            None => self.body.clone(),
        };
        markdown.replace("\r\n", "\n")
    }

    /// The values of every header called `name` (any case).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The login in the first `Received:` header's `(Authenticated sender: <login>)`.
fn sasl_login(headers: &[(String, String)]) -> Option<String> {
    let (_, first) = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("received"))?;
    let (_, after) = first.split_once("(Authenticated sender:")?;
    let login = after.split(')').next()?.trim();
    (!login.is_empty()).then(|| login.to_ascii_lowercase())
}

/// The HTML body of a message whose first body part is HTML (no text alternative).
fn html_only(message: &mail_parser::Message) -> Option<String> {
    let part = message.part(*message.text_body.first()?)?;
    match &part.body {
        mail_parser::PartType::Html(html) => Some(html.to_string()),
        _ => None,
    }
}

/// One attachment of a message (inline images included), for sinks that carry files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its file name, else `part-<n>.<subtype>`.
    pub name: String,
    /// Its content type (`type/subtype`).
    pub content_type: String,
    /// Its decoded bytes (shared: a clone is cheap).
    pub bytes: bytes::Bytes,
}

/// The attachments of `message` (parts that are its text or HTML body are not), their
/// decoded bytes moved out of the parser's tree (a part the parser did not decode, which
/// borrows the message, is copied).
fn take_attachments(message: &mut mail_parser::Message) -> Vec<Attachment> {
    let ids: Vec<usize> = message.attachments.iter().map(|&id| id as usize).collect();
    ids.into_iter()
        .enumerate()
        .filter_map(|(n, id)| {
            let part = message.parts.get_mut(id)?;
            let content_type = part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{sub}", ct.ctype()),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            let name = part
                .attachment_name()
                .map(|n| n.replace(['/', '\\'], "_"))
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| {
                    let ext = content_type.rsplit('/').next().unwrap_or("bin");
                    format!("part-{}.{ext}", n + 1)
                });
            let empty = mail_parser::PartType::Binary(std::borrow::Cow::Borrowed(&[]));
            let body = match std::mem::replace(&mut part.body, empty) {
                mail_parser::PartType::Binary(std::borrow::Cow::Owned(v))
                | mail_parser::PartType::InlineBinary(std::borrow::Cow::Owned(v)) => {
                    bytes::Bytes::from(v)
                }
                mail_parser::PartType::Text(std::borrow::Cow::Owned(t))
                | mail_parser::PartType::Html(std::borrow::Cow::Owned(t)) => {
                    bytes::Bytes::from(t.into_bytes())
                }
                other => {
                    part.body = other;
                    bytes::Bytes::copy_from_slice(part.contents())
                }
            };
            Some(Attachment {
                name,
                content_type,
                bytes: body,
            })
        })
        .collect()
}

/// A header's value as written, unfolded and trimmed.
fn raw_value(message: &mail_parser::Message, header: &mail_parser::Header) -> String {
    let raw = message.raw_message();
    let (start, end) = (header.offset_start as usize, header.offset_end as usize);
    let text = String::from_utf8_lossy(raw.get(start..end).unwrap_or_default());
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_is_read_from_postfixs_received_header_only() {
        let postfix = "Return-Path: <svc-jira@example.com>\r\nDelivered-To: ops@example.com\r\n\
            Received: from client.test (localhost [127.0.0.1])\r\n\t(Authenticated sender: Jira@mx.example.com)\r\n\
            \tby mx.example.com (Postfix) with ESMTPA\r\n\tfor <ops@example.com>; Sun,  6 Dec 2026 07:49:38 +0000 (UTC)\r\n\
            Subject: x\r\n\r\nbody\r\n";
        assert_eq!(
            MailView::parse(postfix.as_bytes()).sasl_login.as_deref(),
            Some("jira@mx.example.com")
        );
        // A client that did not log in, with a forged header of its own further down.
        let forged = "Return-Path: <svc-splunk@example.com>\r\nDelivered-To: ops@example.com\r\n\
            Received: from client.test (localhost [127.0.0.1])\r\n\tby mx.example.com (Postfix) with ESMTP\r\n\
            Received: from x (Authenticated sender: splunk@mx.example.com) by y\r\n\
            Subject: x\r\n\r\nbody\r\n";
        assert_eq!(MailView::parse(forged.as_bytes()).sasl_login, None);
    }

    #[test]
    fn the_envelope_comes_from_the_trace_headers_and_html_becomes_text() {
        let view = MailView::parse(
            b"Return-Path: <nagios@example.org>\r\nDelivered-To: ops@example.com\r\nDelivered-To: dba@example.com\r\n\
              From: Nagios <alerts@example.org>\r\nTo: ops@example.com\r\nCc: Boss <boss@example.com>\r\n\
              Subject: =?utf-8?q?disk_full_=E2=80=94_db1?=\r\nMessage-ID: <1@example.org>\r\nX-Priority: 1\r\n\
              Content-Type: text/html\r\n\r\n<p>Disk <b>/var</b> is full</p>\r\n",
        );
        assert_eq!(view.envelope_from, "nagios@example.org");
        assert_eq!(view.envelope_to, ["ops@example.com", "dba@example.com"]);
        assert_eq!(view.from, "alerts@example.org");
        assert_eq!(view.to, ["ops@example.com", "boss@example.com"]);
        assert_eq!(view.subject, "disk full \u{2014} db1");
        assert_eq!(view.message_id.as_deref(), Some("1@example.org"));
        assert_eq!(view.header_values("x-priority").collect::<Vec<_>>(), ["1"]);
        assert!(view.body.contains("Disk /var is full"), "{:?}", view.body);
        assert!(!view.body.contains('<'));
    }

    #[test]
    fn trace_headers_written_by_the_sender_are_not_the_envelope() {
        let stored = b"Return-Path: <a@example.org>\r\nDelivered-To: ops@example.com\r\n\
            Received: from x\r\nDelivered-To: victim@outside.example\r\nReturn-Path: <boss@example.com>\r\n\
            Subject: hi\r\n\r\nbody\r\n";
        let view = MailView::parse(stored);
        assert_eq!(view.envelope_from, "a@example.org");
        assert_eq!(view.envelope_to, ["ops@example.com"]);
    }

    #[test]
    fn without_a_from_header_the_sender_is_the_envelope_sender() {
        let view = MailView::parse(b"Return-Path: <>\r\nSubject: x\r\n\r\nbody\r\n");
        assert_eq!(view.envelope_from, "");
        assert_eq!(view.from, "");
        assert_eq!(view.body, "body\r\n");
    }
}
