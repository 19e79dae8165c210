//! Delivery: writes one message into every destination its recipients route to, and says
//! whether all of those writes were confirmed within the deadline.
//!
//! Each destination gets its own object: `Return-Path:`, one `Delivered-To:` per recipient of
//! that destination, then the message bytes exactly as received. If any write fails or the
//! deadline passes, the writes that did succeed are deleted again, so that a `451` leaves no
//! object under `cur/` and the client's retry does not produce duplicates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::envelope::Envelope;
use crate::route::Router;
use crate::store::Destination;
use crate::store::key::MessageKey;

/// Bound on the clean-up of a failed delivery; the client gets its 451 after at most this.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Routes recipients and stores messages.
#[derive(Debug)]
pub struct Deliverer {
    router: Router,
    destinations: Vec<Destination>,
    hostname: String,
    timeout: Duration,
}

/// One object written for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Destination name.
    pub destination: String,
    /// Object key, `cur/...`.
    pub key: String,
}

/// Why a message was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryError {
    /// A destination did not confirm the write before the deadline.
    Timeout {
        /// Destination name.
        destination: String,
    },
    /// A destination's store returned an error.
    Store {
        /// Destination name.
        destination: String,
        /// The store's error text (for the log, never for the client).
        error: String,
    },
}

impl DeliveryError {
    /// The short reason for the client's `451 4.3.0` reply.
    pub fn client_reason(&self) -> &'static str {
        match self {
            DeliveryError::Timeout { .. } => "Error: store timed out, try again later",
            DeliveryError::Store { .. } => "Error: store failed, try again later",
        }
    }
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Timeout { destination } => {
                write!(f, "[{destination}]: no confirmation within the deadline")
            }
            DeliveryError::Store { destination, error } => write!(f, "[{destination}]: {error}"),
        }
    }
}

impl Deliverer {
    /// A deliverer for `destinations`, routed by `router`; `hostname` goes into keys and
    /// `timeout` bounds each message's writes.
    pub fn new(
        router: Router,
        destinations: Vec<Destination>,
        hostname: &str,
        timeout: Duration,
    ) -> Self {
        Deliverer {
            router,
            destinations,
            hostname: hostname.to_string(),
            timeout,
        }
    }

    /// The destination index for a recipient, or `None` when no destination takes it.
    pub fn route(&self, address: &str) -> Option<usize> {
        self.router.route(address)
    }

    /// The destinations, by index.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// Stores `message` for every recipient of `envelope`. `Ok` only when every destination
    /// confirmed its object before the deadline.
    pub async fn deliver(
        &self,
        envelope: &Envelope,
        message: Bytes,
    ) -> Result<Vec<StoredObject>, DeliveryError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut groups: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for rcpt in &envelope.recipients {
            groups
                .entry(rcpt.destination)
                .or_default()
                .push(&rcpt.address);
        }
        let writes = groups.into_iter().map(|(idx, rcpts)| {
            let dest = &self.destinations[idx];
            let header = Bytes::from(trace_headers(&envelope.sender, &rcpts));
            let size = (header.len() + message.len()) as u64;
            let key = MessageKey::new(&self.hostname, size).cur_path();
            let payload = PutPayload::from_iter([header, message.clone()]);
            async move {
                let path = Path::from(key.as_str());
                let result =
                    tokio::time::timeout_at(deadline, dest.store.put(&path, payload)).await;
                (dest, key, result)
            }
        });
        let results = join_all(writes).await;

        let mut stored = Vec::new();
        let mut failure = None;
        for (dest, key, result) in results {
            match result {
                Ok(Ok(_)) => stored.push((dest, key)),
                Ok(Err(e)) => {
                    failure.get_or_insert(DeliveryError::Store {
                        destination: dest.name.clone(),
                        error: e.to_string(),
                    });
                }
                Err(_) => {
                    failure.get_or_insert(DeliveryError::Timeout {
                        destination: dest.name.clone(),
                    });
                }
            }
        }
        match failure {
            None => Ok(stored
                .into_iter()
                .map(|(dest, key)| StoredObject {
                    destination: dest.name.clone(),
                    key,
                })
                .collect()),
            Some(err) => {
                rollback(&stored).await;
                Err(err)
            }
        }
    }
}

/// Deletes objects written for a message that, as a whole, failed.
async fn rollback(stored: &[(&Destination, String)]) {
    let started = Instant::now();
    for (dest, key) in stored {
        let path = Path::from(key.as_str());
        let left = ROLLBACK_TIMEOUT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, dest.store.delete(&path)).await {
            Ok(Ok(())) => {
                tracing::info!(destination = %dest.name, key, "removed object of a failed delivery")
            }
            Ok(Err(e)) => {
                tracing::warn!(destination = %dest.name, key, error = %e, "could not remove object of a failed delivery; a duplicate will follow the retry")
            }
            Err(_) => {
                tracing::warn!(destination = %dest.name, key, "timed out removing object of a failed delivery; a duplicate will follow the retry")
            }
        }
    }
}

/// `Return-Path:` and `Delivered-To:` lines for one destination's copy. CR and LF are
/// dropped from addresses so that an address can never add a header of its own.
pub fn trace_headers(sender: &str, recipients: &[&str]) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], "");
    let mut out = format!("Return-Path: <{}>\r\n", clean(sender));
    for rcpt in recipients {
        out.push_str(&format!("Delivered-To: {}\r\n", clean(rcpt)));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_one_per_recipient() {
        let h = trace_headers("a@example.org", &["b@example.com", "c@example.com"]);
        assert_eq!(
            h,
            b"Return-Path: <a@example.org>\r\nDelivered-To: b@example.com\r\nDelivered-To: c@example.com\r\n"
        );
        assert_eq!(
            trace_headers("", &["x\r\nBcc: y"]),
            b"Return-Path: <>\r\nDelivered-To: xBcc: y\r\n"
        );
    }
}
