//! `/metrics`, `/healthz` and `/readyz`: what Prometheus and Kubernetes ask.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::state::AdminState;
use crate::telemetry::metrics::metrics;

/// Every metric, in the OpenMetrics text format Prometheus reads.
pub async fn metrics_page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().exposition(),
    )
}

/// 200 while the process runs and serves HTTP.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when every check passed within `ready_max_age`, else 503; a line per check.
pub async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let readiness = state.health.readiness(state.ready_max_age);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut text = if readiness.ready {
        "ready\n"
    } else {
        "not ready\n"
    }
    .to_string();
    for line in readiness.lines {
        text.push_str(&line);
        text.push('\n');
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
}
