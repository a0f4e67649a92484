//! Every job by name: what it needs preloaded, what it starts, what must come out.
//! The stream jobs (B0..B3, the peers' B1 and B3, the restore) run one measured
//! process each against the shared inputs; every engine reads the same records from
//! the same topics with its own consumer group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orderflow_pipelines::records::topics;

use crate::cluster::Cluster;
use crate::count::{self, Expected, Marks};
use crate::load;
use crate::process::Measured;
use crate::report::{JobResult, round};

/// Every job, in the order `all` runs them: the B1 family reads `orders.events`,
/// which the B3 family writes, so B1 runs first; B3 reads `auth.users` whole as a
/// global table and B2 writes a million users there, so B3 runs before B2 and sees
/// only its own 1,100 users.
pub const ALL: [&str; 21] = [
    "B0",
    "B1_alos",
    "B1_eos",
    "kstreams_B1_alos",
    "kstreams_B1_eos",
    "quix_B1",
    "B3_alos",
    "B3_eos",
    "kstreams_B3_alos",
    "kstreams_B3_eos",
    "quix_B3",
    "B2_alos",
    "B2_eos",
    "restore_1m",
    "latency_http",
    "http_post_orders",
    "http_get_order",
    "http_ceiling",
    "ws_fanout_32",
    "ws_fanout_256",
    "ws_fanout_1024",
];

/// Record counts, scaled by `--scale`.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// B0/B1 order events.
    pub events: usize,
    /// B2 registrations (and the restore's store size).
    pub registrations: usize,
    /// B3 orders (each with one payment result).
    pub orders: usize,
    /// The `--scale` they were made with (the edge jobs shorten their runs by it).
    pub scale: f64,
}

impl Sizes {
    /// The full-size run, times `scale`. B2 and the restore take the million records
    /// the issue names; B1's and B3's counts give every engine a window of seconds
    /// (Quix Streams' ~40 s) while the whole of `all`, release build included, fits in
    /// 20 minutes on 2 cores.
    pub fn scaled(scale: f64) -> Sizes {
        let n = |full: f64| ((full * scale).round() as usize).max(10);
        Sizes {
            events: n(300_000.0),
            registrations: n(1_000_000.0),
            orders: n(60_000.0),
            scale,
        }
    }
}

/// What one run shares between its jobs.
#[derive(Debug)]
pub struct Run {
    /// The broker and registry.
    pub cluster: Cluster,
    /// Record counts.
    pub sizes: Sizes,
    /// Scratch space: logs, state dirs.
    pub work: PathBuf,
    /// The core measured processes run on (the broker and the harness get the other).
    pub job_core: Option<usize>,
    /// Names this run's consumer groups and app ids.
    pub run_id: String,
    loaded: BTreeSet<&'static str>,
    /// B2_alos's app id, which the restore job restarts.
    b2_app: Option<String>,
    /// Whether the edge jobs have checked for (and if need be made) a broker of
    /// their own (see `edges::own_cluster`).
    pub edges_checked_cluster: bool,
    peers: crate::peers::Peers,
    /// Attach `perf record` to every measured stream process (`--perf`).
    pub perf: bool,
}

/// A throughput job's engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    /// orderflow's engine running one processor.
    Ours(&'static str),
    /// B0's copy loop.
    Copy,
    /// The Kafka Streams peer.
    KStreams,
    /// The Quix Streams peer.
    Quix,
}

impl Engine {
    fn label(self) -> &'static str {
        match self {
            Engine::Ours(_) => "orderflow",
            Engine::Copy => "rdkafka copy loop",
            Engine::KStreams => "kafka-streams",
            Engine::Quix => "quixstreams",
        }
    }
}

/// The inputs a family of jobs reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// `orders.events` (B0, B1).
    Events,
    /// `auth.users`, `orders.commands`, `payments.results` (B3).
    Saga,
    /// `auth.commands` (B2).
    Registrations,
}

const ALOS: &str = "at_least_once";
const EOS: &str = "exactly_once";

/// The stream job of a name: engine, guarantee, inputs.
fn stream_job(name: &str) -> Option<(Engine, Option<&'static str>, Input)> {
    let b1 = Engine::Ours("buyer-relations");
    let b2 = Engine::Ours("user-cache");
    let b3 = Engine::Ours("order-saga");
    Some(match name {
        "B0" => (Engine::Copy, None, Input::Events),
        "B1_alos" => (b1, Some(ALOS), Input::Events),
        "B1_eos" => (b1, Some(EOS), Input::Events),
        "kstreams_B1_alos" => (Engine::KStreams, Some(ALOS), Input::Events),
        "kstreams_B1_eos" => (Engine::KStreams, Some(EOS), Input::Events),
        "quix_B1" => (Engine::Quix, Some(ALOS), Input::Events),
        "B2_alos" => (b2, Some(ALOS), Input::Registrations),
        "B2_eos" => (b2, Some(EOS), Input::Registrations),
        "B3_alos" => (b3, Some(ALOS), Input::Saga),
        "B3_eos" => (b3, Some(EOS), Input::Saga),
        "kstreams_B3_alos" => (Engine::KStreams, Some(ALOS), Input::Saga),
        "kstreams_B3_eos" => (Engine::KStreams, Some(EOS), Input::Saga),
        "quix_B3" => (Engine::Quix, Some(ALOS), Input::Saga),
        _ => return None,
    })
}

/// Orders `names` as [`ALL`] does and refuses unknown ones.
pub fn plan(names: &[String]) -> anyhow::Result<Vec<&'static str>> {
    for name in names {
        if !ALL.contains(&name.as_str()) {
            bail!("no job {name:?}; the jobs are: {}", ALL.join(", "));
        }
    }
    Ok(ALL
        .iter()
        .copied()
        .filter(|j| names.iter().any(|n| n == j))
        .collect())
}

/// The topic B0 copies into.
const COPY_TOPIC: &str = "bench.copy";

/// How long a stream job may run before it counts as failed.
fn limit(records: u64) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(records / 2)
}

impl Run {
    /// A run over `cluster`, with the peers' programs of `peers` (set up, or being
    /// set up).
    pub fn new(
        cluster: Cluster,
        sizes: Sizes,
        work: PathBuf,
        job_core: Option<usize>,
        peers: crate::peers::Peers,
    ) -> Run {
        let run_id = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        );
        Run {
            peers,
            cluster,
            sizes,
            work,
            job_core,
            run_id,
            loaded: BTreeSet::new(),
            b2_app: None,
            perf: false,
            edges_checked_cluster: false,
        }
    }

    /// The cluster back, to stop it.
    pub fn into_cluster(self) -> Cluster {
        self.cluster
    }

    /// Runs one job; a failure is a result that says why.
    pub async fn job(&mut self, name: &'static str) -> JobResult {
        eprintln!("bench: {name} ...");
        let started = Instant::now();
        if stream_job(name).is_none() {
            self.peers.settle().await;
        }
        let result = if name == "restore_1m" {
            self.restore().await
        } else if let Some((engine, guarantee, input)) = stream_job(name) {
            self.stream(name, engine, guarantee, input)
                .await
                .unwrap_or_else(|e| JobResult::failed(engine.label(), guarantee, format!("{e:#}")))
        } else {
            crate::edges::run(self, name).await
        };
        eprintln!(
            "bench: {name} {} in {:.0} s",
            if result.ok { "done" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        result
    }

    fn app_id(&self, name: &str) -> String {
        format!(
            "bench-{}-{}",
            name.to_lowercase().replace('_', "-"),
            self.run_id
        )
    }

    /// A fresh log file path for a job's process.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.work.join("logs").join(format!("{name}.log"))
    }

    async fn load(&mut self, input: Input) -> anyhow::Result<()> {
        let key = match input {
            Input::Events => "events",
            Input::Saga => "saga",
            Input::Registrations => "registrations",
        };
        if self.loaded.contains(key) {
            return Ok(());
        }
        let serde = self.cluster.serde.clone();
        let now = now_ms();
        let started = Instant::now();
        let sizes = self.sizes;
        let cluster = &self.cluster;
        let written = match input {
            Input::Events => {
                let ends: i64 = cluster.end_offsets(topics::ORDERS_EVENTS)?.values().sum();
                if ends != 0 {
                    bail!(
                        "orders.events already holds {ends} records; the B1 jobs need it to hold only their input (run them before the B3 jobs, on a fresh broker)"
                    );
                }
                cluster.preload(
                    topics::ORDERS_EVENTS,
                    load::order_events(&serde, sizes.events, now),
                )?
            }
            Input::Saga => {
                let users = cluster.preload(topics::AUTH_USERS, load::users(&serde, now))?;
                users
                    + cluster.preload(
                        topics::ORDERS_COMMANDS,
                        load::place_orders(&serde, sizes.orders, now),
                    )?
                    + cluster.preload(
                        topics::PAYMENTS_RESULTS,
                        load::approvals(&serde, sizes.orders, now),
                    )?
            }
            Input::Registrations => cluster.preload(
                topics::AUTH_COMMANDS,
                load::registrations(&serde, sizes.registrations, 0),
            )?,
        };
        eprintln!(
            "bench: preloaded {written} {key} records in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        self.loaded.insert(key);
        Ok(())
    }

    async fn stream(
        &mut self,
        name: &'static str,
        engine: Engine,
        guarantee: Option<&'static str>,
        input: Input,
    ) -> anyhow::Result<JobResult> {
        self.load(input).await?;
        // The peers' set-up overlapped the broker's start and the preloads; nothing
        // else may run beside a measured process.
        self.peers.settle().await;
        let sizes = self.sizes;
        let (records_in, expected) = match input {
            Input::Events if engine == Engine::Copy => {
                self.cluster.create_topic(COPY_TOPIC).await?;
                (
                    sizes.events as u64,
                    Expected::of(&[(COPY_TOPIC, sizes.events as u64)]),
                )
            }
            Input::Events => (
                sizes.events as u64,
                Expected::of(&[(
                    topics::AUTH_RELATIONS,
                    load::paid_events(sizes.events) as u64,
                )]),
            ),
            Input::Saga => (
                2 * sizes.orders as u64,
                Expected::of(&[
                    (topics::ORDERS_EVENTS, 2 * sizes.orders as u64),
                    (topics::PAYMENTS_REQUESTS, sizes.orders as u64),
                ]),
            ),
            Input::Registrations => (
                sizes.registrations as u64,
                Expected::of(&[
                    (topics::AUTH_USERS, sizes.registrations as u64),
                    (topics::EDGE_REPLIES, sizes.registrations as u64),
                ]),
            ),
        };
        let app = self.app_id(name);
        let command = self.command(name, engine, guarantee, &app).await?;
        let marks = Marks::take(&self.cluster, &expected)?;
        let mut process = Measured::spawn(command, &self.log_path(name), self.job_core)?;
        let profile = if self.perf {
            Some(crate::profile::Profile::attach(
                &process,
                &self.work.join("perf"),
                name,
            )?)
        } else {
            None
        };
        let observed = count::watch(
            &self.cluster,
            &marks,
            &expected,
            &mut process,
            limit(records_in),
        );
        let summary = profile.map(crate::profile::Profile::finish);
        let stopped = process.stop(Duration::from_secs(30));
        let observed = observed?;
        if name == "B2_alos" {
            self.b2_app = Some(app);
        }
        let seconds = observed.window.as_secs_f64().max(1e-3);
        Ok(JobResult {
            records: records_in,
            records_per_s: Some(round(records_in as f64 / seconds, 0)),
            cpu_us_per_record: Some(round(
                observed.cpu.as_secs_f64() * 1e6 / records_in as f64,
                2,
            )),
            peak_rss_mb: Some(round(observed.peak_rss_mb, 1)),
            seconds: Some(round(seconds, 3)),
            startup_s: Some(round(observed.startup.as_secs_f64(), 3)),
            ok: true,
            engine: engine.label().to_string(),
            guarantee: guarantee.map(str::to_string),
            note: Some(format!(
                "out: {}; stopped: {stopped}{}",
                observed
                    .counts
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                summary
                    .map(|s| format!("; profile: {s}"))
                    .unwrap_or_default()
            )),
            ..JobResult::default()
        })
    }

    /// The command line of a job's measured process.
    async fn command(
        &mut self,
        name: &str,
        engine: Engine,
        guarantee: Option<&str>,
        app: &str,
    ) -> anyhow::Result<Command> {
        let bootstrap = self.cluster.bootstrap.clone();
        let registry = self.cluster.registry_url.clone();
        let job = match name {
            n if n.contains("B1") => "b1",
            _ => "b3",
        };
        let guarantee = guarantee.unwrap_or(ALOS);
        Ok(match engine {
            Engine::Ours(processor) => self.engine_command(app, guarantee, &[processor])?,
            Engine::Copy => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["copy", "--bootstrap", &bootstrap, "--group", app])
                    .args(["--from", topics::ORDERS_EVENTS, "--to", COPY_TOPIC]);
                c
            }
            Engine::KStreams => {
                let state = self.work.join("state").join(app);
                self.peers
                    .kstreams(&bootstrap, &registry, job, guarantee, app, &state)
                    .await?
            }
            Engine::Quix => {
                let state = self.work.join("state").join(app);
                self.peers
                    .quix(&bootstrap, &registry, job, guarantee, app, &state)
                    .await?
            }
        })
    }

    /// `orderflow-bench engine` running `processors` as app `app`.
    pub fn engine_command(
        &self,
        app: &str,
        guarantee: &str,
        processors: &[&str],
    ) -> anyhow::Result<Command> {
        let mut c = Command::new(std::env::current_exe()?);
        c.args(["engine", "--bootstrap", &self.cluster.bootstrap])
            .args(["--registry", &self.cluster.registry_url]);
        for p in processors {
            c.args(["--processor", p]);
        }
        c.env("ORDERFLOW_APP", app)
            .env("ORDERFLOW_PROCESSING", guarantee)
            // The preload answers every order: the timeout never decides anything.
            .env("ORDERFLOW_PAYMENT_TIMEOUT", "1h")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
        Ok(c)
    }

    /// restore_1m: B2_alos's user-cache restarted on its changelogs; the time from
    /// its start to the answer of one new registration is the time to restore its
    /// stores (the registrations' users-by-email and user-requests entries).
    async fn restore(&mut self) -> JobResult {
        let result: anyhow::Result<JobResult> = async {
            if self.b2_app.is_none() {
                let b2 = Box::pin(self.job("B2_alos")).await;
                if !b2.ok {
                    bail!("B2_alos, which fills the store, failed: {}", b2.error.unwrap_or_default());
                }
            }
            let Some(app) = self.b2_app.clone() else {
                bail!("B2_alos left no app to restore");
            };
            let expected = Expected::of(&[(topics::AUTH_USERS, 1), (topics::EDGE_REPLIES, 1)]);
            let marks = Marks::take(&self.cluster, &expected)?;
            let command = self.engine_command(&app, ALOS, &["user-cache"])?;
            let mut process = Measured::spawn(command, &self.log_path("restore_1m"), self.job_core)?;
            let profile = if self.perf {
                Some(crate::profile::Profile::attach(&process, &self.work.join("perf"), "restore_1m")?)
            } else {
                None
            };
            let probe = self.sizes.registrations + 1;
            let serde = self.cluster.serde.clone();
            self.cluster
                .preload(topics::AUTH_COMMANDS, load::registrations(&serde, 1, probe))?;
            let observed = count::watch(&self.cluster, &marks, &expected, &mut process, Duration::from_secs(600));
            let summary = profile.map(crate::profile::Profile::finish);
            let stopped = process.stop(Duration::from_secs(30));
            let observed = observed?;
            let entries = 2 * self.sizes.registrations as u64;
            let seconds = observed.startup.as_secs_f64().max(1e-3);
            Ok(JobResult {
                records: entries,
                records_per_s: Some(round(entries as f64 / seconds, 0)),
                cpu_us_per_record: Some(round(observed.cpu_before.as_secs_f64() * 1e6 / entries as f64, 2)),
                peak_rss_mb: Some(round(observed.peak_rss_mb, 1)),
                seconds: Some(round(seconds, 3)),
                ok: true,
                engine: "orderflow".into(),
                guarantee: Some(ALOS.into()),
                note: Some(format!(
                    "{} users-by-email keys + as many user-requests entries; seconds = process start to the first answer after the restore; stopped: {stopped}{}",
                    self.sizes.registrations,
                    summary.map(|s| format!("; profile: {s}")).unwrap_or_default()
                )),
                ..JobResult::default()
            })
        }
        .await;
        result.unwrap_or_else(|e| JobResult::failed("orderflow", Some(ALOS), format!("{e:#}")))
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Creates `dir` (and its parents).
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Job names by family, for `list`.
pub fn describe() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        (
            "B0",
            "raw rdkafka consume->produce copy of orders.events, no decoding (the limit)",
        ),
        (
            "B1_*",
            "buyer-relations: decode OrderEvent, keep PAID, map to BuyerSeller, encode",
        ),
        (
            "B2_*",
            "user-cache over RegisterUser commands (stores + changelogs, two outputs each)",
        ),
        (
            "B3_*",
            "order-saga over PlaceOrder + APPROVED PaymentResult per order, users as a global table",
        ),
        (
            "kstreams_*",
            "the same B1/B3 on Kafka Streams (bench/peers/kafka-streams)",
        ),
        (
            "quix_*",
            "the same B1/B3 on Quix Streams (bench/peers/quix), at_least_once",
        ),
        (
            "restore_1m",
            "user-cache restarted on B2_alos's changelogs: seconds to restore",
        ),
        (
            "latency_http",
            "order -> PAID through the HTTP edge at fixed offered loads",
        ),
        (
            "http_*",
            "wrk on POST /orders and GET /orders/{id}; http_ceiling: the same wrk on a bare hyper JSON endpoint",
        ),
        (
            "ws_fanout_*",
            "chat deliveries to 32/256/1024 connected WebSocket clients",
        ),
    ])
}
