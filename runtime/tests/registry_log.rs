//! The schema registry kept in a compacted Kafka topic, on the real broker: what a
//! client registered, configured and deleted over HTTP is all there after a restart
//! (also after the broker has compacted the topic), a new schema never gets an id
//! that was given out before, a wrong topic is refused, and a write the broker does
//! not take is answered with an error, never with OK.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::kafka::{bootstrap, client, create_topic, unique};
use orderflow_runtime::registry::{
    RegistryClient, SchemaLog, SchemaLogConfig, SchemaLogError, http,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ORDER_V1: &str = r#"{"type":"record","name":"Order","namespace":"orderflow","fields":[{"name":"id","type":"string"}]}"#;
const ORDER_V2: &str = r#"{"type":"record","name":"Order","namespace":"orderflow","fields":[{"name":"id","type":"string"},{"name":"note","type":"string","default":""}]}"#;
const ORDER_BAD: &str = r#"{"type":"record","name":"Order","namespace":"orderflow","fields":[{"name":"id","type":"string"},{"name":"total","type":"long"}]}"#;
const GONE: &str = r#"{"type":"record","name":"Gone","fields":[{"name":"x","type":"int"}]}"#;
const FRESH: &str = r#"{"type":"record","name":"Fresh","fields":[{"name":"y","type":"int"}]}"#;

/// A durable registry served on a loopback port, as `orderflow registry` runs it.
struct Served {
    url: String,
    log: Arc<SchemaLog>,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Served {
    async fn open(config: &SchemaLogConfig) -> Result<Served> {
        let log = Arc::new(SchemaLog::open(config.clone()).await?);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(http::serve(listener, log.clone(), async {
            let _ = rx.await;
        }));
        Ok(Served {
            url,
            log,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Stops the server and drops the log (its producer and store with it).
    async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .context("the registry did not stop")???;
        }
        Ok(())
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/vnd.schemaregistry.v1+json")
                .body(body.to_string());
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A call that must answer 200.
    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (status, value) = self.call(method, path, body).await?;
        if status != 200 {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    async fn register(&self, subject: &str, schema: &str) -> Result<u64> {
        let value = self
            .ok(
                "POST",
                &format!("/subjects/{subject}/versions"),
                Some(json!({ "schema": schema })),
            )
            .await?;
        value["id"].as_u64().context("no id")
    }

    /// Everything a client can see, soft-deleted versions included.
    async fn observe(&self) -> Result<Value> {
        let subjects = self.ok("GET", "/subjects?deleted=true", None).await?;
        let mut seen = json!({
            "subjects": subjects,
            "live": self.ok("GET", "/subjects", None).await?,
            "global": self.ok("GET", "/config", None).await?,
        });
        for subject in subjects.as_array().context("subjects")? {
            let subject = subject.as_str().context("subject")?;
            let versions = self
                .ok(
                    "GET",
                    &format!("/subjects/{subject}/versions?deleted=true"),
                    None,
                )
                .await?;
            let mut bodies = Vec::new();
            for version in versions.as_array().context("versions")? {
                bodies.push(
                    self.ok(
                        "GET",
                        &format!("/subjects/{subject}/versions/{version}?deleted=true"),
                        None,
                    )
                    .await?,
                );
            }
            seen[subject] = json!({
                "versions": versions,
                "live": self.call("GET", &format!("/subjects/{subject}/versions"), None).await?,
                "bodies": bodies,
                "config": self.call("GET", &format!("/config/{subject}"), None).await?,
            });
        }
        for subject in ["tmp-value", "gone-value"] {
            seen[format!("config {subject}")] = json!(
                self.call("GET", &format!("/config/{subject}"), None)
                    .await?
            );
        }
        for id in 1..=8 {
            seen[format!("id {id}")] = json!(
                self.call("GET", &format!("/schemas/ids/{id}"), None)
                    .await?
            );
        }
        Ok(seen)
    }
}

fn config(topic: &str) -> SchemaLogConfig {
    SchemaLogConfig::new(bootstrap()).with_topic(topic)
}

/// Registrations, shared ids, levels set and cleared, soft and permanent deletes.
async fn make_history(registry: &Served) -> Result<()> {
    registry
        .ok(
            "PUT",
            "/config",
            Some(json!({"compatibility": "BACKWARD_TRANSITIVE"})),
        )
        .await?;
    registry
        .ok(
            "PUT",
            "/config/orders-value",
            Some(json!({"compatibility": "FULL"})),
        )
        .await?;
    registry
        .ok(
            "PUT",
            "/config/tmp-value",
            Some(json!({"compatibility": "NONE"})),
        )
        .await?;
    registry.ok("DELETE", "/config/tmp-value", None).await?;
    assert_eq!(registry.register("orders-value", ORDER_V1).await?, 1);
    assert_eq!(registry.register("orders-value", ORDER_V2).await?, 2);
    assert_eq!(registry.register("payments-value", r#""string""#).await?, 3);
    // The same schema under another subject keeps its id.
    assert_eq!(registry.register("notes-value", r#""string""#).await?, 3);
    // The highest id, then gone for good: it must never be given out again.
    assert_eq!(registry.register("gone-value", GONE).await?, 4);
    registry
        .ok(
            "PUT",
            "/config/gone-value",
            Some(json!({"compatibility": "NONE"})),
        )
        .await?;
    registry.ok("DELETE", "/subjects/gone-value", None).await?;
    registry
        .ok("DELETE", "/subjects/gone-value?permanent=true", None)
        .await?;
    registry.ok("DELETE", "/config/gone-value", None).await?;
    // A soft-deleted version stays readable with ?deleted=true.
    registry
        .ok("DELETE", "/subjects/orders-value/versions/1", None)
        .await?;
    registry.ok("DELETE", "/subjects/notes-value", None).await?;
    let (status, refused) = registry
        .call(
            "POST",
            "/subjects/orders-value/versions",
            Some(json!({ "schema": ORDER_BAD })),
        )
        .await?;
    assert_eq!(status, 409, "{refused}");
    Ok(())
}

#[tokio::test]
async fn a_restart_finds_everything_and_never_reuses_an_id() -> Result<()> {
    let topic = unique("schemas");
    let config = config(&topic);
    let first = Served::open(&config).await?;
    assert_eq!(first.log.restored().records, 0);
    make_history(&first).await?;
    let before = first.observe().await?;
    assert_eq!(before["live"], json!(["orders-value", "payments-value"]));
    assert_eq!(before["orders-value"]["live"], json!([200, [2]]));
    assert_eq!(
        before["id 4"][0],
        json!(404),
        "the permanently deleted schema is gone"
    );
    first.stop().await?;

    let second = Served::open(&config).await?;
    assert!(second.log.restored().records > 0);
    assert_eq!(second.observe().await?, before);
    // Id 4 was the highest and is gone: the next schema gets 5.
    assert_eq!(second.register("fresh-value", FRESH).await?, 5);
    let (status, refused) = second
        .call(
            "POST",
            "/subjects/orders-value/versions",
            Some(json!({ "schema": ORDER_BAD })),
        )
        .await?;
    assert_eq!(status, 409, "the level survived: {refused}");
    let after = second.observe().await?;
    second.stop().await?;

    let third = Served::open(&config).await?;
    assert_eq!(third.observe().await?, after);
    assert_eq!(third.register("gone-value", GONE).await?, 6);
    third.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_embedded_client_registers_durably() -> Result<()> {
    let config = config(&unique("schemas"));
    let log = Arc::new(SchemaLog::open(config.clone()).await?);
    let client = RegistryClient::durable(log.clone());
    let registered = client.register("orders-value", ORDER_V1).await?;
    assert_eq!(registered.id, 1);
    drop(client);
    drop(log);
    let again = SchemaLog::open(config).await?;
    let found = again.store().schema_by_id(1)?;
    assert_eq!(found.text, ORDER_V1);
    Ok(())
}

/// The records in the topic, and the offsets they span (fewer records than offsets:
/// compacted).
fn count_records(topic: &str) -> Result<(usize, i64)> {
    let consumer: BaseConsumer = client()
        .set("enable.partition.eof", "true")
        .set("group.id", unique("count"))
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(low))?;
    consumer.assign(&assignment)?;
    let mut count = 0;
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => count += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {
                return Ok((count, high - low));
            }
            Some(Err(e)) => return Err(e.into()),
            None => bail!("no end of {topic} within 10 s"),
        }
    }
}

#[tokio::test]
async fn a_restart_after_the_broker_compacted_the_topic_finds_everything() -> Result<()> {
    let topic = unique("schemas-compacted");
    // A topic the log cleaner works on at once: short segments, any dirt cleaned,
    // tombstones dropped as soon as allowed.
    let admin: AdminClient<DefaultClientContext> = client().create()?;
    let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("delete.retention.ms", "0");
    for result in admin.create_topics([&new], &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let config = config(&topic);
    let first = Served::open(&config).await?;
    make_history(&first).await?;
    // Levels set over and over: records compaction removes.
    for level in ["NONE", "FORWARD", "FULL", "BACKWARD", "FULL"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        first
            .ok(
                "PUT",
                "/config/orders-value",
                Some(json!({ "compatibility": level })),
            )
            .await?;
    }
    let before = first.observe().await?;

    // The cleaner runs every 15 s (the broker's log.cleaner.backoff.ms) and cleans
    // closed segments only: a record written after segment.ms closes the one before.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (records, span) = count_records(&topic)?;
        if (records as i64) < span {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the broker did not compact {topic} within 120 s ({records} records)");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        first
            .ok(
                "PUT",
                "/config/orders-value",
                Some(json!({ "compatibility": "FULL" })),
            )
            .await?;
    }
    first.stop().await?;

    let second = Served::open(&config).await?;
    let restored = second.log.restored();
    assert!(
        (restored.records as i64) < restored.end_offset,
        "compacted: {restored:?}"
    );
    assert_eq!(second.observe().await?, before);
    assert_eq!(second.register("fresh-value", FRESH).await?, 5);
    second.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_topic_that_cannot_keep_schemas_is_refused() -> Result<()> {
    let two = unique("schemas-two");
    create_topic(&two, 2).await;
    match SchemaLog::open(config(&two)).await {
        Err(SchemaLogError::Partitions { partitions: 2, .. }) => {}
        other => bail!("expected a partition count error, got {other:?}"),
    }
    // create_topic leaves the broker's default, cleanup.policy=delete.
    let deleting = unique("schemas-delete");
    create_topic(&deleting, 1).await;
    match SchemaLog::open(config(&deleting)).await {
        Err(error @ SchemaLogError::CleanupPolicy { .. }) => {
            assert!(!error.is_retriable());
            assert!(
                error.to_string().contains("cleanup.policy=delete"),
                "{error}"
            );
        }
        other => bail!("expected a cleanup policy error, got {other:?}"),
    }
    // A topic holding someone else's records.
    let foreign = unique("schemas-foreign");
    let admin: AdminClient<DefaultClientContext> = client().create()?;
    let new =
        NewTopic::new(&foreign, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    for result in admin.create_topics([&new], &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let producer: rdkafka::producer::FutureProducer = client().create()?;
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&foreign)
                .key(r#"{"keytype":"NOOP","magic":0}"#)
                .payload(""),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    match SchemaLog::open(config(&foreign)).await {
        Err(SchemaLogError::Corrupt { offset: 0, .. }) => Ok(()),
        other => bail!("expected a corrupt record error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_write_the_broker_does_not_take_is_never_answered_ok() -> Result<()> {
    let topic = unique("schemas-lost");
    let mut config = config(&topic);
    config.write_timeout = Duration::from_secs(3);
    let registry = Served::open(&config).await?;
    assert_eq!(registry.register("orders-value", ORDER_V1).await?, 1);
    // Delete the topic under the registry (the broker creates none on its own).
    let admin: AdminClient<DefaultClientContext> = client().create()?;
    for result in admin.delete_topics(&[&topic], &AdminOptions::new()).await? {
        result.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
    }
    let started = Instant::now();
    let (status, value) = registry
        .call(
            "POST",
            "/subjects/orders-value/versions",
            Some(json!({ "schema": ORDER_V2 })),
        )
        .await?;
    assert_eq!(status, 500, "{value}");
    assert_eq!(value["error_code"], json!(50001), "{value}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The log has failed for good: the CLI stops on this.
    tokio::time::timeout(Duration::from_secs(5), registry.log.failed())
        .await
        .context("failed() did not resolve")?;
    let (status, _) = registry
        .call("PUT", "/config", Some(json!({"compatibility": "NONE"})))
        .await?;
    assert_eq!(status, 500);
    registry.stop().await
}
