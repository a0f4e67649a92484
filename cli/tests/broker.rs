//! `orderflow broker` as a user runs it: it prints its address, a restart on the same
//! data dir keeps what was written, and `kill -9` of orderflow leaves no broker behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// Starts `orderflow broker` and returns it with the address it printed.
fn start(data: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["broker", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        // Its progress and, when it fails, why: in the test's output.
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = match line.trim().strip_prefix("kafka: ") {
        Some(addr) => addr.to_string(),
        None => {
            let status = child.wait().unwrap();
            let log = std::fs::read_to_string(data.join("broker.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "expected `kafka: host:port`, got {line:?}; orderflow broker exited with {status} (its stderr is above); the end of broker.log:\n{}",
                tail.join("\n")
            );
        }
    };
    (child, addr)
}

/// Pids of broker JVMs whose command line names `data`.
fn brokers_on(data: &Path) -> Vec<u32> {
    let needle = format!("{}/server.properties", data.display());
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("kafka.Kafka") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

fn topics(addr: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(20))
        .unwrap();
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

#[test]
fn kill_9_leaves_no_broker_and_a_restart_keeps_the_data() {
    let data = std::env::temp_dir().join(format!("orderflow-cli-broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let data = data.canonicalize().unwrap();

    let (mut first, addr) = start(&data);
    assert_eq!(brokers_on(&data).len(), 1);
    // Create a topic and write a record to it (flushed: acknowledged).
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .create()
        .unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .create()
            .unwrap();
    let created = block_on(admin.create_topics(
        &[rdkafka::admin::NewTopic::new(
            "kept",
            1,
            rdkafka::admin::TopicReplication::Fixed(1),
        )],
        &rdkafka::admin::AdminOptions::new(),
    ));
    created.unwrap().into_iter().for_each(|r| {
        r.unwrap();
    });
    producer
        .send(BaseRecord::to("kept").key("k").payload("v"))
        .unwrap();
    producer.flush(Duration::from_secs(20)).unwrap();
    drop(producer);

    // kill -9 the orderflow process: its broker must go too.
    first.kill().unwrap();
    first.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !brokers_on(&data).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        brokers_on(&data).is_empty(),
        "a broker outlived kill -9 of orderflow"
    );

    // A restart on the same data dir has the topic.
    let (mut second, addr) = start(&data);
    assert!(topics(&addr).contains(&"kept".to_string()));
    // Ctrl-C: a clean stop, exit 0, no broker left.
    let status = Command::new("kill")
        .args(["-INT", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(second.wait().unwrap().success());
    assert!(brokers_on(&data).is_empty());
    let _ = std::fs::remove_dir_all(&data);
}

/// Runs a future to completion on a small runtime (the admin client is async).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}
