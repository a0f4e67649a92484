//! The harness end to end on a small scale: its own broker, every stream job of
//! orderflow's engine plus B0 and the restore, outputs counted, the JSON written in
//! DESIGN.md's shape. The figures are not checked (speed is never asserted in
//! tests), only that each job ran and what came out.

use std::process::Command;

#[test]
fn stream_jobs_run_and_write_the_results() {
    let work = std::env::temp_dir().join(format!("orderflow-bench-test-{}", std::process::id()));
    let out = work.join("out.json");
    let status = Command::new(env!("CARGO_BIN_EXE_orderflow-bench"))
        .args([
            "run",
            "B0",
            "B1_alos",
            "B1_eos",
            "B2_alos",
            "B2_eos",
            "restore_1m",
        ])
        .args(["B3_alos", "B3_eos"])
        .args(["--scale", "0.002", "--work"])
        .arg(&work)
        .arg("--out")
        .arg(&out)
        // Its own broker: the jobs read and write topology.yaml's fixed topic names.
        .env_remove("KAFKA_BROKERS")
        .status()
        .expect("run orderflow-bench");
    assert!(status.success(), "orderflow-bench failed: {status}");
    let text = std::fs::read_to_string(&out).expect("the results file");
    let report: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    for job in [
        "B0",
        "B1_alos",
        "B1_eos",
        "B2_eos",
        "B2_alos",
        "restore_1m",
        "B3_alos",
        "B3_eos",
    ] {
        let j = &report["jobs"][job];
        assert_eq!(j["ok"], true, "{job}: {j}");
        assert!(
            j["records_per_s"].as_f64().is_some_and(|r| r > 0.0),
            "{job}: {j}"
        );
        assert!(j["cpu_us_per_record"].as_f64().is_some(), "{job}: {j}");
        assert!(
            j["peak_rss_mb"].as_f64().is_some_and(|r| r > 1.0),
            "{job}: {j}"
        );
    }
    // 0.002 of the full run: 600 events (half PAID), 2,000 registrations, 120 orders.
    assert_eq!(report["jobs"]["B1_eos"]["records"], 600);
    assert!(
        report["jobs"]["B1_eos"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("auth.relations 300"))
    );
    assert!(report["jobs"]["B3_eos"]["note"].as_str().is_some_and(|n| n.contains("orders.events 240") && n.contains("payments.requests 120")));
    assert_eq!(report["jobs"]["restore_1m"]["records"], 4000);
    assert!(report["ratios"]["B1_alos/B0"].as_f64().is_some());
    assert!(report["ratios"]["B3_eos/B3_alos"].as_f64().is_some());
    assert!(report["machine"]["cores"].as_u64().is_some());
    let _ = std::fs::remove_dir_all(&work);
}
