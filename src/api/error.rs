//! The admin API's errors: every one answers `{"error": CODE, "message": TEXT}` with its status.

use crate::campaign::CampaignError;
use crate::import::ImportError;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or names something invalid.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: missing or wrong bearer token, or no token configured.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: an unknown campaign, contact, opt-out or path.
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// 405: the path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: a refused state change, with the reason.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413: the body is over the route's limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415: a body that is not of the type the route takes.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 500: ours; the details go to the log, not to the caller.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. }
            | ApiError::NotFound { code, .. }
            | ApiError::Conflict { code, .. } => code,
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"tiercast\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "admin API: database error");
        ApiError::Internal("database error; see the daemon's log".into())
    }
}

impl From<CampaignError> for ApiError {
    fn from(e: CampaignError) -> Self {
        match e {
            CampaignError::Unknown { .. } => ApiError::not_found("unknown_campaign", e.to_string()),
            CampaignError::Refused(r) => ApiError::Conflict {
                code: "transition_refused",
                message: r.to_string(),
            },
            CampaignError::NotStartable { .. } => ApiError::Conflict {
                code: "not_startable",
                message: e.to_string(),
            },
            CampaignError::Store(s) => s.into(),
        }
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Store { source, .. } => source.into(),
            ImportError::Io { .. } => {
                tracing::error!(error = %e, "admin API: import I/O error");
                ApiError::Internal(e.to_string())
            }
            ImportError::Option { .. } => ApiError::bad_request("bad_option", e.to_string()),
            ImportError::Empty { .. }
            | ImportError::NoPhoneColumn { .. }
            | ImportError::DuplicateColumn { .. }
            | ImportError::NotUtf8 { .. }
            | ImportError::Csv { .. }
            | ImportError::TooLarge { .. } => ApiError::bad_request("bad_csv", e.to_string()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!("the body is too large: {}", e.body_text()))
        } else {
            ApiError::bad_request("bad_body", e.body_text())
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::bad_request("bad_path", e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request("bad_query", e.body_text())
    }
}
