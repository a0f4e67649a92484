//! The five processors of topology.yaml on a real broker, crashed and audited: two
//! `orderflow run` instances share the work over 4 partitions while 60 users register
//! and 1,000 orders from 50 buyers to 10 sellers go through an HTTP payment gateway
//! (a real server in this test that counts charges and declines about one in five),
//! with repeated commands and cancels before and after payment, and one instance is
//! killed with `kill -9` three times and started again.
//!
//! An auditor then reads `orders.events`, `payments.requests` and `payments.results`
//! with read_committed and checks the saga's invariants: every order ends in a final
//! state; versions 1, 2, 3… with no gap and no repeat; nothing after a terminal
//! state; PAID only after an APPROVED result; one charge request per order and the
//! gateway's charge counter equal to the charges the saga asked for and kept (PAID
//! orders, plus charges approved after the buyer had cancelled, which are refunded);
//! refunds only after PAID or a late approval; nothing in the dead-letter topics.
//! Under at_least_once the same audit passes after dropping repeated outputs by their
//! id header.
//!
//! Each run gets a broker of its own: the topic names are the contract's, so runs
//! sharing a broker would read each other's records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../pipelines/tests/common/gateway_server.rs"]
mod gateway_server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use orderflow_pipelines::records::{
    AuthCommand, CancelOrder, OrderCommand, OrderEvent, OrderItem, OrderStatus, PaymentCommand,
    PaymentOutcome, PaymentResult, PlaceOrder, RegisterUser, Role, User, UserStatus,
};
use orderflow_runtime::broker::{Broker, BrokerConfig};
use orderflow_runtime::engine::{EngineConfig, ID_HEADER, ensure_topics};
use orderflow_runtime::registry::{RegistryClient, SchemaStore, http};
use orderflow_runtime::topology::{Topology, load_str};
use orderflow_runtime::wire::TopicSerde;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{FutureProducer, FutureRecord};

const BUYERS: usize = 50;
const SELLERS: usize = 10;
const ORDERS: usize = 1_000;
const BATCHES: usize = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny deterministic generator (no dependency for a test's dice).
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % below as u64) as usize
    }
}

/// One `orderflow run` process.
struct Instance {
    name: String,
    child: Child,
}

struct Run {
    dir: PathBuf,
    brokers: String,
    registry: String,
    gateway: String,
    app: String,
    processing: String,
}

impl Run {
    fn spawn(&self, name: &str) -> Instance {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .arg("run")
            .current_dir(root())
            .env("KAFKA_BROKERS", &self.brokers)
            .env("SCHEMA_REGISTRY_URL", &self.registry)
            .env("ORDERFLOW_APP", &self.app)
            .env("ORDERFLOW_PROCESSING", &self.processing)
            .env("ORDERFLOW_INSTANCE_ID", name)
            .env(
                "ORDERFLOW_KAFKA_CONFIG",
                "session.timeout.ms=6000,heartbeat.interval.ms=1000",
            )
            .env("PAYMENT_GATEWAY", "http")
            .env("PAYMENT_GATEWAY_URL", &self.gateway)
            .env("ORDERFLOW_PAYMENT_TIMEOUT", "10m")
            .env(
                "ORDERFLOW_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Instance {
            name: name.to_string(),
            child,
        }
    }

    fn env(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |var| match var {
            "ORDERFLOW_APP" => Some(self.app.clone()),
            "ORDERFLOW_PROCESSING" => Some(self.processing.clone()),
            "PAYMENT_GATEWAY" => Some("http".into()),
            "PAYMENT_GATEWAY_URL" => Some(self.gateway.clone()),
            "ORDERFLOW_PAYMENT_TIMEOUT" => Some("10m".into()),
            _ => None,
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["stable", "victim"] {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {name} (last lines)\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Instance {
    /// A failed assertion must not leave instances running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop(instance: &mut Instance) {
    let _ = Command::new("kill")
        .args(["-TERM", &instance.child.id().to_string()])
        .status();
    let _ = instance.child.wait();
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

fn consumer(brokers: &str, topics: &[&str]) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("auditor-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(topics).unwrap();
    consumer
}

async fn send<T: orderflow_runtime::avro::AvroRecord>(
    producer: &FutureProducer,
    serde: &TopicSerde,
    topic: &str,
    key: &str,
    value: &T,
) {
    let bytes = serde.encode(topic, value).unwrap();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&bytes),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
}

/// Registers the buyers and sellers and waits until `auth.users` has them all;
/// returns (buyer ids, seller ids).
async fn register_users(run: &Run, serde: &TopicSerde) -> (Vec<String>, Vec<String>) {
    let producer = producer(&run.brokers);
    for i in 0..BUYERS + SELLERS {
        let (role, email) = if i < BUYERS {
            (Role::Buyer, format!("buyer{i}@example.com"))
        } else {
            (Role::Seller, format!("seller{}@example.com", i - BUYERS))
        };
        let command = AuthCommand::RegisterUser(RegisterUser {
            request_id: format!("register-{i}"),
            email: email.clone(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            role,
            display_name: email.clone(),
        });
        send(&producer, serde, "auth.commands", &email, &command).await;
    }
    let consumer = consumer(&run.brokers, &["auth.users"]);
    let mut users: BTreeMap<String, User> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while users.len() < BUYERS + SELLERS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} users registered\n{}",
            users.len(),
            run.logs()
        );
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let user: User = serde
                .decode_as(
                    "auth.users",
                    m.partition(),
                    m.offset(),
                    m.payload().unwrap(),
                )
                .unwrap();
            if user.status == UserStatus::Active {
                users.insert(user.email.clone(), user);
            }
        }
    }
    let ids = |prefix: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| users[&format!("{prefix}{i}@example.com")].id.clone())
            .collect()
    };
    (ids("buyer", BUYERS), ids("seller", SELLERS))
}

/// What the auditor read, repeats (same id header) dropped.
#[derive(Default)]
struct Seen {
    events: BTreeMap<String, Vec<OrderEvent>>,
    charges: BTreeMap<String, Vec<String>>,
    refunds: BTreeMap<String, Vec<String>>,
    results: BTreeMap<String, Vec<PaymentResult>>,
    dead_letters: Vec<String>,
    ids: BTreeSet<(String, String)>,
    repeats: usize,
}

impl Seen {
    fn read(&mut self, m: &BorrowedMessage<'_>, serde: &TopicSerde, dlqs: &[String]) {
        let topic = m.topic().to_string();
        if dlqs.contains(&topic) {
            self.dead_letters.push(format!(
                "{topic}: {:?}",
                m.headers().map(|h| h
                    .iter()
                    .map(|h| (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()
                    ))
                    .collect::<Vec<_>>())
            ));
            return;
        }
        let id = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == ID_HEADER)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        if let Some(id) = id
            && !self.ids.insert((topic.clone(), id))
        {
            self.repeats += 1;
            return;
        }
        let payload = m.payload().unwrap();
        let (p, o) = (m.partition(), m.offset());
        match topic.as_str() {
            "orders.events" => {
                let e: OrderEvent = serde.decode_as(&topic, p, o, payload).unwrap();
                self.events.entry(e.order_id.clone()).or_default().push(e);
            }
            "payments.requests" => match serde.decode_as::<PaymentCommand>(&topic, p, o, payload) {
                Ok(PaymentCommand::PaymentRequested(r)) => {
                    self.charges
                        .entry(r.order_id)
                        .or_default()
                        .push(r.payment_id);
                }
                Ok(PaymentCommand::RefundRequested(r)) => {
                    self.refunds
                        .entry(r.order_id)
                        .or_default()
                        .push(r.payment_id);
                }
                Err(e) => panic!("payments.requests {p}/{o}: {e}"),
            },
            "payments.results" => {
                let r: PaymentResult = serde.decode_as(&topic, p, o, payload).unwrap();
                self.results.entry(r.order_id.clone()).or_default().push(r);
            }
            other => panic!("unexpected topic {other}"),
        }
    }

    fn last_status(&self, order: &str) -> Option<OrderStatus> {
        self.events.get(order)?.last().map(|e| e.status)
    }

    fn approved(&self, order: &str) -> bool {
        self.results
            .get(order)
            .is_some_and(|rs| rs.iter().any(|r| r.outcome == PaymentOutcome::Approved))
    }

    fn refunded(&self, order: &str) -> bool {
        self.results
            .get(order)
            .is_some_and(|rs| rs.iter().any(|r| r.outcome == PaymentOutcome::Refunded))
    }

    /// Every order is in its final state: placed ones PAID, or (cancelled or declined)
    /// CANCELLED or REFUNDED, and every charge approved after a cancel refunded.
    fn settled(&self, orders: &[String], cancelled: &BTreeSet<String>) -> bool {
        orders.iter().all(|order| match self.last_status(order) {
            Some(OrderStatus::Paid) => !cancelled.contains(order),
            Some(OrderStatus::Refunded) => true,
            Some(OrderStatus::Cancelled) => !self.approved(order) || self.refunded(order),
            _ => false,
        })
    }
}

/// One audited run at a time: each has its own broker and two instances, and this
/// machine may have two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn audited_run(processing: &str) {
    let _serial = SERIAL.lock().await;
    let name = format!(
        "orderflow-e2e-{processing}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let broker = {
        let data = dir.join("kafka");
        tokio::task::spawn_blocking(move || {
            Broker::start(
                &BrokerConfig::new(data, "127.0.0.1:0".parse().unwrap()),
                &mut |_| {},
            )
        })
        .await
        .unwrap()
        .unwrap()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        listener,
        Arc::new(SchemaStore::new()),
        std::future::pending(),
    ));
    // About one charge in five is declined, decided by the payment id so that a
    // retried charge gets the same answer.
    let gateway = gateway_server::GatewayServer::with_rule(|charge| {
        let hash = charge
            .payment_id
            .bytes()
            .fold(0_u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        (hash % 5 == 0).then(|| "INSUFFICIENT_FUNDS".to_string())
    });
    let run = Run {
        dir: dir.clone(),
        brokers: broker.bootstrap().to_string(),
        registry: registry_url.clone(),
        gateway: gateway.url(),
        app: format!("e2e-{processing}"),
        processing: processing.to_string(),
    };
    let text = std::fs::read_to_string(root().join("topology.yaml")).unwrap();
    let topology: Topology = load_str(
        &text,
        "topology.yaml",
        &root(),
        &run.env(),
        &orderflow_pipelines::catalog(),
    )
    .unwrap();
    ensure_topics(&topology, &EngineConfig::new(run.brokers.clone()))
        .await
        .unwrap();
    let registry = Arc::new(RegistryClient::remote(&registry_url).unwrap());
    let serde = TopicSerde::register(&topology, &registry).await.unwrap();
    let dlqs: Vec<String> = topology
        .processors
        .values()
        .map(|p| p.dead_letter.clone())
        .collect();

    let mut stable = run.spawn("stable");
    let mut victim = run.spawn("victim");
    let (buyers, sellers) = register_users(&run, &serde).await;
    // The saga reads users from a global table: give both instances a moment to
    // have read the last registration.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Orders: 1,000 in 4 batches; after each of the first three the victim dies.
    let mut dice = Dice(0x5eed);
    let producer = producer(&run.brokers);
    let orders: Vec<String> = (0..ORDERS).map(|i| format!("order-{i:04}")).collect();
    let mut placed: Vec<PlaceOrder> = Vec::new();
    let mut cancelled: BTreeSet<String> = BTreeSet::new();
    let per_batch = ORDERS / BATCHES;
    for batch in 0..BATCHES {
        for (i, order_id) in orders
            .iter()
            .enumerate()
            .take((batch + 1) * per_batch)
            .skip(batch * per_batch)
        {
            let items = (0..1 + dice.next(3))
                .map(|k| OrderItem {
                    product_id: format!("product-{k}"),
                    quantity: 1 + dice.next(5) as i32,
                    unit_price: 100 + dice.next(10_000) as i64,
                })
                .collect();
            let order = PlaceOrder {
                request_id: format!("place-{i}"),
                order_id: order_id.clone(),
                buyer_id: buyers[dice.next(BUYERS)].clone(),
                seller_id: sellers[dice.next(SELLERS)].clone(),
                items,
                currency: "EUR".into(),
                placed_at: 1_700_000_000_000 + i as i64,
            };
            let command = OrderCommand::PlaceOrder(order.clone());
            send(&producer, &serde, "orders.commands", order_id, &command).await;
            if i % 40 == 7 {
                // Cancelled at once: most likely before the payment's answer, so
                // CANCELLED, and the approval that follows is refunded.
                cancel(&producer, &serde, &order, &mut cancelled).await;
            }
            placed.push(order);
        }
        // A repeated place (same request id) changes nothing.
        for order in placed.iter().skip(batch * per_batch).step_by(20) {
            let command = OrderCommand::PlaceOrder(order.clone());
            send(
                &producer,
                &serde,
                "orders.commands",
                &order.order_id,
                &command,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if batch + 1 < BATCHES {
            victim.child.kill().unwrap(); // SIGKILL
            victim.child.wait().unwrap();
            let name = victim.name.clone();
            victim = run.spawn(&name);
        }
    }

    // The auditor.
    let mut topics = vec!["orders.events", "payments.requests", "payments.results"];
    topics.extend(dlqs.iter().map(String::as_str));
    let consumer = consumer(&run.brokers, &topics);
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut last_check = tokio::time::Instant::now();
    let mut refunds_asked = false;
    loop {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            seen.read(&m, &serde, &dlqs);
        }
        if last_check.elapsed() > Duration::from_secs(2) {
            last_check = tokio::time::Instant::now();
            if seen.settled(&orders, &cancelled) {
                if refunds_asked {
                    break;
                }
                // Then some PAID orders are cancelled: each must be refunded.
                refunds_asked = true;
                for order in placed.iter().skip(23).step_by(40) {
                    if seen.last_status(&order.order_id) == Some(OrderStatus::Paid) {
                        cancel(&producer, &serde, order, &mut cancelled).await;
                    }
                }
                continue;
            }
            eprintln!(
                "audit: {} orders with events, {} settled, gateway {} requests {} charges",
                seen.events.len(),
                orders
                    .iter()
                    .filter(|o| seen.settled(std::slice::from_ref(*o), &cancelled))
                    .count(),
                gateway.requests(),
                gateway.charges()
            );
            let unsettled: Vec<_> = orders
                .iter()
                .filter(|o| !seen.settled(std::slice::from_ref(*o), &cancelled))
                .take(5)
                .map(|o| {
                    (
                        o,
                        seen.events
                            .get(o.as_str())
                            .map(|e| e.iter().map(|e| e.status).collect::<Vec<_>>()),
                    )
                })
                .collect();
            assert!(
                tokio::time::Instant::now() < deadline,
                "orders not settled, e.g. {unsettled:?}\n{}",
                run.logs()
            );
        }
    }
    // Whatever still arrives is read too: a repeat must not hide behind an early stop.
    while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
        seen.read(&m, &serde, &dlqs);
    }
    stop(&mut stable);
    stop(&mut victim);

    // The invariants. No dead letters in either mode: under at_least_once an answer
    // that overtakes the replay of its order is parked by the saga, not dead-lettered.
    assert!(
        seen.dead_letters.is_empty(),
        "dead letters: {:?}",
        seen.dead_letters
    );
    if processing == "exactly_once" {
        assert_eq!(seen.repeats, 0, "exactly_once outputs carry no id header");
    }
    let mut paid = 0;
    let mut late_approvals = 0;
    let mut refunded = 0;
    for order in &orders {
        let events = &seen.events[order];
        let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
        let want: Vec<i64> = (1..=events.len() as i64).collect();
        assert_eq!(versions, want, "{order}: versions");
        let statuses: Vec<OrderStatus> = events.iter().map(|e| e.status).collect();
        assert_eq!(statuses[0], OrderStatus::Ordered, "{order}: {statuses:?}");
        for (k, pair) in statuses.windows(2).enumerate() {
            let ok = matches!(
                pair,
                [
                    OrderStatus::Ordered,
                    OrderStatus::Paid | OrderStatus::Cancelled
                ] | [OrderStatus::Paid, OrderStatus::Refunded]
            );
            assert!(ok, "{order}: step {k} {pair:?} in {statuses:?}");
        }
        let charges = seen.charges.get(order).map_or(0, Vec::len);
        assert_eq!(charges, 1, "{order}: one charge request");
        let payment = &seen.charges[order][0];
        let results = seen.results.get(order).cloned().unwrap_or_default();
        assert!(
            results.iter().all(|r| &r.payment_id == payment),
            "{order}: results for another payment: {results:?}"
        );
        let was_paid = statuses.contains(&OrderStatus::Paid);
        if was_paid {
            paid += 1;
            assert!(seen.approved(order), "{order}: PAID without APPROVED");
        }
        let refunds = seen.refunds.get(order).map_or(0, Vec::len);
        let late = !was_paid && seen.approved(order);
        if late {
            late_approvals += 1;
            assert!(
                cancelled.contains(order),
                "{order}: approved, never paid, not cancelled"
            );
        }
        if statuses.last() == Some(&OrderStatus::Refunded) {
            refunded += 1;
        }
        let expected_refunds = usize::from(statuses.contains(&OrderStatus::Refunded) || late);
        assert_eq!(
            refunds, expected_refunds,
            "{order}: refunds for {statuses:?}"
        );
        if !cancelled.contains(order) {
            assert_eq!(
                statuses.last(),
                Some(if seen.approved(order) {
                    &OrderStatus::Paid
                } else {
                    &OrderStatus::Cancelled
                }),
                "{order}: {statuses:?}"
            );
        }
    }
    assert!(paid > ORDERS / 2, "most orders are paid ({paid})");
    assert!(paid < ORDERS, "some are declined");
    assert!(refunded > 0, "some paid orders are refunded");
    assert_eq!(
        gateway.approved(),
        paid + late_approvals,
        "the gateway charged each approved payment once"
    );
    assert_eq!(gateway.charges(), ORDERS, "one charge decision per order");
    assert_eq!(gateway.refunds(), refunded + late_approvals);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

async fn cancel(
    producer: &FutureProducer,
    serde: &TopicSerde,
    order: &PlaceOrder,
    cancelled: &mut BTreeSet<String>,
) {
    let command = OrderCommand::CancelOrder(CancelOrder {
        request_id: format!("cancel-{}", order.order_id),
        order_id: order.order_id.clone(),
        requested_by: order.buyer_id.clone(),
        reason: Some("changed my mind".into()),
    });
    send(
        producer,
        serde,
        "orders.commands",
        &order.order_id,
        &command,
    )
    .await;
    cancelled.insert(order.order_id.clone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_pipelines_under_kill_9() {
    audited_run("exactly_once").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_pipelines_under_kill_9() {
    audited_run("at_least_once").await;
}
