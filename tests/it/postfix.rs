//! End to end through a real Postfix: client -> Postfix smtpd -> smtpd_proxy_filter ->
//! swiftdrop -> Maildir.

use std::net::SocketAddr;

use mail_send::SmtpClient;
use mail_send::smtp::message::{Address, Message, Parameters};
use swiftdrop::filter::server::Server;
use tokio::sync::oneshot;

use crate::private_postfix::{Options, PrivatePostfix};
use crate::support::*;

/// swiftdrop on an ephemeral port, running until `stop` is sent.
async fn start_filter(setup: &Setup) -> (u16, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = Server::bind(setup.config.server.clone(), setup.deliverer())
        .await
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (port, stop, task)
}

async fn send_via(
    port: u16,
    to: &[&str],
    body: &[u8],
) -> mail_send::Result<smtp_proto::Response<String>> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = SmtpClient::connect(addr, PATIENCE).await?;
    c.stream.set_nodelay(true)?;
    c.read().await?;
    c.ehlo("client.test").await?;
    let result = c
        .send(Message {
            mail_from: Address::new("sender@example.org", Parameters::new()),
            rcpt_to: to
                .iter()
                .map(|r| Address::new(*r, Parameters::new()))
                .collect(),
            body: body.strip_suffix(b"\r\n").unwrap_or(body).into(),
        })
        .await;
    let _ = c.quit().await;
    result
}

async fn stored_through_postfix(speed_adjust: bool) {
    let setup = Setup::default_catch_all();
    let (port, stop, task) = start_filter(&setup).await;
    let postfix = tokio::task::spawn_blocking(move || PrivatePostfix::start(port, speed_adjust))
        .await
        .unwrap();
    wait_for_port(postfix.front_port).await;
    let body = b"From: sender@example.org\r\nSubject: through postfix\r\n\r\n.dot line\r\nbody\r\n";
    let reply = send_via(
        postfix.front_port,
        &["alice@example.com", "bob@example.com"],
        body,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", postfix.maillog()));
    assert_eq!(reply.code, 250, "{reply:?}");
    // Postfix relays the filter's final reply verbatim to its client.
    assert!(reply.message.contains("stored as cur/"), "{reply:?}");
    let files = setup.cur("maildir");
    assert_eq!(files.len(), 1);
    let (name, bytes) = &files[0];
    assert_size_in_name(name, bytes);
    let text = String::from_utf8_lossy(bytes);
    assert!(text.starts_with("Return-Path: <sender@example.org>\r\nDelivered-To: alice@example.com\r\nDelivered-To: bob@example.com\r\nReceived: from client.test ("), "{text}");
    assert!(
        text.contains("[127.0.0.1])\r\n\tby pfxtest.localdomain (Postfix)"),
        "{text}"
    );
    assert!(
        bytes.ends_with(b"Subject: through postfix\r\n\r\n.dot line\r\nbody\r\n"),
        "{text}"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn stored_through_postfix_with_speed_adjust() {
    stored_through_postfix(true).await;
}

#[tokio::test]
async fn stored_through_postfix_in_lock_step() {
    stored_through_postfix(false).await;
}

#[tokio::test]
async fn failing_store_gives_451_through_postfix_and_postfix_queues_nothing() {
    let setup = Setup::default_catch_all();
    let cur = setup.path("maildir/cur");
    let (port, stop, task) = start_filter(&setup).await;
    std::fs::remove_dir(&cur).unwrap();
    std::fs::write(&cur, b"not a folder").unwrap();
    let postfix = tokio::task::spawn_blocking(move || PrivatePostfix::start(port, true))
        .await
        .unwrap();
    wait_for_port(postfix.front_port).await;
    let result = send_via(
        postfix.front_port,
        &["alice@example.com"],
        b"Subject: lost?\r\n\r\nno\r\n",
    )
    .await;
    match result {
        Err(mail_send::Error::UnexpectedReply(r)) => {
            assert_eq!((r.code, r.esc), (451, [4, 3, 0]), "{r:?}");
        }
        other => panic!("expected 451, got {other:?}\n{}", postfix.maillog()),
    }
    postfix.wait_for_log("proxy-reject: END-OF-MESSAGE: 451 4.3.0");
    assert_eq!(postfix.queued_files(), 0, "Postfix queued nothing");
    assert_eq!(count_entries(&setup.path("maildir/tmp")), 0);
    stop.send(()).unwrap();
    task.await.unwrap();
}

/// swiftdrop with destination OURS (ours@example.com) relaying other recipients to the
/// after-queue smtpd on `after_queue`.
fn relaying_setup(after_queue: u16) -> Setup {
    Setup::new(&[
        ("SWIFTDROP_OURS_RECIPIENTS", "ours@example.com"),
        ("SWIFTDROP_OURS_PATH", "{dir}/ours"),
        (
            "SWIFTDROP_SERVER_RELAY",
            &format!("127.0.0.1:{after_queue}"),
        ),
    ])
}

/// swiftdrop (see `relaying_setup`) behind a Postfix with an after-queue smtpd that
/// delivers what it queues to an smtp-sink.
async fn relaying_postfix(
    lock_step: bool,
) -> (
    SmtpSink,
    Setup,
    PrivatePostfix,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let sink = SmtpSink::start(&[]);
    let after_queue = free_port();
    let setup = relaying_setup(after_queue);
    let (port, stop, task) = start_filter(&setup).await;
    let sink_port = sink.port;
    let postfix = tokio::task::spawn_blocking(move || {
        PrivatePostfix::start_with(
            port,
            Options {
                lock_step,
                after_queue: Some(after_queue),
                deliver_to: Some(sink_port),
            },
        )
    })
    .await
    .unwrap();
    (sink, setup, postfix, stop, task)
}

#[tokio::test]
async fn mixed_transaction_through_postfix_is_stored_and_relayed_with_xforward() {
    let (sink, setup, postfix, stop, task) = relaying_postfix(false).await;
    // Connect from 127.0.0.2 so that the original client differs from swiftdrop's address.
    let front: SocketAddr = ([127, 0, 0, 1], postfix.front_port).into();
    let mut c = SmtpClient::connect_using("127.0.0.2".parse().unwrap(), front, PATIENCE)
        .await
        .unwrap();
    c.read().await.unwrap();
    c.ehlo("client.test").await.unwrap();
    let reply = c
        .send(Message {
            mail_from: Address::new("sender@example.org", Parameters::new()),
            rcpt_to: vec![
                Address::new("ours@example.com", Parameters::new()),
                Address::new("postmaster@example.com", Parameters::new()),
            ],
            body: b"Subject: mixed via postfix\r\n\r\nhello".as_slice().into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", postfix.maillog()));
    let _ = c.quit().await;
    assert!(reply.message.contains("stored as cur/"), "{reply:?}");
    assert!(reply.message.contains("relayed: "), "{reply:?}");
    let stored = setup.cur("ours");
    assert_eq!(stored.len(), 1);
    let text = String::from_utf8_lossy(&stored[0].1);
    assert!(text.starts_with("Return-Path: <sender@example.org>\r\nDelivered-To: ours@example.com\r\nReceived: from client.test ("), "{text}");
    assert!(
        text.contains("[127.0.0.2])"),
        "the original client is in the stored copy: {text}"
    );
    // The after-queue smtpd logs the original client that swiftdrop passed on with XFORWARD.
    let log = postfix.wait_for_log("orig_client=");
    assert!(
        log.lines()
            .any(|l| l.contains("orig_client=") && l.contains("[127.0.0.2]")),
        "{log}"
    );
    // Postfix queued the relayed copy and delivered it to the sink, for postmaster only.
    let Some(dump) = sink.wait_for_dump_ending("hello").await else {
        panic!("relayed mail never arrived\n{}", postfix.maillog());
    };
    assert!(
        dump.contains("X-Rcpt-Args: <postmaster@example.com>"),
        "{dump}"
    );
    assert!(!dump.contains("<ours@example.com>"), "{dump}");
    assert!(
        dump.contains("Subject: mixed via postfix\n\nhello\n"),
        "{dump}"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn client_vanishing_mid_data_in_lock_step_stores_and_relays_nothing() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (sink, setup, postfix, stop, task) = relaying_postfix(true).await;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", postfix.front_port))
        .await
        .unwrap();
    let mut client = BufReader::new(stream);
    let mut line = String::new();
    for command in [
        None,
        Some("EHLO client.test\r\n"),
        Some("MAIL FROM:<sender@example.org>\r\n"),
        Some("RCPT TO:<ours@example.com>\r\n"),
        Some("RCPT TO:<postmaster@example.com>\r\n"),
        Some("DATA\r\n"),
    ] {
        if let Some(command) = command {
            client
                .get_mut()
                .write_all(command.as_bytes())
                .await
                .unwrap();
        }
        // Read one (possibly multi-line) reply.
        loop {
            line.clear();
            client.read_line(&mut line).await.unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(line.starts_with('2') || line.starts_with('3'), "{line}");
    }
    client
        .get_mut()
        .write_all(b"Subject: cut off\r\n\r\nhalf of it\r\n")
        .await
        .unwrap();
    drop(client);
    postfix.wait_for_log("lost connection after DATA");
    // Give anything that would wrongly follow (a store, a relay, a queue run) time to happen.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(setup.cur("ours").is_empty(), "nothing stored");
    assert!(sink.dumps().is_empty(), "nothing relayed");
    assert_eq!(postfix.queued_files(), 0, "nothing queued");
    stop.send(()).unwrap();
    task.await.unwrap();
}
