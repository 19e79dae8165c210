//! The dequeue worker: claims stored mail and routes it by rules (see `swiftdrop::worker::rules`
//! and `swiftdrop::worker::dequeue`).
//!
//! ```text
//! dequeue --config RULES.yml [--concurrency N] [--destination NAME] [--ini SWIFTDROP.ini]
//! dequeue --check RULES.yml
//! dequeue --config RULES.yml --dry-run MESSAGE.eml
//! ```
//!
//! The queue (store, lock engine) comes from the same `SWIFTDROP_*` settings (and ini file,
//! `--ini`) as `swiftdrop queue`. Exit codes: 0 done (after SIGTERM/SIGINT, once the jobs in
//! flight ended), 1 a problem in the rules file (each printed as `FILE:LINE: ...`), 2 the
//! queue or the message cannot be opened.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use swiftdrop::config::Config;
use swiftdrop::queue::Queue;
use swiftdrop::worker::dequeue::Worker;
use swiftdrop::worker::mail_view::MailView;
use swiftdrop::worker::rules::{self, Disposal, Rules, Unmatched};

#[derive(Parser)]
#[command(about = "Route stored mail by rules to chat rooms and e-mail alerts")]
struct Args {
    /// The rules file (YAML; a mail2alert configuration.yml works unchanged).
    #[arg(long, conflicts_with = "check")]
    config: Option<PathBuf>,
    /// Check this rules file, print every problem with its line, and exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Print which manager, rules and actions this message would fire, with the rendered
    /// text; send nothing.
    #[arg(long, value_name = "MESSAGE.eml", requires = "config")]
    dry_run: Option<PathBuf>,
    /// Messages handled at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// The destination (section) whose stored mail is claimed.
    #[arg(long, default_value = "DEFAULT")]
    destination: String,
    /// swiftdrop's ini file, as `swiftdrop --config` takes it (else only `SWIFTDROP_*`).
    #[arg(long)]
    ini: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(path) = args.check.as_ref().or(args.config.as_ref()) else {
        eprintln!("dequeue: give --config RULES.yml or --check RULES.yml");
        return ExitCode::from(2);
    };
    let rules = match rules::load(path) {
        Ok(rules) => rules,
        Err(e) => {
            for problem in &e.problems {
                println!("{problem}");
            }
            return ExitCode::from(1);
        }
    };
    if args.check.is_some() {
        let count: usize = rules.managers.iter().map(|m| m.rules.len()).sum();
        println!(
            "{}: OK ({} managers, {count} rules)",
            path.display(),
            rules.managers.len()
        );
        return ExitCode::SUCCESS;
    }
    if let Some(message) = &args.dry_run {
        return dry_run(&rules, message);
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(work(args, rules))
}

/// Prints a rendered text, indented, or why it could not be rendered.
fn print_text(what: &str, text: &Result<String, String>) {
    match text {
        Ok(text) => {
            println!("  {what}:");
            for line in text.lines() {
                println!("    {line}");
            }
        }
        Err(e) => println!("  error: {e}"),
    }
}

/// Prints what `rules` would do with the message in `path`.
fn dry_run(rules: &Rules, path: &PathBuf) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("dequeue: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mail = MailView::parse(&bytes);
    let decision = rules.decide(&mail);
    println!(
        "envelope: from <{}> to {:?}",
        mail.envelope_from, mail.envelope_to
    );
    match (&decision.manager, &decision.disposal) {
        (None, Disposal::Unmatched(Unmatched::Forward(to))) => {
            println!("no manager wants it: forwarded unchanged to {to}")
        }
        (None, Disposal::Unmatched(Unmatched::Fail)) => {
            println!("no manager wants it: to failed/")
        }
        (None, _) => println!("no manager wants it: to done/"),
        (Some(m), Disposal::NoRuleMatched) => {
            println!("manager: {m}\nno rule matched: to done/")
        }
        (Some(m), _) => {
            println!("manager: {m}");
            for fired in &decision.fired {
                println!("rule: {}", fired.rule);
                for action in &fired.actions {
                    println!("  action: {action}");
                }
                print_text("text", &fired.text);
                if let Some(markdown) = &fired.markdown {
                    print_text("mattermost post", markdown);
                }
            }
        }
    }
    ExitCode::SUCCESS
}

async fn work(args: Args, rules: Rules) -> ExitCode {
    // Signals are caught from the start: a SIGTERM during the set-up stops the worker
    // before it claims anything. A second one ends the process at once (claims in hand
    // come back when their leases run out).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .expect("SIGINT handler");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: no new claims; the messages in hand are finished first");
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
    let config = match Config::load(args.ini.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dequeue: {e}");
            return ExitCode::from(2);
        }
    };
    let queue = match Queue::open(&config, &args.destination) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("dequeue: {e}");
            return ExitCode::from(2);
        }
    };
    let worker = match Worker::new(queue, rules) {
        Ok(worker) => Arc::new(worker),
        Err(e) => {
            eprintln!("dequeue: {e}");
            return ExitCode::from(1);
        }
    };
    tracing::info!(
        concurrency = args.concurrency,
        destination = args.destination,
        "dequeue worker started"
    );
    worker.run(args.concurrency, stop_rx).await;
    ExitCode::SUCCESS
}
