//! The Mattermost v4 stand-in (tests/mattermost/mattermost-standin.py: checks every request
//! as the API reference documents it), and a private slapd (tests/ldap/slapd.sh); both
//! stopped on drop.

use std::process::{Child, Command};

use serde_json::{Value, json};

use crate::support::*;

/// A running stand-in; its directory: users alice, bob and carol, bots `jira-bot` and
/// `splunk-bot`, team `ops` with channel `alerts`, webhook `/hooks/hook123`.
pub struct Mattermost {
    child: Child,
    pub port: u16,
}

impl Mattermost {
    /// Started with the server limits `MaxPostSize` and `MaxFileSize` (`announced` in the
    /// client configuration, else only enforced with 413).
    pub async fn start(max_post: usize, max_file: usize, announced: bool) -> Mattermost {
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/mattermost/mattermost-standin.py"
            ))
            .args([
                port.to_string(),
                max_post.to_string(),
                max_file.to_string(),
                u8::from(announced).to_string(),
            ])
            .spawn()
            .unwrap();
        wait_for_port(port).await;
        Mattermost { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn get(&self, what: &str) -> Value {
        http_client()
            .get(format!("{}/_test/{what}", self.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every post made, in order (with `bot`, `to`, `files` and `channel` added).
    pub async fn posts(&self) -> Vec<Value> {
        self.get("posts").await.as_array().unwrap().clone()
    }

    /// Every API request answered (faults included).
    pub async fn log(&self) -> Vec<Value> {
        self.get("log").await.as_array().unwrap().clone()
    }

    /// What broke the documented contract: must stay empty.
    pub async fn violations(&self) -> Vec<Value> {
        self.get("violations").await.as_array().unwrap().clone()
    }

    /// Answers `status` (with `headers`) to `times` requests `method path*` after `skip`.
    pub async fn fault(
        &self,
        method: &str,
        path: &str,
        status: u16,
        skip: u32,
        times: u32,
        headers: Value,
    ) {
        let fault = json!([{
            "method": method, "path": path, "status": status, "skip": skip,
            "times": times, "headers": headers,
        }]);
        self.control("faults", fault).await;
    }

    /// As [`Mattermost::fault`], but each request is done first and its answer then lost
    /// (a proxy's 502, a timeout after the server acted).
    pub async fn fault_after(&self, method: &str, path: &str, status: u16, skip: u32, times: u32) {
        let fault = json!([{
            "method": method, "path": path, "status": status, "skip": skip, "times": times,
            "after": true,
        }]);
        self.control("faults", fault).await;
    }

    /// Serves the next request `method path*` (after `skip`) as usual, with `headers` added.
    pub async fn headers_on(&self, method: &str, path: &str, skip: u32, headers: Value) {
        let fault = json!([{
            "method": method, "path": path, "status": 0, "skip": skip, "times": 1,
            "pass": true, "headers": headers,
        }]);
        self.control("faults", fault).await;
    }

    /// Sets the server's `MaxPostSize` from now on.
    pub async fn set_max_post_size(&self, chars: usize) {
        self.control("limits", json!({ "MaxPostSize": chars }))
            .await;
    }

    /// Adds users `<name>@example.com` to the directory.
    pub async fn add_users(&self, names: &[String]) {
        self.control("users", json!({ "names": names })).await;
    }

    /// Changes the server's settings (see the stand-in: `ShowEmailAddress`,
    /// `RestrictedView`, `Invisible`, `EnableFileAttachments`, `MaxImageResolution`,
    /// `PluginRejects`).
    pub async fn settings(&self, settings: Value) {
        self.control("settings", settings).await;
    }

    /// Deletes a post, as a user would.
    pub async fn delete_post(&self, id: &str) {
        self.control("delete-post", json!({ "id": id })).await;
    }

    async fn control(&self, what: &str, body: Value) {
        let response = http_client()
            .post(format!("{}/_test/{what}", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{what}: {}",
            response.status()
        );
    }
}

impl Drop for Mattermost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SLAPD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ldap/slapd.sh");

/// A private slapd with the test directory of tests/ldap/slapd.sh: users alice, bob,
/// carol, mallory (and svc-reader, password `reader`), groups jira-users (alice, mallory),
/// splunk-users (bob), mattermost-blacklist (mallory).
pub struct Slapd {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Slapd {
    pub fn start() -> Slapd {
        let dir = tempfile::Builder::new()
            .prefix("swiftdrop-slapd")
            .tempdir()
            .unwrap();
        let port = free_port();
        let status = Command::new("bash")
            .args([SLAPD, "start"])
            .arg(dir.path())
            .arg(port.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "slapd.sh start");
        Slapd { port, dir }
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SLAPD, "stop"])
            .arg(self.dir.path())
            .status();
    }
}
