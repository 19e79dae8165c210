//! The listener: accepts connections, enforces the connection limit and drains on shutdown.
//! The only place sockets live; each connection becomes a [`Session`].

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::{DELIVERY_GRACE, ServerSettings};
use crate::filter::budget::MemoryBudget;
use crate::filter::deliver::Deliverer;
use crate::filter::reply;
use crate::filter::session::Session;
use crate::telemetry::metrics::{Kind, metrics};

/// A bound, not yet running, SMTP server.
pub struct Server {
    listener: TcpListener,
    settings: Arc<ServerSettings>,
    deliverer: Arc<Deliverer>,
    /// The sessions' shared memory budget (`max_memory`).
    memory: Arc<MemoryBudget>,
}

impl Server {
    /// Binds `settings.listen`.
    pub async fn bind(
        settings: ServerSettings,
        deliverer: Arc<Deliverer>,
    ) -> std::io::Result<Self> {
        // A spool directory that cannot take a file would fail every large relayed message.
        crate::filter::spool::Spool::create(&settings.spool_dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("spool_dir {}: {e}", settings.spool_dir.display()),
            )
        })?;
        let listener = TcpListener::bind(settings.listen).await?;
        Ok(Server {
            listener,
            memory: MemoryBudget::new(settings.max_memory),
            settings: Arc::new(settings),
            deliverer,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, tells idle sessions to go
    /// (421), lets transactions in flight finish for up to `drain_timeout`, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let limit = Arc::new(Semaphore::new(self.settings.max_connections));
        let mut sessions = JoinSet::new();
        // Stopped with the listener: a sweep cut halfway is finished by the next start.
        let sweeper = tokio::spawn(crate::filter::sweep::run(
            self.deliverer.destinations().to_vec(),
        ));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::error!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let permit = Arc::clone(&limit).try_acquire_owned();
                    let settings = Arc::clone(&self.settings);
                    let deliverer = Arc::clone(&self.deliverer);
                    let memory = Arc::clone(&self.memory);
                    let stop = stop_rx.clone();
                    let counted = |kind| metrics().smtp_connections.get_or_create(&Kind { kind }).inc();
                    sessions.spawn(async move {
                        match permit {
                            Ok(_permit) => {
                                counted("accepted");
                                let _open = OpenSession::count();
                                serve(stream, peer, settings, deliverer, memory, stop).await;
                            }
                            Err(_) => {
                                counted("refused");
                                refuse(stream, peer).await;
                            }
                        }
                    });
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        drop(self.listener);
        sweeper.abort();
        let in_flight = sessions.len();
        tracing::info!(sessions = in_flight, "shutting down: no new connections");
        let _ = stop_tx.send(true);
        // Deliveries may begin while one can still end (reply or rollback) within the
        // drain; after that a message that ends gets 451 4.3.2, and those begun finish.
        let open_for = self
            .settings
            .drain_timeout
            .saturating_sub(self.settings.store_timeout + DELIVERY_GRACE);
        let ending = self.settings.drain_timeout - open_for;
        if tokio::time::timeout(open_for, drain(&mut sessions))
            .await
            .is_err()
        {
            self.deliverer.close();
            tracing::info!(
                sessions = sessions.len(),
                "shutting down: no new deliveries; those in flight finish"
            );
            if tokio::time::timeout(ending, drain(&mut sessions))
                .await
                .is_err()
            {
                tracing::warn!(
                    sessions = sessions.len(),
                    "drain timeout: closing sessions still receiving (their clients will retry)"
                );
                sessions.shutdown().await;
            }
        }
        let left = crate::filter::cleanup::wait(CLEANUP_PATIENCE).await;
        if left > 0 {
            tracing::warn!(
                tasks = left,
                "shutting down with clean-up unfinished (rollback deletes, upload aborts): see the warnings above for their keys"
            );
        }
        tracing::info!("stopped");
    }
}

/// Waits until every session has ended.
async fn drain(sessions: &mut JoinSet<()>) {
    while sessions.join_next().await.is_some() {}
}

/// How long shutdown waits for background clean-up after the sessions ended.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(15);

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<ServerSettings>,
    deliverer: Arc<Deliverer>,
    memory: Arc<MemoryBudget>,
    stop: watch::Receiver<bool>,
) {
    // Replies are small and the client waits for each one: do not let Nagle hold them.
    let _ = stream.set_nodelay(true);
    tracing::debug!(%peer, "connected");
    let session = async move {
        Session::new(stream, peer, settings, deliverer, memory, stop)
            .run()
            .await
    };
    match AssertUnwindSafe(session).catch_unwind().await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::info!(%peer, error = %e, "connection ended with an error"),
        // A bug: the connection is closed without a reply (the client retries), and what
        // the session had written is taken back by its dropped writes.
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%peer, panic = message, "session panicked; connection closed");
        }
    }
}

/// One open session in `swiftdrop_smtp_connections_open`, for as long as it lives (a
/// session aborted at the end of the drain is counted out too).
struct OpenSession;

impl OpenSession {
    fn count() -> OpenSession {
        metrics().smtp_connections_open.inc();
        OpenSession
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        metrics().smtp_connections_open.dec();
    }
}

async fn refuse(mut stream: TcpStream, peer: SocketAddr) {
    tracing::warn!(%peer, "connection limit reached, refusing");
    let refusal = reply::too_many_connections().to_wire();
    let write = stream.write_all(&refusal);
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    let _ = stream.shutdown().await;
}
