//! [`RegistryClient`]: how the engine registers the schemas of its topics and finds
//! the writer schema of a record from the id in its Confluent framing.
//!
//! Two backends behave the same: [`RegistryClient::embedded`] talks to a
//! [`SchemaStore`] in this process ([`RegistryClient::durable`]: to one kept in a
//! [`SchemaLog`], a registration returning once it is in the log), [`RegistryClient::remote`] to a Confluent-compatible
//! registry over HTTP through schema_registry_converter's async functions. Both cache
//! in-process: a schema id is resolved at most once per client (concurrent callers
//! asking for the same id wait on one fetch), and registering the same text under
//! the same subject again answers from the cache. Failed lookups are not cached, so
//! a registry that was unreachable is asked again on the next call.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_versions, get_referenced_schema, get_schema_by_id,
    get_schema_by_subject_and_version, is_compatible_schema, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, RegisteredReference, RegisteredSchema as FoundSchema, SchemaType, SuppliedSchema,
};
use tokio::sync::OnceCell;

use super::error::RegistryError;
use super::log::SchemaLog;
use super::store::{NewSchema, SchemaStore, StoredSchema, VersionSpec, normalize_text, parse_avro};

/// A schema the registry knows, parsed.
#[derive(Debug, Clone)]
pub struct RegisteredSchema {
    /// Its global id (the 4 bytes after the magic byte in the wire format).
    pub id: u32,
    /// The parsed schema, self-contained (referenced types inlined).
    pub schema: Schema,
    /// The schema text.
    pub text: String,
}

/// Where schemas are registered and looked up.
#[derive(Debug)]
enum Backend {
    /// A registry in this process, and the log its changes are kept in, if any.
    Embedded(Arc<SchemaStore>, Option<Arc<SchemaLog>>),
    /// A Confluent-compatible registry over HTTP.
    Remote(SrSettings),
}

/// The engine's handle on a schema registry, with an in-process cache.
#[derive(Debug)]
pub struct RegistryClient {
    backend: Backend,
    /// One cell per id asked for. The map lock is held only to find the cell; the
    /// fetch runs inside the cell, so a second caller for the same id waits for the
    /// first fetch instead of starting its own.
    by_id: Mutex<HashMap<u32, Arc<OnceCell<Arc<RegisteredSchema>>>>>,
    /// Registrations made through this client, by `(subject, text)`.
    registered: Mutex<HashMap<(String, String), Arc<RegisteredSchema>>>,
}

impl RegistryClient {
    /// A client of the registry `store` in this process.
    pub fn embedded(store: Arc<SchemaStore>) -> RegistryClient {
        RegistryClient::with_backend(Backend::Embedded(store, None))
    }

    /// A client of the registry kept in `log`, in this process: a registration
    /// returns once it is in the log.
    pub fn durable(log: Arc<SchemaLog>) -> RegistryClient {
        RegistryClient::with_backend(Backend::Embedded(log.store().clone(), Some(log)))
    }

    /// A client of the registry at `url` (`http://host:8081`), with a 30 s timeout per
    /// call.
    pub fn remote(url: &str) -> Result<RegistryClient, RegistryError> {
        let settings = SrSettings::new_builder(url.trim_end_matches('/').to_string())
            .build()
            .map_err(|e| RegistryError::Remote {
                error_code: None,
                message: e.to_string(),
                retriable: false,
            })?;
        Ok(RegistryClient::with_settings(settings))
    }

    /// A client of a remote registry with settings built by the caller (several
    /// urls, authentication, headers, timeouts).
    pub fn with_settings(settings: SrSettings) -> RegistryClient {
        RegistryClient::with_backend(Backend::Remote(settings))
    }

    fn with_backend(backend: Backend) -> RegistryClient {
        RegistryClient {
            backend,
            by_id: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// The store behind an embedded client.
    pub fn store(&self) -> Option<&Arc<SchemaStore>> {
        match &self.backend {
            Backend::Embedded(store, _) => Some(store),
            Backend::Remote(_) => None,
        }
    }

    /// Registers the Avro schema `schema` under `subject` (or finds it registered
    /// already) and returns it with its global id. An invalid schema is refused
    /// before any network call.
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<RegisteredSchema, RegistryError> {
        let key = (subject.to_string(), schema.to_string());
        if let Some(found) = lock(&self.registered).get(&key) {
            return Ok(RegisteredSchema::clone(found));
        }
        let registered = match &self.backend {
            Backend::Embedded(store, log) => {
                let registration = store.register(subject, &NewSchema::avro(schema))?;
                if let Some(log) = log {
                    log.persisted().await?;
                }
                RegisteredSchema::from(&*store.schema_by_id(registration.id)?)
            }
            Backend::Remote(settings) => {
                let text = normalize_text(schema);
                let parsed = parse_avro(&text, &[])?;
                let supplied = SuppliedSchema::new(None, SchemaType::Avro, text.clone());
                let answer = post_schema(settings, subject.to_string(), supplied)
                    .await
                    .map_err(|e| remote_error(e, Call::Register(subject)))?;
                RegisteredSchema {
                    id: answer.id,
                    schema: parsed,
                    text,
                }
            }
        };
        let registered = Arc::new(registered);
        lock(&self.registered).insert(key, registered.clone());
        // The text is the one registered under that id (or an equivalent one), so a
        // later lookup of the id needs no call either. A cell already resolved (or
        // being resolved) keeps its value.
        let _ = self.cell(registered.id).set(registered.clone());
        Ok(RegisteredSchema::clone(&registered))
    }

    /// The schema with global id `id`, from the cache or else from the registry.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        let cell = self.cell(id);
        let result = cell.get_or_try_init(|| self.fetch(id)).await.cloned();
        if result.is_err() {
            // Forget the empty cell so bogus ids do not pile up.
            let mut cells = lock(&self.by_id);
            if cells
                .get(&id)
                .is_some_and(|c| Arc::ptr_eq(c, &cell) && !c.initialized())
            {
                cells.remove(&id);
            }
        }
        result
    }

    /// Whether `schema` would be accepted under `subject` by its compatibility level
    /// (always true for a subject without versions). Not cached.
    pub async fn is_compatible(&self, subject: &str, schema: &str) -> Result<bool, RegistryError> {
        match &self.backend {
            Backend::Embedded(store, _) => Ok(store
                .check_compatibility(subject, &NewSchema::avro(schema), None)?
                .is_empty()),
            Backend::Remote(settings) => {
                let text = normalize_text(schema);
                parse_avro(&text, &[])?;
                let supplied = SuppliedSchema::new(None, SchemaType::Avro, text);
                is_compatible_schema(settings, subject.to_string(), supplied)
                    .await
                    .map_err(|e| remote_error(e, Call::Compatibility(subject)))
            }
        }
    }

    /// The live versions of `subject`, oldest first, each with its schema; empty
    /// for a subject the registry does not know. Not cached.
    pub async fn versions(
        &self,
        subject: &str,
    ) -> Result<Vec<(u32, RegisteredSchema)>, RegistryError> {
        match &self.backend {
            Backend::Embedded(store, _) => {
                let numbers = match store.versions(subject, false) {
                    Ok(numbers) => numbers,
                    Err(RegistryError::SubjectNotFound(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                };
                let mut versions = Vec::with_capacity(numbers.len());
                for number in numbers {
                    let found = store.version(subject, VersionSpec::Number(number), false)?;
                    versions.push((number, RegisteredSchema::from(&*found.schema)));
                }
                Ok(versions)
            }
            Backend::Remote(settings) => {
                let numbers = match get_all_versions(settings, subject.to_string()).await {
                    Ok(numbers) => numbers,
                    Err(e) => match remote_error(e, Call::Subject(subject)) {
                        RegistryError::SubjectNotFound(_) => return Ok(Vec::new()),
                        e => return Err(e),
                    },
                };
                let mut versions = Vec::with_capacity(numbers.len());
                for number in numbers {
                    let found = get_schema_by_subject_and_version(settings, subject, Some(number))
                        .await
                        .map_err(|e| remote_error(e, Call::Subject(subject)))?;
                    versions.push((number, parse_found(settings, found).await?));
                }
                Ok(versions)
            }
        }
    }

    fn cell(&self, id: u32) -> Arc<OnceCell<Arc<RegisteredSchema>>> {
        lock(&self.by_id).entry(id).or_default().clone()
    }

    async fn fetch(&self, id: u32) -> Result<Arc<RegisteredSchema>, RegistryError> {
        match &self.backend {
            Backend::Embedded(store, _) => {
                Ok(Arc::new(RegisteredSchema::from(&*store.schema_by_id(id)?)))
            }
            Backend::Remote(settings) => {
                let found = get_schema_by_id(id, settings)
                    .await
                    .map_err(|e| remote_error(e, Call::SchemaById(id)))?;
                let parsed = parse_found(settings, found).await?;
                tracing::debug!(id, "schema fetched from the registry");
                Ok(Arc::new(RegisteredSchema { id, ..parsed }))
            }
        }
    }
}

impl From<&StoredSchema> for RegisteredSchema {
    fn from(stored: &StoredSchema) -> Self {
        RegisteredSchema {
            id: stored.id,
            schema: stored.schema.clone(),
            text: stored.text.clone(),
        }
    }
}

/// A schema as a remote registry answered it, parsed with its references (Avro only).
async fn parse_found(
    settings: &SrSettings,
    found: FoundSchema,
) -> Result<RegisteredSchema, RegistryError> {
    if found.schema_type != SchemaType::Avro {
        return Err(RegistryError::UnsupportedSchemaType(schema_type_name(
            &found.schema_type,
        )));
    }
    let referenced = fetch_references(settings, &found.references).await?;
    let schema = parse_avro(&found.schema, &referenced)?;
    Ok(RegisteredSchema {
        id: found.id,
        schema,
        text: found.schema,
    })
}

/// The texts of the schemas `references` name, and of those they reference in turn.
async fn fetch_references(
    settings: &SrSettings,
    references: &[RegisteredReference],
) -> Result<Vec<String>, RegistryError> {
    let mut pending: Vec<RegisteredReference> = references.to_vec();
    let mut seen = BTreeSet::new();
    let mut texts = Vec::new();
    while let Some(reference) = pending.pop() {
        if !seen.insert((reference.subject.clone(), reference.version)) {
            continue;
        }
        let found = get_referenced_schema(settings, &reference)
            .await
            .map_err(|e| remote_error(e, Call::Reference(&reference.subject)))?;
        pending.extend(found.references.iter().cloned());
        texts.push(found.schema);
    }
    Ok(texts)
}

fn schema_type_name(schema_type: &SchemaType) -> String {
    match schema_type {
        SchemaType::Avro => "AVRO".to_string(),
        SchemaType::Protobuf => "PROTOBUF".to_string(),
        SchemaType::Json => "JSON".to_string(),
        SchemaType::Other(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

/// What the failed remote call was about, to name it in the error.
#[derive(Debug, Clone, Copy)]
enum Call<'a> {
    Register(&'a str),
    Subject(&'a str),
    Compatibility(&'a str),
    SchemaById(u32),
    Reference(&'a str),
}

/// The typed error for a failed schema_registry_converter call: the registry's
/// `error_code` (carried as the error's source) picks the variant.
fn remote_error(error: SRCError, call: Call<'_>) -> RegistryError {
    let raw =
        std::error::Error::source(&error).and_then(|source| source.downcast_ref::<RawError>());
    let subject = match call {
        Call::Register(s) | Call::Subject(s) | Call::Compatibility(s) | Call::Reference(s) => {
            s.to_string()
        }
        Call::SchemaById(_) => String::new(),
    };
    match (raw.map(|r| (r.error_code, r.message.clone())), call) {
        (Some((409, message)), _) => RegistryError::Incompatible {
            subject,
            reasons: vec![message],
        },
        (Some((42201, message)), _) => RegistryError::InvalidSchema(message),
        (Some((40403, _)), Call::SchemaById(id)) => RegistryError::SchemaIdNotFound(id),
        (
            Some((40401, _)),
            Call::Register(_) | Call::Subject(_) | Call::Compatibility(_) | Call::Reference(_),
        ) => RegistryError::SubjectNotFound(subject),
        (Some((code, message)), _) if code != 0 => RegistryError::Remote {
            error_code: Some(code),
            message: format!("{}: {message}", error.error),
            retriable: error.retriable,
        },
        _ => RegistryError::Remote {
            error_code: None,
            message: match &error.cause {
                Some(cause) => format!("{}: {cause}", error.error),
                None => error.error.clone(),
            },
            retriable: error.retriable,
        },
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps are only ever inserted into or removed from whole, so a panic
    // elsewhere cannot leave them inconsistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
