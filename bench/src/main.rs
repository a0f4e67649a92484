//! `orderflow-bench`: runs the benchmarks of issue 11 and writes
//! `bench/results/<date>.json` plus a table. `all` runs every job; naming jobs runs
//! only those (each job is runnable alone, so a change can show before/after).
//! The `engine`, `copy`, `node` and `ceiling` subcommands are the measured
//! processes the harness starts from its own binary.

mod cluster;
mod count;
mod edges;
mod jobs;
mod load;
mod peers;
mod process;
mod profile;
mod report;
mod roles;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "orderflow-bench",
    about = "orderflow's benchmarks (bench/README.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, clap::Args)]
struct RunOptions {
    /// Multiplies every record count (1.0 = the full run: 300k order events, 1M registrations, 60k orders).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Where the JSON goes; default bench/results/<date>.json for `all`, else
    /// bench/results/<date>-<jobs>.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not pin the broker and the measured processes to separate cores.
    #[arg(long)]
    no_pin: bool,
    /// Scratch dir (broker data, logs, state); default a new temp dir.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Attach `perf record` to each measured stream process; summaries go to
    /// <work>/perf/<job>.txt (figures of a profiled run are not comparable).
    #[arg(long)]
    perf: bool,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run every job.
    All {
        #[command(flatten)]
        options: RunOptions,
    },
    /// Run the named jobs (in the order `all` runs them).
    Run {
        /// Job names (`list` shows them).
        #[arg(required = true)]
        jobs: Vec<String>,
        #[command(flatten)]
        options: RunOptions,
    },
    /// List the jobs.
    List,
    /// (measured process) orderflow's engine running the named processors until SIGTERM.
    #[command(hide = true)]
    Engine {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        registry: String,
        #[arg(long = "processor", required = true)]
        processors: Vec<String>,
    },
    /// (measured process) B0's raw copy loop until SIGTERM.
    #[command(hide = true)]
    Copy {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// (measured process) an orderflow node: processors plus the HTTP and chat edges
    /// on one listener, until SIGTERM (JWT_SECRET, ORDERFLOW_APP, ORDERFLOW_PROCESSING
    /// from the environment).
    #[command(hide = true)]
    Node {
        #[arg(long)]
        bootstrap: String,
        #[arg(long)]
        registry: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        #[arg(long = "processor", required = true)]
        processors: Vec<String>,
    },
    /// (measured process) a bare hyper JSON endpoint, GET /json, until SIGTERM: the
    /// ceiling of the HTTP jobs.
    #[command(hide = true)]
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::List => {
            let mut text = String::new();
            for name in jobs::ALL {
                text.push_str(name);
                text.push('\n');
            }
            text.push('\n');
            for (family, what) in jobs::describe() {
                text.push_str(&format!("{family:<12} {what}\n"));
            }
            print(&text);
            Ok(())
        }
        Cmd::All { options } => bench(
            jobs::ALL.iter().map(|s| s.to_string()).collect(),
            options,
            true,
        ),
        Cmd::Run { jobs, options } => bench(jobs, options, false),
        Cmd::Engine {
            bootstrap,
            registry,
            processors,
        } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(roles::engine(&bootstrap, &registry, processors))),
        Cmd::Copy {
            bootstrap,
            group,
            from,
            to,
        } => roles::copy(&bootstrap, &group, &from, &to),
        Cmd::Node {
            bootstrap,
            registry,
            listen,
            processors,
        } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(edges::node::node(&bootstrap, &registry, listen, processors))
            }),
        Cmd::Ceiling { listen } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(edges::node::ceiling(listen))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderflow-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn print(text: &str) {
    print!("{text}");
}

fn bench(names: Vec<String>, options: RunOptions, all: bool) -> anyhow::Result<()> {
    let plan = jobs::plan(&names)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let work = match &options.work {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("orderflow-bench-{}", std::process::id())),
    };
    jobs::ensure_dir(&work.join("logs"))?;
    // The broker on core 0, the measured process alone on core 1; the harness
    // (preloads, the output counter) anywhere: pinned beside the broker, its
    // preloads starved the broker's controller until it fenced itself.
    let pin = !options.no_pin && process::cores() >= 2;
    let date = date_today();
    let out = options.out.clone().unwrap_or_else(|| {
        let name = if all {
            format!("{date}.json")
        } else {
            format!("{date}-{}.json", plan.join("+"))
        };
        cluster::repo_root().join("bench/results").join(name)
    });
    let report = runtime.block_on(async {
        let mut peers = peers::Peers::new(&work);
        peers.prepare(
            plan.iter().any(|j| j.starts_with("kstreams_")),
            plan.iter().any(|j| j.starts_with("quix_")),
        );
        let cluster = cluster::Cluster::start(&work, pin.then_some(0)).await?;
        let kafka = orderflow_runtime::broker::KAFKA_VERSION.to_string();
        let mut run = jobs::Run::new(
            cluster,
            jobs::Sizes::scaled(options.scale),
            work.clone(),
            pin.then_some(1),
            peers,
        );
        run.perf = options.perf;
        let mut results = BTreeMap::new();
        for name in &plan {
            let result = run.job(name).await;
            results.insert(name.to_string(), result);
        }
        let machine = report::machine(&[
            ("date", date.clone()),
            ("kafka", kafka),
            (
                "pinned",
                if pin {
                    "broker on core 0, measured process on core 1, harness unpinned".into()
                } else {
                    "no".into()
                },
            ),
            ("scale", options.scale.to_string()),
        ]);
        let cluster = run.into_cluster();
        tokio::task::spawn_blocking(move || cluster.stop()).await?;
        anyhow::Ok(report::Report::new(machine, results))
    })?;
    if let Some(dir) = out.parent() {
        jobs::ensure_dir(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    print(&report.table());
    print(&format!(
        "\nwritten: {}\nlogs: {}\n",
        out.display(),
        work.join("logs").display()
    ));
    Ok(())
}

/// Today's date, UTC, as YYYY-MM-DD (from `date`, which every Debian has).
fn date_today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%F"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "undated".to_string())
}
