//! The second stage of loading topology.yaml: resolve every name, read every schema,
//! check the graph, and collect all errors before failing, each with
//! `file:line:column dotted.path: message`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;

use super::config::{Cleanup, EdgeKind, Guarantee, SinkKind, TimeDomain, TopologyConfig};
use super::yaml::{Node, NodeKind, Pos};
use crate::processor::{Catalog, ProcessorSpec};

/// One error in topology.yaml (or a file it names).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopologyError {
    /// The file, as given to the loader.
    pub file: String,
    /// Where in it.
    pub pos: Pos,
    /// The dotted path of the offending value, for example `processors.order-saga.stores`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{} {}", self.file, self.pos, self.message)
        } else {
            write!(
                f,
                "{}:{} {}: {}",
                self.file, self.pos, self.path, self.message
            )
        }
    }
}

/// Every error found, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct TopologyErrors(pub Vec<TopologyError>);

impl fmt::Display for TopologyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyErrors {}

/// A compiled topology: every name resolved, every schema parsed.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The application id.
    pub app: String,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Topics by name, including the changelog and dead-letter topics the engine
    /// creates.
    pub topics: BTreeMap<String, Topic>,
    /// Stores by name.
    pub stores: BTreeMap<String, Store>,
    /// Processors by name.
    pub processors: BTreeMap<String, ProcessorNode>,
    /// Edges by name.
    pub edges: BTreeMap<String, Edge>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, Sink>,
    /// Replication factor for created topics.
    pub replication_factor: u16,
}

/// A topic.
#[derive(Debug, Clone)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: u32,
    /// Its cleanup policy.
    pub cleanup: Cleanup,
    /// What kind of topic it is.
    pub role: TopicRole,
    /// The value schema (Avro) for data topics; `None` for changelog and dead-letter
    /// topics, whose values are bytes.
    pub schema: Option<TopicSchema>,
}

/// A data topic's value schema.
#[derive(Debug, Clone)]
pub struct TopicSchema {
    /// The parsed schema.
    pub schema: Arc<Schema>,
    /// Its JSON text (defaults, docs and logical types kept), as registered under
    /// `<topic>-value`.
    pub text: Arc<str>,
    /// The `.avsc` file it came from, as written in topology.yaml.
    pub file: String,
}

/// What a topic is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRole {
    /// Written by edges or outside producers.
    Ingress,
    /// Written by processors.
    Data,
    /// The changelog of a store.
    Changelog {
        /// The store.
        store: String,
    },
    /// The dead-letter topic of a processor or a sink.
    DeadLetter {
        /// The processor or sink.
        processor: String,
    },
}

/// A state store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Its name.
    pub name: String,
    /// The processor that owns it.
    pub owner: Option<String>,
    /// Its changelog topic, `<app>-<store>-changelog`, unless disabled.
    pub changelog: Option<String>,
}

/// A processor.
#[derive(Debug, Clone)]
pub struct ProcessorNode {
    /// Its name.
    pub name: String,
    /// Its kind in the catalog.
    pub kind: String,
    /// Input topics.
    pub inputs: Vec<String>,
    /// Output topics.
    pub outputs: Vec<String>,
    /// Stores (the declared ones plus its timer store when it has timers).
    pub stores: Vec<String>,
    /// Global tables.
    pub global_tables: Vec<String>,
    /// Timers by name.
    pub timers: BTreeMap<String, TimerSpec>,
    /// The store that keeps its pending timers, `<processor>-timers`.
    pub timer_store: Option<String>,
    /// Processing guarantee.
    pub processing: Guarantee,
    /// Commit interval.
    pub commit_interval: Duration,
    /// Dead-letter topic.
    pub dead_letter: String,
    /// Partition count shared by its inputs (its task count).
    pub partitions: u32,
    /// What its kind's builder gets.
    pub spec: ProcessorSpec,
}

/// A named timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerSpec {
    /// Its clock.
    pub domain: TimeDomain,
    /// Its delay.
    pub after: Duration,
}

/// An edge.
#[derive(Debug, Clone)]
pub struct Edge {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: EdgeKind,
    /// Topics it writes.
    pub publishes: Vec<String>,
    /// Topics it reads.
    pub reads: Vec<String>,
    /// Its `config:` block.
    pub config: Option<Node>,
}

/// A sink.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: SinkKind,
    /// Topics it reads.
    pub inputs: Vec<String>,
    /// Where a record it cannot write goes: `<app>-<sink>-dlq`.
    pub dead_letter: String,
    /// Its `config:` block.
    pub config: Option<Node>,
}

impl Topology {
    /// The changelog topic name of a store: `<app>-<store>-changelog`.
    pub fn changelog_topic(app: &str, store: &str) -> String {
        format!("{app}-{store}-changelog")
    }

    /// The default dead-letter topic of a processor: `<app>-<processor>-dlq`.
    pub fn dead_letter_topic(app: &str, processor: &str) -> String {
        format!("{app}-{processor}-dlq")
    }

    /// The processors that read `topic` as an input.
    pub fn readers_of<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a ProcessorNode> {
        self.processors
            .values()
            .filter(move |p| p.inputs.iter().any(|t| t == topic))
    }

    /// The value schema of a data topic.
    pub fn schema(&self, topic: &str) -> Option<&TopicSchema> {
        self.topics.get(topic).and_then(|t| t.schema.as_ref())
    }
}

/// Loads and compiles a topology file, with `${VAR:-default}` taken from the process
/// environment. `.avsc` paths are relative to the file's directory.
pub fn load(path: &Path, catalog: &Catalog) -> Result<Topology, TopologyErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        TopologyErrors(vec![TopologyError {
            file: file.clone(),
            pos: Pos { line: 1, column: 1 },
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    load_str(
        &text,
        &file,
        &base,
        &|name| std::env::var(name).ok(),
        catalog,
    )
}

/// Loads and compiles topology text. `file` names it in errors; `.avsc` paths are
/// relative to `base`; `env` answers `${VAR}`.
pub fn load_str(
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    catalog: &Catalog,
) -> Result<Topology, TopologyErrors> {
    let err = |pos: Pos, path: &str, message: String| TopologyError {
        file: file.to_string(),
        pos,
        path: path.to_string(),
        message,
    };
    let mut root = Node::parse(text)
        .map_err(|e| TopologyErrors(vec![err(e.pos, "", format!("YAML syntax: {}", e.message))]))?;
    let mut subst = Vec::new();
    root.substitute(env, &mut subst);
    if !subst.is_empty() {
        return Err(TopologyErrors(
            subst
                .into_iter()
                .map(|e| err(e.pos, "", e.message))
                .collect(),
        ));
    }
    let config: TopologyConfig = root
        .deserialize()
        .map_err(|e| TopologyErrors(vec![err(e.pos.unwrap_or(root.pos), &e.path, e.message)]))?;
    let mut compiler = Compiler {
        file: file.to_string(),
        base: base.to_path_buf(),
        root: &root,
        errors: Vec::new(),
    };
    let topology = compiler.compile(config, catalog);
    let mut errors = compiler.errors;
    if errors.is_empty() {
        Ok(topology)
    } else {
        errors.sort();
        errors.dedup();
        Err(TopologyErrors(errors))
    }
}

struct Compiler<'a> {
    file: String,
    base: PathBuf,
    root: &'a Node,
    errors: Vec<TopologyError>,
}

/// A Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn legal_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Compiler<'_> {
    fn error(&mut self, path: &[&str], message: impl Into<String>) {
        // A mapping is reported at its key: where a block mapping's own mark falls is
        // less helpful than the line that names it.
        let pos = match self.root.get_path(path).map(|n| &n.kind) {
            Some(NodeKind::Map(_)) => self.root.key_pos(path),
            _ => self.root.pos_of(path),
        };
        self.push(pos, path, message.into());
    }

    fn error_at_key(&mut self, path: &[&str], message: impl Into<String>) {
        let pos = self.root.key_pos(path);
        self.push(pos, path, message.into());
    }

    /// An error about one element of a list, found by its value.
    fn error_in_list(&mut self, path: &[&str], list: &[String], item: &str, message: String) {
        let index = list.iter().position(|x| x == item).unwrap_or(0).to_string();
        let mut at: Vec<&str> = path.to_vec();
        at.push(&index);
        let pos = self.root.pos_of(&at);
        self.push(pos, path, message);
    }

    fn push(&mut self, pos: Pos, path: &[&str], message: String) {
        self.errors.push(TopologyError {
            file: self.file.clone(),
            pos,
            path: path.join("."),
            message,
        });
    }

    fn compile(&mut self, config: TopologyConfig, catalog: &Catalog) -> Topology {
        let app = config.app.clone();
        if !legal_topic_name(&app) {
            self.error(
                &["app"],
                format!("app {app:?} must be 1 to 249 of [a-zA-Z0-9._-]: it prefixes topic names"),
            );
        }

        let mut topics = BTreeMap::new();
        for (name, t) in &config.topics {
            let path = ["topics", name.as_str()];
            if !legal_topic_name(name) {
                self.error_at_key(
                    &path,
                    format!("topic name {name:?} must be 1 to 249 of [a-zA-Z0-9._-]"),
                );
            }
            if t.partitions == 0 {
                self.error(
                    &["topics", name, "partitions"],
                    "partitions must be at least 1",
                );
            }
            let schema = self.read_schema(name, &t.value);
            topics.insert(
                name.clone(),
                Topic {
                    name: name.clone(),
                    partitions: t.partitions.max(1),
                    cleanup: t.cleanup,
                    role: if t.ingress {
                        TopicRole::Ingress
                    } else {
                        TopicRole::Data
                    },
                    schema,
                },
            );
        }

        // Stores and their changelogs.
        let mut stores: BTreeMap<String, Store> = BTreeMap::new();
        for (name, s) in &config.stores {
            if !legal_topic_name(name) {
                self.error_at_key(
                    &["stores", name],
                    format!("store name {name:?} must be 1 to 249 of [a-zA-Z0-9._-]: it names a changelog topic"),
                );
            }
            let changelog = s.changelog.then(|| Topology::changelog_topic(&app, name));
            stores.insert(
                name.clone(),
                Store {
                    name: name.clone(),
                    owner: None,
                    changelog,
                },
            );
        }

        let mut processors = BTreeMap::new();
        for (name, p) in &config.processors {
            let node = self.processor(&app, name, p, &config, &topics, &mut stores, catalog);
            processors.insert(name.clone(), node);
        }

        for (name, store) in &stores {
            if store.owner.is_none() && config.stores.contains_key(name) {
                self.error_at_key(
                    &["stores", name],
                    format!("store {name:?} is not used by any processor"),
                );
            }
        }

        self.check_cycles(&processors, &topics);

        // Internal topics: changelogs and dead letters.
        for store in stores.values() {
            let (Some(changelog), Some(owner)) = (&store.changelog, &store.owner) else {
                continue;
            };
            let partitions = processors
                .get(owner)
                .map_or(1, |p: &ProcessorNode| p.partitions);
            if topics.contains_key(changelog) {
                self.error_at_key(
                    &["topics", changelog],
                    format!("topic {changelog:?} is the changelog of store {:?}: declare it under another name", store.name),
                );
                continue;
            }
            topics.insert(
                changelog.clone(),
                Topic {
                    name: changelog.clone(),
                    partitions,
                    cleanup: Cleanup::Compact,
                    role: TopicRole::Changelog {
                        store: store.name.clone(),
                    },
                    schema: None,
                },
            );
        }
        for p in processors.values() {
            if let Some(existing) = topics.get(&p.dead_letter) {
                if existing.role != TopicRole::Data || existing.schema.is_some() {
                    // A declared data topic cannot double as a dead-letter topic: its
                    // records are raw bytes of any topic, not the topic's schema.
                    self.error(
                        &["processors", &p.name, "dead_letter"],
                        format!(
                            "dead-letter topic {:?} is also a declared data topic",
                            p.dead_letter
                        ),
                    );
                }
                continue;
            }
            topics.insert(
                p.dead_letter.clone(),
                Topic {
                    name: p.dead_letter.clone(),
                    partitions: 1,
                    cleanup: Cleanup::Delete,
                    role: TopicRole::DeadLetter {
                        processor: p.name.clone(),
                    },
                    schema: None,
                },
            );
        }

        let edges = self.edges(&config, &topics);
        let sinks = self.sinks(&config, &topics, &app);
        for sink in sinks.values() {
            if topics.contains_key(&sink.dead_letter) {
                self.error_at_key(
                    &["sinks", &sink.name],
                    format!(
                        "sink {:?} needs the topic {:?} for its dead letters, but that name is already taken",
                        sink.name, sink.dead_letter
                    ),
                );
                continue;
            }
            topics.insert(
                sink.dead_letter.clone(),
                Topic {
                    name: sink.dead_letter.clone(),
                    partitions: 1,
                    cleanup: Cleanup::Delete,
                    role: TopicRole::DeadLetter {
                        processor: sink.name.clone(),
                    },
                    schema: None,
                },
            );
        }

        Topology {
            app,
            file: PathBuf::from(&self.file),
            topics,
            stores,
            processors,
            edges,
            sinks,
            replication_factor: config.defaults.replication_factor,
        }
    }

    fn read_schema(&mut self, topic: &str, file: &str) -> Option<TopicSchema> {
        let at = ["topics", topic, "value"];
        let path = self.base.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.error(&at, format!("cannot read schema file {file:?}: {e}"));
                return None;
            }
        };
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
            self.error(
                &at,
                format!(
                    "schema file {file}:{}:{} is not JSON: {e}",
                    e.line(),
                    e.column()
                ),
            );
            return None;
        }
        match Schema::parse_str(&text) {
            Ok(schema) => {
                // Not the Parsing Canonical Form: that drops defaults and logical
                // types, which the registry's compatibility checks need.
                let text = serde_json::to_string(&schema).unwrap_or(text);
                Some(TopicSchema {
                    schema: Arc::new(schema),
                    text: text.into(),
                    file: file.to_string(),
                })
            }
            Err(e) => {
                self.error(
                    &at,
                    format!("schema file {file} is not a valid Avro schema: {e}"),
                );
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn processor(
        &mut self,
        app: &str,
        name: &str,
        p: &super::config::ProcessorConfig,
        config: &TopologyConfig,
        topics: &BTreeMap<String, Topic>,
        stores: &mut BTreeMap<String, Store>,
        catalog: &Catalog,
    ) -> ProcessorNode {
        let base = ["processors", name];
        let spec = ProcessorSpec {
            name: name.to_string(),
            kind: p.kind.clone(),
            config: self.root.get_path(&["processors", name, "config"]).cloned(),
            path: base.join("."),
            pos: self.root.key_pos(&base),
        };
        if !legal_topic_name(name) {
            self.error_at_key(
                &base,
                format!("processor name {name:?} must be 1 to 249 of [a-zA-Z0-9._-]: it names a dead-letter topic"),
            );
        }

        // Inputs: declared, unique, co-partitioned.
        if p.inputs.is_empty() {
            self.error(
                &["processors", name, "inputs"],
                "a processor needs at least one input",
            );
        }
        self.check_list(name, "inputs", &p.inputs, topics, "topic");
        self.check_list(name, "outputs", &p.outputs, topics, "topic");
        self.check_list(name, "global_tables", &p.global_tables, topics, "topic");
        let counts: BTreeMap<&str, u32> = p
            .inputs
            .iter()
            .filter_map(|t| topics.get(t).map(|topic| (t.as_str(), topic.partitions)))
            .collect();
        let distinct: BTreeSet<u32> = counts.values().copied().collect();
        if distinct.len() > 1 {
            let listing: Vec<String> = counts.iter().map(|(t, n)| format!("{t} has {n}")).collect();
            self.error(
                &["processors", name, "inputs"],
                format!(
                    "inputs are not co-partitioned ({}): a processor's inputs need the same partition count",
                    listing.join(", ")
                ),
            );
        }
        let partitions = counts.values().copied().max().unwrap_or(1);

        // Outputs no processor may write.
        let dead_letters: BTreeSet<String> = config
            .processors
            .iter()
            .map(|(other, c)| {
                c.dead_letter
                    .clone()
                    .unwrap_or_else(|| Topology::dead_letter_topic(app, other))
            })
            .collect();
        for out in &p.outputs {
            if let Some(topic) = topics.get(out)
                && topic.role == TopicRole::Ingress
            {
                self.error_in_list(
                    &["processors", name, "outputs"],
                    &p.outputs,
                    out,
                    format!("{out:?} is an ingress topic (written by edges and outside producers): no processor may write it"),
                );
            }
            if let Some(store) = config
                .stores
                .keys()
                .find(|s| Topology::changelog_topic(app, s) == *out)
            {
                self.error_in_list(
                    &["processors", name, "outputs"],
                    &p.outputs,
                    out,
                    format!(
                        "{out:?} is the changelog of store {store:?}: only the store writes it"
                    ),
                );
            }
            if dead_letters.contains(out.as_str()) {
                self.error_in_list(
                    &["processors", name, "outputs"],
                    &p.outputs,
                    out,
                    format!("{out:?} is a dead-letter topic: only the engine writes it"),
                );
            }
        }
        for table in &p.global_tables {
            if p.inputs.contains(table) {
                self.error_in_list(
                    &["processors", name, "global_tables"],
                    &p.global_tables,
                    table,
                    format!("{table:?} is both an input and a global table"),
                );
            }
        }

        // Stores: declared, owned by one processor.
        self.check_names(
            name,
            "stores",
            &p.stores,
            |s| stores.contains_key(s),
            "store",
        );
        for s in &p.stores {
            if let Some(store) = stores.get_mut(s) {
                match &store.owner {
                    Some(owner) if owner != name => {
                        let owner = owner.clone();
                        self.error_in_list(
                            &["processors", name, "stores"],
                            &p.stores,
                            s,
                            format!("store {s:?} already belongs to processor {owner:?}: a store has one processor"),
                        );
                    }
                    _ => store.owner = Some(name.to_string()),
                }
            }
        }

        let mut timers = BTreeMap::new();
        for (timer, t) in &p.timers {
            if t.after.is_zero() {
                self.error(
                    &["processors", name, "timers", timer, "after"],
                    "a timer's delay must be more than zero",
                );
            }
            timers.insert(
                timer.clone(),
                TimerSpec {
                    domain: t.domain,
                    after: t.after,
                },
            );
        }
        let timer_store = (!timers.is_empty()).then(|| format!("{name}-timers"));
        if let Some(ts) = &timer_store {
            if stores.contains_key(ts) {
                self.error_at_key(
                    &["stores", ts],
                    format!(
                        "store name {ts:?} is reserved for the pending timers of processor {name:?}"
                    ),
                );
            } else {
                stores.insert(
                    ts.clone(),
                    Store {
                        name: ts.clone(),
                        owner: Some(name.to_string()),
                        changelog: Some(Topology::changelog_topic(app, ts)),
                    },
                );
            }
        }

        let dead_letter = match &p.dead_letter {
            Some(d) => {
                if !legal_topic_name(d) {
                    self.error(
                        &["processors", name, "dead_letter"],
                        format!("dead-letter topic {d:?} must be 1 to 249 of [a-zA-Z0-9._-]"),
                    );
                }
                d.clone()
            }
            None => Topology::dead_letter_topic(app, name),
        };

        // The kind: known, builds from its config, and gets what it declares.
        match catalog.get(&p.kind) {
            None => {
                let known: Vec<&str> = catalog.kinds().collect();
                self.error(
                    &["processors", name, "kind"],
                    format!(
                        "unknown processor kind {:?} (known kinds: {})",
                        p.kind,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            Some(build) => match build(&spec) {
                Err(e) => self.push(e.pos.unwrap_or(spec.pos), &[e.path.as_str()], e.message),
                Ok(instance) => {
                    for needed in instance.stores() {
                        if !p.stores.iter().any(|s| s == needed) {
                            self.error(
                                &["processors", name, "stores"],
                                format!("kind {:?} needs store {needed:?}: add it to stores (and declare it under the top-level stores)", p.kind),
                            );
                        }
                    }
                    for needed in instance.timers() {
                        if !p.timers.contains_key(*needed) {
                            self.error(
                                &["processors", name, "timers"],
                                format!("kind {:?} sets timer {needed:?}: declare it under timers with its domain and delay", p.kind),
                            );
                        }
                    }
                }
            },
        }

        let mut all_stores = p.stores.clone();
        all_stores.extend(timer_store.clone());
        ProcessorNode {
            name: name.to_string(),
            kind: p.kind.clone(),
            inputs: p.inputs.clone(),
            outputs: p.outputs.clone(),
            stores: all_stores,
            global_tables: p.global_tables.clone(),
            timers,
            timer_store,
            processing: p.processing.unwrap_or(config.defaults.processing),
            commit_interval: p.commit_interval.unwrap_or(config.defaults.commit_interval),
            dead_letter,
            partitions,
            spec,
        }
    }

    fn check_list(
        &mut self,
        processor: &str,
        field: &str,
        list: &[String],
        topics: &BTreeMap<String, Topic>,
        what: &str,
    ) {
        self.check_names(processor, field, list, |t| topics.contains_key(t), what);
    }

    fn check_names(
        &mut self,
        processor: &str,
        field: &str,
        list: &[String],
        known: impl Fn(&str) -> bool,
        what: &str,
    ) {
        let mut seen = BTreeSet::new();
        for (i, item) in list.iter().enumerate() {
            let index = i.to_string();
            let path = ["processors", processor, field];
            let pos = self.root.pos_of(&["processors", processor, field, &index]);
            if !seen.insert(item.as_str()) {
                self.push(pos, &path, format!("{what} {item:?} is listed twice"));
            } else if !known(item) {
                self.push(pos, &path, format!("unknown {what} {item:?}"));
            }
        }
    }

    /// A processor that (directly or through others) writes a topic it reads loops;
    /// the loop is only safe when some processor on it keeps state (a store decides
    /// when to stop, as the order saga and the payment authorizer do).
    fn check_cycles(
        &mut self,
        processors: &BTreeMap<String, ProcessorNode>,
        topics: &BTreeMap<String, Topic>,
    ) {
        // Edges p -> q when p outputs a topic q reads.
        let names: Vec<&str> = processors.keys().map(String::as_str).collect();
        let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut next: Vec<Vec<(usize, String)>> = vec![Vec::new(); names.len()];
        for (i, p) in processors.values().enumerate() {
            for out in &p.outputs {
                if !topics.contains_key(out) {
                    continue;
                }
                for q in processors.values().filter(|q| q.inputs.contains(out)) {
                    next[i].push((index[q.name.as_str()], out.clone()));
                }
            }
        }
        // Strongly connected components (Tarjan), then judge each looping one.
        let sccs = tarjan(&next);
        for scc in sccs {
            let looping = scc.len() > 1 || next[scc[0]].iter().any(|(q, _)| *q == scc[0]);
            if !looping {
                continue;
            }
            let members: BTreeSet<usize> = scc.iter().copied().collect();
            let stateful = scc.iter().any(|i| {
                let p = &processors[names[*i]];
                p.stores.iter().any(|s| Some(s) != p.timer_store.as_ref())
            });
            if stateful {
                continue;
            }
            let first = *members.iter().next().unwrap_or(&0);
            let (hop, topic) = next[first]
                .iter()
                .find(|(q, _)| members.contains(q))
                .cloned()
                .unwrap_or((first, String::new()));
            let mut chain: Vec<&str> = scc.iter().map(|i| names[*i]).collect();
            chain.sort_unstable();
            let p = names[first];
            let outputs = processors[p].outputs.clone();
            self.error_in_list(
                &["processors", p, "outputs"],
                &outputs,
                &topic,
                format!(
                    "{topic:?} feeds back into {} ({}), and no processor on that loop has a store: records would circle forever; put a stateful processor on the loop or write another topic",
                    names[hop],
                    chain.join(" -> "),
                ),
            );
        }
    }

    fn edges(
        &mut self,
        config: &TopologyConfig,
        topics: &BTreeMap<String, Topic>,
    ) -> BTreeMap<String, Edge> {
        let mut edges = BTreeMap::new();
        for (name, e) in &config.edges {
            for (field, list) in [("publishes", &e.publishes), ("reads", &e.reads)] {
                for (i, t) in list.iter().enumerate() {
                    let index = i.to_string();
                    let pos = self.root.pos_of(&["edges", name, field, &index]);
                    let path = ["edges", name.as_str(), field];
                    match topics.get(t) {
                        None => self.push(pos, &path, format!("unknown topic {t:?}")),
                        Some(topic) if field == "publishes" && topic.role != TopicRole::Ingress => self.push(
                            pos,
                            &path,
                            format!("{t:?} is written by processors: an edge may publish only to ingress topics (mark it `ingress: true` if outside producers own it)"),
                        ),
                        Some(_) => {}
                    }
                }
            }
            edges.insert(
                name.clone(),
                Edge {
                    name: name.clone(),
                    kind: e.kind,
                    publishes: e.publishes.clone(),
                    reads: e.reads.clone(),
                    config: self.root.get_path(&["edges", name, "config"]).cloned(),
                },
            );
        }
        edges
    }

    fn sinks(
        &mut self,
        config: &TopologyConfig,
        topics: &BTreeMap<String, Topic>,
        app: &str,
    ) -> BTreeMap<String, Sink> {
        let mut sinks = BTreeMap::new();
        for (name, s) in &config.sinks {
            if s.inputs.is_empty() {
                self.error(
                    &["sinks", name, "inputs"],
                    "a sink needs at least one input",
                );
            }
            for (i, t) in s.inputs.iter().enumerate() {
                if !topics.contains_key(t) {
                    let index = i.to_string();
                    let pos = self.root.pos_of(&["sinks", name, "inputs", &index]);
                    self.push(
                        pos,
                        &["sinks", name, "inputs"],
                        format!("unknown topic {t:?}"),
                    );
                }
            }
            sinks.insert(
                name.clone(),
                Sink {
                    name: name.clone(),
                    kind: s.kind,
                    inputs: s.inputs.clone(),
                    dead_letter: Topology::dead_letter_topic(app, name),
                    config: self.root.get_path(&["sinks", name, "config"]).cloned(),
                },
            );
        }
        sinks
    }
}

/// Tarjan's strongly connected components over an adjacency list.
fn tarjan(next: &[Vec<(usize, String)>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        next: &'a [Vec<(usize, String)>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        counter: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.counter);
        s.low[v] = s.counter;
        s.counter += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for (w, _) in &s.next[v] {
            let w = *w;
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            scc.sort_unstable();
            s.out.push(scc);
        }
    }
    let n = next.len();
    let mut s = State {
        next,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        counter: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}
