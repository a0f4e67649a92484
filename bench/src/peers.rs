//! The peer engines' programs: the Kafka Streams jar (built with Maven once per
//! run) and the Quix Streams script (in a venv under the cache dir, made once), and
//! their command lines. Their builds are set-up, never part of a measurement.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cluster::repo_root;

/// What is built of the peers so far in this run.
#[derive(Debug)]
pub struct Peers {
    logs: PathBuf,
    jar: Option<PathBuf>,
    python: Option<PathBuf>,
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

impl Peers {
    /// Peers whose set-up logs go under `work`/logs.
    pub fn new(work: &Path) -> Peers {
        Peers {
            logs: work.join("logs"),
            jar: None,
            python: None,
        }
    }

    async fn jar(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(jar) = &self.jar {
            return Ok(jar.clone());
        }
        let dir = repo_root().join("bench/peers/kafka-streams");
        let mut mvn = Command::new("mvn");
        mvn.args(["-q", "-B", "-f"])
            .arg(dir.join("pom.xml"))
            .args(["package", "-DskipTests"]);
        eprintln!("bench: building the Kafka Streams peer (mvn package)");
        setup(
            mvn,
            &self.logs.join("kstreams-build.log"),
            "building the Kafka Streams peer (mvn package)",
        )
        .await?;
        let jar = dir.join("target/orderflow-kstreams-bench.jar");
        if !jar.exists() {
            bail!("mvn package made no {}", jar.display());
        }
        self.jar = Some(jar.clone());
        Ok(jar)
    }

    async fn python(&mut self) -> anyhow::Result<PathBuf> {
        if let Some(python) = &self.python {
            return Ok(python.clone());
        }
        let venv = cache_dir().join("quix-venv");
        let python = venv.join("bin/python");
        let requirements = repo_root().join("bench/peers/quix/requirements.txt");
        if !python.exists() {
            let mut make = Command::new("python3");
            make.args(["-m", "venv"]).arg(&venv);
            setup(
                make,
                &self.logs.join("quix-venv.log"),
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
            &self.logs.join("quix-pip.log"),
            "installing bench/peers/quix/requirements.txt",
        )
        .await?;
        self.python = Some(python.clone());
        Ok(python)
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
        let jar = self.jar().await?;
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
        let python = self.python().await?;
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
