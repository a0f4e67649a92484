//! The Rust types of the records on orderflow's topics, one per Avro record in
//! `schemas/`, so processors work with typed values and never with raw Avro.
//!
//! Each struct's field names are the Avro field names, and every struct refuses a
//! field it does not know (`deny_unknown_fields`): a value is always resolved against
//! our own schema before it is decoded, so an unknown field can only mean the Rust
//! type and the schema file have drifted apart, and that must fail loudly.
//!
//! | topic | schema file | Rust type |
//! | --- | --- | --- |
//! | `auth.commands` | `auth.commands.avsc` | [`AuthCommand`] ([`RegisterUser`], [`UpdateProfile`], [`DeleteUser`], [`StartSession`], [`RotateSession`], [`EndSession`]) |
//! | `auth.users` | `auth.users.avsc` | [`User`] |
//! | `auth.relations` | `auth.relations.avsc` | [`BuyerSeller`] |
//! | `orders.commands` | `orders.commands.avsc` | [`OrderCommand`] ([`PlaceOrder`], [`CancelOrder`]) |
//! | `orders.events` | `orders.events.avsc` | [`OrderEvent`] |
//! | `payments.requests` | `payments.requests.avsc` | [`PaymentCommand`] ([`PaymentRequested`], [`RefundRequested`]) |
//! | `payments.results` | `payments.results.avsc` | [`PaymentResult`] |
//! | `chat.messages` | `chat.messages.avsc` | [`ChatMessage`] |
//! | `chat.deliveries` | `chat.deliveries.avsc` | [`ChatDelivery`] |
//! | `edge.replies` | `edge.replies.avsc` | [`Reply`] |
//!
//! Mapping rules: ids and currencies are `String`; Avro `long` (money in minor units,
//! versions, and `timestamp-millis` times) is `i64`; `int` is `i32`; a `["null", T]`
//! union is `Option<T>`; Avro enums are unit-only Rust enums whose serde names are the
//! Avro symbols.
//!
//! Topics carrying several record types have a top-level Avro union and a Rust enum
//! with one newtype variant per record. **The Rust variants are declared in the same
//! order as the union in the schema file**: encoding picks the union branch by record
//! name ([`union_variant`]), but decoding goes through apache-avro's serde path, which
//! maps `Value::Union(index, _)` to the enum variant at that same index.

use orderflow_runtime::avro::{AvroError, AvroRecord, union_encode, union_variant};

use apache_avro::Schema;
use apache_avro::types::Value;
use serde::{Deserialize, Serialize};

/// Topic names, as in DESIGN.md.
pub mod topics {
    /// Account and session commands ([`AuthCommand`](super::AuthCommand)), keyed by
    /// lower-case email.
    pub const AUTH_COMMANDS: &str = "auth.commands";
    /// Current accounts ([`User`](super::User)), compacted, keyed by user id.
    pub const AUTH_USERS: &str = "auth.users";
    /// Buyer→seller relations ([`BuyerSeller`](super::BuyerSeller)), compacted, keyed
    /// `<buyerId>:<sellerId>`.
    pub const AUTH_RELATIONS: &str = "auth.relations";
    /// Order commands ([`OrderCommand`](super::OrderCommand)), keyed by order id.
    pub const ORDERS_COMMANDS: &str = "orders.commands";
    /// Order state changes ([`OrderEvent`](super::OrderEvent)), keyed by order id.
    pub const ORDERS_EVENTS: &str = "orders.events";
    /// Charges and refunds to make ([`PaymentCommand`](super::PaymentCommand)), keyed
    /// by order id.
    pub const PAYMENTS_REQUESTS: &str = "payments.requests";
    /// Gateway answers ([`PaymentResult`](super::PaymentResult)), keyed by order id.
    pub const PAYMENTS_RESULTS: &str = "payments.results";
    /// Sent chat messages ([`ChatMessage`](super::ChatMessage)), keyed by room id.
    pub const CHAT_MESSAGES: &str = "chat.messages";
    /// Per-recipient copies ([`ChatDelivery`](super::ChatDelivery)), keyed by recipient.
    pub const CHAT_DELIVERIES: &str = "chat.deliveries";
    /// Answers to edge requests ([`Reply`](super::Reply)), keyed by request id.
    pub const EDGE_REPLIES: &str = "edge.replies";

    /// Every topic; each has the schema file `schemas/<topic>.avsc`.
    pub const ALL: [&str; 10] = [
        AUTH_COMMANDS,
        AUTH_USERS,
        AUTH_RELATIONS,
        ORDERS_COMMANDS,
        ORDERS_EVENTS,
        PAYMENTS_REQUESTS,
        PAYMENTS_RESULTS,
        CHAT_MESSAGES,
        CHAT_DELIVERIES,
        EDGE_REPLIES,
    ];
}

// ---------------------------------------------------------------------------------
// Enums
// ---------------------------------------------------------------------------------

/// `orderflow.Role`: what an account may do.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// `BUYER`: places orders.
    Buyer,
    /// `SELLER`: receives orders.
    Seller,
}

/// `orderflow.UserStatus`: whether an account is live.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UserStatus {
    /// `ACTIVE`.
    Active,
    /// `DELETED`: a `DeleteUser` was applied.
    Deleted,
}

/// `orderflow.OrderStatus`: where an order is in its life.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// `ORDERED`: accepted, payment requested.
    Ordered,
    /// `PAID`: the payment was approved.
    Paid,
    /// `CANCELLED`: cancelled before payment, declined, or timed out.
    Cancelled,
    /// `REFUNDED`: cancelled after payment and refunded.
    Refunded,
    /// `REJECTED`: invalid (unknown buyer or seller, bad items).
    Rejected,
}

/// `orderflow.PaymentOutcome`: what the payment gateway did.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentOutcome {
    /// `APPROVED`: the charge went through.
    Approved,
    /// `DECLINED`: the charge was refused.
    Declined,
    /// `REFUNDED`: the refund went through.
    Refunded,
}

// ---------------------------------------------------------------------------------
// auth.commands
// ---------------------------------------------------------------------------------

/// `orderflow.RegisterUser` on `auth.commands`: create an account.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegisterUser {
    /// Edge request id, echoed by the [`Reply`].
    pub request_id: String,
    /// Lower-case email, the record key.
    pub email: String,
    /// Credential hash computed by the edge.
    pub password_hash: String,
    /// Buyer or seller.
    pub role: Role,
    /// Name shown to other users.
    pub display_name: String,
}

/// `orderflow.UpdateProfile` on `auth.commands`: change an account; `None` keeps a field.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfile {
    /// Edge request id, echoed by the [`Reply`].
    pub request_id: String,
    /// Lower-case email of the account, the record key.
    pub email: String,
    /// New display name.
    pub display_name: Option<String>,
    /// New credential hash.
    pub password_hash: Option<String>,
}

/// `orderflow.DeleteUser` on `auth.commands`: mark an account deleted.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeleteUser {
    /// Edge request id, echoed by the [`Reply`].
    pub request_id: String,
    /// Lower-case email of the account, the record key.
    pub email: String,
}

/// `orderflow.StartSession` on `auth.commands`: open a refresh-token family at login.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    /// Edge request id, echoed by the [`Reply`].
    pub request_id: String,
    /// Lower-case email of the account, the record key.
    pub email: String,
    /// Id of the account logging in.
    pub user_id: String,
    /// New token family id (the access token's `sid`).
    pub family_id: String,
    /// Id (`jti`) of the family's first refresh token.
    pub token_id: String,
    /// When that refresh token expires, epoch milliseconds.
    pub expires_at: i64,
}

/// `orderflow.RotateSession` on `auth.commands`: trade the family's current refresh
/// token for the next one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RotateSession {
    /// Edge request id, echoed by the [`Reply`].
    pub request_id: String,
    /// Lower-case email of the account, the record key.
    pub email: String,
    /// The token family.
    pub family_id: String,
    /// Id (`jti`) of the presented refresh token.
    pub token_id: String,
    /// Id (`jti`) of the refresh token that replaces it.
    pub next_token_id: String,
    /// When the replacing refresh token expires, epoch milliseconds.
    pub expires_at: i64,
}

/// `orderflow.EndSession` on `auth.commands`: revoke a token family (logout).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndSession {
    /// Edge request id, echoed by the [`Reply`].
    pub request_id: String,
    /// Lower-case email of the account, the record key.
    pub email: String,
    /// The token family to revoke.
    pub family_id: String,
}

/// A record on `auth.commands`. Variant order = union order in `auth.commands.avsc`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AuthCommand {
    /// Union branch 0, `orderflow.RegisterUser`.
    RegisterUser(RegisterUser),
    /// Union branch 1, `orderflow.UpdateProfile`.
    UpdateProfile(UpdateProfile),
    /// Union branch 2, `orderflow.DeleteUser`.
    DeleteUser(DeleteUser),
    /// Union branch 3, `orderflow.StartSession`.
    StartSession(StartSession),
    /// Union branch 4, `orderflow.RotateSession`.
    RotateSession(RotateSession),
    /// Union branch 5, `orderflow.EndSession`.
    EndSession(EndSession),
}

impl AvroRecord for AuthCommand {
    fn encode_body(&self, schema: &Schema, out: &mut Vec<u8>) -> Result<(), AvroError> {
        match self {
            Self::RegisterUser(r) => union_encode(schema, "orderflow.RegisterUser", r, out),
            Self::UpdateProfile(r) => union_encode(schema, "orderflow.UpdateProfile", r, out),
            Self::DeleteUser(r) => union_encode(schema, "orderflow.DeleteUser", r, out),
            Self::StartSession(r) => union_encode(schema, "orderflow.StartSession", r, out),
            Self::RotateSession(r) => union_encode(schema, "orderflow.RotateSession", r, out),
            Self::EndSession(r) => union_encode(schema, "orderflow.EndSession", r, out),
        }
    }

    fn to_avro(&self, schema: &Schema) -> Result<Value, AvroError> {
        match self {
            Self::RegisterUser(r) => union_variant(schema, "orderflow.RegisterUser", r),
            Self::UpdateProfile(r) => union_variant(schema, "orderflow.UpdateProfile", r),
            Self::DeleteUser(r) => union_variant(schema, "orderflow.DeleteUser", r),
            Self::StartSession(r) => union_variant(schema, "orderflow.StartSession", r),
            Self::RotateSession(r) => union_variant(schema, "orderflow.RotateSession", r),
            Self::EndSession(r) => union_variant(schema, "orderflow.EndSession", r),
        }
    }
}

// ---------------------------------------------------------------------------------
// auth.users, auth.relations
// ---------------------------------------------------------------------------------

/// `orderflow.User` on `auth.users`: the current state of an account.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User id, the record key.
    pub id: String,
    /// Lower-case email.
    pub email: String,
    /// Buyer or seller.
    pub role: Role,
    /// Name shown to other users.
    pub display_name: String,
    /// Active or deleted.
    pub status: UserStatus,
    /// Registration time, epoch milliseconds.
    pub created_at: i64,
    /// Last change, epoch milliseconds.
    pub updated_at: i64,
    /// Credential hash; edges check logins with it and never return it.
    pub password_hash: String,
}

/// `orderflow.BuyerSeller` on `auth.relations`: the buyer has a PAID order from the
/// seller.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuyerSeller {
    /// Buyer's user id.
    pub buyer_id: String,
    /// Seller's user id.
    pub seller_id: String,
    /// The order that created the relation.
    pub first_paid_order_id: String,
    /// When that order was paid, epoch milliseconds.
    pub since: i64,
}

// ---------------------------------------------------------------------------------
// orders.commands, orders.events
// ---------------------------------------------------------------------------------

/// `orderflow.OrderItem`: one order line.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrderItem {
    /// Product id.
    pub product_id: String,
    /// How many units.
    pub quantity: i32,
    /// Price of one unit, minor units.
    pub unit_price: i64,
}

/// `orderflow.PlaceOrder` on `orders.commands`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// Request id; a repeated one is a no-op.
    pub request_id: String,
    /// Order id, the record key.
    pub order_id: String,
    /// Buyer's user id.
    pub buyer_id: String,
    /// Seller's user id.
    pub seller_id: String,
    /// The order lines.
    pub items: Vec<OrderItem>,
    /// ISO 4217 currency of every price.
    pub currency: String,
    /// When the buyer placed the order, epoch milliseconds.
    pub placed_at: i64,
}

/// `orderflow.CancelOrder` on `orders.commands`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CancelOrder {
    /// Request id; a repeated one is a no-op.
    pub request_id: String,
    /// Order id, the record key.
    pub order_id: String,
    /// User id of who asked.
    pub requested_by: String,
    /// Why, if the caller said.
    pub reason: Option<String>,
}

/// A record on `orders.commands`. Variant order = union order in
/// `orders.commands.avsc`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Union branch 0, `orderflow.PlaceOrder`.
    PlaceOrder(PlaceOrder),
    /// Union branch 1, `orderflow.CancelOrder`.
    CancelOrder(CancelOrder),
}

impl AvroRecord for OrderCommand {
    fn encode_body(&self, schema: &Schema, out: &mut Vec<u8>) -> Result<(), AvroError> {
        match self {
            Self::PlaceOrder(r) => union_encode(schema, "orderflow.PlaceOrder", r, out),
            Self::CancelOrder(r) => union_encode(schema, "orderflow.CancelOrder", r, out),
        }
    }

    fn to_avro(&self, schema: &Schema) -> Result<Value, AvroError> {
        match self {
            Self::PlaceOrder(r) => union_variant(schema, "orderflow.PlaceOrder", r),
            Self::CancelOrder(r) => union_variant(schema, "orderflow.CancelOrder", r),
        }
    }
}

/// `orderflow.OrderEvent` on `orders.events`: an order's state after a saga step.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OrderEvent {
    /// Order id, the record key.
    pub order_id: String,
    /// Buyer's user id.
    pub buyer_id: String,
    /// Seller's user id.
    pub seller_id: String,
    /// Status after this event.
    pub status: OrderStatus,
    /// Sum of the lines, minor units.
    pub total: i64,
    /// ISO 4217 currency of `total`.
    pub currency: String,
    /// Why cancelled or rejected (e.g. `PAYMENT_TIMEOUT`).
    pub reason: Option<String>,
    /// 1 for the first event of the order, then one more per event.
    pub version: i64,
    /// When the saga made this step, epoch milliseconds.
    pub at: i64,
    /// The order lines (for the SQL sink).
    pub items: Vec<OrderItem>,
    /// The command request that caused this event; `None` for a timeout.
    pub request_id: Option<String>,
}

// ---------------------------------------------------------------------------------
// payments.requests, payments.results
// ---------------------------------------------------------------------------------

/// `orderflow.PaymentRequested` on `payments.requests`: charge the buyer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequested {
    /// Payment id, the gateway's idempotency key.
    pub payment_id: String,
    /// Order id, the record key.
    pub order_id: String,
    /// Buyer's user id.
    pub buyer_id: String,
    /// Amount to charge, minor units.
    pub amount: i64,
    /// ISO 4217 currency of `amount`.
    pub currency: String,
    /// When the saga asked, epoch milliseconds.
    pub requested_at: i64,
}

/// `orderflow.RefundRequested` on `payments.requests`: refund a paid order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RefundRequested {
    /// The payment being refunded.
    pub payment_id: String,
    /// Order id, the record key.
    pub order_id: String,
    /// Buyer's user id.
    pub buyer_id: String,
    /// Amount to refund, minor units.
    pub amount: i64,
    /// ISO 4217 currency of `amount`.
    pub currency: String,
    /// Why, if known.
    pub reason: Option<String>,
    /// When the saga asked, epoch milliseconds.
    pub requested_at: i64,
}

/// A record on `payments.requests`. Variant order = union order in
/// `payments.requests.avsc`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// Union branch 0, `orderflow.PaymentRequested`.
    PaymentRequested(PaymentRequested),
    /// Union branch 1, `orderflow.RefundRequested`.
    RefundRequested(RefundRequested),
}

impl AvroRecord for PaymentCommand {
    fn encode_body(&self, schema: &Schema, out: &mut Vec<u8>) -> Result<(), AvroError> {
        match self {
            Self::PaymentRequested(r) => union_encode(schema, "orderflow.PaymentRequested", r, out),
            Self::RefundRequested(r) => union_encode(schema, "orderflow.RefundRequested", r, out),
        }
    }

    fn to_avro(&self, schema: &Schema) -> Result<Value, AvroError> {
        match self {
            Self::PaymentRequested(r) => union_variant(schema, "orderflow.PaymentRequested", r),
            Self::RefundRequested(r) => union_variant(schema, "orderflow.RefundRequested", r),
        }
    }
}

/// `orderflow.PaymentResult` on `payments.results`: the gateway's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PaymentResult {
    /// The payment this answers.
    pub payment_id: String,
    /// Order id, the record key.
    pub order_id: String,
    /// Approved, declined or refunded.
    pub outcome: PaymentOutcome,
    /// Why declined.
    pub reason: Option<String>,
    /// When the gateway answered, epoch milliseconds.
    pub at: i64,
    /// Amount charged or refunded, minor units.
    pub amount: Option<i64>,
    /// ISO 4217 currency of `amount`.
    pub currency: Option<String>,
}

// ---------------------------------------------------------------------------------
// chat.messages, chat.deliveries, edge.replies
// ---------------------------------------------------------------------------------

/// `orderflow.ChatMessage` on `chat.messages`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// Message id.
    pub message_id: String,
    /// Room id (e.g. `dm:<buyerId>:<sellerId>`), the record key.
    pub room_id: String,
    /// Sender's user id.
    pub sender_id: String,
    /// Message text.
    pub body: String,
    /// When the edge accepted it, epoch milliseconds.
    pub sent_at: i64,
}

/// `orderflow.ChatDelivery` on `chat.deliveries`: a message for one participant.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChatDelivery {
    /// Message id.
    pub message_id: String,
    /// Room id.
    pub room_id: String,
    /// Sender's user id.
    pub sender_id: String,
    /// Recipient's user id, the record key.
    pub recipient_id: String,
    /// Message text.
    pub body: String,
    /// When the edge accepted it, epoch milliseconds.
    pub sent_at: i64,
}

/// `orderflow.Reply` on `edge.replies`: a processor's answer to an edge request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// The request this answers, the record key.
    pub request_id: String,
    /// Whether the request was carried out.
    pub ok: bool,
    /// Stable error code when not ok (e.g. `EMAIL_TAKEN`).
    pub code: Option<String>,
    /// Human-readable detail.
    pub message: Option<String>,
    /// Id of what the request created (e.g. the new user id).
    pub entity_id: Option<String>,
    /// When the processor answered, epoch milliseconds.
    pub at: i64,
}

// Every record also encodes on its own (a union branch resolved against the
// branch's schema, or an OrderItem against its record schema).
impl AvroRecord for RegisterUser {}
impl AvroRecord for UpdateProfile {}
impl AvroRecord for DeleteUser {}
impl AvroRecord for StartSession {}
impl AvroRecord for RotateSession {}
impl AvroRecord for EndSession {}
impl AvroRecord for User {}
impl AvroRecord for BuyerSeller {}
impl AvroRecord for OrderItem {}
impl AvroRecord for PlaceOrder {}
impl AvroRecord for CancelOrder {}
impl AvroRecord for OrderEvent {}
impl AvroRecord for PaymentRequested {}
impl AvroRecord for RefundRequested {}
impl AvroRecord for PaymentResult {}
impl AvroRecord for ChatMessage {}
impl AvroRecord for ChatDelivery {}
impl AvroRecord for Reply {}
