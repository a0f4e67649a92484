//! orderflow's edges and sinks: the HTTP edge (axum, JWT), the WebSocket chat edge,
//! the SQL sink (sqlx) and the Redis cache.
//!
//! - [`sql_sink`]: the `orders` and `order_items` tables materialized from
//!   `orders.events` on PostgreSQL, MySQL/MariaDB or SQLite, and their reads.

pub mod sql_sink;
