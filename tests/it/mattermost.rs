//! The Mattermost sink through the dequeue worker, against the v4 stand-in (every request
//! checked as the API reference documents it; no violation may be recorded) and a real
//! slapd: a direct message with 7 attachments (two posts, one thread), an HTML-only
//! message as Markdown, a 40 000-character body split under the post limit, a 429 waited
//! out, an unknown recipient beside known ones, a retry after a 500 that posts only what
//! was missing, a file over the limit named instead, channel, user and webhook actions,
//! LDAP allow and block groups; and end to end from SMTP through `swiftdrop serve` and the
//! example worker.

use serde_json::{Value, json};
use swiftdrop::queue::{Queue, State};
use swiftdrop::worker::dequeue::{ActionResult, Worker};

use crate::dequeue::{FilterAndWorker, handle_next, store, wait_until_done};
use crate::mattermost_support::*;
use crate::queue_support::*;

/// Sets the environment variable `name` (the rules name secrets by variable). Every test
/// sets its own names or the same value, and Rust's environment access is locked.
fn set_env(name: &str, value: &str) {
    // SAFETY: no test reads the environment through C while this runs; the standard
    // library serialises its own reads and writes.
    unsafe { std::env::set_var(name, value) };
}

/// Rules with one rule whose actions are `actions`, `extra` lines under `mattermost:`.
fn rules(server: &Mattermost, actions: &str, extra: &str) -> String {
    set_env("MM_TEST_JIRA_TOKEN", "jira-token");
    set_env("MM_TEST_SPLUNK_TOKEN", "splunk-token");
    let webhook = format!("MM_TEST_WEBHOOK_{}", server.port);
    set_env(&webhook, &format!("{}/hooks/hook123", server.url()));
    format!(
        "unmatched: done
mattermost:
  url: {url}/
  bots:
    jira: {{token_env: MM_TEST_JIRA_TOKEN}}
    splunk: {{token_env: MM_TEST_SPLUNK_TOKEN}}
  webhook_env: {webhook}
{extra}managers:
  - name: apps
    messages-we-want:
      from: '/^svc-/'
    rules:
      - name: post
        actions: [{actions}]
",
        url = server.url()
    )
}

fn worker(queue: &Queue, rules: &str) -> Worker {
    Worker::new(
        queue.clone(),
        swiftdrop::worker::rules::parse(rules, "rules.yml").unwrap(),
    )
    .unwrap()
}

/// A message from `from` to `to` (envelope and headers) with a text body and `files`
/// (name, content type, body already in its transfer encoding, the encoding).
fn message(from: &str, to: &[&str], subject: &str, text: &str, files: &[File]) -> Vec<u8> {
    let mut m = format!("Return-Path: <{from}>\r\n");
    for r in to {
        m += &format!("Delivered-To: {r}\r\n");
    }
    m += &format!(
        "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <{}@test>\r\nMIME-Version: 1.0\r\n",
        to.join(", "),
        uuid::Uuid::new_v4()
    );
    if files.is_empty() {
        m += &format!("Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n");
        return m.into_bytes();
    }
    m += "Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n--b0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n";
    m += text;
    m += "\r\n";
    for f in files {
        m += &format!(
            "--b0\r\nContent-Type: {}\r\nContent-Disposition: attachment; filename=\"{}\"\r\nContent-Transfer-Encoding: {}\r\n\r\n{}\r\n",
            f.content_type, f.name, f.encoding, f.body
        );
    }
    m += "--b0--\r\n";
    m.into_bytes()
}

/// A text message from the jira application (`svc-jira@example.com`) to `to`.
fn jira(to: &[&str], subject: &str, text: &str) -> Vec<u8> {
    message("svc-jira@example.com", to, subject, text, &[])
}

struct File {
    name: String,
    content_type: &'static str,
    encoding: &'static str,
    body: String,
}

/// `n` small text files `log-1.txt` ...
fn text_files(n: usize) -> Vec<File> {
    (1..=n)
        .map(|i| File {
            name: format!("log-{i}.txt"),
            content_type: "text/plain",
            encoding: "7bit",
            body: format!("line of log {i}\r\n").repeat(i),
        })
        .collect()
}

/// The posts made to `user` (their direct channel), in order.
fn posts_to<'a>(posts: &'a [Value], user: &str) -> Vec<&'a Value> {
    posts.iter().filter(|p| p["to"] == json!([user])).collect()
}

async fn no_violations(server: &Mattermost) {
    assert_eq!(server.violations().await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_dm_with_seven_attachments_is_two_posts_in_one_thread() {
    let server = Mattermost::start(16383, 100_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    let mut files = text_files(7);
    files.push(File {
        name: "core.dump".into(),
        content_type: "application/octet-stream",
        encoding: "7bit",
        body: "x".repeat(150_000),
    });
    let report = handled(
        &queue,
        &worker,
        &message(
            "svc-jira@example.com",
            &["alice@example.com"],
            "OPS-1 created",
            "A new issue.",
            &files,
        ),
    )
    .await;
    assert_eq!(
        report.actions,
        [("post: mattermost:dm".to_string(), ActionResult::Sent)]
    );
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let posts = server.posts().await;
    let alice = posts_to(&posts, "alice");
    assert_eq!(alice.len(), 2, "{posts:#?}");
    assert!(alice.iter().all(|p| p["bot"] == "jira-bot"));
    let first = alice[0]["message"].as_str().unwrap();
    assert!(
        first.starts_with("**OPS-1 created**\n\nA new issue."),
        "{first}"
    );
    assert!(
        first.contains("Not attached: core.dump (150000 bytes, over the server's file size limit)"),
        "the file over the limit is named: {first}"
    );
    assert_eq!(alice[0]["root_id"], "");
    assert_eq!(
        alice[0]["files"],
        json!([
            "log-1.txt",
            "log-2.txt",
            "log-3.txt",
            "log-4.txt",
            "log-5.txt"
        ])
    );
    assert_eq!(alice[1]["root_id"], alice[0]["id"], "one thread");
    assert_eq!(alice[1]["files"], json!(["log-6.txt", "log-7.txt"]));
    // The upload requests: one file each, none for the file over the limit.
    let uploads: Vec<Value> = server
        .log()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/api/v4/files")
        .collect();
    assert_eq!(uploads.len(), 7);
    assert!(
        uploads
            .iter()
            .all(|u| u["fields"]["channel_id"] == alice[0]["channel_id"])
    );
    no_violations(&server).await;
}

#[tokio::test]
async fn html_only_mail_becomes_markdown_and_text_is_never_posted_twice() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    let html = "<html><head><style>p {color: red}</style></head><body>\
        <h2>Build failed</h2><p>See <a href=\"https://ci.example.com/b/7\">build 7</a>.</p>\
        <ul><li>first step</li><li>second step</li></ul>\
        <table><tr><th>job</th><th>state</th></tr><tr><td>unit</td><td>failed</td></tr></table>\
        <pre><code>cargo test\nerror[E0308]</code></pre><img src=\"cid:logo\"></body></html>";
    // HTML with an inline image (multipart/related): the image is a file of the post.
    let mail = format!(
        "Return-Path: <svc-jira@example.com>\r\nDelivered-To: bob@example.com\r\nFrom: svc-jira@example.com\r\n\
         To: bob@example.com\r\nSubject: CI\r\nMIME-Version: 1.0\r\nContent-Type: multipart/related; boundary=\"r\"\r\n\r\n\
         --r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n\
         --r\r\nContent-Type: image/png; name=\"logo.png\"\r\nContent-Disposition: inline; filename=\"logo.png\"\r\n\
         Content-ID: <logo>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--r--\r\n"
    );
    store(&queue, mail.as_bytes()).await;
    let report = handle_next(&worker).await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    // Both parts: only the text part is posted.
    let both = b"Return-Path: <svc-jira@example.com>\r\nDelivered-To: carol@example.com\r\nFrom: svc-jira@example.com\r\n\
        To: carol@example.com\r\nSubject: both\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n\
        --a\r\nContent-Type: text/plain\r\n\r\nplain words\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>html words</p>\r\n--a--\r\n";
    store(&queue, both).await;
    handle_next(&worker).await;
    let posts = server.posts().await;
    let markdown = posts_to(&posts, "bob")[0]["message"].as_str().unwrap();
    assert_eq!(posts_to(&posts, "bob")[0]["files"], json!(["logo.png"]));
    for expected in [
        "**CI**",
        "Build failed",
        "[build 7](https://ci.example.com/b/7)",
        "first step",
        "second step",
        "| unit | failed |",
        "| ---- | ------ |",
        "```",
        "error[E0308]",
    ] {
        assert!(markdown.contains(expected), "{expected:?} in {markdown}");
    }
    assert!(
        !markdown.contains('<') && !markdown.contains("color: red"),
        "{markdown}"
    );
    let item = |text: &str| {
        markdown
            .lines()
            .any(|l| l.starts_with(['*', '-']) && l.ends_with(text))
    };
    assert!(item(" first step") && item(" second step"), "{markdown}");
    let carol = posts_to(&posts, "carol")[0]["message"].as_str().unwrap();
    assert_eq!(carol, "**both**\n\nplain words");
    no_violations(&server).await;
}

#[tokio::test]
async fn a_long_body_is_split_under_the_server_post_limit() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    let line = "0123456789 ".repeat(9) + "end\r\n";
    let body = line.repeat(40_000 / line.len() + 1);
    assert!(body.len() > 40_000);
    let report = handled(
        &queue,
        &worker,
        &message(
            "svc-splunk@example.com",
            &["alice@example.com"],
            "report",
            &body,
            &[],
        ),
    )
    .await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let posts = server.posts().await;
    let alice = posts_to(&posts, "alice");
    assert_eq!(alice.len(), 3, "40 000 characters under 16383 each");
    assert!(alice.iter().all(|p| p["bot"] == "splunk-bot"));
    for post in &alice[1..] {
        assert_eq!(post["root_id"], alice[0]["id"]);
    }
    let joined: String = alice
        .iter()
        .map(|p| p["message"].as_str().unwrap().replace('\n', ""))
        .collect();
    assert_eq!(
        joined,
        format!("**report**{}", body.replace("\r\n", "").trim_end())
    );
    no_violations(&server).await;
}

#[tokio::test]
async fn a_rate_limit_is_waited_out() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    // First Retry-After (2 s), then X-Ratelimit-Reset (3 s): each is waited out.
    server
        .fault(
            "POST",
            "/api/v4/posts",
            429,
            0,
            1,
            json!({"Retry-After": "2", "X-Ratelimit-Remaining": "0"}),
        )
        .await;
    server
        .fault(
            "POST",
            "/api/v4/posts",
            429,
            0,
            1,
            json!({"X-Ratelimit-Limit": "10", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "3"}),
        )
        .await;
    let report = handled(
        &queue,
        &worker,
        &jira(&["bob@example.com"], "limited", "text"),
    )
    .await;
    assert_eq!(report.actions[0].1, ActionResult::Sent, "{report:?}");
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let posts: Vec<Value> = server
        .log()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/api/v4/posts")
        .collect();
    assert_eq!(posts.len(), 3, "two 429s, then the post: {posts:#?}");
    assert_eq!(posts[0]["fault"], 429);
    assert_eq!(posts[1]["fault"], 429);
    let at = |i: usize| posts[i]["at"].as_f64().unwrap();
    assert!(at(1) - at(0) >= 1.9, "Retry-After 2 was waited out");
    assert!(at(2) - at(1) >= 2.9, "X-Ratelimit-Reset 3 was waited out");
    assert_eq!(server.posts().await.len(), 1);
    no_violations(&server).await;
}

#[tokio::test]
async fn an_unknown_recipient_does_not_stop_the_others() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    let report = handled(
        &queue,
        &worker,
        &jira(
            &["alice@example.com", "zed@example.com", "bob@example.com"],
            "to three",
            "text",
        ),
    )
    .await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.starts_with("post: mattermost:dm: not delivered to zed@example.com: ")
            && reason.contains("404"),
        "{reason}"
    );
    let posts = server.posts().await;
    assert_eq!(posts_to(&posts, "alice").len(), 1);
    assert_eq!(posts_to(&posts, "bob").len(), 1);
    assert_eq!(posts.len(), 2);
    no_violations(&server).await;
}

/// A 500 on bob's second post: the message goes to `retry/`; the next attempt posts only
/// bob's second post, in bob's thread (alice's thread and bob's first post are recorded).
/// A file over the limit the server does not announce is learnt from its 413 and named.
#[tokio::test]
async fn a_retry_after_a_500_posts_only_what_was_missing() {
    let server = Mattermost::start(16383, 100_000, false).await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    let mut files = text_files(6);
    files.push(File {
        name: "huge.log".into(),
        content_type: "text/plain",
        encoding: "7bit",
        body: "y".repeat(120_000),
    });
    // Alice's two posts and bob's first pass, bob's second gets a 500.
    server
        .fault("POST", "/api/v4/posts", 500, 3, 1, json!({}))
        .await;
    let first = handled(
        &queue,
        &worker,
        &message(
            "svc-jira@example.com",
            &["alice@example.com", "bob@example.com"],
            "retry me",
            "text",
            &files,
        ),
    )
    .await;
    assert!(first.finished.starts_with("retry/"), "{first:?}");
    assert!(
        matches!(&first.actions[0].1, ActionResult::Failed(e) if !e.is_permanent()),
        "{first:?}"
    );
    assert_eq!(server.posts().await.len(), 3);
    let second = handle_next(&worker).await;
    assert!(second.finished.starts_with("done/"), "{second:?}");
    let posts = server.posts().await;
    let (alice, bob) = (posts_to(&posts, "alice"), posts_to(&posts, "bob"));
    assert_eq!((alice.len(), bob.len()), (2, 2), "{posts:#?}");
    assert_eq!(
        bob[1]["root_id"], bob[0]["id"],
        "the retry continues bob's thread"
    );
    for thread in [&alice, &bob] {
        assert_eq!(
            thread[0]["files"],
            json!([
                "log-1.txt",
                "log-2.txt",
                "log-3.txt",
                "log-4.txt",
                "log-5.txt"
            ])
        );
        assert_eq!(thread[1]["files"], json!(["log-6.txt"]));
        assert!(
            thread[1]["message"]
                .as_str()
                .unwrap()
                .contains("Not attached: huge.log (over the server's file size limit)"),
            "{:?}",
            thread[1]
        );
    }
    no_violations(&server).await;
}

#[tokio::test]
async fn channel_user_and_webhook_posts_and_an_unknown_application_fails() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(
        &queue,
        &rules(
            &server,
            "mattermost:~ops/alerts, mattermost:@carol, mattermost:webhook",
            "",
        ),
    );
    let report = handled(
        &queue,
        &worker,
        &message(
            "svc-jira@example.com",
            &["list@example.com"],
            "three ways",
            "hello",
            &text_files(1),
        ),
    )
    .await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let posts = server.posts().await;
    let channel: Vec<&Value> = posts.iter().filter(|p| p["channel"] == "alerts").collect();
    assert_eq!(channel.len(), 1);
    assert_eq!(channel[0]["files"], json!(["log-1.txt"]));
    assert_eq!(posts_to(&posts, "carol").len(), 1);
    let hooks: Vec<Value> = server
        .log()
        .await
        .into_iter()
        .filter(|r| r["path"] == "/hooks/hook123")
        .collect();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0]["json"]["username"], "jira");
    let text = hooks[0]["json"]["text"].as_str().unwrap();
    assert!(text.starts_with("**three ways**\n\nhello"), "{text}");
    assert!(text.contains("log-1.txt"), "attachments are named: {text}");

    let report = handled(
        &queue,
        &worker,
        &message(
            "svc-nagios@example.com",
            &["list@example.com"],
            "who?",
            "x",
            &[],
        ),
    )
    .await;
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("no bot for application \"nagios\""),
        "{report:?}"
    );
    no_violations(&server).await;
}

/// LDAP decides: alice (in jira-users) gets it; mallory (in jira-users and the block
/// group), bob (not in jira-users) and zed (not in the directory) are skipped and named;
/// a message with no allowed recipient is done with that reason. Bound as the service
/// account; anonymously this directory (as real ones) refuses to search: the message
/// fails for good with the directory's answer.
#[tokio::test]
async fn ldap_groups_decide_who_receives() {
    let slapd = Slapd::start();
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    set_env("MM_TEST_LDAP_PASSWORD", "reader");
    let ldap = |bind: &str| {
        format!(
            "  ldap:
    url: {}
    base: dc=example,dc=com
{bind}    app_groups:
      Jira: cn=jira-users,ou=groups,dc=example,dc=com
    block_group: cn=mattermost-blacklist,ou=groups,dc=example,dc=com
",
            slapd.url()
        )
    };
    let bound = ldap(
        "    bind_dn: uid=svc-reader,ou=people,dc=example,dc=com\n    password_env: MM_TEST_LDAP_PASSWORD\n",
    );
    let worker = worker(&queue, &rules(&server, "mattermost:dm", &bound));
    let everyone = [
        "alice@example.com",
        "mallory@example.com",
        "bob@example.com",
        "zed@example.com",
    ];
    let report = handled(&queue, &worker, &jira(&everyone, "ldap", "text")).await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let reason = report.reason.unwrap();
    for expected in [
        "mallory@example.com: a member of cn=mattermost-blacklist",
        "bob@example.com: not a member of cn=jira-users",
        "zed@example.com: not in the directory",
    ] {
        assert!(reason.contains(expected), "{expected:?} in {reason}");
    }
    let posts = server.posts().await;
    assert_eq!(posts.len(), 1, "{posts:#?}");
    assert_eq!(posts[0]["to"], json!(["alice"]));

    let report = handled(&queue, &worker, &jira(&["bob@example.com"], "nobody", "x")).await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("no allowed recipient: bob@example.com"),
        "{reason}"
    );

    let anonymous = self::worker(&queue, &rules(&server, "mattermost:dm", &ldap("")));
    let report = handled(&queue, &anonymous, &jira(&everyone, "anonymous", "x")).await;
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(reason.contains("insufficientAccessRights"), "{reason}");
    assert_eq!(server.posts().await.len(), 1);
    assert_eq!(setup.names(State::Done).await.len(), 2);
    no_violations(&server).await;
}

/// The limits a message's threads were cut with are recorded: after a 500 and a restart
/// of the worker, with the server's limit raised meanwhile (an upgrade: 4000 to 16383),
/// the retry goes on with the same cut (no piece twice, none missing). Threads done are recorded as one short entry
/// each; a refused bot token fails the message for good without posting.
#[tokio::test]
async fn a_retry_cuts_as_the_first_attempt_and_keeps_the_record_short() {
    let server = Mattermost::start(4000, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let line = "0123456789 ".repeat(9) + "end\r\n";
    let body = line.repeat(40_000 / line.len() + 1);
    // The second post (of 11 at 4000) gets a 500.
    server
        .fault("POST", "/api/v4/posts", 500, 1, 1, json!({}))
        .await;
    store(
        &queue,
        &jira(&["alice@example.com", "bob@example.com"], "cut", &body),
    )
    .await;
    let first = handle_next(&worker(&queue, &rules(&server, "mattermost:dm", ""))).await;
    assert!(first.finished.starts_with("retry/"), "{first:?}");
    assert_eq!(server.posts().await.len(), 1);
    server.set_max_post_size(16383).await;
    let second = handle_next(&worker(&queue, &rules(&server, "mattermost:dm", ""))).await;
    assert!(second.finished.starts_with("done/"), "{second:?}");
    let posts = server.posts().await;
    for user in ["alice", "bob"] {
        let thread = posts_to(&posts, user);
        assert_eq!(thread.len(), 11, "{user}: cut at 4000 as the first attempt");
        assert!(
            thread
                .iter()
                .all(|p| p["message"].as_str().unwrap().chars().count() <= 4000)
        );
        let joined: String = thread
            .iter()
            .map(|p| p["message"].as_str().unwrap().replace('\n', ""))
            .collect();
        assert_eq!(
            joined,
            format!("**cut**{}", body.replace("\r\n", "").trim_end())
        );
    }
    let copy = queue
        .find(&setup.names(State::Done).await[0])
        .await
        .unwrap()
        .remove(0);
    let done = copy.record.done;
    // The plan, the recipients served and the action: no post-by-post records left.
    assert_eq!(done.len(), 3, "{done:?}");
    assert_eq!(
        done.iter().filter(|d| d.contains('=')).count(),
        2,
        "{done:?}"
    );

    set_env("MM_TEST_WRONG_TOKEN", "not-a-token");
    let rules_text =
        rules(&server, "mattermost:dm", "").replace("MM_TEST_JIRA_TOKEN", "MM_TEST_WRONG_TOKEN");
    let report = handled(
        &queue,
        &worker(&queue, &rules_text),
        &jira(&["alice@example.com"], "token", "x"),
    )
    .await;
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("the bot is refused"),
        "{report:?}"
    );
    assert_eq!(server.posts().await.len(), 22);
    no_violations(&server).await;
}

/// End to end: mail from `svc-jira@...` to three recipients through `swiftdrop serve` into
/// the store; the example worker (its own process, the token from its environment) posts
/// a direct message from the jira bot to each allowed one (the `allow` list leaves bob
/// out); the message ends in `done/` naming bob.
#[tokio::test]
async fn from_smtp_through_the_store_to_direct_messages() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let rules_file = setup.dir.path().join("rules.yml");
    let rules = rules(
        &server,
        "mattermost:dm",
        "  allow: [alice@example.com, '@ops.example.com', carol@example.com]\n",
    );
    std::fs::write(&rules_file, &rules).unwrap();
    let running = start_with_bots(&setup, &rules_file, &server).await;
    let to = ["alice@example.com", "bob@example.com", "carol@example.com"];
    let body = jira(&to, "OPS-7 assigned", "Please look.");
    // The filter adds its own trace headers: send the message without the test's.
    let headers_end = body.windows(6).position(|w| w == b"\r\nFrom").unwrap() + 2;
    running
        .send("svc-jira@example.com", &to, &body[headers_end..])
        .await;
    wait_until_done(&setup, 1).await;
    let posts = server.posts().await;
    assert_eq!(posts.len(), 2, "{posts:#?}");
    for user in ["alice", "carol"] {
        let to_user = posts_to(&posts, user);
        assert_eq!(to_user.len(), 1, "{posts:#?}");
        assert_eq!(to_user[0]["bot"], "jira-bot");
        assert_eq!(to_user[0]["message"], "**OPS-7 assigned**\n\nPlease look.");
    }
    let done = setup.names(State::Done).await;
    let copy = queue.find(&done[0]).await.unwrap().remove(0);
    let reason = copy.record.reason.unwrap();
    assert!(
        reason.contains("bob@example.com: not on the allow list"),
        "{reason}"
    );
    assert_eq!(running.stop_worker(), Some(0));
    no_violations(&server).await;
}

/// A 403 on one recipient's direct channel (the bot may not message that user) is that
/// recipient's: the others get theirs and the message is done, naming it.
#[tokio::test]
async fn a_403_for_one_recipient_does_not_stop_the_others() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    server
        .fault("POST", "/api/v4/channels/direct", 403, 1, 1, json!({}))
        .await;
    let to = ["alice@example.com", "bob@example.com", "carol@example.com"];
    let report = handled(&queue, &worker, &jira(&to, "restricted", "text")).await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("not delivered to bob@example.com: ") && reason.contains("403"),
        "{reason}"
    );
    let posts = server.posts().await;
    assert_eq!(posts_to(&posts, "alice").len(), 1);
    assert_eq!(posts_to(&posts, "carol").len(), 1);
    assert_eq!(posts.len(), 2);
    no_violations(&server).await;
}

/// A direct message to 700 recipients, with a 500 from the server at the 300th post: the
/// retry serves the other 400, each recipient gets the message once, and the record stays
/// short (one bit per recipient, in two chunks: no recipient ceiling).
#[tokio::test]
async fn seven_hundred_recipients_each_get_it_once_across_a_retry() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let names: Vec<String> = (0..700).map(|i| format!("user{i:03}")).collect();
    server.add_users(&names).await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    server
        .fault("POST", "/api/v4/posts", 500, 299, 1, json!({}))
        .await;
    let mut mail = String::from("Return-Path: <svc-jira@example.com>\r\n");
    for name in &names {
        mail += &format!("Delivered-To: {name}@example.com\r\n");
    }
    mail += "From: svc-jira@example.com\r\nTo: undisclosed-recipients:;\r\nSubject: many\r\n\r\nto all\r\n";
    store(&queue, mail.as_bytes()).await;
    let first = handle_next(&worker).await;
    assert!(first.finished.starts_with("retry/"), "{first:?}");
    assert_eq!(server.posts().await.len(), 299);
    let second = handle_next(&worker).await;
    assert!(second.finished.starts_with("done/"), "{second:?}");
    let posts = server.posts().await;
    for name in &names {
        assert_eq!(posts_to(&posts, name).len(), 1, "{name}");
    }
    assert_eq!(posts.len(), 700);
    let copy = queue
        .find(&setup.names(State::Done).await[0])
        .await
        .unwrap()
        .remove(0);
    // The plan, the recipients served (700 bits in two chunks) and the action.
    assert_eq!(copy.record.done.len(), 4, "{:?}", copy.record.done);
    no_violations(&server).await;
}

/// Users the bot may not see (`GET /users/email` answers 403, as it does for an unknown
/// address when the bot's view of users is restricted) are named, one by one: the others
/// get theirs. A server that hides every address from the bot fails the action for good.
#[tokio::test]
async fn a_user_the_bot_may_not_see_is_named_and_hidden_addresses_fail_the_action() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    server
        .settings(json!({ "Invisible": ["bob"], "RestrictedView": true }))
        .await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    let to = ["alice@example.com", "bob@example.com", "zed@example.com"];
    let report = handled(&queue, &worker, &jira(&to, "visible", "text")).await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let reason = report.reason.unwrap();
    for who in ["bob@example.com: ", "zed@example.com: "] {
        assert!(reason.contains(who), "{reason}");
    }
    assert_eq!(reason.matches("403").count(), 2, "{reason}");
    let posts = server.posts().await;
    assert_eq!(posts.len(), 1);
    assert_eq!(posts_to(&posts, "alice").len(), 1);

    server.settings(json!({ "ShowEmailAddress": false })).await;
    let report = handled(
        &queue,
        &worker,
        &jira(&["alice@example.com"], "hidden", "x"),
    )
    .await;
    assert!(report.finished.starts_with("failed/"), "{report:?}");
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("the bot is refused") && reason.contains("403"),
        "{reason}"
    );
    assert_eq!(server.posts().await.len(), 1);
    no_violations(&server).await;
}

/// A PNG whose declared size is over `MaxImageResolution` (400) and a file a plugin
/// refuses (400): the text is posted with the file that was taken, and names the two
/// refused with the server's reason; the message is done. With attachments turned off
/// (403), the text still goes, naming the file.
#[tokio::test]
async fn a_refused_file_is_named_and_the_text_still_goes() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    server.settings(json!({ "PluginRejects": [".exe"] })).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    // A PNG's signature and IHDR chunk: 10000 × 10000 pixels declared.
    let mut png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    png.extend(10_000u32.to_be_bytes());
    png.extend(10_000u32.to_be_bytes());
    png.extend(b"\x08\x02\x00\x00\x00\x00\x00\x00\x00");
    let mut files = text_files(1);
    files.push(File {
        name: "chart.png".into(),
        content_type: "image/png",
        encoding: "base64",
        body: base64(&png),
    });
    files.push(File {
        name: "fix.exe".into(),
        content_type: "application/octet-stream",
        encoding: "base64",
        body: base64(b"MZ"),
    });
    let report = handled(
        &queue,
        &worker,
        &message(
            "svc-jira@example.com",
            &["alice@example.com"],
            "files",
            "see files",
            &files,
        ),
    )
    .await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    assert_eq!(report.reason, None, "{report:?}");
    let posts = server.posts().await;
    assert_eq!(posts.len(), 1, "{posts:#?}");
    assert_eq!(posts[0]["files"], json!(["log-1.txt"]));
    let text = posts[0]["message"].as_str().unwrap();
    assert!(text.starts_with("**files**\n\nsee files"), "{text}");
    assert!(
        text.contains("Not attached: chart.png (refused: 400 Unable to upload image file")
            && text.contains("fix.exe (refused: 400 File rejected by plugin"),
        "{text}"
    );

    server
        .settings(json!({ "EnableFileAttachments": false }))
        .await;
    let report = handled(
        &queue,
        &worker,
        &message(
            "svc-jira@example.com",
            &["bob@example.com"],
            "off",
            "x",
            &text_files(1),
        ),
    )
    .await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let posts = server.posts().await;
    let bob = posts_to(&posts, "bob");
    assert_eq!(bob.len(), 1);
    assert!(
        bob[0]["message"]
            .as_str()
            .unwrap()
            .contains("Not attached: log-1.txt (refused: 403 File attachments have been disabled"),
        "{:?}",
        bob[0]
    );
    no_violations(&server).await;
}

/// A post the server made whose answer was lost (a proxy's 502): the retry, more than 30 s
/// later as far as the server's dedup cache goes, looks in each thread's channel first and
/// does not post it again. The recipient before it, unknown in
/// the first attempt and known by the retry, is posted to; each has the message once.
#[tokio::test]
async fn a_post_whose_answer_was_lost_is_not_posted_again() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    // Alice's post is answered; bob's is made, and its answers lost.
    server.fault_after("POST", "/api/v4/posts", 502, 1, 1).await;
    let to = ["alice@example.com", "dora@example.com", "bob@example.com"];
    let first = handled(&queue, &worker, &jira(&to, "lost answer", "text")).await;
    assert!(first.finished.starts_with("retry/"), "{first:?}");
    let posts = server.posts().await;
    assert_eq!(posts.len(), 2, "alice's and bob's, once: {posts:#?}");
    server.settings(json!({ "PendingTTL": 0 })).await;
    server.add_users(&["dora".to_string()]).await;
    let second = handle_next(&worker).await;
    assert!(second.finished.starts_with("done/"), "{second:?}");
    let posts = server.posts().await;
    for user in ["alice", "dora", "bob"] {
        assert_eq!(posts_to(&posts, user).len(), 1, "{user}: {posts:#?}");
    }
    let bob = posts_to(&posts, "bob")[0];
    let identity = &bob["props"]["swiftdrop_post"];
    assert!(identity.as_str().is_some_and(|i| i.len() == 32), "{bob:?}");
    assert_eq!(&bob["pending_post_id"], identity);
    let looked = server
        .log()
        .await
        .iter()
        .filter(|e| e["method"] == "GET" && e["path"].as_str().unwrap().ends_with("/posts"))
        .count();
    assert_eq!(looked, 2, "the retry looks in dora's and bob's channels");
    no_violations(&server).await;
}

/// The server's refusal of a post itself (over a `MaxPostSize` lowered since the first
/// attempt cut the thread) fails the action: the message goes to `failed/`, not to `done/`
/// as if a recipient had been refused. A thread whose first post was deleted meanwhile
/// costs that one recipient (named, the server asked whether the post is gone); the next
/// recipient gets theirs and the message is done.
#[tokio::test]
async fn a_post_the_server_refuses_fails_the_action_and_a_lost_root_costs_one_recipient() {
    let server = Mattermost::start(4000, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_RETRY_BACKOFF", "1s")]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    let body = "0123456789 ".repeat(600);
    for (subject, lower_limit) in [("root gone", false), ("limit lowered", true)] {
        // Alice's thread's second post gets a 500: the retry continues the thread.
        server
            .fault("POST", "/api/v4/posts", 500, 1, 1, json!({}))
            .await;
        let first = handled(
            &queue,
            &worker,
            &jira(&["alice@example.com", "bob@example.com"], subject, &body),
        )
        .await;
        assert!(first.finished.starts_with("retry/"), "{first:?}");
        let root = server.posts().await.last().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        if lower_limit {
            server.set_max_post_size(100).await;
        } else {
            server.delete_post(&root).await;
        }
        let second = handle_next(&worker).await;
        let reason = second.reason.clone().unwrap_or_default();
        if lower_limit {
            assert!(
                second.finished.starts_with("failed/"),
                "{subject}: {second:?}"
            );
            assert!(
                reason.contains("the server refused the post") && reason.contains("400"),
                "{subject}: {reason}"
            );
        } else {
            assert!(
                second.finished.starts_with("done/"),
                "{subject}: {second:?}"
            );
            assert!(
                reason.contains("alice@example.com: the thread's first post is gone"),
                "{subject}: {reason}"
            );
            let posts = server.posts().await;
            assert_eq!(posts_to(&posts, "bob").len(), 2, "bob's whole thread");
        }
    }
    no_violations(&server).await;
}

/// Mentions written in mail notify nobody (a zero-width space after the `@`), an address
/// keeps its `@`, an image in mail becomes a link; a mention the operator's template
/// writes stays.
#[tokio::test]
async fn mail_text_mentions_nobody_and_its_images_are_links() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(
        &queue,
        &rules(
            &server,
            "mattermost:dm",
            "  template: '@here {{ subject }}: {{ body }}'\n",
        ),
    );
    let report = handled(
        &queue,
        &worker,
        &jira(
            &["alice@example.com"],
            "@all deploy failed",
            "@channel see ![chart](https://tracker.example/pixel.png), ask @bob or ops@example.com",
        ),
    )
    .await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    let posts = server.posts().await;
    assert_eq!(
        posts[0]["message"],
        "@here @\u{200B}all deploy failed: @\u{200B}channel see !\u{200B}[chart](https://tracker.example/pixel.png), ask @\u{200B}bob or ops@example.com"
    );
    no_violations(&server).await;
}

/// Groups within groups count, as directories nest them: dave is in jira-users through
/// jira-oncall; erin is in the posixGroup splunk-unix by `memberUid`; carol's groups form
/// a circle (loop-a, loop-b) that the walk leaves, and she is in neither application's
/// group. `--check` refuses an `app_groups` key that names no bot.
#[tokio::test]
async fn nested_and_posix_groups_count_and_a_circle_of_groups_ends() {
    let slapd = Slapd::start();
    let server = Mattermost::start(16383, 1_000_000, true).await;
    server
        .add_users(&["dave".to_string(), "erin".to_string()])
        .await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    set_env("MM_TEST_LDAP_PASSWORD", "reader");
    let ldap = format!(
        "  ldap:
    url: {}
    base: dc=example,dc=com
    bind_dn: uid=svc-reader,ou=people,dc=example,dc=com
    password_env: MM_TEST_LDAP_PASSWORD
    app_groups:
      jira: cn=jira-users,ou=groups,dc=example,dc=com
      splunk: cn=splunk-unix,ou=groups,dc=example,dc=com
",
        slapd.url()
    );
    let worker = worker(&queue, &rules(&server, "mattermost:dm", &ldap));
    for (app, to) in [
        ("jira", ["dave@example.com", "carol@example.com"]),
        ("splunk", ["erin@example.com", "bob@example.com"]),
    ] {
        let report = handled(
            &queue,
            &worker,
            &message(&format!("svc-{app}@example.com"), &to, app, "text", &[]),
        )
        .await;
        assert!(report.finished.starts_with("done/"), "{report:?}");
        let reason = report.reason.unwrap();
        assert!(
            reason.contains(&format!("{}: not a member of", to[1])),
            "{app}: {reason}"
        );
    }
    let posts = server.posts().await;
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert_eq!(posts_to(&posts, "dave").len(), 1);
    assert_eq!(posts_to(&posts, "erin").len(), 1);

    let typo = rules(
        &server,
        "mattermost:dm",
        &ldap.replace("      splunk:", "      splunkk:"),
    );
    let problems = swiftdrop::worker::rules::parse(&typo, "rules.yml")
        .unwrap_err()
        .problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("app_groups: \"splunkk\" names no bot")),
        "{problems:?}"
    );
    no_violations(&server).await;
}

/// An answer that says no requests are left (`X-Ratelimit-Remaining: 0`, reset in 2 s)
/// paces the worker, not only the job that got it: the next message's first request waits
/// for the reset. A write that waited out a rate limit is not sent once the claim's lease
/// is lost.
#[tokio::test]
async fn a_spent_rate_limit_paces_the_next_job_and_a_lost_lease_stops_a_write() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(&queue, &rules(&server, "mattermost:dm", ""));
    server
        .headers_on(
            "POST",
            "/api/v4/posts",
            0,
            json!({"X-Ratelimit-Limit": "10", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": "2"}),
        )
        .await;
    for to in ["alice@example.com", "bob@example.com"] {
        let report = handled(&queue, &worker, &jira(&[to], "paced", "x")).await;
        assert!(report.finished.starts_with("done/"), "{report:?}");
    }
    let log = server.log().await;
    let spent = log
        .iter()
        .position(|e| e["headers"]["X-Ratelimit-Remaining"] == "0")
        .expect("the answer with no requests left");
    let at = |e: &Value| e["at"].as_f64().unwrap();
    let next = &log[spent + 1];
    assert!(
        at(next) - at(&log[spent]) >= 1.9,
        "the next job's first request ({}) waited for the reset",
        next["path"]
    );

    // Straight at the API: a 429 asks for 1 s; after it the lease is gone.
    let api = swiftdrop::worker::sinks::mattermost::api::Api::new(
        &server.url(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    server
        .fault(
            "POST",
            "/api/v4/posts",
            429,
            0,
            1,
            json!({"Retry-After": "1"}),
        )
        .await;
    let token = swiftdrop::config::Secret::new("jira-token");
    let lost = || false;
    let post = swiftdrop::worker::sinks::mattermost::api::NewPost {
        channel_id: "x",
        message: "never sent",
        file_ids: &[],
        root_id: None,
        identity: "id",
    };
    let result = api.post(&token, &post, &lost).await;
    assert_eq!(
        result,
        Err(
            swiftdrop::worker::sinks::mattermost::api::ApiError::Transient(
                swiftdrop::worker::sinks::mattermost::api::LEASE_LOST_WAITING.into()
            )
        )
    );
    let posts_tried = server
        .log()
        .await
        .iter()
        .filter(|e| e["method"] == "POST" && e["path"] == "/api/v4/posts")
        .count();
    assert_eq!(
        posts_tried, 3,
        "two posts, the 429, and nothing after the wait"
    );
    no_violations(&server).await;
}

/// With `require_sasl_login`, a message is posted only when Postfix recorded the
/// application's own login in its `Received:` header (the first one): jira's message from
/// jira's login is posted; svc-splunk@ from jira's login, or without a login, fails for good.
#[tokio::test]
async fn only_the_applications_own_login_may_post_as_its_bot() {
    let server = Mattermost::start(16383, 1_000_000, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let worker = worker(
        &queue,
        &rules(&server, "mattermost:dm", "  require_sasl_login: true\n"),
    );
    let submitted = |from: &str, login: Option<&str>| {
        let auth = login.map_or(String::new(), |l| {
            format!("\t(Authenticated sender: {l}@mx.example.com)\r\n")
        });
        format!(
            "Return-Path: <{from}>\r\nDelivered-To: alice@example.com\r\n\
             Received: from app.example.com (app.example.com [192.0.2.7])\r\n{auth}\
             \tby mx.example.com (Postfix) with ESMTPA; Sun,  6 Dec 2026 07:49:38 +0000 (UTC)\r\n\
             From: {from}\r\nSubject: from {from}\r\n\r\ntext\r\n"
        )
        .into_bytes()
    };
    let report = handled(
        &queue,
        &worker,
        &submitted("svc-jira@example.com", Some("jira")),
    )
    .await;
    assert!(report.finished.starts_with("done/"), "{report:?}");
    assert_eq!(report.reason, None, "{report:?}");
    for (login, said) in [
        (Some("jira"), "logged in as \"jira@mx.example.com\""),
        (None, "no login"),
    ] {
        let report = handled(&queue, &worker, &submitted("svc-splunk@example.com", login)).await;
        assert!(report.finished.starts_with("failed/"), "{report:?}");
        let reason = report.reason.unwrap();
        assert!(
            reason.contains("was not submitted with the \"splunk\" login") && reason.contains(said),
            "{reason}"
        );
    }
    let posts = server.posts().await;
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0]["bot"], "jira-bot");
    no_violations(&server).await;
}

/// Stores `mail` and has `worker` handle the next message; its report.
async fn handled(
    queue: &Queue,
    worker: &Worker,
    mail: &[u8],
) -> swiftdrop::worker::dequeue::Report {
    store(queue, mail).await;
    handle_next(worker).await
}

/// A kB figure of `/proc/<pid>/status` (`VmHWM`: the peak resident size so far).
fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

/// A message with a 50 MiB attachment posted by two actions (a direct message and a
/// channel post, each uploading the file): the worker process parses it once and holds its
/// bytes and the decoded file once, so its peak resident size grows by at most twice the
/// message.
#[tokio::test]
async fn a_50_mib_attachment_is_parsed_once_and_held_once() {
    let server = Mattermost::start(16383, 64 << 20, true).await;
    let setup = QueueSetup::new(Backend::Maildir, &[("SWIFTDROP_QUEUE_LEASE", "5m")]);
    let queue = setup.queue().await;
    let rules_file = setup.dir.path().join("rules.yml");
    std::fs::write(
        &rules_file,
        rules(&server, "mattermost:dm, mattermost:~ops/alerts", ""),
    )
    .unwrap();
    let running = start_with_bots(&setup, &rules_file, &server).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let pid = running.worker_pid();
    let before = proc_status_kb(pid, "VmHWM:");
    // 50 MiB of varied bytes, base64 in 76-character lines.
    let file: Vec<u8> = (0..50u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let encoded = base64(&file);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let big = message(
        "svc-jira@example.com",
        &["alice@example.com"],
        "a large file",
        "See the file.",
        &[File {
            name: "dump.bin".into(),
            content_type: "application/octet-stream",
            encoding: "base64",
            body: lines.join("\r\n"),
        }],
    );
    drop((file, encoded));
    store(&queue, &big).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(180);
    while setup.names(State::Done).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            setup.everything().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let grown = (proc_status_kb(pid, "VmHWM:") - before) * 1024;
    let posts = server.posts().await;
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert!(
        posts
            .iter()
            .all(|p| p["files"].as_array().is_some_and(|f| f.len() == 1)),
        "{posts:#?}"
    );
    assert!(
        grown <= 2 * big.len() as u64,
        "the worker grew by {grown} bytes for a message of {}",
        big.len()
    );
    assert_eq!(running.stop_worker(), Some(0));
    no_violations(&server).await;
}

/// `bytes` in base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `swiftdrop serve` and the example worker over `setup`'s queue with `rules_file`, the
/// bots' tokens and the webhook URL of `server` in the worker's environment.
async fn start_with_bots(
    setup: &QueueSetup,
    rules_file: &std::path::Path,
    server: &Mattermost,
) -> FilterAndWorker {
    let webhook_var = format!("MM_TEST_WEBHOOK_{}", server.port);
    let webhook_url = format!("{}/hooks/hook123", server.url());
    FilterAndWorker::start(
        setup,
        rules_file,
        &[
            ("MM_TEST_JIRA_TOKEN", "jira-token"),
            ("MM_TEST_SPLUNK_TOKEN", "splunk-token"),
            (&webhook_var, &webhook_url),
        ],
    )
    .await
}
