//! The sinks on the real broker, run by a node as `orderflow run --sink …` runs
//! them: `orders-sql` materializes `orders.events` into SQLite whatever order the
//! versions come in, and `cache` writes `auth.users` and `auth.relations` into a
//! real Redis (`TEST_REDIS_URL`) that the edges' Redis directory then reads; a
//! record that is not Avro goes to the sink's dead-letter topic and the rest goes on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../runtime/tests/common/kafka.rs"]
mod kafka;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderflow_connectors::directory::{Directory, RedisDirectory};
use orderflow_connectors::node::{self, NodeConfig};
use orderflow_connectors::sql_sink::OrdersSql;
use orderflow_pipelines::records::{
    BuyerSeller, OrderEvent, OrderItem, OrderStatus, Role, User, UserStatus, topics,
};
use orderflow_runtime::metrics::Metrics;
use orderflow_runtime::publish::Publisher;
use orderflow_runtime::registry::{RegistryClient, SchemaStore};
use orderflow_runtime::topology::{self, Topology};
use orderflow_runtime::wire::TopicSerde;

use kafka::{bootstrap, unique};

fn topology(app: &str) -> Arc<Topology> {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let base = file.parent().unwrap();
    let app = app.to_string();
    let env = move |name: &str| (name == "ORDERFLOW_APP").then(|| app.clone());
    Arc::new(
        topology::load_str(
            &text,
            "topology.yaml",
            base,
            &env,
            &orderflow_pipelines::catalog(),
        )
        .unwrap(),
    )
}

fn event(order_id: &str, version: i64, status: OrderStatus) -> OrderEvent {
    OrderEvent {
        order_id: order_id.to_string(),
        buyer_id: "b".into(),
        seller_id: "s".into(),
        status,
        total: 300,
        currency: "EUR".into(),
        reason: None,
        version,
        at: 1_700_000_000_000 + version,
        items: vec![OrderItem {
            product_id: "p".into(),
            quantity: 3,
            unit_price: 100,
        }],
        request_id: None,
    }
}

fn user(id: &str, email: &str, status: UserStatus) -> User {
    User {
        id: id.to_string(),
        email: email.to_string(),
        role: Role::Buyer,
        display_name: "B".into(),
        status,
        created_at: 1,
        updated_at: 2,
        password_hash: "$argon2id$test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_sql_and_cache_sinks_follow_their_topics() {
    let redis_url = std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .expect(
            "TEST_REDIS_URL is not set: run scripts/test.sh, or eval \"$(scripts/services.sh)\"",
        );
    let app = unique("sinks");
    let topology = topology(&app);
    let registry = Arc::new(RegistryClient::embedded(Arc::new(SchemaStore::new())));
    let dir = std::env::temp_dir().join(unique("sinks-db"));
    let database = format!("sqlite://{}", dir.join("orders.db").display());

    orderflow_runtime::engine::ensure_topics(
        &topology,
        &orderflow_runtime::engine::EngineConfig::new(bootstrap()),
    )
    .await
    .unwrap();
    let serde = Arc::new(TopicSerde::register(&topology, &registry).await.unwrap());

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = NodeConfig {
        bootstrap: bootstrap(),
        kafka_overrides: Vec::new(),
        consumer_overrides: vec![("session.timeout.ms".into(), "6000".into())],
        topology: topology.clone(),
        catalog: orderflow_pipelines::catalog(),
        registry: registry.clone(),
        processors: None,
        edges: BTreeSet::new(),
        listener: None,
        sinks: vec![
            ("orders-sql".into(), database.clone()),
            ("cache".into(), redis_url.clone()),
        ],
        redis_url: None,
        tokens: None,
        http: orderflow_connectors::http::HttpSettings::default(),
        chat: orderflow_connectors::chat::ChatSettings::default(),
        metrics: Arc::new(Metrics::new()),
        instance_id: None,
    };
    let running = tokio::spawn(node::run(config, async move {
        let _ = stop_rx.await;
    }));

    let publisher = Publisher::new(&bootstrap(), &[], serde).unwrap();
    let (o1, o2) = (unique("o1"), unique("o2"));
    // o1 arrives newest first: the oldest must not win.
    for (id, version, status) in [
        (&o1, 3, OrderStatus::Refunded),
        (&o1, 1, OrderStatus::Ordered),
        (&o1, 2, OrderStatus::Paid),
        (&o2, 1, OrderStatus::Ordered),
        (&o2, 1, OrderStatus::Ordered),
        (&o2, 2, OrderStatus::Cancelled),
    ] {
        publisher
            .publish(topics::ORDERS_EVENTS, id, &event(id, version, status))
            .await
            .unwrap();
    }
    publisher
        .publish_bytes(topics::ORDERS_EVENTS, &o1, Some(b"not avro"), &[])
        .await
        .unwrap();
    let (u1, u2) = (unique("u1"), unique("u2"));
    let email = format!("{}@example.com", unique("shared"));
    publisher
        .publish(
            topics::AUTH_USERS,
            &u1,
            &user(&u1, &email, UserStatus::Active),
        )
        .await
        .unwrap();
    publisher
        .publish(
            topics::AUTH_USERS,
            &u1,
            &user(&u1, &email, UserStatus::Deleted),
        )
        .await
        .unwrap();
    publisher
        .publish(
            topics::AUTH_USERS,
            &u2,
            &user(&u2, &email, UserStatus::Active),
        )
        .await
        .unwrap();
    let relation = BuyerSeller {
        buyer_id: u2.clone(),
        seller_id: "seller-x".into(),
        first_paid_order_id: o1.clone(),
        since: 5,
    };
    publisher
        .publish(topics::AUTH_RELATIONS, &format!("{u2}:seller-x"), &relation)
        .await
        .unwrap();

    let sql = OrdersSql::connect(&database).await.unwrap();
    let directory = RedisDirectory::connect(&redis_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = sql.order(&o1).await.unwrap();
        let b = sql.order(&o2).await.unwrap();
        let active = directory.user_by_email(&email).await.unwrap();
        let bought = directory.has_bought_from(&u2, "seller-x").await.unwrap();
        let done = a.as_ref().is_some_and(|r| r.version == 3)
            && b.as_ref().is_some_and(|r| r.version == 2)
            && active.as_ref().is_some_and(|u| u.id == u2)
            && bought;
        if done {
            let a = a.unwrap();
            assert_eq!(a.status, OrderStatus::Refunded);
            assert_eq!(a.items.len(), 1);
            assert_eq!(b.unwrap().status, OrderStatus::Cancelled);
            let old = directory.user(&u1).await.unwrap().unwrap();
            assert_eq!(old.status, UserStatus::Deleted);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sinks did not catch up: {a:?} {b:?} {active:?} {bought}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_tx.send(()).unwrap();
    running.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
