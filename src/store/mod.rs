//! Destinations: a named [`ObjectStore`] that message objects are written to.
//!
//! Every backend is an `object_store::ObjectStore`, so the filter, the queue and workers use
//! one interface. [`key`] makes the object names; [`maildir`] is the embedded default backend.

pub mod key;
pub mod maildir;

use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;

use crate::config::{Backend, DestinationConfig};

/// A configured place to store mail.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Section name from the configuration.
    pub name: String,
    /// Where the objects go.
    pub store: Arc<dyn ObjectStore>,
}

/// A destination that could not be opened.
#[derive(Debug)]
pub struct OpenError {
    /// The destination's name.
    pub destination: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]: {}", self.destination, self.reason)
    }
}

impl std::error::Error for OpenError {}

impl Destination {
    /// Opens the backend a destination's configuration describes.
    pub fn open(config: &DestinationConfig) -> Result<Destination, OpenError> {
        let store: Arc<dyn ObjectStore> = match &config.backend {
            Backend::Maildir { path } => {
                Arc::new(maildir::MaildirStore::open(path).map_err(|e| OpenError {
                    destination: config.name.clone(),
                    reason: format!("cannot open Maildir {}: {e}", path.display()),
                })?)
            }
        };
        Ok(Destination {
            name: config.name.clone(),
            store,
        })
    }

    /// Opens every destination, in order, stopping at the first that fails.
    pub fn open_all(configs: &[DestinationConfig]) -> Result<Vec<Destination>, OpenError> {
        configs.iter().map(Destination::open).collect()
    }
}
