//! Destinations: a named [`ObjectStore`] that message objects are written to.
//!
//! Every backend is an `object_store::ObjectStore`, so the filter, the queue and workers use
//! one interface. [`key`] makes the object names, [`metadata`] the envelope metadata and
//! [`trace`] the trace lines every stored message begins with;
//! [`maildir`] is the embedded default backend, [`swift`] speaks Swift's native API and
//! [`s3`] sets up object_store's S3 client.
//!
//! Owns: the backends, object names and folders, envelope metadata, server-side moves (the
//! queue's record travels through them as metadata, [`mover`]), the destinations' startup
//! check. May use: `config/`, `util/`; knows nothing of SMTP, leases or the worker.

pub mod counted;
mod dir_sync;
mod http;
pub mod key;
pub mod maildir;
pub mod metadata;
pub mod mover;
pub mod s3;
pub mod swift;
pub mod trace;

use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3;

use crate::config::{Backend, DestinationConfig};

pub use http::{http_client, install_tls_provider};

/// A configured place to store mail.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Section name from the configuration.
    pub name: String,
    /// Where the objects go.
    pub store: Arc<dyn ObjectStore>,
    /// True for object stores reached over the network: their objects carry envelope
    /// metadata (a Maildir file has no place for it) and failed writes are retried.
    pub remote: bool,
    container: Container,
    /// Counts every request when set ([`Destination::counted`]).
    counter: Option<counted::RequestCount>,
}

/// The container or bucket behind a destination, for the startup check and queue moves.
#[derive(Debug, Clone)]
enum Container {
    /// A Maildir: its directories are made when it is opened. The flag: a readiness probe
    /// is running (on a hung mount it never ends; no second one is started).
    Directory(
        Arc<maildir::MaildirStore>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
    Swift(swift::SwiftStore, bool),
    S3(Arc<s3::Md5Verified<AmazonS3>>, bool),
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
    /// `[NAME] <store>`: the store says itself where it writes, e.g. `Maildir(/srv/mail)`.
    pub fn describe(&self) -> String {
        format!("[{}] {}", self.name, self.store)
    }

    /// How long a server-side copy of `size` bytes may go on at the store after it was
    /// asked for ([`mover::copy_timeout`]); zero for a Maildir, which copies nothing.
    pub fn copy_time(&self, size: u64) -> std::time::Duration {
        let timeout = match &self.container {
            Container::Directory(..) => return std::time::Duration::ZERO,
            Container::Swift(store, _) => store.request_timeout(),
            Container::S3(store, _) => store.request_timeout(),
        };
        mover::copy_timeout(timeout, size)
    }

    /// Opens the backend a destination's configuration describes. Object stores are not
    /// contacted yet: see [`Destination::ensure_container`].
    pub fn open(config: &DestinationConfig) -> Result<Destination, OpenError> {
        let fail = |reason: String| OpenError {
            destination: config.name.clone(),
            reason,
        };
        let (store, container): (Arc<dyn ObjectStore>, Container) = match &config.backend {
            Backend::Maildir { path } => {
                let store =
                    Arc::new(maildir::MaildirStore::open(path).map_err(|e| {
                        fail(format!("cannot open Maildir {}: {e}", path.display()))
                    })?);
                (store.clone(), Container::Directory(store, Arc::default()))
            }
            Backend::Swift(swift) => {
                let store = swift::SwiftStore::new(swift).map_err(fail)?;
                (
                    Arc::new(store.clone()),
                    Container::Swift(store, swift.create_container),
                )
            }
            Backend::S3(config) => {
                let store = Arc::new(s3::open(config).map_err(fail)?);
                (store.clone(), Container::S3(store, config.create_container))
            }
        };
        Ok(Destination {
            name: config.name.clone(),
            remote: !matches!(container, Container::Directory(..)),
            store,
            container,
            counter: None,
        })
    }

    /// The same destination writing through `store` instead, e.g. a wrapper around its
    /// own store that adds instrumentation or, in tests, faults.
    pub fn with_store(self, store: Arc<dyn ObjectStore>) -> Destination {
        Destination { store, ..self }
    }

    /// The same destination, counting every request it makes from now on (for
    /// benchmarks): the count.
    pub fn counted(self) -> (Destination, counted::RequestCount) {
        let count = counted::RequestCount::default();
        let store = Arc::new(counted::CountedStore::new(
            self.store.clone(),
            count.clone(),
        ));
        let destination = Destination {
            store,
            counter: Some(count.clone()),
            ..self
        };
        (destination, count)
    }

    /// The destination's queue moves ([`mover::Mover`]), made the way its backend allows.
    pub fn mover(&self) -> Arc<dyn mover::Mover> {
        let mover: Arc<dyn mover::Mover> = match &self.container {
            Container::Directory(store, _) => store.clone(),
            Container::Swift(store, _) => Arc::new(store.clone()),
            Container::S3(store, _) => store.clone(),
        };
        match &self.counter {
            Some(count) => Arc::new(counted::CountedMover::new(mover, count.clone())),
            None => mover,
        }
    }

    /// The root of a Maildir destination.
    pub fn maildir_root(&self) -> Option<&std::path::Path> {
        match &self.container {
            Container::Directory(store, _) => Some(store.root()),
            _ => None,
        }
    }

    /// Names this destination's store the same way on every machine that reaches it, however
    /// its address is spelled (case of scheme and host, trailing `/`, a relative Maildir
    /// path): the queue's keys in a shared lock engine are named after it.
    pub fn identity(&self) -> String {
        match &self.container {
            Container::Directory(store, _) => {
                let root = std::fs::canonicalize(store.root())
                    .unwrap_or_else(|_| store.root().to_path_buf());
                format!("maildir {}", root.display())
            }
            Container::Swift(store, _) => {
                let (authurl, container) = store.address();
                format!("swift {} {container}", normalized_url(authurl))
            }
            Container::S3(store, _) => {
                let (endpoint, bucket) = store.address();
                format!("s3 {} {bucket}", normalized_url(endpoint))
            }
        }
    }

    /// Opens every destination, in order, stopping at the first that fails.
    pub fn open_all(configs: &[DestinationConfig]) -> Result<Vec<Destination>, OpenError> {
        configs.iter().map(Destination::open).collect()
    }

    /// Whether the destination can take mail now, changing nothing that stays: an object
    /// store's credentials and container (never created here); a Maildir's `cur/`, and its
    /// `tmp/` taking a file (written, synced and removed on a blocking thread: a hung
    /// mount holds that thread, not the runtime). `Err` holds a one-line reason.
    pub async fn check_ready(&self) -> Result<(), String> {
        match &self.container {
            Container::Directory(maildir, probing) => {
                use std::sync::atomic::Ordering;
                if probing.swap(true, Ordering::AcqRel) {
                    return Err(
                        "the last probe of this Maildir has not ended: a hung mount?".into(),
                    );
                }
                let root = maildir.root().to_path_buf();
                let probing = Arc::clone(probing);
                let probe = move || -> Result<(), String> {
                    let cur = root.join(key::CUR);
                    let result = if !cur.is_dir() {
                        Err(format!("{} is not a directory", cur.display()))
                    } else {
                        let file = root
                            .join(key::STAGING)
                            .join(format!("swiftdrop-ready.P{}", std::process::id()));
                        let written = std::fs::File::create(&file)
                            .and_then(|mut f| {
                                std::io::Write::write_all(&mut f, b"ready?\r\n")?;
                                f.sync_all()
                            })
                            .map_err(|e| format!("cannot write {}: {e}", file.display()));
                        let _ = std::fs::remove_file(&file);
                        written
                    };
                    // Ended, whoever still waits for it.
                    probing.store(false, Ordering::Release);
                    result
                };
                tokio::task::spawn_blocking(probe)
                    .await
                    .map_err(|e| format!("the Maildir check ended: {e}"))?
            }
            Container::Swift(store, _) => store.ensure_container(false).await,
            Container::S3(store, _) => store.ensure_bucket(false).await,
        }
    }

    /// Authenticates and confirms that the container or bucket exists, creating it when
    /// the destination says `create_container = yes`. `Err` holds a one-line reason.
    pub async fn ensure_container(&self) -> Result<(), String> {
        match &self.container {
            Container::Directory(..) => Ok(()),
            Container::Swift(store, create) => store.ensure_container(*create).await,
            Container::S3(store, create) => store.ensure_bucket(*create).await,
        }
    }
}

/// Checks every destination's container, concurrently; returns one line per failure,
/// `[NAME] reason`, in configuration order.
pub async fn check_containers(destinations: &[Destination]) -> Vec<String> {
    let checks = destinations.iter().map(|d| async move {
        d.ensure_container()
            .await
            .map_err(|reason| format!("[{}] {reason}", d.name))
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// `url` with its scheme and host in lower case and no trailing `/` (a name without a scheme,
/// such as `AWS`, as it is).
fn normalized_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let host_end = url
        .find("://")
        .map(|scheme| {
            scheme
                + 3
                + url[scheme + 3..]
                    .find('/')
                    .unwrap_or(url.len() - scheme - 3)
        })
        .unwrap_or(0);
    format!(
        "{}{}",
        url[..host_end].to_ascii_lowercase(),
        &url[host_end..]
    )
}

#[cfg(test)]
mod tests {
    use super::normalized_url;

    #[test]
    fn addresses_spelled_differently_normalize_alike() {
        let same = [
            "http://Swift.Example:8080/auth/v1.0",
            "HTTP://swift.example:8080/auth/v1.0/",
            " http://swift.example:8080/auth/v1.0// ",
        ];
        for url in same {
            assert_eq!(normalized_url(url), "http://swift.example:8080/auth/v1.0");
        }
        // The path keeps its case: it may matter to the server.
        assert_eq!(
            normalized_url("https://S3.example/Tenant"),
            "https://s3.example/Tenant"
        );
        assert_eq!(normalized_url("http://S3.example/"), "http://s3.example");
        assert_eq!(normalized_url("AWS"), "AWS");
    }
}
