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
//! Both go out with CRLF line endings, as SMTP requires: a stored bare LF or lone CR (which
//! a Postfix in front never passes) becomes CRLF. Each recipient's reply is kept: one
//! refused does not stop the others.

use std::time::Duration;

use mail_send::SmtpClientBuilder;
use mail_send::smtp::message::Parameters;

use super::SinkError;
use crate::store::trace;

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

    /// The action ids in this queue's [`LOOP_HEADER`]s in the header section of
    /// `message` (as stored): the actions of this queue that sent it.
    pub fn actions_in(&self, message: &[u8]) -> Vec<String> {
        let head = &message[..header_end(message)];
        // Fields unfolded: a relay may have folded a long mark.
        let mut fields: Vec<Vec<u8>> = Vec::new();
        for line in head.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            match (line.first(), fields.last_mut()) {
                (Some(b' ' | b'\t'), Some(field)) => {
                    field.push(b' ');
                    field.extend_from_slice(line);
                }
                _ => fields.push(line.to_vec()),
            }
        }
        fields
            .iter()
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                if !line[..colon].eq_ignore_ascii_case(LOOP_HEADER.as_bytes()) {
                    return None;
                }
                let value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
                let mut words = value.split_whitespace();
                (words.next() == Some(self.id.as_str()))
                    .then(|| words.map(str::to_string).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    }

    /// The loop mark's line for what a message's actions (`actions`: their ids) send.
    pub fn line(&self, actions: &[String]) -> String {
        format!("{LOOP_HEADER}: {} {}\r\n", self.id, actions.join(" "))
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

    /// Whether the server takes a session as a send would open it (greeting and EHLO, by
    /// the same client), for the worker's readiness; QUIT at once.
    pub async fn reachable(&self) -> Result<(), String> {
        let address = format!("{}:{}", self.host, self.port);
        let client = SmtpClientBuilder::new(self.host.as_str(), self.port)
            .map_err(|e| format!("{address}: {e}"))?
            .implicit_tls(false)
            .helo_host(self.helo.clone())
            .timeout(Duration::from_secs(10))
            .connect_plain()
            .await
            .map_err(|e| format!("{address}: {e}"))?;
        let _ = client.quit().await;
        Ok(())
    }

    /// Sends `message` (as stored) as one alert to the recipients `rcpt`, its `To:`
    /// listing `header_to` (every address of the alert, those sent to before included),
    /// with `from` replacing the sender when given, under `loop_mark`.
    pub async fn mailto(
        &self,
        message: &[u8],
        envelope_from: &str,
        rcpt: &[String],
        header_to: &[String],
        from: Option<&str>,
        loop_mark: &str,
    ) -> Result<Accepted, SinkError> {
        let mut body = loop_mark.as_bytes().to_vec();
        body.extend_from_slice(b"Auto-Submitted: auto-generated\r\n");
        body.extend(rewrite_headers(
            trace::strip(message),
            &fold_list(header_to),
            from,
        ));
        self.send(from.unwrap_or(envelope_from), rcpt, body).await
    }

    /// Sends `message` (as stored, less the trace headers, under `loop_mark`) to `rcpt`.
    pub async fn forward(
        &self,
        message: &[u8],
        envelope_from: &str,
        rcpt: &[String],
        loop_mark: &str,
    ) -> Result<Accepted, SinkError> {
        let mut body = loop_mark.as_bytes().to_vec();
        body.extend_from_slice(trace::strip(message));
        self.send(envelope_from, rcpt, body).await
    }

    /// Sends `body` (the message's bytes) to `rcpt` in one SMTP transaction: the data
    /// goes to the recipients the server accepted, each refusal is kept (a refused data is
    /// the refusal of those it was for). An error: nobody has it (permanent: a 5xx to the
    /// sender; else transient: no connection, no answer in time).
    async fn send(
        &self,
        from: &str,
        rcpt: &[String],
        body: Vec<u8>,
    ) -> Result<Accepted, SinkError> {
        if rcpt.is_empty() {
            return Err(SinkError::Permanent("no recipient to send to".into()));
        }
        let mut body = crlf(body);
        // mail-send ends the data with CRLF "." CRLF whatever the message ends with: the
        // message's own last line ending is that first CRLF, not one more line.
        if body.ends_with(b"\r\n") {
            body.truncate(body.len() - 2);
        }
        let server = format!("{}:{}", self.host, self.port);
        let failed = |e: mail_send::Error| match e {
            mail_send::Error::UnexpectedReply(r) if r.code >= 500 => {
                SinkError::Permanent(format!("{server} answered {} {}", r.code, r.message))
            }
            e => SinkError::Transient(format!("{server}: {e}")),
        };
        let conversation = async {
            let mut client = SmtpClientBuilder::new(self.host.as_str(), self.port)
                .map_err(|e| SinkError::Permanent(e.to_string()))?
                .implicit_tls(false)
                .helo_host(self.helo.clone())
                .timeout(SMTP_TIMEOUT)
                .connect_plain()
                .await
                .map_err(failed)?;
            client
                .mail_from(from, &Parameters::new())
                .await
                .map_err(failed)?;
            let mut accepted = Accepted::default();
            for to in rcpt {
                match client.rcpt_to(to, &Parameters::new()).await {
                    Ok(()) => accepted.accepted.push(to.clone()),
                    Err(mail_send::Error::UnexpectedReply(r)) => {
                        let why = format!("{to}: {} {}", r.code, r.message);
                        if r.code >= 500 {
                            accepted.refused.push((to.clone(), why));
                        } else {
                            accepted.deferred.push((to.clone(), why));
                        }
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
            if !accepted.accepted.is_empty() {
                if let Err(e) = client.data(&body).await {
                    // The data refused: those who were to get it did not (those refused or
                    // deferred at RCPT stay as they were).
                    let why = failed(e);
                    let taken = std::mem::take(&mut accepted.accepted);
                    let list = match &why {
                        SinkError::Permanent(_) => &mut accepted.refused,
                        SinkError::Transient(_) => &mut accepted.deferred,
                    };
                    list.extend(
                        taken
                            .into_iter()
                            .map(|to| (to.clone(), format!("{to}: {why}"))),
                    );
                }
            }
            Ok((accepted, client))
        };
        // The answer to the data is the result: the goodbye is not waited for within it.
        let (accepted, client) = tokio::time::timeout(SMTP_TIMEOUT, conversation)
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::Transient(format!(
                    "{}:{}: no answer in time",
                    self.host, self.port
                )))
            })?;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), client.quit()).await;
        });
        Ok(accepted)
    }
}

/// What the server said to a transaction's recipients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// The recipients the server took the message for.
    pub accepted: Vec<String>,
    /// Refused for good (5xx): the recipient, and the reply.
    pub refused: Vec<(String, String)>,
    /// Refused for now (4xx): the recipient, and the reply.
    pub deferred: Vec<(String, String)>,
}

/// `body` with every line ending CRLF, as SMTP requires (RFC 5321 2.3.8): a bare LF or a
/// lone CR becomes CRLF. A message that has only CRLF is returned as it is.
fn crlf(body: Vec<u8>) -> Vec<u8> {
    let bare = body.iter().enumerate().any(|(i, &b)| {
        (b == b'\n' && (i == 0 || body[i - 1] != b'\r'))
            || (b == b'\r' && body.get(i + 1) != Some(&b'\n'))
    });
    if !bare {
        return body;
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// `addresses` as one header value, `, ` between them, folded before a line would pass
/// 78 characters (RFC 5322 2.1.1).
fn fold_list(addresses: &[String]) -> String {
    let mut out = String::new();
    let mut line = "To: ".len();
    for (n, address) in addresses.iter().enumerate() {
        if n > 0 {
            out.push(',');
            line += 1;
            if line + 1 + address.len() > 78 {
                out.push_str("\r\n ");
                line = 1;
            } else {
                out.push(' ');
                line += 1;
            }
        }
        out.push_str(address);
        line += address.len();
    }
    out
}

/// The header section with `To:` set to `to` (and `From:` to `<from>` when given) and any
/// `Auto-Submitted:` dropped (the caller writes its own), the continuation lines of the
/// replaced fields dropped too; the body unchanged.
pub fn rewrite_headers(message: &[u8], to: &str, from: Option<&str>) -> Vec<u8> {
    let eol = "\r\n";
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
        assert!(text.starts_with("To: b@y\r\nSubject"), "{text}");
        assert!(text.ends_with("\nbody\nTo: not a header\n"), "{text}");
        assert_eq!(text.matches("To: b@y").count(), 1, "{text}");
    }

    const STORED: &[u8] = b"Return-Path: <nagios@example.org>\r\nDelivered-To: ops@example.com\r\n\
From: Nagios <nagios@example.org>\r\nTo: ops@example.com,\r\n  dba@example.com\r\nSubject: disk\r\n\r\nTo: not a header\r\n";

    #[test]
    fn trace_headers_are_dropped_and_to_and_from_replaced_body_unchanged() {
        assert!(trace::strip(STORED).starts_with(b"From: Nagios"));
        let alert = rewrite_headers(trace::strip(STORED), "oncall@example.com", None);
        assert_eq!(
            String::from_utf8(alert).unwrap(),
            "From: Nagios <nagios@example.org>\r\nTo: oncall@example.com\r\nSubject: disk\r\n\r\nTo: not a header\r\n"
        );
        let alert = rewrite_headers(
            trace::strip(STORED),
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
    fn the_loop_marks_of_this_queue_name_their_actions() {
        let marks = Marks::for_queue("q0123456789ab");
        assert_eq!(
            marks.line(&["a1b2c3d4".into(), "0badcafe".into()]),
            "X-Swiftdrop-Loop: q0123456789ab a1b2c3d4 0badcafe\r\n"
        );
        let message = b"Return-Path: <a@b>\r\nx-swiftdrop-loop:  q0123456789ab a1b2c3d4 0badcafe \r\nX-Swiftdrop-Loop: q999 ffffffff\r\nSubject: s\r\n\r\nX-Swiftdrop-Loop: q0123456789ab 00000000\r\n";
        assert_eq!(marks.actions_in(message), ["a1b2c3d4", "0badcafe"]);
        assert!(marks.actions_in(b"Subject: s\r\n\r\nbody\r\n").is_empty());
        // Folded by a relay.
        let folded = b"X-Swiftdrop-Loop: q0123456789ab a1b2c3d4\r\n 0badcafe\r\nSubject: s\r\n\r\n";
        assert_eq!(marks.actions_in(folded), ["a1b2c3d4", "0badcafe"]);
    }

    #[test]
    fn line_endings_become_crlf_and_long_lists_are_folded() {
        assert_eq!(crlf(b"a\nb\r\nc\rd\n".to_vec()), b"a\r\nb\r\nc\r\nd\r\n");
        let same = b"a\r\nb\r\n".to_vec();
        assert_eq!(crlf(same.clone()), same);
        let many: Vec<String> = (0..12).map(|n| format!("person-{n}@example.com")).collect();
        let folded = fold_list(&many);
        assert!(folded.contains(",\r\n person-"), "{folded}");
        for line in format!("To: {folded}").split("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
        }
        assert_eq!(fold_list(&["a@b".into(), "c@d".into()]), "a@b, c@d");
    }
}
