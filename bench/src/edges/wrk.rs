//! The wrk jobs: `POST /orders` and `GET /orders/{id}` with a valid JWT on a node,
//! and the same wrk run on a bare hyper JSON endpoint (`http_ceiling`), the most
//! one core serves. wrk runs with the harness (pinned beside the broker), the
//! measured process alone on its core; a non-2xx answer or a socket error fails the
//! job.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::{Api, EOS, EdgeNode, NODE_ENGINE, OrderWatch, order_body, write_file};
use crate::jobs::Run;
use crate::process::Measured;
use crate::report::{JobResult, round};

/// Open connections of every wrk run.
const CONNECTIONS: u64 = 64;
/// Orders `GET /orders/{id}` cycles through.
const GET_ORDERS: usize = 64;

/// What one wrk run printed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WrkOutput {
    /// Requests answered.
    pub requests: u64,
    /// How long it ran, s.
    pub seconds: f64,
    /// `Requests/sec`.
    pub requests_per_s: f64,
    /// Latency percentiles from `--latency`, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p90_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// From the script's `done` (wrk prints no 99.9th).
    pub p999_ms: Option<f64>,
    /// Socket errors: connect, read, write, timeout.
    pub socket_errors: [u64; 4],
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
}

impl WrkOutput {
    /// Why the run does not count: requests unanswered or answered with an error.
    pub fn problems(&self) -> Option<String> {
        let [connect, read, write, timeout] = self.socket_errors;
        let mut problems = Vec::new();
        if self.requests == 0 {
            problems.push("no request was answered".to_string());
        }
        if self.non_2xx > 0 {
            problems.push(format!("{} answers were not 2xx", self.non_2xx));
        }
        if connect + read + write + timeout > 0 {
            problems.push(format!(
                "socket errors: connect {connect}, read {read}, write {write}, timeout {timeout}"
            ));
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

/// A wrk duration (`638.33us`, `1.17ms`, `2.00s`, `1.00m`) in ms.
fn time_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(value * scale)
}

/// Parses wrk's `--latency` report and the bench script's `bench-wrk:` line.
pub fn parse(text: &str) -> anyhow::Result<WrkOutput> {
    let mut out = WrkOutput::default();
    let mut percentiles = std::collections::BTreeMap::new();
    let mut saw_total = false;
    for line in text.lines().map(str::trim) {
        if let Some((pct, value)) = line.split_once('%')
            && let Ok(pct) = pct.trim().parse::<u32>()
            && let Some(ms) = time_ms(value)
        {
            percentiles.insert(pct, ms);
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            out.requests_per_s = rest.trim().parse().context("Requests/sec")?;
        } else if line.contains(" requests in ") {
            // `989225 requests in 10.00s, 134.91MB read`
            let mut words = line.split_whitespace();
            out.requests = words
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow!("request count in {line:?}"))?;
            out.seconds = words
                .nth(2)
                .map(|d| d.trim_end_matches(','))
                .and_then(time_ms)
                .map(|ms| ms / 1e3)
                .ok_or_else(|| anyhow!("duration in {line:?}"))?;
            saw_total = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 5`
            for (i, part) in rest.split(',').enumerate().take(4) {
                out.socket_errors[i] = part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow!("socket errors in {line:?}"))?;
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            out.non_2xx = rest.trim().parse().context("Non-2xx or 3xx responses")?;
        } else if let Some(rest) = line.strip_prefix("bench-wrk:") {
            for pair in rest.split_whitespace() {
                if let Some(us) = pair.strip_prefix("p999_us=") {
                    out.p999_ms = us.parse::<f64>().ok().map(|us| us / 1e3);
                }
            }
        }
    }
    if !saw_total {
        bail!("no `N requests in T` line in wrk's output");
    }
    let at = |p: u32| {
        percentiles
            .get(&p)
            .copied()
            .ok_or_else(|| anyhow!("no {p}% latency in wrk's output (was --latency given?)"))
    };
    out.p50_ms = at(50)?;
    out.p90_ms = at(90)?;
    out.p99_ms = at(99)?;
    Ok(out)
}

/// The Lua that makes wrk print what it does not by default.
const DONE: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("bench-wrk: p999_us=%d requests=%d\n",
    latency:percentile(99.9), summary.requests))
end
"#;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let file = dir.join(program);
            std::fs::metadata(&file).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt as _;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Installs wrk with apt-get when it is missing (as scripts/setup.sh installs its
/// packages), or fails saying how to get it.
async fn ensure_wrk(run: &Run) -> anyhow::Result<()> {
    if on_path("wrk") {
        return Ok(());
    }
    if !on_path("apt-get") {
        bail!("wrk is not installed and there is no apt-get here: install wrk and run again");
    }
    let mut command = if is_root() {
        Command::new("sh")
    } else if on_path("sudo") {
        let mut c = Command::new("sudo");
        c.arg("sh");
        c
    } else {
        bail!("wrk is not installed and installing it needs root: `sudo apt-get install wrk`");
    };
    command.args([
        "-c",
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk",
    ]);
    let log = run.log_path("install-wrk");
    eprintln!("bench: installing wrk (apt-get install wrk)");
    let file = std::fs::File::create(&log)?;
    command.stdout(file.try_clone()?).stderr(file);
    let status = tokio::task::spawn_blocking(move || command.status()).await??;
    if !status.success() || !on_path("wrk") {
        bail!(
            "installing wrk failed ({status}); {} ends:\n{}",
            log.display(),
            crate::process::tail(&log, 10)
        );
    }
    Ok(())
}

/// Runs wrk with `script` against `url` for the run's phase length; its output is
/// kept in the logs.
async fn wrk(run: &Run, job: &str, script: &str, url: &str) -> anyhow::Result<WrkOutput> {
    let dir = run.work.join("wrk");
    let script_path = dir.join(format!("{job}.lua"));
    write_file(&script_path, &format!("{script}\n{DONE}"))?;
    // Pinned, wrk shares the harness's core with the broker: one thread is all that
    // core gives it.
    let threads = if run.job_core.is_some() { 1 } else { 2 };
    let seconds = super::phase_seconds(run.sizes.scale).round().max(1.0);
    let mut command = Command::new("wrk");
    command
        .args(["-t", &threads.to_string(), "-c", &CONNECTIONS.to_string()])
        .args([
            "-d",
            &format!("{seconds}s"),
            "--timeout",
            "10s",
            "--latency",
        ])
        .arg("-s")
        .arg(&script_path)
        .arg(url);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .context("starting wrk")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    write_file(&run.log_path(&format!("{job}-wrk")), &text)?;
    if !output.status.success() {
        bail!("wrk failed ({}): {}", output.status, text.trim());
    }
    let out = parse(&text).with_context(|| format!("reading wrk's output:\n{text}"))?;
    if let Some(problems) = out.problems() {
        bail!("{problems} (of {} requests)", out.requests);
    }
    Ok(out)
}

/// `s` as a Lua string literal (ASCII text: Rust's escapes of `"` and `\\` are
/// Lua's too).
fn lua_string(s: &str) -> String {
    format!("{s:?}")
}

fn result(out: &WrkOutput, cpu: Duration, rss: f64, engine: &str, note: String) -> JobResult {
    JobResult {
        records: out.requests,
        records_per_s: Some(round(out.requests_per_s, 0)),
        cpu_us_per_record: Some(round(
            cpu.as_secs_f64() * 1e6 / out.requests.max(1) as f64,
            2,
        )),
        peak_rss_mb: Some(round(rss, 1)),
        p50_ms: Some(round(out.p50_ms, 3)),
        p99_ms: Some(round(out.p99_ms, 3)),
        p999_ms: out.p999_ms.map(|v| round(v, 3)),
        seconds: Some(round(out.seconds, 3)),
        ok: true,
        engine: engine.to_string(),
        note: Some(note),
        ..JobResult::default()
    }
}

fn setup_note(run: &Run) -> String {
    format!(
        "wrk -t{} -c{CONNECTIONS} {:.0} s",
        if run.job_core.is_some() { 1 } else { 2 },
        super::phase_seconds(run.sizes.scale).round()
    )
}

/// http_post_orders: wrk placing orders; every answered order must then be PAID,
/// and the CPU counted runs until it is.
pub async fn post_orders(run: &mut Run) -> anyhow::Result<JobResult> {
    ensure_wrk(run).await?;
    let mut node = EdgeNode::start(run, "http_post_orders", EOS).await?;
    let result = async {
        let api = Api::new(&node.base)?;
        let pair = api.pair(&format!("post-{}", run.run_id)).await?;
        api.paid_order(&pair).await?;
        let watch = OrderWatch::start(&run.cluster)?;
        let script = format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = {}\n",
            lua_string(&order_body(&pair.seller_id).to_string()),
            lua_string(&format!("Bearer {}", pair.buyer_token)),
        );
        let cpu0 = node.process.cpu();
        let out = wrk(run, "http_post_orders", &script, &api.url("/orders")).await?;
        // wrk counts answered requests; the ones cut off at the end may or may not
        // have been placed. So between `requests` and `requests + connections`
        // orders must become PAID, each once.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (paid, lost) = watch.with(|s| (s.paid.len() as u64, s.lost.iter().next().map(|(id, why)| format!("order {id} became {why}"))))?;
            if let Some(lost) = lost {
                bail!("{lost}, not PAID");
            }
            if paid >= out.requests {
                break;
            }
            node.check_alive()?;
            if Instant::now() > deadline {
                bail!("{paid} of {} answered orders PAID within 60 s of the end", out.requests);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cpu = node.process.cpu().saturating_sub(cpu0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (paid, repeated) = watch.with(|s| {
            (s.paid.len() as u64, s.paid.values().filter(|p| p.len() > 1).count())
        })?;
        if repeated > 0 {
            bail!("{repeated} orders were PAID more than once");
        }
        if paid > out.requests + CONNECTIONS {
            bail!("{paid} orders PAID for {} answered requests", out.requests);
        }
        Ok(result(
            &out,
            cpu,
            node.process.peak_rss_mb(),
            NODE_ENGINE,
            format!(
                "{}; each POST answered after the order's first event; {paid} orders PAID; CPU of the node until the last was PAID, per request",
                setup_note(run)
            ),
        ))
    }
    .await;
    node.finish(result)
}

/// http_get_order: wrk reading [`GET_ORDERS`] PAID orders of one buyer in turn.
pub async fn get_order(run: &mut Run) -> anyhow::Result<JobResult> {
    ensure_wrk(run).await?;
    let mut node = EdgeNode::start(run, "http_get_order", EOS).await?;
    let result = async {
        let api = Api::new(&node.base)?;
        let pair = api.pair(&format!("get-{}", run.run_id)).await?;
        let mut ids = vec![api.paid_order(&pair).await?];
        let mut placing = tokio::task::JoinSet::new();
        for _ in 1..GET_ORDERS {
            let (api, pair) = (api.clone(), pair.clone());
            placing.spawn(async move { api.place(&pair, super::epoch_us(std::time::SystemTime::now())).await });
        }
        while let Some(done) = placing.join_next().await {
            ids.push(done??);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for id in &ids {
            loop {
                match api.status(&pair, id).await?.as_deref() {
                    Some("PAID") => break,
                    Some(s @ ("REJECTED" | "CANCELLED" | "REFUNDED")) => bail!("order {id} became {s}"),
                    _ if Instant::now() > deadline => bail!("order {id} not PAID within 60 s"),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        let paths: Vec<String> = ids.iter().map(|id| lua_string(&format!("/orders/{id}"))).collect();
        let script = format!(
            "wrk.headers[\"Authorization\"] = {}\nlocal paths = {{ {} }}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n  return wrk.format(\"GET\", paths[i])\nend\n",
            lua_string(&format!("Bearer {}", pair.buyer_token)),
            paths.join(", ")
        );
        let cpu0 = node.process.cpu();
        let out = wrk(run, "http_get_order", &script, &api.url("/orders")).await?;
        let cpu = node.process.cpu().saturating_sub(cpu0);
        node.check_alive()?;
        Ok(result(
            &out,
            cpu,
            node.process.peak_rss_mb(),
            NODE_ENGINE,
            format!("{}; {GET_ORDERS} PAID orders of one buyer in turn, each answered from the edge's view of orders.events", setup_note(run)),
        ))
    }
    .await;
    node.finish(result)
}

/// http_ceiling: the same wrk run on `GET /json` of a bare hyper server on the
/// measured core.
pub async fn ceiling(run: &mut Run) -> anyhow::Result<JobResult> {
    ensure_wrk(run).await?;
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["ceiling", "--listen", "127.0.0.1:0"]);
    let mut process = Measured::spawn(command, &run.log_path("http_ceiling"), run.job_core)?;
    let address = super::announced(&mut process, super::node::CEILING_ANNOUNCE).await?;
    // The same Authorization header as the node's jobs, so requests are as large.
    let token = "x".repeat(300);
    let script = format!(
        "wrk.headers[\"Authorization\"] = {}\n",
        lua_string(&format!("Bearer {token}"))
    );
    let outcome = wrk(
        run,
        "http_ceiling",
        &script,
        &format!("http://{address}/json"),
    )
    .await;
    let cpu = process.cpu();
    let rss = process.peak_rss_mb();
    let stopped = process.stop(Duration::from_secs(10));
    let out = outcome.map_err(|e| anyhow::anyhow!("{e:#} (the server then stopped: {stopped})"))?;
    // The server does nothing but answer: its CPU over its life is the run's.
    Ok(result(
        &out,
        cpu,
        rss,
        "bare hyper JSON endpoint",
        format!(
            "{}; GET /json, a {}-byte JSON object, hyper alone",
            setup_note(run),
            super::node::CEILING_JSON.len()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:3000/json
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   638.33us  161.27us   5.11ms   87.14%
    Req/Sec    99.39k     5.70k  106.29k    78.00%
  Latency Distribution
     50%  610.00us
     75%  685.00us
     90%  787.00us
     99%    1.17ms
  989225 requests in 10.00s, 134.91MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 3
Requests/sec:  98919.97
Transfer/sec:     13.49MB
bench-wrk: p999_us=2500 requests=989225
";

    #[test]
    fn reads_wrk_latency_report() {
        let out = parse(SAMPLE).expect("parses");
        assert_eq!(out.requests, 989_225);
        assert!((out.seconds - 10.0).abs() < 1e-9);
        assert!((out.requests_per_s - 98_919.97).abs() < 1e-6);
        assert!((out.p50_ms - 0.61).abs() < 1e-9);
        assert!((out.p90_ms - 0.787).abs() < 1e-9);
        assert!((out.p99_ms - 1.17).abs() < 1e-9);
        assert_eq!(out.p999_ms, Some(2.5));
        assert_eq!(out.socket_errors, [0, 2, 0, 5]);
        assert_eq!(out.non_2xx, 3);
        let problems = out.problems().expect("errors are problems");
        assert!(problems.contains("3 answers were not 2xx"), "{problems}");
        assert!(problems.contains("timeout 5"), "{problems}");
    }

    #[test]
    fn a_clean_run_has_no_problems() {
        let clean: String = SAMPLE
            .lines()
            .filter(|l| !l.contains("Socket errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let out = parse(&clean).expect("parses");
        assert_eq!(out.problems(), None);
        assert_eq!(out.non_2xx, 0);
    }

    #[test]
    fn units_and_missing_parts() {
        assert_eq!(time_ms("2.00s"), Some(2000.0));
        assert_eq!(time_ms("1.50m"), Some(90_000.0));
        assert_eq!(time_ms("12.5ms"), Some(12.5));
        assert_eq!(time_ms("fast"), None);
        assert!(parse("Requests/sec: 5\n").is_err(), "no total line");
        let no_latency = "  10 requests in 1.00s, 1KB read\nRequests/sec: 10\n";
        let e = parse(no_latency).expect_err("no percentiles");
        assert!(e.to_string().contains("--latency"), "{e}");
    }

    #[test]
    fn lua_strings_are_quoted() {
        assert_eq!(lua_string(r#"{"a":"b"}"#), r#""{\"a\":\"b\"}""#);
    }
}
