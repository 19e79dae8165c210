//! The operators' HTTP listener (`admin_listen`), shared by `serve` and the dequeue worker:
//! `/metrics` and the probes `/healthz`, `/readyz` ([`probes`]), and the queue's web view
//! under `/queue` ([`queue_view`]); the readiness checks and the queue's depth run in the
//! background ([`checks`]).
//!
//! Owns: the HTTP routes and pages. May use: `telemetry/`, `queue/`, `store/`, `config/`,
//! `util/`; never `cli/`, `filter/` or `worker/` (their checks come in as [`checks::Check`]s).

pub mod checks;
pub mod probes;
pub mod queue_view;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use checks::{Check, spawn_checks, spawn_queue_depth};
pub use state::AdminState;

/// Starts the admin listener of a process (`role`: `serve` or `worker`) on `listen`: runs
/// `checks` for `/readyz`, reads the depth of `queues` into the metrics, and serves the
/// routes, all in the background. The address it bound.
pub async fn start_for(
    listen: SocketAddr,
    role: &'static str,
    settings: &crate::config::ServerSettings,
    checks: Vec<Check>,
    queues: Vec<(String, Result<crate::queue::Queue, String>)>,
) -> std::io::Result<SocketAddr> {
    let health = Arc::new(crate::telemetry::health::Health::default());
    spawn_checks(Arc::clone(&health), checks, settings.ready_max_age);
    let watched = queues
        .iter()
        .filter_map(|(_, q)| q.as_ref().ok().cloned())
        .collect();
    spawn_queue_depth(watched, settings.ready_max_age);
    let state = AdminState {
        health,
        ready_max_age: settings.ready_max_age,
        queues,
        token: settings.admin_token.clone(),
        role,
    };
    start(listen, state).await
}

/// Binds `listen` and serves the admin routes for `state` in the background; the address
/// it bound.
pub async fn start(listen: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(probes::metrics_page))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/queue", get(queue_view::overview))
        .route("/queue/{dest}/message", get(queue_view::message))
        .route("/queue/{dest}/requeue", post(queue_view::requeue))
        .route("/queue/{dest}/purge", post(queue_view::purge))
        .route("/queue/{dest}/{state}", get(queue_view::list))
        .with_state(Arc::new(state));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the admin listener stopped");
        }
    });
    Ok(bound)
}
