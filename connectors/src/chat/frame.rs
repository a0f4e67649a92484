//! The chat protocol's text frames: what a client may send ([`ClientFrame`], parsed
//! from JSON with an error code for each way it can be wrong) and what the server
//! sends ([`ServerFrame`], rendered to JSON). Field names are the contract's
//! (camelCase); times are epoch milliseconds.

use orderflow_pipelines::chat_fanout::ChatHistoryEntry;
use orderflow_pipelines::records::ChatDelivery;
use serde::Serialize;
use serde_json::{Map, Value};

/// Longest `clientMsgId` accepted, in bytes: it is echoed in acks and errors.
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;

/// A frame a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"send","roomId","body","clientMsgId"}`: post a message to a room.
    Send {
        /// The room.
        room_id: String,
        /// The text.
        body: String,
        /// The client's id for the message, echoed in the ack.
        client_msg_id: String,
    },
    /// `{"type":"history","roomId","limit"}`: the room's last messages.
    History {
        /// The room.
        room_id: String,
        /// How many, at most; `None` for the server's default.
        limit: Option<u64>,
    },
}

/// The stable error codes of `{"type":"error","code",…}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    MalformedFrame,
    /// A binary frame; the protocol is JSON in text frames.
    BinaryFrame,
    /// No `type`, or one the server does not know.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type or an unacceptable value.
    InvalidField,
    /// The room id is not `dm:<buyerId>:<sellerId>`.
    InvalidRoom,
    /// The user is not the participant of the room their role makes them.
    Forbidden,
    /// The body is empty (or only whitespace).
    EmptyBody,
    /// The body is longer than the server accepts.
    BodyTooLong,
    /// The connection sends messages faster than its rate allows.
    RateLimited,
    /// The message could not be put on `chat.messages`; the client may retry.
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire and in the errors metric.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::BinaryFrame => "BINARY_FRAME",
            ErrorCode::UnknownType => "UNKNOWN_TYPE",
            ErrorCode::MissingField => "MISSING_FIELD",
            ErrorCode::InvalidField => "INVALID_FIELD",
            ErrorCode::InvalidRoom => "INVALID_ROOM",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::EmptyBody => "EMPTY_BODY",
            ErrorCode::BodyTooLong => "BODY_TOO_LONG",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// A frame the server could not accept: the error frame to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// What kind of problem.
    pub code: ErrorCode,
    /// A sentence for a developer.
    pub message: String,
    /// The `clientMsgId` of the `send` it answers, when one could be read.
    pub client_msg_id: Option<String>,
}

impl FrameError {
    /// An error not tied to a message id.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
            client_msg_id: None,
        }
    }

    /// The same error, naming the `send` it answers.
    pub fn for_message(mut self, client_msg_id: Option<&str>) -> Self {
        self.client_msg_id = client_msg_id.map(str::to_string);
        self
    }
}

impl ClientFrame {
    /// Parses a text frame.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            FrameError::new(ErrorCode::MalformedFrame, format!("not valid JSON: {e}"))
        })?;
        let Value::Object(object) = value else {
            return Err(FrameError::new(
                ErrorCode::MalformedFrame,
                "a frame is a JSON object with a \"type\"",
            ));
        };
        let kind = match object.get("type") {
            None => {
                return Err(FrameError::new(
                    ErrorCode::MissingField,
                    "the field \"type\" is required",
                ));
            }
            Some(Value::String(kind)) => kind.as_str(),
            Some(_) => {
                return Err(FrameError::new(
                    ErrorCode::InvalidField,
                    "the field \"type\" must be a string",
                ));
            }
        };
        match kind {
            "send" => {
                // Read the id first so every later error can name it.
                let client_msg_id = string_field(&object, "clientMsgId")?;
                let id = Some(client_msg_id.as_str());
                if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID_LEN {
                    return Err(FrameError::new(
                        ErrorCode::InvalidField,
                        format!("\"clientMsgId\" must be 1 to {MAX_CLIENT_MSG_ID_LEN} bytes"),
                    ));
                }
                let room_id = string_field(&object, "roomId").map_err(|e| e.for_message(id))?;
                let body = string_field(&object, "body").map_err(|e| e.for_message(id))?;
                Ok(ClientFrame::Send {
                    room_id,
                    body,
                    client_msg_id,
                })
            }
            "history" => {
                let room_id = string_field(&object, "roomId")?;
                let limit = match object.get("limit") {
                    None | Some(Value::Null) => None,
                    Some(value) => match value.as_u64() {
                        Some(limit) if limit > 0 => Some(limit),
                        _ => {
                            return Err(FrameError::new(
                                ErrorCode::InvalidField,
                                "\"limit\" must be a positive integer",
                            ));
                        }
                    },
                };
                Ok(ClientFrame::History { room_id, limit })
            }
            other => Err(FrameError::new(
                ErrorCode::UnknownType,
                format!("unknown frame type {other:?}; expected \"send\" or \"history\""),
            )),
        }
    }

    /// The frame's type, as the frames-in metric labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Send { .. } => "send",
            ClientFrame::History { .. } => "history",
        }
    }
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<String, FrameError> {
    match object.get(name) {
        None | Some(Value::Null) => Err(FrameError::new(
            ErrorCode::MissingField,
            format!("the field {name:?} is required"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(FrameError::new(
            ErrorCode::InvalidField,
            format!("the field {name:?} must be a string"),
        )),
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame {
    /// A message delivered to this user.
    Message {
        /// The message id.
        message_id: String,
        /// The room.
        room_id: String,
        /// Who sent it.
        sender_id: String,
        /// The text.
        body: String,
        /// When the edge accepted it, epoch milliseconds.
        sent_at: i64,
    },
    /// The message with this client id is on `chat.messages`.
    Ack {
        /// The client's id.
        client_msg_id: String,
        /// The id the server gave it.
        message_id: String,
    },
    /// A room's last messages, oldest first.
    History {
        /// The room.
        room_id: String,
        /// The messages.
        messages: Vec<HistoryMessage>,
    },
    /// A frame the server could not accept.
    Error {
        /// A stable code ([`ErrorCode::as_str`]).
        code: &'static str,
        /// A sentence for a developer.
        message: String,
        /// The `clientMsgId` of the `send` it answers, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
}

/// One message of a `history` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryMessage {
    /// The message id.
    pub message_id: String,
    /// Who sent it.
    pub sender_id: String,
    /// The text.
    pub body: String,
    /// When the edge accepted it, epoch milliseconds.
    pub sent_at: i64,
}

impl From<ChatHistoryEntry> for HistoryMessage {
    fn from(entry: ChatHistoryEntry) -> Self {
        HistoryMessage {
            message_id: entry.message_id,
            sender_id: entry.sender_id,
            body: entry.body,
            sent_at: entry.sent_at,
        }
    }
}

impl From<ChatDelivery> for ServerFrame {
    fn from(delivery: ChatDelivery) -> Self {
        ServerFrame::Message {
            message_id: delivery.message_id,
            room_id: delivery.room_id,
            sender_id: delivery.sender_id,
            body: delivery.body,
            sent_at: delivery.sent_at,
        }
    }
}

impl From<FrameError> for ServerFrame {
    fn from(error: FrameError) -> Self {
        ServerFrame::Error {
            code: error.code.as_str(),
            message: error.message,
            client_msg_id: error.client_msg_id,
        }
    }
}

impl ServerFrame {
    /// The frame's type, as the frames-out metric labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Message { .. } => "message",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::History { .. } => "history",
            ServerFrame::Error { .. } => "error",
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail; an empty object would only
        // hide a bug, so say so in the log if it ever does.
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "chat: could not render a frame");
            String::from("{}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        match ClientFrame::parse(text) {
            Err(e) => e.code,
            Ok(frame) => panic!("parsed {frame:?}"),
        }
    }

    #[test]
    fn parses_send_and_history() {
        assert_eq!(
            ClientFrame::parse(
                r#"{"type":"send","roomId":"dm:a:b","body":"hi","clientMsgId":"c1"}"#
            ),
            Ok(ClientFrame::Send {
                room_id: "dm:a:b".into(),
                body: "hi".into(),
                client_msg_id: "c1".into(),
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"history","roomId":"dm:a:b","limit":50}"#),
            Ok(ClientFrame::History {
                room_id: "dm:a:b".into(),
                limit: Some(50),
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"history","roomId":"dm:a:b"}"#),
            Ok(ClientFrame::History {
                room_id: "dm:a:b".into(),
                limit: None,
            })
        );
    }

    #[test]
    fn each_kind_of_bad_frame_has_its_code() {
        assert_eq!(code("not json"), ErrorCode::MalformedFrame);
        assert_eq!(code("[1,2]"), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"roomId":"dm:a:b"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"join"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"send","roomId":"dm:a:b","clientMsgId":"c"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code(r#"{"type":"send","roomId":"dm:a:b","body":3,"clientMsgId":"c"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"send","roomId":"dm:a:b","body":"x","clientMsgId":""}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"history","roomId":"dm:a:b","limit":0}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"history","roomId":"dm:a:b","limit":"5"}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn a_send_error_names_the_client_id_once_known() {
        let error = ClientFrame::parse(r#"{"type":"send","roomId":"dm:a:b","clientMsgId":"c9"}"#)
            .err()
            .map(|e| e.client_msg_id);
        assert_eq!(error, Some(Some("c9".to_string())));
    }

    #[test]
    fn server_frames_render_as_the_contract_says() {
        let ack = ServerFrame::Ack {
            client_msg_id: "c1".into(),
            message_id: "m1".into(),
        };
        assert_eq!(
            serde_json::from_str::<Value>(&ack.to_json()).ok(),
            Some(serde_json::json!({"type":"ack","clientMsgId":"c1","messageId":"m1"}))
        );
        let message = ServerFrame::Message {
            message_id: "m1".into(),
            room_id: "dm:a:b".into(),
            sender_id: "a".into(),
            body: "hi".into(),
            sent_at: 5,
        };
        assert_eq!(
            serde_json::from_str::<Value>(&message.to_json()).ok(),
            Some(
                serde_json::json!({"type":"message","messageId":"m1","roomId":"dm:a:b","senderId":"a","body":"hi","sentAt":5})
            )
        );
        let history = ServerFrame::History {
            room_id: "dm:a:b".into(),
            messages: vec![HistoryMessage {
                message_id: "m1".into(),
                sender_id: "a".into(),
                body: "hi".into(),
                sent_at: 5,
            }],
        };
        assert_eq!(
            serde_json::from_str::<Value>(&history.to_json()).ok(),
            Some(
                serde_json::json!({"type":"history","roomId":"dm:a:b","messages":[{"messageId":"m1","senderId":"a","body":"hi","sentAt":5}]})
            )
        );
        let error: ServerFrame = FrameError::new(ErrorCode::Forbidden, "no").into();
        assert_eq!(
            serde_json::from_str::<Value>(&error.to_json()).ok(),
            Some(serde_json::json!({"type":"error","code":"FORBIDDEN","message":"no"}))
        );
    }
}
