//! ws_fanout_N: N WebSocket clients on one node's chat edge, in N/2 rooms
//! `dm:<buyerId>:<sellerId>` (a buyer and a seller each). Every client sends
//! [`RATE`] messages per second on a fixed schedule; the chat fan-out delivers each
//! message to both participants (the sender's own connection included), so every
//! client must receive each of its own and its peer's messages exactly once.
//! Latency runs from a message's scheduled send time to its arrival. The clients
//! run in the harness; their tokens are minted with the run's JWT secret (the chat
//! edge checks only the token: role and user id).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use orderflow_connectors::auth::token::{AccessSubject, JwtConfig, Tokens};
use orderflow_pipelines::ids::derived_uuid;
use orderflow_pipelines::records::Role;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use super::{EOS, EdgeNode, NODE_ENGINE, Percentiles, jwt_secret, ms};
use crate::jobs::Run;
use crate::report::{JobResult, round};

/// Messages each client sends per second (the chat edge allows 5).
const RATE: f64 = 1.0;
/// Connections opened at once while connecting.
const CONNECTING: usize = 64;
/// How long after its last scheduled send a client may wait for its deliveries.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

/// One client: who it is and where it talks.
#[derive(Debug, Clone)]
struct Spec {
    index: usize,
    peer: usize,
    url: String,
    room: String,
    messages: usize,
    clients: usize,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Outcome {
    index: usize,
    peer: usize,
    latencies_ms: Vec<f64>,
    /// (sender, sequence) → times received.
    received: HashMap<(usize, usize), u32>,
    acks: usize,
    errors: Vec<String>,
    last_receive: Option<Instant>,
}

impl Outcome {
    fn deliveries(&self) -> usize {
        self.received.values().map(|n| *n as usize).sum()
    }

    /// Every own and peer message exactly once, every send acknowledged.
    fn problems(&self, messages: usize) -> Option<String> {
        if let Some(e) = self.errors.first() {
            return Some(format!("client {}: {e}", self.index));
        }
        if self.acks != messages {
            return Some(format!(
                "client {}: {} of {messages} sends acknowledged",
                self.index, self.acks
            ));
        }
        for sender in [self.index, self.peer] {
            for seq in 0..messages {
                match self.received.get(&(sender, seq)).copied().unwrap_or(0) {
                    1 => {}
                    n => {
                        return Some(format!(
                            "client {}: message {seq} of client {sender} received {n} times",
                            self.index
                        ));
                    }
                }
            }
        }
        if self.deliveries() != 2 * messages {
            return Some(format!(
                "client {}: {} deliveries, {} expected",
                self.index,
                self.deliveries(),
                2 * messages
            ));
        }
        None
    }
}

/// Runs `ws_fanout_<clients>`.
pub async fn run(run: &mut Run, name: &str, clients: usize) -> anyhow::Result<JobResult> {
    if clients < 2 || !clients.is_multiple_of(2) {
        bail!("{clients} clients do not pair up into rooms");
    }
    let messages = ((super::phase_seconds(run.sizes.scale) * RATE).round() as usize).max(1);
    let tokens = Tokens::new(&JwtConfig::from_lookup(|n| {
        (n == "JWT_SECRET").then(|| jwt_secret().to_string())
    })?)?;
    let mut node = EdgeNode::start(run, name, EOS).await?;
    let result = fanout(run, &mut node, &tokens, clients, messages).await;
    node.finish(result)
}

/// Messages the uncounted warm-up pair sends each (a fresh broker's and node's
/// first transactions are slower than any later ones).
const WARMUP_MESSAGES: usize = 3;

async fn fanout(
    run: &Run,
    node: &mut EdgeNode,
    tokens: &Tokens,
    clients: usize,
    messages: usize,
) -> anyhow::Result<JobResult> {
    let url = format!("{}/chat", node.base.replacen("http://", "ws://", 1));
    let warm = specs(run, tokens, &url, "warm-up", 2, WARMUP_MESSAGES);
    exchange(node, warm, WARMUP_MESSAGES)
        .await
        .context("warming up with one pair")?;
    let measured = exchange(
        node,
        specs(run, tokens, &url, &clients.to_string(), clients, messages),
        messages,
    )
    .await?;
    let Exchange {
        outcomes,
        base,
        cpu,
        rss,
    } = measured;
    let deliveries: usize = outcomes.iter().map(Outcome::deliveries).sum();
    let last = outcomes
        .iter()
        .filter_map(|o| o.last_receive)
        .max()
        .unwrap_or(base);
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .flat_map(|o| o.latencies_ms.iter().copied())
        .collect();
    let Some(latency) = Percentiles::of(&mut latencies) else {
        bail!("no deliveries");
    };
    let window = last.saturating_duration_since(base).as_secs_f64().max(1e-3);
    Ok(JobResult {
        records: deliveries as u64,
        records_per_s: Some(round(deliveries as f64 / window, 0)),
        cpu_us_per_record: Some(round(cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64, 2)),
        peak_rss_mb: Some(round(rss, 1)),
        p50_ms: Some(round(latency.p50, 2)),
        p99_ms: Some(round(latency.p99, 2)),
        p999_ms: Some(round(latency.p999, 2)),
        seconds: Some(round(window, 3)),
        ok: true,
        engine: NODE_ENGINE.to_string(),
        note: Some(format!(
            "{clients} clients in {} rooms, each sending {RATE}/s for {messages} s: {} messages, 2 recipients each (sender and peer); latency = scheduled send -> received, max {:.1} ms; CPU per delivery; after a warm-up pair",
            clients / 2,
            clients * messages,
            latency.max
        )),
        ..JobResult::default()
    })
}

/// `clients` clients in pairs, each pair a buyer and a seller in their own room,
/// named after `tag` (so runs and phases never share a room).
fn specs(
    run: &Run,
    tokens: &Tokens,
    url: &str,
    tag: &str,
    clients: usize,
    messages: usize,
) -> Vec<Spec> {
    (0..clients)
        .map(|index| {
            let room_no = (index / 2).to_string();
            let buyer_id = derived_uuid("bench.ws.buyer.v1", &[&run.run_id, tag, &room_no]);
            let seller_id = derived_uuid("bench.ws.seller.v1", &[&run.run_id, tag, &room_no]);
            let (user_id, role) = if index % 2 == 0 {
                (buyer_id.clone(), Role::Buyer)
            } else {
                (seller_id.clone(), Role::Seller)
            };
            let token = tokens.issue_access(&AccessSubject {
                session_id: derived_uuid("bench.ws.session.v1", &[&user_id]),
                email: format!("ws-{tag}-{index}-{}@bench.example", run.run_id),
                user_id,
                role,
            });
            Spec {
                index,
                peer: index ^ 1,
                url: format!("{url}?token={token}"),
                room: format!("dm:{buyer_id}:{seller_id}"),
                messages,
                clients,
            }
        })
        .collect()
}

/// What one exchange of messages between clients came to.
#[derive(Debug)]
struct Exchange {
    /// Each client's, by index; every one checked.
    outcomes: Vec<Outcome>,
    /// When the first send was scheduled.
    base: Instant,
    /// The node's CPU from `base` until every client had all its deliveries.
    cpu: Duration,
    /// The node's peak RSS then.
    rss: f64,
}

/// Connects every client of `specs`, lets them send `messages` each on schedule
/// and checks that each got exactly its deliveries.
async fn exchange(
    node: &mut EdgeNode,
    specs: Vec<Spec>,
    messages: usize,
) -> anyhow::Result<Exchange> {
    let clients = specs.len();
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<usize, String>>(clients);
    let (complete_tx, mut complete_rx) = mpsc::channel::<usize>(clients);
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let (finish_tx, finish_rx) = watch::channel(false);
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let mut tasks = tokio::task::JoinSet::new();
    for spec in specs {
        tasks.spawn(client(
            spec,
            connecting.clone(),
            ready_tx.clone(),
            complete_tx.clone(),
            start_rx.clone(),
            finish_rx.clone(),
        ));
    }
    drop((ready_tx, complete_tx));

    let connect_deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut ready = 0;
    while ready < clients {
        match tokio::time::timeout_at(connect_deadline, ready_rx.recv()).await {
            Ok(Some(Ok(_))) => ready += 1,
            Ok(Some(Err(e))) => bail!("{e}"),
            Ok(None) | Err(_) => {
                bail!("only {ready} of {clients} clients connected and subscribed within 180 s")
            }
        }
    }
    let base = Instant::now() + Duration::from_millis(300);
    let cpu0 = node.process.cpu();
    start_tx.send_replace(Some(base));

    let last_send = base + Duration::from_secs_f64(messages as f64 / RATE);
    let deadline = last_send + DELIVERY_LIMIT;
    let mut complete = 0;
    while complete < clients && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), complete_rx.recv()).await {
            Ok(Some(_)) => complete += 1,
            Ok(None) => break,
            Err(_) => node.check_alive()?,
        }
    }
    let cpu = node.process.cpu().saturating_sub(cpu0);
    let rss = node.process.peak_rss_mb();
    // A moment for repeats to arrive, then every client stops and reports.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    finish_tx.send_replace(true);
    let mut outcomes = Vec::with_capacity(clients);
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done?);
    }
    outcomes.sort_by_key(|o| o.index);
    let problems: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.problems(messages))
        .collect();
    if let Some(first) = problems.first() {
        bail!(
            "{} of {clients} clients did not get exactly their deliveries ({complete} complete within {DELIVERY_LIMIT:?} of the last send); the first: {first}",
            problems.len()
        );
    }
    Ok(Exchange {
        outcomes,
        base,
        cpu,
        rss,
    })
}

/// One client's life: connect, prove its subscription with a `history` request,
/// wait for the start, send on schedule while counting what arrives, stop when told.
async fn client(
    spec: Spec,
    connecting: Arc<Semaphore>,
    ready: mpsc::Sender<Result<usize, String>>,
    complete: mpsc::Sender<usize>,
    mut start: watch::Receiver<Option<Instant>>,
    mut finish: watch::Receiver<bool>,
) -> Outcome {
    let mut outcome = Outcome {
        index: spec.index,
        peer: spec.peer,
        ..Outcome::default()
    };
    let permit = connecting.acquire_owned().await;
    let socket = match tokio_tungstenite::connect_async(spec.url.as_str()).await {
        Ok((socket, _)) => socket,
        Err(e) => {
            let e = format!("client {}: connecting: {e}", spec.index);
            outcome.errors.push(e.clone());
            let _ = ready.send(Err(e)).await;
            return outcome;
        }
    };
    let (mut sink, mut stream) = socket.split();
    let history = json!({"type": "history", "roomId": spec.room, "limit": 1}).to_string();
    let subscribed = async {
        sink.send(Message::text(history)).await?;
        while let Some(frame) = stream.next().await {
            if let Message::Text(text) = frame? {
                let value: serde_json::Value = serde_json::from_str(text.as_str())?;
                match value["type"].as_str() {
                    Some("history") => return Ok(()),
                    _ => anyhow::bail!("answered {value} to a history request"),
                }
            }
        }
        anyhow::bail!("the connection ended before the history answer")
    };
    match tokio::time::timeout(Duration::from_secs(60), subscribed).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let e = format!("client {}: {e:#}", spec.index);
            outcome.errors.push(e.clone());
            let _ = ready.send(Err(e)).await;
            return outcome;
        }
        Err(_) => {
            let e = format!("client {}: no history answer within 60 s", spec.index);
            outcome.errors.push(e.clone());
            let _ = ready.send(Err(e)).await;
            return outcome;
        }
    }
    drop(permit);
    let _ = ready.send(Ok(spec.index)).await;

    // Wait for the start, reading meanwhile (pings must be answered).
    let base = loop {
        if let Some(base) = *start.borrow_and_update() {
            break base;
        }
        tokio::select! {
            changed = start.changed() => if changed.is_err() { return outcome },
            frame = stream.next() => match frame {
                Some(Ok(Message::Close(close))) => {
                    outcome.errors.push(format!("closed by the server before the start: {close:?}"));
                    return outcome;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    outcome.errors.push(format!("before the start: {e}"));
                    return outcome;
                }
                None => {
                    outcome.errors.push("the connection ended before the start".into());
                    return outcome;
                }
            },
        }
    };

    // Spread the clients' sends evenly over each period.
    let offset = Duration::from_secs_f64(spec.index as f64 / (spec.clients as f64 * RATE));
    let scheduled = |seq: usize| base + offset + Duration::from_secs_f64(seq as f64 / RATE);
    let mut next = 0;
    let mut reported = false;
    loop {
        let due = tokio::time::Instant::from_std(scheduled(next));
        tokio::select! {
            () = tokio::time::sleep_until(due), if next < spec.messages => {
                let at = scheduled(next).saturating_duration_since(base).as_micros();
                let frame = json!({
                    "type": "send",
                    "roomId": spec.room,
                    "body": format!("bench {} {next} {at}", spec.index),
                    "clientMsgId": format!("c{}-{next}", spec.index),
                });
                if let Err(e) = sink.send(Message::text(frame.to_string())).await {
                    outcome.errors.push(format!("sending: {e}"));
                    break;
                }
                next += 1;
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if let Err(e) = take(&mut outcome, text.as_str(), base, spec.peer) {
                        outcome.errors.push(e);
                    }
                }
                Some(Ok(Message::Close(close))) => {
                    outcome.errors.push(format!("closed by the server: {close:?}"));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    outcome.errors.push(format!("reading: {e}"));
                    break;
                }
                None => {
                    outcome.errors.push("the connection ended".into());
                    break;
                }
            },
            _ = finish.changed() => break,
        }
        if !reported && outcome.acks == spec.messages && outcome.deliveries() >= 2 * spec.messages {
            reported = true;
            let _ = complete.send(spec.index).await;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    outcome
}

/// Counts one server frame.
fn take(outcome: &mut Outcome, text: &str, base: Instant, peer: usize) -> Result<(), String> {
    let now = Instant::now();
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
    match value["type"].as_str() {
        Some("ack") => {
            outcome.acks += 1;
            Ok(())
        }
        Some("message") => {
            let body = value["body"].as_str().unwrap_or_default();
            let (sender, seq, at_us) =
                parse_body(body).ok_or_else(|| format!("a message not sent here: {body:?}"))?;
            if sender != outcome.index && sender != peer {
                return Err(format!("a message of client {sender}, not of this room"));
            }
            *outcome.received.entry((sender, seq)).or_default() += 1;
            let scheduled = base + Duration::from_micros(at_us);
            outcome
                .latencies_ms
                .push(ms(now.saturating_duration_since(scheduled)));
            outcome.last_receive = Some(now);
            Ok(())
        }
        _ => Err(format!("unexpected frame {value}")),
    }
}

/// `bench <sender> <seq> <µs after the start>`.
fn parse_body(body: &str) -> Option<(usize, usize, u64)> {
    let mut words = body.strip_prefix("bench ")?.split(' ');
    let sender = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    let at = words.next()?.parse().ok()?;
    words.next().is_none().then_some((sender, seq, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip() {
        assert_eq!(parse_body("bench 3 7 1500000"), Some((3, 7, 1_500_000)));
        assert_eq!(parse_body("bench 3 7"), None);
        assert_eq!(parse_body("hello 3 7 1"), None);
        assert_eq!(parse_body("bench 3 7 1 extra"), None);
    }

    #[test]
    fn outcomes_need_every_delivery_exactly_once() {
        let base = Instant::now();
        let mut o = Outcome {
            index: 2,
            peer: 3,
            ..Outcome::default()
        };
        for (sender, seq) in [(2, 0), (3, 0), (2, 1), (3, 1)] {
            take(
                &mut o,
                &json!({"type": "message", "body": format!("bench {sender} {seq} 10")}).to_string(),
                base,
                3,
            )
            .expect("a delivery");
        }
        take(&mut o, r#"{"type":"ack"}"#, base, 3).expect("ack");
        assert!(
            o.problems(2)
                .expect("one ack missing")
                .contains("1 of 2 sends")
        );
        take(&mut o, r#"{"type":"ack"}"#, base, 3).expect("ack");
        assert_eq!(o.problems(2), None);
        take(
            &mut o,
            &json!({"type": "message", "body": "bench 3 1 10"}).to_string(),
            base,
            3,
        )
        .expect("a repeat is counted");
        assert!(
            o.problems(2)
                .expect("a repeat")
                .contains("received 2 times")
        );
        assert!(
            take(
                &mut o,
                &json!({"type": "message", "body": "bench 5 0 10"}).to_string(),
                base,
                3
            )
            .is_err()
        );
        assert!(take(&mut o, r#"{"type":"error","code":"RATE_LIMITED"}"#, base, 3).is_err());
    }
}
