//! The process itself under faults: `swiftdrop serve` (the binary) killed with SIGKILL in
//! the middle of DATA, and stopped with SIGTERM while fifty transactions are in flight, each
//! with a Maildir and a Swift destination and large messages streaming. What the clients
//! were told is checked against what the stores hold afterwards.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::*;
use crate::swift_support::*;

/// A `swiftdrop serve` with a Maildir destination for `local@example.com` and a Swift one
/// for `ops@example.com`, streaming past 256 KiB.
struct Serve {
    child: Child,
    port: u16,
    maildir: std::path::PathBuf,
    container: String,
}

impl Serve {
    fn start(dir: &std::path::Path, container: &str, extra: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let maildir = dir.join("maildir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_swiftdrop"));
        cmd.env_clear()
            .arg("serve")
            .env("SWIFTDROP_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWIFTDROP_SERVER_RELAY", "off")
            .env("SWIFTDROP_SERVER_STREAM_THRESHOLD", "256KiB")
            .env("SWIFTDROP_LOCAL_BACKEND", "maildir")
            .env("SWIFTDROP_LOCAL_RECIPIENTS", "local@example.com")
            .env("SWIFTDROP_LOCAL_PATH", &maildir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let swift = swift();
        for (k, v) in swift_vars("OPS", "ops@example.com", swift.port, container) {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Serve {
            child,
            port,
            maildir,
            container: container.to_string(),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `patience` for the process to exit; its exit code (-1 for a signal).
    async fn exit_code(&mut self, patience: Duration) -> i32 {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "swiftdrop did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Maildir's `cur/` files and the Swift container's `cur/` objects, with bytes.
    async fn stored(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let local = cur_files(&self.maildir)
            .into_iter()
            .map(|(_, b)| b)
            .collect();
        let port = swift().port;
        let mut remote = Vec::new();
        for name in native_list(port, &self.container, "cur/").await {
            remote.push(native_get(port, &self.container, &name).await.1);
        }
        (local, remote)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SMTP client connection, raw.
struct Client {
    io: BufReader<TcpStream>,
}

impl Client {
    async fn connect(port: u16) -> Client {
        let io = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        let mut client = Client { io };
        let greeting = client.reply().await;
        assert!(greeting.starts_with("220"), "{greeting}");
        client
    }

    /// The next reply's last line; empty when the connection closed first.
    async fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(PATIENCE * 3, self.io.read_line(&mut line))
                .await
                .expect("a reply in time");
            match read {
                Ok(0) | Err(_) => return String::new(),
                Ok(_) if line.as_bytes().get(3) == Some(&b'-') => continue,
                Ok(_) => return line.trim_end().to_string(),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.io.get_mut().write_all(bytes).await.is_ok()
    }

    /// EHLO, MAIL, both recipients and DATA, each answered as expected.
    async fn begin_data(&mut self) {
        for (command, code) in [
            ("EHLO client.test\r\n", "250"),
            ("MAIL FROM:<ci@example.org>\r\n", "250"),
            ("RCPT TO:<local@example.com>\r\n", "250"),
            ("RCPT TO:<ops@example.com>\r\n", "250"),
            ("DATA\r\n", "354"),
        ] {
            assert!(self.send(command.as_bytes()).await);
            let reply = self.reply().await;
            assert!(reply.starts_with(code), "{command}: {reply}");
        }
    }
}

/// A message of about `size` bytes that names itself by `id`.
fn message(id: &str, size: usize) -> Vec<u8> {
    let mut body = format!("Message-ID: <{id}@example.org>\r\nSubject: {id}\r\n\r\n").into_bytes();
    let line = format!("{id} 0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    while body.len() < size {
        body.extend_from_slice(line.as_bytes());
    }
    body
}

/// How many of `stored` end with `body` (the stored copy has the trace headers before it).
fn copies(stored: &[Vec<u8>], body: &[u8]) -> usize {
    stored.iter().filter(|s| s.ends_with(body)).count()
}

/// SIGKILL while a 16 MiB message is streaming to both stores (12 MiB sent: two 5 MiB parts
/// on their way or stored as segments): the client never sees a 250 and neither `cur/`
/// holds anything; after a restart the client's resend is stored once.
#[tokio::test]
async fn sigkill_mid_data_leaves_nothing_in_cur_and_the_resend_is_stored_once() {
    let _turn = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let container = unique_container("killed");
    let mut serve = Serve::start(dir.path(), &container, &[]);
    wait_for_port(serve.port).await;
    let body = message("killed", 16 << 20);

    let mut client = Client::connect(serve.port).await;
    client.begin_data().await;
    assert!(client.send(&body[..12 << 20]).await);
    // Parts are on their way to both stores when the process dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    serve.signal("KILL");
    assert_eq!(serve.exit_code(PATIENCE).await, -1);
    client.send(&body[body.len() / 2..]).await;
    client.send(b".\r\n").await;
    let reply = client.reply().await;
    assert!(
        !reply.starts_with("250"),
        "a killed filter answered {reply}"
    );
    let (local, remote) = serve.stored().await;
    assert!(
        local.is_empty(),
        "{} files in the Maildir's cur/",
        local.len()
    );
    assert!(
        remote.is_empty(),
        "{} objects in Swift's cur/",
        remote.len()
    );

    // The client tries again once the filter is back.
    let mut serve = Serve::start(dir.path(), &container, &[]);
    wait_for_port(serve.port).await;
    let mut client = Client::connect(serve.port).await;
    client.begin_data().await;
    client.send(&body).await;
    client.send(b".\r\n").await;
    let reply = client.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let (local, remote) = serve.stored().await;
    assert_eq!((local.len(), copies(&local, &body)), (1, 1));
    assert_eq!((remote.len(), copies(&remote, &body)), (1, 1));
    serve.signal("TERM");
    assert_eq!(serve.exit_code(PATIENCE).await, 0);
}

/// SIGTERM with fifty transactions in DATA: the forty whose data ends at once are stored
/// (250); the ten that end after deliveries may no longer begin (6 MiB each, streaming,
/// a 5 MiB part sent to each store before the signal) get `451 4.3.2` and leave nothing:
/// their uploads are aborted. The process waits for all of them and for its clean-up,
/// then exits 0 with nothing left under `tmp/` and no segment in Swift.
#[tokio::test]
async fn sigterm_with_fifty_transactions_in_flight_ends_each_with_250_or_451() {
    let _turn = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let container = unique_container("drained");
    // Deliveries may begin for drain - (store + 10 s) = 8 s after SIGTERM. Ten messages
    // streaming to two destinations reserve 10 x 2 x 15 MiB of upload parts.
    let drain = [
        ("SWIFTDROP_SERVER_STORE_TIMEOUT", "20s"),
        ("SWIFTDROP_SERVER_DRAIN_TIMEOUT", "38s"),
        ("SWIFTDROP_SERVER_MAX_MEMORY", "400MiB"),
    ];
    let mut serve = Serve::start(dir.path(), &container, &drain);
    wait_for_port(serve.port).await;

    let mut clients = Vec::new();
    for i in 0..50 {
        let late = i % 5 == 0;
        let size = if late { 6 << 20 } else { 2000 };
        let body = message(&format!("inflight{i}"), size);
        let mut client = Client::connect(serve.port).await;
        client.begin_data().await;
        let first = if late { 11 << 19 } else { body.len() / 2 };
        assert!(client.send(&body[..first]).await);
        clients.push((i, client, body, first));
    }
    serve.signal("TERM");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut client, body, first) in clients {
        tasks.spawn(async move {
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            client.send(&body[first..]).await;
            client.send(b".\r\n").await;
            (i, client.reply().await, body)
        });
    }
    let mut stored_bodies = Vec::new();
    let mut refused_bodies = Vec::new();
    while let Some(ended) = tasks.join_next().await {
        let (i, reply, body) = ended.unwrap();
        if i % 5 == 0 {
            assert!(reply.starts_with("451 4.3.2"), "late {i}: {reply}");
            refused_bodies.push(body);
        } else {
            assert!(reply.starts_with("250 2.0.0"), "{i}: {reply}");
            stored_bodies.push(body);
        }
    }
    assert_eq!(serve.exit_code(Duration::from_secs(60)).await, 0);

    let (local, remote) = serve.stored().await;
    assert_eq!((local.len(), remote.len()), (40, 40));
    for body in &stored_bodies {
        assert_eq!(copies(&local, body), 1, "Maildir");
        assert_eq!(copies(&remote, body), 1, "Swift");
    }
    for body in &refused_bodies {
        assert_eq!(copies(&local, body) + copies(&remote, body), 0);
    }
    assert_eq!(count_entries(&serve.maildir.join("tmp")), 0);
    let port = swift().port;
    let staged = settled_listing(port, &container, "tmp/", 0).await;
    assert!(staged.is_empty(), "staged objects left: {staged:?}");
    let segments = format!("{container}_segments");
    let left = existing(port, &segments, "").await;
    assert!(left.is_empty(), "segments left: {left:?}");
}
