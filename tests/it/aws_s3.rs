//! The S3 path against a second S3 implementation besides Swift's s3api: moto's server, which
//! follows AWS's behaviour where Swift's is lenient (it answers `411 Length Required` to a
//! bucket creation without `Content-Length`, and checks a `LocationConstraint` against the
//! region the request was signed for). tests/run.sh installs it (`TEST_MOTO_SERVER`); each
//! test starts its own on a free port and stops it when done.
//!
//! What is checked here: bucket creation in `us-east-1` and in another region, storing one
//! message into two destinations (staged, then copied into `cur/`), streaming a message of
//! 20 MiB in multipart uploads, and the queue's moves with four workers.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use crate::queue_support::Backend;

use crate::queue::four_workers_finish_each_message_once_with;
use crate::support::*;
use crate::swift_support::{ready_destinations, setup_with, unique_container};

const PEER: &str = "127.0.0.1:40200";

/// moto's S3 server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Moto {
    /// Starts `TEST_MOTO_SERVER` (`moto_server` on the PATH when unset) and waits until it
    /// answers.
    pub async fn start() -> Moto {
        let program = std::env::var("TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{program}: {e} (tests/run.sh installs moto's server and sets TEST_MOTO_SERVER)"
                )
            });
        let mut moto = Moto { child, port };
        // Until it answers as moto does (not some other listener on a port taken meanwhile).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("{program} exited before it answered: {status}");
            }
            let client = swiftdrop::store::http_client().build().unwrap();
            if let Ok(answer) = client.get(format!("http://127.0.0.1:{port}/")).send().await {
                // ListBuckets: what an S3 answers to `GET /`.
                let text = answer.text().await.unwrap_or_default();
                if text.contains("ListAllMyBucketsResult") {
                    return moto;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{program} did not answer on {port}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// `SWIFTDROP_<SECTION>_*` for an S3 destination on this server, signed for `region`.
    pub fn vars(
        &self,
        section: &str,
        recipients: &str,
        bucket: &str,
        region: &str,
    ) -> Vec<(String, String)> {
        let v = |o: &str, val: &str| (format!("SWIFTDROP_{section}_{o}"), val.to_string());
        vec![
            v("RECIPIENTS", recipients),
            v("BACKEND", "s3"),
            v("ENDPOINT", &format!("http://127.0.0.1:{}", self.port)),
            v("ALLOW_HTTP", "yes"),
            v("REGION", region),
            v("ACCESS_KEY_ID", "testing"),
            v("SECRET_ACCESS_KEY", "testing"),
            v("BUCKET", bucket),
            v("CREATE_CONTAINER", "yes"),
        ]
    }

    /// A plain GET of `path` on the server (moto lets anyone list buckets and read their
    /// location): the test's own look, independent of swiftdrop's client.
    async fn get(&self, path: &str) -> (reqwest::StatusCode, Vec<u8>) {
        let response = swiftdrop::store::http_client()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/{path}", self.port))
            .send()
            .await
            .unwrap();
        (response.status(), response.bytes().await.unwrap().to_vec())
    }

    /// The bytes of `key` in `bucket`, read with object_store's own S3 client (an object
    /// needs a signed request).
    async fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", self.port))
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .with_bucket_name(bucket)
            .build()
            .unwrap();
        let path = object_store::path::Path::from(key);
        store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    /// The keys under `prefix` in `bucket`.
    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (status, body) = self
            .get(&format!("{bucket}?list-type=2&prefix={prefix}"))
            .await;
        assert!(status.is_success(), "{status}");
        let text = String::from_utf8(body).unwrap();
        text.split("<Key>")
            .skip(1)
            .map(|rest| rest.split("</Key>").next().unwrap().to_string())
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `swiftdrop check` creates a missing bucket with the request AWS documents: in `us-east-1`
/// and, with its `LocationConstraint`, in another region; a second check finds both.
#[tokio::test]
async fn check_creates_buckets_in_any_region() {
    let moto = Moto::start().await;
    let mut vars = moto.vars("OPS", "ops@example.com", "swiftdrop-east", "us-east-1");
    vars.extend(moto.vars("DEV", "@dev.example.com", "swiftdrop-west", "eu-west-1"));
    for round in ["creates", "finds"] {
        let out = Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
            .arg("check")
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{round}: {stdout}");
        assert!(
            stdout.contains("ok: [OPS]") && stdout.contains("ok: [DEV]"),
            "{round}: {stdout}"
        );
    }
    let (status, body) = moto.get("swiftdrop-west?location").await;
    assert!(status.is_success(), "{status}");
    assert!(
        String::from_utf8_lossy(&body).contains("eu-west-1"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = moto.get("swiftdrop-east").await;
    assert!(status.is_success(), "{status}");
}

/// One message into two destinations (each staged under tmp/, then copied into cur/) and a
/// message of 20 MiB streamed in multipart uploads: each object holds exactly the bytes
/// sent, and nothing is left under tmp/.
#[tokio::test(flavor = "multi_thread")]
async fn stores_stages_and_streams_exact_bytes() {
    let moto = Moto::start().await;
    let (ops, dev) = (unique_container("ops"), unique_container("dev"));
    let mut vars = moto.vars("OPS", "ops@example.com", &ops, "us-east-1");
    vars.extend(moto.vars("DEV", "@dev.example.com", &dev, "us-east-1"));
    vars.push(("SWIFTDROP_SERVER_STREAM_THRESHOLD".into(), "1MiB".into()));
    let setup = setup_with(&vars);
    let deliverer = Arc::new(setup.deliverer_with(ready_destinations(&setup).await));
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.command("EHLO postfix.test", "250").await;

    d.command("MAIL FROM:<ci@example.org>", "250").await;
    d.command("RCPT TO:<ops@example.com>", "250").await;
    d.command("RCPT TO:<a@dev.example.com>", "250").await;
    d.command("DATA", "354").await;
    d.send("Subject: both\r\n\r\nCaf\u{e9}\r\n..dot\r\n.\r\n")
        .await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");

    let large = message_of(20 << 20);
    d.command("MAIL FROM:<ci@example.org>", "250").await;
    d.command("RCPT TO:<ops@example.com>", "250").await;
    d.command("DATA", "354").await;
    d.send(&large).await;
    d.send(".\r\n").await;
    let reply = d.reply().await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");

    let small = |delivered: &str| {
        format!(
            "Return-Path: <ci@example.org>\r\nDelivered-To: {delivered}\r\nSubject: both\r\n\r\nCaf\u{e9}\r\n.dot\r\n"
        )
        .into_bytes()
    };
    let mut streamed =
        b"Return-Path: <ci@example.org>\r\nDelivered-To: ops@example.com\r\n".to_vec();
    streamed.extend_from_slice(&large);

    let mut in_ops = Vec::new();
    for key in moto.keys(&ops, "cur/").await {
        in_ops.push(moto.object(&ops, &key).await);
    }
    in_ops.sort_by_key(Vec::len);
    assert_eq!(in_ops.len(), 2);
    assert_eq!(
        String::from_utf8_lossy(&in_ops[0]),
        String::from_utf8_lossy(&small("ops@example.com")),
        "the staged copy is exact"
    );
    assert!(in_ops[1] == streamed, "the streamed message is exact");
    let in_dev = moto.keys(&dev, "cur/").await;
    assert_eq!(in_dev.len(), 1);
    assert_eq!(
        moto.object(&dev, &in_dev[0]).await,
        small("a@dev.example.com")
    );
    for bucket in [&ops, &dev] {
        assert_eq!(moto.keys(bucket, "tmp/").await, Vec::<String>::new());
    }
}

/// The queue's moves (copies that replace metadata, conditional on the source) on an S3 that
/// behaves as AWS does: four workers finish every message once.
#[tokio::test(flavor = "multi_thread")]
async fn four_workers_finish_each_message_once() {
    let moto = Moto::start().await;
    let bucket = unique_container("queue");
    let vars = moto.vars("DEFAULT", "*", &bucket, "us-east-1");
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    four_workers_finish_each_message_once_with(Backend::S3, 200, &extra).await;
}
