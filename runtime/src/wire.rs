//! The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the
//! Avro body. [`TopicSerde`] encodes with each topic's registered schema and decodes
//! with the writer's schema (looked up by id once, then cached) resolved to the
//! topic's reader schema, so producers on an older or newer compatible schema are
//! read correctly. Every failure is a typed [`DecodeError`] naming topic, partition
//! and offset; nothing here panics on bad bytes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::avro::{self, AvroError, AvroRecord};
use crate::registry::{RegistryClient, RegistryError};
use crate::topology::Topology;

/// The first byte of every framed value.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Frames an Avro body.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a framed value into its schema id and body.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), DecodeErrorKind> {
    match bytes {
        [] => Err(DecodeErrorKind::Empty),
        [magic, ..] if *magic != MAGIC => Err(DecodeErrorKind::BadMagic(*magic)),
        _ if bytes.len() < HEADER_LEN => Err(DecodeErrorKind::Truncated { len: bytes.len() }),
        _ => {
            let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
            Ok((id, &bytes[HEADER_LEN..]))
        }
    }
}

/// What went wrong decoding one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// No bytes at all where a value was expected.
    Empty,
    /// The first byte is not the Confluent magic byte 0.
    BadMagic(u8),
    /// Fewer than the 5 header bytes.
    Truncated {
        /// How many bytes there were.
        len: usize,
    },
    /// The schema id is not known to the registry.
    UnknownSchema(u32),
    /// The topic is not one this serde knows.
    UnknownTopic,
    /// The registry could not be asked about the schema id (unreachable, 5xx): not the
    /// record's fault, so the caller retries rather than dead-lettering it.
    Registry(String),
    /// The body does not read with the writer's schema, or does not resolve to the
    /// topic's schema.
    Body(String),
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeErrorKind::Empty => f.write_str("empty value"),
            DecodeErrorKind::BadMagic(b) => write!(
                f,
                "magic byte is {b:#04x}, not 0x00: not in the Confluent wire format"
            ),
            DecodeErrorKind::Truncated { len } => {
                write!(f, "truncated: {len} bytes, shorter than the 5-byte header")
            }
            DecodeErrorKind::UnknownSchema(id) => write!(f, "unknown schema id {id}"),
            DecodeErrorKind::UnknownTopic => f.write_str("no schema is declared for this topic"),
            DecodeErrorKind::Registry(m) => write!(f, "schema registry unavailable: {m}"),
            DecodeErrorKind::Body(m) => write!(f, "bad Avro body: {m}"),
        }
    }
}

impl DecodeErrorKind {
    /// Whether trying again later may succeed (the record itself may be fine).
    pub fn is_retriable(&self) -> bool {
        matches!(self, DecodeErrorKind::Registry(_))
    }

    /// A stable name for headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeErrorKind::Empty => "empty",
            DecodeErrorKind::BadMagic(_) => "bad_magic",
            DecodeErrorKind::Truncated { .. } => "truncated",
            DecodeErrorKind::UnknownSchema(_) => "unknown_schema",
            DecodeErrorKind::UnknownTopic => "unknown_topic",
            DecodeErrorKind::Registry(_) => "registry",
            DecodeErrorKind::Body(_) => "bad_body",
        }
    }
}

/// A record that could not be decoded, and where it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {topic}[{partition}]@{offset}: {kind}")]
pub struct DecodeError {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// What went wrong.
    pub kind: DecodeErrorKind,
}

/// A value that could not be encoded for a topic.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The topic has no registered schema here.
    #[error("no schema is registered for topic {0}")]
    UnknownTopic(String),
    /// The value does not fit the schema.
    #[error("value for {topic} does not fit its schema: {source}")]
    Avro {
        /// The topic.
        topic: String,
        /// Why.
        source: AvroError,
    },
}

/// A topic's schema and its registered id.
#[derive(Debug, Clone)]
pub struct TopicSchemaId {
    /// The registered id.
    pub id: u32,
    /// The schema.
    pub schema: Arc<Schema>,
}

/// A writer schema as the decoder keeps it: with its references to named types
/// inlined when it has any, so reading a record needs no name table.
fn reading_schema(schema: Arc<Schema>) -> Arc<Schema> {
    if !avro::refers_by_name(&schema) {
        return schema;
    }
    avro::inline_refs(&schema).map_or(schema, Arc::new)
}

/// Encodes and decodes the values of known topics. Cheap to share (`Arc`); the
/// writer-schema cache fills as new ids are seen.
#[derive(Debug, Default)]
pub struct TopicSerde {
    topics: BTreeMap<String, TopicSchemaId>,
    writers: RwLock<HashMap<u32, Arc<Schema>>>,
}

impl TopicSerde {
    /// A serde for these topics (each with the id its schema is registered under).
    pub fn new(topics: BTreeMap<String, TopicSchemaId>) -> Self {
        let writers = topics
            .values()
            .map(|t| (t.id, reading_schema(t.schema.clone())))
            .collect();
        TopicSerde {
            topics,
            writers: RwLock::new(writers),
        }
    }

    /// The schema and id of a topic.
    pub fn topic(&self, topic: &str) -> Option<&TopicSchemaId> {
        self.topics.get(topic)
    }

    /// Remembers a writer schema fetched from the registry.
    pub fn insert_writer(&self, id: u32, schema: Arc<Schema>) {
        if let Ok(mut writers) = self.writers.write() {
            writers.insert(id, reading_schema(schema));
        }
    }

    /// Whether a writer schema id is cached.
    pub fn knows_writer(&self, id: u32) -> bool {
        self.writers.read().is_ok_and(|w| w.contains_key(&id))
    }

    /// Encodes a record for `topic` into the wire format.
    pub fn encode<T: AvroRecord>(&self, topic: &str, record: &T) -> Result<Vec<u8>, EncodeError> {
        let binding = self
            .topics
            .get(topic)
            .ok_or_else(|| EncodeError::UnknownTopic(topic.to_string()))?;
        let mut out = Vec::with_capacity(128);
        out.push(MAGIC);
        out.extend_from_slice(&binding.id.to_be_bytes());
        record
            .encode_body(&binding.schema, &mut out)
            .map_err(|source| EncodeError::Avro {
                topic: topic.to_string(),
                source,
            })?;
        Ok(out)
    }

    /// Encodes an Avro value (already resolved against the topic's schema).
    pub fn encode_value(&self, topic: &str, value: Value) -> Result<Vec<u8>, EncodeError> {
        let binding = self
            .topics
            .get(topic)
            .ok_or_else(|| EncodeError::UnknownTopic(topic.to_string()))?;
        let mut out = Vec::with_capacity(64);
        out.push(MAGIC);
        out.extend_from_slice(&binding.id.to_be_bytes());
        avro::write_body(&binding.schema, value, &mut out).map_err(|source| EncodeError::Avro {
            topic: topic.to_string(),
            source,
        })?;
        Ok(out)
    }

    /// Decodes a framed value of `topic` read at `partition`/`offset`, resolved to the
    /// topic's schema. An id not in the cache is [`DecodeErrorKind::UnknownSchema`]:
    /// the caller fetches it from the registry, [`TopicSerde::insert_writer`]s it and
    /// tries again.
    pub fn decode(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        bytes: &[u8],
    ) -> Result<Value, DecodeError> {
        let fail = |kind| DecodeError {
            topic: topic.to_string(),
            partition,
            offset,
            kind,
        };
        let (id, body) = unframe(bytes).map_err(fail)?;
        let reader = self
            .topics
            .get(topic)
            .ok_or_else(|| fail(DecodeErrorKind::UnknownTopic))?;
        let writer = self
            .writers
            .read()
            .ok()
            .and_then(|w| w.get(&id).cloned())
            .ok_or_else(|| fail(DecodeErrorKind::UnknownSchema(id)))?;
        let reader_schema = (id != reader.id).then_some(reader.schema.as_ref());
        avro::read_body(&writer, reader_schema, body)
            .map_err(|e| fail(DecodeErrorKind::Body(e.to_string())))
    }

    /// Decodes straight to the topic's Rust type.
    pub fn decode_as<T: AvroRecord>(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        bytes: &[u8],
    ) -> Result<T, DecodeError> {
        let value = self.decode(topic, partition, offset, bytes)?;
        T::from_avro(&value).map_err(|e| DecodeError {
            topic: topic.to_string(),
            partition,
            offset,
            kind: DecodeErrorKind::Body(e.to_string()),
        })
    }
}

impl TopicSerde {
    /// Registers the value schema of every data topic of `topology` under
    /// `<topic>-value` (BACKWARD compatibility by default: an incompatible change is
    /// refused here, at start, not discovered by a consumer) and binds each topic to
    /// its id.
    pub async fn register(
        topology: &Topology,
        registry: &RegistryClient,
    ) -> Result<TopicSerde, RegisterError> {
        let mut topics = BTreeMap::new();
        for (name, topic) in &topology.topics {
            let Some(schema) = &topic.schema else {
                continue;
            };
            let registered = registry
                .register(&format!("{name}-value"), &schema.text)
                .await
                .map_err(|source| RegisterError {
                    topic: name.clone(),
                    file: schema.file.clone(),
                    source,
                })?;
            topics.insert(
                name.clone(),
                TopicSchemaId {
                    id: registered.id,
                    schema: schema.schema.clone(),
                },
            );
        }
        Ok(TopicSerde::new(topics))
    }

    /// Decodes like [`TopicSerde::decode`], asking the registry once for a writer
    /// schema id not seen before (then it is cached).
    pub async fn decode_with(
        &self,
        registry: &RegistryClient,
        topic: &str,
        partition: i32,
        offset: i64,
        bytes: &[u8],
    ) -> Result<Value, DecodeError> {
        match self.decode(topic, partition, offset, bytes) {
            Err(DecodeError {
                kind: DecodeErrorKind::UnknownSchema(id),
                ..
            }) => {
                let kind = match registry.schema_by_id(id).await {
                    Ok(found) => {
                        self.insert_writer(id, Arc::new(found.schema.clone()));
                        return self.decode(topic, partition, offset, bytes);
                    }
                    Err(RegistryError::SchemaIdNotFound(_)) => DecodeErrorKind::UnknownSchema(id),
                    Err(e) => DecodeErrorKind::Registry(e.to_string()),
                };
                Err(DecodeError {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    kind,
                })
            }
            other => other,
        }
    }
}

/// A topic's schema was refused by the registry at start.
#[derive(Debug, thiserror::Error)]
#[error("cannot register the schema of {topic} ({file}) as {topic}-value: {source}")]
pub struct RegisterError {
    /// The topic.
    pub topic: String,
    /// Its `.avsc` file.
    pub file: String,
    /// What the registry said.
    pub source: RegistryError,
}
