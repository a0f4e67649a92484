//! The Kafka broker of a test run: the one `scripts/test.sh` started (its address in
//! `KAFKA_BROKERS`), or, when a test binary runs alone under plain `cargo test`, one
//! broker started here for the whole binary. Never one per test. Each test takes its
//! own random topic, group and transactional ids from [`unique`].

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use orderflow_runtime::broker::{Broker, BrokerConfig};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

static BROKER: OnceLock<(String, Option<Broker>)> = OnceLock::new();

/// `bootstrap.servers` of the test broker.
pub fn bootstrap() -> String {
    BROKER
        .get_or_init(|| {
            if let Ok(brokers) = std::env::var("KAFKA_BROKERS")
                && !brokers.is_empty()
            {
                return (brokers, None);
            }
            let dir =
                std::env::temp_dir().join(format!("orderflow-test-broker-{}", std::process::id()));
            let config = BrokerConfig::new(&dir, "127.0.0.1:0".parse().expect("address"));
            let broker = Broker::start(&config, &mut |line| eprintln!("test broker: {line}"))
                .unwrap_or_else(|e| panic!("cannot start the test broker: {e}"));
            (broker.bootstrap().to_string(), Some(broker))
        })
        .0
        .clone()
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// A client config for the test broker.
pub fn client() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap());
    config
}

/// Creates a topic and waits until it exists.
pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client().create().expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
    }
}

/// Whether the broker's metadata lists `name`.
pub fn topic_exists(name: &str) -> bool {
    let admin: AdminClient<DefaultClientContext> = client().create().expect("admin client");
    let metadata = admin
        .inner()
        .fetch_metadata(Some(name), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
}

/// Deletes a topic and waits until the broker no longer lists it.
pub async fn delete_topic(name: &str) {
    let admin: AdminClient<DefaultClientContext> = client().create().expect("admin client");
    let results = admin
        .delete_topics(
            &[name],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("delete_topics");
    for r in results {
        r.unwrap_or_else(|(topic, e)| panic!("deleting {topic}: {e}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while topic_exists(name) {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} still listed 30 s after its deletion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
