//! Pass-through: recipients that no destination takes are relayed, with the same message, to
//! a downstream SMTP server (Postfix's after-queue smtpd), with mail-send as the client.
//!
//! The original client's XFORWARD attributes go along, so the downstream log names the real
//! client; DSN, SMTPUTF8 and BODY parameters are passed on where the downstream offers them.

use std::net::SocketAddr;
use std::time::Duration;

use mail_send::SmtpClient;
use mail_send::smtp::AssertReply;
use mail_send::smtp::message::Parameters;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_BINARY_MIME, EXT_DSN, EXT_SIZE, EXT_SMTP_UTF8, MAIL_BODY_7BIT,
    MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME, MAIL_RET_FULL, MAIL_RET_HDRS, MAIL_SMTPUTF8,
    RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
};
use tokio::net::TcpStream;

use crate::filter::envelope::{Client, Envelope, Recipient};
use crate::filter::reply::Reply;
use crate::filter::spool::{self, RelayBody};
use crate::filter::xtext::xtext_encode;
use crate::telemetry::metrics::{Kind, metrics};

/// Longest XFORWARD line we send (RFC 5321 command lines are 512 octets with CRLF).
const MAX_XFORWARD_LINE: usize = 510;

/// How long a relay connection waits for the reply to its QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a reply the downstream may have sent before it broke the connection.
const REPLY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Where relayed recipients go.
#[derive(Debug, Clone)]
pub struct Relay {
    addr: SocketAddr,
    helo: String,
    timeout: Duration,
}

/// Why a relay did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// The downstream server refused for good (5xx): the client gets this reply.
    Rejected(Reply),
    /// A temporary refusal (4xx), no connection, a timeout or a broken conversation.
    Failed(String),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Rejected(r) => write!(f, "relay rejected: {}", r.to_string().trim_end()),
            RelayError::Failed(reason) => write!(f, "relay failed: {reason}"),
        }
    }
}

impl Relay {
    /// A relay to `addr`, greeting it as `helo`; `timeout` bounds each SMTP exchange.
    pub fn new(addr: SocketAddr, helo: &str, timeout: Duration) -> Self {
        Relay {
            addr,
            helo: helo.to_string(),
            timeout,
        }
    }

    /// The downstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relays `message` to the envelope's relayed recipients. Returns the downstream's final
    /// reply text (e.g. `Ok: queued as 4C1D2`).
    pub async fn send(
        &self,
        envelope: &Envelope,
        client: &Client,
        message: &mut RelayBody,
    ) -> Result<String, RelayError> {
        let result = self.connect_and_send(envelope, client, message).await;
        let kind = match &result {
            Ok(_) => "accepted",
            Err(RelayError::Rejected(_)) => "refused",
            Err(_) => "failed",
        };
        metrics().relayed.get_or_create(&Kind { kind }).inc();
        result
    }

    /// One relay of the message: connect, converse, and QUIT in the background.
    async fn connect_and_send(
        &self,
        envelope: &Envelope,
        client: &Client,
        message: &mut RelayBody,
    ) -> Result<String, RelayError> {
        let recipients: Vec<&Recipient> = envelope.relayed().collect();
        let mut smtp = SmtpClient::connect(self.addr, self.timeout)
            .await
            .map_err(|e| RelayError::Failed(format!("cannot connect to {}: {e}", self.addr)))?;
        // Each command waits for its reply: without NODELAY, Nagle stalls every message.
        let _ = smtp.stream.set_nodelay(true);
        let result = self
            .converse(&mut smtp, envelope, &recipients, client, message)
            .await;
        // The transaction ended with the DATA reply: closing politely is best effort, in
        // the background, so that a downstream slow to answer QUIT cannot turn a relayed
        // message into a 451 (and a duplicate for its recipients).
        crate::filter::cleanup::spawn(async move {
            let _ = tokio::time::timeout(QUIT_TIMEOUT, smtp.quit()).await;
        });
        result
    }

    async fn converse(
        &self,
        smtp: &mut SmtpClient<TcpStream>,
        envelope: &Envelope,
        recipients: &[&Recipient],
        client: &Client,
        message: &mut RelayBody,
    ) -> Result<String, RelayError> {
        let greeting = smtp.read().await.map_err(classify)?;
        if greeting.code != 220 {
            return Err(reply_error(greeting));
        }
        let ehlo = smtp.ehlo(&self.helo).await.map_err(classify)?;
        for line in xforward_lines(client) {
            // mail-send returns every reply as Ok: a downstream that does not trust us with
            // XFORWARD still gets the message, only its log names us instead of the client.
            let reply = smtp.cmd(line.as_bytes()).await.map_err(classify)?;
            if reply.code != 250 {
                tracing::debug!(relay = %self.addr, reply = ?reply, "downstream refused XFORWARD");
                break;
            }
        }
        let size = usize::try_from(message.len()).unwrap_or(usize::MAX);
        let mail = mail_parameters(envelope, ehlo.capabilities, size);
        smtp.mail_from(&envelope.sender, &mail)
            .await
            .map_err(classify)?;
        for rcpt in recipients {
            smtp.rcpt_to(&rcpt.address, &rcpt_parameters(rcpt, ehlo.capabilities))
                .await
                .map_err(classify)?;
        }
        // The content is written here rather than by mail-send's `data`, which needs the
        // message in memory and does not stuff a dot on its first line.
        smtp.cmd(b"DATA\r\n")
            .await
            .and_then(|r| r.assert_code(354))
            .map_err(classify)?;
        if let Err(e) = spool::write_data(&mut smtp.stream, message).await {
            // A downstream that refuses mid-data (too big) may have answered before it
            // closed: its reply says more than the broken pipe, and a 5xx is final.
            if let Ok(Ok(reply)) = tokio::time::timeout(REPLY_AFTER_ERROR, smtp.read()).await {
                return Err(reply_error(reply));
            }
            return Err(RelayError::Failed(format!("sending the message: {e}")));
        }
        let reply = smtp
            .read()
            .await
            .and_then(|r| r.into_positive_completion())
            .map_err(classify)?;
        Ok(reply.message)
    }
}

fn reply_error(r: smtp_proto::Response<String>) -> RelayError {
    if r.code >= 500 {
        let status = if r.esc == [0, 0, 0] { [5, 0, 0] } else { r.esc };
        RelayError::Rejected(Reply::new(r.code, status, r.message))
    } else {
        RelayError::Failed(format!("downstream answered {} {}", r.code, r.message))
    }
}

fn classify(e: mail_send::Error) -> RelayError {
    match e {
        mail_send::Error::UnexpectedReply(r) => reply_error(r),
        other => RelayError::Failed(other.to_string()),
    }
}

/// XFORWARD commands describing the original client: the attributes Postfix gave us, or the
/// directly connected client when there were none. Values are xtext; lines stay short.
pub fn xforward_lines(client: &Client) -> Vec<String> {
    let f = &client.forwarded;
    let direct = f.addr.is_none();
    let peer_ip = client.peer.ip().to_canonical().to_string();
    let peer_port = client.peer.port().to_string();
    let attributes: [(&str, Option<&str>); 7] = if direct {
        [
            ("NAME", None),
            ("ADDR", Some(&peer_ip)),
            ("PORT", Some(&peer_port)),
            ("PROTO", None),
            ("HELO", client.helo.as_deref()),
            ("IDENT", None),
            ("SOURCE", None),
        ]
    } else {
        [
            ("NAME", f.name.as_deref()),
            ("ADDR", f.addr.as_deref()),
            ("PORT", f.port.as_deref()),
            ("PROTO", f.proto.as_deref()),
            ("HELO", f.helo.as_deref()),
            ("IDENT", f.ident.as_deref()),
            ("SOURCE", f.source.as_deref()),
        ]
    };
    let mut lines = Vec::new();
    let mut line = String::from("XFORWARD");
    for (name, value) in attributes {
        let value = match value {
            Some(v) if name == "ADDR" && v.contains(':') => format!("IPV6:{v}"),
            Some(v) => v.to_string(),
            None => "[UNAVAILABLE]".to_string(),
        };
        let item = format!(" {name}={}", xtext_encode(&value));
        if line.len() + item.len() > MAX_XFORWARD_LINE && line != "XFORWARD" {
            lines.push(format!("{line}\r\n"));
            line = String::from("XFORWARD");
        }
        line.push_str(&item);
    }
    lines.push(format!("{line}\r\n"));
    lines
}

fn mail_parameters(envelope: &Envelope, caps: u32, size: usize) -> Parameters<'static> {
    let mut p = Parameters::new();
    let flags = envelope.mail_flags;
    if caps & EXT_SIZE != 0 {
        p.add(("SIZE".to_string(), size.to_string()));
    }
    if flags & MAIL_BODY_8BITMIME != 0 && caps & EXT_8BIT_MIME != 0 {
        p.add(("BODY", "8BITMIME"));
    } else if flags & MAIL_BODY_BINARYMIME != 0 && caps & EXT_BINARY_MIME != 0 {
        p.add(("BODY", "BINARYMIME"));
    } else if flags & MAIL_BODY_7BIT != 0 && caps & EXT_8BIT_MIME != 0 {
        p.add(("BODY", "7BIT"));
    }
    if flags & MAIL_SMTPUTF8 != 0 && caps & EXT_SMTP_UTF8 != 0 {
        p.add("SMTPUTF8");
    }
    if caps & EXT_DSN != 0 {
        if flags & MAIL_RET_FULL != 0 {
            p.add(("RET", "FULL"));
        } else if flags & MAIL_RET_HDRS != 0 {
            p.add(("RET", "HDRS"));
        }
        if let Some(id) = &envelope.env_id {
            p.add(("ENVID".to_string(), xtext_encode(id)));
        }
    }
    p
}

fn rcpt_parameters(rcpt: &Recipient, caps: u32) -> Parameters<'static> {
    let mut p = Parameters::new();
    if caps & EXT_DSN == 0 {
        return p;
    }
    if rcpt.notify & RCPT_NOTIFY_NEVER != 0 {
        p.add(("NOTIFY", "NEVER"));
    } else {
        let notify: Vec<&str> = [
            (RCPT_NOTIFY_SUCCESS, "SUCCESS"),
            (RCPT_NOTIFY_FAILURE, "FAILURE"),
            (RCPT_NOTIFY_DELAY, "DELAY"),
        ]
        .iter()
        .filter(|(flag, _)| rcpt.notify & flag != 0)
        .map(|(_, name)| *name)
        .collect();
        if !notify.is_empty() {
            p.add(("NOTIFY".to_string(), notify.join(",")));
        }
    }
    if let Some(orcpt) = &rcpt.orcpt {
        p.add((
            "ORCPT".to_string(),
            format!("rfc822;{}", xtext_encode(orcpt)),
        ));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::xforward::ClientAttributes;

    fn client(forwarded: ClientAttributes) -> Client {
        Client {
            peer: "127.0.0.1:4000".parse().unwrap(),
            helo: Some("postfix.local".into()),
            forwarded,
        }
    }

    #[test]
    fn forwards_postfix_attributes() {
        let mut f = ClientAttributes::default();
        f.apply("NAME=mx.example.net ADDR=IPV6:2001:db8::7 PORT=25 PROTO=ESMTP HELO=a+2Bb SOURCE=REMOTE")
            .unwrap();
        let lines = xforward_lines(&client(f));
        assert_eq!(
            lines,
            [
                "XFORWARD NAME=mx.example.net ADDR=IPV6:2001:db8::7 PORT=25 PROTO=ESMTP HELO=a+2Bb IDENT=[UNAVAILABLE] SOURCE=REMOTE\r\n"
            ]
        );
    }

    #[test]
    fn without_xforward_describes_the_direct_client() {
        let lines = xforward_lines(&client(ClientAttributes::default()));
        assert_eq!(
            lines,
            [
                "XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT=4000 PROTO=[UNAVAILABLE] HELO=postfix.local IDENT=[UNAVAILABLE] SOURCE=[UNAVAILABLE]\r\n"
            ]
        );
    }

    #[test]
    fn long_values_are_split_over_lines() {
        let mut f = ClientAttributes::default();
        f.apply(&format!(
            "ADDR=192.0.2.1 NAME={} HELO={}",
            "n".repeat(255),
            "h".repeat(255)
        ))
        .unwrap();
        let lines = xforward_lines(&client(f));
        assert!(lines.len() >= 2);
        assert!(lines.iter().all(|l| l.len() <= MAX_XFORWARD_LINE + 2));
    }

    #[test]
    fn dsn_parameters_pass_on_only_when_offered() {
        let rcpt = Recipient {
            address: "x@example.net".into(),
            destination: None,
            notify: RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE,
            orcpt: Some("x+y@example.net".into()),
        };
        assert_eq!(
            rcpt_parameters(&rcpt, EXT_DSN).to_string(),
            " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+2By@example.net"
        );
        assert_eq!(rcpt_parameters(&rcpt, 0).to_string(), "");
        let envelope = Envelope {
            sender: "s@example.org".into(),
            mail_flags: MAIL_BODY_8BITMIME | MAIL_RET_HDRS | MAIL_SMTPUTF8,
            env_id: Some("id 1".into()),
            ..Default::default()
        };
        let all = EXT_SIZE | EXT_8BIT_MIME | EXT_SMTP_UTF8 | EXT_DSN;
        assert_eq!(
            mail_parameters(&envelope, all, 42).to_string(),
            " SIZE=42 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+201"
        );
        assert_eq!(mail_parameters(&envelope, 0, 42).to_string(), "");
    }
}
