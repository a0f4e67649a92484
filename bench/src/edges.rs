//! The edge jobs: order -> PAID latency through the HTTP edge, wrk on the HTTP
//! routes beside a bare hyper endpoint, and WebSocket chat fan-out.

use crate::jobs::Run;
use crate::report::JobResult;

/// Runs the edge job `name`.
pub async fn run(_run: &mut Run, name: &str) -> JobResult {
    JobResult::failed("orderflow", None, format!("{name}: not measured yet"))
}
