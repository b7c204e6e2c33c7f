//! Gupshup mode of the simulator (reference `gupshup.md` §8): the self-serve send endpoints
//! (`/wa/api/v1/template/msg`, `/wa/api/v1/msg`, form posts with an `apikey` header and
//! Gupshup's `{"status":…}` answers), the app's template list, mark-as-read, the subscription
//! call that sets an app's callback URL, and v2 callbacks (`message-event`s following each
//! message's fate, inbound `message`s) posted one per request without a signature.
//!
//! It shares the Meta mode's machinery: fates, the ledger, the 24 h windows, templates and the
//! webhook delivery task (retries, duplicates, flush).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, RwLock};
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::delivery::{lock, Job};
use super::{fate, Bucket, Fate, InboundSpec, LedgerEntry, SimError, SimTemplate, Simulator};

/// One simulated Gupshup app (an app name, its business number and the account's key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimGupshupApp {
    pub app_name: String,
    pub app_id: String,
    /// The business number, digits.
    pub source: String,
    pub api_key: String,
    /// Messages per second; 0 or `u32::MAX` = unlimited. Over it: 429 Too Many Requests.
    pub throughput_mps: u32,
    /// The callback URL, if known at start; else set through the subscription API.
    pub callback_url: Option<String>,
    /// Headers added to every callback (a subscription's `meta.headers`).
    #[serde(default)]
    pub callback_headers: Vec<(String, String)>,
}

impl Default for SimGupshupApp {
    fn default() -> Self {
        SimGupshupApp {
            app_name: "DemoApp".into(),
            app_id: "3cb92fbd-0bac-41d7-818e-4e4326d90335".into(),
            source: "917834811114".into(),
            api_key: "sim-gupshup-key".into(),
            throughput_mps: 0,
            callback_url: None,
            callback_headers: Vec::new(),
        }
    }
}

/// A callback URL and the headers sent with it.
type Callback = (String, Vec<(String, String)>);

pub(super) struct GsApp {
    pub(super) cfg: SimGupshupApp,
    callback: RwLock<Option<Callback>>,
    bucket: Mutex<Bucket>,
}

impl GsApp {
    pub(super) fn new(cfg: SimGupshupApp) -> Self {
        let callback = cfg
            .callback_url
            .clone()
            .map(|u| (u, cfg.callback_headers.clone()));
        GsApp {
            bucket: Mutex::new(Bucket {
                tokens: f64::from(cfg.throughput_mps),
                last: Instant::now(),
            }),
            callback: RwLock::new(callback),
            cfg,
        }
    }
}

/// Gupshup's error body.
fn gs_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({ "status": "error", "message": message })),
    )
        .into_response()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    reqwest::Url::parse(&format!("http://x/?{text}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Gupshup's UUID for a simulator template (stable: derived from name and language).
pub fn gupshup_template_id(t: &SimTemplate) -> String {
    let key = format!("{}/{}", t.name, t.language);
    let a = fate::hash(0, &key, 1);
    let b = fate::hash(0, &key, 2);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// How many `params` a send of `t` must carry: distinct variables of a text header and of the
/// body, plus one per button with a variable (URL suffix, coupon, OTP).
fn param_count(t: &SimTemplate) -> usize {
    let mut n = 0;
    for c in &t.components {
        let kind = c.kind.to_ascii_uppercase();
        if kind == "HEADER" || kind == "BODY" {
            let vars: BTreeSet<String> = c
                .text
                .as_deref()
                .map(super::templates::placeholders)
                .unwrap_or_default()
                .into_iter()
                .collect();
            n += vars.len();
        }
    }
    n + t
        .buttons()
        .iter()
        .filter(|b| {
            let k = b.kind.to_ascii_uppercase();
            k == "COPY_CODE"
                || k == "OTP"
                || b.url
                    .as_deref()
                    .is_some_and(|u| !super::templates::placeholders(u).is_empty())
        })
        .count()
}

/// A simulator template as Gupshup's list shows it (§3): flattened `data`, and `containerMeta`
/// and `meta` as JSON strings.
fn listed(t: &SimTemplate) -> Value {
    let text_of = |kind: &str| {
        t.components
            .iter()
            .find(|c| c.kind.eq_ignore_ascii_case(kind))
            .and_then(|c| c.text.clone())
    };
    let header_format = t
        .components
        .iter()
        .find(|c| c.kind.eq_ignore_ascii_case("HEADER"))
        .map(|c| {
            c.format
                .clone()
                .unwrap_or_else(|| "TEXT".into())
                .to_ascii_uppercase()
        });
    let template_type = match header_format.as_deref() {
        Some(f @ ("IMAGE" | "VIDEO" | "DOCUMENT" | "LOCATION")) => f.to_string(),
        _ => "TEXT".to_string(),
    };
    let header = text_of("HEADER").filter(|_| template_type == "TEXT");
    let body = text_of("BODY").unwrap_or_default();
    let footer = text_of("FOOTER");
    let buttons: Vec<Value> = t
        .buttons()
        .iter()
        .map(|b| {
            let mut v = json!({ "type": b.kind.to_ascii_uppercase(), "text": b.text });
            if let Some(u) = &b.url {
                v["url"] = u.clone().into();
            }
            if let Some(p) = &b.phone_number {
                v["phone_number"] = p.clone().into();
            }
            v
        })
        .collect();
    let mut data = [header.clone(), Some(body.clone()), footer.clone()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    for b in t.buttons() {
        let value = b.url.clone().or_else(|| b.phone_number.clone());
        match value {
            Some(v) => data.push_str(&format!(" | [{},{v}]", b.text)),
            None => data.push_str(&format!(" | [{}]", b.text)),
        }
    }
    let mut container = json!({ "data": body, "buttons": buttons });
    if let Some(h) = header {
        container["header"] = h.into();
    }
    if let Some(f) = footer {
        container["footer"] = f.into();
    }
    json!({
        "id": gupshup_template_id(t),
        "elementName": t.name,
        "languageCode": t.language,
        "category": t.category,
        "status": t.status,
        "templateType": template_type,
        "data": data,
        "containerMeta": container.to_string(),
        "meta": json!({ "example": body }).to_string(),
        "externalId": t.id,
        "quality": "UNKNOWN",
    })
}

impl Simulator {
    fn gs_app_by_key(&self, headers: &HeaderMap) -> Option<&GsApp> {
        let key = headers.get("apikey").and_then(|v| v.to_str().ok())?;
        self.inner.gupshup.values().find(|a| a.cfg.api_key == key)
    }

    /// Point an app's callbacks at `url` (what Gupshup's subscription API does), with extra
    /// headers on every callback. False if no app has that id or name.
    pub fn set_gupshup_callback(
        &self,
        app: &str,
        url: &str,
        headers: Vec<(String, String)>,
    ) -> bool {
        let Some(a) = self
            .inner
            .gupshup
            .values()
            .find(|a| a.cfg.app_id == app || a.cfg.app_name == app)
        else {
            return false;
        };
        *a.callback.write().unwrap_or_else(|e| e.into_inner()) = Some((url.to_string(), headers));
        true
    }

    /// Queue v2 callbacks of one app, posted in order.
    fn gs_post(&self, app: &GsApp, bodies: Vec<Value>) {
        let callback = app
            .callback
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (Some((url, headers)), false) = (callback, bodies.is_empty()) else {
            return;
        };
        let Some(tx) = self.sender() else {
            return;
        };
        let seq = self.inner.tracker.begin();
        let job = Job::Sequence {
            url,
            headers,
            bodies: bodies
                .iter()
                .map(|b| serde_json::to_vec(b).unwrap_or_default())
                .collect(),
            seq,
        };
        if tx.send(job).is_err() {
            self.inner.tracker.finish(&[seq]);
        }
    }

    fn envelope(&self, app: &GsApp, kind: &str, payload: Value) -> Value {
        let ms = self.now_ms();
        json!({ "app": app.cfg.app_name, "phone": app.cfg.source, "timestamp": ms,
                "version": 2, "type": kind, "payload": payload })
    }

    /// The send path of both endpoints; `template` tells which.
    fn gs_send(&self, headers: &HeaderMap, body: &[u8], template: bool) -> Response {
        let Some(app) = self.gs_app_by_key(headers) else {
            self.count_rejection(401);
            return gs_error(StatusCode::UNAUTHORIZED, "Authentication Failed");
        };
        let f = form(body);
        let source = field(&f, "source").map(fate::digits).unwrap_or_default();
        let owner = self
            .inner
            .gupshup
            .values()
            .find(|a| a.cfg.source == source && a.cfg.api_key == app.cfg.api_key);
        let Some(app) = owner.filter(|a| field(&f, "src.name") == Some(a.cfg.app_name.as_str()))
        else {
            self.count_rejection(400);
            return gs_error(StatusCode::BAD_REQUEST, "Invalid App Details");
        };
        let to = field(&f, "destination")
            .unwrap_or_default()
            .trim()
            .to_string();
        if to.is_empty() || !to.bytes().all(|b| b.is_ascii_digit()) {
            self.count_rejection(400);
            return gs_error(StatusCode::BAD_REQUEST, "Invalid Destination");
        }
        if !super::take_token(app.cfg.throughput_mps, &app.bucket) {
            self.count_rejection(429);
            return gs_error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        }
        let wa_id = self.wa_id_for(&to);
        let mut fate = self.fate_for(&to);
        let mut template_name = None;
        let mut language = None;
        let mut components = Value::Null;
        let mut text = None;
        let mut message_type = if template { "template" } else { "text" };
        if template {
            let Some(spec) =
                field(&f, "template").and_then(|t| serde_json::from_str::<Value>(t).ok())
            else {
                self.count_rejection(400);
                return gs_error(StatusCode::BAD_REQUEST, "Invalid Template");
            };
            let id = spec.get("id").and_then(Value::as_str).unwrap_or_default();
            let params = spec
                .get("params")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let found = {
                let ts = self
                    .inner
                    .templates
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                ts.iter().find(|t| gupshup_template_id(t) == id).cloned()
            };
            // Gupshup takes the request and the failure comes later, with Meta's code (§8).
            match found {
                None => fate = Fate::Failed(132001),
                Some(t) => {
                    match t.status.to_ascii_uppercase().as_str() {
                        "APPROVED" if params == param_count(&t) => {}
                        "APPROVED" => fate = Fate::Failed(132000),
                        "PAUSED" => fate = Fate::Failed(132015),
                        "DISABLED" => fate = Fate::Failed(132016),
                        _ => fate = Fate::Failed(132001),
                    }
                    template_name = Some(t.name.clone());
                    language = Some(t.language.clone());
                }
            }
            let mut sent = json!({ "template": spec });
            for extra in ["message", "postbackTexts"] {
                if let Some(v) =
                    field(&f, extra).and_then(|m| serde_json::from_str::<Value>(m).ok())
                {
                    sent[extra] = v;
                }
            }
            components = sent;
        } else {
            let message = field(&f, "message").and_then(|m| serde_json::from_str::<Value>(m).ok());
            let str_of = |k: &str| {
                message
                    .as_ref()
                    .and_then(|m| m.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            };
            // Session media by link (reference §1.2), named as Meta names it.
            let media = match str_of("type").as_deref() {
                Some("image") if str_of("originalUrl").is_some() => Some("image"),
                Some("file") if str_of("url").is_some() => Some("document"),
                Some("audio") if str_of("url").is_some() => Some("audio"),
                Some("video") if str_of("url").is_some() => Some("video"),
                _ => None,
            };
            if let Some(kind) = media {
                message_type = kind;
                text = str_of("caption");
                components = message.clone().unwrap_or_default();
            } else {
                text = str_of("text");
                if text.is_none() {
                    self.count_rejection(400);
                    return gs_error(StatusCode::BAD_REQUEST, "Invalid Message");
                }
            }
            if !self.window_open(&app.cfg.source, [&wa_id, &to]) {
                fate = Fate::Failed(131047);
            } else if matches!(fate, Fate::Failed(131049) | Fate::Failed(131050)) {
                fate = Fate::Read;
            }
        }
        let gs_id = self.next_gs_id();
        let wamid = self.next_wamid();
        lock(&self.inner.ledger).push(LedgerEntry {
            wamid: wamid.clone(),
            gs_id: Some(gs_id.clone()),
            phone_number_id: app.cfg.source.clone(),
            to: to.clone(),
            wa_id: wa_id.clone(),
            message_type: message_type.into(),
            template_name,
            language,
            components,
            text,
            callback_data: None,
            fate,
            accepted_at: SystemTime::now(),
            at_ms: self.now_ms(),
            accepted_instant: Instant::now(),
        });
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);
        let events = self.gs_events(app, &gs_id, &wamid, &to, fate);
        self.gs_post(app, events);
        (
            StatusCode::ACCEPTED,
            Json(json!({ "status": "submitted", "messageId": gs_id })),
        )
            .into_response()
    }

    /// The `message-event`s of one message's fate (§2.3): `enqueued` (keyed `id` = our id),
    /// then `sent`/`delivered`/`read` or an async `failed` (keyed `gsId`, `id` = WhatsApp id).
    /// Gupshup's own codes fail synchronously: one `failed` with `id` = our id, no `gsId`.
    fn gs_events(&self, app: &GsApp, gs_id: &str, wamid: &str, to: &str, fate: Fate) -> Vec<Value> {
        let enqueued = json!({ "id": gs_id, "type": "enqueued", "destination": to,
            "payload": { "whatsappMessageId": wamid, "type": "template" } });
        let dlr = |kind: &str, i: i64| {
            json!({ "id": wamid, "gsId": gs_id, "type": kind, "destination": to,
                    "payload": { "ts": self.now_unix() + i } })
        };
        let mut payloads = match fate {
            Fate::NoWebhook => vec![],
            Fate::Failed(code) if (1000..5000).contains(&code) => vec![json!({
                "id": gs_id, "type": "failed", "destination": to,
                "payload": { "code": code, "reason": super::graph_error::catalogue(code).1 } })],
            Fate::Failed(code) => vec![
                enqueued,
                json!({ "id": wamid, "gsId": gs_id, "type": "failed", "destination": to,
                        "payload": { "code": code, "reason": super::graph_error::catalogue(code).1 } }),
            ],
            Fate::Delivered => vec![enqueued, dlr("sent", 0), dlr("delivered", 1)],
            Fate::Read => vec![
                enqueued,
                dlr("sent", 0),
                dlr("delivered", 1),
                dlr("read", 2),
            ],
        };
        if self.inner.cfg.webhooks.reorder {
            payloads.reverse();
            if payloads.len() > 1 {
                self.inner
                    .dstats
                    .messages_reordered
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        payloads
            .into_iter()
            .map(|p| self.envelope(app, "message-event", p))
            .collect()
    }

    fn next_gs_id(&self) -> String {
        let n = self.inner.wamid_counter.fetch_add(1, Ordering::Relaxed);
        let h = fate::hash(0, &self.inner.wamid_prefix, n);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{n:012x}",
            h >> 32,
            (h >> 16) & 0xffff,
            h & 0xfff,
            (h >> 52) & 0xfff
        )
    }

    /// Post an inbound v2 `message` from a user to a Gupshup app and open the 24 h window.
    /// `spec.phone_number_id` names the app (its source number or name; the first app if
    /// absent); `spec.context_id` is the id of our message being answered (either id). Kinds:
    /// `text`, `button` (a template quick-reply tap), `interactive` (button_reply), `list`.
    /// Returns the inbound message's WhatsApp id.
    pub fn inject_gupshup_inbound(&self, spec: InboundSpec) -> Result<String, SimError> {
        let app = match spec.phone_number_id.as_deref() {
            Some(k) => self
                .inner
                .gupshup
                .values()
                .find(|a| a.cfg.source == fate::digits(k) || a.cfg.app_name == k),
            None => self
                .inner
                .gupshup
                .values()
                .min_by(|a, b| a.cfg.app_name.cmp(&b.cfg.app_name)),
        }
        .ok_or_else(|| {
            SimError::UnknownPhoneNumber(spec.phone_number_id.clone().unwrap_or_default())
        })?;
        let from = spec
            .from
            .as_deref()
            .map(fate::digits)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| SimError::BadRequest("`from` is required".into()))?;
        let wamid = self.next_wamid();
        let text = spec.text.clone().unwrap_or_default();
        let payload = spec.payload.clone();
        let (kind, inner) = match spec.kind.as_deref().unwrap_or("text") {
            "text" => ("text", json!({ "text": text })),
            "button" => {
                let mut p = json!({ "text": text, "type": "button" });
                if let Some(pb) = &payload {
                    p["postbackText"] = pb.clone().into();
                }
                ("quick_reply", p)
            }
            "interactive" => (
                "button_reply",
                json!({ "title": text, "id": payload.clone().unwrap_or_else(|| text.clone()),
                        "reply": text }),
            ),
            "list" => (
                "list_reply",
                json!({ "title": text, "id": payload.clone().unwrap_or_else(|| text.clone()),
                        "reply": text }),
            ),
            other => {
                return Err(SimError::BadRequest(format!(
                    "unknown inbound type `{other}` (text, button, interactive, list)"
                )))
            }
        };
        let mut msg = json!({
            "id": wamid, "source": from, "type": kind, "payload": inner,
            "sender": { "phone": from, "name": spec.profile_name.clone().unwrap_or_default(),
                        "country_code": "", "dial_code": "" },
        });
        if let Some(c) = &spec.context_id {
            // Gupshup quotes both ids of our message: the WhatsApp one and its own.
            let entry = lock(&self.inner.ledger)
                .iter()
                .find(|e| e.wamid == *c || e.gs_id.as_deref() == Some(c.as_str()))
                .map(|e| (e.wamid.clone(), e.gs_id.clone()));
            msg["context"] = match entry {
                Some((wa, Some(gs))) => json!({ "id": wa, "gsId": gs }),
                _ => json!({ "id": c }),
            };
        }
        let mut body = self.envelope(app, "message", msg);
        if let Some(ts) = spec.timestamp {
            body["timestamp"] = (ts * 1000).into();
        }
        lock(&self.inner.windows).insert((app.cfg.source.clone(), from), Instant::now());
        lock(&self.inner.inbound_wamids).insert(wamid.clone());
        self.inner.inbound_injected.fetch_add(1, Ordering::Relaxed);
        self.gs_post(app, vec![body]);
        Ok(wamid)
    }

    /// Post any v2 callback body to an app's callback URL (template, account, user events…).
    pub fn post_gupshup_event(&self, app: &str, kind: &str, payload: Value) -> bool {
        let Some(a) = self
            .inner
            .gupshup
            .values()
            .find(|a| a.cfg.app_id == app || a.cfg.app_name == app)
        else {
            return false;
        };
        self.gs_post(a, vec![self.envelope(a, kind, payload)]);
        true
    }
}

// ---- handlers ----------------------------------------------------------------------------

pub(super) async fn template_msg_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.gs_send(&headers, &body, true)
}

pub(super) async fn msg_handler(
    State(sim): State<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.gs_send(&headers, &body, false)
}

pub(super) async fn templates_handler(
    State(sim): State<Simulator>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(app) = sim.gs_app_by_key(&headers) else {
        return gs_error(StatusCode::UNAUTHORIZED, "Authentication Failed");
    };
    if app.cfg.app_id != app_id
        && !sim
            .inner
            .gupshup
            .values()
            .any(|a| a.cfg.app_id == app_id && a.cfg.api_key == app.cfg.api_key)
    {
        return gs_error(StatusCode::BAD_REQUEST, "Invalid App Details");
    }
    let templates: Vec<Value> = {
        let ts = sim
            .inner
            .templates
            .read()
            .unwrap_or_else(|e| e.into_inner());
        ts.iter().map(|t| listed(t)).collect()
    };
    Json(json!({ "status": "success", "templates": templates })).into_response()
}

pub(super) async fn read_handler(
    State(sim): State<Simulator>,
    Path((_app_id, msg_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if sim.gs_app_by_key(&headers).is_none() {
        return gs_error(StatusCode::UNAUTHORIZED, "Authentication Failed");
    }
    if !lock(&sim.inner.inbound_wamids).contains(&msg_id) {
        return gs_error(StatusCode::BAD_REQUEST, "Invalid Message Id");
    }
    sim.inner.marked_read.fetch_add(1, Ordering::Relaxed);
    StatusCode::ACCEPTED.into_response()
}

#[derive(Deserialize)]
struct SubscriptionMeta {
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// `POST /wa/app/{appId}/subscription` (form `url`, `meta={"headers":{…}}`, `modes`, `version`):
/// sets where this app's callbacks go.
pub(super) async fn subscription_handler(
    State(sim): State<Simulator>,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if sim.gs_app_by_key(&headers).is_none() {
        return gs_error(StatusCode::UNAUTHORIZED, "Authentication Failed");
    }
    let f = form(&body);
    let Some(url) = field(&f, "url").filter(|u| u.starts_with("http")) else {
        return gs_error(StatusCode::BAD_REQUEST, "Invalid url");
    };
    let extra: Vec<(String, String)> = field(&f, "meta")
        .and_then(|m| serde_json::from_str::<SubscriptionMeta>(m).ok())
        .map(|m| m.headers.into_iter().collect())
        .unwrap_or_default();
    if !sim.set_gupshup_callback(&app_id, url, extra) {
        return gs_error(StatusCode::BAD_REQUEST, "Invalid App Details");
    }
    Json(
        json!({ "status": "success", "subscription": { "appId": app_id, "url": url,
        "version": 2, "active": true } }),
    )
    .into_response()
}

pub(super) async fn inbound_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    let spec: InboundSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return super::bad_request(format!("invalid inbound spec: {e}")),
    };
    match sim.inject_gupshup_inbound(spec) {
        Ok(id) => Json(json!({ "id": id })).into_response(),
        Err(e) => super::bad_request(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::demo_templates;

    #[test]
    fn listed_templates_read_back_with_the_same_placeholders() {
        for t in demo_templates() {
            let def =
                crate::provider::gupshup::template_from_gupshup(&listed(&t)).expect("readable");
            assert_eq!(def.id.as_deref(), Some(gupshup_template_id(&t).as_str()));
            assert_eq!(def.name, t.name);
            assert_eq!(def.language, t.language);
            // Every slot the daemon fills is a param the fake counts (quick replies are
            // postbacks, not params).
            let params = def
                .placeholders()
                .into_iter()
                .filter(|s| {
                    !matches!(
                        s.kind,
                        crate::domain::template::SlotKind::Button {
                            kind: crate::domain::template::ButtonSlot::QuickReply,
                            ..
                        } | crate::domain::template::SlotKind::HeaderMedia(_)
                    )
                })
                .count();
            assert_eq!(params, param_count(&t), "{}", t.name);
        }
    }

    #[test]
    fn template_ids_are_stable_and_distinct() {
        let ts = demo_templates();
        let ids: BTreeSet<String> = ts.iter().map(gupshup_template_id).collect();
        assert_eq!(ids.len(), ts.len());
        assert_eq!(
            gupshup_template_id(&ts[0]),
            gupshup_template_id(&ts[0].clone())
        );
        assert_eq!(gupshup_template_id(&ts[0]).len(), 36);
    }
}
