//! A minimal worker over `swiftdrop::queue`, for the tests and `bench/queue.sh`: claims
//! (waiting for mail), optionally reads the message and works on it for a while, then
//! finishes it. One line per event on stdout:
//!
//! ```text
//! claimed <name> <attempt>
//! recorded <name> <attempt> <id>   (with --record: the work id recorded as done)
//! finished <name> <attempt> <new key>
//! lost <name> <attempt>            (the lease was lost: nothing moved)
//! error <name> <attempt> <error>
//! ```
//!
//! With `--stamp`, each line ends with ` @<Unix time in ms>`. It exits 0 after `--idle-exit`
//! without anything to claim, or after `--count` finishes. With `--report` it ends with
//! `requests <store requests made>` and `peak_rss_kib <its peak resident memory>`.
//! The queue comes from the same `SWIFTDROP_*` settings as `swiftdrop queue`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use swiftdrop::config::{Config, parse_duration};
use swiftdrop::queue::{ClaimOptions, Outcome, Queue, QueueError};
use swiftdrop::store::Destination;

#[derive(Parser)]
struct Args {
    /// Ini file, as for `swiftdrop queue`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Destination (section name).
    #[arg(long, default_value = "DEFAULT")]
    destination: String,
    /// Jobs at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Lease of each claim (default: the `lease` setting).
    #[arg(long, value_parser = parse_duration)]
    lease: Option<Duration>,
    /// How long each job works before it finishes.
    #[arg(long, value_parser = parse_duration)]
    job: Option<Duration>,
    /// Exit after this long with nothing to claim.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    idle_exit: Duration,
    /// Where finished messages go.
    #[arg(long, value_enum, default_value = "done")]
    to: To,
    /// Read each message (its bytes and metadata) before finishing it.
    #[arg(long)]
    read: bool,
    /// Stop after this many finishes.
    #[arg(long)]
    count: Option<u64>,
    /// End every line with ` @<Unix time in ms>`.
    #[arg(long)]
    stamp: bool,
    /// Record this work id as done on each claim before working on it.
    #[arg(long, value_name = "ID")]
    record: Option<String>,
    /// At the end, print the store requests made and the peak resident memory.
    #[arg(long)]
    report: bool,
}

/// Prints one event line, stamped when asked.
fn say(args: &Args, line: String) {
    if args.stamp {
        println!("{line} @{}", chrono::Utc::now().timestamp_millis());
    } else {
        println!("{line}");
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum To {
    Done,
    Retry,
    Failed,
    /// The first attempt to `retry/` (due at once), later ones to `done/`.
    RetryOnce,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    swiftdrop::util::logging::init(false, "warn");
    let config = match Config::load(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("queue_worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(dest_config) = config
        .destinations
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(&args.destination))
    else {
        eprintln!("queue_worker: no destination [{}]", args.destination);
        return ExitCode::FAILURE;
    };
    let (destination, requests) = match Destination::open(dest_config) {
        Ok(d) => d.counted(),
        Err(e) => {
            eprintln!("queue_worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let queue = match Queue::new(destination, &config.queue, &config.server.hostname) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("queue_worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args = Arc::new(args);
    let finished = Arc::new(AtomicU64::new(0));
    let jobs: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(work(queue.clone(), args.clone(), finished.clone())))
        .collect();
    let mut ok = true;
    for job in jobs {
        ok &= matches!(job.await, Ok(Ok(())));
    }
    if args.report {
        println!("requests {}", requests.load(Ordering::Relaxed));
        println!("peak_rss_kib {}", peak_rss_kib());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// This process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// How often a finish that failed on a store or lock-engine error is tried again.
const FINISH_TRIES: u32 = 40;

async fn work(queue: Queue, args: Arc<Args>, finished: Arc<AtomicU64>) -> Result<(), QueueError> {
    let options = ClaimOptions {
        lease: args.lease,
        wait: Some(args.idle_exit),
    };
    loop {
        if args
            .count
            .is_some_and(|n| finished.load(Ordering::SeqCst) >= n)
        {
            return Ok(());
        }
        let mut claim = match queue.claim(&options).await {
            Ok(Some(claim)) => claim,
            Ok(None) => return Ok(()),
            Err(e) => {
                eprintln!("queue_worker: claim: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let (name, attempt) = (claim.name().to_string(), claim.attempt());
        say(&args, format!("claimed {name} {attempt}"));
        if args.read {
            if let Err(e) = claim.read().await {
                say(&args, format!("error {name} {attempt} {e}"));
                continue;
            }
        }
        if let Some(id) = &args.record {
            match claim.record_done(id).await {
                Ok(()) => say(&args, format!("recorded {name} {attempt} {id}")),
                Err(QueueError::LeaseLost { .. }) => {
                    say(&args, format!("lost {name} {attempt}"));
                    continue;
                }
                Err(e) => {
                    say(&args, format!("error {name} {attempt} {e}"));
                    continue;
                }
            }
        }
        if let Some(job) = args.job {
            tokio::time::sleep(job).await;
        }
        let outcome = match args.to {
            To::Done => Outcome::Done { reason: None },
            To::Retry => Outcome::Retry {
                reason: Some("worker asked for a retry".into()),
                not_before: Some(Duration::ZERO),
            },
            To::Failed => Outcome::Failed {
                reason: "worker failed it".into(),
            },
            To::RetryOnce if attempt == 1 => Outcome::Retry {
                reason: Some("first attempt".into()),
                not_before: Some(Duration::ZERO),
            },
            To::RetryOnce => Outcome::Done { reason: None },
        };
        // A store or lock-engine error leaves the claim holding its lease: try again, as a
        // worker should, for a while.
        let mut tries = 0;
        let result = loop {
            match claim.finish(outcome.clone()).await {
                Err(QueueError::Store(_) | QueueError::Lock(_)) if tries < FINISH_TRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => break other,
            }
        };
        match result {
            Ok(done) => {
                finished.fetch_add(1, Ordering::SeqCst);
                say(&args, format!("finished {name} {attempt} {}", done.key));
            }
            Err(QueueError::LeaseLost { .. }) => say(&args, format!("lost {name} {attempt}")),
            Err(e) => say(&args, format!("error {name} {attempt} {e}")),
        }
    }
}
