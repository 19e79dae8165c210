//! Pass-through: recipients that no destination takes are relayed downstream (smtp-sink as
//! the real SMTP peer); the final reply is 250 only when store and relay both succeeded.

use crate::support::*;

const PEER: &str = "127.0.0.1:40002";

fn setup_with_relay(port: u16) -> Setup {
    setup_with_relay_and(port, &[])
}

/// As [`setup_with_relay`], with more settings.
fn setup_with_relay_and(port: u16, extra: &[(&str, &str)]) -> Setup {
    let relay = format!("127.0.0.1:{port}");
    let mut vars = vec![
        ("SWIFTDROP_OURS_RECIPIENTS", "ours@example.com"),
        ("SWIFTDROP_OURS_PATH", "{dir}/ours"),
        ("SWIFTDROP_SERVER_RELAY", relay.as_str()),
    ];
    vars.extend_from_slice(extra);
    Setup::new(&vars)
}

/// A session whose one recipient is relayed, up to its DATA's 354.
async fn relay_only_data(setup: &Setup) -> Dialog {
    let mut d = Dialog::start(setup, PEER).await;
    d.envelope("sender@example.org", &["someone@elsewhere.example"])
        .await;
    d.command("DATA", "354").await;
    d
}

async fn mixed_transaction(d: &mut Dialog) -> String {
    d.command("EHLO postfix.test", "250").await;
    d.command(
        "XFORWARD NAME=mx.example.net ADDR=192.0.2.7 PORT=4711 HELO=origin.example PROTO=ESMTP",
        "250",
    )
    .await;
    d.command(
        "MAIL FROM:<sender@example.org> BODY=8BITMIME ENVID=env+2B1 RET=HDRS",
        "250",
    )
    .await;
    d.command("RCPT TO:<ours@example.com>", "250").await;
    d.command(
        "RCPT TO:<postmaster@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;pm@example.com",
        "250",
    )
    .await;
    d.command("RCPT TO:<other@elsewhere.example>", "250").await;
    d.command("DATA", "354").await;
    d.send("Subject: mixed\r\n\r\n..dotted\r\nbody\r\n.\r\n")
        .await;
    d.reply().await
}

#[tokio::test]
async fn mixed_transaction_is_stored_and_relayed() {
    let sink = SmtpSink::start(&[]);
    let setup = setup_with_relay(sink.port);
    let mut d = Dialog::start(&setup, PEER).await;
    let reply = mixed_transaction(&mut d).await;
    assert!(reply.starts_with("250 2.0.0 Ok: stored as cur/"), "{reply}");
    assert!(reply.contains("; relayed: "), "{reply}");
    let stored = setup.cur("ours");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].1,
        b"Return-Path: <sender@example.org>\r\nDelivered-To: ours@example.com\r\nSubject: mixed\r\n\r\n.dotted\r\nbody\r\n"
    );
    let staged = std::fs::read_dir(setup.path("ours").join("tmp"))
        .unwrap()
        .count();
    assert_eq!(staged, 0, "the staged copy was moved into cur/");
    assert!(reply.contains(&stored[0].0), "{reply}");
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let dump = &dumps[0];
    // smtp-sink does not offer SIZE, so none is sent.
    assert!(
        dump.contains("X-Mail-Args: <sender@example.org> BODY=8BITMIME RET=HDRS ENVID=env+2B1\n"),
        "{dump}"
    );
    assert!(dump.contains("X-Rcpt-Args: <postmaster@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;pm@example.com\n"), "{dump}");
    assert!(
        dump.contains("X-Rcpt-Args: <other@elsewhere.example>\n"),
        "{dump}"
    );
    assert!(
        !dump.contains("ours@example.com"),
        "stored recipient is not relayed: {dump}"
    );
    assert!(dump.contains("X-Helo-Args: filter.test\n"), "{dump}");
    // The message arrives as received (smtp-sink writes LF line ends in its dump).
    assert!(dump.contains("Subject: mixed\n\n.dotted\nbody\n"), "{dump}");
}

#[tokio::test]
async fn relay_only_transaction() {
    let sink = SmtpSink::start(&[]);
    let setup = setup_with_relay(sink.port);
    let mut d = relay_only_data(&setup).await;
    d.send("Subject: relay only\r\n\r\nx\r\n.\r\n").await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: relayed: "), "{reply}");
    assert!(setup.cur("ours").is_empty());
    assert_eq!(sink.dumps().len(), 1);
}

/// A message whose first line is a dot (sent as `..`) is relayed with that dot stuffed
/// again: otherwise the downstream reads the end of the data there and the rest as commands
/// (SMTP smuggling into the after-queue smtpd, which trusts loopback).
#[tokio::test]
async fn a_first_line_dot_is_stuffed_so_nothing_is_smuggled() {
    let sink = SmtpSink::start(&[]);
    let setup = setup_with_relay(sink.port);
    let mut d = relay_only_data(&setup).await;
    d.send(concat!(
        "..\r\n",
        "MAIL FROM:<smuggler@example.org>\r\n",
        "RCPT TO:<victim@elsewhere.example>\r\n",
        "DATA\r\n",
        "Subject: smuggled\r\n",
        "\r\n",
        "smuggled body\r\n",
        ".\r\n",
    ))
    .await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: relayed: "), "{reply}");
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1, "one transaction downstream: {dumps:?}");
    let dump = &dumps[0];
    assert!(!dump.contains("X-Rcpt-Args: <victim@"), "{dump}");
    // The whole message arrives as its body, its first line a single dot.
    assert!(
        dump.contains("\n.\nMAIL FROM:<smuggler@example.org>\nRCPT TO:<victim@elsewhere.example>\nDATA\nSubject: smuggled\n\nsmuggled body\n"),
        "{dump}"
    );
}

/// A relay to `sink` that streams past `threshold` and spools into a directory of its own.
fn spooling_setup(sink: &SmtpSink, threshold: &str) -> (Setup, tempfile::TempDir) {
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let setup = setup_with_relay_and(
        sink.port,
        &[
            ("SWIFTDROP_SERVER_STREAM_THRESHOLD", threshold),
            ("SWIFTDROP_SERVER_SPOOL_DIR", spool_dir.as_str()),
        ],
    );
    (setup, spool)
}

/// A session with one stored and one relayed recipient, up to before DATA.
async fn mixed_envelope(setup: &Setup) -> Dialog {
    let mut d = Dialog::start(setup, PEER).await;
    d.envelope(
        "sender@example.org",
        &["ours@example.com", "other@elsewhere.example"],
    )
    .await;
    d
}

/// A relayed message past `stream_threshold` is not held in memory: it streams to the store
/// and waits for the relay in a spool file that has no name. Both get every byte, dots at
/// line starts included wherever the pieces were cut, and nothing is left in the spool
/// directory.
#[tokio::test]
async fn a_large_relayed_message_is_spooled_and_arrives_whole() {
    let sink = SmtpSink::start(&[]);
    let (setup, spool) = spooling_setup(&sink, "1MiB");
    let mut d = mixed_envelope(&setup).await;
    d.command("DATA", "354").await;
    // 3 MiB of numbered lines, every tenth starting with a dot (sent stuffed).
    let mut message = b"Subject: large\r\n\r\n".to_vec();
    let mut wire = message.clone();
    for i in 0..60_000 {
        let line = format!(
            "{}line {i:06} of a large relayed message ........\r\n",
            if i % 10 == 0 { "." } else { "" }
        );
        message.extend_from_slice(line.as_bytes());
        if i % 10 == 0 {
            wire.push(b'.');
        }
        wire.extend_from_slice(line.as_bytes());
    }
    wire.extend_from_slice(b".\r\n");
    d.send(&wire).await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0 Ok: stored as cur/"), "{reply}");
    assert!(reply.contains("; relayed: "), "{reply}");
    let stored = setup.cur("ours");
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].1.ends_with(&message),
        "the stored object holds the message"
    );
    let expected = String::from_utf8(message).unwrap().replace("\r\n", "\n");
    let dump = sink
        .wait_for_dump_ending("line 059999 of a large relayed message ........")
        .await
        .expect("the relayed message arrived");
    // smtp-sink ends its dump with an empty line of its own.
    let start = dump
        .find("Subject: large")
        .expect("the message is in the dump");
    assert_eq!(dump[start..].len(), expected.len() + 1);
    assert!(
        dump[start..].strip_suffix('\n') == Some(expected.as_str()),
        "the relayed message arrived unchanged"
    );
    assert_eq!(count_entries(spool.path()), 0, "the spool file has no name");
}

/// A spool file that cannot be made (its directory is gone) fails the message with 451:
/// nothing stored, nothing relayed.
#[tokio::test]
async fn a_spool_that_cannot_be_written_gives_451_and_leaves_nothing() {
    let sink = SmtpSink::start(&[]);
    let (setup, spool) = spooling_setup(&sink, "64KiB");
    spool.close().unwrap();
    let mut d = mixed_envelope(&setup).await;
    d.command("DATA", "354").await;
    d.send("Subject: spool\r\n\r\n".to_string() + &"x".repeat(100).repeat(2000) + "\r\n.\r\n")
        .await;
    let reply = d.reply().await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(setup.cur("ours").is_empty());
    assert!(sink.dumps().iter().all(|d| !d.contains("Subject: spool")));
    assert_eq!(setup.staged("ours"), 0, "no write was begun");
}

/// The transaction ends at the downstream's DATA reply: a QUIT answered after the deadline
/// changes nothing (a 451 would duplicate the relayed recipients' copy on the retry).
#[tokio::test]
async fn a_downstream_slow_to_answer_quit_still_gives_250() {
    let sink = SmtpSink::start(&["-W", "QUIT:10"]);
    let setup = setup_with_relay_and(sink.port, &[("SWIFTDROP_SERVER_STORE_TIMEOUT", "2s")]);
    let mut d = Dialog::start(&setup, PEER).await;
    let reply = mixed_transaction(&mut d).await;
    assert!(reply.starts_with("250 2.0.0 Ok: stored as cur/"), "{reply}");
    assert_eq!(setup.cur("ours").len(), 1);
    assert_eq!(sink.dumps().len(), 1);
}

#[tokio::test]
async fn relay_5xx_is_passed_on_and_the_stored_copy_removed() {
    let sink = SmtpSink::start(&["-f", "."]);
    let setup = setup_with_relay(sink.port);
    let mut d = Dialog::start(&setup, PEER).await;
    let reply = mixed_transaction(&mut d).await;
    assert!(reply.starts_with("500 5.3.0"), "{reply}");
    assert!(setup.cur("ours").is_empty(), "stored copy rolled back");
    // The session goes on.
    d.command("NOOP", "250").await;
}

#[tokio::test]
async fn relay_4xx_gives_451_and_the_stored_copy_removed() {
    let sink = SmtpSink::start(&["-r", "rcpt"]);
    let setup = setup_with_relay(sink.port);
    let mut d = Dialog::start(&setup, PEER).await;
    let reply = mixed_transaction(&mut d).await;
    assert_eq!(reply, "451 4.3.0 Error: relay failed, try again later");
    assert!(setup.cur("ours").is_empty());
    // smtp-sink opens a dump at MAIL and removes it when the transaction is abandoned,
    // which the relay's QUIT (sent after the reply) does: look for the message itself.
    let dumps = sink.dumps();
    assert!(
        dumps.iter().all(|d| !d.contains("Subject: mixed")),
        "{dumps:?}"
    );
}

/// While the relay is in progress the stored copy waits under `tmp/`: a worker watching
/// `cur/` never sees a message that then gets a 451 (the client's retry would make it a
/// duplicate). The downstream answers RCPT late, then refuses the message for now.
#[tokio::test]
async fn a_stored_copy_appears_only_after_the_relay_succeeded() {
    let sink = SmtpSink::start(&["-W", "RCPT:3", "-r", "."]);
    let setup = setup_with_relay(sink.port);
    let mut d = Dialog::start(&setup, PEER).await;
    let watched = setup.path("ours");
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut staged = false;
        for _ in 0..50 {
            seen.extend(cur_files(&watched).into_iter().map(|(name, _)| name));
            staged |= std::fs::read_dir(watched.join("tmp")).map_or(0, |d| d.count()) > 0;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        (seen, staged)
    });
    let reply = mixed_transaction(&mut d).await;
    assert_eq!(reply, "451 4.3.0 Error: relay failed, try again later");
    let (seen, staged) = watcher.await.unwrap();
    assert!(
        seen.is_empty(),
        "seen under cur/ during the relay: {seen:?}"
    );
    assert!(staged, "the copy was staged under tmp/ during the relay");
    assert!(setup.cur("ours").is_empty());
    let tmp = std::fs::read_dir(setup.path("ours").join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "the staged copy is taken back");
}

#[tokio::test]
async fn unreachable_relay_gives_451() {
    let port = free_port(); // nothing listens there
    let setup = setup_with_relay(port);
    let mut d = Dialog::start(&setup, PEER).await;
    let reply = mixed_transaction(&mut d).await;
    assert_eq!(reply, "451 4.3.0 Error: relay failed, try again later");
    assert!(setup.cur("ours").is_empty());
}

#[tokio::test]
async fn a_failed_store_is_not_relayed() {
    let sink = SmtpSink::start(&[]);
    let setup = setup_with_relay(sink.port);
    let deliverer = setup.deliverer();
    // Every write of a transaction with relayed recipients goes through tmp/ first.
    let tmp = setup.path("ours/tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"").unwrap();
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    let reply = mixed_transaction(&mut d).await;
    assert!(
        reply.starts_with("451 4.3.0 Error: store failed"),
        "{reply}"
    );
    assert!(
        sink.dumps().is_empty(),
        "nothing relayed when the store failed"
    );
}

#[tokio::test]
async fn relay_off_refuses_unknown_recipients() {
    let setup = Setup::new(&[
        ("SWIFTDROP_OURS_RECIPIENTS", "ours@example.com"),
        ("SWIFTDROP_OURS_PATH", "{dir}/ours"),
        ("SWIFTDROP_SERVER_RELAY", "off"),
    ]);
    let mut d = Dialog::start(&setup, PEER).await;
    d.command("MAIL FROM:<a@example.org>", "250").await;
    d.command("RCPT TO:<other@elsewhere.example>", "550 5.1.1")
        .await;
    d.command("RCPT TO:<ours@example.com>", "250").await;
}
