//! The dequeue worker against a real queue (Maildir, local lock), a real SMTP receiver
//! (`smtp-sink`) and a real XMPP server (Prosody with a chat-room service): `mailto:`
//! alerts with rewritten headers and the body unchanged, unmatched mail forwarded unchanged,
//! a 5xx to `failed/`, rooms and users posted to, an unknown user to `failed/`, an XMPP
//! server that is down to `retry/` and delivered once it is up, without repeating what
//! succeeded, messages across a Prosody restart arriving once each; and the example's
//! `--check` and `--dry-run`.

use object_store::ObjectStoreExt;
use object_store::path::Path;
use swiftdrop::queue::{ClaimOptions, Queue, State};
use swiftdrop::store::key::MessageKey;
use swiftdrop::worker::dequeue::{ActionResult, Worker};
use swiftdrop::worker::sinks::SinkError;
use swiftdrop::worker::sinks::mail::MailSink;
use swiftdrop::worker::sinks::xmpp::{Target, XmppSink};

use crate::queue_support::*;
use crate::support::*;
use crate::xmpp_support::*;

const NAGIOS: &[u8] = b"Return-Path: <nagios@mon.example.org>\r\nDelivered-To: ops@example.com\r\n\
From: Nagios <nagios@mon.example.org>\r\nTo: ops@example.com\r\nSubject: CRITICAL: disk full on db1\r\n\
Message-ID: <n1@mon.example.org>\r\n\r\n/var is at 100%\r\n..dot line\r\n";

const OTHER: &[u8] =
    b"Return-Path: <someone@example.net>\r\nDelivered-To: postmaster@example.com\r\n\
From: someone@example.net\r\nTo: postmaster@example.com\r\nSubject: hello\r\n\
Message-ID: <o1@example.net>\r\n\r\nplain mail\r\n";

fn rules(sink_port: u16, extra_action: &str) -> String {
    rules_with(sink_port, extra_action, &rules_account(1, "2s"))
}

/// Rules with the `xmpp:` section `account`.
fn rules_with(sink_port: u16, extra_action: &str, account: &str) -> String {
    format!(
        "remote-smtp: 127.0.0.1:{sink_port}
mailto_from: alerts@example.com
{account}managers:
  - name: nagios
    messages-we-want:
      from: '@mon.example.org'
    rules:
      - name: disk
        filter:
          function: mail.in_subject
          args: [disk, full]
        actions: [mailto:oncall@example.com{extra_action}]
"
    )
}

/// Stores `bytes` under `cur/` as the filter would; returns the name.
pub async fn store(queue: &Queue, bytes: &[u8]) -> String {
    let key = MessageKey::new("filter.test", bytes.len() as u64);
    queue
        .destination()
        .store
        .put(&Path::from(key.cur_path()), bytes.to_vec().into())
        .await
        .unwrap();
    key.file_name()
}

fn worker(queue: &Queue, rules_text: &str, sink_port: u16) -> Worker {
    let rules = swiftdrop::worker::rules::parse(rules_text, "rules.yml").unwrap();
    let mut worker = Worker::new(queue.clone(), rules).unwrap();
    worker.mail = Some(MailSink::new(&format!("127.0.0.1:{sink_port}"), "worker.test").unwrap());
    worker
}

/// Claims the next message and handles it; the report.
pub async fn handle_next(worker: &Worker) -> swiftdrop::worker::dequeue::Report {
    let options = ClaimOptions {
        lease: None,
        wait: Some(PATIENCE),
    };
    let mut claim = worker
        .queue
        .claim(&options)
        .await
        .unwrap()
        .expect("a message");
    worker.handle(&mut claim).await.unwrap()
}

#[tokio::test]
async fn an_alert_is_mailed_rewritten_and_unmatched_mail_forwarded_unchanged() {
    let sink = SmtpSink::start(&[]);
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(sink.port, ""), sink.port);
    store(&queue, NAGIOS).await;
    let report = handle_next(&worker).await;
    assert_eq!(report.manager.as_deref(), Some("nagios"));
    assert_eq!(report.rules, ["disk"]);
    assert_eq!(
        report.actions,
        [(
            "disk: mailto:oncall@example.com".to_string(),
            ActionResult::Sent
        )]
    );
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let alert = sink
        .wait_for_dump_ending("..dot line")
        .await
        .expect("the alert arrived");
    // smtp-sink's dump: LF line ends, the envelope first.
    assert!(alert.contains("From: <alerts@example.com>\nTo: oncall@example.com\nSubject: CRITICAL: disk full on db1\n"), "{alert}");
    assert!(
        alert.contains("\n\n/var is at 100%\n..dot line\n"),
        "body unchanged: {alert}"
    );
    assert!(!alert.contains("Delivered-To: ops@example.com"), "{alert}");
    assert!(!alert.contains("From: Nagios"), "{alert}");

    store(&queue, OTHER).await;
    let report = handle_next(&worker).await;
    assert_eq!(report.manager, None);
    assert!(report.finished.starts_with("done/"), "{report:?}");
    assert_eq!(
        report.reason.as_deref(),
        Some(format!("unmatched: forward to 127.0.0.1:{}", sink.port).as_str())
    );
    let forwarded = sink
        .wait_for_dump_ending("plain mail")
        .await
        .expect("the forward arrived");
    assert!(
        forwarded
            .contains("From: someone@example.net\nTo: postmaster@example.com\nSubject: hello\n"),
        "{forwarded}"
    );
    assert!(!forwarded.contains("Return-Path: <someone"), "{forwarded}");
}

#[tokio::test]
async fn a_5xx_fails_the_message_with_the_reason() {
    let sink = SmtpSink::start(&["-f", "rcpt"]);
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(sink.port, ""), sink.port);
    store(&queue, NAGIOS).await;
    let report = handle_next(&worker).await;
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.starts_with("disk: mailto:oncall@example.com: permanent:") && reason.contains(" 5"),
        "{reason}"
    );
    assert_eq!(setup.names(State::Failed).await.len(), 1);
}

/// An XMPP server that is down: the alert by mail goes out, the room's message fails for
/// now and the message waits in `retry/`; once the server is up, the next attempt posts to
/// the room and does not mail the alert again (recorded on the claim).
#[tokio::test]
async fn a_retry_does_not_repeat_an_action_that_succeeded() {
    let sink = SmtpSink::start(&[]);
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let port = free_port();
    let rules = rules_with(
        sink.port,
        ", xmpp:ops@conference.xmpp.test",
        &rules_account(port, "2s"),
    );
    let worker = worker(&queue, &rules, sink.port);
    store(&queue, NAGIOS).await;
    let first = handle_next(&worker).await;
    assert!(first.finished.starts_with("retry/"), "{first:?}");
    assert_eq!(first.actions[0].1, ActionResult::Sent);
    assert!(
        matches!(first.actions[1].1, ActionResult::Failed(ref e) if !e.is_permanent()),
        "{first:?}"
    );

    let prosody = Prosody::start_on(port);
    let watcher = Watcher::join(&prosody, "ops").await;
    let second = handle_next(&worker).await;
    assert_eq!(second.actions[0].1, ActionResult::DoneBefore, "{second:?}");
    assert_eq!(second.actions[1].1, ActionResult::Sent, "{second:?}");
    assert!(second.finished.starts_with("done/"), "{second:?}");
    assert_eq!(watcher.wait_for("disk full on db1").await, 1);
    sink.wait_for_dump_ending("..dot line").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(sink.dumps().len(), 1, "the alert went out once");
}

/// Posts to a room (the watcher sees it, as the rendered text) and to a user directly; a
/// message to a user the server does not know fails for good.
#[tokio::test]
async fn rooms_and_users_get_the_text_and_an_unknown_user_fails_the_message() {
    let prosody = Prosody::start();
    let watcher = Watcher::join(&prosody, "ops").await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let rules = rules_with(
        1,
        ", xmpp:ops@conference.xmpp.test, xmpp:watcher@xmpp.test",
        &rules_account(prosody.port, "10s"),
    )
    .replace("actions: [mailto:oncall@example.com, ", "actions: [");
    let worker = worker(&queue, &rules, 1);
    store(&queue, NAGIOS).await;
    let report = handle_next(&worker).await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    assert_eq!(report.actions.len(), 2);
    assert!(
        report.actions.iter().all(|(_, r)| *r == ActionResult::Sent),
        "{report:?}"
    );
    let text = "[CRITICAL: disk full on db1] nagios@mon.example.org: /var is at 100%";
    // Once from the room, once directly.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while watcher.count(text) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            watcher.bodies.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(watcher.wait_for(text).await, 2);
    assert_eq!(
        watcher.direct.lock().unwrap().len(),
        1,
        "one direct message"
    );

    let rules = rules_with(
        1,
        ", xmpp:nobody@xmpp.test",
        &rules_account(prosody.port, "10s"),
    )
    .replace("actions: [mailto:oncall@example.com, ", "actions: [");
    let worker = self::worker(&queue, &rules, 1);
    let other = String::from_utf8(NAGIOS.to_vec())
        .unwrap()
        .replace("<n1@", "<n3@");
    store(&queue, other.as_bytes()).await;
    let report = handle_next(&worker).await;
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(reason.contains("nobody@xmpp.test answered"), "{reason}");

    // A room nobody made: the join would create it, so it does not exist.
    let rules = rules_with(
        1,
        ", xmpp:no-such-room@conference.xmpp.test",
        &rules_account(prosody.port, "10s"),
    )
    .replace("actions: [mailto:oncall@example.com, ", "actions: [");
    let worker = self::worker(&queue, &rules, 1);
    let third = String::from_utf8(NAGIOS.to_vec())
        .unwrap()
        .replace("<n1@", "<n4@");
    store(&queue, third.as_bytes()).await;
    let report = handle_next(&worker).await;
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("permanent: no room no-such-room@conference.xmpp.test"),
        "{reason}"
    );
}

/// Prosody restarted between two messages: the sink reconnects and rejoins by itself; each
/// message reaches the room once.
#[tokio::test]
async fn messages_after_a_prosody_restart_arrive_once_each() {
    let prosody = Prosody::start();
    let watcher = Watcher::join(&prosody, "ops").await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let rules = rules_with(
        1,
        ", xmpp:ops@conference.xmpp.test",
        &rules_account(prosody.port, "20s"),
    )
    .replace("actions: [mailto:oncall@example.com, ", "actions: [")
    .replace("disk, full", "disk");
    let worker = worker(&queue, &rules, 1);
    store(&queue, NAGIOS).await;
    assert!(handle_next(&worker).await.finished.starts_with("done/"));
    assert_eq!(watcher.wait_for("disk full on db1").await, 1);

    prosody.restart();
    watcher.wait_for_joins(2).await;
    let second = String::from_utf8(NAGIOS.to_vec())
        .unwrap()
        .replace("disk full on db1", "disk full on db2")
        .replace("<n1@", "<n2@");
    store(&queue, second.as_bytes()).await;
    let report = handle_next(&worker).await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    assert_eq!(watcher.wait_for("disk full on db2").await, 1);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(watcher.count("disk full on db1"), 1);
    assert_eq!(watcher.count("disk full on db2"), 1);
}

/// Prosody stopped for 3 s under a stream of messages, each posted to a room and to a user
/// by one worker taking four messages at a time (posts in flight side by side on its one
/// connection): every message reaches the room once and the user once (none lost with the
/// session, none sent twice: a post made while the server was down is queued, goes out on
/// the next session and is not sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_under_a_stream_of_posts_loses_and_repeats_none() {
    let prosody = Prosody::start();
    let watcher = Watcher::join(&prosody, "ops").await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let rules = rules_with(
        1,
        ", xmpp:ops@conference.xmpp.test, xmpp:watcher@xmpp.test",
        &rules_account(prosody.port, "20s"),
    )
    .replace("actions: [mailto:oncall@example.com, ", "actions: [")
    .replace("disk, full", "burst")
    .replace(
        "        filter:\n",
        "        template: '{{ subject }}'\n        filter:\n",
    );
    let worker = std::sync::Arc::new(worker(&queue, &rules, 1));
    const COUNT: usize = 30;
    for n in 0..COUNT {
        let message = String::from_utf8(NAGIOS.to_vec())
            .unwrap()
            .replace("CRITICAL: disk full on db1", &format!("burst {n:02} ok"))
            .replace("<n1@", &format!("<burst{n}@"));
        store(&queue, message.as_bytes()).await;
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(worker.clone().run(4, stop_rx));
    let started = tokio::time::Instant::now();
    while watcher.count("burst ") < 10 {
        assert!(
            started.elapsed() < PATIENCE,
            "{:?}",
            watcher.bodies.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::task::block_in_place(|| prosody.restart_after(std::time::Duration::from_secs(3)));
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    while setup.names(State::Done).await.len() < COUNT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            setup.everything().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    running.await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let bodies = watcher.bodies.lock().unwrap().clone();
    let direct = watcher.direct.lock().unwrap().clone();
    for n in 0..COUNT {
        let text = format!("burst {n:02} ok");
        let to_user = direct.iter().filter(|b| b.contains(&text)).count();
        let in_room = bodies.iter().filter(|b| b.contains(&text)).count() - to_user;
        assert_eq!(
            (in_room, to_user),
            (1, 1),
            "{text}: room and user counts; all: {bodies:#?}"
        );
    }
}

/// Posts wait for their proof side by side: a user who has taken no message yet is given
/// [`ERROR_WINDOW`] to answer with an error after the server acked each post, and five
/// posts to them are all out (and have arrived) before the first is answered; each arrives
/// once, and each post ends delivered.
///
/// [`ERROR_WINDOW`]: swiftdrop::worker::sinks::xmpp::ERROR_WINDOW
#[tokio::test]
async fn posts_wait_for_their_proof_side_by_side() {
    let prosody = Prosody::start();
    let watcher = Watcher::join(&prosody, "ops").await;
    let rules = swiftdrop::worker::rules::file::parse(
        &rules_with(1, "", &rules_account(prosody.port, "20s")),
        "r.yml",
    )
    .unwrap();
    let sink = XmppSink::start(rules.xmpp.as_ref().unwrap()).unwrap();
    let posts: Vec<_> = (0..5)
        .map(|n| {
            let sink = sink.clone();
            tokio::spawn(async move {
                let to = Target::parse("watcher@xmpp.test", Some(false)).unwrap();
                sink.post(to, format!("side by side {n}")).await
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while watcher.count("side by side") < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            watcher.bodies.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        posts.iter().all(|p| !p.is_finished()),
        "a post was answered before all five were out: they went one at a time"
    );
    for post in posts {
        post.await.unwrap().unwrap();
    }
    for n in 0..5 {
        assert_eq!(watcher.count(&format!("side by side {n}")), 1);
    }
}

/// The server gone for longer than a post's time, with posts made to a room and a user
/// while it is away: each post ends, failed for now, while the server is still down (the
/// connection task never waits on the server past a post's time); once the server is back,
/// posts go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_end_in_their_time_while_the_server_is_gone() {
    let prosody = Prosody::start();
    let watcher = Watcher::join(&prosody, "ops").await;
    let rules = swiftdrop::worker::rules::file::parse(
        &rules_with(1, "", &rules_account(prosody.port, "3s")),
        "r.yml",
    )
    .unwrap();
    let sink = XmppSink::start(rules.xmpp.as_ref().unwrap()).unwrap();
    let user = || Target::parse("watcher@xmpp.test", Some(false)).unwrap();
    let room = || Target::parse("ops@conference.xmpp.test", Some(true)).unwrap();
    sink.post(user(), "gone before".into()).await.unwrap();
    sink.post(room(), "gone before, room".into()).await.unwrap();

    tokio::task::block_in_place(|| prosody.stop());
    let posts: Vec<_> = (0..6)
        .map(|n| {
            let sink = sink.clone();
            let to = if n % 2 == 0 { user() } else { room() };
            tokio::spawn(async move { sink.post(to, format!("gone during {n}")).await })
        })
        .collect();
    for post in posts {
        let result = tokio::time::timeout(PATIENCE, post)
            .await
            .expect("a post waited on the server far past its time")
            .unwrap();
        assert!(matches!(result, Err(SinkError::Transient(_))), "{result:?}");
    }

    tokio::task::block_in_place(|| prosody.start_again());
    let deadline = tokio::time::Instant::now() + PATIENCE * 2;
    // The first posts may meet the client still connecting again: failed for now.
    let mut attempt = 0;
    while sink
        .post(user(), format!("gone after {attempt}."))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no post went through after the restart"
        );
        attempt += 1;
    }
    assert_eq!(watcher.wait_for(&format!("gone after {attempt}.")).await, 1);
}

/// A login the server refuses (a wrong password) fails the message for good, named as such,
/// long before the post's timeout (tokio-xmpp would retry it forever). The worker runs as
/// its own process: tokio-xmpp's log, which tells of the refusal, is the process's.
#[tokio::test]
async fn a_refused_login_is_a_permanent_failure_named_as_such() {
    let prosody = Prosody::start();
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let rules_file = setup.dir.path().join("rules.yml");
    let rules = rules_with(
        1,
        ", xmpp:ops@conference.xmpp.test",
        &rules_account(prosody.port, "60s").replace("password: bot", "password: wrong"),
    )
    .replace("actions: [mailto:oncall@example.com, ", "actions: [");
    std::fs::write(&rules_file, rules).unwrap();
    let running = FilterAndWorker::start(&setup, &rules_file, &[]).await;
    running
        .send(
            "nagios@mon.example.org",
            &["ops@example.com"],
            b"From: nagios@mon.example.org\r\nSubject: CRITICAL: disk full on db3\r\n\r\nfull\r\n",
        )
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while setup.names(State::Failed).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            setup.everything().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let name = setup.names(State::Failed).await.remove(0);
    let reason = queue
        .copies(&name)
        .await
        .unwrap()
        .remove(0)
        .record
        .reason
        .unwrap();
    assert!(
        reason.contains("refused the login of bot@xmpp.test"),
        "{reason}"
    );
    assert_eq!(running.stop_worker(), Some(0));
}

/// `--check` names every problem with its line and exits 1; `--dry-run` prints what would
/// fire, with the text, and sends nothing.
#[test]
fn check_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "remote-smtp: localhost:25\nmanagers:\n  - name: a\n    rules:\n      - filter:\n          subject: '(unclosed'\n        actions: [sms:+1]\n",
    )
    .unwrap();
    let out = std::process::Command::new(example("dequeue"))
        .arg("--check")
        .arg(&bad)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let shown = bad.display();
    assert!(
        stdout.contains(&format!("{shown}:6: subject: bad regex")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{shown}:7: action \"sms:+1\"")),
        "{stdout}"
    );

    let good = dir.path().join("rules.yml");
    std::fs::write(&good, rules(2525, "")).unwrap();
    let out = std::process::Command::new(example("dequeue"))
        .arg("--check")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK (1 manager, 1 rule)"));

    let eml = dir.path().join("m.eml");
    std::fs::write(&eml, NAGIOS).unwrap();
    let out = std::process::Command::new(example("dequeue"))
        .arg("--config")
        .arg(&good)
        .arg("--dry-run")
        .arg(&eml)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout,
        "envelope: from <nagios@mon.example.org> to [\"ops@example.com\"] (sender from the Return-Path: trace line, recipients from the Delivered-To: trace lines)\nmanager: nagios\nrule: disk\n  action: mailto:oncall@example.com\n  text:\n    [CRITICAL: disk full on db1] nagios@mon.example.org: /var is at 100%\n    ..dot line\n"
    );
}

/// A dry run of the mail a user has: a message written by hand (no trace lines) takes its
/// envelope from its headers and says so, `--from`/`--to` replace it, an unset password
/// variable only warns, and a text that does not render exits 1; `--concurrency 0` is refused.
#[test]
fn dry_run_of_a_hand_written_message() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    let account =
        "xmpp:\n  jabberid: bot@xmpp.test\n  password_env: SWIFTDROP_TEST_UNSET_PASSWORD\n";
    let write_rules = |template: &str| {
        let text = rules_with(2525, ", xmpp:ops@conference.xmpp.test", account)
            .replace("actions: [mailto:oncall@example.com, ", "actions: [")
            .replace(
                "        filter:\n",
                &format!("        template: \"{template}\"\n        filter:\n"),
            );
        std::fs::write(&rules, text).unwrap()
    };
    let headers = &NAGIOS[NAGIOS.windows(5).position(|w| w == b"From:").unwrap()..];
    let eml = dir.path().join("exported.eml");
    std::fs::write(&eml, headers).unwrap();
    // A mailbox download: a Delivered-To: line on top, no Return-Path:.
    let downloaded = dir.path().join("downloaded.eml");
    std::fs::write(
        &downloaded,
        [&b"Delivered-To: dba@example.com\r\n"[..], headers].concat(),
    )
    .unwrap();
    let dry_run_of = |eml: &std::path::Path, extra: &[&str]| {
        let out = std::process::Command::new(example("dequeue"))
            .arg("--config")
            .arg(&rules)
            .arg("--dry-run")
            .arg(eml)
            .args(extra)
            .env_remove("SWIFTDROP_TEST_UNSET_PASSWORD")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dry_run = |extra: &[&str]| dry_run_of(&eml, extra);

    write_rules("{{ subject }}");
    let (code, stdout, stderr) = dry_run(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        "envelope: from <nagios@mon.example.org> to [\"ops@example.com\"] (sender from the From: header, recipients from the To: and Cc: headers; not all of it is in trace lines: --from and --to give the real envelope)\nmanager: nagios\nrule: disk\n  action: xmpp:ops@conference.xmpp.test\n  text:\n    CRITICAL: disk full on db1\n"
    );
    assert!(
        stderr.contains("SWIFTDROP_TEST_UNSET_PASSWORD, which is not set here"),
        "{stderr}"
    );

    let (code, stdout, _) = dry_run_of(&downloaded, &[]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.starts_with("envelope: from <nagios@mon.example.org> to [\"dba@example.com\"] (sender from the From: header, recipients from the Delivered-To: trace lines; not all of it"),
        "{stdout}"
    );

    let (code, stdout, _) = dry_run(&[
        "--from",
        "Someone Else <someone@example.net>",
        "--to",
        "a@example.com",
        "--to",
        "b@example.com",
    ]);
    assert_eq!(code, Some(0), "{stdout}");
    assert_eq!(
        stdout,
        "envelope: from <someone@example.net> to [\"a@example.com\", \"b@example.com\"] (sender from --from, recipients from --to)\nno manager wants it: forwarded unchanged through 127.0.0.1:2525 to [\"a@example.com\", \"b@example.com\"]\n"
    );

    // The worker refuses to handle no message at once.
    let concurrency_zero = std::process::Command::new(example("dequeue"))
        .args([
            "--config",
            &rules.display().to_string(),
            "--concurrency",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(concurrency_zero.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&concurrency_zero.stderr).contains("must be 1 or more"),
        "{concurrency_zero:?}"
    );

    write_rules("{{ (subject | int) / 0 }}");
    let (code, stdout, stderr) = dry_run(&[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("  error: text does not render: "),
        "{stdout}"
    );
    assert!(stderr.contains("a text does not render"), "{stderr}");
}

/// End to end: a message sent to `swiftdrop serve` is stored, claimed by the example
/// worker (a separate process), posted to the room and mailed as an alert; the queue ends
/// with it in `done/`; SIGTERM stops the worker with exit code 0.
#[tokio::test]
async fn from_smtp_through_the_store_to_the_room_and_the_alert() {
    let prosody = Prosody::start();
    let watcher = Watcher::join(&prosody, "ops").await;
    let sink = SmtpSink::start(&[]);
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    // Makes the Maildir that both processes use.
    let _queue = setup.queue().await;
    let rules_file = setup.dir.path().join("rules.yml");
    std::fs::write(
        &rules_file,
        rules_with(
            sink.port,
            ", xmpp:ops@conference.xmpp.test",
            &rules_account(prosody.port, "10s"),
        ),
    )
    .unwrap();
    let running = FilterAndWorker::start(&setup, &rules_file, &[]).await;
    let body = b"From: Nagios <nagios@mon.example.org>\r\nTo: ops@example.com\r\nSubject: CRITICAL: disk full on web7\r\nMessage-ID: <e2e@mon.example.org>\r\n\r\n/srv is at 100%\r\n";
    running
        .send("nagios@mon.example.org", &["ops@example.com"], body)
        .await;
    assert_eq!(watcher.wait_for("disk full on web7").await, 1);
    sink.wait_for_dump_ending("/srv is at 100%")
        .await
        .expect("the alert arrived");
    wait_until_done(&setup, 1).await;
    assert_eq!(running.stop_worker(), Some(0));
    // Its text log names the destination it opened, without colour codes in a file.
    let log = std::fs::read_to_string(setup.dir.path().join("worker.log")).unwrap();
    assert!(!log.contains('\x1b'), "{log}");
    let destination = setup.queue().await.destination().describe();
    assert!(
        log.lines()
            .any(|l| l.contains("dequeue worker started") && l.contains(&destination)),
        "{log}"
    );
}

/// SIGTERM while a message is in hand (the SMTP server answers DATA 3 s late): the worker
/// finishes it (the alert arrives, the message is in `done/`) and exits 0.
#[tokio::test]
async fn sigterm_finishes_the_message_in_hand() {
    let sink = SmtpSink::start(&["-w", "3"]);
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let _queue = setup.queue().await;
    let rules_file = setup.dir.path().join("rules.yml");
    std::fs::write(&rules_file, rules_with(sink.port, "", "")).unwrap();
    // The worker honours serve's log format setting.
    let json = [("SWIFTDROP_SERVER_LOG_FORMAT", "json")];
    let running = FilterAndWorker::start(&setup, &rules_file, &json).await;
    let body = b"From: Nagios <nagios@mon.example.org>\r\nTo: ops@example.com\r\nSubject: CRITICAL: disk full on web9\r\nMessage-ID: <term@mon.example.org>\r\n\r\n/tmp is at 100%\r\n";
    running
        .send("nagios@mon.example.org", &["ops@example.com"], body)
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while setup.names(State::Processing).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Past the job's look at the stop signal (a claim taken as the signal comes is handed
    // back untouched): the SMTP server holds the message 3 s.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let log_path = setup.dir.path().join("worker.log");
    assert_eq!(running.stop_worker(), Some(0));
    // One JSON object per line, lists as arrays, no colour codes in a file.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains('\x1b'), "{log}");
    let handled: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect(l))
        .filter(|v| v["fields"]["message"] == "message handled")
        .collect();
    assert_eq!(handled.len(), 1, "{log}");
    assert_eq!(handled[0]["fields"]["rules"], serde_json::json!(["disk"]));
    let actions = handled[0]["fields"]["actions"]
        .as_array()
        .expect("an array");
    assert!(
        actions[0]
            .as_str()
            .unwrap()
            .contains("mailto:oncall@example.com"),
        "{log}"
    );
    if setup.names(State::Done).await.len() != 1 {
        // Why it went elsewhere, for the next one to read.
        let queue = setup.queue().await;
        let mut reasons = Vec::new();
        for (state, names) in setup.everything().await {
            for name in names {
                for copy in queue.copies(&name).await.unwrap() {
                    reasons.push(format!("{state:?} {name}: {:?}", copy.record.reason));
                }
            }
        }
        panic!("not in done/: {reasons:#?}");
    }
    sink.wait_for_dump_ending("/tmp is at 100%")
        .await
        .expect("the alert arrived");
}

/// `swiftdrop serve` on a free port and the example worker with `rules`, as separate
/// processes over the queue of `setup`; both killed on drop. Their logs go to `serve.log`
/// and `worker.log` in the setup's directory.
pub struct FilterAndWorker {
    port: u16,
    serve: std::process::Child,
    worker: std::process::Child,
}

impl FilterAndWorker {
    pub async fn start(
        setup: &QueueSetup,
        rules: &std::path::Path,
        extra_env: &[(&str, &str)],
    ) -> FilterAndWorker {
        Self::start_on(setup, rules, extra_env, free_port()).await
    }

    /// [`FilterAndWorker::start`] with the filter on `port`.
    pub async fn start_on(
        setup: &QueueSetup,
        rules: &std::path::Path,
        extra_env: &[(&str, &str)],
        port: u16,
    ) -> FilterAndWorker {
        let spawn = |program: std::path::PathBuf, args: Vec<String>, log: &str| {
            std::process::Command::new(program)
                .env_clear()
                .env("RUST_LOG", "info")
                .envs(setup.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .envs(extra_env.iter().copied())
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(setup.dir.path().join(log)).unwrap())
                .spawn()
                .unwrap()
        };
        let serve = spawn(
            std::path::PathBuf::from(env!("CARGO_BIN_EXE_swiftdrop")),
            vec![
                "serve".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ],
            "serve.log",
        );
        let worker = spawn(
            example("dequeue"),
            vec![
                "--config".into(),
                rules.display().to_string(),
                "--concurrency".into(),
                "2".into(),
            ],
            "worker.log",
        );
        wait_for_port(port).await;
        FilterAndWorker {
            port,
            serve,
            worker,
        }
    }

    /// Sends one message through the filter (which must answer 250).
    pub async fn send(&self, from: &str, to: &[&str], body: &[u8]) {
        let mut client = mail_send::SmtpClientBuilder::new("127.0.0.1", self.port)
            .unwrap()
            .implicit_tls(false)
            .connect_plain()
            .await
            .unwrap();
        client
            .send(mail_send::smtp::message::Message::new(
                from,
                to.to_vec(),
                body,
            ))
            .await
            .unwrap();
    }

    /// The worker's process id.
    pub fn worker_pid(&self) -> u32 {
        self.worker.id()
    }

    /// Sends SIGTERM to the worker; its exit code.
    pub fn stop_worker(mut self) -> Option<i32> {
        let kill = std::process::Command::new("kill")
            .arg(self.worker.id().to_string())
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.worker.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for FilterAndWorker {
    fn drop(&mut self) {
        for child in [&mut self.serve, &mut self.worker] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `done/` holds `count` messages.
pub async fn wait_until_done(setup: &QueueSetup, count: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while setup.names(State::Done).await.len() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            setup.everything().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The same message stored twice (a client's resend after a lost reply): the second copy
/// goes to `done/` as a duplicate, and the alert is mailed once.
#[tokio::test]
async fn a_duplicate_is_done_without_acting() {
    let sink = SmtpSink::start(&[]);
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(sink.port, ""), sink.port);
    store(&queue, NAGIOS).await;
    let first = handle_next(&worker).await;
    assert_eq!(first.actions[0].1, ActionResult::Sent);
    store(&queue, NAGIOS).await;
    let second = handle_next(&worker).await;
    assert!(second.actions.is_empty(), "{second:?}");
    assert!(second.finished.starts_with("done/"), "{second:?}");
    let reason = second.reason.unwrap();
    assert_eq!(reason, format!("duplicate of {}", first.finished));
    sink.wait_for_dump_ending("..dot line").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(sink.dumps().len(), 1);
}
