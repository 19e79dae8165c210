//! The operators' HTTP listener (`admin_listen` for `serve`, `--admin-listen` for the dequeue
//! worker): `/metrics` and the probes `/healthz`, `/readyz` ([`probes`]), and the queue's
//! web view under `/queue` ([`queue_view`]); the readiness checks and the queue's depth run
//! in the background ([`checks`]).
//!
//! Every response carries security headers. The queue view answers loopback clients only
//! (`kubectl port-forward` or the host itself), named by an IP address or `localhost` (a web
//! page cannot reach it by DNS rebinding); metrics and probes answer whoever reaches the
//! port, by any name. Connections are capped and a client
//! that does not send its request head in time is dropped.
//!
//! Owns: the HTTP routes and pages. May use: `telemetry/`, `queue/`, `store/`, `config/`,
//! `util/`; never `cli/`, `filter/` or `worker/` (their checks come in as [`Check`]s).

pub mod checks;
pub mod probes;
pub mod queue_view;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use crate::telemetry::health::Check;
pub use checks::{lock_check, spawn_checks, spawn_queue_depth, store_check};
pub use state::AdminState;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, requests and answers together.
const CONNECTION_TIME: Duration = Duration::from_secs(300);

/// Starts the admin listener of a process (`role`: `serve` or `worker`) on `listen`: runs
/// `checks` for `/readyz` (reported to `health`, which the caller marks when it drains),
/// reads the depth of `queues` into the metrics when `depth` (the worker), and serves the
/// routes, all in the background. The address it bound.
pub async fn start_for(
    listen: SocketAddr,
    role: &'static str,
    settings: &crate::config::ServerSettings,
    health: Arc<crate::telemetry::health::Health>,
    checks: Vec<Check>,
    queues: Vec<(String, Result<crate::queue::Queue, String>)>,
) -> std::io::Result<SocketAddr> {
    spawn_checks(Arc::clone(&health), checks, settings.ready_max_age);
    let state = AdminState::new(health, settings, queues, role);
    if role == "worker" {
        spawn_queue_depth(Arc::clone(&state.stats));
    }
    let bound = start(listen, state).await?;
    tracing::info!(listen = %bound, "admin listener: /metrics, /healthz, /readyz, /queue");
    Ok(bound)
}

/// Binds `listen` and serves the admin routes for `state` in the background; the address
/// it bound.
pub async fn start(listen: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        tracing::warn!(listen = %bound, "admin listener beyond loopback: /metrics and the probes answer whoever reaches it; the queue view answers loopback clients only (kubectl port-forward)");
    }
    let app = Router::new()
        .route("/metrics", get(probes::metrics_page))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/queue", get(queue_view::overview))
        .route("/queue/{dest}/message", get(queue_view::message))
        .route("/queue/{dest}/requeue", post(queue_view::requeue))
        .route("/queue/{dest}/purge", post(queue_view::purge))
        .route("/queue/{dest}/{state}", get(queue_view::list))
        .layer(axum::middleware::from_fn(guard))
        .with_state(Arc::new(state));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut request: Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(ConnectInfo(peer));
                        tower_service::Service::call(&mut app.clone(), request)
                    },
                );
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                // A client that reads its answer slowly, or keeps its connection alive for
                // good, gives its slot back in time: the answer under way is finished (for
                // a few seconds more at most), then the connection closes and a scraper
                // connects again.
                tokio::pin!(connection);
                if tokio::time::timeout(CONNECTION_TIME, connection.as_mut())
                    .await
                    .is_err()
                {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, connection).await;
                }
                drop(permit);
            });
        }
    });
    Ok(bound)
}

/// What every request passes: for the queue view, a `Host` that is an IP address or
/// `localhost` (else 421) and a loopback client (else 403); and what every response gets:
/// the security headers.
async fn guard(request: Request, next: Next) -> Response {
    // The queue view shows mail: only to the host itself (or a port-forward), and never to
    // a web page that named it by another name (DNS rebinding). Metrics and probes answer
    // whoever reaches the port, by any name (a Prometheus target by DNS name, a check
    // without Host).
    if request.uri().path().starts_with("/queue") {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !is_plain_host(host) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "only an IP address or localhost may name the queue view\n",
            )
                .into_response();
        }
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        // `::ffff:127.0.0.1` on a dual-stack socket is loopback too.
        if !peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) {
            return (
                StatusCode::FORBIDDEN,
                "the queue view answers loopback clients only (kubectl port-forward, or the host itself)\n",
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Whether `host` (a `Host` header, port and all) is an IP address or `localhost`.
fn is_plain_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6.split_once(']').is_some_and(|(address, rest)| {
                address.parse::<std::net::Ipv6Addr>().is_ok()
                    && (rest.is_empty()
                        || rest
                            .strip_prefix(':')
                            .is_some_and(|p| p.parse::<u16>().is_ok()))
            });
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.parse::<u16>().is_ok() {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_plain_host;

    #[test]
    fn only_addresses_and_localhost_name_the_listener() {
        for host in [
            "127.0.0.1:9187",
            "10.2.3.4",
            "localhost:9187",
            "[::1]:9187",
            "LOCALHOST",
        ] {
            assert!(is_plain_host(host), "{host}");
        }
        for host in [
            "attacker.example:9187",
            "",
            "127.0.0.1.nip.io",
            "[::1",
            "localhost.evil",
        ] {
            assert!(!is_plain_host(host), "{host}");
        }
    }
}
