//! The commands besides `serve`: `swiftdrop queue` ([`queue`]), `swiftdrop check`
//! ([`check`]) and `swiftdrop postfix-config` ([`postfix_config`]).
//!
//! Owns: what those commands print and their exit codes. May use: `queue/`, `store/`,
//! `config/`, `util/`; never `filter/` or `worker/`.

pub mod check;
pub mod postfix_config;
pub mod queue;
