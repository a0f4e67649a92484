//! Exactly-once under crashes, on the real broker: two instances of one app share a
//! counting processor over 4 partitions while 20,000 records arrive, and one of them is
//! killed with `kill -9` three times and started again. A read_committed reader of
//! the output must see every user's counts exactly once each, in order, ending at the
//! number of that user's inputs: no effect lost, none applied twice, nothing from an
//! aborted transaction or a fenced zombie. Under at_least_once the same holds once
//! repeated outputs are dropped by their id header.

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
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};

const USERS: usize = 200;
const RECORDS: usize = 20_000;

fn counter_app() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    debug.join("examples/counter_app")
}

fn spawn(file: &PathBuf, registry: &str, instance: &str) -> Child {
    Command::new(counter_app())
        .env("ORDERFLOW_INSTANCE_ID", instance)
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
async fn exactly_once_under_kill_9() {
    let outputs = crashing_run("exactly_once").await;
    let expected = (RECORDS / USERS) as i64;
    let want: Vec<i64> = (1..=expected).collect();
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for o in &outputs {
        seen.entry(o.user.clone()).or_default().push(o.count);
    }
    assert_eq!(seen.len(), USERS, "every user's counts arrive");
    for (user, sequence) in &seen {
        assert_eq!(
            sequence, &want,
            "{user}: each input counted exactly once, in order"
        );
    }
}

/// at_least_once: outputs may repeat, but a repeat carries the id header of its first
/// copy, so dropping repeats by id leaves each count exactly once; and the store's
/// counts are exact (a replayed record does not change state twice), so no count
/// is skipped or reached by two different inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_under_kill_9() {
    let outputs = crashing_run("at_least_once").await;
    let expected = (RECORDS / USERS) as i64;
    let want: Vec<i64> = (1..=expected).collect();
    let mut by_id: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for o in &outputs {
        let id =
            o.id.clone()
                .expect("every at_least_once output has an id header");
        match by_id.get(&id) {
            Some(first) => assert_eq!(
                first,
                &(o.user.clone(), o.count),
                "a repeat of {id} differs from its first copy"
            ),
            None => {
                by_id.insert(id, (o.user.clone(), o.count));
                seen.entry(o.user.clone()).or_default().push(o.count);
            }
        }
    }
    assert_eq!(seen.len(), USERS, "every user's counts arrive");
    for (user, sequence) in &mut seen {
        sequence.sort_unstable();
        assert_eq!(
            sequence, &want,
            "{user}: after dropping repeats, each count once"
        );
    }
}

/// One output record as the auditor read it.
struct Seen {
    user: String,
    count: i64,
    id: Option<String>,
}

/// Runs the counting app as two processes under `processing` while 20,000 records
/// arrive and one process is killed three times; returns every output, in order.
async fn crashing_run(processing: &str) -> Vec<Seen> {
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
    processing: {processing}
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

    let mut stable = spawn(&file, &registry_url, "stable");
    let mut victim = spawn(&file, &registry_url, "victim");

    // The load runs in the background at about 2,000 records/s while the victim is
    // killed three times, so every kill lands mid-flight (open transactions,
    // uncommitted offsets, unflushed changelogs).
    let load = {
        let (clicks, serde_topic) = (clicks.clone(), clicks.clone());
        let serde = TopicSerde::new(
            [(serde_topic, serde.topic(&clicks).unwrap().clone())]
                .into_iter()
                .collect(),
        );
        tokio::spawn(async move {
            let producer: FutureProducer = client()
                .set("partitioner", "murmur2_random")
                .set("linger.ms", "5")
                .create()
                .unwrap();
            for chunk in 0..RECORDS / 100 {
                let mut pending = Vec::with_capacity(100);
                for i in chunk * 100..(chunk + 1) * 100 {
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
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        victim.kill().unwrap(); // SIGKILL
        victim.wait().unwrap();
        victim = spawn(&file, &registry_url, "victim");
    }
    load.await.unwrap();

    // The auditor.
    let consumer: StreamConsumer = client()
        .set("group.id", unique("auditor"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[counts.as_str()]).unwrap();
    let expected = (RECORDS / USERS) as i64;
    let mut outputs: Vec<Seen> = Vec::new();
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let read = |m: &rdkafka::message::BorrowedMessage<'_>| {
        let count: Count = serde
            .decode_as(&counts, m.partition(), m.offset(), m.payload().unwrap())
            .unwrap();
        let id = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == orderflow_runtime::engine::ID_HEADER)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        Seen {
            user: count.user,
            count: count.count,
            id,
        }
    };
    while !(last.len() == USERS && last.values().all(|c| *c == expected))
        && tokio::time::Instant::now() < deadline
    {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let seen = read(&m);
            let top = last.entry(seen.user.clone()).or_default();
            *top = (*top).max(seen.count);
            outputs.push(seen);
        }
    }
    // Anything still arriving after the last expected count is read too: a
    // duplicate must not hide behind the auditor stopping early.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        outputs.push(read(&m));
    }
    for child in [&mut stable, &mut victim] {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
    }
    for child in [&mut stable, &mut victim] {
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    outputs
}

/// A wall-clock timer set before a `kill -9` fires after the restart: pending timers
/// live in a changelogged store, not in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_timer_set_before_a_kill_fires_after_the_restart() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        listener,
        Arc::new(SchemaStore::new()),
        std::future::pending(),
    ));
    let id = unique("timer");
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
  {clicks}: {{ partitions: 2, value: click.avsc, ingress: true }}
  {counts}: {{ partitions: 2, value: count.avsc }}
stores:
  counts: {{}}
processors:
  counter:
    kind: counter
    config: {{ output: {counts} }}
    inputs: [{clicks}]
    outputs: [{counts}]
    stores: [counts]
    timers:
      idle: {{ domain: wall_clock, after: 8s }}
      session: {{ domain: stream_time, after: 1h }}
"
        ),
    )
    .unwrap();
    let topology = load(&file, &catalog()).unwrap();
    let registry = RegistryClient::remote(&registry_url).unwrap();
    orderflow_runtime::engine::ensure_topics(
        &topology,
        &orderflow_runtime::engine::EngineConfig::new(bootstrap()),
    )
    .await
    .unwrap();
    let serde = TopicSerde::register(&topology, &registry).await.unwrap();
    let mut app = spawn(&file, &registry_url, "timer");

    let producer: FutureProducer = client()
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let bytes = serde
        .encode(
            &clicks,
            &Click {
                user: "ann".into(),
                page: "/".into(),
            },
        )
        .unwrap();
    producer
        .send(
            FutureRecord::to(&clicks).key("ann").payload(&bytes),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let consumer: StreamConsumer = client()
        .set("group.id", unique("timer-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[counts.as_str()]).unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    let count: Count = serde
        .decode_as(
            &counts,
            first.partition(),
            first.offset(),
            first.payload().unwrap(),
        )
        .unwrap();
    assert_eq!((count.count, count.closed), (1, false));

    // The count is committed, so is the pending idle timer; kill before it is due.
    app.kill().unwrap();
    app.wait().unwrap();
    let mut app = spawn(&file, &registry_url, "timer");
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let m = consumer.recv().await.unwrap();
            let c: Count = serde
                .decode_as(&counts, m.partition(), m.offset(), m.payload().unwrap())
                .unwrap();
            if c.closed {
                return c;
            }
        }
    })
    .await
    .expect("the idle timer fired after the restart");
    assert_eq!((closed.user.as_str(), closed.count), ("ann", 1));
    let _ = Command::new("kill")
        .args(["-TERM", &app.id().to_string()])
        .status();
    let _ = app.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
