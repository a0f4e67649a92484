//! Exactly-once under crashes, on the real broker: two instances of one app share a
//! counting processor over 4 partitions while 20,000 records arrive, and one of them is
//! killed with `kill -9` three times and started again. A read_committed reader of
//! the output must see every user's counts exactly once each, in order, ending at the
//! number of that user's inputs: no effect lost, none applied twice, nothing from an
//! aborted transaction or a fenced zombie.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{bootstrap, client, unique};
use common::{Click, Count, catalog, fixtures};
use orderflow_runtime::registry::{RegistryClient, SchemaStore, http};
use orderflow_runtime::topology::load;
use orderflow_runtime::wire::TopicSerde;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const USERS: usize = 200;
const RECORDS: usize = 20_000;

fn counter_app() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    debug.join("examples/counter_app")
}

fn spawn(file: &PathBuf, registry: &str) -> Child {
    Command::new(counter_app())
        .arg(file)
        .arg(registry)
        .env("KAFKA_BROKERS", bootstrap())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the counter_app example is built by cargo test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_load_loses_nothing_and_doubles_nothing() {
    // A registry over HTTP that the instances and this test share.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        listener,
        Arc::new(SchemaStore::new()),
        std::future::pending(),
    ));

    let id = unique("crash");
    let (clicks, counts) = (format!("clicks-{id}"), format!("counts-{id}"));
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["click.avsc", "count.avsc"] {
        std::fs::copy(fixtures().join(f), dir.join(f)).unwrap();
    }
    let file = dir.join("topology.yaml");
    std::fs::write(
        &file,
        format!(
            "app: app-{id}
topics:
  {clicks}: {{ partitions: 4, value: click.avsc, ingress: true }}
  {counts}: {{ partitions: 4, value: count.avsc }}
stores:
  counts: {{}}
processors:
  counter:
    kind: counter
    config: {{ output: {counts} }}
    inputs: [{clicks}]
    outputs: [{counts}]
    stores: [counts]
    processing: exactly_once
    timers:
      idle: {{ domain: wall_clock, after: 1h }}
      session: {{ domain: stream_time, after: 1h }}
"
        ),
    )
    .unwrap();
    let topology = load(&file, &catalog()).unwrap();
    let registry = RegistryClient::remote(&registry_url).unwrap();
    // Creates the topics and registers the schemas before anyone produces.
    orderflow_runtime::engine::ensure_topics(
        &topology,
        &orderflow_runtime::engine::EngineConfig::new(bootstrap()),
    )
    .await
    .unwrap();
    let serde = TopicSerde::register(&topology, &registry).await.unwrap();

    let mut stable = spawn(&file, &registry_url);
    let mut victim = spawn(&file, &registry_url);

    let producer: FutureProducer = client()
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let quarter = RECORDS / 4;
    for batch in 0..4 {
        let mut pending = Vec::with_capacity(quarter);
        for i in batch * quarter..(batch + 1) * quarter {
            let user = format!("user{}", i % USERS);
            let bytes = serde
                .encode(
                    &clicks,
                    &Click {
                        user: user.clone(),
                        page: "/".into(),
                    },
                )
                .unwrap();
            pending.push(
                producer
                    .send_result(FutureRecord::to(&clicks).key(&user).payload(&bytes))
                    .unwrap(),
            );
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
        if batch < 3 {
            // Let the instances get into the batch, then kill one mid-flight.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            victim.kill().unwrap(); // SIGKILL
            victim.wait().unwrap();
            victim = spawn(&file, &registry_url);
        }
    }

    // The auditor.
    let consumer: StreamConsumer = client()
        .set("group.id", unique("auditor"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[counts.as_str()]).unwrap();
    let expected = (RECORDS / USERS) as i64;
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let done = |seen: &BTreeMap<String, Vec<i64>>| {
        seen.len() == USERS && seen.values().all(|v| v.last() == Some(&expected))
    };
    while !done(&seen) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let count: Count = serde
                .decode_as(&counts, m.partition(), m.offset(), m.payload().unwrap())
                .unwrap();
            seen.entry(count.user.clone())
                .or_default()
                .push(count.count);
        }
    }
    // Anything still arriving after the last expected count would be a duplicate.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        let count: Count = serde
            .decode_as(&counts, m.partition(), m.offset(), m.payload().unwrap())
            .unwrap();
        seen.entry(count.user.clone())
            .or_default()
            .push(count.count);
    }
    for child in [&mut stable, &mut victim] {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in [&mut stable, &mut victim] {
        let _ = child.wait();
    }

    assert_eq!(seen.len(), USERS, "every user's counts arrive");
    let want: Vec<i64> = (1..=expected).collect();
    for (user, sequence) in &seen {
        assert_eq!(
            sequence, &want,
            "{user}: each input counted exactly once, in order"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
