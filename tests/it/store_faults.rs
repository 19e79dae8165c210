//! Faults of a real store, injected by [`FaultProxy`] between swiftdrop and the test Swift
//! (native API and S3 API): 500 answers and connections dropped mid-upload are retried
//! until the write is confirmed; an ETag that does not match the bytes sent never earns a
//! 250; a store that never answers gives 451 at the deadline. In every case the message is
//! under `cur/` exactly once after a 250 and not at all after a 451.

use crate::fault_proxy::{Fault, FaultProxy};
use crate::support::*;
use crate::swift_support::*;

const PEER: &str = "127.0.0.1:40200";

#[derive(Debug, Clone, Copy)]
enum Api {
    Native,
    S3,
}

/// A filter whose one destination reaches Swift through `proxy`, with `store_timeout` and
/// a per-request `timeout`; returns it with its container's name.
async fn setup(
    api: Api,
    proxy: &FaultProxy,
    store_timeout: &str,
    timeout: &str,
) -> (
    Setup,
    std::sync::Arc<swiftdrop::filter::deliver::Deliverer>,
    String,
) {
    setup_and(api, proxy, store_timeout, timeout, &[]).await
}

/// As [`setup`], with more settings.
async fn setup_and(
    api: Api,
    proxy: &FaultProxy,
    store_timeout: &str,
    timeout: &str,
    extra: &[(&str, &str)],
) -> (
    Setup,
    std::sync::Arc<swiftdrop::filter::deliver::Deliverer>,
    String,
) {
    let container = unique_container("faults");
    let vars_for = |port| match api {
        Api::Native => swift_vars("OPS", "ops@example.com", port, &container),
        Api::S3 => s3_vars("OPS", "ops@example.com", port, &container),
    };
    // The container is made straight at Swift, with the usual patience (this VM's Swift
    // takes seconds to create one under load): the faults are for the messages.
    ready_destinations(&setup_with(&vars_for(swift().port))).await;
    let mut vars = vars_for(proxy.port);
    vars.push((
        "SWIFTDROP_SERVER_STORE_TIMEOUT".into(),
        store_timeout.into(),
    ));
    vars.push(("SWIFTDROP_OPS_TIMEOUT".into(), timeout.into()));
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let setup = setup_with(&vars);
    let deliverer = std::sync::Arc::new(setup.deliverer_with(setup.destinations()));
    (setup, deliverer, container)
}

/// Sends one message of about 200 KB (long enough to be cut halfway) and returns the reply
/// and the bytes sent after the trace headers.
async fn send_message(
    setup: &Setup,
    deliverer: std::sync::Arc<swiftdrop::filter::deliver::Deliverer>,
    rcpts: &[&str],
) -> (String, String) {
    send_lines(setup, deliverer, rcpts, 11_000).await
}

/// Sends one message of `lines` lines of 18 bytes; returns as [`send_message`].
async fn send_lines(
    setup: &Setup,
    deliverer: std::sync::Arc<swiftdrop::filter::deliver::Deliverer>,
    rcpts: &[&str],
    lines: usize,
) -> (String, String) {
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.envelope("ci@example.org", rcpts).await;
    d.command("DATA", "354").await;
    let body = format!(
        "Subject: faults\r\n\r\n{}",
        "0123456789abcdef\r\n".repeat(lines)
    );
    d.send(format!("{body}.\r\n")).await;
    (d.reply().await, body)
}

async fn failures_are_retried_until_confirmed(api: Api, fault: Fault) {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[fault, fault], Fault::Pass).await;
    // Room for the faults and for this VM's stalls of the shared Swift.
    let (setup, deliverer, container) = setup(api, &proxy, "20s", "5s").await;
    let (reply, body) = send_message(&setup, deliverer, &["ops@example.com"]).await;
    assert!(reply.starts_with("250 2.0.0"), "{api:?} {fault:?}: {reply}");
    assert!(
        proxy.puts_seen() >= 3,
        "{api:?}: {} puts",
        proxy.puts_seen()
    );
    let names = settled_listing(swift.port, &container, "cur/", 1).await;
    assert_eq!(names.len(), 1, "{api:?} {fault:?}: {names:?}");
    let (_, bytes) = native_get(swift.port, &container, &names[0]).await;
    assert!(
        bytes.ends_with(body.as_bytes()),
        "{api:?}: the bytes as sent"
    );
}

async fn a_refused_message_leaves_nothing(api: Api, fault: Fault) {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[], fault).await;
    let (setup, deliverer, container) = setup(api, &proxy, "8s", "3s").await;
    let (reply, _) = send_message(&setup, deliverer, &["ops@example.com"]).await;
    assert!(reply.starts_with("451 4.3.0"), "{api:?} {fault:?}: {reply}");
    assert!(proxy.puts_seen() >= 1);
    let names = settled_listing(swift.port, &container, "cur/", 0).await;
    assert!(names.is_empty(), "{api:?} {fault:?}: left {names:?}");
}

/// Swift stored the message but its answer was lost: before trying again, swiftdrop asks
/// whether the try landed, and it did: one PUT only (a second one could re-create a message
/// that a worker had already taken from `cur/`), and the message is there once. (Native
/// API only: object_store's S3 client repeats a request by itself before swiftdrop sees
/// the failure.)
#[tokio::test]
async fn native_a_lost_answer_is_found_stored() {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[Fault::LoseAnswer], Fault::Pass).await;
    let (setup, deliverer, container) = setup(Api::Native, &proxy, "20s", "5s").await;
    let (reply, body) = send_message(&setup, deliverer, &["ops@example.com"]).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(proxy.puts_seen(), 1);
    let names = settled_listing(swift.port, &container, "cur/", 1).await;
    assert_eq!(names.len(), 1, "{names:?}");
    let (_, bytes) = native_get(swift.port, &container, &names[0]).await;
    assert!(bytes.ends_with(body.as_bytes()), "the bytes as sent");
}

/// As above, but a worker claimed the message (moved it to `processing/`) before the
/// filter asked whether its PUT had landed: the message is found taken on, not written to
/// `cur/` again (which would hand a worker a second copy).
#[tokio::test]
async fn native_a_lost_answer_then_a_claim_is_not_stored_again() {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[Fault::LoseAnswerAfterClaim], Fault::Pass).await;
    let (setup, deliverer, container) = setup(Api::Native, &proxy, "20s", "5s").await;
    let (reply, body) = send_message(&setup, deliverer, &["ops@example.com"]).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(proxy.puts_seen(), 1);
    let names = settled_listing(swift.port, &container, "processing/", 1).await;
    assert_eq!(names.len(), 1, "{names:?}");
    let (_, bytes) = native_get(swift.port, &container, &names[0]).await;
    assert!(bytes.ends_with(body.as_bytes()), "the bytes as sent");
    // A listing may still name the object the claim deleted: HEAD decides.
    let again = existing(swift.port, &container, "cur/").await;
    assert!(again.is_empty(), "stored again: {again:?}");
}

/// A message with two steps (a stored and a relayed recipient): its object is staged, then
/// moved into `cur/` by a server-side copy whose answer is lost. The move had landed (the
/// copy carries the message's SHA-256), so it is not made again: two PUTs in all (the
/// staged object and the copy), one object under `cur/`, none under `tmp/`.
#[tokio::test]
async fn native_a_lost_answer_to_a_move_is_found_published() {
    let swift = swift();
    let sink = SmtpSink::start(&[]);
    let proxy = FaultProxy::start(swift.port, &[Fault::Pass, Fault::LoseAnswer], Fault::Pass).await;
    let relay = format!("127.0.0.1:{}", sink.port);
    let (setup, deliverer, container) = setup_and(
        Api::Native,
        &proxy,
        "20s",
        "5s",
        &[("SWIFTDROP_SERVER_RELAY", relay.as_str())],
    )
    .await;
    let rcpts = ["ops@example.com", "someone@elsewhere.example"];
    let (reply, body) = send_message(&setup, deliverer, &rcpts).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(proxy.puts_seen(), 2);
    let names = settled_listing(swift.port, &container, "cur/", 1).await;
    assert_eq!(names.len(), 1, "{names:?}");
    let (_, bytes) = native_get(swift.port, &container, &names[0]).await;
    assert!(bytes.ends_with(body.as_bytes()), "the bytes as sent");
    let staged = settled_listing(swift.port, &container, "tmp/", 0).await;
    assert!(staged.is_empty(), "{staged:?}");
    let relayed = sink.wait_for_dump_ending("0123456789abcdef").await;
    assert!(relayed.is_some(), "relayed: {:?}", sink.dumps());
    assert_eq!(sink.dumps().len(), 1, "relayed once");
}

#[tokio::test]
async fn native_500s_are_retried_until_confirmed() {
    failures_are_retried_until_confirmed(Api::Native, Fault::Status500).await;
}

#[tokio::test]
async fn s3_500s_are_retried_until_confirmed() {
    failures_are_retried_until_confirmed(Api::S3, Fault::Status500).await;
}

#[tokio::test]
async fn native_uploads_cut_halfway_are_retried_until_confirmed() {
    failures_are_retried_until_confirmed(Api::Native, Fault::DropMidBody).await;
}

#[tokio::test]
async fn s3_uploads_cut_halfway_are_retried_until_confirmed() {
    failures_are_retried_until_confirmed(Api::S3, Fault::DropMidBody).await;
}

/// Swift stored the bytes, but the ETag that came back is not their MD5: never a 250, and
/// what Swift stored is deleted again.
#[tokio::test]
async fn native_a_wrong_etag_never_gets_250() {
    a_refused_message_leaves_nothing(Api::Native, Fault::WrongEtag).await;
}

#[tokio::test]
async fn s3_a_wrong_etag_never_gets_250() {
    a_refused_message_leaves_nothing(Api::S3, Fault::WrongEtag).await;
}

/// A store that takes the request and never answers: 451 at the deadline.
#[tokio::test]
async fn native_a_silent_store_gives_451() {
    a_refused_message_leaves_nothing(Api::Native, Fault::Silence).await;
}

#[tokio::test]
async fn s3_a_silent_store_gives_451() {
    a_refused_message_leaves_nothing(Api::S3, Fault::Silence).await;
}

/// A streamed message staged under `tmp/` (it goes to two destinations; on S3 always)
/// reaches `cur/` by a server-side copy, which the store answers only once every byte is
/// copied. The copy may take the per-request timeout plus a second per MiB, so a copy held
/// longer than the timeout (4 s against 3 s) lands, once, and the staged upload is removed.
/// With the plain per-request timeout every try would be cut off and the message refused.
async fn a_slow_copy_of_a_large_message_lands(api: Api) {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[], Fault::HoldCopy).await;
    let extra = [
        ("SWIFTDROP_SERVER_STREAM_THRESHOLD", "1MiB"),
        ("SWIFTDROP_LOGS_RECIPIENTS", "logs@example.com"),
        ("SWIFTDROP_LOGS_PATH", "{dir}/logs"),
    ];
    let (setup, deliverer, container) = setup_and(api, &proxy, "20s", "3s", &extra).await;
    // 6.3 MB: streamed, its copy given 3 s + 7 s.
    let rcpts = ["ops@example.com", "logs@example.com"];
    let (reply, body) = send_lines(&setup, deliverer, &rcpts, 350_000).await;
    assert!(reply.starts_with("250 2.0.0"), "{api:?}: {reply}");
    assert!(proxy.copies_held() >= 1, "{api:?}: no copy was held");
    let names = settled_listing(swift.port, &container, "cur/", 1).await;
    assert_eq!(names.len(), 1, "{api:?}: {names:?}");
    let (_, bytes) = native_get(swift.port, &container, &names[0]).await;
    assert!(
        bytes.ends_with(body.as_bytes()),
        "{api:?}: the bytes as sent"
    );
}

/// A streamed message that is its transaction's only step gets its manifest straight at
/// its key under `cur/` (native API: no staging, no copy). When Swift stored the manifest
/// but its answer was lost, the filter finds the object whole (its size and SHA-256) and
/// answers 250 without writing it again.
#[tokio::test]
async fn native_a_lost_answer_to_a_manifest_stores_the_message_once() {
    let swift = swift();
    // The segments (under streamed/ in <container>_segments) pass unchanged; the
    // manifest's answer is lost.
    let proxy = FaultProxy::start(swift.port, &[Fault::LoseAnswer], Fault::Pass).await;
    let threshold = [("SWIFTDROP_SERVER_STREAM_THRESHOLD", "1MiB")];
    let (setup, deliverer, container) =
        setup_and(Api::Native, &proxy, "20s", "5s", &threshold).await;
    let (reply, body) = send_lines(&setup, deliverer, &["ops@example.com"], 350_000).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(proxy.puts_seen(), 1, "one manifest, not written again");
    let names = settled_listing(swift.port, &container, "cur/", 1).await;
    assert_eq!(names.len(), 1, "{names:?}");
    let (_, bytes) = native_get(swift.port, &container, &names[0]).await;
    assert!(bytes.ends_with(body.as_bytes()), "the bytes as sent");
    assert!(existing(swift.port, &container, "tmp/").await.is_empty());
}

/// A manifest whose ETag is not what the parts make (Swift's answer and every HEAD say so)
/// never earns a 250, although its size and SHA-256 (set by the request itself) match: 451
/// at the deadline, and the manifest and its segments are deleted.
#[tokio::test]
async fn native_a_manifest_with_a_wrong_etag_never_gets_250() {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[], Fault::WrongEtag).await;
    let threshold = [("SWIFTDROP_SERVER_STREAM_THRESHOLD", "1MiB")];
    let (setup, deliverer, container) =
        setup_and(Api::Native, &proxy, "6s", "5s", &threshold).await;
    let (reply, _) = send_lines(&setup, deliverer, &["ops@example.com"], 350_000).await;
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert!(proxy.puts_seen() >= 2, "the manifest was tried again");
    let segments = format!("{container}_segments");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let objects = existing(swift.port, &container, "").await;
        let left = existing(swift.port, &segments, "").await;
        if objects.is_empty() && left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {objects:?} {left:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn native_a_slow_copy_of_a_large_message_lands() {
    a_slow_copy_of_a_large_message_lands(Api::Native).await;
}

#[tokio::test]
async fn s3_a_slow_copy_of_a_large_message_lands() {
    a_slow_copy_of_a_large_message_lands(Api::S3).await;
}
