//! Small helpers that know nothing of mail: lower-case hex ([`hex`]), the crash tests'
//! fail-points ([`failpoint`]), an error's chain of causes ([`error_chain`]), the log's
//! set-up ([`logging`]), the `log` crate's records sent to `tracing` ([`log_bridge`]) and
//! the end of a command whose reader left ([`closed_pipe`]).
//!
//! Owns: nothing of the domain. May use: the standard library and crates only; every other
//! room may use it.

pub mod allocator;
pub mod closed_pipe;
pub mod failpoint;
pub mod hex;
pub mod log_bridge;
pub mod logging;

/// An error with its causes, which hold the useful part of a reqwest error ("connection
/// refused").
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
