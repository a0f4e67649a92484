//! Metrics in the Prometheus text format: counters, gauges and histograms by name and
//! labels, rendered on `/metrics`. Hot paths do not touch the shared registry per
//! record: a stream thread adds up locally and publishes at each commit.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
];

/// Labels of one series, sorted by name.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone)]
enum Series {
    Counter(f64),
    Gauge(f64),
    Histogram {
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug, Default)]
struct Family {
    help: &'static str,
    kind: &'static str,
    series: BTreeMap<Labels, Series>,
}

/// The registry one process shares between its engine and edges.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        f: impl FnOnce(&mut Family) -> R,
    ) -> R {
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        f(family)
    }

    /// Adds to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: Labels, by: f64) {
        self.with(name, help, "counter", |f| {
            match f.series.entry(labels).or_insert(Series::Counter(0.0)) {
                Series::Counter(v) => *v += by,
                other => *other = Series::Counter(by),
            }
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.with(name, help, "gauge", |f| {
            f.series.insert(labels, Series::Gauge(value));
        });
    }

    /// Merges a locally collected histogram into the registry.
    pub fn observe_all(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        local: &Histogram,
    ) {
        if local.count == 0 {
            return;
        }
        self.with(name, help, "histogram", |f| {
            let series = f.series.entry(labels).or_insert_with(|| Series::Histogram {
                counts: vec![0; LATENCY_BUCKETS.len()],
                sum: 0.0,
                count: 0,
            });
            if let Series::Histogram { counts, sum, count } = series {
                for (c, l) in counts.iter_mut().zip(&local.counts) {
                    *c += l;
                }
                *sum += local.sum;
                *count += local.count;
            }
        });
    }

    /// Records one duration in a histogram.
    pub fn observe(&self, name: &'static str, help: &'static str, labels: Labels, value: Duration) {
        let mut local = Histogram::default();
        local.observe(value);
        self.observe_all(name, help, labels, &local);
    }

    /// The value of a counter or gauge series, for tests and health checks.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.get(name)?;
        family.series.iter().find_map(|(l, s)| {
            let matches = labels
                .iter()
                .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v));
            match s {
                Series::Counter(v) | Series::Gauge(v) if matches => Some(*v),
                Series::Histogram { count, .. } if matches => Some(*count as f64),
                _ => None,
            }
        })
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, series) in &family.series {
                match series {
                    Series::Counter(v) | Series::Gauge(v) => {
                        let _ = writeln!(out, "{name}{} {v}", render_labels(labels, None));
                    }
                    Series::Histogram { counts, sum, count } => {
                        let mut cumulative = 0;
                        for (bound, c) in LATENCY_BUCKETS.iter().zip(counts) {
                            cumulative += c;
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {cumulative}",
                                render_labels(labels, Some(&bound.to_string()))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {count}",
                            render_labels(labels, Some("+Inf"))
                        );
                        let _ = writeln!(out, "{name}_sum{} {sum}", render_labels(labels, None));
                        let _ =
                            writeln!(out, "{name}_count{} {count}", render_labels(labels, None));
                    }
                }
            }
        }
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A histogram collected locally (by one thread) and merged at commit.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }

    /// Forgets everything recorded.
    pub fn clear(&mut self) {
        *self = Histogram::default();
    }
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `shutdown`
/// completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let m = Metrics::new();
        m.add(
            "orderflow_records_in_total",
            "Records read.",
            vec![("processor", "saga".into())],
            3.0,
        );
        m.add(
            "orderflow_records_in_total",
            "Records read.",
            vec![("processor", "saga".into())],
            2.0,
        );
        m.set(
            "orderflow_store_keys",
            "Keys.",
            vec![("store", "a\"b".into())],
            7.0,
        );
        m.observe(
            "orderflow_commit_latency_seconds",
            "Commit.",
            vec![],
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(text.contains("# TYPE orderflow_records_in_total counter\norderflow_records_in_total{processor=\"saga\"} 5\n"), "{text}");
        assert!(
            text.contains("orderflow_store_keys{store=\"a\\\"b\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("orderflow_commit_latency_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("orderflow_commit_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("orderflow_commit_latency_seconds_bucket{le=\"+Inf\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("orderflow_commit_latency_seconds_count 1"),
            "{text}"
        );
        assert_eq!(
            m.value("orderflow_records_in_total", &[("processor", "saga")]),
            Some(5.0)
        );
    }
}
