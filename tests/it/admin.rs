//! The admin listener against running processes: `serve`'s metrics move as mail flows and
//! its readiness follows the store (a Maildir moved away and back); the worker's metrics and
//! readiness; the queue's web view in a real headless Chromium (tests/admin/browse.py:
//! Selenium, Debian's chromium and chromium-driver), whose Requeue button moves a failed
//! message back to `cur/`; values escaped; read-only without the token.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use object_store::ObjectStoreExt;
use swiftdrop::queue::{ClaimOptions, Outcome, State};

use crate::queue_support::*;
use crate::support::*;

const TOKEN: &str = "an-admin-token-for-tests";

/// A process (`serve` or the worker) with its admin listener on `admin`; killed on drop.
struct Running {
    child: Child,
    admin: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// `swiftdrop serve` over `setup`'s queue, checks every second, with `extra` settings.
    async fn serve(setup: &QueueSetup, extra: &[(&str, &str)]) -> (Running, u16) {
        let (port, admin) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
            .env_clear()
            .env("RUST_LOG", "warn")
            .envs(setup.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SWIFTDROP_SERVER_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWIFTDROP_SERVER_ADMIN_LISTEN", admin.to_string())
            .env("SWIFTDROP_SERVER_READY_MAX_AGE", "3s")
            .envs(extra.iter().copied())
            .arg("serve")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port).await;
        wait_for_port(admin).await;
        (Running { child, admin }, port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    /// POSTs a form as a browser does; the status.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> u16 {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        http_client()
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = http_client().get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Waits until `/readyz` answers `status`; its text.
    async fn ready_is(&self, status: u16) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (now, text) = self.get("/readyz").await;
            if now == status {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz stays {now}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of the sample `name{labels}` in `/metrics`, if it is there.
    async fn sample(&self, sample: &str) -> Option<f64> {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap())
    }

    /// The value of the sample, which must be there.
    async fn metric(&self, sample: &str) -> f64 {
        self.sample(sample)
            .await
            .unwrap_or_else(|| panic!("{sample} is not in /metrics"))
    }

    /// Waits until the sample reaches `value`.
    async fn metric_is(&self, sample: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let now = self.sample(sample).await;
            if now == Some(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sample} stays {now:?}, not {value}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `/readyz` says `words`; its text.
    async fn ready_says(&self, words: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (_, text) = self.get("/readyz").await;
            if text.contains(words) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz never says {words:?}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Sends one message through the filter on `port`; its reply to the end of data.
async fn send(port: u16, to: &str) -> String {
    let mut client = mail_send::SmtpClientBuilder::new("127.0.0.1", port)
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .unwrap();
    let sent = client
        .send(mail_send::smtp::message::Message::new(
            "alerts@example.org",
            vec![to],
            &b"Subject: metrics\r\n\r\nhello\r\n"[..],
        ))
        .await;
    match sent {
        Ok(_) => "250".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn serve_metrics_move_with_the_mail_and_readiness_with_the_store() {
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let (running, port) = Running::serve(&setup, &[]).await;
    assert_eq!(running.get("/healthz").await, (200, "ok\n".into()));
    let ready = running.ready_is(200).await;
    assert!(ready.contains("store [DEFAULT]: ok"), "{ready}");

    assert_eq!(send(port, "ops@example.com").await, "250");
    running
        .metric_is("swiftdrop_smtp_transactions_total{kind=\"2xx\"}", 1.0)
        .await;
    let m = |s: &'static str| running.metric(s);
    assert_eq!(
        m("swiftdrop_store_write_duration_seconds_count{destination=\"DEFAULT\"}").await,
        1.0
    );
    assert!(m("swiftdrop_smtp_received_bytes_total").await > 20.0);
    assert!(m("swiftdrop_smtp_connections_total{kind=\"accepted\"}").await >= 1.0);
    assert_eq!(
        m("swiftdrop_memory_limit_bytes").await,
        (192u64 << 20) as f64
    );
    // The message's memory given back, its session closed.
    running
        .metric_is("swiftdrop_memory_in_use_bytes", 0.0)
        .await;
    running
        .metric_is("swiftdrop_smtp_connections_open", 0.0)
        .await;
    // A name that is not an address (a web page's DNS rebinding) is refused.
    let rebound = http_client()
        .get(running.url("/queue"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 421);
    // Metrics by a DNS name (a Prometheus target) are fine.
    let scraped = http_client()
        .get(running.url("/metrics"))
        .header("host", "swiftdrop.monitoring.svc:9187")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status().as_u16(), 200);

    // The Maildir moved away: not ready, and a message gets 451 and counts as a failure.
    let maildir = setup.dir.path().join("maildir");
    let away = setup.dir.path().join("maildir.away");
    std::fs::rename(&maildir, &away).unwrap();
    let not_ready = running.ready_is(503).await;
    assert!(not_ready.contains("store [DEFAULT]: FAILED"), "{not_ready}");
    let refused = send(port, "ops@example.com").await;
    assert!(refused.contains("451"), "{refused}");
    running
        .metric_is(
            "swiftdrop_store_write_failures_total{destination=\"DEFAULT\"}",
            1.0,
        )
        .await;
    assert_eq!(
        m("swiftdrop_smtp_transactions_total{kind=\"4xx\"}").await,
        1.0
    );
    // Back: ready again.
    std::fs::rename(&away, &maildir).unwrap();
    running.ready_is(200).await;

    // The Kubernetes example's probes and scrape path are real endpoints of this listener,
    // on the port its setting gives.
    let manifest = include_str!("../../examples/deploy/kubernetes.yaml");
    let paths = probe_paths(deployment(manifest, "swiftdrop"));
    assert_eq!(paths, ["/metrics", "/readyz", "/healthz"], "{manifest}");
    for path in paths {
        assert_eq!(running.get(path).await.0, 200, "{path}");
    }
    assert!(manifest.contains("SWIFTDROP_SERVER_ADMIN_LISTEN: \"0.0.0.0:9187\""));
    assert!(manifest.contains("- name: admin\n              containerPort: 9187\n"));
}

/// The Deployment named `name` in a manifest of several documents.
fn deployment<'a>(manifest: &'a str, name: &str) -> &'a str {
    manifest
        .split("\n---\n")
        .find(|doc| {
            doc.contains("kind: Deployment") && doc.contains(&format!("\n  name: {name}\n"))
        })
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

/// The paths a manifest's probes and scrape annotation ask for, in order.
fn probe_paths(manifest: &str) -> Vec<&str> {
    manifest
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("path: ")
                .or_else(|| l.strip_prefix("prometheus.io/path: "))
        })
        .collect()
}

#[tokio::test]
async fn the_worker_counts_claims_finishes_and_actions_and_is_ready_with_its_lock_and_sinks() {
    let sink = SmtpSink::start(&[]);
    let redis = Redis::start();
    let setup = QueueSetup::new(
        Backend::Maildir,
        &[
            ("SWIFTDROP_QUEUE_LOCK", &redis.url()),
            ("SWIFTDROP_SERVER_QUEUE_STATS_INTERVAL", "1s"),
        ],
    );
    let names = setup.store(2).await;
    let rules = setup.dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        format!(
            "remote-smtp: 127.0.0.1:{}\nmanagers:\n  - name: alerts\n    messages-we-want:\n      from: '@example.org'\n    rules:\n      - name: all\n        actions: [mailto:oncall@example.com]\n",
            sink.port
        ),
    )
    .unwrap();
    let admin = free_port();
    let child = Command::new(example("dequeue"))
        .env_clear()
        .env("RUST_LOG", "warn")
        .envs(setup.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("SWIFTDROP_SERVER_READY_MAX_AGE", "3s")
        .args(["--config", rules.to_str().unwrap(), "--admin-listen"])
        .arg(admin.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let running = Running { child, admin };
    wait_for_port(admin).await;
    let ready = running.ready_is(200).await;
    assert!(ready.contains("store [DEFAULT]: ok"), "{ready}");
    assert!(ready.contains("queue lock [DEFAULT]: ok"), "{ready}");
    // The Kubernetes example's worker probes and scrape path are this listener's, on the
    // port its arguments give.
    let manifest = deployment(
        include_str!("../../examples/deploy/kubernetes.yaml"),
        "swiftdrop-worker",
    );
    let paths = probe_paths(manifest);
    assert_eq!(paths, ["/metrics", "/readyz", "/healthz"], "{manifest}");
    for path in paths {
        assert_eq!(running.get(path).await.0, 200, "{path}");
    }
    assert!(
        manifest.contains("\"--admin-listen\", \"0.0.0.0:9188\""),
        "{manifest}"
    );
    assert!(manifest.contains("- name: admin\n              containerPort: 9188\n"));
    assert!(ready.contains("sink mail (remote-smtp): ok"), "{ready}");
    running
        .metric_is("swiftdrop_worker_finished_total{kind=\"done\"}", 2.0)
        .await;
    assert_eq!(running.metric("swiftdrop_worker_claims_total").await, 2.0);
    assert_eq!(
        running
            .metric("swiftdrop_action_duration_seconds_count{sink=\"mail\"}")
            .await,
        2.0
    );
    assert_eq!(
        running.metric("swiftdrop_worker_lease_losses_total").await,
        0.0
    );
    running
        .metric_is(
            "swiftdrop_queue_messages{destination=\"DEFAULT\",state=\"done\"}",
            2.0,
        )
        .await;
    assert_eq!(setup.names(State::Done).await.len(), names.len());
    assert!(
        running
            .sample("swiftdrop_queue_stats_timestamp_seconds{destination=\"DEFAULT\"}")
            .await
            .is_some()
    );
    // The SMTP server and the lock engine gone: not ready, saying which.
    drop(sink);
    running.ready_says("sink mail (remote-smtp): FAILED").await;
    drop(redis);
    running.ready_says("queue lock [DEFAULT]: FAILED").await;
    // Failing past ready_max_age (3 s here): not ready.
    let text = running.ready_is(503).await;
    assert!(text.contains("sink mail (remote-smtp): FAILED"), "{text}");
}

/// A failed message whose subject and reason hold HTML: the web view in a headless
/// Chromium shows it escaped, and its Requeue button (token and confirmation given) moves it
/// back to `cur/`. Screenshots of each page are kept in target/admin-screenshots and named
/// in the test's output. Without the token the view is read-only.
#[tokio::test]
async fn the_web_view_requeues_a_failed_message_in_a_real_browser() {
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let body = b"Return-Path: <alerts@example.org>\r\nDelivered-To: ops@example.com\r\nFrom: alerts@example.org\r\nSubject: <script>window.swiftdropInjected = true</script>disk full\r\n\r\n<img src=\"http://203.0.113.9/pixel.png\"> body\r\n";
    let key = swiftdrop::store::key::MessageKey::new("filter.test", body.len() as u64);
    let name = key.file_name();
    queue
        .destination()
        .store
        .put(
            &object_store::path::Path::from(key.cur_path()),
            body.to_vec().into(),
        )
        .await
        .unwrap();
    let mut claim = queue
        .claim(&ClaimOptions::default())
        .await
        .unwrap()
        .unwrap();
    claim
        .finish(Outcome::Failed {
            reason: "sink said <b>no</b>".into(),
        })
        .await
        .unwrap();

    // Read-only: no form, and a forged POST is refused.
    let (read_only, _) = Running::serve(&setup, &[]).await;
    let (_, page) = read_only
        .get(&format!("/queue/DEFAULT/message?key=failed/{name}"))
        .await;
    assert!(!page.contains("id=\"requeue\""), "{page}");
    let forged = read_only
        .post(
            "/queue/DEFAULT/requeue",
            &[("key", &name), ("token", TOKEN), ("confirm", "yes")],
        )
        .await;
    assert_eq!(forged, 403);
    drop(read_only);

    let (running, _) = Running::serve(&setup, &[("SWIFTDROP_SERVER_ADMIN_TOKEN", TOKEN)]).await;
    let response = http_client()
        .get(running.url(&format!("/queue/DEFAULT/message?key=failed/{name}")))
        .send()
        .await
        .unwrap();
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let page = response.text().await.unwrap();
    assert!(
        page.contains("&lt;script&gt;window.swiftdropInjected"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("sink said &lt;b&gt;no&lt;"), "{page}");
    // A wrong token moves nothing.
    // A wrong token (of the right length) moves nothing; nor does a missing confirmation.
    let wrong = "an-admin-token-for-test5";
    assert_eq!(wrong.len(), TOKEN.len());
    let refused = running
        .post(
            "/queue/DEFAULT/requeue",
            &[("key", &name), ("token", wrong), ("confirm", "yes")],
        )
        .await;
    assert_eq!(refused, 403);
    let unconfirmed = running
        .post(
            "/queue/DEFAULT/requeue",
            &[("key", &name), ("token", TOKEN)],
        )
        .await;
    assert_eq!(unconfirmed, 400);
    // Purge from the web: done/ and failed/ only, an hour old at least.
    for (state, older_than, status) in [
        ("cur", "30d", 400),
        ("failed", "1s", 400),
        ("done", "1h", 200),
    ] {
        let fields = [
            ("state", state),
            ("older_than", older_than),
            ("token", TOKEN),
            ("confirm", "yes"),
        ];
        assert_eq!(
            running.post("/queue/DEFAULT/purge", &fields).await,
            status,
            "{state} {older_than}"
        );
    }
    assert_eq!(running.get("/queue/NOPE/cur").await.0, 404);
    assert_eq!(
        running.get("/queue/DEFAULT/message?key=../etc").await.0,
        400
    );
    assert_eq!(setup.names(State::Failed).await, vec![name.clone()]);

    // Kept for a look after the run (target/ is the build's own scratch space).
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/admin-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/admin/browse.py"
        ))
        .arg(running.url(""))
        .args(["failed", TOKEN])
        .arg(&shots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let walked: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("screenshots: {}", walked["screenshots"]);
    assert_eq!(walked["scripted"], false, "{walked}");
    assert_eq!(
        walked["elements"],
        serde_json::json!({"script": 0, "img": 0}),
        "{walked}"
    );
    assert_eq!(
        walked["literal"], true,
        "the subject is shown as text: {walked}"
    );
    assert!(
        walked["outcome"]
            .as_str()
            .unwrap()
            .starts_with("requeued to cur/"),
        "{walked}"
    );
    for shot in walked["screenshots"].as_array().unwrap() {
        let png = std::fs::read(shot.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 1000, "{shot}");
    }
    assert_eq!(setup.names(State::Cur).await, vec![name.clone()]);
    assert!(setup.names(State::Failed).await.is_empty());
}

/// A state's list comes in pages of 50, the next one from the last key of the one before.
#[tokio::test]
async fn a_state_is_listed_in_pages_of_fifty() {
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let names = setup.store(52).await;
    let (running, _) = Running::serve(&setup, &[]).await;
    let (status, first) = running.get("/queue/DEFAULT/cur").await;
    assert_eq!(status, 200, "{first}");
    let rows = |page: &str| page.matches("<td class=\"key\">").count();
    assert_eq!(rows(&first), 50);
    let next = first
        .split("?after=")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a link to the next page")
        // As a browser reads the attribute.
        .replace("&#x2f;", "/")
        .replace("&amp;", "&");
    let (_, second) = running
        .get(&format!("/queue/DEFAULT/cur?after={next}"))
        .await;
    assert_eq!(rows(&second), 2, "{second}");
    let mut sorted = names.clone();
    sorted.sort();
    for name in &sorted[50..] {
        assert!(
            second.contains(name.as_str()),
            "{name} not on the second page"
        );
    }
    assert!(!second.contains("next page"), "{second}");
}
