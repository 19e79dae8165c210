//! What every page of the admin listener reads: the process's health, the queues it shows
//! and the token that guards changes.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Secret;
use crate::queue::Queue;
use crate::telemetry::health::Health;

/// The admin listener's shared state.
pub struct AdminState {
    /// The checks `/readyz` reads.
    pub health: Arc<Health>,
    /// How recent every check's last pass must be for `/readyz`.
    pub ready_max_age: Duration,
    /// The queues the web view shows, one per destination, by name; a destination whose
    /// queue cannot be opened (no lock engine for a remote store) says why.
    pub queues: Vec<(String, Result<Queue, String>)>,
    /// Requeue and purge ask for it; `None`: the view is read-only.
    pub token: Option<Secret>,
    /// The process, for the page titles: `serve` or `worker`.
    pub role: &'static str,
}

impl AdminState {
    /// The queue of destination `name` (any case).
    pub fn queue(&self, name: &str) -> Option<&Result<Queue, String>> {
        self.queues
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, q)| q)
    }

    /// Whether `given` is the admin token (compared in constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        match &self.token {
            None => false,
            Some(token) => {
                let (a, b) = (token.expose().as_bytes(), given.as_bytes());
                a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
            }
        }
    }
}
