//! Reading stored messages: what `swiftdrop queue show` shows of them, parsed by mail-parser.

use mail_parser::MessageParser;

/// The header fields of a message, in order, as `(name, value)`: values unfolded, with
/// RFC 2047 encoded words decoded in `Subject`. Bytes that are not UTF-8 are replaced.
pub fn header_fields(message: &[u8]) -> Vec<(String, String)> {
    let Some(parsed) = MessageParser::default().parse_headers(message) else {
        return Vec::new();
    };
    parsed
        .headers()
        .iter()
        .map(|header| {
            let name = header.name.as_str().to_string();
            let raw = message
                .get(header.offset_start as usize..header.offset_end as usize)
                .unwrap_or_default();
            let value = if name.eq_ignore_ascii_case("subject") {
                parsed.subject().map(str::to_string)
            } else {
                None
            };
            let value = value.unwrap_or_else(|| unfold(&String::from_utf8_lossy(raw)));
            (name, value)
        })
        .collect()
}

/// One line from a folded header value.
fn unfold(value: &str) -> String {
    value
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_unfolded_and_subjects_decoded() {
        let message = b"Return-Path: <a@example.org>\r\nDelivered-To: ops@example.com\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nTo: x@example.com,\r\n  y@example.com\r\n\r\nbody\r\n";
        let fields = header_fields(message);
        assert_eq!(
            fields,
            vec![
                ("Return-Path".to_string(), "<a@example.org>".to_string()),
                ("Delivered-To".to_string(), "ops@example.com".to_string()),
                ("Subject".to_string(), "Grüße".to_string()),
                ("To".to_string(), "x@example.com, y@example.com".to_string()),
            ]
        );
        assert!(header_fields(b"").is_empty());
    }
}
