//! `--perf`: `perf record` attached to a measured process for its whole run, and
//! a flat summary of where its CPU time went (self time by symbol), written beside
//! the data file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::process::Measured;

/// A running `perf record`.
#[derive(Debug)]
pub struct Profile {
    child: Child,
    data: PathBuf,
}

impl Profile {
    /// Starts sampling `process` (software clock at 499 Hz, since hardware counters
    /// are not available on every machine; DWARF call graphs, since release builds
    /// keep no frame pointers) into `dir`/`name`.data.
    pub fn attach(process: &Measured, dir: &Path, name: &str) -> anyhow::Result<Profile> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let data = dir.join(format!("{name}.data"));
        let child = Command::new("perf")
            .args([
                "record",
                "-F",
                "499",
                "-e",
                "cpu-clock",
                "--call-graph",
                "dwarf,16384",
                "-q",
                "-o",
            ])
            .arg(&data)
            .args(["-p", &process.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (Debian package linux-perf)")?;
        Ok(Profile { child, data })
    }

    /// Stops sampling and writes `<name>.txt`: the top symbols by time including
    /// their callees (where the time goes, by function), then by self time (what
    /// runs); returns its path, or why there is none.
    pub fn finish(mut self) -> String {
        crate::process::signal(self.child.id(), libc::SIGINT);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        for mode in ["--children", "--no-children"] {
            let report = Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    mode,
                    "--percent-limit",
                    "1",
                    "-g",
                    "none",
                ])
                .args(["--sort", "symbol", "-i"])
                .arg(&self.data)
                .output();
            match report {
                Ok(out) if out.status.success() => {
                    text.push_str(&format!("## perf report {mode}\n"));
                    text.push_str(&String::from_utf8_lossy(&out.stdout));
                }
                Ok(out) => {
                    return format!(
                        "perf report failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Err(e) => return format!("perf report: {e}"),
            }
        }
        let summary = self.data.with_extension("txt");
        match std::fs::write(&summary, text) {
            Ok(()) => summary.display().to_string(),
            Err(e) => format!("writing {}: {e}", summary.display()),
        }
    }
}
