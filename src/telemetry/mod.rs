//! What the process tells its operators: metrics ([`metrics`]) and readiness ([`health`]).
//!
//! Owns: the metric names and the health checks' results. May use: nothing of the crate
//! (util at most); the filter and the worker record here, the admin listener reads.

pub mod health;
pub mod metrics;
