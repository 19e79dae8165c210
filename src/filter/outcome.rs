//! What a delivery ends in: [`Delivered`] (the objects stored, the downstream's reply) or a
//! [`DeliveryError`]; each knows the client's final reply. Shared by the delivery as a whole
//! ([`crate::filter::deliver`]) and each destination's write ([`crate::filter::object_write`]).

use crate::filter::relay::RelayError;
use crate::filter::reply::{self, Reply};

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
    /// The memory budget had no room for the message's upload parts (`max_memory`).
    NoMemory,
    /// The relayed message could not be written to its spool file.
    Spool(String),
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
            DeliveryError::NoMemory => reply::insufficient_storage(),
            DeliveryError::Spool(_) => {
                reply::store_failed("Error: spooling failed, try again later")
            }
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
            DeliveryError::NoMemory => {
                f.write_str("max_memory has no room for the message's upload parts")
            }
            DeliveryError::Spool(e) => write!(f, "spool file: {e}"),
        }
    }
}
