//! The queue against real backends: a Maildir with the local lock, Swift's native API and
//! Swift's S3 API with a real Redis. Workers are real processes (`queue_worker`, the
//! `swiftdrop queue` command); crashes are real SIGKILLs, at fail-points or from outside.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use swiftdrop::queue::{ClaimOptions, CopyKey, Outcome, QueueError, State};

use crate::queue_support::*;
use crate::support::{HEAVY, PATIENCE};

const BACKENDS: [Backend; 3] = [Backend::Maildir, Backend::Swift, Backend::S3];

/// Where a message is: every state that holds a copy.
async fn states_of(setup: &QueueSetup, name: &str) -> Vec<State> {
    let mut states: Vec<State> = setup
        .copies(name)
        .await
        .into_iter()
        .map(|c| c.state())
        .collect();
    states.sort();
    states
}

fn empty_except(all: &BTreeMap<State, Vec<String>>, state: State) {
    for (s, names) in all {
        if *s != state {
            assert!(names.is_empty(), "{s}/ should be empty, holds {names:?}");
        }
    }
}

async fn four_workers_finish_each_message_once(backend: Backend, messages: usize) {
    four_workers_finish_each_message_once_with(backend, messages, &[]).await;
}

/// Four workers of two claims each take `messages` stored messages; each is finished once
/// (`extra` overrides the destination's settings, as for another S3).
pub async fn four_workers_finish_each_message_once_with(
    backend: Backend,
    messages: usize,
    extra: &[(&str, &str)],
) {
    let _turn = HEAVY.lock().await;
    let mut settings = vec![("SWIFTDROP_QUEUE_LEASE", "30s")];
    settings.extend_from_slice(extra);
    let setup = QueueSetup::new(backend, &settings);
    let stored: HashSet<String> = setup.store(messages).await.into_iter().collect();
    let workers: Vec<Worker> = (0..4)
        .map(|_| setup.worker(&["--concurrency", "2", "--read", "--idle-exit", "3s"]))
        .collect();
    let mut finished = Vec::new();
    for worker in workers {
        let (status, lines, err) = worker.finish(Duration::from_secs(600));
        assert!(status.success(), "worker failed: {err}");
        // Contention between workers is not an error: a claim never fails for it.
        assert!(!err.contains("claim:"), "{err}");
        assert!(events(&lines, "lost").is_empty(), "{lines:?}");
        assert!(events(&lines, "error").is_empty(), "{lines:?}");
        finished.extend(events(&lines, "finished").into_iter().map(str::to_string));
    }
    assert_finished_once(&setup, &finished, &[], &stored).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn maildir_four_workers_finish_each_message_once() {
    four_workers_finish_each_message_once(Backend::Maildir, 1000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swift_four_workers_finish_each_message_once() {
    // This VM's Swift all-in-one moves a few messages a second (one proxy process with
    // stalls of up to seconds): 1000 would take most of CI's time. 150 keep all eight
    // claims contending for minutes; the check is the same.
    four_workers_finish_each_message_once(Backend::Swift, remote_messages(150)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_four_workers_finish_each_message_once() {
    // Swift's S3 API costs about three times the native API's CPU per request (SigV4 in
    // Python, and a move needs HEAD + CopyObject + DELETE): fewer messages, same check.
    four_workers_finish_each_message_once(Backend::S3, remote_messages(120)).await;
}

/// The messages of a four-worker run on Swift or S3: `SWIFTDROP_TEST_REMOTE_MESSAGES`
/// (1000 on a cluster fast enough), else `default`.
fn remote_messages(default: usize) -> usize {
    std::env::var("SWIFTDROP_TEST_REMOTE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// A worker killed while it holds a claim: another finishes the message once the lease
/// has expired, as attempt 2.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_s_message_is_finished_by_another_as_attempt_2() {
    for backend in [Backend::Maildir, Backend::Swift] {
        let setup = QueueSetup::new(backend, &[]);
        let name = setup.store(1).await.remove(0);
        // Leases of a few seconds: a copy on this slow, shared VM's Swift can take one.
        let first = setup.worker(&["--job", "60s", "--lease", "3s"]);
        assert_eq!(first.wait_for("claimed "), format!("claimed {name} 1"));
        first.signal("KILL");
        let (_, lines, _) = first.finish(Duration::ZERO);
        assert!(events(&lines, "finished").is_empty());
        let second = setup.worker(&["--idle-exit", "8s"]);
        let (status, lines, err) = second.finish(Duration::from_secs(10));
        assert!(status.success(), "{err}");
        assert_eq!(
            plain_lines(&lines),
            vec![
                format!("claimed {name} 2"),
                format!("finished {name} 2 done/{name}")
            ],
            "{backend:?}"
        );
        assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
    }
}

/// What a crash at one fail-point must end in.
struct Crash {
    /// The command that crashes: claim, finish or requeue.
    during: &'static str,
    failpoint: &'static str,
    /// How many finishes the recovering worker makes (0: the crashed finish had moved it).
    recovered_finishes: usize,
    /// The fail-point lies between a copy and a delete: on a Maildir a move is one rename.
    copying_only: bool,
}

const CRASHES: &[Crash] = &[
    Crash {
        during: "claim",
        failpoint: "claim.leased",
        recovered_finishes: 1,
        copying_only: false,
    },
    Crash {
        during: "claim",
        failpoint: "move.copied",
        recovered_finishes: 1,
        copying_only: false,
    },
    Crash {
        during: "claim",
        failpoint: "take.copied",
        recovered_finishes: 1,
        copying_only: true,
    },
    Crash {
        during: "finish",
        failpoint: "finish.checked",
        recovered_finishes: 1,
        copying_only: false,
    },
    Crash {
        during: "finish",
        failpoint: "move.copied",
        recovered_finishes: 0,
        copying_only: false,
    },
    Crash {
        during: "finish",
        failpoint: "move.verified",
        recovered_finishes: 0,
        copying_only: true,
    },
    Crash {
        during: "finish",
        failpoint: "move.checked",
        recovered_finishes: 0,
        copying_only: true,
    },
    Crash {
        during: "finish",
        failpoint: "finish.moved",
        recovered_finishes: 0,
        copying_only: false,
    },
    Crash {
        during: "release",
        failpoint: "move.copied",
        recovered_finishes: 1,
        copying_only: false,
    },
    Crash {
        during: "release",
        failpoint: "move.checked",
        recovered_finishes: 1,
        copying_only: true,
    },
    Crash {
        during: "requeue",
        failpoint: "move.copied",
        recovered_finishes: 1,
        copying_only: false,
    },
    Crash {
        during: "requeue",
        failpoint: "requeue.half",
        recovered_finishes: 1,
        copying_only: true,
    },
];

/// Runs one crash on a fresh queue; returns a description of what went wrong, if anything.
async fn crash_and_recover(backend: Backend, crash: &Crash) -> Result<(), String> {
    // Long enough for a claim and a finish by separate processes on a busy machine whose
    // processes stall for a second or two now and then.
    let lease = match backend {
        Backend::Maildir => "4s",
        _ => "8s",
    };
    let setup = QueueSetup::new(backend, &[("SWIFTDROP_QUEUE_LEASE", lease)]);
    let name = setup.store(1).await.remove(0);
    let original = setup.copies(&name).await[0].meta.size;
    let failpoint = [("SWIFTDROP_FAILPOINT", crash.failpoint)];
    let crashed = match crash.during {
        "claim" => setup.cli(&["claim", "--json"], &failpoint),
        "finish" | "release" => {
            let claim = setup.claim(&[]).ok_or("nothing to claim")?;
            let token = claim["token"].as_str().unwrap();
            let mut args = vec![crash.during, name.as_str(), "--token", token];
            if crash.during == "finish" {
                args.extend(["--to", "done"]);
            }
            setup.cli(&args, &failpoint)
        }
        _ => {
            let claim = setup.claim(&[]).ok_or("nothing to claim")?;
            let token = claim["token"].as_str().unwrap();
            let (code, _, err) =
                setup.cli(&["finish", &name, "--token", token, "--to", "failed"], &[]);
            if code != Some(0) {
                return Err(format!("finish to failed: {err}"));
            }
            setup.cli(&["requeue", &name], &failpoint)
        }
    };
    if crashed.0.is_some() {
        return Err(format!("the command was not killed: {crashed:?}"));
    }
    // The crashed process's lease, if any, expires; then a worker takes over.
    let lease_time = swiftdrop::config::parse_duration(lease).unwrap();
    tokio::time::sleep(lease_time + Duration::from_millis(100)).await;
    let worker = setup.worker(&["--idle-exit", "3s", "--lease", lease]);
    let (status, lines, err) = worker.finish(Duration::from_secs(5));
    if !status.success() {
        return Err(format!("recovering worker failed: {err}"));
    }
    let finishes = events(&lines, "finished").len();
    if finishes != crash.recovered_finishes || !events(&lines, "lost").is_empty() {
        return Err(format!(
            "expected {} finishes by the recovering worker, it printed {lines:?}",
            crash.recovered_finishes
        ));
    }
    let states = states_of(&setup, &name).await;
    if states != vec![State::Done] {
        return Err(format!(
            "the message ends in {states:?}, not in done/ alone"
        ));
    }
    let copy = setup.copies(&name).await.remove(0);
    if copy.meta.size != original {
        return Err(format!(
            "size {} after recovery, {original} before",
            copy.meta.size
        ));
    }
    Ok(())
}

async fn crashes_lose_nothing_and_finish_once(backend: Backend) {
    let _turn = match backend {
        Backend::Maildir => None,
        _ => Some(HEAVY.lock().await),
    };
    let copying = backend != Backend::Maildir;
    let crashes = CRASHES.iter().filter(|c| copying || !c.copying_only);
    let runs = crashes.map(|crash| async move {
        let result = crash_and_recover(backend, crash).await;
        (crash.during, crash.failpoint, result)
    });
    // Six at a time (two rounds): each runs a few processes against the one shared Swift,
    // and mostly waits for a lease to run out.
    let results: Vec<_> = futures::stream::iter(runs)
        .buffer_unordered(6)
        .collect()
        .await;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(during, fp, r)| r.err().map(|e| format!("{during} at {fp}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{backend:?}:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn maildir_crashes_lose_nothing_and_finish_once() {
    crashes_lose_nothing_and_finish_once(Backend::Maildir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swift_crashes_lose_nothing_and_finish_once() {
    crashes_lose_nothing_and_finish_once(Backend::Swift).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_crashes_lose_nothing_and_finish_once() {
    crashes_lose_nothing_and_finish_once(Backend::S3).await;
}

/// A worker stopped past its lease: after SIGCONT its finish is refused (lease lost) and
/// the worker that took the message over finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_paused_past_its_lease_cannot_finish() {
    for backend in [Backend::Maildir, Backend::Swift] {
        let setup = QueueSetup::new(backend, &[]);
        let name = setup.store(1).await.remove(0);
        let paused = setup.worker(&["--job", "8s", "--lease", "3s", "--idle-exit", "1s"]);
        paused.wait_for("claimed ");
        paused.signal("STOP");
        let taker = setup.worker(&["--idle-exit", "8s", "--lease", "10s"]);
        let (status, taken, err) = taker.finish(Duration::from_secs(5));
        assert!(status.success(), "{err}");
        assert_eq!(
            plain_lines(&taken),
            vec![
                format!("claimed {name} 2"),
                format!("finished {name} 2 done/{name}")
            ]
        );
        paused.signal("CONT");
        let (_, lines, _) = paused.finish(Duration::from_secs(5));
        assert_eq!(
            lines,
            vec![format!("claimed {name} 1"), format!("lost {name} 1")],
            "{backend:?}"
        );
        assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
    }
}

/// A claim paused (SIGSTOP at a fail-point) after it looked at a message's copies (the
/// leftover pair of a release killed after its copy: `processing/` and `retry/`, one lease)
/// and before it moves or deletes anything: meanwhile its lease runs out and another claim
/// takes the message. After SIGCONT the paused claim deletes nothing of the new holder's:
/// the new holder's copy stays, and it finishes the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_paused_after_looking_at_the_copies_deletes_nothing_of_the_next() {
    let setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "3s")]);
    let name = setup.store(1).await.remove(0);
    let claim = setup.claim(&[]).unwrap();
    let token = claim["token"].as_str().unwrap();
    let (code, _, err) = setup.cli(
        &["release", &name, "--token", token],
        &[("SWIFTDROP_FAILPOINT", "move.verified")],
    );
    assert_eq!(code, None, "the release was killed after its copy: {err}");
    assert_eq!(
        states_of(&setup, &name).await,
        vec![State::Processing, State::Retry]
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;

    let paused = setup.worker_with(
        &["--idle-exit", "2s"],
        &[("SWIFTDROP_FAILPOINT", "resolve.looked:stop")],
    );
    wait_stopped(paused.pid() as u32);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (code, out, err) = setup.cli(&["claim", "--json"], &[("SWIFTDROP_QUEUE_LEASE", "60s")]);
    assert_eq!(code, Some(0), "{err}");
    let taken: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(taken["name"], name.as_str());
    assert_eq!(states_of(&setup, &name).await, vec![State::Processing]);

    paused.signal("CONT");
    let (status, lines, err) = paused.finish(Duration::from_secs(5));
    assert!(status.success(), "{err}");
    assert!(events(&lines, "claimed").is_empty(), "{lines:?}");
    let copies = setup.copies(&name).await;
    assert_eq!(
        copies.iter().map(|c| c.key.to_string()).collect::<Vec<_>>(),
        vec![taken["key"].as_str().unwrap().to_string()],
        "the paused claim touched the new holder's copy: {err}"
    );
    let token = taken["token"].as_str().unwrap();
    let (code, _, err) = setup.cli(&["finish", &name, "--token", token, "--to", "done"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
}

/// Redis restarted without its data in the middle of a run: workers carry on, nothing is
/// lost and nothing is finished twice.
#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_mid_run_loses_nothing_and_finishes_once() {
    let _turn = HEAVY.lock().await;
    // Claims whose leases Redis lost stop at their next renewal; their messages are taken
    // over once Redis's new data is a lease old, so the workers wait longer than a lease.
    // Long leases keep this VM's Swift stalls from losing any before the restart.
    let mut setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "10s")]);
    let stored: HashSet<String> = setup.store(200).await.into_iter().collect();
    let args = [
        "--concurrency",
        "4",
        "--read",
        "--job",
        "1s",
        "--idle-exit",
        "15s",
    ];
    let workers: Vec<Worker> = (0..2).map(|_| setup.worker(&args)).collect();
    // Restart once some are done.
    until_finished(&workers, 60).await;
    setup.redis.as_mut().unwrap().restart();
    let (finished, lost) = finished_and_lost(workers);
    assert_finished_once(&setup, &finished, &lost, &stored).await;
}

/// A lease Redis lost in a restart without persistence: the claim that held it learns at
/// its next renewal or finish that it is lost (nothing moves); nobody takes the message
/// over while Redis's new data is younger than the claim's lease (the claim may still be
/// working, unaware); then another claim takes it as the next attempt and finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_lost_with_redis_data_is_taken_over_a_lease_later() {
    let mut setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "8s")]);
    let name = setup.store(1).await.remove(0);
    let queue = setup.queue().await;
    let options = ClaimOptions {
        lease: Some(Duration::from_secs(8)),
        wait: None,
    };
    let mut kept = queue.claim(&options).await.unwrap().expect("a claim");
    setup.redis.as_mut().unwrap().restart();
    // The first call on the old connection meets the broken pipe; the next reconnects.
    let mut renewed = kept.renew(None).await;
    for _ in 0..20 {
        if !matches!(renewed, Err(QueueError::Lock(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        renewed = kept.renew(None).await;
    }
    assert!(
        matches!(renewed, Err(QueueError::LeaseLost { .. })),
        "{renewed:?}"
    );
    let finished = kept.finish(Outcome::Done { reason: None }).await;
    assert!(
        matches!(finished, Err(QueueError::LeaseLost { .. })),
        "{finished:?}"
    );
    assert_eq!(
        setup.claim(&[]),
        None,
        "taken over while Redis's data is younger than the lease"
    );
    let again = setup
        .claim(&["--wait", "30s"])
        .expect("taken over a lease later");
    assert_eq!(
        (again["name"].as_str(), again["attempt"].as_u64()),
        (Some(name.as_str()), Some(2))
    );
    let token = again["token"].as_str().unwrap();
    let (code, _, err) = setup.cli(&["finish", &name, "--token", token, "--to", "done"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(states_of(&setup, &name).await, vec![State::Done]);
}

/// Redis behind Sentinels (`redis+sentinel://`), its primary killed mid-run: the workers
/// follow the replica the Sentinels promote, nothing is lost, and every message is finished
/// once, by one claim.
#[tokio::test(flavor = "multi_thread")]
async fn workers_follow_a_sentinel_failover_and_finish_each_message_once() {
    let _turn = HEAVY.lock().await;
    let mut sentinels = Sentinels::start();
    let url = sentinels.url();
    let setup = QueueSetup::new(
        Backend::Swift,
        &[
            ("SWIFTDROP_QUEUE_LEASE", "5s"),
            ("SWIFTDROP_QUEUE_LOCK", &url),
        ],
    );
    let stored: HashSet<String> = setup.store(150).await.into_iter().collect();
    let before = sentinels.primary_port();
    let args = [
        "--read",
        "--job",
        "100ms",
        "--concurrency",
        "2",
        "--idle-exit",
        "20s",
    ];
    let workers: Vec<Worker> = (0..2).map(|_| setup.worker(&args)).collect();
    until_finished(&workers, 40).await;
    sentinels.kill_primary();
    let (finished, lost) = finished_and_lost(workers);
    let after = sentinels.primary_port();
    assert!(
        after.is_some() && after != before,
        "no failover: {before:?} → {after:?}"
    );
    assert_finished_once(&setup, &finished, &lost, &stored).await;
}

/// Waits until the workers together printed `count` finishes (two minutes at most).
async fn until_finished(workers: &[Worker], count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while workers
        .iter()
        .map(|w| events(&w.lines(), "finished").len())
        .sum::<usize>()
        < count
    {
        assert!(
            std::time::Instant::now() < deadline,
            "workers do not progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lets the workers run out; the names they reported finished, and those they reported lost.
fn finished_and_lost(workers: Vec<Worker>) -> (Vec<String>, Vec<String>) {
    let (mut finished, mut lost) = (Vec::new(), Vec::new());
    for worker in workers {
        let (status, lines, err) = worker.finish(Duration::from_secs(120));
        assert!(status.success(), "{err}");
        // The workers' warnings show with a failing test.
        eprint!("{err}");
        finished.extend(events(&lines, "finished").into_iter().map(str::to_string));
        lost.extend(events(&lines, "lost").into_iter().map(str::to_string));
    }
    (finished, lost)
}

/// Every stored message finished exactly once, and all of them in done/ alone. A message
/// nobody reported finished must have had a finish reported `lost` (its copy landed, then the
/// lease was found gone: Redis lost it), and still ends in done/ once.
async fn assert_finished_once(
    setup: &QueueSetup,
    finished: &[String],
    lost: &[String],
    stored: &HashSet<String>,
) {
    let unique: HashSet<String> = finished.iter().cloned().collect();
    let lost: HashSet<String> = lost.iter().cloned().collect();
    let all = setup.everything().await;
    let counts: Vec<(State, usize)> = all.iter().map(|(s, n)| (*s, n.len())).collect();
    let never: Vec<&String> = stored
        .difference(&unique)
        .filter(|n| !lost.contains(*n))
        .take(5)
        .collect();
    assert!(
        never.is_empty(),
        "never finished, e.g. {never:?}; states: {counts:?}"
    );
    assert_eq!(finished.len(), unique.len(), "a message was finished twice");
    assert!(unique.is_subset(stored), "finished what was never stored");
    let landed_lost = stored.difference(&unique).count();
    if landed_lost > 0 {
        eprintln!("{landed_lost} finishes landed but reported a lost lease");
    }
    assert_eq!(all[&State::Done].len(), stored.len(), "{counts:?}");
    empty_except(&all, State::Done);
}

/// A job three times as long as the lease keeps its claim: nobody else takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_three_times_the_lease_keeps_its_claim() {
    for backend in [Backend::Maildir, Backend::Swift] {
        let setup = QueueSetup::new(backend, &[]);
        let name = setup.store(1).await.remove(0);
        // Leases well above the stalls of a second or two that this VM's Swift shows.
        let slow = setup.worker(&["--job", "18s", "--lease", "6s", "--idle-exit", "1s"]);
        slow.wait_for("claimed ");
        let other = setup.worker(&["--idle-exit", "15s"]);
        let (_, other_lines, _) = other.finish(Duration::from_secs(5));
        assert!(other_lines.is_empty(), "{other_lines:?}");
        let (status, lines, err) = slow.finish(Duration::from_secs(5));
        assert!(status.success(), "{err}");
        assert_eq!(
            plain_lines(&lines),
            vec![
                format!("claimed {name} 1"),
                format!("finished {name} 1 done/{name}")
            ],
            "{backend:?}"
        );
    }
}

/// A message that keeps failing ends in failed/ with "too many attempts": by retries, and
/// by claims abandoned again and again.
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_message_stops_after_max_attempts() {
    for backend in BACKENDS {
        // Its claims wait at most 20 s: not beside the other tests that load the one Swift
        // (a claim once found nothing in time there).
        let _turn = match backend {
            Backend::Maildir => None,
            _ => Some(HEAVY.lock().await),
        };
        let setup = QueueSetup::new(backend, &[("SWIFTDROP_QUEUE_MAX_ATTEMPTS", "3")]);
        let mut names = setup.store(1).await;
        // Retried at once, every time.
        // Idle long enough to outlast this VM's stalls between a retry and the next claim.
        let worker = setup.worker(&["--to", "retry", "--idle-exit", "6s"]);
        let (_, lines, _) = worker.finish(Duration::from_secs(5));
        let expected: Vec<String> = (1..=3)
            .flat_map(|n| {
                let to = if n < 3 { "retry" } else { "failed" };
                [
                    format!("claimed {} {n}", names[0]),
                    format!("finished {} {n} {to}/{}", names[0], names[0]),
                ]
            })
            .collect();
        assert_eq!(plain_lines(&lines), expected, "{backend:?}");
        let (code, out, _) = setup.cli(&["show", &names[0], "--json"], &[]);
        assert_eq!(code, Some(0));
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(shown["state"], "failed", "{backend:?}: {shown}");
        assert_eq!(shown["reason"], "too many attempts");
        assert_eq!(shown["attempt"], 3);
        // Claimed and abandoned: the claim that would be the 4th fails it.
        names.extend(setup.store(1).await);
        for attempt in 1..=3 {
            // Leases above this VM's stalls: a take slower than its lease leaves its copy.
            let claim = setup.claim(&["--lease", "6s", "--wait", "20s"]).unwrap();
            assert_eq!(claim["name"], names[1].as_str());
            assert_eq!(claim["attempt"], attempt, "{backend:?}");
            tokio::time::sleep(Duration::from_millis(6500)).await;
        }
        assert_eq!(setup.claim(&["--lease", "6s"]), None);
        let copies = setup.copies(&names[1]).await;
        assert_eq!(
            copies.iter().map(|c| c.state()).collect::<Vec<_>>(),
            vec![State::Failed],
            "{backend:?}: {:?}",
            copies
                .iter()
                .map(|c| (c.state(), &c.record, c.meta.last_modified))
                .collect::<Vec<_>>()
        );
        let (_, out, _) = setup.cli(&["show", &names[1], "--json"], &[]);
        let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(shown["reason"], "too many attempts");
    }
}

fn rfc3339(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// Every command, its output field by field, on every backend.
async fn cli_commands(backend: Backend) {
    let setup = QueueSetup::new(backend, &[("SWIFTDROP_QUEUE_LEASE", "1m")]);
    let names = setup.store(3).await;
    let size = setup.copies(&names[0]).await[0].meta.size;

    let (code, out, _) = setup.cli(&["stats", "--json"], &[]);
    assert_eq!(code, Some(0));
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["cur"]["count"], 3);
    assert_eq!(stats["cur"]["bytes"].as_u64(), Some(3 * size), "{stats}");
    // Swift's S3 API rounds a listing's LastModified up to the next second.
    assert!(rfc3339(&stats["cur"]["oldest"]) <= Utc::now() + chrono::Duration::seconds(1));
    for state in ["processing", "retry", "failed", "done"] {
        assert_eq!(stats[state]["count"], 0, "{state}");
        assert!(stats[state]["oldest"].is_null());
    }
    // The table names the destination first and shows the bytes --json carries; -v says
    // on stderr which destination was opened.
    // An object the queue cannot take (a `~` was written percent-encoded: a name read
    // back differs from the key) is counted apart, and left alone.
    {
        use object_store::ObjectStoreExt;
        let store = setup.queue().await.destination().store.clone();
        let foreign = object_store::path::Path::from("cur/1700000000.M1P2Q3.a~b,S=1");
        store.put(&foreign, "x".into()).await.unwrap();
        let (_, out, _) = setup.cli(&["stats", "--json"], &[]);
        let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (&stats["cur"]["count"], &stats["cur"]["foreign"]),
            (&3.into(), &1.into())
        );
        let (_, table, _) = setup.cli(&["stats"], &[]);
        assert!(
            table.contains("cur/ also holds 1 object(s) that are no message"),
            "{table}"
        );
        let (_, out, _) = setup.cli(&["list", "--json"], &[]);
        let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(listed.len(), 3, "{out}");
        store.delete(&foreign).await.unwrap();
    }
    let (_, table, err) = setup.cli(&["-v", "stats"], &[]);
    let destination = format!(
        "destination {}",
        setup.queue().await.destination().describe()
    );
    assert!(err.contains(&destination), "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], destination);
    assert!(lines[1].starts_with("state"), "{table}");
    let cur: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(cur[..3], ["cur", "3", &(3 * size).to_string()], "{table}");

    let (_, out, _) = setup.cli(&["list", "--json"], &[]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed[0]["name"],
        names[0].as_str(),
        "first in, first listed"
    );
    assert_eq!(listed[0]["key"], format!("cur/{}", names[0]));
    assert_eq!(listed[0]["state"], "cur");
    assert_eq!(listed[0]["size"], size);
    assert_eq!(listed[0]["attempt"], 0);
    assert!(rfc3339(&listed[0]["received"]) <= Utc::now());
    let (_, out, _) = setup.cli(&["list", "cur", "--limit", "1", "--json"], &[]);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&out)
            .unwrap()
            .len(),
        1
    );

    // claim: the oldest, as JSON.
    let before = Utc::now();
    let claim = setup.claim(&["--lease", "30s"]).unwrap();
    assert_eq!(plain(&claim["key"]), format!("processing/{}", names[0]));
    assert_eq!(claim["name"], names[0].as_str());
    assert_eq!(claim["attempt"], 1);
    assert_eq!(claim["size"], size);
    let until = rfc3339(&claim["lease_until"]);
    assert!(
        until >= before + chrono::Duration::seconds(29)
            && until <= Utc::now() + chrono::Duration::seconds(30)
    );
    let token = claim["token"].as_str().unwrap().to_string();
    assert!(
        claim["key"]
            .as_str()
            .unwrap()
            .ends_with(&format!("@{}", fence(&token))),
        "the key carries the lease's fencing number: {claim}"
    );

    // A token that does not hold the lease moves nothing: exit 4. A key that names no
    // message says so (exit 1), and --not-before goes with --to retry only (exit 2).
    let forged = format!(
        "{}:someone:0000000000000000",
        token.split(':').next().unwrap()
    );
    let (code, _, err) = setup.cli(
        &["finish", &names[0], "--token", &forged, "--to", "done"],
        &[],
    );
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(states_of(&setup, &names[0]).await, vec![State::Processing]);
    let unknown = names[0].replace("filter.test", "filter.tset");
    let (code, _, err) = setup.cli(
        &["finish", &unknown, "--token", &token, "--to", "done"],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no message"), "{err}");
    let (code, _, err) = setup.cli(
        &[
            "finish",
            &names[0],
            "--token",
            &token,
            "--to",
            "done",
            "--not-before",
            "1m",
        ],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--to retry only"), "{err}");
    assert_eq!(
        setup.cli(&["renew", &names[0], "--token", &forged], &[]).0,
        Some(4)
    );
    assert_eq!(
        setup
            .cli(&["release", &names[0], "--token", &forged], &[])
            .0,
        Some(4)
    );

    // A lease too short to renew itself is refused before anything is asked of the lock.
    let (code, _, err) = setup.cli(
        &["renew", &names[0], "--token", &token, "--lease", "100ms"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("at least 300ms"), "{err}");

    // renew, then release: to retry/, due at once, counting no attempt.
    let (code, out, err) = setup.cli(
        &[
            "renew",
            claim["key"].as_str().unwrap(),
            "--token",
            &token,
            "--lease",
            "45s",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with(&format!("renewed processing/{}@", names[0])),
        "{out}"
    );
    let (code, out, err) = setup.cli(&["release", &names[0], "--token", &token], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        plain(out.trim().strip_prefix("released to ").unwrap()),
        format!("retry/{}", names[0])
    );
    let (_, out, _) = setup.cli(&["show", &names[0], "--json"], &[]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["state"].as_str(), shown["attempt"].as_u64()),
        (Some("retry"), Some(0))
    );
    assert!(rfc3339(&shown["not_before"]) <= Utc::now());
    assert!(shown["lease"].is_null(), "{shown}");

    // cur/ comes first: the other two are claimed and finished.
    for name in &names[1..] {
        let claim = setup.claim(&[]).unwrap();
        assert_eq!(claim["name"], name.as_str());
        let token = claim["token"].as_str().unwrap();
        let to = if name == &names[1] { "failed" } else { "done" };
        let finish = [
            "finish", name, "--token", token, "--to", to, "--reason", "bad",
        ];
        let (code, _, _) = setup.cli(&finish, &[]);
        assert_eq!(code, Some(0));
        // Again (as a script whose answer was lost would): said so, not "lease lost".
        let (code, _, err) = setup.cli(&finish, &[]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!("{name} is already finished by this claim: {to}/")),
            "{err}"
        );
    }
    // Then the released one, due now, with the attempt number it had.
    let claim = setup.claim(&[]).unwrap();
    assert_eq!(
        (claim["name"].as_str().unwrap(), claim["attempt"].as_u64()),
        (names[0].as_str(), Some(1))
    );
    let token = claim["token"].as_str().unwrap().to_string();

    // finish --to retry with a not-before in the future: not claimable, shown with it.
    let (code, out, _) = setup.cli(
        &[
            "finish",
            &names[0],
            "--token",
            &token,
            "--to",
            "retry",
            "--reason",
            "sink down",
            "--not-before",
            "1h",
        ],
        &[],
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        plain(out.trim().strip_prefix("moved to ").unwrap()),
        format!("retry/{}", names[0])
    );
    let (_, out, _) = setup.cli(&["show", &names[0], "--json"], &[]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["state"], "retry");
    assert_eq!(shown["reason"], "sink down");
    assert_eq!(shown["attempt"], 1);
    assert!(rfc3339(&shown["not_before"]) > Utc::now() + chrono::Duration::minutes(59));
    assert!(shown["lease"].is_null());
    assert_eq!(shown["envelope"]["sender"], "alerts@example.org");
    assert_eq!(shown["envelope"]["recipients"][0], "ops@example.com");
    let headers = shown["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "Subject" && h[1] == "alert 0"),
        "{shown}"
    );
    assert_eq!(shown["sha256"].as_str().unwrap().len(), 64);
    assert!(shown["duplicate_of"].is_null());

    assert_eq!(setup.claim(&[]), None, "a retry not yet due is not claimed");
    let (_, out, _) = setup.cli(&["show", &format!("failed/{}", names[1]), "--json"], &[]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["state"].as_str(), shown["reason"].as_str()),
        (Some("failed"), Some("bad"))
    );

    // requeue: failed/ and retry/ back to cur/, attempts reset.
    let (code, out, err) = setup.cli(&["requeue", &format!("failed/{}", names[1])], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        plain(out.trim().strip_prefix("requeued to ").unwrap()),
        format!("cur/{}", names[1])
    );
    assert_eq!(setup.cli(&["requeue", &names[0]], &[]).0, Some(0));
    let (code, _, err) = setup.cli(&["requeue", &names[0]], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already in cur/"), "{err}");
    let (_, out, _) = setup.cli(&["list", "cur", "--json"], &[]);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let listed: Vec<(&str, u64)> = listed
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["attempt"].as_u64().unwrap()))
        .collect();
    assert_eq!(listed, vec![(names[0].as_str(), 0), (names[1].as_str(), 0)]);

    // A resend of a finished message (the same bytes but for a new Received: line, as
    // after a proxy timeout): show names the finished one. The same message to another
    // recipient is not a duplicate.
    let queue = setup.queue().await;
    let done = setup.copies(&names[2]).await.remove(0);
    let bytes = {
        use object_store::ObjectStoreExt;
        queue
            .destination()
            .store
            .get(&done.meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let resent = text.replacen(
        "Delivered-To: ops@example.com\r\n",
        "Delivered-To: ops@example.com\r\nReceived: from client (client [192.0.2.1])\r\n\tby mx.example.com (Postfix) with ESMTP id 4XyZ; Sat, 28 Nov 2026 03:05:00 +0000\r\n",
        1,
    );
    let elsewhere = text.replacen("Delivered-To: ops@", "Delivered-To: dev@", 1);
    assert!(resent != text && elsewhere != text);
    let mut twins = Vec::new();
    for twin in [resent, elsewhere] {
        use object_store::ObjectStoreExt;
        let key = swiftdrop::store::key::MessageKey::new("filter.test", twin.len() as u64);
        queue
            .destination()
            .store
            .put(
                &object_store::path::Path::from(key.cur_path()),
                twin.into_bytes().into(),
            )
            .await
            .unwrap();
        twins.push(key.file_name());
    }
    let (_, out, _) = setup.cli(&["show", &twins[0], "--json"], &[]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        plain(&shown["duplicate_of"]["key"]),
        format!("done/{}", names[2]),
        "{shown}"
    );
    let (_, text, _) = setup.cli(&["show", &twins[0]], &[]);
    assert!(
        text.contains(&format!("duplicate-of:  done/{}@", names[2])),
        "{text}"
    );
    let (_, out, _) = setup.cli(&["show", &twins[1], "--json"], &[]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(shown["duplicate_of"].is_null(), "{shown}");

    // purge: nothing is that old; then everything in done/ is.
    let (code, out, _) = setup.cli(&["purge", "done", "--older-than", "1h", "--dry-run"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("would delete 0 messages"), "{out}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, out, _) = setup.cli(&["purge", "done", "--older-than", "1s", "--dry-run"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("would delete 1 messages"), "{out}");
    assert_eq!(setup.names(State::Done).await, vec![names[2].clone()]);
    let (code, out, _) = setup.cli(&["purge", "done", "--older-than", "1s"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("deleted 1 of 1 messages"), "{out}");
    assert!(setup.names(State::Done).await.is_empty());
    let all = setup.everything().await;
    assert_eq!(all[&State::Cur].len(), 4);

    // Bad keys and states are refused with one line.
    let (code, _, err) = setup.cli(&["show", "cur/../etc/passwd"], &[]);
    assert_eq!(code, Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, _) = setup.cli(&["list", "new"], &[]);
    assert_eq!(code, Some(2));
    // A file path is explained, with the key it holds.
    let path = format!("/var/spool/swiftdrop/maildir/cur/{}", names[0]);
    let (code, _, err) = setup.cli(&["show", &path], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not a file path"), "{err}");
    assert!(err.contains(&format!("(here: cur/{})", names[0])), "{err}");

    // list --limit 0 is all of them; a limit that cut the list says so.
    let (code, out, _) = setup.cli(&["list", "cur", "--limit", "0", "--json"], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&out)
            .unwrap()
            .len(),
        4
    );
    let (_, out, err) = setup.cli(&["list", "cur", "--limit", "2"], &[]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(err.contains("the first 2 messages of cur/"), "{err}");
    // A limit of exactly as many as there are cut nothing: no such note.
    let (_, out, err) = setup.cli(&["list", "cur", "--limit", "4"], &[]);
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(!err.contains("the first"), "{err}");
}

/// `<state>/<name>` of a copy's key (which also carries a fencing number and, in `retry/`,
/// a due time).
fn plain(key: impl std::fmt::Display) -> String {
    let key = key.to_string();
    let key = key.trim_matches('"');
    let copy = CopyKey::parse(key).unwrap_or_else(|| panic!("{key:?} is not a copy's key"));
    format!("{}/{}", copy.state, copy.name)
}

/// The fencing number of a token.
fn fence(token: &str) -> u64 {
    token.split(':').next().unwrap().parse().unwrap()
}

/// Lines of `queue_worker` with the keys in them made plain (see [`plain`]).
fn plain_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            l.split(' ')
                .map(|w| match CopyKey::parse(w) {
                    Some(_) => plain(w),
                    None => w.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn maildir_cli_commands() {
    cli_commands(Backend::Maildir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swift_cli_commands() {
    cli_commands(Backend::Swift).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_cli_commands() {
    cli_commands(Backend::S3).await;
}

/// A remote store needs a lock engine named in the configuration; `check` checks it.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_store_needs_an_explicit_lock_and_check_tests_it() {
    let mut setup = QueueSetup::new(Backend::Swift, &[]);
    setup.vars.retain(|(k, _)| k != "SWIFTDROP_QUEUE_LOCK");
    let (code, _, err) = setup.cli(&["stats"], &[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("SWIFTDROP_QUEUE_LOCK"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let closed = crate::support::free_port();
    setup.vars.push((
        "SWIFTDROP_QUEUE_LOCK".into(),
        format!("redis://:hunter2@127.0.0.1:{closed}/0"),
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
        .arg("check")
        .env_clear()
        .envs(setup.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAILED: [DEFAULT] queue lock (SWIFTDROP_QUEUE_LOCK)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("hunter2") && !String::from_utf8_lossy(&out.stderr).contains("hunter2")
    );

    let redis = Redis::start();
    setup.vars.retain(|(k, _)| k != "SWIFTDROP_QUEUE_LOCK");
    setup
        .vars
        .push(("SWIFTDROP_QUEUE_LOCK".into(), redis.url()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
        .arg("check")
        .env_clear()
        .envs(setup.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("ok: [DEFAULT] queue lock: Redis 7."),
        "{stdout}"
    );
}

/// A waiting claim wakes on the filter's announcement (Redis pub/sub; inotify on a Maildir):
/// with a poll interval far longer than the wait, nothing else could make it claim in time.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_claim_wakes_when_the_filter_stores_mail() {
    use std::io::{BufRead, BufReader, Write};
    for backend in [Backend::Maildir, Backend::Swift] {
        let setup = QueueSetup::new(backend, &[("SWIFTDROP_QUEUE_POLL_INTERVAL", "10m")]);
        setup.queue().await;
        let port = crate::support::free_port();
        let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env_clear()
            .envs(setup.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::support::wait_for_port(port).await;
        let waiting = {
            let vars = setup.vars.clone();
            std::thread::spawn(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_swiftdrop"))
                    .args(["queue", "claim", "--wait", "30s", "--json"])
                    .env_clear()
                    .envs(vars)
                    .output()
                    .unwrap()
            })
        };
        // Mail may come before the claim subscribed or listed, or after: both wake it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut smtp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        smtp.write_all(
            b"EHLO client.test\r\nMAIL FROM:<alerts@example.org>\r\nRCPT TO:<ops@example.com>\r\nDATA\r\nSubject: wake up\r\n\r\nbody\r\n.\r\nQUIT\r\n",
        )
        .unwrap();
        let stored = BufReader::new(smtp)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("250 2.0.0 Ok: stored as cur/"))
            .expect("the filter stores the message");
        let name = stored.split("cur/").nth(1).unwrap().trim().to_string();
        let out = waiting.join().unwrap();
        let _ = serve.kill();
        let _ = serve.wait();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{backend:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let claim: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(claim["name"], name.as_str(), "{backend:?}");
    }
}

/// A requeue keeps the record of work done (a worker does not repeat what succeeded);
/// `forget_done` clears it.
#[tokio::test]
async fn requeue_keeps_the_work_done_unless_told_to_forget_it() {
    let setup = QueueSetup::new(Backend::Maildir, &[]);
    let queue = setup.queue().await;
    let name = setup.store(1).await.remove(0);
    let options = ClaimOptions {
        wait: Some(PATIENCE),
        ..ClaimOptions::default()
    };
    let mut claim = queue.claim(&options).await.unwrap().unwrap();
    claim.record_done("a1b2c3d4").await.unwrap();
    claim
        .finish(Outcome::Failed {
            reason: "room misspelt".into(),
        })
        .await
        .unwrap();
    queue.requeue(&name, false).await.unwrap();
    let mut claim = queue.claim(&options).await.unwrap().unwrap();
    assert_eq!(claim.done(), ["a1b2c3d4"]);
    assert_eq!(claim.attempt(), 1, "the attempt count starts again");
    claim
        .finish(Outcome::Failed {
            reason: "again".into(),
        })
        .await
        .unwrap();
    queue.requeue(&name, true).await.unwrap();
    let claim = queue.claim(&options).await.unwrap().unwrap();
    assert!(claim.done().is_empty(), "{:?}", claim.done());
}

/// Keys written before fencing numbers were part of them (`processing/<name>`,
/// `retry/<name>`, `done/<name>`): found by name, and the in-flight ones claimed and finished
/// (the abandoned claim as its next attempt, the retry at once).
#[tokio::test(flavor = "multi_thread")]
async fn keys_of_the_version_before_fences_are_found_and_claimed() {
    let _turn = HEAVY.lock().await;
    let setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "2s")]);
    let names = setup.store(3).await;
    let queue = setup.queue().await;
    let destination = queue.destination();
    let mover = destination.mover();
    for (name, old_key, attempt) in [
        (&names[0], format!("processing/{}", names[0]), "1"),
        (&names[1], format!("retry/{}", names[1]), "1"),
        (&names[2], format!("done/{}", names[2]), "1"),
    ] {
        let from = format!("cur/{name}").as_str().into();
        let meta = object_store::ObjectStoreExt::head(destination.store.as_ref(), &from)
            .await
            .unwrap();
        let record = [("queue-attempt".to_string(), attempt.to_string())];
        mover
            .copy_verified(&meta, &old_key.as_str().into(), &record)
            .await
            .unwrap();
        mover.remove(&meta).await.unwrap();
    }
    for name in &names {
        let (code, out, err) = setup.cli(&["show", name, "--json"], &[]);
        assert_eq!(code, Some(0), "{name}: {out}{err}");
    }
    // The abandoned claim is taken over once the lock's data is a lease old.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let worker = setup.worker(&["--idle-exit", "4s"]);
    let (status, lines, err) = worker.finish(Duration::from_secs(30));
    assert!(status.success(), "{err}");
    let mut claimed = plain_lines(&lines)
        .into_iter()
        .filter(|l| l.starts_with("claimed "))
        .collect::<Vec<_>>();
    claimed.sort();
    let mut expected = vec![
        format!("claimed {} 2", names[0]),
        format!("claimed {} 2", names[1]),
    ];
    expected.sort();
    assert_eq!(claimed, expected, "{lines:?}");
    for name in &names {
        assert_eq!(states_of(&setup, name).await, vec![State::Done], "{name}");
    }
}

/// A message the filter streamed to Swift stands in `cur/` as an SLO (its manifest written
/// there last, with its segments in `<container>_segments`). A worker's claim copies it
/// into one plain object under `processing/` and deletes the manifest with its segments;
/// the message finishes byte-exact, and no segment is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn swift_a_large_object_in_cur_is_claimed_and_finished_whole() {
    use object_store::{Attribute, Attributes, ObjectStoreExt, PutPayload};
    use sha2::{Digest, Sha256};
    use swiftdrop::store::key::MessageKey;

    let setup = QueueSetup::new(Backend::Swift, &[("SWIFTDROP_QUEUE_LEASE", "30s")]);
    let queue = setup.queue().await;
    let dest = queue.destination();
    // Two parts: 5 MiB (the smallest a part may be) and the rest.
    let body: Vec<u8> = (0..6 * 1024 * 1024 + 123)
        .map(|i| (i % 251) as u8)
        .collect();
    let key = MessageKey::new("filter.test", body.len() as u64);
    let name = key.file_name();
    let cur = object_store::path::Path::from(key.cur_path());
    let mut upload = dest
        .mover()
        .upload_named_at_end()
        .await
        .unwrap()
        .expect("Swift names an upload when it completes");
    let part = 5 * 1024 * 1024;
    upload
        .put_part(PutPayload::from(body[..part].to_vec()))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from(body[part..].to_vec()))
        .await
        .unwrap();
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata("sha256".into()),
        swiftdrop::util::hex::hex(&Sha256::digest(&body)).into(),
    );
    upload.complete_at(&cur, &attributes).await.unwrap();
    let segments = format!(
        "{}_segments",
        setup
            .vars
            .iter()
            .find(|(k, _)| k == "SWIFTDROP_DEFAULT_CONTAINER")
            .unwrap()
            .1
    );
    let swift = crate::swift_support::swift();
    assert_eq!(
        crate::swift_support::existing(swift.port, &segments, "")
            .await
            .len(),
        2,
        "the manifest's segments"
    );

    let claim = setup.claim(&[]).expect("the message is claimed");
    assert_eq!(claim["name"], name.as_str());
    let token = claim["token"].as_str().unwrap();
    let (code, _, err) = setup.cli(&["finish", &name, "--token", token, "--to", "done"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let copies = setup.copies(&name).await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].state(), State::Done);
    let path = copies[0].key.path();
    let stored = dest.store.get(&path).await.unwrap().bytes().await.unwrap();
    assert!(stored.as_ref() == body.as_slice(), "the bytes as written");
    assert!(
        crate::swift_support::existing(swift.port, &segments, "")
            .await
            .is_empty(),
        "the segments went with the manifest"
    );
}
