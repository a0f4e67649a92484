//! The processes a job measures: started pinned to a core and tied to the harness's
//! life, their CPU time and peak RSS read from /proc, stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A measured child process (ours or a peer) with its log file.
#[derive(Debug)]
pub struct Measured {
    child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// When it was spawned.
    pub started: Instant,
}

impl Measured {
    /// Spawns `command` with stdout and stderr into `log`, on `core` when given; it
    /// gets SIGKILL if the harness dies.
    pub fn spawn(
        mut command: Command,
        log: &Path,
        core: Option<usize>,
    ) -> anyhow::Result<Measured> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone()?;
        command.stdin(Stdio::null()).stdout(file).stderr(err);
        prepare_child(&mut command, core);
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Measured {
            child,
            log: log.to_path_buf(),
            started,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// CPU time (user + system) used so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }

    /// Peak resident set size so far, in MiB.
    pub fn peak_rss_mb(&self) -> f64 {
        peak_rss_kb(self.pid()).unwrap_or(0) as f64 / 1024.0
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> String {
        if let Some(status) = self.exited() {
            return status;
        }
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("did not stop within {grace:?} of SIGTERM; killed")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// User + system CPU time of a process, from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Pins every thread of a running process (the broker's JVM) to one core.
pub fn pin_all_threads(pid: u32, core: usize) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        {
            set_affinity(tid, core);
        }
    }
}

/// The number of cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[allow(unsafe_code)]
fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the system; no memory is touched.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[allow(unsafe_code)]
fn set_affinity(tid: i32, core: usize) -> bool {
    // SAFETY: the cpu_set_t lives on this stack for the duration of the call; the
    // kernel only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Sends a signal to a process.
#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Ties the child to the harness (SIGKILL when the harness dies) and pins it.
#[allow(unsafe_code)]
fn prepare_child(command: &mut Command, core: Option<usize>) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, sched_setaffinity, _exit) on stack data.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            if let Some(core) = core {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(core, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        let pid = std::process::id();
        let before = cpu_time(pid).expect("cpu time of this process");
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(150) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let after = cpu_time(pid).expect("cpu time of this process");
        assert!(after > before, "{before:?} -> {after:?}");
        assert!(peak_rss_kb(pid).expect("VmHWM") > 1000);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let path = std::env::temp_dir().join(format!("bench-tail-{}", std::process::id()));
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail(&path, 2), "c\nd");
        let _ = std::fs::remove_file(path);
    }
}
