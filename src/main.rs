//! The `swiftdrop` command: `serve` runs the filter ([`swiftdrop::filter`]); `check`,
//! `queue` and `postfix-config` are [`swiftdrop::cli`]'s, which return their exit status.
//! The only place logging is set up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use swiftdrop::cli;
use swiftdrop::config::Router;
use swiftdrop::config::{Backend, Config, LockSetting, LogFormat};
use swiftdrop::filter::deliver::Deliverer;
use swiftdrop::filter::relay::Relay;
use swiftdrop::filter::server::Server;
use swiftdrop::queue;
use swiftdrop::store::Destination;

/// A before-queue SMTP filter that stores mail in object storage or a local Maildir.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SMTP filter (for Postfix's smtpd_proxy_filter).
    Serve {
        /// Ini file with [SERVER], [DEFAULT] and destination sections.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address to listen on; overrides the `listen` setting.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Log line format; overrides the `log_format` setting.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate the configuration and prove every destination writable.
    Check {
        /// Ini file with [SERVER], [DEFAULT] and destination sections.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Claim, finish and inspect stored mail (the queue of one destination).
    Queue(cli::queue::QueueArgs),
    /// Write Postfix's configuration (main.cf, master.cf, maps) for this gateway into DIR,
    /// from MYHOSTNAME, MYDOMAIN, RELAY_DOMAINS, FORWARDS and swiftdrop's own settings.
    PostfixConfig {
        /// Directory to write main.cf, master.cf, relay_recipients and virtual into.
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        /// Ini file with [SERVER], [DEFAULT] and destination sections.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address of the public smtpd (the container's entrypoint gives SMTP_LISTEN,
        /// default 0.0.0.0:25).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:25")]
        public: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands whose output may be piped end quietly when the reader leaves; the server
    // does not.
    if matches!(cli.command, Command::Serve { .. }) {
        swiftdrop::util::allocator::hand_back_large_blocks();
    } else {
        swiftdrop::util::closed_pipe::end_quietly_when_the_reader_leaves();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swiftdrop: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve {
            config,
            listen,
            log_format,
        } => runtime.block_on(async move {
            // On the runtime's workers, not on this thread: accepting here would cost two
            // thread hand-offs per connection (this thread woken for the accept, then a
            // worker woken for the session), and Postfix opens one per message.
            match tokio::spawn(serve(config, listen, log_format)).await {
                Ok(code) => code,
                Err(e) => {
                    // Before logging is set up there is only stderr.
                    eprintln!("swiftdrop: the server stopped: {e}");
                    tracing::error!(error = %e, "the server stopped");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Check { config } => match load(config.as_ref()) {
            Some(config) => runtime.block_on(cli::check::run(&config)),
            None => ExitCode::FAILURE,
        },
        Command::Queue(args) => runtime.block_on(queue(args)),
        Command::PostfixConfig {
            output,
            config,
            public,
        } => match load(config.as_ref()) {
            Some(config) => cli::postfix_config::run(&config, &output, public),
            None => ExitCode::FAILURE,
        },
    }
}

fn load(file: Option<&PathBuf>) -> Option<Config> {
    match Config::load(file.map(PathBuf::as_path)) {
        Ok(config) => Some(config),
        Err(err) => {
            for problem in &err.problems {
                eprintln!("swiftdrop: configuration error: {problem}");
            }
            None
        }
    }
}

async fn serve(
    file: Option<PathBuf>,
    listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
) -> ExitCode {
    let Some(mut config) = load(file.as_ref()) else {
        return ExitCode::FAILURE;
    };
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let format = log_format.unwrap_or(config.server.log_format);
    swiftdrop::util::logging::init(format == LogFormat::Json, "info");
    let destinations = match Destination::open_all(&config.destinations) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("cannot open destination {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.embedded_default {
        if let Some(Backend::Maildir { path }) = config.destinations.first().map(|d| &d.backend) {
            let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            tracing::info!(
                "no destination configured: storing every recipient's mail in the Maildir {}",
                shown.display()
            );
        }
    }
    if config.server.startup_check {
        let failures = swiftdrop::store::check_containers(&destinations).await;
        if !failures.is_empty() {
            for failure in &failures {
                tracing::error!("destination check failed: {failure}");
            }
            tracing::error!(
                "not serving: fix the destinations, or set SWIFTDROP_SERVER_STARTUP_CHECK=no to serve anyway (mail for them then gets 451)"
            );
            return ExitCode::FAILURE;
        }
    }
    for dest in &destinations {
        tracing::info!(destination = %dest.describe(), "destination ready");
    }
    let router = Router::new(&config.destinations);
    let relay = config.server.relay.map(|addr| {
        if router.takes_every_recipient() {
            tracing::info!("a destination takes every recipient (*): nothing is relayed");
        } else {
            tracing::info!(relay = %addr, "recipients no destination takes are relayed");
        }
        Relay::new(addr, &config.server.hostname, config.server.store_timeout)
    });
    let announcers = announcers(&config, &destinations);
    let destinations_for_checks = destinations.clone();
    let deliverer = Deliverer::new(
        router,
        destinations,
        relay,
        &config.server.hostname,
        config.server.store_timeout,
    )
    .with_announcers(announcers);
    let health = std::sync::Arc::new(swiftdrop::telemetry::health::Health::default());
    if let Some(listen) = config.server.admin_listen {
        let checks = destinations_for_checks
            .into_iter()
            .map(swiftdrop::admin::store_check)
            .collect();
        let queues = config
            .destinations
            .iter()
            .map(|d| {
                let queue = queue::Queue::open(&config, &d.name).map_err(|e| e.to_string());
                (d.name.clone(), queue)
            })
            .collect();
        let started = swiftdrop::admin::start_for(
            listen,
            "serve",
            &config.server,
            std::sync::Arc::clone(&health),
            checks,
            queues,
        );
        if let Err(e) = started.await {
            tracing::error!(listen = %listen, error = %e, "cannot listen for the admin listener");
            return ExitCode::FAILURE;
        }
    }
    let server = match Server::bind(config.server.clone(), std::sync::Arc::new(deliverer)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listen = %config.server.listen, error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => {
            tracing::info!(listen = %addr, hostname = %config.server.hostname, "swiftdrop serving")
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the bound address"),
    }
    // Draining: not ready any more, so that no new mail is sent this way.
    server
        .run(async {
            shutdown_signal().await;
            health.drain();
        })
        .await;
    ExitCode::SUCCESS
}

/// One announcer per destination whose workers share a lock engine with the filter: Redis
/// carries announcements, so that waiting workers claim new mail at once; and on a remote
/// store either engine tells the filter whether a message it cannot find under `cur/` was
/// taken by a worker (a listing alone may lag), so that it never writes it a second time.
/// A Maildir with the local lock needs neither (inotify wakes workers; its writes are
/// renames, never tried again).
fn announcers(config: &Config, destinations: &[Destination]) -> Vec<Option<queue::Announcer>> {
    destinations
        .iter()
        .map(|dest| {
            match &config.queue.lock {
                Some(LockSetting::Redis(_)) => {}
                Some(LockSetting::Local) if dest.remote => {}
                _ => return None,
            }
            match queue::open_lock(dest, &config.queue) {
                Ok(engine) => {
                    tracing::info!(destination = %dest.name, lock = %config.queue.lock.as_ref().map(ToString::to_string).unwrap_or_default(), "sharing the workers' lock engine");
                    Some(queue::Announcer::spawn(engine))
                }
                Err(e) => {
                    tracing::warn!(destination = %dest.name, error = %e, "cannot open the workers' lock engine; workers find new mail by listing");
                    None
                }
            }
        })
        .collect()
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

async fn queue(args: cli::queue::QueueArgs) -> ExitCode {
    let Some(config) = load(args.config.as_ref()) else {
        return ExitCode::FAILURE;
    };
    // Warnings and errors of the library go to stderr; stdout is the command's answer.
    swiftdrop::util::logging::init(config.server.log_format == LogFormat::Json, "warn");
    let new_maildir = config.missing_maildir(&args.destination);
    let queue = match queue::Queue::open(&config, &args.destination) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("swiftdrop queue: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(warning) = new_maildir {
        tracing::warn!("{warning}");
    } else if args.verbose {
        eprintln!(
            "swiftdrop queue: destination {}",
            queue.destination().describe()
        );
    }
    cli::queue::run(&queue, args.command).await
}
