//! A node: the processors, edges and sinks of topology.yaml that one `orderflow`
//! process runs, sharing one registry client, one metrics registry and one
//! shutdown. `orderflow run` runs the ones it is told to against a cluster;
//! `orderflow up` runs all of them next to its own broker and registry.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

#[cfg(feature = "sql")]
use orderflow_pipelines::records::OrderEvent;
#[cfg(feature = "redis")]
use orderflow_pipelines::records::topics;
use orderflow_runtime::engine::{self, EngineConfig, EngineError};
use orderflow_runtime::metrics::Metrics;
use orderflow_runtime::processor::Catalog;
use orderflow_runtime::registry::RegistryClient;
use orderflow_runtime::sink::{SinkConfig, SinkError, SinkWriter, run_sink};
#[cfg(any(feature = "sql", feature = "redis"))]
use orderflow_runtime::sink::{SinkRecord, WriteError, WriteFuture};
use orderflow_runtime::topology::{EdgeKind, SinkKind, Topology};
use orderflow_runtime::wire::{RegisterError, TopicSerde};
use tokio::sync::watch;

use crate::auth::token::Tokens;
use crate::chat::{ChatSettings, ChatState};
use crate::directory::{Directory, DirectoryError};
#[cfg(feature = "redis")]
use crate::directory::{DirectoryRecord, DirectoryUpdate, DirectoryWriter, RedisDirectory};
use crate::http::{HttpSettings, HttpState};
#[cfg(feature = "sql")]
use crate::sql_sink::{OrdersSql, SqlSinkError};
use crate::streams::{EdgeStreams, StreamsConfig, StreamsError};

/// How many chat deliveries wait for one connection in the streams' channel before
/// the connection counts as too slow (the chat edge's own buffer comes after it).
const DELIVERY_BUFFER: usize = 1024;

/// What a node runs and how it connects.
#[derive(Debug)]
pub struct NodeConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Extra librdkafka settings for every client.
    pub kafka_overrides: Vec<(String, String)>,
    /// Extra librdkafka settings for the consumers only (`session.timeout.ms`).
    pub consumer_overrides: Vec<(String, String)>,
    /// The topology.
    pub topology: Arc<Topology>,
    /// The processor kinds.
    pub catalog: Catalog,
    /// The schema registry.
    pub registry: Arc<RegistryClient>,
    /// The processors to run: `None` runs none, an empty list all of them.
    pub processors: Option<Vec<String>>,
    /// The edges to serve (on `listener`).
    pub edges: BTreeSet<EdgeKind>,
    /// Where the edges listen; required when `edges` is not empty.
    pub listener: Option<tokio::net::TcpListener>,
    /// The sinks to run: the sink's name in topology.yaml and where it writes (a
    /// database URL for a `sql` sink, a Redis URL for a `redis` one).
    pub sinks: Vec<(String, String)>,
    /// Redis holding the user directory the edges read; `None` keeps it in this
    /// process, read from the topics.
    pub redis_url: Option<String>,
    /// Signs and checks the edges' tokens; required when `edges` is not empty.
    pub tokens: Option<Arc<Tokens>>,
    /// The HTTP edge's settings.
    pub http: HttpSettings,
    /// The chat edge's settings.
    pub chat: ChatSettings,
    /// The process's metrics (served on the HTTP edge's `/metrics`).
    pub metrics: Arc<Metrics>,
    /// Names this instance in transactional ids and, as a static group member, in
    /// its consumer groups (see `EngineConfig::instance_id` and
    /// `static_membership`): only for an id one process at a time uses. `None`
    /// takes `ORDERFLOW_INSTANCE_ID` or a new one per start, without static
    /// membership.
    pub instance_id: Option<String>,
}

/// Why a node stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The processors stopped the node.
    #[error("{0}")]
    Engine(Box<EngineError>),
    /// A schema was refused.
    #[error("{0}")]
    Register(Box<RegisterError>),
    /// The edges could not reach the streams.
    #[error("{0}")]
    Streams(Box<StreamsError>),
    /// A sink stopped.
    #[error("{0}")]
    Sink(Box<SinkError>),
    /// A SQL sink's database could not be opened.
    #[cfg(feature = "sql")]
    #[error("sink {sink}: {error}")]
    Sql {
        /// The sink.
        sink: String,
        /// Why.
        error: SqlSinkError,
    },
    /// Redis could not be reached.
    #[error("{what}: {error}")]
    Redis {
        /// What needed it.
        what: String,
        /// Why.
        error: DirectoryError,
    },
    /// The edges' listener failed.
    #[error("edges: {0}")]
    Serve(std::io::Error),
    /// The configuration does not hold together.
    #[error("{0}")]
    Config(String),
}

macro_rules! boxed_from {
    ($($variant:ident($error:ty)),*) => {
        $(impl From<$error> for NodeError {
            fn from(error: $error) -> Self {
                NodeError::$variant(Box::new(error))
            }
        })*
    };
}

boxed_from!(
    Engine(EngineError),
    Register(RegisterError),
    Streams(StreamsError),
    Sink(SinkError)
);

/// Runs the node until `shutdown` completes or a part of it fails; then stops every
/// part cleanly (edges drain first, processors commit, sinks commit).
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let NodeConfig {
        bootstrap,
        kafka_overrides,
        consumer_overrides,
        topology,
        catalog,
        registry,
        processors,
        edges,
        listener,
        sinks,
        redis_url,
        tokens,
        http,
        chat,
        metrics,
        instance_id,
    } = config;
    let mut engine_config = EngineConfig::new(&bootstrap);
    if let Some(id) = &instance_id {
        engine_config.instance_id = id.clone();
        engine_config.static_membership = true;
    }
    engine_config
        .client_overrides
        .extend(kafka_overrides.clone());
    engine_config.metrics = metrics.clone();
    engine::ensure_topics(&topology, &engine_config).await?;
    let serde = Arc::new(TopicSerde::register(&topology, &registry).await?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut parts: tokio::task::JoinSet<(String, Result<(), NodeError>)> =
        tokio::task::JoinSet::new();

    if let Some(names) = processors {
        engine_config.processors = names;
        let (topology, catalog, registry) = (topology.clone(), catalog.clone(), registry.clone());
        let stop = stopped();
        parts.spawn(async move {
            let result = engine::run(topology, catalog, registry, engine_config, stop)
                .await
                .map_err(NodeError::from);
            ("processors".to_string(), result)
        });
    }

    for (name, target) in sinks {
        let sink = topology
            .sinks
            .get(&name)
            .ok_or_else(|| NodeError::Config(format!("no sink {name:?} in topology.yaml")))?;
        let writer = sink_writer(&name, sink.kind, &target).await?;
        let mut sink_config =
            SinkConfig::new(&bootstrap, &topology.app, &name, sink.inputs.clone());
        sink_config.overrides = kafka_overrides.clone();
        sink_config.consumer_overrides = consumer_overrides.clone();
        if let Some(id) = &instance_id {
            sink_config
                .consumer_overrides
                .push(("group.instance.id".to_string(), format!("{id}-{name}")));
        }
        sink_config.dead_letter = sink.dead_letter.clone();
        let (serde, registry, metrics, stop) =
            (serde.clone(), registry.clone(), metrics.clone(), stopped());
        parts.spawn(async move {
            let result = run_sink(sink_config, serde, registry, writer, metrics, stop)
                .await
                .map_err(NodeError::from);
            (format!("sink {name}"), result)
        });
    }

    let mut http_state = None;
    let mut chat_state = None;
    if !edges.is_empty() {
        let listener =
            listener.ok_or_else(|| NodeError::Config("the edges need a listen address".into()))?;
        let tokens = tokens.ok_or_else(|| {
            NodeError::Config("the edges need JWT settings (JWT_SECRET, or a key pair)".into())
        })?;
        let directory = match &redis_url {
            Some(url) => Some(redis_directory(url).await?),
            None => None,
        };
        let streams = EdgeStreams::start(&StreamsConfig {
            bootstrap: bootstrap.clone(),
            overrides: kafka_overrides.clone(),
            topology: topology.clone(),
            serde: serde.clone(),
            registry: registry.clone(),
            directory,
            delivery_buffer: DELIVERY_BUFFER,
        })?;
        let mut router = axum::Router::new();
        if edges.contains(&EdgeKind::Ws) {
            let state = ChatState::new(streams.clone(), tokens.clone(), metrics.clone(), chat);
            chat_state = Some(state.clone());
            router = router.merge(crate::chat::router(state));
        }
        if edges.contains(&EdgeKind::Http) {
            let state = HttpState::new(streams.clone(), tokens.clone(), metrics.clone(), http);
            http_state = Some(state.clone());
            router = router.merge(crate::http::router(state));
        }
        let stop = stopped();
        parts.spawn(async move {
            let result = crate::http::serve(listener, router, stop)
                .await
                .map_err(NodeError::Serve);
            // The readers stop with the last handle on the streams.
            drop(streams);
            ("edges".to_string(), result)
        });
    }

    // Run until asked to stop or until a part stops on its own.
    let mut result = Ok(());
    tokio::pin!(shutdown);
    let first = tokio::select! {
        () = &mut shutdown => None,
        done = parts.join_next() => done,
    };
    if let Some(done) = first {
        result = part_result(done);
        if result.is_ok() {
            tracing::warn!("a part of the node stopped on its own; stopping the rest");
        }
    }
    if let Some(state) = &http_state {
        state.drain();
    }
    let _ = stop_tx.send(true);
    if let Some(chat) = &chat_state {
        // Chat connections outlive the listener: close them (1001) first.
        if tokio::time::timeout(std::time::Duration::from_secs(10), chat.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("chat: connections still open after 10 s; stopping anyway");
        }
    }
    while let Some(done) = parts.join_next().await {
        let outcome = part_result(done);
        if result.is_ok() {
            result = outcome;
        }
    }
    result
}

fn part_result(
    done: Result<(String, Result<(), NodeError>), tokio::task::JoinError>,
) -> Result<(), NodeError> {
    match done {
        Ok((name, Err(e))) => {
            tracing::error!(part = %name, error = %e, "stopped");
            Err(e)
        }
        Ok((_, Ok(()))) => Ok(()),
        Err(e) => Err(NodeError::Config(format!(
            "a part of the node panicked: {e}"
        ))),
    }
}

/// The writer of a sink of `kind` writing to `target`.
async fn sink_writer(
    name: &str,
    kind: SinkKind,
    target: &str,
) -> Result<Box<dyn SinkWriter>, NodeError> {
    match kind {
        #[cfg(feature = "sql")]
        SinkKind::Sql => Ok(Box::new(OrdersSqlWriter {
            sql: OrdersSql::connect(target)
                .await
                .map_err(|error| NodeError::Sql {
                    sink: name.to_string(),
                    error,
                })?,
        })),
        #[cfg(feature = "redis")]
        SinkKind::Redis => Ok(Box::new(CacheWriter {
            directory: RedisDirectory::connect(target)
                .await
                .map_err(|error| NodeError::Redis {
                    what: format!("sink {name}"),
                    error,
                })?,
        })),
        // Reached only in a build without one of the features.
        #[allow(unreachable_patterns)]
        other => {
            let _ = target;
            let feature = match other {
                SinkKind::Sql => "sql",
                SinkKind::Redis => "redis",
            };
            Err(NodeError::Config(format!(
                "sink {name}: this build has no {feature} sink (orderflow-connectors was built without its `{feature}` feature)"
            )))
        }
    }
}

/// The edges' user directory in the Redis at `url`.
async fn redis_directory(url: &str) -> Result<Arc<dyn Directory>, NodeError> {
    #[cfg(feature = "redis")]
    {
        Ok(Arc::new(RedisDirectory::connect(url).await.map_err(
            |error| NodeError::Redis {
                what: "the edges' user directory".into(),
                error,
            },
        )?))
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(NodeError::Config(format!(
            "the edges' user directory at {url}: this build has no Redis client (orderflow-connectors was built without its `redis` feature)"
        )))
    }
}

/// The `orders-sql` sink: each batch of `orders.events` upserted by order id and
/// version in one transaction.
#[cfg(feature = "sql")]
struct OrdersSqlWriter {
    sql: OrdersSql,
}

#[cfg(feature = "sql")]
impl SinkWriter for OrdersSqlWriter {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> WriteFuture<'a> {
        Box::pin(async move {
            let mut events = Vec::with_capacity(batch.len());
            for (index, record) in batch.iter().enumerate() {
                match record.decode::<OrderEvent>() {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => {}
                    Err(message) => return Err(WriteError::Reject { index, message }),
                }
            }
            self.sql
                .apply(&events)
                .await
                .map_err(|e| WriteError::Retry(e.to_string()))
        })
    }
}

/// The `cache` sink: `auth.users` and `auth.relations` into the Redis directory.
#[cfg(feature = "redis")]
struct CacheWriter {
    directory: RedisDirectory,
}

#[cfg(feature = "redis")]
impl SinkWriter for CacheWriter {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> WriteFuture<'a> {
        Box::pin(async move {
            // In batch order, which is offset order within each key.
            let mut records = Vec::with_capacity(batch.len());
            for (index, record) in batch.iter().enumerate() {
                let rejected = |message| WriteError::Reject { index, message };
                let key = record.key.clone();
                records.push(match record.topic.as_str() {
                    topics::AUTH_USERS => {
                        DirectoryRecord::User(key, record.decode().map_err(rejected)?)
                    }
                    topics::AUTH_RELATIONS => {
                        DirectoryRecord::Relation(key, record.decode().map_err(rejected)?)
                    }
                    other => {
                        return Err(WriteError::Reject {
                            index,
                            message: format!("the cache sink does not read {other}"),
                        });
                    }
                });
            }
            let updates: Vec<DirectoryUpdate<'_>> =
                records.iter().map(DirectoryRecord::update).collect();
            self.directory
                .apply_batch(&updates)
                .await
                .map_err(|e| WriteError::Retry(e.to_string()))
        })
    }
}
