//! The repo's topology.yaml without its payment authorizer, for the saga's tests:
//! they answer the saga's payment requests themselves (the authorizer has tests of
//! its own). Included with `#[path]` by the test files that need it.

use anyhow::Result;
use orderflow_pipelines::catalog;
use orderflow_runtime::TestDriver;

/// A driver over `text` (a topology file's text, relative to the workspace root),
/// environment variables taken from the process, with `payment-authorizer` removed.
pub fn saga_driver(text: &str) -> Result<TestDriver> {
    let base = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let env = |var: &str| std::env::var(var).ok();
    let mut topology =
        orderflow_runtime::topology::load_str(text, "topology.yaml", base, &env, &catalog())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    topology.processors.remove("payment-authorizer");
    Ok(TestDriver::new(topology, &catalog())?)
}
