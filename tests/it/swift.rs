//! Swift and S3 destinations against the real OpenStack Swift of this test run (native API
//! with tempauth, and its s3api): byte-exact objects with envelope metadata, two
//! destinations in one transaction, wrong credentials, Swift stopped and back, tokens
//! invalidated, Keystone v3, and object_store's own conformance tests.

use md5::{Digest, Md5};
use object_store::ObjectStoreExt;
use sha2::Sha256;
use swiftdrop::config::memory::PART_SIZE;
use swiftdrop::config::{Backend, Config};
use swiftdrop::store::swift::SwiftStore;

use crate::support::*;
use crate::swift_support::*;

const PEER: &str = "127.0.0.1:40100";

async fn send(d: &mut Dialog, from: &str, to: &[&str], body: &str) -> String {
    d.command(&format!("MAIL FROM:<{from}>"), "250").await;
    for rcpt in to {
        d.command(&format!("RCPT TO:<{rcpt}>"), "250").await;
    }
    d.command("DATA", "354").await;
    d.send(format!("{body}\r\n.\r\n")).await;
    d.reply().await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

/// Stores one message through `vars`' destination `[OPS]` and checks the object read back
/// with the native API: bytes, ETag, content type and every metadata key.
async fn round_trip(vars: Vec<(String, String)>, container: &str) {
    let swift = swift();
    let setup = setup_with(&vars);
    let deliverer = std::sync::Arc::new(setup.deliverer_with(ready_destinations(&setup).await));
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.command("EHLO postfix.test", "250").await;
    d.command(
        "XFORWARD ADDR=192.0.2.7 NAME=mx.example.org HELO=mx.example.org",
        "250",
    )
    .await;
    // 8-bit bytes, a stuffed dot and a folded Message-ID.
    let body = "Received: from mx.example.org\r\nMessage-ID:\r\n <42@example.org>\r\nSubject: disk full\r\n\r\nCaf\u{e9} \u{2603}\r\n..dot\r\nend";
    let reply = send(&mut d, "alerts@example.org", &["ops@example.com"], body).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");

    let names = native_list(swift.port, container, "cur/").await;
    assert_eq!(names.len(), 1, "{names:?}");
    let (headers, bytes) = native_get(swift.port, container, &names[0]).await;
    let expected = format!(
        "Return-Path: <alerts@example.org>\r\nDelivered-To: ops@example.com\r\n{}\r\n",
        body.replace("\r\n..dot", "\r\n.dot")
    );
    assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
    assert!(
        reply.contains(&names[0]),
        "the reply names the key: {reply}"
    );
    assert!(
        names[0].ends_with(&format!(",S={}", bytes.len())),
        "{}",
        names[0]
    );
    assert_eq!(header(&headers, "etag"), hex(&Md5::digest(&bytes)));
    assert_eq!(header(&headers, "content-type"), "message/rfc822");
    let meta = |k: &str| header(&headers, &format!("x-object-meta-{k}")).to_string();
    assert_eq!(meta("sender"), "alerts@example.org");
    assert_eq!(meta("recipients"), "ops@example.com");
    assert_eq!(meta("client-addr"), "192.0.2.7");
    assert_eq!(meta("client-helo"), "mx.example.org");
    assert_eq!(meta("message-id"), "<42@example.org>");
    assert_eq!(meta("sha256"), hex(&Sha256::digest(&bytes)));
    let received = chrono::DateTime::parse_from_rfc3339(&meta("received")).unwrap();
    assert!((chrono::Utc::now() - received.to_utc()).num_seconds().abs() < 600);
}

#[tokio::test]
async fn native_swift_stores_exact_bytes_with_metadata() {
    let container = unique_container("native");
    round_trip(
        swift_vars("OPS", "ops@example.com", swift().port, &container),
        &container,
    )
    .await;
}

#[tokio::test]
async fn s3_api_stores_exact_bytes_with_metadata() {
    let bucket = unique_container("s3");
    round_trip(
        s3_vars("OPS", "ops@example.com", swift().port, &bucket),
        &bucket,
    )
    .await;
}

#[tokio::test]
async fn one_transaction_stores_into_two_destinations() {
    let swift = swift();
    let (c1, c2) = (unique_container("two-a"), unique_container("two-b"));
    let mut vars = swift_vars("OPS", "ops@example.com", swift.port, &c1);
    vars.extend(s3_vars("DEV", "@dev.example.com", swift.port, &c2));
    let setup = setup_with(&vars);
    let deliverer = std::sync::Arc::new(setup.deliverer_with(ready_destinations(&setup).await));
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.command("EHLO postfix.test", "250").await;
    let reply = send(
        &mut d,
        "ci@example.org",
        &["ops@example.com", "a@dev.example.com", "b@dev.example.com"],
        "Subject: build failed\r\n\r\nred",
    )
    .await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    for (container, delivered) in [
        (&c1, "Delivered-To: ops@example.com\r\n"),
        (
            &c2,
            "Delivered-To: a@dev.example.com\r\nDelivered-To: b@dev.example.com\r\n",
        ),
    ] {
        let names = native_list(swift.port, container, "cur/").await;
        assert_eq!(names.len(), 1, "{container}: {names:?}");
        let (headers, bytes) = native_get(swift.port, container, &names[0]).await;
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            format!(
                "Return-Path: <ci@example.org>\r\n{delivered}Subject: build failed\r\n\r\nred\r\n"
            )
        );
        assert_eq!(
            header(&headers, "x-object-meta-recipients"),
            delivered
                .lines()
                .map(|l| l.trim_start_matches("Delivered-To: "))
                .collect::<Vec<_>>()
                .join(",")
        );
        // Two destinations: each copy was staged under tmp/ until both were written, and
        // its metadata came along into cur/.
        assert_eq!(
            header(&headers, "x-object-meta-sha256"),
            hex(&Sha256::digest(&bytes))
        );
        let staged = settled_listing(swift.port, container, "tmp/", 0).await;
        assert!(staged.is_empty(), "{container}: {staged:?}");
    }
}

#[tokio::test]
async fn wrong_key_fails_check_and_never_gets_250() {
    let swift = swift();
    let container = unique_container("wrongkey");
    // `swiftdrop check` names the destination and the refusal on one line.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"));
    cmd.env_clear().arg("check");
    for (k, v) in swift_vars("OPS", "ops@example.com", swift.port, &container) {
        cmd.env(k, v);
    }
    cmd.env("SWIFTDROP_OPS_KEY", "not-the-key");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED: [OPS] authentication refused:")
            && stdout.contains("401 Unauthorized"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-the-key"), "the key is never shown");

    // A filter serving anyway answers 451 within store_timeout.
    let mut vars = swift_vars("OPS", "ops@example.com", swift.port, &container);
    vars.push(("SWIFTDROP_OPS_KEY".into(), "not-the-key".into()));
    vars.push(("SWIFTDROP_SERVER_STORE_TIMEOUT".into(), "2s".into()));
    let setup = setup_with(&vars);
    let mut d = Dialog::start(&setup, PEER).await;
    d.command("EHLO postfix.test", "250").await;
    let reply = send(&mut d, "a@example.org", &["ops@example.com"], "Subject: x").await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
}

#[tokio::test]
async fn swift_stopped_gives_451_and_the_next_message_after_it_is_back_is_stored() {
    let proxy = PrivateProxy::start("stopped");
    let container = unique_container("stopped");
    let mut vars = swift_vars("OPS", "ops@example.com", proxy.port, &container);
    vars.push(("SWIFTDROP_SERVER_STORE_TIMEOUT".into(), "3s".into()));
    let setup = setup_with(&vars);
    let deliverer = std::sync::Arc::new(setup.deliverer_with(ready_destinations(&setup).await));
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.command("EHLO postfix.test", "250").await;
    let reply = send(&mut d, "a@example.org", &["ops@example.com"], "Subject: 1").await;
    assert!(reply.starts_with("250"), "{reply}");

    proxy.stop();
    let started = std::time::Instant::now();
    let reply = send(&mut d, "a@example.org", &["ops@example.com"], "Subject: 2").await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    println!("451 after {:?} (store_timeout 3s)", started.elapsed());

    proxy.restart();
    let reply = send(&mut d, "a@example.org", &["ops@example.com"], "Subject: 3").await;
    assert!(reply.starts_with("250"), "{reply}");
    let names = native_list(swift().port, &container, "cur/").await;
    assert_eq!(names.len(), 2, "messages 1 and 3 only: {names:?}");
}

#[tokio::test]
async fn invalidated_tokens_are_renewed_without_451() {
    let proxy = PrivateProxy::start("tokens");
    let container = unique_container("tokens");
    let vars = swift_vars("OPS", "ops@example.com", proxy.port, &container);
    let config = Config::from_sources(None, vars.clone()).unwrap();
    let Backend::Swift(swift_config) = &config.destinations[0].backend else {
        panic!()
    };

    // The store itself: one authentication for many requests, one more after the flush.
    let store = SwiftStore::new(swift_config).unwrap();
    store.ensure_container(true).await.unwrap();
    for i in 0..3 {
        let path = object_store::path::Path::from(format!("t/{i}"));
        store.put(&path, "x".into()).await.unwrap();
    }
    assert_eq!(store.authentications(), 1);
    proxy.restart_memcached();
    store
        .put(&"t/after".into(), "y".into())
        .await
        .expect("a 401 renews the token and the put succeeds");
    assert_eq!(store.authentications(), 2);

    // Through the filter: the message after the flush gets 250 at once.
    let setup = setup_with(&vars);
    let deliverer = std::sync::Arc::new(setup.deliverer_with(ready_destinations(&setup).await));
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.command("EHLO postfix.test", "250").await;
    let reply = send(&mut d, "a@example.org", &["ops@example.com"], "Subject: 1").await;
    assert!(reply.starts_with("250"), "{reply}");
    proxy.restart_memcached();
    let reply = send(&mut d, "a@example.org", &["ops@example.com"], "Subject: 2").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(native_list(swift().port, &container, "cur/").await.len(), 2);
}

#[tokio::test]
async fn keystone_v3_token_from_the_catalog_is_cached() {
    let keystone = Keystone::start().await;
    let container = unique_container("keystone");
    let v = |o: &str, val: &str| (format!("SWIFTDROP_OPS_{o}"), val.to_string());
    let vars = vec![
        v("RECIPIENTS", "ops@example.com"),
        v("AUTH_VERSION", "3"),
        v("AUTHURL", &format!("http://127.0.0.1:{}/v3", keystone.port)),
        v("USER", "mailer"),
        v("KEY", "secret"),
        v("OS_OPTIONS_USER_DOMAIN_NAME", "Default"),
        v("OS_OPTIONS_PROJECT_NAME", "mail"),
        v("OS_OPTIONS_PROJECT_DOMAIN_NAME", "Default"),
        v("OS_OPTIONS_REGION_NAME", "RegionOne"),
        v("OS_OPTIONS_INTERFACE", "internal"),
        v("CONTAINER", &container),
        v("CREATE_CONTAINER", "yes"),
    ];
    let setup = setup_with(&vars);
    let deliverer = std::sync::Arc::new(setup.deliverer_with(ready_destinations(&setup).await));
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.command("EHLO postfix.test", "250").await;
    for i in 0..3 {
        let reply = send(
            &mut d,
            "a@example.org",
            &["ops@example.com"],
            &format!("Subject: {i}"),
        )
        .await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    assert_eq!(native_list(swift().port, &container, "cur/").await.len(), 3);
    assert_eq!(
        keystone.issued().await,
        1,
        "one token for the check and three messages"
    );

    // A wrong password is refused by the identity service and named by `check`.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"));
    cmd.env_clear().arg("check");
    for (k, val) in &vars {
        cmd.env(k, val);
    }
    cmd.env("SWIFTDROP_OPS_KEY", "wrong");
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("FAILED: [OPS] authentication refused:") && stdout.contains("401"),
        "{stdout}"
    );
}

/// object_store's conformance tests that apply to Swift (no conditional writes, no
/// versions, no tags), each in a fresh container.
#[tokio::test]
async fn object_store_conformance() {
    use object_store::integration::*;
    let swift = swift();
    let store = || async {
        let container = unique_container("conformance");
        let vars = swift_vars("OPS", "*", swift.port, &container);
        let config = Config::from_sources(None, vars).unwrap();
        let Backend::Swift(c) = &config.destinations[0].backend else {
            panic!()
        };
        let store = SwiftStore::new(c).unwrap();
        store.ensure_container(true).await.unwrap();
        store
    };
    put_get_delete_list(&store().await).await;
    get_opts(&store().await).await;
    put_get_attributes(&store().await).await;
    list_uses_directories_correctly(&store().await).await;
    list_with_delimiter(&store().await).await;
    rename_and_copy(&store().await).await;
    copy_rename_nonexistent_object(&store().await).await;
    stream_get(&store().await).await;
    get_nonexistent_object(&store().await, None)
        .await
        .unwrap_err();
    list_with_offset_exclusivity(&store().await).await;
    multipart_out_of_order(&store().await).await;
}

/// Talks SMTP over a blocking socket: sends a message of `lines` lines of 998 bytes, or
/// (with `vanish`) stops half-way and closes the connection. Returns the final reply.
fn send_big(port: u16, rcpt: &str, lines: usize, vanish: bool) -> String {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, stream);
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    assert!(reply().starts_with("220"));
    for (cmd, code) in [
        ("EHLO big.test".to_string(), "250"),
        ("MAIL FROM:<big@example.org>".into(), "250"),
        (format!("RCPT TO:<{rcpt}>"), "250"),
        ("DATA".into(), "354"),
    ] {
        writer.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        writer.flush().unwrap();
        let r = reply();
        assert!(r.starts_with(code), "{cmd}: {r}");
    }
    writer
        .write_all(b"Message-ID: <big@example.org>\r\nSubject: big\r\n\r\n")
        .unwrap();
    let line = format!("{}\r\n", "x".repeat(998));
    for i in 0..lines {
        if vanish && i == lines / 2 {
            writer.flush().unwrap();
            return String::new();
        }
        writer.write_all(line.as_bytes()).unwrap();
    }
    writer.write_all(b".\r\n").unwrap();
    writer.flush().unwrap();
    reply()
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A 50 MiB message is streamed to Swift in parts while it arrives: swiftdrop's peak RSS
/// stays under 64 MiB, and the object is byte-exact under cur/: an SLO whose manifest was
/// written there last, with all of its metadata, no staging object and no copy. A client
/// that vanishes half-way leaves nothing at all.
#[tokio::test]
async fn fifty_mib_message_is_streamed_within_64_mib_of_memory() {
    let _turn = HEAVY.lock().await;
    let swift = swift();
    let container = unique_container("big");
    let port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"));
    cmd.env_clear()
        .arg("serve")
        .env("SWIFTDROP_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWIFTDROP_SERVER_RELAY", "off")
        .env("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE", "60M")
        .stderr(std::process::Stdio::null());
    for (k, v) in swift_vars("OPS", "ops@example.com", swift.port, &container) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_for_port(port).await;

    let lines = 50 * 1024 * 1024 / 1000;
    let started = std::time::Instant::now();
    let reply =
        tokio::task::spawn_blocking(move || send_big(port, "ops@example.com", lines, false))
            .await
            .unwrap();
    let peak = peak_rss_kib(child.id());
    println!(
        "peak RSS after a {lines}-line message: {} KiB; sent and stored in {:?}",
        peak,
        started.elapsed()
    );
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");

    let names = settled_listing(swift.port, &container, "", 1).await;
    assert_eq!(
        names.len(),
        1,
        "only the final object, no staging: {names:?}"
    );
    assert!(names[0].starts_with("cur/"));
    let (headers, bytes) = native_get(swift.port, &container, &names[0]).await;
    let header = "Return-Path: <big@example.org>\r\nDelivered-To: ops@example.com\r\nMessage-ID: <big@example.org>\r\nSubject: big\r\n\r\n";
    assert_eq!(bytes.len(), header.len() + lines * 1000);
    assert!(bytes.starts_with(header.as_bytes()));
    assert!(
        bytes[header.len()..]
            .chunks(1000)
            .all(|l| l[..998].iter().all(|&b| b == b'x') && &l[998..] == b"\r\n")
    );
    assert!(names[0].ends_with(&format!(",S={}", bytes.len())));
    assert_eq!(
        header_value(&headers, "x-object-meta-message-id"),
        "<big@example.org>"
    );
    // Not known when the upload began: set with the manifest.
    assert_eq!(
        header_value(&headers, "x-object-meta-sha256"),
        hex(&Sha256::digest(&bytes))
    );
    // The manifest itself stands in cur/ (no server-side copy made a plain object of it),
    // and its segments are the only others.
    let (token, url) = native_token(swift.port).await;
    let head = swiftdrop::store::http_client()
        .build()
        .unwrap()
        .head(format!("{url}/{container}/{}", names[0]))
        .header("x-auth-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header_value(head.headers(), "x-static-large-object"),
        "True"
    );
    let segments = format!("{container}_segments");
    let kept = bytes.len().div_ceil(PART_SIZE);
    let listed = settled_listing(swift.port, &segments, "streamed/", kept).await;
    assert_eq!(listed.len(), kept, "one segment per part: {listed:?}");

    // Half a message, then the client is gone: nothing under cur/, staged parts aborted.
    tokio::task::spawn_blocking(move || send_big(port, "ops@example.com", lines, true))
        .await
        .unwrap();
    // A listing can name an object already deleted (this all-in-one Swift runs no
    // updater for container updates that timed out under load): what is left is what a
    // HEAD finds. A part that was in flight when the upload was aborted can land after
    // the abort's deletes: those are repeated a minute later (LATE_LANDING), so wait that
    // long and a bit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let objects = existing(swift.port, &container, "").await;
        let segments = existing(swift.port, &format!("{container}_segments"), "").await;
        if objects.len() == 1 && segments.len() == kept {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {objects:?} {segments:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn header_value(h: &reqwest::header::HeaderMap, name: &str) -> String {
    header(h, name).to_string()
}

/// The output of `swiftdrop <args>` with `vars` (and only those) at log level trace, both
/// streams, and for `serve` the reply to a message sent to `recipient` once it listens
/// (then SIGTERM). The child is killed if the test fails midway.
async fn run_logged(
    args: &[&str],
    vars: &[(String, String)],
    recipient: &str,
) -> (String, Option<String>) {
    struct Killed(Option<std::process::Child>);
    impl Drop for Killed {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let port = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"));
    cmd.env_clear()
        .args(args)
        .env("RUST_LOG", "trace")
        .env("SWIFTDROP_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWIFTDROP_SERVER_RELAY", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Both pipes are drained while the child runs: a full pipe would stall its logging.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let mut guard = Killed(Some(child));
    let mut reply = None;
    if args == ["serve"] {
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "serve did not listen");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let rcpt = recipient.to_string();
        reply = Some(
            tokio::task::spawn_blocking(move || send_big(port, &rcpt, 10, false))
                .await
                .unwrap(),
        );
        let pid = guard.0.as_ref().unwrap().id();
        std::process::Command::new("kill")
            .arg(pid.to_string())
            .status()
            .unwrap();
    }
    let mut child = guard.0.take().unwrap();
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let out = format!("{}{}", stdout.join().unwrap(), stderr.join().unwrap());
    (out, reply)
}

/// Secrets never reach a log line or `check`'s output, even at log level trace: known wrong
/// credentials for the native API and S3 (refused, so every error path prints), and the
/// token of a working key (tempauth gives every client of one user the same token) while a
/// message is stored.
#[tokio::test]
async fn secrets_never_appear_in_logs_or_check_output() {
    const SWIFT_KEY: &str = "Wr0ng-swift-key-5c1f";
    const S3_SECRET: &str = "Wr0ng-s3-secret-9d2e";
    let swift = swift();
    let container = unique_container("secrets");
    let with = |mut vars: Vec<(String, String)>, name: &str, value: &str| {
        for (k, v) in &mut vars {
            if k.ends_with(name) {
                *v = value.to_string();
            }
        }
        vars
    };
    let swift_ok = swift_vars("OPS", "ops@example.com", swift.port, &container);
    let swift_bad = with(swift_ok.clone(), "_KEY", SWIFT_KEY);
    let s3_bad = with(
        s3_vars("BOX", "box@example.com", swift.port, &container),
        "_SECRET_ACCESS_KEY",
        S3_SECRET,
    );
    for (vars, recipient) in [
        (&swift_bad, "ops@example.com"),
        (&s3_bad, "box@example.com"),
    ] {
        let (check, _) = run_logged(&["check"], vars, recipient).await;
        assert!(check.contains("FAILED"), "{check}");
        let mut vars = vars.clone();
        vars.push(("SWIFTDROP_SERVER_STARTUP_CHECK".into(), "no".into()));
        // A refused write is tried again until store_timeout.
        vars.push(("SWIFTDROP_SERVER_STORE_TIMEOUT".into(), "4s".into()));
        let (serve, reply) = run_logged(&["serve"], &vars, recipient).await;
        let reply = reply.unwrap();
        assert!(reply.starts_with("451 4.3.0"), "{reply}");
        for out in [check, serve] {
            assert!(
                !out.contains(SWIFT_KEY),
                "the Swift key was printed:\n{out}"
            );
            assert!(
                !out.contains(S3_SECRET),
                "the S3 secret was printed:\n{out}"
            );
        }
    }
    let (serve, reply) = run_logged(&["serve"], &swift_ok, "ops@example.com").await;
    let reply = reply.unwrap();
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert!(serve.contains("authenticated to Swift"), "{serve}");
    let (token, _) = native_token(swift.port).await;
    assert!(!serve.contains(&token), "the token was printed:\n{serve}");
    assert!(!serve.contains("testing"), "the key was printed:\n{serve}");
}
