//! The first stage of loading topology.yaml: plain serde structs that mirror the file,
//! with `deny_unknown_fields` everywhere so a misspelt key is an error, not a silent
//! default. Nothing here checks that names refer to each other; `compile` does.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// The application id: the consumer group, and the prefix of changelog, dead-letter
    /// and transactional ids.
    pub app: String,
    /// Defaults for every processor.
    #[serde(default)]
    pub defaults: DefaultsConfig,
    /// Topics by name.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicConfig>,
    /// State stores by name.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// Processors by name.
    #[serde(default)]
    pub processors: BTreeMap<String, ProcessorConfig>,
    /// Edges (HTTP, WebSocket) by name.
    #[serde(default)]
    pub edges: BTreeMap<String, EdgeConfig>,
    /// Sinks (SQL, Redis) by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
}

/// Defaults for every processor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    /// The processing guarantee.
    #[serde(default)]
    pub processing: Guarantee,
    /// How often a task commits.
    #[serde(default = "default_commit_interval", deserialize_with = "duration")]
    pub commit_interval: Duration,
    /// Replication factor for created topics (1 on a single broker).
    #[serde(default = "default_replication")]
    pub replication_factor: u16,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        DefaultsConfig {
            processing: Guarantee::default(),
            commit_interval: default_commit_interval(),
            replication_factor: default_replication(),
        }
    }
}

fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_replication() -> u16 {
    1
}

/// A processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Kafka Streams' exactly_once_v2: outputs, changelogs and offsets in one
    /// transaction.
    #[default]
    ExactlyOnce,
    /// Idempotent producer, offsets committed after outputs are acknowledged, effects
    /// made idempotent by the applied-offset mark in the changelog.
    AtLeastOnce,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::ExactlyOnce => "exactly_once",
            Guarantee::AtLeastOnce => "at_least_once",
        })
    }
}

/// A topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions.
    pub partitions: u32,
    /// `delete` (default) or `compact`.
    #[serde(default)]
    pub cleanup: Cleanup,
    /// The key format; only `string` (plain UTF-8, no framing) for now.
    #[serde(default)]
    pub key: KeyFormat,
    /// The value schema: a path to an `.avsc` file, relative to topology.yaml.
    pub value: String,
    /// Written from outside the topology (edges, other producers), never by a
    /// processor.
    #[serde(default)]
    pub ingress: bool,
    /// What the topic is for.
    #[serde(default)]
    pub doc: Option<String>,
}

/// A topic's cleanup policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cleanup {
    /// Delete old segments.
    #[default]
    Delete,
    /// Keep the latest record per key.
    Compact,
}

impl fmt::Display for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cleanup::Delete => "delete",
            Cleanup::Compact => "compact",
        })
    }
}

/// A key format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormat {
    /// Plain UTF-8, no Avro framing, so any producer can key records.
    #[default]
    String,
}

/// A key-value state store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Back the store with a compacted changelog topic (default true); without one the
    /// store starts empty after a restart or a task move.
    #[serde(default = "yes")]
    pub changelog: bool,
    /// What the store holds.
    #[serde(default)]
    pub doc: Option<String>,
}

fn yes() -> bool {
    true
}

/// A processor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// The registered kind that implements it.
    pub kind: String,
    /// Input topics (co-partitioned: same partition count).
    pub inputs: Vec<String>,
    /// Topics it may forward to.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Stores it reads and writes.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Topics it reads whole, on every instance, as tables.
    #[serde(default)]
    pub global_tables: Vec<String>,
    /// Named timers: their time domain and delay.
    #[serde(default)]
    pub timers: BTreeMap<String, TimerConfig>,
    /// Overrides `defaults.processing`.
    #[serde(default)]
    pub processing: Option<Guarantee>,
    /// Overrides `defaults.commit_interval`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub commit_interval: Option<Duration>,
    /// The dead-letter topic; default `<app>-<processor>-dlq`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Settings of the kind, read by the kind itself.
    #[serde(default)]
    pub config: Option<IgnoredAny>,
    /// What the processor does.
    #[serde(default)]
    pub doc: Option<String>,
}

/// A named timer of a processor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerConfig {
    /// `stream_time` or `wall_clock`.
    pub domain: TimeDomain,
    /// How long after it is set it fires.
    #[serde(deserialize_with = "duration")]
    pub after: Duration,
}

/// The clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeDomain {
    /// The largest record timestamp a task has seen: deterministic, moves only with
    /// data.
    StreamTime,
    /// The machine's clock: moves without data.
    WallClock,
}

impl fmt::Display for TimeDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeDomain::StreamTime => "stream_time",
            TimeDomain::WallClock => "wall_clock",
        })
    }
}

/// An edge: HTTP or WebSocket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// `http` or `ws`.
    pub kind: EdgeKind,
    /// Topics it writes (ingress topics only).
    #[serde(default)]
    pub publishes: Vec<String>,
    /// Topics it reads (replies, tables, deliveries).
    #[serde(default)]
    pub reads: Vec<String>,
    /// Settings of the edge, read by the edge itself.
    #[serde(default)]
    pub config: Option<IgnoredAny>,
    /// What the edge is for.
    #[serde(default)]
    pub doc: Option<String>,
}

/// The kinds of edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// The HTTP API.
    Http,
    /// The WebSocket chat.
    Ws,
}

/// A sink: topics materialized outside Kafka.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `sql` or `redis`.
    pub kind: SinkKind,
    /// Topics it reads.
    pub inputs: Vec<String>,
    /// Settings of the sink, read by the sink itself.
    #[serde(default)]
    pub config: Option<IgnoredAny>,
    /// What the sink is for.
    #[serde(default)]
    pub doc: Option<String>,
}

/// The kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A SQL database (sqlx: PostgreSQL, MySQL/MariaDB, SQLite).
    Sql,
    /// Redis.
    Redis,
}

/// Parses a duration written as `100ms`, `30s`, `5m`, `2h` or a bare number of
/// milliseconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit like 100ms, 30s, 5m")
    })?;
    let ms = match unit.trim() {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ));
        }
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too long"))
}

fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(de)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(de)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// Formats a duration the way topology.yaml writes them.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms != 0 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms != 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms != 0 && ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
