//! The `orderflow` command: parses arguments, sets up tracing and calls into the
//! library crates. Nothing here holds logic of its own.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orderflow_runtime::topology::{self, describe::Format};

/// orderflow: an order, payment and chat backend as a Kafka Streams-style pipeline.
#[derive(Debug, Parser)]
#[command(name = "orderflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the managed single-node Apache Kafka (KRaft) in the foreground: fetched
    /// and cached on first use, its data under --data, stopped cleanly on Ctrl-C.
    Broker {
        /// The data directory (formatted on first use, reused after).
        #[arg(long, default_value = "./.orderflow/kafka")]
        data: PathBuf,
        /// The client listener; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:9092")]
        listen: std::net::SocketAddr,
    },
    /// Validate or describe topology.yaml.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// Check the file: exit 0, or 1 with every error as file:line:column path: message.
    Check {
        /// The topology file.
        #[arg(
            long,
            short,
            default_value = "topology.yaml",
            env = "ORDERFLOW_TOPOLOGY"
        )]
        file: PathBuf,
    },
    /// Print the processor graph: sources, processors, sinks, stores and changelogs.
    Describe {
        /// The topology file.
        #[arg(
            long,
            short,
            default_value = "topology.yaml",
            env = "ORDERFLOW_TOPOLOGY"
        )]
        file: PathBuf,
        /// text, json or dot.
        #[arg(long, default_value = "text")]
        format: Format,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORDERFLOW_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Topology { command } => topology_command(command),
        Command::Broker { data, listen } => broker_command(data, listen),
    }
}

fn topology_command(command: TopologyCommand) -> ExitCode {
    let catalog = orderflow_pipelines::catalog();
    let (file, format) = match &command {
        TopologyCommand::Check { file } => (file, None),
        TopologyCommand::Describe { file, format } => (file, Some(*format)),
    };
    match topology::load(file, &catalog) {
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error{}",
                file.display(),
                errors.0.len(),
                if errors.0.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
        Ok(topology) => {
            let text = match format {
                None => format!(
                    "{}: ok ({} topics, {} processors, {} stores, {} edges, {} sinks)\n",
                    file.display(),
                    topology.topics.len(),
                    topology.processors.len(),
                    topology.stores.len(),
                    topology.edges.len(),
                    topology.sinks.len()
                ),
                Some(format) => topology::describe::describe(&topology, format),
            };
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(text.as_bytes()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
}

fn broker_command(data: PathBuf, listen: std::net::SocketAddr) -> ExitCode {
    use orderflow_runtime::broker::{Broker, BrokerConfig};
    let config = BrokerConfig::new(data, listen);
    let broker = match Broker::start(&config, &mut |line| eprintln!("{line}")) {
        Ok(broker) => broker,
        Err(e) => {
            eprintln!("orderflow broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "kafka: {}", broker.bootstrap())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);
    tracing::info!(pid = broker.pid(), data = %broker.data_dir().display(), "broker ready");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orderflow broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let broker = std::sync::Arc::new(broker);
    let watched = broker.clone();
    let outcome = runtime.block_on(async move {
        let exited = tokio::task::spawn_blocking(move || {
            loop {
                if let Some(status) = watched.wait_exit(std::time::Duration::from_secs(1)) {
                    return status;
                }
            }
        });
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = exited => Err(status.unwrap_or_else(|e| e.to_string())),
            _ = tokio::signal::ctrl_c() => Ok(()),
            () = terminated => Ok(()),
        }
    });
    match outcome {
        Ok(()) => {
            eprintln!("stopping the broker");
            let status = broker.stop(std::time::Duration::from_secs(60));
            eprintln!(
                "broker stopped ({})",
                status.unwrap_or_else(|| "still running".into())
            );
            ExitCode::SUCCESS
        }
        Err(status) => {
            eprintln!(
                "orderflow broker: the broker exited on its own ({status}); see {}",
                broker.data_dir().join("broker.log").display()
            );
            ExitCode::FAILURE
        }
    }
}
