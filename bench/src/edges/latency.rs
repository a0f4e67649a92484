//! latency_http: order -> PAID through the HTTP edge at fixed offered loads, open
//! loop. Orders are sent on a fixed schedule whatever the answers do, each with its
//! scheduled time in `X-Bench-Sent-At`, and an order's latency runs from that
//! scheduled time (not from when the harness got round to sending it, so neither a
//! slow answer nor a late harness hides anything) to when its PAID event is read
//! (read_committed) from `orders.events`. Each guarantee gets its own node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{
    ALOS, Api, EOS, EdgeNode, NODE_ENGINE, OrderWatch, Pair, Percentiles, Stamps, epoch_us, ms,
};
use crate::jobs::Run;
use crate::report::{JobResult, round};

/// The offered loads, orders per second.
const LOADS: [f64; 3] = [100.0, 300.0, 1000.0];
/// The load whose exactly_once figures are the headline.
const HEADLINE: usize = 1;
/// The unmeasured first phase, at the lowest load, after a node's start (the
/// broker's and the node's first moments are not what a load level shows).
const WARMUP_SECONDS: f64 = 2.0;
/// How long after its answer an order may take to be PAID before the job fails.
const PAID_LIMIT: Duration = Duration::from_secs(30);

/// One guarantee at one offered load.
#[derive(Debug, Clone)]
struct Level {
    load: f64,
    orders: usize,
    achieved: f64,
    window_s: f64,
    latency: Percentiles,
    cpu_us: f64,
    send_lag_p99_ms: f64,
    /// Medians of the steps, ms: see [`split`].
    split: [f64; 3],
}

impl Level {
    fn json(&self) -> serde_json::Value {
        json!({
            "offered_per_s": self.load,
            "orders": self.orders,
            "achieved_per_s": round(self.achieved, 1),
            "p50_ms": round(self.latency.p50, 2),
            "p99_ms": round(self.latency.p99, 2),
            "p999_ms": round(self.latency.p999, 2),
            "max_ms": round(self.latency.max, 2),
            "cpu_us_per_order": round(self.cpu_us, 1),
            "send_lag_p99_ms": round(self.send_lag_p99_ms, 2),
            "p50_steps_ms": {
                "to_ordered_readable": round(self.split[0], 1),
                "to_approved_readable": round(self.split[1], 1),
                "to_paid_readable": round(self.split[2], 1),
            },
        })
    }
}

/// Runs the job: both guarantees, every load.
pub async fn run(run: &mut Run) -> anyhow::Result<JobResult> {
    let seconds = super::phase_seconds(run.sizes.scale);
    let mut results = Vec::new();
    for guarantee in [ALOS, EOS] {
        let measured = one_guarantee(run, guarantee, seconds)
            .await
            .with_context(|| guarantee.to_string())?;
        results.push((guarantee, measured));
    }
    let Some((_, (eos, rss, startup))) = results.iter().find(|(g, _)| *g == EOS) else {
        bail!("exactly_once was not measured");
    };
    let headline = &eos[HEADLINE];
    let mut note = format!(
        "open loop, {seconds:.0} s per load after {WARMUP_SECONDS:.0} s at the lowest; latency = scheduled send -> PAID read from orders.events; headline exactly_once at {:.0}/s; p50/p99/p99.9 ms:",
        headline.load
    );
    let mut detail = serde_json::Map::new();
    for (guarantee, (levels, _, _)) in &results {
        let short = if *guarantee == EOS { "eos" } else { "alos" };
        for l in levels {
            note.push_str(&format!(
                " {short}@{:.0}/s {:.1}/{:.1}/{:.1} ({:.0}/s);",
                l.load, l.latency.p50, l.latency.p99, l.latency.p999, l.achieved
            ));
        }
        detail.insert(
            guarantee.to_string(),
            levels.iter().map(Level::json).collect(),
        );
    }
    note.pop();
    note.push_str(&format!(
        "; headline p50 steps: ORDERED readable after {:.0} ms, APPROVED {:.0} ms later, PAID {:.0} ms later",
        headline.split[0], headline.split[1], headline.split[2]
    ));
    let records: usize = results
        .iter()
        .flat_map(|(_, (levels, _, _))| levels.iter().map(|l| l.orders))
        .sum();
    Ok(JobResult {
        records: records as u64,
        records_per_s: Some(round(headline.achieved, 1)),
        cpu_us_per_record: Some(round(headline.cpu_us, 1)),
        peak_rss_mb: Some(round(*rss, 1)),
        p50_ms: Some(round(headline.latency.p50, 2)),
        p99_ms: Some(round(headline.latency.p99, 2)),
        p999_ms: Some(round(headline.latency.p999, 2)),
        seconds: Some(round(headline.window_s, 3)),
        startup_s: Some(round(startup.as_secs_f64(), 3)),
        ok: true,
        engine: NODE_ENGINE.to_string(),
        guarantee: Some(EOS.to_string()),
        note: Some(note),
        detail: Some(serde_json::Value::Object(detail)),
        ..JobResult::default()
    })
}

/// Every load on one node in `guarantee`; the levels, the node's peak RSS and its
/// start-up time.
async fn one_guarantee(
    run: &Run,
    guarantee: &str,
    seconds: f64,
) -> anyhow::Result<(Vec<Level>, f64, Duration)> {
    let short = if guarantee == EOS { "eos" } else { "alos" };
    let mut node = EdgeNode::start(run, &format!("latency_http_{short}"), guarantee).await?;
    let result = async {
        let api = Api::new(&node.base)?;
        let pair = Arc::new(api.pair(&format!("lat-{short}-{}", run.run_id)).await?);
        api.paid_order(&pair).await?;
        let watch = OrderWatch::start(&run.cluster)?;
        let (_, mut every) = one_load(&api, &pair, &watch, &mut node, LOADS[0], WARMUP_SECONDS)
            .await
            .context("warming up")?;
        let mut levels = Vec::new();
        for load in LOADS {
            let (level, ids) = one_load(&api, &pair, &watch, &mut node, load, seconds)
                .await
                .with_context(|| format!("at {load:.0} orders/s"))?;
            levels.push(level);
            every.extend(ids);
        }
        // Time for a repeated PAID to show, then every order must have exactly one.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let repeated = watch.with(|s| {
            every
                .iter()
                .filter(|id| s.paid.get(*id).is_some_and(|p| p.len() > 1))
                .count()
        })?;
        if repeated > 0 {
            bail!("{repeated} orders were PAID more than once");
        }
        anyhow::Ok((levels, node.process.peak_rss_mb(), node.startup))
    }
    .await;
    node.stop_after(result)
}

/// Offers `load` orders per second for `seconds` and waits until each is PAID.
async fn one_load(
    api: &Api,
    pair: &Arc<Pair>,
    watch: &OrderWatch,
    node: &mut EdgeNode,
    load: f64,
    seconds: f64,
) -> anyhow::Result<(Level, Vec<String>)> {
    let n = ((load * seconds).round() as usize).max(1);
    let (clock, wall) = (Instant::now(), SystemTime::now());
    let start = clock + Duration::from_millis(200);
    let cpu0 = node.process.cpu();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / load);
        tokio::time::sleep_until(at.into()).await;
        let lag = at.elapsed();
        let sent_at = epoch_us(wall + (at - clock));
        let (api, pair) = (api.clone(), pair.clone());
        requests.spawn(async move { (at, lag, api.place(&pair, sent_at).await) });
    }
    let mut placed: HashMap<String, Instant> = HashMap::with_capacity(n);
    let mut lags = Vec::with_capacity(n);
    let mut failed = Vec::new();
    while let Some(done) = requests.join_next().await {
        let (at, lag, answer) = done?;
        lags.push(ms(lag));
        match answer {
            Ok(id) => {
                placed.insert(id, at);
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if let Some(first) = failed.first() {
        bail!(
            "{} of {n} requests were not answered 202; the first: {first}",
            failed.len()
        );
    }
    if placed.len() != n {
        bail!(
            "{n} orders placed but {} distinct order ids answered",
            placed.len()
        );
    }
    let deadline = Instant::now() + PAID_LIMIT;
    loop {
        let (missing, lost) = watch.with(|s| {
            let missing = placed.keys().filter(|id| !s.paid.contains_key(*id)).count();
            let lost = placed
                .keys()
                .find_map(|id| s.lost.get(id).map(|why| format!("order {id} became {why}")));
            (missing, lost)
        })?;
        if let Some(lost) = lost {
            bail!("{lost}, not PAID");
        }
        if missing == 0 {
            break;
        }
        node.check_alive()?;
        if Instant::now() > deadline {
            bail!("{missing} of {n} orders were not PAID within {PAID_LIMIT:?} of the last answer");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu1 = node.process.cpu();
    let (mut latencies, last) = watch.with(|s| {
        let mut latencies = Vec::with_capacity(n);
        let mut last = start;
        for (id, at) in &placed {
            if let Some(paid) = s.paid.get(id).and_then(|p| p.first()) {
                latencies.push(ms(paid.saturating_duration_since(*at)));
                last = last.max(*paid);
            }
        }
        (latencies, last)
    })?;
    let Some(latency) = Percentiles::of(&mut latencies) else {
        bail!("no latencies");
    };
    let split = watch.with(|s| {
        split(placed.iter().filter_map(|(id, at)| {
            let scheduled = (epoch_us(wall + (*at - clock)) / 1000) as i64;
            s.stamps.get(id).map(|st| (scheduled, *st))
        }))
    })?;
    let lag = Percentiles::of(&mut lags).map_or(0.0, |p| p.p99);
    let window = last
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-3);
    let level = Level {
        load,
        orders: n,
        achieved: n as f64 / window,
        window_s: window,
        latency,
        cpu_us: cpu1.saturating_sub(cpu0).as_secs_f64() * 1e6 / n as f64,
        send_lag_p99_ms: lag,
        split,
    };
    eprintln!(
        "bench: latency_http {:.0}/s: {n} orders, p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, send lag p99 {:.1} ms",
        load, latency.p50, latency.p99, latency.p999, lag
    );
    Ok((level, placed.into_keys().collect()))
}

/// Where an order's time goes, the median of each step in ms, from each order's
/// scheduled send (epoch ms) and [`Stamps`]: until its ORDERED event was readable
/// (the edge, the saga's first step and commit), until the APPROVED result was
/// (the authorizer's read, the gateway, its commit), until PAID was (the saga's
/// read, its second step and commit). Steps a stamp is missing for are left out;
/// the clocks are the machine's one clock, to the millisecond.
fn split(orders: impl Iterator<Item = (i64, Stamps)>) -> [f64; 3] {
    let mut steps: [Vec<f64>; 3] = Default::default();
    for (scheduled, st) in orders {
        let points = [Some(scheduled), st.ordered, st.approved, st.paid];
        for (i, pair) in points.windows(2).enumerate() {
            if let [Some(a), Some(b)] = pair {
                steps[i].push((b - a) as f64);
            }
        }
    }
    steps.map(|mut v| Percentiles::of(&mut v).map_or(f64::NAN, |p| p.p50))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_median_of_each_step() {
        let stamps = |o, a, p| Stamps {
            ordered: Some(o),
            approved: Some(a),
            paid: Some(p),
        };
        let orders = vec![
            (1000, stamps(1010, 1100, 1300)),
            (2000, stamps(2020, 2200, 2400)),
            (3000, stamps(3030, 3300, 3450)),
        ];
        assert_eq!(split(orders.into_iter()), [20.0, 180.0, 200.0]);
        let partial = Stamps {
            ordered: Some(5),
            ..Stamps::default()
        };
        let s = split(std::iter::once((0, partial)));
        assert_eq!(s[0], 5.0);
        assert!(s[1].is_nan() && s[2].is_nan());
    }
}
