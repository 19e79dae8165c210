//! XFORWARD (Postfix's client-attribute forwarding, <https://www.postfix.org/XFORWARD_README.html>).
//!
//! smtp-proto does not know XFORWARD, so the session hands such lines here. Attributes are
//! xtext-encoded (RFC 3461 `+XX`), may arrive spread over several commands, and apply to the
//! next transaction only.

use std::fmt;

use crate::filter::xtext::xtext_decode;

/// Attribute names a client may send, as advertised in EHLO.
pub const ATTRIBUTES: &str = "NAME ADDR PORT PROTO HELO IDENT SOURCE";

/// Client attributes received with XFORWARD; `None` for unset or `[UNAVAILABLE]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAttributes {
    /// Reverse DNS name of the original client.
    pub name: Option<String>,
    /// Address of the original client (`IPV6:` prefix removed).
    pub addr: Option<String>,
    /// Port of the original client.
    pub port: Option<String>,
    /// Protocol the client used (SMTP, ESMTP).
    pub proto: Option<String>,
    /// HELO name the client gave.
    pub helo: Option<String>,
    /// Postfix's log identifier of the original message.
    pub ident: Option<String>,
    /// LOCAL or REMOTE.
    pub source: Option<String>,
}

/// Why an XFORWARD command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XForwardError {
    /// No attributes at all.
    Empty,
    /// An attribute this server does not know, or one without `=`.
    BadAttribute(String),
    /// A value over 255 characters or with bad xtext.
    BadValue(String),
}

impl fmt::Display for XForwardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XForwardError::Empty => write!(f, "XFORWARD attribute=value..."),
            XForwardError::BadAttribute(a) => write!(f, "bad XFORWARD attribute name: {a}"),
            XForwardError::BadValue(a) => write!(f, "bad XFORWARD attribute value for {a}"),
        }
    }
}

/// True when `line` (one command line) is an XFORWARD command.
pub fn is_xforward(line: &[u8]) -> bool {
    line.len() >= 8
        && line[..8].eq_ignore_ascii_case(b"XFORWARD")
        && line.get(8).is_none_or(|c| c.is_ascii_whitespace())
}

impl ClientAttributes {
    /// Applies the arguments of one XFORWARD line (everything after the command word).
    /// Nothing is changed when any attribute is bad.
    pub fn apply(&mut self, args: &str) -> Result<(), XForwardError> {
        let mut updated = self.clone();
        let mut any = false;
        for item in args.split_ascii_whitespace() {
            any = true;
            let (name, raw) = item
                .split_once('=')
                .ok_or_else(|| XForwardError::BadAttribute(item.to_string()))?;
            let name = name.to_ascii_uppercase();
            let value = xtext_decode(raw).ok_or_else(|| XForwardError::BadValue(name.clone()))?;
            if value.chars().count() > 255 {
                return Err(XForwardError::BadValue(name));
            }
            let value = match value.as_str() {
                "[UNAVAILABLE]" | "[TEMPUNAVAIL]" => None,
                _ => Some(value),
            };
            let slot = match name.as_str() {
                "NAME" => &mut updated.name,
                "ADDR" => &mut updated.addr,
                "PORT" => &mut updated.port,
                "PROTO" => &mut updated.proto,
                "HELO" => &mut updated.helo,
                "IDENT" => &mut updated.ident,
                "SOURCE" => &mut updated.source,
                _ => return Err(XForwardError::BadAttribute(name)),
            };
            *slot = match (name.as_str(), value) {
                ("ADDR", Some(v)) => Some(strip_ipv6_prefix(v)),
                (_, v) => v,
            };
        }
        if !any {
            return Err(XForwardError::Empty);
        }
        *self = updated;
        Ok(())
    }

    /// True when no attribute was received.
    pub fn is_empty(&self) -> bool {
        *self == ClientAttributes::default()
    }
}

fn strip_ipv6_prefix(v: String) -> String {
    match v.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPV6:") => v[5..].to_string(),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_line_is_parsed() {
        let mut a = ClientAttributes::default();
        a.apply("NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT=58772 HELO=client.example.org IDENT=[UNAVAILABLE] PROTO=ESMTP SOURCE=LOCAL")
            .unwrap();
        assert_eq!(a.addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(a.port.as_deref(), Some("58772"));
        assert_eq!(a.helo.as_deref(), Some("client.example.org"));
        assert_eq!(a.name, None);
        assert_eq!(a.ident, None);
        assert_eq!(a.source.as_deref(), Some("LOCAL"));
    }

    #[test]
    fn split_over_several_commands_and_xtext() {
        let mut a = ClientAttributes::default();
        a.apply("NAME=mail.example.com ADDR=IPV6:2001:db8::1")
            .unwrap();
        a.apply("HELO=odd+2Bname+3Dx").unwrap();
        assert_eq!(a.name.as_deref(), Some("mail.example.com"));
        assert_eq!(a.addr.as_deref(), Some("2001:db8::1"));
        assert_eq!(a.helo.as_deref(), Some("odd+name=x"));
    }

    #[test]
    fn bad_input_changes_nothing() {
        let mut a = ClientAttributes::default();
        assert_eq!(a.apply(""), Err(XForwardError::Empty));
        assert!(matches!(
            a.apply("ADDR=1.2.3.4 COLOR=red"),
            Err(XForwardError::BadAttribute(_))
        ));
        assert!(matches!(
            a.apply("HELO=bad+G1"),
            Err(XForwardError::BadValue(_))
        ));
        assert!(matches!(
            a.apply("HELO"),
            Err(XForwardError::BadAttribute(_))
        ));
        let long = format!("HELO={}", "x".repeat(256));
        assert!(matches!(a.apply(&long), Err(XForwardError::BadValue(_))));
        assert!(a.is_empty());
    }

    #[test]
    fn recognises_the_command() {
        assert!(is_xforward(b"XFORWARD ADDR=1\r\n"));
        assert!(is_xforward(b"xforward\r\n"));
        assert!(!is_xforward(b"XFORWARDED\r\n"));
        assert!(!is_xforward(b"MAIL FROM:<>\r\n"));
    }
}
