//! orderflow's edges and sinks: the HTTP edge (axum, JWT), the WebSocket chat edge,
//! the SQL sink (sqlx) and the Redis cache.
//!
//! - [`directory`]: the user table and buyer→seller relations the edges read, in
//!   process or in Redis.

pub mod directory;
