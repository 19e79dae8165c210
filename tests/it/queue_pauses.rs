//! A worker paused at the worst moment, and a store that fails between two steps: each
//! test stops a real process (SIGSTOP at a fail-point placed after a lease check and before
//! the store step it guards, see `util::failpoint`) until its lease has run out, lets
//! another worker take the message over, then lets the paused one go on. The stale worker
//! must touch nothing of the new holder's: the message is never lost, finished once, with
//! the new holder's record.

use std::collections::HashSet;
use std::time::Duration;

use swiftdrop::queue::{ClaimOptions, Outcome, State};

use crate::fault_proxy::{Fault, FaultProxy};
use crate::queue_support::*;
use crate::swift_support::{Swift, swift};

/// The copies of `name`: their states, sorted.
async fn states_of(setup: &QueueSetup, name: &str) -> Vec<State> {
    let mut states: Vec<State> = setup.copies(name).await.iter().map(|c| c.state()).collect();
    states.sort();
    states
}

/// `swiftdrop queue show KEY --json`.
fn show(setup: &QueueSetup, key: &str) -> serde_json::Value {
    let (code, out, err) = setup.cli(&["show", key, "--json"], &[]);
    assert_eq!(code, Some(0), "show {key}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// The fencing number of a token `<fence>:<owner>:<nonce>`.
fn fence_of(token: &str) -> u64 {
    token.split(':').next().unwrap().parse().unwrap()
}

/// Finding 1: a release copies the message to `retry/`, passes its lease check, and pauses
/// past its lease before it deletes its own copy under `processing/`. Another worker takes
/// the message from `retry/` meanwhile. The resumed release must not delete the new
/// holder's copy: the new holder finishes the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_paused_before_its_delete_loses_nothing() {
    let setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "3s")]);
    let name = setup.store(1).await.remove(0);
    let first = setup.claim(&[]).expect("claimed");
    let (key, token) = (
        first["key"].as_str().unwrap(),
        first["token"].as_str().unwrap(),
    );
    let release = setup.cli_child(
        &["release", key, "--token", token],
        &[("SWIFTDROP_FAILPOINT", "move.checked:stop")],
    );
    wait_stopped(release.id());
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let taken = setup
        .claim(&["--lease", "60s"])
        .expect("the released message is taken");
    assert_eq!(taken["name"], name.as_str());

    signal(release.id(), "CONT");
    let released = release.wait_with_output().unwrap();
    eprint!("{}", String::from_utf8_lossy(&released.stderr));

    let (key, token) = (
        taken["key"].as_str().unwrap(),
        taken["token"].as_str().unwrap(),
    );
    let (code, _, err) = setup.cli(&["finish", key, "--token", token, "--to", "done"], &[]);
    assert_eq!(code, Some(0), "the new holder's finish: {err}");
    assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
}

/// Finding 2: a finish to `done/` passes its lease check and pauses before its copy; its
/// lease runs out, another worker takes the message over and finishes it to `done/` too
/// (paused itself after its copy, before its own check and delete). The stale finish, let go
/// then, must not write over the new holder's `done/` copy: the message ends in `done/` once,
/// with the new holder's record, and only the new holder reports it finished.
#[tokio::test(flavor = "multi_thread")]
async fn a_finish_paused_past_its_lease_does_not_finish_twice() {
    let setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "2s")]);
    let name = setup.store(1).await.remove(0);
    let first = setup.claim(&[]).expect("claimed");
    let (key, token) = (
        first["key"].as_str().unwrap(),
        first["token"].as_str().unwrap(),
    );
    let stale = setup.cli_child(
        &["finish", key, "--token", token, "--to", "done"],
        &[("SWIFTDROP_FAILPOINT", "finish.checked:stop")],
    );
    wait_stopped(stale.id());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let taken = setup.claim(&["--lease", "60s"]).expect("taken over");
    assert_eq!(
        (taken["name"].as_str(), taken["attempt"].as_u64()),
        (Some(name.as_str()), Some(2))
    );
    let (key, token) = (
        taken["key"].as_str().unwrap(),
        taken["token"].as_str().unwrap(),
    );
    let live = setup.cli_child(
        &["finish", key, "--token", token, "--to", "done"],
        &[("SWIFTDROP_FAILPOINT", "move.verified:stop")],
    );
    wait_stopped(live.id());

    signal(stale.id(), "CONT");
    let stale = stale.wait_with_output().unwrap();
    signal(live.id(), "CONT");
    let live = live.wait_with_output().unwrap();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        live.status.code(),
        Some(0),
        "the new holder: {}",
        err(&live)
    );
    assert_eq!(
        stale.status.code(),
        Some(4),
        "the stale finish reports its lease lost: {}",
        err(&stale)
    );
    assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
    let done = show(&setup, &name);
    assert_eq!(done["fence"].as_u64(), Some(fence_of(token)), "{done}");
    assert_eq!(done["attempt"].as_u64(), Some(2), "{done}");
}

/// Finding 3: a worker records work done on its claim, pausing after its lease check and
/// before the write, past its lease. Another worker takes the message over and records its
/// own work, then dies. The stale worker's write, let go meanwhile, must not land on the new
/// holder's record: the next worker takes the message as attempt 3 and finds the dead
/// holder's work recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_record_never_replaces_the_holders() {
    let setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "2s")]);
    let name = setup.store(1).await.remove(0);
    let stale = setup.worker_with(
        &[
            "--record",
            "stale-work",
            "--idle-exit",
            "1s",
            "--lease",
            "2s",
        ],
        &[("SWIFTDROP_FAILPOINT", "record.checked:stop")],
    );
    stale.wait_for("claimed ");
    wait_stopped(stale.pid() as u32);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let live = setup.worker(&[
        "--record",
        "live-work",
        "--job",
        "60s",
        "--idle-exit",
        "1s",
        "--lease",
        "3s",
    ]);
    live.wait_for("recorded ");
    stale.signal("CONT");
    let (_, stale_lines, _) = stale.finish(Duration::from_secs(5));
    assert!(
        events(&stale_lines, "recorded").is_empty(),
        "{stale_lines:?}"
    );
    live.signal("KILL");
    let next = setup.worker(&["--idle-exit", "8s"]);
    let (status, lines, err) = next.finish(Duration::from_secs(10));
    assert!(status.success(), "{err}");
    assert_eq!(
        lines.first().map(String::as_str),
        Some(format!("claimed {name} 3").as_str()),
        "{lines:?}"
    );
    assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
    let done = show(&setup, &name);
    let recorded = done["metadata"]["queue-done"].as_str().unwrap_or_default();
    assert!(recorded.contains("live-work"), "{done}");
    assert!(!recorded.contains("stale-work"), "{done}");
}

/// Finding 4: Redis restarts without its data while a worker holds a claim. Until the data
/// is a lease old, nobody knows whether a claim under `processing/` is alive: a `purge
/// processing` then deletes nothing, and the message is finished once, in the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_after_redis_lost_its_data_spares_live_claims() {
    let mut setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "6s")]);
    let name = setup.store(1).await.remove(0);
    let busy = setup.worker(&["--job", "4s", "--idle-exit", "1s", "--lease", "6s"]);
    busy.wait_for("claimed ");
    // The purge comes a second after the claim, before the claim's first renewal.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    setup.redis.as_mut().unwrap().restart();
    let (code, out, err) = setup.cli(&["purge", "processing", "--older-than", "1ms"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("deleted 0"),
        "the purge deleted a live claim: {out}"
    );
    let (_, busy_lines, _) = busy.finish(Duration::from_secs(10));
    let finisher = setup.worker(&["--idle-exit", "12s"]);
    let (status, lines, err) = finisher.finish(Duration::from_secs(20));
    assert!(status.success(), "{err}");
    let finished: Vec<&str> = events(&busy_lines, "finished")
        .into_iter()
        .chain(events(&lines, "finished"))
        .collect();
    assert_eq!(finished, vec![name.as_str()], "{busy_lines:?} {lines:?}");
    assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
}

/// Finding 5: a claim whose copy landed but whose delete of the source failed has not
/// handed the message to anybody: it counts no attempt. With `max_attempts = 1` the message
/// is still claimed as attempt 1 and finished, not failed for "too many attempts".
#[tokio::test(flavor = "multi_thread")]
async fn a_take_whose_delete_failed_counts_no_attempt() {
    let (upstream, proxy, setup, name) = proxied(&[
        ("SWIFTDROP_QUEUE_MAX_ATTEMPTS", "1"),
        ("SWIFTDROP_QUEUE_LEASE", "2s"),
    ])
    .await;
    let queue = setup.queue().await;
    proxy.fail_deletes("cur", 20);
    let options = ClaimOptions::default();
    let first = queue.claim(&options).await;
    assert!(
        !matches!(first, Ok(Some(_))),
        "nothing is handed out while the source stays"
    );
    proxy.fail_deletes("cur", 0);
    // Whatever the failed take left is abandoned once its lease is over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let waiting = ClaimOptions {
        wait: Some(Duration::from_secs(15)),
        ..ClaimOptions::default()
    };
    let mut claim = queue
        .claim(&waiting)
        .await
        .expect("claims")
        .expect("the message is claimable");
    assert_eq!((claim.name(), claim.attempt()), (name.as_str(), 1));
    claim.finish(Outcome::Done { reason: None }).await.unwrap();
    let states: HashSet<State> = states_of(&setup, &name).await.into_iter().collect();
    assert_eq!(states, HashSet::from([State::Done]));
    drop(upstream);
}

/// Finding 6: a finish to retry/ whose copy failed, tried again. The second try goes to the
/// first try's key, so the marker both would share stays with the copy: the message is
/// found by its name, and claimed again once due. (Before: the second try picked a new due
/// time, and deleting the first try's key deleted the shared marker with it; the copy was
/// then found by no look, and never claimed.)
#[tokio::test(flavor = "multi_thread")]
async fn a_finish_to_retry_tried_again_keeps_its_copy_findable() {
    let (upstream, proxy, setup, name) = proxied(&[("SWIFTDROP_QUEUE_LEASE", "8s")]).await;
    let queue = setup.queue().await;
    let mut claim = queue
        .claim(&ClaimOptions::default())
        .await
        .unwrap()
        .expect("claimed");
    let retry = || Outcome::Retry {
        reason: Some("try later".to_string()),
        not_before: Some(Duration::from_secs(1)),
    };
    proxy.fail_copies("retry", 1, Fault::Status500);
    assert!(claim.finish(retry()).await.is_err(), "the copy failed");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let finished = claim.finish(retry()).await.expect("the second try");
    assert_eq!(finished.state, State::Retry);
    assert_eq!(states_of(&setup, &name).await, vec![State::Retry]);
    let waiting = ClaimOptions {
        wait: Some(Duration::from_secs(15)),
        ..ClaimOptions::default()
    };
    let again = queue
        .claim(&waiting)
        .await
        .unwrap()
        .expect("claimed again once due");
    assert_eq!((again.name(), again.attempt()), (name.as_str(), 2));
    drop(upstream);
}

/// Finding 7: a finish whose copy the store reports as not matching its source. The claim
/// leaves that copy where it landed (another worker may already have weighed it as the
/// message's newest copy, and deleted the older ones), and a finish tried again copies over
/// it. (Before: the claim deleted its own newest copy, which, with a leftover cleaned up
/// meanwhile, could leave no copy at all.)
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_that_does_not_verify_stays_and_is_copied_over() {
    let (upstream, proxy, setup, name) = proxied(&[("SWIFTDROP_QUEUE_LEASE", "8s")]).await;
    let queue = setup.queue().await;
    let mut claim = queue
        .claim(&ClaimOptions::default())
        .await
        .unwrap()
        .expect("claimed");
    proxy.fail_copies("done", 1, Fault::WrongEtag);
    let refused = claim.finish(Outcome::Done { reason: None }).await;
    assert!(refused.is_err(), "a copy that does not verify: {refused:?}");
    let mut states = states_of(&setup, &name).await;
    states.sort();
    assert_eq!(states, vec![State::Processing, State::Done]);
    claim
        .finish(Outcome::Done { reason: None })
        .await
        .expect("the second try");
    assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
    drop(upstream);
}

/// A queue on the test Swift reached through a [`FaultProxy`] (no faults until asked), with
/// `extra` settings, and one message stored; the proxy and the Swift guard live as long as
/// the test holds them.
async fn proxied(extra: &[(&str, &str)]) -> (Swift, FaultProxy, QueueSetup, String) {
    let upstream = swift();
    let proxy = FaultProxy::start(upstream.port, &[], Fault::Pass).await;
    let auth = format!("http://127.0.0.1:{}/auth/v1.0", proxy.port);
    let mut vars = vec![("SWIFTDROP_DEFAULT_AUTHURL", auth.as_str())];
    vars.extend_from_slice(extra);
    let setup = QueueSetup::new(Backend::Swift, &vars);
    let name = setup.store(1).await.remove(0);
    (upstream, proxy, setup, name)
}

/// A TCP proxy to a local Redis that can freeze the subscriptions it carries (connections
/// whose client sent `SUBSCRIBE`): they stay open but carry nothing more, as a connection a
/// NAT forgot. Other connections, and subscriptions made after, stay live.
struct FreezingProxy {
    port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(upstream: u16) -> FreezingProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let shared = generation.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let born = shared.load(Ordering::SeqCst);
                let subscriber = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (upward, (mut from, mut to)) in [
                    (true, (client_read, server_write)),
                    (false, (server_read, client_write)),
                ] {
                    let generation = shared.clone();
                    let subscriber = subscriber.clone();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let text = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
                            if upward && text.contains("SUBSCRIBE") {
                                subscriber.store(true, Ordering::SeqCst);
                            }
                            if subscriber.load(Ordering::SeqCst)
                                && generation.load(Ordering::SeqCst) != born
                            {
                                // Frozen: hold both ends open, carry nothing.
                                std::future::pending::<()>().await;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        FreezingProxy {
            port,
            generation,
            task,
        }
    }

    /// Freezes every subscription made so far.
    fn freeze(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Finding 8: a subscription whose connection went quiet without closing (a NAT's idle
/// timeout) is noticed by its keepalive `PING` and made again, which wakes the waiting
/// claims: a claim waiting with a `poll_interval` of ten minutes takes a message that was
/// announced while its subscription was dead, within 30 seconds (the bound; a
/// waiting claim also looks once more when its wait ends, which is why the wait is longer).
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_subscription_is_made_again_and_wakes_the_waiting_claims() {
    let setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_POLL_INTERVAL", "10m")]);
    let direct = setup.queue().await;
    let proxy = FreezingProxy::start(setup.redis.as_ref().unwrap().port).await;
    let mut vars = setup.vars.clone();
    for (k, v) in &mut vars {
        if k == "SWIFTDROP_QUEUE_LOCK" {
            *v = format!("redis://127.0.0.1:{}/0", proxy.port);
        }
    }
    let config = swiftdrop::config::Config::from_sources(None, vars).unwrap();
    let waiting_queue = swiftdrop::queue::Queue::open(&config, "DEFAULT").unwrap();
    let waiting = tokio::spawn(async move {
        let options = ClaimOptions {
            wait: Some(Duration::from_secs(120)),
            ..ClaimOptions::default()
        };
        let claim = waiting_queue.claim(&options).await;
        claim.map(|c| c.map(|c| c.name().to_string()))
    });
    // Subscribed and waiting; then its connections go quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.freeze();
    let name = setup.store(1).await.remove(0);
    direct.lock().announce(&name).await.unwrap();
    let announced = std::time::Instant::now();
    let claimed = waiting.await.unwrap().expect("the claim");
    assert_eq!(claimed.as_deref(), Some(name.as_str()));
    assert!(
        announced.elapsed() < Duration::from_secs(30),
        "the quiet subscription was made again only after {:?}",
        announced.elapsed()
    );
}
