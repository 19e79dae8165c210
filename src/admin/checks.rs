//! The admin listener's background work: the readiness checks, three times within
//! `ready_max_age`, reported to [`Health`]; and, in the worker, the queue's depth per state
//! read into the metrics every `queue_stats_interval` (a scrape never lists the store).

use std::sync::Arc;
use std::time::Duration;

use super::state::QueueStats;
use crate::queue::Queue;
use crate::store::Destination;
use crate::telemetry::health::{Check, Health};
use crate::telemetry::metrics::{Dest, DestState, metrics};

/// The check of `destination`: it can take mail now ([`Destination::check_ready`]).
pub fn store_check(destination: Destination) -> Check {
    Check::new(format!("store [{}]", destination.name), move || {
        let destination = destination.clone();
        async move { destination.check_ready().await }
    })
}

/// The check of `queue`'s lock engine.
pub fn lock_check(queue: Queue) -> Check {
    Check::new(
        format!("queue lock [{}]", queue.destination().name),
        move || {
            let queue = queue.clone();
            async move {
                queue
                    .check_lock()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        },
    )
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

/// Reads each queue's counts into the metrics every `queue_stats_interval`, in the
/// background; `swiftdrop_queue_stats_timestamp_seconds` says when they were last read
/// (the gauges keep the last counts while the store does not answer).
pub fn spawn_queue_depth(stats: Arc<QueueStats>) {
    tokio::spawn(async move {
        // What was last said of foreign objects: the warning comes again when it changes.
        let mut foreign_seen = std::collections::HashMap::new();
        let mut tick = tokio::time::interval(stats.every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for destination in stats.names() {
                let Some((age, counts)) = stats.of(&destination).await else {
                    continue;
                };
                let counts = match counts {
                    Ok(counts) => counts,
                    Err(e) => {
                        tracing::warn!(destination, error = %e, "cannot read the queue's depth");
                        continue;
                    }
                };
                let m = metrics();
                let now = chrono::Utc::now();
                for (state, s) in counts {
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
                    m.queue_foreign_objects
                        .get_or_create(&labels)
                        .set(gauge(s.foreign));
                    let seen = foreign_seen.insert((destination.clone(), state), s.foreign);
                    if s.foreign > 0 && seen != Some(s.foreign) {
                        tracing::warn!(
                            destination,
                            state = state.folder(),
                            objects = s.foreign,
                            "objects in the queue's folder that are no message of the queue: never taken (see swiftdrop queue stats)"
                        );
                    }
                }
                // When they were read: a cached read is as old as the cache.
                let read_at = now.timestamp_millis() as f64 / 1000.0 - age.as_secs_f64();
                m.queue_stats_timestamp_seconds
                    .get_or_create(&Dest { destination })
                    .set(read_at);
            }
        }
    });
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
