//! The agents' side of the admin API (SPEC §5.3): list, read, reply, recontact, tag and close
//! interactions. Handlers are thin: the inbox decides, the store remembers.

use super::extract::Path;
use super::{ApiError, ApiState};
use crate::domain::error_class::ErrorClass;
use crate::inbox::AgentError;
use crate::store::InteractionFilter;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "error": code, "message": message.into() })),
    )
        .into_response()
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        if let AgentError::Provider(e) = &self {
            let c = e.classification();
            if c.class == ErrorClass::Throttled {
                return throttled(c.min_delay, self.to_string());
            }
        }
        let (status, code) = match &self {
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::WindowExpired => (StatusCode::CONFLICT, "window_expired"),
            AgentError::NoRecontactTemplate | AgentError::Template(_) => {
                (StatusCode::CONFLICT, "no_recontact_template")
            }
            AgentError::UnknownLine(_) => (StatusCode::CONFLICT, "unknown_line"),
            AgentError::TierSpent => (StatusCode::CONFLICT, "tier_spent"),
            AgentError::Provider(_) => (StatusCode::BAD_GATEWAY, "provider_error"),
            AgentError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "admin API failure");
        }
        error(status, code, self.to_string())
    }
}

/// The provider throttled an agent's message (the pair rate, 131056, above all): 429 with
/// `Retry-After`, the classification's wait, in whole seconds and at least one. Nothing is
/// queued: the agent sends again.
fn throttled(wait: Option<std::time::Duration>, message: String) -> Response {
    let secs = wait.map_or(1, |w| w.as_secs_f64().ceil() as u64).max(1);
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "throttled", message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn bad_json(rejection: JsonRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge(format!("the body is too large: {}", rejection.body_text()))
            .into_response();
    }
    error(StatusCode::BAD_REQUEST, "bad_json", rejection.body_text())
}

pub(super) async fn list(
    State(state): State<ApiState>,
    filter: Result<Query<InteractionFilter>, QueryRejection>,
) -> Response {
    let filter = match filter {
        Ok(Query(f)) => f,
        Err(e) => return ApiError::from(e).into_response(),
    };
    match state.inbox.store().interactions(&filter).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => AgentError::Store(e).into_response(),
    }
}

pub(super) async fn read(State(state): State<ApiState>, Path(id): Path<i64>) -> Response {
    let store = state.inbox.store();
    let result = async {
        let i = store
            .interaction(id)
            .await?
            .ok_or(AgentError::NotFound(id))?;
        let messages = store.interaction_messages(id).await?;
        let mut body = serde_json::to_value(i).unwrap_or_default();
        body["messages"] = serde_json::to_value(messages).unwrap_or_default();
        Ok::<_, AgentError>(body)
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplyBody {
    text: String,
}

pub(super) async fn reply(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    body: Result<Json<ReplyBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    if body.text.trim().is_empty() || body.text.chars().count() > 4096 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_text",
            "text must hold 1 to 4096 characters",
        );
    }
    match state.inbox.agent_reply(id, &body.text).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(super) async fn recontact(State(state): State<ApiState>, Path(id): Path<i64>) -> Response {
    match state.inbox.agent_recontact(id).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TagsBody {
    tags: Vec<String>,
}

pub(super) async fn tags(
    State(state): State<ApiState>,
    Path(id): Path<i64>,
    body: Result<Json<TagsBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let mut tags: Vec<String> = body
        .tags
        .iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    tags.sort();
    tags.dedup();
    match state.inbox.store().set_interaction_tags(id, &tags).await {
        Ok(_) => whole_interaction(&state, id).await,
        Err(e) => AgentError::Store(e).into_response(),
    }
}

/// Closing a closed interaction is no error: either way the answer is the closed interaction.
pub(super) async fn close(State(state): State<ApiState>, Path(id): Path<i64>) -> Response {
    let now = state.clock.now_millis();
    match state.inbox.store().close_interaction(id, now).await {
        Ok(_) => whole_interaction(&state, id).await,
        Err(e) => AgentError::Store(e).into_response(),
    }
}

/// The interaction as `GET /api/interactions` lists it, or 404.
async fn whole_interaction(state: &ApiState, id: i64) -> Response {
    match state.inbox.store().interaction(id).await {
        Ok(Some(i)) => Json(i).into_response(),
        Ok(None) => AgentError::NotFound(id).into_response(),
        Err(e) => AgentError::Store(e).into_response(),
    }
}
