//! The provider interface the dispatcher and the inbox talk to, and the errors a provider call
//! can end with. Each implementation (Meta Cloud API here; Gupshup and the simulator elsewhere)
//! maps its own failures onto [`SendError`], and [`SendError::classification`] turns every one of
//! them into a hopper decision through the single table of `domain::error_class`.

pub mod gupshup;
pub mod meta;

use std::future::Future;

use crate::domain::error_class::{
    classify_connect_failure, classify_gupshup_rejection, classify_http_without_graph_body,
    classify_meta, classify_transport, Classification, ErrorClass,
};
use crate::domain::template::{Components, TemplateDef};

/// One template send.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateMessage {
    /// E.164 with `+`.
    pub to: String,
    pub template_name: String,
    pub language: String,
    /// The provider's own id of that template variant, from the template sync. Meta addresses
    /// templates by name and language and ignores it; Gupshup sends need it (its UUID).
    pub template_id: Option<String>,
    /// The payload's `template.components` array (see `domain::template::CompiledMapping`);
    /// none sends the key not at all.
    pub components: Components,
    /// Our attempt id; sent as `biz_opaque_callback_data` and echoed by status webhooks.
    pub callback_data: String,
}

/// The kinds of media an agent sends by link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Document,
    Audio,
    Video,
}

impl MediaKind {
    pub const ALL: [MediaKind; 4] = [
        MediaKind::Image,
        MediaKind::Document,
        MediaKind::Audio,
        MediaKind::Video,
    ];

    /// Meta's message `type` (and the key of its object), also the API's field name.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Document => "document",
            MediaKind::Audio => "audio",
            MediaKind::Video => "video",
        }
    }

    /// WhatsApp shows no caption under audio.
    pub fn takes_caption(self) -> bool {
        self != MediaKind::Audio
    }
}

/// Free-form media sent by link: the provider downloads it from `link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub kind: MediaKind,
    /// A public http(s) URL.
    pub link: String,
    /// Images, documents and videos only.
    pub caption: Option<String>,
    /// Documents only: the file name the contact sees.
    pub filename: Option<String>,
}

/// The provider took the message (not "delivered": that comes by webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub wamid: String,
    /// Meta's canonical id of the recipient; may differ from the `to` we sent.
    pub wa_id: Option<String>,
    /// `accepted`, `held_for_quality_assessment`, `paused`; absent means accepted.
    pub message_status: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The provider answered with a Graph error envelope.
    #[error("provider error {code}{}: {message}{} (HTTP {http_status})",
        subcode.map(|s| format!("/{s}")).unwrap_or_default(),
        details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Api {
        http_status: u16,
        code: i64,
        subcode: Option<i64>,
        message: String,
        details: Option<String>,
        fbtrace_id: Option<String>,
    },
    /// Gupshup's `{"status":"error","message":…}`: it has no code, only the message.
    #[error("gupshup rejected the request: {message} (HTTP {http_status})")]
    Gupshup { http_status: u16, message: String },
    /// An HTTP answer whose body is not a Graph error (a proxy page, an unreadable 2xx…).
    #[error("HTTP {status} without a provider error body: {body_snippet}")]
    Http { status: u16, body_snippet: String },
    /// No HTTP answer. `maybe_sent` is false only when the request certainly never left
    /// (connection not established); timeouts and resets after writing may have been processed.
    #[error("transport error{}: {message}", if *timeout { " (timeout)" } else { "" })]
    Transport {
        message: String,
        timeout: bool,
        maybe_sent: bool,
    },
}

impl SendError {
    pub fn classification(&self) -> Classification {
        match self {
            SendError::Api {
                http_status, code, ..
            } => {
                let c = classify_meta(*code);
                // An unknown code on a 5xx may have been processed: treat it as ambiguous
                // rather than risk a duplicate.
                if !c.known && *http_status >= 500 {
                    Classification {
                        class: ErrorClass::Ambiguous,
                        ..c
                    }
                } else {
                    c
                }
            }
            SendError::Gupshup {
                http_status,
                message,
            } => classify_gupshup_rejection(*http_status, message),
            SendError::Http { status, .. } => classify_http_without_graph_body(*status),
            SendError::Transport {
                maybe_sent: true, ..
            } => classify_transport(),
            SendError::Transport {
                maybe_sent: false, ..
            } => classify_connect_failure(),
        }
    }

    /// The `code` label of `tiercast_send_failures_total`: the Meta code, `http_<status>`,
    /// `timeout`, `transport` or `connect`; Gupshup rejections are `gupshup_<status>`.
    pub fn code_label(&self) -> String {
        match self {
            SendError::Api { code, .. } => code.to_string(),
            SendError::Gupshup { http_status, .. } => format!("gupshup_{http_status}"),
            SendError::Http { status, .. } => format!("http_{status}"),
            SendError::Transport { timeout: true, .. } => "timeout".to_string(),
            SendError::Transport {
                maybe_sent: true, ..
            } => "transport".to_string(),
            SendError::Transport { .. } => "connect".to_string(),
        }
    }
}

/// A messaging provider for one line. Futures are `Send` so the dispatcher can spawn them.
pub trait Provider: Send + Sync {
    /// Send an approved template (business-initiated; allowed outside the service window).
    fn send_template(
        &self,
        m: &TemplateMessage,
    ) -> impl Future<Output = Result<Accepted, SendError>> + Send;

    /// [`Provider::send_template`], asking `go` at the last moment: once the request holds
    /// one of the line's in-flight permits, before it leaves. When `go` answers false
    /// nothing is sent and the answer is `Ok(None)`.
    fn send_template_if<G: Future<Output = bool> + Send>(
        &self,
        m: &TemplateMessage,
        go: G,
    ) -> impl Future<Output = Result<Option<Accepted>, SendError>> + Send;

    /// Send free-form text (only inside the 24 h customer-service window).
    fn send_text(
        &self,
        to: &str,
        body: &str,
    ) -> impl Future<Output = Result<Accepted, SendError>> + Send;

    /// Send media by link (only inside the 24 h customer-service window).
    fn send_media(
        &self,
        to: &str,
        media: &Media,
    ) -> impl Future<Output = Result<Accepted, SendError>> + Send;

    /// Mark an inbound message as read.
    fn mark_read(&self, wamid: &str) -> impl Future<Output = Result<(), SendError>> + Send;

    /// Every template of the account, all pages.
    fn list_templates(&self) -> impl Future<Output = Result<Vec<TemplateDef>, SendError>> + Send;

    /// The line's messaging limit and throughput level as the provider reports them; `None`
    /// where the provider has no such read.
    fn account_limits(
        &self,
    ) -> impl Future<Output = Result<Option<AccountLimits>, SendError>> + Send {
        async { Ok(None) }
    }

    /// Submits a new template for review (`request` is the Graph creation body).
    fn create_template(
        &self,
        request: &serde_json::Value,
    ) -> impl Future<Output = Result<CreatedTemplate, SendError>> + Send;
}

/// What `GET /{phone-number-id}?fields=…` tells about a line (reference §4.1–§4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountLimits {
    /// The portfolio's messaging limit (`whatsapp_business_manager_messaging_limit`, else the
    /// deprecated `messaging_limit_tier`), when the answer carried a readable one.
    pub tier: Option<crate::domain::Tier>,
    /// `throughput.level`: `STANDARD` (80 msg/s) or `HIGH` (1,000 msg/s).
    pub throughput_level: Option<String>,
}

/// The provider's answer to a template creation: under review, usually.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct CreatedTemplate {
    pub id: String,
    /// PENDING (review running), APPROVED (some authentication templates) or REJECTED.
    pub status: String,
    /// Meta may answer with another category than the one asked for.
    #[serde(default)]
    pub category: Option<String>,
}

/// The provider of one line, whichever API it speaks (the trait's `impl Future` methods keep it
/// from being a trait object). Boxed: the clients are large and of different sizes.
#[derive(Debug)]
pub enum LineProvider {
    Meta(Box<meta::MetaClient>),
    Gupshup(Box<gupshup::GupshupClient>),
}

impl Provider for LineProvider {
    async fn send_template(&self, m: &TemplateMessage) -> Result<Accepted, SendError> {
        match self {
            LineProvider::Meta(c) => c.send_template(m).await,
            LineProvider::Gupshup(c) => c.send_template(m).await,
        }
    }

    async fn send_template_if<G: Future<Output = bool> + Send>(
        &self,
        m: &TemplateMessage,
        go: G,
    ) -> Result<Option<Accepted>, SendError> {
        match self {
            LineProvider::Meta(c) => c.send_template_if(m, go).await,
            LineProvider::Gupshup(c) => c.send_template_if(m, go).await,
        }
    }

    async fn send_text(&self, to: &str, body: &str) -> Result<Accepted, SendError> {
        match self {
            LineProvider::Meta(c) => c.send_text(to, body).await,
            LineProvider::Gupshup(c) => c.send_text(to, body).await,
        }
    }

    async fn send_media(&self, to: &str, media: &Media) -> Result<Accepted, SendError> {
        match self {
            LineProvider::Meta(c) => c.send_media(to, media).await,
            LineProvider::Gupshup(c) => c.send_media(to, media).await,
        }
    }

    async fn mark_read(&self, wamid: &str) -> Result<(), SendError> {
        match self {
            LineProvider::Meta(c) => c.mark_read(wamid).await,
            LineProvider::Gupshup(c) => c.mark_read(wamid).await,
        }
    }

    async fn list_templates(&self) -> Result<Vec<TemplateDef>, SendError> {
        match self {
            LineProvider::Meta(c) => c.list_templates().await,
            LineProvider::Gupshup(c) => c.list_templates().await,
        }
    }

    async fn account_limits(&self) -> Result<Option<AccountLimits>, SendError> {
        match self {
            LineProvider::Meta(c) => c.account_limits().await,
            LineProvider::Gupshup(c) => c.account_limits().await,
        }
    }

    async fn create_template(
        &self,
        request: &serde_json::Value,
    ) -> Result<CreatedTemplate, SendError> {
        match self {
            LineProvider::Meta(c) => c.create_template(request).await,
            LineProvider::Gupshup(c) => c.create_template(request).await,
        }
    }
}

/// Longest part of an unreadable answer body kept in an error.
const SNIPPET_CHARS: usize = 200;

/// An HTTP answer without a provider error body (a proxy page, an unreadable 2xx…).
pub(crate) fn http_error(status: reqwest::StatusCode, body: &[u8]) -> SendError {
    let text = String::from_utf8_lossy(body);
    SendError::Http {
        status: status.as_u16(),
        body_snippet: text.chars().take(SNIPPET_CHARS).collect(),
    }
}

pub(crate) fn transport_error(e: reqwest::Error) -> SendError {
    // Only a failure to connect (or to build the request) proves nothing left this process;
    // anything later may have reached the provider, so it must be reconciled, not resent.
    let not_sent = e.is_connect() || e.is_builder();
    SendError::Transport {
        message: error_chain(&e),
        timeout: e.is_timeout(),
        maybe_sent: !not_sent,
    }
}

/// `e: source: source…`: reqwest's own message hides the useful cause (timeout, reset…).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_of_each_variant() {
        let api = |http_status, code| SendError::Api {
            http_status,
            code,
            subcode: None,
            message: "x".into(),
            details: None,
            fbtrace_id: None,
        };
        assert_eq!(
            api(400, 130429).classification().class,
            ErrorClass::Throttled
        );
        assert_eq!(
            api(400, 132001).classification().class,
            ErrorClass::Campaign
        );
        assert_eq!(
            api(400, 424242).classification().class,
            ErrorClass::Retryable
        );
        assert_eq!(
            api(500, 424242).classification().class,
            ErrorClass::Ambiguous
        );
        assert_eq!(api(500, 131000).code_label(), "131000");
        let http = SendError::Http {
            status: 502,
            body_snippet: "<html>".into(),
        };
        assert_eq!(http.classification().class, ErrorClass::Ambiguous);
        assert_eq!(http.code_label(), "http_502");
        let t = |timeout, maybe_sent| SendError::Transport {
            message: "x".into(),
            timeout,
            maybe_sent,
        };
        assert_eq!(t(true, true).classification().class, ErrorClass::Ambiguous);
        assert_eq!(
            t(false, false).classification().class,
            ErrorClass::Retryable
        );
        assert_eq!(t(true, true).code_label(), "timeout");
        assert_eq!(t(false, false).code_label(), "connect");
        assert_eq!(
            api(400, 131056).to_string(),
            "provider error 131056: x (HTTP 400)"
        );
    }
}
