//! `orderflow registry` as a user runs it, against the test run's Kafka broker and
//! driven by a real third-party client: Confluent's Python `SchemaRegistryClient` and
//! `AvroSerializer` (runtime/tests/python/confluent_client.py) register a schema,
//! produce a record that orderflow's wire codec decodes, and are refused an
//! incompatible schema; after SIGTERM and a restart the schema is still there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../runtime/tests/common/kafka.rs"]
mod kafka;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka::{bootstrap, client, create_topic, unique};
use orderflow_runtime::registry::RegistryClient;
use orderflow_runtime::wire::{TopicSchemaId, TopicSerde};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};

/// What the engine reads the topic with: the Python client's schema plus a field
/// with a default (a BACKWARD-compatible evolution), so decoding resolves the
/// writer schema fetched by id to this one.
const READER: &str = r#"{"type":"record","name":"Order","namespace":"orderflow.test","fields":[{"name":"id","type":"string"},{"name":"amount","type":"long"},{"name":"note","type":["null","string"],"default":null},{"name":"channel","type":"string","default":"web"}]}"#;

/// A running `orderflow registry`, killed if the test fails before stopping it.
struct RegistryProcess {
    child: Child,
    url: String,
}

impl RegistryProcess {
    /// Starts it on a free port and waits for its `schema-registry: …` line.
    fn start(topic: &str) -> RegistryProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["registry", "--listen", "127.0.0.1:0", "--topic", topic])
            .env("KAFKA_BROKERS", bootstrap())
            .env("ORDERFLOW_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("schema-registry: ")
            .unwrap_or_else(|| panic!("expected `schema-registry: http://…`, got {line:?}"))
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        RegistryProcess { child, url }
    }

    /// Sends SIGTERM and waits for the exit.
    fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/python/confluent_client.py")
}

/// Runs one phase of the Python script and returns the JSON it printed.
fn python(args: &[&str]) -> Value {
    let output = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("python3 runs (scripts/setup.sh installs it with confluent-kafka)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The one record of `topic`'s partition 0.
fn first_record(topic: &str) -> (Vec<u8>, Vec<u8>, i64) {
    let consumer: BaseConsumer = client().set("group.id", unique("read")).create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.unwrap();
            return (
                message.key().unwrap_or_default().to_vec(),
                message.payload().unwrap_or_default().to_vec(),
                message.offset(),
            );
        }
    }
    panic!("no record in {topic} within 30 s");
}

#[test]
fn without_kafka_brokers_it_says_what_to_set() {
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["registry", "--listen", "127.0.0.1:0"])
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("KAFKA_BROKERS is not set"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluents_python_client_registers_produces_is_refused_and_finds_it_after_a_restart() {
    let schemas = unique("schemas");
    let orders = unique("orders");
    create_topic(&orders, 1).await;

    let registry = RegistryProcess::start(&schemas);
    let produced = python(&["produce", &registry.url, &bootstrap(), &orders]);
    let refused = json!({
        "compatible": false,
        "register": {"http_status": 409, "error_code": 409},
        "serializer": {"http_status": 409, "error_code": 409},
    });
    assert_eq!(produced["refused"], refused, "{produced}");
    assert_eq!(produced["magic"], json!(0), "{produced}");
    assert_eq!(produced["version"], json!(1), "{produced}");
    let id = produced["id"].as_u64().unwrap();
    assert_eq!(produced["framed_id"].as_u64(), Some(id));

    // The engine's side: its schema (a compatible evolution) registered as the
    // topic's next version, then the Python record decoded, the writer schema
    // fetched from the registry by the id in the framing.
    let engine = RegistryClient::remote(&registry.url).unwrap();
    let reader = engine
        .register(&format!("{orders}-value"), READER)
        .await
        .unwrap();
    assert_ne!(u64::from(reader.id), id);
    let serde = TopicSerde::new(BTreeMap::from([(
        orders.clone(),
        TopicSchemaId {
            id: reader.id,
            schema: Arc::new(reader.schema.clone()),
        },
    )]));
    let (key, value, offset) = first_record(&orders);
    assert_eq!(key, b"o-1");
    let decoded = serde
        .decode_with(&engine, &orders, 0, offset, &value)
        .await
        .unwrap();
    assert_eq!(
        Value::try_from(decoded).unwrap(),
        json!({"id": "o-1", "amount": 1250, "note": "first", "channel": "web"})
    );
    assert!(serde.knows_writer(u32::try_from(id).unwrap()));

    let status = registry.stop();
    assert!(status.success(), "SIGTERM: {status}");

    // A new process, restored from the topic.
    let registry = RegistryProcess::start(&schemas);
    let checked = python(&["check", &registry.url, &orders, &id.to_string()]);
    assert_eq!(checked["versions"], json!([1, 2]), "{checked}");
    assert_eq!(
        checked["lookup"],
        json!({"id": id, "version": 1}),
        "{checked}"
    );
    assert_eq!(checked["schema"]["name"], json!("Order"), "{checked}");
    assert_eq!(checked["refused"], refused, "{checked}");
    assert!(
        checked["subjects"]
            .as_array()
            .unwrap()
            .contains(&json!(format!("{orders}-value"))),
        "{checked}"
    );
    // And a fresh engine client decodes the record again through the restarted
    // registry.
    let engine = RegistryClient::remote(&registry.url).unwrap();
    let fresh = TopicSerde::new(BTreeMap::from([(
        orders.clone(),
        TopicSchemaId {
            id: reader.id,
            schema: Arc::new(reader.schema.clone()),
        },
    )]));
    let decoded = fresh
        .decode_with(&engine, &orders, 0, offset, &value)
        .await
        .unwrap();
    assert_eq!(Value::try_from(decoded).unwrap()["amount"], json!(1250));
    let status = registry.stop();
    assert!(status.success(), "SIGTERM: {status}");
}
