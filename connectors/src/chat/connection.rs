//! The life of one chat connection: a reader loop that answers frames and forwards
//! deliveries, a writer task that alone touches the socket's sending half, and a
//! publisher task that puts messages on `chat.messages` one after another (so a
//! client's messages keep their order) while the reader goes on.
//!
//! Nothing here waits on the client: the reader hands frames to the writer's
//! bounded queue with `try_send`, and a full queue means the client is not reading,
//! so the connection is closed with 1013. The writer gives every frame
//! [`ChatSettings::send_timeout`](super::ChatSettings::send_timeout) to reach the
//! socket; past that the client counts as gone and the connection is dropped.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use orderflow_pipelines::chat_fanout::DmRoom;
use orderflow_pipelines::records::{ChatMessage, Role, topics};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite;

use super::frame::{ClientFrame, ErrorCode, FrameError, ServerFrame};
use super::{CLOSE_TRY_AGAIN_LATER, ChatState, ChatUser};

/// How long the server keeps a connection after closing it for a frame it could not
/// read (too large): the rest of that frame cannot be read, so the server does not
/// wait for the client's close reply, but gives the close frame time to arrive
/// before the socket goes (a socket closed with unread data sends a reset).
const LINGER_AFTER_UNREADABLE: Duration = Duration::from_millis(500);

/// How often a connection whose writer queue is full checks whether its delivery
/// channel was closed for falling behind.
const STALL_CHECK: Duration = Duration::from_millis(100);

/// The longest close reason a close frame carries (RFC 6455: 123 bytes).
const MAX_CLOSE_REASON: usize = 123;

/// Refuses a connection whose token was missing or bad: closes with 1008 and the
/// reason, then waits briefly for the client's close reply.
pub(super) async fn refuse(mut socket: WebSocket, state: ChatState, reason: &str) {
    let (_id, _open) = state.opened();
    tracing::debug!(reason, "chat: refused a connection");
    state.closed_with(close_code::POLICY);
    let settings = state.settings();
    let close = Message::Close(Some(close_frame(close_code::POLICY, reason)));
    if matches!(
        tokio::time::timeout(settings.send_timeout, socket.send(close)).await,
        Ok(Ok(()))
    ) {
        let _ = tokio::time::timeout(settings.close_timeout, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

/// How the reader loop ended.
#[derive(Debug)]
enum End {
    /// The server closes with this code and reason, then waits for the client's
    /// close reply.
    Close(u16, String),
    /// The server closes with this code and reason but cannot read on (the
    /// client's frame was unreadable), so it lingers instead of waiting for a reply.
    CloseUnreadable(u16, String),
    /// The client sent a close frame with this code (1005 if none); the WebSocket
    /// layer answers it.
    ClosedByClient(u16),
    /// The socket is gone or stuck: nothing more can be sent.
    Gone,
}

/// A client that does not keep up: its writer queue is full (or the writer is gone).
#[derive(Debug)]
struct Overflow;

/// Serves a connection of an authenticated user until either side closes it.
pub(super) async fn serve(socket: WebSocket, state: ChatState, user: ChatUser) {
    let (connection, _open) = state.opened();
    let settings = state.settings().clone();
    tracing::debug!(connection, user = %user.id, "chat: connected");
    let (sink, mut stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel(settings.outbound_buffer.max(1));
    let (close_tx, close_rx) = oneshot::channel();
    let mut writer = tokio::spawn(write(sink, out_rx, close_rx, settings.send_timeout));
    let outbox = Outbox {
        tx: out_tx,
        reserved: settings.outbound_buffer.max(1).div_ceil(4),
        state: state.clone(),
    };
    let chat = state.streams().chat();
    let (subscription, mut deliveries) = chat.subscribe(&user.id);
    let (publish_tx, publish_rx) = mpsc::channel(settings.publish_queue.max(1));
    let (answers_tx, mut answers) = mpsc::channel(settings.publish_queue.max(1));
    let publisher = AbortOnDrop(tokio::spawn(publish(state.clone(), publish_rx, answers_tx)));
    let mut limiter = RateLimiter::new(settings.message_rate, settings.message_burst);
    let mut ping = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut stalled = tokio::time::interval(STALL_CHECK);
    stalled.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = state.shutting_down();
    let mut conn = Connection {
        state: &state,
        user: &user,
        outbox: &outbox,
        publish: publish_tx,
        limiter: &mut limiter,
    };

    let end = loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|closing| *closing) => {
                break End::Close(close_code::AWAY, "the server is shutting down".into());
            }
            _ = &mut writer => break End::Gone,
            frame = stream.next() => {
                last_heard = Instant::now();
                let handled = match frame {
                    None => break End::Gone,
                    Some(Ok(Message::Text(text))) => conn.on_text(text.as_str()),
                    Some(Ok(Message::Binary(_))) => {
                        state.frame_in("binary");
                        conn.reply(FrameError::new(
                            ErrorCode::BinaryFrame,
                            "frames are JSON in text frames; binary frames are not accepted",
                        ))
                    }
                    // The WebSocket layer answers pings itself; a pong only shows the
                    // client is alive.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(frame))) => {
                        break End::ClosedByClient(frame.map_or(close_code::STATUS, |f| f.code));
                    }
                    Some(Err(error)) => break read_error(error),
                };
                if handled.is_err() {
                    break too_slow("its frames are not being read");
                }
            }
            // Deliveries are taken only while the writer's queue has room beyond what
            // is kept for answers; until then they wait in the delivery channel, so
            // a burst is absorbed by both queues and only a client that falls a whole
            // delivery channel behind is dropped (the channel then closes).
            delivery = deliveries.recv(), if outbox.room_for_deliveries() => match delivery {
                Some(delivery) => {
                    if outbox.push(&ServerFrame::from(delivery)).is_err() {
                        break too_slow("its deliveries are not being read");
                    }
                }
                None => break too_slow("it fell behind on its deliveries"),
            },
            _ = stalled.tick(), if !outbox.room_for_deliveries() => {
                if deliveries.is_closed() {
                    break too_slow("it fell behind on its deliveries");
                }
            }
            Some(answer) = answers.recv() => {
                if outbox.push(&answer).is_err() {
                    break too_slow("its acks are not being read");
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= settings.idle_timeout {
                    break End::Close(close_code::AWAY, "no frame from the client within the idle timeout".into());
                }
                // A busy connection needs no ping: the frames it is sent show
                // whether it is alive.
                if outbox.room_for_deliveries() {
                    let _ = outbox.tx.try_send(Message::Ping(Default::default()));
                }
            }
        }
    };

    chat.unsubscribe(&user.id, subscription);
    drop(publisher);
    tracing::debug!(connection, user = %user.id, end = ?end, "chat: disconnecting");
    match end {
        End::Close(code, reason) => {
            state.closed_with(code);
            let _ = close_tx.send(close_frame(code, &reason));
            if close_sent(&mut writer, settings.close_timeout).await {
                let _ = tokio::time::timeout(settings.close_timeout, async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
            }
        }
        End::CloseUnreadable(code, reason) => {
            state.closed_with(code);
            let _ = close_tx.send(close_frame(code, &reason));
            if close_sent(&mut writer, settings.close_timeout).await {
                tokio::time::sleep(LINGER_AFTER_UNREADABLE).await;
            }
        }
        End::ClosedByClient(code) => {
            state.closed_with(code);
            // Reading on lets the WebSocket layer flush its close reply and end.
            writer.abort();
            let _ = tokio::time::timeout(settings.close_timeout, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
        End::Gone => {
            // No close frame: the socket failed or stopped taking frames. Counted
            // as 1006, the code RFC 6455 reserves for a connection closed abnormally.
            state.closed_with(close_code::ABNORMAL);
            writer.abort();
        }
    }
    tracing::debug!(connection, user = %user.id, "chat: disconnected");
}

/// Waits up to `within` for the writer to send the close frame it was asked for
/// (it may first have to finish a frame in flight); a writer stuck on a socket that
/// takes nothing is abandoned.
async fn close_sent(writer: &mut JoinHandle<Sent>, within: Duration) -> bool {
    match tokio::time::timeout(within, &mut *writer).await {
        Ok(Ok(sent)) => sent == Sent::Close,
        Ok(Err(_)) => false,
        Err(_) => {
            writer.abort();
            false
        }
    }
}

fn too_slow(why: &str) -> End {
    End::Close(CLOSE_TRY_AGAIN_LATER, format!("client too slow: {why}"))
}

/// What a read error means for the connection.
fn read_error(error: axum::Error) -> End {
    let error = error.into_inner();
    match error.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(e)) => {
            End::CloseUnreadable(close_code::SIZE, format!("frame too large: {e}"))
        }
        Some(tungstenite::Error::Utf8(_)) => End::CloseUnreadable(
            close_code::INVALID,
            "a text frame is not valid UTF-8".into(),
        ),
        Some(tungstenite::Error::Protocol(e)) => {
            End::CloseUnreadable(close_code::PROTOCOL, format!("protocol error: {e}"))
        }
        _ => {
            tracing::debug!(error = %error, "chat: connection lost");
            End::Gone
        }
    }
}

fn close_frame(code: u16, reason: &str) -> CloseFrame {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }
}

/// The reader's side of one connection: answers client frames.
struct Connection<'a> {
    state: &'a ChatState,
    user: &'a ChatUser,
    outbox: &'a Outbox,
    publish: mpsc::Sender<Pending>,
    limiter: &'a mut RateLimiter,
}

impl Connection<'_> {
    fn on_text(&mut self, text: &str) -> Result<(), Overflow> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(error) => {
                self.state.frame_in("invalid");
                return self.reply(error);
            }
        };
        self.state.frame_in(frame.kind());
        let answer = match frame {
            ClientFrame::Send {
                room_id,
                body,
                client_msg_id,
            } => match self.send(room_id, body, &client_msg_id) {
                Ok(()) => return Ok(()),
                Err(error) => error.for_message(Some(&client_msg_id)).into(),
            },
            ClientFrame::History { room_id, limit } => match self.history(&room_id, limit) {
                Ok(frame) => frame,
                Err(error) => error.into(),
            },
        };
        self.outbox.push(&answer)
    }

    fn reply(&self, error: FrameError) -> Result<(), Overflow> {
        self.outbox.push(&error.into())
    }

    /// Checks that the user is the participant of `room_id` their role makes them.
    fn room(&self, room_id: &str) -> Result<DmRoom, FrameError> {
        let room = DmRoom::parse(room_id)
            .map_err(|e| FrameError::new(ErrorCode::InvalidRoom, e.to_string()))?;
        let seat = match self.user.role {
            Role::Buyer => &room.buyer_id,
            Role::Seller => &room.seller_id,
        };
        if *seat != self.user.id {
            return Err(FrameError::new(
                ErrorCode::Forbidden,
                format!("you are not a participant of room {room_id}"),
            ));
        }
        Ok(room)
    }

    fn send(
        &mut self,
        room_id: String,
        body: String,
        client_msg_id: &str,
    ) -> Result<(), FrameError> {
        self.room(&room_id)?;
        let settings = self.state.settings();
        if body.trim().is_empty() {
            return Err(FrameError::new(ErrorCode::EmptyBody, "the body is empty"));
        }
        let chars = body.chars().count();
        if chars > settings.max_body_chars {
            return Err(FrameError::new(
                ErrorCode::BodyTooLong,
                format!(
                    "the body has {chars} characters; at most {} are accepted",
                    settings.max_body_chars
                ),
            ));
        }
        if !self.limiter.try_take(Instant::now()) {
            return Err(FrameError::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} messages a second (bursts of {}); wait and send again",
                    settings.message_rate, settings.message_burst
                ),
            ));
        }
        let message = ChatMessage {
            message_id: uuid::Uuid::new_v4().to_string(),
            room_id,
            sender_id: self.user.id.clone(),
            body,
            sent_at: now_millis(),
        };
        self.publish
            .try_send(Pending {
                message,
                client_msg_id: client_msg_id.to_string(),
            })
            .map_err(|_| {
                FrameError::new(
                    ErrorCode::Unavailable,
                    "too many messages are waiting to be published; send again later",
                )
            })
    }

    fn history(&self, room_id: &str, limit: Option<u64>) -> Result<ServerFrame, FrameError> {
        self.room(room_id)?;
        let settings = self.state.settings();
        let limit = limit
            .map_or(settings.history_limit_default, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            })
            .min(settings.history_limit_max);
        let messages = self
            .state
            .streams()
            .chat()
            .history(room_id, limit)
            .into_iter()
            .map(Into::into)
            .collect();
        Ok(ServerFrame::History {
            room_id: room_id.to_string(),
            messages,
        })
    }
}

/// The writer's queue, seen from the reader: frames go in without waiting.
struct Outbox {
    tx: mpsc::Sender<Message>,
    /// Slots deliveries leave free for answers (acks, errors, history), so a
    /// burst of deliveries does not make an ack overflow the queue.
    reserved: usize,
    state: ChatState,
}

impl Outbox {
    fn room_for_deliveries(&self) -> bool {
        self.tx.capacity() > self.reserved
    }

    fn push(&self, frame: &ServerFrame) -> Result<(), Overflow> {
        self.tx
            .try_send(Message::Text(frame.to_json().into()))
            .map_err(|_| Overflow)?;
        self.state.frame_out(frame.kind());
        if let ServerFrame::Error { code, .. } = frame {
            self.state.error_sent(code);
        }
        Ok(())
    }
}

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// It sent the close frame it was asked to.
    Close,
    /// The socket failed or did not take a frame in time.
    Failed,
    /// Its queue closed.
    Done,
}

/// Writes queued frames to the socket, each within `timeout`; a close request goes
/// ahead of whatever is queued and ends the writer.
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Message>,
    mut close: oneshot::Receiver<CloseFrame>,
    timeout: Duration,
) -> Sent {
    loop {
        tokio::select! {
            biased;
            frame = &mut close => {
                let Ok(frame) = frame else { return Sent::Done };
                return match tokio::time::timeout(timeout, sink.send(Message::Close(Some(frame)))).await {
                    Ok(Ok(())) => Sent::Close,
                    _ => Sent::Failed,
                };
            }
            message = queue.recv() => {
                let Some(message) = message else { return Sent::Done };
                match tokio::time::timeout(timeout, sink.send(message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "chat: write failed");
                        return Sent::Failed;
                    }
                    Err(_) => {
                        tracing::info!(timeout = ?timeout, "chat: dropping a connection whose socket takes no frames");
                        return Sent::Failed;
                    }
                }
            }
        }
    }
}

/// A message waiting for the broker.
#[derive(Debug)]
struct Pending {
    message: ChatMessage,
    client_msg_id: String,
}

/// Publishes a connection's messages in order, answering each with an ack or an
/// error frame for the reader to send.
async fn publish(
    state: ChatState,
    mut pending: mpsc::Receiver<Pending>,
    answers: mpsc::Sender<ServerFrame>,
) {
    while let Some(Pending {
        message,
        client_msg_id,
    }) = pending.recv().await
    {
        let published = state
            .streams()
            .publisher()
            .publish(topics::CHAT_MESSAGES, &message.room_id, &message)
            .await;
        let answer = match published {
            Ok(_) => ServerFrame::Ack {
                client_msg_id,
                message_id: message.message_id,
            },
            Err(error) => {
                tracing::warn!(error = %error, room = %message.room_id, "chat: a message was not published");
                FrameError::new(
                    ErrorCode::Unavailable,
                    "the message could not be stored; send it again",
                )
                .for_message(Some(&client_msg_id))
                .into()
            }
        };
        if answers.send(answer).await.is_err() {
            return;
        }
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` a second.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiter_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(2.0, 3);
        limiter.at = start;
        assert!((0..3).all(|_| limiter.try_take(start)));
        assert!(!limiter.try_take(start));
        assert!(!limiter.try_take(start + Duration::from_millis(400)));
        assert!(limiter.try_take(start + Duration::from_millis(500)));
        assert!(!limiter.try_take(start + Duration::from_millis(600)));
        // A long pause refills no more than the burst.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| limiter.try_take(later)));
        assert!(!limiter.try_take(later));
    }

    #[test]
    fn close_reasons_are_cut_to_fit_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1008, &reason);
        assert!(frame.reason.as_str().len() <= MAX_CLOSE_REASON);
        assert_eq!(frame.reason.as_str().len(), 122);
    }
}
