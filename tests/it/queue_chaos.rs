//! Chaos on Swift and Redis: four worker processes take 500 messages through `retry/` to
//! `done/` while the test stops one worker after another (SIGSTOP) for longer than the lease
//! and lets it go on (SIGCONT), and restarts Redis once without its data. Every message must
//! end in exactly one copy in `done/`, finished to `done/` once, with no claim ever given an
//! attempt number below an earlier claim's.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use swiftdrop::queue::{CopyKey, State};

use crate::queue_support::*;
use crate::support::HEAVY;

const MESSAGES: usize = 500;
const WORKERS: usize = 4;
const LEASE: Duration = Duration::from_secs(3);

/// A small xorshift generator: the test prints its seed, so a failing run can be repeated.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One event line of a worker: `<event> <name> <attempt> [<key>] @<ms>`.
struct Event {
    event: String,
    name: String,
    attempt: u32,
    key: Option<String>,
    at: u64,
}

fn parse(line: &str) -> Option<Event> {
    let words: Vec<&str> = line.split(' ').collect();
    let at = words.last()?.strip_prefix('@')?.parse().ok()?;
    Some(Event {
        event: words.first()?.to_string(),
        name: words.get(1)?.to_string(),
        attempt: words.get(2)?.parse().ok()?,
        key: (words.len() > 4).then(|| words[3].to_string()),
        at,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn pauses_past_the_lease_and_a_redis_restart_lose_nothing_and_finish_once() {
    let _turn = HEAVY.lock().await;
    let lease = format!("{}ms", LEASE.as_millis());
    let mut setup = QueueSetup::new(
        Backend::Swift,
        &[
            ("SWIFTDROP_QUEUE_LEASE", &lease),
            ("SWIFTDROP_QUEUE_MAX_ATTEMPTS", "50"),
            ("SWIFTDROP_QUEUE_POLL_INTERVAL", "300ms"),
        ],
    );
    let stored: HashSet<String> = setup.store(MESSAGES).await.into_iter().collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed}");
    let mut random = Random(seed);
    let args = [
        "--to",
        "retry-once",
        "--concurrency",
        "2",
        "--stamp",
        "--idle-exit",
        "20s",
    ];
    let workers: Vec<Worker> = (0..WORKERS).map(|_| setup.worker(&args)).collect();

    // Pauses longer than the lease, one worker after another, until every message is done;
    // Redis restarts once, when a third of them are. Progress is what the store says: a
    // finish may land and still report a lost lease.
    let started = Instant::now();
    let mut restarted = false;
    let mut pauses = 0;
    let mut paused_until: Vec<Option<Instant>> = vec![None; WORKERS];
    loop {
        let done = setup.queue().await.stats().await.map_or(0, |stats| {
            stats
                .iter()
                .find(|(state, _)| *state == State::Done)
                .map_or(0, |(_, s)| s.count as usize)
        });
        if done >= MESSAGES {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{done} of {MESSAGES} done after ten minutes (seed {seed})"
        );
        if !restarted && done >= MESSAGES / 3 {
            setup.redis.as_mut().unwrap().restart();
            restarted = true;
            eprintln!("Redis restarted at {done} done");
        }
        // Up to two workers stopped at once, each for longer than the lease.
        let now = Instant::now();
        for (i, until) in paused_until.iter_mut().enumerate() {
            if until.is_some_and(|t| t <= now) {
                workers[i].signal("CONT");
                *until = None;
            }
        }
        let i = random.below(WORKERS as u64) as usize;
        if paused_until[i].is_none() && paused_until.iter().flatten().count() < 2 {
            let pause =
                LEASE + Duration::from_millis(200 + random.below(2 * LEASE.as_millis() as u64));
            workers[i].signal("STOP");
            paused_until[i] = Some(now + pause);
            pauses += 1;
        }
        tokio::time::sleep(Duration::from_millis(200 + random.below(800))).await;
    }
    for (i, until) in paused_until.iter().enumerate() {
        if until.is_some() {
            workers[i].signal("CONT");
        }
    }
    assert!(restarted && pauses > 0);

    let mut events = Vec::new();
    for worker in workers {
        let (status, lines, err) = worker.finish(Duration::from_secs(30));
        assert!(status.success(), "{err}");
        events.extend(lines.iter().filter_map(|l| parse(l)));
    }
    events.sort_by_key(|e| e.at);

    // Finished to done/ once each, and nothing lost.
    let mut done_finishes: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == "finished") {
        if e.key.as_deref().is_some_and(|k| k.starts_with("done/")) {
            *done_finishes.entry(&e.name).or_default() += 1;
        }
    }
    let twice: Vec<_> = done_finishes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "finished to done/ twice: {twice:?} (seed {seed})"
    );
    // A finish whose copy landed after its lease ran out (paused between the two) reports
    // its lease lost; its copy stands when nobody took the message over meanwhile.
    let reported = done_finishes.len();

    // Attempts never go backwards: claims of a message, in time order, count up.
    let mut last: BTreeMap<&str, u32> = BTreeMap::new();
    for e in events.iter().filter(|e| e.event == "claimed") {
        let previous = last.insert(&e.name, e.attempt).unwrap_or(0);
        assert!(
            e.attempt > previous,
            "{} claimed as attempt {} after attempt {previous} (seed {seed})",
            e.name,
            e.attempt
        );
    }

    // One copy each, in done/, carrying the last claim's attempt and fencing number.
    let queue = setup.queue().await;
    let mut copies = BTreeMap::new();
    for state in State::ALL {
        for entry in queue.list(state, usize::MAX).await.unwrap() {
            copies
                .entry(entry.name.clone())
                .or_insert_with(Vec::new)
                .push(entry);
        }
    }
    for name in &stored {
        let found = copies.get(name).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            found.iter().map(|e| e.state).collect::<Vec<_>>(),
            vec![State::Done],
            "{name}: {:?} (seed {seed})",
            found.iter().map(|e| &e.key).collect::<Vec<_>>()
        );
        assert_eq!(
            found[0].attempt,
            last[name.as_str()],
            "{name} (seed {seed})"
        );
        assert!(CopyKey::parse(&found[0].key).is_some_and(|k| k.fence > 0));
    }
    assert_eq!(copies.len(), stored.len(), "copies of unknown names");
    eprintln!(
        "{MESSAGES} messages, {pauses} pauses past the lease, one Redis restart: {:.0}s; {} finishes to done/ reported lost leases although their copies stood",
        started.elapsed().as_secs_f64(),
        MESSAGES - reported
    );
}
