//! `orderflow topology check|describe` as a user runs them: the real binary on the
//! real topology.yaml, and on a broken copy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn orderflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(args)
        .current_dir(root())
        .env_remove("ORDERFLOW_TOPOLOGY")
        .env_remove("ORDERFLOW_PARTITIONS")
        .env_remove("ORDERFLOW_APP")
        .output()
        .expect("the binary runs")
}

#[test]
fn check_passes_on_the_real_topology() {
    let out = orderflow(&["topology", "check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("topology.yaml: ok"));
}

#[test]
fn check_reports_every_error_with_its_position_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("orderflow-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(root().join("topology.yaml")).unwrap();
    let broken = text
        .replacen("value: schemas/auth.users.avsc", "value: schemas/auth.user.avsc", 1)
        .replacen("    partitions: ${ORDERFLOW_PARTITIONS:-4}\n    cleanup: compact\n    value: schemas/auth.relations.avsc", "    partitons: 4\n    cleanup: compact\n    value: schemas/auth.relations.avsc", 1);
    let file = dir.join("topology.yaml");
    std::fs::write(&file, &broken).unwrap();
    // A serde error stops the first stage: the misspelt key is reported alone.
    let out = orderflow(&["topology", "check", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = broken
        .lines()
        .position(|l| l.contains("partitons"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!(
            "topology.yaml:{line}:5 topics.auth.relations.partitons: unknown field `partitons`"
        )),
        "{stderr}"
    );
    // With the key fixed, the compile stage names the missing schema file.
    let fixed = broken.replace("    partitons: 4\n", "    partitions: 4\n");
    std::fs::write(&file, &fixed).unwrap();
    std::fs::create_dir_all(dir.join("schemas")).unwrap();
    for entry in std::fs::read_dir(root().join("schemas")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("schemas").join(entry.file_name())).unwrap();
    }
    let out = orderflow(&["topology", "check", "--file", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = fixed
        .lines()
        .position(|l| l.contains("auth.user.avsc"))
        .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!("topology.yaml:{line}:12 topics.auth.users.value: cannot read schema file \"schemas/auth.user.avsc\"")),
        "{stderr}"
    );
    assert!(stderr.contains("1 error"), "{stderr}");
}

#[test]
fn describe_draws_the_real_topology() {
    let out = orderflow(&["topology", "describe", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let graph: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = orderflow(&["topology", "describe"]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    let dot =
        String::from_utf8(orderflow(&["topology", "describe", "--format", "dot"]).stdout).unwrap();
    assert!(dot.starts_with("digraph \"orderflow\" {"), "{dot}");

    assert_eq!(graph["app"], "orderflow");
    for topic in [
        "auth.commands",
        "auth.users",
        "auth.relations",
        "orders.commands",
        "orders.events",
        "payments.requests",
        "payments.results",
        "chat.messages",
        "chat.deliveries",
        "edge.replies",
    ] {
        assert!(
            graph["topics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == topic),
            "{topic}"
        );
        assert!(text.contains(topic), "{topic}");
    }
    assert!(
        text.contains("sources (ingress): auth.commands, chat.messages, orders.commands"),
        "{text}"
    );
    // Every processor with its inputs, outputs, stores and changelog topics.
    for p in graph["processors"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let inputs: Vec<&str> = p["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let outputs: Vec<&str> = p["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            text.contains(&format!(
                "{} --> [{name}] --> {}",
                inputs.join(", "),
                outputs.join(", ")
            )),
            "{name}: {text}"
        );
        for store in p["stores"].as_array().unwrap() {
            let store_name = store["name"].as_str().unwrap();
            let changelog = format!("orderflow-{store_name}-changelog");
            assert_eq!(store["changelog"], changelog.as_str());
            assert!(
                text.contains(&format!("store {store_name} -> changelog {changelog}")),
                "{text}"
            );
            assert!(dot.contains(&changelog));
        }
        assert_eq!(p["dead_letter"], format!("orderflow-{name}-dlq").as_str());
        assert!(dot.contains(&format!("\"processor:{name}\"")));
    }
    assert!(
        text.contains("http (http): publishes auth.commands, orders.commands"),
        "{text}"
    );
    assert!(
        text.contains("chat (ws): publishes chat.messages; reads chat.deliveries"),
        "{text}"
    );
    assert!(text.contains("orders-sql (sql) <- orders.events"), "{text}");
}

#[test]
fn unknown_format_is_refused() {
    let out = orderflow(&["topology", "describe", "--format", "svg"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format"));
}
