//! The results: one entry per job in DESIGN.md's shape, the ratios between them,
//! the machine they ran on, written as `bench/results/<date>.json` and printed as a
//! table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One job's figures, or why it has none.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobResult {
    /// Records the job took in (inputs for the stream jobs, requests or deliveries
    /// for the edges, changelog entries for a restore).
    pub records: u64,
    /// Records per second over the measured window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records_per_s: Option<f64>,
    /// CPU time of the measured process per record, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_record: Option<f64>,
    /// Peak resident set size of the measured process, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// Latency percentiles, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// See `p50_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_ms: Option<f64>,
    /// The measured window, s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// From the process's start to its first output, s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_s: Option<f64>,
    /// Whether the job ran and its outputs checked out.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Which engine or program was measured.
    pub engine: String,
    /// at_least_once or exactly_once, where it applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<String>,
    /// What else to know when reading the figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Figures of a job that measures several things at once (latency_http: each
    /// guarantee at each offered load), beside the headline ones above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl JobResult {
    /// A failed job: no figures, the reason.
    pub fn failed(engine: &str, guarantee: Option<&str>, error: impl Into<String>) -> JobResult {
        JobResult {
            ok: false,
            error: Some(error.into()),
            engine: engine.to_string(),
            guarantee: guarantee.map(str::to_string),
            ..JobResult::default()
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What it ran on.
    pub machine: BTreeMap<String, serde_json::Value>,
    /// Job name → figures.
    pub jobs: BTreeMap<String, JobResult>,
    /// `"<jobA>/<jobB>"` → ratio.
    pub ratios: BTreeMap<String, f64>,
}

/// Throughput ratios DESIGN.md asks for (A's records/s over B's), where both ran.
const THROUGHPUT_RATIOS: [(&str, &str); 11] = [
    ("B1_alos", "B0"),
    ("B1_eos", "B0"),
    ("B2_alos", "B0"),
    ("B3_alos", "B0"),
    ("B3_eos", "B0"),
    ("B3_eos", "B3_alos"),
    ("B1_alos", "kstreams_B1_alos"),
    ("B1_eos", "kstreams_B1_eos"),
    ("B3_alos", "kstreams_B3_alos"),
    ("B3_eos", "kstreams_B3_eos"),
    ("B1_alos", "quix_B1"),
];

/// Memory ratios: A's peak RSS over B's (theirs over ours).
const MEMORY_RATIOS: [(&str, &str); 4] = [
    ("kstreams_B1_alos", "B1_alos"),
    ("kstreams_B1_eos", "B1_eos"),
    ("kstreams_B3_alos", "B3_alos"),
    ("kstreams_B3_eos", "B3_eos"),
];

impl Report {
    /// A report of `jobs` with its ratios computed.
    pub fn new(
        machine: BTreeMap<String, serde_json::Value>,
        jobs: BTreeMap<String, JobResult>,
    ) -> Report {
        let mut ratios = BTreeMap::new();
        let rate = |name: &str| {
            jobs.get(name)
                .filter(|j| j.ok)
                .and_then(|j| j.records_per_s)
        };
        let rss = |name: &str| jobs.get(name).filter(|j| j.ok).and_then(|j| j.peak_rss_mb);
        let extra = [("B3_alos", "quix_B3")];
        for (a, b) in THROUGHPUT_RATIOS.iter().chain(extra.iter()) {
            if let (Some(x), Some(y)) = (rate(a), rate(b))
                && y > 0.0
            {
                ratios.insert(format!("{a}/{b}"), round(x / y, 3));
            }
        }
        for (a, b) in MEMORY_RATIOS {
            if let (Some(x), Some(y)) = (rss(a), rss(b))
                && y > 0.0
            {
                ratios.insert(format!("{a}/{b}"), round(x / y, 3));
            }
        }
        Report {
            machine,
            jobs,
            ratios,
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let b0 = self
            .jobs
            .get("B0")
            .filter(|j| j.ok)
            .and_then(|j| j.records_per_s);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<18} {:>4} {:>9} {:>11} {:>9} {:>8} {:>8} {:>8} {:>6}  note",
            "job", "ok", "records", "records/s", "cpu µs/r", "RSS MB", "p50 ms", "p99 ms", "÷B0"
        );
        for (name, j) in &self.jobs {
            let num = |v: Option<f64>, digits: usize| {
                v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
            };
            let vs_b0 = match (j.records_per_s, b0) {
                (Some(x), Some(y)) if y > 0.0 && j.ok && name.starts_with('B') => {
                    format!("{:.2}", x / y)
                }
                _ => "-".to_string(),
            };
            let note = if j.ok {
                j.note.clone().unwrap_or_default()
            } else {
                format!(
                    "FAILED: {}",
                    j.error
                        .as_deref()
                        .unwrap_or("?")
                        .lines()
                        .next()
                        .unwrap_or("")
                )
            };
            let _ = writeln!(
                out,
                "{:<18} {:>4} {:>9} {:>11} {:>9} {:>8} {:>8} {:>8} {:>6}  {}",
                name,
                if j.ok { "yes" } else { "NO" },
                j.records,
                num(j.records_per_s, 0),
                num(j.cpu_us_per_record, 2),
                num(j.peak_rss_mb, 0),
                num(j.p50_ms, 2),
                num(j.p99_ms, 2),
                vs_b0,
                note
            );
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(out, "\nratios:");
            for (name, value) in &self.ratios {
                let _ = writeln!(out, "  {name:<36} {value:.3}");
            }
        }
        out
    }
}

/// `x` rounded to `digits` decimals.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// What the machine is: CPU, cores, memory, kernel, and the versions measured.
pub fn machine(extra: &[(&str, String)]) -> BTreeMap<String, serde_json::Value> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    m.insert("cpu".into(), model.into());
    m.insert("cores".into(), crate::process::cores().into());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    m.insert(
        "memory_gb".into(),
        round(mem_kb as f64 / 1024.0 / 1024.0, 1).into(),
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    m.insert("kernel".into(), kernel.trim().into());
    for (k, v) in extra {
        m.insert((*k).to_string(), v.clone().into());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(rate: f64, rss: f64) -> JobResult {
        JobResult {
            records: 10,
            records_per_s: Some(rate),
            peak_rss_mb: Some(rss),
            ok: true,
            engine: "x".into(),
            ..JobResult::default()
        }
    }

    #[test]
    fn ratios_only_between_jobs_that_ran() {
        let mut jobs = BTreeMap::new();
        jobs.insert("B0".to_string(), ok(1000.0, 10.0));
        jobs.insert("B1_alos".to_string(), ok(500.0, 20.0));
        jobs.insert("B3_eos".to_string(), ok(100.0, 50.0));
        jobs.insert("kstreams_B3_eos".to_string(), ok(50.0, 400.0));
        jobs.insert(
            "B3_alos".to_string(),
            JobResult::failed("orderflow", None, "broke"),
        );
        let report = Report::new(BTreeMap::new(), jobs);
        assert_eq!(report.ratios.get("B1_alos/B0"), Some(&0.5));
        assert_eq!(report.ratios.get("B3_eos/kstreams_B3_eos"), Some(&2.0));
        assert_eq!(report.ratios.get("kstreams_B3_eos/B3_eos"), Some(&8.0));
        assert!(
            !report.ratios.contains_key("B3_eos/B3_alos"),
            "B3_alos failed"
        );
        let table = report.table();
        assert!(table.contains("FAILED: broke"), "{table}");
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["jobs"]["B3_alos"]["ok"], false);
        assert!(json["jobs"]["B3_alos"].get("records_per_s").is_none());
    }
}
