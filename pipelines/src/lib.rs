//! orderflow's processors: user cache, order saga, payment authorizer, buyer
//! relations, chat fan-out.
//!
//! - [`records`]: the Rust types of every topic's records, matching `schemas/*.avsc`,
//!   and the topic names.
//! - [`catalog`](mod@catalog): the processor kinds by name, for topology.yaml.
//! - [`user_cache`]: `user-cache`, the user table: `auth.commands` → `auth.users` +
//!   `edge.replies`.
//! - [`order_saga`]: `order-saga`, each order's state machine: `orders.commands` +
//!   `payments.results` → `orders.events` + `payments.requests`, validating against
//!   the `auth.users` global table, with a wall-clock payment timeout.
//! - [`buyer_relations`]: `buyer-relations`, stateless: PAID `orders.events` →
//!   `auth.relations`.
//! - [`payment_authorizer`]: `payment-authorizer`: `payments.requests` →
//!   `payments.results` through a payment gateway, each call an async job.
//! - [`payment_gateway`]: the gateways the payment authorizer charges and refunds
//!   through: the trait, the simulated one, the HTTP one and their `config:` block.
//! - [`chat_fanout`]: `chat-fanout`: `chat.messages` → `chat.deliveries`, one per room
//!   participant, with each room's recent history.
//! - [`ids`]: ids derived from the input that creates them (user ids, payment ids),
//!   so a replay derives the same.

pub mod buyer_relations;
pub mod catalog;
pub mod chat_fanout;
pub mod ids;
pub mod order_saga;
pub mod payment_authorizer;
pub mod payment_gateway;
pub mod records;
pub mod user_cache;

pub use catalog::catalog;
