//! The processor model: the [`Processor`] trait every stream processor implements, the
//! [`Record`] it is given, the errors it may return, and the [`Catalog`] that maps the
//! `kind` names of topology.yaml to the code that builds them (an explicit map, no
//! registration magic).

use std::collections::BTreeMap;
use std::fmt;

use apache_avro::types::Value;
use serde::de::DeserializeOwned;

use crate::avro::{AvroError, AvroRecord};
use crate::context::Context;
use crate::timer::Timer;
use crate::topology::yaml::{Node, Pos};

/// A stream processor. Every hook has a no-op default; a processor overrides what it
/// needs. One instance runs per task (per input partition), so a processor's fields
/// are task-local, and durable state belongs in its stores, never in fields: fields
/// are lost on a crash or a task move, stores are restored from their changelogs.
pub trait Processor: Send {
    /// The stores this processor reads and writes. topology.yaml must give it each of
    /// them (the compile step checks), and only these are reachable from its context.
    fn stores(&self) -> &'static [&'static str] {
        &[]
    }

    /// The named timers this processor sets. topology.yaml must declare each of them
    /// under the processor's `timers`, with its time domain and delay.
    fn timers(&self) -> &'static [&'static str] {
        &[]
    }

    /// Called once when the task starts, after its stores are restored.
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let _ = ctx;
        Ok(())
    }

    /// Called for each input record. On error nothing the call did stays: its store
    /// writes and timer changes are rolled back, its forwards dropped, and the record
    /// goes to the dead-letter topic.
    fn process(&mut self, record: &Record, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let _ = (record, ctx);
        Ok(())
    }

    /// Called when a timer this processor set is due.
    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let _ = (timer, ctx);
        Ok(())
    }

    /// Called when the task closes (revocation, shutdown).
    fn close(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx;
    }
}

/// One input record, its value decoded from Avro against the topic's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The topic it came from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in that partition.
    pub offset: i64,
    /// Its timestamp, epoch milliseconds.
    pub timestamp: i64,
    /// Its key (plain UTF-8).
    pub key: String,
    /// Its value resolved against the topic's schema; `Value::Null` for a tombstone.
    pub value: Value,
    /// Its headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value as the Rust type of the topic. A value that does not fit is a
    /// [`ProcessError::Invalid`]: the record goes to the dead-letter topic.
    pub fn value<T: AvroRecord>(&self) -> Result<T, ProcessError> {
        if matches!(self.value, Value::Null) {
            return Err(ProcessError::invalid(format!(
                "tombstone on {} where a value was expected",
                self.topic
            )));
        }
        T::from_avro(&self.value).map_err(ProcessError::from)
    }

    /// Whether this is a tombstone (a null value).
    pub fn is_tombstone(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

/// Why a processor hook failed, sorted by what the engine does about it.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The record is bad (does not decode to the expected type, breaks an invariant
    /// the processor cannot handle): it goes to the dead-letter topic and processing
    /// goes on.
    #[error("invalid record: {0}")]
    Invalid(String),
    /// The processor broke the contract of its context (forward to an undeclared
    /// output, an undeclared store or timer): a bug, so the record goes to the
    /// dead-letter topic with this message and processing goes on.
    #[error("{0}")]
    Contract(String),
    /// Something outside the record failed and the instance cannot go on (a store
    /// cannot be written, a dependency is gone): the instance stops with this message.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl ProcessError {
    /// A [`ProcessError::Invalid`] with this message.
    pub fn invalid(message: impl Into<String>) -> Self {
        ProcessError::Invalid(message.into())
    }

    /// A stable name for the kind of error, used in dead-letter headers and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessError::Invalid(_) => "invalid",
            ProcessError::Contract(_) => "contract",
            ProcessError::Fatal(_) => "fatal",
        }
    }
}

impl From<AvroError> for ProcessError {
    fn from(error: AvroError) -> Self {
        ProcessError::Invalid(error.to_string())
    }
}

/// What a kind's builder gets: the processor's name and its `config` block.
#[derive(Debug, Clone)]
pub struct ProcessorSpec {
    /// The processor's name in topology.yaml.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its `config:` block, if any, with positions.
    pub config: Option<Node>,
    /// The dotted path of the processor in topology.yaml, for error messages.
    pub path: String,
    /// Where the processor is in topology.yaml.
    pub pos: Pos,
}

impl ProcessorSpec {
    /// The `config:` block as `T` (an empty block when absent, so `T`'s serde defaults
    /// apply). Errors carry the path and position of the offending value.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, BuildError> {
        let empty = Node {
            kind: crate::topology::yaml::NodeKind::Map(Vec::new()),
            pos: self.pos,
        };
        let node = self.config.as_ref().unwrap_or(&empty);
        node.deserialize().map_err(|e| BuildError {
            path: if e.path.is_empty() || e.path == "." {
                format!("{}.config", self.path)
            } else {
                format!("{}.config.{}", self.path, e.path)
            },
            pos: e.pos,
            message: e.message,
        })
    }
}

/// A processor kind refused to build from its spec (bad `config`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct BuildError {
    /// The dotted path of the offending value.
    pub path: String,
    /// Where it is, when known.
    pub pos: Option<Pos>,
    /// What is wrong.
    pub message: String,
}

impl BuildError {
    /// An error about one field of the processor's `config:` block, reported where
    /// that field is written (or where the block is, when the field is absent).
    pub fn at_config(spec: &ProcessorSpec, field: &str, message: impl Into<String>) -> Self {
        let pos = spec
            .config
            .as_ref()
            .map(|c| c.pos_of(&[field]))
            .unwrap_or(spec.pos);
        BuildError {
            path: format!("{}.config.{field}", spec.path),
            pos: Some(pos),
            message: message.into(),
        }
    }

    /// An error about the processor as a whole.
    pub fn new(spec: &ProcessorSpec, message: impl Into<String>) -> Self {
        BuildError {
            path: spec.path.clone(),
            pos: Some(spec.pos),
            message: message.into(),
        }
    }
}

/// Builds one processor instance from its spec. Called once per task.
pub type BuildFn = fn(&ProcessorSpec) -> Result<Box<dyn Processor>, BuildError>;

/// The processor kinds a program knows, by name.
#[derive(Clone, Default)]
pub struct Catalog {
    kinds: BTreeMap<String, BuildFn>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.kinds.keys()).finish()
    }
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a kind; a second registration of a name replaces the first.
    pub fn register(&mut self, kind: &str, build: BuildFn) -> &mut Self {
        self.kinds.insert(kind.to_string(), build);
        self
    }

    /// The builder of a kind.
    pub fn get(&self, kind: &str) -> Option<BuildFn> {
        self.kinds.get(kind).copied()
    }

    /// The kind names, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}
