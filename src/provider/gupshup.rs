//! Gupshup self-serve WhatsApp API client (reference `gupshup.md` §1.1, §1.2, §1.5, §3): template
//! and text sends as form posts with the `apikey` header, mark-as-read, and the app's template
//! list turned into the same [`TemplateDef`] the Meta path uses.
//!
//! The rest of tiercast renders a template into Meta's `components` array; this module turns
//! that array into Gupshup's shape: `template={"id": <Gupshup UUID>, "params": [...]}` with the
//! text values in order of appearance (header, body, then button suffixes), `message` for a
//! media header and `postbackTexts` for quick-reply payloads.
//!
//! A 2xx answer only means "submitted": per-recipient failures come later as `failed` events.
//! Like the Meta client, this module never decides what a failure means; it maps answers onto
//! [`SendError`] and `domain::error_class` classifies them.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, ACCEPT};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};
use std::future::Future;
use tokio::sync::Semaphore;

use super::{
    error_chain, http_error, transport_error, Accepted, CreatedTemplate, Media, MediaKind,
    Provider, SendError, TemplateMessage,
};
use crate::domain::template::{
    ButtonKind, Component, ComponentKind, Components, HeaderFormat, MediaLink, Parameter,
    ParameterFormat, TemplateButton, TemplateComponent, TemplateDef,
};

/// Settings of one Gupshup line (one app and its business number).
#[derive(Clone)]
pub struct GupshupSettings {
    /// e.g. `https://api.gupshup.io` (tests point it at a fake).
    pub api_base: String,
    /// The business number, digits only (`source`).
    pub source: String,
    /// The Gupshup app name (`src.name`).
    pub app_name: String,
    /// The app id, for the template list and mark-as-read.
    pub app_id: String,
    /// Secret: never logged (see the `Debug` impl).
    pub api_key: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
}

impl fmt::Debug for GupshupSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GupshupSettings")
            .field("api_base", &self.api_base)
            .field("source", &self.source)
            .field("app_name", &self.app_name)
            .field("app_id", &self.app_id)
            .field("api_key", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// A [`GupshupClient`] could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum GupshupClientError {
    #[error("api_base `{0}` is not a valid http(s) URL")]
    BadApiBase(String),
    #[error("the API key contains characters not allowed in an HTTP header")]
    BadApiKey,
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

pub struct GupshupClient {
    http: reqwest::Client,
    /// `{api_base}/wa/api/v1/template/msg`
    template_url: Url,
    /// `{api_base}/wa/api/v1/msg`
    text_url: Url,
    /// `{api_base}/wa/app/{app_id}/template`
    templates_url: Url,
    /// `{api_base}/wa/app/{app_id}/msg/`, completed with `{id}/read`.
    read_base: Url,
    apikey: HeaderValue,
    source: String,
    app_name: String,
    permits: Semaphore,
}

impl fmt::Debug for GupshupClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GupshupClient")
            .field("template_url", &self.template_url.as_str())
            .field("source", &self.source)
            .field("app_name", &self.app_name)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

static APIKEY: HeaderName = HeaderName::from_static("apikey");

impl GupshupClient {
    pub fn new(settings: GupshupSettings) -> Result<Self, GupshupClientError> {
        let base = settings.api_base.trim_end_matches('/');
        let parse = |path: String| {
            Url::parse(&path)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| GupshupClientError::BadApiBase(settings.api_base.clone()))
        };
        let template_url = parse(format!("{base}/wa/api/v1/template/msg"))?;
        let text_url = parse(format!("{base}/wa/api/v1/msg"))?;
        let templates_url = parse(format!("{base}/wa/app/{}/template", settings.app_id))?;
        let read_base = parse(format!("{base}/wa/app/{}/msg/", settings.app_id))?;
        let mut apikey =
            HeaderValue::from_str(&settings.api_key).map_err(|_| GupshupClientError::BadApiKey)?;
        apikey.set_sensitive(true);
        let max_in_flight = settings.max_in_flight.max(1);
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .http1_only()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(max_in_flight)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("tiercast/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(GupshupClient {
            http,
            template_url,
            text_url,
            templates_url,
            read_base,
            apikey,
            source: digits(&settings.source),
            app_name: settings.app_name,
            permits: Semaphore::new(max_in_flight),
        })
    }

    async fn execute(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), SendError> {
        let _permit = self.permits.acquire().await.ok();
        self.request(req).await
    }

    /// One request, now: the caller holds an in-flight permit.
    async fn request(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), SendError> {
        let resp = req
            .header(APIKEY.clone(), self.apikey.clone())
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| SendError::Transport {
            message: error_chain(&e),
            timeout: e.is_timeout(),
            maybe_sent: true,
        })?;
        Ok((status, body.to_vec()))
    }

    /// Posts a send form and reads Gupshup's answer.
    async fn send_form(&self, url: &Url, form: &[(&str, &str)]) -> Result<Accepted, SendError> {
        let (status, body) = self.execute(self.http.post(url.clone()).form(form)).await?;
        parse_send_answer(status, &body)
    }

    /// A session message (free-form, inside the window) to `msg`: the form every one shares,
    /// plus `extra` fields.
    async fn send_session(
        &self,
        to: &str,
        message: &serde_json::Value,
        extra: &[(&str, &str)],
    ) -> Result<Accepted, SendError> {
        let message = message.to_string();
        let to = digits(to);
        let mut form = vec![
            ("channel", "whatsapp"),
            ("source", self.source.as_str()),
            ("src.name", self.app_name.as_str()),
            ("destination", to.as_str()),
            ("message", message.as_str()),
        ];
        form.extend_from_slice(extra);
        self.send_form(&self.text_url, &form).await
    }

    /// The form of a template send, from a message rendered for Meta.
    fn template_form(&self, m: &TemplateMessage) -> Result<Vec<(&'static str, String)>, SendError> {
        let Some(id) = m.template_id.as_deref().filter(|id| !id.is_empty()) else {
            // Without Gupshup's UUID the template cannot be addressed at all: the campaign's
            // template is unknown to this provider (132001 pauses the campaign).
            return Err(SendError::Api {
                http_status: 0,
                code: 132001,
                subcode: None,
                message: format!(
                    "template {} ({}) has no Gupshup template id; run `tiercast templates sync`",
                    m.template_name, m.language
                ),
                details: None,
                fbtrace_id: None,
            });
        };
        let parts = GupshupParts::from_components(&m.components);
        let mut form = vec![
            ("channel", "whatsapp".to_string()),
            ("source", self.source.clone()),
            ("src.name", self.app_name.clone()),
            ("destination", digits(&m.to)),
            (
                "template",
                json!({ "id": id, "params": parts.params }).to_string(),
            ),
        ];
        if let Some(message) = parts.message {
            form.push(("message", message.to_string()));
        }
        if !parts.postbacks.is_empty() {
            form.push(("postbackTexts", Value::Array(parts.postbacks).to_string()));
        }
        Ok(form)
    }
}

/// Meta `components` translated into Gupshup's template send fields.
#[derive(Debug, Default, PartialEq)]
struct GupshupParts {
    /// Text values in order of appearance: header text, body, then button parameters (URL
    /// suffix, coupon code, OTP), as Gupshup's flattened template `data` lists them.
    params: Vec<String>,
    /// `message` for a media header: `{"type":"image","image":{"link":…}}`.
    message: Option<Value>,
    /// `postbackTexts`: `[{"index": <button index>, "text": <payload>}]`.
    postbacks: Vec<Value>,
}

impl GupshupParts {
    fn from_components(components: &Components) -> Self {
        let mut out = GupshupParts::default();
        for c in components.iter() {
            // Payloads only come in buttons; Gupshup wants the button's index as a number.
            let (parameters, button_index) = match c {
                Component::Header { parameters } | Component::Body { parameters } => {
                    (parameters, 0)
                }
                Component::Button {
                    index, parameters, ..
                } => (parameters, index.parse::<u64>().unwrap_or(0)),
            };
            for p in parameters {
                match p {
                    Parameter::Image { image: media } => {
                        out.message = Some(media_message("image", media))
                    }
                    Parameter::Video { video: media } => {
                        out.message = Some(media_message("video", media))
                    }
                    Parameter::Document { document: media } => {
                        out.message = Some(media_message("document", media))
                    }
                    Parameter::Payload { payload } => out.postbacks.push(json!({
                        "index": button_index,
                        "text": payload,
                    })),
                    Parameter::Text { text, .. } | Parameter::CouponCode { coupon_code: text } => {
                        out.params.push(text.clone())
                    }
                }
            }
        }
        out
    }
}

/// `{"type":"image","image":{"link":…}}`: a media header as Gupshup's `message` field.
fn media_message(kind: &str, media: &MediaLink) -> Value {
    json!({ "type": kind, kind: { "link": media.link } })
}

/// `{"status":"submitted"|"success","messageId":…}` or `{"status":"error","message":…}`.
#[derive(Deserialize)]
struct SendAnswer {
    #[serde(default)]
    status: Option<String>,
    #[serde(default, rename = "messageId")]
    message_id: Option<String>,
    #[serde(default)]
    message: Option<Value>,
}

/// Reads a send answer whatever its content type (Gupshup documents `text/html` for JSON).
fn parse_send_answer(status: StatusCode, body: &[u8]) -> Result<Accepted, SendError> {
    let parsed: Option<SendAnswer> = serde_json::from_slice(body).ok();
    let Some(answer) = parsed else {
        return Err(http_error(status, body));
    };
    let is_error = answer
        .status
        .as_deref()
        .is_some_and(|s| s.eq_ignore_ascii_case("error"));
    if is_error || !status.is_success() {
        return match answer.message {
            Some(m) => Err(SendError::Gupshup {
                http_status: status.as_u16(),
                message: match m {
                    Value::String(s) => s,
                    other => other.to_string(),
                },
            }),
            None => Err(http_error(status, body)),
        };
    }
    match answer.message_id.filter(|id| !id.trim().is_empty()) {
        Some(id) => Ok(Accepted {
            wamid: id,
            wa_id: None,
            message_status: None,
        }),
        // A 2xx without an id may still mean "submitted": ambiguous, never resent blindly.
        None => Err(http_error(status, body)),
    }
}

/// E.164 digits without `+` or spaces, as every Gupshup number field wants.
pub fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

// --- template list --------------------------------------------------------------------------

/// `{"status":"success","templates":[…]}`
#[derive(Deserialize)]
struct TemplateList {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    templates: Vec<Value>,
    #[serde(default)]
    message: Option<String>,
}

/// `containerMeta`, a JSON string inside each template: its structured parts.
#[derive(Deserialize, Default)]
struct ContainerMeta {
    #[serde(default)]
    header: Option<String>,
    /// The body.
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    footer: Option<String>,
    #[serde(default)]
    buttons: Vec<Value>,
}

fn str_of(v: &Value, k: &str) -> Option<String> {
    match v.get(k)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One template of Gupshup's list as a [`TemplateDef`]: `id` is Gupshup's UUID (what a send
/// names), `name` the Meta template name (`elementName`). The structure comes from
/// `containerMeta`; without it, the flattened `data` (minus its ` | [button]` parts) is taken as
/// the body, which keeps the placeholders in the order Gupshup's `params` follow. `None` when the
/// entry has no name or language.
pub fn template_from_gupshup(t: &Value) -> Option<TemplateDef> {
    let name = str_of(t, "elementName").filter(|s| !s.is_empty())?;
    let language = str_of(t, "languageCode").filter(|s| !s.is_empty())?;
    let meta: ContainerMeta = str_of(t, "containerMeta")
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    let template_type = str_of(t, "templateType")
        .unwrap_or_else(|| "TEXT".into())
        .to_ascii_uppercase();
    let component = |kind: ComponentKind, format: Option<HeaderFormat>, text: Option<String>| {
        TemplateComponent {
            kind,
            format,
            text,
            example: None,
            buttons: Vec::new(),
        }
    };
    let mut components = Vec::new();
    match template_type.as_str() {
        "TEXT" => {
            if let Some(h) = meta.header.clone().filter(|h| !h.is_empty()) {
                components.push(component(
                    ComponentKind::Header,
                    Some(HeaderFormat::Text),
                    Some(h),
                ));
            }
        }
        "IMAGE" | "VIDEO" | "DOCUMENT" | "LOCATION" => components.push(component(
            ComponentKind::Header,
            Some(HeaderFormat::from(template_type.clone())),
            None,
        )),
        // Carousels, catalogs, LTO, flows…: kept as a component kind tiercast cannot fill, so
        // a campaign on it refuses to start instead of sending something wrong.
        other => components.push(component(
            ComponentKind::Other(other.to_string()),
            None,
            None,
        )),
    }
    let body = meta.data.clone().or_else(|| {
        str_of(t, "data").map(|d| match d.find(" | [") {
            Some(i) => d[..i].to_string(),
            None => d,
        })
    });
    if let Some(b) = body {
        components.push(component(ComponentKind::Body, None, Some(b)));
    }
    if let Some(f) = meta.footer.filter(|f| !f.is_empty()) {
        components.push(component(ComponentKind::Footer, None, Some(f)));
    }
    let buttons: Vec<TemplateButton> = meta
        .buttons
        .iter()
        .filter_map(|b| {
            Some(TemplateButton {
                kind: ButtonKind::from(str_of(b, "type")?),
                text: str_of(b, "text"),
                url: str_of(b, "url"),
                phone_number: str_of(b, "phone_number"),
                example: None,
            })
        })
        .collect();
    if !buttons.is_empty() {
        components.push(TemplateComponent {
            buttons,
            ..component(ComponentKind::Buttons, None, None)
        });
    }
    Some(TemplateDef {
        id: str_of(t, "id"),
        name,
        language,
        category: str_of(t, "category").unwrap_or_default(),
        status: str_of(t, "status").unwrap_or_default().to_ascii_uppercase(),
        quality: str_of(t, "quality"),
        parameter_format: ParameterFormat::default(),
        components,
        previous_category: None,
        correct_category: None,
        category_change_at: None,
        rejected_reason: None,
    })
}

impl Provider for GupshupClient {
    /// Template creation through Gupshup goes through its partner API (app tokens), which
    /// tiercast does not speak: create the template in Gupshup's dashboard, then `templates
    /// sync`.
    async fn create_template(
        &self,
        _request: &serde_json::Value,
    ) -> Result<CreatedTemplate, SendError> {
        Err(SendError::Gupshup {
            http_status: 0,
            message: "creating templates on a gupshup line is not supported; create it in \
                      Gupshup's dashboard and run `tiercast templates sync`"
                .into(),
        })
    }

    async fn send_template(&self, m: &TemplateMessage) -> Result<Accepted, SendError> {
        let form = self.template_form(m)?;
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_form(&self.template_url, &pairs).await
    }

    async fn send_template_if<G: Future<Output = bool> + Send>(
        &self,
        m: &TemplateMessage,
        go: G,
    ) -> Result<Option<Accepted>, SendError> {
        let form = self.template_form(m)?;
        let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let req = self.http.post(self.template_url.clone()).form(&pairs);
        let _permit = self.permits.acquire().await.ok();
        if !go.await {
            return Ok(None);
        }
        let (status, body) = self.request(req).await?;
        parse_send_answer(status, &body).map(Some)
    }

    async fn send_text(&self, to: &str, body: &str) -> Result<Accepted, SendError> {
        let message = json!({ "type": "text", "text": body });
        self.send_session(to, &message, &[("disablePreview", "true")])
            .await
    }

    /// Session media by link (reference §1.2): `image` with `originalUrl` / `previewUrl`,
    /// documents as `file` with `url` and `filename`, `audio` and `video` with `url`.
    async fn send_media(&self, to: &str, media: &Media) -> Result<Accepted, SendError> {
        let link = media.link.as_str();
        let mut message = match media.kind {
            MediaKind::Image => json!({ "type": "image", "originalUrl": link, "previewUrl": link }),
            MediaKind::Document => json!({ "type": "file", "url": link }),
            MediaKind::Audio => json!({ "type": "audio", "url": link }),
            MediaKind::Video => json!({ "type": "video", "url": link }),
        };
        if let Some(caption) = &media.caption {
            message["caption"] = json!(caption);
        }
        if let Some(filename) = &media.filename {
            message["filename"] = json!(filename);
        }
        self.send_session(to, &message, &[]).await
    }

    async fn mark_read(&self, wamid: &str) -> Result<(), SendError> {
        let url = self
            .read_base
            .join(&format!("{}/read", urlencode_segment(wamid)))
            .map_err(|_| http_error(StatusCode::BAD_REQUEST, wamid.as_bytes()))?;
        let (status, body) = self.execute(self.http.put(url)).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(parse_send_answer(status, &body)
                .err()
                .unwrap_or_else(|| http_error(status, &body)))
        }
    }

    async fn list_templates(&self) -> Result<Vec<TemplateDef>, SendError> {
        let (status, body) = self
            .execute(self.http.get(self.templates_url.clone()))
            .await?;
        let list: TemplateList = match serde_json::from_slice(&body) {
            Ok(l) => l,
            Err(_) => return Err(http_error(status, &body)),
        };
        let failed = list
            .status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("error"));
        if failed || !status.is_success() {
            return Err(match list.message {
                Some(message) => SendError::Gupshup {
                    http_status: status.as_u16(),
                    message,
                },
                None => http_error(status, &body),
            });
        }
        let mut out = Vec::with_capacity(list.templates.len());
        for t in &list.templates {
            match template_from_gupshup(t) {
                Some(def) => out.push(def),
                None => tracing::warn!("skipping unreadable template in Gupshup listing"),
            }
        }
        Ok(out)
    }
}

/// A message id as one URL path segment (ids are URL-safe in practice; this keeps a `/` or
/// `?` from changing the path).
fn urlencode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
