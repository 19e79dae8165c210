//! Delivery: writes one message into every destination its recipients route to, relays it
//! to the downstream server for recipients no destination takes, and says whether all of
//! that was confirmed within the deadline.
//!
//! Each destination gets its own object: `Return-Path:`, one `Delivered-To:` per recipient of
//! that destination, then the message bytes exactly as received. Stores go first; the relay
//! follows only when every store succeeded. If a write or the relay fails, or the deadline
//! passes, the objects that were written are deleted again, so that a refusal leaves no
//! object under `cur/` and the client's retry does not produce duplicates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};

use crate::envelope::{Client, Envelope};
use crate::queue::Announcer;
use crate::relay::{Relay, RelayError};
use crate::reply::{self, Reply};
use crate::route::Router;
use crate::store::key::MessageKey;
use crate::store::swift::hex;
use crate::store::{Destination, metadata};

/// Bound on the clean-up of a failed delivery; the client gets its 451 after at most this.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(5);
// Shutdown's budget for a delivery past its deadline must cover the rollback.
const _: () = assert!(ROLLBACK_TIMEOUT.as_secs() < crate::config::DELIVERY_GRACE.as_secs());
/// Wait before the first retry of a failed remote write; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

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

/// A message that was stored and/or relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Objects written, one per destination.
    pub stored: Vec<StoredObject>,
    /// The downstream's final reply text when recipients were relayed.
    pub relayed: Option<String>,
}

impl Delivered {
    /// The client's final reply.
    pub fn reply(&self) -> Reply {
        let keys: Vec<String> = self.stored.iter().map(|o| o.key.clone()).collect();
        reply::delivered(&keys, self.relayed.as_deref())
    }
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
    /// The relay of the other recipients did not succeed.
    Relay(RelayError),
    /// The relay did not finish before the deadline.
    RelayTimeout,
    /// The server is shutting down and began no delivery (nothing was written).
    ShuttingDown,
}

impl DeliveryError {
    /// The client's final reply: the downstream's own 5xx when it refused for good, else
    /// `451 4.3.0` so that the client retries.
    pub fn reply(&self) -> Reply {
        match self {
            DeliveryError::Timeout { .. } => {
                reply::store_failed("Error: store timed out, try again later")
            }
            DeliveryError::Store { .. } => {
                reply::store_failed("Error: store failed, try again later")
            }
            DeliveryError::Relay(RelayError::Rejected(r)) => r.clone(),
            DeliveryError::Relay(RelayError::Failed(_)) => {
                reply::store_failed("Error: relay failed, try again later")
            }
            DeliveryError::RelayTimeout => {
                reply::store_failed("Error: relay timed out, try again later")
            }
            DeliveryError::ShuttingDown => reply::not_now_shutting_down(),
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
            DeliveryError::Relay(e) => e.fmt(f),
            DeliveryError::RelayTimeout => f.write_str("relay: no answer within the deadline"),
            DeliveryError::ShuttingDown => f.write_str("shutting down: not delivered"),
        }
    }
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

    /// Stores `message` for every stored recipient of `envelope` and relays it for the
    /// others. `Ok` only when every destination confirmed its object and the downstream
    /// accepted the relayed recipients, all before the deadline.
    pub async fn deliver(
        &self,
        envelope: &Envelope,
        client: &Client,
        message: Bytes,
    ) -> Result<Delivered, DeliveryError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let stored = self.store(envelope, client, &message, deadline).await?;
        let relay = match (&self.relay, envelope.relayed().next()) {
            (Some(relay), Some(_)) => relay,
            _ => {
                return Ok(Delivered {
                    stored: into_objects(stored),
                    relayed: None,
                });
            }
        };
        let relayed =
            tokio::time::timeout_at(deadline, relay.send(envelope, client, &message)).await;
        let failure = match relayed {
            Ok(Ok(text)) => {
                return Ok(Delivered {
                    stored: into_objects(stored),
                    relayed: Some(text),
                });
            }
            Ok(Err(e)) => DeliveryError::Relay(e),
            Err(_) => DeliveryError::RelayTimeout,
        };
        rollback(&stored).await;
        Err(failure)
    }

    /// Writes one object per destination; on any failure deletes what was written.
    async fn store(
        &self,
        envelope: &Envelope,
        client: &Client,
        message: &Bytes,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<(&Destination, String)>, DeliveryError> {
        let groups = envelope.by_destination();
        let received = chrono::Utc::now();
        let message_id = groups
            .keys()
            .any(|&idx| self.destinations[idx].remote)
            .then(|| metadata::message_id(message))
            .flatten();
        let writes = groups.into_iter().map(|(idx, rcpts)| {
            let dest = &self.destinations[idx];
            let header = Bytes::from(trace_headers(&envelope.sender, &rcpts));
            let size = (header.len() + message.len()) as u64;
            let key = MessageKey::new(&self.hostname, size);
            let mut options = PutOptions::from(write_mode(dest));
            if dest.remote {
                let mut sha = Sha256::new();
                sha.update(&header);
                sha.update(message);
                options.attributes = metadata::attributes(&metadata::Envelope {
                    sender: &envelope.sender,
                    recipients: &rcpts,
                    client,
                    received,
                    sha256: Some(hex(&sha.finalize())),
                    message_id: message_id.clone(),
                });
            }
            let payload = PutPayload::from_iter([header, message.clone()]);
            async move {
                let result = put_until_deadline(dest, key, payload, options, deadline).await;
                (dest, result)
            }
        });
        let results = join_all(writes).await;

        let mut written = Vec::new();
        let mut uncertain = Vec::new();
        let mut failure = None;
        for (dest, result) in results {
            match result {
                Ok(key) => written.push((dest, key)),
                Err((key, err)) => {
                    // A write that failed or timed out may still have landed (a remote PUT
                    // the store completed, a Maildir rename before a failed fsync): take it
                    // back as well (deleting a missing object is not an error).
                    uncertain.extend(key.map(|key| (dest, key)));
                    failure.get_or_insert(err);
                }
            }
        }
        match failure {
            None => Ok(written),
            Some(err) => {
                written.extend(uncertain);
                rollback(&written).await;
                Err(err)
            }
        }
    }
}

/// Puts one object, retrying a remote store's failures with backoff until `deadline`, and
/// returns the key it wrote; on failure, the key it may have written (`None`: nothing). A retry writes the same key again, so it
/// replaces, never duplicates; a name found taken is a collision, written under a new name.
async fn put_until_deadline(
    dest: &Destination,
    mut key: MessageKey,
    payload: PutPayload,
    options: PutOptions,
    deadline: tokio::time::Instant,
) -> Result<String, (Option<String>, DeliveryError)> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let mut renames = 0;
    loop {
        let path = Path::from(key.cur_path());
        let put = dest.store.put_opts(&path, payload.clone(), options.clone());
        let error = match tokio::time::timeout_at(deadline, put).await {
            Ok(Ok(_)) => return Ok(key.cur_path()),
            Ok(Err(object_store::Error::AlreadyExists { .. })) if renames < MAX_RENAMES => {
                let taken = key.cur_path();
                key = key.renamed();
                renames += 1;
                tracing::warn!(destination = %dest.name, taken, key = %key.cur_path(), "name already taken: writing under a new name");
                continue;
            }
            Ok(Err(e @ object_store::Error::AlreadyExists { .. })) => {
                // Nothing of ours is there: the caller must not take that object back.
                let error = DeliveryError::Store {
                    destination: dest.name.clone(),
                    error: e.to_string(),
                };
                return Err((None, error));
            }
            Ok(Err(e)) => e,
            Err(_) => {
                let error = DeliveryError::Timeout {
                    destination: dest.name.clone(),
                };
                return Err((Some(key.cur_path()), error));
            }
        };
        let retry = dest.remote
            && !matches!(
                error,
                object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::InvalidPath { .. }
            )
            && tokio::time::Instant::now() + backoff < deadline;
        if !retry {
            let error = DeliveryError::Store {
                destination: dest.name.clone(),
                error: error.to_string(),
            };
            return Err((Some(key.cur_path()), error));
        }
        tracing::warn!(destination = %dest.name, key = %key.cur_path(), attempt, error = %error, retry_in_ms = backoff.as_millis() as u64, "write failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

/// How a message is written to `dest`. Never replace a stored message: a Maildir refuses a
/// taken name atomically. Swift's If-None-Match is not atomic and its S3 API refuses it:
/// there the name's random part keeps writers apart.
fn write_mode(dest: &Destination) -> PutMode {
    if dest.remote {
        PutMode::Overwrite
    } else {
        PutMode::Create
    }
}

/// New names a write tries after finding its name taken.
const MAX_RENAMES: u32 = 3;

fn into_objects(stored: Vec<(&Destination, String)>) -> Vec<StoredObject> {
    stored
        .into_iter()
        .map(|(dest, key)| StoredObject {
            destination: dest.name.clone(),
            key,
        })
        .collect()
}

/// Deletes objects written (or perhaps written) for a message that, as a whole, failed:
/// all at once, each within [`ROLLBACK_TIMEOUT`]. What still fails is retried in the
/// background ([`crate::cleanup`]) and logged with its key, so that an operator can find it.
pub(crate) async fn rollback(stored: &[(&Destination, String)]) {
    let deletes = stored.iter().map(|(dest, key)| async move {
        let path = Path::from(key.as_str());
        match tokio::time::timeout(ROLLBACK_TIMEOUT, dest.store.delete(&path)).await {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {
                tracing::info!(destination = %dest.name, key, "removed object of a failed delivery");
            }
            Ok(Err(e)) => {
                tracing::warn!(destination = %dest.name, key, error = %e, "could not remove object of a failed delivery; trying again in the background");
                crate::cleanup::spawn(retry_delete((*dest).clone(), path));
            }
            Err(_) => {
                tracing::warn!(destination = %dest.name, key, "timed out removing object of a failed delivery; trying again in the background");
                crate::cleanup::spawn(retry_delete((*dest).clone(), path));
            }
        }
    });
    join_all(deletes).await;
}

/// Tries a rollback delete again with backoff, for about ten minutes.
async fn retry_delete(dest: Destination, path: Path) {
    let mut pause = Duration::from_secs(1);
    for attempt in 2..=RETRY_DELETES {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(120));
        match tokio::time::timeout(ROLLBACK_TIMEOUT, dest.store.delete(&path)).await {
            Ok(Ok(())) | Ok(Err(object_store::Error::NotFound { .. })) => {
                tracing::info!(destination = %dest.name, key = %path, attempt, "removed object of a failed delivery");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(destination = %dest.name, key = %path, attempt, error = %e, "could not remove object of a failed delivery");
            }
            Err(_) => {
                tracing::warn!(destination = %dest.name, key = %path, attempt, "timed out removing object of a failed delivery");
            }
        }
    }
    tracing::error!(destination = %dest.name, key = %path, "gave up removing the object of a failed delivery: delete it by hand, or a duplicate follows the sender's retry");
}

/// Tries of one rollback delete in all (1 s, doubling to 2 min between them: ~10 min).
const RETRY_DELETES: u32 = 10;

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

    /// A name already taken on a Maildir (a collision) is never overwritten: the message is
    /// written under a new name, and what was there stays as it was.
    #[tokio::test]
    async fn a_taken_name_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("maildir");
        let vars = vec![
            (
                "SWIFTDROP_DEFAULT_PATH".to_string(),
                root.display().to_string(),
            ),
            ("SWIFTDROP_SERVER_RELAY".to_string(), "off".to_string()),
        ];
        let config = crate::config::Config::from_sources(None, vars).unwrap();
        let dest = Destination::open(&config.destinations[0]).unwrap();
        let key = MessageKey::new("h", 5);
        let taken = root.join(key.cur_path());
        std::fs::write(&taken, b"first").unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let options = PutOptions::from(write_mode(&dest));
        let payload = PutPayload::from_static(b"other");
        let written = put_until_deadline(&dest, key.clone(), payload, options, deadline)
            .await
            .unwrap();
        assert_ne!(written, key.cur_path());
        assert_eq!(std::fs::read(&taken).unwrap(), b"first");
        assert_eq!(std::fs::read(root.join(&written)).unwrap(), b"other");
    }

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
