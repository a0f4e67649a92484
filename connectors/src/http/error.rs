//! The one error shape of the HTTP edge, `{"error": {"code", "message"}}`, and the
//! statuses of the contract. A handler returns [`ApiError`]; whatever went wrong
//! inside (a broker error, a timeout) is logged where it happened and the client gets
//! a stable code and a message written for it, never an internal detail.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to branch on and a message for people.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, upper-case code, e.g. `EMAIL_TAKEN`, `INVALID_FIELD`, `TOKEN_EXPIRED`.
    #[schema(example = "INVALID_FIELD")]
    pub code: String,
    /// What happened and what to do, for people.
    #[schema(example = "quantity must be at least 1")]
    pub message: String,
    /// The offending field of the request body (for `INVALID_FIELD`), as a path like
    /// `items[0].quantity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "items[0].quantity")]
    pub field: Option<String>,
}

/// An error answer: status, code, message, and the headers some statuses carry.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<u64>,
    www_authenticate: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// 400 `MALFORMED_JSON`: the body is not JSON.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "MALFORMED_JSON", message)
    }

    /// 400 `BAD_CONTENT_TYPE`: a body that is not `application/json`.
    pub fn content_type() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "BAD_CONTENT_TYPE",
            "the request body must be JSON with Content-Type: application/json",
        )
    }

    /// 401 without a usable token: `WWW-Authenticate: Bearer`.
    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, message);
        e.www_authenticate = Some("Bearer".into());
        e
    }

    /// 401 for a token that was presented and refused (RFC 6750 `invalid_token`).
    pub fn invalid_token(code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(StatusCode::UNAUTHORIZED, code, message.clone());
        let description: String = message
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect();
        e.www_authenticate = Some(format!(
            "Bearer error=\"invalid_token\", error_description=\"{description}\""
        ));
        e
    }

    /// 403 `FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 422 `INVALID_FIELD` naming the field.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_FIELD",
            message.into(),
        );
        e.field = Some(field.into());
        e
    }

    /// 429 `RATE_LIMITED` with `Retry-After` in whole seconds.
    pub fn rate_limited(retry_after_secs: u64, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", message);
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }

    /// 503 `NOT_READY`: the streams have not caught up (or the edge is draining).
    pub fn not_ready() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            "the service is starting or stopping and cannot answer yet; try again shortly",
        );
        e.retry_after = Some(1);
        e
    }

    /// 503 `NO_REPLY`: a command was sent but its answer did not come in time.
    pub fn no_reply(what: &str, waited: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NO_REPLY",
            format!(
                "{what} was sent but no answer came within {:.1} s; it may still be carried out, so check before trying again",
                waited.as_secs_f64()
            ),
        );
        e.retry_after = Some(1);
        e
    }

    /// 503 `STREAMS_UNAVAILABLE`: the command could not be published.
    pub fn unavailable() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STREAMS_UNAVAILABLE",
            "the request could not be handed to the streams; try again shortly",
        );
        e.retry_after = Some(1);
        e
    }

    /// 500 `INTERNAL`: a fault of ours; the detail is in the log, under the request id.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "something went wrong on our side; the request id in x-request-id finds it in the log",
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(challenge) = self.www_authenticate
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
