//! orderflow's edges and sinks: the HTTP edge (axum, JWT), the WebSocket chat edge,
//! the SQL sink (sqlx) and the Redis cache.
//!
//! - [`auth`]: JWT access and refresh tokens ([`auth::Tokens`], configured by
//!   [`auth::JwtConfig`] from `JWT_*`) and argon2id password hashing, for the edges.

pub mod auth;
