//! docker-compose.yml, checked without a Docker engine: the services README.md names
//! exist, Kafka is one KRaft node whose internal topics have one replica, the
//! orderflow services set only env names `orderflow run` reads (and every one
//! DESIGN.md names) and only flags the binary has, every dependency and URL names a
//! service, and Prometheus and Grafana are wired to them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// The env names DESIGN.md's CLI section gives `orderflow run` ("named by config/env").
const DESIGN_RUN_ENV: [&str; 5] = [
    "KAFKA_BROKERS",
    "SCHEMA_REGISTRY_URL",
    "DATABASE_URL",
    "REDIS_URL",
    "JWT_SECRET",
];

/// The services the issue asks for, by the names docker-compose.yml gives them.
const REQUIRED_SERVICES: [&str; 8] = [
    "kafka",
    "schema-registry",
    "mysql",
    "redis",
    "prometheus",
    "grafana",
    "processors",
    "edges",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_yaml(relative: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|e| panic!("{relative} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "{relative}: one document");
    docs.remove(0)
}

/// The parsed file's services, by name.
struct Compose {
    services: BTreeMap<String, Yaml>,
}

impl Compose {
    fn load() -> Compose {
        let doc = load_yaml("docker-compose.yml");
        let services = doc["services"]
            .as_hash()
            .expect("docker-compose.yml has a services map")
            .iter()
            .map(|(name, service)| (name.as_str().unwrap().to_owned(), service.clone()))
            .collect();
        Compose { services }
    }

    fn service(&self, name: &str) -> &Yaml {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
    }

    /// Services built from the Dockerfile or running its image.
    fn orderflow_services(&self) -> Vec<(&str, &Yaml)> {
        self.services
            .iter()
            .filter(|(_, s)| {
                !s["build"].is_badvalue()
                    || s["image"]
                        .as_str()
                        .is_some_and(|i| i.starts_with("orderflow"))
            })
            .map(|(n, s)| (n.as_str(), s))
            .collect()
    }

    /// The orderflow services whose command is `orderflow run …`.
    fn run_services(&self) -> Vec<(&str, &Yaml)> {
        self.orderflow_services()
            .into_iter()
            .filter(|(_, s)| command(s).first().map(String::as_str) == Some("run"))
            .collect()
    }
}

/// A service's command as arguments (a list, or a string split on spaces).
fn command(service: &Yaml) -> Vec<String> {
    match &service["command"] {
        Yaml::Array(args) => args.iter().map(scalar).collect(),
        Yaml::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

fn scalar(value: &Yaml) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A service's environment, from either compose form (map, or `NAME=value` list).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(map) => map.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        Yaml::Array(items) => items
            .iter()
            .map(|item| {
                let item = scalar(item);
                let (name, value) = item.split_once('=').unwrap_or((&item, ""));
                (name.to_owned(), value.to_owned())
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("environment is neither a map nor a list: {other:?}"),
    }
}

/// The names following `prefix` (e.g. `env = "`) wherever it occurs in `text`.
fn names_after(text: &str, prefix: &str, into: &mut BTreeSet<String>) {
    for (at, _) in text.match_indices(prefix) {
        let name: String = text[at + prefix.len()..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            into.insert(name);
        }
    }
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// Every env name the orderflow binary reads, from the source: clap's `env = "…"`
/// attributes, `std::env::var("…")`/`var_os("…")` and `from_env("…")` in the crates it
/// is built from, `${…}` in topology.yaml (which `orderflow run` loads) and the
/// Dockerfile's `ENV` lines.
fn env_the_binary_reads() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut files = Vec::new();
    for krate in ["cli", "runtime", "pipelines", "connectors"] {
        rust_files(&root().join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 10, "found the crates' sources");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for prefix in ["env = \"", "env::var(\"", "env::var_os(\"", "from_env(\""] {
            names_after(&text, prefix, &mut names);
        }
    }
    for line in read("topology.yaml").lines() {
        if !line.trim_start().starts_with('#') {
            names_after(line, "${", &mut names);
        }
    }
    for line in read("Dockerfile").lines() {
        if let Some(rest) = line.strip_prefix("ENV ") {
            names_after(&format!(" {rest}"), " ", &mut names);
        }
    }
    names
}

/// The `--long` flags `orderflow <subcommand> --help` lists.
fn flags_of(subcommand: &str) -> BTreeSet<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(output.status.success(), "orderflow {subcommand} --help");
    String::from_utf8(output.stdout)
        .unwrap()
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_owned)
        .collect()
}

/// The host a URL or `host:port` list entry names, past any `${…}` in its user info.
fn host_of(value: &str) -> &str {
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split([':', '/']).next().unwrap()
}

#[test]
fn the_services_exist_and_readme_names_them_all() {
    let compose = Compose::load();
    for name in REQUIRED_SERVICES {
        compose.service(name);
    }
    assert!(
        compose.service("mysql")["image"]
            .as_str()
            .unwrap()
            .starts_with("mysql:8")
    );
    assert!(
        compose.service("redis")["image"]
            .as_str()
            .unwrap()
            .starts_with("redis:7")
    );
    let run: Vec<&str> = compose.run_services().iter().map(|(n, _)| *n).collect();
    assert_eq!(
        run,
        ["edges", "processors"],
        "the services running `orderflow run`"
    );

    let readme = read("README.md");
    let section = readme
        .split_once("\n## Containers\n")
        .expect("README.md has a Containers section")
        .1;
    let section = section.split("\n## ").next().unwrap();
    assert!(
        section.contains("docker compose up"),
        "it says how to start it"
    );
    let named: BTreeSet<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("- `"))
        .map(|rest| rest.split('`').next().unwrap())
        .collect();
    assert!(
        !named.is_empty(),
        "the section lists the services as - `name`: …"
    );
    for name in &named {
        compose.service(name);
    }
    let all: BTreeSet<&str> = compose.services.keys().map(String::as_str).collect();
    assert_eq!(named, all, "README.md lists every service, and only those");
}

#[test]
fn kafka_is_one_kraft_node_with_single_replica_internal_topics() {
    let compose = Compose::load();
    let kafka = compose.service("kafka");
    let pom = read("deploy/kafka/pom.xml");
    let version = pom
        .split_once("<kafka.version>")
        .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
        .expect("deploy/kafka/pom.xml pins kafka.version")
        .0;
    assert_eq!(
        kafka["image"].as_str(),
        Some(format!("apache/kafka:{version}").as_str()),
        "the broker version the tests run"
    );

    let env = environment(kafka);
    let get = |name: &str| {
        env.get(name)
            .unwrap_or_else(|| panic!("kafka sets {name}"))
            .as_str()
    };
    let roles: BTreeSet<&str> = get("KAFKA_PROCESS_ROLES").split(',').collect();
    assert_eq!(roles, BTreeSet::from(["broker", "controller"]));
    for name in [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ] {
        assert_eq!(get(name), "1", "{name}");
    }
    let voters = get("KAFKA_CONTROLLER_QUORUM_VOTERS");
    assert!(!voters.contains(','), "one voter: {voters}");
    assert_eq!(voters.split('@').next(), Some(get("KAFKA_NODE_ID")));
    assert!(!get("CLUSTER_ID").is_empty());
    assert!(
        kafka["healthcheck"]["test"].as_vec().is_some(),
        "kafka has a healthcheck"
    );
}

#[test]
fn orderflow_services_set_the_env_run_reads_and_only_that() {
    let compose = Compose::load();
    let reads = env_the_binary_reads();
    assert!(
        reads.contains("KAFKA_BROKERS") && reads.contains("ORDERFLOW_METRICS"),
        "the scan finds clap's env attributes: {reads:?}"
    );
    let allowed: BTreeSet<String> = reads
        .iter()
        .cloned()
        .chain(DESIGN_RUN_ENV.iter().map(|n| (*n).to_owned()))
        .collect();

    let mut set_by_run = BTreeSet::new();
    for (name, service) in compose.orderflow_services() {
        for var in environment(service).keys() {
            assert!(
                allowed.contains(var),
                "service {name} sets {var}, which orderflow does not read (it reads {allowed:?})"
            );
        }
    }
    for (name, service) in compose.run_services() {
        let env = environment(service);
        for var in ["KAFKA_BROKERS", "SCHEMA_REGISTRY_URL"] {
            assert!(env.contains_key(var), "service {name} sets {var}");
        }
        set_by_run.extend(env.into_keys());
    }
    for name in DESIGN_RUN_ENV {
        assert!(
            set_by_run.contains(name),
            "DESIGN.md names {name} for `orderflow run`; no run service sets it"
        );
    }
    // The secret has no default in the file.
    let secret = &environment(compose.service("edges"))["JWT_SECRET"];
    assert!(secret.starts_with("${JWT_SECRET:?"), "{secret}");
}

#[test]
fn orderflow_commands_use_flags_the_binary_has() {
    let compose = Compose::load();
    let mut unknown = Vec::new();
    for (name, service) in compose.orderflow_services() {
        let args = command(service);
        let subcommand = args
            .first()
            .unwrap_or_else(|| panic!("{name} has a command"));
        let known = flags_of(subcommand);
        for arg in &args[1..] {
            if let Some(flag) = arg.strip_prefix("--") {
                let flag = format!("--{}", flag.split('=').next().unwrap());
                if !known.contains(&flag) {
                    unknown.push(format!(
                        "service {name}: `orderflow {subcommand}` has no {flag} (it has {known:?})"
                    ));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
}

#[test]
fn dependencies_urls_and_healthchecks_name_services() {
    let compose = Compose::load();
    for (name, service) in &compose.services {
        match &service["depends_on"] {
            Yaml::Hash(deps) => {
                for (target, how) in deps {
                    let target = target.as_str().unwrap();
                    let dep = compose.service(target);
                    if how["condition"].as_str() == Some("service_healthy") {
                        assert!(
                            !dep["healthcheck"].is_badvalue(),
                            "{name} waits for {target} to be healthy; it has no healthcheck"
                        );
                    }
                }
            }
            Yaml::Array(deps) => {
                for target in deps {
                    compose.service(target.as_str().unwrap());
                }
            }
            Yaml::BadValue => {}
            other => panic!("{name}: depends_on {other:?}"),
        }
    }
    for (name, service) in compose.orderflow_services() {
        let env = environment(service);
        assert!(
            !service["healthcheck"].is_badvalue(),
            "{name} has a healthcheck"
        );
        let depends = &service["depends_on"];
        for var in [
            "KAFKA_BROKERS",
            "SCHEMA_REGISTRY_URL",
            "DATABASE_URL",
            "REDIS_URL",
        ] {
            let Some(value) = env.get(var) else { continue };
            for entry in value.split(',') {
                let host = host_of(entry);
                compose.service(host);
                assert_eq!(
                    depends[host]["condition"].as_str(),
                    Some("service_healthy"),
                    "{name} ({var}) starts once {host} is healthy"
                );
            }
        }
    }
}

#[test]
fn prometheus_scrapes_every_run_service_and_grafana_reads_prometheus() {
    let compose = Compose::load();
    let mounts = |service: &str| -> Vec<String> {
        compose.service(service)["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .map(scalar)
            .collect()
    };
    assert!(
        mounts("prometheus")
            .iter()
            .any(|m| m.starts_with("./deploy/prometheus.yml:")),
        "prometheus mounts deploy/prometheus.yml"
    );
    assert!(
        mounts("grafana")
            .iter()
            .any(|m| m.starts_with("./deploy/grafana/provisioning:")),
        "grafana mounts deploy/grafana/provisioning"
    );

    // (service, port) pairs Prometheus scrapes.
    let prometheus = load_yaml("deploy/prometheus.yml");
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"].as_vec().unwrap() {
        for sd in job["dns_sd_configs"].as_vec().into_iter().flatten() {
            let port = sd["port"].as_i64().unwrap();
            for host in sd["names"].as_vec().unwrap() {
                scraped.insert((host.as_str().unwrap().to_owned(), port));
            }
        }
        for sc in job["static_configs"].as_vec().into_iter().flatten() {
            for target in sc["targets"].as_vec().unwrap() {
                let (host, port) = target.as_str().unwrap().split_once(':').unwrap();
                scraped.insert((host.to_owned(), port.parse().unwrap()));
            }
        }
    }
    for (host, _) in &scraped {
        assert!(
            host == "localhost" || compose.services.contains_key(host),
            "prometheus scrapes {host}, not a service"
        );
    }
    for (name, service) in compose.run_services() {
        // Metrics on ORDERFLOW_METRICS, or on the HTTP edge's own listener.
        let args = command(service);
        let address = environment(service)
            .get("ORDERFLOW_METRICS")
            .cloned()
            .or_else(|| {
                args.iter()
                    .position(|a| a == "--http")
                    .map(|i| args[i + 1].clone())
            })
            .unwrap_or_else(|| panic!("{name} serves /metrics somewhere"));
        let port: i64 = address.rsplit_once(':').unwrap().1.parse().unwrap();
        assert!(
            scraped.contains(&(name.to_owned(), port)),
            "prometheus scrapes {name}:{port} ({scraped:?})"
        );
    }

    let datasources = load_yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let source = &datasources["datasources"][0];
    assert_eq!(source["type"].as_str(), Some("prometheus"));
    let url = source["url"].as_str().unwrap();
    assert_eq!(host_of(url), "prometheus", "{url}");
}
