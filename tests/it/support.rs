//! Helpers shared by the integration tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use swiftdrop::config::Router;
use swiftdrop::config::{Config, ServerSettings};
use swiftdrop::filter::budget::MemoryBudget;
use swiftdrop::filter::deliver::Deliverer;
use swiftdrop::filter::session::Session;
use swiftdrop::store::Destination;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Upper bound on waiting for a reply, so that a broken server fails a test instead of
/// hanging it. Not a timing assertion: a healthy server answers in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Tests that load the machine hard (many processes on the shared Swift, gigabytes through
/// the server) take turns, so that one does not starve another's requests into timeouts on
/// a 2-core machine.
pub static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A configuration rooted in a fresh temporary directory.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl Setup {
    /// Configuration from `SWIFTDROP_*` pairs; `{dir}` in a value becomes the temporary
    /// directory. Without destinations it is the embedded catch-all at `{dir}/maildir`.
    pub fn new(vars: &[(&str, &str)]) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("swiftdrop-it")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_str().unwrap().to_string();
        // Defaults for tests; pass-through is off unless a test sets SWIFTDROP_SERVER_RELAY.
        let mut all: Vec<(String, String)> = vec![
            ("SWIFTDROP_DEFAULT_PATH".into(), format!("{root}/maildir")),
            ("SWIFTDROP_SERVER_LISTEN".into(), "127.0.0.1:0".into()),
            ("SWIFTDROP_SERVER_HOSTNAME".into(), "filter.test".into()),
            ("SWIFTDROP_SERVER_RELAY".into(), "off".into()),
        ];
        for (k, v) in vars {
            all.retain(|(name, _)| name != k);
            all.push((k.to_string(), v.replace("{dir}", &root)));
        }
        let config = Config::from_sources(None, all).expect("test configuration is valid");
        Setup { dir, config }
    }

    /// The catch-all default with these server settings.
    pub fn default_catch_all() -> Setup {
        Setup::new(&[])
    }

    pub fn settings(&self) -> Arc<ServerSettings> {
        Arc::new(self.config.server.clone())
    }

    pub fn destinations(&self) -> Vec<Destination> {
        Destination::open_all(&self.config.destinations).expect("destinations open")
    }

    pub fn deliverer(&self) -> Arc<Deliverer> {
        Arc::new(self.deliverer_with(self.destinations()))
    }

    pub fn deliverer_with(&self, destinations: Vec<Destination>) -> Deliverer {
        let relay = self.config.server.relay.map(|addr| {
            swiftdrop::filter::relay::Relay::new(
                addr,
                &self.config.server.hostname,
                self.config.server.store_timeout,
            )
        });
        Deliverer::new(
            Router::new(&self.config.destinations),
            destinations,
            relay,
            &self.config.server.hostname,
            self.config.server.store_timeout,
        )
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Files under `<maildir>/cur`, sorted by name, with their bytes.
    pub fn cur(&self, maildir: &str) -> Vec<(String, Vec<u8>)> {
        cur_files(&self.path(maildir))
    }

    /// How many files wait under `<maildir>/tmp` (staged or half-written).
    pub fn staged(&self, maildir: &str) -> usize {
        std::fs::read_dir(self.path(maildir).join("tmp")).map_or(0, |d| d.count())
    }
}

/// Files under `<maildir>/cur`, sorted by name, with their bytes.
pub fn cur_files(maildir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = match std::fs::read_dir(maildir.join("cur")) {
        Ok(entries) => entries
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Number of entries in a directory (0 when it does not exist).
pub fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Asserts that a stored file's name states its exact size and returns the size.
pub fn assert_size_in_name(name: &str, bytes: &[u8]) {
    let size: usize = name.rsplit_once(",S=").unwrap().1.parse().unwrap();
    assert_eq!(size, bytes.len(), "S= of {name}");
}

/// An SMTP conversation with a session over an in-memory pipe (no sockets).
pub struct Dialog {
    io: DuplexStream,
    buf: Vec<u8>,
    pub task: JoinHandle<std::io::Result<()>>,
    pub stop: watch::Sender<bool>,
}

impl Dialog {
    /// Starts a session for a client at `peer` and reads the greeting.
    pub async fn start(setup: &Setup, peer: &str) -> Dialog {
        Dialog::start_with(setup.settings(), setup.deliverer(), peer).await
    }

    /// A session with a memory budget of its own (`max_memory`).
    pub async fn start_with(
        settings: Arc<ServerSettings>,
        deliverer: Arc<Deliverer>,
        peer: &str,
    ) -> Dialog {
        let memory = MemoryBudget::new(settings.max_memory);
        Dialog::start_sharing(settings, deliverer, memory, peer).await
    }

    /// A session holding its message bytes within `memory`, shared with other sessions.
    pub async fn start_sharing(
        settings: Arc<ServerSettings>,
        deliverer: Arc<Deliverer>,
        memory: Arc<MemoryBudget>,
        peer: &str,
    ) -> Dialog {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (stop, stop_rx) = watch::channel(false);
        let peer: SocketAddr = peer.parse().unwrap();
        let task =
            tokio::spawn(Session::new(server, peer, settings, deliverer, memory, stop_rx).run());
        let mut dialog = Dialog {
            io: client,
            buf: Vec::new(),
            task,
            stop,
        };
        let greeting = dialog.reply().await;
        assert!(greeting.starts_with("220 filter.test"), "{greeting}");
        dialog
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.io.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Sends bytes unless the server has closed the connection (then false).
    pub async fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.io.write_all(bytes.as_ref()).await.is_ok()
    }

    /// Reads one complete reply; lines of a multi-line reply are joined with `\n`.
    /// Returns an empty string when the server closed the connection.
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = match self.line().await {
                Some(line) => line,
                None => return lines.join("\n"),
            };
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// The next reply if one comes within `wait`; `None` when none did (a reply that began
    /// stays buffered for the next read).
    pub async fn reply_within(&mut self, wait: std::time::Duration) -> Option<String> {
        tokio::time::timeout(wait, self.reply()).await.ok()
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(PATIENCE, self.io.read(&mut chunk))
                .await
                .expect("the server answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and asserts that the reply starts with `expected`.
    pub async fn command(&mut self, line: &str, expected: &str) -> String {
        self.send(format!("{line}\r\n")).await;
        let reply = self.reply().await;
        assert!(
            reply.starts_with(expected),
            "{line:?}: expected {expected:?}, got {reply:?}"
        );
        reply
    }

    /// EHLO, MAIL and one RCPT, each asserted positive.
    pub async fn envelope(&mut self, from: &str, to: &[&str]) {
        self.command("EHLO client.test", "250").await;
        self.command(&format!("MAIL FROM:<{from}>"), "250 2.1.0")
            .await;
        for rcpt in to {
            self.command(&format!("RCPT TO:<{rcpt}>"), "250 2.1.5")
                .await;
        }
    }

    /// Closes our side and waits for the session to end; returns what it still wrote.
    pub async fn close(mut self) -> String {
        self.io.shutdown().await.ok();
        let mut rest = String::new();
        while let Some(line) = self.line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        let _ = tokio::time::timeout(PATIENCE, self.task).await;
        rest
    }

    /// Waits for the server to close the connection; returns what it still wrote.
    pub async fn until_closed(mut self) -> String {
        let mut rest = String::new();
        while let Some(line) = self.line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    }
}

/// A temporary directory under /tmp with `mode`, for servers that run as other users
/// (Postfix needs to read its tree, smtp-sink writes as nobody).
pub fn tempdir_with_mode(prefix: &str, mode: u32) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A store that waits before every write: stands in for a store that hangs, to test the
/// deadline. Everything else goes straight to the real store inside.
#[derive(Debug)]
pub struct HangingStore {
    pub inner: Arc<dyn object_store::ObjectStore>,
    pub delay: Duration,
}

impl std::fmt::Display for HangingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hanging({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for HangingStore {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        tokio::time::sleep(self.delay).await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<
            'static,
            object_store::Result<object_store::path::Path>,
        >,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// A mount made for one test, unmounted when dropped.
pub struct Mount {
    pub target: PathBuf,
}

impl Mount {
    /// Runs `mount ARGS... TARGET` (ARGS ends with the source); panics with the reason when mounting is not permitted
    /// (the test suite runs as root, as CI does).
    pub fn new(args: &[&str], target: &Path) -> Mount {
        std::fs::create_dir_all(target).unwrap();
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount {args:?} {} failed (tests need root): {}",
            target.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount {
            target: target.to_path_buf(),
        }
    }

    pub fn remount(&self, options: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", options])
            .arg(&self.target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.target)
            .status();
    }
}

/// Postfix's `smtp-sink` as a downstream SMTP server, dumping each transaction to a file in
/// its own directory. Killed (by PID) when dropped.
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl SmtpSink {
    /// Starts smtp-sink with extra options (`-f .` rejects end of data with 5xx, `-r .`
    /// with 4xx, ...).
    pub fn start(options: &[&str]) -> SmtpSink {
        // smtp-sink drops to user nobody before it writes its dumps.
        let dir = tempdir_with_mode("swiftdrop-sink", 0o777);
        let port = free_port();
        let child = std::process::Command::new("smtp-sink")
            .args(["-u", "nobody", "-d"])
            .arg(dir.path().join("msg."))
            .args(options)
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .spawn()
            .expect("smtp-sink runs (Debian's postfix package)");
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "smtp-sink did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        SmtpSink { port, dir, child }
    }

    /// The dumped transactions, as text.
    pub fn dumps(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| {
                String::from_utf8_lossy(&std::fs::read(e.unwrap().path()).unwrap()).into_owned()
            })
            .collect();
        out.sort();
        out
    }

    /// Waits up to `PATIENCE` for a dump whose message ends with `last_line`. smtp-sink creates
    /// a dump file when the transaction starts and writes it out at the end of data, so a dump
    /// that merely exists may still be empty.
    pub async fn wait_for_dump_ending(&self, last_line: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(dump) = self
                .dumps()
                .into_iter()
                .find(|d| d.trim_end().ends_with(last_line))
            {
                return Some(dump);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for the tests' stand-ins (with the process's TLS provider installed).
pub fn http_client() -> reqwest::Client {
    swiftdrop::store::http_client().build().unwrap()
}

/// A message of `size` bytes: numbered lines, CRLF-ended.
pub fn message_of(size: usize) -> Vec<u8> {
    let mut message = b"Subject: large\r\n\r\n".to_vec();
    let mut i = 0;
    while message.len() < size {
        message.extend_from_slice(format!("line {i:08} of a large message\r\n").as_bytes());
        i += 1;
    }
    message
}
