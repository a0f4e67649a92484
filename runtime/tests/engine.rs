//! The engine on the real broker: the sample counter runs from a topology file over
//! rdkafka. Exactly-once counts come out once each, in order, and carry on from the
//! restored store after a restart; corrupt records go to the dead-letter topic; a
//! wall-clock timer set before a stop fires after the restart; at_least_once outputs
//! carry their id header; a task waiting on a deferred job holds up only itself; a
//! changelog lost under a group that has moved on stops the app instead of starting
//! its store empty.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::kafka::{bootstrap, client, unique};
use common::{Click, Count, catalog, fixtures};
use orderflow_runtime::engine::{self, EngineConfig, ID_HEADER};
use orderflow_runtime::registry::{RegistryClient, SchemaStore};
use orderflow_runtime::topology::{Topology, load_str};
use orderflow_runtime::wire::TopicSerde;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::oneshot;

/// A record read back: key, value, headers.
type Seen = (String, Count, Vec<(String, String)>);

struct Setup {
    metrics: Arc<orderflow_runtime::metrics::Metrics>,
    topology: Arc<Topology>,
    registry: Arc<RegistryClient>,
    clicks: String,
    counts: String,
}

fn setup(processing: &str, idle: &str) -> Setup {
    let id = unique("t");
    let clicks = format!("clicks-{id}");
    let counts = format!("counts-{id}");
    let yaml = format!(
        "app: app-{id}
defaults:
  processing: {processing}
  commit_interval: 100ms
topics:
  {clicks}:
    partitions: 3
    value: click.avsc
    ingress: true
  {counts}:
    partitions: 3
    value: count.avsc
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
      idle: {{ domain: wall_clock, after: {idle} }}
      session: {{ domain: stream_time, after: 1h }}
"
    );
    let topology = load_str(&yaml, "engine.yaml", &fixtures(), &|_| None, &catalog()).unwrap();
    Setup {
        metrics: Arc::new(orderflow_runtime::metrics::Metrics::new()),
        topology: Arc::new(topology),
        registry: Arc::new(RegistryClient::embedded(Arc::new(SchemaStore::new()))),
        clicks,
        counts,
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), engine::EngineError>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

fn start(s: &Setup) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let mut config = EngineConfig::new(bootstrap());
    config
        .client_overrides
        .insert("session.timeout.ms".into(), "6000".into());
    config.metrics = s.metrics.clone();
    let task = tokio::spawn(engine::run(
        s.topology.clone(),
        catalog(),
        s.registry.clone(),
        config,
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        stop: Some(stop),
        task,
    }
}

async fn produce_clicks(s: &Setup, users: &[String]) {
    let clicks: Vec<(&str, &str)> = users.iter().map(|u| (u.as_str(), "/")).collect();
    produce_pages(s, &clicks).await;
}

/// Produces one click per (user, page), in order.
async fn produce_pages(s: &Setup, clicks: &[(&str, &str)]) {
    let serde = TopicSerde::register(&s.topology, &s.registry)
        .await
        .unwrap();
    let producer: FutureProducer = client()
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for (user, page) in clicks {
        let bytes = serde
            .encode(
                &s.clicks,
                &Click {
                    user: user.to_string(),
                    page: page.to_string(),
                },
            )
            .unwrap();
        producer
            .send(
                FutureRecord::to(&s.clicks).key(*user).payload(&bytes),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
}

/// Reads `topic` (read_committed) until `done` says so or 60 s pass.
async fn read_until(s: &Setup, topic: &str, done: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let serde = TopicSerde::register(&s.topology, &s.registry)
        .await
        .unwrap();
    let consumer: StreamConsumer = client()
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&seen) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let count: Count = serde
                .decode_as(topic, m.partition(), m.offset(), m.payload().unwrap())
                .unwrap();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            seen.push((
                String::from_utf8_lossy(m.key().unwrap()).into_owned(),
                count,
                headers,
            ));
        }
    }
    seen
}

fn per_user(seen: &[Seen]) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (k, c, _) in seen {
        if !c.closed {
            out.entry(k.clone()).or_default().push(c.count);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_counts_survive_a_restart() {
    let s = setup("exactly_once", "1h");
    let users: Vec<String> = (0..10).map(|i| format!("user{i}")).collect();
    let first: Vec<String> = (0..100).map(|i| users[i % 10].clone()).collect();
    let running = start(&s);
    produce_clicks(&s, &first).await;
    let seen = read_until(&s, &s.counts, |seen| seen.len() >= 100).await;
    running.stop().await;
    let counts = per_user(&seen);
    assert_eq!(counts.len(), 10, "{counts:?}");
    for (user, sequence) in &counts {
        assert_eq!(sequence, &(1..=10).collect::<Vec<i64>>(), "{user}");
    }

    // A new instance restores the store from its changelog and counts on.
    let running = start(&s);
    produce_clicks(&s, &users).await;
    let seen = read_until(&s, &s.counts, |seen| seen.len() >= 110).await;
    running.stop().await;
    let counts = per_user(&seen);
    for (user, sequence) in &counts {
        assert_eq!(
            sequence,
            &(1..=11).collect::<Vec<i64>>(),
            "{user}: each count exactly once"
        );
    }
    // The metrics saw it: 110 records in and out, and the restore.
    let m = &s.metrics;
    assert_eq!(
        m.value("orderflow_records_in_total", &[("processor", "counter")]),
        Some(110.0)
    );
    assert_eq!(
        m.value("orderflow_records_out_total", &[("processor", "counter")]),
        Some(110.0)
    );
    assert!(
        m.value(
            "orderflow_restored_records_total",
            &[("processor", "counter")]
        )
        .unwrap_or(0.0)
            > 0.0
    );
    let text = m.render();
    assert!(
        text.contains("orderflow_process_latency_seconds_count{processor=\"counter\"} 110"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE orderflow_commit_latency_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("orderflow_store_keys{store=\"counts\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_go_to_the_dead_letter_topic() {
    let s = setup("exactly_once", "1h");
    let running = start(&s);
    let producer: FutureProducer = client().create().unwrap();
    for bad in [vec![7u8, 0, 0, 0, 1, 2], vec![0u8, 0]] {
        producer
            .send(
                FutureRecord::to(&s.clicks).key("ann").payload(&bad),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
    }
    produce_clicks(&s, &["ann".to_string()]).await;
    let seen = read_until(&s, &s.counts, |seen| !seen.is_empty()).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].1.count, 1);

    let dlq = s.topology.processors["counter"].dead_letter.clone();
    let consumer: StreamConsumer = client()
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[dlq.as_str()]).unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap()
            .unwrap();
        let headers: BTreeMap<String, String> = m
            .headers()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(headers["orderflow.source.topic"], s.clicks);
        assert_eq!(headers["orderflow.processor"], "counter");
        assert!(headers.contains_key("orderflow.source.offset"));
        kinds.push(headers["orderflow.error.kind"].clone());
    }
    running.stop().await;
    assert_eq!(kinds, ["bad_magic", "truncated"]);
    assert_eq!(
        s.metrics
            .value("orderflow_dead_letters_total", &[("processor", "counter")]),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_timer_set_before_a_stop_fires_after_the_restart() {
    let s = setup("exactly_once", "3s");
    let running = start(&s);
    produce_clicks(&s, &["ann".to_string()]).await;
    let seen = read_until(&s, &s.counts, |seen| !seen.is_empty()).await;
    assert_eq!(seen.len(), 1);
    running.stop().await;
    // Stopped before the 3 s idle timer came due; the timer is in the changelog.
    let running = start(&s);
    let seen = read_until(&s, &s.counts, |seen| seen.iter().any(|(_, c, _)| c.closed)).await;
    running.stop().await;
    let closed: Vec<i64> = seen
        .iter()
        .filter(|(_, c, _)| c.closed)
        .map(|(_, c, _)| c.count)
        .collect();
    assert_eq!(closed, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_outputs_carry_their_id() {
    let s = setup("at_least_once", "1h");
    let running = start(&s);
    produce_clicks(
        &s,
        &["ann".to_string(), "bob".to_string(), "ann".to_string()],
    )
    .await;
    let seen = read_until(&s, &s.counts, |seen| seen.len() >= 3).await;
    running.stop().await;
    assert_eq!(seen.len(), 3);
    for (_, _, headers) in &seen {
        let id = headers
            .iter()
            .find(|(k, _)| k == ID_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap();
        let parts: Vec<&str> = id.split('/').collect();
        assert_eq!(parts.len(), 4, "{id}");
        assert_eq!(parts[0], s.clicks);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_another_partition_count_stops_the_app() {
    let s = setup("exactly_once", "1h");
    // Someone created the input topic with 2 partitions; topology.yaml says 3.
    common::kafka::create_topic(&s.clicks, 2).await;
    let running = start(&s);
    let error = running.task.await.unwrap().unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "topic {} has 2 partitions but topology.yaml says 3",
            s.clicks
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_changelog_under_a_group_that_moved_on_stops_the_app() {
    let s = setup("exactly_once", "1h");
    let users: Vec<String> = (0..5).map(|i| format!("user{i}")).collect();
    let running = start(&s);
    produce_clicks(&s, &users).await;
    read_until(&s, &s.counts, |seen| seen.len() >= 5).await;
    running.stop().await;

    // The store's changelog is lost while the group's offsets stay: a new instance
    // would count from zero again after the clicks it already counted.
    let changelog = Topology::changelog_topic(&s.topology.app, "counts");
    common::kafka::delete_topic(&changelog).await;
    let running = start(&s);
    let outcome = tokio::time::timeout(Duration::from_secs(60), running.task)
        .await
        .expect("the app started anyway, its store empty");
    let message = outcome.unwrap().unwrap_err().to_string();
    assert!(
        message.contains(&format!(
            "the changelog {changelog} of store counts does not exist, but consumer group {} has committed offsets for the inputs of counter ({}/",
            s.topology.app, s.clicks
        )),
        "{message}"
    );
    assert!(
        message.contains("orderflow topology apply --allow 'store counts'"),
        "{message}"
    );
    assert!(
        !common::kafka::topic_exists(&changelog),
        "the refused start created {changelog}"
    );

    // Accepting the empty store (what `topology apply --allow` does: create the
    // changelog) lets the app start, and it counts on from an empty store.
    common::kafka::create_topic(&changelog, 3).await;
    let running = start(&s);
    produce_clicks(&s, &users[..1]).await;
    let seen = read_until(&s, &s.counts, |seen| seen.len() >= 6).await;
    running.stop().await;
    assert_eq!(per_user(&seen)["user0"], vec![1, 1], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_job_holds_up_only_its_own_task() {
    use orderflow_runtime::partition::partition_for;
    let s = setup("exactly_once", "1h");
    let users: Vec<String> = (0..12).map(|i| format!("user{i}")).collect();
    let waiting = users[0].clone();
    let held = partition_for(waiting.as_bytes(), 3);
    let others: Vec<String> = users
        .iter()
        .filter(|u| partition_for(u.as_bytes(), 3) != held)
        .cloned()
        .collect();
    assert!(!others.is_empty());
    let running = start(&s);
    // The waiting user's first click defers until released; its second must wait
    // behind it, in order; everyone on the other partitions goes on meanwhile.
    let clicks: Vec<(&str, &str)> = [(waiting.as_str(), "/wait"), (waiting.as_str(), "/")]
        .into_iter()
        .chain(others.iter().map(|u| (u.as_str(), "/")))
        .collect();
    produce_pages(&s, &clicks).await;
    let seen = read_until(&s, &s.counts, |seen| {
        others.iter().all(|u| seen.iter().any(|(k, _, _)| k == u))
    })
    .await;
    let counted = per_user(&seen);
    for user in &others {
        assert_eq!(counted.get(user), Some(&vec![1]), "{user}");
    }
    assert!(!counted.contains_key(&waiting), "{counted:?}");
    common::release_waiting();
    let seen = read_until(&s, &s.counts, |seen| {
        seen.iter().filter(|(k, _, _)| *k == waiting).count() >= 2
    })
    .await;
    assert_eq!(per_user(&seen).get(&waiting), Some(&vec![1, 2]));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_deferred_jobs_all_finish_in_order() {
    let s = setup("exactly_once", "1h");
    let running = start(&s);
    let users: Vec<String> = (0..9).map(|i| format!("user{i}")).collect();
    let clicks: Vec<(&str, &str)> = (0..30)
        .flat_map(|round| {
            let page = if round % 2 == 0 { "/slow:3" } else { "/" };
            users.iter().map(move |u| (u.as_str(), page))
        })
        .collect();
    produce_pages(&s, &clicks).await;
    let seen = read_until(&s, &s.counts, |seen| seen.len() >= 9 * 30).await;
    let counted = per_user(&seen);
    let want: Vec<i64> = (1..=30).collect();
    for user in &users {
        assert_eq!(counted.get(user), Some(&want), "{user}");
    }
    running.stop().await;
}

/// Co-partitioned inputs are taken in timestamp order within a task (Kafka Streams'
/// timestamp synchronization), not in the order their fetches come back: clicks on a
/// `late` topic, produced first but stamped later, count after the clicks of an
/// `early` topic produced afterwards with earlier timestamps. The at_least_once id
/// header names the input topic of each count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_partitioned_inputs_are_taken_oldest_first() {
    let id = unique("t");
    let early = format!("early-{id}");
    let late = format!("late-{id}");
    let counts = format!("counts-{id}");
    let yaml = format!(
        "app: app-{id}
defaults:
  processing: at_least_once
  commit_interval: 100ms
topics:
  {early}: {{ partitions: 3, value: click.avsc, ingress: true }}
  {late}: {{ partitions: 3, value: click.avsc, ingress: true }}
  {counts}: {{ partitions: 3, value: count.avsc }}
stores:
  counts: {{}}
processors:
  counter:
    kind: counter
    config: {{ output: {counts} }}
    inputs: [{early}, {late}]
    outputs: [{counts}]
    stores: [counts]
    timers:
      idle: {{ domain: wall_clock, after: 1h }}
      session: {{ domain: stream_time, after: 1h }}
"
    );
    let topology = load_str(&yaml, "engine.yaml", &fixtures(), &|_| None, &catalog()).unwrap();
    let s = Setup {
        metrics: Arc::new(orderflow_runtime::metrics::Metrics::new()),
        topology: Arc::new(topology),
        registry: Arc::new(RegistryClient::embedded(Arc::new(SchemaStore::new()))),
        clicks: early.clone(),
        counts: counts.clone(),
    };
    engine::ensure_topics(&s.topology, &EngineConfig::new(bootstrap()))
        .await
        .unwrap();
    let serde = TopicSerde::register(&s.topology, &s.registry)
        .await
        .unwrap();
    let producer: FutureProducer = client()
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    const USERS: usize = 30;
    const EACH: usize = 40;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The late topic first, stamped a minute on; then the early one, stamped now.
    for (topic, base) in [(&late, now + 60_000), (&early, now)] {
        for n in 0..EACH {
            for u in 0..USERS {
                let user = format!("user{u}");
                let bytes = serde
                    .encode(
                        topic,
                        &Click {
                            user: user.clone(),
                            page: "/".into(),
                        },
                    )
                    .unwrap();
                producer
                    .send(
                        FutureRecord::to(topic)
                            .key(&user)
                            .payload(&bytes)
                            .timestamp(base + n as i64),
                        Duration::from_secs(30),
                    )
                    .await
                    .unwrap();
            }
        }
    }
    let running = start(&s);
    let seen = read_until(&s, &counts, |seen| seen.len() >= USERS * 2 * EACH).await;
    running.stop().await;
    assert_eq!(seen.len(), USERS * 2 * EACH);
    for (user, count, headers) in &seen {
        let id = headers
            .iter()
            .find(|(k, _)| k == ID_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap();
        let topic = id.split('/').next().unwrap();
        let expected = if count.count <= EACH as i64 {
            &early
        } else {
            &late
        };
        assert_eq!(
            topic, expected,
            "{user}'s count {} came from {topic}: the early clicks must all count before the late ones",
            count.count
        );
    }
}
