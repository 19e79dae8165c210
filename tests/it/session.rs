//! Session behaviour over an in-memory pipe: protocol, limits, byte-exact storage.

use std::sync::Arc;

use swiftdrop::filter::budget::MemoryBudget;

use crate::support::*;

const LOOPBACK: &str = "127.0.0.1:40000";
const OUTSIDE: &str = "192.0.2.10:40000";

fn stored_body(setup: &Setup) -> Vec<u8> {
    let files = setup.cur("maildir");
    assert_eq!(files.len(), 1, "exactly one stored file");
    assert_size_in_name(&files[0].0, &files[0].1);
    files[0].1.clone()
}

#[tokio::test]
async fn dot_stuffed_lines_are_stored_byte_exact() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope("sender@example.org", &["rcpt@example.com"])
        .await;
    d.command("DATA", "354").await;
    // First line stuffed, a lone-dot line, a double-dot line, trailing empty line.
    d.send("..first\r\nSubject: x\r\n\r\n..\r\n...two\r\n.x\r\n\r\n.\r\n")
        .await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: stored as cur/"), "{reply}");
    d.command("QUIT", "221").await;
    assert_eq!(
        stored_body(&setup),
        b"Return-Path: <sender@example.org>\r\nDelivered-To: rcpt@example.com\r\n.first\r\nSubject: x\r\n\r\n.\r\n..two\r\nx\r\n\r\n"
    );
}

#[tokio::test]
async fn quoted_addresses_are_stored_quoted_and_control_characters_refused() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    d.command("MAIL FROM:<\"<boss\"@example.org>", "250 2.1.0")
        .await;
    d.command("RCPT TO:<\"a b\"@example.com>", "250 2.1.5")
        .await;
    // A NUL inside quotes: smtp-proto takes it, the trace line could not carry it.
    let refused = d
        .command("RCPT TO:<\"ops\0x\"@example.com>", "553 5.1.3")
        .await;
    assert!(refused.is_ascii() && !refused.contains('\0'), "{refused:?}");
    d.command("DATA", "354").await;
    d.send("Subject: q\r\n\r\nbody\r\n.\r\n").await;
    assert!(d.reply().await.starts_with("250 2.0.0 Ok: stored as"));
    d.command("MAIL FROM:<\"a\tb\"@example.org>", "553 5.1.7")
        .await;
    d.command("QUIT", "221").await;
    // What the worker reads back is what the client gave, quotes and all.
    assert!(
        stored_body(&setup).starts_with(
            b"Return-Path: <\"<boss\"@example.org>\r\nDelivered-To: \"a b\"@example.com\r\nSubject: q"
        ),
        "{}",
        String::from_utf8_lossy(&stored_body(&setup))
    );
}

#[tokio::test]
async fn empty_message_and_missing_final_crlf_cases() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope("", &["rcpt@example.com"]).await;
    d.command("DATA", "354").await;
    d.send(".\r\n").await;
    assert!(d.reply().await.starts_with("250 2.0.0"));
    assert_eq!(
        stored_body(&setup),
        b"Return-Path: <>\r\nDelivered-To: rcpt@example.com\r\n"
    );
}

#[tokio::test]
async fn eight_bit_utf8_and_binary_bytes_are_kept() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    d.command(
        "MAIL FROM:<jürgen@exämple.org> SMTPUTF8 BODY=8BITMIME",
        "250",
    )
    .await;
    d.command("RCPT TO:<δοκιμή@example.com>", "250").await;
    d.command("DATA", "354").await;
    let mut body = "Subject: Grüße ✓\r\n\r\n".as_bytes().to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0x80, b'\r', b'\n']);
    let mut wire = body.clone();
    wire.extend_from_slice(b".\r\n");
    d.send(&wire).await;
    assert!(d.reply().await.starts_with("250"));
    let stored = stored_body(&setup);
    let header = "Return-Path: <jürgen@exämple.org>\r\nDelivered-To: δοκιμή@example.com\r\n";
    assert_eq!(&stored[..header.len()], header.as_bytes());
    assert_eq!(&stored[header.len()..], body.as_slice());
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    let ehlo = d.command("EHLO client.test", "250-filter.test").await;
    for cap in [
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "DSN",
        "CHUNKING",
        "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE",
    ] {
        assert!(ehlo.contains(cap), "EHLO lacks {cap}: {ehlo}");
    }
    d.send("MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=abc\r\nRCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com\r\nRCPT TO:<c@example.com> NOTIFY=NEVER\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n").await;
    assert!(d.reply().await.starts_with("250 2.1.0"));
    assert!(d.reply().await.starts_with("250 2.1.5"));
    assert!(d.reply().await.starts_with("250 2.1.5"));
    assert!(d.reply().await.starts_with("354"));
    assert!(d.reply().await.starts_with("250 2.0.0 Ok: stored as"));
    assert!(d.reply().await.starts_with("250 2.0.0 Ok"));
    let body = stored_body(&setup);
    assert!(body.starts_with(b"Return-Path: <a@example.org>\r\nDelivered-To: b@example.com\r\nDelivered-To: c@example.com\r\nhi\r\n"));
}

#[tokio::test]
async fn several_transactions_per_connection() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    for i in 0..5 {
        d.command(&format!("MAIL FROM:<s{i}@example.org>"), "250")
            .await;
        d.command(&format!("RCPT TO:<r{i}@example.com>"), "250")
            .await;
        d.command("DATA", "354").await;
        d.send(format!("Subject: {i}\r\n\r\nbody {i}\r\n.\r\n"))
            .await;
        assert!(d.reply().await.starts_with("250 2.0.0"));
    }
    // An aborted transaction in between leaves nothing.
    d.command("MAIL FROM:<x@example.org>", "250").await;
    d.command("RCPT TO:<y@example.com>", "250").await;
    d.command("RSET", "250").await;
    d.command("QUIT", "221").await;
    let files = setup.cur("maildir");
    assert_eq!(files.len(), 5);
    let names: std::collections::HashSet<_> = files.iter().map(|f| &f.0).collect();
    assert_eq!(names.len(), 5);
    for i in 0..5 {
        let wanted = format!(
            "Return-Path: <s{i}@example.org>\r\nDelivered-To: r{i}@example.com\r\nSubject: {i}\r\n\r\nbody {i}\r\n"
        );
        assert!(
            files.iter().any(|f| f.1 == wanted.as_bytes()),
            "message {i} stored exactly"
        );
    }
}

#[tokio::test]
async fn bdat_chunks_are_joined_without_unstuffing() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope("a@example.org", &["b@example.com"]).await;
    d.send("BDAT 12\r\n..line one\r\n").await;
    assert_eq!(d.reply().await, "250 2.0.0 12 octets received");
    d.send("BDAT 8 LAST\r\n.\r\nend\r\n").await;
    assert!(d.reply().await.starts_with("250 2.0.0 Ok: stored as"));
    // BDAT 0 LAST ends an (empty) message too.
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("RCPT TO:<b@example.com>", "250").await;
    d.command("BDAT 0 LAST", "250 2.0.0 Ok: stored").await;
    let files = setup.cur("maildir");
    assert_eq!(files.len(), 2);
    let prefix = b"Return-Path: <a@example.org>\r\nDelivered-To: b@example.com\r\n".to_vec();
    let mut full = prefix.clone();
    full.extend_from_slice(b"..line one\r\n.\r\nend\r\n");
    assert!(files.iter().any(|f| f.1 == full));
    assert!(files.iter().any(|f| f.1 == prefix));
}

#[tokio::test]
async fn bdat_out_of_sequence_consumes_its_chunk() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    // The chunk text looks like commands: it must be skipped, not executed.
    d.send("BDAT 19 LAST\r\nMAIL FROM:<x@y>\r\n\r\n").await;
    assert!(d.reply().await.starts_with("503 5.5.1"));
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.send("BDAT 4 LAST\r\nQUIT").await;
    assert!(d.reply().await.starts_with("554 5.5.1"));
    d.command("RCPT TO:<b@example.com>", "250").await;
    d.command("BDAT 0", "250 2.0.0 0 octets").await;
    d.command("DATA", "503 5.5.1").await;
    d.command("RCPT TO:<c@example.com>", "503 5.5.1").await;
    d.command("NOOP", "250").await;
    assert!(setup.cur("maildir").is_empty());
}

#[tokio::test]
async fn sequence_and_syntax_errors() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("RCPT TO:<b@example.com>", "503 5.5.1").await;
    d.command("DATA", "503 5.5.1").await;
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("MAIL FROM:<a@example.org>", "503 5.5.1").await;
    d.command("DATA", "554 5.5.1").await;
    d.command("FROBNICATE now", "500 5.5.1").await;
    d.command("MAIL FROM:<a@example.org> XYZ=1", "555 5.5.4")
        .await;
    d.command("RCPT TO:<>", "501").await;
    d.command("RCPT TO:<b@example.com> BOGUS=1", "555 5.5.4")
        .await;
    d.command("RCPT TO:b@example.com", "501 5.5.4").await;
    d.command("RCPT TO:<b@example.com>", "250").await;
    d.command("VRFY root", "252").await;
    d.command("HELP", "214").await;
    d.command("STARTTLS", "502 5.5.1").await;
    d.command("AUTH PLAIN AGFhAGI=", "502 5.5.1").await;
    d.command("NOOP", "250 2.0.0").await;
    d.command("RSET", "250 2.0.0").await;
    d.command("HELO old.client", "250 2.0.0 filter.test").await;
    d.command("QUIT", "221 2.0.0").await;
    assert_eq!(d.until_closed().await, "");
}

#[tokio::test]
async fn garbage_nul_and_bare_lf_commands_get_replies() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.send(b"\x00\x01\x02\xff\xfe\r\n").await;
    assert!(d.reply().await.starts_with("500 5.5.1"));
    d.send("NO\0OP\r\n").await;
    assert!(d.reply().await.starts_with("50"));
    d.send("NOOP\n").await;
    assert!(d.reply().await.starts_with("250"));
    d.send("\r\n").await;
    assert!(d.reply().await.starts_with("500"));
    d.command("QUIT", "221").await;
}

#[tokio::test]
async fn too_many_errors_disconnect() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_ERROR_LIMIT", "3")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("BAD1", "500").await;
    d.command("BAD2", "500").await;
    d.send("BAD3\r\n").await;
    assert!(d.reply().await.starts_with("500"));
    assert!(d.reply().await.starts_with("421 4.7.0"));
    assert_eq!(d.until_closed().await, "");
}

#[tokio::test]
async fn refused_bdat_chunks_count_towards_the_error_limit() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_ERROR_LIMIT", "2")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.send("BDAT 4\r\nabcd").await;
    assert!(d.reply().await.starts_with("503 5.5.1"));
    d.send("BDAT 4 LAST\r\nefgh").await;
    assert!(d.reply().await.starts_with("503 5.5.1"));
    assert!(d.reply().await.starts_with("421 4.7.0"));
    assert_eq!(d.until_closed().await, "");
}

#[tokio::test]
async fn overlong_lines_get_500_and_the_session_goes_on() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    // In one write.
    d.send(format!("NOOP {}\r\n", "x".repeat(5000))).await;
    assert!(d.reply().await.starts_with("500 5.5.2"));
    // Spread over several writes, with the end in a later one.
    for _ in 0..3 {
        d.send("y".repeat(3000)).await;
    }
    d.send("\r\nNOOP\r\n").await;
    assert!(d.reply().await.starts_with("500 5.5.2"));
    assert!(d.reply().await.starts_with("250"));
    // A long XFORWARD line (Postfix sends up to ~515 bytes) is fine.
    d.command(&format!("XFORWARD HELO={}", "h".repeat(255)), "250")
        .await;
    d.command(&format!("NOOP {}", "z".repeat(4000)), "250")
        .await;
    d.command("QUIT", "221").await;
}

#[tokio::test]
async fn size_limit_at_mail_and_in_data() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE", "1K")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    d.command("MAIL FROM:<a@example.org> SIZE=2000", "552 5.3.4")
        .await;
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("RCPT TO:<b@example.com>", "250").await;
    d.command("DATA", "354").await;
    for _ in 0..20 {
        d.send(format!("{}\r\n", "a".repeat(500))).await;
    }
    d.send(".\r\n").await;
    assert!(d.reply().await.starts_with("552 5.3.4"));
    // The connection stays usable: a message at the limit is stored.
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("RCPT TO:<b@example.com>", "250").await;
    d.command("DATA", "354").await;
    d.send(format!("{}\r\n.\r\n", "c".repeat(1022))).await;
    assert!(d.reply().await.starts_with("250 2.0.0"));
    // BDAT over the limit is refused and its bytes skipped.
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("RCPT TO:<b@example.com>", "250").await;
    d.send(format!("BDAT 1500 LAST\r\n{}", "NOOP\r\n".repeat(250)))
        .await;
    assert!(d.reply().await.starts_with("552 5.3.4"));
    d.command("NOOP", "250").await;
    assert_eq!(setup.cur("maildir").len(), 1);
}

#[tokio::test]
async fn recipient_limit() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_MAX_RECIPIENTS", "3")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope(
        "a@example.org",
        &["r1@example.com", "r2@example.com", "r3@example.com"],
    )
    .await;
    d.command("RCPT TO:<r4@example.com>", "452 4.5.3").await;
    d.command("DATA", "354").await;
    d.send("x\r\n.\r\n").await;
    assert!(d.reply().await.starts_with("250"));
    let body = stored_body(&setup);
    assert_eq!(
        body.windows(13).filter(|w| w == b"Delivered-To:").count(),
        3
    );
}

#[tokio::test]
async fn unknown_recipients_are_refused_and_routing_splits_destinations() {
    let setup = Setup::new(&[
        (
            "SWIFTDROP_ALERTS_RECIPIENTS",
            "alerts@example.com,@alerts.example.com",
        ),
        ("SWIFTDROP_ALERTS_PATH", "{dir}/alerts"),
        ("SWIFTDROP_TICKETS_RECIPIENTS", "Tickets@Example.com"),
        ("SWIFTDROP_TICKETS_PATH", "{dir}/tickets"),
    ]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("RCPT TO:<nobody@example.com>", "550 5.1.1").await;
    d.command("RCPT TO:<ALERTS@example.com>", "250").await;
    d.command("RCPT TO:<disk@alerts.example.com>", "250").await;
    d.command("RCPT TO:<tickets@example.com>", "250").await;
    d.command("DATA", "354").await;
    d.send("Subject: both\r\n\r\nx\r\n.\r\n").await;
    let reply = d.reply().await;
    assert_eq!(reply.matches("cur/").count(), 2, "{reply}");
    let alerts = setup.cur("alerts");
    let tickets = setup.cur("tickets");
    assert_eq!((alerts.len(), tickets.len()), (1, 1));
    assert_eq!(
        alerts[0].1,
        b"Return-Path: <a@example.org>\r\nDelivered-To: ALERTS@example.com\r\nDelivered-To: disk@alerts.example.com\r\nSubject: both\r\n\r\nx\r\n"
    );
    assert_eq!(
        tickets[0].1,
        b"Return-Path: <a@example.org>\r\nDelivered-To: tickets@example.com\r\nSubject: both\r\n\r\nx\r\n"
    );
    assert_size_in_name(&alerts[0].0, &alerts[0].1);
    assert_size_in_name(&tickets[0].0, &tickets[0].1);
}

#[tokio::test]
async fn xforward_from_trusted_network_only() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, OUTSIDE).await;
    let ehlo = d.command("EHLO client.test", "250").await;
    assert!(
        !ehlo.contains("XFORWARD"),
        "not advertised to untrusted clients"
    );
    d.command("XFORWARD ADDR=192.0.2.7", "550 5.7.0").await;
    d.command("QUIT", "221").await;

    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    d.command(
        "XFORWARD NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=58772",
        "250 2.0.0",
    )
    .await;
    d.command(
        "XFORWARD HELO=client+2Bx.example IDENT=[UNAVAILABLE] PROTO=ESMTP SOURCE=REMOTE",
        "250",
    )
    .await;
    d.command("XFORWARD COLOR=red", "501 5.5.4").await;
    d.command("XFORWARD", "501 5.5.4").await;
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("XFORWARD ADDR=10.0.0.1", "503 5.5.1").await;
    d.command("QUIT", "221").await;
}

#[tokio::test]
async fn xforward_networks_setting_is_honoured() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_XFORWARD_NETWORKS", "192.0.2.0/24")]);
    let mut d = Dialog::start(&setup, OUTSIDE).await;
    d.command("XFORWARD ADDR=198.51.100.1", "250").await;
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("XFORWARD ADDR=198.51.100.1", "550 5.7.0").await;
}

/// Not an open relay: a recipient no destination takes is accepted for the relay only from
/// clients in `relay_networks` (default loopback, where Postfix connects from), whatever
/// `relay` and `listen` say; the filter's own recipients are taken from anyone.
#[tokio::test]
async fn recipients_are_relayed_only_for_clients_in_relay_networks() {
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("127.0.0.1:10026", None, LOOPBACK, "250 2.1.5"),
        ("127.0.0.1:10026", None, OUTSIDE, "550 5.7.1"),
        ("127.0.0.1:10026", None, "[::1]:40000", "250 2.1.5"),
        (
            "127.0.0.1:10026",
            None,
            "[::ffff:192.0.2.10]:40000",
            "550 5.7.1",
        ),
        (
            "127.0.0.1:10026",
            Some("192.0.2.0/24"),
            OUTSIDE,
            "250 2.1.5",
        ),
        (
            "127.0.0.1:10026",
            Some("192.0.2.0/24"),
            LOOPBACK,
            "550 5.7.1",
        ),
        (
            "127.0.0.1:10026",
            Some("198.51.100.0/24"),
            OUTSIDE,
            "550 5.7.1",
        ),
        ("off", None, LOOPBACK, "550 5.1.1"),
        ("off", Some("0.0.0.0/0"), OUTSIDE, "550 5.1.1"),
    ];
    for &(relay, networks, peer, expected) in cases {
        let mut vars = vec![
            ("SWIFTDROP_DEFAULT_RECIPIENTS", "ours@example.com"),
            ("SWIFTDROP_SERVER_RELAY", relay),
            // Listening everywhere changes nothing: the client's address decides.
            ("SWIFTDROP_SERVER_LISTEN", "0.0.0.0:0"),
        ];
        if let Some(n) = networks {
            vars.push(("SWIFTDROP_SERVER_RELAY_NETWORKS", n));
        }
        let setup = Setup::new(&vars);
        let mut d = Dialog::start(&setup, peer).await;
        d.command("EHLO client.test", "250").await;
        d.command("MAIL FROM:<a@example.org>", "250").await;
        d.command("RCPT TO:<ours@example.com>", "250 2.1.5").await;
        d.send("RCPT TO:<victim@elsewhere.example>\r\n").await;
        let reply = d.reply().await;
        assert!(
            reply.starts_with(expected),
            "relay={relay} relay_networks={networks:?} peer={peer}: {reply}"
        );
    }
}

/// Nothing a client sends names a path: recipients, the sender, HELO and XFORWARD names
/// full of `../` only end up inside the message's one file under `cur/`, whose name is the
/// server's own (a configured hostname's `/` is escaped: `store::key`'s tests).
#[tokio::test]
async fn client_supplied_names_cannot_traverse_paths() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO ../../../etc", "250").await;
    d.command("XFORWARD NAME=../../tmp ADDR=192.0.2.7 HELO=../..", "250")
        .await;
    d.envelope(
        "\"../../../etc/passwd\"@example.org",
        &["\"../../cur/x\"@example.com", "\"/etc/shadow\"@example.com"],
    )
    .await;
    d.command("DATA", "354").await;
    d.send("Subject: traversal\r\n\r\nx\r\n.\r\n").await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let stored = setup.cur("maildir");
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].0.contains('/'), "{}", stored[0].0);
    let mut everything = Vec::new();
    let mut dirs = vec![setup.dir.path().to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path.clone());
            }
            everything.push(path.strip_prefix(setup.dir.path()).unwrap().to_path_buf());
        }
    }
    everything.sort();
    let expected: Vec<std::path::PathBuf> =
        ["maildir", "maildir/cur", "maildir/new", "maildir/tmp"]
            .iter()
            .map(Into::into)
            .chain([format!("maildir/cur/{}", stored[0].0).into()])
            .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(everything, expected);
}

#[tokio::test]
async fn client_gone_mid_data_stores_nothing() {
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope("a@example.org", &["b@example.com"]).await;
    d.command("DATA", "354").await;
    d.send("Subject: cut\r\n\r\nhalf a message\r\n").await;
    d.close().await;
    assert!(setup.cur("maildir").is_empty());
    assert_eq!(count_entries(&setup.path("maildir/tmp")), 0);
}

#[tokio::test]
async fn quit_inside_data_is_data_and_eof_discards() {
    // Postfix without speed_adjust writes QUIT into the data stream when its client drops.
    let setup = Setup::default_catch_all();
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope("a@example.org", &["b@example.com"]).await;
    d.command("DATA", "354").await;
    d.send("partial\r\nQUIT\r\n").await;
    assert_eq!(d.close().await, "");
    assert!(setup.cur("maildir").is_empty());
}

#[tokio::test]
async fn idle_clients_get_421_and_are_closed() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_IDLE_TIMEOUT", "200ms")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.command("EHLO client.test", "250").await;
    assert!(d.reply().await.starts_with("421 4.4.2"));
    assert_eq!(d.until_closed().await, "");
}

/// A client that keeps sending, slowly, is never idle: `data_timeout` bounds its message
/// data in all, and nothing of the message is stored.
#[tokio::test]
async fn a_trickling_message_hits_the_data_time_limit() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_DATA_TIMEOUT", "1s")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope("a@example.org", &["b@example.com"]).await;
    d.command("DATA", "354").await;
    // Never idle: a line every 100 ms, for 2 s, or until the session closes its end.
    for _ in 0..20 {
        if !d.try_send("x\r\n").await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(d.reply().await, "421 4.4.2 Error: time limit exceeded");
    assert!(setup.cur("maildir").is_empty());
    assert_eq!(setup.staged("maildir"), 0);
}

/// `session_timeout` bounds a whole session, however busy.
#[tokio::test]
async fn a_busy_session_hits_the_session_time_limit() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_SESSION_TIMEOUT", "1s")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    let mut last = String::new();
    for _ in 0..40 {
        // Once the session has closed, its 421 waits to be read.
        let _ = d.try_send("NOOP\r\n").await;
        last = d.reply().await;
        if !last.starts_with("250") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last, "421 4.4.2 Error: time limit exceeded");
    assert_eq!(d.until_closed().await, "");
}

#[tokio::test]
async fn shutdown_lets_the_transaction_finish_then_says_421() {
    let setup = Setup::default_catch_all();
    let mut busy = Dialog::start(&setup, LOOPBACK).await;
    let mut idle = Dialog::start(&setup, LOOPBACK).await;
    busy.envelope("a@example.org", &["b@example.com"]).await;
    busy.command("DATA", "354").await;
    busy.stop.send(true).unwrap();
    idle.stop.send(true).unwrap();
    assert!(idle.reply().await.starts_with("421 4.3.2"));
    busy.send("late but complete\r\n.\r\n").await;
    assert!(busy.reply().await.starts_with("250 2.0.0 Ok: stored"));
    assert!(busy.reply().await.starts_with("421 4.3.2"));
    assert_eq!(setup.cur("maildir").len(), 1);
}

/// A setup whose sessions share one memory budget of 24 MiB (`max_memory`), waiting
/// `memory_wait` for room, and the budget.
fn budgeted(memory_wait: &str) -> (Setup, Arc<MemoryBudget>) {
    let setup = Setup::new(&[
        ("SWIFTDROP_SERVER_MAX_MEMORY", "24MiB"),
        ("SWIFTDROP_SERVER_MEMORY_WAIT", memory_wait),
    ]);
    let memory = MemoryBudget::new(setup.config.server.max_memory);
    (setup, memory)
}

/// A session of `setup` that holds message bytes within `memory`.
async fn sharing(setup: &Setup, memory: &Arc<MemoryBudget>) -> Dialog {
    Dialog::start_sharing(
        setup.settings(),
        setup.deliverer(),
        Arc::clone(memory),
        LOOPBACK,
    )
    .await
}

/// EHLO, MAIL (announcing `size`, when given) and one RCPT, each answered 250.
async fn envelope_of(d: &mut Dialog, size: Option<usize>) {
    d.command("EHLO client.test", "250").await;
    let size = size.map(|s| format!(" SIZE={s}")).unwrap_or_default();
    d.command(&format!("MAIL FROM:<sender@example.org>{size}"), "250")
        .await;
    d.command("RCPT TO:<rcpt@example.com>", "250").await;
}

/// Message bytes are held only within `max_memory`, shared by every session: with no wait
/// (`memory_wait = 0s`) a transaction that finds no room gets `452 4.3.1` at once (at DATA
/// when its SIZE does not fit or nothing fits, at the end of data when its buffer or its
/// uploads could not grow), leaves nothing behind, and succeeds once the others have given
/// their memory back.
#[tokio::test]
async fn message_bytes_are_held_within_the_shared_memory_budget() {
    const MIB: usize = 1 << 20;
    // One message at its largest (8 MiB buffer + 15 MiB of upload parts) fits in 24 MiB.
    let (setup, memory) = budgeted("0s");
    let start = || sharing(&setup, &memory);
    async fn open(d: &mut Dialog, size: Option<usize>) -> String {
        envelope_of(d, size).await;
        d.send("DATA\r\n").await;
        d.reply().await
    }
    // A and C each reserve a full buffer at DATA, as their SIZE announces.
    let mut a = start().await;
    assert!(open(&mut a, Some(8 * MIB)).await.starts_with("354"));
    let mut c = start().await;
    assert!(open(&mut c, Some(8 * MIB)).await.starts_with("354"));
    assert_eq!(memory.used(), 2 * (8 * MIB + 64));

    // B's SIZE does not fit: 452 at DATA, and the transaction stays open.
    let mut b = start().await;
    let reply = open(&mut b, Some(8 * MIB)).await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    // Without SIZE its buffer cannot grow past 4 MiB: 452 at the end of data.
    b.command("RSET", "250").await;
    b.command("MAIL FROM:<sender@example.org>", "250").await;
    b.command("RCPT TO:<rcpt@example.com>", "250").await;
    b.command("DATA", "354").await;
    b.send(message_of(6 * MIB)).await;
    b.send(".\r\n").await;
    let reply = b.reply().await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    assert_eq!(
        memory.used(),
        2 * (8 * MIB + 64),
        "B gave back what it held"
    );

    // E takes all but 1000 bytes: F's 2000 are refused at DATA.
    let mut e = start().await;
    let rest = 24 * MIB - memory.used() - 64 - 1000;
    assert!(open(&mut e, Some(rest)).await.starts_with("354"));
    let mut f = start().await;
    let reply = open(&mut f, Some(2000)).await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    e.command("\r\n.", "250").await;
    c.command("\r\n.", "250").await;
    assert_eq!(memory.used(), 8 * MIB + 64, "only A holds memory now");

    // B's 9 MiB fills its buffer, but its upload parts do not fit beside A: 452.
    let large = message_of(9 * MIB);
    b.command("MAIL FROM:<sender@example.org>", "250").await;
    b.command("RCPT TO:<rcpt@example.com>", "250").await;
    b.command("DATA", "354").await;
    b.send(&large).await;
    b.send(".\r\n").await;
    let reply = b.reply().await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");

    // Once A is done, B's retry is stored whole. Its SIZE reserves the buffer and the
    // upload parts at DATA: a message that got 354 does not fail for memory halfway.
    a.command("\r\n.", "250").await;
    assert_eq!(memory.used(), 0);
    b.command(
        &format!("MAIL FROM:<sender@example.org> SIZE={}", large.len()),
        "250",
    )
    .await;
    b.command("RCPT TO:<rcpt@example.com>", "250").await;
    b.command("DATA", "354").await;
    assert_eq!(memory.used(), 8 * MIB + 64 * 1024 + 15 * MIB);
    b.send(&large).await;
    b.send(".\r\n").await;
    let reply = b.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: stored as cur/"), "{reply}");
    assert_eq!(memory.used(), 0);

    let stored = setup.cur("maildir");
    assert_eq!(
        stored.len(),
        4,
        "E, C, A and B's retry; nothing of the refusals"
    );
    assert_eq!(
        stored
            .iter()
            .filter(|(_, bytes)| bytes.ends_with(&large))
            .count(),
        1
    );
    for (name, bytes) in &stored {
        assert_size_in_name(name, bytes);
    }
    assert_eq!(
        setup.staged("maildir"),
        0,
        "no staged or streamed leftovers"
    );
}

/// A transaction that finds no room in `max_memory` waits for it (`memory_wait`), reading
/// nothing meanwhile, and goes on once another gives its memory back: at DATA (its SIZE
/// does not fit yet), while its buffer grows, and when it begins to stream. One that waited
/// `memory_wait` in vain gets `452 4.3.1` and leaves nothing behind.
#[tokio::test]
async fn a_transaction_waits_for_room_in_the_memory_budget() {
    const MIB: usize = 1 << 20;
    let (setup, memory) = budgeted("1h");
    let start = || sharing(&setup, &memory);
    let open = envelope_of;
    // A holds a streaming message's whole reservation (8 MiB + 15 MiB).
    let large = message_of(9 * MIB);
    let mut a = start().await;
    open(&mut a, Some(large.len())).await;
    a.command("DATA", "354").await;
    let held = memory.used();
    assert_eq!(held, 8 * MIB + 64 * 1024 + 15 * MIB);

    // B's SIZE does not fit: no reply to its DATA while A holds the memory.
    let mut b = start().await;
    open(&mut b, Some(large.len())).await;
    b.send("DATA\r\n").await;
    assert!(
        b.reply_within(std::time::Duration::from_millis(500))
            .await
            .is_none(),
        "B waits"
    );
    a.send(&large).await;
    a.send(".\r\n").await;
    let reply = a.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    // A gave its memory back: B goes on, streams and is stored whole.
    let reply = b.reply().await;
    assert!(reply.starts_with("354"), "{reply}");
    b.send(&large).await;
    b.send(".\r\n").await;
    let reply = b.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(memory.used(), 0);

    // C1 and C2 hold two buffers of nearly 8 MiB; D (no SIZE) gets 354 and its buffer
    // grows while there is room, then waits for more (and, past 8 MiB, for its upload
    // parts): it goes on once C1 and C2 are done.
    let below_threshold = 8 * MIB - 1024;
    let mut c1 = start().await;
    open(&mut c1, Some(below_threshold)).await;
    c1.command("DATA", "354").await;
    let mut c2 = start().await;
    open(&mut c2, Some(below_threshold)).await;
    c2.command("DATA", "354").await;
    let mut d = start().await;
    open(&mut d, None).await;
    d.command("DATA", "354").await;
    let sending = {
        let large = large.clone();
        tokio::spawn(async move {
            d.send(&large).await;
            d.send(".\r\n").await;
            (d.reply().await, d)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!sending.is_finished(), "D waits for room");
    assert!(memory.used() <= 24 * MIB);
    for c in [&mut c1, &mut c2] {
        c.send("Subject: c\r\n\r\nsmall\r\n.\r\n").await;
        let reply = c.reply().await;
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    let (reply, _d) = sending.await.unwrap();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(memory.used(), 0);

    // A wait in vain: with memory_wait 1 s and E holding all but 960 KiB, F's 1 MiB gets
    // 452 at DATA.
    let (short, _) = budgeted("1s");
    let mut e = sharing(&short, &memory).await;
    open(&mut e, Some(24 * MIB - 64 * 1024 - 1000)).await;
    e.command("DATA", "354").await;
    let mut f = sharing(&short, &memory).await;
    open(&mut f, Some(MIB)).await;
    f.command("DATA", "452 4.3.1").await;
    f.command("RSET", "250").await;
    e.command("\r\n.", "250").await;

    let stored = setup.cur("maildir");
    assert_eq!(stored.len(), 5, "A, B, C1, C2 and D");
    assert_eq!(
        stored
            .iter()
            .filter(|(_, bytes)| bytes.ends_with(&large))
            .count(),
        3
    );
    assert_eq!(setup.staged("maildir"), 0);
    assert_eq!(short.cur("maildir").len(), 1, "E; nothing of F");
}

/// Sessions waiting at DATA get room in the order they began to wait: a small message that
/// would fit now does not pass a large one that waits before it (else a steady flow of
/// small ones could keep the large one waiting until `memory_wait` refuses it).
#[tokio::test]
async fn a_large_message_waiting_at_data_is_not_passed_by_a_later_small_one() {
    const MIB: usize = 1 << 20;
    let (setup, memory) = budgeted("1h");
    let start = || sharing(&setup, &memory);
    async fn quiet(d: &mut Dialog) -> Option<String> {
        d.reply_within(std::time::Duration::from_millis(500)).await
    }
    // A holds a buffer of nearly 8 MiB.
    let mut a = start().await;
    envelope_of(&mut a, Some(8 * MIB - 1024)).await;
    a.command("DATA", "354").await;
    // The large one (streaming: 8 MiB of buffer and 15 MiB of parts) does not fit yet.
    let large = message_of(9 * MIB);
    let mut l = start().await;
    envelope_of(&mut l, Some(large.len())).await;
    l.send(
        "DATA
",
    )
    .await;
    assert!(quiet(&mut l).await.is_none(), "the large one waits");
    // The small one would fit now, but waits behind the large one.
    let mut s = start().await;
    envelope_of(&mut s, Some(MIB)).await;
    assert!(memory.has_room(2 * MIB), "the small one would fit");
    s.send(
        "DATA
",
    )
    .await;
    assert!(
        quiet(&mut s).await.is_none(),
        "the small one waits its turn"
    );

    a.command("Subject: a\r\n\r\na\r\n.", "250 2.0.0").await;
    assert!(l.reply().await.starts_with("354"), "the large one first");
    l.send(&large).await;
    l.send(".\r\n").await;
    assert!(l.reply().await.starts_with("250 2.0.0"));
    assert!(s.reply().await.starts_with("354"), "then the small one");
    s.command("Subject: s\r\n\r\ns\r\n.", "250 2.0.0").await;
    assert_eq!(setup.cur("maildir").len(), 3);
    assert_eq!(memory.used(), 0);
}

/// A transaction refused at DATA after waiting `memory_wait` in vain gives up its turn at
/// once, though its client keeps it open: a later one that fits is not kept waiting.
#[tokio::test]
async fn a_transaction_refused_for_memory_keeps_no_one_waiting() {
    const MIB: usize = 1 << 20;
    let (setup, memory) = budgeted("1s");
    let mut a = sharing(&setup, &memory).await;
    envelope_of(&mut a, Some(8 * MIB - 1024)).await;
    a.command("DATA", "354").await;
    let mut refused = sharing(&setup, &memory).await;
    envelope_of(&mut refused, Some(9 * MIB)).await;
    refused.command("DATA", "452 4.3.1").await;
    // No RSET, no QUIT: the refused transaction stays open.
    let mut small = sharing(&setup, &memory).await;
    envelope_of(&mut small, Some(MIB)).await;
    // Kept waiting behind the refused one, it would get 452 after memory_wait.
    small.command("DATA", "354").await;
    small.command("Subject: s\r\n\r\ns\r\n.", "250 2.0.0").await;
    a.command("Subject: a\r\n\r\na\r\n.", "250 2.0.0").await;
    refused.command("RSET", "250").await;
    assert_eq!(memory.used(), 0);
}

/// A message whose SIZE was reserved at DATA does not fail for memory halfway: once it
/// streams, it gives its buffer back but for room for the reads that pass through it, so
/// it goes on to its end though others took all the rest (and no wait is allowed).
#[tokio::test]
async fn a_streaming_message_keeps_room_for_its_reads() {
    const MIB: usize = 1 << 20;
    let (setup, memory) = budgeted("0s");
    let large = message_of(12 * MIB);
    let mut a = sharing(&setup, &memory).await;
    envelope_of(&mut a, Some(large.len())).await;
    a.command("DATA", "354").await;
    // Past the 8 MiB threshold it streams, and gives its 8 MiB buffer back.
    let split = 10 * MIB;
    a.send(&large[..split]).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while memory.used() > 16 * MIB {
        assert!(std::time::Instant::now() < deadline, "{}", memory.used());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Others take every byte that is free.
    let mut others = memory.reservation();
    others.resize(24 * MIB - memory.used()).unwrap();
    a.send(&large[split..]).await;
    a.send(".\r\n").await;
    let reply = a.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let stored = setup.cur("maildir");
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1.ends_with(&large));
    drop(others);
    assert_eq!(memory.used(), 0);
}

/// Two sessions wait at DATA for room that holds one of them: once it is there, one goes
/// on and the other keeps waiting for its turn (its DATA kept, not lost).
#[tokio::test]
async fn sessions_waiting_for_the_same_room_each_get_their_turn() {
    const MIB: usize = 1 << 20;
    let (setup, memory) = budgeted("1h");
    let mut sessions = Vec::new();
    for _ in 0..4 {
        let mut d = sharing(&setup, &memory).await;
        // 7 MiB each: three would fit beside each other, four do not.
        envelope_of(&mut d, Some(7 * MIB)).await;
        sessions.push(d);
    }
    let [mut a, mut b, mut c, mut d]: [Dialog; 4] = sessions.try_into().ok().unwrap();
    // A and B hold 14 MiB; C would fit, but a 4th would not: take C's room with a holder.
    a.command("DATA", "354").await;
    b.command("DATA", "354").await;
    let filler = 24 * MIB - memory.used() - 7 * MIB - 64 - 1000;
    let mut holder = memory.reservation();
    holder.resize(filler + 7 * MIB).unwrap();
    // Now C and D wait: room comes back for one at a time.
    c.send("DATA\r\n").await;
    d.send("DATA\r\n").await;
    let patience = std::time::Duration::from_millis(300);
    assert!(c.reply_within(patience).await.is_none(), "C waits");
    assert!(d.reply_within(patience).await.is_none(), "D waits");
    // The holder gives back room for one: one goes on.
    holder.resize(filler).unwrap();
    let (first, second) = tokio::select! {
        reply = c.reply() => { assert!(reply.starts_with("354"), "{reply}"); (&mut c, &mut d) }
        reply = d.reply() => { assert!(reply.starts_with("354"), "{reply}"); (&mut d, &mut c) }
    };
    assert!(
        second.reply_within(patience).await.is_none(),
        "the other keeps waiting"
    );
    first.send("Subject: first\r\n\r\nbody\r\n.\r\n").await;
    let reply = first.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    // Its turn: its DATA was kept, and now gets its 354.
    let reply = second.reply().await;
    assert!(reply.starts_with("354"), "{reply}");
    second.send("Subject: second\r\n\r\nbody\r\n.\r\n").await;
    let reply = second.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    for x in [&mut a, &mut b] {
        x.command("Subject: x\r\n\r\nbody\r\n.", "250").await;
    }
    drop(holder);
    assert_eq!(memory.used(), 0);
    assert_eq!(setup.cur("maildir").len(), 4);
}

/// A streamed message whose data ends in two reads, `...\r\n.\r` then `\n`: the CR of the
/// end-of-data line is not part of the message, though it arrived before the reader knew.
#[tokio::test]
async fn a_streamed_message_ending_across_reads_is_stored_byte_exact() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_STREAM_THRESHOLD", "64KiB")]);
    let mut d = Dialog::start(&setup, LOOPBACK).await;
    d.envelope("sender@example.org", &["rcpt@example.com"])
        .await;
    d.command("DATA", "354").await;
    let message = message_of(200 * 1024);
    d.send(&message).await;
    d.send(".\r").await;
    // Let the session read and stream what it has before the LF arrives.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    d.send("\n").await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: stored as cur/"), "{reply}");
    let stored = stored_body(&setup);
    assert!(
        stored.ends_with(&message),
        "stored byte-exact, no stray CR: ends with {:?}",
        String::from_utf8_lossy(&stored[stored.len() - 20..])
    );
}
