//! What every job runs against: one Apache Kafka broker (started here, pinned to a
//! core, or the cluster `KAFKA_BROKERS` names), an embedded schema registry on
//! loopback, topology.yaml's topics and their schemas, and the producer that
//! preloads inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use orderflow_runtime::broker::{Broker, BrokerConfig};
use orderflow_runtime::engine::{self, EngineConfig};
use orderflow_runtime::registry::{RegistryClient, SchemaStore};
use orderflow_runtime::topology;
use orderflow_runtime::wire::TopicSerde;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

/// The repository root (topology.yaml, schemas/, bench/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Partitions of every data topic in every job (topology.yaml's default).
pub const PARTITIONS: i32 = 4;

/// The broker, the registry and the topology, for the whole run.
pub struct Cluster {
    broker: Option<Broker>,
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The registry's base URL, `http://127.0.0.1:port`.
    pub registry_url: String,
    /// Every data topic bound to its registered schema id.
    pub serde: Arc<TopicSerde>,
    stop_registry: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("bootstrap", &self.bootstrap)
            .field("registry_url", &self.registry_url)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts (or joins) the broker and the registry, creates the topology's topics
    /// and registers their schemas.
    pub async fn start(work: &Path, broker_core: Option<usize>) -> anyhow::Result<Cluster> {
        let (broker, bootstrap) = match std::env::var("KAFKA_BROKERS")
            .ok()
            .filter(|b| !b.is_empty())
        {
            Some(brokers) => (None, brokers),
            None => {
                let config = BrokerConfig::new(work.join("kafka"), ([127, 0, 0, 1], 0).into());
                let broker = tokio::task::spawn_blocking(move || {
                    Broker::start(&config, &mut |line| eprintln!("bench: {line}"))
                })
                .await??;
                if let Some(core) = broker_core {
                    crate::process::pin_all_threads(broker.pid(), core);
                }
                let bootstrap = broker.bootstrap().to_string();
                (Some(broker), bootstrap)
            }
        };
        let store = Arc::new(SchemaStore::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let registry_url = format!("http://{}", listener.local_addr()?);
        let (stop_registry, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(orderflow_runtime::registry::http::serve(
            listener,
            store.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let catalog = orderflow_pipelines::catalog();
        let topology = Arc::new(
            topology::load(&repo_root().join("topology.yaml"), &catalog)
                .map_err(|e| anyhow!("topology.yaml: {e}"))?,
        );
        engine::ensure_topics(&topology, &EngineConfig::new(&bootstrap)).await?;
        let registry = RegistryClient::embedded(store);
        let serde = Arc::new(TopicSerde::register(&topology, &registry).await?);
        Ok(Cluster {
            broker,
            bootstrap,
            registry_url,
            serde,
            stop_registry: Some(stop_registry),
        })
    }

    /// A client config for this cluster.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("log_level", "4");
        c
    }

    /// Creates a plain topic of [`PARTITIONS`] partitions (none of topology.yaml's).
    pub async fn create_topic(&self, name: &str) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let results = admin
            .create_topics(
                &[NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            )
            .await?;
        for r in results {
            if let Err((topic, code)) = r
                && code != RDKafkaErrorCode::TopicAlreadyExists
            {
                bail!("creating topic {topic}: {code}");
            }
        }
        // Wait for leaders so the first write does not meet "unknown partition".
        let consumer: BaseConsumer = self.client().create()?;
        for _ in 0..100 {
            let ready = consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .map(|m| {
                    m.topics().iter().all(|t| {
                        t.partitions().len() == PARTITIONS as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("topic {name} got no leaders within 10 s")
    }

    /// The end offset of every partition of `topic`.
    pub fn end_offsets(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = self.client().create()?;
        let mut ends = BTreeMap::new();
        for partition in 0..PARTITIONS {
            // A topic just created may not have its leaders yet: retry for a while.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let high = loop {
                match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::debug!(error = %e, topic, partition, "retrying the end offset");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("end offset of {topic}/{partition}"));
                    }
                }
            };
            ends.insert(partition, high);
        }
        Ok(ends)
    }

    /// Writes `records` (key, framed value) to `topic` as fast as the broker takes
    /// them (idempotent, acks=all, the Java client's partitioner), and waits for every
    /// acknowledgement. Returns how many were written.
    pub fn preload(
        &self,
        topic: &str,
        records: impl Iterator<Item = (String, Vec<u8>)>,
    ) -> anyhow::Result<u64> {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .client()
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "20")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "500000")
            .set("compression.type", "none")
            .create()?;
        let mut written = 0u64;
        for (key, value) in records {
            let mut record = BaseRecord::<String, Vec<u8>>::to(topic)
                .key(&key)
                .payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((e, _)) => bail!("preloading {topic}: {e}"),
                }
            }
            written += 1;
        }
        producer
            .flush(Duration::from_secs(120))
            .with_context(|| format!("preloading {topic}: not every record was acknowledged"))?;
        Ok(written)
    }

    /// Stops the registry and the broker (when started here).
    pub fn stop(mut self) {
        if let Some(stop) = self.stop_registry.take() {
            let _ = stop.send(());
        }
        if let Some(broker) = self.broker.take() {
            broker.stop(Duration::from_secs(60));
        }
    }
}
