//! Redeploying topology.yaml (`orderflow topology plan|apply`): what deploying the
//! file would change on a running cluster and schema registry, read from them and not
//! from any record of an earlier deploy; whether each change is safe for the records
//! and the state already there; and applying a plan that is.
//!
//! A plan compares, for the app's consumer group:
//! - every declared topic (data, changelog and dead-letter topics) with the cluster's:
//!   missing ones are created; another partition count is unsafe (counts cannot
//!   shrink, and growing one moves keys to other partitions, away from their state);
//!   `delete` → `compact` is a change, `compact` → `delete` unsafe (a table read from
//!   its beginning would lose every row older than the retention);
//! - every value schema with the versions under `<topic>-value`: a first version, a
//!   new version the registry finds compatible, or unsafe when it does not;
//! - every store with its changelog: a store whose changelog does not exist while its
//!   processor's inputs have committed offsets would start empty and resume after
//!   records it never saw (a renamed store): unsafe;
//! - changelog and dead-letter topics of the app that no store or processor declares
//!   any more: kept, and noted.
//!
//! Nothing is ever deleted, and [`apply`] refuses a plan with an unsafe item whole,
//! unless the operator accepts that item by name ([`Plan::accept`], `--allow`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ConfigSource, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use serde::Serialize;

use crate::engine::{EngineConfig, EngineError, create_missing_topics};
use crate::registry::{RegistryClient, RegistryError};
use crate::topology::compile::TopicRole;
use crate::topology::{Cleanup, Topology};

/// What one item of a plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Something new: a topic, a subject's first schema.
    Create,
    /// Something that changes and may: a compatible schema, a topic's cleanup policy.
    Change,
    /// Something that must not happen as it is: [`apply`] refuses the whole plan.
    Unsafe,
    /// Something worth knowing that apply leaves as it is.
    Note,
}

impl Kind {
    fn sign(self) -> char {
        match self {
            Kind::Create => '+',
            Kind::Change => '~',
            Kind::Unsafe => '!',
            Kind::Note => '-',
        }
    }
}

/// One finding of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    /// What it is.
    pub kind: Kind,
    /// What it is about: `topic orders.events`, `schema orders.events-value`,
    /// `store orders`.
    pub target: String,
    /// What would happen, or why it must not.
    pub detail: String,
    #[serde(skip)]
    action: Option<Action>,
}

/// What [`apply`] does for an item.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Create a declared topic (all missing ones are created together).
    CreateTopic,
    /// Set a topic's cleanup policy, keeping its other topic-level settings.
    SetCleanup {
        topic: String,
        cleanup: Cleanup,
        keep: Vec<(String, String)>,
    },
    /// Register a topic's value schema under its subject.
    Register { subject: String, text: String },
}

/// What deploying a topology would do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The app (its consumer group and the prefix of its changelogs).
    pub app: String,
    /// What changes, what must not, and what is noted, topics first.
    pub items: Vec<Item>,
    /// Declared topics already as declared.
    pub unchanged_topics: usize,
    /// Value schemas already registered.
    pub unchanged_schemas: usize,
    /// Whether [`apply`] would go ahead.
    pub safe: bool,
}

impl Plan {
    fn new(app: &str, items: Vec<Item>, unchanged_topics: usize, unchanged_schemas: usize) -> Self {
        let safe = items.iter().all(|i| i.kind != Kind::Unsafe);
        Plan {
            app: app.to_string(),
            items,
            unchanged_topics,
            unchanged_schemas,
            safe,
        }
    }

    /// The items of one kind.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(move |i| i.kind == kind)
    }

    /// Accepts the unsafe items about `targets` (as printed: `store orders`, `topic
    /// chat.messages`): they become notes, so [`apply`] goes ahead with the rest and
    /// leaves them as they are. For what the operator has decided, such as a new store
    /// on a running processor that is to start empty. A target that names no unsafe
    /// item is an error (a typo must not pass for a decision).
    pub fn accept(&mut self, targets: &[String]) -> Result<(), DeployError> {
        for target in targets {
            let mut found = false;
            for item in self
                .items
                .iter_mut()
                .filter(|i| i.kind == Kind::Unsafe && &i.target == target)
            {
                item.kind = Kind::Note;
                item.detail = format!("accepted (--allow): {}", item.detail);
                found = true;
            }
            if !found {
                return Err(DeployError::NotUnsafe(target.clone()));
            }
        }
        self.safe = self.items.iter().all(|i| i.kind != Kind::Unsafe);
        Ok(())
    }

    /// The items [`apply`] would carry out.
    pub fn changes(&self) -> usize {
        self.items.iter().filter(|i| i.action.is_some()).count()
    }

    /// The plan as text: one line per item, then the unchanged counts and a verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for item in &self.items {
            out.push_str(&format!(
                "{} {}: {}\n",
                item.kind.sign(),
                item.target,
                item.detail
            ));
        }
        out.push_str(&format!(
            "unchanged: {} topic{}, {} schema{}\n",
            self.unchanged_topics,
            plural(self.unchanged_topics),
            self.unchanged_schemas,
            plural(self.unchanged_schemas)
        ));
        let changes = self.changes();
        let unsafe_items = self.of(Kind::Unsafe).count();
        out.push_str(&if unsafe_items > 0 {
            format!(
                "plan: {changes} change{}, {unsafe_items} unsafe (marked !): apply refuses it (unless each is accepted with --allow '<target>')\n",
                plural(changes)
            )
        } else if changes == 0 {
            "plan: no changes\n".to_string()
        } else {
            format!(
                "plan: {changes} change{}, all safe: `orderflow topology apply` makes them\n",
                plural(changes)
            )
        });
        out
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Why a plan could not be made or applied.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The cluster could not be read or changed.
    #[error("{context}: {error} (is the broker reachable at bootstrap.servers?)")]
    Kafka {
        /// What was being done.
        context: String,
        /// What librdkafka said.
        error: KafkaError,
    },
    /// The broker refused a change.
    #[error("{context}: the broker answered {code}")]
    Refused {
        /// What was being done.
        context: String,
        /// The broker's error.
        code: String,
    },
    /// The schema registry could not be read, or refused a schema.
    #[error("schema registry: {0}")]
    Registry(#[from] RegistryError),
    /// Creating the topics failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// `--allow` named something that is not an unsafe item of the plan.
    #[error(
        "--allow {0:?} names no unsafe item of the plan (targets are written as the plan prints them, e.g. \"store orders\")"
    )]
    NotUnsafe(String),
    /// The plan has unsafe items: nothing was applied.
    #[error("the plan has {0} unsafe item(s) (marked !): nothing was applied")]
    Unsafe(usize),
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> DeployError {
    let context = context.into();
    move |error| DeployError::Kafka { context, error }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// A topic as the cluster has it.
#[derive(Debug)]
struct Existing {
    partitions: usize,
    replicas: usize,
}

/// Plans deploying `topology` on the cluster `config` names and the registry behind
/// `registry`, changing nothing.
pub async fn plan(
    topology: &Topology,
    config: &EngineConfig,
    registry: &RegistryClient,
) -> Result<Plan, DeployError> {
    let admin = admin(config)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, TIMEOUT)
        .map_err(kafka("reading cluster metadata"))?;
    let existing: BTreeMap<String, Existing> = metadata
        .topics()
        .iter()
        .filter(|t| !t.partitions().is_empty())
        .map(|t| {
            (
                t.name().to_string(),
                Existing {
                    partitions: t.partitions().len(),
                    replicas: t
                        .partitions()
                        .iter()
                        .map(|p| p.replicas().len())
                        .min()
                        .unwrap_or(0),
                },
            )
        })
        .collect();
    let configs = topic_configs(
        &admin,
        topology
            .topics
            .keys()
            .filter(|name| existing.contains_key(*name)),
    )
    .await?;
    let committed = committed_offsets(topology, config, &existing)?;

    let mut items = Vec::new();
    let mut unchanged_topics = 0;
    for topic in topology.topics.values() {
        let target = format!("topic {}", topic.name);
        let Some(found) = existing.get(&topic.name) else {
            items.push(Item {
                kind: Kind::Create,
                target,
                detail: format!(
                    "create, {} partition{}, cleanup {}, replication factor {} ({})",
                    topic.partitions,
                    plural(topic.partitions as usize),
                    topic.cleanup,
                    topology.replication_factor,
                    role(&topic.role)
                ),
                action: Some(Action::CreateTopic),
            });
            continue;
        };
        let before = items.len();
        let declared = topic.partitions as usize;
        if found.partitions != declared {
            let why = if declared < found.partitions {
                "a partition count cannot shrink".to_string()
            } else if let TopicRole::Changelog { store } = &topic.role {
                format!(
                    "growing it moves the state of store {store} to other partitions, away from the tasks that restore it"
                )
            } else {
                format!(
                    "growing it moves keys to other partitions, away from their state and from the records already written for them ({})",
                    readers(topology, &topic.name)
                )
            };
            items.push(Item {
                kind: Kind::Unsafe,
                target: target.clone(),
                detail: format!(
                    "has {} partitions on the cluster, topology.yaml says {declared}: {why}; keep {}, or declare a new topic and move the records over",
                    found.partitions, found.partitions
                ),
                action: None,
            });
        }
        if let Some((policy, keep)) = configs.get(&topic.name) {
            let has_compact = policy.split(',').any(|p| p.trim() == "compact");
            let has_delete = policy.split(',').any(|p| p.trim() == "delete");
            match topic.cleanup {
                Cleanup::Compact if !has_compact => items.push(Item {
                    kind: Kind::Change,
                    target: target.clone(),
                    detail: format!("cleanup.policy {policy} -> compact"),
                    action: Some(Action::SetCleanup {
                        topic: topic.name.clone(),
                        cleanup: Cleanup::Compact,
                        keep: keep.clone(),
                    }),
                }),
                Cleanup::Delete if has_compact || !has_delete => items.push(Item {
                    kind: Kind::Unsafe,
                    target: target.clone(),
                    detail: format!(
                        "cleanup.policy {policy} -> delete would drop every record older than the topic's retention, and a table read from its beginning ({}) would lose those rows; change it by hand if that is meant",
                        readers(topology, &topic.name)
                    ),
                    action: None,
                }),
                _ => {}
            }
        }
        if found.replicas < usize::from(topology.replication_factor) {
            items.push(Item {
                kind: Kind::Note,
                target: target.clone(),
                detail: format!(
                    "replication factor {} on the cluster, topology.yaml asks for {}: apply does not move replicas (kafka-reassign-partitions does)",
                    found.replicas, topology.replication_factor
                ),
                action: None,
            });
        }
        if items.len() == before {
            unchanged_topics += 1;
        }
    }

    // Changelog and dead-letter topics of this app that nothing declares any more.
    let prefix = format!("{}-", topology.app);
    let orphans: Vec<&String> = existing
        .keys()
        .filter(|name| {
            name.starts_with(&prefix)
                && (name.ends_with("-changelog") || name.ends_with("-dlq"))
                && !topology.topics.contains_key(*name)
        })
        .collect();
    for name in &orphans {
        let detail = if name.ends_with("-changelog") {
            "the changelog of a store topology.yaml no longer declares (removed or renamed): kept, with its state"
        } else {
            "the dead-letter topic of a processor or sink topology.yaml no longer declares: kept, with its records"
        };
        items.push(Item {
            kind: Kind::Note,
            target: format!("topic {name}"),
            detail: detail.to_string(),
            action: None,
        });
    }

    // Stores that would start empty under a group that has moved on.
    for store in topology.stores.values() {
        let (Some(changelog), Some(owner)) = (&store.changelog, &store.owner) else {
            continue;
        };
        if existing.contains_key(changelog) {
            continue;
        }
        let Some(node) = topology.processors.get(owner) else {
            continue;
        };
        let moved_on: Vec<String> = committed
            .iter()
            .filter(|((topic, _), _)| node.inputs.contains(topic))
            .map(|((topic, partition), offset)| format!("{topic}/{partition} at {offset}"))
            .collect();
        if moved_on.is_empty() {
            continue;
        }
        let renamed = orphans
            .iter()
            .filter(|n| n.ends_with("-changelog"))
            .map(|n| n.as_str())
            .collect::<Vec<_>>();
        let hint = if renamed.is_empty() {
            String::new()
        } else {
            format!(" (a renamed store? {} exist)", renamed.join(", "))
        };
        items.push(Item {
            kind: Kind::Unsafe,
            target: format!("store {}", store.name),
            detail: format!(
                "its changelog {changelog} does not exist, but the consumer group {} has committed offsets for the inputs of {owner} ({}): the store would start empty while {owner} resumes after records it never saw{hint}; keep the store's name, or reset the group's offsets to process the inputs again from the beginning",
                topology.app,
                moved_on.join(", ")
            ),
            action: None,
        });
    }

    // Value schemas.
    let mut unchanged_schemas = 0;
    for topic in topology.topics.values() {
        let Some(schema) = &topic.schema else {
            continue;
        };
        let subject = format!("{}-value", topic.name);
        let target = format!("schema {subject}");
        let versions = registry.versions(&subject).await?;
        let ours = identity(&schema.schema);
        let register = Some(Action::Register {
            subject: subject.clone(),
            text: schema.text.to_string(),
        });
        let Some((latest, _)) = versions.last() else {
            items.push(Item {
                kind: Kind::Create,
                target,
                detail: format!("register the first version ({})", schema.file),
                action: register,
            });
            continue;
        };
        if let Some((version, _)) = versions
            .iter()
            .rev()
            .find(|(_, v)| ours.is_some() && identity(&v.schema) == ours)
        {
            if version != latest {
                items.push(Item {
                    kind: Kind::Note,
                    target,
                    detail: format!(
                        "{} is version {version}, not the latest ({latest}): records are written with version {version} again",
                        schema.file
                    ),
                    action: None,
                });
            } else {
                unchanged_schemas += 1;
            }
            continue;
        }
        if registry.is_compatible(&subject, &schema.text).await? {
            items.push(Item {
                kind: Kind::Change,
                target,
                detail: format!(
                    "register a new version of {} after version {latest}, compatible under the subject's compatibility level",
                    schema.file
                ),
                action: register,
            });
        } else {
            items.push(Item {
                kind: Kind::Unsafe,
                target,
                detail: format!(
                    "{} is incompatible with version {latest} under the subject's compatibility level: the topic's readers and the records already written would not agree; make the change compatible (a new field needs a default) or declare a new topic",
                    schema.file
                ),
                action: None,
            });
        }
    }
    Ok(Plan::new(
        &topology.app,
        items,
        unchanged_topics,
        unchanged_schemas,
    ))
}

/// Applies a safe plan made for `topology`: creates the missing topics, sets the
/// cleanup policies and registers the schemas. Returns one line per thing done.
/// A plan with an unsafe item is refused whole, before anything is done.
pub async fn apply(
    plan: &Plan,
    topology: &Topology,
    config: &EngineConfig,
    registry: &RegistryClient,
) -> Result<Vec<String>, DeployError> {
    let unsafe_items = plan.of(Kind::Unsafe).count();
    if unsafe_items > 0 {
        return Err(DeployError::Unsafe(unsafe_items));
    }
    let mut done = Vec::new();
    let created: Vec<&str> = plan
        .items
        .iter()
        .filter(|i| i.action == Some(Action::CreateTopic))
        .map(|i| i.target.as_str())
        .collect();
    if !created.is_empty() {
        // The plan has vetted every topic to create: a lost changelog is in it as an
        // unsafe item that was accepted (--allow), or apply refused before this.
        create_missing_topics(topology, config, false).await?;
        done.extend(created.iter().map(|t| format!("created {t}")));
    }
    let admin = admin(config)?;
    for item in &plan.items {
        let Some(Action::SetCleanup {
            topic,
            cleanup,
            keep,
        }) = &item.action
        else {
            continue;
        };
        let policy = cleanup.to_string();
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (name, value) in keep {
            if name != "cleanup.policy" {
                alter = alter.set(name, value);
            }
        }
        alter = alter.set("cleanup.policy", &policy);
        let context = format!("setting cleanup.policy of {topic}");
        let results = admin
            .alter_configs(
                [&alter],
                &AdminOptions::new().request_timeout(Some(TIMEOUT)),
            )
            .await
            .map_err(kafka(context.clone()))?;
        for result in results {
            if let Err((_, code)) = result {
                return Err(DeployError::Refused {
                    context,
                    code: code.to_string(),
                });
            }
        }
        done.push(format!("set cleanup.policy of topic {topic} to {policy}"));
    }
    for item in &plan.items {
        let Some(Action::Register { subject, text }) = &item.action else {
            continue;
        };
        let registered = registry.register(subject, text).await?;
        done.push(format!(
            "registered schema {subject} (id {})",
            registered.id
        ));
    }
    Ok(done)
}

fn admin(config: &EngineConfig) -> Result<AdminClient<DefaultClientContext>, DeployError> {
    crate::engine::client_config(config)
        .create()
        .map_err(kafka("creating the admin client"))
}

/// The cleanup policy of each topic, and its other topic-level settings (which a
/// non-incremental AlterConfigs would otherwise reset).
async fn topic_configs<'a>(
    admin: &AdminClient<DefaultClientContext>,
    topics: impl Iterator<Item = &'a String>,
) -> Result<BTreeMap<String, (String, Vec<(String, String)>)>, DeployError> {
    let names: Vec<&String> = topics.collect();
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let specifiers: Vec<ResourceSpecifier<'_>> = names
        .iter()
        .map(|n| ResourceSpecifier::Topic(n.as_str()))
        .collect();
    let results = admin
        .describe_configs(
            specifiers.iter(),
            &AdminOptions::new().request_timeout(Some(TIMEOUT)),
        )
        .await
        .map_err(kafka("reading topic settings"))?;
    let mut out = BTreeMap::new();
    for (name, result) in names.into_iter().zip(results) {
        let resource = result.map_err(|code| DeployError::Refused {
            context: format!("reading the settings of topic {name}"),
            code: code.to_string(),
        })?;
        let policy = resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "delete".to_string());
        let keep = resource
            .entries
            .iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic && !e.is_sensitive)
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect();
        out.insert(name.clone(), (policy, keep));
    }
    Ok(out)
}

/// The offsets the app's consumer group has committed on the existing input
/// partitions of its processors (read without joining the group).
fn committed_offsets(
    topology: &Topology,
    config: &EngineConfig,
    existing: &BTreeMap<String, Existing>,
) -> Result<BTreeMap<(String, i32), i64>, DeployError> {
    let inputs: BTreeSet<&String> = topology
        .processors
        .values()
        .flat_map(|p| p.inputs.iter())
        .collect();
    let mut partitions = TopicPartitionList::new();
    for topic in inputs {
        if let Some(found) = existing.get(topic) {
            for partition in 0..found.partitions {
                partitions.add_partition(topic, partition as i32);
            }
        }
    }
    Ok(crate::engine::group_offsets(
        config,
        &topology.app,
        partitions,
    )?)
}

/// The processors and sinks reading `topic`, for messages.
fn readers(topology: &Topology, topic: &str) -> String {
    let mut names: Vec<String> = topology
        .processors
        .values()
        .filter(|p| {
            p.inputs.iter().any(|t| t == topic) || p.global_tables.iter().any(|t| t == topic)
        })
        .map(|p| format!("processor {}", p.name))
        .collect();
    names.extend(
        topology
            .sinks
            .values()
            .filter(|s| s.inputs.iter().any(|t| t == topic))
            .map(|s| format!("sink {}", s.name)),
    );
    names.extend(
        topology
            .edges
            .values()
            .filter(|e| e.reads.iter().any(|t| t == topic))
            .map(|e| format!("edge {}", e.name)),
    );
    if names.is_empty() {
        "read by nothing in topology.yaml".to_string()
    } else {
        format!("read by {}", names.join(", "))
    }
}

fn role(role: &TopicRole) -> String {
    match role {
        TopicRole::Ingress => "written by edges or outside producers".to_string(),
        TopicRole::Data => "written by processors".to_string(),
        TopicRole::Changelog { store } => format!("changelog of store {store}"),
        TopicRole::DeadLetter { processor } => format!("dead letters of {processor}"),
    }
}

/// What decides whether two schemas are the same: the parsed schema serialized back
/// to JSON (defaults, docs and logical types kept; formatting and key order not).
fn identity(schema: &apache_avro::Schema) -> Option<serde_json::Value> {
    serde_json::to_value(schema).ok()
}
