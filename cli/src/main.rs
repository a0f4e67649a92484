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
