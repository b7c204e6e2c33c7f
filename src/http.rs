//! The daemon's HTTP surface (SPEC §5.3): Meta's webhook endpoint (handshake and signed
//! events), `/metrics`, `/healthz`, `/readyz`. The admin API ([`crate::api`]) is mounted beside it.

use crate::api::{self, ApiState};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::inbox::Inbox;
use crate::lines::LineRuntime;
use crate::metrics as m;
use crate::store::Store;
use crate::webhook::{parse_meta_webhook, verify};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::sync::Arc;

/// Meta sends up to 3 MB per webhook POST; leave room above that.
pub const WEBHOOK_BODY_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub inbox: Inbox,
    pub lines: Arc<HashMap<String, Arc<LineRuntime>>>,
    pub metrics: Option<PrometheusHandle>,
    pub clock: SharedClock,
    pub config: Arc<Config>,
}

pub fn router(state: HttpState) -> Router {
    let api = api::router(ApiState::new(
        state.store.clone(),
        state.clock.clone(),
        state.config.clone(),
        state.inbox.clone(),
    ));
    Router::new()
        .route("/webhooks/meta", get(meta_handshake).post(meta_events))
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(api)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message.into() })),
    )
        .into_response()
}

/// Meta's verification handshake: echo `hub.challenge` when the verify token is one of ours.
async fn meta_handshake(
    State(state): State<HttpState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mode = q.get("hub.mode").map(String::as_str);
    let token = q
        .get("hub.verify_token")
        .map(String::as_bytes)
        .unwrap_or_default();
    let known = state.lines.values().any(|rt| {
        rt.verify_token
            .as_ref()
            .is_some_and(|t| subtle::ConstantTimeEq::ct_eq(t.expose().as_bytes(), token).into())
    });
    match (mode, q.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if known => {
            (StatusCode::OK, challenge.clone()).into_response()
        }
        _ => {
            m::webhook_rejected("verify_token");
            error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "verify token does not match",
            )
        }
    }
}

/// Signed events: the signature is checked over the raw bytes before anything is parsed or
/// stored; valid bodies are applied and answered 200, also for events we do not use.
async fn meta_events(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    let mut secrets: Vec<&[u8]> = state
        .lines
        .values()
        .map(|rt| rt.app_secret.expose().as_bytes())
        .collect();
    secrets.sort_unstable();
    secrets.dedup();
    if !secrets.iter().any(|s| verify(s, &body, signature).is_ok()) {
        let reason = if signature.is_none() {
            "missing_signature"
        } else {
            "bad_signature"
        };
        m::webhook_rejected(reason);
        tracing::warn!(
            reason,
            bytes = body.len(),
            "webhook rejected: signature does not verify"
        );
        return error(
            StatusCode::UNAUTHORIZED,
            reason,
            "X-Hub-Signature-256 does not match the body",
        );
    }
    let events = match parse_meta_webhook(&body) {
        Ok(events) => events,
        Err(e) => {
            m::webhook_rejected(e.as_label());
            tracing::warn!(error = %e, "webhook rejected: malformed body");
            return error(StatusCode::BAD_REQUEST, "malformed", e.to_string());
        }
    };
    match state.inbox.apply(&events).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            // Meta retries non-200 answers; every step is idempotent, so the replay is safe.
            tracing::error!(error = %e, "webhook could not be applied; asking the sender to retry");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again later",
            )
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled",
        ),
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.store.is_ready().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "database unreachable or migrations missing",
        )
    }
}
