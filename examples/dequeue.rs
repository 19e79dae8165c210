//! The dequeue worker: claims stored mail and routes it by rules (see `swiftdrop::worker::rules`
//! and `swiftdrop::worker::dequeue`).
//!
//! ```text
//! dequeue [--config RULES.yml] [--concurrency N] [--destination NAME] [--ini SWIFTDROP.ini]
//! dequeue --check RULES.yml | --check milter-xmpp.ini
//! dequeue --milter-xmpp milter-xmpp.ini
//! dequeue [--config RULES.yml] --dry-run MESSAGE.eml [--from ADDRESS] [--to ADDRESS]...
//! dequeue [--config RULES.yml] --report
//! ```
//!
//! Without `--config`, the rules file is the one `MAIL2ALERT_CONFIGURATION` names, else
//! `configuration.yml` in the working directory (as mail2alert finds its own). `--report`
//! is mail2alert's self-test: for each `gocd` manager, each pipeline group and pipeline
//! GoCD has and the actions each event would take, as YAML.
//!
//! The queue (store, lock engine) comes from the same `SWIFTDROP_*` settings (and ini file,
//! `--ini`) as `swiftdrop queue`. Exit codes: 0 done (after SIGTERM/SIGINT, once the jobs in
//! flight ended), 1 a problem in the rules file (each printed as `FILE:LINE: ...`; warnings
//! as `FILE:LINE: warning: ...` do not fail; with `--dry-run`, also a text that does not
//! render for the message), 2 the queue, the message or GoCD cannot be opened.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use swiftdrop::admin::{lock_check, store_check};
use swiftdrop::config::{Config, LogFormat, parse_admin_listen};
use swiftdrop::queue::Queue;
use swiftdrop::store::trace;
use swiftdrop::worker::dequeue::Worker;
use swiftdrop::worker::gocd::GocdClient;
use swiftdrop::worker::mail_view::MailView;
use swiftdrop::worker::rules::gocd::{GocdFacts, stage_result};
use swiftdrop::worker::rules::{self, Disposal, Purpose, Rules, Unmatched};

#[derive(Parser)]
#[command(about = "Route stored mail by rules to chat rooms and e-mail alerts")]
struct Args {
    /// The rules file (YAML; a mail2alert configuration.yml works unchanged; a file
    /// ending in .ini is a milter-xmpp.ini). Default: $MAIL2ALERT_CONFIGURATION, else
    /// configuration.yml.
    #[arg(long, conflicts_with = "check")]
    config: Option<PathBuf>,
    /// A milter-xmpp.ini to run as it is (the same as --config FILE.ini).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["check", "config"])]
    milter_xmpp: Option<PathBuf>,
    /// Check this rules file, print every problem with its line, and exit.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Print which manager, rules and actions this message would fire, with the rendered
    /// text; send nothing.
    #[arg(long, value_name = "MESSAGE.eml")]
    dry_run: Option<PathBuf>,
    /// With --dry-run: the envelope sender (else the message's Return-Path: trace line,
    /// else its From: header).
    #[arg(long, value_name = "ADDRESS", requires = "dry_run")]
    from: Option<String>,
    /// With --dry-run: an envelope recipient, repeated for more (else the message's
    /// Delivered-To: trace lines, else its To: and Cc: headers).
    #[arg(long, value_name = "ADDRESS", requires = "dry_run")]
    to: Vec<String>,
    /// Print, for each gocd manager, which events of which pipeline take which actions
    /// (mail2alert's self-test), as YAML; send nothing.
    #[arg(long, conflicts_with_all = ["check", "dry_run"])]
    report: bool,
    /// Messages handled at once (1 or more).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    concurrency: usize,
    /// The destination (section) whose stored mail is claimed.
    #[arg(long, default_value = "DEFAULT")]
    destination: String,
    /// swiftdrop's ini file, as `swiftdrop --config` takes it (else only `SWIFTDROP_*`).
    #[arg(long)]
    ini: Option<PathBuf>,
    /// Log line format; overrides the `log_format` setting (`SWIFTDROP_SERVER_LOG_FORMAT`),
    /// as `swiftdrop serve --log-format` does.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// The worker's admin listener (/metrics, /healthz, /readyz, /queue): a port (on
    /// loopback) or address:port; off unless given (serve's `admin_listen` is serve's).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
}

/// A count of 1 or more: 0 jobs would claim nothing, silently.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be 1 or more (0 would handle no message)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // --check, --dry-run and --report print for a reader that may leave early (`| head`);
    // the worker's loop does not.
    let one_shot = args.check.is_some() || args.dry_run.is_some() || args.report;
    if one_shot {
        swiftdrop::util::closed_pipe::end_quietly_when_the_reader_leaves();
    }
    // The worker reads the queue's settings first: they hold its log format too.
    let config = if one_shot {
        None
    } else {
        match Config::load(args.ini.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("dequeue: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let format = args
        .log_format
        .or(config.as_ref().map(|c| c.server.log_format))
        .unwrap_or(LogFormat::Text);
    swiftdrop::util::logging::init(format == LogFormat::Json, "info");
    let default = std::env::var_os("MAIL2ALERT_CONFIGURATION")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("configuration.yml"), PathBuf::from);
    let path = args
        .check
        .clone()
        .or(args.config.clone())
        .unwrap_or(default);
    // A check and a dry run may run where the secrets are not: an unset variable warns.
    let purpose = if args.check.is_some() || args.dry_run.is_some() {
        Purpose::Check
    } else {
        Purpose::Run
    };
    let rules = match &args.milter_xmpp {
        Some(ini) => rules::milter_xmpp_rules(ini, purpose),
        None => rules::load(&path, purpose),
    };
    let rules = match rules {
        Ok(rules) => rules,
        Err(e) => {
            for problem in &e.problems {
                println!("{problem}");
            }
            return ExitCode::from(1);
        }
    };
    for warning in &rules.warnings {
        // --check prints its findings, a dry run or report says them beside its answer, a
        // worker logs them (in its log format).
        if args.check.is_some() {
            println!("{warning}");
        } else if one_shot {
            eprintln!("{warning}");
        } else {
            tracing::warn!("{warning}");
        }
    }
    if args.check.is_some() {
        let count: usize = rules.managers.iter().map(|m| m.rules.len()).sum();
        println!(
            "{}: OK ({}, {})",
            path.display(),
            counted(rules.managers.len(), "manager"),
            counted(count, "rule")
        );
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Some(message) = &args.dry_run {
        let envelope = Assumed {
            from: args.from.clone(),
            to: args.to.clone(),
        };
        return runtime.block_on(dry_run(&rules, message, envelope));
    }
    if args.report {
        return runtime.block_on(report(&rules));
    }
    let config = config.expect("read above for every run that is not one-shot");
    runtime.block_on(work(args, config, rules))
}

/// `1 rule`, `2 rules`.
fn counted(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// A GoCD client for each `gocd` manager, by its place (`--report` asks GoCD, and does not
/// read or change the shared history).
fn gocd_clients(rules: &Rules) -> Result<Vec<(usize, GocdClient)>, String> {
    rules
        .managers
        .iter()
        .enumerate()
        .filter_map(|(at, m)| Some((at, m.gocd.clone()?)))
        .map(|(at, settings)| Ok((at, GocdClient::new(settings)?)))
        .collect()
}

/// Prints mail2alert's self-test report for the gocd managers (others: null).
async fn report(rules: &Rules) -> ExitCode {
    let servers = match gocd_clients(rules) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dequeue: {e}");
            return ExitCode::from(2);
        }
    };
    let mut report = std::collections::BTreeMap::new();
    for (at, manager) in rules.managers.iter().enumerate() {
        let entry = match servers.iter().find(|(i, _)| *i == at) {
            Some((_, gocd)) => match gocd.fetch_groups().await {
                Ok(groups) => Some(swiftdrop::worker::gocd::report(manager, &Arc::new(groups))),
                Err(e) => {
                    eprintln!("dequeue: gocd manager {:?}: {e}", manager.name);
                    return ExitCode::from(2);
                }
            },
            None => None,
        };
        report.insert(manager.name.clone(), entry);
    }
    match yaml_serde::to_string(&report) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dequeue: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints a rendered text, indented, or why it could not be rendered; false for the latter.
fn print_text(what: &str, text: &Result<String, String>) -> bool {
    match text {
        Ok(text) => {
            println!("  {what}:");
            for line in text.lines() {
                println!("    {line}");
            }
            true
        }
        Err(e) => {
            println!("  error: {what} does not render: {e}");
            false
        }
    }
}

/// The envelope a dry run was told to assume (`--from`, `--to`).
struct Assumed {
    from: Option<String>,
    to: Vec<String>,
}

/// Sets the envelope of a dry run's `mail`, each half on its own: the options' where given,
/// else the trace lines the filter writes on top of a stored message (`Return-Path:` for
/// the sender, `Delivered-To:` for the recipients), else (an exported or hand-written
/// message, or one with only one kind of trace line, as a mailbox download has) the header
/// From:, To: and Cc:. Returns where they came from, in words.
fn assume_envelope(mail: &mut MailView, bytes: &[u8], assumed: Assumed) -> String {
    let found = trace::kinds(bytes);
    let no_header_from = mail.header_values("from").next().is_none();
    let sender_given = assumed.from.is_some();
    let sender = match assumed.from {
        Some(from) => {
            mail.envelope_from = bare_address(&from);
            "--from"
        }
        None if found.sender => "the Return-Path: trace line",
        None => {
            mail.envelope_from = mail.from.clone();
            "the From: header"
        }
    };
    let recipients_given = !assumed.to.is_empty();
    let recipients = if recipients_given {
        mail.envelope_to = assumed.to.iter().map(|a| bare_address(a)).collect();
        "--to"
    } else if found.recipients {
        "the Delivered-To: trace lines"
    } else {
        mail.envelope_to = mail.to.clone();
        "the To: and Cc: headers"
    };
    // As the worker reads a message without From: (`MailView::from`).
    if no_header_from {
        mail.from = mail.envelope_from.clone();
    }
    let from_trace = (sender_given || found.sender) && (recipients_given || found.recipients);
    let hint = if from_trace {
        ""
    } else {
        "; not all of it is in trace lines: --from and --to give the real envelope"
    };
    format!("(sender from {sender}, recipients from {recipients}{hint})")
}

/// The address in `Alice <a@example.org>`, `<a@example.org>` or `a@example.org`.
fn bare_address(written: &str) -> String {
    let written = written.trim();
    match (written.rfind('<'), written.rfind('>')) {
        (Some(open), Some(close)) if open < close => written[open + 1..close].trim().to_string(),
        _ => written.to_string(),
    }
}

/// Prints what `rules` would do with the message in `path` (a gocd manager's notification
/// with the event its subject says: the shared history is not consulted). Exit code 1 when
/// a text does not render for it.
async fn dry_run(rules: &Rules, path: &PathBuf, assumed: Assumed) -> ExitCode {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("dequeue: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut mail = MailView::parse(&bytes);
    let said = assume_envelope(&mut mail, &bytes, assumed);
    let gocd = rules
        .manager_at(&mail)
        .and_then(|at| rules.managers[at].gocd.clone());
    let mut facts = None;
    if let Some(settings) = gocd {
        let stage = stage_result(&mail.subject);
        let groups = if settings.unresolved {
            // Never `$VAR` as a password: GoCD would count a failed login.
            println!(
                "gocd: url, user or passwd names a variable not set here: GoCD is not asked (no pipeline groups)"
            );
            Vec::new()
        } else {
            let fetched = match GocdClient::new(settings) {
                Ok(gocd) => gocd.fetch_groups().await,
                Err(e) => Err(e),
            };
            match fetched {
                Ok(groups) => groups,
                Err(e) => {
                    eprintln!("dequeue: gocd: {e}");
                    return ExitCode::from(2);
                }
            }
        };
        println!("gocd: the event is the subject's own (the shared history is not read)");
        facts = Some(GocdFacts {
            event: stage.as_ref().and_then(|s| s.said),
            stage,
            groups: Arc::new(groups),
        });
    }
    let decision = rules.decide(&mail, facts.as_ref());
    println!(
        "envelope: from <{}> to {:?} {said}",
        mail.envelope_from, mail.envelope_to
    );
    let mut rendered = true;
    match (&decision.manager, &decision.disposal) {
        (None, Disposal::Unmatched(Unmatched::Forward(to))) => {
            println!(
                "no manager wants it: forwarded unchanged through {to} to {:?}",
                mail.envelope_to
            )
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
                rendered &= print_text("text", &fired.text);
                if let Some(markdown) = &fired.markdown {
                    rendered &= print_text("mattermost post", markdown);
                }
            }
        }
    }
    if rendered {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "dequeue: a text does not render for this message (the worker would fail that action: failed/)"
        );
        ExitCode::from(1)
    }
}

async fn work(args: Args, config: Config, rules: Rules) -> ExitCode {
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
    let new_maildir = config.missing_maildir(&args.destination);
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
    if let Some(warning) = new_maildir {
        tracing::warn!("{warning}");
    }
    // Not serve's `admin_listen`: both may run side by side with the same settings.
    let admin_listen = match args.admin_listen.as_deref().map(parse_admin_listen) {
        Some(Ok(listen)) => listen,
        Some(Err(e)) => {
            eprintln!("dequeue: --admin-listen: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    let health = Arc::new(swiftdrop::telemetry::health::Health::default());
    if let Some(listen) = admin_listen {
        let queue = worker.queue.clone();
        let mut checks = vec![
            store_check(queue.destination().clone()),
            lock_check(queue.clone()),
        ];
        checks.extend(worker.sink_checks());
        let queues = vec![(queue.destination().name.clone(), Ok(queue))];
        let started = swiftdrop::admin::start_for(
            listen,
            "worker",
            &config.server,
            Arc::clone(&health),
            checks,
            queues,
        );
        if let Err(e) = started.await {
            eprintln!("dequeue: admin listener on {listen}: {e}");
            return ExitCode::from(2);
        }
    }
    worker.seed_gocd_history().await;
    tracing::info!(
        concurrency = args.concurrency,
        destination = %worker.queue.destination().describe(),
        "dequeue worker started"
    );
    // Stopping: not ready any more (the messages in hand are finished first).
    let mut stopping = stop_rx.clone();
    tokio::spawn(async move {
        if stopping.wait_for(|stop| *stop).await.is_ok() {
            health.drain();
        }
    });
    worker.run(args.concurrency, stop_rx).await;
    ExitCode::SUCCESS
}
