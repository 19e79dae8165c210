//! Small helpers that know nothing of mail: lower-case hex ([`hex`]) and the crash tests'
//! fail-points ([`failpoint`]).
//!
//! Owns: nothing of the domain. May use: the standard library and crates only; every other
//! room may use it.

pub mod failpoint;
pub mod hex;
