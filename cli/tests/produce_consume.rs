//! `orderflow produce` and `orderflow consume` as a user runs them: JSON lines in,
//! Avro in the Confluent wire format on the topic, JSON lines out; a bad line is
//! reported with its line number and the others still go; what `consume` prints
//! feeds `produce` unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../runtime/tests/common/kafka.rs"]
mod kafka;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use kafka::{bootstrap, unique};
use serde_json::{Value, json};

struct Registry(Child, String);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry() -> Registry {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([
            "registry",
            "--listen",
            "127.0.0.1:0",
            "--topic",
            &unique("_schemas"),
        ])
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
        .unwrap()
        .to_string();
    Registry(child, url)
}

/// A topology with two topics carrying `orders.commands`' records.
fn topology(dir: &Path, a: &str, b: &str) -> PathBuf {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/orders.commands.avsc");
    let yaml = format!(
        "app: {}\ntopics:\n  {a}:\n    partitions: 2\n    value: {s}\n    ingress: true\n  {b}:\n    partitions: 2\n    value: {s}\n    ingress: true\n",
        unique("pc"),
        s = schemas.display()
    );
    let file = dir.join("topology.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

fn orderflow(args: &[&str], file: &Path, registry: &str, stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .arg("--file")
        .arg(file)
        .env("KAFKA_BROKERS", bootstrap())
        .env("SCHEMA_REGISTRY_URL", registry)
        .env("ORDERFLOW_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn create(file: &Path) {
    // `orderflow run` with no processors to run creates the topics; here the
    // topics are made by the admin client directly.
    let text = std::fs::read_to_string(file).unwrap();
    let names: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("    ") && l.trim_end().ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_string())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for name in names {
        rt.block_on(kafka::create_topic(&name, 2));
    }
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn json_lines_go_in_as_avro_and_come_out_as_json() {
    let dir = std::env::temp_dir().join(unique("produce-consume"));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (unique("cmds-a"), unique("cmds-b"));
    let file = topology(&dir, &a, &b);
    create(&file);
    let registry = start_registry();

    let place = json!({"key": "o1", "value": {"PlaceOrder": {
        "request_id": "r1", "order_id": "o1", "buyer_id": "b1", "seller_id": "s1",
        "items": [{"product_id": "p1", "quantity": 2, "unit_price": 150}],
        "currency": "EUR", "placed_at": 1_700_000_000_000_i64}}});
    // The bare record: matched against the union's records.
    let cancel = json!({"key": "o1", "value": {"request_id": "r2", "order_id": "o1",
        "requested_by": "b1", "reason": "changed my mind"}});
    let input = format!(
        "{place}\n{{\"key\": \"o2\", \"value\": {{\"PlaceOrder\": {{\"order_id\": 5}}}}}}\nnot json\n{cancel}\n{{\"key\": \"o3\", \"value\": null}}\n"
    );
    let produced = orderflow(&["produce", &a], &file, &registry.1, &input);
    let stderr = String::from_utf8_lossy(&produced.stderr);
    assert!(!produced.status.success(), "bad lines fail the command");
    assert!(stderr.contains("stdin:2: value: "), "{stderr}");
    assert!(stderr.contains("stdin:3: not JSON"), "{stderr}");
    assert!(stderr.contains("produced 3 of 5 records"), "{stderr}");

    let consumed = orderflow(&["consume", &a], &file, &registry.1, "");
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    let records = lines(&consumed);
    assert_eq!(records.len(), 3, "{records:?}");
    let o1: Vec<&Value> = records.iter().filter(|r| r["key"] == "o1").collect();
    assert_eq!(o1.len(), 2);
    assert_eq!(o1[0]["value"], place["value"]);
    assert_eq!(
        o1[1]["value"],
        json!({"CancelOrder": {"request_id": "r2", "order_id": "o1", "requested_by": "b1", "reason": "changed my mind"}})
    );
    let tombstone = records.iter().find(|r| r["key"] == "o3").unwrap();
    assert_eq!(tombstone["value"], Value::Null);

    // consume | produce copies the topic.
    let text = String::from_utf8_lossy(&consumed.stdout).into_owned();
    let copied = orderflow(&["produce", &b], &file, &registry.1, &text);
    assert!(
        copied.status.success(),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let again = lines(&orderflow(
        &["consume", &b, "--max", "3"],
        &file,
        &registry.1,
        "",
    ));
    let values = |rs: &[Value]| {
        let mut v: Vec<(String, String)> = rs
            .iter()
            .map(|r| (r["key"].to_string(), r["value"].to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(values(&again), values(&records));
    let _ = std::fs::remove_dir_all(&dir);
}
