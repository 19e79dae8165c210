//! The admin listener's background work, both three times within `ready_max_age`: the
//! readiness checks, reported to [`Health`], and the queue's depth per state, read into the
//! metrics (a scrape never lists the store).

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::queue::Queue;
use crate::store::Destination;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::{DestState, metrics};

/// A readiness check: its name in `/readyz` and what it runs.
pub struct Check {
    pub name: String,
    pub run: Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl Check {
    /// The store check of `destination`: its credentials and container (the `serve`
    /// startup check).
    pub fn store(destination: Destination) -> Check {
        Check {
            name: format!("store [{}]", destination.name),
            run: Box::new(move || {
                let destination = destination.clone();
                Box::pin(async move { destination.ensure_container().await })
            }),
        }
    }

    /// The lock engine of `queue`.
    pub fn lock(queue: Queue) -> Check {
        Check {
            name: format!("queue lock [{}]", queue.destination().name),
            run: Box::new(move || {
                let queue = queue.clone();
                Box::pin(async move {
                    queue
                        .check_lock()
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                })
            }),
        }
    }
}

/// Runs every check now and then every `max_age / 3` (each bounded by that time), in the
/// background, for as long as the process lives.
pub fn spawn_checks(health: Arc<Health>, checks: Vec<Check>, max_age: Duration) {
    let every = max_age / 3;
    for check in checks {
        health.expect(&check.name);
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let result = match tokio::time::timeout(every, (check.run)()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {} s", every.as_secs())),
                };
                if let Err(e) = &result {
                    tracing::warn!(check = check.name, error = %e, "readiness check failed");
                }
                health.report(&check.name, result);
            }
        });
    }
}

/// Reads each queue's depth per state into the metrics every `max_age / 3`, in the
/// background.
pub fn spawn_queue_depth(queues: Vec<Queue>, max_age: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(max_age / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for queue in &queues {
                let destination = queue.destination().name.clone();
                let stats = match queue.stats().await {
                    Ok(stats) => stats,
                    Err(e) => {
                        tracing::warn!(destination, error = %e, "cannot read the queue's depth");
                        continue;
                    }
                };
                let m = metrics();
                let now = chrono::Utc::now();
                for (state, s) in stats {
                    let labels = DestState {
                        destination: destination.clone(),
                        state: state.folder(),
                    };
                    m.queue_messages.get_or_create(&labels).set(gauge(s.count));
                    m.queue_bytes.get_or_create(&labels).set(gauge(s.bytes));
                    let age = s
                        .oldest
                        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
                    m.queue_oldest_age_seconds.get_or_create(&labels).set(age);
                }
            }
        }
    });
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
