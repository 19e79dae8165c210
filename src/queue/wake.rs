//! Waking waiting claims when new mail arrives, instead of listing the store in a loop.
//!
//! The filter announces every new `cur/` name ([`Announcer`], Redis pub/sub when the lock
//! engine is Redis); on a local Maildir, the `cur/` folder itself is watched with inotify.
//! Announced names join the claim candidates at once and wake every waiting claim. What an
//! announcement misses (a subscriber reconnecting, a full channel) the periodic listing
//! (`poll_interval`) finds.

use std::path::Path as FsPath;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use chrono::Utc;
use futures::StreamExt;
use object_store::ObjectMeta;
use tokio::sync::mpsc;

use super::handle::{Inner, Queue};
use super::lock::{Announcement, LockEngine};
use super::record::{self, CopyKey, State};
use crate::store::key::MessageKey;

/// Announcements waiting to be published before new ones are dropped.
const ANNOUNCE_BACKLOG: usize = 4096;

/// Starts listening for announcements, once per queue.
pub(super) fn start(inner: &Arc<Inner>) {
    if inner.wake.started.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak = Arc::downgrade(inner);
    if let Some(mut announcements) = inner.lock.announcements() {
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let alive = match announcements.recv().await {
                    Ok(Announcement::New(name)) => arrived(&weak, &name).await,
                    Ok(Announcement::Gap) => relist(&weak).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "announcements overflowed; listing instead");
                        relist(&weak).await
                    }
                    Err(RecvError::Closed) => false,
                };
                if !alive {
                    return;
                }
            }
        });
    } else if let Some(root) = inner.destination.maildir_root() {
        let cur = root.join(State::Cur.folder());
        match watch(&cur) {
            Ok(mut events) => {
                tokio::spawn(async move {
                    while let Some(name) = events.recv().await {
                        if !arrived(&weak, &name).await {
                            return;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(dir = %cur.display(), error = %e, "cannot watch for new mail; waiting claims poll")
            }
        }
    }
}

/// Adds an announced name (the filter's copy, `cur/<name>`) or key (a requeued copy,
/// `cur/<name>@<fence>`) to the candidates and wakes the waiting claims; `false` when the
/// queue is gone.
async fn arrived(queue: &Weak<Inner>, announced: &str) -> bool {
    let Some(inner) = queue.upgrade() else {
        return false;
    };
    let key = match CopyKey::parse(announced) {
        Some(key) if key.state == State::Cur => key,
        Some(_) => return true,
        None => CopyKey::new(State::Cur, announced, 0),
    };
    let name = key.name.as_str();
    // Only names the filter makes: their size is in the name, which verifies the move of a
    // candidate that was never listed.
    let Some(size) = MessageKey::parse(name)
        .filter(|_| record::is_message_name(name))
        .map(|k| k.size)
    else {
        return true;
    };
    let meta = ObjectMeta {
        location: key.path(),
        last_modified: Utc::now(),
        size,
        e_tag: None,
        version: None,
    };
    let queue = Queue { inner };
    queue.announced(key, meta);
    queue.inner.wake.notify.notify_waiters();
    true
}

/// Makes the next claim list `cur/` and wakes the waiting ones, after announcements may have
/// been missed; `false` when the queue is gone.
async fn relist(queue: &Weak<Inner>) -> bool {
    let Some(inner) = queue.upgrade() else {
        return false;
    };
    inner.candidates.lock().unwrap().page(State::Cur).listed = None;
    inner.wake.notify.notify_waiters();
    true
}

/// Names of files that appear in `dir`, from inotify.
fn watch(dir: &FsPath) -> std::io::Result<mpsc::Receiver<String>> {
    use inotify::{Inotify, WatchMask};
    let inotify = Inotify::init()?;
    inotify
        .watches()
        .add(dir, WatchMask::MOVED_TO | WatchMask::CREATE)?;
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            if let Some(name) = event.name.and_then(|n| n.into_string().ok()) {
                if tx.send(name).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

/// Announces the filter's new `cur/` messages to waiting claims, in the background, so that
/// a reply never waits for it; announcements beyond a backlog are dropped (claims list).
#[derive(Debug, Clone)]
pub struct Announcer {
    tx: mpsc::Sender<String>,
    lock: Arc<dyn LockEngine>,
}

impl Announcer {
    /// An announcer publishing through `lock`, with its own task.
    pub fn spawn(lock: Arc<dyn LockEngine>) -> Announcer {
        let (tx, mut rx) = mpsc::channel::<String>(ANNOUNCE_BACKLOG);
        let publisher = lock.clone();
        tokio::spawn(async move {
            let lock = publisher;
            let mut failing = false;
            while let Some(name) = rx.recv().await {
                match lock.announce(&name).await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("announcing new mail works again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot announce new mail; workers find it by listing");
                    }
                    Err(_) => {}
                }
            }
        });
        Announcer { tx, lock }
    }

    /// The lock engine workers take this destination's mail under: it knows which names a
    /// worker took on lately.
    pub fn lock(&self) -> &Arc<dyn LockEngine> {
        &self.lock
    }

    /// Queues the announcement of `name`.
    pub fn announce(&self, name: &str) {
        let _ = self.tx.try_send(name.to_string());
    }
}
