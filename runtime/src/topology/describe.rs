//! `orderflow topology describe`: the compiled graph as text (sources → processors →
//! sinks, with stores and their changelog topics), JSON, or Graphviz dot.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::compile::{TopicRole, Topology};
use super::config::format_duration;

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// JSON, for tools.
    Json,
    /// Graphviz dot.
    Dot,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "dot" => Ok(Format::Dot),
            other => Err(format!("unknown format {other:?}: use text, json or dot")),
        }
    }
}

/// Renders the topology in a format.
pub fn describe(topology: &Topology, format: Format) -> String {
    match format {
        Format::Text => text(topology),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&json_value(topology)).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Dot => dot(topology),
    }
}

fn role(role: &TopicRole) -> &'static str {
    match role {
        TopicRole::Ingress => "ingress",
        TopicRole::Data => "data",
        TopicRole::Changelog { .. } => "changelog",
        TopicRole::DeadLetter { .. } => "dead-letter",
    }
}

fn text(t: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "app: {}", t.app);
    let _ = writeln!(out, "\ntopics:");
    for topic in t.topics.values() {
        let schema = topic
            .schema
            .as_ref()
            .map(|s| format!("  value: {}", s.file))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<40} {:>2} partitions  {:<7}  {:<11}{schema}",
            topic.name,
            topic.partitions,
            topic.cleanup.to_string(),
            role(&topic.role),
        );
    }
    let sources: Vec<&str> = t
        .topics
        .values()
        .filter(|topic| topic.role == TopicRole::Ingress)
        .map(|topic| topic.name.as_str())
        .collect();
    let _ = writeln!(out, "\nsources (ingress): {}", sources.join(", "));
    let _ = writeln!(out, "\nprocessors:");
    for p in t.processors.values() {
        let _ = writeln!(
            out,
            "  {} (kind {}, {}, commit every {}, {} tasks)",
            p.name,
            p.kind,
            p.processing,
            format_duration(p.commit_interval),
            p.partitions
        );
        let _ = writeln!(
            out,
            "    {} --> [{}] --> {}",
            p.inputs.join(", "),
            p.name,
            if p.outputs.is_empty() {
                "(none)".to_string()
            } else {
                p.outputs.join(", ")
            }
        );
        if !p.global_tables.is_empty() {
            let _ = writeln!(out, "    global tables: {}", p.global_tables.join(", "));
        }
        for s in &p.stores {
            let changelog = t
                .stores
                .get(s)
                .and_then(|s| s.changelog.clone())
                .unwrap_or_else(|| "(no changelog)".to_string());
            let _ = writeln!(out, "    store {s} -> changelog {changelog}");
        }
        for (name, timer) in &p.timers {
            let _ = writeln!(
                out,
                "    timer {name}: {} after {}",
                timer.domain,
                format_duration(timer.after)
            );
        }
        let _ = writeln!(out, "    dead letters -> {}", p.dead_letter);
    }
    if !t.edges.is_empty() {
        let _ = writeln!(out, "\nedges:");
        for e in t.edges.values() {
            let _ = writeln!(
                out,
                "  {} ({}): publishes {}; reads {}",
                e.name,
                kind_name(&e.kind),
                list(&e.publishes),
                list(&e.reads)
            );
        }
    }
    if !t.sinks.is_empty() {
        let _ = writeln!(out, "\nsinks:");
        for s in t.sinks.values() {
            let _ = writeln!(
                out,
                "  {} ({}) <- {}",
                s.name,
                kind_name(&s.kind),
                list(&s.inputs)
            );
        }
    }
    out
}

/// The name a kind has in topology.yaml.
fn kind_name(kind: &impl serde::Serialize) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".to_string()
    } else {
        items.join(", ")
    }
}

fn json_value(t: &Topology) -> Value {
    let topics: Vec<Value> = t
        .topics
        .values()
        .map(|topic| {
            json!({
                "name": topic.name,
                "partitions": topic.partitions,
                "cleanup": topic.cleanup,
                "role": role(&topic.role),
                "value_schema": topic.schema.as_ref().map(|s| s.file.clone()),
            })
        })
        .collect();
    let processors: Vec<Value> = t
        .processors
        .values()
        .map(|p| {
            let stores: Vec<Value> = p
                .stores
                .iter()
                .map(|s| {
                    json!({
                        "name": s,
                        "changelog": t.stores.get(s).and_then(|s| s.changelog.clone()),
                    })
                })
                .collect();
            let timers: serde_json::Map<String, Value> = p
                .timers
                .iter()
                .map(|(name, timer)| {
                    (
                        name.clone(),
                        json!({"domain": timer.domain, "after_ms": timer.after.as_millis() as u64}),
                    )
                })
                .collect();
            json!({
                "name": p.name,
                "kind": p.kind,
                "inputs": p.inputs,
                "outputs": p.outputs,
                "stores": stores,
                "global_tables": p.global_tables,
                "timers": timers,
                "processing": p.processing,
                "commit_interval_ms": p.commit_interval.as_millis() as u64,
                "dead_letter": p.dead_letter,
                "tasks": p.partitions,
            })
        })
        .collect();
    let edges: Vec<Value> = t
        .edges
        .values()
        .map(
            |e| json!({"name": e.name, "kind": e.kind, "publishes": e.publishes, "reads": e.reads}),
        )
        .collect();
    let sinks: Vec<Value> = t
        .sinks
        .values()
        .map(|s| json!({"name": s.name, "kind": s.kind, "inputs": s.inputs}))
        .collect();
    json!({
        "app": t.app,
        "topics": topics,
        "processors": processors,
        "edges": edges,
        "sinks": sinks,
    })
}

fn dot(t: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph {:?} {{", t.app);
    let _ = writeln!(out, "  rankdir=LR;");
    for topic in t.topics.values() {
        if matches!(
            topic.role,
            TopicRole::DeadLetter { .. } | TopicRole::Changelog { .. }
        ) {
            continue;
        }
        let _ = writeln!(out, "  {:?} [shape=box];", format!("topic:{}", topic.name));
    }
    for p in t.processors.values() {
        let id = format!("processor:{}", p.name);
        let _ = writeln!(
            out,
            "  {id:?} [shape=ellipse, label={:?}];",
            format!("{}\n({})", p.name, p.kind)
        );
        for i in &p.inputs {
            let _ = writeln!(out, "  {:?} -> {id:?};", format!("topic:{i}"));
        }
        for g in &p.global_tables {
            let _ = writeln!(
                out,
                "  {:?} -> {id:?} [style=dashed, label=\"global\"];",
                format!("topic:{g}")
            );
        }
        for o in &p.outputs {
            let _ = writeln!(out, "  {id:?} -> {:?};", format!("topic:{o}"));
        }
        for s in &p.stores {
            let sid = format!("store:{s}");
            let changelog = t
                .stores
                .get(s)
                .and_then(|s| s.changelog.clone())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {sid:?} [shape=cylinder, label={:?}];",
                format!("{s}\n{changelog}")
            );
            let _ = writeln!(out, "  {id:?} -> {sid:?} [dir=both, style=dotted];");
        }
    }
    for e in t.edges.values() {
        let id = format!("edge:{}", e.name);
        let _ = writeln!(out, "  {id:?} [shape=house];");
        for p in &e.publishes {
            let _ = writeln!(out, "  {id:?} -> {:?};", format!("topic:{p}"));
        }
        for r in &e.reads {
            let _ = writeln!(
                out,
                "  {:?} -> {id:?} [style=dashed];",
                format!("topic:{r}")
            );
        }
    }
    for s in t.sinks.values() {
        let id = format!("sink:{}", s.name);
        let _ = writeln!(out, "  {id:?} [shape=invhouse];");
        for i in &s.inputs {
            let _ = writeln!(out, "  {:?} -> {id:?};", format!("topic:{i}"));
        }
    }
    let _ = writeln!(out, "}}");
    out
}
