//! orderflow's edges and sinks: the HTTP edge (axum, JWT), the WebSocket chat edge,
//! the SQL sink (sqlx) and the Redis cache. Empty until the edges issue: the crate is
//! here so the workspace has the layout DESIGN.md gives it.
