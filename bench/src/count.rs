//! The end of every throughput job: a read_committed consumer counts the job's
//! outputs from the end offsets the output topics had before it started, timing the
//! first and the last, while the measured process's CPU is read at both; it checks
//! that exactly the expected number of records came out (no fewer, no repeats).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::cluster::Cluster;
use crate::process::Measured;

/// The outputs a job must produce: records per topic.
#[derive(Debug, Clone)]
pub struct Expected {
    /// Topic → how many records.
    pub topics: BTreeMap<String, u64>,
}

impl Expected {
    /// `n` records on each of `topics`.
    pub fn of(topics: &[(&str, u64)]) -> Expected {
        Expected {
            topics: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        }
    }

    fn total(&self) -> u64 {
        self.topics.values().sum()
    }
}

/// Where the outputs start: each output topic's end offsets before the job ran.
#[derive(Debug, Clone)]
pub struct Marks(BTreeMap<String, BTreeMap<i32, i64>>);

impl Marks {
    /// Reads the end offsets of every topic of `expected` now.
    pub fn take(cluster: &Cluster, expected: &Expected) -> anyhow::Result<Marks> {
        let mut marks = BTreeMap::new();
        for topic in expected.topics.keys() {
            marks.insert(topic.clone(), cluster.end_offsets(topic)?);
        }
        Ok(Marks(marks))
    }
}

/// What was seen of a job's run.
#[derive(Debug, Clone)]
pub struct Observed {
    /// From the first output to the last expected one.
    pub window: Duration,
    /// From the process's start to its first output.
    pub startup: Duration,
    /// CPU the process used within the window.
    pub cpu: Duration,
    /// CPU the process used before its first output (start-up, restore).
    pub cpu_before: Duration,
    /// Peak RSS of the process at the end, MiB.
    pub peak_rss_mb: f64,
    /// Records per output topic.
    pub counts: BTreeMap<String, u64>,
}

/// How long to keep reading after the last expected output, to catch repeats.
const SETTLE: Duration = Duration::from_millis(1500);

/// Counts `expected` outputs after `marks` while `process` runs; fails when it
/// exits first, when `limit` passes, or when more records than expected come out.
pub fn watch(
    cluster: &Cluster,
    marks: &Marks,
    expected: &Expected,
    process: &mut Measured,
    limit: Duration,
) -> anyhow::Result<Observed> {
    let consumer: BaseConsumer = cluster
        .client()
        .set("group.id", "orderflow-bench-counter")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partitions) in &marks.0 {
        for (partition, offset) in partitions {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
    }
    consumer.assign(&tpl)?;
    let mut counts: BTreeMap<String, u64> =
        expected.topics.keys().map(|t| (t.clone(), 0)).collect();
    let want = expected.total();
    let mut seen = 0u64;
    let mut first: Option<(Instant, Duration)> = None;
    let mut done: Option<(Instant, Duration, f64)> = None;
    let deadline = process.started + limit;
    loop {
        if let Some((at, _, _)) = done
            && at.elapsed() >= SETTLE
        {
            break;
        }
        if done.is_none() {
            if let Some(status) = process.exited() {
                bail!(
                    "the process exited ({status}) after {seen} of {want} outputs; its log ends:\n{}",
                    process.log_tail(15)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "only {seen} of {want} outputs ({counts:?}) within {limit:?}; its log ends:\n{}",
                    process.log_tail(15)
                );
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "counter"),
            Some(Ok(m)) => {
                if first.is_none() {
                    first = Some((Instant::now(), process.cpu()));
                }
                *counts.entry(m.topic().to_string()).or_default() += 1;
                seen += 1;
                if seen == want {
                    done = Some((Instant::now(), process.cpu(), process.peak_rss_mb()));
                }
            }
        }
    }
    let (Some((t0, cpu0)), Some((t1, cpu1, rss))) = (first, done) else {
        bail!("no outputs");
    };
    for (topic, n) in &expected.topics {
        let got = counts.get(topic).copied().unwrap_or(0);
        if got != *n {
            bail!("{topic}: {got} records out, {n} expected (all counts: {counts:?})");
        }
    }
    Ok(Observed {
        window: t1 - t0,
        startup: t0 - process.started,
        cpu: cpu1.saturating_sub(cpu0),
        cpu_before: cpu0,
        peak_rss_mb: rss,
        counts,
    })
}
