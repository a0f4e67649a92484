//! `orderflow up`: the whole system on one machine with embedded defaults — a managed
//! single-node Apache Kafka under the data dir (or the cluster `KAFKA_BROKERS`
//! names), the embedded schema registry, every processor, both edges on one
//! listener and the SQLite sink — started in order, announced as endpoints, and
//! stopped in the reverse order. Everything it keeps lives in the data dir (the
//! broker's log dirs, the SQLite file, the JWT secret), so a restart keeps every
//! user, order and chat message.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orderflow_runtime::broker::{Broker, BrokerConfig, BrokerError};
use orderflow_runtime::metrics::Metrics;
use orderflow_runtime::registry::{RegistryClient, SchemaLog, SchemaLogConfig, SchemaLogError};
use orderflow_runtime::topology::{self, EdgeKind};
use serde::Serialize;

use crate::auth::token::{JwtConfig, Tokens};
use crate::chat::ChatSettings;
use crate::http::HttpSettings;
use crate::node::{self, NodeConfig, NodeError};

/// What `up` is told.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// The data dir (`--data`).
    pub data: PathBuf,
    /// The edges' listener (`--http`).
    pub http: SocketAddr,
    /// The managed broker's listener (`--kafka`).
    pub kafka: SocketAddr,
    /// The schema registry's listener (`--registry`).
    pub registry: SocketAddr,
    /// topology.yaml.
    pub topology: PathBuf,
    /// A cluster to use instead of the managed broker (`KAFKA_BROKERS`).
    pub kafka_brokers: Option<String>,
    /// Redis for the user directory and the cache sink (`REDIS_URL`).
    pub redis_url: Option<String>,
}

/// Where the running system answers; written with `--endpoints FILE`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Endpoints {
    /// The HTTP edge, `http://host:port`.
    pub http: String,
    /// The chat edge, `ws://host:port/chat`.
    pub chat: String,
    /// The Kafka bootstrap servers.
    pub kafka: String,
    /// The schema registry, `http://host:port`.
    #[serde(rename = "schema-registry")]
    pub schema_registry: String,
}

impl Endpoints {
    /// One line per endpoint, as `up` prints them.
    pub fn lines(&self) -> String {
        format!(
            "http: {}\nchat: {}\nkafka: {}\nschema-registry: {}\n",
            self.http, self.chat, self.kafka, self.schema_registry
        )
    }
}

/// Why `up` stopped.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The broker did not start.
    #[error("{0}")]
    Broker(#[from] BrokerError),
    /// The registry's log could not be opened.
    #[error("schema registry: {0}")]
    Registry(#[from] SchemaLogError),
    /// The topology file is wrong.
    #[error("{0}")]
    Topology(String),
    /// A listener could not be bound.
    #[error("cannot listen on {address} for {what}: {error}")]
    Listen {
        /// What.
        what: &'static str,
        /// Where.
        address: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The data dir cannot be used.
    #[error("data dir {path}: {error}")]
    Data {
        /// The path.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// JWT settings are wrong.
    #[error("{0}")]
    Jwt(String),
    /// The system stopped with an error.
    #[error("{0}")]
    Node(#[from] Box<NodeError>),
    /// The registry's listener failed.
    #[error("schema registry: {0}")]
    Serve(std::io::Error),
}

/// Runs the whole system until `shutdown` completes. `progress` gets a line for each
/// long step; `ready` gets the endpoints once everything listens.
pub async fn up(
    config: UpConfig,
    mut progress: impl FnMut(&str) + Send + 'static,
    ready: impl FnOnce(&Endpoints),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), UpError> {
    let data = config.data.clone();
    std::fs::create_dir_all(&data).map_err(|error| UpError::Data {
        path: data.clone(),
        error,
    })?;
    let catalog = orderflow_pipelines::catalog();
    let topology = Arc::new(
        topology::load(&config.topology, &catalog).map_err(|e| UpError::Topology(e.to_string()))?,
    );

    // 1. Kafka: the managed broker, unless a cluster is named.
    let (broker, bootstrap) = match &config.kafka_brokers {
        Some(brokers) => (None, brokers.clone()),
        None => {
            let broker_config = BrokerConfig::new(data.join("kafka"), config.kafka);
            let started =
                tokio::task::spawn_blocking(move || Broker::start(&broker_config, &mut progress))
                    .await
                    .map_err(|e| UpError::Topology(format!("broker start panicked: {e}")))?;
            let broker = Arc::new(started?);
            let bootstrap = broker.bootstrap().to_string();
            (Some(broker), bootstrap)
        }
    };
    let result = run_on(&config, &topology, catalog, &bootstrap, ready, shutdown).await;
    if let Some(broker) = broker {
        tracing::info!("stopping the broker");
        let b = broker.clone();
        let status = tokio::task::spawn_blocking(move || b.stop(Duration::from_secs(60)))
            .await
            .ok()
            .flatten();
        tracing::info!(
            status = status.as_deref().unwrap_or("still running"),
            "broker stopped"
        );
    }
    result
}

async fn run_on(
    config: &UpConfig,
    topology: &Arc<topology::Topology>,
    catalog: orderflow_runtime::processor::Catalog,
    bootstrap: &str,
    ready: impl FnOnce(&Endpoints),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), UpError> {
    // 2. The schema registry, its schemas kept on the cluster.
    let log = Arc::new(SchemaLog::open(SchemaLogConfig::new(bootstrap)).await?);
    let registry_listener = bind("the schema registry", config.registry).await?;
    let registry_address = local(&registry_listener, config.registry);
    let (stop_registry, registry_stopped) = tokio::sync::oneshot::channel::<()>();
    let registry_task = tokio::spawn(orderflow_runtime::registry::http::serve(
        registry_listener,
        log.clone(),
        async move {
            let _ = registry_stopped.await;
        },
    ));
    let registry = Arc::new(RegistryClient::durable(log.clone()));

    // 3. Processors, edges and the SQLite sink.
    let tokens =
        Arc::new(Tokens::new(&jwt_config(&config.data)?).map_err(|e| UpError::Jwt(e.to_string()))?);
    let listener = bind("the HTTP and chat edges", config.http).await?;
    let http_address = local(&listener, config.http);
    let database = format!("sqlite://{}", config.data.join("orderflow.db").display());
    let mut sinks = vec![("orders-sql".to_string(), database)];
    if let Some(redis) = &config.redis_url {
        sinks.push(("cache".to_string(), redis.clone()));
    }
    let node_config = NodeConfig {
        bootstrap: bootstrap.to_string(),
        kafka_overrides: Vec::new(),
        // One instance on one machine: a restart after a crash should not wait long
        // for its dead predecessor's group membership to expire.
        consumer_overrides: vec![("session.timeout.ms".to_string(), "10000".to_string())],
        topology: topology.clone(),
        catalog,
        registry,
        processors: Some(Vec::new()),
        edges: BTreeSet::from([EdgeKind::Http, EdgeKind::Ws]),
        listener: Some(listener),
        sinks,
        redis_url: config.redis_url.clone(),
        tokens: Some(tokens),
        http: HttpSettings::from_env().map_err(|e| UpError::Jwt(e.to_string()))?,
        chat: ChatSettings::default(),
        metrics: Arc::new(Metrics::new()),
        // The same transactional ids on every start: the first transaction of a
        // restart fences and aborts whatever a killed predecessor left open.
        instance_id: Some("up".to_string()),
    };
    let endpoints = Endpoints {
        http: format!("http://{http_address}"),
        chat: format!("ws://{http_address}/chat"),
        kafka: bootstrap.to_string(),
        schema_registry: format!("http://{registry_address}"),
    };
    ready(&endpoints);
    let result = node::run(node_config, shutdown).await;
    let _ = stop_registry.send(());
    let served = registry_task.await;
    if let Err(e) = log.persisted().await {
        tracing::warn!(error = %e, "schema registry: not every schema was persisted");
    }
    result.map_err(Box::new)?;
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(UpError::Serve(e)),
        Err(e) => Err(UpError::Serve(std::io::Error::other(e.to_string()))),
    }
}

async fn bind(what: &'static str, address: SocketAddr) -> Result<tokio::net::TcpListener, UpError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| UpError::Listen {
            what,
            address,
            error,
        })
}

fn local(listener: &tokio::net::TcpListener, asked: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(asked)
}

/// The JWT settings: from the environment when `JWT_SECRET` or a key pair is set,
/// else HS256 with a secret kept in the data dir (made on first use, readable by the
/// owner only), so tokens survive a restart.
fn jwt_config(data: &Path) -> Result<JwtConfig, UpError> {
    let configured = ["JWT_SECRET", "JWT_PRIVATE_KEY_FILE", "JWT_PUBLIC_KEY_FILE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if configured {
        return JwtConfig::from_env().map_err(|e| UpError::Jwt(e.to_string()));
    }
    let path = data.join("jwt-secret");
    let secret = match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => text.trim().to_string(),
        _ => {
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            write_private(&path, &secret).map_err(|error| UpError::Data {
                path: path.clone(),
                error,
            })?;
            secret
        }
    };
    JwtConfig::from_lookup(|name| match name {
        "JWT_SECRET" => Some(secret.clone()),
        other => std::env::var(other).ok(),
    })
    .map_err(|e| UpError::Jwt(e.to_string()))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
