//! The embedded schema registry (the Confluent REST subset clients use) and the
//! registry client the engine resolves schemas through.
//!
//! - [`store`]: [`SchemaStore`], the registry core: subjects, versions, global ids,
//!   compatibility levels, every change a [`RegistryEvent`] so it can be logged and
//!   replayed.
//! - [`log`]: [`SchemaLog`], a store kept durable in a compacted Kafka topic
//!   (`_schemas`) and rebuilt from it at start.
//! - [`http`]: the REST API over a store or a log ([`http::app`], [`http::serve`]).
//! - [`client`]: [`RegistryClient`], embedded (a store in this process) or remote (a
//!   registry over HTTP, through schema_registry_converter), with an in-process
//!   cache so each schema id is fetched at most once.
//! - [`error`]: [`RegistryError`], with the Confluent error code of each refusal.

pub mod client;
pub mod error;
pub mod http;
pub mod log;
pub mod store;

pub use client::{RegisteredSchema, RegistryClient};
pub use error::RegistryError;
pub use log::{SchemaLog, SchemaLogConfig, SchemaLogError};
pub use store::{
    CompatibilityLevel, EventListener, NewSchema, Registration, RegistryEvent, SchemaReference,
    SchemaStore, SchemaVersion, StoredSchema, VersionSpec,
};
