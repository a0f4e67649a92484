//! [`SchemaLog`]: the embedded registry made durable in a compacted Kafka topic
//! (`_schemas` unless configured otherwise), and rebuilt from it at start.
//!
//! ## The topic
//! One partition (so the log has one order), `cleanup.policy=compact`, created on
//! first use with replication factor 1 unless [`SchemaLogConfig::replication_factor`]
//! says otherwise. An existing topic with more partitions or another cleanup policy
//! is refused rather than used: `delete` would expire schemas that records still name.
//! The records are orderflow's own (JSON keys and values, below), not Confluent's, so
//! a Confluent Schema Registry and this one cannot share a topic; records this module
//! did not write stop the restore with the offset that holds them.
//!
//! ## Keys: what compaction keeps
//! Compaction keeps the last record of each key, in log order, and drops a tombstone
//! (null value) some time after it was written. So each key holds one fact whose
//! latest value is all a replay needs, and a removal is a tombstone on the keys of
//! the thing removed:
//!
//! | key | value | removed by |
//! | --- | --- | --- |
//! | `{"kind":"schema","subject":s,"version":v}` | the `SCHEMA_REGISTERED` event | a tombstone: the permanent delete |
//! | `{"kind":"deleted","subject":s,"version":v}` | the soft delete (`VERSION_DELETED`) | a tombstone, after the one above |
//! | `{"kind":"config","subject":s}` | `CONFIG_SET`; `"subject":null` is the global level | a tombstone: the level cleared |
//! | `{"kind":"ids"}` | `IDS_RESERVED`: the lowest id never given out | never |
//!
//! The soft delete has a key of its own so that it cannot replace the registration
//! (which carries the schema); it always follows the registration it hides, and
//! compaction never reorders the records it keeps. A permanent delete tombstones the
//! registration first and the soft delete second: cut off between the two, the log
//! still says "soft-deleted" (the soft delete of a version that is gone is ignored),
//! never "live". Whether or not the tombstones are still there, nothing of the
//! version is replayed. Version numbers are reused only after a permanent delete, and
//! then the new registration comes after the tombstones. The `ids` record is what
//! keeps an id from being given out twice: the registration that took the highest id
//! may be deleted and compacted away, the counter is not.
//!
//! ## Writes
//! The store hands each event to a listener while it holds its write lock; the
//! listener turns it into records and enqueues them, in that order, on an idempotent
//! producer (`acks=all`) without waiting. A task awaits the deliveries in order and
//! publishes how far the topic has acknowledged. [`SchemaLog::persisted`] waits until
//! everything emitted before the call is acknowledged; the HTTP routes
//! ([`super::http`]) and [`super::RegistryClient::durable`] call it after every
//! change, so an OK answer means the change is in the topic. The memory changes
//! first: a reader may see a change a moment before it is durable, a writer never
//! gets an OK for one that is not. A write that fails (the cluster unreachable for
//! [`SchemaLogConfig::write_timeout`]) fails the log for good: every later
//! [`SchemaLog::persisted`] fails (error code 50001) and [`SchemaLog::failed`]
//! resolves, so the process stops and is restarted from the topic, which then is the
//! truth again.
//!
//! ## One writer
//! One registry per topic. Two instances on one topic do not read each other's
//! writes after their start, so they may give one id to two schemas or one version
//! number to two registrations; run one (Confluent solves this with leader election,
//! which this registry does not do).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::error::RegistryError;
use super::store::{RegistryEvent, SchemaStore};

/// The topic the registry keeps its log in unless told otherwise (Confluent's name).
pub const DEFAULT_TOPIC: &str = "_schemas";

/// Where and how the log is kept.
#[derive(Debug, Clone)]
pub struct SchemaLogConfig {
    /// `bootstrap.servers` of the cluster.
    pub brokers: String,
    /// The topic ([`DEFAULT_TOPIC`] by default).
    pub topic: String,
    /// The replication factor the topic is created with when missing (default 1, for
    /// a single-node cluster; 3 for a production one).
    pub replication_factor: i32,
    /// How long a write may wait for the cluster before the log fails (default 30 s).
    pub write_timeout: Duration,
    /// How long the start may wait for the cluster: metadata, topic creation, and
    /// each record of the restore (default 60 s).
    pub timeout: Duration,
    /// Further librdkafka properties for every client (security settings, say).
    pub client: BTreeMap<String, String>,
}

impl SchemaLogConfig {
    /// The defaults, on the cluster at `brokers`.
    pub fn new(brokers: impl Into<String>) -> SchemaLogConfig {
        SchemaLogConfig {
            brokers: brokers.into(),
            topic: DEFAULT_TOPIC.to_string(),
            replication_factor: 1,
            write_timeout: Duration::from_secs(30),
            timeout: Duration::from_secs(60),
            client: BTreeMap::new(),
        }
    }

    /// The same, on another topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> SchemaLogConfig {
        self.topic = topic.into();
        self
    }

    /// The same, creating the topic with this replication factor.
    pub fn with_replication_factor(mut self, replication_factor: i32) -> SchemaLogConfig {
        self.replication_factor = replication_factor;
        self
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (name, value) in &self.client {
            config.set(name, value);
        }
        config
    }
}

/// Why the log could not be opened. [`SchemaLogError::is_retriable`] errors may pass
/// on a later try (the cluster was away); the others need the topic or the config
/// fixed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaLogError {
    /// A Kafka client call failed.
    #[error("schema log on {brokers}: {action}: {source}")]
    Kafka {
        /// The cluster.
        brokers: String,
        /// What was being done.
        action: String,
        /// What librdkafka said.
        source: Box<KafkaError>,
    },
    /// The cluster did not answer in time.
    #[error("schema log on {brokers}: {action}: no answer within {after:?}")]
    Timeout {
        /// The cluster.
        brokers: String,
        /// What was being waited for.
        action: String,
        /// How long it was waited for.
        after: Duration,
    },
    /// The topic has more than one partition.
    #[error(
        "topic {topic} has {partitions} partitions; the schema log needs exactly 1 (one order of events): name another topic"
    )]
    Partitions {
        /// The topic.
        topic: String,
        /// Its partition count.
        partitions: usize,
    },
    /// The topic is not compacted (or also deletes).
    #[error(
        "topic {topic} has cleanup.policy={policy}; the schema log needs cleanup.policy=compact (with delete, schemas would expire): alter the topic or name another one"
    )]
    CleanupPolicy {
        /// The topic.
        topic: String,
        /// Its cleanup policy.
        policy: String,
    },
    /// A record of the topic is not one this module writes, or does not replay.
    #[error(
        "topic {topic}, offset {offset}: {reason} (is the topic shared with another schema registry? name another one)"
    )]
    Corrupt {
        /// The topic.
        topic: String,
        /// The record's offset.
        offset: i64,
        /// What is wrong with it.
        reason: String,
    },
}

impl SchemaLogError {
    /// Whether opening the log again later may succeed without changing anything.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            SchemaLogError::Kafka { .. } | SchemaLogError::Timeout { .. }
        )
    }
}

/// What the restore read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Records read (tombstones included).
    pub records: u64,
    /// The high watermark the restore read up to.
    pub end_offset: i64,
    /// The lowest schema id the log had never given out.
    pub next_id: u32,
}

/// A [`SchemaStore`] whose every change is written to a compacted Kafka topic, and
/// that was rebuilt from that topic when opened. Serve it with
/// [`super::http::serve`] (writes are acknowledged once in the topic) or use it
/// through [`super::RegistryClient::durable`]. See the module docs for the record
/// format and the guarantees. Dropping it (and the last handle on its store) drops
/// the writes not yet acknowledged: await [`SchemaLog::persisted`] first.
pub struct SchemaLog {
    store: Arc<SchemaStore>,
    writer: Arc<Writer>,
    /// How far the topic has acknowledged the writer's records, or why it failed.
    progress: watch::Receiver<Progress>,
    restored: Restored,
}

impl fmt::Debug for SchemaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaLog")
            .field("topic", &self.writer.topic)
            .field("store", &self.store)
            .field("progress", &*self.progress.borrow())
            .field("restored", &self.restored)
            .finish()
    }
}

impl SchemaLog {
    /// Creates the topic if it is missing (checks it if not), reads it from the
    /// beginning to its high watermark into a new store, and from then on writes
    /// every change of that store to it. Needs a tokio runtime (a task awaits the
    /// deliveries).
    pub async fn open(config: SchemaLogConfig) -> Result<SchemaLog, SchemaLogError> {
        ensure_topic(&config).await?;
        let producer: FutureProducer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A registration is a single record someone waits for: send it now.
            .set("linger.ms", "0")
            .set(
                "message.timeout.ms",
                config.write_timeout.as_millis().max(1).to_string(),
            )
            .create()
            .map_err(|source| kafka(&config, "creating the producer", source))?;
        let (deliveries, pending) = mpsc::unbounded_channel();
        let writer = Arc::new(Writer {
            producer,
            topic: config.topic.clone(),
            state: Mutex::new(WriterState {
                next_id: 1,
                written: 0,
                deliveries,
            }),
        });
        let listener = writer.clone();
        let store = Arc::new(SchemaStore::with_listener(move |event| {
            listener.write(event);
        }));
        let restored = {
            let (config, store) = (config.clone(), store.clone());
            blocking(config.clone(), move || restore(&config, &store)).await?
        };
        lock(&writer.state).next_id = restored.next_id;
        tracing::info!(
            topic = %config.topic,
            records = restored.records,
            end_offset = restored.end_offset,
            subjects = store.subjects(true).len(),
            next_id = restored.next_id,
            "schema log restored"
        );
        let (progress_sender, progress) = watch::channel(Progress::default());
        tokio::spawn(acknowledge(pending, progress_sender, config.topic.clone()));
        Ok(SchemaLog {
            store,
            writer,
            progress,
            restored,
        })
    }

    /// The store: read it freely; its changes are written to the topic (events fed
    /// to [`SchemaStore::apply`] are not).
    pub fn store(&self) -> &Arc<SchemaStore> {
        &self.store
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.writer.topic
    }

    /// What the restore read.
    pub fn restored(&self) -> Restored {
        self.restored
    }

    /// Waits until every change made to the store before this call is acknowledged
    /// by the topic. Fails (50001) once a write has failed, now or earlier.
    pub async fn persisted(&self) -> Result<(), RegistryError> {
        let target = lock(&self.writer.state).written;
        let mut progress = self.progress.clone();
        let outcome = progress
            .wait_for(|p| p.failed.is_some() || p.acknowledged >= target)
            .await
            .map(|p| p.failed.clone());
        match outcome {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => Err(self.failure(&reason)),
            Err(_) => Err(self.failure("the delivery task stopped")),
        }
    }

    /// Resolves when a write has failed, with why: from then on the store is ahead of
    /// the topic, and the registry must be restarted.
    pub async fn failed(&self) -> RegistryError {
        let mut progress = self.progress.clone();
        let reason = match progress.wait_for(|p| p.failed.is_some()).await {
            Ok(p) => p.failed.clone().unwrap_or_default(),
            Err(_) => "the delivery task stopped".to_string(),
        };
        self.failure(&reason)
    }

    fn failure(&self, reason: &str) -> RegistryError {
        RegistryError::Internal(format!(
            "writing to the schema log {} failed: {reason}",
            self.writer.topic
        ))
    }
}

/// How far the topic has acknowledged the writer's records.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every record up to this number (the first is 1) is in the topic.
    acknowledged: u64,
    /// Why a write failed; once set, it stays.
    failed: Option<String>,
}

/// Turns events into records and enqueues them; called by the store's listener.
struct Writer {
    producer: FutureProducer,
    topic: String,
    /// Held while an event's records are enqueued, so the record numbers follow the
    /// order of the producer's queue (the store's write lock already orders the
    /// events; this keeps the writer correct on its own).
    state: Mutex<WriterState>,
}

struct WriterState {
    /// The lowest id the log has reserved; a registration at or past it reserves more.
    next_id: u32,
    /// Records enqueued so far (the number of the last one).
    written: u64,
    /// To the task that awaits the deliveries, in order.
    deliveries: mpsc::UnboundedSender<Pending>,
}

/// A record on its way to the topic.
enum Pending {
    /// Enqueued as record number `.0`.
    Sent(u64, DeliveryFuture),
    /// Could not even be enqueued.
    Failed(String),
}

impl Writer {
    fn write(&self, event: &RegistryEvent) {
        let mut state = lock(&self.state);
        for (key, value) in records(event, &mut state.next_id) {
            state.written += 1;
            let pending = match encode(&key, value.as_ref()) {
                Err(reason) => Pending::Failed(reason),
                Ok((key, value)) => {
                    let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&self.topic)
                        .partition(0)
                        .key(&key);
                    if let Some(value) = &value {
                        record = record.payload(value);
                    }
                    match self.producer.send_result(record) {
                        Ok(delivery) => Pending::Sent(state.written, delivery),
                        Err((error, _)) => Pending::Failed(format!("cannot enqueue: {error}")),
                    }
                }
            };
            // The receiver lives as long as the runtime does; without it nobody waits.
            let _ = state.deliveries.send(pending);
        }
    }
}

/// Awaits the deliveries in the order they were enqueued and publishes the progress.
async fn acknowledge(
    mut pending: mpsc::UnboundedReceiver<Pending>,
    progress: watch::Sender<Progress>,
    topic: String,
) {
    while let Some(next) = pending.recv().await {
        let outcome = match next {
            Pending::Sent(number, delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(number),
                Ok(Err((error, _))) => Err(error.to_string()),
                Err(_) => Err("the producer was dropped".to_string()),
            },
            Pending::Failed(reason) => Err(reason),
        };
        if progress.borrow().failed.is_some() {
            // Nothing after a failure counts: the topic has a gap.
            continue;
        }
        match outcome {
            Ok(number) => progress.send_modify(|p| p.acknowledged = number),
            Err(reason) => {
                tracing::error!(
                    topic = %topic,
                    error = %reason,
                    "schema log write failed: the registry refuses changes until it is restarted"
                );
                progress.send_modify(|p| p.failed = Some(reason));
            }
        }
    }
}

/// The key of a record of the log. Serialized as JSON with a fixed field order, so
/// one fact always has the same key bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RecordKey {
    /// A version's registration.
    Schema {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// A version's soft delete.
    Deleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// A subject's compatibility level, or (`None`) the global one.
    Config {
        /// The subject.
        subject: Option<String>,
    },
    /// The id counter.
    Ids,
}

/// The key an event is stored under.
fn key_of(event: &RegistryEvent) -> RecordKey {
    match event {
        RegistryEvent::SchemaRegistered {
            subject, version, ..
        }
        | RegistryEvent::VersionDeleted {
            subject,
            version,
            permanent: true,
        } => RecordKey::Schema {
            subject: subject.clone(),
            version: *version,
        },
        RegistryEvent::VersionDeleted {
            subject,
            version,
            permanent: false,
        } => RecordKey::Deleted {
            subject: subject.clone(),
            version: *version,
        },
        RegistryEvent::ConfigSet { subject, .. } => RecordKey::Config {
            subject: subject.clone(),
        },
        RegistryEvent::IdsReserved { .. } => RecordKey::Ids,
    }
}

/// The records that persist `event`, in the order they must be written (`None`: a
/// tombstone). `next_id` is the lowest id the log has reserved so far.
fn records(event: &RegistryEvent, next_id: &mut u32) -> Vec<(RecordKey, Option<RegistryEvent>)> {
    match event {
        RegistryEvent::SchemaRegistered { id, .. } => {
            let mut records = vec![(key_of(event), Some(event.clone()))];
            if *id >= *next_id {
                *next_id = id.saturating_add(1);
                records.push((
                    RecordKey::Ids,
                    Some(RegistryEvent::IdsReserved { next_id: *next_id }),
                ));
            }
            records
        }
        RegistryEvent::VersionDeleted {
            subject,
            version,
            permanent: true,
        } => vec![
            (key_of(event), None),
            (
                RecordKey::Deleted {
                    subject: subject.clone(),
                    version: *version,
                },
                None,
            ),
        ],
        RegistryEvent::ConfigSet {
            subject: Some(_),
            level: None,
        } => vec![(key_of(event), None)],
        RegistryEvent::IdsReserved { next_id: reserved } => {
            *next_id = (*next_id).max(*reserved);
            vec![(key_of(event), Some(event.clone()))]
        }
        RegistryEvent::VersionDeleted { .. } | RegistryEvent::ConfigSet { .. } => {
            vec![(key_of(event), Some(event.clone()))]
        }
    }
}

/// The event a record replays as (`None`: nothing to do), or why it is not one of
/// this log's records.
fn replayed(
    key: &RecordKey,
    value: Option<RegistryEvent>,
) -> Result<Option<RegistryEvent>, String> {
    let Some(event) = value else {
        return Ok(match key {
            RecordKey::Schema { subject, version } => Some(RegistryEvent::VersionDeleted {
                subject: subject.clone(),
                version: *version,
                permanent: true,
            }),
            RecordKey::Config {
                subject: Some(subject),
            } => Some(RegistryEvent::ConfigSet {
                subject: Some(subject.clone()),
                level: None,
            }),
            RecordKey::Config { subject: None } => Some(RegistryEvent::ConfigSet {
                subject: None,
                level: None,
            }),
            // The registration's tombstone (written first) did the work.
            RecordKey::Deleted { .. } | RecordKey::Ids => None,
        });
    };
    if key_of(&event) != *key {
        return Err(format!("key {key:?} does not match its value {event:?}"));
    }
    Ok(Some(event))
}

fn encode(
    key: &RecordKey,
    value: Option<&RegistryEvent>,
) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
    let key = serde_json::to_vec(key).map_err(|e| format!("cannot write a key: {e}"))?;
    let value = value
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| format!("cannot write an event: {e}"))?;
    Ok((key, value))
}

fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(RecordKey, Option<RegistryEvent>), String> {
    let key = key.ok_or("a record without a key")?;
    let key: RecordKey = serde_json::from_slice(key).map_err(|e| {
        format!(
            "key {} is not a schema log key: {e}",
            String::from_utf8_lossy(key)
        )
    })?;
    let value = value
        .map(serde_json::from_slice::<RegistryEvent>)
        .transpose()
        .map_err(|e| format!("the value under {key:?} is not a registry event: {e}"))?;
    Ok((key, value))
}

/// Applies one record to `store` during the restore, tracking the id counter.
fn replay(
    store: &SchemaStore,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    next_id: &mut u32,
) -> Result<(), String> {
    let (key, value) = decode(key, value)?;
    let Some(event) = replayed(&key, value)? else {
        return Ok(());
    };
    match &event {
        RegistryEvent::SchemaRegistered { id, .. } => {
            *next_id = (*next_id).max(id.saturating_add(1));
        }
        RegistryEvent::IdsReserved { next_id: reserved } => {
            *next_id = (*next_id).max(*reserved);
        }
        RegistryEvent::VersionDeleted { .. } | RegistryEvent::ConfigSet { .. } => {}
    }
    store.apply(event).map_err(|e| e.to_string())
}

fn kafka(config: &SchemaLogConfig, action: &str, source: KafkaError) -> SchemaLogError {
    SchemaLogError::Kafka {
        brokers: config.brokers.clone(),
        action: action.to_string(),
        source: Box::new(source),
    }
}

fn timeout(config: &SchemaLogConfig, action: impl Into<String>) -> SchemaLogError {
    SchemaLogError::Timeout {
        brokers: config.brokers.clone(),
        action: action.into(),
        after: config.timeout,
    }
}

/// The topic's partitions and whether each has a leader; `None` when it does not
/// exist.
fn partitions(
    consumer: &BaseConsumer,
    config: &SchemaLogConfig,
) -> Result<Option<Vec<bool>>, SchemaLogError> {
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), config.timeout)
        .map_err(|e| {
            kafka(
                config,
                &format!("reading the metadata of {}", config.topic),
                e,
            )
        })?;
    let Some(topic) = metadata.topics().iter().find(|t| t.name() == config.topic) else {
        return Ok(None);
    };
    match topic.error().map(RDKafkaErrorCode::from) {
        None => Ok(Some(
            topic.partitions().iter().map(|p| p.leader() >= 0).collect(),
        )),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        // Being created, or electing a leader: there, not ready.
        Some(RDKafkaErrorCode::LeaderNotAvailable) => Ok(Some(Vec::new())),
        Some(code) => Err(kafka(
            config,
            &format!("reading the metadata of {}", config.topic),
            KafkaError::MetadataFetch(code),
        )),
    }
}

/// Creates the topic when it is missing and waits until its partition has a leader;
/// refuses a topic with several partitions or without `cleanup.policy=compact`.
async fn ensure_topic(config: &SchemaLogConfig) -> Result<(), SchemaLogError> {
    let consumer: BaseConsumer = config
        .client_config()
        .create()
        .map_err(|e| kafka(config, "creating a metadata client", e))?;
    let consumer = Arc::new(consumer);
    let found = {
        let (consumer, config) = (consumer.clone(), config.clone());
        blocking(config.clone(), move || partitions(&consumer, &config)).await?
    };
    let admin: AdminClient<DefaultClientContext> = config
        .client_config()
        .create()
        .map_err(|e| kafka(config, "creating an admin client", e))?;
    let options = AdminOptions::new().operation_timeout(Some(config.timeout));
    if found.is_none() {
        let topic = NewTopic::new(
            &config.topic,
            1,
            TopicReplication::Fixed(config.replication_factor),
        )
        .set("cleanup.policy", "compact");
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|e| kafka(config, &format!("creating {}", config.topic), e))?;
        for result in results {
            match result {
                Ok(_) => {
                    tracing::info!(topic = %config.topic, replication_factor = config.replication_factor, "schema log topic created")
                }
                // Someone else was quicker; it is checked below like any other.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(kafka(
                        config,
                        &format!("creating {}", config.topic),
                        KafkaError::AdminOp(code),
                    ));
                }
            }
        }
    }
    // Wait until the partition has a leader (a topic just created has none yet).
    let deadline = Instant::now() + config.timeout;
    let count = loop {
        let (consumer_ref, config_ref) = (consumer.clone(), config.clone());
        let found = blocking(config.clone(), move || {
            partitions(&consumer_ref, &config_ref)
        })
        .await?;
        match found {
            Some(leaders) if !leaders.is_empty() && leaders.iter().all(|l| *l) => {
                break leaders.len();
            }
            Some(leaders) if leaders.len() > 1 => break leaders.len(),
            _ if Instant::now() >= deadline => {
                return Err(timeout(
                    config,
                    format!("waiting for {} to have a leader", config.topic),
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if count != 1 {
        return Err(SchemaLogError::Partitions {
            topic: config.topic.clone(),
            partitions: count,
        });
    }
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&config.topic)], &options)
        .await;
    let policy = match described.as_deref() {
        Ok([Ok(resource)]) => resource
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone()),
        _ => None,
    };
    match policy {
        Some(policy) if policy.trim() == "compact" => Ok(()),
        Some(policy) => Err(SchemaLogError::CleanupPolicy {
            topic: config.topic.clone(),
            policy,
        }),
        None => {
            // Not allowed to read the config, say: the topic may well be right.
            tracing::warn!(topic = %config.topic, "cannot read the cleanup policy of the schema log topic; it must be compact");
            Ok(())
        }
    }
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    config: SchemaLogConfig,
    call: impl FnOnce() -> Result<T, SchemaLogError> + Send + 'static,
) -> Result<T, SchemaLogError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| timeout(&config, format!("a Kafka call did not return: {e}")))?
}

/// Reads the topic from its first offset to its high watermark into `store`.
fn restore(config: &SchemaLogConfig, store: &SchemaStore) -> Result<Restored, SchemaLogError> {
    let topic = &config.topic;
    let consumer: BaseConsumer = config
        .client_config()
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // librdkafka wants a group for assign(); it is never joined or committed to.
        .set("group.id", "orderflow-schema-log-restore")
        .create()
        .map_err(|e| kafka(config, "creating the restore consumer", e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, config.timeout)
        .map_err(|e| kafka(config, &format!("reading the offsets of {topic}"), e))?;
    let mut restored = Restored {
        records: 0,
        end_offset: high,
        next_id: 1,
    };
    if high <= low {
        return Ok(restored);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(low))
        .and_then(|()| consumer.assign(&assignment))
        .map_err(|e| kafka(config, &format!("reading {topic}"), e))?;
    let mut last_progress = Instant::now();
    let mut last_error = None;
    loop {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(message)) => {
                let offset = message.offset();
                replay(
                    store,
                    message.key(),
                    message.payload(),
                    &mut restored.next_id,
                )
                .map_err(|reason| SchemaLogError::Corrupt {
                    topic: topic.clone(),
                    offset,
                    reason,
                })?;
                restored.records += 1;
                last_progress = Instant::now();
                if offset + 1 >= high {
                    return Ok(restored);
                }
            }
            // Past the last record (the high watermark may follow a record that is
            // not delivered, such as a transaction marker).
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(restored),
            Some(Err(error)) => {
                tracing::warn!(topic = %topic, error = %error, "schema log restore: retrying");
                last_error = Some(error);
            }
            None => {}
        }
        if last_progress.elapsed() >= config.timeout {
            return Err(match last_error {
                Some(error) => kafka(config, &format!("reading {topic}"), error),
                None => timeout(config, format!("reading {topic} up to offset {high}")),
            });
        }
    }
}

// The states behind these locks are changed in single assignments, so a panic
// elsewhere cannot leave them half-changed: a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::store::{CompatibilityLevel, NewSchema, VersionSpec};

    const V1: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
    const V2: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"b","type":"string","default":""}]}"#;
    const V3: &str = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"},{"name":"c","type":"long","default":0}]}"#;
    const PRIMITIVES: [&str; 4] = [r#""string""#, r#""long""#, r#""int""#, r#""bytes""#];

    /// A log in memory: the records an emitting store's events turn into.
    type Log = Arc<Mutex<Vec<(RecordKey, Option<RegistryEvent>)>>>;

    fn logged_store() -> (SchemaStore, Log) {
        let log: Log = Arc::default();
        let sink = log.clone();
        let next_id = Mutex::new(1);
        let store = SchemaStore::with_listener(move |event| {
            let mut next_id = lock(&next_id);
            lock(&sink).extend(records(event, &mut next_id));
        });
        (store, log)
    }

    /// What compaction may leave: the last record of each key, in log order, with
    /// or without the tombstones.
    fn compacted(
        log: &[(RecordKey, Option<RegistryEvent>)],
        drop_tombstones: bool,
    ) -> Vec<(RecordKey, Option<RegistryEvent>)> {
        log.iter()
            .enumerate()
            .filter(|(i, (key, value))| {
                let superseded = log[i + 1..].iter().any(|(later, _)| later == key);
                let dropped = drop_tombstones && value.is_none();
                !superseded && !dropped
            })
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// Replays records through their bytes, as the restore does.
    fn rebuilt(log: &[(RecordKey, Option<RegistryEvent>)]) -> (SchemaStore, u32) {
        let store = SchemaStore::new();
        let mut next_id = 1;
        for (key, value) in log {
            let (key, value) = encode(key, value.as_ref()).expect("encodes");
            replay(&store, Some(&key), value.as_deref(), &mut next_id).expect("replays");
        }
        (store, next_id)
    }

    /// Everything a client can observe, plus the id the next new schema would get.
    fn observe(store: &SchemaStore) -> Vec<String> {
        let mut seen = vec![format!("global {:?}", store.compatibility_level(None))];
        for id in 1..20 {
            seen.push(format!(
                "id {id} {:?}",
                store.schema_by_id(id).map(|s| s.text.clone())
            ));
        }
        for subject in store.subjects(true) {
            seen.push(format!(
                "{subject} level {:?}",
                store.compatibility_level(Some(&subject))
            ));
            for version in store.versions(&subject, true).unwrap_or_default() {
                let found = store.version(&subject, VersionSpec::Number(version), true);
                seen.push(format!(
                    "{subject} v{version} {:?}",
                    found.map(|f| (f.deleted, f.schema.id, f.schema.text.clone()))
                ));
            }
        }
        for subject in ["a", "b", "c"] {
            seen.push(format!(
                "{subject} own level {:?}",
                store.compatibility_level(Some(subject))
            ));
        }
        seen
    }

    fn next_new_id(store: &SchemaStore) -> u32 {
        match store.snapshot_events().first() {
            Some(RegistryEvent::IdsReserved { next_id }) => *next_id,
            _ => 0,
        }
    }

    #[test]
    fn keys_are_stable_json() {
        let key = RecordKey::Schema {
            subject: "s".into(),
            version: 2,
        };
        assert_eq!(
            serde_json::to_string(&key).expect("json"),
            r#"{"kind":"schema","subject":"s","version":2}"#
        );
        assert_eq!(
            serde_json::to_string(&RecordKey::Config { subject: None }).expect("json"),
            r#"{"kind":"config","subject":null}"#
        );
        assert_eq!(
            serde_json::to_string(&RecordKey::Ids).expect("json"),
            r#"{"kind":"ids"}"#
        );
    }

    #[test]
    fn foreign_records_are_refused() {
        let store = SchemaStore::new();
        let mut next_id = 1;
        // What a Confluent Schema Registry writes.
        let confluent = br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#;
        assert!(replay(&store, Some(confluent), Some(b"{}"), &mut next_id).is_err());
        assert!(replay(&store, None, Some(b"{}"), &mut next_id).is_err());
        // A value under the wrong key.
        let key = serde_json::to_vec(&RecordKey::Ids).expect("json");
        let value = serde_json::to_vec(&RegistryEvent::ConfigSet {
            subject: None,
            level: Some(CompatibilityLevel::Full),
        })
        .expect("json");
        assert!(replay(&store, Some(&key), Some(&value), &mut next_id).is_err());
    }

    #[test]
    fn a_deleted_highest_id_is_not_given_out_again() {
        let (store, log) = logged_store();
        store.register("a", &NewSchema::avro(V1)).expect("a");
        store.register("b", &NewSchema::avro(V2)).expect("b");
        store.delete_subject("b", false).expect("soft");
        store.delete_subject("b", true).expect("permanent");
        let log = lock(&log).clone();
        for log in [log.clone(), compacted(&log, false), compacted(&log, true)] {
            let (replica, next_id) = rebuilt(&log);
            assert_eq!(next_id, 3);
            assert!(replica.schema_by_id(2).is_err());
            let again = replica.register("c", &NewSchema::avro(V3)).expect("c");
            assert_eq!(again.id, 3);
        }
    }

    /// A command of the property test below.
    #[derive(Debug, Clone)]
    enum Command {
        Register(usize, usize),
        SetLevel(Option<usize>, usize),
        ClearLevel(usize),
        DeleteSubject(usize, bool),
        DeleteVersion(usize, u32, bool),
    }

    const SUBJECTS: [&str; 3] = ["a", "b", "c"];

    fn schemas() -> Vec<&'static str> {
        let mut all = vec![V1, V2, V3];
        all.extend(PRIMITIVES);
        all
    }

    fn command() -> impl proptest::strategy::Strategy<Value = Command> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..SUBJECTS.len(), 0..schemas().len()).prop_map(|(s, x)| Command::Register(s, x)),
            1 => (proptest::option::of(0..SUBJECTS.len()), 0..CompatibilityLevel::ALL.len())
                .prop_map(|(s, l)| Command::SetLevel(s, l)),
            1 => (0..SUBJECTS.len()).prop_map(Command::ClearLevel),
            2 => (0..SUBJECTS.len(), any::<bool>()).prop_map(|(s, p)| Command::DeleteSubject(s, p)),
            2 => (0..SUBJECTS.len(), 1..5u32, any::<bool>()).prop_map(|(s, v, p)| Command::DeleteVersion(s, v, p)),
        ]
    }

    fn run(store: &SchemaStore, command: &Command) {
        // Refusals are part of the game.
        let _ = match *command {
            Command::Register(s, x) => store
                .register(SUBJECTS[s], &NewSchema::avro(schemas()[x]))
                .map(|_| ()),
            Command::SetLevel(s, l) => {
                store.set_compatibility_level(s.map(|s| SUBJECTS[s]), CompatibilityLevel::ALL[l]);
                Ok(())
            }
            Command::ClearLevel(s) => store.clear_compatibility_level(SUBJECTS[s]).map(|_| ()),
            Command::DeleteSubject(s, p) => store.delete_subject(SUBJECTS[s], p).map(|_| ()),
            Command::DeleteVersion(s, v, p) => store
                .delete_version(SUBJECTS[s], VersionSpec::Number(v), p)
                .map(|_| ()),
        };
    }

    proptest::proptest! {
        /// The log, compacted at any point and in any way compaction may leave it
        /// (tombstones kept or dropped), replays to the store that wrote it, and the
        /// next new schema gets the id it would have got there.
        #[test]
        fn any_compaction_of_the_log_replays_to_the_same_store(
            commands in proptest::collection::vec(command(), 0..40),
            cut in 0usize..40,
        ) {
            let (store, log) = logged_store();
            let mut compacted_early = None;
            for (i, command) in commands.iter().enumerate() {
                run(&store, command);
                if i == cut {
                    // Compaction ran here; the rest of the log came after it.
                    compacted_early = Some(lock(&log).len());
                }
            }
            let log = lock(&log).clone();
            let mut variants = vec![log.clone(), compacted(&log, false), compacted(&log, true)];
            if let Some(at) = compacted_early {
                for drop_tombstones in [false, true] {
                    let mut partly = compacted(&log[..at], drop_tombstones);
                    partly.extend_from_slice(&log[at..]);
                    variants.push(partly);
                }
            }
            for variant in variants {
                let (replica, next_id) = rebuilt(&variant);
                proptest::prop_assert_eq!(observe(&replica), observe(&store));
                proptest::prop_assert_eq!(next_id, next_new_id(&store));
                proptest::prop_assert_eq!(next_new_id(&replica), next_new_id(&store));
            }
        }
    }
}
