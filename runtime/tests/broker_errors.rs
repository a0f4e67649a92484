//! `Broker::start` refuses clearly, before starting any JVM: an address in use, a
//! data dir of another cluster, no Java.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use orderflow_runtime::broker::{Broker, BrokerConfig, BrokerError};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "orderflow-broker-errors-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_address_in_use_is_refused() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = BrokerConfig::new(temp("port"), taken.local_addr().unwrap());
    let error = Broker::start(&config, &mut |_| {}).unwrap_err();
    assert!(matches!(error, BrokerError::PortInUse { .. }), "{error}");
    assert!(error.to_string().contains("already in use"), "{error}");
}

#[test]
fn a_data_dir_of_another_cluster_is_refused() {
    let dir = temp("foreign");
    std::fs::create_dir_all(dir.join("kafka")).unwrap();
    std::fs::write(
        dir.join("kafka/meta.properties"),
        "version=1\ncluster.id=someone-else\nnode.id=3\n",
    )
    .unwrap();
    let config = BrokerConfig::new(&dir, "127.0.0.1:0".parse().unwrap());
    let error = Broker::start(&config, &mut |_| {}).unwrap_err();
    assert!(
        matches!(error, BrokerError::ForeignDataDir { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("someone-else"), "{error}");

    // Ours, but the Kafka data says another cluster id.
    std::fs::write(
        dir.join("orderflow-broker.properties"),
        "cluster.id=ours\ncontroller.port=19999\n",
    )
    .unwrap();
    let error = Broker::start(&config, &mut |_| {}).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("cluster id someone-else, expected ours"),
        "{error}"
    );
}

#[test]
fn no_java_is_refused_with_what_to_install() {
    let mut config = BrokerConfig::new(temp("java"), "127.0.0.1:0".parse().unwrap());
    config.java = PathBuf::from("/nonexistent/bin/java");
    let error = Broker::start(&config, &mut |_| {}).unwrap_err();
    assert!(matches!(error, BrokerError::NoJava { .. }), "{error}");
    assert!(error.to_string().contains("Java 17"), "{error}");
}

#[test]
fn a_failed_fetch_says_what_to_do() {
    let mut config = BrokerConfig::new(temp("fetch"), "127.0.0.1:0".parse().unwrap());
    config.kafka_home = Some(temp("no-kafka-here").join("missing"));
    let error = Broker::start(&config, &mut |_| {}).unwrap_err();
    assert!(matches!(error, BrokerError::Fetch { .. }), "{error}");
    assert!(error.to_string().contains("KAFKA_HOME"), "{error}");
}
