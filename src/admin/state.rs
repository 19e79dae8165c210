//! What every page of the admin listener reads: the process's health, the queues it shows,
//! their counts (listed at most once per `queue_stats_interval`) and the token that guards
//! changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::{Secret, ServerSettings};
use crate::queue::{Queue, State, StateStats};
use crate::telemetry::health::Health;

/// Counts per state of one queue, or why they could not be had.
pub type Counts = Result<Vec<(State, StateStats)>, String>;

/// The admin listener's shared state.
pub struct AdminState {
    /// The checks `/readyz` reads.
    pub health: Arc<Health>,
    /// How recent every check's last pass must be for `/readyz`.
    pub ready_max_age: Duration,
    /// The queues the web view shows, one per destination, by name; a destination whose
    /// queue cannot be opened (no lock engine for a remote store) says why.
    pub queues: Vec<(String, Result<Queue, String>)>,
    /// Their counts, shared with the depth task.
    pub stats: Arc<QueueStats>,
    /// Requeue and purge ask for it; `None`: the view is read-only.
    token: Option<Secret>,
    /// A purge is running (one at a time).
    pub purging: AtomicBool,
    /// The process, for the page titles: `serve` or `worker`.
    pub role: &'static str,
}

impl AdminState {
    /// The state of a listener over `queues`, with `settings`' token and ages.
    pub fn new(
        health: Arc<Health>,
        settings: &ServerSettings,
        queues: Vec<(String, Result<Queue, String>)>,
        role: &'static str,
    ) -> AdminState {
        let watched = queues
            .iter()
            .filter_map(|(name, q)| Some((name.clone(), q.as_ref().ok()?.clone())))
            .collect();
        AdminState {
            health,
            ready_max_age: settings.ready_max_age,
            stats: Arc::new(QueueStats::new(watched, settings.queue_stats_interval)),
            queues,
            token: settings.admin_token.clone(),
            purging: AtomicBool::new(false),
            role,
        }
    }

    /// The queue of destination `name` (any case).
    pub fn queue(&self, name: &str) -> Option<&Result<Queue, String>> {
        self.queues
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, q)| q)
    }

    /// Whether changes are possible at all (a token is set).
    pub fn can_change(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `given` is the admin token. The digests are compared, every byte, so the
    /// time taken says nothing of the token or its length.
    pub fn token_matches(&self, given: &str) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let (a, b) = (
            Sha256::digest(token.expose().as_bytes()),
            Sha256::digest(given.as_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

/// The counts of the queues, listed at most once per `every`: a page view or a scrape
/// never lists a store by itself.
pub struct QueueStats {
    queues: Vec<(String, Queue)>,
    every: Duration,
    /// The last counts of each queue and when they were read.
    last: tokio::sync::Mutex<HashMap<String, (Instant, Counts)>>,
}

impl QueueStats {
    fn new(queues: Vec<(String, Queue)>, every: Duration) -> QueueStats {
        QueueStats {
            queues,
            every,
            last: tokio::sync::Mutex::default(),
        }
    }

    /// How often the counts may be read.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The queues counted.
    pub fn names(&self) -> Vec<String> {
        self.queues.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The counts of queue `name` and their age: the last ones when younger than `every`,
    /// else read now (one reader at a time).
    pub async fn of(&self, name: &str) -> Option<(Duration, Counts)> {
        let (_, queue) = self.queues.iter().find(|(n, _)| n == name)?;
        let mut last = self.last.lock().await;
        if let Some((at, counts)) = last.get(name) {
            if at.elapsed() < self.every {
                return Some((at.elapsed(), counts.clone()));
            }
        }
        let counts = queue.stats().await.map_err(|e| e.to_string());
        last.insert(name.to_string(), (Instant::now(), counts.clone()));
        Some((Duration::ZERO, counts))
    }
}
