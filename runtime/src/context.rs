//! What a processor sees while one of its hooks runs: its declared stores, its
//! declared outputs, the global tables it declared, its named timers and the two
//! clocks. Anything undeclared is a [`ProcessError::Contract`] error, so the topology
//! file stays the truth about what each processor touches.
//!
//! A `process` call may also [defer](Context::defer) the rest of its work to an async
//! job (a call to a slow outside service): the task holds its later records until the
//! job ends, then the job's [`Continuation`] runs with a fresh context as if it were
//! the end of that `process` call. Other tasks go on meanwhile.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use apache_avro::types::Value;

use crate::avro::AvroRecord;
use crate::processor::ProcessError;
use crate::store::KeyValueStore;
use crate::timer::{TimeDomain, TimerIndex};
use crate::topology::ProcessorNode;
use crate::wire::{DecodeError, TopicSerde};

/// A record a processor forwarded, encoded in the wire format, waiting to be
/// produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The topic.
    pub topic: String,
    /// The key.
    pub key: String,
    /// The framed value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The timestamp (the input record's, or the timer's due time).
    pub timestamp: i64,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Global tables: every partition of a topic, materialized on every instance, keyed by
/// record key, holding the latest value as it came off the topic (framed Avro bytes,
/// checked to decode when applied). Rows are decoded when read: a decoded Avro
/// `Value` takes several times the memory of its bytes, and a table of users is read
/// far less often than it holds rows.
#[derive(Debug, Default, Clone)]
pub struct GlobalTables {
    tables: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

impl GlobalTables {
    /// Applies a record of `topic` read at `partition`/`offset`: a tombstone (or a
    /// value that decodes to null) deletes the key, a value that decodes replaces
    /// it, and one that does not decode is an error and leaves the table as it was.
    pub fn apply(
        &mut self,
        serde: &TopicSerde,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
        (partition, offset): (i32, i64),
    ) -> Result<(), DecodeError> {
        let keep = match value {
            None => None,
            Some(bytes) => match serde.decode(topic, partition, offset, bytes)? {
                Value::Null => None,
                _ => Some(bytes),
            },
        };
        let table = self.tables.entry(topic.to_string()).or_default();
        match keep {
            None => {
                table.remove(key);
            }
            Some(bytes) => {
                table.insert(key.to_string(), bytes.to_vec());
            }
        }
        Ok(())
    }

    /// The table of `topic`, if any record of it has been seen.
    fn table(&self, topic: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.tables.get(topic)
    }
}

/// A read-only view of one global table.
#[derive(Debug, Clone, Copy)]
pub struct GlobalTable<'a> {
    topic: &'a str,
    rows: Option<&'a BTreeMap<String, Vec<u8>>>,
    serde: &'a TopicSerde,
}

impl GlobalTable<'_> {
    /// The latest value under `key`, as the topic's Rust type.
    pub fn get<T: AvroRecord>(&self, key: &str) -> Result<Option<T>, ProcessError> {
        self.rows
            .and_then(|rows| rows.get(key))
            .map(|bytes| {
                self.serde
                    .decode_as::<T>(self.topic, -1, -1, bytes)
                    .map_err(|e| {
                        ProcessError::Fatal(format!(
                            "global table {}: row {key:?}: {}",
                            self.topic, e.kind
                        ))
                    })
            })
            .transpose()
    }

    /// Whether `key` has a row.
    pub fn contains(&self, key: &str) -> bool {
        self.rows.is_some_and(|rows| rows.contains_key(key))
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.map_or(0, BTreeMap::len)
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rest of a deferred `process` call: run on the task's thread once its job has
/// ended, with a context like the one of the call that deferred it (same record
/// timestamp; outputs, store writes and timers journaled the same way). It may defer
/// again.
pub type Continuation = Box<dyn FnOnce(&mut Context<'_>) -> Result<(), ProcessError> + Send>;

/// A deferred job: an async computation that ends with the [`Continuation`] to run.
pub type Deferred = Pin<Box<dyn Future<Output = Continuation> + Send>>;

/// The task-level state a context borrows.
#[derive(Debug)]
pub struct TaskState {
    /// The task's partition (of the processor's inputs).
    pub partition: i32,
    /// The task's stores by name (the timer store among them).
    pub stores: BTreeMap<String, KeyValueStore>,
    /// The due order of the pending timers.
    pub timers: TimerIndex,
    /// The largest record timestamp the task has processed.
    pub stream_time: i64,
}

/// What a processor hook gets. Created by the engine (or the test driver) around one
/// call.
pub struct Context<'a> {
    pub(crate) node: &'a ProcessorNode,
    pub(crate) task: &'a mut TaskState,
    pub(crate) globals: &'a GlobalTables,
    pub(crate) serde: &'a TopicSerde,
    pub(crate) outputs: &'a mut Vec<Output>,
    pub(crate) wall_time: i64,
    pub(crate) timestamp: i64,
    /// Whether this hook may defer (`process` and continuations only).
    pub(crate) may_defer: bool,
    /// The job the hook deferred, if it did.
    pub(crate) deferred: Option<Deferred>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("processor", &self.node.name)
            .field("partition", &self.task.partition)
            .field("timestamp", &self.timestamp)
            .field("deferred", &self.deferred.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    /// A context around one call. `timestamp` is what forwarded records carry.
    pub fn new(
        node: &'a ProcessorNode,
        task: &'a mut TaskState,
        globals: &'a GlobalTables,
        serde: &'a TopicSerde,
        outputs: &'a mut Vec<Output>,
        wall_time: i64,
        timestamp: i64,
    ) -> Self {
        Context {
            node,
            task,
            globals,
            serde,
            outputs,
            wall_time,
            timestamp,
            may_defer: false,
            deferred: None,
        }
    }

    /// The processor's name.
    pub fn processor(&self) -> &str {
        &self.node.name
    }

    /// The task's partition.
    pub fn partition(&self) -> i32 {
        self.task.partition
    }

    /// Stream time: the largest record timestamp this task has processed.
    pub fn stream_time(&self) -> i64 {
        self.task.stream_time
    }

    /// Wall-clock time, epoch milliseconds (the driver's clock in tests).
    pub fn wall_time(&self) -> i64 {
        self.wall_time
    }

    /// The timestamp forwarded records get.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// Ends this `process` call with an async job: the task takes no further record
    /// (and fires none of its timers) until `job` has ended; then the continuation it
    /// returns runs with a fresh context, and only once that has succeeded does the
    /// record count as processed (its offset committed, its outputs sent). A crash or
    /// rebalance before that drops the job and the record is processed again, so a job
    /// must be safe to repeat (an idempotency key for an outside service). The job runs
    /// on the engine's async runtime while other tasks process their records.
    ///
    /// Only `process` and continuations may defer, once per call.
    pub fn defer<F>(&mut self, job: F) -> Result<(), ProcessError>
    where
        F: Future<Output = Continuation> + Send + 'static,
    {
        if !self.may_defer {
            return Err(ProcessError::Contract(format!(
                "processor {} deferred work outside process (only process and continuations may)",
                self.node.name
            )));
        }
        if self.deferred.is_some() {
            return Err(ProcessError::Contract(format!(
                "processor {} deferred twice in one call",
                self.node.name
            )));
        }
        self.deferred = Some(Box::pin(job));
        Ok(())
    }

    /// A declared store.
    pub fn store(&mut self, name: &str) -> Result<&mut KeyValueStore, ProcessError> {
        let declared = self.node.stores.iter().any(|s| s == name)
            && self.node.timer_store.as_deref() != Some(name);
        if !declared {
            return Err(ProcessError::Contract(format!(
                "processor {} used store {name:?}, which topology.yaml does not give it (its stores: {})",
                self.node.name,
                self.node.stores.join(", ")
            )));
        }
        self.task
            .stores
            .get_mut(name)
            .ok_or_else(|| ProcessError::Fatal(format!("store {name:?} is not open in this task")))
    }

    /// A declared global table.
    pub fn global<'t>(&'t self, topic: &'t str) -> Result<GlobalTable<'t>, ProcessError> {
        if !self.node.global_tables.iter().any(|t| t == topic) {
            return Err(ProcessError::Contract(format!(
                "processor {} read global table {topic:?}, which topology.yaml does not give it",
                self.node.name
            )));
        }
        Ok(GlobalTable {
            topic,
            rows: self.globals.table(topic),
            serde: self.serde,
        })
    }

    /// Forwards a record to a declared output topic, with the current timestamp.
    pub fn forward<T: AvroRecord>(
        &mut self,
        topic: &str,
        key: &str,
        value: &T,
    ) -> Result<(), ProcessError> {
        self.forward_at(topic, key, value, self.timestamp)
    }

    /// Forwards a record stamped `timestamp` instead of the current timestamp: for an
    /// output that tells of something that happened after its input (an answer from
    /// outside, stamped when it came). Readers that take records oldest first then
    /// take it after what was written before it happened, on a replay too.
    pub fn forward_at<T: AvroRecord>(
        &mut self,
        topic: &str,
        key: &str,
        value: &T,
        timestamp: i64,
    ) -> Result<(), ProcessError> {
        self.check_output(topic)?;
        let bytes = self
            .serde
            .encode(topic, value)
            .map_err(|e| ProcessError::Fatal(e.to_string()))?;
        self.outputs.push(Output {
            topic: topic.to_string(),
            key: key.to_string(),
            value: Some(bytes),
            timestamp,
            headers: Vec::new(),
        });
        Ok(())
    }

    /// Forwards a tombstone (deletes `key` from a compacted topic).
    pub fn forward_tombstone(&mut self, topic: &str, key: &str) -> Result<(), ProcessError> {
        self.check_output(topic)?;
        self.outputs.push(Output {
            topic: topic.to_string(),
            key: key.to_string(),
            value: None,
            timestamp: self.timestamp,
            headers: Vec::new(),
        });
        Ok(())
    }

    fn check_output(&self, topic: &str) -> Result<(), ProcessError> {
        if self.node.outputs.iter().any(|t| t == topic) {
            Ok(())
        } else {
            Err(ProcessError::Contract(format!(
                "processor {} forwarded to {topic:?}, which is not among its outputs ({})",
                self.node.name,
                self.node.outputs.join(", ")
            )))
        }
    }

    /// Sets the named timer for `key` to fire its declared delay from now on its
    /// declared clock; returns the due time. Setting it again moves it.
    pub fn set_timer(&mut self, name: &str, key: &str) -> Result<i64, ProcessError> {
        let spec = self.timer_spec(name)?;
        let now = match spec.domain {
            TimeDomain::StreamTime => self.task.stream_time.max(self.timestamp),
            TimeDomain::WallClock => self.wall_time,
        };
        let due = now.saturating_add(i64::try_from(spec.after.as_millis()).unwrap_or(i64::MAX));
        self.set_timer_at(name, key, due)?;
        Ok(due)
    }

    /// Sets the named timer for `key` to fire at `due` on its declared clock.
    pub fn set_timer_at(&mut self, name: &str, key: &str, due: i64) -> Result<(), ProcessError> {
        let spec = self.timer_spec(name)?;
        let (store, index) = self.timer_store()?;
        index.set(store, name, key, spec.domain, due)
    }

    /// The declared delay of the named timer (its `after:` in topology.yaml), for a
    /// processor that sets it with [`Context::set_timer_at`] relative to a time of its
    /// own (e.g. "this long after the session expires") rather than to now.
    pub fn timer_delay(&self, name: &str) -> Result<std::time::Duration, ProcessError> {
        Ok(self.timer_spec(name)?.after)
    }

    /// Cancels the named timer for `key`; returns whether it was pending.
    pub fn cancel_timer(&mut self, name: &str, key: &str) -> Result<bool, ProcessError> {
        self.timer_spec(name)?;
        let (store, index) = self.timer_store()?;
        index.cancel(store, name, key)
    }

    fn timer_spec(&self, name: &str) -> Result<crate::topology::compile::TimerSpec, ProcessError> {
        self.node.timers.get(name).copied().ok_or_else(|| {
            ProcessError::Contract(format!(
                "processor {} set timer {name:?}, which topology.yaml does not declare under its timers",
                self.node.name
            ))
        })
    }

    fn timer_store(&mut self) -> Result<(&mut KeyValueStore, &mut TimerIndex), ProcessError> {
        let name = self.node.timer_store.as_deref().ok_or_else(|| {
            ProcessError::Contract(format!("processor {} has no timers", self.node.name))
        })?;
        let store = self
            .task
            .stores
            .get_mut(name)
            .ok_or_else(|| ProcessError::Fatal(format!("timer store {name:?} is not open")))?;
        Ok((store, &mut self.task.timers))
    }
}
