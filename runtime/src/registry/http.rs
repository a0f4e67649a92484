//! The Confluent Schema Registry REST subset over a [`SchemaStore`]: what
//! confluent-kafka, kcat and schema_registry_converter call.
//!
//! [`app`] builds the axum [`Router`]; [`serve`] runs it on a listener until the
//! shutdown future resolves, so tests start the registry in-process on port 0.
//!
//! Every answer, errors included, is JSON with the content type
//! `application/vnd.schemaregistry.v1+json`; errors have Confluent's shape
//! `{"error_code": 40401, "message": "Subject 'x' not found."}`. Request bodies are read
//! as JSON whatever their content type says (clients send
//! `application/vnd.schemaregistry.v1+json`, `application/json` or nothing). Query
//! parameter names and boolean values are matched in any case (`?normalize=TRUE`).
//! `normalize` is accepted and has no further effect: schemas are always compared in
//! a normalized form (see [`super::store`]).
//!
//! The routes serve a [`Registry`]: a store alone (in memory only, as in-process
//! tests serve it) or a [`SchemaLog`] (durable in Kafka). Every route that changes
//! something waits, before it answers OK, until the change is in the log.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::RegistryError;
use super::log::SchemaLog;
use super::store::{
    CompatibilityLevel, NewSchema, SchemaReference, SchemaStore, SchemaVersion, VersionSpec,
};

/// The content type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The largest request body accepted (schemas of large topologies can be big).
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// What the routes serve: a store, and the log its changes must reach before a
/// change is answered OK (none for a registry in memory only). Made from an
/// `Arc<SchemaStore>` or an `Arc<SchemaLog>`.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<SchemaStore>,
    log: Option<Arc<SchemaLog>>,
}

impl Registry {
    /// The store served.
    pub fn store(&self) -> &Arc<SchemaStore> {
        &self.store
    }

    /// Waits until the changes made so far are durable (at once without a log).
    async fn persisted(&self) -> Result<(), RegistryError> {
        match &self.log {
            Some(log) => log.persisted().await,
            None => Ok(()),
        }
    }
}

impl From<Arc<SchemaStore>> for Registry {
    fn from(store: Arc<SchemaStore>) -> Registry {
        Registry { store, log: None }
    }
}

impl From<Arc<SchemaLog>> for Registry {
    fn from(log: Arc<SchemaLog>) -> Registry {
        Registry {
            store: log.store().clone(),
            log: Some(log),
        }
    }
}

/// The registry's routes over `registry` (an `Arc<SchemaStore>` or an
/// `Arc<SchemaLog>`).
pub fn app(registry: impl Into<Registry>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_against_level),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_against_version),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route("/mode", get(mode))
        .route("/mode/{subject}", get(mode))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(registry.into())
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then finishes the requests
/// in flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: impl Into<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(registry);
    let address = listener.local_addr()?;
    tracing::info!(%address, "schema registry listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!(%address, "schema registry stopped");
    Ok(())
}

type Store = State<Registry>;
type Reply = Result<Response, ApiError>;

/// A JSON response with the registry's content type.
fn reply(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => with_content_type(status, bytes),
        Err(error) => ApiError::from(RegistryError::Internal(error.to_string())).into_response(),
    }
}

fn ok(body: &impl Serialize) -> Reply {
    Ok(reply(StatusCode::OK, body))
}

fn with_content_type(status: StatusCode, bytes: impl Into<axum::body::Body>) -> Response {
    let mut response = (status, bytes.into()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// An error answer in Confluent's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    error_code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, error_code: u32, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error_code,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        let status =
            StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status.is_server_error() {
            // The detail is for the operator, not the client.
            tracing::error!(error = %error, "schema registry internal error");
            "Error in the backend data store".to_string()
        } else {
            error.to_string()
        };
        ApiError::new(status, error.error_code(), message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(status = %self.status, error_code = self.error_code, message = %self.message, "schema registry request refused");
        let body = json!({"error_code": self.error_code, "message": self.message});
        with_content_type(self.status, body.to_string())
    }
}

/// Path parameters, with a JSON error instead of axum's text one.
struct PathParams<T>(T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(PathParams(value)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                400,
                rejection.body_text(),
            )),
        }
    }
}

/// Query parameters, names lower-cased.
struct Params(HashMap<String, String>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether `name` is `true` (any case).
    fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) =
            Query::<Vec<(String, String)>>::try_from_uri(&parts.uri).map_err(|rejection| {
                ApiError::new(StatusCode::BAD_REQUEST, 400, rejection.body_text())
            })?;
        Ok(Params(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        ))
    }
}

/// Reads a JSON body: 400 (error_code 400) when it is not JSON, 422 (error_code 422)
/// when it is JSON of the wrong shape.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            u32::from(rejection.status().as_u16()),
            rejection.body_text(),
        )
    })?;
    serde_json::from_slice(&body).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                422,
                format!("Unprocessable entity: {error}"),
            ),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                400,
                format!("Malformed JSON body: {error}"),
            ),
        }
    })
}

/// `POST /subjects/{s}/versions`, `POST /subjects/{s}` and the compatibility checks.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    /// A string; other JSON (a schema object sent as is) is taken as its text.
    schema: Option<Value>,
    schema_type: Option<String>,
    references: Option<Vec<SchemaReference>>,
}

impl SchemaBody {
    fn into_new_schema(self) -> Result<NewSchema, ApiError> {
        let schema = match self.schema {
            Some(Value::String(text)) => text,
            Some(Value::Null) | None => {
                return Err(RegistryError::InvalidSchema("Empty schema".to_string()).into());
            }
            Some(other) => other.to_string(),
        };
        Ok(NewSchema {
            schema,
            schema_type: self.schema_type,
            references: self.references.unwrap_or_default(),
        })
    }
}

fn parse_id(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {raw} not found"),
        )
    })
}

fn parse_version(raw: &str) -> Result<VersionSpec, ApiError> {
    Ok(raw.parse::<VersionSpec>()?)
}

/// The Confluent shape of one version.
fn version_body(found: &SchemaVersion) -> Value {
    let mut body = json!({
        "subject": found.subject,
        "version": found.version,
        "id": found.schema.id,
        "schema": found.schema.text,
    });
    if !found.schema.references.is_empty() {
        body["references"] = json!(found.schema.references);
    }
    body
}

async fn root() -> Reply {
    ok(&json!({}))
}

async fn schema_types() -> Reply {
    ok(&["AVRO"])
}

/// `GET /schemas/ids/{id}`: `{"schema": "..."}`; `schemaType` is left out for AVRO,
/// as Confluent does. `?subject=`, `?deleted=`, `?format=` are accepted and ignored.
async fn schema_by_id(
    State(Registry { store, .. }): Store,
    PathParams(id): PathParams<String>,
) -> Reply {
    let stored = store.schema_by_id(parse_id(&id)?)?;
    let mut body = json!({"schema": stored.text});
    if !stored.references.is_empty() {
        body["references"] = json!(stored.references);
    }
    ok(&body)
}

async fn raw_schema_by_id(
    State(Registry { store, .. }): Store,
    PathParams(id): PathParams<String>,
) -> Reply {
    let stored = store.schema_by_id(parse_id(&id)?)?;
    Ok(with_content_type(StatusCode::OK, stored.text.clone()))
}

async fn id_subjects(
    State(Registry { store, .. }): Store,
    PathParams(id): PathParams<String>,
    params: Params,
) -> Reply {
    let mut subjects: Vec<String> = store
        .id_usages(parse_id(&id)?, params.flag("deleted"))?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    subjects.dedup();
    ok(&subjects)
}

async fn id_versions(
    State(Registry { store, .. }): Store,
    PathParams(id): PathParams<String>,
    params: Params,
) -> Reply {
    let usages: Vec<Value> = store
        .id_usages(parse_id(&id)?, params.flag("deleted"))?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    ok(&usages)
}

async fn list_subjects(State(Registry { store, .. }): Store, params: Params) -> Reply {
    let prefix = params.get("subjectprefix").unwrap_or("");
    let subjects: Vec<String> = store
        .subjects(params.flag("deleted"))
        .into_iter()
        .filter(|s| s.starts_with(prefix))
        .collect();
    ok(&subjects)
}

async fn list_versions(
    State(Registry { store, .. }): Store,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> Reply {
    ok(&store.versions(&subject, params.flag("deleted"))?)
}

async fn register(
    State(registry): Store,
    PathParams(subject): PathParams<String>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let schema = json_body::<SchemaBody>(body)?.into_new_schema()?;
    let registration = registry.store.register(&subject, &schema)?;
    // Also when nothing changed: the registration found may still be on its way.
    registry.persisted().await?;
    ok(&json!({"id": registration.id}))
}

async fn lookup(
    State(Registry { store, .. }): Store,
    PathParams(subject): PathParams<String>,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let schema = json_body::<SchemaBody>(body)?.into_new_schema()?;
    let found = store.lookup(&subject, &schema, params.flag("deleted"))?;
    ok(&version_body(&found))
}

async fn delete_subject(
    State(registry): Store,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> Reply {
    let deleted = registry
        .store
        .delete_subject(&subject, params.flag("permanent"))?;
    registry.persisted().await?;
    ok(&deleted)
}

async fn get_version(
    State(Registry { store, .. }): Store,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> Reply {
    let found = store.version(&subject, parse_version(&version)?, params.flag("deleted"))?;
    ok(&version_body(&found))
}

async fn get_version_schema(
    State(Registry { store, .. }): Store,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> Reply {
    let found = store.version(&subject, parse_version(&version)?, params.flag("deleted"))?;
    Ok(with_content_type(StatusCode::OK, found.schema.text.clone()))
}

async fn referenced_by(
    State(Registry { store, .. }): Store,
    PathParams((subject, version)): PathParams<(String, String)>,
) -> Reply {
    ok(&store.referenced_by(&subject, parse_version(&version)?)?)
}

async fn delete_version(
    State(registry): Store,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> Reply {
    let deleted = registry.store.delete_version(
        &subject,
        parse_version(&version)?,
        params.flag("permanent"),
    )?;
    registry.persisted().await?;
    ok(&deleted)
}

fn compatibility_reply(messages: Vec<String>, verbose: bool) -> Reply {
    let mut body = json!({"is_compatible": messages.is_empty()});
    if verbose {
        body["messages"] = json!(messages);
    }
    ok(&body)
}

async fn check_against_version(
    State(Registry { store, .. }): Store,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let version = parse_version(&version)?;
    let schema = json_body::<SchemaBody>(body)?.into_new_schema()?;
    let messages = store.check_compatibility(&subject, &schema, Some(version))?;
    compatibility_reply(messages, params.flag("verbose"))
}

async fn check_against_level(
    State(Registry { store, .. }): Store,
    PathParams(subject): PathParams<String>,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let schema = json_body::<SchemaBody>(body)?.into_new_schema()?;
    let messages = store.check_compatibility(&subject, &schema, None)?;
    compatibility_reply(messages, params.flag("verbose"))
}

/// `PUT /config` and `PUT /config/{s}`: `{"compatibility": "FULL"}` (also
/// `compatibilityLevel`, which some clients send).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigBody {
    compatibility: Option<String>,
    compatibility_level: Option<String>,
}

impl ConfigBody {
    fn level(&self) -> Result<CompatibilityLevel, ApiError> {
        let raw = self
            .compatibility
            .as_deref()
            .or(self.compatibility_level.as_deref())
            .unwrap_or("");
        Ok(raw.parse::<CompatibilityLevel>()?)
    }
}

async fn get_global_config(State(Registry { store, .. }): Store) -> Reply {
    let level = store.compatibility_level(None).unwrap_or_default();
    ok(&json!({"compatibilityLevel": level}))
}

async fn put_global_config(State(registry): Store, body: Result<Bytes, BytesRejection>) -> Reply {
    let level = json_body::<ConfigBody>(body)?.level()?;
    registry.store.set_compatibility_level(None, level);
    registry.persisted().await?;
    ok(&json!({"compatibility": level}))
}

/// `GET /config/{s}`: the subject's own level; 40408 when it has none, unless
/// `?defaultToGlobal=true` (Confluent's behaviour since 5.5).
async fn get_subject_config(
    State(Registry { store, .. }): Store,
    PathParams(subject): PathParams<String>,
    params: Params,
) -> Reply {
    let level = match store.compatibility_level(Some(&subject)) {
        Some(level) => level,
        None if params.flag("defaulttoglobal") => store.effective_level(&subject),
        None => return Err(RegistryError::SubjectLevelNotConfigured(subject).into()),
    };
    ok(&json!({"compatibilityLevel": level}))
}

async fn put_subject_config(
    State(registry): Store,
    PathParams(subject): PathParams<String>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let level = json_body::<ConfigBody>(body)?.level()?;
    registry
        .store
        .set_compatibility_level(Some(&subject), level);
    registry.persisted().await?;
    ok(&json!({"compatibility": level}))
}

async fn delete_subject_config(
    State(registry): Store,
    PathParams(subject): PathParams<String>,
) -> Reply {
    let previous = registry.store.clear_compatibility_level(&subject)?;
    registry.persisted().await?;
    ok(&json!({"compatibilityLevel": previous}))
}

/// The registry is always writable.
async fn mode() -> Reply {
    ok(&json!({"mode": "READWRITE"}))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        405,
        "HTTP 405 Method Not Allowed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, String, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, content_type, value)
    }

    #[tokio::test]
    async fn errors_are_confluent_json() {
        let app = app(Arc::new(SchemaStore::new()));
        for (method, uri, body, status, code) in [
            ("POST", "/subjects/s/versions", "{not json", 400, 400),
            ("POST", "/subjects/s/versions", "", 400, 400),
            (
                "POST",
                "/subjects/s/versions",
                r#"{"schema": 5, "references": "x"}"#,
                422,
                422,
            ),
            (
                "POST",
                "/subjects/s/versions",
                r#"{"schemaType": "AVRO"}"#,
                422,
                42201,
            ),
            (
                "POST",
                "/subjects/s/versions",
                r#"{"schema": "{\"type\":\"nope\"}"}"#,
                422,
                42201,
            ),
            (
                "POST",
                "/subjects/s/versions",
                r#"{"schema": "x", "schemaType": "JSON"}"#,
                422,
                42201,
            ),
            ("GET", "/subjects/s/versions/zero", "", 422, 42202),
            ("GET", "/subjects/s/versions/1", "", 404, 40401),
            ("GET", "/schemas/ids/abc", "", 404, 40403),
            (
                "PUT",
                "/config",
                r#"{"compatibility": "SIDEWAYS"}"#,
                422,
                42203,
            ),
            ("PUT", "/config", r#"{}"#, 422, 42203),
            ("GET", "/config/s", "", 404, 40408),
            ("GET", "/nowhere", "", 404, 404),
            ("PATCH", "/config", "", 405, 405),
        ] {
            let (got, content_type, value) = call(&app, method, uri, body).await;
            assert_eq!(got.as_u16(), status, "{method} {uri} {body}: {value}");
            assert_eq!(
                value["error_code"],
                json!(code),
                "{method} {uri} {body}: {value}"
            );
            assert!(value["message"].is_string(), "{value}");
            assert_eq!(content_type, CONTENT_TYPE);
        }
    }

    #[tokio::test]
    async fn schema_object_and_config_aliases_are_accepted() {
        let app = app(Arc::new(SchemaStore::new()));
        let (status, _, value) = call(
            &app,
            "POST",
            "/subjects/s/versions?NORMALIZE=True",
            r#"{"schema": {"type": "string"}}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{value}");
        assert_eq!(value, json!({"id": 1}));
        let (_, _, value) = call(
            &app,
            "PUT",
            "/config/s",
            r#"{"compatibilityLevel": "full"}"#,
        )
        .await;
        assert_eq!(value, json!({"compatibility": "FULL"}));
        let (_, _, value) = call(&app, "GET", "/config/t?defaultToGlobal=true", "").await;
        assert_eq!(value, json!({"compatibilityLevel": "BACKWARD"}));
        let (_, _, value) = call(&app, "DELETE", "/config/s", "").await;
        assert_eq!(value, json!({"compatibilityLevel": "FULL"}));
        let (_, _, value) = call(&app, "GET", "/mode", "").await;
        assert_eq!(value, json!({"mode": "READWRITE"}));
        let (_, _, value) = call(&app, "GET", "/schemas/types", "").await;
        assert_eq!(value, json!(["AVRO"]));
    }
}
