//! Delivery: writes one message into every destination its recipients route to, relays it
//! to the downstream server for recipients no destination takes, and says whether all of
//! that was confirmed within the deadline.
//!
//! Each destination gets its own object ([`ObjectWrite`]): `Return-Path:`, one
//! `Delivered-To:` per recipient of that destination, then the message bytes exactly as
//! received, buffered or streamed. Objects are completed first; the relay follows only when
//! every object is; objects appear under `cur/` last. If a write or the relay fails, or the
//! deadline passes, every object is taken back, so that a refusal leaves nothing under
//! `cur/` and the client's retry does not produce duplicates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;

use crate::config::Router;
use crate::filter::envelope::{Client, Envelope};
use crate::filter::object_write::{CLEANUP_TIMEOUT, ObjectWrite};
use crate::filter::outcome::{Delivered, DeliveryError, StoredObject};
use crate::filter::relay::Relay;
use crate::filter::spool::RelayBody;
use crate::queue::Announcer;
use crate::store::{Destination, metadata};
use crate::telemetry::metrics::{Dest, Kind, metrics};

// Shutdown's budget for a delivery past its deadline must cover the clean-up (each
// request of which is bounded) and the reply.
const _: () = assert!(2 * CLEANUP_TIMEOUT.as_secs() < crate::config::DELIVERY_GRACE.as_secs());

/// Routes recipients, stores messages and relays the rest.
#[derive(Debug)]
pub struct Deliverer {
    router: Router,
    destinations: Vec<Destination>,
    relay: Option<Relay>,
    hostname: String,
    timeout: Duration,
    /// Per destination: who tells waiting workers about new messages.
    announcers: Vec<Option<Announcer>>,
    /// Set by shutdown once a delivery begun now might not end before the drain does.
    closed: AtomicBool,
}

/// What happens to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Stored in the destination with this index.
    Store(usize),
    /// Relayed to the downstream server.
    Relay,
    /// Refused: no destination, and pass-through is off.
    Reject,
}

impl Deliverer {
    /// A deliverer for `destinations`, routed by `router`, relaying other recipients to
    /// `relay` when given; `hostname` goes into keys and `timeout` bounds each message's
    /// writes and relay together.
    pub fn new(
        router: Router,
        destinations: Vec<Destination>,
        relay: Option<Relay>,
        hostname: &str,
        timeout: Duration,
    ) -> Self {
        Deliverer {
            router,
            destinations,
            relay,
            hostname: hostname.to_string(),
            timeout,
            announcers: Vec::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Begins no more deliveries: [`Deliverer::is_closed`] turns true for good.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has closed delivery: a message that ends now gets `451 4.3.2`.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Announces every stored message to the workers of its destination through
    /// `announcers` (one per destination, by index).
    pub fn with_announcers(mut self, announcers: Vec<Option<Announcer>>) -> Self {
        self.announcers = announcers;
        self
    }

    /// Tells waiting workers about the objects of a delivered message (never waits).
    pub fn announce(&self, delivered: &Delivered) {
        for object in &delivered.stored {
            let index = self
                .destinations
                .iter()
                .position(|d| d.name == object.destination);
            let announcer = index
                .and_then(|i| self.announcers.get(i))
                .and_then(Option::as_ref);
            if let (Some(announcer), Some(name)) = (announcer, object.key.rsplit('/').next()) {
                announcer.announce(name);
            }
        }
    }

    /// What happens to a recipient.
    pub fn route(&self, address: &str) -> Route {
        match self.router.route(address) {
            Some(idx) => Route::Store(idx),
            None if self.relay.is_some() => Route::Relay,
            None => Route::Reject,
        }
    }

    /// Deadline for confirming one message's writes and relay.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Host name used in object keys.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The destinations, by index.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// Begins a message of `envelope` from `client`: one write per destination, nothing
    /// sent yet. `head` is the message, or the start of one that will be streamed: its
    /// Message-ID goes into remote objects' metadata.
    pub fn begin(&self, envelope: &Envelope, client: &Client, head: &[u8]) -> Delivery {
        let groups = envelope.by_destination();
        let received = chrono::Utc::now();
        let message_id = groups
            .keys()
            .any(|&idx| self.destinations[idx].remote)
            .then(|| metadata::message_id(head))
            .flatten();
        let writes = groups
            .into_iter()
            .map(|(idx, recipients)| {
                let dest = &self.destinations[idx];
                let object = metadata::Envelope {
                    sender: envelope.sender.clone(),
                    recipients: recipients.iter().map(|r| r.to_string()).collect(),
                    client_addr: client.original_addr(),
                    client_helo: client.original_helo(),
                    received,
                    message_id: message_id.clone().filter(|_| dest.remote),
                };
                let claims = self
                    .announcers
                    .get(idx)
                    .and_then(Option::as_ref)
                    .map(|a| a.lock().clone());
                ObjectWrite::new(dest.clone(), &self.hostname, object).watching(claims)
            })
            .collect();
        Delivery { writes }
    }

    /// Stores `message` for every stored recipient of `envelope` and relays it for the
    /// others: [`Deliverer::begin`], then [`Delivery::finish`].
    pub async fn deliver(
        &self,
        envelope: &Envelope,
        client: &Client,
        message: Bytes,
    ) -> Result<Delivered, DeliveryError> {
        let whole = RelayBody::Memory(message.clone());
        self.begin(envelope, client, &message)
            .finish(self, envelope, client, message, whole)
            .await
    }
}

/// A message on its way to the destinations of its recipients, one [`ObjectWrite`] each,
/// and to the relay for the others. Dropped unfinished, it takes back what it wrote.
#[derive(Debug)]
pub struct Delivery {
    writes: Vec<ObjectWrite>,
}

impl Delivery {
    /// Sends `bytes` of a message past `stream_threshold` on to every destination at once;
    /// no wait for a store lasts beyond `store_timeout`.
    pub async fn stream(
        &mut self,
        deliverer: &Deliverer,
        bytes: &[u8],
    ) -> Result<(), DeliveryError> {
        let deadline = tokio::time::Instant::now() + deliverer.timeout;
        let sent = join_all(self.writes.iter_mut().map(|w| async {
            let sent = w.stream(bytes, deadline).await;
            if sent.is_err() {
                count_failure(w.destination());
            }
            sent
        }))
        .await;
        sent.into_iter().collect()
    }

    /// Ends the message with `rest` (all of it when nothing was streamed) within the
    /// deadline: every object is completed, then the relayed recipients are sent `whole`
    /// (the message from its first byte, in memory or spooled), then the
    /// objects appear under `cur/`. An object that is the message's only step is written
    /// straight to `cur/`; with more than one step each object waits under `tmp/` until all
    /// succeeded, so that no worker takes a message that then gets a 451. Any failure
    /// takes every object back.
    pub async fn finish(
        mut self,
        deliverer: &Deliverer,
        envelope: &Envelope,
        client: &Client,
        rest: Bytes,
        mut whole: RelayBody,
    ) -> Result<Delivered, DeliveryError> {
        let deadline = tokio::time::Instant::now() + deliverer.timeout;
        let relay = deliverer
            .relay
            .as_ref()
            .filter(|_| envelope.relayed().next().is_some());
        let stage = self.writes.len() + usize::from(relay.is_some()) > 1;
        let started = std::time::Instant::now();
        let finished = join_all(self.writes.iter_mut().map(|w| async {
            let finished = w.finish(&rest, stage, deadline).await;
            if finished.is_err() {
                count_failure(w.destination());
            }
            finished
        }))
        .await;
        if let Err(e) = finished.into_iter().collect::<Result<(), _>>() {
            self.abort().await;
            return Err(e);
        }
        let mut relayed = None;
        if let Some(relay) = relay {
            // Part of the deadline is kept for the moves into cur/ that follow.
            let relay_deadline = deadline - deliverer.timeout / 4;
            let sent =
                tokio::time::timeout_at(relay_deadline, relay.send(envelope, client, &mut whole))
                    .await;
            match sent {
                Ok(Ok(text)) => relayed = Some(text),
                Ok(Err(e)) => {
                    self.abort().await;
                    return Err(DeliveryError::Relay(e));
                }
                Err(_) => {
                    // The relay's own count never came: its future was dropped.
                    metrics()
                        .relayed
                        .get_or_create(&Kind { kind: "failed" })
                        .inc();
                    self.abort().await;
                    return Err(DeliveryError::RelayTimeout);
                }
            }
        }
        let published = join_all(self.writes.iter_mut().map(|w| async {
            let published = w.publish(deadline).await;
            match &published {
                // The whole write: from the end of DATA until the object is in cur/.
                Ok(_) => metrics()
                    .store_write_seconds
                    .get_or_create(&Dest {
                        destination: w.destination().to_string(),
                    })
                    .observe(started.elapsed().as_secs_f64()),
                Err(_) => count_failure(w.destination()),
            }
            published
        }))
        .await;
        if let Err(e) = published.into_iter().collect::<Result<Vec<_>, _>>() {
            if relayed.is_some() {
                tracing::error!(error = %e, "publishing failed after the relay took its recipients: they get the message again when the client retries");
            }
            self.abort().await;
            return Err(e);
        }
        let stored = self
            .writes
            .into_iter()
            .map(|w| StoredObject {
                destination: w.destination().to_string(),
                key: w.commit(),
            })
            .collect();
        Ok(Delivered { stored, relayed })
    }

    /// Takes back every object of the message, all at once (see [`ObjectWrite::abort`]).
    pub async fn abort(self) {
        join_all(self.writes.into_iter().map(ObjectWrite::abort)).await;
    }
}

/// Counts a message that `destination` did not confirm.
fn count_failure(destination: &str) {
    metrics()
        .store_write_failures
        .get_or_create(&Dest {
            destination: destination.to_string(),
        })
        .inc();
}
