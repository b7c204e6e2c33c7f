//! Meta WhatsApp Cloud API client: sends templates and text, marks messages read and lists the
//! account's templates (reference `meta-cloud-api.md` §1, §2.1, §5.1).
//!
//! This module owns the wire format (request bodies, success and Graph error envelopes) and the
//! mapping of HTTP / transport failures onto [`SendError`]. It never decides what a failure means
//! for a contact: that is `domain::error_class`.
//!
//! Sends use HTTP/1.1 keep-alive with a pool of `max_in_flight` connections and a semaphore of
//! the same size: with HTTP/2 every request would share one connection and queue behind the
//! server's stream limit, while at 1,000 msg/s × ~300 ms latency we want ~300 parallel requests.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::future::Future;
use tokio::sync::Semaphore;

use super::{
    error_chain, http_error, transport_error, Accepted, AccountLimits, CreatedTemplate, Media,
    Provider, SendError, TemplateMessage,
};
use crate::domain::template::{Components, TemplateDef};

/// Settings of one Meta line.
#[derive(Clone)]
pub struct MetaSettings {
    /// e.g. `https://graph.facebook.com/v23.0` (tests point it at a fake).
    pub api_base: String,
    pub phone_number_id: String,
    pub waba_id: String,
    /// Secret: never logged (see the `Debug` impl).
    pub access_token: String,
    pub connect_timeout: Duration,
    /// Whole request, from sending to the last body byte.
    pub request_timeout: Duration,
    /// Concurrent requests at most; also the size of the keep-alive pool.
    pub max_in_flight: usize,
}

impl fmt::Debug for MetaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaSettings")
            .field("api_base", &self.api_base)
            .field("phone_number_id", &self.phone_number_id)
            .field("waba_id", &self.waba_id)
            .field("access_token", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// A [`MetaClient`] could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum MetaClientError {
    #[error("api_base `{0}` is not a valid http(s) URL")]
    BadApiBase(String),
    #[error("the access token contains characters not allowed in an HTTP header")]
    BadToken,
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

pub struct MetaClient {
    http: reqwest::Client,
    /// `{api_base}/{phone_number_id}/messages`
    messages_url: Url,
    /// `{api_base}/{waba_id}/message_templates`
    templates_url: Url,
    /// `{api_base}/{phone_number_id}?fields=…` (messaging limit and throughput)
    limits_url: Url,
    /// Marked sensitive so reqwest/hyper never print it.
    auth: HeaderValue,
    permits: Semaphore,
    max_in_flight: usize,
}

impl fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaClient")
            .field("messages_url", &self.messages_url.as_str())
            .field("templates_url", &self.templates_url.as_str())
            .field("access_token", &"<redacted>")
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// Fields asked of the template listing (reference §5.1).
const TEMPLATE_FIELDS: &str =
    "id,name,language,status,category,previous_category,components,parameter_format,quality_score,rejected_reason";
/// A WABA holds at most 6,000 templates, i.e. 60 pages of 100: this only stops a looping fake.
const MAX_TEMPLATE_PAGES: usize = 1000;
/// Fields asked of the phone number for tier tracking (reference §4.1, §4.2).
const LIMIT_FIELDS: &str =
    "whatsapp_business_manager_messaging_limit,messaging_limit_tier,throughput";

impl MetaClient {
    pub fn new(settings: MetaSettings) -> Result<Self, MetaClientError> {
        let base = settings.api_base.trim_end_matches('/');
        let parse = |path: String| {
            Url::parse(&path)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| MetaClientError::BadApiBase(settings.api_base.clone()))
        };
        let messages_url = parse(format!("{base}/{}/messages", settings.phone_number_id))?;
        let templates_url = parse(format!("{base}/{}/message_templates", settings.waba_id))?;
        let limits_url = parse(format!(
            "{base}/{}?fields={LIMIT_FIELDS}",
            settings.phone_number_id
        ))?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", settings.access_token))
            .map_err(|_| MetaClientError::BadToken)?;
        auth.set_sensitive(true);
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
        Ok(MetaClient {
            http,
            messages_url,
            templates_url,
            limits_url,
            auth,
            permits: Semaphore::new(max_in_flight),
            max_in_flight,
        })
    }

    /// Run one request under the in-flight limit and read the whole answer.
    async fn execute(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), SendError> {
        // The semaphore is never closed; if it were, going on without a permit is harmless.
        let _permit = self.permits.acquire().await.ok();
        self.request(req).await
    }

    /// One request, now: the caller holds an in-flight permit.
    async fn request(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Vec<u8>), SendError> {
        let resp = req
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(transport_error)?;
        let status = resp.status();
        // The server answered, so the request was received: a failure now is never "not sent".
        let body = resp.bytes().await.map_err(|e| SendError::Transport {
            message: error_chain(&e),
            timeout: e.is_timeout(),
            maybe_sent: true,
        })?;
        Ok((status, body.to_vec()))
    }

    async fn post_message<B: Serialize + Sync>(
        &self,
        body: &B,
    ) -> Result<(StatusCode, Vec<u8>), SendError> {
        self.execute(self.http.post(self.messages_url.clone()).json(body))
            .await
    }

    async fn send_message<B: Serialize + Sync>(&self, body: &B) -> Result<Accepted, SendError> {
        let (status, body) = self.post_message(body).await?;
        accepted_from(status, &body)
    }

    fn template_request<'a>(m: &'a TemplateMessage) -> TemplateRequest<'a> {
        TemplateRequest {
            messaging_product: "whatsapp",
            recipient_type: "individual",
            to: &m.to,
            kind: "template",
            biz_opaque_callback_data: &m.callback_data,
            template: TemplatePayload {
                name: &m.template_name,
                language: Language {
                    policy: "deterministic",
                    code: &m.language,
                },
                components: &m.components,
            },
        }
    }
}

/// The message id (and recipient) of a send's answer, or the error it holds.
fn accepted_from(status: StatusCode, body: &[u8]) -> Result<Accepted, SendError> {
    if !status.is_success() {
        return Err(error_from_answer(status, body));
    }
    let parsed: SendResponse =
        serde_json::from_slice(body).map_err(|_| http_error(status, body))?;
    let mut messages = parsed.messages.into_iter();
    // A 2xx without a message id may still mean the message was taken: the caller treats
    // this `Http` error as ambiguous.
    let message = messages.next().ok_or_else(|| http_error(status, body))?;
    Ok(Accepted {
        wamid: message.id,
        wa_id: parsed.contacts.into_iter().find_map(|c| c.wa_id),
        message_status: message.message_status,
    })
}

impl MetaClient {
    /// The URL of the page after `page`, if any. Follows `paging.next` only on our own origin so
    /// the bearer token never goes to a host named by a response body; otherwise rebuilds the
    /// URL from the `after` cursor.
    fn next_page_url(&self, current: &Url, paging: Option<Paging>) -> Option<Url> {
        let paging = paging?;
        // Graph includes `next` only when there are more pages.
        let next = paging.next?;
        let same_origin = Url::parse(&next)
            .ok()
            .filter(|u| u.origin() == self.templates_url.origin());
        let url = match same_origin {
            Some(u) => u,
            None => {
                let after = paging.cursors.and_then(|c| c.after)?;
                let mut u = first_templates_page(&self.templates_url);
                u.query_pairs_mut().append_pair("after", &after);
                u
            }
        };
        (url != *current).then_some(url)
    }
}

fn first_templates_page(base: &Url) -> Url {
    let mut u = base.clone();
    u.query_pairs_mut()
        .append_pair("limit", "100")
        .append_pair("fields", TEMPLATE_FIELDS);
    u
}

// --- request bodies (borrowed: no intermediate JSON trees on the hot path) --------------------

#[derive(Serialize)]
struct TemplateRequest<'a> {
    messaging_product: &'static str,
    recipient_type: &'static str,
    to: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    biz_opaque_callback_data: &'a str,
    template: TemplatePayload<'a>,
}

#[derive(Serialize)]
struct TemplatePayload<'a> {
    name: &'a str,
    language: Language<'a>,
    #[serde(skip_serializing_if = "no_components")]
    components: &'a Components,
}

#[derive(Serialize)]
struct Language<'a> {
    /// The only policy that exists; Meta's OpenAPI lists it as required.
    policy: &'static str,
    code: &'a str,
}

fn no_components(c: &&Components) -> bool {
    c.is_empty()
}

#[derive(Serialize)]
struct TextRequest<'a> {
    messaging_product: &'static str,
    recipient_type: &'static str,
    to: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    text: TextBody<'a>,
}

#[derive(Serialize)]
struct TextBody<'a> {
    preview_url: bool,
    body: &'a str,
}

#[derive(Serialize)]
struct MediaRequest<'a> {
    messaging_product: &'static str,
    recipient_type: &'static str,
    to: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    /// One entry, keyed by the type: `"image": {…}`.
    #[serde(flatten)]
    media: std::collections::BTreeMap<&'static str, MediaObject<'a>>,
}

#[derive(Serialize)]
struct MediaObject<'a> {
    link: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caption: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a str>,
}

#[derive(Serialize)]
struct ReadRequest<'a> {
    messaging_product: &'static str,
    status: &'static str,
    message_id: &'a str,
}

// --- response bodies ----------------------------------------------------------------------------

#[derive(Deserialize)]
struct SendResponse {
    #[serde(default)]
    contacts: Vec<ContactOut>,
    #[serde(default)]
    messages: Vec<MessageOut>,
}

#[derive(Deserialize)]
struct ContactOut {
    #[serde(default)]
    wa_id: Option<String>,
}

#[derive(Deserialize)]
struct MessageOut {
    id: String,
    #[serde(default)]
    message_status: Option<String>,
}

#[derive(Deserialize)]
struct GraphErrorEnvelope {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    code: i64,
    #[serde(default)]
    error_subcode: Option<i64>,
    /// Usually `{"details": …}`; kept loose because older Graph errors use other shapes.
    #[serde(default)]
    error_data: Option<Value>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

#[derive(Deserialize)]
struct TemplatePage {
    #[serde(default)]
    data: Vec<Value>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    cursors: Option<Cursors>,
}

#[derive(Deserialize)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

// --- error mapping ------------------------------------------------------------------------------

/// A non-2xx answer: the Graph error envelope when there is one, else the status and a snippet.
fn error_from_answer(status: StatusCode, body: &[u8]) -> SendError {
    match serde_json::from_slice::<GraphErrorEnvelope>(body) {
        Ok(GraphErrorEnvelope { error }) => SendError::Api {
            http_status: status.as_u16(),
            code: error.code,
            subcode: error.error_subcode,
            message: error.message,
            details: error
                .error_data
                .as_ref()
                .and_then(|d| d.get("details"))
                .and_then(Value::as_str)
                .map(str::to_string),
            fbtrace_id: error.fbtrace_id,
        },
        Err(_) => http_error(status, body),
    }
}

impl Provider for MetaClient {
    async fn send_template(&self, m: &TemplateMessage) -> Result<Accepted, SendError> {
        self.send_message(&Self::template_request(m)).await
    }

    async fn send_template_if<G: Future<Output = bool> + Send>(
        &self,
        m: &TemplateMessage,
        go: G,
    ) -> Result<Option<Accepted>, SendError> {
        let req = self
            .http
            .post(self.messages_url.clone())
            .json(&Self::template_request(m));
        let _permit = self.permits.acquire().await.ok();
        if !go.await {
            return Ok(None);
        }
        let (status, body) = self.request(req).await?;
        accepted_from(status, &body).map(Some)
    }

    async fn send_text(&self, to: &str, body: &str) -> Result<Accepted, SendError> {
        self.send_message(&TextRequest {
            messaging_product: "whatsapp",
            recipient_type: "individual",
            to,
            kind: "text",
            text: TextBody {
                preview_url: false,
                body,
            },
        })
        .await
    }

    /// `{"type": "image", "image": {"link", "caption"}}`, and likewise for documents (with
    /// `filename`), audio and video (reference §1.2).
    async fn send_media(&self, to: &str, media: &Media) -> Result<Accepted, SendError> {
        self.send_message(&MediaRequest {
            messaging_product: "whatsapp",
            recipient_type: "individual",
            to,
            kind: media.kind.as_str(),
            media: [(
                media.kind.as_str(),
                MediaObject {
                    link: &media.link,
                    caption: media.caption.as_deref(),
                    filename: media.filename.as_deref(),
                },
            )]
            .into_iter()
            .collect(),
        })
        .await
    }

    async fn mark_read(&self, wamid: &str) -> Result<(), SendError> {
        let (status, body) = self
            .post_message(&ReadRequest {
                messaging_product: "whatsapp",
                status: "read",
                message_id: wamid,
            })
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(error_from_answer(status, &body))
        }
    }

    async fn create_template(&self, request: &Value) -> Result<CreatedTemplate, SendError> {
        let (status, body) = self
            .execute(self.http.post(self.templates_url.clone()).json(request))
            .await?;
        if !status.is_success() {
            return Err(error_from_answer(status, &body));
        }
        // Graph writes the id as a string; accept a number too.
        let mut v: Value = serde_json::from_slice(&body).map_err(|_| http_error(status, &body))?;
        if let Some(id) = v
            .get("id")
            .filter(|id| id.is_number())
            .map(ToString::to_string)
        {
            v["id"] = Value::String(id);
        }
        serde_json::from_value(v).map_err(|_| http_error(status, &body))
    }

    async fn list_templates(&self) -> Result<Vec<TemplateDef>, SendError> {
        let mut out = Vec::new();
        let mut url = first_templates_page(&self.templates_url);
        for _ in 0..MAX_TEMPLATE_PAGES {
            let (status, body) = self.execute(self.http.get(url.clone())).await?;
            if !status.is_success() {
                return Err(error_from_answer(status, &body));
            }
            let page: TemplatePage =
                serde_json::from_slice(&body).map_err(|_| http_error(status, &body))?;
            let empty = page.data.is_empty();
            for item in page.data {
                // One odd template must not hide all the others.
                match serde_json::from_value::<TemplateDef>(item) {
                    Ok(def) => out.push(def),
                    Err(e) => tracing::warn!(error = %e, "skipping unreadable template in listing"),
                }
            }
            if empty {
                break;
            }
            match self.next_page_url(&url, page.paging) {
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(out)
    }

    async fn account_limits(&self) -> Result<Option<AccountLimits>, SendError> {
        let (status, body) = self.execute(self.http.get(self.limits_url.clone())).await?;
        if !status.is_success() {
            return Err(error_from_answer(status, &body));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|_| http_error(status, &body))?;
        // Either field may be missing: the deprecated one on new accounts, the new one on old
        // API versions. `TIER_NOT_SET` and unknown words read as no tier.
        let tier = [
            "whatsapp_business_manager_messaging_limit",
            "messaging_limit_tier",
        ]
        .iter()
        .filter_map(|f| v.get(*f).and_then(Value::as_str))
        .find_map(|t| t.parse::<crate::domain::Tier>().ok());
        let throughput_level = v
            .pointer("/throughput/level")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Some(AccountLimits {
            tier,
            throughput_level,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::error_class::ErrorClass;
    use crate::domain::template::{render_components, ContactFields};
    use serde_json::json;
    use std::collections::BTreeMap;
    use wiremock::matchers::{
        body_json, header, method, path, query_param, query_param_is_missing,
    };
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const PHONE_ID: &str = "106540352242922";
    const WABA: &str = "102290129340398";
    const TOKEN: &str = "EAAG-secret-token";

    fn settings(server: &MockServer) -> MetaSettings {
        MetaSettings {
            api_base: format!("{}/v23.0", server.uri()),
            phone_number_id: PHONE_ID.into(),
            waba_id: WABA.into(),
            access_token: TOKEN.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_in_flight: 8,
        }
    }

    fn client(server: &MockServer) -> MetaClient {
        MetaClient::new(settings(server)).expect("client builds")
    }

    fn messages_path() -> String {
        format!("/v23.0/{PHONE_ID}/messages")
    }

    fn accepted_body() -> Value {
        json!({
            "messaging_product": "whatsapp",
            "contacts": [ { "input": "+5511999990000", "wa_id": "5511999990000" } ],
            "messages": [ { "id": "wamid.HBgL123", "message_status": "accepted" } ]
        })
    }

    fn message(components: Value) -> TemplateMessage {
        TemplateMessage {
            to: "+5511999990000".into(),
            template_name: "renewal_reminder".into(),
            language: "pt_BR".into(),
            template_id: None,
            components: serde_json::from_value(components).expect("components"),
            callback_data: "att-42".into(),
        }
    }

    fn expected_body(components: Option<Value>) -> Value {
        let mut template = json!({
            "name": "renewal_reminder",
            "language": { "policy": "deterministic", "code": "pt_BR" }
        });
        if let Some(c) = components {
            template["components"] = c;
        }
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+5511999990000",
            "type": "template",
            "biz_opaque_callback_data": "att-42",
            "template": template
        })
    }

    fn contact() -> ContactFields {
        ContactFields {
            phone: "+5511999990000".into(),
            name: Some("Ana".into()),
            email: Some("ana@example.com".into()),
            fields: [("plan".to_string(), "Gold".to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn mapping(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Render `def` with `map`, send it, and check the exact body that reached the server.
    async fn send_and_check(def: Value, map: &[(&str, &str)], components: Value) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(header("content-type", "application/json"))
            .and(body_json(expected_body(Some(components))))
            .respond_with(ResponseTemplate::new(200).set_body_json(accepted_body()))
            .expect(1)
            .mount(&server)
            .await;
        let def: TemplateDef = serde_json::from_value(def).expect("template parses");
        let rendered = render_components(&def, &mapping(map), &contact()).expect("renders");
        let ok = client(&server)
            .send_template(&message(rendered))
            .await
            .expect("accepted");
        assert_eq!(
            ok,
            Accepted {
                wamid: "wamid.HBgL123".into(),
                wa_id: Some("5511999990000".into()),
                message_status: Some("accepted".into()),
            }
        );
    }

    #[tokio::test]
    async fn positional_template_body() {
        send_and_check(
            json!({ "name": "renewal_reminder", "language": "pt_BR", "components": [
                { "type": "BODY", "text": "Oi {{1}}, seu plano {{2}} tem {{3}} de desconto" } ] }),
            &[("1", "name"), ("2", "field:plan"), ("3", "literal:30%")],
            json!([{ "type": "body", "parameters": [
                { "type": "text", "text": "Ana" },
                { "type": "text", "text": "Gold" },
                { "type": "text", "text": "30%" } ] }]),
        )
        .await;
    }

    #[tokio::test]
    async fn named_template_body() {
        send_and_check(
            json!({ "name": "renewal_reminder", "language": "pt_BR", "parameter_format": "NAMED",
                "components": [ { "type": "BODY", "text": "Oi {{first_name}} ({{mail}})" } ] }),
            &[("first_name", "name"), ("mail", "email")],
            json!([{ "type": "body", "parameters": [
                { "type": "text", "parameter_name": "first_name", "text": "Ana" },
                { "type": "text", "parameter_name": "mail", "text": "ana@example.com" } ] }]),
        )
        .await;
    }

    #[tokio::test]
    async fn media_header_and_buttons() {
        send_and_check(
            json!({ "name": "renewal_reminder", "language": "pt_BR", "components": [
                { "type": "HEADER", "format": "DOCUMENT" },
                { "type": "BODY", "text": "Oi {{1}}" },
                { "type": "BUTTONS", "buttons": [
                    { "type": "QUICK_REPLY", "text": "YES" },
                    { "type": "QUICK_REPLY", "text": "STOP" },
                    { "type": "URL", "text": "Pay", "url": "https://pay.example/{{1}}" } ] } ] }),
            &[
                ("header", "literal:https://cdn.example/invoice.pdf"),
                ("1", "name"),
                ("button.1", "literal:STOP_PROMOS"),
                ("button.2", "phone"),
            ],
            json!([
                { "type": "header", "parameters": [
                    { "type": "document",
                      "document": { "link": "https://cdn.example/invoice.pdf" } } ] },
                { "type": "body", "parameters": [ { "type": "text", "text": "Ana" } ] },
                { "type": "button", "sub_type": "quick_reply", "index": "1",
                  "parameters": [ { "type": "payload", "payload": "STOP_PROMOS" } ] },
                { "type": "button", "sub_type": "url", "index": "2",
                  "parameters": [ { "type": "text", "text": "+5511999990000" } ] }
            ]),
        )
        .await;
    }

    #[tokio::test]
    async fn template_without_components_omits_the_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .and(body_json(expected_body(None)))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "messaging_product": "whatsapp",
                "messages": [ { "id": "wamid.X" } ] })))
            .expect(1)
            .mount(&server)
            .await;
        let ok = client(&server)
            .send_template(&message(json!([])))
            .await
            .expect("accepted");
        assert_eq!(ok.wamid, "wamid.X");
        assert_eq!(ok.wa_id, None);
        assert_eq!(ok.message_status, None);
    }

    #[tokio::test]
    async fn text_and_mark_read_bodies() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .and(body_json(json!({
                "messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "+5511999990000", "type": "text",
                "text": { "preview_url": false, "body": "Hello" } })))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "messaging_product": "whatsapp",
                "contacts": [ { "input": "+5511999990000", "wa_id": "5511999990000" } ],
                "messages": [ { "id": "wamid.T" } ] })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .and(body_json(json!({
                "messaging_product": "whatsapp", "status": "read", "message_id": "wamid.IN" })))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "success": true })))
            .expect(1)
            .mount(&server)
            .await;
        let c = client(&server);
        let ok = c.send_text("+5511999990000", "Hello").await.expect("sent");
        assert_eq!(ok.wamid, "wamid.T");
        c.mark_read("wamid.IN").await.expect("read");
    }

    #[tokio::test]
    async fn graph_error_envelope() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "error": {
                    "message": "(#130429) Rate limit hit",
                    "type": "OAuthException",
                    "code": 130429,
                    "error_data": { "messaging_product": "whatsapp",
                                    "details": "Cloud API message throughput has been reached." },
                    "error_subcode": 2494055,
                    "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"
                } })))
            .mount(&server)
            .await;
        let err = client(&server)
            .send_template(&message(json!([])))
            .await
            .expect_err("rate limited");
        assert_eq!(
            err,
            SendError::Api {
                http_status: 400,
                code: 130429,
                subcode: Some(2494055),
                message: "(#130429) Rate limit hit".into(),
                details: Some("Cloud API message throughput has been reached.".into()),
                fbtrace_id: Some("Az8or2yhqkZfEZ-_4Qn_Bam".into()),
            }
        );
        assert_eq!(err.classification().class, ErrorClass::Throttled);
    }

    #[tokio::test]
    async fn minimal_error_envelope_and_campaign_class() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({
                "error": { "message": "(#132001) Template name does not exist in the translation",
                           "type": "OAuthException", "code": 132001 } })))
            .mount(&server)
            .await;
        let err = client(&server)
            .send_template(&message(json!([])))
            .await
            .expect_err("no template");
        match &err {
            SendError::Api {
                http_status: 404,
                code: 132001,
                subcode: None,
                details: None,
                fbtrace_id: None,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.classification().class, ErrorClass::Campaign);
    }

    #[tokio::test]
    async fn html_5xx_is_http_and_ambiguous() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(
                ResponseTemplate::new(502)
                    .set_body_raw("<html><body>Bad Gateway</body></html>", "text/html"),
            )
            .mount(&server)
            .await;
        let err = client(&server)
            .send_template(&message(json!([])))
            .await
            .expect_err("502");
        assert_eq!(
            err,
            SendError::Http {
                status: 502,
                body_snippet: "<html><body>Bad Gateway</body></html>".into()
            }
        );
        assert_eq!(err.classification().class, ErrorClass::Ambiguous);
    }

    #[tokio::test]
    async fn unreadable_2xx_is_ambiguous() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "messages": [] })))
            .mount(&server)
            .await;
        let err = client(&server)
            .send_template(&message(json!([])))
            .await
            .expect_err("no id");
        assert!(matches!(err, SendError::Http { status: 200, .. }));
        assert_eq!(err.classification().class, ErrorClass::Ambiguous);
    }

    #[tokio::test]
    async fn slow_answer_is_a_timeout_that_may_have_been_sent() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(accepted_body())
                    .set_delay(Duration::from_secs(3)),
            )
            .mount(&server)
            .await;
        let mut s = settings(&server);
        s.request_timeout = Duration::from_millis(300);
        let err = MetaClient::new(s)
            .expect("client")
            .send_template(&message(json!([])))
            .await
            .expect_err("times out");
        match &err {
            SendError::Transport {
                timeout: true,
                maybe_sent: true,
                ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.classification().class, ErrorClass::Ambiguous);
    }

    #[tokio::test]
    async fn connection_refused_is_not_sent() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let c = MetaClient::new(MetaSettings {
            api_base: format!("http://127.0.0.1:{port}/v23.0"),
            phone_number_id: PHONE_ID.into(),
            waba_id: WABA.into(),
            access_token: TOKEN.into(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            max_in_flight: 1,
        })
        .expect("client");
        let err = c
            .send_template(&message(json!([])))
            .await
            .expect_err("refused");
        match &err {
            SendError::Transport {
                maybe_sent: false, ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.classification().class, ErrorClass::Retryable);
    }

    #[tokio::test]
    async fn template_listing_follows_pages() {
        let server = MockServer::start().await;
        let list_path = format!("/v23.0/{WABA}/message_templates");
        let next = format!(
            "{}{list_path}?limit=100&fields={TEMPLATE_FIELDS}&after=CURSOR2",
            server.uri()
        );
        Mock::given(method("GET"))
            .and(path(list_path.as_str()))
            .and(query_param("limit", "100"))
            .and(query_param("fields", TEMPLATE_FIELDS))
            .and(query_param_is_missing("after"))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [
                    { "id": "1", "name": "hello_world", "language": "en_US", "status": "APPROVED",
                      "category": "UTILITY", "components": [ { "type": "BODY", "text": "Hi" } ] },
                    { "language": "en_US", "status": "APPROVED" }
                ],
                "paging": { "cursors": { "before": "B1", "after": "CURSOR2" }, "next": next } })))
            .expect(1)
            .mount(&server)
            .await;
        // Page 2 names a foreign host in `next`: the client must use the cursor instead.
        Mock::given(method("GET"))
            .and(path(list_path.as_str()))
            .and(query_param("after", "CURSOR2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [ { "id": "2", "name": "promo", "language": "pt_BR", "status": "PAUSED",
                            "category": "MARKETING", "parameter_format": "NAMED",
                            "quality_score": { "score": "RED" }, "components": [] } ],
                "paging": { "cursors": { "before": "B2", "after": "CURSOR3" },
                            "next": "https://evil.example/steal?after=CURSOR3" } })))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(list_path.as_str()))
            .and(query_param("after", "CURSOR3"))
            .and(query_param("limit", "100"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [ { "id": "3", "name": "last", "language": "es", "status": "APPROVED" } ],
                "paging": { "cursors": { "before": "B3", "after": "CURSOR4" } } })))
            .expect(1)
            .mount(&server)
            .await;
        let list = client(&server).list_templates().await.expect("listed");
        let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
        // The nameless entry is skipped, not fatal.
        assert_eq!(names, ["hello_world", "promo", "last"]);
        assert_eq!(list[1].quality.as_deref(), Some("RED"));
    }

    #[tokio::test]
    async fn account_limits_read_either_tier_field_and_the_throughput_level() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("/v23.0/{PHONE_ID}")))
            .and(query_param("fields", LIMIT_FIELDS))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "whatsapp_business_manager_messaging_limit": "TIER_2K",
                "messaging_limit_tier": "TIER_1K",
                "throughput": {"level": "HIGH"},
                "id": PHONE_ID
            })))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/v23.0/{PHONE_ID}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "messaging_limit_tier": "TIER_NOT_SET",
                "id": PHONE_ID
            })))
            .mount(&server)
            .await;
        let c = client(&server);
        let got = c.account_limits().await.unwrap().unwrap();
        assert_eq!(got.tier, Some(crate::domain::Tier::Limited(2_000)));
        assert_eq!(got.throughput_level.as_deref(), Some("HIGH"));
        let got = c.account_limits().await.unwrap().unwrap();
        assert_eq!(got, AccountLimits::default(), "TIER_NOT_SET is no tier");
    }

    #[tokio::test]
    async fn template_creation_posts_the_graph_body() {
        let server = MockServer::start().await;
        let request = json!({
            "name": "spring_offer", "language": "en_US", "category": "MARKETING",
            "parameter_format": "POSITIONAL",
            "components": [
                { "type": "BODY", "text": "Hi {{1}}, welcome.", "example": { "body_text": [["Ann"]] } },
                { "type": "BUTTONS", "buttons": [ { "type": "QUICK_REPLY", "text": "Yes" } ] } ] });
        Mock::given(method("POST"))
            .and(path(format!("/v23.0/{WABA}/message_templates").as_str()))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(body_json(&request))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({ "id": 1689556908129832_i64, "status": "PENDING", "category": "MARKETING" }),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let created = client(&server)
            .create_template(&request)
            .await
            .expect("created");
        assert_eq!(
            created,
            CreatedTemplate {
                id: "1689556908129832".into(),
                status: "PENDING".into(),
                category: Some("MARKETING".into()),
            }
        );
    }

    #[tokio::test]
    async fn template_creation_error_keeps_metas_reason() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "error": { "message": "(#100) Invalid parameter", "type": "OAuthException", "code": 100,
                           "error_subcode": 2388024,
                           "error_data": { "details": "Content in this language already exists" } } })))
            .mount(&server)
            .await;
        let err = client(&server)
            .create_template(&json!({ "name": "x" }))
            .await
            .expect_err("400");
        assert!(
            err.to_string()
                .contains("Content in this language already exists"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn listing_error_is_api_error() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({
                "error": { "message": "Error validating access token", "type": "OAuthException",
                           "code": 190, "fbtrace_id": "x" } })))
            .mount(&server)
            .await;
        let err = client(&server).list_templates().await.expect_err("401");
        assert!(matches!(
            err,
            SendError::Api {
                code: 190,
                http_status: 401,
                ..
            }
        ));
        assert_eq!(err.classification().class, ErrorClass::Campaign);
    }

    #[test]
    fn debug_redacts_the_token() {
        let s = MetaSettings {
            api_base: "https://graph.facebook.com/v23.0".into(),
            phone_number_id: PHONE_ID.into(),
            waba_id: WABA.into(),
            access_token: TOKEN.into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_in_flight: 4,
        };
        assert!(!format!("{s:?}").contains(TOKEN));
        let c = MetaClient::new(s).expect("client");
        assert!(!format!("{c:?}").contains(TOKEN));
    }

    #[test]
    fn bad_settings_are_refused() {
        let s = MetaSettings {
            api_base: "not a url".into(),
            phone_number_id: PHONE_ID.into(),
            waba_id: WABA.into(),
            access_token: TOKEN.into(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_in_flight: 4,
        };
        assert!(matches!(
            MetaClient::new(s.clone()),
            Err(MetaClientError::BadApiBase(_))
        ));
        let s = MetaSettings {
            api_base: "https://graph.facebook.com/v23.0".into(),
            access_token: "bad\ntoken".into(),
            ..s
        };
        assert!(matches!(MetaClient::new(s), Err(MetaClientError::BadToken)));
    }
}
