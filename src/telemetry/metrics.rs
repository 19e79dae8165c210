//! The process's metrics, in Prometheus' exposition (prometheus-client): what the filter and
//! the worker count as they work, and the queue's depth the admin listener refreshes. One
//! registry per process ([`metrics`]); names follow Prometheus' conventions (`_total` on
//! counters, base units) and every label takes a bounded set of values: a destination's
//! name, a state, a sink, a class; never an address or a key.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label set of one label whose values are fixed words (`reply="4xx"`, `result="refused"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

/// A destination (its section name: a bounded set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Dest {
    pub destination: String,
}

/// A destination's queue state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestState {
    pub destination: String,
    pub state: &'static str,
}

/// A sink (`xmpp`, `mail`, `mattermost`, `webhook`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Sink {
    pub sink: &'static str,
}

/// A sink and why an action failed (`transient`, `permanent`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkFailure {
    pub sink: &'static str,
    pub class: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 5 ms to about 80 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Every metric of the process. The filter's stay at zero in a worker and the other way
/// round.
pub struct Metrics {
    registry: Registry,
    /// SMTP sessions open now.
    pub smtp_connections_open: Gauge,
    /// SMTP connections by `kind`: `accepted`, or `refused` (over `max_connections`).
    pub smtp_connections: Family<Kind, Counter>,
    /// Transactions by the class of their end-of-data reply: `2xx`, `4xx`, `5xx`.
    pub smtp_transactions: Family<Kind, Counter>,
    /// Message bytes received in transactions that got a reply.
    pub smtp_received_bytes: Counter,
    /// Time from the end of DATA until a destination's object of a stored message was in `cur/`.
    pub store_write_seconds: Histograms<Dest>,
    /// Messages a destination did not confirm (the client got a `4xx`).
    pub store_write_failures: Family<Dest, Counter>,
    /// Store requests tried again after a failure.
    pub store_retries: Family<Dest, Counter>,
    /// Steps of rolling back a failed delivery (deleting an object, aborting an upload) by
    /// `kind`: `done`, `failed` (tried again later), `gave_up` (left for an operator).
    pub rollback_steps: Family<Kind, Counter>,
    /// Messages relayed to Postfix's after-queue smtpd by `kind`: `accepted`, `refused`
    /// (a 5xx, final), `failed` (no answer or a 4xx: the client retries).
    pub relayed: Family<Kind, Counter>,
    /// Message bytes the sessions hold in memory now, and the most they may (`max_memory`).
    pub memory_in_use_bytes: Gauge,
    pub memory_limit_bytes: Gauge,
    /// Claims handed to this worker.
    pub claims: Counter,
    /// Claims finished by `kind`: `done`, `failed`, `retry`, `released`, or `error` (the
    /// store or lock engine failed; claimed again later).
    pub finished: Family<Kind, Counter>,
    /// Claims whose lease was lost before they were finished (nothing moved).
    pub lease_losses: Counter,
    /// Time an action took at its sink, success or not.
    pub action_seconds: Histograms<Sink>,
    /// Actions that failed, by sink and class.
    pub action_failures: Family<SinkFailure, Counter>,
    /// Messages, bytes and the oldest message's age per queue state (refreshed by the
    /// admin listener, not at every scrape).
    pub queue_messages: Family<DestState, Gauge>,
    pub queue_bytes: Family<DestState, Gauge>,
    pub queue_oldest_age_seconds: Family<DestState, Gauge<f64, AtomicU64>>,
    /// When those were last read (Unix time).
    pub queue_stats_timestamp_seconds: Family<Dest, Gauge<f64, AtomicU64>>,
    /// Objects in a state's folder that are no message of the queue (never taken).
    pub queue_foreign_objects: Family<DestState, Gauge>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("swiftdrop");
        let m = Metrics {
            smtp_connections_open: Gauge::default(),
            smtp_connections: Family::default(),
            smtp_transactions: Family::default(),
            smtp_received_bytes: Counter::default(),
            store_write_seconds: Family::new_with_constructor(latency),
            store_write_failures: Family::default(),
            store_retries: Family::default(),
            rollback_steps: Family::default(),
            relayed: Family::default(),
            memory_in_use_bytes: Gauge::default(),
            memory_limit_bytes: Gauge::default(),
            claims: Counter::default(),
            finished: Family::default(),
            lease_losses: Counter::default(),
            action_seconds: Family::new_with_constructor(latency),
            action_failures: Family::default(),
            queue_messages: Family::default(),
            queue_bytes: Family::default(),
            queue_oldest_age_seconds: Family::default(),
            queue_stats_timestamp_seconds: Family::default(),
            queue_foreign_objects: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "smtp_connections_open",
            "SMTP sessions open now",
            m.smtp_connections_open.clone(),
        );
        r.register(
            "smtp_connections",
            "SMTP connections by kind: accepted, refused (over max_connections)",
            m.smtp_connections.clone(),
        );
        r.register(
            "smtp_transactions",
            "Transactions by the class of their end-of-data reply (2xx, 4xx, 5xx)",
            m.smtp_transactions.clone(),
        );
        r.register_with_unit(
            "smtp_received",
            "Message bytes received in transactions that got a reply",
            Unit::Bytes,
            m.smtp_received_bytes.clone(),
        );
        r.register_with_unit(
            "store_write_duration",
            "From the end of DATA until a destination's object of a stored message was in cur/",
            Unit::Seconds,
            m.store_write_seconds.clone(),
        );
        r.register(
            "store_write_failures",
            "Messages a destination did not confirm (the client got a 4xx)",
            m.store_write_failures.clone(),
        );
        r.register(
            "store_retries",
            "Store requests tried again after a failure",
            m.store_retries.clone(),
        );
        r.register("rollback_steps", "Steps of rolling back a failed delivery by kind: done, failed (tried again later), gave_up (left for an operator)", m.rollback_steps.clone());
        r.register("relayed_messages", "Messages relayed to Postfix's after-queue smtpd by kind: accepted, refused (5xx), failed (the client retries)", m.relayed.clone());
        r.register_with_unit(
            "memory_in_use",
            "Message bytes the SMTP sessions hold in memory now",
            Unit::Bytes,
            m.memory_in_use_bytes.clone(),
        );
        r.register_with_unit(
            "memory_limit",
            "The most message bytes the sessions may hold (max_memory)",
            Unit::Bytes,
            m.memory_limit_bytes.clone(),
        );
        r.register(
            "worker_claims",
            "Claims handed to this worker",
            m.claims.clone(),
        );
        r.register(
            "worker_finished",
            "Claims finished by kind: done, failed, retry, released, error (claimed again later)",
            m.finished.clone(),
        );
        r.register(
            "worker_lease_losses",
            "Claims whose lease was lost before they were finished (nothing moved)",
            m.lease_losses.clone(),
        );
        r.register_with_unit(
            "action_duration",
            "Time an action took at its sink, success or not",
            Unit::Seconds,
            m.action_seconds.clone(),
        );
        r.register(
            "action_failures",
            "Actions that failed, by sink and class (transient: tried again later; permanent)",
            m.action_failures.clone(),
        );
        r.register(
            "queue_messages",
            "Messages per queue state",
            m.queue_messages.clone(),
        );
        r.register_with_unit(
            "queue",
            "Message bytes per queue state",
            Unit::Bytes,
            m.queue_bytes.clone(),
        );
        r.register_with_unit(
            "queue_oldest_age",
            "Age of the oldest message per queue state (0: none)",
            Unit::Seconds,
            m.queue_oldest_age_seconds.clone(),
        );
        r.register_with_unit(
            "queue_stats_timestamp",
            "When the queue's counts were last read (Unix time); they keep their last values while the store does not answer",
            Unit::Seconds,
            m.queue_stats_timestamp_seconds.clone(),
        );
        r.register(
            "queue_foreign_objects",
            "Objects in a queue state's folder that are no message of the queue: never taken, never deleted (names other software wrote)",
            m.queue_foreign_objects.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Every metric in Prometheus' text exposition (OpenMetrics), ending with `# EOF`.
    pub fn exposition(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The class of an SMTP reply code: `2xx`, `4xx`, `5xx` (else `other`).
pub fn reply_class(code: u16) -> &'static str {
    match code / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = metrics();
        m.smtp_transactions
            .get_or_create(&Kind { kind: "2xx" })
            .inc();
        m.store_write_seconds
            .get_or_create(&Dest {
                destination: "OPS".into(),
            })
            .observe(0.02);
        let text = m.exposition();
        for line in [
            "# TYPE swiftdrop_smtp_transactions counter",
            "swiftdrop_smtp_transactions_total{kind=\"2xx\"} ",
            "# TYPE swiftdrop_store_write_duration_seconds histogram",
            "swiftdrop_store_write_duration_seconds_bucket{le=\"0.04\",destination=\"OPS\"} ",
            "# TYPE swiftdrop_smtp_received_bytes counter",
            "swiftdrop_memory_limit_bytes ",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
