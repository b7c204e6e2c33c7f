//! The agents' side of the admin API (SPEC §5.3): list, read, reply, recontact, tag and close
//! interactions. Handlers are thin: the inbox decides, the store remembers.

use super::ApiState;
use crate::inbox::AgentError;
use crate::store::InteractionFilter;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
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
        let (status, code) = match &self {
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AgentError::WindowExpired => (StatusCode::CONFLICT, "window_expired"),
            AgentError::NoRecontactTemplate(_) => (StatusCode::CONFLICT, "no_recontact_template"),
            AgentError::Template(_) | AgentError::Unfillable { .. } => {
                (StatusCode::CONFLICT, "recontact_template_unusable")
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

fn bad_json(rejection: JsonRejection) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_json", rejection.body_text())
}

pub(super) async fn list(
    State(state): State<ApiState>,
    Query(filter): Query<InteractionFilter>,
) -> Response {
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
        // The template the contact is answering: its campaign's.
        let template = match i.campaign.as_deref().and_then(|c| state.config.campaign(c)) {
            Some(c) => json!({ "name": c.template.name, "language": c.template.language }),
            None => serde_json::Value::Null,
        };
        let mut body = serde_json::to_value(i).unwrap_or_default();
        body["messages"] = serde_json::to_value(messages).unwrap_or_default();
        body["template"] = template;
        Ok::<_, AgentError>(body)
    }
    .await;
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
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
        Ok(true) => Json(json!({ "id": id, "tags": tags })).into_response(),
        Ok(false) => AgentError::NotFound(id).into_response(),
        Err(e) => AgentError::Store(e).into_response(),
    }
}

pub(super) async fn close(State(state): State<ApiState>, Path(id): Path<i64>) -> Response {
    let now = state.clock.now_millis();
    match state.inbox.store().close_interaction(id, now).await {
        Ok(true) => Json(json!({ "id": id, "state": "closed" })).into_response(),
        Ok(false) => match state.inbox.store().interaction(id).await {
            Ok(Some(_)) => Json(json!({ "id": id, "state": "closed" })).into_response(),
            Ok(None) => AgentError::NotFound(id).into_response(),
            Err(e) => AgentError::Store(e).into_response(),
        },
        Err(e) => AgentError::Store(e).into_response(),
    }
}
