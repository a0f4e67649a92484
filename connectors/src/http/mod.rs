//! The HTTP edge (DESIGN.md "HTTP edge"): JSON routes for accounts, sessions and
//! orders that only publish commands to the streams and answer from the views the
//! streams keep ([`EdgeStreams`]).
//!
//! - [`router`] builds the routes over an [`HttpState`]; [`serve`] runs them on a
//!   listener (with the peer address the rate limits need) until shutdown.
//! - [`error`]: the error shape `{"error": {"code", "message"}}` and its statuses.
//! - [`extract`]: JSON bodies and the signed-in caller, with their errors.
//! - `auth`, `orders`, `ops`: the handlers; [`openapi`]: the OpenAPI document,
//!   generated from the handlers' annotations and served on `/openapi.json`.
//! - [`limit`]: per-client token buckets; [`observe`]: request ids, tracing spans,
//!   metrics, the rate limits and the readiness gate as middleware.
//!
//! Commands whose outcome the caller needs (register, login, refresh, logout) wait for
//! the processor's [`Reply`](orderflow_pipelines::records::Reply) on `edge.replies`
//! for at most [`HttpSettings::reply_timeout`]; a placed order waits for its first
//! event for at most [`HttpSettings::order_wait`] and is answered 202 either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use orderflow_runtime::metrics::Metrics;
use tower::ServiceBuilder;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::auth::Tokens;
use crate::streams::EdgeStreams;

mod auth;
mod command;
pub mod error;
pub mod extract;
pub mod limit;
pub mod observe;
pub mod openapi;
mod ops;
mod orders;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use limit::RateLimit;

/// How the HTTP edge behaves. [`HttpSettings::default`] is what the contract
/// describes; [`HttpSettings::from_env`] reads the `ORDERFLOW_HTTP_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// How long a request waits for its reply on `edge.replies` (publishing
    /// included) before it is answered 503 `NO_REPLY`. Default 10 s.
    pub reply_timeout: Duration,
    /// How long `POST /orders` waits for the order's first event before it answers
    /// 202 with status `PENDING`. Default 3 s.
    pub order_wait: Duration,
    /// The largest request body accepted; a larger one is answered 413. Default 64 KiB.
    pub body_limit: usize,
    /// Every client address's budget of requests (probes and `/metrics` excepted).
    /// Default 50 per second, bursts of 100.
    pub client_rate: RateLimit,
    /// The stricter budget for `POST /auth/login` and `POST /auth/register`, against
    /// password guessing. Default 10 per minute, bursts of 10.
    pub password_rate: RateLimit,
    /// How long login retries looking up an email the user directory does not have
    /// yet (a registration a moment ago on another instance). A failed login is
    /// answered no sooner than this after it came, so response times do not tell
    /// which emails have accounts. Default 1 s.
    pub login_grace: Duration,
    /// Count requests against the last `X-Forwarded-For` address instead of the peer
    /// (only behind one trusted proxy). Default off.
    pub trust_forwarded_for: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            reply_timeout: Duration::from_secs(10),
            order_wait: Duration::from_secs(3),
            body_limit: 64 * 1024,
            client_rate: RateLimit {
                per_second: 50.0,
                burst: 100,
            },
            password_rate: RateLimit {
                per_second: 10.0 / 60.0,
                burst: 10,
            },
            login_grace: Duration::from_secs(1),
            trust_forwarded_for: false,
        }
    }
}

/// A setting of the HTTP edge with a value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{var} {value:?} is not valid: {message}")]
pub struct HttpConfigError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub message: String,
}

impl HttpSettings {
    /// Reads the settings from the environment; an unset or empty variable keeps the
    /// default:
    ///
    /// | variable | meaning | default |
    /// | --- | --- | --- |
    /// | `ORDERFLOW_HTTP_REPLY_TIMEOUT` | wait for a reply, e.g. `10s` | `10s` |
    /// | `ORDERFLOW_HTTP_ORDER_WAIT` | wait for a new order's first event | `3s` |
    /// | `ORDERFLOW_HTTP_BODY_LIMIT` | largest body in bytes | `65536` |
    /// | `ORDERFLOW_HTTP_RATE` | requests per second per client, `0` = off | `50` |
    /// | `ORDERFLOW_HTTP_BURST` | burst per client | `100` |
    /// | `ORDERFLOW_HTTP_PASSWORD_RATE` | login/register per minute per client, `0` = off | `10` |
    /// | `ORDERFLOW_HTTP_PASSWORD_BURST` | their burst | `10` |
    /// | `ORDERFLOW_HTTP_LOGIN_GRACE` | see [`HttpSettings::login_grace`] | `1s` |
    /// | `ORDERFLOW_HTTP_TRUST_FORWARDED_FOR` | `true` behind one trusted proxy | `false` |
    pub fn from_env() -> Result<Self, HttpConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`HttpSettings::from_env`] with the variables taken from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, HttpConfigError> {
        let get = |var: &'static str| {
            lookup(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(|v| (var, v))
        };
        let bad = |var: &'static str, value: &str, message: String| HttpConfigError {
            var,
            value: value.to_string(),
            message,
        };
        let duration = |var, value: &str| {
            orderflow_runtime::topology::config::parse_duration(value)
                .map_err(|m| bad(var, value, m))
                .and_then(|d| {
                    if d.is_zero() {
                        Err(bad(var, value, "must be more than zero".into()))
                    } else {
                        Ok(d)
                    }
                })
        };
        let number = |var, value: &str| {
            value
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| bad(var, value, "expected a number of at least 0".into()))
        };
        let count = |var, value: &str| {
            value
                .parse::<u32>()
                .map_err(|_| bad(var, value, "expected a whole number of at least 0".into()))
        };
        let mut s = HttpSettings::default();
        if let Some((var, v)) = get("ORDERFLOW_HTTP_REPLY_TIMEOUT") {
            s.reply_timeout = duration(var, &v)?;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_ORDER_WAIT") {
            s.order_wait = duration(var, &v)?;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_BODY_LIMIT") {
            s.body_limit = v
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1024)
                .ok_or_else(|| bad(var, &v, "expected a number of bytes, at least 1024".into()))?;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_RATE") {
            s.client_rate.per_second = number(var, &v)?;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_BURST") {
            s.client_rate.burst = count(var, &v)?;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_PASSWORD_RATE") {
            s.password_rate.per_second = number(var, &v)? / 60.0;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_PASSWORD_BURST") {
            s.password_rate.burst = count(var, &v)?;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_LOGIN_GRACE") {
            s.login_grace = duration(var, &v)?;
        }
        if let Some((var, v)) = get("ORDERFLOW_HTTP_TRUST_FORWARDED_FOR") {
            s.trust_forwarded_for = match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                _ => return Err(bad(var, &v, "expected true or false".into())),
            };
        }
        Ok(s)
    }
}

/// The two rate limiters of one edge.
#[derive(Debug)]
struct Limits {
    client: limit::Limiter,
    password: limit::Limiter,
}

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The streams: publisher, replies, orders, user directory, readiness.
    pub streams: Arc<EdgeStreams>,
    /// Issues and verifies the tokens.
    pub tokens: Arc<Tokens>,
    /// The process's metrics registry: `/metrics` renders it, and the edge adds its
    /// request counts and latencies to it.
    pub metrics: Arc<Metrics>,
    /// The settings.
    pub settings: HttpSettings,
    limits: Arc<Limits>,
    draining: Arc<AtomicBool>,
}

impl HttpState {
    /// The state of one edge.
    pub fn new(
        streams: Arc<EdgeStreams>,
        tokens: Arc<Tokens>,
        metrics: Arc<Metrics>,
        settings: HttpSettings,
    ) -> Self {
        let limits = Arc::new(Limits {
            client: limit::Limiter::new(settings.client_rate),
            password: limit::Limiter::new(settings.password_rate),
        });
        HttpState {
            streams,
            tokens,
            metrics,
            settings,
            limits,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the edge as going away: `/ready` and every route that needs the streams
    /// answer 503 from now on, so a load balancer stops sending before the listener
    /// closes. For shutdown; it cannot be undone.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the edge answers: the streams have caught up and it is not draining.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.streams.is_ready()
    }
}

/// The routes of the HTTP edge (the chat edge's `/chat` is a router of its own that
/// the node merges in; it must not set a fallback, this one answers unknown routes
/// with 404 in the contract's shape).
pub fn router(state: HttpState) -> Router {
    let needs_streams = Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/auth/refresh", post(auth::refresh))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/user/{userId}", get(auth::user))
        .route("/orders", post(orders::place).get(orders::list))
        .route("/orders/{orderId}", get(orders::get))
        .route("/orders/{orderId}/cancel", post(orders::cancel))
        .route_layer(from_fn_with_state(state.clone(), observe::ready_gate));
    let probes = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    let middleware = ServiceBuilder::new()
        .layer(from_fn(observe::drop_insane_request_id))
        .layer(SetRequestIdLayer::new(
            observe::REQUEST_ID,
            observe::MakeUuid,
        ))
        .layer(PropagateRequestIdLayer::new(observe::REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(observe::request_span)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
        )
        .layer(from_fn_with_state(state.clone(), observe::record))
        .layer(from_fn_with_state(state.clone(), observe::rate_limit));
    needs_streams
        .merge(probes)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(state.settings.body_limit))
        .layer(middleware)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, with each connection's
/// peer address available to the rate limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_the_environment() {
        let env = |name: &str| {
            match name {
                "ORDERFLOW_HTTP_REPLY_TIMEOUT" => Some("2s"),
                "ORDERFLOW_HTTP_BODY_LIMIT" => Some("2048"),
                "ORDERFLOW_HTTP_PASSWORD_RATE" => Some("30"),
                "ORDERFLOW_HTTP_RATE" => Some(""),
                "ORDERFLOW_HTTP_TRUST_FORWARDED_FOR" => Some("true"),
                _ => None,
            }
            .map(str::to_string)
        };
        let s = HttpSettings::from_lookup(env).unwrap();
        assert_eq!(s.reply_timeout, Duration::from_secs(2));
        assert_eq!(s.body_limit, 2048);
        assert!((s.password_rate.per_second - 0.5).abs() < 1e-9);
        assert_eq!(s.client_rate, HttpSettings::default().client_rate);
        assert!(s.trust_forwarded_for);
        assert_eq!(s.order_wait, Duration::from_secs(3));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        for (var, value) in [
            ("ORDERFLOW_HTTP_REPLY_TIMEOUT", "soon"),
            ("ORDERFLOW_HTTP_BODY_LIMIT", "12"),
            ("ORDERFLOW_HTTP_RATE", "-1"),
            ("ORDERFLOW_HTTP_TRUST_FORWARDED_FOR", "maybe"),
        ] {
            let e =
                HttpSettings::from_lookup(|n| (n == var).then(|| value.to_string())).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var), "{e}");
        }
    }
}
