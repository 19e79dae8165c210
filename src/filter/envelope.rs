//! The envelope of one transaction, owned and converted once from smtp-proto's types.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::filter::xforward::ClientAttributes;

/// Who is talking to us, and who they say the original client was.
#[derive(Debug, Clone)]
pub struct Client {
    /// The TCP peer (Postfix, behind a proxy filter).
    pub peer: SocketAddr,
    /// The EHLO/HELO name the peer gave.
    pub helo: Option<String>,
    /// Attributes of the original client from XFORWARD, for this transaction.
    pub forwarded: ClientAttributes,
}

impl Client {
    /// The original client's address: XFORWARD's, else the peer's.
    pub fn original_addr(&self) -> String {
        self.forwarded
            .addr
            .clone()
            .unwrap_or_else(|| self.peer.ip().to_string())
    }

    /// The original client's HELO name: XFORWARD's, else the one the peer gave.
    pub fn original_helo(&self) -> Option<String> {
        self.forwarded.helo.clone().or_else(|| self.helo.clone())
    }

    /// The original client for logs: XFORWARD's `name[addr]:port` when given, else the peer.
    pub fn display(&self) -> String {
        match &self.forwarded.addr {
            Some(addr) => format!(
                "{}[{}]{}",
                self.forwarded.name.as_deref().unwrap_or("unknown"),
                addr,
                self.forwarded
                    .port
                    .as_ref()
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default()
            ),
            None => self.peer.to_string(),
        }
    }
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as the client sent it (its local part quoted where needed: [`mailbox`]).
    pub address: String,
    /// Index of the destination that stores this recipient's mail; `None` when the
    /// recipient is relayed downstream instead.
    pub destination: Option<usize>,
    /// DSN `NOTIFY` flags (smtp-proto's `RCPT_NOTIFY_*`), 0 when absent.
    pub notify: u64,
    /// DSN `ORCPT` address (decoded, without its `rfc822;` type), if given.
    pub orcpt: Option<String>,
}

/// Sender and recipients of one transaction.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// Reverse path ([`mailbox`]); empty for the null sender `<>`.
    pub sender: String,
    /// `SIZE=` announced by the client, 0 when absent.
    pub declared_size: usize,
    /// MAIL flags (smtp-proto's `MAIL_*`: BODY=, RET=, SMTPUTF8).
    pub mail_flags: u64,
    /// DSN `ENVID`, if given.
    pub env_id: Option<String>,
    /// Accepted recipients, in the order given.
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    /// Stored recipients grouped by destination index, in index order: one object each.
    pub fn by_destination(&self) -> BTreeMap<usize, Vec<&str>> {
        let mut groups: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for rcpt in &self.recipients {
            if let Some(idx) = rcpt.destination {
                groups.entry(idx).or_default().push(&rcpt.address);
            }
        }
        groups
    }

    /// Recipients that no destination stores, to be relayed downstream.
    pub fn relayed(&self) -> impl Iterator<Item = &Recipient> {
        self.recipients.iter().filter(|r| r.destination.is_none())
    }
}

/// An address as smtp-proto parsed it (quotes and backslashes of a quoted local part
/// taken out), made fit to be stored, logged and relayed: `None` when it holds a control
/// character (it could never be written into a trace line or an SMTP command as it is) or
/// its domain is no domain name (smtp-proto takes a quoted one: `a@"x y".org`); otherwise
/// the address, with its local part quoted again where it is no dot-atom
/// (`"a b"@example.com` stays that, not `a b@example.com`).
pub fn mailbox(parsed: &str) -> Option<String> {
    if parsed.chars().any(char::is_control) {
        return None;
    }
    let Some((local, domain)) = parsed.rsplit_once('@') else {
        // The null sender (`<>`, or `<postmaster>` as smtp-proto gives it: empty).
        return parsed.is_empty().then(String::new);
    };
    if !is_domain(domain) {
        return None;
    }
    if is_dot_atom(local) {
        return Some(parsed.to_string());
    }
    let mut quoted = String::with_capacity(parsed.len() + 4);
    quoted.push('"');
    for c in local.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push_str("\"@");
    quoted.push_str(domain);
    Some(quoted)
}

/// RFC 5321's Dot-string (with RFC 6531's UTF-8, spaces of any kind left to quotes): atoms
/// of atext joined by single dots.
fn is_dot_atom(local: &str) -> bool {
    let atext = |c: char| {
        c.is_ascii_alphanumeric()
            || "!#$%&'*+-/=?^_`{|}~".contains(c)
            || (!c.is_ascii() && !c.is_whitespace())
    };
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// A domain name: labels of letters, digits, `-` and `_` (RFC 6531: U-labels too), joined by
/// single dots. Address literals (`[192.0.2.1]`) never reach here: smtp-proto refuses them.
fn is_domain(domain: &str) -> bool {
    let label_char = |c: char| {
        c.is_ascii_alphanumeric() || c == '-' || c == '_' || (!c.is_ascii() && !c.is_whitespace())
    };
    !domain.is_empty()
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(label_char))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_quoted_again_where_it_needs_quotes_and_refused_with_a_control_character() {
        for (parsed, stored) in [
            ("ops@example.com", Some("ops@example.com")),
            (
                "first.last+tag@example.com",
                Some("first.last+tag@example.com"),
            ),
            ("pelé@exämple.test", Some("pelé@exämple.test")),
            ("", Some("")),
            ("a b@example.com", Some("\"a b\"@example.com")),
            (" ops@example.com", Some("\" ops\"@example.com")),
            ("<boss@example.com", Some("\"<boss\"@example.com")),
            ("a@b@example.com", Some("\"a@b\"@example.com")),
            (".a@example.com", Some("\".a\"@example.com")),
            ("a\"b\\c@example.com", Some("\"a\\\"b\\\\c\"@example.com")),
            ("ops\0x@example.com", None),
            ("a\tb@example.com", None),
            // Found by review: other spaces need quotes too; a quoted domain is no domain.
            ("\u{a0}x@example.com", Some("\"\u{a0}x\"@example.com")),
            ("a@x y.org", None),
            ("a@b>c.org", None),
            ("a@example.com\u{a0}", None),
            ("a@", None),
            ("postmaster", None),
        ] {
            assert_eq!(mailbox(parsed).as_deref(), stored, "{parsed:?}");
        }
    }

    #[test]
    fn the_original_client_is_xforwards_when_given() {
        let mut client = Client {
            peer: "127.0.0.1:4000".parse().unwrap(),
            helo: Some("postfix.local".into()),
            forwarded: ClientAttributes::default(),
        };
        assert_eq!(client.original_addr(), "127.0.0.1");
        assert_eq!(client.original_helo().as_deref(), Some("postfix.local"));
        client.forwarded.addr = Some("192.0.2.7".into());
        client.forwarded.helo = Some("mx.example.org".into());
        assert_eq!(client.original_addr(), "192.0.2.7");
        assert_eq!(client.original_helo().as_deref(), Some("mx.example.org"));
    }
}
