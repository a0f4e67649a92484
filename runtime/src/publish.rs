//! Publishing records to the topology's topics from outside a processor (the edges,
//! `orderflow produce`): values in the Confluent wire format, keys as plain UTF-8,
//! the Java client's murmur2 partitioning, an idempotent producer, and each send
//! confirmed by the broker (acks=all) before it is reported done.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::avro::AvroRecord;
use crate::wire::{EncodeError, TopicSerde};

/// Why a record was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The record does not fit the topic's schema (or the topic has none).
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// The broker did not take it (after the producer's own retries).
    #[error("publishing to {topic}: {error}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        error: KafkaError,
    },
    /// The producer could not be created.
    #[error("creating the producer: {0} (is the broker reachable at bootstrap.servers?)")]
    Create(KafkaError),
}

/// Where a published record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// A record the producer has, not yet confirmed by the broker.
pub struct Pending {
    topic: String,
    delivery: rdkafka::producer::DeliveryFuture,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Waits for the broker's answer.
    pub async fn confirmed(self) -> Result<Published, PublishError> {
        let failed = |error| PublishError::Kafka {
            topic: self.topic.clone(),
            error,
        };
        match self.delivery.await {
            Ok(Ok(delivery)) => Ok(Published {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Ok(Err((error, _))) => Err(failed(error)),
            Err(_) => Err(failed(KafkaError::Canceled)),
        }
    }
}

/// An idempotent producer with the topology's serde. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    serde: Arc<TopicSerde>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher against `bootstrap` with extra librdkafka settings `overrides`.
    pub fn new(
        bootstrap: &str,
        overrides: &[(String, String)],
        serde: Arc<TopicSerde>,
    ) -> Result<Publisher, PublishError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .set("log_level", "4");
        for (k, v) in overrides {
            client.set(k, v);
        }
        let producer = client.create().map_err(PublishError::Create)?;
        Ok(Publisher { producer, serde })
    }

    /// The serde it encodes with.
    pub fn serde(&self) -> &Arc<TopicSerde> {
        &self.serde
    }

    /// Encodes `record` for `topic` and publishes it under `key`.
    pub async fn publish<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        record: &T,
    ) -> Result<Published, PublishError> {
        let bytes = self.serde.encode(topic, record)?;
        self.publish_bytes(topic, key, Some(&bytes), &[]).await
    }

    /// Publishes an Avro value already resolved against the topic's schema.
    pub async fn publish_value(
        &self,
        topic: &str,
        key: &str,
        value: Value,
    ) -> Result<Published, PublishError> {
        let bytes = self.serde.encode_value(topic, value)?;
        self.publish_bytes(topic, key, Some(&bytes), &[]).await
    }

    /// Publishes bytes as they are (`None` is a tombstone), with headers.
    pub async fn publish_bytes(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
    ) -> Result<Published, PublishError> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        if !headers.is_empty() {
            let mut owned = OwnedHeaders::new_with_capacity(headers.len());
            for (k, v) in headers {
                owned = owned.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            record = record.headers(owned);
        }
        match self.producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => Ok(Published {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _)) => Err(PublishError::Kafka {
                topic: topic.to_string(),
                error,
            }),
        }
    }

    /// Hands a record to the producer now, in call order (so records of one key keep
    /// the order they were enqueued in), waiting only while the producer's queue is
    /// full; [`Pending::confirmed`] then waits for the broker.
    pub async fn enqueue(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Pending, PublishError> {
        loop {
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    return Ok(Pending {
                        topic: topic.to_string(),
                        delivery,
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => {
                    return Err(PublishError::Kafka {
                        topic: topic.to_string(),
                        error,
                    });
                }
            }
        }
    }

    /// Waits up to `timeout` for every record in flight to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
