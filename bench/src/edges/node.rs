//! The measured processes of the edge jobs: `node` (orderflow's processors with the
//! HTTP and chat edges on one listener, as `orderflow run` builds a node) and
//! `ceiling` (a bare hyper JSON endpoint, the most one core serves).
//!
//! Each prints the address it listens on as its first line (`edges: http://…` or
//! `ceiling: http://…`), which the harness reads from its log.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use orderflow_connectors::auth::token::{JwtConfig, Tokens};
use orderflow_connectors::chat::ChatSettings;
use orderflow_connectors::http::HttpSettings;
use orderflow_connectors::node::{self, NodeConfig};
use orderflow_runtime::metrics::Metrics;
use orderflow_runtime::registry::RegistryClient;
use orderflow_runtime::topology::{self, EdgeKind};

use crate::cluster::repo_root;

/// The line prefix the node announces its listener with.
pub const NODE_ANNOUNCE: &str = "edges: http://";
/// The line prefix the ceiling announces its listener with.
pub const CEILING_ANNOUNCE: &str = "ceiling: http://";

/// Runs a node with `processors` and both edges on `listen` until SIGTERM. The JWT
/// settings (`JWT_SECRET`), the HTTP edge's settings (`ORDERFLOW_HTTP_*`), the app
/// name and the guarantee come from the environment the harness sets.
pub async fn node(
    bootstrap: &str,
    registry: &str,
    listen: SocketAddr,
    processors: Vec<String>,
) -> anyhow::Result<()> {
    let catalog = orderflow_pipelines::catalog();
    let topology = Arc::new(
        topology::load(&repo_root().join("topology.yaml"), &catalog)
            .map_err(|e| anyhow!("topology.yaml: {e}"))?,
    );
    let registry = Arc::new(RegistryClient::remote(registry)?);
    let jwt = JwtConfig::from_env().context("the edges sign and check tokens")?;
    let tokens = Arc::new(Tokens::new(&jwt).context("the edges sign and check tokens")?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the edges"))?;
    announce(NODE_ANNOUNCE, listener.local_addr()?)?;
    let config = NodeConfig {
        bootstrap: bootstrap.to_string(),
        kafka_overrides: crate::roles::bench_kafka_overrides()?,
        consumer_overrides: Vec::new(),
        topology,
        catalog,
        registry,
        processors: Some(processors),
        edges: BTreeSet::from([EdgeKind::Http, EdgeKind::Ws]),
        listener: Some(listener),
        sinks: Vec::new(),
        redis_url: None,
        tokens: Some(tokens),
        http: HttpSettings::from_env()?,
        chat: ChatSettings::default(),
        metrics: Arc::new(Metrics::new()),
        instance_id: None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    node::run(config, async move {
        term.recv().await;
    })
    .await?;
    Ok(())
}

/// The ceiling's answer: a small JSON object.
pub const CEILING_JSON: &[u8] = br#"{"ok":true,"service":"ceiling","version":1}"#;

/// Serves `GET /json` (a small JSON object, anything else 404) on `listen` with hyper
/// alone, HTTP/1.1 with keep-alive, one task per connection, until SIGTERM: no
/// router, no middleware, nothing of ours.
pub async fn ceiling(listen: SocketAddr) -> anyhow::Result<()> {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Method, Request, Response, StatusCode, header};

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    announce(CEILING_ANNOUNCE, listener.local_addr()?)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let answer = |request: Request<Incoming>| async move {
        if request.method() == Method::GET && request.uri().path() == "/json" {
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(CEILING_JSON)))
        } else {
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(Full::new(Bytes::new()))
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(connection) => connection,
                    Err(e) => {
                        tracing::warn!(error = %e, "ceiling: accept");
                        continue;
                    }
                };
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let service = hyper::service::service_fn(answer);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await
                    {
                        tracing::debug!(error = %e, "ceiling: connection");
                    }
                });
            }
        }
    }
}

fn announce(prefix: &str, address: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{prefix}{address}")?;
    stdout.flush()?;
    Ok(())
}
