//! The sample counter of the runtime's tests as a program of its own, so tests can
//! run several instances of one app and `kill -9` them. Not a user-facing tool.
//!
//! Usage: `counter_app <topology.yaml> <schema-registry-url>`, with `KAFKA_BROKERS`
//! naming the cluster. Stops on SIGINT/SIGTERM.

#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use anyhow::Context as _;
use orderflow_runtime::engine::{self, EngineConfig};
use orderflow_runtime::registry::RegistryClient;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .context("usage: counter_app <topology.yaml> <registry-url>")?;
    let registry = args
        .next()
        .context("usage: counter_app <topology.yaml> <registry-url>")?;
    let brokers = std::env::var("KAFKA_BROKERS").context("KAFKA_BROKERS is not set")?;
    let catalog = common::catalog();
    let topology = orderflow_runtime::topology::load(std::path::Path::new(&file), &catalog)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut config = EngineConfig::new(brokers);
    config
        .client_overrides
        .insert("session.timeout.ms".into(), "6000".into());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    println!("started");
    engine::run(
        Arc::new(topology),
        catalog,
        Arc::new(RegistryClient::remote(&registry)?),
        config,
        shutdown,
    )
    .await?;
    Ok(())
}
