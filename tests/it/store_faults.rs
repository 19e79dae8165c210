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
) -> (Setup, std::sync::Arc<swiftdrop::deliver::Deliverer>, String) {
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
    let setup = setup_with(&vars);
    let deliverer = std::sync::Arc::new(setup.deliverer_with(setup.destinations()));
    (setup, deliverer, container)
}

/// Sends one message of about 200 KB (long enough to be cut halfway) and returns the reply
/// and the bytes sent after the trace headers.
async fn send_message(
    setup: &Setup,
    deliverer: std::sync::Arc<swiftdrop::deliver::Deliverer>,
) -> (String, String) {
    let mut d = Dialog::start_with(setup.settings(), deliverer, PEER).await;
    d.envelope("ci@example.org", &["ops@example.com"]).await;
    d.command("DATA", "354").await;
    let body = format!(
        "Subject: faults\r\n\r\n{}",
        "0123456789abcdef\r\n".repeat(11_000)
    );
    d.send(format!("{body}.\r\n")).await;
    (d.reply().await, body)
}

async fn failures_are_retried_until_confirmed(api: Api, fault: Fault) {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[fault, fault], Fault::Pass).await;
    // Room for the faults and for this VM's stalls of the shared Swift.
    let (setup, deliverer, container) = setup(api, &proxy, "20s", "5s").await;
    let (reply, body) = send_message(&setup, deliverer).await;
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
    let (reply, _) = send_message(&setup, deliverer).await;
    assert!(reply.starts_with("451 4.3.0"), "{api:?} {fault:?}: {reply}");
    assert!(proxy.puts_seen() >= 1);
    let names = settled_listing(swift.port, &container, "cur/", 0).await;
    assert!(names.is_empty(), "{api:?} {fault:?}: left {names:?}");
}

/// Swift stored the message but its answer was lost: before trying again, swiftdrop asks
/// whether the try landed, and it did (one PUT only: a second one could re-create a message
/// that a worker had already taken from `cur/`), and the message is there once.
async fn a_lost_answer_is_found_stored(api: Api) {
    let swift = swift();
    let proxy = FaultProxy::start(swift.port, &[Fault::LoseAnswer], Fault::Pass).await;
    let (setup, deliverer, container) = setup(api, &proxy, "20s", "5s").await;
    let (reply, body) = send_message(&setup, deliverer).await;
    assert!(reply.starts_with("250 2.0.0"), "{api:?}: {reply}");
    // object_store's S3 client tries a request again by itself before swiftdrop sees the
    // failure (at most twice): only the native client's tries are all swiftdrop's.
    let most = match api {
        Api::Native => 1,
        Api::S3 => 3,
    };
    assert!(proxy.puts_seen() <= most, "{api:?}: {}", proxy.puts_seen());
    let names = settled_listing(swift.port, &container, "cur/", 1).await;
    assert_eq!(names.len(), 1, "{api:?}: {names:?}");
    let (_, bytes) = native_get(swift.port, &container, &names[0]).await;
    assert!(
        bytes.ends_with(body.as_bytes()),
        "{api:?}: the bytes as sent"
    );
}

#[tokio::test]
async fn native_a_lost_answer_is_found_stored() {
    a_lost_answer_is_found_stored(Api::Native).await;
}

#[tokio::test]
async fn s3_a_lost_answer_is_found_stored() {
    a_lost_answer_is_found_stored(Api::S3).await;
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
