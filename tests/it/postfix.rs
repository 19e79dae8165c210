//! End to end through a real Postfix: client -> Postfix smtpd -> smtpd_proxy_filter ->
//! swiftdrop -> Maildir.

use std::net::SocketAddr;

use mail_send::SmtpClient;
use mail_send::smtp::message::{Address, Message, Parameters};
use swiftdrop::server::Server;
use tokio::sync::oneshot;

use crate::private_postfix::PrivatePostfix;
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
