//! The processes the harness starts from its own binary, so each is measured alone:
//! `engine` (orderflow's engine running named processors, as `orderflow run` does)
//! and `copy` (B0, the raw rdkafka consume→produce loop with no decoding).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use orderflow_runtime::engine::{self, EngineConfig};
use orderflow_runtime::registry::RegistryClient;
use orderflow_runtime::topology;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::cluster::repo_root;

/// Runs orderflow's engine with `processors` until SIGTERM. The app name and the
/// guarantee come from the environment the harness sets (`ORDERFLOW_APP`,
/// `ORDERFLOW_PROCESSING`), as topology.yaml reads them.
pub async fn engine(
    bootstrap: &str,
    registry: &str,
    processors: Vec<String>,
) -> anyhow::Result<()> {
    let catalog = orderflow_pipelines::catalog();
    let topology = Arc::new(
        topology::load(&repo_root().join("topology.yaml"), &catalog)
            .map_err(|e| anyhow!("topology.yaml: {e}"))?,
    );
    let registry = Arc::new(RegistryClient::remote(registry)?);
    let mut config = EngineConfig::new(bootstrap);
    config.processors = processors;
    config.client_overrides.extend(bench_kafka_overrides()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    engine::run(topology, catalog, registry, config, async move {
        term.recv().await;
    })
    .await?;
    Ok(())
}

/// Extra librdkafka settings for an experiment or a profile of the measured
/// processes, `ORDERFLOW_BENCH_KAFKA=key=value,...`.
pub fn bench_kafka_overrides() -> anyhow::Result<Vec<(String, String)>> {
    let Ok(extra) = std::env::var("ORDERFLOW_BENCH_KAFKA") else {
        return Ok(Vec::new());
    };
    extra
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("ORDERFLOW_BENCH_KAFKA: {pair:?} is not key=value"))
        })
        .collect()
}

/// B0: copies every record of `from` to `to` (same key and value bytes) in a
/// consumer group until SIGTERM. Offsets are stored after each send and committed
/// in the background, as a plain at-least-once client does.
pub fn copy(bootstrap: &str, group: &str, from: &str, to: &str) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let waiter = std::thread::spawn(move || {
        runtime.block_on(async {
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                term.recv().await;
            }
        });
        flag.store(true, Ordering::SeqCst);
    });
    let mut common = ClientConfig::new();
    common
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "4");
    let consumer: BaseConsumer = common
        .clone()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let producer: BaseProducer = common
        .clone()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("compression.type", "none")
        .create()?;
    consumer.subscribe(&[from])?;
    eprintln!("copy: {from} -> {to} in group {group}");
    while !stop.load(Ordering::SeqCst) {
        let Some(message) = consumer.poll(Duration::from_millis(50)) else {
            producer.poll(Duration::ZERO);
            continue;
        };
        let message = message?;
        let mut record = BaseRecord::<[u8], [u8]>::to(to);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        producer.poll(Duration::ZERO);
        consumer.store_offset_from_message(&message)?;
    }
    producer.flush(Duration::from_secs(30))?;
    // Nothing stored since the last background commit is not an error.
    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        other => other?,
    }
    drop(waiter);
    Ok(())
}
