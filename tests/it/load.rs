//! Load on the built binary: many concurrent large messages, each stored and relayed, and
//! the server's memory stays within `max_memory`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mail_send::SmtpClient;
use tokio::io::AsyncWriteExt;

use crate::support::*;

const MIB: usize = 1 << 20;
const CLIENTS: usize = 64;
const MESSAGE: usize = 20 * MIB;
/// The pod the default `max_memory` (192 MiB) is sized for.
const POD: u64 = 256 * MIB as u64;

/// Sends one message of `body` (with its own Subject) until it is accepted; returns how
/// many tries were refused with a 4xx.
async fn send_until_accepted(addr: SocketAddr, n: usize, body: Arc<Vec<u8>>) -> usize {
    let head = format!("Subject: load {n}\r\n\r\n");
    let size = head.len() + body.len();
    let mut refused = 0;
    loop {
        let mut c = SmtpClient::connect(addr, Duration::from_secs(300))
            .await
            .expect("the server accepts connections");
        assert_eq!(c.read().await.unwrap().code, 220);
        c.ehlo("load.test").await.unwrap();
        let mut reply = c
            .cmd(format!("MAIL FROM:<load@example.org> SIZE={size}\r\n"))
            .await
            .unwrap();
        for rcpt in [
            "ours@example.com",
            &format!("elsewhere{n}@elsewhere.example"),
        ] {
            if reply.code == 250 {
                reply = c.cmd(format!("RCPT TO:<{rcpt}>\r\n")).await.unwrap();
            }
        }
        if reply.code == 250 {
            reply = c.cmd("DATA\r\n").await.unwrap();
            if reply.code == 354 {
                c.stream.write_all(head.as_bytes()).await.unwrap();
                c.stream.write_all(&body).await.unwrap();
                c.stream.write_all(b".\r\n").await.unwrap();
                reply = c.read().await.unwrap();
            }
        }
        let _ = c.quit().await;
        match reply.code {
            250 => return refused,
            400..=499 => refused += 1,
            _ => panic!("message {n}: unexpected reply {reply:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50 + (n as u64 * 7) % 100)).await;
    }
}

/// Peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// 64 clients send a 20 MiB message each at once, with a stored and a relayed recipient
/// (1.25 GiB in all, five times the pod): every message is stored and relayed whole, those
/// that found no room waited for it (none refused), and the server's peak RSS stays within
/// the pod the default `max_memory` is sized for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_messages_keep_memory_within_the_budget() {
    let _turn = HEAVY.lock().await;
    let dir = tempdir_with_mode("swiftdrop-load", 0o755);
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let sink = SmtpSink::start(&[]);
    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
        .arg("serve")
        .env_clear()
        .env("SWIFTDROP_OURS_RECIPIENTS", "ours@example.com")
        .env("SWIFTDROP_OURS_PATH", dir.path().join("maildir"))
        .env("SWIFTDROP_SERVER_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWIFTDROP_SERVER_HOSTNAME", "load.test")
        .env("SWIFTDROP_SERVER_RELAY", format!("127.0.0.1:{}", sink.port))
        .env("SWIFTDROP_SERVER_SPOOL_DIR", &spool)
        // Longer than the whole run: a session waits for room rather than refuse.
        .env("SWIFTDROP_SERVER_MEMORY_WAIT", "15min")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut body = Vec::with_capacity(MESSAGE + 64);
    let mut i = 0;
    while body.len() < MESSAGE {
        body.extend_from_slice(format!("line {i:08} of a large message under load\r\n").as_bytes());
        i += 1;
    }
    let body = Arc::new(body);
    let started = Instant::now();
    let refused = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let body = Arc::clone(&body);
            let refused = Arc::clone(&refused);
            tokio::spawn(async move {
                let r = send_until_accepted(addr, n, body).await;
                refused.fetch_add(r, Ordering::Relaxed);
            })
        })
        .collect();
    for client in clients {
        tokio::time::timeout(Duration::from_secs(900), client)
            .await
            .expect("every message is accepted in the end")
            .unwrap();
    }
    let elapsed = started.elapsed();
    let peak = peak_rss(server.id());
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    println!(
        "load: {CLIENTS} x {} MiB stored and relayed in {:.1} s, {} tries refused with 4xx, peak RSS {} MiB (max_memory 192 MiB, pod {} MiB)",
        MESSAGE / MIB,
        elapsed.as_secs_f64(),
        refused.load(Ordering::Relaxed),
        peak / MIB as u64,
        POD / MIB as u64
    );
    assert!(peak < POD, "peak RSS {} MiB", peak / MIB as u64);
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "every session waited for room in max_memory instead of refusing"
    );

    // Every message stored once, whole; relayed once, whole; no spool file left.
    let stored = cur_files(&dir.path().join("maildir"));
    assert_eq!(stored.len(), CLIENTS);
    let mut subjects: Vec<usize> = stored
        .iter()
        .map(|(name, bytes)| {
            assert_size_in_name(name, bytes);
            assert!(bytes.ends_with(&body), "{name}: the body arrived whole");
            let at = memchr_subject(bytes);
            at.expect("a Subject line")
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, (0..CLIENTS).collect::<Vec<_>>());
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), CLIENTS);
    let body_lf = String::from_utf8(body.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    for dump in &dumps {
        // smtp-sink ends its dump with an empty line of its own.
        assert!(
            dump.ends_with(&(body_lf.clone() + "\n")),
            "the relayed body arrived whole"
        );
    }
    assert_eq!(count_entries(&spool), 0);
}

/// The number in a stored message's `Subject: load N` line.
fn memchr_subject(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(&bytes[..bytes.len().min(512)]).ok()?;
    let line = text.lines().find(|l| l.starts_with("Subject: load "))?;
    line["Subject: load ".len()..].trim().parse().ok()
}
