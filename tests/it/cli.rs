//! The built `swiftdrop` binary: `check`, configuration errors, signals, JSON logs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn swiftdrop() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swiftdrop"));
    // Only what a test sets: no SWIFTDROP_* from the developer's shell.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A queue command whose reader leaves early (`| head`) ends as `ls` does, by SIGPIPE,
/// quietly: no panic, no "Broken pipe" (exit 101 before).
#[test]
fn a_command_whose_reader_leaves_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let cur = dir.path().join("maildir/cur");
    std::fs::create_dir_all(&cur).unwrap();
    for i in 0..50 {
        std::fs::write(
            cur.join(format!("17965000{i:02}.M1P1Q{i}.host,S=12")),
            b"Subject: x\r\n\r\nx\r\n",
        )
        .unwrap();
    }
    for args in [
        &["queue", "list", "cur"][..],
        &["queue", "stats"],
        &["queue", "list", "cur", "--json"],
    ] {
        let mut child = swiftdrop()
            .env("SWIFTDROP_DEFAULT_PATH", dir.path().join("maildir"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
        assert!(
            out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
            "{args:?}: {:?}",
            out.status
        );
    }
}

/// Run from a directory without the Maildir, a queue command says that it made a new, empty
/// one, with its absolute path, instead of showing an empty queue without a word.
#[test]
fn a_queue_command_says_where_the_mail_is() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(swiftdrop().current_dir(dir.path()).args(["queue", "stats"]));
    assert_eq!(code, 0, "{err}");
    let maildir = dir.path().join("maildir");
    assert!(
        err.contains(&format!(
            "WARN swiftdrop: there was no Maildir at {}: an empty one is made",
            maildir.display()
        )),
        "{err}"
    );
    assert!(out.starts_with("destination [DEFAULT] Maildir("), "{out}");
    assert!(
        !err.contains('\x1b'),
        "colour codes in a log that is no terminal: {err}"
    );
    // The second time it exists: no warning; -v names it.
    let (_, _, err) = run(swiftdrop()
        .current_dir(dir.path())
        .args(["queue", "list", "-v"]));
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("destination [DEFAULT] Maildir("), "{err}");
}

/// On the embedded default (a `*` destination) without RELAY_DOMAINS, Postfix would refuse
/// every recipient: postfix-config refuses, names the variable and writes nothing.
#[test]
fn postfix_config_refuses_a_catch_all_without_relay_domains() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("postfix");
    let (code, out, err) = run(swiftdrop()
        .env("MYHOSTNAME", "mx.example.com")
        .arg("postfix-config")
        .arg("--output")
        .arg(&output));
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("configuration error: RELAY_DOMAINS: "),
        "{err}"
    );
    assert!(!output.exists(), "nothing written");
    let (code, out, err) = run(swiftdrop()
        .env("MYHOSTNAME", "mx.example.com")
        .env("RELAY_DOMAINS", "example.com")
        .arg("postfix-config")
        .arg("--output")
        .arg(&output));
    assert_eq!(code, 0, "{out}{err}");
    let main = std::fs::read_to_string(output.join("main.cf")).unwrap();
    assert!(main.contains("relay_domains = example.com\n"), "{main}");
}

#[test]
fn check_passes_for_writable_destinations_and_leaves_no_probe() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(swiftdrop()
        .arg("check")
        .env("SWIFTDROP_A_RECIPIENTS", "a@example.com")
        .env("SWIFTDROP_A_PATH", dir.path().join("a"))
        .env("SWIFTDROP_B_RECIPIENTS", "@example.org")
        .env("SWIFTDROP_B_PATH", dir.path().join("b")));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok: ")).count(),
        2,
        "{out}"
    );
    // The Maildir holds its three folders, empty: the probe left nothing.
    for maildir in ["a", "b"] {
        let mut folders: Vec<String> = std::fs::read_dir(dir.path().join(maildir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        folders.sort();
        assert_eq!(folders, ["cur", "new", "tmp"], "{maildir}");
        for folder in &folders {
            assert_eq!(count_entries(&dir.path().join(maildir).join(folder)), 0);
        }
    }
}

#[test]
fn check_names_each_failing_destination_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, b"a file, not a folder").unwrap();
    let (code, out, _) = run(swiftdrop()
        .arg("check")
        .env("SWIFTDROP_GOOD_RECIPIENTS", "a@example.com")
        .env("SWIFTDROP_GOOD_PATH", dir.path().join("good"))
        .env("SWIFTDROP_BAD_RECIPIENTS", "b@example.com")
        .env("SWIFTDROP_BAD_PATH", blocker.join("maildir")));
    assert_eq!(code, 1);
    let failed: Vec<&str> = out.lines().filter(|l| l.starts_with("FAILED: ")).collect();
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0].starts_with("FAILED: [BAD] cannot open Maildir"),
        "{out}"
    );
    assert!(out.contains("ok: [GOOD]"), "{out}");
}

#[test]
fn invalid_configuration_stops_startup_naming_the_variable_or_line() {
    let (code, _, err) = run(swiftdrop()
        .arg("serve")
        .env("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE", "huge"));
    assert_eq!(code, 1);
    assert!(
        err.contains("SWIFTDROP_SERVER_MAX_MESSAGE_SIZE: \"huge\" is not a size"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ini = dir.path().join("swiftdrop.ini");
    std::fs::write(
        &ini,
        "[DEFAULT]\npath = /tmp/x\n\n[ops]\nrecipients = ops@\n",
    )
    .unwrap();
    let (code, _, err) = run(swiftdrop().arg("check").arg("--config").arg(&ini));
    assert_eq!(code, 1);
    assert!(
        err.contains("swiftdrop.ini:5: [ops] recipients: \"ops@\""),
        "{err}"
    );

    let (code, _, err) = run(swiftdrop()
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("missing.ini")));
    assert_eq!(code, 1);
    assert!(err.contains("missing.ini: cannot read"), "{err}");
}

/// A running `swiftdrop serve`, killed if a test fails before stopping it.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Serve {
        let port = free_port();
        let child = swiftdrop()
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "swiftdrop serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Serve { child, port }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "swiftdrop did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status.code().unwrap_or(-1), err)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp(port: u16, script: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(script.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = BufReader::new(s).read_to_string(&mut out);
    out
}

#[test]
fn embedded_default_stores_in_dot_maildir_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let out = smtp(
        serve.port,
        "EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<anyone@anywhere.example>\r\nDATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n",
    );
    assert!(out.contains("250 2.0.0 Ok: stored as cur/"), "{out}");
    serve.signal("TERM");
    let (code, log) = serve.wait();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("no destination configured"), "{log}");
    assert!(log.contains("maildir"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a log that is no terminal: {log}"
    );
    // The catch-all takes every recipient: no word of relaying.
    assert!(log.contains("nothing is relayed"), "{log}");
    assert!(!log.contains("are relayed"), "{log}");
    let files = cur_files(&dir.path().join("maildir"));
    assert_eq!(files.len(), 1);
    assert!(files[0].1.ends_with(b"Subject: t\r\n\r\nhello\r\n"));
}

#[test]
fn sigint_answers_421_to_idle_sessions_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &[]);
    let mut idle = BufReader::new(TcpStream::connect(("127.0.0.1", serve.port)).unwrap());
    idle.get_ref().set_read_timeout(Some(PATIENCE)).unwrap();
    let mut line = String::new();
    idle.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"));
    serve.signal("INT");
    line.clear();
    idle.read_line(&mut line).unwrap();
    assert!(line.starts_with("421 4.3.2"), "{line}");
    let (code, _) = serve.wait();
    assert_eq!(code, 0);
}

#[test]
fn json_log_has_one_line_per_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--log-format", "json"]);
    let out = smtp(
        serve.port,
        "EHLO c\r\nXFORWARD ADDR=192.0.2.7 NAME=mx.example.net PORT=4242 HELO=origin.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
    );
    assert!(out.contains("250 2.0.0 Ok: stored"), "{out}");
    serve.signal("TERM");
    let (code, log) = serve.wait();
    assert_eq!(code, 0);
    let stored: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "stored")
        .collect();
    assert_eq!(stored.len(), 1, "{log}");
    let f = &stored[0]["fields"];
    assert_eq!(f["client"], "mx.example.net[192.0.2.7]:4242");
    assert_eq!(f["from"], "a@example.org");
    assert_eq!(f["size"], 3);
    // Lists are JSON arrays, not text holding Rust's debug output (in a build with
    // .cargo/config.toml's cfg; one with a RUSTFLAGS of its own writes them as text).
    if cfg!(tracing_unstable) {
        assert_eq!(
            f["to"],
            serde_json::json!(["b@example.com", "c@example.com"])
        );
        let keys = f["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{f}");
        assert!(keys[0].as_str().unwrap().starts_with("cur/"), "{f}");
    } else {
        assert_eq!(f["to"], "[\"b@example.com\", \"c@example.com\"]");
    }
    assert!(f["store_ms"].is_u64());
    assert!(f["reply"].as_str().unwrap().starts_with("250 2.0.0"));
}
