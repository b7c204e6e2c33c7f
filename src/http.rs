//! The daemon's HTTP surface (SPEC §5.3): Meta's webhook endpoint (handshake and signed
//! events), Gupshup's (shared secret and IP allow-list, see [`gupshup_events`]), `/metrics`,
//! `/healthz`, `/readyz`. The admin API ([`crate::api`]) is mounted beside it.

use crate::api::{self, ApiState};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::config::ProviderKind;
use crate::inbox::Inbox;
use crate::lines::LineRuntime;
use crate::metrics as m;
use crate::store::Store;
use crate::webhook::{parse_gupshup_webhook, parse_meta_webhook, verify, EventOwner, MetaEvent};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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
    pub campaign_changes: crate::dispatch::CampaignChanges,
}

pub fn router(state: HttpState) -> Router {
    let store = state.store.clone();
    let api = api::router(ApiState::new(
        state.store.clone(),
        state.clock.clone(),
        state.config.clone(),
        state.inbox.clone(),
        state.campaign_changes.clone(),
    ));
    Router::new()
        .route("/webhooks/meta", get(meta_handshake).post(meta_events))
        .route("/webhooks/gupshup", get(gupshup_probe).post(gupshup_events))
        .route(
            "/webhooks/gupshup/{secret}",
            get(gupshup_probe_with_secret).post(gupshup_events_with_secret),
        )
        .layer(DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(
            store,
            refuse_while_database_lost,
        ))
}

/// Once the database file was deleted or replaced, what a request would write (a status, a
/// reply, an opt-out, a campaign command) would be lost with it: such requests get 503, so
/// webhook senders retry later. Health, readiness and metrics still answer.
async fn refuse_while_database_lost(
    State(store): State<Store>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if store.database_file_lost()
        && !matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics")
    {
        let reason = store
            .check_database_file()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_file_lost",
            reason,
        );
    }
    next.run(request).await
}

/// How long a client may stay silent: while sending a request's head, between two requests
/// on a kept-alive connection, and between two pieces of a request body.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a connection accepted while nine in ten slots are taken: under a flood of
/// slow clients their slots turn over five times faster, so a prompt client (a health check,
/// Meta's webhook) waits less in the backlog. A well-behaved client sends a head in
/// milliseconds.
pub const BUSY_CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// File descriptors kept for everything but clients: the database pool, each line's provider
/// connections, the in-process simulator, logs and the listener, with room to spare.
fn reserved_descriptors(config: &Config) -> u64 {
    // The in-process simulator holds the other end of its lines' provider connections.
    let provider: u64 = config
        .lines
        .iter()
        .map(|l| match (l.provider, &l.api_base) {
            (ProviderKind::Simulator, None) => 2 * l.max_in_flight as u64,
            _ => l.max_in_flight as u64,
        })
        .sum();
    let database = 16;
    256 + provider + database
}

/// The fewest client connections worth serving; below that the file limit is too low to run.
const MIN_CONNECTIONS: u64 = 32;

/// Raises the soft open-file limit to the hard one and returns it.
fn raise_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    // rlim_t is u64 here, not on every platform.
    #[allow(clippy::unnecessary_cast)]
    Ok(limit.rlim_cur as u64)
}

/// How many client connections the daemon holds at once: its open-file limit (raised to the
/// hard limit) less what the database and the providers need, so slow or numerous clients
/// can never take the descriptors sending depends on.
pub fn max_connections(config: &Config) -> Result<usize, ConnectionLimitError> {
    let files = raise_file_limit().map_err(ConnectionLimitError::Read)?;
    let reserved = reserved_descriptors(config);
    match files.checked_sub(reserved) {
        Some(n) if n >= MIN_CONNECTIONS => Ok(n.min(usize::MAX as u64) as usize),
        _ => Err(ConnectionLimitError::TooLow { files, reserved }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionLimitError {
    #[error("reading the open-file limit: {0}")]
    Read(std::io::Error),
    #[error("the open-file limit is {files}, and the database and providers need {reserved} of them: \
             raise it (LimitNOFILE in the systemd unit, ulimit -n) to at least {}",
            reserved + MIN_CONNECTIONS)]
    TooLow { files: u64, reserved: u64 },
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish.
/// At most `max_connections` clients are connected at once (the rest wait in the listen
/// backlog), and each gets [`CLIENT_TIMEOUT`] ([`BUSY_CLIENT_TIMEOUT`] when nearly all are
/// taken) to send a request's head, to start its next request, and between pieces of a body;
/// past it the connection is closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    let mut busy_http = http.clone();
    busy_http.header_read_timeout(BUSY_CLIENT_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: wait, retry.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let busy = permits.available_permits() < max_connections / 10;
        let (http, timeout) = match busy {
            true => (&busy_http, BUSY_CLIENT_TIMEOUT),
            false => (&http, CLIENT_TIMEOUT),
        };
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |req: axum::http::Request<hyper::body::Incoming>| {
                let (mut parts, body) = req.into_parts();
                // Peer addresses feed the Gupshup webhook's IP allow-list.
                parts.extensions.insert(ConnectInfo(peer));
                let body = tower_http::timeout::TimeoutBody::new(timeout, body);
                axum::http::Request::from_parts(parts, axum::body::Body::new(body))
            },
        );
        let connection = http.serve_connection(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "HTTP connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
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

/// The lines whose app secret signed `body`. Each distinct secret is tried once.
fn lines_signing<'a>(
    lines: &'a HashMap<String, Arc<LineRuntime>>,
    body: &[u8],
    signature: Option<&str>,
) -> Vec<&'a LineRuntime> {
    let mut tried: Vec<(&[u8], bool)> = Vec::new();
    lines
        .values()
        .filter(|rt| {
            let Some(secret) = rt.app_secret.as_ref().map(|s| s.expose().as_bytes()) else {
                return false;
            };
            if let Some((_, ok)) = tried.iter().find(|(s, _)| *s == secret) {
                return *ok;
            }
            let ok = verify(secret, body, signature).is_ok();
            tried.push((secret, ok));
            ok
        })
        .map(|rt| &**rt)
        .collect()
}

/// Whether an event was signed by the app of the line it names. Meta signs with the secret of
/// the app the number or account belongs to, so a valid signature of another line's app does
/// not speak for it. An event naming no line (another number of the app, or no metadata) only
/// needs a signature from one of ours, checked before.
fn signed_by_its_line(
    event: &MetaEvent,
    lines: &HashMap<String, Arc<LineRuntime>>,
    signers: &[&LineRuntime],
) -> bool {
    let names = |rt: &LineRuntime| match event.owner() {
        EventOwner::PhoneNumber(id) => rt.line.phone_number_id == id,
        EventOwner::Account(id) => rt.waba_id == id,
        EventOwner::Unnamed => false,
    };
    let mut named = lines.values().filter(|rt| names(rt)).peekable();
    named.peek().is_none() || named.any(|rt| signers.iter().any(|s| s.line.name == rt.line.name))
}

/// Signed events: the signature is checked over the raw bytes before anything is parsed, and
/// each event against the secret of the line it names; valid bodies are applied and answered
/// 200, also for events we do not use. A body with any event its line's app did not sign is
/// refused whole: Meta signs one POST with one app's secret, so it is not Meta's.
async fn meta_events(State(state): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    let signers = lines_signing(&state.lines, &body, signature);
    if signers.is_empty() {
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
    if let Some(event) = events
        .iter()
        .find(|ev| !signed_by_its_line(ev, &state.lines, &signers))
    {
        m::webhook_rejected("wrong_line_secret");
        tracing::warn!(
            owner = ?event.owner(),
            signed_by = ?signers.iter().map(|rt| rt.line.name.as_str()).collect::<Vec<_>>(),
            "webhook rejected: an event's line has another app secret than the one that signed it"
        );
        return error(
            StatusCode::UNAUTHORIZED,
            "wrong_line_secret",
            "X-Hub-Signature-256 is not signed with the app secret of the line an event names",
        );
    }
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

/// The header a Gupshup subscription can be told to send (`meta.headers`), carrying the line's
/// `webhook_secret_env` value. The secret may instead end the URL: `/webhooks/gupshup/{secret}`.
pub const GUPSHUP_SECRET_HEADER: &str = "x-tiercast-secret";

/// Why a Gupshup callback was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GupshupRefusal {
    NoLine,
    IpNotAllowed,
    MissingSecret,
    BadSecret,
}

impl GupshupRefusal {
    fn response(self) -> Response {
        let (status, code, message) = match self {
            GupshupRefusal::NoLine => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no gupshup line is configured",
            ),
            GupshupRefusal::IpNotAllowed => (
                StatusCode::FORBIDDEN,
                "ip_not_allowed",
                "this address is not in any gupshup line's webhook_allow_ips",
            ),
            GupshupRefusal::MissingSecret => (
                StatusCode::UNAUTHORIZED,
                "missing_secret",
                "the shared secret is missing (X-Tiercast-Secret header or /webhooks/gupshup/{secret})",
            ),
            GupshupRefusal::BadSecret => (
                StatusCode::UNAUTHORIZED,
                "bad_secret",
                "the shared secret does not match",
            ),
        };
        m::webhook_rejected(code);
        tracing::warn!(reason = code, "gupshup webhook rejected");
        error(status, code, message)
    }
}

/// The Gupshup lines this request may speak for: those whose allow-list admits the peer and
/// whose secret (if any) it presents. Gupshup signs nothing, so this is all the authentication
/// there is; secrets are compared in constant time.
fn gupshup_lines_for(
    state: &HttpState,
    peer: Option<IpAddr>,
    presented: Option<&str>,
) -> Result<Vec<Arc<LineRuntime>>, GupshupRefusal> {
    let lines: Vec<&Arc<LineRuntime>> = state
        .lines
        .values()
        .filter(|rt| rt.line.provider == ProviderKind::Gupshup)
        .collect();
    if lines.is_empty() {
        return Err(GupshupRefusal::NoLine);
    }
    // A peer address behind an IPv6 socket may be IPv4-mapped.
    let peer = peer.map(|ip| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    });
    let by_ip: Vec<&Arc<LineRuntime>> = lines
        .into_iter()
        .filter(|rt| {
            let allow = &rt.line.webhook_allow_ips;
            allow.is_empty() || peer.is_some_and(|ip| allow.iter().any(|net| net.contains(&ip)))
        })
        .collect();
    if by_ip.is_empty() {
        return Err(GupshupRefusal::IpNotAllowed);
    }
    let ok: Vec<Arc<LineRuntime>> = by_ip
        .iter()
        .filter(|rt| match (&rt.webhook_secret, presented) {
            (None, _) => true,
            (Some(secret), Some(p)) => {
                subtle::ConstantTimeEq::ct_eq(secret.expose().as_bytes(), p.as_bytes()).into()
            }
            (Some(_), None) => false,
        })
        .map(|rt| (*rt).clone())
        .collect();
    if ok.is_empty() {
        return Err(if presented.is_none() {
            GupshupRefusal::MissingSecret
        } else {
            GupshupRefusal::BadSecret
        });
    }
    Ok(ok)
}

fn peer_ip(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn header_secret(headers: &HeaderMap) -> Option<String> {
    headers
        .get(GUPSHUP_SECRET_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Gupshup checks a callback URL when it is set: answer as an event would be, empty 200.
async fn gupshup_probe(State(state): State<HttpState>, req: Request) -> Response {
    gupshup_probe_inner(&state, req, None)
}

async fn gupshup_probe_with_secret(
    State(state): State<HttpState>,
    Path(secret): Path<String>,
    req: Request,
) -> Response {
    gupshup_probe_inner(&state, req, Some(secret))
}

fn gupshup_probe_inner(state: &HttpState, req: Request, path: Option<String>) -> Response {
    let presented = header_secret(req.headers()).or(path);
    match gupshup_lines_for(state, peer_ip(&req), presented.as_deref()) {
        Ok(_) => StatusCode::OK.into_response(),
        Err(r) => r.response(),
    }
}

async fn gupshup_events(State(state): State<HttpState>, req: Request) -> Response {
    gupshup_events_inner(state, req, None).await
}

async fn gupshup_events_with_secret(
    State(state): State<HttpState>,
    Path(secret): Path<String>,
    req: Request,
) -> Response {
    gupshup_events_inner(state, req, Some(secret)).await
}

/// Gupshup's callbacks: authenticated before the body is parsed; well-formed bodies are applied
/// and answered 200 with an empty body (Gupshup's contract), also when we do not use them.
async fn gupshup_events_inner(state: HttpState, req: Request, path: Option<String>) -> Response {
    let presented = header_secret(req.headers()).or(path);
    let lines = match gupshup_lines_for(&state, peer_ip(&req), presented.as_deref()) {
        Ok(l) => l,
        Err(r) => return r.response(),
    };
    let body = match axum::body::to_bytes(req.into_body(), WEBHOOK_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            m::webhook_rejected("body");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "body", e.to_string());
        }
    };
    let mut hook = match parse_gupshup_webhook(&body) {
        Ok(h) => h,
        Err(e) => {
            m::webhook_rejected(e.as_label());
            tracing::warn!(error = %e, "gupshup webhook rejected: malformed body");
            return error(StatusCode::BAD_REQUEST, "malformed", e.to_string());
        }
    };
    // The line: the one whose app the body names, else the only one this request may speak for.
    let named = lines.iter().find(|rt| {
        let l = &rt.line;
        hook.app.as_deref().is_some_and(|a| {
            l.app_name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(a))
        }) || hook
            .app_id
            .as_deref()
            .is_some_and(|id| l.app_id.as_deref() == Some(id))
    });
    let rt = match (named, lines.len()) {
        (Some(rt), _) => rt,
        (None, 1) => &lines[0],
        (None, _) => {
            m::webhook_rejected("unknown_app");
            tracing::warn!(app = ?hook.app, app_id = ?hook.app_id,
                "gupshup webhook for an app no line names; ignored");
            return StatusCode::OK.into_response();
        }
    };
    hook.assign_line(&rt.line.phone_number_id, &rt.waba_id);
    match state.inbox.apply(&hook.events).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "gupshup webhook could not be applied; asking Gupshup to retry");
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
    if let Err(e) = state.store.check_database_file() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_file_lost",
            e.to_string(),
        );
    }
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
