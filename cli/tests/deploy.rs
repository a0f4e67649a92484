//! `orderflow topology plan|apply` as an operator runs them, on a broker of its own
//! (the topic names are the contract's) and the embedded registry over HTTP: a first
//! deploy is planned and applied, then nothing is left to change; an edited copy of
//! topology.yaml with unsafe changes (a partition count, compact -> delete, an
//! incompatible schema) is refused whole while its safe ones are listed; the safe
//! ones alone are applied, keeping a topic's other settings; and a store whose
//! changelog is gone while its processor's group has moved on is unsafe (and stops
//! `orderflow run`) until the operator accepts it by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use orderflow_runtime::broker::{Broker, BrokerConfig};
use orderflow_runtime::registry::{RegistryClient, SchemaStore, http};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const APP: &str = "deploy-test";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Cluster {
    brokers: String,
    registry: String,
}

impl Cluster {
    /// `orderflow topology <args>` on `file` (the real topology.yaml by default).
    /// `orderflow <args>` against this cluster as the app, from the repository root.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        command
            .args(args)
            .current_dir(root())
            .env("KAFKA_BROKERS", &self.brokers)
            .env("SCHEMA_REGISTRY_URL", &self.registry)
            .env("ORDERFLOW_APP", APP)
            .env_remove("ORDERFLOW_TOPOLOGY")
            .env_remove("ORDERFLOW_PARTITIONS")
            .env_remove("ORDERFLOW_KAFKA_CONFIG");
        command
    }

    fn orderflow(&self, args: &[&str], file: Option<&Path>) -> (Output, String, String) {
        let mut command = self.command(&[&["topology"], args].concat());
        if let Some(file) = file {
            command.args(["--file", file.to_str().unwrap()]);
        }
        let out = command.output().expect("the binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out, stdout, stderr)
    }

    fn admin(&self) -> AdminClient<DefaultClientContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .unwrap()
    }

    /// Topic name -> partition count.
    fn topics(&self) -> std::collections::BTreeMap<String, usize> {
        self.admin()
            .inner()
            .fetch_metadata(None, Duration::from_secs(30))
            .unwrap()
            .topics()
            .iter()
            .filter(|t| !t.partitions().is_empty())
            .map(|t| (t.name().to_string(), t.partitions().len()))
            .collect()
    }

    async fn topic_config(&self, topic: &str, name: &str) -> Option<String> {
        let results = self
            .admin()
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .unwrap();
        let resource = results.into_iter().next().unwrap().unwrap();
        resource.get(name).and_then(|e| e.value.clone())
    }

    async fn versions(&self, subject: &str) -> usize {
        RegistryClient::remote(&self.registry)
            .unwrap()
            .versions(subject)
            .await
            .unwrap()
            .len()
    }
}

/// A copy of topology.yaml and its schemas, edited.
fn edited(dir: &Path, edit: impl Fn(&mut String, &Path)) -> PathBuf {
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    for entry in std::fs::read_dir(root().join("schemas")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("schemas").join(entry.file_name())).unwrap();
    }
    let mut text = std::fs::read_to_string(root().join("topology.yaml")).unwrap();
    edit(&mut text, dir);
    let file = dir.join("topology.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Adds a field to a schema file.
fn add_field(dir: &Path, schema: &str, field: serde_json::Value) {
    let path = dir.join("schemas").join(schema);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["fields"].as_array_mut().unwrap().push(field);
    std::fs::write(&path, json.to_string()).unwrap();
}

fn replace(text: &mut String, from: &str, to: &str) {
    assert!(text.contains(from), "topology.yaml has no {from:?}");
    *text = text.replacen(from, to, 1);
}

/// Safe edits: orders.commands compacted, a field with a default on orders.events.
fn safe_edits(text: &mut String, dir: &Path) {
    replace(
        text,
        "    value: schemas/orders.commands.avsc",
        "    cleanup: compact\n    value: schemas/orders.commands.avsc",
    );
    add_field(
        dir,
        "orders.events.avsc",
        serde_json::json!({"name": "note", "type": ["null", "string"], "default": null}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_is_planned_applied_and_refused_when_unsafe() {
    let dir = std::env::temp_dir().join(format!("orderflow-deploy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let broker = {
        let data = dir.join("kafka");
        tokio::task::spawn_blocking(move || {
            Broker::start(
                &BrokerConfig::new(data, "127.0.0.1:0".parse().unwrap()),
                &mut |_| {},
            )
        })
        .await
        .unwrap()
        .unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cluster = Cluster {
        brokers: broker.bootstrap().to_string(),
        registry: format!("http://{}", listener.local_addr().unwrap()),
    };
    tokio::spawn(http::serve(
        listener,
        Arc::new(SchemaStore::new()),
        std::future::pending(),
    ));
    let topology = orderflow_runtime::topology::load_str(
        &std::fs::read_to_string(root().join("topology.yaml")).unwrap(),
        "topology.yaml",
        &root(),
        &|var| (var == "ORDERFLOW_APP").then(|| APP.to_string()),
        &orderflow_pipelines::catalog(),
    )
    .unwrap();
    let topics = topology.topics.len();
    let schemas = topology
        .topics
        .values()
        .filter(|t| t.schema.is_some())
        .count();

    // A first deploy: every topic and schema is new, and all of it is safe.
    let (out, stdout, stderr) = cluster.orderflow(&["plan", "--format", "json"], None);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["safe"], true, "{stdout}");
    assert_eq!(plan["app"], APP);
    let items = plan["items"].as_array().unwrap();
    assert_eq!(items.len(), topics + schemas, "{stdout}");
    assert!(items.iter().all(|i| i["kind"] == "create"), "{stdout}");
    assert!(
        items.iter().any(|i| i["target"] == "topic orders.events"
            && i["detail"]
                .as_str()
                .unwrap()
                .starts_with("create, 4 partitions, cleanup delete")),
        "{stdout}"
    );
    assert!(
        items
            .iter()
            .any(|i| i["target"] == format!("topic {APP}-orders-changelog")),
        "{stdout}"
    );
    // Planning changed nothing.
    assert!(!cluster.topics().contains_key("orders.events"));
    assert_eq!(cluster.versions("orders.events-value").await, 0);

    let (out, stdout, stderr) = cluster.orderflow(&["apply"], None);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("applied: {} changes", topics + schemas)),
        "{stdout}"
    );
    let on_cluster = cluster.topics();
    for topic in topology.topics.values() {
        assert_eq!(
            on_cluster.get(&topic.name),
            Some(&(topic.partitions as usize)),
            "{}",
            topic.name
        );
    }
    assert_eq!(
        cluster
            .topic_config("auth.users", "cleanup.policy")
            .await
            .as_deref(),
        Some("compact")
    );
    assert_eq!(cluster.versions("orders.events-value").await, 1);
    let (out, stdout, stderr) = cluster.orderflow(&["plan"], None);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("plan: no changes"), "{stdout}");
    assert!(
        stdout.contains(&format!("unchanged: {topics} topics, {schemas} schemas")),
        "{stdout}"
    );

    // A topic-level setting made by hand, which applying a cleanup change must keep.
    let admin = cluster.admin();
    let retention = AlterConfig::new(ResourceSpecifier::Topic("orders.commands"))
        .set("cleanup.policy", "delete")
        .set("retention.ms", "123456789");
    for r in admin
        .alter_configs([&retention], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }

    // Unsafe edits beside the safe ones: the plan lists both and apply refuses all.
    let unsafe_file = edited(&dir.join("unsafe"), |text, dir| {
        safe_edits(text, dir);
        replace(
            text,
            "  chat.messages:\n    doc: Chat messages as sent, keyed by room id.\n    partitions: ${ORDERFLOW_PARTITIONS:-4}",
            "  chat.messages:\n    doc: Chat messages as sent, keyed by room id.\n    partitions: 6",
        );
        replace(
            text,
            "    cleanup: compact\n    value: schemas/auth.relations.avsc",
            "    value: schemas/auth.relations.avsc",
        );
        add_field(
            dir,
            "payments.results.avsc",
            serde_json::json!({"name": "gateway", "type": "string"}),
        );
    });
    let (out, stdout, stderr) = cluster.orderflow(&["plan"], Some(&unsafe_file));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for line in [
        "! topic chat.messages: has 4 partitions on the cluster, topology.yaml says 6",
        // The store of the processor reading it follows its partitions.
        "! topic deploy-test-chat-history-changelog: has 4 partitions on the cluster, topology.yaml says 6: growing it moves the state of store chat-history",
        "! topic auth.relations: cleanup.policy compact -> delete",
        "! schema payments.results-value: schemas/payments.results.avsc is incompatible with version 1",
        "~ topic orders.commands: cleanup.policy delete -> compact",
        "~ schema orders.events-value: register a new version",
        "plan: 2 changes, 4 unsafe (marked !): apply refuses it",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "no line {line:?} in\n{stdout}"
        );
    }
    let (out, stdout, stderr) = cluster.orderflow(&["apply"], Some(&unsafe_file));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    assert_eq!(cluster.versions("orders.events-value").await, 1);
    assert_eq!(cluster.versions("payments.results-value").await, 1);
    assert_eq!(
        cluster
            .topic_config("orders.commands", "cleanup.policy")
            .await
            .as_deref(),
        Some("delete")
    );
    assert_eq!(cluster.topics().get("chat.messages"), Some(&4));

    // The safe edits alone are applied; the hand-made retention stays.
    let safe_file = edited(&dir.join("safe"), safe_edits);
    let (out, stdout, stderr) = cluster.orderflow(&["apply"], Some(&safe_file));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("set cleanup.policy of topic orders.commands to compact"),
        "{stdout}"
    );
    assert!(
        stdout.contains("registered schema orders.events-value"),
        "{stdout}"
    );
    assert!(stdout.contains("applied: 2 changes"), "{stdout}");
    assert_eq!(cluster.versions("orders.events-value").await, 2);
    assert_eq!(
        cluster
            .topic_config("orders.commands", "cleanup.policy")
            .await
            .as_deref(),
        Some("compact")
    );
    assert_eq!(
        cluster
            .topic_config("orders.commands", "retention.ms")
            .await
            .as_deref(),
        Some("123456789")
    );
    let (out, stdout, _) = cluster.orderflow(&["plan"], Some(&safe_file));
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("plan: no changes"), "{stdout}");

    // The app has read auth.commands (its group committed an offset there), then the
    // changelog of user-cache's users-by-email store is lost, and a changelog of a
    // store nobody declares is left over.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("auth.commands")
                .partition(0)
                .key("a@example.com")
                .payload(b"not read here"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", APP)
        .create()
        .unwrap();
    let mut read = TopicPartitionList::new();
    read.add_partition_offset("auth.commands", 0, Offset::Offset(1))
        .unwrap();
    group.commit(&read, CommitMode::Sync).unwrap();
    drop(group);
    let lost = format!("{APP}-users-by-email-changelog");
    let left_over = format!("{APP}-old-store-changelog");
    for r in admin
        .delete_topics(&[&lost], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    for r in admin
        .create_topics(
            [&NewTopic::new(&left_over, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = cluster.topics();
        if !now.contains_key(&lost) && now.contains_key(&left_over) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (out, stdout, stderr) = cluster.orderflow(&["plan"], Some(&safe_file));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with(&format!(
            "! store users-by-email: its changelog {lost} does not exist, but the consumer group {APP} has committed offsets for the inputs of user-cache (auth.commands/0 at 1)"
        )) && l.contains(&format!("(a renamed store? {left_over} exist)"))),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with(&format!(
            "- topic {left_over}: the changelog of a store topology.yaml no longer declares"
        ))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("+ topic {lost}: create")),
        "{stdout}"
    );
    let (out, _, stderr) = cluster.orderflow(&["apply"], Some(&safe_file));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !cluster.topics().contains_key(&lost),
        "a refused plan creates nothing"
    );
    // Nor does `orderflow run` recreate the changelog and start the store empty: it
    // stops, naming the store and the way out.
    let mut run = cluster
        .command(&["run", "--processor", "user-cache", "--file"])
        .arg(&safe_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            panic!("orderflow run started over the lost changelog instead of stopping");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the changelog {lost} of store users-by-email does not exist, but consumer group {APP} has committed offsets for the inputs of user-cache (auth.commands/0 at 1)"
        )) && stderr.contains("orderflow topology apply --allow 'store users-by-email'"),
        "{stderr}"
    );
    assert!(!cluster.topics().contains_key(&lost), "run created {lost}");
    // A name that is not an unsafe item is refused, not taken as a decision.
    let (out, _, stderr) = cluster.orderflow(
        &["plan", "--allow", "store users-by-mail"],
        Some(&safe_file),
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("names no unsafe item"), "{stderr}");
    // The operator accepts that the store starts empty: the rest is applied.
    let (out, stdout, stderr) = cluster.orderflow(
        &["apply", "--allow", "store users-by-email"],
        Some(&safe_file),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("- store users-by-email: accepted (--allow): its changelog"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("created topic {lost}")),
        "{stdout}"
    );
    assert!(cluster.topics().contains_key(&lost));

    // A cluster that cannot be reached is exit 2, with the reason.
    let unreachable = Cluster {
        brokers: cluster.brokers.clone(),
        registry: "http://127.0.0.1:9".to_string(),
    };
    let (out, _, stderr) = unreachable.orderflow(&["plan"], Some(&safe_file));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("schema registry"), "{stderr}");

    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
