//! The embedded schema registry served in-process on `127.0.0.1:0`, driven over
//! loopback HTTP by schema_registry_converter (the client the engine uses for remote
//! registries), by plain reqwest calls checking Confluent's response shapes, and by
//! [`RegistryClient`] in both its remote and embedded forms.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use orderflow_runtime::registry::{RegistryClient, RegistryError, SchemaStore, http};
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_all_subjects, get_all_versions, get_schema_by_id,
    get_schema_by_subject_and_version, is_compatible_schema, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType, SuppliedSchema};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const USER_V1: &str = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"id","type":"string"},{"name":"email","type":"string"}]}"#;
/// V1 plus a field with a default: BACKWARD compatible.
const USER_V2: &str = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"id","type":"string"},{"name":"email","type":"string"},{"name":"display_name","type":"string","default":""}]}"#;
/// V1 plus a required field: not BACKWARD compatible.
const USER_BAD: &str = r#"{"type":"record","name":"User","namespace":"orderflow","fields":[{"name":"id","type":"string"},{"name":"email","type":"string"},{"name":"role","type":"string"}]}"#;

const SR_JSON: &str = "application/vnd.schemaregistry.v1+json";

/// A registry running on a loopback port until dropped or stopped.
struct Registry {
    url: String,
    store: Arc<SchemaStore>,
    /// One HTTP client per registry: building one loads the system's TLS roots.
    http: reqwest::Client,
    requests: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Registry {
    /// The registry as the CLI runs it, through [`http::serve`].
    async fn start() -> Result<Registry> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let store = Arc::new(SchemaStore::new());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(http::serve(listener, store.clone(), async {
            let _ = rx.await;
        }));
        Ok(Registry {
            url,
            store,
            http: reqwest::Client::new(),
            requests: Arc::new(AtomicUsize::new(0)),
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// The same router with a layer counting the requests that reach it.
    async fn start_counting() -> Result<Registry> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let store = Arc::new(SchemaStore::new());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let app = http::app(store.clone()).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    next.run(request).await
                }
            },
        ));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        Ok(Registry {
            url,
            store,
            http: reqwest::Client::new(),
            requests,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    fn settings(&self) -> SrSettings {
        SrSettings::new(self.url.clone())
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops the server and waits until it has returned.
    async fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .context("the registry did not stop")???;
        }
        Ok(())
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let (status, _, value) = self
            .call_with(method, path, body.map(|b| b.to_string()), Some(SR_JSON))
            .await?;
        Ok((status, value))
    }

    /// One request with a raw body and content type; answers status, content type and
    /// the body as JSON.
    async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        content_type: Option<&str>,
    ) -> Result<(u16, String, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = response.bytes().await?;
        let value =
            serde_json::from_slice(&bytes).with_context(|| format!("not JSON: {bytes:?}"))?;
        Ok((status, content_type, value))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn avro(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_string())
}

/// The `error_code` the registry sent, as schema_registry_converter reports it.
fn error_code(error: &SRCError) -> Option<u32> {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<RawError>())
        .map(|raw| raw.error_code)
}

#[tokio::test]
async fn converter_registers_and_reads_back_by_id() -> Result<()> {
    let registry = Registry::start().await?;
    let settings = registry.settings();

    let first = post_schema(&settings, "orders.events-value".to_string(), avro(USER_V1)).await?;
    assert_eq!(first.id, 1);
    let again = post_schema(&settings, "orders.events-value".to_string(), avro(USER_V1)).await?;
    assert_eq!(
        again.id, first.id,
        "the same schema twice gives the same id"
    );
    let elsewhere = post_schema(&settings, "auth.users-value".to_string(), avro(USER_V1)).await?;
    assert_eq!(
        elsewhere.id, first.id,
        "the same schema under another subject reuses the id"
    );

    let read = get_schema_by_id(first.id, &settings).await?;
    assert_eq!(read.schema, USER_V1);
    assert_eq!(read.schema_type, SchemaType::Avro);

    assert_eq!(
        get_all_subjects(&settings).await?,
        vec![
            "auth.users-value".to_string(),
            "orders.events-value".to_string()
        ]
    );
    assert_eq!(
        get_all_versions(&settings, "orders.events-value".to_string()).await?,
        vec![1]
    );
    let latest = get_schema_by_subject_and_version(&settings, "orders.events-value", None).await?;
    assert_eq!((latest.id, latest.version), (1, Some(1)));
    assert_eq!(latest.subject.as_deref(), Some("orders.events-value"));

    let missing = get_schema_by_id(999, &settings)
        .await
        .expect_err("no such id");
    assert_eq!(error_code(&missing), Some(40403));
    Ok(())
}

#[tokio::test]
async fn backward_evolution_is_accepted_and_breaking_change_refused() -> Result<()> {
    let registry = Registry::start().await?;
    let settings = registry.settings();
    let subject = "auth.users-value".to_string();

    post_schema(&settings, subject.clone(), avro(USER_V1)).await?;
    let v2 = post_schema(&settings, subject.clone(), avro(USER_V2)).await?;
    assert_eq!(v2.id, 2);
    let (status, latest) = registry
        .call("GET", "/subjects/auth.users-value/versions/latest", None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        latest,
        json!({"subject": "auth.users-value", "version": 2, "id": 2, "schema": USER_V2})
    );
    let (_, one) = registry
        .call("GET", "/subjects/auth.users-value/versions/1", None)
        .await?;
    assert_eq!(one["id"], json!(1));

    let refused = post_schema(&settings, subject.clone(), avro(USER_BAD))
        .await
        .expect_err("incompatible");
    assert_eq!(error_code(&refused), Some(409));

    let (status, body) = registry
        .call(
            "POST",
            "/subjects/auth.users-value/versions",
            Some(json!({"schema": USER_BAD})),
        )
        .await?;
    assert_eq!(status, 409);
    assert_eq!(body["error_code"], json!(409));
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("'role'"), "{message}");
    assert_eq!(get_all_versions(&settings, subject).await?, vec![1, 2]);
    Ok(())
}

#[tokio::test]
async fn not_found_errors_have_confluent_codes() -> Result<()> {
    let registry = Registry::start().await?;
    let (status, content_type, body) = registry
        .call_with("GET", "/schemas/ids/42", None, None)
        .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40403)));
    assert_eq!(body["message"], json!("Schema 42 not found"));
    assert_eq!(content_type, SR_JSON);

    let (status, body) = registry
        .call("GET", "/subjects/nope/versions", None)
        .await?;
    assert_eq!(
        (status, body.clone()),
        (
            404,
            json!({"error_code": 40401, "message": "Subject 'nope' not found."})
        )
    );
    let (status, body) = registry
        .call("GET", "/subjects/nope/versions/latest", None)
        .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40401)));

    registry
        .call(
            "POST",
            "/subjects/s/versions",
            Some(json!({"schema": USER_V1})),
        )
        .await?;
    let (status, body) = registry.call("GET", "/subjects/s/versions/7", None).await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40402)));
    let (status, body) = registry
        .call("GET", "/subjects/s/versions/first", None)
        .await?;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42202)));
    let (status, body) = registry
        .call("POST", "/subjects/s", Some(json!({"schema": USER_V2})))
        .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40403)));
    let (status, body) = registry
        .call(
            "POST",
            "/subjects/s/versions",
            Some(json!({"schema": "{\"type\": \"recrod\"}"})),
        )
        .await?;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42201)));
    let (status, _, body) = registry
        .call_with(
            "POST",
            "/subjects/s/versions",
            Some("{\"schema\": ".to_string()),
            Some(SR_JSON),
        )
        .await?;
    assert_eq!((status, body["error_code"].clone()), (400, json!(400)));
    Ok(())
}

#[tokio::test]
async fn config_get_and_put() -> Result<()> {
    let registry = Registry::start().await?;
    let (status, body) = registry.call("GET", "/config", None).await?;
    assert_eq!(
        (status, body),
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );
    let (status, body) = registry
        .call("PUT", "/config", Some(json!({"compatibility": "FULL"})))
        .await?;
    assert_eq!((status, body), (200, json!({"compatibility": "FULL"})));
    let (_, body) = registry.call("GET", "/config", None).await?;
    assert_eq!(body, json!({"compatibilityLevel": "FULL"}));

    let (status, body) = registry.call("GET", "/config/s", None).await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40408)));
    let (_, body) = registry
        .call("GET", "/config/s?defaultToGlobal=true", None)
        .await?;
    assert_eq!(body, json!({"compatibilityLevel": "FULL"}));
    let (status, body) = registry
        .call("PUT", "/config/s", Some(json!({"compatibility": "NONE"})))
        .await?;
    assert_eq!((status, body), (200, json!({"compatibility": "NONE"})));
    let (_, body) = registry.call("GET", "/config/s", None).await?;
    assert_eq!(body, json!({"compatibilityLevel": "NONE"}));

    // NONE on the subject lets a breaking change in.
    registry
        .call(
            "POST",
            "/subjects/s/versions",
            Some(json!({"schema": USER_V1})),
        )
        .await?;
    let (status, body) = registry
        .call(
            "POST",
            "/subjects/s/versions",
            Some(json!({"schema": r#""string""#})),
        )
        .await?;
    assert_eq!((status, body), (200, json!({"id": 2})));

    let (status, body) = registry
        .call(
            "PUT",
            "/config",
            Some(json!({"compatibility": "BACKWARDS"})),
        )
        .await?;
    assert_eq!((status, body["error_code"].clone()), (422, json!(42203)));
    Ok(())
}

#[tokio::test]
async fn compatibility_endpoint() -> Result<()> {
    let registry = Registry::start().await?;
    let settings = registry.settings();
    registry
        .call(
            "POST",
            "/subjects/u/versions",
            Some(json!({"schema": USER_V1})),
        )
        .await?;

    let (status, body) = registry
        .call(
            "POST",
            "/compatibility/subjects/u/versions/latest",
            Some(json!({"schema": USER_V2})),
        )
        .await?;
    assert_eq!((status, body), (200, json!({"is_compatible": true})));
    let (_, body) = registry
        .call(
            "POST",
            "/compatibility/subjects/u/versions/1",
            Some(json!({"schema": USER_BAD})),
        )
        .await?;
    assert_eq!(body, json!({"is_compatible": false}));
    let (_, body) = registry
        .call(
            "POST",
            "/compatibility/subjects/u/versions/latest?verbose=true",
            Some(json!({"schema": USER_BAD})),
        )
        .await?;
    assert_eq!(body["is_compatible"], json!(false));
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 1, "{body}");
    let (_, body) = registry
        .call(
            "POST",
            "/compatibility/subjects/u/versions/latest?verbose=true",
            Some(json!({"schema": USER_V2})),
        )
        .await?;
    assert_eq!(body, json!({"is_compatible": true, "messages": []}));
    let (status, body) = registry
        .call(
            "POST",
            "/compatibility/subjects/nope/versions/latest",
            Some(json!({"schema": USER_V2})),
        )
        .await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40401)));

    // schema_registry_converter checks against the subject's level (no version).
    assert!(is_compatible_schema(&settings, "u".to_string(), avro(USER_V2)).await?);
    assert!(!is_compatible_schema(&settings, "u".to_string(), avro(USER_BAD)).await?);
    assert!(is_compatible_schema(&settings, "fresh".to_string(), avro(USER_BAD)).await?);
    Ok(())
}

#[tokio::test]
async fn primitive_schemas_and_lookup() -> Result<()> {
    let registry = Registry::start().await?;
    let (status, body) = registry
        .call(
            "POST",
            "/subjects/orders.commands-key/versions?normalize=TRUE",
            Some(
                json!({"schema": "{\"type\":\"string\"}", "schemaType": "AVRO", "references": []}),
            ),
        )
        .await?;
    assert_eq!((status, body), (200, json!({"id": 1})));
    let (_, body) = registry
        .call("GET", "/schemas/ids/1?subject=orders.commands-key", None)
        .await?;
    assert_eq!(body, json!({"schema": "{\"type\":\"string\"}"}));

    // The quoted form is the same schema.
    let quoted = post_schema(
        &registry.settings(),
        "orders.commands-key".to_string(),
        avro(r#""string""#),
    )
    .await?;
    assert_eq!(quoted.id, 1);

    let (status, body) = registry
        .call(
            "POST",
            "/subjects/orders.commands-key?normalize=false",
            Some(json!({"schema": "\"string\""})),
        )
        .await?;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"subject": "orders.commands-key", "id": 1, "version": 1, "schema": "{\"type\":\"string\"}"})
    );
    let (_, body) = registry
        .call("GET", "/schemas/ids/1/versions", None)
        .await?;
    assert_eq!(
        body,
        json!([{"subject": "orders.commands-key", "version": 1}])
    );
    let (_, body) = registry
        .call(
            "GET",
            "/subjects/orders.commands-key/versions/1/schema",
            None,
        )
        .await?;
    assert_eq!(body, json!({"type": "string"}));
    Ok(())
}

#[tokio::test]
async fn content_types_subjects_with_slashes_and_delete() -> Result<()> {
    let registry = Registry::start().await?;
    let body = json!({"schema": USER_V1}).to_string();
    for content_type in [
        Some(SR_JSON),
        Some("application/json"),
        None,
        Some("text/plain"),
    ] {
        let (status, response_type, value) = registry
            .call_with(
                "POST",
                "/subjects/a%2Fb/versions",
                Some(body.clone()),
                content_type,
            )
            .await?;
        assert_eq!((status, value), (200, json!({"id": 1})), "{content_type:?}");
        assert_eq!(response_type, SR_JSON);
    }
    let (_, subjects) = registry.call("GET", "/subjects", None).await?;
    assert_eq!(subjects, json!(["a/b"]));
    registry
        .call(
            "POST",
            "/subjects/a%2Fb/versions",
            Some(json!({"schema": USER_V2})),
        )
        .await?;

    let (status, deleted) = registry.call("DELETE", "/subjects/a%2Fb", None).await?;
    assert_eq!((status, deleted), (200, json!([1, 2])));
    let (_, subjects) = registry.call("GET", "/subjects", None).await?;
    assert_eq!(subjects, json!([]));
    let (_, subjects) = registry.call("GET", "/subjects?deleted=true", None).await?;
    assert_eq!(subjects, json!(["a/b"]));
    // Records written with a deleted schema stay readable.
    let (status, _) = registry.call("GET", "/schemas/ids/2", None).await?;
    assert_eq!(status, 200);
    let (status, deleted) = registry
        .call("DELETE", "/subjects/a%2Fb?permanent=true", None)
        .await?;
    assert_eq!((status, deleted), (200, json!([1, 2])));
    let (status, body) = registry.call("DELETE", "/subjects/a%2Fb", None).await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40401)));
    // A permanent delete removes the schemas too; their ids are not given out again.
    let (status, body) = registry.call("GET", "/schemas/ids/2", None).await?;
    assert_eq!((status, body["error_code"].clone()), (404, json!(40403)));
    let (_, body) = registry
        .call(
            "POST",
            "/subjects/a%2Fb/versions",
            Some(json!({"schema": USER_V1})),
        )
        .await?;
    assert_eq!(body, json!({"id": 3}));
    Ok(())
}

#[tokio::test]
async fn remote_client_caches_schema_ids() -> Result<()> {
    let mut registry = Registry::start_counting().await?;
    let writer = RegistryClient::remote(&format!("{}/", registry.url))?;
    let registered = writer.register("payments.results-value", USER_V1).await?;
    assert_eq!(registered.id, 1);
    assert_eq!(registry.requests(), 1);
    // Registering again, and looking up what was registered, needs no call.
    assert_eq!(
        writer.register("payments.results-value", USER_V1).await?.id,
        1
    );
    assert_eq!(writer.schema_by_id(1).await?.text, USER_V1);
    assert_eq!(registry.requests(), 1);

    // A fresh client fetches the id once, even when asked concurrently.
    let reader = Arc::new(RegistryClient::remote(&registry.url)?);
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let reader = reader.clone();
            tokio::spawn(async move { reader.schema_by_id(1).await })
        })
        .collect();
    for lookup in lookups {
        let found = lookup.await??;
        assert_eq!(found.id, 1);
        assert!(matches!(found.schema, apache_avro::Schema::Record(_)));
    }
    assert_eq!(registry.requests(), 2);
    let first = reader.schema_by_id(1).await?;
    assert_eq!(
        registry.requests(),
        2,
        "the second lookup is served from the cache"
    );

    // Unknown ids are typed and not cached.
    assert_eq!(
        reader.schema_by_id(77).await.err(),
        Some(RegistryError::SchemaIdNotFound(77))
    );
    assert_eq!(
        reader.schema_by_id(77).await.err(),
        Some(RegistryError::SchemaIdNotFound(77))
    );
    assert_eq!(registry.requests(), 4);

    // Refusals are typed; an invalid schema never leaves the process.
    let refused = writer
        .register("payments.results-value", USER_BAD)
        .await
        .expect_err("incompatible");
    assert!(
        matches!(&refused, RegistryError::Incompatible { subject, .. } if subject == "payments.results-value"),
        "{refused}"
    );
    assert!(
        writer
            .is_compatible("payments.results-value", USER_V2)
            .await?
    );
    assert!(
        !writer
            .is_compatible("payments.results-value", USER_BAD)
            .await?
    );
    let before = registry.requests();
    let invalid = writer
        .register("x", "{\"type\":")
        .await
        .expect_err("invalid");
    assert!(
        matches!(invalid, RegistryError::InvalidSchema(_)),
        "{invalid}"
    );
    assert_eq!(registry.requests(), before);
    assert_eq!(
        registry.store.versions("payments.results-value", false),
        Ok(vec![1])
    );
    // A subject's versions with their schemas; none for an unknown subject.
    let versions = writer.versions("payments.results-value").await?;
    assert_eq!(versions.len(), 1);
    assert_eq!((versions[0].0, versions[0].1.id), (1, 1));
    assert!(matches!(
        versions[0].1.schema,
        apache_avro::Schema::Record(_)
    ));
    assert!(writer.versions("no-such-subject").await?.is_empty());

    // With the server gone, cached ids still resolve and others fail as retriable.
    registry.stop().await?;
    let cached = reader.schema_by_id(1).await?;
    assert!(Arc::ptr_eq(&cached, &first));
    let gone = reader.schema_by_id(2).await.expect_err("server stopped");
    assert!(gone.is_retriable(), "{gone:?}");
    Ok(())
}

#[tokio::test]
async fn embedded_client_behaves_the_same() -> Result<()> {
    let registry = Registry::start().await?;
    let client = RegistryClient::embedded(registry.store.clone());
    assert!(client.store().is_some());

    let registered = client.register("chat.messages-value", USER_V1).await?;
    assert_eq!(registered.id, 1);
    assert_eq!(client.register("chat.messages-value", USER_V1).await?.id, 1);
    assert_eq!(client.register("chat.messages-value", USER_V2).await?.id, 2);
    let refused = client
        .register("chat.messages-value", USER_BAD)
        .await
        .expect_err("incompatible");
    assert!(
        matches!(refused, RegistryError::Incompatible { .. }),
        "{refused}"
    );
    assert!(matches!(
        client.register("x", "{\"type\":").await,
        Err(RegistryError::InvalidSchema(_))
    ));
    assert_eq!(
        client.schema_by_id(9).await.err(),
        Some(RegistryError::SchemaIdNotFound(9))
    );
    let first = client.schema_by_id(2).await?;
    assert!(Arc::ptr_eq(&first, &client.schema_by_id(2).await?));
    assert_eq!(first.text, USER_V2);
    assert!(client.is_compatible("chat.messages-value", USER_V2).await?);
    assert!(
        !client
            .is_compatible("chat.messages-value", USER_BAD)
            .await?
    );

    // What the embedded client registered is what HTTP clients see, and the reverse.
    let over_http = get_schema_by_id(2, &registry.settings()).await?;
    assert_eq!(over_http.schema, USER_V2);
    post_schema(
        &registry.settings(),
        "edge.replies-value".to_string(),
        avro(r#"{"type":"string"}"#),
    )
    .await?;
    let primitive = client.schema_by_id(3).await?;
    assert!(matches!(primitive.schema, apache_avro::Schema::String));
    let versions: Vec<(u32, u32, String)> = client
        .versions("chat.messages-value")
        .await?
        .into_iter()
        .map(|(version, schema)| (version, schema.id, schema.text))
        .collect();
    assert_eq!(
        versions,
        [(1, 1, USER_V1.to_string()), (2, 2, USER_V2.to_string())]
    );
    assert!(client.versions("no-such-subject").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn serve_returns_after_shutdown() -> Result<()> {
    let mut registry = Registry::start().await?;
    let (status, body) = registry.call("GET", "/", None).await?;
    assert_eq!((status, body), (200, json!({})));
    registry.stop().await?;
    assert!(
        reqwest::get(format!("{}/subjects", registry.url))
            .await
            .is_err()
    );
    Ok(())
}
