//! The listener on an ephemeral port, driven by mail-send as an independent client.

use std::net::SocketAddr;
use std::time::Duration;

use mail_send::SmtpClient;
use mail_send::smtp::message::{Address, Message, Parameters};
use swiftdrop::filter::server::Server;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::support::*;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<()>,
}

async fn start(setup: &Setup) -> Running {
    let server = Server::bind(setup.config.server.clone(), setup.deliverer())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running { addr, stop, done }
}

async fn client(addr: SocketAddr) -> SmtpClient<TcpStream> {
    let mut c = SmtpClient::connect(addr, PATIENCE).await.unwrap();
    c.stream.set_nodelay(true).unwrap();
    let greeting = c.read().await.unwrap();
    assert_eq!(greeting.code, 220);
    c.ehlo("client.test").await.unwrap();
    c
}

/// A client that has begun a message from a@ to b@ (MAIL, RCPT, DATA) and sent `first`
/// of it.
async fn client_in_data(addr: SocketAddr, first: &[u8]) -> SmtpClient<TcpStream> {
    let mut c = client(addr).await;
    c.mail_from("a@example.org", &Parameters::new())
        .await
        .unwrap();
    c.rcpt_to("b@example.com", &Parameters::new())
        .await
        .unwrap();
    c.cmd(b"DATA\r\n").await.unwrap();
    c.stream.write_all(first).await.unwrap();
    c
}

/// mail-send appends CRLF.CRLF itself: hand it the body without its last CRLF.
fn message<'a>(from: &'a str, to: &'a str, body: &'a [u8]) -> Message<'a> {
    Message {
        mail_from: Address::new(from, Parameters::new()),
        rcpt_to: vec![Address::new(to, Parameters::new())],
        body: body.strip_suffix(b"\r\n").unwrap_or(body).into(),
    }
}

#[tokio::test]
async fn mail_send_client_stores_exact_bytes() {
    let setup = Setup::default_catch_all();
    let running = start(&setup).await;
    let mut c = client(running.addr).await;
    let body =
        b"From: a@example.org\r\nSubject: via mail-send\r\n\r\n.leading dot\r\n..two\r\nend\r\n";
    let reply = c
        .send(message("a@example.org", "b@example.com", body))
        .await
        .unwrap();
    assert_eq!(reply.code, 250);
    assert!(
        reply.message.starts_with("Ok: stored as cur/"),
        "{}",
        reply.message
    );
    let files = setup.cur("maildir");
    assert_eq!(files.len(), 1);
    let mut expected = b"Return-Path: <a@example.org>\r\nDelivered-To: b@example.com\r\n".to_vec();
    expected.extend_from_slice(body);
    assert_eq!(files[0].1, expected);
    assert_eq!(reply.message, format!("Ok: stored as cur/{}", files[0].0));
    // BDAT through mail-send too.
    c.mail_from("a@example.org", &Parameters::new())
        .await
        .unwrap();
    c.rcpt_to("b@example.com", &Parameters::new())
        .await
        .unwrap();
    let reply = c.bdat(b"Subject: chunked\r\n\r\nx\r\n").await.unwrap();
    assert_eq!(reply.code, 250);
    c.quit().await.unwrap();
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
    assert_eq!(setup.cur("maildir").len(), 2);
}

#[tokio::test]
async fn two_hundred_concurrent_sessions_give_two_hundred_files() {
    let setup = Setup::default_catch_all();
    let running = start(&setup).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let addr = running.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = client(addr).await;
            let body = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
            let reply = c
                .send(message("a@example.org", "b@example.com", body.as_bytes()))
                .await
                .unwrap();
            assert_eq!(reply.code, 250);
            c.quit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let files = setup.cur("maildir");
    assert_eq!(files.len(), 200);
    for i in 0..200 {
        let tail = format!("Subject: {i}\r\n\r\nmessage {i}\r\n");
        assert!(
            files.iter().any(|f| f.1.ends_with(tail.as_bytes())),
            "message {i}"
        );
    }
    for f in &files {
        assert_size_in_name(&f.0, &f.1);
    }
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_get_421() {
    let setup = Setup::new(&[("SWIFTDROP_SERVER_MAX_CONNECTIONS", "2")]);
    let running = start(&setup).await;
    let _a = client(running.addr).await;
    let _b = client(running.addr).await;
    let mut third = BufReader::new(TcpStream::connect(running.addr).await.unwrap());
    let mut line = String::new();
    third.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("421 4.7.0"), "{line}");
    drop(_a);
    // A freed slot is usable again (the server notices the close asynchronously).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut s = BufReader::new(TcpStream::connect(running.addr).await.unwrap());
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        if line.starts_with("220") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_transactions_and_closes_idle_sessions() {
    let setup = Setup::default_catch_all();
    let running = start(&setup).await;
    let mut idle = BufReader::new(TcpStream::connect(running.addr).await.unwrap());
    let mut busy = client_in_data(running.addr, b"Subject: in flight\r\n").await;
    let mut greeting = String::new();
    idle.read_line(&mut greeting).await.unwrap();
    running.stop.send(()).unwrap();
    let mut line = String::new();
    idle.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("421 4.3.2"), "{line}");
    // New connections are refused once the listener is gone.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(running.addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    busy.stream
        .write_all(b"\r\nstill stored\r\n.\r\n")
        .await
        .unwrap();
    let reply = busy.read().await.unwrap();
    assert_eq!(reply.code, 250, "{reply:?}");
    running.done.await.unwrap();
    assert_eq!(setup.cur("maildir").len(), 1);
}

/// Once shutdown has too little drain time left for a delivery and its rollback, a message
/// that ends gets `451 4.3.2` and nothing is written: no delivery is cut off halfway.
#[tokio::test]
async fn a_message_ending_late_in_the_drain_gets_451_and_is_not_stored() {
    // Deliveries may begin for drain - (store + 10 s) = 1 s after SIGTERM.
    let setup = Setup::new(&[
        ("SWIFTDROP_SERVER_STORE_TIMEOUT", "1s"),
        ("SWIFTDROP_SERVER_DRAIN_TIMEOUT", "12s"),
    ]);
    let running = start(&setup).await;
    let mut late = client_in_data(running.addr, b"Subject: late\r\n").await;
    running.stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    late.stream
        .write_all(b"\r\ntoo late\r\n.\r\n")
        .await
        .unwrap();
    let reply = late.read().await.unwrap();
    assert_eq!((reply.code, reply.esc), (451, [4, 3, 2]), "{reply:?}");
    running.done.await.unwrap();
    assert!(setup.cur("maildir").is_empty());
}

#[tokio::test]
async fn several_utf8_transactions_on_one_connection() {
    let setup = Setup::default_catch_all();
    let running = start(&setup).await;
    let mut c = client(running.addr).await;
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let mut b =
                format!("Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= {i}\r\n\r\nGrüße, Ωμέγα {i} ✓\r\n")
                    .into_bytes();
            b.extend_from_slice(&[0x80, 0xfe, b'\r', b'\n']);
            b
        })
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        let mut params = Parameters::new();
        params.add("SMTPUTF8").add(("BODY", "8BITMIME"));
        let reply = c
            .send(Message {
                mail_from: Address::new("jürgen@exämple.org", params),
                rcpt_to: vec![Address::new(
                    format!("δοκιμή{i}@example.com"),
                    Parameters::new(),
                )],
                body: body.strip_suffix(b"\r\n").unwrap().into(),
            })
            .await
            .unwrap();
        assert_eq!(reply.code, 250);
    }
    c.quit().await.unwrap();
    let files = setup.cur("maildir");
    assert_eq!(files.len(), 3);
    for (i, body) in bodies.iter().enumerate() {
        let mut expected =
            format!("Return-Path: <jürgen@exämple.org>\r\nDelivered-To: δοκιμή{i}@example.com\r\n")
                .into_bytes();
        expected.extend_from_slice(body);
        assert!(
            files.iter().any(|f| f.1 == expected),
            "message {i} stored exactly"
        );
    }
    running.stop.send(()).unwrap();
    running.done.await.unwrap();
}
