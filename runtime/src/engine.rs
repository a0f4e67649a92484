//! The engine on a real Apache Kafka: the processors of a topology as tasks over
//! rdkafka, Kafka Streams style.
//!
//! One app is one consumer group (`app` in topology.yaml). Each guarantee present gets
//! one stream thread: a consumer in the group (range assignment, so co-partitioned
//! inputs land on the same instance) and one producer. A task is one processor over
//! one input partition; it is created when its partition is assigned, its stores
//! restored from their compacted changelogs (read_committed, up to the end) before it
//! processes anything. A task reading several co-partitioned topics takes their
//! records oldest first (by record timestamp) from a bounded read-ahead, as Kafka
//! Streams does, so one topic's backlog does not run ahead of the other's.
//!
//! `exactly_once` follows Kafka Streams' exactly_once_v2: one transactional producer
//! per stream thread; outputs, changelog writes and dead letters go inside the open
//! transaction; every `commit_interval` the thread sends its consumed offsets with
//! the consumer's group metadata (`send_offsets_to_transaction`, so a zombie of an
//! older generation is fenced) and commits. A rebalance or an abortable error aborts
//! the open transaction, drops every task (their in-memory state is ahead of what was
//! committed) and rewinds to the committed offsets; the tasks are restored from their
//! changelogs again. `at_least_once`: an idempotent producer, offsets committed after
//! every output is acknowledged, and outputs carry a deterministic id header so a
//! consumer can drop a repeat.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::context::{Continuation, GlobalTables, Output};
use crate::dead_letter::DeadLetter;
use crate::metrics::{Histogram, Metrics};
use crate::processor::{Catalog, ProcessError, Record};
use crate::registry::RegistryClient;
use crate::task::{Hook, RestoredEntry, Task};
use crate::timer::TimeDomain;
use crate::topology::{Cleanup, Guarantee, ProcessorNode, Topology};
use crate::wire::TopicSerde;

/// The header every output carries under at_least_once: `<topic>/<partition>/<offset>/<n>`
/// of the input record that produced it (the n-th output of that record), so a
/// consumer can drop a repeated output.
pub const ID_HEADER: &str = "orderflow.id";

/// How the engine connects and what it runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// The processors to run; empty runs all of them.
    pub processors: Vec<String>,
    /// Names this instance in transactional ids; default random per start. Give a
    /// restarted instance the id it had (`ORDERFLOW_INSTANCE_ID`) and its first
    /// transaction fences and aborts the one its crashed predecessor left open at
    /// once, instead of after `transaction.timeout.ms`.
    pub instance_id: String,
    /// Extra librdkafka settings for every client (for example
    /// `session.timeout.ms`).
    pub client_overrides: BTreeMap<String, String>,
    /// Extra librdkafka settings for the consumers only (a producer warns about
    /// consumer properties such as `session.timeout.ms`).
    pub consumer_overrides: BTreeMap<String, String>,
    /// Static group membership (`group.instance.id` from the instance id): a
    /// restarted instance takes its partitions back at once instead of waiting for
    /// its crashed predecessor's session to expire. Only for an instance id that
    /// one process at a time uses (as `orderflow up` does).
    pub static_membership: bool,
    /// Where the engine's metrics go (served on `/metrics` by whoever owns it).
    pub metrics: Arc<Metrics>,
}

impl EngineConfig {
    /// All processors against `bootstrap`.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let instance_id = std::env::var("ORDERFLOW_INSTANCE_ID")
            .ok()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("{:x}-{nanos:x}", std::process::id()));
        EngineConfig {
            bootstrap: bootstrap.into(),
            processors: Vec::new(),
            instance_id,
            client_overrides: BTreeMap::new(),
            consumer_overrides: BTreeMap::new(),
            static_membership: false,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// Why the engine stopped, with what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A topic exists with another partition count than topology.yaml gives it.
    #[error(
        "topic {topic} has {actual} partitions but topology.yaml says {expected}: change topology.yaml to {actual}, or create a new topic (partition counts cannot shrink, and growing one moves keys to other partitions)"
    )]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Its partition count on the cluster.
        actual: i32,
        /// What topology.yaml says.
        expected: u32,
    },
    /// A named processor is not in the topology.
    #[error("no processor {0:?} in topology.yaml")]
    UnknownProcessor(String),
    /// A Kafka operation failed in a way the instance cannot recover from.
    #[error("{context}: {error}{hint}")]
    Kafka {
        /// What was being done.
        context: String,
        /// What librdkafka said.
        error: KafkaError,
        /// What to do about it.
        hint: &'static str,
    },
    /// The schema registry refused a topic's schema.
    #[error("{0}")]
    Register(#[from] crate::wire::RegisterError),
    /// A processor failed fatally.
    #[error("processor {processor} stopped the instance: {error}")]
    Processor {
        /// The processor.
        processor: String,
        /// Its error.
        error: ProcessError,
    },
    /// A stream thread panicked or could not start.
    #[error("stream thread: {0}")]
    Thread(String),
    /// A store's changelog is gone while its processor's consumer group has moved on:
    /// creating it anew would give the store an empty start under offsets past
    /// records it never saw, so the instance refuses (Kafka Streams' KIP-698 idea).
    #[error("{0}")]
    ChangelogLost(Box<LostChangelog>),
}

/// What [`EngineError::ChangelogLost`] found.
#[derive(Debug, thiserror::Error)]
#[error(
    "the changelog {changelog} of store {store} does not exist, but consumer group {group} has committed offsets for the inputs of {processor} ({offsets}): starting now would give {processor} an empty store while it resumes after records it never saw. Restore the topic (or give the store back its old name), reset the group's offsets so the inputs are processed again, or accept an empty store with `orderflow topology apply --allow 'store {store}'`, which creates the changelog"
)]
pub struct LostChangelog {
    /// The store.
    pub store: String,
    /// Its missing changelog topic.
    pub changelog: String,
    /// The app's consumer group.
    pub group: String,
    /// The store's processor.
    pub processor: String,
    /// The committed offsets found, `topic/partition at offset`.
    pub offsets: String,
}

fn kafka(context: impl Into<String>, hint: &'static str) -> impl FnOnce(KafkaError) -> EngineError {
    let context = context.into();
    move |error| EngineError::Kafka {
        context,
        error,
        hint,
    }
}

const CHECK_BROKER: &str = " (is the broker reachable at bootstrap.servers?)";

/// Runs the topology's processors until `shutdown` completes or a fatal error stops
/// the instance. Creates missing topics first and refuses a topic whose partition
/// count differs from topology.yaml; registers every schema.
pub async fn run(
    topology: Arc<Topology>,
    catalog: Catalog,
    registry: Arc<RegistryClient>,
    config: EngineConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EngineError> {
    for name in &config.processors {
        if !topology.processors.contains_key(name) {
            return Err(EngineError::UnknownProcessor(name.clone()));
        }
    }
    ensure_topics(&topology, &config).await?;
    let serde = Arc::new(TopicSerde::register(&topology, &registry).await?);
    let chosen: Vec<Arc<ProcessorNode>> = topology
        .processors
        .values()
        .filter(|p| config.processors.is_empty() || config.processors.contains(&p.name))
        .map(|p| Arc::new(p.clone()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for guarantee in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
        let nodes: Vec<Arc<ProcessorNode>> = chosen
            .iter()
            .filter(|p| p.processing == guarantee)
            .cloned()
            .collect();
        if nodes.is_empty() {
            continue;
        }
        let shared = Shared {
            topology: topology.clone(),
            catalog: catalog.clone(),
            serde: serde.clone(),
            registry: registry.clone(),
            runtime: tokio::runtime::Handle::current(),
            stop: stop.clone(),
        };
        let config = config.clone();
        let done = done_tx.clone();
        let name = format!("stream-{guarantee}");
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let result =
                    StreamThread::new(shared, config, guarantee, nodes).and_then(|mut t| t.run());
                let _ = done.send(result);
            })
            .map_err(|e| EngineError::Thread(e.to_string()))?;
        threads.push(handle);
    }
    drop(done_tx);
    let mut result = Ok(());
    tokio::pin!(shutdown);
    let running = threads.len();
    let mut finished = 0;
    tokio::select! {
        () = &mut shutdown => {}
        first = done_rx.recv() => {
            finished += 1;
            if let Some(Err(e)) = first {
                result = Err(e);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    while finished < running {
        match done_rx.recv().await {
            Some(Err(e)) if result.is_ok() => result = Err(e),
            Some(_) => {}
            None => break,
        }
        finished += 1;
    }
    for handle in threads {
        if handle.join().is_err() && result.is_ok() {
            result = Err(EngineError::Thread("a stream thread panicked".into()));
        }
    }
    result
}

/// [`client_config`] plus the consumer-only settings.
fn consumer_config(config: &EngineConfig) -> ClientConfig {
    let mut c = client_config(config);
    for (k, v) in &config.consumer_overrides {
        c.set(k, v);
    }
    c
}

pub(crate) fn client_config(config: &EngineConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap);
    c.set("log_level", "4");
    for (k, v) in &config.client_overrides {
        c.set(k, v);
    }
    c
}

/// Fails with [`EngineError::ChangelogLost`] when a changelog among `missing` belongs
/// to a store whose processor's inputs have offsets committed by the app's group
/// (one offset fetch for all of them, none when no changelog is missing).
fn refuse_lost_changelogs(
    topology: &Topology,
    config: &EngineConfig,
    missing: &[&crate::topology::compile::Topic],
    existing: &BTreeMap<String, i32>,
) -> Result<(), EngineError> {
    let lost: Vec<(&String, &String, &ProcessorNode)> = missing
        .iter()
        .filter_map(|topic| {
            let crate::topology::compile::TopicRole::Changelog { store } = &topic.role else {
                return None;
            };
            let owner = topology.stores.get(store)?.owner.as_ref()?;
            Some((store, &topic.name, topology.processors.get(owner)?))
        })
        .collect();
    let inputs: BTreeSet<&String> = lost.iter().flat_map(|(_, _, node)| &node.inputs).collect();
    let mut partitions = TopicPartitionList::new();
    for input in inputs {
        for partition in 0..existing.get(input).copied().unwrap_or(0) {
            partitions.add_partition(input, partition);
        }
    }
    let committed = group_offsets(config, &topology.app, partitions)?;
    for (store, changelog, node) in lost {
        let offsets: Vec<String> = committed
            .iter()
            .filter(|((topic, _), _)| node.inputs.contains(topic))
            .map(|((topic, partition), offset)| format!("{topic}/{partition} at {offset}"))
            .collect();
        if !offsets.is_empty() {
            return Err(EngineError::ChangelogLost(Box::new(LostChangelog {
                store: store.clone(),
                changelog: changelog.clone(),
                group: topology.app.clone(),
                processor: node.name.clone(),
                offsets: offsets.join(", "),
            })));
        }
    }
    Ok(())
}

/// The offsets `group` has committed on `partitions` (those it has none for are
/// left out), read without joining the group.
pub(crate) fn group_offsets(
    config: &EngineConfig,
    group: &str,
    partitions: TopicPartitionList,
) -> Result<BTreeMap<(String, i32), i64>, EngineError> {
    if partitions.count() == 0 {
        return Ok(BTreeMap::new());
    }
    let consumer: BaseConsumer = client_config(config)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka(
            "creating a consumer to read committed offsets",
            CHECK_BROKER,
        ))?;
    // A group's first offset fetch on a new cluster may find its coordinator not
    // there yet (__consumer_offsets being created or loaded): retried for 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed = loop {
        match consumer.committed_offsets(partitions.clone(), Duration::from_secs(30)) {
            Err(error)
                if Instant::now() < deadline
                    && matches!(
                        error.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::CoordinatorNotAvailable
                                | RDKafkaErrorCode::CoordinatorLoadInProgress
                                | RDKafkaErrorCode::NotCoordinator
                        )
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            result => {
                break result.map_err(kafka(
                    format!("reading the committed offsets of group {group}"),
                    CHECK_BROKER,
                ))?;
            }
        }
    };
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect())
}

/// Creates the topics topology.yaml declares (and the changelog and dead-letter
/// topics it implies) that are missing; refuses one whose partition count differs,
/// and a missing changelog whose store would start empty under a consumer group
/// that has moved on ([`EngineError::ChangelogLost`]).
pub async fn ensure_topics(topology: &Topology, config: &EngineConfig) -> Result<(), EngineError> {
    create_missing_topics(topology, config, true).await
}

/// [`ensure_topics`]; with `guard_changelogs` false a lost changelog is created
/// like any missing topic (`topology apply` does so once its plan, which names that
/// store, has been accepted).
pub(crate) async fn create_missing_topics(
    topology: &Topology,
    config: &EngineConfig,
    guard_changelogs: bool,
) -> Result<(), EngineError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(kafka("creating the admin client", CHECK_BROKER))?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(kafka("reading cluster metadata", CHECK_BROKER))?;
    let existing: BTreeMap<String, i32> = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect();
    let mut missing = Vec::new();
    for topic in topology.topics.values() {
        match existing.get(&topic.name) {
            Some(&actual) if actual != topic.partitions as i32 => {
                return Err(EngineError::PartitionMismatch {
                    topic: topic.name.clone(),
                    actual,
                    expected: topic.partitions,
                });
            }
            Some(_) => {}
            None => missing.push(topic),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if guard_changelogs {
        refuse_lost_changelogs(topology, config, &missing, &existing)?;
    }
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            NewTopic::new(
                &t.name,
                t.partitions as i32,
                TopicReplication::Fixed(i32::from(topology.replication_factor)),
            )
            .set(
                "cleanup.policy",
                match t.cleanup {
                    Cleanup::Compact => "compact",
                    Cleanup::Delete => "delete",
                },
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(kafka("creating topics", CHECK_BROKER))?;
    for r in results {
        if let Err((topic, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            return Err(EngineError::Kafka {
                context: format!("creating topic {topic}"),
                error: KafkaError::AdminOp(code),
                hint: "",
            });
        }
    }
    // A created topic serves once each partition has a leader; wait for that so
    // the first restore or produce does not meet "not leader".
    let names: BTreeSet<&str> = missing.iter().map(|t| t.name.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| names.contains(t.name()))
                    .filter(|t| {
                        !t.partitions().is_empty() && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                    .count()
                    == names.len()
            })
            .unwrap_or(false);
        if ready || Instant::now() > deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What every stream thread shares.
struct Shared {
    topology: Arc<Topology>,
    catalog: Catalog,
    serde: Arc<TopicSerde>,
    registry: Arc<RegistryClient>,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
}

/// Rebalance events, recorded by the consumer's callbacks (which run inside `poll`)
/// and handled by the stream thread right after `poll` returns.
#[derive(Default)]
struct RebalanceLog {
    events: Mutex<Vec<RebalanceEvent>>,
    /// Consumer lag by input (topic, partition), from the latest statistics.
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

enum RebalanceEvent {
    Revoked,
    Assigned(Vec<(String, i32)>),
}

impl ClientContext for RebalanceLog {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag per
    /// partition, read from what the fetcher already knows, so measuring lag never
    /// sends a request (a watermark query waits behind the long-polling fetch on the
    /// broker connection).
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lags = BTreeMap::new();
        for (topic, t) in &statistics.topics {
            for p in t.partitions.values() {
                if p.partition >= 0 && p.app_offset >= 0 && p.hi_offset >= 0 {
                    lags.insert(
                        (topic.clone(), p.partition),
                        (p.hi_offset - p.app_offset).max(0),
                    );
                }
            }
        }
        if let Ok(mut lag) = self.lag.lock() {
            *lag = lags;
        }
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(_) = rebalance
            && let Ok(mut events) = self.events.lock()
        {
            events.push(RebalanceEvent::Revoked);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance
            && let Ok(mut events) = self.events.lock()
        {
            let assigned = list
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            events.push(RebalanceEvent::Assigned(assigned));
        }
    }
}

/// Delivery failures seen by the producer, checked at commit.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, message)) = result
            && let Ok(mut failed) = self.failed.lock()
            && failed.is_none()
        {
            *failed = Some(format!("{}: {error}", message.topic()));
        }
    }
}

struct StreamThread {
    shared: Shared,
    guarantee: Guarantee,
    config: EngineConfig,
    nodes: Vec<Arc<ProcessorNode>>,
    consumer: BaseConsumer<RebalanceLog>,
    producer: ThreadedProducer<Deliveries>,
    /// Tasks by (processor, partition).
    tasks: BTreeMap<(String, i32), Task>,
    /// Input partitions assigned to this thread.
    assigned: BTreeSet<(String, i32)>,
    /// Next offset to commit, by input (topic, partition).
    offsets: BTreeMap<(String, i32), i64>,
    /// at_least_once: the next offset each task's state reflects, by
    /// (processor, partition), per input topic; restored from the marks in its
    /// changelogs, written there at every commit.
    applied: BTreeMap<(String, i32), BTreeMap<String, i64>>,
    /// at_least_once: the tasks whose `applied` moved since the last commit (only
    /// their changelogs need a new mark).
    marks_due: BTreeSet<(String, i32)>,
    in_txn: bool,
    last_commit: Instant,
    commit_interval: Duration,
    globals: GlobalTables,
    global_consumer: Option<BaseConsumer>,
    stats: Stats,
    /// When the producer was last fenced: twice within a minute means another live
    /// instance uses our transactional id, and taking it back would only fence it.
    last_fenced: Option<Instant>,
    /// Jobs deferred by a task's `process`, by (processor, partition): the task takes
    /// nothing else until its job ends and its continuation has run.
    jobs: BTreeMap<(String, i32), Job>,
    /// Inputs that arrived while a task reading them had a job running, by input
    /// (topic, partition), in offset order.
    held: BTreeMap<(String, i32), VecDeque<OwnedInput>>,
    /// Input partitions paused because too many of their records are held.
    paused: BTreeSet<(String, i32)>,
    /// Records read but not processed yet, by input (topic, partition): a task
    /// reading several co-partitioned topics takes the oldest next record among
    /// them (Kafka Streams' timestamp synchronization), whatever order the fetches
    /// came back in.
    ready: BTreeMap<(String, i32), VecDeque<OwnedInput>>,
    /// Records in `ready`.
    ready_len: usize,
    /// Per input topic, every input topic a task reading it also reads (itself
    /// included), sorted.
    siblings: BTreeMap<String, Vec<String>>,
    /// When partitions were last assigned, and the input partitions that have
    /// delivered a record since: right after an assignment an empty partition may
    /// only not have been fetched yet (its lag is unknown), so its task waits for it
    /// a little even when the consumer has nothing else to give.
    assigned_at: Option<Instant>,
    seen: BTreeSet<(String, i32)>,
}

/// How long after an assignment a task waits for a sibling partition that has not
/// delivered anything yet (Kafka Streams waits while such a partition's lag is
/// unknown).
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(2);

/// Records read ahead into `ready` before a task waiting for a sibling partition's
/// data takes what it has anyway.
const READY_MAX: usize = 20_000;

/// Records taken from the consumer per pass of the loop.
const POLL_BATCH: usize = 500;

/// Held records of one input partition past which the consumer pauses it.
const HOLD_PAUSE: usize = 500;

/// A deferred job in flight and the input whose `process` call deferred it.
struct Job {
    input: OwnedInput,
    handle: tokio::task::JoinHandle<Continuation>,
}

impl Drop for Job {
    fn drop(&mut self) {
        // A dropped job (rebalance, abort, shutdown) is not awaited: its record will be
        // processed again, so the job will be made again.
        self.handle.abort();
    }
}

/// What a stream thread counts between commits, published to the shared registry
/// at each commit so the per-record path takes no lock.
#[derive(Default)]
struct Stats {
    records_in: BTreeMap<String, u64>,
    records_out: BTreeMap<String, u64>,
    dead_letters: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
}

impl StreamThread {
    fn new(
        shared: Shared,
        config: EngineConfig,
        guarantee: Guarantee,
        nodes: Vec<Arc<ProcessorNode>>,
    ) -> Result<Self, EngineError> {
        let app = shared.topology.app.clone();
        let inputs: BTreeSet<&str> = nodes
            .iter()
            .flat_map(|n| n.inputs.iter().map(String::as_str))
            .collect();
        let mut consumer_settings = consumer_config(&config);
        if config.static_membership {
            consumer_settings.set(
                "group.instance.id",
                format!("{app}-{}-{guarantee}", config.instance_id),
            );
        }
        let consumer: BaseConsumer<RebalanceLog> = consumer_settings
            .set("group.id", &app)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "5000")
            .create_with_context(RebalanceLog::default())
            .map_err(kafka("creating the consumer", CHECK_BROKER))?;
        let topics: Vec<&str> = inputs.into_iter().collect();
        consumer
            .subscribe(&topics)
            .map_err(kafka("subscribing", CHECK_BROKER))?;
        let producer = make_producer(&config, &app, guarantee)?;
        let commit_interval = nodes
            .iter()
            .map(|n| n.commit_interval)
            .min()
            .unwrap_or(Duration::from_millis(100));
        let mut siblings: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in &nodes {
            for topic in &node.inputs {
                let entry = siblings.entry(topic.clone()).or_default();
                entry.extend(node.inputs.iter().cloned());
                entry.sort();
                entry.dedup();
            }
        }
        let global_topics: BTreeSet<String> = nodes
            .iter()
            .flat_map(|n| n.global_tables.iter().cloned())
            .collect();
        let mut thread = StreamThread {
            shared,
            guarantee,
            config,
            nodes,
            consumer,
            producer,
            tasks: BTreeMap::new(),
            assigned: BTreeSet::new(),
            offsets: BTreeMap::new(),
            applied: BTreeMap::new(),
            marks_due: BTreeSet::new(),
            in_txn: false,
            last_commit: Instant::now(),
            commit_interval,
            globals: GlobalTables::default(),
            global_consumer: None,
            stats: Stats::default(),
            last_fenced: None,
            jobs: BTreeMap::new(),
            held: BTreeMap::new(),
            paused: BTreeSet::new(),
            ready: BTreeMap::new(),
            ready_len: 0,
            siblings,
            assigned_at: None,
            seen: BTreeSet::new(),
        };
        if !global_topics.is_empty() {
            thread.start_globals(&global_topics)?;
        }
        Ok(thread)
    }

    fn run(&mut self) -> Result<(), EngineError> {
        while !self.shared.stop.load(Ordering::SeqCst) {
            // With jobs running, poll briefly so a finished job's task goes on soon.
            let wait = if self.jobs.is_empty() && self.ready_len == 0 {
                50
            } else {
                5
            };
            let mut drained = false;
            for n in 0..POLL_BATCH {
                let timeout = if n == 0 {
                    Duration::from_millis(wait)
                } else {
                    Duration::ZERO
                };
                let message = match self.consumer.poll(timeout) {
                    None => None,
                    Some(Ok(m)) => Some(Ok(OwnedInput::from(&m))),
                    Some(Err(e)) => Some(Err(e)),
                };
                self.handle_rebalances()?;
                match message {
                    None => {
                        drained = true;
                        break;
                    }
                    Some(Err(e)) => {
                        if e.rdkafka_error_code()
                            .is_some_and(|c| c == RDKafkaErrorCode::Fatal)
                        {
                            return Err(kafka("consuming", CHECK_BROKER)(e));
                        }
                        tracing::warn!(error = %e, "consumer error");
                    }
                    Some(Ok(input)) => {
                        // Only the first seconds after an assignment need to know.
                        if self
                            .assigned_at
                            .is_some_and(|at| at.elapsed() < FIRST_FETCH_WAIT)
                        {
                            self.seen.insert((input.topic.clone(), input.partition));
                        }
                        self.ready_len += 1;
                        self.ready
                            .entry((input.topic.clone(), input.partition))
                            .or_default()
                            .push_back(input);
                    }
                }
                if self.ready_len >= READY_MAX {
                    break;
                }
            }
            self.poll_globals();
            self.process_ready(drained)?;
            self.finish_jobs()?;
            self.fire_wall_clock()?;
            if self.last_commit.elapsed() >= self.commit_interval {
                self.commit()?;
            }
        }
        // A clean stop lets running jobs end (briefly) so their records need no replay.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.jobs.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            self.finish_jobs()?;
        }
        self.commit()?;
        self.drop_jobs();
        let wall = now_ms();
        for task in self.tasks.values_mut() {
            task.close(&self.globals, &self.shared.serde, wall);
        }
        Ok(())
    }

    /// Acts on what the consumer's callbacks recorded during the last poll.
    fn handle_rebalances(&mut self) -> Result<(), EngineError> {
        let events = std::mem::take(
            &mut *self
                .consumer
                .context()
                .events
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for event in events {
            match event {
                RebalanceEvent::Revoked => {
                    // Eager protocol: everything is revoked. Work not yet committed is
                    // dropped (aborted under exactly_once); the next owner of each
                    // partition restarts from the committed offsets and changelogs.
                    tracing::info!("partitions revoked: closing tasks");
                    self.config.metrics.add(
                        "orderflow_rebalances_total",
                        "Rebalances that revoked this instance's partitions.",
                        vec![("app", self.shared.topology.app.clone())],
                        1.0,
                    );
                    self.abandon_open_work()?;
                    self.drop_jobs();
                    self.tasks.clear();
                    self.assigned.clear();
                    self.applied.clear();
                    self.marks_due.clear();
                }
                RebalanceEvent::Assigned(partitions) => {
                    tracing::info!(partitions = partitions.len(), "partitions assigned");
                    self.assigned_at = Some(Instant::now());
                    self.seen.clear();
                    self.assigned.extend(partitions);
                    self.create_tasks()?;
                }
            }
        }
        Ok(())
    }

    /// Creates (restoring its stores) every task of an assigned partition that does
    /// not exist yet, then runs its `init`.
    fn create_tasks(&mut self) -> Result<(), EngineError> {
        let mut todo = Vec::new();
        for (topic, partition) in &self.assigned {
            for node in &self.nodes {
                if node.inputs.iter().any(|t| t == topic)
                    && !self.tasks.contains_key(&(node.name.clone(), *partition))
                    && !todo.iter().any(|(n, p): &(Arc<ProcessorNode>, i32)| {
                        n.name == node.name && p == partition
                    })
                {
                    todo.push((node.clone(), *partition));
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let restored_logs = self.read_changelogs(&todo)?;
        let read = started.elapsed();
        let tasks = todo.len();
        // The batch was read in one pass: each task is charged an equal share.
        let share = read.as_secs_f64() / tasks as f64;
        let mut total = 0;
        for ((node, partition), mut changelog) in todo.into_iter().zip(restored_logs) {
            if self.guarantee == Guarantee::AtLeastOnce {
                let applied = trim_to_marks(&mut changelog);
                self.applied.insert((node.name.clone(), partition), applied);
            } else {
                changelog.retain(|(_, key, _)| !key.starts_with(MARK_KEY));
            }
            let restored = changelog.len();
            let build =
                self.shared
                    .catalog
                    .get(&node.kind)
                    .ok_or_else(|| EngineError::Processor {
                        processor: node.name.clone(),
                        error: ProcessError::Fatal(format!(
                            "unknown processor kind {:?}",
                            node.kind
                        )),
                    })?;
            let instance = build(&node.spec).map_err(|e| EngineError::Processor {
                processor: node.name.clone(),
                error: ProcessError::Fatal(e.to_string()),
            })?;
            let task = Task::restore(
                &self.shared.topology,
                node.clone(),
                instance,
                partition,
                changelog,
            )
            .map_err(|error| EngineError::Processor {
                processor: node.name.clone(),
                error,
            })?;
            let labels = vec![("processor", node.name.clone())];
            let metrics = &self.config.metrics;
            metrics.add(
                "orderflow_restored_records_total",
                "Changelog records read to restore task state.",
                labels.clone(),
                restored as f64,
            );
            metrics.add(
                "orderflow_restore_seconds_total",
                "Time spent restoring task state from changelogs.",
                labels,
                share,
            );
            tracing::debug!(processor = %node.name, partition, records = restored, "task restored");
            total += restored;
            self.tasks.insert((node.name.clone(), partition), task);
            self.call(&node.name, partition, Hook::Init, now_ms(), None)?;
        }
        tracing::info!(
            tasks,
            records = total,
            seconds = read.as_secs_f64(),
            "tasks restored"
        );
        Ok(())
    }

    /// Every record of the changelog partitions of these tasks, up to their end, as
    /// (store, key, value), one list per task in the order of `tasks`. One consumer
    /// reads them all at once: a restore after a rebalance costs about one fetch
    /// round, not one per store.
    fn read_changelogs(
        &self,
        tasks: &[(Arc<ProcessorNode>, i32)],
    ) -> Result<Vec<Vec<RestoredEntry>>, EngineError> {
        let topology = &self.shared.topology;
        // What is left to read: one entry per changelog partition, found by a short
        // scan (a few per task) rather than a map keyed by an owned topic name, so a
        // record costs no allocation to place.
        let mut wanted: Vec<Wanted> = Vec::new();
        let consumer: BaseConsumer = consumer_config(&self.config)
            .set("group.id", format!("{}-restore", topology.app))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "20")
            .create()
            .map_err(kafka("creating the restore consumer", CHECK_BROKER))?;
        let mut tpl = TopicPartitionList::new();
        let mut entries: Vec<Vec<RestoredEntry>> = vec![Vec::new(); tasks.len()];
        for (task, (node, partition)) in tasks.iter().enumerate() {
            for store in &node.stores {
                let Some(topic) = topology.stores.get(store).and_then(|s| s.changelog.clone())
                else {
                    continue;
                };
                let (low, high) = watermarks(&consumer, &topic, *partition).map_err(kafka(
                    format!("reading the end of {topic}[{partition}]"),
                    CHECK_BROKER,
                ))?;
                if high <= low {
                    continue;
                }
                tpl.add_partition_offset(&topic, *partition, Offset::Beginning)
                    .map_err(kafka("assigning the changelog", ""))?;
                wanted.push(Wanted {
                    topic,
                    partition: *partition,
                    task,
                    store: Arc::from(store.as_str()),
                    high,
                });
            }
        }
        if !wanted.is_empty() {
            consumer
                .assign(&tpl)
                .map_err(kafka("assigning changelogs", CHECK_BROKER))?;
        }
        let mut last_check = Instant::now();
        while !wanted.is_empty() {
            let mut idle = true;
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    idle = false;
                    let at = wanted
                        .iter()
                        .position(|w| w.partition == m.partition() && w.topic == m.topic());
                    if let Some(at) = at {
                        let w = &wanted[at];
                        let key = m
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .unwrap_or_default();
                        entries[w.task].push((
                            w.store.clone(),
                            key,
                            m.payload().map(<[u8]>::to_vec),
                        ));
                        if m.offset() + 1 >= w.high {
                            wanted.swap_remove(at);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => tracing::warn!(error = %e, "restore consumer error"),
                None => {}
            }
            // Past aborted records and transaction markers there may be nothing more
            // to deliver (and an end-of-partition event does not name its topic):
            // the positions say which partitions are read to their end. Asking is a
            // round trip to librdkafka's main thread, so only when the consumer has
            // nothing to hand over, or every 50 ms.
            if idle || last_check.elapsed() >= Duration::from_millis(50) {
                last_check = Instant::now();
                if let Ok(positions) = consumer.position() {
                    for e in positions.elements() {
                        if let Some(position) = e.offset().to_raw() {
                            wanted.retain(|w| {
                                !(w.partition == e.partition()
                                    && w.topic == e.topic()
                                    && position >= w.high)
                            });
                        }
                    }
                }
            }
        }
        Ok(entries)
    }

    fn start_globals(&mut self, topics: &BTreeSet<String>) -> Result<(), EngineError> {
        let consumer: BaseConsumer = consumer_config(&self.config)
            .set("group.id", format!("{}-global", self.shared.topology.app))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(kafka("creating the global table consumer", CHECK_BROKER))?;
        let mut tpl = TopicPartitionList::new();
        let mut ends = Vec::new();
        for topic in topics {
            let partitions = self
                .shared
                .topology
                .topics
                .get(topic)
                .map_or(1, |t| t.partitions);
            for p in 0..partitions as i32 {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .map_err(kafka("assigning a global table", ""))?;
                let (_, high) = watermarks(&consumer, topic, p).map_err(kafka(
                    format!("reading the end of {topic}[{p}]"),
                    CHECK_BROKER,
                ))?;
                ends.push((topic.clone(), p, high));
            }
        }
        consumer
            .assign(&tpl)
            .map_err(kafka("assigning global tables", CHECK_BROKER))?;
        self.global_consumer = Some(consumer);
        // Bootstrap: read every partition to its end before processing starts.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            self.poll_globals();
            let Some(consumer) = &self.global_consumer else {
                break;
            };
            let position = consumer.position().ok();
            let caught_up = ends.iter().all(|(t, p, high)| {
                *high == 0
                    || position
                        .as_ref()
                        .and_then(|pos| pos.find_partition(t, *p))
                        .and_then(|e| e.offset().to_raw())
                        .is_some_and(|o| o >= *high)
            });
            if caught_up || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Applies whatever the global tables' topics have new.
    fn poll_globals(&mut self) {
        let Some(consumer) = &self.global_consumer else {
            return;
        };
        while let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let applied = self.globals.apply(
                &self.shared.serde,
                m.topic(),
                &key,
                m.payload(),
                (m.partition(), m.offset()),
            );
            if let Err(e) = applied {
                tracing::warn!(error = %e, "global table skipped a record");
            }
        }
    }

    fn begin(&mut self) -> Result<(), EngineError> {
        if self.guarantee == Guarantee::ExactlyOnce && !self.in_txn {
            self.producer
                .begin_transaction()
                .map_err(kafka("beginning a transaction", ""))?;
        }
        self.in_txn = true;
        Ok(())
    }

    /// Processes what was read, each task taking the record with the lowest
    /// timestamp among the next records of its input partitions. A task waits while
    /// one of its input partitions has nothing read yet, unless the consumer had
    /// nothing more to give (`drained`: no data is on its way locally) or the
    /// read-ahead is full; so a backlog of one topic is not run ahead of the other
    /// (a payment result before its order) just because its fetch came back first.
    fn process_ready(&mut self, drained: bool) -> Result<(), EngineError> {
        let mut full = self.ready_len >= READY_MAX;
        let settled = self
            .assigned_at
            .is_none_or(|at| at.elapsed() >= FIRST_FETCH_WAIT);
        let groups: Vec<(Vec<String>, i32)> = {
            let mut groups: Vec<(Vec<String>, i32)> = self
                .ready
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|((topic, partition), _)| {
                    let topics = self
                        .siblings
                        .get(topic)
                        .cloned()
                        .unwrap_or_else(|| vec![topic.clone()]);
                    (topics, *partition)
                })
                .collect();
            groups.sort();
            groups.dedup();
            groups
        };
        // At most a poll's worth per pass, so rebalances and commits are served
        // between batches as promptly as before the read-ahead; one record per
        // group per round, so no partition waits behind another's backlog.
        let mut budget = POLL_BATCH;
        while budget > 0 {
            let mut progressed = false;
            for (topics, partition) in &groups {
                let Some(key) = self.next_ready(topics, *partition, full, drained, settled) else {
                    continue;
                };
                let Some(input) = self.ready.get_mut(&key).and_then(VecDeque::pop_front) else {
                    continue;
                };
                self.ready_len -= 1;
                if self.ready.get(&key).is_some_and(VecDeque::is_empty) {
                    self.ready.remove(&key);
                }
                self.process_input(input)?;
                progressed = true;
                budget -= 1;
                if self.ready_len < READY_MAX / 2 {
                    full = false;
                }
                if budget == 0 {
                    break;
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(())
    }

    /// The input partition of the group (`topics` at `partition`) whose next read
    /// record is the oldest; `None` when nothing is read, or when one of them has
    /// nothing read and the group must wait for it: unless the read-ahead is `full`,
    /// or the consumer `drained` and that partition is not just unfetched (it has
    /// delivered since the assignment, or the assignment has `settled`).
    fn next_ready(
        &self,
        topics: &[String],
        partition: i32,
        full: bool,
        drained: bool,
        settled: bool,
    ) -> Option<(String, i32)> {
        let mut oldest: Option<(i64, &String)> = None;
        let mut waiting = false;
        for topic in topics {
            match self
                .ready
                .get(&(topic.clone(), partition))
                .and_then(VecDeque::front)
            {
                Some(head) => {
                    if oldest.is_none_or(|(ts, _)| head.timestamp < ts) {
                        oldest = Some((head.timestamp, topic));
                    }
                }
                None => {
                    let known = settled || self.seen.contains(&(topic.clone(), partition));
                    if !(full || (drained && known)) {
                        waiting = true;
                    }
                }
            }
        }
        let (_, topic) = oldest?;
        if waiting {
            return None;
        }
        Some((topic.clone(), partition))
    }

    /// Processes a consumed record, or holds it while a task reading it has a job
    /// running (records of one partition are processed in order).
    fn process_input(&mut self, input: OwnedInput) -> Result<(), EngineError> {
        let tp = (input.topic.clone(), input.partition);
        if self.held.get(&tp).is_some_and(|q| !q.is_empty()) || self.is_blocked(&tp) {
            let queue = self.held.entry(tp.clone()).or_default();
            queue.push_back(input);
            if queue.len() >= HOLD_PAUSE && !self.paused.contains(&tp) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&tp.0, tp.1);
                self.consumer
                    .pause(&tpl)
                    .map_err(kafka("pausing a partition", CHECK_BROKER))?;
                self.paused.insert(tp);
            }
            return Ok(());
        }
        self.process_now(input)
    }

    /// Whether a task reading this input partition has a job running.
    fn is_blocked(&self, (topic, partition): &(String, i32)) -> bool {
        !self.jobs.is_empty()
            && self.nodes.iter().any(|n| {
                n.inputs.contains(topic) && self.jobs.contains_key(&(n.name.clone(), *partition))
            })
    }

    fn process_now(&mut self, input: OwnedInput) -> Result<(), EngineError> {
        let readers: Vec<Arc<ProcessorNode>> = self
            .nodes
            .iter()
            .filter(|n| n.inputs.contains(&input.topic))
            .cloned()
            .collect();
        if readers
            .iter()
            .any(|n| !self.tasks.contains_key(&(n.name.clone(), input.partition)))
        {
            self.assigned.insert((input.topic.clone(), input.partition));
            self.create_tasks()?;
        }
        self.begin()?;
        let value = match &input.value {
            None => Ok(Value::Null),
            Some(bytes) => self.shared.runtime.block_on(self.shared.serde.decode_with(
                &self.shared.registry,
                &input.topic,
                input.partition,
                input.offset,
                bytes,
            )),
        };
        let mut deferred = false;
        match value {
            Err(e) if e.kind.is_retriable() => {
                return Err(EngineError::Kafka {
                    context: e.to_string(),
                    error: KafkaError::Canceled,
                    hint: " (the schema registry is unavailable; restart when it is back)",
                });
            }
            Err(e) => {
                for node in &readers {
                    self.dead_letter(node, &input, e.kind.code(), &e.to_string())?;
                }
            }
            Ok(value) => {
                let record = Record {
                    topic: input.topic.clone(),
                    partition: input.partition,
                    offset: input.offset,
                    timestamp: input.timestamp,
                    key: input.key.clone(),
                    value,
                    headers: input.headers.clone(),
                };
                for node in &readers {
                    let key = (node.name.clone(), input.partition);
                    if self.guarantee == Guarantee::AtLeastOnce
                        && self
                            .applied
                            .get(&key)
                            .and_then(|marks| marks.get(&input.topic))
                            .is_some_and(|next| input.offset < *next)
                    {
                        // A replay of a record whose effects the restored state
                        // already holds (and whose outputs went out before it).
                        continue;
                    }
                    if let Some(task) = self.tasks.get_mut(&key) {
                        task.observe(input.timestamp);
                    }
                    *self.stats.records_in.entry(node.name.clone()).or_default() += 1;
                    let started = Instant::now();
                    let result = self.call(
                        &node.name,
                        input.partition,
                        Hook::Process(&record),
                        input.timestamp,
                        Some(&input),
                    );
                    self.stats
                        .latency
                        .entry(node.name.clone())
                        .or_default()
                        .observe(started.elapsed());
                    match result {
                        Ok(()) => {
                            let job = self.tasks.get_mut(&key).and_then(Task::take_deferred);
                            if let Some(job) = job {
                                self.start_job(key, input.clone(), job);
                                deferred = true;
                                continue;
                            }
                        }
                        Err(EngineError::Processor { error, .. })
                            if !matches!(error, ProcessError::Fatal(_)) =>
                        {
                            self.dead_letter(node, &input, error.kind(), &error.to_string())?;
                        }
                        Err(e) => return Err(e),
                    }
                    self.mark_applied(&key, &input);
                    self.fire_stream_time(&node.name, input.partition)?;
                }
            }
        }
        if !deferred {
            self.offsets
                .insert((input.topic.clone(), input.partition), input.offset + 1);
        }
        Ok(())
    }

    /// at_least_once: the task's state now holds this input's effects.
    fn mark_applied(&mut self, key: &(String, i32), input: &OwnedInput) {
        if self.guarantee == Guarantee::AtLeastOnce {
            self.applied
                .entry(key.clone())
                .or_default()
                .insert(input.topic.clone(), input.offset + 1);
            if !self.marks_due.contains(key) {
                self.marks_due.insert(key.clone());
            }
        }
    }

    /// at_least_once: the task wrote to its changelogs, so they need a new mark at
    /// the next commit (even when no input moved, as after a timer).
    fn mark_due(&mut self, processor: &str, partition: i32) {
        if self.guarantee == Guarantee::AtLeastOnce {
            self.marks_due.insert((processor.to_string(), partition));
        }
    }

    fn start_job(&mut self, key: (String, i32), input: OwnedInput, job: crate::context::Deferred) {
        let handle = self.shared.runtime.spawn(job);
        self.jobs.insert(key, Job { input, handle });
    }

    /// Runs the continuation of every job that has ended; a record whose every job
    /// is done counts as processed; then processes what was held behind them.
    fn finish_jobs(&mut self) -> Result<(), EngineError> {
        let done: Vec<(String, i32)> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.handle.is_finished())
            .map(|(key, _)| key.clone())
            .collect();
        if done.is_empty() {
            return Ok(());
        }
        for key in done {
            let Some(mut job) = self.jobs.remove(&key) else {
                continue;
            };
            let Some(node) = self.nodes.iter().find(|n| n.name == key.0).cloned() else {
                continue;
            };
            let input = job.input.clone();
            let joined = self.shared.runtime.block_on(&mut job.handle);
            let result = match joined {
                Ok(continuation) => self.resume(&key, continuation, &input),
                Err(e) => Err(EngineError::Processor {
                    processor: key.0.clone(),
                    error: ProcessError::Invalid(format!("the deferred job failed: {e}")),
                }),
            };
            match result {
                Ok(()) => {
                    let again = self.tasks.get_mut(&key).and_then(Task::take_deferred);
                    if let Some(again) = again {
                        self.start_job(key, input, again);
                        continue;
                    }
                }
                Err(EngineError::Processor { error, .. })
                    if !matches!(error, ProcessError::Fatal(_)) =>
                {
                    self.dead_letter(&node, &input, error.kind(), &error.to_string())?;
                }
                Err(e) => return Err(e),
            }
            self.mark_applied(&key, &input);
            self.fire_stream_time(&key.0, key.1)?;
            let still_running = self.jobs.values().any(|j| {
                j.input.topic == input.topic
                    && j.input.partition == input.partition
                    && j.input.offset == input.offset
            });
            if !still_running {
                self.offsets
                    .insert((input.topic.clone(), input.partition), input.offset + 1);
            }
        }
        self.release_held()
    }

    /// Processes held records whose tasks are free again, resuming paused partitions.
    fn release_held(&mut self) -> Result<(), EngineError> {
        let partitions: Vec<(String, i32)> = self.held.keys().cloned().collect();
        for tp in partitions {
            while !self.is_blocked(&tp) {
                let Some(input) = self.held.get_mut(&tp).and_then(VecDeque::pop_front) else {
                    break;
                };
                self.process_now(input)?;
            }
            let left = self.held.get(&tp).map_or(0, VecDeque::len);
            if left == 0 {
                self.held.remove(&tp);
            }
            if left < HOLD_PAUSE / 2 && self.paused.remove(&tp) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&tp.0, tp.1);
                self.consumer
                    .resume(&tpl)
                    .map_err(kafka("resuming a partition", CHECK_BROKER))?;
            }
        }
        Ok(())
    }

    /// Drops running jobs, held and read-ahead records (they will be read again) and
    /// resumes paused partitions.
    fn drop_jobs(&mut self) {
        self.jobs.clear();
        self.held.clear();
        self.ready.clear();
        self.ready_len = 0;
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in std::mem::take(&mut self.paused) {
            tpl.add_partition(&topic, partition);
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.resume(&tpl)
        {
            tracing::debug!(error = %e, "resuming partitions after dropping jobs");
        }
    }

    /// Runs a hook of a task; sends its outputs and changelog records.
    fn call(
        &mut self,
        processor: &str,
        partition: i32,
        hook: Hook<'_>,
        timestamp: i64,
        input: Option<&OwnedInput>,
    ) -> Result<(), EngineError> {
        let Some(task) = self.tasks.get_mut(&(processor.to_string(), partition)) else {
            return Ok(());
        };
        let outputs = task
            .run(hook, &self.globals, &self.shared.serde, now_ms(), timestamp)
            .map_err(|error| EngineError::Processor {
                processor: processor.to_string(),
                error,
            })?;
        self.ship(processor, partition, outputs, timestamp, input)
    }

    /// Runs the continuation of a task's deferred job; sends what it produced.
    fn resume(
        &mut self,
        (processor, partition): &(String, i32),
        continuation: Continuation,
        input: &OwnedInput,
    ) -> Result<(), EngineError> {
        let Some(task) = self.tasks.get_mut(&(processor.clone(), *partition)) else {
            return Ok(());
        };
        let outputs = task
            .resume(
                continuation,
                &self.globals,
                &self.shared.serde,
                now_ms(),
                input.timestamp,
            )
            .map_err(|error| EngineError::Processor {
                processor: processor.clone(),
                error,
            })?;
        self.ship(processor, *partition, outputs, input.timestamp, Some(input))
    }

    /// Sends a successful call's outputs and its task's changelog records.
    fn ship(
        &mut self,
        processor: &str,
        partition: i32,
        outputs: Vec<Output>,
        timestamp: i64,
        input: Option<&OwnedInput>,
    ) -> Result<(), EngineError> {
        let Some(task) = self.tasks.get_mut(&(processor.to_string(), partition)) else {
            return Ok(());
        };
        let changelog = task.take_changelog();
        if outputs.is_empty() && changelog.is_empty() {
            return Ok(());
        }
        if !changelog.is_empty() {
            self.mark_due(processor, partition);
        }
        self.begin()?;
        if !outputs.is_empty() {
            *self
                .stats
                .records_out
                .entry(processor.to_string())
                .or_default() += outputs.len() as u64;
        }
        for (n, out) in outputs.into_iter().enumerate() {
            let id = input.map(|i| format!("{}/{}/{}/{n}", i.topic, i.partition, i.offset));
            self.send_output(out, id)?;
        }
        for record in changelog {
            let base = BaseRecord::to(&record.topic)
                .key(&record.key)
                .partition(partition)
                .timestamp(timestamp);
            let base = match &record.value {
                Some(v) => base.payload(v),
                None => base,
            };
            send(&self.producer, base)?;
        }
        Ok(())
    }

    fn send_output(&self, out: Output, id: Option<String>) -> Result<(), EngineError> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &out.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        if self.guarantee == Guarantee::AtLeastOnce
            && let Some(id) = &id
        {
            headers = headers.insert(Header {
                key: ID_HEADER,
                value: Some(id),
            });
        }
        let base = BaseRecord::to(&out.topic)
            .key(&out.key)
            .timestamp(out.timestamp)
            .headers(headers);
        let base = match &out.value {
            Some(v) => base.payload(v),
            None => base,
        };
        send(&self.producer, base)
    }

    fn dead_letter(
        &mut self,
        node: &ProcessorNode,
        input: &OwnedInput,
        kind: &str,
        message: &str,
    ) -> Result<(), EngineError> {
        tracing::warn!(processor = %node.name, topic = %input.topic, partition = input.partition, offset = input.offset, kind, error = message, "dead letter");
        self.begin()?;
        *self
            .stats
            .dead_letters
            .entry(node.name.clone())
            .or_default() += 1;
        let headers_list = DeadLetter {
            processor: &node.name,
            topic: &input.topic,
            partition: input.partition,
            offset: input.offset,
            kind,
            message,
        }
        .headers(&input.headers);
        let mut headers = OwnedHeaders::new();
        for (k, v) in &headers_list {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let base = BaseRecord::to(&node.dead_letter)
            .key(&input.key)
            .timestamp(input.timestamp)
            .headers(headers);
        let base = match &input.value {
            Some(v) => base.payload(v),
            None => base,
        };
        send(&self.producer, base)
    }

    fn fire_stream_time(&mut self, processor: &str, partition: i32) -> Result<(), EngineError> {
        if self.jobs.contains_key(&(processor.to_string(), partition)) {
            return Ok(());
        }
        loop {
            let Some(task) = self.tasks.get_mut(&(processor.to_string(), partition)) else {
                return Ok(());
            };
            let now = task.stream_time();
            let Some(timer) = task.pop_due(TimeDomain::StreamTime, now) else {
                return Ok(());
            };
            self.punctuate(processor, partition, &timer)?;
        }
    }

    fn fire_wall_clock(&mut self) -> Result<(), EngineError> {
        let now = now_ms();
        let due: Vec<(String, i32)> = self
            .tasks
            .iter()
            .filter(|(key, _)| !self.jobs.contains_key(*key))
            .filter(|(_, t)| t.next_due(TimeDomain::WallClock).is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for (processor, partition) in due {
            while let Some(timer) = self
                .tasks
                .get_mut(&(processor.clone(), partition))
                .and_then(|t| t.pop_due(TimeDomain::WallClock, now))
            {
                self.punctuate(&processor, partition, &timer)?;
            }
        }
        Ok(())
    }

    fn punctuate(
        &mut self,
        processor: &str,
        partition: i32,
        timer: &crate::timer::Timer,
    ) -> Result<(), EngineError> {
        self.begin()?;
        // Popping the timer changed the timer store: that too goes to the changelog.
        match self.call(
            processor,
            partition,
            Hook::Punctuate(timer),
            timer.due,
            None,
        ) {
            Err(EngineError::Processor { error, .. })
                if !matches!(error, ProcessError::Fatal(_)) =>
            {
                tracing::warn!(processor, timer = %timer.name, key = %timer.key, error = %error, "timer handler failed");
                self.flush_changelog(processor, partition)
            }
            Err(e) => Err(e),
            Ok(()) => self.flush_changelog(processor, partition),
        }
    }

    fn flush_changelog(&mut self, processor: &str, partition: i32) -> Result<(), EngineError> {
        let Some(task) = self.tasks.get_mut(&(processor.to_string(), partition)) else {
            return Ok(());
        };
        let changelog = task.take_changelog();
        if !changelog.is_empty() {
            self.mark_due(processor, partition);
        }
        for record in changelog {
            let base = BaseRecord::to(&record.topic)
                .key(&record.key)
                .partition(partition);
            let base = match &record.value {
                Some(v) => base.payload(v),
                None => base,
            };
            send(&self.producer, base)?;
        }
        Ok(())
    }

    /// Commits what has been processed: under exactly_once the offsets join the
    /// transaction, which commits; under at_least_once every output is acknowledged
    /// first, then the offsets are committed.
    fn commit(&mut self) -> Result<(), EngineError> {
        self.last_commit = Instant::now();
        self.publish_stats();
        if !self.in_txn {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.commit_open_work();
        // The next period starts when this commit ends: a commit slower than the
        // interval must not leave the next transaction a single record.
        self.last_commit = Instant::now();
        self.config.metrics.observe(
            "orderflow_commit_latency_seconds",
            "Time to commit (transaction, or acknowledgements and offsets).",
            vec![("guarantee", self.guarantee.to_string())],
            started.elapsed(),
        );
        result
    }

    /// Publishes what was counted since the last commit, store sizes and, every few
    /// seconds, consumer lag.
    fn publish_stats(&mut self) {
        let metrics = self.config.metrics.clone();
        for (p, n) in std::mem::take(&mut self.stats.records_in) {
            metrics.add(
                "orderflow_records_in_total",
                "Records processed, per processor.",
                vec![("processor", p)],
                n as f64,
            );
        }
        for (p, n) in std::mem::take(&mut self.stats.records_out) {
            metrics.add(
                "orderflow_records_out_total",
                "Records forwarded, per processor.",
                vec![("processor", p)],
                n as f64,
            );
        }
        for (p, n) in std::mem::take(&mut self.stats.dead_letters) {
            metrics.add(
                "orderflow_dead_letters_total",
                "Records sent to the dead-letter topic, per processor.",
                vec![("processor", p)],
                n as f64,
            );
        }
        for (p, h) in &mut self.stats.latency {
            metrics.observe_all(
                "orderflow_process_latency_seconds",
                "Time one record spends in its processor.",
                vec![("processor", p.clone())],
                h,
            );
            h.clear();
        }
        let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
        for task in self.tasks.values() {
            for store in &task.node().stores {
                if let Some(s) = task.store(store) {
                    *sizes.entry(store.clone()).or_default() += s.len();
                }
            }
        }
        for (store, keys) in sizes {
            metrics.set(
                "orderflow_store_keys",
                "Keys held by a store on this instance.",
                vec![("store", store)],
                keys as f64,
            );
        }
        let lags = self
            .consumer
            .context()
            .lag
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        for ((topic, partition), lag) in lags {
            if self.assigned.contains(&(topic.clone(), partition)) {
                metrics.set(
                    "orderflow_consumer_lag",
                    "Records in a partition not yet read by this instance.",
                    vec![("topic", topic), ("partition", partition.to_string())],
                    lag as f64,
                );
            }
        }
    }

    fn commit_open_work(&mut self) -> Result<(), EngineError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.offsets {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(kafka("listing offsets", ""))?;
        }
        match self.guarantee {
            Guarantee::ExactlyOnce => {
                let metadata = self.consumer.group_metadata();
                let result = match (&metadata, tpl.count()) {
                    (_, 0) => Ok(()),
                    (Some(metadata), _) => self.producer.send_offsets_to_transaction(
                        &tpl,
                        metadata,
                        Duration::from_secs(30),
                    ),
                    (None, _) => {
                        return Err(EngineError::Thread(
                            "the consumer has no group metadata to commit offsets with".into(),
                        ));
                    }
                }
                .and_then(|()| {
                    // rust-rdkafka's commit_transaction flushes first, and that flush
                    // sleeps a whole 100 ms whenever a message is still unacknowledged
                    // (it polls the delivery queue, which the threaded producer's own
                    // poller empties, until its deadline): wait for the
                    // acknowledgements here, so it finds nothing to flush.
                    wait_for_deliveries(&self.producer, Duration::from_secs(60))
                        .map_err(|_| KafkaError::Flush(RDKafkaErrorCode::RequestTimedOut))?;
                    self.producer.commit_transaction(Duration::from_secs(60))
                });
                if let Err(e) = result {
                    if is_fenced(&e)
                        && self
                            .last_fenced
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                    {
                        self.last_fenced = Some(Instant::now());
                        // Kafka Streams' TaskMigrated: our work of this transaction is
                        // void; a new producer (fencing in turn whatever fenced us if
                        // it is a zombie of ours), fresh tasks from the changelogs, and
                        // back to the committed offsets.
                        tracing::warn!(error = %e, "producer fenced; rebuilding tasks from their changelogs");
                        self.config.metrics.add(
                            "orderflow_transaction_aborts_total",
                            "Transactions aborted (rebalance, abortable error).",
                            vec![("app", self.shared.topology.app.clone())],
                            1.0,
                        );
                        self.producer =
                            make_producer(&self.config, &self.shared.topology.app, self.guarantee)?;
                        self.in_txn = false;
                        self.offsets.clear();
                        self.rewind()?;
                        return Ok(());
                    }
                    if is_fenced(&e) {
                        return Err(kafka(
                            "committing the transaction",
                            " (fenced twice in a minute: another running instance uses the same transactional id; give each instance its own ORDERFLOW_INSTANCE_ID)",
                        )(e));
                    }
                    let abortable =
                        matches!(&e, KafkaError::Transaction(t) if t.txn_requires_abort());
                    if !abortable {
                        return Err(kafka(
                            "committing the transaction",
                            " (the producer was fenced or the broker is gone: another instance may own this work now; restart this one)",
                        )(e));
                    }
                    tracing::warn!(error = %e, "transaction aborted; rewinding to the last commit");
                    self.abandon_open_work()?;
                    self.rewind()?;
                    return Ok(());
                }
            }
            Guarantee::AtLeastOnce => {
                wait_for_deliveries(&self.producer, Duration::from_secs(60)).map_err(
                    |pending| EngineError::Kafka {
                        context: format!("{pending} outputs were not acknowledged within 60 s"),
                        error: KafkaError::Flush(RDKafkaErrorCode::RequestTimedOut),
                        hint: CHECK_BROKER,
                    },
                )?;
                if let Some(failed) = self
                    .producer
                    .context()
                    .failed
                    .lock()
                    .ok()
                    .and_then(|mut f| f.take())
                {
                    return Err(EngineError::Kafka {
                        context: format!("an output was not acknowledged ({failed})"),
                        error: KafkaError::Canceled,
                        hint: " (restart the instance: it resumes from the last committed offsets)",
                    });
                }
                self.write_marks()?;
                if tpl.count() > 0 {
                    self.consumer
                        .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
                        .map_err(kafka("committing offsets", CHECK_BROKER))?;
                }
            }
        }
        self.offsets.clear();
        self.in_txn = false;
        Ok(())
    }

    /// at_least_once: after every output and changelog record of the period is
    /// acknowledged, each task's changelogs get a mark naming the input offsets its
    /// state now reflects; a restore stops at the last mark and a replay skips what it
    /// covers, so a record's effects are applied once even when it is read twice.
    fn write_marks(&mut self) -> Result<(), EngineError> {
        let mut sent = false;
        let due = std::mem::take(&mut self.marks_due);
        for ((processor, partition), task) in &self.tasks {
            let key = (processor.clone(), *partition);
            if !due.contains(&key) {
                continue;
            }
            let Some(marks) = self.applied.get(&key) else {
                continue;
            };
            if marks.is_empty() {
                continue;
            }
            let value =
                serde_json::to_vec(marks).map_err(|e| EngineError::Thread(e.to_string()))?;
            for topic in task.changelog_topics() {
                send(
                    &self.producer,
                    BaseRecord::to(topic)
                        .key(&MARK_KEY.to_string())
                        .partition(*partition)
                        .payload(&value),
                )?;
                sent = true;
            }
        }
        if sent {
            wait_for_deliveries(&self.producer, Duration::from_secs(60)).map_err(|pending| {
                EngineError::Kafka {
                    context: format!("{pending} changelog marks were not acknowledged within 60 s"),
                    error: KafkaError::Flush(RDKafkaErrorCode::RequestTimedOut),
                    hint: CHECK_BROKER,
                }
            })?;
        }
        Ok(())
    }

    /// Drops uncommitted work: aborts the open transaction under exactly_once.
    fn abandon_open_work(&mut self) -> Result<(), EngineError> {
        if self.guarantee == Guarantee::ExactlyOnce && self.in_txn {
            self.config.metrics.add(
                "orderflow_transaction_aborts_total",
                "Transactions aborted (rebalance, abortable error).",
                vec![("app", self.shared.topology.app.clone())],
                1.0,
            );
            self.producer
                .abort_transaction(Duration::from_secs(60))
                .map_err(kafka("aborting the transaction", CHECK_BROKER))?;
        }
        self.in_txn = false;
        self.offsets.clear();
        self.drop_jobs();
        Ok(())
    }

    /// After an abort outside a rebalance: every task goes (its state is ahead of
    /// what was committed), and the consumer goes back to the committed offsets.
    fn rewind(&mut self) -> Result<(), EngineError> {
        self.drop_jobs();
        self.tasks.clear();
        let assignment = self
            .consumer
            .assignment()
            .map_err(kafka("reading the assignment", CHECK_BROKER))?;
        let committed = self
            .consumer
            .committed_offsets(assignment, Duration::from_secs(30))
            .map_err(kafka("reading committed offsets", CHECK_BROKER))?;
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Invalid => Offset::Beginning,
                o => o,
            };
            self.consumer
                .seek(e.topic(), e.partition(), offset, Duration::from_secs(30))
                .map_err(kafka("seeking back", CHECK_BROKER))?;
        }
        self.create_tasks()
    }
}

/// A changelog partition a restore still reads: its end offset, and the task and
/// store its records go to.
#[derive(Debug)]
struct Wanted {
    topic: String,
    partition: i32,
    /// Index of the task in the batch being restored.
    task: usize,
    store: Arc<str>,
    high: i64,
}

/// The changelog key of an at_least_once mark (NUL-prefixed: no store key of a
/// processor starts so, and restores never hand it to a store).
const MARK_KEY: &str = "\u{0}orderflow.applied";

/// Cuts each store's restored records at its last mark (what comes after is an
/// interrupted commit whose inputs will be replayed) and returns the input offsets
/// the trimmed state reflects: the smallest over the stores, so no store skips a
/// record another one still needs. Marks are dropped from the entries.
fn trim_to_marks(entries: &mut Vec<RestoredEntry>) -> BTreeMap<String, i64> {
    let mut last_mark: BTreeMap<Arc<str>, (usize, BTreeMap<String, i64>)> = BTreeMap::new();
    for (i, (store, key, value)) in entries.iter().enumerate() {
        if key == MARK_KEY
            && let Some(marks) = value
                .as_deref()
                .and_then(|v| serde_json::from_slice::<BTreeMap<String, i64>>(v).ok())
        {
            last_mark.insert(store.clone(), (i, marks));
        }
    }
    let mut applied: Option<BTreeMap<String, i64>> = None;
    for (_, marks) in last_mark.values() {
        applied = Some(match applied {
            None => marks.clone(),
            Some(mut a) => {
                a.retain(|topic, _| marks.contains_key(topic));
                for (topic, next) in marks {
                    if let Some(v) = a.get_mut(topic) {
                        *v = (*v).min(*next);
                    }
                }
                a
            }
        });
    }
    let mut index = 0;
    entries.retain(|(store, key, _)| {
        let i = index;
        index += 1;
        key != MARK_KEY && last_mark.get(store).is_some_and(|(at, _)| i < *at)
    });
    applied.unwrap_or_default()
}

/// The stream thread's producer: transactional under exactly_once (and its
/// transactions initialized, which fences an older producer of the same id),
/// idempotent under at_least_once.
fn make_producer(
    config: &EngineConfig,
    app: &str,
    guarantee: Guarantee,
) -> Result<ThreadedProducer<Deliveries>, EngineError> {
    let mut producer_config = client_config(config);
    producer_config
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "none");
    if guarantee == Guarantee::ExactlyOnce {
        producer_config
            .set(
                "transactional.id",
                format!("{app}-{}-{guarantee}", config.instance_id),
            )
            // As Kafka Streams: a short timeout, so the broker aborts a crashed
            // instance's open transaction (which holds back read_committed readers)
            // within seconds when no restart fences it sooner.
            .set("transaction.timeout.ms", "10000")
            // Right after a commit the coordinator is still writing the previous
            // transaction's markers and answers the next AddOffsetsToTxn /
            // AddPartitionsToTxn with CONCURRENT_TRANSACTIONS; at librdkafka's
            // default 100 ms backoff every transaction lost that long waiting. The
            // Java producer retries these after 20 ms; so do we.
            .set("retry.backoff.ms", "20");
    }
    let producer: ThreadedProducer<Deliveries> = producer_config
        .create_with_context(Deliveries::default())
        .map_err(kafka("creating the producer", CHECK_BROKER))?;
    if guarantee == Guarantee::ExactlyOnce {
        producer.init_transactions(Duration::from_secs(60)).map_err(kafka(
            "initializing transactions",
            " (the broker needs transaction.state.log settings for its size; see deploy/kafka/server.properties)",
        ))?;
    }
    Ok(producer)
}

/// Whether a transaction error means this producer was fenced: a newer producer
/// with its transactional id exists, or its epoch is stale after a rebalance.
fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

/// A partition's low and high watermarks, retrying for a while the errors of a topic
/// whose leader is not known yet (just created, or moving).
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() < deadline && is_transient(&e) => {
                tracing::debug!(error = %e, topic, partition, "retrying watermarks");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors that pass once partition leadership settles.
fn is_transient(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

/// Waits until every produced record is acknowledged (or failed). Not rdkafka's
/// `flush`: with a threaded producer its own poll competes with the polling thread
/// for the delivery reports, and each flush then sleeps out its 100 ms poll.
fn wait_for_deliveries(
    producer: &ThreadedProducer<Deliveries>,
    timeout: Duration,
) -> Result<(), i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending = producer.in_flight_count();
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(pending);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn send(
    producer: &ThreadedProducer<Deliveries>,
    mut record: BaseRecord<'_, String, Vec<u8>>,
) -> Result<(), EngineError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(kafka("producing", CHECK_BROKER)(e)),
        }
    }
}

/// A consumed record, copied out of the consumer's buffer.
#[derive(Clone)]
struct OwnedInput {
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: i64,
    key: String,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

impl From<&BorrowedMessage<'_>> for OwnedInput {
    fn from(m: &BorrowedMessage<'_>) -> Self {
        let headers = crate::reader::headers_of(m);
        OwnedInput {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis().unwrap_or_else(now_ms),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
