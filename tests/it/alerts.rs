//! Alerts as mail2alert and milter-xmpp users know them: mail2alert's `gocd` manager against
//! a GoCD stand-in (tests/gocd/gocd-standin.py: the two endpoints, basic auth), its README
//! configuration as it is (`--check`, `--report`, running), the pipelines' history shared by
//! workers through the lock engine (the local table and a real Redis), and the worker's own
//! edges: bytes unchanged at a recording SMTP receiver, no mail loop through the filter, a
//! permanent failure beside a transient one, receipts that survive a change of the rules.

use std::process::{Child, Command};
use std::sync::Arc;

use swiftdrop::queue::State;
use swiftdrop::queue::lock::LockEngine;
use swiftdrop::queue::lock::local::LocalEngine;
use swiftdrop::queue::lock::redis::RedisEngine;
use swiftdrop::worker::dequeue::{ActionResult, Worker, action_id};
use swiftdrop::worker::gocd::{GocdClient, History};
use swiftdrop::worker::rules::gocd::{Event, stage_result};
use swiftdrop::worker::rules::{self, GocdSettings};
use swiftdrop::worker::sinks::mail::{LOOP_HEADER, MailSink};

use crate::dequeue::{FilterAndWorker, handle_next, store};
use crate::queue_support::*;
use crate::smtp_recorder::SmtpRecorder;
use crate::support::*;
use crate::xmpp_support::*;

const README: &str = include_str!("../mail2alert/configuration.yml");

/// The GoCD stand-in (user olle, password pelle, as mail2alert's README has them).
pub struct GocdStandin {
    child: Child,
    pub port: u16,
}

impl GocdStandin {
    pub async fn start(groups: serde_json::Value, cctray: serde_json::Value) -> GocdStandin {
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/gocd/gocd-standin.py"
            ))
            .args([port.to_string().as_str(), "olle", "pelle"])
            .spawn()
            .unwrap();
        wait_for_port(port).await;
        let standin = GocdStandin { child, port };
        standin.post("groups", groups).await;
        standin.post("cctray", cctray).await;
        standin
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/go", self.port)
    }

    async fn post(&self, what: &str, body: serde_json::Value) {
        let status = http_client()
            .post(format!("http://127.0.0.1:{}/_test/{what}", self.port))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success());
    }

    /// Every GoCD request: (path, whether its basic auth was right).
    pub async fn log(&self) -> Vec<(String, bool)> {
        let log: Vec<serde_json::Value> = http_client()
            .get(format!("http://127.0.0.1:{}/_test/log", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        log.iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["authorized"].as_bool().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for GocdStandin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn groups() -> serde_json::Value {
    serde_json::json!({"my-group": ["tools", "app", "app-release-2"], "other": ["web"]})
}

fn cctray() -> serde_json::Value {
    serde_json::json!([
        {"name": "app :: build", "lastBuildStatus": "Success", "lastBuildTime": "2026-12-01T10:00:00Z"},
        {"name": "app :: build :: unit", "lastBuildStatus": "Failure", "lastBuildTime": "2026-11-01T10:00:00Z"},
        {"name": "app-release-2 :: deploy", "lastBuildStatus": "Failure", "lastBuildTime": "2026-12-01T09:00:00Z"},
    ])
}

/// mail2alert's README configuration with its two servers moved to the test's ports.
fn readme_config(gocd: &GocdStandin, smtp_port: u16) -> String {
    README
        .replace("http://localhost:8080/go", &gocd.url())
        .replace("localhost:8025", &format!("127.0.0.1:{smtp_port}"))
}

/// A stage notification from GoCD to the gocd manager's address, as the filter stores it.
fn notification(subject: &str) -> Vec<u8> {
    format!(
        "Return-Path: <go@gocd.example.com>\r\nDelivered-To: gocd@example.com\r\nFrom: GoCD <go@gocd.example.com>\r\nTo: gocd@example.com\r\nSubject: {subject}\r\nMessage-ID: <{}@gocd.example.com>\r\n\r\nSee details: http://gocd.example.com/go/pipelines\r\n",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

fn worker(queue: &swiftdrop::queue::Queue, rules_text: &str) -> Worker {
    Worker::new(
        queue.clone(),
        rules::parse(rules_text, "configuration.yml").unwrap(),
    )
    .unwrap()
}

/// Two workers of one queue: the first reads cctray.xml at start; a failure after the
/// success cctray.xml shows BREAKS (rule 1: the group's team), the next failure, handled
/// by the other worker, only FAILS (no rule); a pass after cctray.xml's failure of a
/// release pipeline is FIXED (rule 2, by name_like_in_group). Each alert goes to its
/// rule's address with `To:` naming it, marked; every GoCD request carried the basic auth.
#[tokio::test]
async fn gocd_notifications_alert_by_event_and_group_with_a_shared_history() {
    let gocd = GocdStandin::start(groups(), cctray()).await;
    let smtp = SmtpRecorder::start().await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let config = readme_config(&gocd, smtp.port);
    let (first, second) = (worker(&queue, &config), worker(&queue, &config));
    first.seed_gocd_history().await;

    store(&queue, &notification("Stage [app/5/build/1] failed")).await;
    let report = handle_next(&first).await;
    assert_eq!(report.manager.as_deref(), Some("gocd"));
    assert_eq!(report.rules, ["rule 1"], "{report:?}");
    assert_eq!(
        report.actions,
        [(
            "rule 1: mailto:my-group-team@example.com".to_string(),
            ActionResult::Sent
        )]
    );

    store(&queue, &notification("Stage [app/6/build/1] failed")).await;
    let report = handle_next(&second).await;
    assert!(
        report.rules.is_empty(),
        "FAILS after a failure fires no rule: {report:?}"
    );
    assert_eq!(report.reason.as_deref(), Some("no rule matched"));

    store(
        &queue,
        &notification("Stage [app-release-2/1/deploy/1]\r\n passed"),
    )
    .await;
    let report = handle_next(&first).await;
    assert_eq!(report.rules, ["rule 2"], "{report:?}");

    let received = smtp.wait_for(2).await;
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].to, ["my-group-team@example.com"]);
    assert_eq!(received[0].from, "go@gocd.example.com");
    assert_eq!(received[1].to, ["release-managers@example.com"]);
    let alert = String::from_utf8_lossy(&received[0].bytes);
    assert!(alert.starts_with(&format!("{LOOP_HEADER}: ")), "{alert}");
    assert!(
        alert.contains("\r\nAuto-Submitted: auto-generated\r\n"),
        "{alert}"
    );
    assert!(
        alert.contains("\r\nTo: my-group-team@example.com\r\n"),
        "{alert}"
    );
    assert!(!alert.contains("Delivered-To"), "{alert}");
    let log = gocd.log().await;
    assert!(log.iter().any(|(p, _)| p == "/go/cctray.xml"), "{log:?}");
    assert!(
        log.iter()
            .any(|(p, _)| p == "/go/api/config/pipeline_groups"),
        "{log:?}"
    );
    assert!(log.iter().all(|(_, authorized)| *authorized), "{log:?}");
    assert_eq!(setup.names(State::Done).await.len(), 3);
}

/// The history in each engine: a failure after a success is BREAKS, and stays BREAKS when
/// the same message is handled again (after a crash or a retry), while the next message's
/// failure is FAILS; another worker's client sees the same history. cctray.xml seeds only
/// pipelines the history does not know.
#[tokio::test]
async fn the_pipelines_history_is_shared_and_a_message_asked_again_gets_the_same_event() {
    let gocd = GocdStandin::start(groups(), cctray()).await;
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let engines: Vec<Arc<dyn LockEngine>> = vec![
        Arc::new(LocalEngine::open(dir.path()).unwrap()),
        Arc::new(
            RedisEngine::new(
                &swiftdrop::config::RedisUrl::parse(&redis.url()).unwrap(),
                "qgocd",
            )
            .unwrap(),
        ),
    ];
    let settings = GocdSettings {
        url: gocd.url(),
        login: Some((
            "olle".into(),
            swiftdrop::config::Secret::new("pelle".to_string()),
        )),
        unresolved: false,
    };
    let states = GocdClient::new(settings.clone())
        .unwrap()
        .fetch_states()
        .await
        .unwrap();
    for engine in engines {
        let a = History::new(&settings.url, engine.clone());
        let b = History::new(&settings.url, engine.clone());
        assert_eq!(a.seed(&states).await.unwrap(), 2, "{engine:?}");
        let failed = stage_result("Stage [app/5/build/1] failed").unwrap();
        let passed = stage_result("Stage [app/6/build/1] passed").unwrap();
        let (m1, m2, m3) = (
            "1800000001.M1P1.t",
            "1800000002.M1P1.t",
            "1800000003.M1P1.t",
        );
        assert_eq!(
            a.event(&failed, m1, true).await.unwrap(),
            Some(Event::Breaks),
            "{engine:?}"
        );
        assert_eq!(
            b.event(&failed, m1, true).await.unwrap(),
            Some(Event::Breaks),
            "asked again: {engine:?}"
        );
        assert_eq!(
            b.event(&failed, m2, true).await.unwrap(),
            Some(Event::Fails),
            "{engine:?}"
        );
        assert_eq!(
            a.event(&passed, m3, true).await.unwrap(),
            Some(Event::Fixed),
            "{engine:?}"
        );
        // m1 again after others came: still BREAKS, and the pipeline stays fixed.
        assert_eq!(
            a.event(&failed, m1, true).await.unwrap(),
            Some(Event::Breaks),
            "{engine:?}"
        );
        let next = stage_result("Stage [app/7/build/1] failed").unwrap();
        assert_eq!(
            a.event(&next, "1800000004.M1P1.t", true).await.unwrap(),
            Some(Event::Breaks),
            "{engine:?}"
        );
        // Seeding again keeps what the workers learnt.
        assert_eq!(b.seed(&states).await.unwrap(), 0, "{engine:?}");
        let unknown = stage_result("Stage [new/1/build/1] failed").unwrap();
        assert_eq!(
            a.event(&unknown, m1, true).await.unwrap(),
            Some(Event::Fails),
            "{engine:?}"
        );
        // Another server's pipeline of the same name has a history of its own.
        let other = History::new("http://other.example.com/go", engine.clone());
        assert_eq!(
            other.event(&failed, m2, true).await.unwrap(),
            Some(Event::Fails),
            "{engine:?}"
        );

        // Workers racing on one pipeline: each message's event is decided once, against
        // the state its compare-and-set saw, and the history ends with all of them.
        let histories: Vec<Arc<History>> = (0..8)
            .map(|_| Arc::new(History::new(&settings.url, engine.clone())))
            .collect();
        let racing = stage_result("Stage [race/1/build/1] failed").unwrap();
        let mut handles = Vec::new();
        for (n, history) in histories.iter().enumerate() {
            let (history, racing) = (history.clone(), racing.clone());
            handles.push(tokio::spawn(async move {
                history
                    .event(&racing, &format!("1800000100.M{n}P1.t"), true)
                    .await
                    .unwrap()
            }));
        }
        let mut events = Vec::new();
        for handle in handles {
            events.push(handle.await.unwrap().unwrap());
        }
        assert!(
            events.iter().all(|e| *e == Event::Fails),
            "{events:?} {engine:?}"
        );
        let key = format!("gocd:{}:race", hex8(&settings.url));
        let value = engine.shared_value(&key).await.unwrap().unwrap_or_default();
        let key_count = (0..8)
            .filter(|n| value.contains(&format!("1800000100.M{n}P1.t|failure")))
            .count();
        assert_eq!(key_count, 8, "{engine:?}");
        // A compare-and-set against a stale value changes nothing.
        assert!(
            !engine
                .swap_shared_value(&key, Some("v2 unknown"), "v2 success")
                .await
                .unwrap()
        );
        assert!(
            !engine
                .swap_shared_value(&key, None, "v2 success")
                .await
                .unwrap()
        );
    }
}

/// The 8 hex digits naming a GoCD server in history keys.
fn hex8(url: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(url.as_bytes())[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A dry run needs no secrets: with GoCD's passwd an unset variable, GoCD is not asked (it
/// would count `$VAR` as a failed login; nothing listens on the README's port either).
#[test]
fn a_dry_run_without_the_gocd_password_does_not_ask_gocd() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("configuration.yml");
    std::fs::write(
        &rules,
        README.replace("passwd: pelle", "passwd: $SWIFTDROP_TEST_UNSET_GOCD"),
    )
    .unwrap();
    let eml = dir.path().join("n.eml");
    std::fs::write(&eml, notification("Stage [app/5/build/1] failed")).unwrap();
    let output = Command::new(example("dequeue"))
        .env_remove("SWIFTDROP_TEST_UNSET_GOCD")
        .args([
            "--config",
            rules.to_str().unwrap(),
            "--dry-run",
            eml.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("GoCD is not asked"), "{stdout}");
    assert!(stdout.contains("manager: gocd"), "{stdout}");
    assert!(stderr.contains("SWIFTDROP_TEST_UNSET_GOCD"), "{stderr}");
}

/// mail2alert's README example, unchanged: `--check` passes; `--report` (its self-test)
/// lists, per group and pipeline, which events alert whom, as YAML; a GoCD that refuses
/// the login fails the report, naming the answer.
#[tokio::test]
async fn the_readme_configuration_checks_and_reports_as_mail2alert_did() {
    let gocd = GocdStandin::start(groups(), cctray()).await;
    let dir = tempfile::tempdir().unwrap();
    let unchanged = dir.path().join("configuration.yml");
    std::fs::write(&unchanged, README).unwrap();
    let output = Command::new(example("dequeue"))
        .args(["--check", unchanged.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.ends_with("OK (2 managers, 3 rules)\n"), "{stdout}");

    let moved = dir.path().join("moved.yml");
    std::fs::write(&moved, readme_config(&gocd, 1)).unwrap();
    let output = Command::new(example("dequeue"))
        .env("MAIL2ALERT_CONFIGURATION", &moved)
        .arg("--report")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout,
        "gocd:
- pipeline_group: my-group
  pipelines:
  - alerts:
    - actions:
      - mailto:my-group-team@example.com
      events:
      - BREAKS
    pipeline: tools
  - alerts:
    - actions:
      - mailto:my-group-team@example.com
      events:
      - BREAKS
    pipeline: app
  - alerts:
    - actions:
      - mailto:my-group-team@example.com
      events:
      - BREAKS
    - actions:
      - mailto:release-managers@example.com
      events:
      - BREAKS
      - FIXED
    pipeline: app-release-2
- pipeline_group: other
  pipelines:
  - pipeline: web
mail: null
"
    );
    std::fs::write(
        &moved,
        readme_config(&gocd, 1).replace("passwd: pelle", "passwd: wrong"),
    )
    .unwrap();
    let output = Command::new(example("dequeue"))
        .args(["--config", moved.to_str().unwrap(), "--report"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
}

/// What the worker sends is the stored message, byte for byte: a forward is it after the
/// filter's trace lines under the loop mark (no line ending added at its end); an alert
/// changes only `To:` and adds the two marks.
#[tokio::test]
async fn forwards_and_alerts_arrive_with_the_bytes_they_were_stored_with() {
    let smtp = SmtpRecorder::start().await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let config = format!(
        "remote-smtp: 127.0.0.1:{}
managers:
  - name: mail
    messages-we-want:
      from: backup@example.com
    rules:
      - actions: [mailto:sysadmins@example.com, mailto:ops@example.com]
        filter:
          function: mail.in_subject
          args: [server, backup]
",
        smtp.port
    );
    let worker = worker(&queue, &config);
    let content = b"From: Someone <someone@example.net>\r\nTo: postmaster@example.com\r\nSubject: hello\r\n\r\nplain mail\r\n.leading dot\r\n\r\n\r\nlast line\r\n";
    let mut stored =
        b"Return-Path: <someone@example.net>\r\nDelivered-To: postmaster@example.com\r\n".to_vec();
    stored.extend_from_slice(content);
    store(&queue, &stored).await;
    handle_next(&worker).await;
    let alert_content = b"From: Backup <backup@example.com>\r\nTo: root@example.com,\r\n  admin@example.com\r\nAuto-Submitted: no\r\nSubject: Server backup failed\r\n\r\nbody line\r\n\r\n";
    let mut stored_alert =
        b"Return-Path: <backup@example.com>\r\nDelivered-To: root@example.com\r\n".to_vec();
    stored_alert.extend_from_slice(alert_content);
    store(&queue, &stored_alert).await;
    let report = handle_next(&worker).await;
    assert_eq!(
        report.actions,
        [(
            "rule 1: mailto:sysadmins@example.com,ops@example.com".to_string(),
            ActionResult::Sent
        )]
    );

    let received = smtp.wait_for(2).await;
    let mark = worker
        .marks
        .line(&[action_id(&format!("forward:127.0.0.1:{}", smtp.port))]);
    assert!(mark.starts_with(&format!("{LOOP_HEADER}: {} ", worker.marks.id())));
    let mut expected = mark.clone().into_bytes();
    expected.extend_from_slice(content);
    assert_eq!(
        String::from_utf8_lossy(&received[0].bytes),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(
        (received[0].from.as_str(), received[0].to.as_slice()),
        (
            "someone@example.net",
            &["postmaster@example.com".to_string()][..]
        )
    );
    let mark = worker
        .marks
        .line(&[action_id("mailto:ops@example.com,sysadmins@example.com")]);
    let expected_alert = format!(
        "{mark}Auto-Submitted: auto-generated\r\nFrom: Backup <backup@example.com>\r\nTo: sysadmins@example.com, ops@example.com\r\nSubject: Server backup failed\r\n\r\nbody line\r\n\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&received[1].bytes), expected_alert);
    assert_eq!(received[1].to, ["sysadmins@example.com", "ops@example.com"]);
}

/// The README's old mistake: unmatched mail forwarded to the filter's own port. The copy
/// that comes back carries the queue's loop mark and ends in `done/` as a loop: two
/// messages stored, one forward, nothing more.
#[tokio::test]
async fn a_forward_aimed_at_the_filter_itself_stops_after_one_pass() {
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let _queue = setup.queue().await;
    let port = free_port();
    let rules_file = setup.dir.path().join("rules.yml");
    std::fs::write(
        &rules_file,
        format!("remote-smtp: 127.0.0.1:{port}\nmanagers:\n  - name: nagios\n    messages-we-want:\n      from: '@mon.example.org'\n    rules:\n      - actions: [mailto:oncall@example.com]\n"),
    )
    .unwrap();
    let running = FilterAndWorker::start_on(&setup, &rules_file, &[], port).await;
    running
        .send(
            "someone@example.net",
            &["postmaster@example.com"],
            b"From: someone@example.net\r\nTo: postmaster@example.com\r\nSubject: loop?\r\nMessage-ID: <loop@example.net>\r\n\r\nround and round\r\n",
        )
        .await;
    crate::dequeue::wait_until_done(&setup, 2).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let everything = setup.everything().await;
    assert_eq!(setup.names(State::Done).await.len(), 2, "{everything:?}");
    assert_eq!(
        everything.values().map(Vec::len).sum::<usize>(),
        2,
        "{everything:?}"
    );
    let queue = setup.queue().await;
    let mut reasons = Vec::new();
    for entry in queue.list(State::Done, 10).await.unwrap() {
        for copy in queue.copies(&entry.name).await.unwrap() {
            reasons.extend(copy.record.reason);
        }
    }
    assert!(
        reasons.iter().any(|r| r.starts_with("mail loop:")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("unmatched: forward to")),
        "{reasons:?}"
    );
}

/// An alert refused for good (550) beside a room post that fails for now (no XMPP
/// server): the message waits in `retry/`, not `failed/`; the next attempt does not mail
/// the alert again; once the room can be reached the post goes out and the message ends in
/// `failed/`, naming the alert. A rules file changed meanwhile (a rule inserted before, the
/// rule renamed) repeats nothing that was done: the record is keyed by what an action does.
#[tokio::test]
async fn a_permanent_failure_beside_a_transient_one_is_retried_and_receipts_survive_new_rules() {
    let refusing = SmtpSink::start(&["-f", "rcpt"]);
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let xmpp_port = free_port();
    let rules_v1 = format!(
        "remote-smtp: 127.0.0.1:{}\n{}managers:\n  - name: nagios\n    messages-we-want:\n      from: '@mon.example.org'\n    rules:\n      - name: disk\n        actions: [mailto:oncall@example.com, xmpp:ops@conference.xmpp.test]\n        template: 'disk: {{{{ subject }}}}'\n",
        refusing.port,
        rules_account(xmpp_port, "2s")
    );
    let first = worker(&queue, &rules_v1);
    store(&queue, b"Return-Path: <nagios@mon.example.org>\r\nDelivered-To: ops@example.com\r\nFrom: nagios@mon.example.org\r\nSubject: CRITICAL: disk full\r\n\r\n/var 100%\r\n").await;
    let report = handle_next(&first).await;
    assert!(report.finished.starts_with("retry/"), "{report:?}");
    assert!(
        matches!(report.actions[0].1, ActionResult::Failed(ref e) if e.is_permanent()),
        "{report:?}"
    );
    assert!(
        matches!(report.actions[1].1, ActionResult::Failed(ref e) if !e.is_permanent()),
        "{report:?}"
    );

    let prosody = Prosody::start_on(xmpp_port);
    let watcher = Watcher::join(&prosody, "ops").await;
    // A rule inserted before, the rule renamed: the same actions, the same receipts.
    let rules_v2 = rules_v1.replace(
        "      - name: disk\n",
        "      - name: first\n        filter: {subject: nothing-matches-this}\n        actions: [xmpp:ops@conference.xmpp.test]\n      - name: disk-renamed\n",
    );
    let mut second = worker(&queue, &rules_v2);
    second.mail = Some(MailSink::new(&format!("127.0.0.1:{}", refusing.port), "w.test").unwrap());
    let report = handle_next(&second).await;
    assert_eq!(
        report.actions[0].1,
        ActionResult::FailedBefore,
        "{report:?}"
    );
    assert_eq!(report.actions[1].1, ActionResult::Sent, "{report:?}");
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("mailto:oncall@example.com: failed for good in an earlier attempt"),
        "{report:?}"
    );
    assert_eq!(watcher.wait_for("disk: CRITICAL: disk full").await, 1);
}

/// An alert to three addresses: one refused for good (550) costs the others nothing (the
/// message is done, naming it); one refused for now (451) sends the message to `retry/`,
/// and the next attempt sends to it alone. A message without a last line ending arrives
/// with one.
#[tokio::test]
async fn one_refused_address_costs_the_others_nothing_and_a_deferred_one_is_sent_alone_later() {
    let smtp = SmtpRecorder::start().await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let config = format!(
        "remote-smtp: 127.0.0.1:{}
managers:
  - name: mail
    messages-we-want:
      from: backup@example.com
    rules:
      - name: first
        actions: [mailto:ops@example.com, mailto:refused-x@example.com]
      - name: second
        actions: [mailto:deferred-y@example.com, mailto:OPS@example.com]
",
        smtp.port
    );
    let worker = worker(&queue, &config);
    store(&queue, b"Return-Path: <backup@example.com>\r\nDelivered-To: root@example.com\r\nFrom: backup@example.com\r\nSubject: backup failed\r\n\r\nno final line ending").await;
    let first = handle_next(&worker).await;
    assert_eq!(
        first.actions[0].0,
        "first+second: mailto:ops@example.com,refused-x@example.com,deferred-y@example.com"
    );
    assert!(first.finished.starts_with("retry/"), "{first:?}");
    let reason = first.reason.clone().unwrap();
    assert!(reason.contains("deferred-y@example.com: 451"), "{reason}");

    let second = handle_next(&worker).await;
    assert!(second.finished.starts_with("done/"), "{second:?}");
    let reason = second.reason.clone().unwrap();
    assert!(
        reason.contains("refused-x@example.com (refused for good before)"),
        "{reason}"
    );
    let received: Vec<_> = smtp
        .wait_for(3)
        .await
        .into_iter()
        .filter(|r| !r.to.is_empty())
        .collect();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0].to, ["ops@example.com"]);
    assert_eq!(
        received[1].to,
        ["deferred-y@example.com"],
        "the retry sends to the deferred address alone"
    );
    let alert = String::from_utf8_lossy(&received[1].bytes);
    assert!(
        alert
            .contains("\r\nTo: ops@example.com, refused-x@example.com, deferred-y@example.com\r\n"),
        "{alert}"
    );
    assert!(
        alert.ends_with("\r\n\r\nno final line ending\r\n"),
        "{alert:?}"
    );
}

/// An alert whose address comes back to the same filter: the copy carries the ids of all
/// the first pass's actions, so neither the alert nor the room post is made again.
#[tokio::test]
async fn an_alert_that_comes_back_repeats_neither_itself_nor_the_posts() {
    let prosody = Prosody::start();
    let watcher = Watcher::join(&prosody, "ops").await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let _queue = setup.queue().await;
    let port = free_port();
    let rules_file = setup.dir.path().join("rules.yml");
    std::fs::write(
        &rules_file,
        format!(
            "remote-smtp: 127.0.0.1:{port}\n{}managers:\n  - name: nagios\n    messages-we-want:\n      from: '@mon.example.org'\n    rules:\n      - actions: [mailto:oncall@example.com, xmpp:ops@conference.xmpp.test]\n        template: 'alert: {{{{ subject }}}}'\n",
            rules_account(prosody.port, "10s")
        ),
    )
    .unwrap();
    let running = FilterAndWorker::start_on(&setup, &rules_file, &[], port).await;
    running
        .send(
            "nagios@mon.example.org",
            &["ops@example.com"],
            b"From: nagios@mon.example.org\r\nSubject: CRITICAL: chain\r\nMessage-ID: <chain@mon.example.org>\r\n\r\nfull\r\n",
        )
        .await;
    crate::dequeue::wait_until_done(&setup, 2).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(watcher.count("alert: CRITICAL: chain"), 1);
    let everything = setup.everything().await;
    assert_eq!(
        everything.values().map(Vec::len).sum::<usize>(),
        2,
        "{everything:?}"
    );
}

/// A notification whose alert is deferred (451) keeps the event it was given: the retry
/// reads it off the message, not off the history, which other notifications (here: a reset)
/// may have moved on.
#[tokio::test]
async fn a_retried_notification_keeps_its_event() {
    let gocd = GocdStandin::start(groups(), cctray()).await;
    let smtp = SmtpRecorder::start().await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let config = readme_config(&gocd, smtp.port).replace(
        "mailto:my-group-team@example.com",
        "mailto:deferred-team@example.com",
    );
    let worker = worker(&queue, &config);
    worker.seed_gocd_history().await;
    store(&queue, &notification("Stage [app/5/build/1] failed")).await;
    let first = handle_next(&worker).await;
    assert!(first.finished.starts_with("retry/"), "{first:?}");
    let name = first
        .key
        .split('/')
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let record = queue.copies(&name).await.unwrap().remove(0).record;
    assert!(
        record.done.contains(&"gocd-event=BREAKS".to_string()),
        "{:?}",
        record.done
    );
    // The history moves on: a failure now would be FAILS, which no rule alerts on.
    let key = format!("gocd:{}:app", hex8(&gocd.url()));
    let lock = queue.lock();
    let held = lock.shared_value(&key).await.unwrap();
    assert!(held.is_some(), "the history is kept under {key}");
    assert!(
        lock.swap_shared_value(&key, held.as_deref(), "v2 failure")
            .await
            .unwrap()
    );
    let second = handle_next(&worker).await;
    assert_eq!(second.rules, ["rule 1"], "{second:?}");
    assert!(second.finished.starts_with("done/"), "{second:?}");
    let received: Vec<_> = smtp
        .wait_for(2)
        .await
        .into_iter()
        .filter(|r| !r.to.is_empty())
        .collect();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].to, ["deferred-team@example.com"]);
}
