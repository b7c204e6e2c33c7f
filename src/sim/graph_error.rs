//! Graph API error envelope as the simulator returns it (reference §2.1) and the catalogue of
//! codes it uses, with their titles and the HTTP status of Meta's table (§2.3).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// One synchronous Graph error. `http` is decided when the error is built, because the
/// throttling status is configurable (400 vs 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub http: StatusCode,
    pub code: i64,
    pub error_type: &'static str,
    pub title: String,
    pub details: String,
    pub subcode: Option<i64>,
}

impl GraphError {
    /// Build with the catalogue's title and HTTP status for `code`.
    pub fn new(code: i64, details: impl Into<String>) -> Self {
        let (http, title) = catalogue(code);
        GraphError {
            http,
            code,
            error_type: "OAuthException",
            title: title.to_string(),
            details: details.into(),
            subcode: None,
        }
    }

    pub fn with_status(mut self, http: StatusCode) -> Self {
        self.http = http;
        self
    }

    /// The JSON body, exactly Meta's shape.
    pub fn body(&self, fbtrace_id: &str) -> serde_json::Value {
        let mut err = json!({
            "message": format!("(#{}) {}", self.code, self.title),
            "type": self.error_type,
            "code": self.code,
            "error_data": { "messaging_product": "whatsapp", "details": self.details },
            "fbtrace_id": fbtrace_id,
        });
        if let (Some(sub), Some(obj)) = (self.subcode, err.as_object_mut()) {
            obj.insert("error_subcode".into(), sub.into());
        }
        json!({ "error": err })
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let trace = super::trace_id();
        let mut resp = (self.http, axum::Json(self.body(&trace))).into_response();
        if let Ok(v) = HeaderValue::from_str(&trace) {
            resp.headers_mut().insert("x-fb-trace-id", v);
        }
        resp
    }
}

/// Title and HTTP status per code (older Meta table; throttling overridden by config).
pub fn catalogue(code: i64) -> (StatusCode, &'static str) {
    use StatusCode as S;
    match code {
        1 => (S::INTERNAL_SERVER_ERROR, "An unknown error occurred"),
        2 => (S::SERVICE_UNAVAILABLE, "Service temporarily unavailable"),
        100 => (S::BAD_REQUEST, "Invalid parameter"),
        190 => (S::UNAUTHORIZED, "Invalid OAuth access token"),
        130429 => (S::BAD_REQUEST, "Rate limit hit"),
        131008 => (S::BAD_REQUEST, "Required parameter is missing"),
        131009 => (S::BAD_REQUEST, "Parameter value is not valid"),
        131026 => (S::BAD_REQUEST, "Message undeliverable"),
        131047 => (S::BAD_REQUEST, "Re-engagement message"),
        131049 => (
            S::BAD_REQUEST,
            "This message was not delivered to maintain healthy ecosystem engagement.",
        ),
        131050 => (
            S::BAD_REQUEST,
            "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business",
        ),
        131051 => (S::BAD_REQUEST, "Unsupported message type"),
        130472 => (S::BAD_REQUEST, "User's number is part of an experiment"),
        132000 => (S::BAD_REQUEST, "Number of parameters does not match the expected number of params"),
        132001 => (S::NOT_FOUND, "Template name does not exist in the translation"),
        132005 => (S::BAD_REQUEST, "Translated text too long"),
        132012 => (S::BAD_REQUEST, "Parameter format does not match format in the created template"),
        132015 => (S::BAD_REQUEST, "Template is Paused"),
        132016 => (S::BAD_REQUEST, "Template is Disabled"),
        _ => (S::BAD_REQUEST, "Error"),
    }
}

/// Default `error_data.details` for asynchronous failures (status webhooks).
pub fn async_details(code: i64) -> &'static str {
    match code {
        131026 => "Message Undeliverable.",
        131047 => "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        131049 => "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.",
        131050 => "The recipient has chosen to stop receiving marketing messages from your business.",
        130472 => "Message was not sent as part of an experiment.",
        _ => "Message failed to send.",
    }
}
