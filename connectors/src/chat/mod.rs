//! The WebSocket chat edge: `GET /chat` upgrades to a WebSocket whose text frames
//! carry the JSON protocol of DESIGN.md ("WebSocket chat edge").
//!
//! - The access token comes as `?token=` or `Authorization: Bearer`. Without a valid
//!   one the upgrade still completes (browsers cannot read a refused handshake's
//!   status) and the server closes at once with 1008 and the reason.
//! - `send` puts a [`ChatMessage`](orderflow_pipelines::records::ChatMessage) on
//!   `chat.messages` keyed by room id and acks once the broker has it; the chat
//!   fan-out turns it into deliveries, which [`EdgeStreams`] hands to every
//!   connection of each recipient on this instance (the sender included, so all of
//!   the sender's tabs see it). `history` answers from the fan-out's history
//!   changelog. Only the room's buyer (a BUYER) and seller (a SELLER) may do either.
//! - A frame the server cannot accept gets an error frame and the connection stays
//!   open. A frame over [`ChatSettings::max_message_size`] closes with 1009.
//! - Each connection has a writer task with a bounded queue, and every frame written
//!   must reach the socket within [`ChatSettings::send_timeout`]: a client that
//!   stops reading fills its queues (the writer's, then its delivery channel in
//!   [`EdgeStreams`]) and is closed with 1013 (cut off after
//!   [`ChatSettings::close_timeout`] if even the close frame cannot be written),
//!   never slowing the reading of its own frames, the deliveries to other
//!   connections, or anything else.
//! - [`ChatState::shutdown`] closes every connection with 1001.
//!
//! [`frame`] holds the protocol's frames, `connection` the life of one connection.

mod connection;
pub mod frame;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::get;
use orderflow_pipelines::records::Role;
use orderflow_runtime::metrics::Metrics;
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::auth::Tokens;
use crate::streams::EdgeStreams;

/// Close code 1013 "try again later" (RFC 6455 registry), for a connection dropped
/// because it did not keep up.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// The limits of the chat edge.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// The largest frame (and message) a client may send, in bytes; a larger one
    /// closes the connection with 1009. Default 64 KiB.
    pub max_message_size: usize,
    /// The longest message body, in characters. Default 4,000.
    pub max_body_chars: usize,
    /// Messages a connection may send per second, sustained. Default 5.
    pub message_rate: f64,
    /// Messages a connection may send in a burst above that rate. Default 20.
    pub message_burst: u32,
    /// The most messages one `history` request returns (more is capped). Default
    /// 100, the chat fan-out's default `history_limit`.
    pub history_limit_max: usize,
    /// How many messages a `history` request without a `limit` returns. Default 50.
    pub history_limit_default: usize,
    /// How long one frame may take to reach the client's socket before the client
    /// counts as gone and the connection is dropped (without a close frame, which
    /// could not be written either). Default 10 s.
    pub send_timeout: Duration,
    /// Frames waiting for a connection's writer. Deliveries fill three quarters of
    /// it and then wait in the streams' delivery channel
    /// ([`StreamsConfig::delivery_buffer`](crate::streams::StreamsConfig)); a client
    /// that falls behind by both, or lets answers (acks, errors, history) fill the
    /// rest, is closed with 1013. Default 256.
    pub outbound_buffer: usize,
    /// Messages of one connection waiting for the broker's confirmation; beyond that
    /// a `send` gets `UNAVAILABLE`. Default 64.
    pub publish_queue: usize,
    /// How often the server pings an otherwise quiet client. Default 20 s.
    pub ping_interval: Duration,
    /// How long a client may stay silent (no frame, not even a pong) before it is
    /// closed. Default 60 s.
    pub idle_timeout: Duration,
    /// How long the server gives its close frame to be written (a client too slow
    /// to take it is then cut off) and then the client's answer to it. Default 5 s.
    pub close_timeout: Duration,
}

impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            max_message_size: 64 * 1024,
            max_body_chars: 4_000,
            message_rate: 5.0,
            message_burst: 20,
            history_limit_max: 100,
            history_limit_default: 50,
            send_timeout: Duration::from_secs(10),
            outbound_buffer: 256,
            publish_queue: 64,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// What the chat edge shares between its connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ChatState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    streams: Arc<EdgeStreams>,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    settings: ChatSettings,
    /// Turns true once, when the edge shuts down; every connection watches it.
    shutdown: watch::Sender<bool>,
    /// Open connections, mirrored in the connections gauge.
    open: AtomicU64,
    /// Woken whenever a connection ends, for [`ChatState::shutdown`] to wait on.
    closed: Notify,
    /// Numbers connections in logs.
    next_connection: AtomicU64,
}

impl ChatState {
    /// The state of a chat edge on `streams`, checking tokens with `tokens` and
    /// counting in `metrics`.
    pub fn new(
        streams: Arc<EdgeStreams>,
        tokens: Arc<Tokens>,
        metrics: Arc<Metrics>,
        settings: ChatSettings,
    ) -> Self {
        let state = ChatState {
            inner: Arc::new(Inner {
                streams,
                tokens,
                metrics,
                settings,
                shutdown: watch::Sender::new(false),
                open: AtomicU64::new(0),
                closed: Notify::new(),
                next_connection: AtomicU64::new(1),
            }),
        };
        state.publish_open(0);
        state
    }

    /// The streams the edge publishes to and reads from.
    pub fn streams(&self) -> &Arc<EdgeStreams> {
        &self.inner.streams
    }

    /// The limits.
    pub fn settings(&self) -> &ChatSettings {
        &self.inner.settings
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// How many connections are open.
    pub fn open_connections(&self) -> u64 {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Closes every connection with 1001 ("going away"), refuses new ones the same
    /// way, and waits until every connection has ended: each either answers the
    /// close within [`ChatSettings::close_timeout`] or is dropped, so this takes at
    /// most about `send_timeout + close_timeout`. Call it when the server stops:
    /// axum's graceful shutdown does not wait for upgraded connections.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        loop {
            let closed = self.inner.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open_connections() == 0 {
                return;
            }
            closed.await;
        }
    }

    fn shutting_down(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    fn publish_open(&self, open: u64) {
        self.inner.metrics.set(
            "orderflow_chat_connections",
            "Open chat WebSocket connections",
            Vec::new(),
            open as f64,
        );
    }

    /// Counts a connection as open until the guard drops.
    fn opened(&self) -> (u64, OpenGuard) {
        let id = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        let open = self.inner.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.publish_open(open);
        (
            id,
            OpenGuard {
                state: self.clone(),
            },
        )
    }

    fn count(&self, name: &'static str, help: &'static str, label: &'static str, value: &str) {
        self.inner
            .metrics
            .add(name, help, vec![(label, value.to_string())], 1.0);
    }

    fn frame_in(&self, kind: &str) {
        self.count(
            "orderflow_chat_frames_in_total",
            "Chat frames received, by type (invalid: not a frame of the protocol)",
            "type",
            kind,
        );
    }

    fn frame_out(&self, kind: &str) {
        self.count(
            "orderflow_chat_frames_out_total",
            "Chat frames sent, by type",
            "type",
            kind,
        );
    }

    fn error_sent(&self, code: &str) {
        self.count(
            "orderflow_chat_errors_total",
            "Chat error frames sent, by code",
            "code",
            code,
        );
    }

    fn closed_with(&self, code: u16) {
        self.count(
            "orderflow_chat_closes_total",
            "Chat connections ended, by close code: the server's or the client's, 1006 when the socket ended without a close frame",
            "code",
            &code.to_string(),
        );
    }
}

/// Keeps a connection counted as open.
#[derive(Debug)]
struct OpenGuard {
    state: ChatState,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let inner = &self.state.inner;
        let open = inner.open.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        self.state.publish_open(open);
        inner.closed.notify_waiters();
    }
}

/// Who is on a connection, from the access token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChatUser {
    /// The user id (the token's `sub`).
    id: String,
    /// Buyer or seller: which side of a `dm:<buyerId>:<sellerId>` room the user
    /// may be.
    role: Role,
}

/// The chat edge's routes: `GET /chat`.
pub fn router(state: ChatState) -> Router {
    Router::new().route("/chat", get(upgrade)).with_state(state)
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn upgrade(
    State(state): State<ChatState>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = bearer(&headers).or_else(|| query.ok().and_then(|Query(q)| q.token));
    let user = match token {
        None => Err("an access token is required (?token= or Authorization: Bearer)".to_string()),
        Some(token) => state
            .inner
            .tokens
            .verify_access(&token)
            .map(|claims| ChatUser {
                id: claims.sub,
                role: claims.role,
            })
            .map_err(|e| format!("{}: {e}", e.code())),
    };
    let max = state.inner.settings.max_message_size;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(|error| tracing::debug!(error = %error, "chat: upgrade failed"))
        .on_upgrade(move |socket| async move {
            match user {
                Ok(user) => connection::serve(socket, state, user).await,
                Err(reason) => connection::refuse(socket, state, &reason).await,
            }
        })
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}
