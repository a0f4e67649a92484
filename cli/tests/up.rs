//! `orderflow up` as a new user runs it: one command starts a managed Apache Kafka,
//! the schema registry, every processor, both edges and the SQLite sink. Over HTTP
//! and WebSocket the test registers a seller and a buyer, logs in, places an order
//! that is PAID and one that is declined, and chats; then stops `up` with Ctrl-C
//! (SIGINT), starts it again on the same data dir and finds the users, orders and
//! chat history; then kills it with `kill -9`, finds no broker left behind, and a
//! third start still has everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

struct Up {
    child: Child,
    endpoints: Value,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path) -> Up {
    let file = data.with_extension("endpoints.json");
    let _ = std::fs::remove_file(&file);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderflow"));
    command
        .current_dir(&root)
        .args(["up", "--data"])
        .arg(data)
        .args([
            "--http",
            "127.0.0.1:0",
            "--kafka",
            "127.0.0.1:0",
            "--registry",
            "127.0.0.1:0",
        ])
        .arg("--endpoints")
        .arg(&file)
        // Its own broker, not the test run's.
        .env_remove("KAFKA_BROKERS")
        .env_remove("REDIS_URL")
        .env_remove("JWT_SECRET")
        .env("ORDERFLOW_PAYMENT_TIMEOUT", "20s")
        .env(
            "ORDERFLOW_LOG",
            std::env::var("UP_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let child = command.spawn().unwrap();
    let mut up = Up {
        child,
        endpoints: Value::Null,
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(endpoints) = serde_json::from_str::<Value>(&text)
        {
            up.endpoints = endpoints;
            break;
        }
        if let Some(status) = up.child.try_wait().unwrap() {
            panic!("orderflow up exited before it was ready: {status}");
        }
        assert!(Instant::now() < deadline, "orderflow up wrote no endpoints");
        std::thread::sleep(Duration::from_millis(200));
    }
    for key in ["http", "chat", "kafka", "schema-registry"] {
        assert!(up.endpoints[key].is_string(), "{key} in {}", up.endpoints);
    }
    up
}

impl Up {
    fn http(&self) -> String {
        self.endpoints["http"].as_str().unwrap().to_string()
    }

    fn chat(&self) -> String {
        self.endpoints["chat"].as_str().unwrap().to_string()
    }

    /// SIGINT, as Ctrl-C; waits for a clean exit.
    fn interrupt(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "up stopped with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "up did not stop on Ctrl-C");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_9(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.wait();
    }
}

/// The broker processes (java) whose command line names the data dir.
fn brokers_of(data: &Path) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", &format!("java.*{}", data.display())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = http.get(format!("{base}/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "{base}/ready never said ready");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(http: &reqwest::Client, url: String, token: &str) -> (u16, Value) {
    let response = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn login(http: &reqwest::Client, base: &str, email: &str) -> String {
    // Right after a start the user table may still be loading: a few tries.
    for _ in 0..40 {
        let (status, body) = post(
            http,
            format!("{base}/auth/login"),
            None,
            json!({"email": email, "password": "correct horse battery"}),
        )
        .await;
        if status == 200 {
            return body["accessToken"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("cannot log in as {email}");
}

/// Waits until the order reaches `status`.
async fn wait_order(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    status: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = get(http, format!("{base}/orders/{id}"), token).await;
        if code == 200 && body["status"] == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} is {body}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(chat: &str, token: &str) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(format!("{chat}?token={token}"))
        .await
        .unwrap();
    socket
}

/// The next text frame of the given type.
async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} frame"))
            .unwrap()
            .unwrap();
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["type"] == kind {
                return value;
            }
        }
    }
}

/// `from` sends `text`, gets its ack, and `to` receives it.
async fn say(from: &mut Socket, to: &mut Socket, room: &str, text: &str, id: &str) {
    from.send(Message::text(
        json!({"type": "send", "roomId": room, "body": text, "clientMsgId": id}).to_string(),
    ))
    .await
    .unwrap();
    let ack = next_of(from, "ack").await;
    assert_eq!(ack["clientMsgId"], id);
    // `to` may first get earlier messages of the room (the sender gets its own too).
    loop {
        let got = next_of(to, "message").await;
        if got["body"] == text {
            assert_eq!(got["roomId"], room);
            break;
        }
    }
}

async fn history(chat: &str, token: &str, room: &str) -> Vec<String> {
    let mut socket = connect(chat, token).await;
    socket
        .send(Message::text(
            json!({"type": "history", "roomId": room, "limit": 50}).to_string(),
        ))
        .await
        .unwrap();
    let frame = next_of(&mut socket, "history").await;
    frame["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect()
}

struct World {
    seller_email: String,
    buyer_email: String,
    seller_id: String,
    buyer_id: String,
    paid: String,
    declined: String,
}

/// Everything a restart must keep: logins, both orders, the chat history.
async fn check_kept(up: &Up, http: &reqwest::Client, world: &World) {
    let base = up.http();
    wait_ready(http, &base).await;
    let buyer = login(http, &base, &world.buyer_email).await;
    let seller = login(http, &base, &world.seller_email).await;
    wait_order(http, &base, &buyer, &world.paid, "PAID").await;
    wait_order(http, &base, &buyer, &world.declined, "CANCELLED").await;
    let (_, mine) = get(http, format!("{base}/orders?role=buyer"), &buyer).await;
    let ids: Vec<&str> = mine
        .as_array()
        .or_else(|| mine["orders"].as_array())
        .unwrap()
        .iter()
        .map(|o| o["orderId"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&world.paid.as_str()) && ids.contains(&world.declined.as_str()),
        "{mine}"
    );
    // The seller may see the buyer who paid.
    let (code, user) = get(
        http,
        format!("{base}/auth/user/{}", world.buyer_id),
        &seller,
    )
    .await;
    assert_eq!(code, 200, "{user}");
    let room = format!("dm:{}:{}", world.buyer_id, world.seller_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let kept = history(&up.chat(), &buyer, &room).await;
        if kept == ["hello, is it in stock?", "yes, ships tomorrow"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chat history after restart: {kept:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_whole_system_and_keeps_it_across_restarts() {
    let data: PathBuf = std::env::temp_dir().join(format!("orderflow-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let http = reqwest::Client::new();

    let up = start(&data);
    let base = up.http();
    wait_ready(&http, &base).await;

    let stamp = std::process::id();
    let seller_email = format!("seller-{stamp}@example.com");
    let buyer_email = format!("buyer-{stamp}@example.com");
    let mut ids = Vec::new();
    for (email, role) in [(&seller_email, "SELLER"), (&buyer_email, "BUYER")] {
        let (status, body) = post(
            &http,
            format!("{base}/auth/register"),
            None,
            json!({"email": email, "password": "correct horse battery", "role": role, "displayName": role}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let (seller_id, buyer_id) = (ids[0].clone(), ids[1].clone());
    let buyer = login(&http, &base, &buyer_email).await;
    let seller = login(&http, &base, &seller_email).await;

    // The seller cannot see the buyer before a paid order between them.
    let (code, _) = get(&http, format!("{base}/auth/user/{buyer_id}"), &seller).await;
    assert_eq!(code, 403);

    let order = |unit_price: i64| json!({"sellerId": seller_id, "items": [{"productId": "p-1", "quantity": 2, "unitPrice": unit_price}], "currency": "EUR"});
    let (status, placed) = post(&http, format!("{base}/orders"), Some(&buyer), order(1_250)).await;
    assert_eq!(status, 202, "{placed}");
    let paid = placed["orderId"].as_str().unwrap().to_string();
    // Over the simulated gateway's limit (100,000,000 minor units): declined.
    let (status, placed) = post(
        &http,
        format!("{base}/orders"),
        Some(&buyer),
        order(60_000_000),
    )
    .await;
    assert_eq!(status, 202, "{placed}");
    let declined = placed["orderId"].as_str().unwrap().to_string();
    let body = wait_order(&http, &base, &buyer, &paid, "PAID").await;
    assert_eq!(body["total"], 2_500);
    let body = wait_order(&http, &base, &seller, &declined, "CANCELLED").await;
    assert_eq!(body["reason"], "PAYMENT_DECLINED");

    // Chat in the buyer-seller room.
    let room = format!("dm:{buyer_id}:{seller_id}");
    let mut b = connect(&up.chat(), &buyer).await;
    let mut s = connect(&up.chat(), &seller).await;
    say(&mut b, &mut s, &room, "hello, is it in stock?", "c1").await;
    say(&mut s, &mut b, &room, "yes, ships tomorrow", "c2").await;
    drop((b, s));

    let world = World {
        seller_email,
        buyer_email,
        seller_id,
        buyer_id,
        paid,
        declined,
    };
    // The SQLite sink has the orders too.
    assert!(data.join("orderflow.db").exists());

    // Ctrl-C: a clean stop, then everything is still there.
    up.interrupt();
    assert!(brokers_of(&data).is_empty(), "a broker survived Ctrl-C");
    let up = start(&data);
    check_kept(&up, &http, &world).await;

    // kill -9: no broker left behind, and a restart still has everything.
    up.kill_9();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !brokers_of(&data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the broker outlived a kill -9 of up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let up = start(&data);
    check_kept(&up, &http, &world).await;
    up.interrupt();
    let _ = std::fs::remove_dir_all(&data);
}
