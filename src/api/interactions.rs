//! The agents' side of the admin API (SPEC §5.3): list, read, reply, recontact, tag and close
//! interactions. Handlers are thin: the inbox decides, the store remembers.

use super::extract::Path;
use super::{ApiError, ApiState};
use crate::domain::error_class::ErrorClass;
use crate::inbox::{AgentError, AgentReply};
use crate::provider::{Media, MediaKind};
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

/// `{"text": …}`, or one medium by link: `{"image": {"link", "caption"}}`, `document` (also
/// `filename`), `audio` (no caption), `video`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplyBody {
    text: Option<String>,
    image: Option<MediaBody>,
    document: Option<MediaBody>,
    audio: Option<MediaBody>,
    video: Option<MediaBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MediaBody {
    link: String,
    caption: Option<String>,
    filename: Option<String>,
}

/// Meta's limits: a text body, a media caption.
const TEXT_MAX: usize = 4096;
const CAPTION_MAX: usize = 1024;

/// Why a reply body cannot be sent whole: a 400 with this code and message.
struct BadReply {
    code: &'static str,
    message: String,
}

impl ReplyBody {
    /// The one message the body asks for, or the 400 that names what is wrong.
    fn into_reply(self) -> Result<AgentReply, BadReply> {
        let ReplyBody {
            text,
            image,
            document,
            audio,
            video,
        } = self;
        let mut media: Vec<(MediaKind, MediaBody)> = MediaKind::ALL
            .into_iter()
            .zip([image, document, audio, video])
            .filter_map(|(kind, body)| body.map(|b| (kind, b)))
            .collect();
        let mut given: Vec<&str> = media.iter().map(|(k, _)| k.as_str()).collect();
        if text.is_some() {
            given.insert(0, "text");
        }
        let (kind, body) = match (text, media.pop()) {
            (Some(text), None) => {
                if text.trim().is_empty() || text.chars().count() > TEXT_MAX {
                    return Err(BadReply {
                        code: "bad_text",
                        message: format!("text must hold 1 to {TEXT_MAX} characters"),
                    });
                }
                return Ok(AgentReply::Text(text));
            }
            (None, Some(one)) if media.is_empty() => one,
            _ => {
                let also = if given.is_empty() {
                    String::new()
                } else {
                    format!(", not {}", given.join(" and "))
                };
                return Err(BadReply {
                    code: "bad_json",
                    message: format!(
                        "give exactly one of text, image, document, audio, video{also}"
                    ),
                });
            }
        };
        let bad = |key: &str, why: String| BadReply {
            code: "bad_media",
            message: format!("{}.{key}: {why}", kind.as_str()),
        };
        let link_ok = reqwest::Url::parse(&body.link)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !link_ok {
            return Err(bad(
                "link",
                format!(
                    "{:?} is not an http(s) URL the provider can fetch",
                    body.link
                ),
            ));
        }
        let caption = body.caption.filter(|c| !c.trim().is_empty());
        if let Some(c) = &caption {
            if !kind.takes_caption() {
                return Err(bad("caption", "audio messages carry no caption".into()));
            }
            if c.chars().count() > CAPTION_MAX {
                return Err(bad(
                    "caption",
                    format!("holds more than {CAPTION_MAX} characters"),
                ));
            }
        }
        if body.filename.is_some() && kind != MediaKind::Document {
            return Err(bad("filename", "only documents have a file name".into()));
        }
        Ok(AgentReply::Media(Media {
            kind,
            link: body.link,
            caption,
            filename: body.filename.filter(|f| !f.trim().is_empty()),
        }))
    }
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
    let reply = match body.into_reply() {
        Ok(r) => r,
        Err(bad) => return error(StatusCode::BAD_REQUEST, bad.code, bad.message),
    };
    match state.inbox.agent_reply(id, &reply).await {
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
