//! SMTP replies: the only place reply codes and texts live.

use std::fmt;

/// One SMTP reply: a code, an enhanced status code (RFC 3463) and a one-line text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced status code, e.g. `[4, 3, 0]`; `None` for the greeting (RFC 2034).
    pub status: Option<[u8; 3]>,
    /// Text after the codes, without CRLF.
    pub text: String,
}

impl Reply {
    /// A reply with the given codes and text. Replies echo what clients and the downstream
    /// sent (addresses, parameters, a multi-line reply), so the text is made one line of
    /// RFC 5321's textstring (4.2: tab and printable ASCII): CR and LF become spaces, any
    /// other control or non-ASCII character becomes `?` (as Postfix shows what it cannot
    /// print); and a text that would make the line longer than [`MAX_LINE`] is cut, ending
    /// in `...`.
    pub fn new(code: u16, status: [u8; 3], text: impl Into<String>) -> Self {
        let text: String = text.into();
        let mut text: String = text
            .chars()
            .map(|c| match c {
                '\r' | '\n' => ' ',
                '\t' | ' '..='~' => c,
                _ => '?',
            })
            .collect();
        // `250 ` + `a.b.c ` (a downstream's codes may have several digits) + CRLF.
        let status_len = status.map(|n| n.to_string().len()).iter().sum::<usize>() + 2;
        let max_text = MAX_LINE - 4 - status_len - 1 - 2;
        if text.len() > max_text {
            // ASCII by now: any byte is a character's end.
            text.truncate(max_text - 3);
            text.push_str("...");
        }
        Reply {
            code,
            status: Some(status),
            text,
        }
    }

    /// The wire form, ending in CRLF.
    pub fn to_wire(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some([a, b, c]) => write!(f, "{} {a}.{b}.{c} {}\r\n", self.code, self.text),
            None => write!(f, "{} {}\r\n", self.code, self.text),
        }
    }
}

/// The longest reply line, CRLF included (RFC 5321 4.5.3.1.5).
pub const MAX_LINE: usize = 512;

/// What the `250` for a stored message says before its keys.
pub const STORED_AS: &str = "Ok: stored as ";

/// `220` greeting.
pub fn greeting(hostname: &str) -> Reply {
    Reply {
        status: None,
        ..Reply::new(220, [2, 0, 0], format!("{hostname} ESMTP swiftdrop"))
    }
}
/// Generic success for NOOP, RSET, XFORWARD.
pub fn ok() -> Reply {
    Reply::new(250, [2, 0, 0], "Ok")
}
/// `HELO` reply.
pub fn helo(hostname: &str) -> Reply {
    Reply::new(250, [2, 0, 0], hostname.to_string())
}
/// MAIL accepted.
pub fn sender_ok() -> Reply {
    Reply::new(250, [2, 1, 0], "Ok")
}
/// RCPT accepted.
pub fn recipient_ok() -> Reply {
    Reply::new(250, [2, 1, 5], "Ok")
}
/// DATA may start.
pub fn start_data() -> Reply {
    Reply::new(354, [2, 0, 0], "End data with <CR><LF>.<CR><LF>")
}
/// A non-final BDAT chunk was received.
pub fn chunk_ok(size: usize) -> Reply {
    Reply::new(250, [2, 0, 0], format!("{size} octets received"))
}
/// The message is in every store and, where recipients were relayed, with the downstream.
pub fn delivered(keys: &[String], relayed: Option<&str>) -> Reply {
    // Keep the line well under the 512-byte reply limit with many destinations.
    let mut listed = String::new();
    for (i, key) in keys.iter().enumerate() {
        if listed.len() + key.len() > 300 {
            listed.push_str(&format!(" (+{} more)", keys.len() - i));
            break;
        }
        if i > 0 {
            listed.push(' ');
        }
        listed.push_str(key);
    }
    let relayed: Option<String> = relayed.map(|r| r.chars().take(100).collect());
    let text = match (keys.is_empty(), relayed) {
        (false, None) => format!("{STORED_AS}{listed}"),
        (false, Some(r)) => format!("{STORED_AS}{listed}; relayed: {r}"),
        (true, Some(r)) => format!("Ok: relayed: {r}"),
        (true, None) => "Ok".to_string(),
    };
    Reply::new(250, [2, 0, 0], text)
}
/// QUIT.
pub fn bye() -> Reply {
    Reply::new(221, [2, 0, 0], "Bye")
}
/// VRFY is answered without verifying (RFC 5321 3.5.3).
pub fn cannot_vrfy() -> Reply {
    Reply::new(
        252,
        [2, 0, 0],
        "Cannot VRFY user, but will accept message and attempt delivery",
    )
}
/// HELP.
pub fn help() -> Reply {
    Reply::new(
        214,
        [2, 0, 0],
        "Commands: EHLO HELO XFORWARD MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
    )
}
/// The store did not confirm the write: the client must retry.
pub fn store_failed(reason: &str) -> Reply {
    Reply::new(451, [4, 3, 0], reason.to_string())
}
/// The memory budget (`max_memory`) has no room for this message now: the client retries.
pub fn insufficient_storage() -> Reply {
    Reply::new(
        452,
        [4, 3, 1],
        "Error: insufficient system storage, try again later",
    )
}
/// The connection limit is reached.
pub fn too_many_connections() -> Reply {
    Reply::new(
        421,
        [4, 7, 0],
        "Error: too many connections, try again later",
    )
}
/// The client was silent for too long.
pub fn idle_timeout() -> Reply {
    Reply::new(421, [4, 4, 2], "Error: timeout exceeded")
}
/// The session or its message data took longer than allowed in all.
pub fn time_limit() -> Reply {
    Reply::new(421, [4, 4, 2], "Error: time limit exceeded")
}
/// The server is stopping.
pub fn shutting_down() -> Reply {
    Reply::new(421, [4, 3, 2], "Service shutting down, try again later")
}
/// The session made too many errors.
pub fn too_many_errors() -> Reply {
    Reply::new(421, [4, 7, 0], "Error: too many errors")
}
/// Message over the size limit (MAIL SIZE= or the data itself).
pub fn too_big() -> Reply {
    Reply::new(552, [5, 3, 4], "Error: message size exceeds fixed limit")
}
/// Recipient limit reached.
pub fn too_many_recipients() -> Reply {
    Reply::new(452, [4, 5, 3], "Error: too many recipients")
}
/// A recipient no destination takes.
pub fn unknown_recipient(address: &str) -> Reply {
    Reply::new(
        550,
        [5, 1, 1],
        format!("<{address}>: Recipient address rejected: no destination for this address"),
    )
}
/// End of data while shutting down, too late to begin a delivery that could finish.
pub fn not_now_shutting_down() -> Reply {
    Reply::new(451, [4, 3, 2], "Error: shutting down, try again later")
}
/// A recipient that would be relayed, from a client outside `relay_networks`.
pub fn relay_denied(address: &str) -> Reply {
    Reply::new(550, [5, 7, 1], format!("<{address}>: Relay access denied"))
}
/// XFORWARD from a client outside the configured networks.
pub fn xforward_denied() -> Reply {
    Reply::new(
        550,
        [5, 7, 0],
        "Error: insufficient authorization for XFORWARD",
    )
}
/// A command line over the limit.
pub fn line_too_long() -> Reply {
    Reply::new(500, [5, 5, 2], "Error: line too long")
}
/// A command that does not exist.
pub fn unknown_command() -> Reply {
    Reply::new(500, [5, 5, 1], "Error: command not recognized")
}
/// A command that exists but is not offered here.
pub fn not_implemented() -> Reply {
    Reply::new(502, [5, 5, 1], "Error: command not implemented")
}
/// A command out of order.
pub fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, [5, 5, 1], format!("Error: {text}"))
}
/// DATA/BDAT without any accepted recipient.
pub fn no_valid_recipients() -> Reply {
    Reply::new(554, [5, 5, 1], "Error: no valid recipients")
}
/// Bad arguments.
pub fn syntax(text: &str) -> Reply {
    Reply::new(501, [5, 5, 4], format!("Syntax: {text}"))
}
/// Bad sender address.
pub fn bad_sender() -> Reply {
    Reply::new(501, [5, 1, 7], "Bad sender address syntax")
}
/// A sender address that cannot be stored as it is: a control character in a quoted local
/// part, a quoted domain.
pub fn sender_not_allowed() -> Reply {
    Reply::new(
        553,
        [5, 1, 7],
        "Sender address rejected: control character or no domain name",
    )
}
/// A recipient address that cannot be stored as it is ([`sender_not_allowed`]).
pub fn recipient_not_allowed() -> Reply {
    Reply::new(
        553,
        [5, 1, 3],
        "Recipient address rejected: control character or no domain name",
    )
}
/// Bad recipient address.
pub fn bad_recipient() -> Reply {
    Reply::new(501, [5, 1, 3], "Bad recipient address syntax")
}
/// MAIL or RCPT parameter this server does not know.
pub fn unsupported_parameter(param: &str) -> Reply {
    Reply::new(555, [5, 5, 4], format!("Unsupported parameter: {param}"))
}

/// Maps a smtp-proto parse error of a complete command line to its reply.
pub fn for_parse_error(err: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match err {
        E::UnknownCommand => unknown_command(),
        E::InvalidSenderAddress => bad_sender(),
        E::InvalidRecipientAddress => bad_recipient(),
        E::SyntaxError { syntax: s } => syntax(s),
        E::InvalidParameter { param } => syntax(&format!("invalid parameter {param}")),
        E::UnsupportedParameter { param } => unsupported_parameter(param),
        E::ResponseTooLong => line_too_long(),
        E::NeedsMoreData { .. } | E::InvalidResponse { .. } => syntax("incomplete command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_has_codes_and_crlf() {
        assert_eq!(
            store_failed("store failed").to_string(),
            "451 4.3.0 store failed\r\n"
        );
        assert_eq!(
            Reply::new(250, [2, 0, 0], "a\r\nb\tc").to_string(),
            "250 2.0.0 a  b\tc\r\n"
        );
    }

    #[test]
    fn many_keys_stay_short() {
        let keys: Vec<String> = (0..40).map(|i| format!("cur/{i:0>60}")).collect();
        let reply = delivered(&keys, Some(&"q".repeat(300)));
        assert!(reply.to_string().len() < 512);
        assert!(reply.text.contains("more)"));
    }

    #[test]
    fn replies_stay_within_512_octets() {
        let long = "x".repeat(2000) + "@example.com";
        for reply in [unknown_recipient(&long), relay_denied(&long)] {
            let wire = reply.to_wire();
            assert_eq!(wire.len(), 512, "{reply}");
            assert!(wire.ends_with(b"...\r\n"), "{reply}");
        }
        // What is not printable ASCII is shown as `?` (found by fuzzing: control
        // characters and bytes that are not UTF-8 came back in replies).
        let wide = relay_denied(&"é".repeat(600)).to_wire();
        assert!(wide.len() == 512 && wide.starts_with(b"550 5.7.1 <???"));
        assert_eq!(
            unsupported_parameter("A\0B\u{19}C\u{fffd}\u{7f}").to_string(),
            "555 5.5.4 Unsupported parameter: A?B?C??\r\n"
        );
        assert_eq!(ok().to_wire(), b"250 2.0.0 Ok\r\n");
        // A downstream's enhanced code with more digits (5.7.26) leaves less room.
        let long = Reply::new(550, [5, 7, 26], "y".repeat(600)).to_wire();
        assert_eq!(long.len(), 512);
    }
}
