//! The admin API (SPEC §5.3): JSON under `/api`, behind a bearer token.
//!
//! - **Auth.** Every `/api/*` request needs `Authorization: Bearer <token>`, the token being the
//!   value of the environment variable named by `server.admin_token_env`. Tokens are compared
//!   in constant time (SHA-256 of both sides, then `subtle`). When no token is configured (the
//!   key is absent, or the variable is unset or empty) the API is **closed**: every request is
//!   answered 401 with a message saying why, so a daemon never runs an open admin API by
//!   accident.
//! - **Errors** are `{"error": CODE, "message": TEXT}` ([`ApiError`]) with a proper status.
//! - **Handlers are thin**: they parse, call the same functions as the CLI (`campaign::status`,
//!   `campaign::command`, `import::import`) or one store function, and shape the JSON.
//! - `GET /api/openapi.json` serves [`OPENAPI`], a hand-written OpenAPI 3.1 document (also
//!   describing the `/api/interactions*` endpoints, which live with the inbox).
//!
//! More routes (the interactions endpoints) are added in [`router`], before the catch-all.

mod error;
mod extract;
mod handlers;
mod interactions;

pub use error::ApiError;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// JSON bodies are small; anything bigger is refused with 413.
pub const JSON_BODY_LIMIT: usize = 64 * 1024;
/// `POST /api/lists/{name}/import` spools the CSV to a temporary file: at most 32 MiB (about
/// 400,000 contacts). Bigger files go through `tiercast import`.
pub const IMPORT_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// The OpenAPI 3.1 description of the admin API, served at `GET /api/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub inbox: crate::inbox::Inbox,
    pub clock: SharedClock,
    pub config: Arc<Config>,
    /// Campaign commands announce themselves to this daemon's lines.
    pub campaign_changes: crate::dispatch::CampaignChanges,
    auth: Arc<Auth>,
}

/// Whether and how the API can be used, decided once at start.
enum Auth {
    /// SHA-256 of the configured token.
    Token([u8; 32]),
    /// No usable token: every request is refused with this explanation.
    Closed(String),
}

impl ApiState {
    /// Reads the admin token from the environment variable the config names.
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: Arc<Config>,
        inbox: crate::inbox::Inbox,
        campaign_changes: crate::dispatch::CampaignChanges,
    ) -> Self {
        let auth = match config.admin_token() {
            Ok(Some(token)) => Auth::Token(Sha256::digest(token.expose().as_bytes()).into()),
            Ok(None) => Auth::Closed(
                "the admin API is disabled: no admin token is configured (set server.admin_token_env \
                 to the name of an environment variable holding the token)"
                    .into(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "admin API disabled: no admin token");
                Auth::Closed(format!("the admin API is disabled: {e}"))
            }
        };
        ApiState {
            store,
            inbox,
            clock,
            config,
            campaign_changes,
            auth: Arc::new(auth),
        }
    }
}

/// The `/api` routes, authenticated, with JSON errors for unknown paths and methods.
pub fn router(state: ApiState) -> Router {
    let auth = state.auth.clone();
    Router::new()
        .route("/api/campaigns", json(get(handlers::campaigns)))
        .route("/api/campaigns/{name}", json(get(handlers::campaign)))
        .route(
            "/api/campaigns/{name}/{command}",
            json(post(handlers::campaign_command)),
        )
        .route(
            "/api/lists/{name}/import",
            json(post(handlers::import_list)).layer(DefaultBodyLimit::max(IMPORT_BODY_LIMIT)),
        )
        .route("/api/contacts/{phone}", json(get(handlers::contact)))
        .route("/api/templates", json(get(handlers::templates)))
        .route("/api/tiers", json(get(handlers::tiers)))
        .route(
            "/api/optouts",
            json(get(handlers::opt_outs).post(handlers::add_opt_out)),
        )
        .route(
            "/api/optouts/{phone}",
            json(axum::routing::delete(handlers::remove_opt_out)),
        )
        .route("/api/openapi.json", json(get(openapi)))
        .route("/api/interactions", json(get(interactions::list)))
        .route("/api/interactions/{id}", json(get(interactions::read)))
        .route(
            "/api/interactions/{id}/reply",
            json(post(interactions::reply)),
        )
        .route(
            "/api/interactions/{id}/recontact",
            json(post(interactions::recontact)),
        )
        .route(
            "/api/interactions/{id}/tags",
            json(post(interactions::tags)),
        )
        .route(
            "/api/interactions/{id}/close",
            json(post(interactions::close)),
        )
        .route("/api", any(unknown_path))
        .route("/api/", any(unknown_path))
        .route("/api/{*rest}", any(unknown_path))
        .route_layer(middleware::from_fn_with_state(auth, require_token))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(state)
}

/// A JSON 405 for a known path with a method it does not serve.
fn json(route: MethodRouter<ApiState>) -> MethodRouter<ApiState> {
    route.fallback(|req: Request| async move {
        ApiError::MethodNotAllowed(format!(
            "{} is not allowed on {}",
            req.method(),
            req.uri().path()
        ))
    })
}

async fn unknown_path(req: Request) -> ApiError {
    ApiError::not_found(
        "unknown_path",
        format!(
            "no admin API endpoint {} {} (see GET /api/openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn require_token(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let expected = match auth.as_ref() {
        Auth::Token(digest) => digest,
        Auth::Closed(why) => return ApiError::Unauthorized(why.clone()).into_response(),
    };
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = presented else {
        return ApiError::Unauthorized(
            "missing bearer token: send Authorization: Bearer <token>".into(),
        )
        .into_response();
    };
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if bool::from(digest.ct_eq(expected)) {
        next.run(req).await
    } else {
        ApiError::Unauthorized("the bearer token is not the admin token".into()).into_response()
    }
}
