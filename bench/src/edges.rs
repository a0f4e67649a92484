//! The edge jobs: order -> PAID latency through the HTTP edge ([`latency`]), wrk on
//! the HTTP routes beside a bare hyper endpoint ([`wrk`]), and WebSocket chat fan-out
//! ([`ws`]). What they share is here: the measured node ([`EdgeNode`], one per job
//! and guarantee, each a fresh app), the HTTP client that registers users and places
//! orders ([`Api`]), the reader of `orders.events` that sees orders become PAID
//! ([`OrderWatch`]) and the percentiles ([`Percentiles`]).

mod latency;
pub mod node;
mod wrk;
mod ws;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use orderflow_pipelines::records::{
    OrderEvent, OrderStatus, PaymentOutcome, PaymentResult, topics,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

use crate::cluster::{Cluster, repo_root};
use crate::jobs::Run;
use crate::process::Measured;
use crate::report::{JobResult, round};

/// What every edge job's node runs besides the edges: everything an order and a
/// chat message pass through.
pub const NODE_PROCESSORS: [&str; 5] = [
    "user-cache",
    "order-saga",
    "payment-authorizer",
    "buyer-relations",
    "chat-fanout",
];

/// at_least_once.
pub const ALOS: &str = "at_least_once";
/// exactly_once.
pub const EOS: &str = "exactly_once";

/// The engine label of the jobs that measure a node.
const NODE_ENGINE: &str = "orderflow node (http+ws edges, 5 processors)";

/// Runs the edge job `name`.
pub async fn run(run: &mut Run, name: &str) -> JobResult {
    let (engine, guarantee) = match name {
        "latency_http" => (NODE_ENGINE, None),
        "http_ceiling" => ("bare hyper JSON endpoint", None),
        _ => (NODE_ENGINE, Some(EOS)),
    };
    if let Err(e) = own_cluster(run).await {
        return JobResult::failed(engine, guarantee, format!("{e:#}"));
    }
    let result = match name {
        "latency_http" => latency::run(run).await,
        "http_post_orders" => wrk::post_orders(run).await,
        "http_get_order" => wrk::get_order(run).await,
        "http_ceiling" => wrk::ceiling(run).await,
        _ => match name
            .strip_prefix("ws_fanout_")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(clients) => ws::run(run, name, clients).await,
            None => Err(anyhow!("no edge job {name:?}")),
        },
    };
    result.unwrap_or_else(|e| JobResult::failed(engine, guarantee, format!("{e:#}")))
}

/// Before the first edge job: when the stream jobs have left records on the topics
/// a node reads whole at start (`orders.events`, `auth.users`, `auth.relations`:
/// the edges' order view and user directory, the saga's user table), the edge jobs
/// get a fresh broker instead. Every node would otherwise first read all of them (a
/// full run leaves millions): its start-up and peak RSS would be those of the other
/// jobs' leftovers, not of the edges (with B0's 1M order events alone a node took
/// 27 s to be ready and peaked at 1.4 GB, against 2 s and 130 MB).
async fn own_cluster(run: &mut Run) -> anyhow::Result<()> {
    if run.edges_checked_cluster {
        return Ok(());
    }
    let mut leftover = 0i64;
    for topic in [
        topics::ORDERS_EVENTS,
        topics::AUTH_USERS,
        topics::AUTH_RELATIONS,
    ] {
        leftover += run.cluster.end_offsets(topic)?.values().sum::<i64>();
    }
    if leftover > 0 {
        eprintln!(
            "bench: {leftover} records on the topics a node reads whole at start: the edge jobs get a fresh broker"
        );
        let fresh = Cluster::start(&run.work.join("edges"), run.job_core.map(|_| 0)).await?;
        let old = std::mem::replace(&mut run.cluster, fresh);
        tokio::task::spawn_blocking(move || old.stop()).await?;
    }
    run.edges_checked_cluster = true;
    Ok(())
}

/// How long each measured phase of an edge job runs: 10 s at `--scale` 0.1 and
/// above, shorter below (2 s at 0.02 and under), so a quick check stays quick.
pub fn phase_seconds(scale: f64) -> f64 {
    10.0 * (scale * 10.0).clamp(0.2, 1.0)
}

/// The HS256 secret of this run: every node checks tokens with it, and the
/// harness mints the chat clients' tokens with it.
pub fn jwt_secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut bytes = [0u8; 32];
        let random = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        if random.is_err() {
            // No /dev/urandom: a secret made of the clock is still one per run.
            let now = epoch_us(SystemTime::now());
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (now >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
            }
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Microseconds since the epoch.
pub fn epoch_us(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds as a float, for latencies.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A node under measurement: its process and where its edges listen.
#[derive(Debug)]
pub struct EdgeNode {
    /// The process.
    pub process: Measured,
    /// `http://host:port`.
    pub base: String,
    /// From its start until its edges were ready (their tables read).
    pub startup: Duration,
    /// The processing guarantee it runs with.
    pub guarantee: String,
}

impl EdgeNode {
    /// Starts a node as a fresh app `bench-<label>-<run>` in `guarantee`, whose
    /// consumer group starts at the inputs' current ends (so it processes only what
    /// this job sends, not what earlier jobs left on the shared topics), and waits
    /// until its edges answer `/ready`.
    pub async fn start(run: &Run, label: &str, guarantee: &str) -> anyhow::Result<EdgeNode> {
        let app = format!("bench-{}-{}", label.replace('_', "-"), run.run_id);
        start_group_at_end(&run.cluster, &app)?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["node", "--bootstrap", &run.cluster.bootstrap])
            .args(["--registry", &run.cluster.registry_url]);
        for p in NODE_PROCESSORS {
            command.args(["--processor", p]);
        }
        for var in [
            "JWT_ALGORITHM",
            "JWT_ISSUER",
            "JWT_AUDIENCE",
            "JWT_PRIVATE_KEY_FILE",
            "JWT_PUBLIC_KEY_FILE",
            "JWT_ACCESS_TTL",
            "JWT_REFRESH_TTL",
            "JWT_LEEWAY",
            "ORDERFLOW_HTTP_BURST",
            "ORDERFLOW_HTTP_PASSWORD_BURST",
            "ORDERFLOW_HTTP_REPLY_TIMEOUT",
            "ORDERFLOW_HTTP_ORDER_WAIT",
            "PAYMENT_GATEWAY",
            "PAYMENT_DECLINE_OVER",
            "PAYMENT_DECLINE_BUYERS",
        ] {
            command.env_remove(var);
        }
        command
            .env("ORDERFLOW_APP", &app)
            .env("ORDERFLOW_PROCESSING", guarantee)
            .env("JWT_SECRET", jwt_secret())
            // The load comes from one address: the per-client budgets would turn
            // the benchmark into a test of the rate limiter.
            .env("ORDERFLOW_HTTP_RATE", "0")
            .env("ORDERFLOW_HTTP_PASSWORD_RATE", "0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let log = run.log_path(&format!("{label}-{guarantee}"));
        let mut process = Measured::spawn(command, &log, run.job_core)?;
        let address = announced(&mut process, node::NODE_ANNOUNCE).await?;
        let base = format!("http://{address}");
        wait_ready(&mut process, &base).await?;
        let startup = process.started.elapsed();
        Ok(EdgeNode {
            process,
            base,
            startup,
            guarantee: guarantee.to_string(),
        })
    }

    /// SIGTERM, then SIGKILL after 30 s; how it ended.
    pub fn stop(&mut self) -> String {
        self.process.stop(Duration::from_secs(30))
    }

    /// Stops the node after a job's work: `result` as it was, an error also saying
    /// how the node ended.
    pub fn stop_after<T>(&mut self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let stopped = self.stop();
        result.map_err(|e| anyhow!("{e:#} (the node then stopped: {stopped})"))
    }

    /// [`EdgeNode::stop_after`] for a job measured on this node alone: its result
    /// gets the node's guarantee and start-up time.
    pub fn finish(&mut self, result: anyhow::Result<JobResult>) -> anyhow::Result<JobResult> {
        let mut result = self.stop_after(result)?;
        result.guarantee = Some(self.guarantee.clone());
        result.startup_s = Some(round(self.startup.as_secs_f64(), 3));
        Ok(result)
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.process.exited() {
            bail!(
                "the node exited ({status}); its log ends:\n{}",
                self.process.log_tail(15)
            );
        }
        Ok(())
    }
}

/// Waits for the line starting with `prefix` in the process's log and returns what
/// follows it.
pub async fn announced(process: &mut Measured, prefix: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&process.log).unwrap_or_default();
        if let Some(address) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
            return Ok(address.trim().to_string());
        }
        if let Some(status) = process.exited() {
            bail!(
                "the process exited ({status}) before listening; its log ends:\n{}",
                process.log_tail(15)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the process did not say where it listens within 60 s; its log ends:\n{}",
                process.log_tail(15)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET /ready` until 200 (the edges' tables have caught up).
async fn wait_ready(process: &mut Measured, base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(response) = client.get(format!("{base}/ready")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = process.exited() {
            bail!(
                "the node exited ({status}) before it was ready; its log ends:\n{}",
                process.log_tail(15)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the node was not ready within 10 minutes; its log ends:\n{}",
                process.log_tail(15)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Commits the current end offsets of every input of [`NODE_PROCESSORS`] for the
/// consumer group `app` (which no process has joined yet), so a node of that app
/// starts there instead of at the beginning: the topics are shared with the other
/// jobs, and a fresh app would otherwise first redo all of their work.
pub fn start_group_at_end(cluster: &Cluster, app: &str) -> anyhow::Result<()> {
    let catalog = orderflow_pipelines::catalog();
    let topology = orderflow_runtime::topology::load(&repo_root().join("topology.yaml"), &catalog)
        .map_err(|e| anyhow!("topology.yaml: {e}"))?;
    let mut inputs = std::collections::BTreeSet::new();
    for name in NODE_PROCESSORS {
        let processor = topology
            .processors
            .get(name)
            .ok_or_else(|| anyhow!("topology.yaml has no processor {name}"))?;
        inputs.extend(processor.inputs.iter().cloned());
    }
    let mut tpl = TopicPartitionList::new();
    for topic in &inputs {
        for (partition, end) in cluster.end_offsets(topic)? {
            tpl.add_partition_offset(topic, partition, Offset::Offset(end))?;
        }
    }
    let consumer: BaseConsumer = cluster
        .client()
        .set("group.id", app)
        .set("enable.auto.commit", "false")
        .create()?;
    // On a fresh broker the group coordinator (and __consumer_offsets) appears only
    // now: NOT_COORDINATOR and COORDINATOR_LOAD_IN_PROGRESS pass.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline && retriable_commit(&e) => {
                tracing::debug!(error = %e, group = app, "retrying the start offsets");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("committing the start offsets of group {app}"));
            }
        }
    }
}

fn retriable_commit(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::NotCoordinator
                | C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::RequestTimedOut
                | C::BrokerTransportFailure
                | C::AllBrokersDown
        )
    )
}

/// A buyer and a seller registered and signed in through the HTTP edge.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The buyer's access token.
    pub buyer_token: String,
    /// The seller's user id.
    pub seller_id: String,
}

/// A client of one node's HTTP edge.
#[derive(Debug, Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
}

/// The password of every bench account.
const PASSWORD: &str = "bench-password-42";

impl Api {
    /// A client of the edge at `base`.
    pub fn new(base: &str) -> anyhow::Result<Api> {
        Ok(Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.to_string(),
        })
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn register(&self, email: &str, role: &str) -> anyhow::Result<String> {
        let response = self
            .client
            .post(self.url("/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "role": role}))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.as_u16() != 201 {
            bail!("registering {email}: {status} {body}");
        }
        body["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("registering {email}: no id in {body}"))
    }

    async fn login(&self, email: &str) -> anyhow::Result<String> {
        let response = self
            .client
            .post(self.url("/auth/login"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("signing in {email}: {status} {body}");
        }
        body["accessToken"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("signing in {email}: no accessToken in {body}"))
    }

    /// Registers a buyer and a seller named after `tag` and signs the buyer in.
    pub async fn pair(&self, tag: &str) -> anyhow::Result<Pair> {
        let buyer = format!("buyer-{tag}@bench.example");
        let seller = format!("seller-{tag}@bench.example");
        self.register(&buyer, "BUYER").await?;
        let seller_id = self.register(&seller, "SELLER").await?;
        let buyer_token = self.login(&buyer).await?;
        Ok(Pair {
            buyer_token,
            seller_id,
        })
    }

    /// Places one order for `pair`; the new order's id, or why not.
    pub async fn place(&self, pair: &Pair, sent_at_us: u64) -> anyhow::Result<String> {
        let response = self
            .client
            .post(self.url("/orders"))
            .bearer_auth(&pair.buyer_token)
            .header("X-Bench-Sent-At", sent_at_us.to_string())
            .json(&order_body(&pair.seller_id))
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.as_u16() != 202 {
            bail!("POST /orders: {status} {body}");
        }
        body["orderId"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("POST /orders: no orderId in {body}"))
    }

    /// The order's status as `GET /orders/{id}` tells it (`None` for 404).
    pub async fn status(&self, pair: &Pair, order_id: &str) -> anyhow::Result<Option<String>> {
        let response = self
            .client
            .get(self.url(&format!("/orders/{order_id}")))
            .bearer_auth(&pair.buyer_token)
            .send()
            .await?;
        let status = response.status();
        if status.as_u16() == 404 {
            return Ok(None);
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET /orders/{order_id}: {status} {body}");
        }
        Ok(body["status"].as_str().map(str::to_string))
    }

    /// Places an order and waits (polling `GET /orders/{id}`) until it is PAID;
    /// retries while the saga does not know the new users yet (REJECTED). Proves
    /// the whole path works before anything is measured; the order's id.
    pub async fn paid_order(&self, pair: &Pair) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            let id = self.place(pair, epoch_us(SystemTime::now())).await?;
            let placed = Instant::now();
            while placed.elapsed() < Duration::from_secs(35) {
                match self.status(pair, &id).await?.as_deref() {
                    Some("PAID") => return Ok(id),
                    Some(s @ ("REJECTED" | "CANCELLED" | "REFUNDED")) => {
                        last = s.to_string();
                        break;
                    }
                    other => last = other.unwrap_or("unknown").to_string(),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("no order became PAID within 120 s (the last was {last})")
    }
}

/// The JSON body of every bench order: two lines, EUR.
pub fn order_body(seller_id: &str) -> serde_json::Value {
    json!({
        "sellerId": seller_id,
        "items": [
            {"productId": "sku-1", "quantity": 2, "unitPrice": 1250},
            {"productId": "sku-2", "quantity": 1, "unitPrice": 399}
        ],
        "currency": "EUR"
    })
}

/// What [`OrderWatch`] has seen.
#[derive(Debug, Default)]
pub struct Seen {
    /// Order id → when each PAID event of it was read.
    pub paid: HashMap<String, Vec<Instant>>,
    /// Order id → the status of an event that means it will never be PAID.
    pub lost: HashMap<String, String>,
    /// Order id → when each of its steps could be read.
    pub stamps: HashMap<String, Stamps>,
    /// Records that could not be decoded.
    pub undecodable: u64,
}

/// When the harness could first read (read_committed) each step of an order,
/// epoch ms. Read times, not record timestamps: every processor forwards its
/// input's timestamp, so the whole chain carries the edge's publish time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stamps {
    /// The ORDERED event (after the saga's first commit).
    pub ordered: Option<i64>,
    /// The APPROVED payment result (after the authorizer's commit).
    pub approved: Option<i64>,
    /// The PAID event (after the saga's second commit).
    pub paid: Option<i64>,
}

/// Reads `orders.events` and `payments.results` (read_committed, from their end
/// offsets when started) in a thread and notes when each order becomes PAID.
#[derive(Debug)]
pub struct OrderWatch {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OrderWatch {
    /// Starts reading from the current ends.
    pub fn start(cluster: &Cluster) -> anyhow::Result<OrderWatch> {
        let mut tpl = TopicPartitionList::new();
        for topic in [topics::ORDERS_EVENTS, topics::PAYMENTS_RESULTS] {
            for (partition, end) in cluster.end_offsets(topic)? {
                tpl.add_partition_offset(topic, partition, Offset::Offset(end))?;
            }
        }
        let consumer: BaseConsumer = cluster
            .client()
            .set("group.id", "orderflow-bench-order-watch")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "10")
            .create()?;
        consumer.assign(&tpl)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let serde = cluster.serde.clone();
        let (s, flag) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(20)) else {
                    continue;
                };
                let at = Instant::now();
                let read_ms = (epoch_us(SystemTime::now()) / 1000) as i64;
                let Ok(mut seen) = s.lock() else { return };
                let Some(bytes) = m.payload() else { continue };
                let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
                if topic == topics::PAYMENTS_RESULTS {
                    match serde.decode_as::<PaymentResult>(topic, partition, offset, bytes) {
                        Ok(r) if r.outcome == PaymentOutcome::Approved => {
                            let stamps = seen.stamps.entry(r.order_id).or_default();
                            stamps.approved = stamps.approved.or(Some(read_ms));
                        }
                        Ok(_) => {}
                        Err(_) => seen.undecodable += 1,
                    }
                    continue;
                }
                match serde.decode_as::<OrderEvent>(topic, partition, offset, bytes) {
                    Ok(event) => match event.status {
                        OrderStatus::Paid => {
                            let stamps = seen.stamps.entry(event.order_id.clone()).or_default();
                            stamps.paid = stamps.paid.or(Some(read_ms));
                            seen.paid.entry(event.order_id).or_default().push(at);
                        }
                        OrderStatus::Ordered => {
                            let stamps = seen.stamps.entry(event.order_id).or_default();
                            stamps.ordered = stamps.ordered.or(Some(read_ms));
                        }
                        other => {
                            let why = format!("{other:?} ({})", event.reason.unwrap_or_default());
                            seen.lost.insert(event.order_id, why);
                        }
                    },
                    Err(_) => seen.undecodable += 1,
                }
            }
        });
        Ok(OrderWatch {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Runs `f` on what has been seen so far.
    pub fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> anyhow::Result<T> {
        let seen = self
            .seen
            .lock()
            .map_err(|_| anyhow!("the orders.events reader panicked"))?;
        Ok(f(&seen))
    }
}

impl Drop for OrderWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Latency percentiles of one set of samples, ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// The largest.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles (nearest rank) of `samples`; `None` when there are none.
    pub fn of(samples: &mut [f64]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        Some(Percentiles {
            p50: rank(samples, 50.0),
            p99: rank(samples, 99.0),
            p999: rank(samples, 99.9),
            max: samples[samples.len() - 1],
        })
    }
}

/// The nearest-rank `q`th percentile of sorted `samples` (not empty): the smallest
/// sample at least `q`% of the samples are at or below.
pub fn rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    // The epsilon keeps 99.9% of 1000 at rank 999, not 1000 (0.999 * 1000 is a
    // hair over 999 in binary).
    let index = ((q / 100.0) * n as f64 - 1e-9).ceil() as usize;
    sorted[index.clamp(1, n) - 1]
}

/// Writes a job's side file (a wrk script, its output) under the work dir.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        crate::jobs::ensure_dir(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut samples).expect("samples");
        assert_eq!(p.p50, 500.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.p999, 999.0);
        assert_eq!(p.max, 1000.0);
        let mut few = vec![3.0, 1.0, 2.0];
        let p = Percentiles::of(&mut few).expect("samples");
        assert_eq!((p.p50, p.p99, p.p999), (2.0, 3.0, 3.0));
        assert_eq!(rank(&[7.0], 0.0), 7.0);
        assert!(Percentiles::of(&mut []).is_none());
    }

    #[test]
    fn phases_shrink_only_below_a_tenth() {
        assert_eq!(phase_seconds(1.0), 10.0);
        assert_eq!(phase_seconds(0.1), 10.0);
        assert!((phase_seconds(0.05) - 5.0).abs() < 1e-9);
        assert_eq!(phase_seconds(0.01), 2.0);
    }

    #[test]
    fn the_secret_is_long_enough_and_stable() {
        let s = jwt_secret();
        assert!(s.len() >= 32, "{s}");
        assert_eq!(s, jwt_secret());
        orderflow_connectors::auth::token::JwtConfig::hs256(s.as_bytes().to_vec())
            .expect("a usable HS256 secret");
    }
}
