//! A private Postfix for tests, started and stopped (by PID) through
//! `tests/postfix/private-postfix.sh`, the same recipe the benchmark uses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{PATIENCE, free_port};

pub struct PrivatePostfix {
    pub dir: tempfile::TempDir,
    pub front_port: u16,
}

/// How the private Postfix is set up.
#[derive(Default)]
pub struct Options {
    /// Talk to the filter in lock-step with the client (no speed_adjust).
    pub lock_step: bool,
    /// Start an after-queue smtpd on this port (XFORWARD trusted from loopback).
    pub after_queue: Option<u16>,
    /// Deliver queued mail to this SMTP port instead of discarding it.
    pub deliver_to: Option<u16>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/postfix/private-postfix.sh")
}

impl PrivatePostfix {
    /// Starts Postfix with a front smtpd in front of the filter on `filter_port`;
    /// `speed_adjust` false makes Postfix talk to the filter in lock-step with its client.
    pub fn start(filter_port: u16, speed_adjust: bool) -> PrivatePostfix {
        PrivatePostfix::start_with(
            filter_port,
            Options {
                lock_step: !speed_adjust,
                ..Options::default()
            },
        )
    }

    /// Starts Postfix in front of the filter on `filter_port`, as `options` say.
    pub fn start_with(filter_port: u16, options: Options) -> PrivatePostfix {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed: run the test command from README.rst, which installs it"
        );
        let dir = crate::support::tempdir_with_mode("swiftdrop-postfix", 0o755);
        let front_port = free_port();
        let pf = PrivatePostfix { dir, front_port };
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("start")
            .arg(pf.dir.path())
            .arg(format!("{front_port}:{filter_port}"));
        if options.lock_step {
            cmd.arg("--lock-step");
        }
        if let Some(port) = options.after_queue {
            cmd.arg("--after-queue").arg(port.to_string());
        }
        if let Some(port) = options.deliver_to {
            cmd.arg("--deliver-to").arg(port.to_string());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "private-postfix.sh start: {}{}\nmaillog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.maillog()
        );
        pf
    }

    /// Starts the configuration that `dir/etc` already holds, with `settings` (main.cf
    /// `name = value` lines) applied; waits until every port in `ports` listens.
    pub fn start_from(
        dir: tempfile::TempDir,
        front_port: u16,
        ports: &[u16],
        settings: &[String],
    ) -> PrivatePostfix {
        let pf = PrivatePostfix { dir, front_port };
        let out = Command::new("bash")
            .arg(script())
            .arg("start-from")
            .arg(pf.dir.path())
            .args(ports.iter().map(u16::to_string))
            .arg("--")
            .args(settings)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "private-postfix.sh start-from: {}{}\nmaillog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.maillog()
        );
        pf
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/maillog")).unwrap_or_default()
    }

    /// Files in Postfix's queue folders (a message Postfix accepted sits in one of them).
    pub fn queued_files(&self) -> usize {
        [
            "maildrop", "incoming", "active", "deferred", "hold", "corrupt",
        ]
        .iter()
        .map(|q| walk_files(&self.dir.path().join("queue").join(q)))
        .sum()
    }

    /// Waits until `pattern` shows up in the mail log.
    pub fn wait_for_log(&self, pattern: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.maillog();
            if log.contains(pattern) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{pattern:?} not in maillog:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn walk_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { walk_files(&p) } else { 1 }
        })
        .sum()
}
