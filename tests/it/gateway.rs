//! The gateway as a whole: Postfix configured by `swiftdrop postfix-config` from the
//! environment (as the container entrypoint does), in front of swiftdrop.

use std::net::SocketAddr;
use std::process::Command;

use mail_send::SmtpClient;
use mail_send::smtp::message::{Address, Message, Parameters};
use swiftdrop::filter::server::Server;

use crate::private_postfix::PrivatePostfix;
use crate::support::*;

struct Gateway {
    setup: Setup,
    postfix: PrivatePostfix,
    sink: SmtpSink,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// swiftdrop storing ours@example.com; Postfix generated with FORWARDS
/// fwd@example.com -> target@elsewhere.example; outbound mail goes to an smtp-sink.
async fn gateway() -> Gateway {
    gateway_with(&[]).await
}

/// [`gateway`] with more variables in `swiftdrop postfix-config`'s environment.
async fn gateway_with(extra: &[(&str, &str)]) -> Gateway {
    let sink = SmtpSink::start(&[]);
    let after_queue = free_port();
    let front = free_port();
    let relay = format!("127.0.0.1:{after_queue}");
    let setup = Setup::new(&[
        ("SWIFTDROP_OURS_RECIPIENTS", "ours@example.com"),
        ("SWIFTDROP_OURS_PATH", "{dir}/ours"),
        ("SWIFTDROP_SERVER_RELAY", &relay),
    ]);
    let server = Server::bind(setup.config.server.clone(), setup.deliverer())
        .await
        .unwrap();
    let filter = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let dir = tempdir_with_mode("swiftdrop-gateway", 0o755);
    let out = Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
        .env_clear()
        .env("MYHOSTNAME", "mx.example.com")
        .env(
            "FORWARDS",
            r#"{"fwd@example.com": "target@elsewhere.example"}"#,
        )
        .env("SWIFTDROP_OURS_RECIPIENTS", "ours@example.com")
        .env("SWIFTDROP_OURS_PATH", setup.path("ours"))
        .env("SWIFTDROP_SERVER_LISTEN", filter.to_string())
        .env("SWIFTDROP_SERVER_RELAY", &relay)
        .envs(extra.iter().copied())
        .arg("postfix-config")
        .arg("--output")
        .arg(dir.path().join("etc"))
        .arg("--public")
        .arg(format!("127.0.0.1:{front}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Only for the test: deliver what Postfix queues to the sink instead of the Internet.
    let outbound = format!("smtp:[127.0.0.1]:{}", sink.port);
    let settings = vec![
        format!("default_transport = {outbound}"),
        format!("relay_transport = {outbound}"),
    ];
    let postfix = tokio::task::spawn_blocking(move || {
        PrivatePostfix::start_from(dir, front, &[front, after_queue], &settings)
    })
    .await
    .unwrap();
    Gateway {
        setup,
        postfix,
        sink,
        stop,
        task,
    }
}

impl Gateway {
    async fn send(&self, to: &str) -> mail_send::Result<smtp_proto::Response<String>> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.postfix.front_port).into();
        let mut c = SmtpClient::connect(addr, PATIENCE).await?;
        c.read().await?;
        c.ehlo("client.test").await?;
        let result = c
            .send(Message {
                mail_from: Address::new("sender@example.org", Parameters::new()),
                rcpt_to: vec![Address::new(to, Parameters::new())],
                body: format!("Subject: to {to}\r\n\r\nhello").into_bytes().into(),
            })
            .await;
        let _ = c.quit().await;
        result
    }

    /// Sends a message from `from` to `to`, logged in as `login` (with its password) when
    /// given; Postfix's answer.
    async fn submit(
        &self,
        login: Option<(&str, &str)>,
        from: &str,
        to: &str,
    ) -> mail_send::Result<smtp_proto::Response<String>> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.postfix.front_port).into();
        let mut c = SmtpClient::connect(addr, PATIENCE).await?;
        c.read().await?;
        let capabilities = c.ehlo("client.test").await?;
        if let Some(login) = login {
            c.authenticate(mail_send::Credentials::from(login), &capabilities)
                .await?;
        }
        let result = c
            .send(Message {
                mail_from: Address::new(from, Parameters::new()),
                rcpt_to: vec![Address::new(to, Parameters::new())],
                body: format!("Subject: from {from}\r\n\r\nhello")
                    .into_bytes()
                    .into(),
            })
            .await;
        let _ = c.quit().await;
        result
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

fn rejected_with(result: mail_send::Result<smtp_proto::Response<String>>) -> (u16, String) {
    match result {
        Err(mail_send::Error::UnexpectedReply(r)) => (r.code, r.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn generated_postfix_stores_forwards_and_refuses_the_rest() {
    let gw = gateway().await;

    // A configured recipient is stored.
    let reply = gw.send("ours@example.com").await.unwrap();
    assert!(reply.message.contains("stored as cur/"), "{reply:?}");
    assert_eq!(gw.setup.cur("ours").len(), 1);

    // A forwarded address goes through swiftdrop's relay and Postfix's virtual map to its target.
    let reply = gw.send("fwd@example.com").await.unwrap();
    assert!(reply.message.contains("relayed: "), "{reply:?}");
    let Some(dump) = gw.sink.wait_for_dump_ending("hello").await else {
        panic!("forward never arrived\n{}", gw.postfix.maillog());
    };
    assert!(
        dump.contains("X-Rcpt-Args: <target@elsewhere.example>"),
        "{dump}"
    );
    assert!(dump.contains("Subject: to fwd@example.com\n"), "{dump}");

    // An unknown recipient of our domain is refused by Postfix at RCPT time.
    let (code, text) = rejected_with(gw.send("nobody@example.com").await);
    assert_eq!(code, 550, "{text}");
    assert!(text.contains("User unknown"), "{text}");

    // Relaying to an outside domain is refused, even from loopback: not an open relay.
    let (code, text) = rejected_with(gw.send("victim@outside.example").await);
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("Relay access denied"), "{text}");

    assert_eq!(gw.setup.cur("ours").len(), 1, "nothing else stored");
    assert_eq!(gw.sink.dumps().len(), 1, "nothing else relayed");
    gw.stop().await;
}

/// Applications submit with SASL logins (`SENDER_LOGINS`, the passwords in a Cyrus sasldb
/// made with `saslpasswd2`): jira's login sends as svc-jira@ and Postfix records the login
/// in the `Received:` header swiftdrop stores first; jira's login cannot send as
/// svc-splunk@, nobody can send as svc-jira@ without logging in, a wrong password is
/// refused; a sender nobody owns needs no login (mail from outside still arrives).
#[tokio::test]
async fn a_login_sends_only_as_its_own_application() {
    let sasl = tempdir_with_mode("swiftdrop-sasl", 0o755);
    let db = sasl.path().join("sasldb2");
    for (login, password) in [("jira", "jira-pw"), ("splunk", "splunk-pw")] {
        let mut child = Command::new("saslpasswd2")
            .args([
                "-f",
                db.to_str().unwrap(),
                "-p",
                "-c",
                "-u",
                "mx.example.com",
                login,
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("saslpasswd2 (Debian's sasl2-bin; tests/run.sh installs it)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    // Postfix's smtpd (user postfix) reads it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let gw = gateway_with(&[
        (
            "SENDER_LOGINS",
            r#"{"jira": "svc-jira@example.com", "splunk": ["svc-splunk@example.com"]}"#,
        ),
        ("SASL_DB", db.to_str().unwrap()),
    ])
    .await;

    let reply = gw
        .submit(
            Some(("jira", "jira-pw")),
            "svc-jira@example.com",
            "ours@example.com",
        )
        .await
        .unwrap();
    assert!(reply.message.contains("stored as cur/"), "{reply:?}");
    let stored = gw.setup.cur("ours");
    assert_eq!(stored.len(), 1);
    let view = swiftdrop::worker::mail_view::MailView::parse(&stored[0].1);
    assert_eq!(view.sasl_login.as_deref(), Some("jira@mx.example.com"));
    assert_eq!(view.envelope_from, "svc-jira@example.com");

    let (code, text) = rejected_with(
        gw.submit(
            Some(("jira", "jira-pw")),
            "svc-splunk@example.com",
            "ours@example.com",
        )
        .await,
    );
    assert_eq!(code, 553, "{text}");
    assert!(
        text.contains("not owned by user jira@mx.example.com"),
        "{text}"
    );
    let (code, text) = rejected_with(
        gw.submit(None, "svc-jira@example.com", "ours@example.com")
            .await,
    );
    assert_eq!(code, 553, "{text}");
    assert!(text.contains("not logged in"), "{text}");
    match gw
        .submit(
            Some(("jira", "wrong")),
            "svc-jira@example.com",
            "ours@example.com",
        )
        .await
    {
        Err(mail_send::Error::AuthenticationFailed(r)) => assert_eq!(r.code, 535, "{r:?}"),
        other => panic!("a wrong password must be refused: {other:?}"),
    }
    let reply = gw
        .submit(None, "someone@outside.example", "ours@example.com")
        .await
        .unwrap();
    assert!(reply.message.contains("stored as cur/"), "{reply:?}");
    let stored = gw.setup.cur("ours");
    assert_eq!(stored.len(), 2, "the two accepted, nothing else");
    gw.stop().await;
}

/// The entrypoint's Postfix keeps the default queue directory (as in a container): one runs
/// at a time.
static ENTRYPOINT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The container entrypoint, run outside a container (its Postfix under `dir`): the public
/// smtpd on `public`, swiftdrop on `filter`, storing ours@example.com under `dir/maildir`.
fn entrypoint(
    dir: &std::path::Path,
    public: u16,
    filter: u16,
    extra: &[(&str, &str)],
) -> std::process::Child {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_swiftdrop"))
        .parent()
        .unwrap();
    Command::new("sh")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/entrypoint.sh"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("POSTFIX_CONFIG_DIR", dir.join("etc"))
        .env("SMTP_LISTEN", format!("127.0.0.1:{public}"))
        .env("MYHOSTNAME", "mx.example.com")
        .env("SWIFTDROP_OURS_RECIPIENTS", "ours@example.com")
        .env("SWIFTDROP_OURS_PATH", dir.join("maildir"))
        .env("SWIFTDROP_SERVER_LISTEN", format!("127.0.0.1:{filter}"))
        .env(
            "SWIFTDROP_SERVER_RELAY",
            format!("127.0.0.1:{}", free_port()),
        )
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Sends SIGTERM to `child` and waits for its exit (a test failure after [`PATIENCE`]).
async fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "entrypoint did not exit on SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The container entrypoint, run outside a container: it configures Postfix, checks the
/// stores, runs both, and on SIGTERM stops both and exits.
#[tokio::test]
async fn entrypoint_runs_both_and_sigterm_stops_both() {
    let _one = ENTRYPOINT.lock().await;
    let dir = tempdir_with_mode("swiftdrop-entrypoint", 0o755);
    let public = free_port();
    let filter = free_port();
    let mut child = entrypoint(dir.path(), public, filter, &[]);
    wait_for_port(public).await;
    let addr: SocketAddr = ([127, 0, 0, 1], public).into();
    let mut c = SmtpClient::connect(addr, PATIENCE).await.unwrap();
    c.read().await.unwrap();
    c.ehlo("client.test").await.unwrap();
    let reply = c
        .send(Message {
            mail_from: Address::new("sender@example.org", Parameters::new()),
            rcpt_to: vec![Address::new("ours@example.com", Parameters::new())],
            body: b"Subject: via entrypoint\r\n\r\nhi".as_slice().into(),
        })
        .await
        .unwrap();
    let _ = c.quit().await;
    assert!(reply.message.contains("stored as cur/"), "{reply:?}");
    let files = cur_files(&dir.path().join("maildir"));
    assert_eq!(files.len(), 1);
    assert!(
        files[0].0.contains(".mx.example.com,S="),
        "host name from MYHOSTNAME: {}",
        files[0].0
    );

    let status = terminate(&mut child).await;
    assert!(status.success(), "{status:?}");
    // Nothing listens any more: Postfix and swiftdrop are both gone.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "Postfix still listens"
    );
    let filter_addr: SocketAddr = ([127, 0, 0, 1], filter).into();
    assert!(
        tokio::net::TcpStream::connect(filter_addr).await.is_err(),
        "swiftdrop still listens"
    );
}

/// A stop while the entrypoint starts ends it at once with status 0, even in a store check
/// that would wait for an hour (a Swift whose auth endpoint never answers).
#[tokio::test]
async fn entrypoint_stopped_during_its_store_check_exits_at_once() {
    let _one = ENTRYPOINT.lock().await;
    let dir = tempdir_with_mode("swiftdrop-entrypoint", 0o755);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let auth_url = format!("http://{}/auth/v1.0", silent.local_addr().unwrap());
    let mut child = entrypoint(
        dir.path(),
        free_port(),
        free_port(),
        &[
            ("SWIFTDROP_HUNG_BACKEND", "swift"),
            ("SWIFTDROP_HUNG_RECIPIENTS", "hung@example.com"),
            ("SWIFTDROP_HUNG_AUTHURL", &auth_url),
            ("SWIFTDROP_HUNG_USER", "test:tester"),
            ("SWIFTDROP_HUNG_KEY", "testing"),
            ("SWIFTDROP_HUNG_CONTAINER", "mail"),
            ("SWIFTDROP_HUNG_TIMEOUT", "1h"),
        ],
    );
    // The check has reached the store: its connection is waiting in the listener's queue.
    silent.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    let _held = loop {
        match silent.accept() {
            Ok((stream, _)) => break stream,
            Err(_) => {
                assert!(std::time::Instant::now() < deadline, "the check never came");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let status = terminate(&mut child).await;
    assert!(status.success(), "{status:?}");
}

/// On SIGTERM, new connections to the public smtpd get 421 while twenty clients in the middle
/// of DATA finish theirs: each gets its reply, and each 250 has its object.
#[tokio::test]
async fn entrypoint_drains_the_sessions_postfix_holds() {
    let _one = ENTRYPOINT.lock().await;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempdir_with_mode("swiftdrop-entrypoint", 0o755);
    let public = free_port();
    let mut child = entrypoint(dir.path(), public, free_port(), &[]);
    wait_for_port(public).await;
    let addr: SocketAddr = ([127, 0, 0, 1], public).into();

    /// Reads one reply (its last line).
    async fn reply(r: &mut BufReader<tokio::net::TcpStream>) -> String {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(PATIENCE, r.read_line(&mut line))
                .await
                .expect("a reply in time")
                .unwrap();
            if n == 0 || line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        assert!(reply(&mut c).await.starts_with("220"));
        for (command, expected) in [
            ("EHLO client.test", "250"),
            ("MAIL FROM:<sender@example.org>", "250"),
            ("RCPT TO:<ours@example.com>", "250"),
            ("DATA", "354"),
        ] {
            c.get_mut()
                .write_all(format!("{command}\r\n").as_bytes())
                .await
                .unwrap();
            let answer = reply(&mut c).await;
            assert!(answer.starts_with(expected), "{command}: {answer}");
        }
        c.get_mut()
            .write_all(format!("Subject: in flight {i}\r\n\r\nfirst half\r\n").as_bytes())
            .await
            .unwrap();
        clients.push(c);
    }
    let stop = tokio::spawn(async move { terminate(&mut child).await });
    // New clients are turned away once the drain began (the reload takes a moment).
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let mut late = BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let greeting = reply(&mut late).await;
        if greeting.starts_with("421 4.3.2") {
            break;
        }
        assert!(greeting.starts_with("220"), "{greeting}");
        assert!(
            std::time::Instant::now() < deadline,
            "new clients still welcome"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut stored = Vec::new();
    for c in &mut clients {
        c.get_mut()
            .write_all(b"second half\r\n.\r\n")
            .await
            .unwrap();
        let answer = reply(c).await;
        let key = answer
            .strip_prefix("250 2.0.0 Ok: stored as ")
            .unwrap_or_else(|| panic!("a reply for the message in flight: {answer:?}"));
        stored.push(key.trim_start_matches("cur/").to_string());
        let _ = c.get_mut().write_all(b"QUIT\r\n").await;
    }
    let status = stop.await.unwrap();
    assert!(status.success(), "{status:?}");
    let mut files: Vec<String> = cur_files(&dir.path().join("maildir"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    files.sort();
    stored.sort();
    assert_eq!(
        files, stored,
        "every 250 has its object, and nothing else was stored"
    );
}
