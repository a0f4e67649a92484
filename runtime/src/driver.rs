//! The test driver, like Kafka Streams' `TopologyTestDriver`: runs a compiled topology
//! in-process with no broker. Records piped in are encoded in the wire format,
//! partitioned with the Java client's murmur2 like a real producer, decoded by the
//! processors that read them, and whatever those forward flows on through the graph.
//! Store writes go to in-memory changelog topics after every record, so
//! [`TestDriver::restart`] can drop every task and restore it from its changelogs,
//! as a crash would. Same inputs, same outputs: nothing here depends on the machine's
//! clock, thread timing or hash order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;

use crate::avro::AvroRecord;
use crate::context::{Continuation, Deferred, GlobalTables, Output};
use crate::dead_letter::DeadLetter;
use crate::processor::{BuildError, Catalog, ProcessError, Record};
use crate::registry::SchemaStore;
use crate::store::KeyValueStore;
use crate::task::{Hook, Task};
use crate::timer::TimeDomain;
use crate::topology::compile::TopicRole;
use crate::topology::{ProcessorNode, Topology, TopologyErrors};
use crate::wire::{DecodeError, EncodeError, TopicSchemaId, TopicSerde};

/// Where the driver's wall clock starts: 2024-01-01T00:00:00Z, so tests see
/// realistic timestamps without reading the machine's clock.
pub const START_WALL_TIME: i64 = 1_704_067_200_000;

/// Header names of a dead-letter record (see [`crate::dead_letter`]).
pub use crate::dead_letter::headers as dlq_headers;

/// What the driver could not do.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The topology did not compile.
    #[error("{0}")]
    Topology(#[from] TopologyErrors),
    /// A processor kind refused its spec.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// No such topic in the topology.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No such processor in the topology.
    #[error("unknown processor {0:?}")]
    UnknownProcessor(String),
    /// A piped value did not encode.
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// An output did not decode as the type asked for.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A processor hook failed fatally: a real instance would stop here.
    #[error("processor {processor} stopped: {error}")]
    Fatal {
        /// The processor.
        processor: String,
        /// Its error.
        error: ProcessError,
    },
    /// The driver's registry refused a schema.
    #[error("registry: {0}")]
    Registry(String),
}

/// A record as stored in a topic of the driver.
#[derive(Debug, Clone, PartialEq)]
struct LogRecord {
    key: String,
    value: Option<Vec<u8>>,
    timestamp: i64,
    headers: Vec<(String, Vec<u8>)>,
}

/// A topic: its partitions, and the order records were appended across them (what
/// the read methods follow).
#[derive(Debug, Default)]
struct TopicLog {
    partitions: Vec<Vec<LogRecord>>,
    appended: Vec<(i32, i64)>,
}

/// A record read from a topic of the driver.
#[derive(Debug, Clone, PartialEq)]
pub struct TestRecord<T> {
    /// Its key.
    pub key: String,
    /// Its value; `None` for a tombstone.
    pub value: Option<T>,
    /// Its timestamp.
    pub timestamp: i64,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl<T> TestRecord<T> {
    /// The value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

struct ProcessorRun {
    node: Arc<ProcessorNode>,
    tasks: Vec<Task>,
}

#[derive(Debug, Clone)]
struct Delivery {
    topic: String,
    partition: i32,
    offset: i64,
    processor: String,
}

/// Runs a topology in-process. See the module docs.
pub struct TestDriver {
    topology: Arc<Topology>,
    catalog: Catalog,
    serde: TopicSerde,
    runs: BTreeMap<String, ProcessorRun>,
    topics: BTreeMap<String, TopicLog>,
    globals: GlobalTables,
    /// Topics some processor reads as a global table.
    global_topics: BTreeSet<String>,
    wall_time: i64,
    cursors: BTreeMap<String, usize>,
    queue: VecDeque<Delivery>,
}

impl std::fmt::Debug for TestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDriver")
            .field("app", &self.topology.app)
            .field("wall_time", &self.wall_time)
            .finish_non_exhaustive()
    }
}

impl TestDriver {
    /// Loads, compiles and starts the topology in `path`.
    pub fn from_file(path: impl AsRef<Path>, catalog: &Catalog) -> Result<Self, DriverError> {
        let topology = crate::topology::load(path.as_ref(), catalog)?;
        Self::new(topology, catalog)
    }

    /// Compiles and starts topology text; `.avsc` paths are relative to `base`, and
    /// `${VAR:-default}` always takes its default, so a test does not depend on the
    /// environment it runs in.
    pub fn from_yaml(
        yaml: &str,
        base: impl AsRef<Path>,
        catalog: &Catalog,
    ) -> Result<Self, DriverError> {
        let topology =
            crate::topology::load_str(yaml, "topology.yaml", base.as_ref(), &|_| None, catalog)?;
        Self::new(topology, catalog)
    }

    /// Starts a compiled topology: registers its schemas in an in-process registry,
    /// builds one processor instance per task and calls `init` on each.
    pub fn new(topology: Topology, catalog: &Catalog) -> Result<Self, DriverError> {
        let registry = SchemaStore::new();
        let mut bindings = BTreeMap::new();
        for (name, topic) in &topology.topics {
            if let Some(schema) = &topic.schema {
                let registered = registry
                    .register(
                        &format!("{name}-value"),
                        &crate::registry::NewSchema::avro(schema.text.to_string()),
                    )
                    .map_err(|e| DriverError::Registry(e.to_string()))?;
                bindings.insert(
                    name.clone(),
                    TopicSchemaId {
                        id: registered.id,
                        schema: schema.schema.clone(),
                    },
                );
            }
        }
        let topics = topology
            .topics
            .values()
            .map(|t| {
                (
                    t.name.clone(),
                    TopicLog {
                        partitions: vec![Vec::new(); t.partitions as usize],
                        appended: Vec::new(),
                    },
                )
            })
            .collect();
        let global_topics = topology
            .processors
            .values()
            .flat_map(|p| p.global_tables.iter().cloned())
            .collect();
        let mut driver = TestDriver {
            topology: Arc::new(topology),
            catalog: catalog.clone(),
            serde: TopicSerde::new(bindings),
            runs: BTreeMap::new(),
            topics,
            globals: GlobalTables::default(),
            global_topics,
            wall_time: START_WALL_TIME,
            cursors: BTreeMap::new(),
            queue: VecDeque::new(),
        };
        driver.start_tasks()?;
        Ok(driver)
    }

    /// The compiled topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The serde the driver encodes and decodes with.
    pub fn serde(&self) -> &TopicSerde {
        &self.serde
    }

    /// The wall clock, epoch milliseconds.
    pub fn wall_time(&self) -> i64 {
        self.wall_time
    }

    /// The stream time of one task.
    pub fn stream_time(&self, processor: &str, partition: i32) -> Option<i64> {
        self.runs
            .get(processor)?
            .tasks
            .get(usize::try_from(partition).ok()?)
            .map(Task::stream_time)
    }

    /// Pipes a record in with the wall clock's time as its timestamp.
    pub fn pipe<T: AvroRecord>(
        &mut self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<(), DriverError> {
        self.pipe_at(topic, key, value, self.wall_time)
    }

    /// Pipes a record in with an explicit timestamp.
    pub fn pipe_at<T: AvroRecord>(
        &mut self,
        topic: &str,
        key: &str,
        value: &T,
        timestamp: i64,
    ) -> Result<(), DriverError> {
        let bytes = self.serde.encode(topic, value)?;
        self.pipe_raw(topic, key, Some(bytes), timestamp)
    }

    /// Pipes raw bytes in (`None`: a tombstone), as an outside producer could write
    /// them: use it to feed corrupt records.
    pub fn pipe_raw(
        &mut self,
        topic: &str,
        key: &str,
        value: Option<Vec<u8>>,
        timestamp: i64,
    ) -> Result<(), DriverError> {
        if !self.topics.contains_key(topic) {
            return Err(DriverError::UnknownTopic(topic.to_string()));
        }
        self.append(
            topic,
            LogRecord {
                key: key.to_string(),
                value,
                timestamp,
                headers: Vec::new(),
            },
        );
        self.drain()
    }

    /// Moves the wall clock forward and fires every wall-clock timer that comes due,
    /// earliest first (ties by processor name, then partition).
    pub fn advance_wall_clock(&mut self, by: Duration) -> Result<(), DriverError> {
        self.wall_time = self
            .wall_time
            .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
        loop {
            let next = self
                .runs
                .iter()
                .flat_map(|(name, run)| {
                    run.tasks.iter().enumerate().filter_map(move |(p, t)| {
                        t.next_due(TimeDomain::WallClock)
                            .map(|due| (due, name.clone(), p))
                    })
                })
                .filter(|(due, ..)| *due <= self.wall_time)
                .min();
            let Some((_, name, partition)) = next else {
                return Ok(());
            };
            self.fire_due(&name, partition, TimeDomain::WallClock, self.wall_time)?;
            self.drain()?;
        }
    }

    /// Records appended to `topic` since the last read of it, decoded as `T`.
    pub fn read_output<T: AvroRecord>(
        &mut self,
        topic: &str,
    ) -> Result<Vec<TestRecord<T>>, DriverError> {
        let from = self.cursors.get(topic).copied().unwrap_or(0);
        let records = self.records_from::<T>(topic, from)?;
        let total = self.topics.get(topic).map_or(0, |t| t.appended.len());
        self.cursors.insert(topic.to_string(), total);
        Ok(records)
    }

    /// Every record of `topic`, decoded as `T`, in append order.
    pub fn records<T: AvroRecord>(&self, topic: &str) -> Result<Vec<TestRecord<T>>, DriverError> {
        self.records_from(topic, 0)
    }

    /// Every record of `topic` as raw bytes (changelog and dead-letter topics).
    pub fn raw_records(&self, topic: &str) -> Result<Vec<TestRecord<Vec<u8>>>, DriverError> {
        self.read_from(topic, 0, |_, _, bytes| Ok(bytes.to_vec()))
    }

    /// The dead letters of a processor: raw records with the error headers.
    pub fn dead_letters(&self, processor: &str) -> Result<Vec<TestRecord<Vec<u8>>>, DriverError> {
        let run = self
            .runs
            .get(processor)
            .ok_or_else(|| DriverError::UnknownProcessor(processor.to_string()))?;
        self.raw_records(&run.node.dead_letter)
    }

    /// A store of a processor, across all its tasks.
    pub fn store(&self, store: &str) -> StoreView<'_> {
        let owner = self
            .topology
            .stores
            .get(store)
            .and_then(|s| s.owner.clone());
        let parts = owner
            .and_then(|o| self.runs.get(&o))
            .map(|run| run.tasks.iter().filter_map(|t| t.store(store)).collect())
            .unwrap_or_default();
        StoreView { parts }
    }

    /// How many timers of a processor are pending, over all its tasks.
    pub fn pending_timers(&self, processor: &str) -> usize {
        self.runs
            .get(processor)
            .map_or(0, |r| r.tasks.iter().map(Task::pending_timers).sum())
    }

    /// Drops every task as a crash would (no `close`), then starts them again with
    /// their stores restored from the changelog topics, and calls `init`.
    pub fn restart(&mut self) -> Result<(), DriverError> {
        self.runs.clear();
        self.start_tasks()
    }

    /// Calls `close` on every task.
    pub fn close(mut self) -> Result<(), DriverError> {
        for run in self.runs.values_mut() {
            for task in &mut run.tasks {
                task.close(&self.globals, &self.serde, self.wall_time);
            }
        }
        Ok(())
    }

    fn start_tasks(&mut self) -> Result<(), DriverError> {
        let topology = self.topology.clone();
        for node in topology.processors.values() {
            let build = self.catalog.get(&node.kind).ok_or_else(|| BuildError {
                path: node.spec.path.clone(),
                pos: Some(node.spec.pos),
                message: format!("unknown processor kind {:?}", node.kind),
            })?;
            let node = Arc::new(node.clone());
            let mut tasks = Vec::new();
            for partition in 0..node.partitions as i32 {
                let changelog = node.stores.iter().flat_map(|store| {
                    let topic = topology
                        .stores
                        .get(store)
                        .and_then(|s| s.changelog.as_ref());
                    topic
                        .and_then(|c| self.topics.get(c))
                        .and_then(|log| log.partitions.get(partition as usize))
                        .into_iter()
                        .flatten()
                        .map(move |r| (Arc::from(store.as_str()), r.key.clone(), r.value.clone()))
                });
                let task = Task::restore(
                    &topology,
                    node.clone(),
                    build(&node.spec)?,
                    partition,
                    changelog,
                )
                .map_err(|error| DriverError::Fatal {
                    processor: node.name.clone(),
                    error,
                })?;
                tasks.push(task);
            }
            self.runs.insert(
                node.name.clone(),
                ProcessorRun {
                    node: node.clone(),
                    tasks,
                },
            );
            for partition in 0..node.partitions as usize {
                self.call(&node.name, partition, Hook::Init, self.wall_time)?;
            }
        }
        self.drain()
    }

    fn records_from<T: AvroRecord>(
        &self,
        topic: &str,
        from: usize,
    ) -> Result<Vec<TestRecord<T>>, DriverError> {
        self.read_from(topic, from, |p, o, bytes| {
            Ok(self.serde.decode_as::<T>(topic, p, o, bytes)?)
        })
    }

    /// The records of `topic` from append position `from` on, values turned into `T`
    /// by `value` (given partition, offset and bytes).
    fn read_from<T>(
        &self,
        topic: &str,
        from: usize,
        value: impl Fn(i32, i64, &[u8]) -> Result<T, DriverError>,
    ) -> Result<Vec<TestRecord<T>>, DriverError> {
        let log = self
            .topics
            .get(topic)
            .ok_or_else(|| DriverError::UnknownTopic(topic.to_string()))?;
        log.appended[from.min(log.appended.len())..]
            .iter()
            .map(|&(p, o)| {
                let r = &log.partitions[p as usize][o as usize];
                Ok(TestRecord {
                    key: r.key.clone(),
                    value: r.value.as_deref().map(|b| value(p, o, b)).transpose()?,
                    timestamp: r.timestamp,
                    partition: p,
                    offset: o,
                    headers: r.headers.clone(),
                })
            })
            .collect()
    }

    /// Appends a record to a topic, updates global tables and queues its readers.
    fn append(&mut self, topic: &str, record: LogRecord) -> (i32, i64) {
        let Some(log) = self.topics.get_mut(topic) else {
            return (0, 0);
        };
        let count = log.partitions.len() as u32;
        let partition = crate::partition::partition_for(record.key.as_bytes(), count);
        let part = &mut log.partitions[partition as usize];
        let offset = part.len() as i64;
        if self.global_topics.contains(topic) {
            let applied = self.globals.apply(
                &self.serde,
                topic,
                &record.key,
                record.value.as_deref(),
                (partition, offset),
            );
            // A global table skips what it cannot decode, as Kafka Streams' global
            // store does with a log-and-continue handler.
            if let Err(e) = applied {
                tracing::warn!(error = %e, "global table skipped a record");
            }
        }
        part.push(record);
        log.appended.push((partition, offset));
        for reader in self.topology.readers_of(topic) {
            self.queue.push_back(Delivery {
                topic: topic.to_string(),
                partition,
                offset,
                processor: reader.name.clone(),
            });
        }
        (partition, offset)
    }

    fn drain(&mut self) -> Result<(), DriverError> {
        while let Some(d) = self.queue.pop_front() {
            self.deliver(d)?;
        }
        Ok(())
    }

    fn deliver(&mut self, d: Delivery) -> Result<(), DriverError> {
        let Some(r) = self
            .topics
            .get(&d.topic)
            .and_then(|log| log.partitions.get(d.partition as usize))
            .and_then(|p| p.get(d.offset as usize))
            .cloned()
        else {
            return Ok(());
        };
        let value = match &r.value {
            None => Ok(Value::Null),
            Some(bytes) => self.serde.decode(&d.topic, d.partition, d.offset, bytes),
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => {
                self.dead_letter(&d, &r, e.kind.code(), &e.to_string());
                return Ok(());
            }
        };
        let record = Record {
            topic: d.topic.clone(),
            partition: d.partition,
            offset: d.offset,
            timestamp: r.timestamp,
            key: r.key.clone(),
            value,
            headers: r.headers.clone(),
        };
        let partition = d.partition as usize;
        if let Some(task) = self
            .runs
            .get_mut(&d.processor)
            .and_then(|run| run.tasks.get_mut(partition))
        {
            task.observe(r.timestamp);
        }
        let mut result = self.call(&d.processor, partition, Hook::Process(&record), r.timestamp);
        // A deferred job runs to its end right here: the driver is deterministic, so
        // the task's next record always sees the job's effects, as in the engine.
        while result.is_ok()
            && let Some(job) = self
                .runs
                .get_mut(&d.processor)
                .and_then(|run| run.tasks.get_mut(partition))
                .and_then(Task::take_deferred)
        {
            let continuation = run_job(job);
            result = self.resume(&d.processor, partition, continuation, r.timestamp);
        }
        if let Err(error) = result {
            match error {
                DriverError::Fatal { error, .. } if !matches!(error, ProcessError::Fatal(_)) => {
                    self.dead_letter(&d, &r, error.kind(), &error.to_string());
                }
                other => return Err(other),
            }
        }
        let stream_time = self
            .runs
            .get(&d.processor)
            .and_then(|run| run.tasks.get(partition))
            .map_or(i64::MIN, Task::stream_time);
        self.fire_due(&d.processor, partition, TimeDomain::StreamTime, stream_time)
    }

    /// Fires every timer of one task due on `domain` at `now`, one call each.
    fn fire_due(
        &mut self,
        processor: &str,
        partition: usize,
        domain: TimeDomain,
        now: i64,
    ) -> Result<(), DriverError> {
        loop {
            let timer = match self
                .runs
                .get_mut(processor)
                .and_then(|run| run.tasks.get_mut(partition))
                .and_then(|task| task.pop_due(domain, now))
            {
                Some(t) => t,
                None => return Ok(()),
            };
            let due = timer.due;
            if let Err(e) = self.call(processor, partition, Hook::Punctuate(&timer), due) {
                match e {
                    // A timer whose handler fails is dropped (it cannot be dead-lettered:
                    // there is no record); the failure is logged.
                    DriverError::Fatal { error, .. }
                        if !matches!(error, ProcessError::Fatal(_)) =>
                    {
                        tracing::warn!(processor, timer = %timer.name, key = %timer.key, error = %error, "timer handler failed");
                    }
                    other => return Err(other),
                }
            }
        }
    }

    /// Runs one hook of one task inside a journal: on success its outputs flow on and
    /// its store changes go to the changelogs; on error everything is undone.
    fn call(
        &mut self,
        processor: &str,
        partition: usize,
        hook: Hook<'_>,
        timestamp: i64,
    ) -> Result<(), DriverError> {
        let Some(run) = self.runs.get_mut(processor) else {
            return Err(DriverError::UnknownProcessor(processor.to_string()));
        };
        let Some(task) = run.tasks.get_mut(partition) else {
            return Ok(());
        };
        match task.run(hook, &self.globals, &self.serde, self.wall_time, timestamp) {
            Ok(outputs) => {
                self.settle(processor, partition, outputs, timestamp);
                Ok(())
            }
            Err(error) => Err(DriverError::Fatal {
                processor: processor.to_string(),
                error,
            }),
        }
    }

    /// Appends a successful call's changelog records and outputs.
    fn settle(&mut self, processor: &str, partition: usize, outputs: Vec<Output>, timestamp: i64) {
        let changelog = self
            .runs
            .get_mut(processor)
            .and_then(|run| run.tasks.get_mut(partition))
            .map(Task::take_changelog)
            .unwrap_or_default();
        for record in changelog {
            self.append_to_partition(
                &record.topic,
                partition as i32,
                record.key,
                record.value,
                timestamp,
            );
        }
        for out in outputs {
            self.emit(out);
        }
    }

    /// Runs the continuation of a deferred job like [`TestDriver::call`] runs a hook.
    fn resume(
        &mut self,
        processor: &str,
        partition: usize,
        continuation: Continuation,
        timestamp: i64,
    ) -> Result<(), DriverError> {
        let Some(task) = self
            .runs
            .get_mut(processor)
            .and_then(|run| run.tasks.get_mut(partition))
        else {
            return Ok(());
        };
        match task.resume(
            continuation,
            &self.globals,
            &self.serde,
            self.wall_time,
            timestamp,
        ) {
            Ok(outputs) => {
                self.settle(processor, partition, outputs, timestamp);
                Ok(())
            }
            Err(error) => Err(DriverError::Fatal {
                processor: processor.to_string(),
                error,
            }),
        }
    }

    /// Changelog records go to the task's own partition, not the key's hash.
    fn append_to_partition(
        &mut self,
        topic: &str,
        partition: i32,
        key: String,
        value: Option<Vec<u8>>,
        timestamp: i64,
    ) {
        if let Some(log) = self.topics.get_mut(topic)
            && let Some(part) = log.partitions.get_mut(partition as usize)
        {
            let offset = part.len() as i64;
            part.push(LogRecord {
                key,
                value,
                timestamp,
                headers: Vec::new(),
            });
            log.appended.push((partition, offset));
        }
    }

    fn emit(&mut self, out: Output) {
        let topic = out.topic.clone();
        self.append(
            &topic,
            LogRecord {
                key: out.key,
                value: out.value,
                timestamp: out.timestamp,
                headers: out.headers,
            },
        );
    }

    fn dead_letter(&mut self, d: &Delivery, r: &LogRecord, kind: &str, message: &str) {
        let Some(dlq) = self
            .runs
            .get(&d.processor)
            .map(|run| run.node.dead_letter.clone())
        else {
            return;
        };
        let headers = DeadLetter {
            processor: &d.processor,
            topic: &d.topic,
            partition: d.partition,
            offset: d.offset,
            kind,
            message,
        }
        .headers(&r.headers);
        let record = LogRecord {
            key: r.key.clone(),
            value: r.value.clone(),
            timestamp: r.timestamp,
            headers,
        };
        if self
            .topology
            .topics
            .get(&dlq)
            .is_some_and(|t| matches!(t.role, TopicRole::DeadLetter { .. }) || t.schema.is_none())
        {
            self.append(&dlq, record);
        }
    }
}

/// One store across every task of its processor.
#[derive(Debug)]
pub struct StoreView<'a> {
    parts: Vec<&'a KeyValueStore>,
}

impl StoreView<'_> {
    /// The typed value under `key`, from whichever task holds it.
    pub fn get<V: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<V>, ProcessError> {
        for part in &self.parts {
            if let Some(v) = part.get(key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Every entry, typed, sorted by key.
    pub fn entries<V: serde::de::DeserializeOwned>(
        &self,
    ) -> Result<BTreeMap<String, V>, ProcessError> {
        let mut all = BTreeMap::new();
        for part in &self.parts {
            for (k, _) in part.iter() {
                if let Some(v) = part.get(k)? {
                    all.insert(k.to_string(), v);
                }
            }
        }
        Ok(all)
    }

    /// Every entry as raw bytes, sorted by key: for stores whose values are not all
    /// of one type.
    pub fn raw_entries(&self) -> BTreeMap<String, Vec<u8>> {
        self.parts
            .iter()
            .flat_map(|part| part.iter())
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    }

    /// Number of keys over all tasks.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// Whether every task's store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs a deferred job to its end on the driver's async runtime (one for every
/// driver, made on first use), from a thread of its own so a driver used inside an
/// async test does not block that test's runtime.
fn run_job(job: Deferred) -> Continuation {
    static JOBS: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let runtime = JOBS.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("orderflow-driver-jobs")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("the test driver cannot start its async runtime: {e}"))
    });
    std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(job))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
