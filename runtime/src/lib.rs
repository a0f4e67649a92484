//! orderflow's streams engine, domain-free.
//!
//! - [`broker`]: the local Apache Kafka broker (fetched once, formatted once, a
//!   child process that dies with its parent).
//! - [`engine`]: the processors as tasks over rdkafka: consumer group, restore,
//!   exactly_once transactions or at_least_once commits, timers, dead letters.
//! - [`avro`]: the [`avro::AvroRecord`] bridge between Rust types and Avro values.
//! - [`wire`]: the Confluent wire format (magic byte, schema id, Avro body) with
//!   typed errors naming topic, partition and offset.
//! - [`registry`]: the embedded schema registry (Confluent REST subset) and the
//!   registry client with its in-process cache.
//! - [`topology`]: `topology.yaml`, loaded in two stages (serde, then a compile step
//!   that collects every error with file:line:column), and its description.
//! - [`deploy`]: `orderflow topology plan|apply`: what deploying topology.yaml would
//!   change on a cluster and registry, whether it is safe, and applying it.
//! - [`processor`]: the [`processor::Processor`] trait, records, errors and the
//!   [`processor::Catalog`] of processor kinds.
//! - [`context`]: what a processor sees while it runs: stores, outputs, global tables,
//!   timers, clocks.
//! - [`store`]: key-value state stores with a dirty set (for changelogs) and a
//!   per-call journal (for rollback).
//! - [`timer`]: keyed timers on stream time and wall-clock time, kept in a store.
//! - [`task`]: one processor instance over one partition: journaled calls,
//!   changelog flush, restore; shared by the engine and the test driver.
//! - [`dead_letter`]: the headers of a dead-letter record.
//! - [`metrics`]: counters, gauges and histograms in the Prometheus text format.
//! - [`partition`]: the Java client's murmur2 partitioner.
//! - [`json`]: JSON lines and Avro values of a topic's schema, both ways (`orderflow
//!   produce` / `consume`).
//! - [`reader`]: topic readers for the edges: every partition, from the beginning
//!   (a table) or the end (a live stream), with a caught-up signal.
//! - [`publish`]: an idempotent producer of Avro records for the edges and
//!   `orderflow produce`.
//! - [`sink`]: sinks: a consumer group writing batches into a database or cache,
//!   committing after each write, dead-lettering what cannot be written.
//! - [`driver`]: the in-process test driver.

pub mod avro;
pub mod broker;
pub mod context;
pub mod dead_letter;
pub mod deploy;
pub mod driver;
pub mod engine;
pub mod json;
pub mod metrics;
pub mod partition;
pub mod processor;
pub mod publish;
pub mod reader;
pub mod registry;
pub mod sink;
pub mod store;
pub mod task;
pub mod timer;
pub mod topology;
pub mod wire;

pub use context::{Context, Continuation};
pub use driver::TestDriver;
pub use processor::{Catalog, ProcessError, Processor, Record};
