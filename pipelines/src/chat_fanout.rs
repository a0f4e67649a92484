//! The chat fan-out processor: each `ChatMessage` on `chat.messages` (keyed by room id)
//! becomes one `ChatDelivery` per room participant on `chat.deliveries` (keyed by
//! recipient id), the sender included so the sender's other connections see the
//! message too. Each room's recent messages are kept in the `chat-history` store for
//! the WebSocket edge to replay ([`room_history`]).
//!
//! A room is `dm:<buyerId>:<sellerId>` ([`DmRoom`]) and has exactly those two
//! participants. A malformed room id, a record key that is not the message's room id,
//! or a sender who is not a participant is a [`ProcessError::Invalid`]: the record
//! goes to the dead-letter topic and nothing is delivered.
//!
//! # The `chat-history` store
//!
//! Participant ids may not contain `:` or `/`, so no room id contains `/` and
//! `<roomId>/` prefixes exactly one room. Per room:
//!
//! | key | value |
//! | --- | --- |
//! | `<roomId>/h/<seq>` (`seq` zero-padded to 20 digits) | [`ChatHistoryEntry`] |
//! | `<roomId>/id/<messageId>` | the `seq` that message got |
//! | `<roomId>/state` | the oldest kept and the next `seq` |
//!
//! Zero-padding makes key order sequence order, so a prefix scan of `<roomId>/h/`
//! returns the room's messages oldest first. At most `history_limit` messages are
//! kept per room; the oldest goes first, and its message id with it.
//!
//! # Duplicates
//!
//! A producer retry can put the same message on the topic twice. A message whose id
//! is in the room's `id/` entries is dropped: not delivered, not stored again. The
//! ids are remembered exactly as long as their message is in the history, so the
//! duplicate window is the last `history_limit` messages of the room, far more than a
//! retry needs.

use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::store::{KeyValueStore, decode_value};
use orderflow_runtime::{Context, ProcessError, Processor, Record};
use serde::{Deserialize, Serialize};

use crate::records::{ChatDelivery, ChatMessage, topics};

/// The store that keeps each room's recent messages.
pub const HISTORY_STORE: &str = "chat-history";

/// The `config:` block of a `chat-fanout` processor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatFanoutConfig {
    /// How many recent messages to keep per room (at least 1; default 100).
    #[serde(default = "default_history_limit")]
    pub history_limit: u64,
}

fn default_history_limit() -> u64 {
    100
}

impl Default for ChatFanoutConfig {
    fn default() -> Self {
        ChatFanoutConfig {
            history_limit: default_history_limit(),
        }
    }
}

/// A direct-message room between a buyer and a seller, parsed from its id
/// `dm:<buyerId>:<sellerId>`. The WebSocket edge uses the same parser to refuse a
/// room the user is not in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmRoom {
    /// The buyer's user id.
    pub buyer_id: String,
    /// The seller's user id.
    pub seller_id: String,
}

/// Why a room id is not `dm:<buyerId>:<sellerId>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed room id {room_id:?}: {reason}")]
pub struct RoomIdError {
    /// The room id as given.
    pub room_id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl DmRoom {
    /// Parses `dm:<buyerId>:<sellerId>`: two different, non-empty user ids without
    /// `:`, `/` or control characters.
    pub fn parse(room_id: &str) -> Result<DmRoom, RoomIdError> {
        let error = |reason| RoomIdError {
            room_id: room_id.to_string(),
            reason,
        };
        let rest = room_id
            .strip_prefix("dm:")
            .ok_or_else(|| error("expected dm:<buyerId>:<sellerId>"))?;
        let (buyer, seller) = rest
            .split_once(':')
            .ok_or_else(|| error("expected dm:<buyerId>:<sellerId>"))?;
        let valid = |id: &str| {
            !id.is_empty() && !id.chars().any(|c| c == ':' || c == '/' || c.is_control())
        };
        if !valid(buyer) || !valid(seller) {
            return Err(error(
                "user ids must be non-empty, without ':', '/' or control characters",
            ));
        }
        if buyer == seller {
            return Err(error("a room needs two different participants"));
        }
        Ok(DmRoom {
            buyer_id: buyer.to_string(),
            seller_id: seller.to_string(),
        })
    }

    /// The two participants, buyer first.
    pub fn participants(&self) -> [&str; 2] {
        [&self.buyer_id, &self.seller_id]
    }

    /// Whether `user_id` may send and receive in the room.
    pub fn is_participant(&self, user_id: &str) -> bool {
        self.buyer_id == user_id || self.seller_id == user_id
    }
}

/// One kept message of a room, as the WebSocket `history` frame lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatHistoryEntry {
    /// The message id.
    pub message_id: String,
    /// The sender's user id.
    pub sender_id: String,
    /// The text.
    pub body: String,
    /// When the edge accepted it, epoch milliseconds.
    pub sent_at: i64,
}

/// The sequence numbers of a room: its history holds `first_seq..next_seq`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RoomState {
    first_seq: u64,
    next_seq: u64,
}

/// The key prefix of a room's history entries, `<roomId>/h/`.
pub fn history_prefix(room_id: &str) -> String {
    format!("{room_id}/h/")
}

fn history_key(room_id: &str, seq: u64) -> String {
    format!("{room_id}/h/{seq:020}")
}

fn message_id_key(room_id: &str, message_id: &str) -> String {
    format!("{room_id}/id/{message_id}")
}

fn state_key(room_id: &str) -> String {
    format!("{room_id}/state")
}

/// The last `limit` messages of a room, oldest first, from `chat-history` entries as
/// key and bytes: a task's store (`store.iter()` or
/// `store.prefix(&history_prefix(room))`), or a map rebuilt from the store's
/// changelog topic, which is how the WebSocket edge can read it. Entries of other
/// rooms and the bookkeeping keys are skipped; the order of `entries` does not
/// matter.
pub fn room_history<'a, I>(
    entries: I,
    room_id: &str,
    limit: usize,
) -> Result<Vec<ChatHistoryEntry>, ProcessError>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let prefix = history_prefix(room_id);
    let mut kept: Vec<(&str, &[u8])> = entries
        .into_iter()
        .filter(|(key, _)| {
            key.strip_prefix(prefix.as_str())
                .is_some_and(|seq| seq.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    kept.sort_unstable_by_key(|(key, _)| *key);
    let skip = kept.len().saturating_sub(limit);
    kept[skip..]
        .iter()
        .map(|(key, bytes)| decode_value(HISTORY_STORE, key, bytes))
        .collect()
}

/// The last `limit` messages of a room in one task's `chat-history` store, oldest
/// first.
pub fn store_history(
    store: &KeyValueStore,
    room_id: &str,
    limit: usize,
) -> Result<Vec<ChatHistoryEntry>, ProcessError> {
    let prefix = history_prefix(room_id);
    room_history(store.prefix(&prefix), room_id, limit)
}

/// Fans chat messages out to room participants and keeps room history. See the
/// module docs.
#[derive(Debug)]
pub struct ChatFanout {
    history_limit: u64,
}

impl ChatFanout {
    /// A fan-out with these settings.
    pub fn new(config: &ChatFanoutConfig) -> Self {
        ChatFanout {
            history_limit: config.history_limit,
        }
    }

    /// The builder registered in the catalog under `chat-fanout`.
    pub fn build(spec: &ProcessorSpec) -> Result<Box<dyn Processor>, BuildError> {
        let config: ChatFanoutConfig = spec.config()?;
        if config.history_limit == 0 {
            return Err(BuildError::at_config(
                spec,
                "history_limit",
                "history_limit must be at least 1: the kept history is also what catches duplicate message ids",
            ));
        }
        Ok(Box::new(ChatFanout::new(&config)))
    }

    /// Stores a new message of `room_id` and drops what falls out of the history.
    /// Returns `false` for a duplicate message id (nothing is written).
    fn remember(
        &self,
        store: &mut KeyValueStore,
        message: &ChatMessage,
    ) -> Result<bool, ProcessError> {
        let room_id = message.room_id.as_str();
        let id_key = message_id_key(room_id, &message.message_id);
        if store.get_raw(&id_key).is_some() {
            return Ok(false);
        }
        let mut state: RoomState = store.get(&state_key(room_id))?.unwrap_or_default();
        let seq = state.next_seq;
        store.put(
            &history_key(room_id, seq),
            &ChatHistoryEntry {
                message_id: message.message_id.clone(),
                sender_id: message.sender_id.clone(),
                body: message.body.clone(),
                sent_at: message.sent_at,
            },
        )?;
        store.put(&id_key, &seq)?;
        state.next_seq = seq + 1;
        // A loop, not a single eviction, so a history_limit lowered between deploys
        // trims the room on its next message.
        while state.next_seq - state.first_seq > self.history_limit {
            let old_key = history_key(room_id, state.first_seq);
            if let Some(old) = store.get::<ChatHistoryEntry>(&old_key)? {
                store.delete(&old_key);
                store.delete(&message_id_key(room_id, &old.message_id));
            }
            state.first_seq += 1;
        }
        store.put(&state_key(room_id), &state)?;
        Ok(true)
    }
}

impl Processor for ChatFanout {
    fn stores(&self) -> &'static [&'static str] {
        &[HISTORY_STORE]
    }

    fn process(&mut self, record: &Record, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let message: ChatMessage = record.value()?;
        if message.room_id != record.key {
            return Err(ProcessError::invalid(format!(
                "record key {:?} is not the message's room id {:?}: chat.messages is keyed by room id",
                record.key, message.room_id
            )));
        }
        if message.message_id.is_empty() {
            return Err(ProcessError::invalid("empty message id"));
        }
        let room =
            DmRoom::parse(&message.room_id).map_err(|e| ProcessError::invalid(e.to_string()))?;
        if !room.is_participant(&message.sender_id) {
            return Err(ProcessError::invalid(format!(
                "sender {:?} is not a participant of room {:?}",
                message.sender_id, message.room_id
            )));
        }
        if !self.remember(ctx.store(HISTORY_STORE)?, &message)? {
            tracing::debug!(
                room_id = %message.room_id,
                message_id = %message.message_id,
                "duplicate chat message dropped"
            );
            return Ok(());
        }
        for recipient in room.participants() {
            let delivery = ChatDelivery {
                message_id: message.message_id.clone(),
                room_id: message.room_id.clone(),
                sender_id: message.sender_id.clone(),
                recipient_id: recipient.to_string(),
                body: message.body.clone(),
                sent_at: message.sent_at,
            };
            ctx.forward(topics::CHAT_DELIVERIES, recipient, &delivery)?;
        }
        Ok(())
    }
}
