//! `swiftdrop queue`: the operator's and scripts' view of the queue, over
//! [`crate::queue`]. Readable aligned tables by default, one JSON value with `--json`.
//!
//! Exit status: 0 done, 1 error, 2 bad usage, 3 nothing to claim, 4 the token no longer
//! holds the lease (nothing was moved), 5 the store or the lock engine failed (try again).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::parse_duration;
use crate::config::queue::parse_lease;
use crate::queue::{ClaimOptions, Outcome, Queue, QueueError, State, Token};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// Exit status when nothing is claimable.
const EXIT_NOTHING: u8 = 3;
/// Exit status when the token no longer holds the lease.
const EXIT_LEASE_LOST: u8 = 4;
/// Exit status when the store or the lock engine failed: nothing is known about the queue.
const EXIT_UNAVAILABLE: u8 = 5;
/// Exit status of bad usage (as clap's).
const EXIT_USAGE: u8 = 2;

/// `swiftdrop queue` and its options.
// The fields' doc comments are clap's help text, where `[SERVER]` is a section name.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Args)]
pub struct QueueArgs {
    /// Ini file with [SERVER], [QUEUE], [DEFAULT] and destination sections.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The destination (section name) whose stored mail to work on.
    #[arg(long, value_name = "NAME", default_value = "DEFAULT", global = true)]
    pub destination: String,
    /// Say on stderr which destination was opened (a Maildir with its absolute path).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// The queue's commands.
#[derive(Subcommand)]
pub enum QueueCommand {
    /// Count and oldest message per state.
    Stats {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Messages of one state, in the order claims take them.
    List {
        /// cur | processing | retry | failed | done.
        #[arg(default_value = "cur", value_parser = parse_state)]
        state: State,
        /// Show at most N messages (0: all of them).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Envelope, metadata, headers, state, attempts, lease and duplicate of one message.
    Show {
        /// The message's name, with or without its state folder.
        key: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Claim the next due message (exit status 3 when there is none).
    Claim {
        /// Lease length (default: the `lease` setting).
        #[arg(long, value_name = "DURATION", value_parser = parse_lease)]
        lease: Option<Duration>,
        /// Wait up to DURATION for a message to become claimable.
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        wait: Option<Duration>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Extend a claim's lease.
    Renew {
        /// The claimed message.
        key: String,
        /// The token `claim` printed.
        #[arg(long, value_parser = Token::parse)]
        token: Token,
        /// New lease length from now (default: the `lease` setting).
        #[arg(long, value_name = "DURATION", value_parser = parse_lease)]
        lease: Option<Duration>,
    },
    /// Move a claimed message to done/, failed/ or retry/.
    Finish {
        /// The claimed message.
        key: String,
        /// The token `claim` printed.
        #[arg(long, value_parser = Token::parse)]
        token: Token,
        /// Where the message goes.
        #[arg(long, value_enum)]
        to: Target,
        /// Why, kept with the message.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// With --to retry only: not claimable before DURATION from now (default: the
        /// backoff).
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        not_before: Option<Duration>,
    },
    /// Give a claim back at once; it counts no attempt.
    Release {
        /// The claimed message.
        key: String,
        /// The token `claim` printed.
        #[arg(long, value_parser = Token::parse)]
        token: Token,
    },
    /// Move a failed/, retry/ or done/ message back to cur/.
    Requeue {
        /// The message's name, with or without its state folder.
        key: String,
        /// Forget the work recorded as done, so that every action is taken again.
        #[arg(long)]
        forget_done: bool,
    },
    /// Delete the messages of a state that entered it more than DURATION ago.
    Purge {
        /// cur | processing | retry | failed | done.
        #[arg(value_parser = parse_state)]
        state: State,
        /// Age in the state, e.g. 30d or 12h.
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        older_than: Duration,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Where `finish` moves a message.
#[derive(Clone, Copy, ValueEnum)]
pub enum Target {
    Done,
    Failed,
    Retry,
}

fn parse_state(s: &str) -> Result<State, String> {
    s.parse()
}

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn fail(e: &QueueError) -> ExitCode {
    eprintln!("swiftdrop queue: {e}");
    match e {
        QueueError::LeaseLost { .. } => ExitCode::from(EXIT_LEASE_LOST),
        QueueError::Store(_) | QueueError::Lock(_) => ExitCode::from(EXIT_UNAVAILABLE),
        _ => ExitCode::FAILURE,
    }
}

/// Runs one `swiftdrop queue` command on `queue`.
pub async fn run(queue: &Queue, command: QueueCommand) -> ExitCode {
    let result = match command {
        QueueCommand::Stats { json } => stats(queue, json).await,
        QueueCommand::List { state, limit, json } => {
            let limit = if limit == 0 { usize::MAX } else { limit };
            list(queue, state, limit, json).await
        }
        QueueCommand::Show { key, json } => show(queue, &key, json).await,
        QueueCommand::Claim { lease, wait, json } => return claim(queue, lease, wait, json).await,
        QueueCommand::Renew { key, token, lease } => renew(queue, &key, &token, lease).await,
        QueueCommand::Finish {
            not_before: Some(_),
            to: Target::Done | Target::Failed,
            ..
        } => {
            eprintln!("swiftdrop queue: --not-before goes with --to retry only");
            return ExitCode::from(EXIT_USAGE);
        }
        QueueCommand::Finish {
            key,
            token,
            to,
            reason,
            not_before,
        } => finish(queue, &key, &token, to, reason, not_before).await,
        QueueCommand::Release { key, token } => release(queue, &key, &token).await,
        QueueCommand::Requeue { key, forget_done } => requeue(queue, &key, forget_done).await,
        QueueCommand::Purge {
            state,
            older_than,
            dry_run,
        } => purge(queue, state, older_than, dry_run).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn stats(queue: &Queue, json: bool) -> Result<(), QueueError> {
    let stats = queue.stats().await?;
    if json {
        let object: serde_json::Map<String, Value> = stats
            .iter()
            .map(|(state, s)| {
                (
                    state.to_string(),
                    json!({"count": s.count, "bytes": s.bytes, "oldest": s.oldest.map(time), "foreign": s.foreign}),
                )
            })
            .collect();
        println!("{}", Value::Object(object));
        return Ok(());
    }
    println!("destination {}", queue.destination().describe());
    println!("{:<11} {:>8} {:>12}  oldest", "state", "count", "bytes");
    for (state, s) in &stats {
        let oldest = s.oldest.map_or_else(
            || "-".to_string(),
            |t| format!("{} ({} ago)", time(t), age(Utc::now() - t)),
        );
        println!(
            "{:<11} {:>8} {:>12}  {oldest}",
            state.to_string(),
            s.count,
            s.bytes
        );
    }
    for (state, s) in stats.iter().filter(|(_, s)| s.foreign > 0) {
        println!(
            "{}/ also holds {} object(s) that are no message of the queue (another program's, or a name the queue cannot write back as it is): never taken, never deleted",
            state.folder(),
            s.foreign
        );
    }
    Ok(())
}

/// A short human age: `42s`, `5m`, `3h`, `2d`.
fn age(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

async fn list(queue: &Queue, state: State, limit: usize, json: bool) -> Result<(), QueueError> {
    // One more than shown: whether the limit cut the list.
    let mut entries = queue.list(state, limit.saturating_add(1)).await?;
    let cut = entries.len() > limit;
    entries.truncate(limit);
    if json {
        let array: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "key": e.key,
                    "name": e.name,
                    "state": e.state.to_string(),
                    "size": e.size,
                    "received": time(e.received),
                    "attempt": e.attempt,
                })
            })
            .collect();
        println!("{}", Value::Array(array));
        return Ok(());
    }
    if entries.is_empty() {
        println!("no messages in {state}/");
        return Ok(());
    }
    if cut {
        eprintln!("swiftdrop queue: the first {limit} messages of {state}/ (--limit N, 0 for all)");
    }
    println!("{:<24} {:>7} {:>10}  key", "received", "attempt", "size");
    for e in entries {
        println!(
            "{:<24} {:>7} {:>10}  {}",
            time(e.received),
            e.attempt,
            e.size,
            e.key
        );
    }
    Ok(())
}

async fn show(queue: &Queue, key: &str, json: bool) -> Result<(), QueueError> {
    let seen = queue.inspect(key, true).await?;
    let digests = seen.digests.clone().unwrap_or_default();
    let newest = seen.newest();
    let name = newest.key.name.clone();
    let glance = &seen.glance;
    let record = &newest.record;
    let leftovers: Vec<String> = seen.copies[1..].iter().map(|c| c.key.to_string()).collect();
    let received = crate::queue::record::received(&name).unwrap_or(newest.meta.last_modified);
    let lease = seen.holder.as_ref().map(|h| {
        json!({
            "owner": h.token.owner(),
            "fence": h.token.fence(),
            "until": time(Utc::now() + h.remaining),
        })
    });
    let metadata: serde_json::Map<String, Value> = glance
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let value = json!({
        "key": newest.key.to_string(),
        "name": name,
        "state": newest.state().to_string(),
        "also_in": leftovers,
        "size": newest.meta.size,
        "received": time(received),
        "since": time(newest.meta.last_modified),
        "attempt": record.attempt,
        "fence": record.fence,
        "reason": record.reason,
        "not_before": record.not_before.map(time),
        "lease": lease,
        "envelope": {"sender": glance.sender, "recipients": glance.recipients},
        "headers": glance.headers.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "metadata": metadata,
        "sha256": digests.sha256,
        "dedup_digest": digests.dedup,
        "duplicate_of": seen.duplicate_of.as_ref().map(|d| json!({"key": d.key, "finished": time(d.at)})),
    });
    if json {
        println!("{value}");
        return Ok(());
    }
    let field = |label: &str, text: String| println!("{label:<15}{text}");
    field("key:", newest.key.to_string());
    field("state:", newest.state().to_string());
    if !leftovers.is_empty() {
        field(
            "also in:",
            format!(
                "{} (outranked copies: left by an interrupted move or a paused worker; a claim, requeue or purge that meets them removes them)",
                leftovers.join(", ")
            ),
        );
    }
    field("size:", newest.meta.size.to_string());
    field("received:", time(received));
    field("since:", time(newest.meta.last_modified));
    field("attempts:", record.attempt.to_string());
    if let Some(reason) = &record.reason {
        field("reason:", reason.clone());
    }
    if let Some(t) = record.not_before {
        field("not before:", time(t));
    }
    field(
        "lease:",
        match &seen.holder {
            Some(h) => format!(
                "held by {} until {} (fence {})",
                h.token.owner(),
                time(Utc::now() + h.remaining),
                h.token.fence()
            ),
            None => "none".into(),
        },
    );
    field("sender:", glance.sender.clone().unwrap_or_default());
    field("recipients:", glance.recipients.join(", "));
    field("sha256:", digests.sha256.clone());
    field("dedup digest:", digests.dedup.clone());
    field(
        "duplicate-of:",
        seen.duplicate_of.as_ref().map_or_else(
            || "none".into(),
            |d| format!("{} (finished {})", d.key, time(d.at)),
        ),
    );
    if !glance.metadata.is_empty() {
        println!("metadata:");
        for (k, v) in &glance.metadata {
            println!("  {k}: {v}");
        }
    }
    println!("headers:");
    for (k, v) in &glance.headers {
        println!("  {k}: {v}");
    }
    Ok(())
}

async fn claim(
    queue: &Queue,
    lease: Option<Duration>,
    wait: Option<Duration>,
    json: bool,
) -> ExitCode {
    let claimed = queue.claim(&ClaimOptions { lease, wait }).await;
    let claim = match claimed {
        Ok(Some(claim)) => claim,
        Ok(None) => {
            if !json {
                eprintln!("swiftdrop queue: nothing to claim");
            }
            return ExitCode::from(EXIT_NOTHING);
        }
        Err(e) => return fail(&e),
    };
    if json {
        println!(
            "{}",
            json!({
                "key": claim.key(),
                "name": claim.name(),
                "token": claim.token().as_str(),
                "attempt": claim.attempt(),
                "lease_until": time(claim.lease_until()),
                "size": claim.size(),
            })
        );
    } else {
        println!("claimed:     {}", claim.key());
        println!("token:       {}", claim.token());
        println!("attempt:     {}", claim.attempt());
        println!("lease until: {}", time(claim.lease_until()));
        println!("size:        {}", claim.size());
    }
    // The lease stays in the lock engine for the process that uses the token.
    claim.detach();
    ExitCode::SUCCESS
}

async fn renew(
    queue: &Queue,
    key: &str,
    token: &Token,
    lease: Option<Duration>,
) -> Result<(), QueueError> {
    let mut claim = queue.resume(key, token).await?;
    let until = match lease {
        Some(lease) => claim.set_lease(lease).await?,
        None => claim.renew(None).await?,
    };
    println!("renewed {} until {}", claim.key(), time(until));
    claim.detach();
    Ok(())
}

async fn finish(
    queue: &Queue,
    key: &str,
    token: &Token,
    to: Target,
    reason: Option<String>,
    not_before: Option<Duration>,
) -> Result<(), QueueError> {
    let outcome = match to {
        Target::Done => Outcome::Done { reason },
        Target::Failed => Outcome::Failed {
            reason: reason.unwrap_or_else(|| "failed by an operator".into()),
        },
        Target::Retry => Outcome::Retry { reason, not_before },
    };
    let mut claim = queue.resume(key, token).await?;
    let finished = claim.finish(outcome).await?;
    println!("moved to {}", finished.key);
    Ok(())
}

async fn release(queue: &Queue, key: &str, token: &Token) -> Result<(), QueueError> {
    let mut claim = queue.resume(key, token).await?;
    let finished = claim.release().await?;
    println!("released to {}", finished.key);
    Ok(())
}

async fn requeue(queue: &Queue, key: &str, forget_done: bool) -> Result<(), QueueError> {
    let finished = queue.requeue(key, forget_done).await?;
    println!("requeued to {}", finished.key);
    Ok(())
}

async fn purge(
    queue: &Queue,
    state: State,
    older_than: Duration,
    dry_run: bool,
) -> Result<(), QueueError> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} deleted ({eta} left)")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress = |done: u64, total: u64| {
        if let Some(bar) = &bar {
            bar.set_length(total);
            bar.set_position(done);
        }
    };
    let report = queue.purge(state, older_than, dry_run, &progress).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let age = humantime::format_duration(older_than);
    if dry_run {
        println!(
            "would delete {} messages ({} bytes) from {state}/ older than {age}",
            report.matched, report.bytes
        );
    } else {
        println!(
            "deleted {} of {} messages ({} bytes) from {state}/ older than {age}",
            report.deleted, report.matched, report.bytes
        );
    }
    if report.failed > 0 {
        return Err(QueueError::Store(format!(
            "{} deletions failed (see the log)",
            report.failed
        )));
    }
    Ok(())
}
