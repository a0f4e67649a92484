//! [`SchemaStore`]: the in-memory core of the embedded schema registry.
//!
//! Subjects hold versions `1, 2, …`; each version points at a schema with a global id
//! (from 1). The same schema, offered again under the same subject, returns the
//! existing version; offered under another subject, it reuses the global id.
//! "The same" is decided on the parsed schema written back out as JSON (see
//! [`StoredSchema`]), so whitespace, key order and `"string"` versus
//! `{"type":"string"}` do not matter, while defaults, docs and logical types do.
//!
//! Every mutation is a [`RegistryEvent`] applied by one method. The commands
//! ([`SchemaStore::register`], [`SchemaStore::set_compatibility_level`], the deletes)
//! validate against the current state, turn the decision into events, apply them and
//! hand them to the listener given to [`SchemaStore::with_listener`], all under the
//! write lock so the listener sees events in the order they were applied. A log of
//! those events (a compacted `_schemas` topic, say) replayed through
//! [`SchemaStore::apply`] rebuilds the same registry; [`SchemaStore::snapshot_events`]
//! is the shortest such log for the current state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use apache_avro::Schema;
use apache_avro::error::CompatibilityError;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

use super::error::RegistryError;

/// How a new version of a subject must relate to the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// No check.
    None,
    /// The new schema reads data written with the latest version.
    Backward,
    /// The new schema reads data written with every version.
    BackwardTransitive,
    /// The latest version reads data written with the new schema.
    Forward,
    /// Every version reads data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every version.
    FullTransitive,
}

impl CompatibilityLevel {
    /// Every level, in Confluent's order.
    pub const ALL: [CompatibilityLevel; 7] = [
        CompatibilityLevel::None,
        CompatibilityLevel::Backward,
        CompatibilityLevel::BackwardTransitive,
        CompatibilityLevel::Forward,
        CompatibilityLevel::ForwardTransitive,
        CompatibilityLevel::Full,
        CompatibilityLevel::FullTransitive,
    ];

    /// The name Confluent uses (`BACKWARD_TRANSITIVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityLevel::None => "NONE",
            CompatibilityLevel::Backward => "BACKWARD",
            CompatibilityLevel::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityLevel::Forward => "FORWARD",
            CompatibilityLevel::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityLevel::Full => "FULL",
            CompatibilityLevel::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the new schema must read data written with older versions.
    fn backward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Backward
                | CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether older versions must read data written with the new schema.
    fn forward(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::Forward
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::Full
                | CompatibilityLevel::FullTransitive
        )
    }

    /// Whether the check runs against every live version rather than the latest.
    fn transitive(self) -> bool {
        matches!(
            self,
            CompatibilityLevel::BackwardTransitive
                | CompatibilityLevel::ForwardTransitive
                | CompatibilityLevel::FullTransitive
        )
    }
}

impl Default for CompatibilityLevel {
    /// Confluent's default, `BACKWARD`.
    fn default() -> Self {
        CompatibilityLevel::Backward
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = RegistryError;

    /// Parses a level name in any case (`full_transitive`, `FULL_TRANSITIVE`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityLevel::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| RegistryError::InvalidCompatibilityLevel(s.to_string()))
    }
}

/// A version of a subject as named in a request: a number or `latest` (also `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    /// The highest version (the highest live one unless deleted versions are asked for).
    Latest,
    /// That version.
    Number(u32),
}

impl FromStr for VersionSpec {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(VersionSpec::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 && n <= i32::MAX as u32 => Ok(VersionSpec::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_string())),
        }
    }
}

/// A reference from one schema to a named type registered under another subject
/// (Confluent's `references`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchemaReference {
    /// The full name of the referenced type, as the referencing schema uses it.
    pub name: String,
    /// The subject the referenced schema is registered under.
    pub subject: String,
    /// Its version there.
    pub version: u32,
}

/// A schema as offered to [`SchemaStore::register`], [`SchemaStore::lookup`] and
/// [`SchemaStore::check_compatibility`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchema {
    /// The schema text (Avro JSON; a bare primitive name such as `string` is accepted).
    pub schema: String,
    /// `schemaType`; `None` means AVRO, the only type supported.
    pub schema_type: Option<String>,
    /// Named types the schema takes from other subjects.
    pub references: Vec<SchemaReference>,
}

impl NewSchema {
    /// An Avro schema without references.
    pub fn avro(schema: impl Into<String>) -> NewSchema {
        NewSchema {
            schema: schema.into(),
            schema_type: None,
            references: Vec::new(),
        }
    }

    /// The same schema with these references.
    pub fn with_references(mut self, references: Vec<SchemaReference>) -> NewSchema {
        self.references = references;
        self
    }
}

/// A schema under its global id.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    /// The global id.
    pub id: u32,
    /// The text as first registered (a bare primitive name is stored quoted).
    pub text: String,
    /// The parsed schema, self-contained: referenced types are inlined.
    pub schema: Schema,
    /// The references the text was registered with.
    pub references: Vec<SchemaReference>,
    /// What decides whether two registrations are the same schema: the parsed schema
    /// serialized back to JSON (keys sorted, defaults, docs and logical types kept)
    /// followed by the references. Avro's Parsing Canonical Form is not used because
    /// it strips defaults and logical types, which would merge schemas that evolve
    /// differently.
    identity: String,
}

/// One version of a subject.
#[derive(Debug, Clone)]
pub struct SchemaVersion {
    /// The subject.
    pub subject: String,
    /// The version number.
    pub version: u32,
    /// Whether the version is soft-deleted.
    pub deleted: bool,
    /// The schema (its `id` is the global id).
    pub schema: Arc<StoredSchema>,
}

/// What [`SchemaStore::register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The global id of the schema.
    pub id: u32,
    /// The version under the subject.
    pub version: u32,
    /// `false` when the schema was already registered under the subject (nothing
    /// changed and no event was emitted).
    pub created: bool,
}

/// A change to the registry: what a command decided, and what a log replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RegistryEvent {
    /// `schema` became `version` of `subject`, with global id `id`.
    SchemaRegistered {
        /// The subject.
        subject: String,
        /// The new version.
        version: u32,
        /// The global id (new, or the id the same schema already has).
        id: u32,
        /// The schema text.
        schema: String,
        /// The references of the schema.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        references: Vec<SchemaReference>,
    },
    /// A version was soft-deleted (hidden, id kept) or permanently deleted.
    VersionDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
        /// Whether the version is gone for good.
        permanent: bool,
    },
    /// Ids below `next_id` are taken, some possibly by schemas since permanently
    /// deleted, and are never given out again. Only snapshots carry it: in a full
    /// log the registrations themselves say so.
    IdsReserved {
        /// The lowest id never given out.
        next_id: u32,
    },
    /// The compatibility level of a subject (`None`: the global default) was set
    /// (`Some`) or cleared (`None`, subjects only).
    ConfigSet {
        /// The subject, or `None` for the global default.
        subject: Option<String>,
        /// The new level; `None` removes the subject-level setting.
        level: Option<CompatibilityLevel>,
    },
}

/// Receives every event the store emits, in order, while the write lock is held:
/// it must be quick and must not call back into the store.
pub type EventListener = Box<dyn Fn(&RegistryEvent) + Send + Sync>;

/// The registry: subjects, versions, global ids and compatibility levels. Cheap to
/// share behind an `Arc`; reads take a read lock, commands the write lock.
pub struct SchemaStore {
    /// All state. Commands validate, then apply, under one write guard, so a
    /// concurrent registration never sees a half-applied change or takes the same id.
    state: RwLock<State>,
    /// Told about every event a command emits (not about events fed to `apply`).
    listener: Option<EventListener>,
}

impl fmt::Debug for SchemaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        f.debug_struct("SchemaStore")
            .field("subjects", &state.subjects.len())
            .field("schemas", &state.schemas.len())
            .field("global_level", &state.global_level)
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl Default for SchemaStore {
    fn default() -> Self {
        SchemaStore::new()
    }
}

impl SchemaStore {
    /// An empty registry with the global level BACKWARD.
    pub fn new() -> SchemaStore {
        SchemaStore {
            state: RwLock::new(State::default()),
            listener: None,
        }
    }

    /// An empty registry that hands every emitted event to `listener`.
    pub fn with_listener(listener: impl Fn(&RegistryEvent) + Send + Sync + 'static) -> SchemaStore {
        SchemaStore {
            state: RwLock::new(State::default()),
            listener: Some(Box::new(listener)),
        }
    }

    /// Applies one event, as when replaying a log. Events for versions or subjects
    /// that no longer exist are ignored, so a replay is idempotent; an event whose
    /// schema does not parse, or that gives an id to a different schema than the one
    /// it already has, is refused and changes nothing.
    pub fn apply(&self, event: RegistryEvent) -> Result<(), RegistryError> {
        let mut state = self.write();
        state.apply(&event, None)
    }

    /// Registers `schema` under `subject`: the existing version when the subject
    /// already has it, else a new version (after the compatibility check).
    pub fn register(
        &self,
        subject: &str,
        schema: &NewSchema,
    ) -> Result<Registration, RegistryError> {
        let mut state = self.write();
        let parsed = state.parse(schema)?;
        if let Some(existing) = state.find_version(subject, &parsed.identity, false) {
            return Ok(Registration {
                id: existing.1,
                version: existing.0,
                created: false,
            });
        }
        let level = state.effective_level(subject);
        let against = state.versions_to_check(subject, level, None)?;
        let reasons = incompatibilities(level, &parsed.schema, &against);
        if !reasons.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                reasons,
            });
        }
        let id = state
            .ids_by_identity
            .get(&parsed.identity)
            .copied()
            .unwrap_or(state.next_id);
        let version = state
            .subjects
            .get(subject)
            .and_then(|s| s.versions.keys().next_back().copied())
            .unwrap_or(0)
            + 1;
        let event = RegistryEvent::SchemaRegistered {
            subject: subject.to_string(),
            version,
            id,
            schema: parsed.text.clone(),
            references: parsed.references.clone(),
        };
        state.apply(&event, Some(parsed))?;
        self.emit(&event);
        tracing::debug!(subject, version, id, "schema registered");
        Ok(Registration {
            id,
            version,
            created: true,
        })
    }

    /// The version of `subject` that has `schema` (the highest such version).
    /// `include_deleted` also searches soft-deleted versions.
    pub fn lookup(
        &self,
        subject: &str,
        schema: &NewSchema,
        include_deleted: bool,
    ) -> Result<SchemaVersion, RegistryError> {
        let state = self.read();
        state.visible_versions(subject, include_deleted)?;
        let parsed = state.parse(schema)?;
        let (version, _) = state
            .find_version(subject, &parsed.identity, include_deleted)
            .ok_or_else(|| RegistryError::SchemaNotFound {
                subject: subject.to_string(),
            })?;
        state.version(subject, VersionSpec::Number(version), include_deleted)
    }

    /// Why `schema` would not be accepted under `subject`: empty when it is
    /// compatible. With `against`, only that version is checked (in the directions
    /// of the subject's level); without, the versions the level names (the latest,
    /// or all for the transitive levels; none when the subject has no versions).
    pub fn check_compatibility(
        &self,
        subject: &str,
        schema: &NewSchema,
        against: Option<VersionSpec>,
    ) -> Result<Vec<String>, RegistryError> {
        let state = self.read();
        let level = state.effective_level(subject);
        let against = state.versions_to_check(subject, level, against)?;
        let parsed = state.parse(schema)?;
        Ok(incompatibilities(level, &parsed.schema, &against))
    }

    /// The schema with global id `id`, also when the versions using it are
    /// soft-deleted (so old records stay readable). A permanent delete of the last
    /// version using an id removes the schema; the id is never given out again.
    pub fn schema_by_id(&self, id: u32) -> Result<Arc<StoredSchema>, RegistryError> {
        self.read()
            .schemas
            .get(&id)
            .cloned()
            .ok_or(RegistryError::SchemaIdNotFound(id))
    }

    /// The `(subject, version)` pairs that use the global id `id`.
    pub fn id_usages(
        &self,
        id: u32,
        include_deleted: bool,
    ) -> Result<Vec<(String, u32)>, RegistryError> {
        let state = self.read();
        if !state.schemas.contains_key(&id) {
            return Err(RegistryError::SchemaIdNotFound(id));
        }
        Ok(state
            .subjects
            .iter()
            .flat_map(|(subject, s)| {
                s.versions
                    .iter()
                    .filter(|(_, v)| v.id == id && (include_deleted || !v.deleted))
                    .map(|(version, _)| (subject.clone(), *version))
            })
            .collect())
    }

    /// The subjects with at least one live version (any version with
    /// `include_deleted`), sorted.
    pub fn subjects(&self, include_deleted: bool) -> Vec<String> {
        self.read()
            .subjects
            .iter()
            .filter(|(_, s)| s.versions.values().any(|v| include_deleted || !v.deleted))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The version numbers of `subject`, ascending.
    pub fn versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        self.read().visible_versions(subject, include_deleted)
    }

    /// One version of `subject`.
    pub fn version(
        &self,
        subject: &str,
        version: VersionSpec,
        include_deleted: bool,
    ) -> Result<SchemaVersion, RegistryError> {
        self.read().version(subject, version, include_deleted)
    }

    /// The global ids of the schemas (with a live version) that reference `version` of
    /// `subject`.
    pub fn referenced_by(
        &self,
        subject: &str,
        version: VersionSpec,
    ) -> Result<Vec<u32>, RegistryError> {
        let state = self.read();
        let version = state.version(subject, version, true)?.version;
        Ok(state.referencing_ids(subject, version, false))
    }

    /// The compatibility level set on `subject` (`None` if it has none), or the global
    /// level when `subject` is `None`.
    pub fn compatibility_level(&self, subject: Option<&str>) -> Option<CompatibilityLevel> {
        let state = self.read();
        match subject {
            None => Some(state.global_level),
            Some(subject) => state.subjects.get(subject).and_then(|s| s.level),
        }
    }

    /// The level that applies to `subject`: its own, else the global one.
    pub fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.read().effective_level(subject)
    }

    /// Sets the compatibility level of `subject`, or the global level.
    pub fn set_compatibility_level(&self, subject: Option<&str>, level: CompatibilityLevel) {
        let mut state = self.write();
        let event = RegistryEvent::ConfigSet {
            subject: subject.map(str::to_string),
            level: Some(level),
        };
        // Config events carry no schema, so applying them cannot fail.
        if state.apply(&event, None).is_ok() {
            self.emit(&event);
        }
    }

    /// Removes the subject-level compatibility level of `subject`, returning it.
    pub fn clear_compatibility_level(
        &self,
        subject: &str,
    ) -> Result<CompatibilityLevel, RegistryError> {
        let mut state = self.write();
        let previous = state
            .subjects
            .get(subject)
            .and_then(|s| s.level)
            .ok_or_else(|| RegistryError::SubjectLevelNotConfigured(subject.to_string()))?;
        let event = RegistryEvent::ConfigSet {
            subject: Some(subject.to_string()),
            level: None,
        };
        state.apply(&event, None)?;
        self.emit(&event);
        Ok(previous)
    }

    /// Deletes every version of `subject`: soft (hidden, ids kept) or, for a subject
    /// soft-deleted before, permanently. Returns the versions deleted.
    pub fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let mut state = self.write();
        let versions: Vec<(u32, bool)> = state
            .subjects
            .get(subject)
            .map(|s| s.versions.iter().map(|(n, v)| (*n, v.deleted)).collect())
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        let live: Vec<u32> = versions
            .iter()
            .filter(|(_, d)| !d)
            .map(|(n, _)| *n)
            .collect();
        let targets: Vec<u32> = if permanent {
            if !live.is_empty() {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_string()));
            }
            versions.iter().map(|(n, _)| *n).collect()
        } else {
            if live.is_empty() {
                return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
            }
            live
        };
        for version in &targets {
            // A soft-deleted schema still needs what it references to be replayed.
            if !state
                .referencing_ids(subject, *version, permanent)
                .is_empty()
            {
                return Err(RegistryError::ReferenceExists {
                    subject: subject.to_string(),
                    version: *version,
                });
            }
        }
        for version in &targets {
            let event = RegistryEvent::VersionDeleted {
                subject: subject.to_string(),
                version: *version,
                permanent,
            };
            state.apply(&event, None)?;
            self.emit(&event);
        }
        Ok(targets)
    }

    /// Deletes one version of `subject`: soft, or permanently once soft-deleted.
    /// `latest` names the highest live version (the highest version at all when
    /// `permanent`). Returns the version deleted.
    pub fn delete_version(
        &self,
        subject: &str,
        version: VersionSpec,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        let mut state = self.write();
        // A numbered version is found even when soft-deleted (to say so); `latest` is
        // the highest live version for a soft delete.
        let include_deleted = permanent || matches!(version, VersionSpec::Number(_));
        let found = state.version(subject, version, include_deleted)?;
        let version = found.version;
        if permanent && !found.deleted {
            return Err(RegistryError::VersionNotSoftDeleted {
                subject: subject.to_string(),
                version,
            });
        }
        if !permanent && found.deleted {
            return Err(RegistryError::VersionSoftDeleted {
                subject: subject.to_string(),
                version,
            });
        }
        if !state
            .referencing_ids(subject, version, permanent)
            .is_empty()
        {
            return Err(RegistryError::ReferenceExists {
                subject: subject.to_string(),
                version,
            });
        }
        let event = RegistryEvent::VersionDeleted {
            subject: subject.to_string(),
            version,
            permanent,
        };
        state.apply(&event, None)?;
        self.emit(&event);
        Ok(version)
    }

    /// The shortest event log that rebuilds the current state through
    /// [`SchemaStore::apply`]: the next id, the global level, subject levels, every
    /// version in id order (so a referenced schema comes before the schemas
    /// referencing it), then the soft deletes.
    pub fn snapshot_events(&self) -> Vec<RegistryEvent> {
        let state = self.read();
        let mut events = vec![
            RegistryEvent::IdsReserved {
                next_id: state.next_id,
            },
            RegistryEvent::ConfigSet {
                subject: None,
                level: Some(state.global_level),
            },
        ];
        let mut registered = Vec::new();
        let mut deleted = Vec::new();
        for (subject, s) in &state.subjects {
            if let Some(level) = s.level {
                events.push(RegistryEvent::ConfigSet {
                    subject: Some(subject.clone()),
                    level: Some(level),
                });
            }
            for (version, v) in &s.versions {
                if let Some(schema) = state.schemas.get(&v.id) {
                    registered.push((v.id, subject.clone(), *version, schema));
                }
                if v.deleted {
                    deleted.push(RegistryEvent::VersionDeleted {
                        subject: subject.clone(),
                        version: *version,
                        permanent: false,
                    });
                }
            }
        }
        registered.sort_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
        events.extend(
            registered
                .into_iter()
                .map(
                    |(id, subject, version, schema)| RegistryEvent::SchemaRegistered {
                        subject,
                        version,
                        id,
                        schema: schema.text.clone(),
                        references: schema.references.clone(),
                    },
                ),
        );
        events.extend(deleted);
        events
    }

    fn emit(&self, event: &RegistryEvent) {
        if let Some(listener) = &self.listener {
            listener(event);
        }
    }

    // A panic while the lock is held cannot leave the state half-changed (every
    // change is validated before anything is written), so a poisoned lock is used as
    // is.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the registry knows.
#[derive(Debug)]
struct State {
    global_level: CompatibilityLevel,
    /// The id the next new schema gets.
    next_id: u32,
    schemas: BTreeMap<u32, Arc<StoredSchema>>,
    ids_by_identity: HashMap<String, u32>,
    subjects: BTreeMap<String, SubjectState>,
}

impl Default for State {
    fn default() -> Self {
        State {
            global_level: CompatibilityLevel::default(),
            next_id: 1,
            schemas: BTreeMap::new(),
            ids_by_identity: HashMap::new(),
            subjects: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct SubjectState {
    versions: BTreeMap<u32, VersionState>,
    level: Option<CompatibilityLevel>,
}

#[derive(Debug, Clone, Copy)]
struct VersionState {
    id: u32,
    deleted: bool,
}

/// A schema text parsed against the registry (its references resolved).
#[derive(Debug)]
struct Parsed {
    text: String,
    schema: Schema,
    references: Vec<SchemaReference>,
    identity: String,
}

impl State {
    fn apply(
        &mut self,
        event: &RegistryEvent,
        parsed: Option<Parsed>,
    ) -> Result<(), RegistryError> {
        match event {
            RegistryEvent::SchemaRegistered {
                subject,
                version,
                id,
                schema,
                references,
            } => {
                let known = self.schemas.get(id).cloned();
                match known {
                    Some(known) => {
                        if known.text != *schema || known.references != *references {
                            let parsed = match parsed {
                                Some(p) => p,
                                None => self.parse(&NewSchema {
                                    schema: schema.clone(),
                                    schema_type: None,
                                    references: references.clone(),
                                })?,
                            };
                            if parsed.identity != known.identity {
                                return Err(RegistryError::Internal(format!(
                                    "schema id {id} is already taken by another schema"
                                )));
                            }
                        }
                    }
                    None => {
                        let parsed = match parsed {
                            Some(p) => p,
                            None => self.parse(&NewSchema {
                                schema: schema.clone(),
                                schema_type: None,
                                references: references.clone(),
                            })?,
                        };
                        if let Some(other) = self.ids_by_identity.get(&parsed.identity) {
                            return Err(RegistryError::Internal(format!(
                                "schema {id} is the same schema as id {other}"
                            )));
                        }
                        self.ids_by_identity.insert(parsed.identity.clone(), *id);
                        self.schemas.insert(
                            *id,
                            Arc::new(StoredSchema {
                                id: *id,
                                text: parsed.text,
                                schema: parsed.schema,
                                references: parsed.references,
                                identity: parsed.identity,
                            }),
                        );
                        self.next_id = self.next_id.max(id.saturating_add(1));
                    }
                }
                self.subjects
                    .entry(subject.clone())
                    .or_default()
                    .versions
                    .insert(
                        *version,
                        VersionState {
                            id: *id,
                            deleted: false,
                        },
                    );
            }
            RegistryEvent::VersionDeleted {
                subject,
                version,
                permanent,
            } => {
                let Some(s) = self.subjects.get_mut(subject) else {
                    return Ok(());
                };
                if !*permanent {
                    if let Some(v) = s.versions.get_mut(version) {
                        v.deleted = true;
                    }
                    return Ok(());
                }
                let removed = s.versions.remove(version);
                if s.versions.is_empty() && s.level.is_none() {
                    self.subjects.remove(subject);
                }
                // "Permanent" removes the schema too once no version uses its id;
                // `next_id` is left alone so the id is not reused.
                if let Some(removed) = removed
                    && !self
                        .subjects
                        .values()
                        .any(|s| s.versions.values().any(|v| v.id == removed.id))
                    && let Some(schema) = self.schemas.remove(&removed.id)
                {
                    self.ids_by_identity.remove(&schema.identity);
                }
            }
            RegistryEvent::IdsReserved { next_id } => {
                self.next_id = self.next_id.max(*next_id);
            }
            RegistryEvent::ConfigSet { subject, level } => match (subject, level) {
                (None, Some(level)) => self.global_level = *level,
                (None, None) => self.global_level = CompatibilityLevel::default(),
                (Some(subject), Some(level)) => {
                    self.subjects.entry(subject.clone()).or_default().level = Some(*level);
                }
                (Some(subject), None) => {
                    if let Some(s) = self.subjects.get_mut(subject) {
                        s.level = None;
                        if s.versions.is_empty() {
                            self.subjects.remove(subject);
                        }
                    }
                }
            },
        }
        Ok(())
    }

    /// Parses `new`, resolving its references against the registered versions.
    fn parse(&self, new: &NewSchema) -> Result<Parsed, RegistryError> {
        if let Some(kind) = &new.schema_type
            && !kind.eq_ignore_ascii_case("AVRO")
        {
            return Err(RegistryError::UnsupportedSchemaType(kind.clone()));
        }
        let text = normalize_text(&new.schema);
        if text.is_empty() {
            return Err(RegistryError::InvalidSchema("Empty schema".to_string()));
        }
        let referenced = if new.references.is_empty() {
            Vec::new()
        } else {
            self.referenced_texts(&new.references)?
        };
        let schema = parse_avro(&text, &referenced)?;
        let mut identity = serde_json::to_string(&schema).map_err(|e| {
            RegistryError::Internal(format!("cannot write a parsed schema back out: {e}"))
        })?;
        if !new.references.is_empty() {
            let refs = serde_json::to_string(&new.references)
                .map_err(|e| RegistryError::Internal(format!("cannot write references: {e}")))?;
            identity.push('|');
            identity.push_str(&refs);
        }
        Ok(Parsed {
            text,
            schema,
            references: new.references.clone(),
            identity,
        })
    }

    /// The texts of the referenced schemas and of everything they reference in turn.
    fn referenced_texts(
        &self,
        references: &[SchemaReference],
    ) -> Result<Vec<String>, RegistryError> {
        let mut pending: Vec<&SchemaReference> = references.iter().collect();
        let mut seen = BTreeSet::new();
        let mut texts = Vec::new();
        while let Some(reference) = pending.pop() {
            let stored = self
                .subjects
                .get(&reference.subject)
                .and_then(|s| s.versions.get(&reference.version))
                .and_then(|v| self.schemas.get(&v.id))
                .ok_or_else(|| {
                    RegistryError::InvalidSchema(format!(
                        "reference '{}' names version {} of subject '{}', which does not exist",
                        reference.name, reference.version, reference.subject
                    ))
                })?;
            if seen.insert(stored.id) {
                texts.push(stored.text.clone());
                pending.extend(stored.references.iter());
            }
        }
        Ok(texts)
    }

    /// `(version, id)` of the highest version of `subject` whose schema has `identity`.
    fn find_version(
        &self,
        subject: &str,
        identity: &str,
        include_deleted: bool,
    ) -> Option<(u32, u32)> {
        let s = self.subjects.get(subject)?;
        s.versions
            .iter()
            .rev()
            .filter(|(_, v)| include_deleted || !v.deleted)
            .find(|(_, v)| {
                self.schemas
                    .get(&v.id)
                    .is_some_and(|schema| schema.identity == identity)
            })
            .map(|(version, v)| (*version, v.id))
    }

    fn effective_level(&self, subject: &str) -> CompatibilityLevel {
        self.subjects
            .get(subject)
            .and_then(|s| s.level)
            .unwrap_or(self.global_level)
    }

    fn visible_versions(
        &self,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let versions: Vec<u32> = self
            .subjects
            .get(subject)
            .map(|s| {
                s.versions
                    .iter()
                    .filter(|(_, v)| include_deleted || !v.deleted)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        Ok(versions)
    }

    fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<SchemaVersion, RegistryError> {
        let versions = self.visible_versions(subject, include_deleted)?;
        let number = match spec {
            VersionSpec::Latest => versions.last().copied(),
            VersionSpec::Number(n) => versions.contains(&n).then_some(n),
        }
        .ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_string(),
            version: match spec {
                VersionSpec::Latest => "latest".to_string(),
                VersionSpec::Number(n) => n.to_string(),
            },
        })?;
        let entry = self
            .subjects
            .get(subject)
            .and_then(|s| s.versions.get(&number))
            .copied()
            .ok_or_else(|| {
                RegistryError::Internal(format!("version {number} of '{subject}' vanished"))
            })?;
        let schema = self.schemas.get(&entry.id).cloned().ok_or_else(|| {
            RegistryError::Internal(format!("version {number} of '{subject}' has no schema"))
        })?;
        Ok(SchemaVersion {
            subject: subject.to_string(),
            version: number,
            deleted: entry.deleted,
            schema,
        })
    }

    /// The live versions a new schema is checked against: `against` alone when
    /// given, else the latest or (transitive levels) every live version.
    fn versions_to_check(
        &self,
        subject: &str,
        level: CompatibilityLevel,
        against: Option<VersionSpec>,
    ) -> Result<Vec<(u32, Arc<StoredSchema>)>, RegistryError> {
        if let Some(spec) = against {
            let found = self.version(subject, spec, false)?;
            return Ok(vec![(found.version, found.schema)]);
        }
        if level == CompatibilityLevel::None {
            return Ok(Vec::new());
        }
        let Some(s) = self.subjects.get(subject) else {
            return Ok(Vec::new());
        };
        let mut live = s.versions.iter().filter(|(_, v)| !v.deleted);
        let chosen: Vec<(&u32, &VersionState)> = if level.transitive() {
            live.collect()
        } else {
            live.next_back().into_iter().collect()
        };
        Ok(chosen
            .into_iter()
            .filter_map(|(n, v)| self.schemas.get(&v.id).map(|schema| (*n, schema.clone())))
            .collect())
    }

    /// Ids whose references name `version` of `subject`, among the ids used by a live
    /// version (or by any version, soft-deleted included, with `include_deleted`).
    fn referencing_ids(&self, subject: &str, version: u32, include_deleted: bool) -> Vec<u32> {
        let live_ids: BTreeSet<u32> = self
            .subjects
            .values()
            .flat_map(|s| {
                s.versions
                    .values()
                    .filter(|v| include_deleted || !v.deleted)
                    .map(|v| v.id)
            })
            .collect();
        self.schemas
            .values()
            .filter(|schema| live_ids.contains(&schema.id))
            .filter(|schema| {
                schema
                    .references
                    .iter()
                    .any(|r| r.subject == subject && r.version == version)
            })
            .map(|schema| schema.id)
            .collect()
    }
}

/// Parses an Avro schema text that may use named types defined in `referenced` (the
/// texts of the schemas it references, transitively), inlining those types so the
/// result is self-contained.
pub(crate) fn parse_avro(text: &str, referenced: &[String]) -> Result<Schema, RegistryError> {
    let invalid = |e: apache_avro::Error| RegistryError::InvalidSchema(error_chain(&e));
    if referenced.is_empty() {
        return Schema::parse_str(text).map_err(invalid);
    }
    let (mut schema, schemata) = Schema::parse_str_with_list(text, referenced).map_err(invalid)?;
    schema.denormalize(&schemata).map_err(invalid)?;
    Ok(schema)
}

/// The text to parse and store: trimmed, with a bare primitive name (`string`, which
/// some clients send for `"string"`) quoted.
pub(crate) fn normalize_text(text: &str) -> String {
    const PRIMITIVES: [&str; 8] = [
        "null", "boolean", "int", "long", "float", "double", "bytes", "string",
    ];
    let trimmed = text.trim();
    if PRIMITIVES.contains(&trimmed) {
        format!("\"{trimmed}\"")
    } else {
        trimmed.to_string()
    }
}

/// Why `new` cannot be used with data of each version in `against`, in the
/// directions `level` asks for.
fn incompatibilities(
    level: CompatibilityLevel,
    new: &Schema,
    against: &[(u32, Arc<StoredSchema>)],
) -> Vec<String> {
    let mut reasons = Vec::new();
    for (version, old) in against {
        if level.backward()
            && let Some(reason) = cannot_read(&old.schema, new)
        {
            reasons.push(format!(
                "{level}: the new schema cannot read data written with version {version}: {reason}"
            ));
        }
        if level.forward()
            && let Some(reason) = cannot_read(new, &old.schema)
        {
            reasons.push(format!(
                "{level}: version {version} cannot read data written with the new schema: {reason}"
            ));
        }
    }
    reasons
}

/// Why a reader with `reader` cannot read everything written with `writer`, if it
/// cannot. apache-avro calls some pairs `Partial` (writer enum symbols or union
/// branches missing from the reader): they fail on some data, so, as Confluent
/// does, they count as incompatible.
fn cannot_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some(
            "only partially compatible: some enum symbols or union branches of the writer have no match in the reader"
                .to_string(),
        ),
        Err(error) => Some(describe(&error)),
    }
}

/// A short description of a compatibility error. apache-avro's own message for a
/// type mismatch embeds both schemas pretty-printed with `{:#?}`; only their kinds
/// are kept here.
fn describe(error: &CompatibilityError) -> String {
    match error {
        CompatibilityError::WrongType {
            writer_schema_type,
            reader_schema_type,
        } => format!(
            "the writer's type {} cannot be read as {}",
            debug_kind(writer_schema_type),
            debug_kind(reader_schema_type)
        ),
        CompatibilityError::FieldTypeMismatch(field, inner) => {
            format!(
                "field '{field}' has an incompatible type: {}",
                describe(inner)
            )
        }
        CompatibilityError::MissingDefaultValue(field) => {
            format!(
                "the reader's field '{field}' is missing from the writer and has no default value"
            )
        }
        CompatibilityError::NameMismatch {
            writer_name,
            reader_name,
        } => format!("the writer's type is named {writer_name}, the reader's {reader_name}"),
        other => other.to_string(),
    }
}

/// The variant name at the start of a `{:#?}` rendering of a schema (`Record`, `Long`).
fn debug_kind(debug: &str) -> String {
    let kind: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    if kind.is_empty() {
        debug.to_string()
    } else {
        kind.to_lowercase()
    }
}

/// An error and its sources, joined with `: `.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const V1: &str = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"id","type":"string"}]}"#;
    /// V1 plus a field with a default.
    const V2_DEFAULT: &str = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"id","type":"string"},{"name":"email","type":"string","default":""}]}"#;
    /// V1 plus a field without a default.
    const V2_REQUIRED: &str = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"id","type":"string"},{"name":"email","type":"string"}]}"#;
    /// V1 with `id` removed and another field.
    const V2_DROPPED: &str = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"name","type":"string","default":"x"}]}"#;

    fn store_with(level: CompatibilityLevel, first: &str) -> SchemaStore {
        let store = SchemaStore::new();
        store.set_compatibility_level(Some("s"), level);
        store
            .register("s", &NewSchema::avro(first))
            .expect("first version");
        store
    }

    fn accepts(level: CompatibilityLevel, history: &[&str], next: &str) -> bool {
        let store = SchemaStore::new();
        store.set_compatibility_level(None, level);
        for schema in history {
            store
                .register("s", &NewSchema::avro(*schema))
                .expect("history is accepted");
        }
        match store.register("s", &NewSchema::avro(next)) {
            Ok(r) => {
                assert!(r.created);
                true
            }
            Err(RegistryError::Incompatible { .. }) => false,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn levels_parse_in_any_case_and_print_as_confluent() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(
                level.as_str().parse::<CompatibilityLevel>().ok(),
                Some(level)
            );
            assert_eq!(
                level
                    .as_str()
                    .to_lowercase()
                    .parse::<CompatibilityLevel>()
                    .ok(),
                Some(level)
            );
            let json = serde_json::to_string(&level).expect("serializes");
            assert_eq!(json, format!("\"{}\"", level.as_str()));
        }
        assert!(matches!(
            "SIDEWAYS".parse::<CompatibilityLevel>(),
            Err(RegistryError::InvalidCompatibilityLevel(_))
        ));
        assert_eq!(CompatibilityLevel::default(), CompatibilityLevel::Backward);
    }

    #[test]
    fn added_field_with_default_passes_every_level() {
        for level in CompatibilityLevel::ALL {
            assert!(accepts(level, &[V1], V2_DEFAULT), "{level}");
        }
    }

    #[test]
    fn added_field_without_default_is_forward_only() {
        use CompatibilityLevel::*;
        for (level, expected) in [
            (None, true),
            (Backward, false),
            (BackwardTransitive, false),
            (Forward, true),
            (ForwardTransitive, true),
            (Full, false),
            (FullTransitive, false),
        ] {
            assert_eq!(accepts(level, &[V1], V2_REQUIRED), expected, "{level}");
        }
    }

    #[test]
    fn removed_required_field_is_backward_only() {
        use CompatibilityLevel::*;
        for (level, expected) in [
            (None, true),
            (Backward, true),
            (BackwardTransitive, true),
            (Forward, false),
            (ForwardTransitive, false),
            (Full, false),
            (FullTransitive, false),
        ] {
            assert_eq!(accepts(level, &[V1], V2_DROPPED), expected, "{level}");
        }
    }

    #[test]
    fn transitive_levels_check_every_version() {
        use CompatibilityLevel::*;
        // v3 requires `email`, which v2 writes but v1 does not.
        let v3 = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"email","type":"string"}]}"#;
        assert!(accepts(Backward, &[V1, V2_DEFAULT], v3));
        assert!(!accepts(BackwardTransitive, &[V1, V2_DEFAULT], v3));

        // v1 requires `email`; v2 gives it a default; v3 drops it: v2 reads v3, v1 not.
        let f1 = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"string"},{"name":"email","type":"string"}]}"#;
        let f2 = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"string"},{"name":"email","type":"string","default":""}]}"#;
        let f3 = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"string"}]}"#;
        assert!(accepts(Forward, &[f1, f2], f3));
        assert!(!accepts(ForwardTransitive, &[f1, f2], f3));

        // Full holds between neighbours but not from v1 to v3.
        assert!(accepts(Full, &[f1, f2], f3));
        assert!(!accepts(FullTransitive, &[f1, f2], f3));
    }

    #[test]
    fn type_changes_follow_avro_promotion() {
        use CompatibilityLevel::*;
        let int = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#;
        let long = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"long"}]}"#;
        let string = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
        assert!(accepts(Backward, &[int], long));
        assert!(!accepts(Forward, &[int], long));
        assert!(!accepts(Backward, &[int], string));
        assert!(accepts(None, &[int], string));
    }

    #[test]
    fn enum_symbols_partial_match_is_incompatible() {
        use CompatibilityLevel::*;
        let ab = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        let abc = r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#;
        assert!(accepts(Backward, &[ab], abc));
        // The old reader does not know C: apache-avro says Partial, Confluent refuses.
        assert!(!accepts(Forward, &[ab], abc));
        assert!(!accepts(Full, &[ab], abc));
    }

    #[test]
    fn incompatible_reasons_name_the_field_and_version() {
        let store = store_with(CompatibilityLevel::Backward, V1);
        let err = store
            .register("s", &NewSchema::avro(V2_REQUIRED))
            .expect_err("refused");
        let RegistryError::Incompatible { subject, reasons } = &err else {
            panic!("not incompatible: {err}");
        };
        assert_eq!(subject, "s");
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("version 1"), "{}", reasons[0]);
        assert!(reasons[0].contains("'email'"), "{}", reasons[0]);
        assert_eq!(err.error_code(), 409);
        assert_eq!(err.http_status(), 409);

        let store = store_with(CompatibilityLevel::Backward, V1);
        let other = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"id","type":"long"}]}"#;
        let reasons = store
            .check_compatibility("s", &NewSchema::avro(other), None)
            .expect("checked");
        assert!(reasons[0].contains("field 'id'"), "{}", reasons[0]);
        assert!(!reasons[0].contains("RecordSchema"), "{}", reasons[0]);
    }

    #[test]
    fn same_schema_gives_same_id_and_version() {
        let store = SchemaStore::new();
        let first = store
            .register("a", &NewSchema::avro(V1))
            .expect("registered");
        assert_eq!((first.id, first.version, first.created), (1, 1, true));
        // Whitespace and key order do not matter.
        let spaced = r#"{ "namespace": "orderflow", "name": "User", "type": "record",
            "fields": [ { "type": "string", "name": "id" } ] }"#;
        let again = store
            .register("a", &NewSchema::avro(spaced))
            .expect("registered");
        assert_eq!((again.id, again.version, again.created), (1, 1, false));
        // Another subject reuses the id, with its own version 1.
        let other = store
            .register("b", &NewSchema::avro(V1))
            .expect("registered");
        assert_eq!((other.id, other.version, other.created), (1, 1, true));
        // A new schema gets the next id and version.
        let v2 = store
            .register("a", &NewSchema::avro(V2_DEFAULT))
            .expect("registered");
        assert_eq!((v2.id, v2.version), (2, 2));
        assert_eq!(
            store.id_usages(1, false).expect("known"),
            vec![("a".to_string(), 1), ("b".to_string(), 1)]
        );
    }

    #[test]
    fn defaults_and_logical_types_make_different_schemas() {
        let store = SchemaStore::new();
        store.set_compatibility_level(None, CompatibilityLevel::None);
        let long = r#"{"type":"record","name":"R","fields":[{"name":"at","type":"long"}]}"#;
        let ts = r#"{"type":"record","name":"R","fields":[{"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
        let with_default =
            r#"{"type":"record","name":"R","fields":[{"name":"at","type":"long","default":0}]}"#;
        let ids: Vec<u32> = [long, ts, with_default]
            .iter()
            .map(|s| {
                store
                    .register("s", &NewSchema::avro(*s))
                    .expect("registered")
                    .id
            })
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn primitive_schemas_in_every_spelling() {
        let store = SchemaStore::new();
        let a = store
            .register("p", &NewSchema::avro(r#"{"type":"string"}"#))
            .expect("object form");
        let b = store
            .register("p", &NewSchema::avro(r#""string""#))
            .expect("quoted form");
        let c = store
            .register("p", &NewSchema::avro("string"))
            .expect("bare form");
        assert_eq!((a.id, b.id, c.id), (1, 1, 1));
        assert!(!b.created && !c.created);
        assert!(matches!(
            store.schema_by_id(1).map(|s| s.schema.clone()),
            Ok(Schema::String)
        ));
    }

    #[test]
    fn invalid_and_unsupported_schemas_are_refused() {
        let store = SchemaStore::new();
        let err = store
            .register("s", &NewSchema::avro(r#"{"type":"record","name":"R"}"#))
            .expect_err("no fields");
        assert!(matches!(err, RegistryError::InvalidSchema(_)), "{err}");
        assert_eq!(err.error_code(), 42201);
        let err = store
            .register("s", &NewSchema::avro("{not json"))
            .expect_err("not json");
        assert!(matches!(err, RegistryError::InvalidSchema(_)), "{err}");
        let err = store
            .register("s", &NewSchema::avro("  "))
            .expect_err("empty");
        assert!(matches!(err, RegistryError::InvalidSchema(_)), "{err}");
        let mut proto = NewSchema::avro("syntax = \"proto3\";");
        proto.schema_type = Some("PROTOBUF".to_string());
        let err = store.register("s", &proto).expect_err("protobuf");
        assert_eq!(
            err,
            RegistryError::UnsupportedSchemaType("PROTOBUF".to_string())
        );
        let mut avro = NewSchema::avro(V1);
        avro.schema_type = Some("avro".to_string());
        assert!(store.register("s", &avro).is_ok());
        assert!(store.subjects(true) == vec!["s".to_string()]);
    }

    #[test]
    fn lookups_and_not_found_errors() {
        let store = store_with(CompatibilityLevel::Backward, V1);
        let found = store
            .lookup("s", &NewSchema::avro(V1), false)
            .expect("found");
        assert_eq!((found.version, found.schema.id), (1, 1));
        assert!(matches!(
            store.lookup("s", &NewSchema::avro(V2_DEFAULT), false),
            Err(RegistryError::SchemaNotFound { .. })
        ));
        assert!(matches!(
            store.lookup("nope", &NewSchema::avro(V1), false),
            Err(RegistryError::SubjectNotFound(_))
        ));
        assert!(matches!(
            store.schema_by_id(99),
            Err(RegistryError::SchemaIdNotFound(99))
        ));
        assert!(matches!(
            store.version("s", VersionSpec::Number(7), false),
            Err(RegistryError::VersionNotFound { .. })
        ));
        assert!(matches!(
            store.versions("nope", false),
            Err(RegistryError::SubjectNotFound(_))
        ));
        assert_eq!(
            "latest".parse::<VersionSpec>().ok(),
            Some(VersionSpec::Latest)
        );
        assert_eq!("-1".parse::<VersionSpec>().ok(), Some(VersionSpec::Latest));
        assert_eq!(
            "3".parse::<VersionSpec>().ok(),
            Some(VersionSpec::Number(3))
        );
        for bad in ["0", "x", "-2", "4294967295"] {
            assert!(
                matches!(
                    bad.parse::<VersionSpec>(),
                    Err(RegistryError::InvalidVersion(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn compatibility_check_against_one_version_or_the_level() {
        let store = store_with(CompatibilityLevel::Backward, V1);
        store
            .register("s", &NewSchema::avro(V2_DEFAULT))
            .expect("v2");
        // V2_REQUIRED reads v2 data (email is there) but not v1 data.
        let required = NewSchema::avro(V2_REQUIRED);
        assert!(
            store
                .check_compatibility("s", &required, Some(VersionSpec::Latest))
                .expect("ok")
                .is_empty()
        );
        assert_eq!(
            store
                .check_compatibility("s", &required, Some(VersionSpec::Number(1)))
                .expect("ok")
                .len(),
            1
        );
        assert!(
            store
                .check_compatibility("s", &required, None)
                .expect("ok")
                .is_empty()
        );
        store.set_compatibility_level(Some("s"), CompatibilityLevel::BackwardTransitive);
        assert_eq!(
            store
                .check_compatibility("s", &required, None)
                .expect("ok")
                .len(),
            1
        );
        // An unknown subject is compatible with anything, unless a version is named.
        assert!(
            store
                .check_compatibility("new", &required, None)
                .expect("ok")
                .is_empty()
        );
        assert!(matches!(
            store.check_compatibility("new", &required, Some(VersionSpec::Latest)),
            Err(RegistryError::SubjectNotFound(_))
        ));
    }

    #[test]
    fn subject_levels_override_the_global_one() {
        let store = SchemaStore::new();
        assert_eq!(
            store.compatibility_level(None),
            Some(CompatibilityLevel::Backward)
        );
        assert_eq!(store.compatibility_level(Some("s")), None);
        store.set_compatibility_level(Some("s"), CompatibilityLevel::Full);
        store.set_compatibility_level(None, CompatibilityLevel::None);
        assert_eq!(store.effective_level("s"), CompatibilityLevel::Full);
        assert_eq!(store.effective_level("t"), CompatibilityLevel::None);
        assert_eq!(
            store.clear_compatibility_level("s"),
            Ok(CompatibilityLevel::Full)
        );
        assert_eq!(store.effective_level("s"), CompatibilityLevel::None);
        assert!(matches!(
            store.clear_compatibility_level("s"),
            Err(RegistryError::SubjectLevelNotConfigured(_))
        ));
        // A level on a subject without versions does not make it a listed subject.
        assert!(store.subjects(true).is_empty());
    }

    #[test]
    fn soft_and_permanent_deletes() {
        let store = store_with(CompatibilityLevel::None, V1);
        store
            .register("s", &NewSchema::avro(V2_REQUIRED))
            .expect("v2");
        assert!(matches!(
            store.delete_subject("s", true),
            Err(RegistryError::SubjectNotSoftDeleted(_))
        ));
        assert_eq!(store.delete_version("s", VersionSpec::Latest, false), Ok(2));
        assert_eq!(store.versions("s", false), Ok(vec![1]));
        assert_eq!(store.versions("s", true), Ok(vec![1, 2]));
        assert!(matches!(
            store.delete_version("s", VersionSpec::Number(2), false),
            Err(RegistryError::VersionSoftDeleted { version: 2, .. })
        ));
        assert_eq!(store.delete_subject("s", false), Ok(vec![1]));
        assert!(matches!(
            store.delete_subject("s", false),
            Err(RegistryError::SubjectSoftDeleted(_))
        ));
        assert!(store.subjects(false).is_empty());
        assert_eq!(store.subjects(true), vec!["s".to_string()]);
        // Ids stay readable.
        assert!(store.schema_by_id(2).is_ok());
        // Numbering continues after soft-deleted versions; the id is reused.
        let again = store
            .register("s", &NewSchema::avro(V1))
            .expect("re-registered");
        assert_eq!((again.id, again.version), (1, 3));
        assert!(matches!(
            store.delete_version("s", VersionSpec::Number(3), true),
            Err(RegistryError::VersionNotSoftDeleted { .. })
        ));
        assert_eq!(
            store.delete_version("s", VersionSpec::Number(1), true),
            Ok(1)
        );
        assert_eq!(store.versions("s", true), Ok(vec![2, 3]));
        assert!(store.schema_by_id(1).is_ok(), "still used by version 3");
        // Permanently deleting the last version using an id removes the schema, and
        // the id is not given out again.
        assert_eq!(
            store.delete_version("s", VersionSpec::Number(2), true),
            Ok(2)
        );
        assert!(matches!(
            store.schema_by_id(2),
            Err(RegistryError::SchemaIdNotFound(2))
        ));
        let back = store
            .register("s", &NewSchema::avro(V2_REQUIRED))
            .expect("registered again");
        assert_eq!((back.id, back.version), (3, 4));
    }

    #[test]
    fn references_are_resolved_and_protected() {
        let store = SchemaStore::new();
        let money = r#"{"type":"record","name":"Money","namespace":"orderflow","fields":[{"name":"amount","type":"long"},{"name":"currency","type":"string"}]}"#;
        let order = r#"{"type":"record","name":"Order","namespace":"orderflow","fields":[{"name":"total","type":"orderflow.Money"}]}"#;
        store
            .register("money", &NewSchema::avro(money))
            .expect("money");
        let reference = SchemaReference {
            name: "orderflow.Money".to_string(),
            subject: "money".to_string(),
            version: 1,
        };
        assert!(matches!(
            store.register("order", &NewSchema::avro(order)),
            Err(RegistryError::InvalidSchema(_))
        ));
        let with_ref = NewSchema::avro(order).with_references(vec![reference.clone()]);
        let registered = store.register("order", &with_ref).expect("order");
        let stored = store.schema_by_id(registered.id).expect("stored");
        let Schema::Record(record) = &stored.schema else {
            panic!("not a record");
        };
        assert!(
            matches!(record.fields[0].schema, Schema::Record(_)),
            "the reference is inlined"
        );
        assert_eq!(
            store.referenced_by("money", VersionSpec::Number(1)),
            Ok(vec![registered.id])
        );
        assert!(matches!(
            store.delete_subject("money", false),
            Err(RegistryError::ReferenceExists { .. })
        ));
        let bad = NewSchema::avro(order).with_references(vec![SchemaReference {
            version: 9,
            ..reference
        }]);
        assert!(matches!(
            store.register("order2", &bad),
            Err(RegistryError::InvalidSchema(_))
        ));
    }

    #[test]
    fn listener_sees_every_event_and_replay_rebuilds_the_store() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let store = SchemaStore::with_listener(move |event| {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event.clone());
        });
        store.set_compatibility_level(Some("s"), CompatibilityLevel::Full);
        store.register("s", &NewSchema::avro(V1)).expect("v1");
        store
            .register("s", &NewSchema::avro(V1))
            .expect("v1 again, no event");
        store
            .register("s", &NewSchema::avro(V2_DEFAULT))
            .expect("v2");
        store
            .register("t", &NewSchema::avro(r#""string""#))
            .expect("t");
        store
            .delete_version("s", VersionSpec::Number(1), false)
            .expect("deleted");
        let events = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(
            events[1],
            RegistryEvent::SchemaRegistered {
                subject: "s".to_string(),
                version: 1,
                id: 1,
                schema: V1.to_string(),
                references: Vec::new(),
            }
        );
        // The events round-trip through JSON, as they would through a topic.
        let json = serde_json::to_string(&events).expect("serializes");
        let decoded: Vec<RegistryEvent> = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(decoded, events);

        for log in [events, store.snapshot_events()] {
            let replica = SchemaStore::new();
            for event in log.clone() {
                replica.apply(event).expect("applies");
            }
            // Applying twice changes nothing.
            for event in log {
                replica.apply(event).expect("applies again");
            }
            assert_eq!(replica.subjects(true), store.subjects(true));
            assert_eq!(replica.versions("s", true), store.versions("s", true));
            assert_eq!(replica.versions("s", false), Ok(vec![2]));
            assert_eq!(replica.effective_level("s"), CompatibilityLevel::Full);
            assert_eq!(
                replica.schema_by_id(3).map(|s| s.text.clone()),
                Ok(r#""string""#.to_string())
            );
            // The next id continues after the replayed ones.
            let next = replica
                .register("u", &NewSchema::avro(r#""long""#))
                .expect("u");
            assert_eq!(next.id, 4);
        }
    }

    #[test]
    fn apply_refuses_a_conflicting_id() {
        let store = SchemaStore::new();
        store.register("s", &NewSchema::avro(V1)).expect("v1");
        let conflicting = RegistryEvent::SchemaRegistered {
            subject: "t".to_string(),
            version: 1,
            id: 1,
            schema: r#""string""#.to_string(),
            references: Vec::new(),
        };
        assert!(matches!(
            store.apply(conflicting),
            Err(RegistryError::Internal(_))
        ));
        assert!(store.versions("t", true).is_err());
    }

    /// A command of the property test below.
    #[derive(Debug, Clone)]
    enum Command {
        Register(usize, usize),
        SetLevel(Option<usize>, usize),
        ClearLevel(usize),
        DeleteSubject(usize, bool),
        DeleteVersion(usize, u32, bool),
    }

    const SUBJECTS: [&str; 3] = ["a", "b", "c"];
    const SCHEMAS: [&str; 5] = [V1, V2_DEFAULT, V2_REQUIRED, V2_DROPPED, r#""string""#];

    fn command() -> impl proptest::strategy::Strategy<Value = Command> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..SUBJECTS.len(), 0..SCHEMAS.len()).prop_map(|(s, x)| Command::Register(s, x)),
            1 => (proptest::option::of(0..SUBJECTS.len()), 0..CompatibilityLevel::ALL.len())
                .prop_map(|(s, l)| Command::SetLevel(s, l)),
            1 => (0..SUBJECTS.len()).prop_map(Command::ClearLevel),
            1 => (0..SUBJECTS.len(), any::<bool>()).prop_map(|(s, p)| Command::DeleteSubject(s, p)),
            1 => (0..SUBJECTS.len(), 1..5u32, any::<bool>()).prop_map(|(s, v, p)| Command::DeleteVersion(s, v, p)),
        ]
    }

    /// Everything a client can observe, for comparing two stores.
    fn observe(store: &SchemaStore) -> Vec<String> {
        let mut seen = vec![
            format!("global {:?}", store.compatibility_level(None)),
            format!("next id {}", store.read().next_id),
        ];
        for id in 1..12 {
            seen.push(format!(
                "id {id} {:?}",
                store.schema_by_id(id).map(|s| s.text.clone())
            ));
        }
        for subject in SUBJECTS {
            seen.push(format!(
                "{subject} level {:?}",
                store.compatibility_level(Some(subject))
            ));
            for version in store.versions(subject, true).unwrap_or_default() {
                let found = store.version(subject, VersionSpec::Number(version), true);
                seen.push(format!(
                    "{subject} v{version} {:?}",
                    found.map(|f| (f.deleted, f.schema.id, f.schema.text.clone()))
                ));
            }
        }
        seen
    }

    proptest::proptest! {
        #[test]
        fn replaying_emitted_or_snapshot_events_rebuilds_the_store(
            commands in proptest::collection::vec(command(), 0..40)
        ) {
            let log = Arc::new(Mutex::new(Vec::new()));
            let sink = log.clone();
            let store = SchemaStore::with_listener(move |event| {
                sink.lock().unwrap_or_else(PoisonError::into_inner).push(event.clone());
            });
            for command in commands {
                // Refusals are part of the game; they must change nothing.
                let before = observe(&store);
                let refused = match command {
                    Command::Register(s, x) => store.register(SUBJECTS[s], &NewSchema::avro(SCHEMAS[x])).is_err(),
                    Command::SetLevel(s, l) => {
                        store.set_compatibility_level(s.map(|s| SUBJECTS[s]), CompatibilityLevel::ALL[l]);
                        false
                    }
                    Command::ClearLevel(s) => store.clear_compatibility_level(SUBJECTS[s]).is_err(),
                    Command::DeleteSubject(s, p) => store.delete_subject(SUBJECTS[s], p).is_err(),
                    Command::DeleteVersion(s, v, p) => {
                        store.delete_version(SUBJECTS[s], VersionSpec::Number(v), p).is_err()
                    }
                };
                if refused {
                    proptest::prop_assert_eq!(&before, &observe(&store));
                }
            }
            let emitted = log.lock().unwrap_or_else(PoisonError::into_inner).clone();
            for events in [emitted, store.snapshot_events()] {
                let replica = SchemaStore::new();
                for event in events {
                    proptest::prop_assert!(replica.apply(event).is_ok());
                }
                proptest::prop_assert_eq!(observe(&replica), observe(&store));
            }
        }
    }
}
