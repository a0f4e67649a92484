//! orderflow's edges and sinks: the HTTP edge (axum, JWT), the WebSocket chat edge,
//! the SQL sink (sqlx) and the Redis cache.
//!
//! - [`streams`]: what the edges read and write: the publisher, replies, orders,
//!   the user directory, chat deliveries and history, and readiness.
//! - [`auth`]: JWT access and refresh tokens ([`auth::Tokens`], configured by
//!   [`auth::JwtConfig`] from `JWT_*`) and argon2id password hashing, for the edges.
//! - [`http`]: the HTTP edge: accounts, sessions and orders over the streams
//!   ([`http::router`] over an [`http::HttpState`]).
//! - [`chat`]: the WebSocket chat edge on `/chat` ([`chat::router`] over a
//!   [`chat::ChatState`], limits in [`chat::ChatSettings`]).
//! - [`node`]: the processors, edges and sinks one process runs (`orderflow run`).
//! - [`up`]: the whole system on one machine (`orderflow up`).
//! - [`directory`]: the user table and buyer→seller relations the edges read, in
//!   process or in Redis (the `redis` feature).
//! - `sql_sink`: the `orders` and `order_items` tables materialized from
//!   `orders.events` on PostgreSQL, MySQL/MariaDB or SQLite, and their reads (the
//!   `sql` feature).
//!
//! Both features are on by default; a binary that needs neither database client
//! (the benchmarks) leaves them out and builds in a quarter less time.

pub mod auth;
pub mod chat;
pub mod directory;
pub mod http;
pub mod node;
#[cfg(feature = "sql")]
pub mod sql_sink;
pub mod streams;
pub mod up;
