//! Helpers for the queue tests: a private Redis per test, a queue on each backend (Maildir
//! with the local lock, Swift's native and S3 APIs with Redis), stored messages, and the
//! `swiftdrop queue` command and `queue_worker` example as real processes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use object_store::{Attribute, Attributes, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use swiftdrop::config::Config;
use swiftdrop::queue::{Queue, State, StoredCopy};
use swiftdrop::store::key::MessageKey;

use crate::support::*;
use crate::swift_support::{s3_vars, swift, swift_vars, unique_container};

/// A private `redis-server` without persistence on a free port, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("swiftdrop-redis")
            .tempdir_in("/tmp")
            .unwrap();
        let port = free_port();
        let child = spawn_redis(dir.path(), port);
        Redis { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL: nothing is saved) and starts a new one, empty, on the
    /// same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_redis(self.dir.path(), self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_redis(dir: &Path, port: u16) -> Child {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server runs (tests/run.sh installs it)");
    let deadline = Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A Redis primary with one replica, watched by three Sentinels (Debian's `redis-sentinel`)
/// under the service name `queue`; every process is killed on drop.
pub struct Sentinels {
    primary: Child,
    replica: Child,
    sentinels: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    pub fn start() -> Sentinels {
        let dir = tempfile::Builder::new()
            .prefix("swiftdrop-sentinel")
            .tempdir_in("/tmp")
            .unwrap();
        let (primary_port, replica_port) = (free_port(), free_port());
        let primary = spawn_redis(dir.path(), primary_port);
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir_all(&replica_dir).unwrap();
        let replica = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &replica_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--replicaof", "127.0.0.1", &primary_port.to_string()])
            .arg("--dir")
            .arg(&replica_dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let mut sentinels = Vec::new();
        let mut ports = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                     sentinel monitor queue 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds queue 1000\n\
                     sentinel failover-timeout queue 4000\n\
                     sentinel parallel-syncs queue 1\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-sentinel runs (tests/run.sh installs it)");
            let deadline = Instant::now() + PATIENCE;
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "redis-sentinel did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            sentinels.push(child);
            ports.push(port);
        }
        // The replica has synced and the Sentinels have found it.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = Command::new("redis-cli")
                .args(["-p", &ports[0].to_string(), "sentinel", "replicas", "queue"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&replica_port.to_string()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels never saw the replica"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Sentinels {
            primary,
            replica,
            sentinels,
            ports,
            _dir: dir,
        }
    }

    /// The lock setting that reaches the primary through the Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/queue/0", hosts.join(","))
    }

    /// Kills the primary (SIGKILL): the Sentinels promote the replica.
    pub fn kill_primary(&mut self) {
        let _ = self.primary.kill();
        let _ = self.primary.wait();
    }

    /// The port of the primary the Sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.ports[0].to_string()])
            .args(["sentinel", "get-master-addr-by-name", "queue"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in self
            .sentinels
            .iter_mut()
            .chain([&mut self.primary, &mut self.replica])
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the messages are stored and who holds the leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A Maildir with the local lock.
    Maildir,
    /// Swift's native API with Redis.
    Swift,
    /// Swift's S3 API with Redis.
    S3,
}

/// One queue: its configuration as variables, and the processes that use it.
pub struct QueueSetup {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub vars: Vec<(String, String)>,
    pub redis: Option<Redis>,
}

impl QueueSetup {
    /// A fresh queue (a new Maildir or container, its own Redis) with a short lease and
    /// poll interval; `extra` overrides or adds `SWIFTDROP_*` settings.
    pub fn new(backend: Backend, extra: &[(&str, &str)]) -> QueueSetup {
        let dir = tempfile::Builder::new()
            .prefix("swiftdrop-queue")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().display().to_string();
        let mut vars: Vec<(String, String)> = vec![
            ("SWIFTDROP_SERVER_HOSTNAME".into(), "worker.test".into()),
            ("SWIFTDROP_SERVER_RELAY".into(), "off".into()),
            // Above this VM's Swift outliers (single requests of up to ~1.2 s when idle).
            ("SWIFTDROP_QUEUE_LEASE".into(), "5s".into()),
            ("SWIFTDROP_QUEUE_POLL_INTERVAL".into(), "200ms".into()),
        ];
        let redis = match backend {
            Backend::Maildir => {
                vars.push(("SWIFTDROP_DEFAULT_PATH".into(), format!("{root}/maildir")));
                None
            }
            Backend::Swift | Backend::S3 => {
                let swift = swift();
                let container = unique_container("queue");
                vars.extend(match backend {
                    Backend::Swift => swift_vars("DEFAULT", "*", swift.port, &container),
                    _ => s3_vars("DEFAULT", "*", swift.port, &container),
                });
                let redis = Redis::start();
                vars.push(("SWIFTDROP_QUEUE_LOCK".into(), redis.url()));
                Some(redis)
            }
        };
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_string(), v.replace("{dir}", &root)));
        }
        QueueSetup {
            backend,
            dir,
            vars,
            redis,
        }
    }

    pub fn config(&self) -> Config {
        Config::from_sources(None, self.vars.clone()).expect("test configuration is valid")
    }

    /// The queue, its container created.
    pub async fn queue(&self) -> Queue {
        let config = self.config();
        let queue = Queue::open(&config, "DEFAULT").expect("queue opens");
        // The shared Swift all-in-one of this VM stops answering for many seconds now and
        // then under the whole suite's load: a second try, not a failed test, for setup.
        let mut tries = 0;
        while let Err(e) = queue.destination().ensure_container().await {
            tries += 1;
            assert!(tries < 3, "container exists: {e}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        queue
    }

    /// Every copy of `name`, as the test observes it. The shared Swift of this VM stops
    /// answering for many seconds now and then under the suite's load: the test's own look
    /// is tried again then (what the queue does under such a stall is what tests assert).
    pub async fn copies(&self, name: &str) -> Vec<StoredCopy> {
        let queue = self.queue().await;
        let mut tries = 0;
        loop {
            match queue.copies(name).await {
                Ok(copies) => return copies,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 3, "copies of {name}: {e}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// Stores `n` messages under `cur/` as the filter does (its key format; on object
    /// stores its `sha256` metadata), `concurrency` at a time. Returns their names.
    pub async fn store(&self, n: usize) -> Vec<String> {
        let queue = self.queue().await;
        let store = queue.destination().store.clone();
        let remote = queue.destination().remote;
        let mut names = Vec::with_capacity(n);
        let mut writes = Vec::new();
        for i in 0..n {
            let body = message(i);
            let key = MessageKey::new("filter.test", body.len() as u64);
            names.push(key.file_name());
            let store = store.clone();
            writes.push(async move {
                let mut options = PutOptions::default();
                if remote {
                    let mut attributes = Attributes::new();
                    attributes.insert(
                        Attribute::Metadata("sha256".into()),
                        hex(&Sha256::digest(&body)).into(),
                    );
                    options.attributes = attributes;
                }
                // The shared Swift of this VM stalls for many seconds under the suite's
                // load: the test's own setup tries again (same key, so no second copy).
                let path = object_store::path::Path::from(key.cur_path());
                let payload = PutPayload::from(body);
                let mut tries = 0;
                while let Err(e) = store
                    .put_opts(&path, payload.clone(), options.clone())
                    .await
                {
                    tries += 1;
                    assert!(tries < 3, "stored: {e:?}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
        }
        let mut writes = futures::stream::iter(writes).buffer_unordered(16);
        use futures::StreamExt;
        while writes.next().await.is_some() {}
        names
    }

    /// The names under `state`.
    pub async fn names(&self, state: State) -> Vec<String> {
        let queue = self.queue().await;
        let entries = queue.list(state, usize::MAX).await.expect("lists");
        entries.into_iter().map(|e| e.name).collect()
    }

    /// Where every copy of every message is: state → names.
    pub async fn everything(&self) -> BTreeMap<State, Vec<String>> {
        let mut all = BTreeMap::new();
        for state in State::ALL {
            let mut names = self.names(state).await;
            names.sort();
            all.insert(state, names);
        }
        all
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // RUST_LOG of the test run, to debug one: warnings by default.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(self.dir.path());
        cmd
    }

    /// `swiftdrop queue <args>` with `env` added: (status, stdout, stderr).
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let out = self
            .command(Path::new(env!("CARGO_BIN_EXE_swiftdrop")))
            .arg("queue")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `swiftdrop queue <args>` with `env` added, running: its output piped.
    pub fn cli_child(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        self.command(Path::new(env!("CARGO_BIN_EXE_swiftdrop")))
            .arg("queue")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `swiftdrop queue claim --json ...`: the claim's JSON, or `None` (status 3).
    pub fn claim(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut all = vec!["claim", "--json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.cli(&all, &[]);
        // Warnings (a skipped message, a lost race) show with a failing test.
        eprint!("{err}");
        match code {
            Some(0) => Some(serde_json::from_str(&out).expect("claim prints JSON")),
            Some(3) => {
                assert!(
                    out.is_empty(),
                    "nothing on stdout when nothing is claimable: {out}"
                );
                None
            }
            other => panic!("claim exited {other:?}: {err}"),
        }
    }

    /// Starts `queue_worker <args>`; its stdout lines are collected.
    pub fn worker(&self, args: &[&str]) -> Worker {
        self.worker_with(args, &[])
    }

    pub fn worker_with(&self, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let mut child = self
            .command(&example("queue_worker"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let collected = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        // Read stderr as it comes, so a chatty worker never blocks on a full pipe.
        let mut stderr = child.stderr.take().unwrap();
        let errors = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
            err
        });
        Worker {
            child,
            lines,
            reader: Some(reader),
            errors: Some(errors),
        }
    }
}

/// The path of an example binary built beside the tested one.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_swiftdrop"))
        .parent()
        .unwrap()
        .join("examples")
        .join(name)
}

/// The bytes of test message `i`: every message differs.
pub fn message(i: usize) -> Vec<u8> {
    format!(
        "Return-Path: <alerts@example.org>\r\nDelivered-To: ops@example.com\r\nFrom: alerts@example.org\r\nSubject: alert {i}\r\nMessage-ID: <{i}.{}@example.org>\r\n\r\nbody of message {i}\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running `queue_worker`.
pub struct Worker {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    errors: Option<std::thread::JoinHandle<String>>,
}

impl Worker {
    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a printed line starts with `prefix`; returns it.
    pub fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.starts_with(prefix)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "worker never printed {prefix:?}; it printed {:?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the worker to exit (within `PATIENCE` plus `extra`); returns its lines.
    pub fn finish(mut self, extra: Duration) -> (std::process::ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + PATIENCE + extra;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("worker did not exit; it printed {:?}", self.lines());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let err = self
            .errors
            .take()
            .map(|errors| errors.join().unwrap())
            .unwrap_or_default();
        let lines = self.lines();
        (status, lines, err)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the process `pid` is stopped (SIGSTOP, as a `:stop` fail-point sends).
pub fn wait_stopped(pid: u32) {
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + PATIENCE;
    // The state field follows the command name in parentheses: `T` when stopped.
    while !std::fs::read_to_string(&stat)
        .unwrap_or_default()
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
    {
        assert!(Instant::now() < deadline, "process {pid} never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (e.g. `CONT`) to the process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The names in lines `<event> <name> ...`.
pub fn events<'a>(lines: &'a [String], event: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            (parts.next() == Some(event))
                .then(|| parts.next())
                .flatten()
        })
        .collect()
}
