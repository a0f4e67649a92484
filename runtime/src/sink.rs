//! Sinks: a consumer group (`<app>-<sink>`) over some topics that hands each batch of
//! decoded records to an async writer (a database, a cache) and commits the offsets
//! only after the writer succeeded. At least once into a writer that is idempotent
//! (an upsert by key and version) is exactly one effect per record. A writer that
//! fails is retried with backoff, never skipped; a record that cannot be decoded, or
//! that the writer rejects as malformed, goes to the sink's dead-letter topic
//! `<app>-<sink>-dlq` and the rest of the batch goes on.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::avro::AvroRecord;
use crate::dead_letter::DeadLetter;
use crate::metrics::Metrics;
use crate::publish::{PublishError, Publisher};
use crate::reader::RawRecord;
use crate::registry::RegistryClient;
use crate::wire::TopicSerde;

/// A decoded record handed to a writer.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key.
    pub key: String,
    /// The value resolved to the topic's schema; `None` for a tombstone.
    pub value: Option<Value>,
    /// The record's timestamp (ms).
    pub timestamp: i64,
}

impl SinkRecord {
    /// The value as the topic's Rust type; `Ok(None)` for a tombstone. An `Err` is a
    /// message for [`WriteError::Reject`].
    pub fn decode<T: AvroRecord>(&self) -> Result<Option<T>, String> {
        self.value
            .as_ref()
            .map(|v| T::from_avro(v).map_err(|e| e.to_string()))
            .transpose()
    }
}

/// Why a writer did not write a batch.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The target is unavailable or refused for a reason that may pass: the batch is
    /// written again after a pause.
    #[error("{0}")]
    Retry(String),
    /// The record at `index` of the batch can never be written: it goes to the
    /// dead-letter topic and the batch is written again without it.
    #[error("record {index} of the batch: {message}")]
    Reject {
        /// Its index in the batch.
        index: usize,
        /// Why.
        message: String,
    },
}

/// The future a writer returns.
pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + 'a>>;

/// Where a sink writes.
pub trait SinkWriter: Send {
    /// Writes a batch (in offset order per partition). Must be idempotent: after a
    /// crash the same records come again.
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> WriteFuture<'a>;
}

/// How a sink connects and batches.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Extra librdkafka settings for every client.
    pub overrides: Vec<(String, String)>,
    /// Extra librdkafka settings for the consumer only.
    pub consumer_overrides: Vec<(String, String)>,
    /// The consumer group, `<app>-<sink>`.
    pub group: String,
    /// The sink's name (logs, metrics, dead-letter headers).
    pub name: String,
    /// The topics it reads.
    pub topics: Vec<String>,
    /// Its dead-letter topic.
    pub dead_letter: String,
    /// The most records in one batch.
    pub batch_max: usize,
    /// How long a batch waits for more records once it has one.
    pub batch_wait: Duration,
}

impl SinkConfig {
    /// The sink `name` of app `app` over `topics`, with the default group and
    /// dead-letter topic names.
    pub fn new(bootstrap: &str, app: &str, name: &str, topics: Vec<String>) -> Self {
        SinkConfig {
            bootstrap: bootstrap.to_string(),
            overrides: Vec::new(),
            consumer_overrides: Vec::new(),
            group: format!("{app}-{name}"),
            name: name.to_string(),
            topics,
            dead_letter: crate::topology::Topology::dead_letter_topic(app, name),
            batch_max: 500,
            batch_wait: Duration::from_millis(20),
        }
    }
}

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A Kafka call failed in a way the sink cannot get past.
    #[error("sink {sink}: {context}: {error}")]
    Kafka {
        /// The sink.
        sink: String,
        /// What was being done.
        context: String,
        /// What librdkafka said.
        error: KafkaError,
    },
    /// A dead letter could not be written (so the record would be lost).
    #[error("sink {sink}: {error}")]
    DeadLetter {
        /// The sink.
        sink: String,
        /// Why.
        error: PublishError,
    },
}

/// Runs a sink until `shutdown` completes: consume, decode, write, commit.
pub async fn run_sink(
    config: SinkConfig,
    serde: Arc<TopicSerde>,
    registry: Arc<RegistryClient>,
    mut writer: Box<dyn SinkWriter>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SinkError> {
    let kafka = |context: &str| {
        let sink = config.name.clone();
        let context = context.to_string();
        move |error| SinkError::Kafka {
            sink,
            context,
            error,
        }
    };
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap)
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("log_level", "4");
    for (k, v) in config.overrides.iter().chain(&config.consumer_overrides) {
        client.set(k, v);
    }
    let consumer: StreamConsumer = client.create().map_err(kafka("creating the consumer"))?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(kafka("subscribing"))?;
    let dead_letters = Publisher::new(&config.bootstrap, &config.overrides, serde.clone())
        .map_err(|error| SinkError::DeadLetter {
            sink: config.name.clone(),
            error,
        })?;
    let labels = || vec![("sink", config.name.clone())];
    let written = |n: usize| {
        metrics.add(
            "orderflow_sink_records_total",
            "Records a sink wrote.",
            labels(),
            n as f64,
        );
    };
    let dead = || {
        metrics.add(
            "orderflow_sink_dead_letters_total",
            "Records a sink sent to its dead-letter topic.",
            labels(),
            1.0,
        );
    };
    tracing::info!(sink = %config.name, topics = ?config.topics, "sink started");
    tokio::pin!(shutdown);
    loop {
        let first = tokio::select! {
            () = &mut shutdown => break,
            m = consumer.recv() => m,
        };
        let mut raw: Vec<RawRecord> = Vec::new();
        match first {
            Ok(m) => raw.push(RawRecord::from_message(&m)),
            Err(e) => {
                tracing::warn!(sink = %config.name, error = %e, "sink: consume failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let deadline = tokio::time::Instant::now() + config.batch_wait;
        while raw.len() < config.batch_max {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => raw.push(RawRecord::from_message(&m)),
                Ok(Err(e)) => {
                    tracing::warn!(sink = %config.name, error = %e, "sink: consume failed");
                    break;
                }
                Err(_) => break,
            }
        }
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for r in &raw {
            next.insert((r.topic.clone(), r.partition), r.offset + 1);
        }
        // Decode; what cannot be decoded is a dead letter.
        let mut batch = Vec::with_capacity(raw.len());
        let mut sources = Vec::with_capacity(raw.len());
        for r in raw {
            let value = match &r.value {
                None => None,
                Some(bytes) => {
                    let mut pause = Duration::from_millis(100);
                    loop {
                        match serde
                            .decode_with(&registry, &r.topic, r.partition, r.offset, bytes)
                            .await
                        {
                            Ok(v) => break Some(Ok(v)),
                            Err(e) if e.kind.is_retriable() => {
                                tracing::warn!(sink = %config.name, error = %e, "sink: schema registry unavailable; retrying");
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(Duration::from_secs(5));
                            }
                            Err(e) => break Some(Err(e)),
                        }
                    }
                }
            };
            match value {
                Some(Err(e)) => {
                    send_dead_letter(&dead_letters, &config, &r, e.kind.code(), &e.to_string())
                        .await?;
                    dead();
                }
                other => {
                    batch.push(SinkRecord {
                        topic: r.topic.clone(),
                        partition: r.partition,
                        offset: r.offset,
                        key: r.key.clone(),
                        value: other.and_then(Result::ok),
                        timestamp: r.timestamp,
                    });
                    sources.push(r);
                }
            }
        }
        // Write, retrying until it is written (or the sink is stopped: then the
        // offsets stay uncommitted and the records come again).
        let mut pause = Duration::from_millis(100);
        let mut stopped = false;
        while !batch.is_empty() {
            match writer.write(&batch).await {
                Ok(()) => {
                    written(batch.len());
                    break;
                }
                Err(WriteError::Reject { index, message }) if index < batch.len() => {
                    let r = sources.remove(index);
                    batch.remove(index);
                    send_dead_letter(&dead_letters, &config, &r, "rejected", &message).await?;
                    dead();
                }
                Err(e) => {
                    tracing::warn!(sink = %config.name, error = %e, "sink: write failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => { stopped = true; break; }
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
        if stopped {
            break;
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            let _ = offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            // A rebalance took the partition: its new owner writes the records
            // again, which the writer's idempotence makes harmless.
            tracing::debug!(sink = %config.name, error = %e, "sink: commit refused");
        }
    }
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    tracing::info!(sink = %config.name, "sink stopped");
    Ok(())
}

async fn send_dead_letter(
    publisher: &Publisher,
    config: &SinkConfig,
    r: &RawRecord,
    kind: &str,
    message: &str,
) -> Result<(), SinkError> {
    tracing::warn!(sink = %config.name, topic = %r.topic, partition = r.partition, offset = r.offset, error = message, "sink: record sent to the dead-letter topic");
    let letter = DeadLetter {
        processor: &config.name,
        topic: &r.topic,
        partition: r.partition,
        offset: r.offset,
        kind,
        message,
    };
    let headers = letter.headers(&r.headers);
    publisher
        .publish_bytes(&config.dead_letter, &r.key, r.value.as_deref(), &headers)
        .await
        .map(|_| ())
        .map_err(|error| SinkError::DeadLetter {
            sink: config.name.clone(),
            error,
        })
}
