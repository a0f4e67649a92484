//! The peer engines' programs: the Kafka Streams jar (built with Maven once per
//! run) and the Quix Streams script (in a venv under the cache dir, made once), and
//! their command lines. Their builds are set-up, started at the run's start and
//! finished before anything is measured, never part of a measurement.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cluster::repo_root;

/// A set-up's outcome, kept until a job needs it: the program, or why it failed.
type Built = Option<Result<PathBuf, String>>;

/// What is built of the peers so far in this run.
#[derive(Debug)]
pub struct Peers {
    logs: PathBuf,
    jar: Built,
    python: Built,
    /// The set-ups [`Peers::prepare`] started, until [`Peers::settle`] joins them.
    pending: Option<tokio::task::JoinHandle<(Built, Built)>>,
}

fn cache_dir() -> PathBuf {
    std::env::var_os("ORDERFLOW_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/orderflow")))
        .unwrap_or_else(|| std::env::temp_dir().join("orderflow-cache"))
}

/// Runs a set-up command, its output into `log`; fails naming the log's end.
async fn setup(mut command: Command, log: &Path, what: &str) -> anyhow::Result<()> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command.stdout(file.try_clone()?).stderr(file);
    let status = tokio::task::spawn_blocking(move || command.status())
        .await?
        .with_context(|| format!("{what}: could not start"))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}); {} ends:\n{}",
            log.display(),
            crate::process::tail(log, 20)
        );
    }
    Ok(())
}

/// `mvn package` of the Kafka Streams peer; the jar.
async fn build_jar(logs: &Path) -> anyhow::Result<PathBuf> {
    let dir = repo_root().join("bench/peers/kafka-streams");
    let mut mvn = Command::new("mvn");
    mvn.args(["-q", "-B", "-f"])
        .arg(dir.join("pom.xml"))
        .args(["package", "-DskipTests"]);
    eprintln!("bench: building the Kafka Streams peer (mvn package)");
    setup(
        mvn,
        &logs.join("kstreams-build.log"),
        "building the Kafka Streams peer (mvn package)",
    )
    .await?;
    let jar = dir.join("target/orderflow-kstreams-bench.jar");
    if !jar.exists() {
        bail!("mvn package made no {}", jar.display());
    }
    Ok(jar)
}

/// The Quix Streams venv (made once under the cache dir) with the peer's
/// requirements; its python.
async fn install_quix(logs: &Path) -> anyhow::Result<PathBuf> {
    let venv = cache_dir().join("quix-venv");
    let python = venv.join("bin/python");
    let requirements = repo_root().join("bench/peers/quix/requirements.txt");
    if !python.exists() {
        let mut make = Command::new("python3");
        make.args(["-m", "venv"]).arg(&venv);
        setup(
            make,
            &logs.join("quix-venv.log"),
            "creating the Quix Streams venv",
        )
        .await?;
    }
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-r",
    ])
    .arg(&requirements);
    eprintln!("bench: installing the Quix Streams peer's requirements");
    setup(
        pip,
        &logs.join("quix-pip.log"),
        "installing bench/peers/quix/requirements.txt",
    )
    .await?;
    Ok(python)
}

/// A set-up's outcome as kept: the error with its causes on one line.
fn kept(result: anyhow::Result<PathBuf>) -> Built {
    Some(result.map_err(|e| format!("{e:#}")))
}

/// The program of a set-up, once [`Peers::settle`] has it.
fn program(built: &Built, what: &str) -> anyhow::Result<PathBuf> {
    match built {
        Some(Ok(path)) => Ok(path.clone()),
        Some(Err(e)) => bail!("{e}"),
        None => bail!("{what} was not set up: Peers::prepare names the peers a run needs"),
    }
}

impl Peers {
    /// Peers whose set-up logs go under `work`/logs.
    pub fn new(work: &Path) -> Peers {
        Peers {
            logs: work.join("logs"),
            jar: None,
            python: None,
            pending: None,
        }
    }

    /// Starts the set-ups a run's jobs will need, both at once in the background, so
    /// that they overlap the broker's start and the first preload instead of adding
    /// to the run (on a machine with empty caches Maven and pip download for a
    /// minute or more). Call [`Peers::settle`] before anything is measured.
    pub fn prepare(&mut self, kstreams: bool, quix: bool) {
        if !kstreams && !quix {
            return;
        }
        let logs = self.logs.clone();
        self.pending = Some(tokio::spawn(async move {
            let jar = async {
                if kstreams {
                    kept(build_jar(&logs).await)
                } else {
                    None
                }
            };
            let python = async {
                if quix {
                    kept(install_quix(&logs).await)
                } else {
                    None
                }
            };
            tokio::join!(jar, python)
        }));
    }

    /// Waits for the set-ups [`Peers::prepare`] started (nothing to wait for
    /// otherwise): a measured process must not share the machine with them. A
    /// failed set-up fails the jobs that need it, when they ask.
    pub async fn settle(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        (self.jar, self.python) = match pending.await {
            Ok(built) => built,
            Err(e) => {
                let failed = Some(Err(format!("the peers' set-up stopped: {e}")));
                (failed.clone(), failed)
            }
        };
    }

    /// The Kafka Streams peer's command line (one stream thread per core it gets).
    pub async fn kstreams(
        &mut self,
        bootstrap: &str,
        registry: &str,
        job: &str,
        guarantee: &str,
        app: &str,
        state: &Path,
    ) -> anyhow::Result<Command> {
        self.settle().await;
        let jar = program(&self.jar, "the Kafka Streams peer")?;
        let java = std::env::var_os("JAVA_HOME")
            .map(|h| Path::new(&h).join("bin/java"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("java"));
        let mut c = Command::new(java);
        c.arg("-jar")
            .arg(jar)
            .args([
                "--bootstrap",
                bootstrap,
                "--registry",
                registry,
                "--job",
                job,
            ])
            .args(["--guarantee", guarantee, "--app-id", app, "--state-dir"])
            .arg(state)
            .arg("--schemas")
            .arg(repo_root().join("schemas"))
            .args(["--threads", "1"]);
        Ok(c)
    }

    /// The Quix Streams peer's command line.
    pub async fn quix(
        &mut self,
        bootstrap: &str,
        registry: &str,
        job: &str,
        guarantee: &str,
        app: &str,
        state: &Path,
    ) -> anyhow::Result<Command> {
        self.settle().await;
        let python = program(&self.python, "the Quix Streams peer")?;
        let mut c = Command::new(python);
        c.arg(repo_root().join("bench/peers/quix/peer.py"))
            .args([
                "--bootstrap",
                bootstrap,
                "--registry",
                registry,
                "--job",
                job,
            ])
            .args(["--guarantee", guarantee, "--group", app, "--state-dir"])
            .arg(state)
            .arg("--schemas")
            .arg(repo_root().join("schemas"));
        Ok(c)
    }
}
