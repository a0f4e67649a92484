//! A real running orderflow for the edge tests, one per test binary: the processors
//! of the repository's topology.yaml (`engine::run`, under an app name of this run's
//! own, with an embedded schema registry) on the test broker, and the edges' view of
//! the streams ([`EdgeStreams`]). Edges under test are served over real sockets on
//! 127.0.0.1:0 with [`System::serve`].
//!
//! The broker is the one `scripts/test.sh` started (`KAFKA_BROKERS`), or, when a test
//! binary runs alone, one started here for the whole binary. The topic names are the
//! contract's, so every test run on one broker shares them: give every account a
//! unique email ([`unique_email`]).
//!
//! Everything runs on a runtime of its own on a background thread, so it outlives
//! each `#[tokio::test]`'s runtime and is started once.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use orderflow_connectors::auth::{JwtConfig, Tokens};
use orderflow_connectors::streams::{EdgeStreams, StreamsConfig};
use orderflow_pipelines::records::{AuthCommand, RegisterUser, Role, topics};
use orderflow_runtime::broker::{Broker, BrokerConfig};
use orderflow_runtime::engine::{self, EngineConfig, ensure_topics};
use orderflow_runtime::metrics::Metrics;
use orderflow_runtime::registry::{RegistryClient, SchemaStore};
use orderflow_runtime::topology::{Topology, load_str};
use orderflow_runtime::wire::TopicSerde;

/// The HS256 secret of [`hs256_tokens`].
pub const SECRET: &[u8] = b"orderflow edge tests: a secret of more than 32 bytes";

/// The running system.
pub struct System {
    /// `bootstrap.servers` of the broker.
    pub bootstrap: String,
    /// The app name of this run's processors.
    pub app: String,
    /// The topology they run.
    pub topology: Arc<Topology>,
    /// The embedded registry.
    pub registry: Arc<RegistryClient>,
    /// The registered schemas.
    pub serde: Arc<TopicSerde>,
    /// The edges' view of the streams, caught up.
    pub streams: Arc<EdgeStreams>,
    /// The metrics registry the engine and the edges share.
    pub metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    _broker: Option<Broker>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{seq}", std::process::id())
}

/// An email no other account has.
pub fn unique_email(tag: &str) -> String {
    format!("{}@example.com", unique(tag))
}

/// Tokens with [`SECRET`] (HS256) and the default lifetimes.
pub fn hs256_tokens() -> Arc<Tokens> {
    Arc::new(Tokens::new(&JwtConfig::hs256(SECRET.to_vec()).unwrap()).unwrap())
}

/// The system of this test binary, started on first use.
pub fn system() -> &'static System {
    static SYSTEM: OnceLock<System> = OnceLock::new();
    SYSTEM.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("orderflow-system".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let handle = runtime.handle().clone();
                runtime.block_on(async move {
                    let system = start(handle).await;
                    tx.send(system).unwrap();
                    std::future::pending::<()>().await;
                });
            })
            .unwrap();
        rx.recv_timeout(Duration::from_secs(300))
            .expect("the system did not start within 300 s")
    })
}

fn broker() -> (String, Option<Broker>) {
    if let Ok(brokers) = std::env::var("KAFKA_BROKERS")
        && !brokers.is_empty()
    {
        return (brokers, None);
    }
    let dir = std::env::temp_dir().join(format!("orderflow-edge-broker-{}", std::process::id()));
    let config = BrokerConfig::new(&dir, "127.0.0.1:0".parse().unwrap());
    let broker = Broker::start(&config, &mut |line| eprintln!("test broker: {line}"))
        .unwrap_or_else(|e| panic!("cannot start a test broker (or set KAFKA_BROKERS): {e}"));
    (broker.bootstrap().to_string(), Some(broker))
}

async fn start(runtime: tokio::runtime::Handle) -> System {
    let (bootstrap, broker) = broker();
    let app = unique("edge-tests");
    let env = {
        let app = app.clone();
        move |var: &str| match var {
            "ORDERFLOW_APP" => Some(app.clone()),
            other => std::env::var(other).ok(),
        }
    };
    let text = std::fs::read_to_string(root().join("topology.yaml")).unwrap();
    let catalog = orderflow_pipelines::catalog();
    let topology = Arc::new(
        load_str(&text, "topology.yaml", &root(), &env, &catalog)
            .unwrap_or_else(|e| panic!("topology.yaml: {e}")),
    );
    let mut config = EngineConfig::new(bootstrap.clone());
    config
        .client_overrides
        .insert("session.timeout.ms".into(), "6000".into());
    let metrics = config.metrics.clone();
    ensure_topics(&topology, &config).await.unwrap();
    let registry = Arc::new(RegistryClient::embedded(Arc::new(SchemaStore::new())));
    let serde = Arc::new(TopicSerde::register(&topology, &registry).await.unwrap());
    tokio::spawn({
        let (topology, registry) = (topology.clone(), registry.clone());
        async move {
            if let Err(e) =
                engine::run(topology, catalog, registry, config, std::future::pending()).await
            {
                panic!("the processors stopped: {e}");
            }
        }
    });
    let streams = start_streams(streams_config(&bootstrap, &topology, &serde, &registry)).await;
    tokio::time::timeout(Duration::from_secs(120), streams.ready())
        .await
        .expect("the edge views did not catch up within 120 s");
    let system = System {
        bootstrap,
        app,
        topology,
        registry,
        serde,
        streams,
        metrics,
        runtime,
        _broker: broker,
    };
    system.warm_up().await;
    system
}

fn streams_config(
    bootstrap: &str,
    topology: &Arc<Topology>,
    serde: &Arc<TopicSerde>,
    registry: &Arc<RegistryClient>,
) -> StreamsConfig {
    StreamsConfig {
        bootstrap: bootstrap.to_string(),
        overrides: Vec::new(),
        topology: topology.clone(),
        serde: serde.clone(),
        registry: registry.clone(),
        directory: None,
        delivery_buffer: 256,
    }
}

/// Starts the edges' view of the streams. Topics the engine has just created may not
/// have a partition leader for a moment: try again until they do.
async fn start_streams(config: StreamsConfig) -> Arc<EdgeStreams> {
    let mut attempts = 0;
    loop {
        match EdgeStreams::start(&config) {
            Ok(streams) => return streams,
            Err(e) if attempts < 60 => {
                attempts += 1;
                eprintln!("edge streams not up yet ({e}); trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the edge streams did not start: {e}"),
        }
    }
}

impl System {
    /// Waits until the processors answer (their consumer group has formed and the
    /// tasks are restored): a registration of a throwaway account gets its reply.
    async fn warm_up(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let email = unique_email("warm-up");
            let request_id = unique("warm-up");
            let waiter = self.streams.replies().expect(&request_id);
            let command = AuthCommand::RegisterUser(RegisterUser {
                request_id: request_id.clone(),
                email: email.clone(),
                password_hash: String::new(),
                role: Role::Buyer,
                display_name: "warm-up".into(),
            });
            self.streams
                .publisher()
                .publish(topics::AUTH_COMMANDS, &email, &command)
                .await
                .unwrap();
            if waiter.wait(Duration::from_secs(10)).await.is_some() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the processors did not answer within 180 s"
            );
        }
    }

    /// Serves `router` on 127.0.0.1:0 (on the system's runtime, with peer addresses
    /// for the rate limits); its base URL, like `http://127.0.0.1:4711`.
    pub async fn serve(&self, router: axum::Router) -> String {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.runtime.spawn(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            orderflow_connectors::http::serve(listener, router, std::future::pending())
                .await
                .unwrap();
        });
        format!("http://{}", rx.await.unwrap())
    }

    /// A second, fresh view of the streams (it starts behind and catches up).
    pub async fn fresh_streams(&self) -> Arc<EdgeStreams> {
        let config = streams_config(&self.bootstrap, &self.topology, &self.serde, &self.registry);
        self.runtime.spawn(start_streams(config)).await.unwrap()
    }
}
