//! Sending a command to the streams from a request: publish it, and where the caller
//! needs the outcome, wait for the processor's reply on `edge.replies`, all within
//! the reply timeout.

use orderflow_pipelines::records::Reply;
use orderflow_runtime::avro::AvroRecord;
use tokio::time::Instant;

use super::HttpState;
use super::error::ApiError;

/// Publishes `record` under `key`, giving up at `deadline`.
async fn publish_by<T: AvroRecord + Sync>(
    state: &HttpState,
    topic: &str,
    key: &str,
    record: &T,
    what: &str,
    deadline: Instant,
) -> Result<(), ApiError> {
    let publisher = state.streams.publisher();
    match tokio::time::timeout_at(deadline, publisher.publish(topic, key, record)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, topic, "http: could not publish {what}");
            Err(ApiError::unavailable())
        }
        Err(_) => {
            tracing::warn!(topic, "http: publishing {what} did not finish in time");
            Err(ApiError::no_reply(what, state.settings.reply_timeout))
        }
    }
}

/// Publishes `record` under `key` (no reply expected), within the reply timeout.
pub(super) async fn publish<T: AvroRecord + Sync>(
    state: &HttpState,
    topic: &str,
    key: &str,
    record: &T,
    what: &str,
) -> Result<(), ApiError> {
    let deadline = Instant::now() + state.settings.reply_timeout;
    publish_by(state, topic, key, record, what, deadline).await
}

/// Publishes `record` under `key` and waits for the reply to `request_id`; both
/// within the reply timeout, else 503 `NO_REPLY`.
pub(super) async fn ask<T: AvroRecord + Sync>(
    state: &HttpState,
    topic: &str,
    key: &str,
    request_id: &str,
    record: &T,
    what: &str,
) -> Result<Reply, ApiError> {
    let timeout = state.settings.reply_timeout;
    let deadline = Instant::now() + timeout;
    // Waiting starts before publishing, so a quick reply cannot be missed.
    let waiter = state.streams.replies().expect(request_id);
    publish_by(state, topic, key, record, what, deadline).await?;
    match waiter
        .wait(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        Some(reply) => Ok(reply),
        None => {
            tracing::warn!(
                request = request_id,
                topic,
                "http: no reply to {what} in time"
            );
            Err(ApiError::no_reply(what, timeout))
        }
    }
}

/// A fresh id (request, order, token family, token).
pub(super) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Now, in epoch milliseconds.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
