//! The middleware every request goes through: its request id (accepted from
//! `x-request-id` when sane, generated otherwise, echoed, and in the request's
//! tracing span), its count and latency in the metrics by route and status, the rate
//! limits, and the readiness gate in front of the routes that need the streams.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestId, RequestId};

use super::HttpState;
use super::error::ApiError;

/// The header that carries the request id.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Series the edge writes into the shared metrics.
pub mod names {
    /// Counter: requests answered, by `method`, `route` and `status`.
    pub const REQUESTS: &str = "orderflow_http_requests_total";
    /// Histogram: time to answer, by `method` and `route`.
    pub const DURATION: &str = "orderflow_http_request_duration_seconds";
    /// Counter: requests refused by a rate limit, by `limit` (`client`, `password`).
    pub const RATE_LIMITED: &str = "orderflow_http_rate_limited_total";
}

/// Makes a request id: a random UUID.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .ok()
            .map(RequestId::new)
    }
}

/// Whether a client's request id may go into logs as it is: 1 to 128 characters of
/// letters, digits and `-_.:`. Anything else is replaced by a generated id, so a
/// client cannot forge log lines or flood them.
fn sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Drops a client's `x-request-id` that is not sane (1 to 128 characters of
/// `A-Za-z0-9-_.:`), before the request-id layer fills in a fresh one.
pub async fn drop_insane_request_id(mut req: Request, next: Next) -> Response {
    if req
        .headers()
        .get(&REQUEST_ID)
        .is_some_and(|v| !sane_request_id(v))
    {
        req.headers_mut().remove(&REQUEST_ID);
    }
    next.run(req).await
}

/// The tracing span of one request.
pub fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!(
        "http",
        method = %req.method(),
        route,
        request_id,
    )
}

fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string())
}

/// Counts the request and times it, by route template (never the raw path, so ids do
/// not explode the series).
pub async fn record(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = route_of(&req);
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    state.metrics.add(
        names::REQUESTS,
        "HTTP requests answered by the edge, by method, route and status.",
        vec![
            ("method", method.clone()),
            ("route", route.clone()),
            ("status", status),
        ],
        1.0,
    );
    state.metrics.observe(
        names::DURATION,
        "Time the HTTP edge took to answer, by method and route.",
        vec![("method", method), ("route", route)],
        start.elapsed(),
    );
    response
}

/// The address a request is counted against: the peer, or with
/// `trust_forwarded_for` the last `X-Forwarded-For` entry (the address the one
/// trusted proxy in front of the edge saw). `None` when the server was not started
/// with peer addresses (see [`super::serve`]) and no forwarded address counts.
pub fn client_ip(req: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|part| part.trim().parse::<IpAddr>().ok())
            .next_back()
    {
        return Some(ip);
    }
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Whether a route is one where a password is tried.
fn is_password_route(req: &Request) -> bool {
    req.method() == Method::POST && matches!(req.uri().path(), "/auth/login" | "/auth/register")
}

/// Whether a route is exempt from the limits: the probes and the scrape.
fn is_probe(req: &Request) -> bool {
    matches!(req.uri().path(), "/health" | "/ready" | "/metrics")
}

/// Applies the per-client limits.
pub async fn rate_limit(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    if is_probe(&req) {
        return next.run(req).await;
    }
    let Some(ip) = client_ip(&req, state.settings.trust_forwarded_for) else {
        // One bucket for every client would throttle everyone for one noisy client;
        // better no limit, and say so once.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "http: client addresses are unknown (serve with orderflow_connectors::http::serve), so rate limits are off"
            );
        }
        return next.run(req).await;
    };
    let refused = |limit: &'static str, wait: std::time::Duration, message: &str| {
        state.metrics.add(
            names::RATE_LIMITED,
            "Requests the HTTP edge refused with 429, by limit.",
            vec![("limit", limit.to_string())],
            1.0,
        );
        tracing::info!(client = %ip, limit, "http: rate limited");
        ApiError::rate_limited(wait.as_secs_f64().ceil() as u64, message).into_response()
    };
    if let Err(wait) = state.limits.client.check(ip) {
        return refused(
            "client",
            wait,
            "too many requests from this address; slow down and retry after the time in Retry-After",
        );
    }
    if is_password_route(&req)
        && let Err(wait) = state.limits.password.check(ip)
    {
        return refused(
            "password",
            wait,
            "too many sign-in or sign-up attempts from this address; retry after the time in Retry-After",
        );
    }
    next.run(req).await
}

/// Answers 503 while the streams have not caught up or the edge is draining.
pub async fn ready_gate(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    if !state.is_ready() {
        return ApiError::not_ready().into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sane_request_ids_are_kept() {
        for ok in ["abc", "0b6f-11:22.x_y", &"a".repeat(128)] {
            assert!(sane_request_id(&HeaderValue::from_str(ok).unwrap()), "{ok}");
        }
        for bad in ["", "a b", "x\ty", "<script>", &"a".repeat(129)] {
            assert!(
                !sane_request_id(&HeaderValue::from_str(bad).unwrap()),
                "{bad}"
            );
        }
    }
}
