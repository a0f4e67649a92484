//! The edges' side of the broker: the publisher writes Avro records partitioned like
//! the Java client; a table reader reads every partition from the beginning and says
//! when it has caught up; a live reader sees only what came after it started; a sink
//! gets every record once its writer succeeds, retries a failing writer, dead-letters
//! a corrupt record and one its writer rejects, and a restarted sink carries on from
//! its committed offsets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::kafka::{bootstrap, unique};
use common::{Click, catalog, fixtures};
use orderflow_runtime::engine::{EngineConfig, ensure_topics};
use orderflow_runtime::metrics::Metrics;
use orderflow_runtime::partition::partition_for;
use orderflow_runtime::publish::Publisher;
use orderflow_runtime::reader::{ReadTopic, ReaderConfig, RecordDecoder, TopicReader};
use orderflow_runtime::registry::{RegistryClient, SchemaStore};
use orderflow_runtime::sink::{
    SinkConfig, SinkRecord, SinkWriter, WriteError, WriteFuture, run_sink,
};
use orderflow_runtime::topology::{Topology, load_str};
use orderflow_runtime::wire::TopicSerde;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;

struct Setup {
    topology: Arc<Topology>,
    registry: Arc<RegistryClient>,
    serde: Arc<TopicSerde>,
    clicks: String,
}

async fn setup() -> Setup {
    let id = unique("rs");
    let clicks = format!("clicks-{id}");
    let yaml = format!(
        "app: app-{id}
topics:
  {clicks}:
    partitions: 3
    value: click.avsc
    ingress: true
sinks:
  recorder:
    kind: sql
    inputs: [{clicks}]
"
    );
    let topology = load_str(&yaml, "sink.yaml", &fixtures(), &|_| None, &catalog()).unwrap();
    ensure_topics(&topology, &EngineConfig::new(bootstrap()))
        .await
        .unwrap();
    let registry = Arc::new(RegistryClient::embedded(Arc::new(SchemaStore::new())));
    let serde = Arc::new(TopicSerde::register(&topology, &registry).await.unwrap());
    Setup {
        topology: Arc::new(topology),
        registry,
        serde,
        clicks,
    }
}

fn click(i: usize) -> Click {
    Click {
        user: format!("user-{}", i % 7),
        page: format!("/page/{i}"),
    }
}

type Seen = Arc<Mutex<Vec<(String, i32, Click)>>>;

fn start_reader(s: &Setup, read: ReadTopic, seen: Seen) -> TopicReader {
    let decoder = RecordDecoder::new(
        s.serde.clone(),
        s.registry.clone(),
        tokio::runtime::Handle::current(),
    );
    TopicReader::spawn(
        &ReaderConfig::new(bootstrap(), unique("reader")),
        &[read],
        move |batch| {
            for r in batch {
                let c: Click = decoder.decode(&r).unwrap().unwrap();
                seen.lock().unwrap().push((r.key.clone(), r.partition, c));
            }
        },
    )
    .unwrap()
}

async fn wait_for(seen: &Seen, n: usize) {
    for _ in 0..600 {
        if seen.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("saw {} records, wanted {n}", seen.lock().unwrap().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_tables_from_the_beginning_and_live_topics_from_now() {
    let s = setup().await;
    let publisher = Publisher::new(&bootstrap(), &[], s.serde.clone()).unwrap();
    for i in 0..30 {
        let c = click(i);
        let at = publisher.publish(&s.clicks, &c.user, &c).await.unwrap();
        // The Java client's partitioning: keyed alike, placed alike.
        assert_eq!(at.partition, partition_for(c.user.as_bytes(), 3));
    }

    let table: Seen = Arc::default();
    let reader = start_reader(&s, ReadTopic::table(&s.clicks), table.clone());
    tokio::time::timeout(Duration::from_secs(30), reader.caught_up())
        .await
        .expect("the table reader catches up");
    assert!(reader.is_caught_up());
    assert_eq!(
        table.lock().unwrap().len(),
        30,
        "caught up means all 30 read"
    );

    let live: Seen = Arc::default();
    let live_reader = start_reader(&s, ReadTopic::live(&s.clicks), live.clone());
    assert!(
        live_reader.is_caught_up(),
        "a live reader has nothing to catch up"
    );
    for i in 30..40 {
        let c = click(i);
        publisher.publish(&s.clicks, &c.user, &c).await.unwrap();
    }
    wait_for(&live, 10).await;
    wait_for(&table, 40).await;
    let pages: BTreeSet<String> = live
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, c)| c.page.clone())
        .collect();
    let expected: BTreeSet<String> = (30..40).map(|i| format!("/page/{i}")).collect();
    assert_eq!(pages, expected, "the live reader sees only the new records");
    // Per key, records come in the order they were written.
    let table = table.lock().unwrap();
    for user in 0..7 {
        let pages: Vec<usize> = table
            .iter()
            .filter(|(k, _, _)| *k == format!("user-{user}"))
            .map(|(_, _, c)| c.page.trim_start_matches("/page/").parse().unwrap())
            .collect();
        assert!(pages.windows(2).all(|w| w[0] < w[1]), "in order: {pages:?}");
    }
}

/// A writer that fails its first calls, rejects one page, and records the rest.
struct Recorder {
    failures_left: usize,
    reject_page: String,
    written: Arc<Mutex<Vec<Click>>>,
}

impl SinkWriter for Recorder {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> WriteFuture<'a> {
        Box::pin(async move {
            if self.failures_left > 0 {
                self.failures_left -= 1;
                return Err(WriteError::Retry("the database is down".into()));
            }
            let mut clicks = Vec::new();
            for (index, r) in batch.iter().enumerate() {
                let c: Click = r.decode().map_err(WriteError::Retry)?.unwrap();
                if c.page == self.reject_page {
                    return Err(WriteError::Reject {
                        index,
                        message: "page not allowed".into(),
                    });
                }
                clicks.push(c);
            }
            self.written.lock().unwrap().extend(clicks);
            Ok(())
        })
    }
}

fn sink_config(s: &Setup) -> SinkConfig {
    let sink = &s.topology.sinks["recorder"];
    let mut config = SinkConfig::new(
        &bootstrap(),
        &s.topology.app,
        "recorder",
        sink.inputs.clone(),
    );
    config.overrides = vec![("session.timeout.ms".into(), "6000".into())];
    config
}

async fn wait_written(written: &Arc<Mutex<Vec<Click>>>, n: usize) {
    for _ in 0..600 {
        if written.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "wrote {} records, wanted {n}",
        written.lock().unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_writes_everything_once_retries_and_dead_letters() {
    let s = setup().await;
    let publisher = Publisher::new(&bootstrap(), &[], s.serde.clone()).unwrap();
    for i in 0..50 {
        let c = click(i);
        publisher.publish(&s.clicks, &c.user, &c).await.unwrap();
    }
    // Not Avro at all: a dead letter, with the bytes kept.
    publisher
        .publish_bytes(&s.clicks, "user-0", Some(b"not avro"), &[])
        .await
        .unwrap();

    let written: Arc<Mutex<Vec<Click>>> = Arc::default();
    let writer = Recorder {
        failures_left: 2,
        reject_page: "/page/7".into(),
        written: written.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics = Arc::new(Metrics::new());
    let sink = tokio::spawn(run_sink(
        sink_config(&s),
        s.serde.clone(),
        s.registry.clone(),
        Box::new(writer),
        metrics.clone(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    wait_written(&written, 49).await;
    stop_tx.send(()).unwrap();
    sink.await.unwrap().unwrap();
    let pages: BTreeSet<String> = written
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.page.clone())
        .collect();
    assert_eq!(pages.len(), 49);
    assert!(!pages.contains("/page/7"));
    assert_eq!(
        metrics.value("orderflow_sink_dead_letters_total", &[("sink", "recorder")]),
        Some(2.0)
    );

    // Both dead letters are on the sink's dead-letter topic, with their reasons.
    let dlq = &s.topology.sinks["recorder"].dead_letter;
    let consumer: StreamConsumer = common::kafka::client()
        .set("group.id", unique("dlq"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[dlq]).unwrap();
    let mut kinds = BTreeSet::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a dead letter")
            .unwrap();
        let headers = m.headers().unwrap();
        let kind = headers
            .iter()
            .find(|h| h.key == "orderflow.error.kind")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap();
        if kind == "bad_magic" {
            assert_eq!(m.payload(), Some(&b"not avro"[..]));
        }
        kinds.insert(kind);
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["bad_magic".to_string(), "rejected".to_string()])
    );

    // A restarted sink carries on from the committed offsets: only new records.
    for i in 50..55 {
        let c = click(i);
        publisher.publish(&s.clicks, &c.user, &c).await.unwrap();
    }
    let again: Arc<Mutex<Vec<Click>>> = Arc::default();
    let writer = Recorder {
        failures_left: 0,
        reject_page: String::new(),
        written: again.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sink = tokio::spawn(run_sink(
        sink_config(&s),
        s.serde.clone(),
        s.registry.clone(),
        Box::new(writer),
        metrics,
        async move {
            let _ = stop_rx.await;
        },
    ));
    wait_written(&again, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(()).unwrap();
    sink.await.unwrap().unwrap();
    let pages: BTreeSet<String> = again
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.page.clone())
        .collect();
    let expected: BTreeSet<String> = (50..55).map(|i| format!("/page/{i}")).collect();
    assert_eq!(pages, expected);
}
