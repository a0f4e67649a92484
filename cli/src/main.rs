//! The `orderflow` command: parses arguments, sets up tracing and calls into the
//! library crates. Nothing here holds logic of its own.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orderflow_runtime::topology::{self, describe::Format};

/// orderflow: an order, payment and chat backend as a Kafka Streams-style pipeline.
#[derive(Debug, Parser)]
#[command(name = "orderflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system on this machine: a managed Apache Kafka (fetched and cached
    /// on first use, data under --data), the schema registry, every processor,
    /// the HTTP and chat edges and the SQLite sink, until Ctrl-C. With
    /// KAFKA_BROKERS set it uses that cluster and starts no broker.
    Up {
        /// The data dir: the broker's data, the SQLite database, the JWT secret.
        #[arg(long, default_value = "./.orderflow", env = "ORDERFLOW_DATA")]
        data: PathBuf,
        /// The HTTP edge's listener; the chat edge is /chat on it. Port 0 picks one.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: std::net::SocketAddr,
        /// The managed broker's client listener. Port 0 picks one.
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka: std::net::SocketAddr,
        /// The schema registry's listener. Port 0 picks one.
        #[arg(long, default_value = "127.0.0.1:8081")]
        registry: std::net::SocketAddr,
        /// Also write the endpoints as JSON (keys http, chat, kafka, schema-registry).
        #[arg(long)]
        endpoints: Option<PathBuf>,
        /// The topology file.
        #[arg(
            long,
            short,
            default_value = "topology.yaml",
            env = "ORDERFLOW_TOPOLOGY"
        )]
        file: PathBuf,
    },
    /// Run processors, edges and sinks of topology.yaml against a real Kafka
    /// cluster (KAFKA_BROKERS) and schema registry (SCHEMA_REGISTRY_URL) until
    /// Ctrl-C. With no --processor, --edge or --sink: every processor, plus the
    /// sinks whose target is set (orders-sql with DATABASE_URL, cache with REDIS_URL).
    Run {
        /// The topology file.
        #[arg(
            long,
            short,
            default_value = "topology.yaml",
            env = "ORDERFLOW_TOPOLOGY"
        )]
        file: PathBuf,
        /// A processor to run (repeat for several).
        #[arg(long = "processor")]
        processors: Vec<String>,
        /// An edge to serve on --http: `http` or `ws` (repeat for both).
        #[arg(long = "edge", value_parser = ["http", "ws"])]
        edges: Vec<String>,
        /// A sink to run (repeat for several): `orders-sql` writes DATABASE_URL,
        /// `cache` writes REDIS_URL.
        #[arg(long = "sink")]
        sinks: Vec<String>,
        /// The edges' listener.
        #[arg(long, default_value = "127.0.0.1:8080", env = "ORDERFLOW_HTTP")]
        http: std::net::SocketAddr,
        /// The database of the `orders-sql` sink (postgres://, mysql://, sqlite://).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// Redis for the `cache` sink and the edges' user directory.
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// The Kafka cluster.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// The schema registry (Confluent-compatible).
        #[arg(long, env = "SCHEMA_REGISTRY_URL")]
        registry: String,
        /// Serve Prometheus metrics on http://ADDR/metrics (port 0 picks one).
        #[arg(long, env = "ORDERFLOW_METRICS")]
        metrics: Option<std::net::SocketAddr>,
        /// A librdkafka property for every Kafka client, KEY=VALUE (repeat, or
        /// comma-separate in the env), e.g. session.timeout.ms=10000.
        #[arg(long = "kafka-config", env = "ORDERFLOW_KAFKA_CONFIG", value_delimiter = ',', value_parser = parse_property)]
        kafka_config: Vec<(String, String)>,
    },
    /// Run the managed single-node Apache Kafka (KRaft) in the foreground: fetched
    /// and cached on first use, its data under --data, stopped cleanly on Ctrl-C.
    Broker {
        /// The data directory (formatted on first use, reused after).
        #[arg(long, default_value = "./.orderflow/kafka")]
        data: PathBuf,
        /// The client listener; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:9092")]
        listen: std::net::SocketAddr,
    },
    /// Run the embedded schema registry alone (the Confluent REST subset), its
    /// schemas kept in a compacted topic of the cluster named by KAFKA_BROKERS and
    /// restored from it at start; stopped cleanly on Ctrl-C or SIGTERM.
    Registry {
        /// The HTTP listener; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// The compacted topic the schemas are kept in (one registry per topic).
        #[arg(long, default_value = orderflow_runtime::registry::log::DEFAULT_TOPIC)]
        topic: String,
        /// The replication factor the topic is created with when missing.
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
    },
    /// Publish JSON lines from stdin to a topic, Avro on the wire. Each line is
    /// `{"key": "...", "value": {...}}` (`value: null` is a tombstone; what
    /// `orderflow consume` prints is accepted as it is). A topic carrying several
    /// record types takes `{"RecordName": {...}}` or the bare record.
    Produce {
        #[command(flatten)]
        on: TopicArgs,
    },
    /// Print a topic's records as JSON lines: topic, partition, offset, timestamp,
    /// key and value (or `error` for a record that does not decode).
    Consume {
        #[command(flatten)]
        on: TopicArgs,
        /// Start at the beginning of the topic, or at its end (only new records).
        #[arg(long, default_value = "beginning", value_parser = ["beginning", "end"])]
        from: String,
        /// Keep reading new records until Ctrl-C (default: stop at the end the
        /// topic had at start).
        #[arg(long)]
        follow: bool,
        /// Stop after this many records.
        #[arg(long)]
        max: Option<usize>,
    },
    /// Validate or describe topology.yaml, or plan and apply deploying it.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
}

/// The topic `produce` and `consume` work on, and where it lives.
#[derive(Debug, clap::Args)]
struct TopicArgs {
    /// The topic (one of topology.yaml's).
    topic: String,
    /// The topology file (for the topic's schema).
    #[arg(
        long,
        short,
        default_value = "topology.yaml",
        env = "ORDERFLOW_TOPOLOGY"
    )]
    file: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The Kafka cluster and schema registry a command talks to.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// The Kafka cluster.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    /// The schema registry (Confluent-compatible).
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    registry: String,
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Check the file: exit 0, or 1 with every error as file:line:column path: message.
    Check {
        /// The topology file.
        #[arg(
            long,
            short,
            default_value = "topology.yaml",
            env = "ORDERFLOW_TOPOLOGY"
        )]
        file: PathBuf,
    },
    /// Print the processor graph: sources, processors, sinks, stores and changelogs.
    Describe {
        /// The topology file.
        #[arg(
            long,
            short,
            default_value = "topology.yaml",
            env = "ORDERFLOW_TOPOLOGY"
        )]
        file: PathBuf,
        /// text, json or dot.
        #[arg(long, default_value = "text")]
        format: Format,
    },
    /// Show what deploying the file would change on the cluster and the schema
    /// registry (topics, partition counts, cleanup policies, value schemas, the
    /// stores' changelogs) and whether it is safe: exit 0 when it is, 1 when an item
    /// is unsafe (or the file has errors), 2 when the cluster or registry could not
    /// be read. Changes nothing.
    Plan {
        #[command(flatten)]
        on: DeployArgs,
        /// text or json.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Make the plan's changes (create topics, set cleanup policies, register
    /// schemas) when every one is safe; deletes nothing. Exit 0 when applied, 1 when
    /// refused (an unsafe item, a file with errors: nothing is changed), 2 when the
    /// cluster or registry failed.
    Apply {
        #[command(flatten)]
        on: DeployArgs,
    },
}

/// Where `topology plan|apply` deploy to.
#[derive(Debug, clap::Args)]
struct DeployArgs {
    /// The topology file.
    #[arg(
        long,
        short,
        default_value = "topology.yaml",
        env = "ORDERFLOW_TOPOLOGY"
    )]
    file: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// A librdkafka property for the Kafka clients, KEY=VALUE (repeat, or
    /// comma-separate in the env).
    #[arg(long = "kafka-config", env = "ORDERFLOW_KAFKA_CONFIG", value_delimiter = ',', value_parser = parse_property)]
    kafka_config: Vec<(String, String)>,
    /// Accept an unsafe item, named as the plan prints its target (e.g. `--allow
    /// 'store chat-history'` for a new store that is to start empty): it becomes a
    /// note and apply leaves it as it is. Repeat for each.
    #[arg(long = "allow", value_name = "TARGET")]
    allow: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORDERFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Topology { command } => topology_command(command),
        Command::Up {
            data,
            http,
            kafka,
            registry,
            endpoints,
            file,
        } => up_command(data, http, kafka, registry, endpoints, file),
        Command::Run {
            file,
            processors,
            edges,
            sinks,
            http,
            database_url,
            redis_url,
            brokers,
            registry,
            metrics,
            kafka_config,
        } => run_command(RunArgs {
            file,
            processors,
            edges,
            sinks,
            http,
            database_url,
            redis_url,
            brokers,
            registry,
            metrics,
            kafka_config,
        }),
        Command::Broker { data, listen } => broker_command(data, listen),
        Command::Produce { on } => io_command("produce", || produce_command(on)),
        Command::Consume {
            on,
            from,
            follow,
            max,
        } => io_command("consume", || {
            consume_command(on, from == "end", follow, max)
        }),
        Command::Registry {
            listen,
            topic,
            replication_factor,
        } => registry_command(listen, topic, replication_factor),
    }
}

fn topology_command(command: TopologyCommand) -> ExitCode {
    let catalog = orderflow_pipelines::catalog();
    let (file, format) = match command {
        TopologyCommand::Check { file } => (file, None),
        TopologyCommand::Describe { file, format } => (file, Some(format)),
        TopologyCommand::Plan { on, format } => return deploy_command(on, Some(format)),
        TopologyCommand::Apply { on } => return deploy_command(on, None),
    };
    let file = &file;
    match topology::load(file, &catalog) {
        Err(errors) => {
            report_topology_errors(file, &errors);
            ExitCode::FAILURE
        }
        Ok(topology) => {
            let text = match format {
                None => format!(
                    "{}: ok ({} topics, {} processors, {} stores, {} edges, {} sinks)\n",
                    file.display(),
                    topology.topics.len(),
                    topology.processors.len(),
                    topology.stores.len(),
                    topology.edges.len(),
                    topology.sinks.len()
                ),
                Some(format) => topology::describe::describe(&topology, format),
            };
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(text.as_bytes()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
}

fn report_topology_errors(file: &std::path::Path, errors: &topology::TopologyErrors) {
    eprintln!("{errors}");
    eprintln!(
        "{}: {} error{}",
        file.display(),
        errors.0.len(),
        if errors.0.len() == 1 { "" } else { "s" }
    );
}

/// `topology plan` (with its output format) or `topology apply` (`format` None).
fn deploy_command(on: DeployArgs, format: Option<String>) -> ExitCode {
    use orderflow_runtime::deploy;
    let name = if format.is_some() { "plan" } else { "apply" };
    let topology = match topology::load(&on.file, &orderflow_pipelines::catalog()) {
        Ok(topology) => topology,
        Err(errors) => {
            report_topology_errors(&on.file, &errors);
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow topology {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = orderflow_runtime::engine::EngineConfig::new(on.cluster.brokers.clone());
    config.client_overrides = on.kafka_config.iter().cloned().collect();
    let outcome = runtime.block_on(async {
        let registry = orderflow_runtime::registry::RegistryClient::remote(&on.cluster.registry)
            .map_err(|e| format!("schema registry {}: {e}", on.cluster.registry))?;
        let mut plan = deploy::plan(&topology, &config, &registry)
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = plan.accept(&on.allow) {
            eprintln!("orderflow topology {name}: {e}");
            return Ok(1);
        }
        let mut out = std::io::stdout().lock();
        let write = |out: &mut std::io::StdoutLock<'_>, text: &str| {
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("writing the plan: {e}"))
        };
        match format.as_deref() {
            Some("json") => {
                let json = serde_json::to_string_pretty(&plan).map_err(|e| e.to_string())?;
                write(&mut out, &format!("{json}\n"))?;
                return Ok(if plan.safe { 0 } else { 1 });
            }
            Some(_) => {
                write(&mut out, &plan.text())?;
                return Ok(if plan.safe { 0 } else { 1 });
            }
            None => write(&mut out, &plan.text())?,
        }
        match deploy::apply(&plan, &topology, &config, &registry).await {
            Ok(done) => {
                let mut text: String = done.iter().map(|line| format!("{line}\n")).collect();
                text.push_str(&format!(
                    "applied: {} change{}\n",
                    done.len(),
                    if done.len() == 1 { "" } else { "s" }
                ));
                write(&mut out, &text)?;
                Ok(0)
            }
            Err(e @ deploy::DeployError::Unsafe(_)) => {
                eprintln!("orderflow topology apply: {e}");
                Ok(1)
            }
            Err(e) => Err(e.to_string()),
        }
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("orderflow topology {name}: {message}");
            ExitCode::from(2)
        }
    }
}

fn broker_command(data: PathBuf, listen: std::net::SocketAddr) -> ExitCode {
    use orderflow_runtime::broker::{Broker, BrokerConfig};
    let config = BrokerConfig::new(data, listen);
    let broker = match Broker::start(&config, &mut |line| eprintln!("{line}")) {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("orderflow broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "kafka: {}", broker.bootstrap())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);
    tracing::info!(pid = broker.pid(), data = %broker.data_dir().display(), "broker ready");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let broker = std::sync::Arc::new(broker);
    let watched = broker.clone();
    let outcome = runtime.block_on(async move {
        let exited = tokio::task::spawn_blocking(move || {
            loop {
                if let Some(status) = watched.wait_exit(std::time::Duration::from_secs(1)) {
                    return status;
                }
            }
        });
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = exited => Err(status.unwrap_or_else(|e| e.to_string())),
            _ = tokio::signal::ctrl_c() => Ok(()),
            () = terminated => Ok(()),
        }
    });
    match outcome {
        Ok(()) => {
            eprintln!("stopping the broker");
            let status = broker.stop(std::time::Duration::from_secs(60));
            eprintln!(
                "broker stopped ({})",
                status.unwrap_or_else(|| "still running".into())
            );
            ExitCode::SUCCESS
        }
        Err(status) => {
            eprintln!(
                "orderflow broker: the broker exited on its own ({status}); see {}",
                broker.data_dir().join("broker.log").display()
            );
            ExitCode::FAILURE
        }
    }
}

fn registry_command(
    listen: std::net::SocketAddr,
    topic: String,
    replication_factor: i32,
) -> ExitCode {
    use orderflow_runtime::registry::{SchemaLog, SchemaLogConfig, http};
    let brokers = match std::env::var("KAFKA_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => brokers,
        _ => {
            eprintln!(
                "orderflow registry: KAFKA_BROKERS is not set: name the Kafka cluster that keeps the schemas, e.g. KAFKA_BROKERS=127.0.0.1:9092 (the `kafka:` line of `orderflow broker`)"
            );
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow registry: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome: anyhow::Result<()> = runtime.block_on(async move {
        use anyhow::Context as _;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        let config = SchemaLogConfig::new(brokers)
            .with_topic(topic)
            .with_replication_factor(replication_factor);
        let log = std::sync::Arc::new(SchemaLog::open(config).await?);
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "schema-registry: http://{address}").and_then(|()| stdout.flush())?;
        drop(stdout);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let stop = async move {
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminated => {}
            }
        };
        tokio::select! {
            served = http::serve(listener, log.clone(), stop) => served?,
            // The store is ahead of the topic: stop, a restart reads the truth back.
            error = log.failed() => return Err(error.into()),
        }
        log.persisted().await?;
        Ok(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderflow registry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `KEY=VALUE` of `--kafka-config`.
fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.trim().to_string()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// What `orderflow run` was told.
struct RunArgs {
    file: PathBuf,
    processors: Vec<String>,
    edges: Vec<String>,
    sinks: Vec<String>,
    http: std::net::SocketAddr,
    database_url: Option<String>,
    redis_url: Option<String>,
    brokers: String,
    registry: String,
    metrics: Option<std::net::SocketAddr>,
    kafka_config: Vec<(String, String)>,
}

fn run_command(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow run: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_node(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderflow run: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(args: RunArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use orderflow_connectors::node::{self, NodeConfig};
    use orderflow_runtime::registry::RegistryClient;
    use orderflow_runtime::topology::EdgeKind;
    let catalog = orderflow_pipelines::catalog();
    let topology = std::sync::Arc::new(
        topology::load(&args.file, &catalog).map_err(|errors| anyhow::anyhow!("{errors}"))?,
    );
    let registry = std::sync::Arc::new(
        RegistryClient::remote(&args.registry)
            .with_context(|| format!("schema registry {}", args.registry))?,
    );
    let everything = args.processors.is_empty() && args.edges.is_empty() && args.sinks.is_empty();
    let processors = if everything {
        Some(Vec::new())
    } else if args.processors.is_empty() {
        None
    } else {
        Some(args.processors.clone())
    };
    let mut sink_names = args.sinks.clone();
    if everything {
        if args.database_url.is_some() {
            sink_names.push("orders-sql".to_string());
        }
        if args.redis_url.is_some() {
            sink_names.push("cache".to_string());
        }
    }
    let mut sinks = Vec::new();
    for name in sink_names {
        let kind = topology
            .sinks
            .get(&name)
            .map(|s| s.kind)
            .with_context(|| format!("no sink {name:?} in {}", args.file.display()))?;
        let target = match kind {
            orderflow_runtime::topology::SinkKind::Sql => args
                .database_url
                .clone()
                .with_context(|| format!("sink {name} writes DATABASE_URL, which is not set"))?,
            orderflow_runtime::topology::SinkKind::Redis => args
                .redis_url
                .clone()
                .with_context(|| format!("sink {name} writes REDIS_URL, which is not set"))?,
        };
        sinks.push((name, target));
    }
    let edges: std::collections::BTreeSet<EdgeKind> = args
        .edges
        .iter()
        .map(|e| {
            if e == "ws" {
                EdgeKind::Ws
            } else {
                EdgeKind::Http
            }
        })
        .collect();
    let metrics = std::sync::Arc::new(orderflow_runtime::metrics::Metrics::new());
    let (listener, tokens) = if edges.is_empty() {
        (None, None)
    } else {
        let config = orderflow_connectors::auth::token::JwtConfig::from_env()
            .context("the edges sign and check tokens")?;
        let tokens = orderflow_connectors::auth::token::Tokens::new(&config)
            .context("the edges sign and check tokens")?;
        let listener = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("cannot listen on {} for the edges", args.http))?;
        let bound = listener.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        if edges.contains(&EdgeKind::Http) {
            writeln!(stdout, "http: http://{bound}")?;
        }
        if edges.contains(&EdgeKind::Ws) {
            writeln!(stdout, "chat: ws://{bound}/chat")?;
        }
        stdout.flush()?;
        (Some(listener), Some(std::sync::Arc::new(tokens)))
    };
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let bound = listener.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "metrics: http://{bound}/metrics")?;
        stdout.flush()?;
        tokio::spawn(orderflow_runtime::metrics::serve(
            listener,
            metrics.clone(),
            std::future::pending(),
        ));
    }
    let config = NodeConfig {
        bootstrap: args.brokers,
        kafka_overrides: args.kafka_config,
        consumer_overrides: Vec::new(),
        topology,
        catalog,
        registry,
        processors,
        edges,
        listener,
        sinks,
        redis_url: args.redis_url,
        tokens,
        http: orderflow_connectors::http::HttpSettings::from_env()?,
        chat: orderflow_connectors::chat::ChatSettings::default(),
        metrics,
        instance_id: None,
    };
    node::run(config, shutdown_signal()).await?;
    Ok(())
}

fn up_command(
    data: PathBuf,
    http: std::net::SocketAddr,
    kafka: std::net::SocketAddr,
    registry: std::net::SocketAddr,
    endpoints: Option<PathBuf>,
    file: PathBuf,
) -> ExitCode {
    use orderflow_connectors::up::{self, UpConfig};
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow up: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = UpConfig {
        data,
        http,
        kafka,
        registry,
        topology: file,
        kafka_brokers: std::env::var("KAFKA_BROKERS")
            .ok()
            .filter(|b| !b.trim().is_empty()),
        redis_url: std::env::var("REDIS_URL")
            .ok()
            .filter(|u| !u.trim().is_empty()),
    };
    let mut written = Ok(());
    let result = runtime.block_on(up::up(
        config,
        |line| eprintln!("{line}"),
        |found| {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(found.lines().as_bytes())
                .and_then(|()| stdout.flush());
            if let Some(path) = &endpoints {
                written = serde_json::to_vec_pretty(found)
                    .map_err(std::io::Error::other)
                    .and_then(|json| std::fs::write(path, json))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()));
            }
        },
        shutdown_signal(),
    ));
    if let Err(e) = written {
        eprintln!("orderflow up: {e}");
        return ExitCode::FAILURE;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderflow up: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
}

/// Runs `produce` or `consume` on a runtime of its own; an error is printed as
/// `orderflow NAME: ...` and fails the command.
fn io_command<F, Fut>(name: &str, body: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("orderflow {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The topology, the registry client and the serde of a produce/consume run, and
/// the topic's schema.
async fn topic_io(
    topic: &str,
    file: &std::path::Path,
    registry: &str,
) -> anyhow::Result<(
    std::sync::Arc<orderflow_runtime::registry::RegistryClient>,
    std::sync::Arc<orderflow_runtime::wire::TopicSerde>,
    std::sync::Arc<apache_avro::Schema>,
)> {
    use anyhow::Context as _;
    let topology = topology::load(file, &orderflow_pipelines::catalog())
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let declared = topology
        .topics
        .get(topic)
        .with_context(|| format!("{topic} is not a topic of {}", file.display()))?;
    if declared.schema.is_none() {
        anyhow::bail!(
            "{topic} has no value schema in {} (changelog and dead-letter topics hold raw bytes)",
            file.display()
        );
    }
    let registry = std::sync::Arc::new(
        orderflow_runtime::registry::RegistryClient::remote(registry)
            .with_context(|| format!("schema registry {registry}"))?,
    );
    let serde = std::sync::Arc::new(
        orderflow_runtime::wire::TopicSerde::register(&topology, &registry).await?,
    );
    let schema = serde
        .topic(topic)
        .map(|t| t.schema.clone())
        .with_context(|| format!("{topic} has no registered schema"))?;
    Ok((registry, serde, schema))
}

async fn produce_command(on: TopicArgs) -> anyhow::Result<ExitCode> {
    let TopicArgs {
        topic,
        file,
        cluster: ClusterArgs { brokers, registry },
    } = on;
    use std::io::BufRead as _;
    let (_registry, serde, schema) = topic_io(&topic, &file, &registry).await?;
    let publisher = orderflow_runtime::publish::Publisher::new(&brokers, &[], serde)?;
    let mut sends = tokio::task::JoinSet::new();
    let mut bad = 0usize;
    let mut lines = 0usize;
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let parsed = parse_line(&line, &schema);
        let (key, value) = match parsed {
            Ok(kv) => kv,
            Err(message) => {
                eprintln!("stdin:{}: {message}", number + 1);
                bad += 1;
                continue;
            }
        };
        // Enqueued here, in line order (records of one key keep their order); the
        // broker's confirmations are awaited concurrently.
        let bytes = match value {
            Some(value) => match publisher.serde().encode_value(&topic, value) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    eprintln!("stdin:{}: {e}", number + 1);
                    bad += 1;
                    continue;
                }
            },
            None => None,
        };
        let pending = publisher.enqueue(&topic, &key, bytes.as_deref()).await?;
        sends.spawn(async move {
            pending
                .confirmed()
                .await
                .map(|_| ())
                .map_err(|e| format!("stdin:{}: {e}", number + 1))
        });
        // Bounded in flight: the producer batches, the memory stays small.
        while sends.len() >= 1000 {
            if let Some(done) = sends.join_next().await
                && let Err(e) = done?
            {
                eprintln!("{e}");
                bad += 1;
            }
        }
    }
    while let Some(done) = sends.join_next().await {
        if let Err(e) = done? {
            eprintln!("{e}");
            bad += 1;
        }
    }
    eprintln!("produced {} of {lines} records to {topic}", lines - bad);
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A line of `produce`: its key and value (`None`: a tombstone), or why not.
fn parse_line(
    line: &str,
    schema: &apache_avro::Schema,
) -> Result<(String, Option<apache_avro::types::Value>), String> {
    let json: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let serde_json::Value::Object(map) = json else {
        return Err("expected an object {\"key\": ..., \"value\": ...}".into());
    };
    let key = match map.get("key") {
        Some(serde_json::Value::String(k)) => k.clone(),
        Some(other) => return Err(format!("key must be a string, not {other}")),
        None => {
            return Err("missing \"key\" (records are keyed: see DESIGN.md's topic table)".into());
        }
    };
    match map.get("value") {
        None => Err("missing \"value\" (null for a tombstone)".into()),
        Some(serde_json::Value::Null) => Ok((key, None)),
        Some(value) => orderflow_runtime::json::to_avro(schema, value)
            .map(|v| (key, Some(v)))
            .map_err(|e| format!("value: {e}")),
    }
}

async fn consume_command(
    on: TopicArgs,
    from_end: bool,
    follow: bool,
    max: Option<usize>,
) -> anyhow::Result<ExitCode> {
    use orderflow_runtime::reader::{RawRecord, ReadTopic, ReaderConfig, TopicReader};
    let TopicArgs {
        topic,
        file,
        cluster: ClusterArgs { brokers, registry },
    } = on;
    let (registry, serde, schema) = topic_io(&topic, &file, &registry).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<RawRecord>>();
    let read = if from_end {
        ReadTopic::live(&topic)
    } else {
        ReadTopic::table(&topic)
    };
    let name = format!("consume-{}-{}", std::process::id(), now_ms());
    let reader = TopicReader::spawn(&ReaderConfig::new(&brokers, name), &[read], move |batch| {
        let _ = tx.send(batch);
    })?;
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    'reading: loop {
        let batch = tokio::select! {
            () = &mut shutdown => break,
            batch = rx.recv() => batch,
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => None,
        };
        if let Some(batch) = batch {
            for record in batch {
                let value = match &record.value {
                    None => Ok(serde_json::Value::Null),
                    Some(bytes) => serde
                        .decode_with(
                            &registry,
                            &record.topic,
                            record.partition,
                            record.offset,
                            bytes,
                        )
                        .await
                        .map(|v| orderflow_runtime::json::from_avro(&schema, &v))
                        .map_err(|e| e.to_string()),
                };
                let mut line = serde_json::json!({
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "timestamp": record.timestamp,
                    "key": record.key,
                });
                match value {
                    Ok(v) => line["value"] = v,
                    Err(e) => line["error"] = serde_json::Value::String(e),
                }
                writeln!(stdout, "{line}")?;
                printed += 1;
                if max.is_some_and(|m| printed >= m) {
                    break 'reading;
                }
            }
            stdout.flush()?;
        } else if !follow && reader.is_caught_up() && rx.is_empty() {
            break;
        }
    }
    stdout.flush()?;
    drop(reader);
    Ok(ExitCode::SUCCESS)
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
