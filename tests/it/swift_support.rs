//! The real Swift that `tests/run.sh` starts (`tests/swift/swift-aio.sh`), and helpers to
//! use it: destination variables, private proxies a test may stop, a native-API client
//! independent of swiftdrop's own, and the Keystone v3 stand-in.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};

use reqwest::header::HeaderMap;

use crate::support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/swift/swift-aio.sh");

/// The Swift all-in-one of this test run.
#[derive(Debug, Clone)]
pub struct Swift {
    /// Directory given to `swift-aio.sh start`.
    pub dir: PathBuf,
    /// Port of its main proxy.
    pub port: u16,
}

/// The shared Swift, from `TEST_SWIFT_DIR` and `TEST_SWIFT_PORT` (set by tests/run.sh;
/// not `SWIFTDROP_*`, which would be read as configuration).
pub fn swift() -> Swift {
    let (Ok(dir), Ok(port)) = (
        std::env::var("TEST_SWIFT_DIR"),
        std::env::var("TEST_SWIFT_PORT"),
    ) else {
        panic!(
            "no test Swift: run the suite with tests/run.sh, or start one with \
             `tests/swift/swift-aio.sh start DIR PORT` and set TEST_SWIFT_DIR and \
             TEST_SWIFT_PORT"
        );
    };
    Swift {
        dir: dir.into(),
        port: port.parse().expect("TEST_SWIFT_PORT is a port"),
    }
}

/// A container name no other test uses.
pub fn unique_container(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `SWIFTDROP_<SECTION>_*` for a native Swift destination (auth v1) on `port`.
pub fn swift_vars(
    section: &str,
    recipients: &str,
    port: u16,
    container: &str,
) -> Vec<(String, String)> {
    let v = |o: &str, val: &str| (format!("SWIFTDROP_{section}_{o}"), val.to_string());
    vec![
        v("RECIPIENTS", recipients),
        v("AUTHURL", &format!("http://127.0.0.1:{port}/auth/v1.0")),
        v("USER", "test:tester"),
        v("KEY", "testing"),
        v("CONTAINER", container),
        v("CREATE_CONTAINER", "yes"),
    ]
}

/// `SWIFTDROP_<SECTION>_*` for an S3 destination on Swift's s3api at `port`.
pub fn s3_vars(section: &str, recipients: &str, port: u16, bucket: &str) -> Vec<(String, String)> {
    let v = |o: &str, val: &str| (format!("SWIFTDROP_{section}_{o}"), val.to_string());
    vec![
        v("RECIPIENTS", recipients),
        v("BACKEND", "s3"),
        v("ENDPOINT", &format!("http://127.0.0.1:{port}")),
        v("ALLOW_HTTP", "yes"),
        v("ACCESS_KEY_ID", "test:tester"),
        v("SECRET_ACCESS_KEY", "testing"),
        v("BUCKET", bucket),
        v("CREATE_CONTAINER", "yes"),
    ]
}

/// A `Setup` from owned variable pairs.
pub fn setup_with(vars: &[(String, String)]) -> Setup {
    let refs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Setup::new(&refs)
}

/// Opens the destinations of `setup` and creates their containers.
pub async fn ready_destinations(setup: &Setup) -> Vec<swiftdrop::store::Destination> {
    let destinations = setup.destinations();
    let failures = swiftdrop::store::check_containers(&destinations).await;
    assert!(failures.is_empty(), "{failures:?}");
    destinations
}

fn script(args: &[&str]) {
    let status = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "swift-aio.sh {args:?} failed");
}

/// A proxy of its own (with its own memcached) in front of the shared storage, so that a
/// test can stop it or drop its tokens. Removed on drop.
pub struct PrivateProxy {
    swift: Swift,
    name: String,
    /// Port of this proxy.
    pub port: u16,
}

impl PrivateProxy {
    pub fn start(name: &str) -> PrivateProxy {
        let swift = swift();
        let port = free_port_pair();
        script(&[
            "add-proxy",
            swift.dir.to_str().unwrap(),
            name,
            &port.to_string(),
        ]);
        PrivateProxy {
            swift,
            name: name.to_string(),
            port,
        }
    }

    fn run(&self, command: &str) {
        script(&[command, self.swift.dir.to_str().unwrap(), &self.name]);
    }

    pub fn stop(&self) {
        self.run("stop-proxy");
    }

    pub fn restart(&self) {
        self.run("start-proxy");
    }

    pub fn restart_memcached(&self) {
        self.run("restart-memcached");
    }
}

impl Drop for PrivateProxy {
    fn drop(&mut self) {
        self.run("remove-proxy");
    }
}

/// A port whose successor is free too (proxy and its memcached).
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A tempauth token and storage URL, fetched by plain HTTP (not through swiftdrop).
pub async fn native_token(port: u16) -> (String, String) {
    let response = swiftdrop::store::http_client()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{port}/auth/v1.0"))
        .header("X-Auth-User", "test:tester")
        .header("X-Auth-Key", "testing")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let h = response.headers();
    (
        h["x-auth-token"].to_str().unwrap().to_string(),
        h["x-storage-url"].to_str().unwrap().to_string(),
    )
}

/// Names of the objects under `prefix` in `container`, read with the native API.
pub async fn native_list(port: u16, container: &str, prefix: &str) -> Vec<String> {
    let (token, url) = native_token(port).await;
    let response = swiftdrop::store::http_client()
        .build()
        .unwrap()
        .get(format!("{url}/{container}?format=json&prefix={prefix}"))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let list: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
    list.iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .collect()
}

/// An object's headers and bytes, read with the native API.
pub async fn native_get(port: u16, container: &str, name: &str) -> (HeaderMap, Vec<u8>) {
    let (token, url) = native_token(port).await;
    let encoded = encoded_name(name);
    let response = swiftdrop::store::http_client()
        .build()
        .unwrap()
        .get(format!("{url}/{container}/{encoded}"))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {container}/{name}");
    let headers = response.headers().clone();
    (headers, response.bytes().await.unwrap().to_vec())
}

/// The Keystone v3 stand-in (tests/swift/keystone-standin.py) in front of the shared Swift.
pub struct Keystone {
    child: Child,
    pub port: u16,
}

impl Keystone {
    pub async fn start() -> Keystone {
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/swift/keystone-standin.py"
            ))
            .arg(port.to_string())
            .arg(swift().port.to_string())
            .spawn()
            .unwrap();
        wait_for_port(port).await;
        Keystone { child, port }
    }

    /// Tokens issued so far.
    pub async fn issued(&self) -> u64 {
        let body: serde_json::Value = swiftdrop::store::http_client()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/count", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["issued"].as_u64().unwrap()
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listing of `container` under `prefix` once it holds `expected` names, or as it is
/// after 30 s (for what swiftdrop removes in the background).
pub async fn settled_listing(
    port: u16,
    container: &str,
    prefix: &str,
    expected: usize,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let names = native_list(port, container, prefix).await;
        if names.len() == expected || std::time::Instant::now() > deadline {
            return names;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The names listed in `container` under `prefix` that a HEAD still finds.
pub async fn existing(port: u16, container: &str, prefix: &str) -> Vec<String> {
    let (token, url) = native_token(port).await;
    let client = swiftdrop::store::http_client().build().unwrap();
    let mut found = Vec::new();
    for name in native_list(port, container, prefix).await {
        let encoded = encoded_name(&name);
        let response = client
            .head(format!("{url}/{container}/{encoded}"))
            .header("X-Auth-Token", &token)
            .send()
            .await
            .unwrap();
        if response.status() != 404 {
            found.push(name);
        }
    }
    found
}

/// An object name for a native API URL: each path segment percent-encoded.
fn encoded_name(name: &str) -> String {
    name.split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}
