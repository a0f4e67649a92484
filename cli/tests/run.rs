//! `orderflow run` as an operator runs it: the processors of the real topology.yaml
//! against a real Kafka and schema registry named by env; a registration sent to
//! `auth.commands` is answered on `edge.replies`; SIGTERM stops it cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use orderflow_pipelines::catalog;
use orderflow_pipelines::records::{AuthCommand, RegisterUser, Reply, Role};
use orderflow_runtime::broker::{Broker, BrokerConfig};
use orderflow_runtime::registry::{RegistryClient, SchemaStore, http};
use orderflow_runtime::wire::TopicSerde;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_answers_a_registration_and_stops_on_sigterm() {
    // The run's broker, or one of our own when this binary runs alone.
    let mut own_broker = None;
    let brokers = match std::env::var("KAFKA_BROKERS") {
        Ok(b) if !b.is_empty() => b,
        _ => {
            let dir =
                std::env::temp_dir().join(format!("orderflow-cli-run-{}", std::process::id()));
            let broker = tokio::task::spawn_blocking(move || {
                Broker::start(
                    &BrokerConfig::new(dir, "127.0.0.1:0".parse().unwrap()),
                    &mut |_| {},
                )
            })
            .await
            .unwrap()
            .unwrap();
            let b = broker.bootstrap().to_string();
            own_broker = Some(broker);
            b
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        listener,
        Arc::new(SchemaStore::new()),
        std::future::pending(),
    ));

    let app = format!("run-test-{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["run", "--metrics", "127.0.0.1:0"])
        .current_dir(root())
        .env("KAFKA_BROKERS", &brokers)
        .env("SCHEMA_REGISTRY_URL", &registry_url)
        .env("ORDERFLOW_APP", &app)
        .env_remove("ORDERFLOW_TOPOLOGY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let metrics_addr = line
        .trim()
        .strip_prefix("metrics: http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("expected the metrics line, got {line:?}"))
        .to_string();

    let topology =
        orderflow_runtime::topology::load(&root().join("topology.yaml"), &catalog()).unwrap();
    let serde = TopicSerde::register(&topology, &RegistryClient::remote(&registry_url).unwrap())
        .await
        .unwrap();
    let request_id = format!("req-{app}");
    let email = format!("{app}@example.com");
    let command = AuthCommand::RegisterUser(RegisterUser {
        request_id: request_id.clone(),
        email: email.clone(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        role: Role::Buyer,
        display_name: "Run Test".into(),
    });
    let bytes = serde.encode("auth.commands", &command).unwrap();
    // The topics exist once `run` has started; retry the first send until then.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{app}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut sent = false;
    let mut reply: Option<Reply> = None;
    while reply.is_none() && tokio::time::Instant::now() < deadline {
        if !sent {
            sent = producer
                .send(
                    FutureRecord::to("auth.commands")
                        .key(&email)
                        .payload(&bytes),
                    Duration::from_secs(5),
                )
                .await
                .is_ok();
            if sent {
                consumer.subscribe(&["edge.replies"]).unwrap();
            } else {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            continue;
        }
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let r: Reply = serde
                .decode_as(
                    "edge.replies",
                    m.partition(),
                    m.offset(),
                    m.payload().unwrap(),
                )
                .unwrap();
            if r.request_id == request_id {
                reply = Some(r);
            }
        }
    }
    // The registration shows in the metrics once the commit after it publishes them.
    let mut scraped = String::new();
    for _ in 0..50 {
        scraped = scrape(&metrics_addr);
        if scraped.contains("orderflow_records_in_total{processor=\"user-cache\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reply =
        reply.unwrap_or_else(|| panic!("no reply on edge.replies; orderflow run said:\n{stderr}"));
    assert!(reply.ok, "{reply:?}");
    assert!(reply.entity_id.is_some());
    assert!(output.status.success(), "{stderr}");
    assert!(
        scraped.contains("orderflow_records_in_total{processor=\"user-cache\"} 1"),
        "{scraped}"
    );
    assert!(
        scraped.contains("# TYPE orderflow_process_latency_seconds histogram"),
        "{scraped}"
    );
    drop(own_broker);
}

/// `GET /metrics` over a plain socket.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}
