//! The real Apache Kafka broker of the test run: it serves transactions the way the
//! engine needs them (an aborted transaction is invisible to a read_committed reader,
//! a committed one is seen whole) and the producer settings of the contract partition
//! keys as the Java client does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::{client, create_topic, unique};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

async fn read_all(topic: &str, isolation: &str, expect_at_least: usize) -> Vec<(String, i32)> {
    let consumer: StreamConsumer = client()
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Read until nothing more arrives for a while after the expected count.
    loop {
        let wait = if seen.len() >= expect_at_least {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        match tokio::time::timeout(wait, consumer.recv()).await {
            Ok(Ok(m)) => seen.push((
                String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
                m.partition(),
            )),
            Ok(Err(e)) => panic!("consume: {e}"),
            Err(_) => break,
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
    }
    seen
}

#[tokio::test]
async fn aborted_transactions_are_invisible_to_read_committed() {
    let topic = unique("txn");
    create_topic(&topic, 2).await;
    let producer: FutureProducer = client()
        .set("transactional.id", unique("txn-producer"))
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let t = Timeout::After(Duration::from_secs(30));
    producer.init_transactions(t).unwrap();

    producer.begin_transaction().unwrap();
    for i in 0..5 {
        let v = format!("committed-{i}");
        producer
            .send(FutureRecord::to(&topic).key(&v).payload(&v), t)
            .await
            .unwrap();
    }
    producer.commit_transaction(t).unwrap();

    producer.begin_transaction().unwrap();
    for i in 0..5 {
        let v = format!("aborted-{i}");
        producer
            .send(FutureRecord::to(&topic).key(&v).payload(&v), t)
            .await
            .unwrap();
    }
    producer.abort_transaction(t).unwrap();

    let committed = read_all(&topic, "read_committed", 5).await;
    let mut values: Vec<&str> = committed.iter().map(|(v, _)| v.as_str()).collect();
    values.sort_unstable();
    assert_eq!(
        values,
        [
            "committed-0",
            "committed-1",
            "committed-2",
            "committed-3",
            "committed-4"
        ]
    );
    // read_uncommitted sees the aborted records too: the abort was real.
    let everything = read_all(&topic, "read_uncommitted", 10).await;
    assert_eq!(everything.len(), 10, "{everything:?}");
}

#[tokio::test]
async fn keys_land_where_the_java_partitioner_puts_them() {
    let topic = unique("partitions");
    create_topic(&topic, 6).await;
    let producer: FutureProducer = client()
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("order-{i}")).collect();
    for k in &keys {
        producer
            .send(
                FutureRecord::to(&topic).key(k).payload(k),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .unwrap();
    }
    producer
        .flush(Timeout::After(Duration::from_secs(10)))
        .unwrap();
    let seen: BTreeMap<String, i32> = read_all(&topic, "read_committed", keys.len())
        .await
        .into_iter()
        .collect();
    assert_eq!(seen.len(), keys.len());
    for k in &keys {
        assert_eq!(
            seen[k],
            orderflow_runtime::partition::partition_for(k.as_bytes(), 6),
            "{k}"
        );
    }
}
