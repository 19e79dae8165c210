//! The log of every command: set up once per process ([`init`]), and list fields that are
//! JSON arrays in JSON logs ([`list`]).
//!
//! Lists go through the `valuable` crate, which tracing reads only when built with
//! `--cfg tracing_unstable` (`.cargo/config.toml` sets it). A build without it (a `RUSTFLAGS`
//! of its own replaces that setting) still works: lists are then written as text.

use std::io::IsTerminal;

/// Sets up the process's log on stderr: the filter `RUST_LOG` gives, else `default_filter`
/// (`info`, `warn`); one JSON object per line with `json`, else text lines, with ANSI
/// colours only when stderr is a terminal (not in files, pipes and journals).
pub fn init(json: bool, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `items` as a log field: a JSON array in JSON logs, `["a", "b"]` in text lines.
#[cfg(tracing_unstable)]
pub fn list<T: valuable::Valuable>(items: &T) -> impl tracing::Value + '_ {
    tracing::field::valuable(items)
}

/// `items` as a log field, as text (this build has no `tracing_unstable`: see the module).
#[cfg(not(tracing_unstable))]
pub fn list<T: std::fmt::Debug>(items: &T) -> impl tracing::Value + '_ {
    tracing::field::debug(items)
}
