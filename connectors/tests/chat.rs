//! The WebSocket chat edge with real WebSocket clients against the real pipeline:
//! user-cache and the chat fan-out run in-process on the test broker under an app of
//! their own, beside `EdgeStreams` and the chat router on a port-0 listener. Users
//! register by publishing `RegisterUser` to `auth.commands` and get access tokens
//! from `Tokens`.
//!
//! One engine for the whole binary: the topic names are the contract's, so every
//! engine on the broker would fan each message out again. It starts at the current
//! end of its input topics (earlier runs' records are not replayed) and is warmed up
//! once before the first test. Each test takes users of its own; tests that need
//! other limits (or shut their edge down) serve a second router with their own
//! `ChatState`, on the shared streams or on streams of their own.
//!
//! `CHAT_TEST_LOG=<tracing filter>` shows what the engine and the edge do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt, StreamExt};
use orderflow_connectors::auth::{AccessSubject, JwtConfig, Tokens};
use orderflow_connectors::chat::{ChatSettings, ChatState, router};
use orderflow_connectors::streams::{EdgeStreams, StreamsConfig};
use orderflow_pipelines::records::{AuthCommand, ChatMessage, RegisterUser, Role, topics};
use orderflow_runtime::broker::{Broker, BrokerConfig};
use orderflow_runtime::engine::{self, EngineConfig, ensure_topics};
use orderflow_runtime::metrics::Metrics;
use orderflow_runtime::registry::{RegistryClient, SchemaStore};
use orderflow_runtime::topology::load_str;
use orderflow_runtime::wire::TopicSerde;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &[u8] = b"chat-edge-test-secret-of-at-least-32-bytes";
/// How long anything that should happen may take before the test fails.
const WAIT: Duration = Duration::from_secs(45);

/// The in-process system every test shares.
struct System {
    addr: SocketAddr,
    /// How the shared streams were started, for tests that start streams of their own.
    streams_config: StreamsConfig,
    streams: Arc<EdgeStreams>,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
}

static BROKER: OnceLock<(String, Option<Broker>)> = OnceLock::new();
static SYSTEM: OnceLock<Result<System, String>> = OnceLock::new();

/// `bootstrap.servers`: `KAFKA_BROKERS`, or one broker started for this binary.
fn bootstrap() -> String {
    BROKER
        .get_or_init(|| {
            if let Ok(brokers) = std::env::var("KAFKA_BROKERS")
                && !brokers.is_empty()
            {
                return (brokers, None);
            }
            let dir =
                std::env::temp_dir().join(format!("orderflow-chat-broker-{}", std::process::id()));
            let config = BrokerConfig::new(&dir, "127.0.0.1:0".parse().expect("address"));
            let broker = Broker::start(&config, &mut |line| eprintln!("test broker: {line}"))
                .unwrap_or_else(|e| panic!("cannot start the test broker: {e}"));
            (broker.bootstrap().to_string(), Some(broker))
        })
        .0
        .clone()
}

fn unique(prefix: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = SEQ.fetch_add(1, SeqCst);
    format!("{prefix}-{}-{nanos:x}-{seq}", std::process::id())
}

/// The shared system, started by the first test that asks; if it could not start,
/// every test fails with the reason (none starts a second engine).
fn system() -> &'static System {
    match SYSTEM.get_or_init(|| {
        std::panic::catch_unwind(start_system).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    }) {
        Ok(system) => system,
        Err(e) => panic!("the chat test system did not start: {e}"),
    }
}

/// Commits `group`'s offsets at the current end of `topics`, so an engine of a new
/// app starts there instead of replaying everything earlier runs left on the shared
/// topics.
fn start_at_the_end(bootstrap: &str, group: &str, topics: &[&str]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = TopicPartitionList::new();
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("metadata");
    for topic in topics {
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == *topic)
            .map(|t| t.partitions().len())
            .expect("the topic exists");
        for p in 0..partitions as i32 {
            let mut attempts = 0;
            let high = loop {
                match consumer.fetch_watermarks(topic, p, Duration::from_secs(30)) {
                    Ok((_, high)) => break high,
                    Err(e) if attempts < 20 => {
                        attempts += 1;
                        eprintln!("watermarks of {topic}[{p}] not known yet: {e}");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => panic!("watermarks of {topic}[{p}]: {e}"),
                }
            };
            offsets
                .add_partition_offset(topic, p, Offset::Offset(high))
                .expect("offset");
        }
    }
    consumer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit the start offsets");
}

/// Starts the engine (user-cache and chat-fanout), the streams and the default chat
/// edge on a runtime of their own, which outlives every test.
fn start_system() -> System {
    if let Ok(filter) = std::env::var("CHAT_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let bootstrap = bootstrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("chat-system".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
                let file = root.join("topology.yaml");
                let text = std::fs::read_to_string(&file).expect("topology.yaml");
                let app = unique("chat-edge-test");
                let catalog = orderflow_pipelines::catalog();
                let topology = Arc::new(
                    load_str(
                        &text,
                        &file.display().to_string(),
                        &root,
                        &|name| (name == "ORDERFLOW_APP").then(|| app.clone()),
                        &catalog,
                    )
                    .expect("topology"),
                );
                let registry = Arc::new(RegistryClient::embedded(Arc::new(SchemaStore::new())));
                let mut config = EngineConfig::new(bootstrap.clone());
                config.processors = vec!["user-cache".into(), "chat-fanout".into()];
                let metrics = config.metrics.clone();
                ensure_topics(&topology, &config).await.expect("topics");
                let (b, group) = (bootstrap.clone(), app.clone());
                tokio::task::spawn_blocking(move || {
                    start_at_the_end(&b, &group, &[topics::AUTH_COMMANDS, topics::CHAT_MESSAGES]);
                })
                .await
                .expect("start offsets");
                let serde = Arc::new(
                    TopicSerde::register(&topology, &registry)
                        .await
                        .expect("schemas"),
                );
                let engine = engine::run(
                    topology.clone(),
                    catalog,
                    registry.clone(),
                    config,
                    std::future::pending(),
                );
                let edge = async move {
                    let config = StreamsConfig {
                        bootstrap,
                        overrides: Vec::new(),
                        topology,
                        serde,
                        registry,
                        directory: None,
                        delivery_buffer: 256,
                    };
                    let streams = EdgeStreams::start(&config).expect("streams");
                    tokio::time::timeout(WAIT, streams.ready())
                        .await
                        .expect("the streams catch up");
                    let tokens = Arc::new(
                        Tokens::new(&JwtConfig::hs256(SECRET).expect("jwt")).expect("tokens"),
                    );
                    warm_up(&streams, &tokens).await;
                    let state = ChatState::new(
                        streams.clone(),
                        tokens.clone(),
                        metrics.clone(),
                        shared_settings(),
                    );
                    let addr = serve(state).await;
                    let _ = tx.send(System {
                        addr,
                        streams_config: config,
                        streams,
                        tokens,
                        metrics,
                    });
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    result = engine => panic!("the engine stopped: {result:?}"),
                    () = edge => {}
                }
            });
        })
        .expect("system thread");
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the system starts")
}

/// Sends a registration and a chat message through the pipeline and waits for the
/// reply, the deliveries and the history. The topics are shared with every earlier
/// run on the broker: a transaction a finished process left open holds back every
/// read_committed reader until the broker aborts it (seconds), and that wait is
/// better paid once here than by the first test.
async fn warm_up(streams: &EdgeStreams, tokens: &Tokens) {
    const LONG: Duration = Duration::from_secs(120);
    let buyer = register_on(streams, tokens, Role::Buyer, LONG).await;
    let seller = register_on(streams, tokens, Role::Seller, LONG).await;
    let room = room(&buyer, &seller);
    let (_, mut deliveries) = streams.chat().subscribe(&seller.id);
    let message = ChatMessage {
        message_id: uuid::Uuid::new_v4().to_string(),
        room_id: room.clone(),
        sender_id: buyer.id.clone(),
        body: "warming up".into(),
        sent_at: 1,
    };
    streams
        .publisher()
        .publish(topics::CHAT_MESSAGES, &room, &message)
        .await
        .expect("publish a chat message");
    let delivered = tokio::time::timeout(LONG, deliveries.recv())
        .await
        .expect("a delivery")
        .expect("a delivery");
    assert_eq!(delivered.message_id, message.message_id);
    let deadline = Instant::now() + LONG;
    while streams.chat().history(&room, 1).is_empty() {
        assert!(Instant::now() < deadline, "no history");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The shared edge's limits: generous, so tests do not trip over each other.
fn shared_settings() -> ChatSettings {
    ChatSettings {
        message_rate: 1_000.0,
        message_burst: 1_000,
        ..ChatSettings::default()
    }
}

/// Serves a chat router on a port-0 listener of the current runtime.
async fn serve(state: ChatState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(state)).await;
    });
    addr
}

/// A second chat edge on the shared streams, with its own settings and state.
async fn own_edge(settings: ChatSettings) -> (SocketAddr, ChatState) {
    let s = system();
    let state = ChatState::new(
        s.streams.clone(),
        s.tokens.clone(),
        Arc::new(Metrics::new()),
        settings,
    );
    (serve(state.clone()).await, state)
}

/// A registered user and an access token.
#[derive(Debug, Clone)]
struct User {
    id: String,
    token: String,
}

async fn register(role: Role) -> User {
    let s = system();
    register_on(&s.streams, &s.tokens, role, WAIT).await
}

async fn register_on(streams: &EdgeStreams, tokens: &Tokens, role: Role, wait: Duration) -> User {
    let email = format!("{}@example.test", unique("chat")).to_lowercase();
    let request_id = uuid::Uuid::new_v4().to_string();
    let waiter = streams.replies().expect(&request_id);
    streams
        .publisher()
        .publish(
            topics::AUTH_COMMANDS,
            &email,
            &AuthCommand::RegisterUser(RegisterUser {
                request_id,
                email: email.clone(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                role,
                display_name: "Chat Tester".into(),
            }),
        )
        .await
        .expect("publish RegisterUser");
    let reply = waiter.wait(wait).await.expect("a reply to RegisterUser");
    assert!(reply.ok, "registration refused: {reply:?}");
    let id = reply.entity_id.expect("the new user id");
    let token = tokens.issue_access(&AccessSubject {
        user_id: id.clone(),
        email,
        role,
        session_id: uuid::Uuid::new_v4().to_string(),
    });
    User { id, token }
}

/// Waits up to [`WAIT`] for `done`.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain TCP connection that completes the WebSocket handshake by hand (and
/// reads nothing more), with a receive buffer of `rcvbuf` bytes if given.
async fn raw_connect(addr: SocketAddr, token: &str, rcvbuf: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).expect("rcvbuf");
    }
    let mut raw = socket.connect(addr).await.expect("connect");
    raw.write_all(
        format!(
            "GET /chat?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("handshake");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        raw.read_exact(&mut byte).await.expect("handshake response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    raw
}

fn room(buyer: &User, seller: &User) -> String {
    format!("dm:{}:{}", buyer.id, seller.id)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client that keeps the frames it skipped while waiting for another.
struct Client {
    ws: Socket,
    backlog: Vec<Value>,
}

impl Client {
    /// Connects with the token in the query string.
    async fn connect(addr: SocketAddr, token: &str) -> Client {
        let (ws, response) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/chat?token={token}"))
                .await
                .expect("connect");
        assert_eq!(response.status(), 101);
        Client {
            ws,
            backlog: Vec::new(),
        }
    }

    /// Connects with the token in an `Authorization: Bearer` header.
    async fn connect_with_header(addr: SocketAddr, token: &str) -> Client {
        let mut request = format!("ws://{addr}/chat")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        Client {
            ws,
            backlog: Vec::new(),
        }
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send a frame");
    }

    async fn say(&mut self, room: &str, body: &str, client_msg_id: &str) {
        self.send(json!({"type":"send","roomId":room,"body":body,"clientMsgId":client_msg_id}))
            .await;
    }

    /// The next text frame as JSON, skipping control frames; panics on close.
    async fn read(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).expect("a JSON frame"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The first frame (kept or new) that matches, waiting up to [`WAIT`].
    async fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&matches) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(frame) = self.read(left).await else {
                panic!("no {what} within {WAIT:?}; got {:?}", self.backlog);
            };
            if matches(&frame) {
                return frame;
            }
            self.backlog.push(frame);
        }
    }

    async fn ack(&mut self, client_msg_id: &str) -> Value {
        self.wait_for(&format!("ack of {client_msg_id}"), |f| {
            f["type"] == "ack" && f["clientMsgId"] == client_msg_id
        })
        .await
    }

    async fn message(&mut self, message_id: &str) -> Value {
        self.wait_for(&format!("message {message_id}"), |f| {
            f["type"] == "message" && f["messageId"] == message_id
        })
        .await
    }

    async fn error(&mut self) -> Value {
        self.wait_for("an error frame", |f| f["type"] == "error")
            .await
    }

    async fn history(&mut self, room: &str, limit: u64) -> Value {
        self.send(json!({"type":"history","roomId":room,"limit":limit}))
            .await;
        self.wait_for("a history frame", |f| f["type"] == "history")
            .await
    }

    /// Sends a message and returns its message id from the ack.
    async fn post(&mut self, room: &str, body: &str) -> String {
        let client_msg_id = uuid::Uuid::new_v4().to_string();
        self.say(room, body, &client_msg_id).await;
        let ack = self.ack(&client_msg_id).await;
        ack["messageId"].as_str().expect("a message id").to_string()
    }

    /// Reads until the server's close frame: its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no close frame within {WAIT:?}"),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_string());
                }
                Ok(Some(Ok(Message::Close(None)))) => panic!("a close frame without a code"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("the connection failed before a close frame: {e}"),
                Ok(None) => panic!("the connection ended without a close frame"),
            }
        }
    }

    /// Asserts that no frame of `room` arrives within `within`.
    async fn hears_nothing_of(&mut self, room: &str, within: Duration) {
        assert!(
            !self.backlog.iter().any(|f| f["roomId"] == room),
            "{:?}",
            self.backlog
        );
        let deadline = tokio::time::Instant::now() + within;
        while let Some(frame) = self
            .read(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            assert_ne!(
                frame["roomId"], room,
                "a frame of a room not the user's: {frame}"
            );
            self.backlog.push(frame);
        }
    }
}

#[tokio::test]
async fn two_users_chat_and_both_receive_every_message_with_acks() {
    let s = system();
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let room = room(&buyer, &seller);
    let mut b = Client::connect(s.addr, &buyer.token).await;
    let mut sc = Client::connect_with_header(s.addr, &seller.token).await;

    b.say(&room, "hello, is the lamp still for sale?", "b-1")
        .await;
    let ack = b.ack("b-1").await;
    let first = ack["messageId"].as_str().expect("message id").to_string();
    assert_eq!(ack.as_object().map(|o| o.len()), Some(3), "{ack}");

    for client in [&mut b, &mut sc] {
        let m = client.message(&first).await;
        assert_eq!(
            m,
            json!({
                "type": "message",
                "messageId": first,
                "roomId": room,
                "senderId": buyer.id,
                "body": "hello, is the lamp still for sale?",
                "sentAt": m["sentAt"],
            })
        );
        assert!(
            m["sentAt"].as_i64().is_some_and(|t| t > 1_600_000_000_000),
            "{m}"
        );
    }

    let reply = sc.post(&room, "yes, it is").await;
    for client in [&mut b, &mut sc] {
        let m = client.message(&reply).await;
        assert_eq!(m["senderId"], seller.id.as_str());
        assert_eq!(m["body"], "yes, it is");
    }

    // Several in a row without waiting: every ack names its client id, message ids
    // are distinct, and both sides get all of them in the order sent.
    for i in 0..5 {
        b.say(&room, &format!("burst {i}"), &format!("burst-{i}"))
            .await;
    }
    let mut ids = Vec::new();
    for i in 0..5 {
        let ack = b.ack(&format!("burst-{i}")).await;
        ids.push(ack["messageId"].as_str().expect("id").to_string());
    }
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 5);
    for client in [&mut b, &mut sc] {
        let mut bodies = Vec::new();
        for id in &ids {
            bodies.push(
                client.message(id).await["body"]
                    .as_str()
                    .expect("body")
                    .to_string(),
            );
        }
        assert_eq!(
            bodies,
            (0..5).map(|i| format!("burst {i}")).collect::<Vec<_>>()
        );
    }
    assert!(
        s.metrics
            .value("orderflow_chat_frames_out_total", &[("type", "ack")])
            .is_some_and(|n| n >= 7.0)
    );
    assert!(
        s.metrics
            .value("orderflow_chat_connections", &[])
            .is_some_and(|n| n >= 2.0)
    );
}

#[tokio::test]
async fn history_returns_the_rooms_messages_oldest_first() {
    let s = system();
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let room = room(&buyer, &seller);
    let mut b = Client::connect(s.addr, &buyer.token).await;
    let mut sc = Client::connect(s.addr, &seller.token).await;
    let mut sent = Vec::new();
    for i in 0..6 {
        let (client, sender) = if i % 2 == 0 {
            (&mut b, &buyer)
        } else {
            (&mut sc, &seller)
        };
        let id = client.post(&room, &format!("message {i}")).await;
        sent.push((id, sender.id.clone(), format!("message {i}")));
    }

    // The history is read from the fan-out's changelog: wait until all are there.
    let deadline = Instant::now() + WAIT;
    let history = loop {
        let h = sc.history(&room, 50).await;
        if h["messages"].as_array().map(Vec::len) == Some(sent.len()) || Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(history["roomId"], room.as_str());
    let got: Vec<(String, String, String)> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert!(m["sentAt"].is_i64(), "{m}");
            assert_eq!(m.as_object().map(|o| o.len()), Some(4), "{m}");
            (
                m["messageId"].as_str().unwrap().to_string(),
                m["senderId"].as_str().unwrap().to_string(),
                m["body"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, sent);

    // A limit keeps the newest, still oldest first; the buyer may ask too.
    let last_two = b.history(&room, 2).await;
    let ids: Vec<&str> = last_two["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["messageId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [sent[4].0.as_str(), sent[5].0.as_str()]);

    // Without a limit: the default; an empty room: an empty list.
    b.send(json!({"type":"history","roomId":room})).await;
    let all = b.wait_for("history", |f| f["type"] == "history").await;
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(6));
    let other = register(Role::Seller).await;
    let empty = b
        .history(&format!("dm:{}:{}", buyer.id, other.id), 10)
        .await;
    assert_eq!(empty["messages"], json!([]));
}

#[tokio::test]
async fn a_third_user_is_refused_and_receives_nothing_of_the_room() {
    let s = system();
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let intruder = register(Role::Buyer).await;
    let room = room(&buyer, &seller);
    let mut b = Client::connect(s.addr, &buyer.token).await;
    let mut sc = Client::connect(s.addr, &seller.token).await;
    let mut x = Client::connect(s.addr, &intruder.token).await;

    x.say(&room, "let me in", "x-1").await;
    let error = x.error().await;
    assert_eq!(error["code"], "FORBIDDEN", "{error}");
    assert_eq!(error["clientMsgId"], "x-1");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));

    x.send(json!({"type":"history","roomId":room,"limit":10}))
        .await;
    assert_eq!(x.error().await["code"], "FORBIDDEN");

    // A seller cannot take the buyer's seat of a room, nor a buyer the seller's.
    let mut sc2 = Client::connect(s.addr, &seller.token).await;
    sc2.say(&format!("dm:{}:{}", seller.id, buyer.id), "swapped", "s-1")
        .await;
    assert_eq!(sc2.error().await["code"], "FORBIDDEN");
    x.say(
        &format!("dm:{}:{}", buyer.id, intruder.id),
        "as seller",
        "x-2",
    )
    .await;
    assert_eq!(x.error().await["code"], "FORBIDDEN");
    x.say("general", "hi all", "x-3").await;
    assert_eq!(x.error().await["code"], "INVALID_ROOM");

    // The room goes on between its participants; the intruder's connection is open
    // (it still gets answers) and hears nothing of the room.
    let id = b.post(&room, "private").await;
    sc.message(&id).await;
    b.message(&id).await;
    x.hears_nothing_of(&room, Duration::from_secs(2)).await;
    let own = x
        .history(&format!("dm:{}:{}", intruder.id, seller.id), 5)
        .await;
    assert_eq!(own["messages"], json!([]));
    assert!(
        s.metrics
            .value("orderflow_chat_errors_total", &[("code", "FORBIDDEN")])
            .is_some_and(|n| n >= 4.0)
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_survives() {
    let s = system();
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let room = room(&buyer, &seller);
    let mut b = Client::connect(s.addr, &buyer.token).await;

    let cases: Vec<(Message, &str)> = vec![
        (Message::Text("this is not json".into()), "MALFORMED_FRAME"),
        (Message::Text("[\"send\"]".into()), "MALFORMED_FRAME"),
        (Message::Text(r#"{"roomId":"x"}"#.into()), "MISSING_FIELD"),
        (
            Message::Text(r#"{"type":"subscribe","roomId":"x"}"#.into()),
            "UNKNOWN_TYPE",
        ),
        (
            Message::Text(
                json!({"type":"send","roomId":room,"clientMsgId":"c"})
                    .to_string()
                    .into(),
            ),
            "MISSING_FIELD",
        ),
        (
            Message::Text(
                json!({"type":"send","roomId":room,"body":42,"clientMsgId":"c"})
                    .to_string()
                    .into(),
            ),
            "INVALID_FIELD",
        ),
        (
            Message::Text(
                json!({"type":"send","roomId":room,"body":"  ","clientMsgId":"c"})
                    .to_string()
                    .into(),
            ),
            "EMPTY_BODY",
        ),
        (
            Message::Text(
                json!({"type":"send","roomId":room,"body":"é".repeat(4_001),"clientMsgId":"c"})
                    .to_string()
                    .into(),
            ),
            "BODY_TOO_LONG",
        ),
        (
            Message::Text(
                json!({"type":"history","roomId":room,"limit":-1})
                    .to_string()
                    .into(),
            ),
            "INVALID_FIELD",
        ),
        (Message::Binary(vec![1, 2, 3].into()), "BINARY_FRAME"),
    ];
    for (frame, code) in cases {
        let shown = format!("{frame:?}");
        b.ws.send(frame).await.expect("send");
        let error = b.error().await;
        assert_eq!(error["code"], code, "for {shown}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // A ping is answered, and the connection still does its work.
    b.ws.send(Message::Ping(b"still there?".to_vec().into()))
        .await
        .expect("ping");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, b.ws.next())
            .await
            .expect("a pong")
        {
            Some(Ok(Message::Pong(data))) => {
                assert_eq!(&data[..], b"still there?");
                break;
            }
            Some(Ok(Message::Text(t))) => b.backlog.push(serde_json::from_str(t.as_str()).unwrap()),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    let id = b.post(&room, "after all that").await;
    b.message(&id).await;
    // A body of exactly the limit is fine.
    b.post(&room, &"é".repeat(4_000)).await;
}

#[tokio::test]
async fn sending_faster_than_the_rate_gets_rate_limited_errors() {
    let (addr, _edge) = own_edge(ChatSettings {
        message_rate: 1.0,
        message_burst: 3,
        ..ChatSettings::default()
    })
    .await;
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let room = room(&buyer, &seller);
    let mut b = Client::connect(addr, &buyer.token).await;
    for i in 0..5 {
        b.say(&room, &format!("quick {i}"), &format!("q-{i}")).await;
    }
    for i in 0..3 {
        b.ack(&format!("q-{i}")).await;
    }
    for i in 3..5 {
        let error = b
            .wait_for("a rate error", |f| {
                f["type"] == "error" && f["clientMsgId"] == format!("q-{i}")
            })
            .await;
        assert_eq!(error["code"], "RATE_LIMITED");
    }
    // The rate refills: a second later one more goes through.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    b.post(&room, "patient").await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let s = system();
    let buyer = register(Role::Buyer).await;
    for size in [64 * 1024 + 1, 4 * 1024 * 1024] {
        let mut b = Client::connect(s.addr, &buyer.token).await;
        let body = "x".repeat(size);
        // The send may or may not complete before the server closes; the close
        // frame must arrive either way.
        let _ = b.ws.send(Message::Text(body.into())).await;
        let (code, reason) = b.closed().await;
        assert_eq!(code, 1009, "{reason}");
        assert!(!reason.is_empty());
    }
    // A frame of exactly the limit is read (and answered as not JSON).
    let mut b = Client::connect(s.addr, &buyer.token).await;
    b.ws.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .expect("send");
    assert_eq!(b.error().await["code"], "MALFORMED_FRAME");
}

#[tokio::test]
async fn a_missing_or_bad_token_closes_with_1008() {
    let s = system();
    let user = register(Role::Buyer).await;
    let other_key =
        Tokens::new(&JwtConfig::hs256(b"another-secret-another-secret-another!".to_vec()).unwrap())
            .unwrap();
    let subject = AccessSubject {
        user_id: user.id.clone(),
        email: "someone@example.test".into(),
        role: Role::Buyer,
        session_id: "s".into(),
    };
    let forged = other_key.issue_access(&subject);
    let expired = s
        .tokens
        .issue_access_at(&subject, SystemTime::now() - Duration::from_secs(24 * 3600));
    let urls = [
        format!("ws://{}/chat", s.addr),
        format!("ws://{}/chat?token=", s.addr),
        format!("ws://{}/chat?token=not-a-jwt", s.addr),
        format!("ws://{}/chat?token={forged}", s.addr),
        format!("ws://{}/chat?token={expired}", s.addr),
    ];
    for url in urls {
        let (ws, response) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        assert_eq!(response.status(), 101, "the upgrade completes for {url}");
        let mut client = Client {
            ws,
            backlog: Vec::new(),
        };
        let (code, reason) = client.closed().await;
        assert_eq!(code, 1008, "{url}: {reason}");
        assert!(!reason.is_empty(), "{url}");
    }
    // A bad Authorization header too, and a refresh-style garbage bearer.
    let mut client = Client::connect_with_header(s.addr, "garbage").await;
    assert_eq!(client.closed().await.0, 1008);
    assert!(
        s.metrics
            .value("orderflow_chat_closes_total", &[("code", "1008")])
            .is_some_and(|n| n >= 6.0)
    );
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let s = system();
    let user = register(Role::Buyer).await;
    let mut raw = raw_connect(s.addr, &user.token, None).await;
    // A final text frame (0x81), masked, of two bytes that are not UTF-8.
    let mask = [0x11, 0x22, 0x33, 0x44];
    let payload = [0xff_u8, 0xfe];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    raw.write_all(&frame).await.expect("frame");
    // The server's answer: an unmasked close frame (0x88) whose payload starts
    // with the code.
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, raw.read_exact(&mut head))
        .await
        .expect("a close frame")
        .expect("read");
    assert_eq!(head[0], 0x88, "{head:?}");
    let mut body = vec![0u8; usize::from(head[1] & 0x7f)];
    raw.read_exact(&mut body).await.expect("close payload");
    assert_eq!(u16::from_be_bytes([body[0], body[1]]), 1007);
}

#[tokio::test]
async fn deliveries_reach_every_connection_of_a_recipient() {
    let s = system();
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let room = room(&buyer, &seller);
    let mut tab1 = Client::connect(s.addr, &buyer.token).await;
    let mut tab2 = Client::connect(s.addr, &buyer.token).await;
    let mut sc = Client::connect(s.addr, &seller.token).await;

    let id = sc.post(&room, "to both your tabs").await;
    tab1.message(&id).await;
    tab2.message(&id).await;
    sc.message(&id).await;

    // The sender's other tab sees what the first one sent; only the sending tab
    // gets the ack.
    let id = tab1.post(&room, "from tab one").await;
    tab2.message(&id).await;
    tab1.message(&id).await;
    sc.message(&id).await;
    assert!(
        !tab2.backlog.iter().any(|f| f["type"] == "ack"),
        "{:?}",
        tab2.backlog
    );

    // Closing one tab leaves the other receiving.
    tab1.ws.close(None).await.expect("close");
    let id = sc.post(&room, "one tab left").await;
    tab2.message(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_slow_the_others() {
    // An edge of its own, on streams whose delivery channels hold 16 deliveries, a
    // writer queue of 16 frames and a send timeout long enough that the stuck client
    // cannot simply time out: it must be noticed by its full queues while the others
    // go on. The server's sockets get a small fixed send buffer, so a few messages
    // fill what the kernel would otherwise absorb (autotuned, megabytes).
    let s = system();
    let streams = EdgeStreams::start(&StreamsConfig {
        delivery_buffer: 16,
        ..s.streams_config.clone()
    })
    .expect("streams");
    tokio::time::timeout(WAIT, streams.ready())
        .await
        .expect("ready");
    let settings = ChatSettings {
        outbound_buffer: 16,
        send_timeout: Duration::from_secs(120),
        close_timeout: Duration::from_secs(1),
        ..ChatSettings::default()
    };
    let edge = ChatState::new(
        streams.clone(),
        s.tokens.clone(),
        Arc::new(Metrics::new()),
        settings,
    );
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(16 * 1024).expect("sndbuf");
    socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let listener = socket.listen(64).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn({
        let app = router(edge.clone());
        async move { axum::serve(listener, app).await }
    });
    let flooder = register(Role::Buyer).await;
    let stuck = register(Role::Seller).await;
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);

    // The stuck client: a raw socket with a small receive buffer that completes the
    // handshake and never reads again.
    let mut raw = raw_connect(addr, &stuck.token, Some(4096)).await;
    eventually("the stuck client is connected", || {
        edge.open_connections() == 1
    })
    .await;

    // Another participant of its room sends it 4,000-character messages, 8 a second
    // (well within what the fan-out keeps up with here), until it is gone (straight
    // to chat.messages, as any producer may).
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let flood = tokio::spawn({
        let (sent, stop) = (sent.clone(), stop.clone());
        let (publisher, room) = (streams.publisher().clone(), room(&flooder, &stuck));
        let (sender_id, body) = (flooder.id.clone(), "z".repeat(4_000));
        async move {
            let mut pace = tokio::time::interval(Duration::from_millis(125));
            while !stop.load(SeqCst) && sent.load(SeqCst) < 2_000 {
                pace.tick().await;
                let message = ChatMessage {
                    message_id: uuid::Uuid::new_v4().to_string(),
                    room_id: room.clone(),
                    sender_id: sender_id.clone(),
                    body: body.clone(),
                    sent_at: 1,
                };
                publisher
                    .publish(topics::CHAT_MESSAGES, &room, &message)
                    .await
                    .expect("flood");
                sent.fetch_add(1, SeqCst);
            }
        }
    });

    // Meanwhile two users chat on the same edge and get every message promptly.
    let room = room(&buyer, &seller);
    let mut b = Client::connect(addr, &buyer.token).await;
    let mut sc = Client::connect(addr, &seller.token).await;
    let mut slowest = Duration::ZERO;
    let mut exchanged = 0;
    while exchanged < 20 || (edge.open_connections() > 2 && exchanged < 200) {
        let start = Instant::now();
        let (from, to) = if exchanged % 2 == 0 {
            (&mut b, &mut sc)
        } else {
            (&mut sc, &mut b)
        };
        let id = from
            .post(&room, &format!("during the flood {exchanged}"))
            .await;
        to.message(&id).await;
        from.message(&id).await;
        slowest = slowest.max(start.elapsed());
        exchanged += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, SeqCst);
    flood.await.expect("flood");
    eprintln!(
        "{exchanged} messages between the chatters while {} were sent to the stuck client; the slowest took {slowest:?}",
        sent.load(SeqCst)
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a message took {slowest:?}"
    );

    // The stuck one was dropped as too slow (1013; the close frame could not reach
    // it, so it was cut off): only the two chatters remain.
    assert_eq!(
        edge.open_connections(),
        2,
        "the stuck connection is still open"
    );
    let closes = |code| {
        edge.metrics()
            .value("orderflow_chat_closes_total", &[("code", code)])
            .unwrap_or(0.0)
    };
    assert_eq!((closes("1013"), closes("1006")), (1.0, 0.0));
    // Its socket ends once what was buffered is read.
    let drained = tokio::time::timeout(WAIT, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stuck socket was not closed");
}

#[tokio::test]
async fn silent_clients_are_pinged_and_closed_when_they_stop_answering() {
    let (addr, edge) = own_edge(ChatSettings {
        ping_interval: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(1_000),
        ..ChatSettings::default()
    })
    .await;
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let mut alive = Client::connect(addr, &buyer.token).await;
    let mut silent = Client::connect(addr, &seller.token).await;

    // A client that reads answers pings (tungstenite does) and stays connected.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(2_500);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, alive.ws.next()).await {
        if matches!(frame, Message::Ping(_)) {
            pings += 1;
        }
    }
    assert!(pings >= 5, "{pings} pings");
    let h = alive.history(&room(&buyer, &seller), 1).await;
    assert_eq!(h["type"], "history");

    // One that did not read (so sent no pongs) was closed as idle.
    let (code, reason) = silent.closed().await;
    assert_eq!(code, 1001, "{reason}");
    eventually("the idle connection ends", || edge.open_connections() == 1).await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001() {
    let (addr, edge) = own_edge(ChatSettings::default()).await;
    let (buyer, seller) = (register(Role::Buyer).await, register(Role::Seller).await);
    let mut b = Client::connect(addr, &buyer.token).await;
    let mut sc = Client::connect(addr, &seller.token).await;
    let id = b.post(&room(&buyer, &seller), "before the shutdown").await;
    sc.message(&id).await;
    assert_eq!(edge.open_connections(), 2);

    let shutdown = tokio::spawn({
        let edge = edge.clone();
        async move { edge.shutdown().await }
    });
    for client in [&mut b, &mut sc] {
        let (code, reason) = client.closed().await;
        assert_eq!(code, 1001, "{reason}");
    }
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown returns once the connections are closed")
        .expect("shutdown");
    assert_eq!(edge.open_connections(), 0);
    for client in [&mut b, &mut sc] {
        assert!(
            client.ws.next().await.is_none_or(|r| r.is_err()),
            "the socket ends"
        );
    }

    // A connection after the shutdown is closed the same way.
    let mut late = Client::connect(addr, &buyer.token).await;
    assert_eq!(late.closed().await.0, 1001);
}
