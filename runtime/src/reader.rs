//! Topic readers: every partition of some topics, read_committed and without a
//! consumer group, handed batch by batch to a callback. This is how the edges follow
//! the streams they answer from: a table topic read from its beginning (users,
//! relations, orders, chat history) and a live one from its end (replies,
//! deliveries); each instance reads all partitions, so every instance sees every
//! record. A reader knows when it has caught up with the end its topics had when it
//! started, which is what `/ready` reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::avro::AvroRecord;
use crate::registry::RegistryClient;
use crate::wire::{DecodeError, DecodeErrorKind, TopicSerde};

/// Where a reader starts in a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// From the first record still kept: the topic read as a table.
    Beginning,
    /// From the records written after the reader started: a live stream.
    End,
}

/// One topic a reader follows.
#[derive(Debug, Clone)]
pub struct ReadTopic {
    /// The topic.
    pub topic: String,
    /// Where to start.
    pub start: StartAt,
}

impl ReadTopic {
    /// `topic` from its beginning.
    pub fn table(topic: impl Into<String>) -> Self {
        ReadTopic {
            topic: topic.into(),
            start: StartAt::Beginning,
        }
    }

    /// `topic` from its end.
    pub fn live(topic: impl Into<String>) -> Self {
        ReadTopic {
            topic: topic.into(),
            start: StartAt::End,
        }
    }
}

/// How a reader connects.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Extra librdkafka settings.
    pub overrides: Vec<(String, String)>,
    /// Names the reader in logs and in its client id.
    pub name: String,
}

impl ReaderConfig {
    /// A reader named `name` against `bootstrap`.
    pub fn new(bootstrap: impl Into<String>, name: impl Into<String>) -> Self {
        ReaderConfig {
            bootstrap: bootstrap.into(),
            overrides: Vec::new(),
            name: name.into(),
        }
    }
}

/// A record as read: raw key and value, decoded later by whoever knows the topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key as UTF-8 (lossy), empty when the record has none.
    pub key: String,
    /// The value bytes; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The record's timestamp (ms), 0 when it has none.
    pub timestamp: i64,
    /// The headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// A Kafka call failed.
    #[error(
        "topic reader {name}: {context}: {error} (is the broker reachable at bootstrap.servers?)"
    )]
    Kafka {
        /// The reader.
        name: String,
        /// What was being done.
        context: String,
        /// What librdkafka said.
        error: Box<KafkaError>,
    },
    /// A topic does not exist on the cluster.
    #[error(
        "topic reader {name}: topic {topic} does not exist (start the processors once, or run `orderflow topology apply`)"
    )]
    NoSuchTopic {
        /// The reader.
        name: String,
        /// The topic.
        topic: String,
    },
    /// The reader thread could not start.
    #[error("topic reader {name}: cannot start its thread: {error}")]
    Thread {
        /// The reader.
        name: String,
        /// The error.
        error: std::io::Error,
    },
}

/// A running reader: a thread polling one consumer, stopped when dropped.
#[derive(Debug)]
pub struct TopicReader {
    name: String,
    caught_up: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TopicReader {
    /// Starts reading `topics` (every partition of each), handing each polled batch
    /// to `handler` in offset order per partition. Returns once the consumer is
    /// assigned; [`TopicReader::caught_up`] tells when the table topics have been
    /// read to the end they had at this moment.
    pub fn spawn(
        config: &ReaderConfig,
        topics: &[ReadTopic],
        mut handler: impl FnMut(Vec<RawRecord>) + Send + 'static,
    ) -> Result<TopicReader, ReaderError> {
        let name = config.name.clone();
        let kafka = |context: String| {
            let name = name.clone();
            move |error| ReaderError::Kafka {
                name,
                context,
                error: Box::new(error),
            }
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.bootstrap)
            .set("group.id", format!("orderflow-reader-{}", config.name))
            .set("client.id", format!("orderflow-reader-{}", config.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "50")
            .set("log_level", "4");
        for (k, v) in &config.overrides {
            client.set(k, v);
        }
        let consumer: BaseConsumer = client
            .create()
            .map_err(kafka("creating the consumer".into()))?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(30))
            .map_err(kafka("reading cluster metadata".into()))?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = Vec::new();
        for read in topics {
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == read.topic)
                .map(|t| t.partitions().len())
                .filter(|n| *n > 0)
                .ok_or_else(|| ReaderError::NoSuchTopic {
                    name: config.name.clone(),
                    topic: read.topic.clone(),
                })?;
            for p in 0..partitions as i32 {
                let (low, high) = watermarks(&consumer, &read.topic, p)
                    .map_err(kafka(format!("reading the end of {}[{p}]", read.topic)))?;
                // A live topic starts at the end it has now, resolved here rather than
                // by the first fetch, so nothing written after `spawn` returns is
                // missed.
                let offset = match read.start {
                    StartAt::Beginning => Offset::Beginning,
                    StartAt::End => Offset::Offset(high),
                };
                assignment
                    .add_partition_offset(&read.topic, p, offset)
                    .map_err(kafka(format!("assigning {}[{p}]", read.topic)))?;
                if read.start == StartAt::Beginning && high > low {
                    ends.push((read.topic.clone(), p, high));
                }
            }
        }
        consumer
            .assign(&assignment)
            .map_err(kafka("assigning partitions".into()))?;
        let (caught_tx, caught_up) = watch::channel(ends.is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread_name = config.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("reader-{}", config.name))
            .spawn(move || {
                let mut pending_ends = ends;
                let mut last_check = Instant::now();
                while !stopping.load(Ordering::Relaxed) {
                    let mut batch = Vec::new();
                    match consumer.poll(Duration::from_millis(100)) {
                        None => {}
                        Some(Err(e)) => {
                            tracing::warn!(reader = %thread_name, error = %e, "topic reader: poll failed; retrying");
                        }
                        Some(Ok(m)) => {
                            batch.push(RawRecord::from_message(&m));
                            // Drain what is already fetched, without waiting.
                            while batch.len() < 1000 {
                                match consumer.poll(Duration::ZERO) {
                                    Some(Ok(m)) => batch.push(RawRecord::from_message(&m)),
                                    Some(Err(e)) => {
                                        tracing::warn!(reader = %thread_name, error = %e, "topic reader: poll failed");
                                        break;
                                    }
                                    None => break,
                                }
                            }
                        }
                    }
                    if !batch.is_empty() {
                        handler(batch);
                    }
                    if !pending_ends.is_empty()
                        && (last_check.elapsed() >= Duration::from_millis(50))
                    {
                        last_check = Instant::now();
                        if let Ok(position) = consumer.position() {
                            pending_ends.retain(|(t, p, high)| {
                                position
                                    .find_partition(t, *p)
                                    .and_then(|e| e.offset().to_raw())
                                    .is_none_or(|o| o < *high)
                            });
                        }
                        if pending_ends.is_empty() {
                            tracing::debug!(reader = %thread_name, "topic reader caught up");
                            let _ = caught_tx.send(true);
                        }
                    }
                }
            })
            .map_err(|error| ReaderError::Thread {
                name: config.name.clone(),
                error,
            })?;
        Ok(TopicReader {
            name: config.name.clone(),
            caught_up,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the table topics have been read to the end they had at start.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Waits until [`TopicReader::is_caught_up`].
    pub async fn caught_up(&self) {
        let mut rx = self.caught_up.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The reader's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TopicReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A partition's watermarks, retried for a while: a topic created moments ago may
/// answer "not leader" until its leader is known everywhere.
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, topic, partition, "retrying watermarks");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A message's headers as owned pairs (a header without a value: empty bytes).
pub fn headers_of<M: Message>(m: &M) -> Vec<(String, Vec<u8>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

impl RawRecord {
    /// The record a consumer read.
    pub fn from_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        RawRecord {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value: m.payload().map(<[u8]>::to_vec),
            timestamp: m.timestamp().to_millis().unwrap_or(0),
            headers: headers_of(m),
        }
    }
}

/// Decodes the records a reader hands over: Avro values of the topology's topics,
/// fetching a writer schema it has not seen from the registry (blocking the reader's
/// own thread, never an async one).
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    serde: Arc<TopicSerde>,
    registry: Arc<RegistryClient>,
    runtime: tokio::runtime::Handle,
}

impl RecordDecoder {
    /// A decoder over `serde`, asking `registry` for unknown writer schemas on
    /// `runtime`.
    pub fn new(
        serde: Arc<TopicSerde>,
        registry: Arc<RegistryClient>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        RecordDecoder {
            serde,
            registry,
            runtime,
        }
    }

    /// The record's value as `T`; `Ok(None)` for a tombstone. Call from a reader's
    /// handler (a plain thread), not from async code.
    pub fn decode<T: AvroRecord>(&self, record: &RawRecord) -> Result<Option<T>, DecodeError> {
        let Some(bytes) = &record.value else {
            return Ok(None);
        };
        let attempt = self
            .serde
            .decode_as(&record.topic, record.partition, record.offset, bytes);
        match attempt {
            Err(DecodeError {
                kind: DecodeErrorKind::UnknownSchema(id),
                ..
            }) => {
                let fetched = self.runtime.block_on(self.registry.schema_by_id(id));
                match fetched {
                    Ok(schema) => {
                        self.serde
                            .insert_writer(id, Arc::new(schema.schema.clone()));
                        self.serde
                            .decode_as(&record.topic, record.partition, record.offset, bytes)
                            .map(Some)
                    }
                    Err(e) => Err(DecodeError {
                        topic: record.topic.clone(),
                        partition: record.partition,
                        offset: record.offset,
                        kind: DecodeErrorKind::Registry(e.to_string()),
                    }),
                }
            }
            other => other.map(Some),
        }
    }
}
