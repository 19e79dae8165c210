//! The `log` crate's records as `tracing` events: tokio-xmpp (and hickory's resolver) log
//! with `log`, and without a bridge their "failed to connect, retrying" lines were lost.
//! Errors are also kept (the last [`KEPT`]), for code that has no other way to learn of
//! them: tokio-xmpp retries a refused login forever and says so only in its log. Records
//! name no connection: the worker has one XMPP account per process, so tokio-xmpp's errors
//! are its.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many error records are kept.
const KEPT: usize = 32;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);
static ERRORS: Mutex<Vec<(u64, String, String)>> = Mutex::new(Vec::new());

struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let message = record.args().to_string();
        let from = record.target();
        match record.level() {
            log::Level::Error => tracing::error!(log_target = from, "{message}"),
            log::Level::Warn => tracing::warn!(log_target = from, "{message}"),
            log::Level::Info => tracing::info!(log_target = from, "{message}"),
            log::Level::Debug => tracing::debug!(log_target = from, "{message}"),
            log::Level::Trace => tracing::trace!(log_target = from, "{message}"),
        }
        if record.level() == log::Level::Error {
            let sequence = SEQUENCE.fetch_add(1, Ordering::SeqCst) + 1;
            let mut errors = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
            errors.push((sequence, from.to_string(), message));
            if errors.len() > KEPT {
                errors.remove(0);
            }
        }
    }

    fn flush(&self) {}
}

/// Sends `log` records (info and above) to `tracing`; a program that set another `log`
/// logger keeps its own.
pub fn install() {
    if log::set_boxed_logger(Box::new(Bridge)).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// A mark to pass to [`errors_since`]: errors logged after this call.
pub fn error_mark() -> u64 {
    SEQUENCE.load(Ordering::SeqCst)
}

/// The messages of error records logged after `mark` by a module whose path begins with
/// `target` (e.g. `tokio_xmpp`).
pub fn errors_since(mark: u64, target: &str) -> Vec<String> {
    let errors = ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    errors
        .iter()
        .filter(|(sequence, from, _)| *sequence > mark && from.starts_with(target))
        .map(|(_, _, message)| message.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_kept_for_who_asks() {
        install();
        let mark = error_mark();
        log::error!(target: "tokio_xmpp::stanzastream", "Failed to connect: authentication error");
        log::warn!(target: "tokio_xmpp::stanzastream", "not kept");
        log::error!(target: "other", "someone else's");
        assert_eq!(
            errors_since(mark, "tokio_xmpp"),
            ["Failed to connect: authentication error"]
        );
        assert!(errors_since(error_mark(), "tokio_xmpp").is_empty());
    }
}
