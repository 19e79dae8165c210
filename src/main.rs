//! The `swiftdrop` command: `serve` runs the filter, `check` proves the configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use swiftdrop::config::{Backend, Config, LogFormat};
use swiftdrop::deliver::Deliverer;
use swiftdrop::relay::Relay;
use swiftdrop::route::Router;
use swiftdrop::server::Server;
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
        log_format: Option<LogFormatArg>,
    },
    /// Validate the configuration and prove every destination writable.
    Check {
        /// Ini file with [SERVER], [DEFAULT] and destination sections.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        } => runtime.block_on(serve(config, listen, log_format)),
        Command::Check { config } => runtime.block_on(check(config)),
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn describe(dest: &Destination, config: &Config) -> String {
    let backend = config
        .destinations
        .iter()
        .find(|d| d.name == dest.name)
        .map(|d| match &d.backend {
            Backend::Maildir { path } => format!("maildir {}", path.display()),
        })
        .unwrap_or_default();
    format!("[{}] {backend}", dest.name)
}

async fn serve(
    file: Option<PathBuf>,
    listen: Option<SocketAddr>,
    log_format: Option<LogFormatArg>,
) -> ExitCode {
    let Some(mut config) = load(file.as_ref()) else {
        return ExitCode::FAILURE;
    };
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    init_logging(match log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.server.log_format,
    });
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
    for dest in &destinations {
        tracing::info!(destination = %describe(dest, &config), "destination ready");
    }
    let router = Router::new(&config.destinations);
    let relay = config.server.relay.map(|addr| {
        tracing::info!(relay = %addr, "recipients no destination takes are relayed");
        Relay::new(addr, &config.server.hostname, config.server.store_timeout)
    });
    let deliverer = Deliverer::new(
        router,
        destinations,
        relay,
        &config.server.hostname,
        config.server.store_timeout,
    );
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
    server.run(shutdown_signal()).await;
    ExitCode::SUCCESS
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

async fn check(file: Option<PathBuf>) -> ExitCode {
    let Some(config) = load(file.as_ref()) else {
        return ExitCode::FAILURE;
    };
    let mut failed = false;
    for dest_config in &config.destinations {
        let result = match Destination::open(dest_config) {
            Ok(dest) => swiftdrop::check::probe(&dest)
                .await
                .map(|()| describe(&dest, &config)),
            Err(e) => Err(e.reason),
        };
        match result {
            Ok(shown) => println!("ok: {shown}"),
            Err(reason) => {
                failed = true;
                println!("FAILED: [{}] {reason}", dest_config.name);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
