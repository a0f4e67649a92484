//! The broker itself killed with `kill -9` under load and started again on its data
//! dir: every record it acknowledged is still there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use orderflow_runtime::broker::{Broker, BrokerConfig};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn start(config: &BrokerConfig) -> Broker {
    Broker::start(config, &mut |line| eprintln!("crash broker: {line}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_broker_is_killed() {
    let dir = std::env::temp_dir().join(format!("orderflow-broker-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // One port for both lives of the broker, so clients reconnect to it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = BrokerConfig::new(&dir, addr);
    let c = config.clone();
    let broker = tokio::task::spawn_blocking(move || start(&c))
        .await
        .unwrap();
    let bootstrap = broker.bootstrap().to_string();

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new("durable", 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "15000")
        .create()
        .unwrap();

    // Produce in the background; kill the broker while records are in flight.
    let load = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        let mut pending = Vec::new();
        for i in 0..20_000u32 {
            let value = i.to_string();
            match producer.send_result(FutureRecord::to("durable").key(&value).payload(&value)) {
                Ok(f) => pending.push((i, f)),
                Err(_) => break,
            }
            if i % 500 == 499 {
                for (i, f) in pending.drain(..) {
                    if let Ok(Ok(_)) = f.await {
                        acked.insert(i);
                    }
                }
            }
        }
        for (i, f) in pending {
            if let Ok(Ok(_)) = f.await {
                acked.insert(i);
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = std::process::Command::new("kill")
        .args(["-9", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        broker.wait_exit(Duration::from_secs(10)).is_some(),
        "the broker died"
    );
    drop(broker);

    // Back on the same data dir and port.
    let c = config.clone();
    let broker = tokio::task::spawn_blocking(move || start(&c))
        .await
        .unwrap();
    let acked = load.await.unwrap();
    assert!(
        acked.len() > 100,
        "the load got going before the kill ({} acked)",
        acked.len()
    );

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "auditor")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["durable"]).unwrap();
    let mut found = BTreeSet::new();
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
        found.insert(
            String::from_utf8_lossy(m.payload().unwrap())
                .parse::<u32>()
                .unwrap(),
        );
    }
    let lost: Vec<&u32> = acked.difference(&found).take(10).collect();
    assert!(
        lost.is_empty(),
        "acknowledged but gone after the crash: {lost:?} ({} acked)",
        acked.len()
    );
    drop(consumer);
    broker.stop(Duration::from_secs(30));
    let _ = std::fs::remove_dir_all(&dir);
}
