//! The local Apache Kafka broker: a real single-node KRaft Kafka (broker and
//! controller in one JVM) that `orderflow broker`, `orderflow up`, the test harness and
//! the benchmarks start themselves. The pinned release is `deploy/kafka/pom.xml`;
//! Maven fetches its jars once into `~/.cache/orderflow/kafka-<version>/libs`
//! (or `KAFKA_HOME` names an unpacked Apache Kafka). The data dir is formatted once
//! and reused: a restart keeps every topic and record.
//!
//! The JVM is a child process that dies with its parent even on `kill -9`: it is
//! spawned with `PR_SET_PDEATHSIG` from a thread of our own that lives exactly as long
//! as the child (the signal follows the spawning *thread*, so never a pool thread that
//! may retire). Readiness is a metadata request answered, not a line in a log.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The Apache Kafka release orderflow runs; keep equal to `kafka.version` in
/// `deploy/kafka/pom.xml`.
pub const KAFKA_VERSION: &str = "4.2.0";

const POM: &str = include_str!("../../deploy/kafka/pom.xml");
const SERVER_TEMPLATE: &str = include_str!("../../deploy/kafka/server.properties");
const LOG4J: &str = include_str!("../../deploy/kafka/log4j2.properties");

/// The file in the data dir that says orderflow formatted it, and how.
const MARKER: &str = "orderflow-broker.properties";

/// How a broker is started.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where its data lives (formatted on first use).
    pub data_dir: PathBuf,
    /// The client listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where fetched jars are cached; default `$ORDERFLOW_CACHE` or
    /// `~/.cache/orderflow`.
    pub cache_dir: PathBuf,
    /// An unpacked Apache Kafka to use instead of fetching (`KAFKA_HOME`).
    pub kafka_home: Option<PathBuf>,
    /// The `java` to run; default `$JAVA_HOME/bin/java`, else `java` on the PATH.
    pub java: PathBuf,
    /// Maximum heap of the broker JVM, in MiB.
    pub heap_mb: u32,
    /// How long to wait for the broker to answer after the JVM starts.
    pub ready_timeout: Duration,
}

impl BrokerConfig {
    /// A broker on `data_dir` listening on `listen`, everything else from the
    /// environment (`ORDERFLOW_CACHE`, `KAFKA_HOME`, `JAVA_HOME`).
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        let cache_dir = std::env::var_os("ORDERFLOW_CACHE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/orderflow")))
            .unwrap_or_else(|| std::env::temp_dir().join("orderflow-cache"));
        let java = std::env::var_os("JAVA_HOME")
            .map(|h| Path::new(&h).join("bin/java"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("java"));
        BrokerConfig {
            data_dir: data_dir.into(),
            listen,
            cache_dir,
            kafka_home: std::env::var_os("KAFKA_HOME").map(PathBuf::from),
            java,
            heap_mb: 768,
            ready_timeout: Duration::from_secs(180),
        }
    }
}

/// Why the broker could not be started, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No `java` to run.
    #[error(
        "Java not found ({java}): the Kafka broker needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless), or set JAVA_HOME"
    )]
    NoJava {
        /// What was tried.
        java: String,
    },
    /// A `java` older than 17.
    #[error(
        "{java} is Java {found}; the Kafka broker needs Java 17 or newer: install one or set JAVA_HOME to it"
    )]
    JavaTooOld {
        /// The `java` run.
        java: String,
        /// Its major version.
        found: u32,
    },
    /// Maven could not fetch the broker.
    #[error(
        "fetching Apache Kafka {version} with Maven failed: {detail}\n(it needs `mvn` and Maven Central once; or set KAFKA_HOME to an unpacked Apache Kafka {version})"
    )]
    Fetch {
        /// The Kafka version.
        version: String,
        /// What failed.
        detail: String,
    },
    /// The address is taken.
    #[error(
        "{addr} is already in use{hint}: stop what listens there or choose another address (port 0 picks a free one)"
    )]
    PortInUse {
        /// The address.
        addr: SocketAddr,
        /// More about it, when known.
        hint: String,
    },
    /// The data dir belongs to another cluster.
    #[error(
        "{dir} holds the data of another Kafka cluster ({detail}): choose another --data directory, or remove it to start over"
    )]
    ForeignDataDir {
        /// The data dir.
        dir: PathBuf,
        /// What was found.
        detail: String,
    },
    /// `kafka-storage format` failed.
    #[error("formatting {dir} failed: {detail}")]
    Format {
        /// The data dir.
        dir: PathBuf,
        /// What the tool said.
        detail: String,
    },
    /// The JVM exited while starting.
    #[error("the broker exited while starting ({status}); the end of {log}:\n{tail}")]
    Exited {
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log and stderr.
        tail: String,
    },
    /// The broker never answered.
    #[error("the broker did not answer a metadata request on {addr} within {secs} s; see {log}")]
    NotReady {
        /// The client address.
        addr: SocketAddr,
        /// How long we waited.
        secs: u64,
        /// Its log file.
        log: PathBuf,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Io { context, source }
}

/// A running broker. Dropping it stops the JVM (SIGTERM, then SIGKILL); prefer
/// [`Broker::stop`], which waits for a clean shutdown.
#[derive(Debug)]
pub struct Broker {
    bootstrap: String,
    pid: u32,
    data_dir: PathBuf,
    exited: Mutex<Receiver<String>>,
    exit_status: Mutex<Option<String>>,
}

impl Broker {
    /// Fetches (once), formats (once) and starts the broker, then waits until it
    /// answers a metadata request. Blocking: call it from `spawn_blocking` in async
    /// code. `progress` gets one line per long step.
    pub fn start(
        config: &BrokerConfig,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Broker, BrokerError> {
        check_java(&config.java)?;
        std::fs::create_dir_all(&config.data_dir).map_err(io(format!(
            "creating data dir {}",
            config.data_dir.display()
        )))?;
        let data_dir = config
            .data_dir
            .canonicalize()
            .map_err(io(format!("resolving {}", config.data_dir.display())))?;
        let marker = read_marker(&data_dir)?;
        let listen = pick_port(config.listen)?;
        let controller_port = match &marker {
            Some(m) => m.controller_port,
            None => pick_port("127.0.0.1:0".parse().map_err(|_| BrokerError::Io {
                context: "loopback address".into(),
                source: std::io::Error::other("unparsable"),
            })?)?
            .port(),
        };
        let controller: SocketAddr = SocketAddr::from(([127, 0, 0, 1], controller_port));
        if TcpListener::bind(controller).is_err() {
            return Err(BrokerError::PortInUse {
                addr: controller,
                hint: format!(
                    " (the controller port of {}; is another broker running on that data dir?)",
                    data_dir.display()
                ),
            });
        }

        let libs = ensure_libs(config, progress)?;
        let server = data_dir.join("server.properties");
        let log_dir = data_dir.join("kafka");
        let properties = SERVER_TEMPLATE
            .replace("{{HOST}}", &listen.ip().to_string())
            .replace("{{PORT}}", &listen.port().to_string())
            .replace("{{CONTROLLER_PORT}}", &controller_port.to_string())
            .replace("{{LOG_DIR}}", &log_dir.display().to_string());
        std::fs::write(&server, properties).map_err(io(format!("writing {}", server.display())))?;
        std::fs::write(data_dir.join("log4j2.properties"), LOG4J)
            .map_err(io("writing log4j2.properties"))?;

        if marker.is_none() {
            progress(&format!("formatting {}", data_dir.display()));
            let cluster_id = format_data_dir(config, &libs, &server, &data_dir)?;
            write_marker(
                &data_dir,
                &Marker {
                    cluster_id,
                    controller_port,
                },
            )?;
        }

        progress(&format!(
            "starting Apache Kafka {KAFKA_VERSION} on {listen}"
        ));
        let (pid, exited) = spawn_jvm(config, &libs, &server, &data_dir)?;
        let broker = Broker {
            bootstrap: listen.to_string(),
            pid,
            data_dir: data_dir.clone(),
            exited: Mutex::new(exited),
            exit_status: Mutex::new(None),
        };
        broker.wait_ready(listen, config.ready_timeout)?;
        Ok(broker)
    }

    /// `host:port` for clients (`bootstrap.servers`).
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The JVM's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The JVM's exit status if it has exited, waiting at most `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let mut status = self.exit_status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            let rx = self.exited.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv_timeout(timeout) {
                Ok(s) => *status = Some(s),
                Err(RecvTimeoutError::Disconnected) => *status = Some("unknown".into()),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
        status.clone()
    }

    /// Stops the broker cleanly (SIGTERM: it closes its logs and leaves the data dir
    /// ready for a restart), or kills it after `grace`.
    pub fn stop(&self, grace: Duration) -> Option<String> {
        if let Some(status) = self.wait_exit(Duration::ZERO) {
            return Some(status);
        }
        signal(self.pid, libc::SIGTERM);
        if let Some(status) = self.wait_exit(grace) {
            return Some(status);
        }
        tracing::warn!(pid = self.pid, "broker did not stop in time; killing it");
        signal(self.pid, libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10))
    }

    fn wait_ready(&self, listen: SocketAddr, timeout: Duration) -> Result<(), BrokerError> {
        let log = self.data_dir.join("broker.log");
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", listen.to_string())
            .set("socket.connection.setup.timeout.ms", "2000")
            .set("reconnect.backoff.max.ms", "500")
            .set("log_level", "0")
            .create()
            .map_err(|e| BrokerError::Io {
                context: "creating a Kafka client".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.wait_exit(Duration::ZERO) {
                return Err(BrokerError::Exited {
                    status,
                    tail: tail(&[log.clone(), self.data_dir.join("broker.stderr")], 30),
                    log,
                });
            }
            if consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|m| !m.brokers().is_empty())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrokerError::NotReady {
                    addr: listen,
                    secs: timeout.as_secs(),
                    log,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}

/// Sends a signal to a process.
#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The major version in `java -version` output (`"17.0.15"` → 17, `"1.8.0_292"` → 8).
pub fn parse_java_major(text: &str) -> Option<u32> {
    let quoted = text.split('"').nth(1)?;
    let mut parts = quoted.split(['.', '_', '-', '+']);
    let first: u32 = parts.next()?.parse().ok()?;
    if first == 1 {
        parts.next()?.parse().ok()
    } else {
        Some(first)
    }
}

fn check_java(java: &Path) -> Result<(), BrokerError> {
    let shown = java.display().to_string();
    let out = Command::new(java)
        .arg("-version")
        .output()
        .map_err(|_| BrokerError::NoJava {
            java: shown.clone(),
        })?;
    let text = String::from_utf8_lossy(&out.stderr);
    match parse_java_major(&text) {
        Some(major) if major >= 17 => Ok(()),
        Some(found) => Err(BrokerError::JavaTooOld { java: shown, found }),
        None => Err(BrokerError::NoJava { java: shown }),
    }
}

/// `addr`, or `addr` with a free port when its port is 0; an address in use is an
/// error.
fn pick_port(addr: SocketAddr) -> Result<SocketAddr, BrokerError> {
    match TcpListener::bind(addr) {
        Ok(listener) => listener.local_addr().map_err(io("reading a bound address")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(BrokerError::PortInUse {
            addr,
            hint: String::new(),
        }),
        Err(e) => Err(io(format!("binding {addr}"))(e)),
    }
}

/// The jars of the pinned Kafka: `$KAFKA_HOME/libs`, or fetched once with Maven into
/// the cache. Fetching goes to a private directory renamed into place at the end, so
/// two first runs at once do not see half a download.
fn ensure_libs(
    config: &BrokerConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, BrokerError> {
    if let Some(home) = &config.kafka_home {
        let libs = home.join("libs");
        return if libs
            .join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
            .exists()
            || libs.is_dir()
        {
            Ok(libs)
        } else {
            Err(BrokerError::Fetch {
                version: KAFKA_VERSION.into(),
                detail: format!("KAFKA_HOME={} has no libs/ directory", home.display()),
            })
        };
    }
    let dir = config.cache_dir.join(format!("kafka-{KAFKA_VERSION}"));
    let libs = dir.join("libs");
    if libs.join(".complete").exists() {
        return Ok(libs);
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let pom = dir.join("pom.xml");
    std::fs::write(&pom, POM).map_err(io(format!("writing {}", pom.display())))?;
    let staging = dir.join(format!("libs.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    progress(&format!(
        "fetching Apache Kafka {KAFKA_VERSION} with Maven into {} (once; about 45 MB)",
        libs.display()
    ));
    let out = Command::new("mvn")
        .args(["-B", "-q", "-f"])
        .arg(&pom)
        .args(["dependency:copy-dependencies", "-DincludeScope=runtime"])
        .arg(format!("-DoutputDirectory={}", staging.display()))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BrokerError::Fetch {
            version: KAFKA_VERSION.into(),
            detail: format!("cannot run mvn: {e}"),
        })?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stdout).into_owned();
        detail.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = detail.lines().rev().take(15).collect();
        let _ = std::fs::remove_dir_all(&staging);
        return Err(BrokerError::Fetch {
            version: KAFKA_VERSION.into(),
            detail: lines.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    std::fs::write(staging.join(".complete"), KAFKA_VERSION)
        .map_err(io("marking the fetch complete"))?;
    if std::fs::rename(&staging, &libs).is_err() {
        // Another process finished first; use its copy.
        let _ = std::fs::remove_dir_all(&staging);
        if !libs.join(".complete").exists() {
            return Err(BrokerError::Fetch {
                version: KAFKA_VERSION.into(),
                detail: format!("cannot move the jars into {}", libs.display()),
            });
        }
    }
    Ok(libs)
}

fn classpath(libs: &Path) -> String {
    format!("{}/*", libs.display())
}

#[derive(Debug, PartialEq)]
struct Marker {
    cluster_id: String,
    controller_port: u16,
}

fn read_properties(path: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    )
}

fn property(props: &[(String, String)], key: &str) -> Option<String> {
    props.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Our marker, `None` for a data dir never formatted; an error for one formatted by
/// someone else or for another cluster.
fn read_marker(data_dir: &Path) -> Result<Option<Marker>, BrokerError> {
    let meta = read_properties(&data_dir.join("kafka/meta.properties"));
    let marker = read_properties(&data_dir.join(MARKER));
    match (marker, meta) {
        (None, None) => Ok(None),
        (None, Some(meta)) => Err(BrokerError::ForeignDataDir {
            dir: data_dir.to_path_buf(),
            detail: format!(
                "cluster id {}, not formatted by orderflow",
                property(&meta, "cluster.id").unwrap_or_else(|| "unknown".into())
            ),
        }),
        (Some(marker), meta) => {
            let cluster_id = property(&marker, "cluster.id").unwrap_or_default();
            let controller_port = property(&marker, "controller.port")
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if cluster_id.is_empty() || controller_port == 0 {
                return Err(BrokerError::ForeignDataDir {
                    dir: data_dir.to_path_buf(),
                    detail: format!("{MARKER} is incomplete"),
                });
            }
            if let Some(found) = meta.as_ref().and_then(|m| property(m, "cluster.id"))
                && found != cluster_id
            {
                return Err(BrokerError::ForeignDataDir {
                    dir: data_dir.to_path_buf(),
                    detail: format!("cluster id {found}, expected {cluster_id}"),
                });
            }
            Ok(Some(Marker {
                cluster_id,
                controller_port,
            }))
        }
    }
}

fn write_marker(data_dir: &Path, marker: &Marker) -> Result<(), BrokerError> {
    let text = format!(
        "# Written by orderflow when it formatted this data dir; keep it with the data.\ncluster.id={}\ncontroller.port={}\nkafka.version={KAFKA_VERSION}\n",
        marker.cluster_id, marker.controller_port
    );
    std::fs::write(data_dir.join(MARKER), text).map_err(io("writing the data dir marker"))
}

/// Formats the data dir for a new single-node cluster; returns its cluster id.
fn format_data_dir(
    config: &BrokerConfig,
    libs: &Path,
    server: &Path,
    data_dir: &Path,
) -> Result<String, BrokerError> {
    let fail = |detail: String| BrokerError::Format {
        dir: data_dir.to_path_buf(),
        detail,
    };
    let out = Command::new(&config.java)
        .args([
            "-Xmx256m",
            "-cp",
            &classpath(libs),
            "kafka.tools.StorageTool",
            "random-uuid",
        ])
        .output()
        .map_err(|e| fail(e.to_string()))?;
    let cluster_id = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    if !out.status.success() || cluster_id.is_empty() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let out = Command::new(&config.java)
        .args([
            "-Xmx256m",
            "-cp",
            &classpath(libs),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
        ])
        .arg(&cluster_id)
        .arg("-c")
        .arg(server)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stdout).into_owned();
        detail.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(fail(detail.trim().to_string()));
    }
    Ok(cluster_id)
}

/// Starts the JVM from a keeper thread that waits on it; returns its pid and a
/// channel that yields its exit status.
fn spawn_jvm(
    config: &BrokerConfig,
    libs: &Path,
    server: &Path,
    data_dir: &Path,
) -> Result<(u32, Receiver<String>), BrokerError> {
    let stderr = std::fs::File::create(data_dir.join("broker.stderr"))
        .map_err(io("creating broker.stderr"))?;
    let mut command = Command::new(&config.java);
    command
        .arg(format!("-Xmx{}m", config.heap_mb))
        .arg(format!("-Xms{}m", config.heap_mb.min(256)))
        .args([
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
        ])
        .arg(format!("-Dkafka.logs.dir={}", data_dir.display()))
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            data_dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(classpath(libs))
        .arg("kafka.Kafka")
        .arg(server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    die_with_parent(&mut command);
    let (started_tx, started_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kafka-broker".into())
        .spawn(move || match command.spawn() {
            Err(e) => {
                let _ = started_tx.send(Err(e));
            }
            Ok(mut child) => {
                let _ = started_tx.send(Ok(child.id()));
                let status = match child.wait() {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("unknown ({e})"),
                };
                let _ = exit_tx.send(status);
            }
        })
        .map_err(io("starting the broker thread"))?;
    let pid = started_rx
        .recv()
        .map_err(|_| BrokerError::Io {
            context: "starting the broker".into(),
            source: std::io::Error::other("the broker thread ended"),
        })?
        .map_err(io(format!("running {}", config.java.display())))?;
    Ok((pid, exit_rx))
}

/// Makes the child get SIGKILL when the thread that spawned it dies (and so when
/// this process dies, however it dies).
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, _exit), touching no locks or allocations.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// The last `n` lines of each file that exists.
fn tail(files: &[PathBuf], n: usize) -> String {
    let mut out = Vec::new();
    for file in files {
        if let Ok(f) = std::fs::File::open(file) {
            let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
            out.extend(lines[lines.len().saturating_sub(n)..].iter().cloned());
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_versions() {
        assert_eq!(
            parse_java_major("openjdk version \"17.0.15\" 2025-04-15"),
            Some(17)
        );
        assert_eq!(parse_java_major("java version \"1.8.0_292\""), Some(8));
        assert_eq!(
            parse_java_major("openjdk version \"21\" 2023-09-19"),
            Some(21)
        );
        assert_eq!(parse_java_major("openjdk version \"25-ea\""), Some(25));
        assert_eq!(parse_java_major("garbage"), None);
    }

    #[test]
    fn the_pom_pins_the_same_version() {
        assert!(POM.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")));
    }
}
