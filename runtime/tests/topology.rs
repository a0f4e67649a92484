//! topology.yaml validation: every error kind, each with its line and column, and all
//! errors of a file reported together.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{catalog, fixtures};
use orderflow_runtime::topology::{TopologyErrors, load_str};

fn check(yaml: &str) -> Result<(), TopologyErrors> {
    load_str(yaml, "topology.yaml", &fixtures(), &|_| None, &catalog()).map(|_| ())
}

fn errors(yaml: &str) -> Vec<String> {
    match check(yaml) {
        Ok(()) => panic!("expected errors in:\n{yaml}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts exactly one error, at `line:column`, on `path`, containing `words`.
fn one_error(yaml: &str, at: &str, path: &str, words: &str) {
    let errors = errors(yaml);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let prefix = if path.is_empty() {
        format!("topology.yaml:{at} ")
    } else {
        format!("topology.yaml:{at} {path}: ")
    };
    assert!(
        errors[0].starts_with(&prefix),
        "expected {prefix:?}..., got {:?}",
        errors[0]
    );
    assert!(
        errors[0].contains(words),
        "expected {words:?} in {:?}",
        errors[0]
    );
}

const BASE: &str = "\
app: t
topics:
  clicks:
    partitions: 2
    value: click.avsc
    ingress: true
  counts:
    partitions: 2
    value: count.avsc
stores:
  counts: {}
processors:
  counter:
    kind: counter
    inputs: [clicks]
    outputs: [counts]
    stores: [counts]
    timers:
      idle: { domain: wall_clock, after: 1m }
      session: { domain: stream_time, after: 30s }
";

#[test]
fn the_base_file_is_valid() {
    check(BASE).unwrap();
}

#[test]
fn unknown_key() {
    let yaml = BASE.replace("    stores: [counts]\n", "    stroes: [counts]\n");
    one_error(
        &yaml,
        "17:5",
        "processors.counter.stroes",
        "unknown field `stroes`",
    );
}

#[test]
fn wrong_value_type() {
    let yaml = BASE.replace(
        "    partitions: 2\n    value: count.avsc",
        "    partitions: two\n    value: count.avsc",
    );
    one_error(&yaml, "8:17", "topics.counts.partitions", "invalid type");
}

#[test]
fn unknown_store() {
    let yaml = BASE.replace("    stores: [counts]\n", "    stores: [count]\n");
    let errors = errors(&yaml);
    assert!(
        errors.contains(
            &"topology.yaml:17:14 processors.counter.stores: unknown store \"count\"".to_string()
        ),
        "{errors:#?}"
    );
    // The kind needs `counts`, and the declared store is now unused: both reported too.
    assert!(
        errors.iter().any(|e| e.contains("needs store \"counts\"")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(
            |e| e.starts_with("topology.yaml:11:3 stores.counts: store \"counts\" is not used")
        ),
        "{errors:#?}"
    );
}

#[test]
fn unknown_topic() {
    let yaml = BASE.replace("    outputs: [counts]\n", "    outputs: [counts, totals]\n");
    one_error(
        &yaml,
        "16:23",
        "processors.counter.outputs",
        "unknown topic \"totals\"",
    );
}

#[test]
fn duplicate_names() {
    let yaml = BASE.replace(
        "stores:\n  counts: {}\n",
        "stores:\n  counts: {}\n  counts: {}\n",
    );
    one_error(&yaml, "12:3", "", "duplicate key \"counts\"");
    let yaml = BASE.replace("    inputs: [clicks]\n", "    inputs: [clicks, clicks]\n");
    one_error(&yaml, "15:22", "processors.counter.inputs", "listed twice");
}

#[test]
fn missing_schema_file() {
    let yaml = BASE.replace("value: count.avsc", "value: counts.avsc");
    one_error(
        &yaml,
        "9:12",
        "topics.counts.value",
        "cannot read schema file \"counts.avsc\"",
    );
}

#[test]
fn schema_file_that_is_not_json_names_its_own_position() {
    let yaml = BASE.replace("value: count.avsc", "value: broken-json.avsc");
    one_error(
        &yaml,
        "9:12",
        "topics.counts.value",
        "broken-json.avsc:3:16 is not JSON",
    );
}

#[test]
fn schema_file_that_is_not_avro() {
    let yaml = BASE.replace("value: count.avsc", "value: broken-avro.avsc");
    one_error(
        &yaml,
        "9:12",
        "topics.counts.value",
        "broken-avro.avsc is not a valid Avro schema",
    );
}

#[test]
fn output_no_processor_may_write() {
    let yaml = BASE.replace("    outputs: [counts]\n", "    outputs: [counts, clicks]\n");
    let found = errors(&yaml);
    assert!(
        found[0].starts_with(
            "topology.yaml:16:23 processors.counter.outputs: \"clicks\" is an ingress topic"
        ),
        "{found:#?}"
    );
    let yaml = BASE
        .replace(
            "    outputs: [counts]\n",
            "    outputs: [counts, t-counts-changelog]\n",
        )
        .replace(
            "topics:\n",
            "topics:\n  t-counts-changelog:\n    partitions: 2\n    value: count.avsc\n",
        );
    let errors = errors(&yaml);
    assert!(errors.iter().any(|e| e.starts_with("topology.yaml:19:23 processors.counter.outputs: \"t-counts-changelog\" is the changelog of store \"counts\"")), "{errors:#?}");
}

#[test]
fn inputs_not_co_partitioned() {
    let yaml = BASE
        .replace("    inputs: [clicks]\n", "    inputs: [clicks, more]\n")
        .replace(
            "topics:\n",
            "topics:\n  more:\n    partitions: 3\n    value: click.avsc\n    ingress: true\n",
        );
    one_error(
        &yaml,
        "19:13",
        "processors.counter.inputs",
        "not co-partitioned (clicks has 2, more has 3)",
    );
}

#[test]
fn loop_without_a_store() {
    let yaml = "\
app: t
topics:
  a:
    partitions: 1
    value: click.avsc
  b:
    partitions: 1
    value: click.avsc
processors:
  ping:
    kind: relay
    inputs: [a]
    outputs: [b]
  pong:
    kind: relay
    inputs: [b]
    outputs: [a]
";
    let mut catalog = catalog();
    catalog.register("relay", |_| Ok(Box::new(Relay)));
    let errors = load_str(yaml, "topology.yaml", &fixtures(), &|_| None, &catalog)
        .unwrap_err()
        .0;
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string().split(": ").next(),
        Some("topology.yaml:13:15 processors.ping.outputs")
    );
    assert!(
        errors[0]
            .message
            .contains("\"b\" feeds back into pong (ping -> pong)"),
        "{}",
        errors[0]
    );
    // One processor writing what it reads is a loop too.
    let self_loop = yaml.replace("    outputs: [b]\n", "    outputs: [a]\n");
    let errors = load_str(
        &self_loop,
        "topology.yaml",
        &fixtures(),
        &|_| None,
        &catalog,
    )
    .unwrap_err()
    .0;
    assert!(
        errors.iter().any(|e| e.path == "processors.ping.outputs"
            && e.message.contains("\"a\" feeds back into ping")),
        "{errors:#?}"
    );
}

#[test]
fn a_loop_through_a_stateful_processor_is_allowed() {
    let yaml = BASE
        .replace(
            "processors:\n",
            "processors:\n  echo:\n    kind: relay\n    inputs: [counts]\n    outputs: [clicks2]\n",
        )
        .replace("    inputs: [clicks]\n", "    inputs: [clicks2]\n")
        .replace(
            "topics:\n",
            "topics:\n  clicks2:\n    partitions: 2\n    value: click.avsc\n",
        );
    let mut catalog = catalog();
    catalog.register("relay", |_| Ok(Box::new(Relay)));
    load_str(&yaml, "topology.yaml", &fixtures(), &|_| None, &catalog).unwrap();
}

#[test]
fn unknown_processor_kind() {
    let yaml = BASE.replace("    kind: counter\n", "    kind: countr\n");
    one_error(
        &yaml,
        "14:11",
        "processors.counter.kind",
        "unknown processor kind \"countr\" (known kinds: counter)",
    );
}

#[test]
fn undeclared_timer_and_bad_kind_config() {
    let yaml = BASE.replace("      session: { domain: stream_time, after: 30s }\n", "");
    one_error(
        &yaml,
        "18:5",
        "processors.counter.timers",
        "sets timer \"session\"",
    );
    let yaml = BASE.replace(
        "    kind: counter\n",
        "    kind: counter\n    config:\n      ignroe: [/a]\n",
    );
    one_error(
        &yaml,
        "16:7",
        "processors.counter.config.ignroe",
        "unknown field `ignroe`",
    );
    let yaml = BASE.replace("after: 1m", "after: 1 fortnight");
    one_error(
        &yaml,
        "19:42",
        "processors.counter.timers.idle.after",
        "invalid duration",
    );
}

#[test]
fn edges_and_sinks_are_checked() {
    let yaml = format!(
        "{BASE}edges:\n  http:\n    kind: http\n    publishes: [clicks, counts]\n    reads: [nope]\nsinks:\n  db:\n    kind: sql\n    inputs: [gone]\n"
    );
    let errors = errors(&yaml);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "topology.yaml:24:25 edges.http.publishes: \"counts\" is written by processors"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with("topology.yaml:25:13 edges.http.reads: unknown topic \"nope\""),
        "{errors:#?}"
    );
    assert!(
        errors[2].starts_with("topology.yaml:29:14 sinks.db.inputs: unknown topic \"gone\""),
        "{errors:#?}"
    );
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let yaml = BASE
        .replace(
            "    partitions: 2\n    value: count.avsc",
            "    partitions: 0\n    value: nothing.avsc",
        )
        .replace("    kind: counter\n", "    kind: nope\n")
        .replace("    stores: [counts]\n", "    stores: [counts, ghost]\n");
    let errors = errors(&yaml);
    assert_eq!(errors.len(), 4, "{errors:#?}");
    let lines: Vec<&str> = errors
        .iter()
        .map(|e| e.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "topology.yaml:8:17",
            "topology.yaml:9:12",
            "topology.yaml:14:11",
            "topology.yaml:17:22"
        ]
    );
}

#[test]
fn environment_substitution() {
    let yaml = BASE.replace(
        "    partitions: 2\n    value: count.avsc",
        "    partitions: ${COUNT_PARTS:-2}\n    value: count.avsc",
    );
    let env = |name: &str| (name == "COUNT_PARTS").then(|| "3".to_string());
    // 3 partitions for counts, fine (not an input of the counter).
    let t = load_str(&yaml, "topology.yaml", &fixtures(), &env, &catalog()).unwrap();
    assert_eq!(t.topics["counts"].partitions, 3);
    let t = load_str(&yaml, "topology.yaml", &fixtures(), &|_| None, &catalog()).unwrap();
    assert_eq!(t.topics["counts"].partitions, 2);
    let yaml = BASE.replace("app: t", "app: ${APP_NAME}");
    one_error(&yaml, "1:6", "", "APP_NAME is not set");
}

#[test]
fn yaml_syntax_errors_have_a_position() {
    let yaml = BASE.replace("    inputs: [clicks]\n", "    inputs: [clicks\n");
    let errors = errors(&yaml);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("topology.yaml:") && errors[0].contains("YAML syntax"),
        "{errors:#?}"
    );
}

#[test]
fn compiled_names_follow_kafka_streams() {
    let t = load_str(BASE, "topology.yaml", &fixtures(), &|_| None, &catalog()).unwrap();
    assert_eq!(
        t.stores["counts"].changelog.as_deref(),
        Some("t-counts-changelog")
    );
    assert_eq!(
        t.stores["counter-timers"].changelog.as_deref(),
        Some("t-counter-timers-changelog")
    );
    assert_eq!(t.processors["counter"].dead_letter, "t-counter-dlq");
    assert!(t.topics.contains_key("t-counter-dlq"));
    assert_eq!(t.topics["t-counts-changelog"].partitions, 2);
    assert_eq!(t.processors["counter"].commit_interval.as_millis(), 100);
}

struct Relay;

impl orderflow_runtime::Processor for Relay {}
