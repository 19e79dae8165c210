//! A private Postfix for tests: configuration in a temporary directory, loopback ports,
//! no systemd and nothing in /etc/postfix changed. Stopped (by PID) when dropped.
//!
//! Front smtpd on `front_port` hands every transaction to the before-queue filter on
//! `filter_port` (`smtpd_proxy_filter`). Mail for example.com that the filter accepted is
//! then discarded by Postfix (the filter stored it); nothing else leaves the machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{PATIENCE, free_port};

pub struct PrivatePostfix {
    pub dir: tempfile::TempDir,
    pub front_port: u16,
    pub filter_port: u16,
}

const MASTER_SERVICES: &str = "\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

impl PrivatePostfix {
    /// Starts Postfix with its front smtpd in front of a filter on `filter_port`.
    /// `speed_adjust` is Postfix's `smtpd_proxy_options` (receive all, then replay).
    pub fn start(filter_port: u16, speed_adjust: bool) -> PrivatePostfix {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "Postfix is not installed: run the test command from README.rst, which installs it"
        );
        let dir = tempfile::Builder::new()
            .prefix("swiftdrop-postfix")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        // Postfix's own processes (user postfix) must be able to read the tree.
        set_mode(root, 0o755);
        for sub in ["etc", "log", "data", "queue"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            set_mode(&root.join(sub), 0o755);
        }
        // master.lock lives in the data directory and is created by the postfix user.
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(root.join("data"))
            .status()
            .unwrap();
        assert!(chown.success(), "chown postfix {}/data", root.display());
        let front_port = free_port();
        let r = root.display();
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {r}/queue
data_directory = {r}/data
maillog_file = {r}/log/maillog
maillog_file_prefixes = {r}/log
mail_owner = postfix
myhostname = pfxtest.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = example.com
relay_transport = discard:stored by the filter
default_transport = error:nothing leaves this test
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
smtputf8_enable = yes
message_size_limit = 60000000
"
        );
        let options = if speed_adjust { "speed_adjust" } else { "" };
        let master_cf = format!(
            "127.0.0.1:{front_port} inet n - n - - smtpd
  -o smtpd_proxy_filter=127.0.0.1:{filter_port}
  -o smtpd_proxy_options={options}
  -o smtpd_proxy_timeout=100s
{MASTER_SERVICES}"
        );
        std::fs::write(root.join("etc/main.cf"), main_cf).unwrap();
        std::fs::write(root.join("etc/master.cf"), master_cf).unwrap();
        let pf = PrivatePostfix {
            dir,
            front_port,
            filter_port,
        };
        pf.postfix(&["check"]);
        pf.postfix(&["start"]);
        pf
    }

    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn postfix(&self, args: &[&str]) {
        let out = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.etc())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix {args:?}: {}{}\nmaillog:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.maillog()
        );
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

    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PrivatePostfix {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = Command::new("/usr/sbin/postfix")
            .arg("-c")
            .arg(self.etc())
            .arg("stop")
            .output();
        // `postfix stop` returns before master exits: wait on its pid, then insist.
        if let Some(pid) = pid {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
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
