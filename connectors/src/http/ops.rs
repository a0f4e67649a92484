//! The operational routes (`/health`, `/ready`, `/metrics`, `/openapi.json`) and the
//! answers for unknown routes (404) and methods (405) in the contract's shape.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::HttpState;
use super::error::{ApiError, ErrorBody};

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `ok` (health) or `ready`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the edge is serving.
#[utoipa::path(get, path = "/health", tag = "ops",
    responses((status = 200, description = "The edge is serving", body = Status)))]
pub async fn health() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: the views have caught up with the streams and the edge is not draining.
#[utoipa::path(get, path = "/ready", tag = "ops",
    responses(
        (status = 200, description = "Ready to answer", body = Status),
        (status = 503, description = "Still catching up, or draining (`NOT_READY`)", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<HttpState>) -> Result<Json<Status>, ApiError> {
    if state.is_ready() {
        Ok(Json(Status { status: "ready" }))
    } else {
        Err(ApiError::not_ready())
    }
}

/// The process's metrics in the Prometheus text format: the edge's request counts and
/// latencies by route and status, and whatever else the process records.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    Json(super::openapi::ApiDoc::openapi()).into_response()
}

/// 404 for a route that does not exist.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

/// 405 for a method a route does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "this route does not take that method; see /openapi.json",
    )
}
