//! Fuzz targets: functions that take arbitrary bytes and panic when an invariant breaks, a
//! panic being what a fuzzer reports as a crash. `fuzz/` runs them under AFL++ (coverage
//! guided, `fuzz/run.sh`); `tests/it/fuzz_corpus.rs` replays the committed corpus through
//! the same functions in every test run, so a crash once found stays fixed.
//!
//! - [`smtp_session`]: bytes from a client in, replies out, stores in memory;
//! - [`names`]: the parsers of object names (Maildir names, the queue's keys);
//! - [`message_rules`]: the worker's rules on an arbitrary message.
//!
//! Owns: the targets and their invariants. May use `filter/`, `worker/` and the rooms below
//! them; nothing imports it.

pub mod message_rules;
pub mod names;
pub mod smtp_session;
