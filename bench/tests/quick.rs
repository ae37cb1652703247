//! The quick mode of the benchmark as a smoke test: every scenario runs to its end with real
//! processes and every task finishes. No timing is asserted.

use std::process::Command;

#[test]
fn quick_benchmark_completes_and_every_task_finishes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json_path = dir.path().join("bench.json");
    let trace = dir.path().join("trace");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-bench"))
        .args(["all", "--quick", "--json"])
        .arg(&json_path)
        .arg("--trace")
        .arg(&trace)
        .output()
        .expect("shoal-bench runs (are shoal-planner and shoal-worker built? `cargo build --workspace`)");
    let log = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "shoal-bench failed: {log}");
    let text = std::fs::read_to_string(&json_path).expect("JSON written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    for field in [
        "raw_loop_msgs_per_s",
        "noop_tasks_per_s",
        "noop_ratio_to_raw",
        "script_tasks_per_s",
        "schedule_to_start_p50_ms",
        "schedule_to_start_p99_ms",
        "replay_events_per_s",
        "planner_rss_mb_after_1m_events",
        "signing_throughput_ratio",
        "signing_cpu_per_task_ratio",
        "packages_bytes_ratio_to_push_model",
        "packages_time_ratio_to_whole_download",
        "feed_throughput_ratio",
        "feed_lag_p50_ms",
        "feed_lag_p99_ms",
    ] {
        assert!(
            v[field].is_number(),
            "{field} missing or not a number in {text}"
        );
    }
    assert!(v["machine"]["cores"].is_number(), "{text}");
    assert!(v["machine"]["cpu_model"].is_string(), "{text}");
    assert!(v["noop"]["params"]["tasks"].is_number(), "{text}");
    // CPU per task is read from /proc of the running processes: a run costs something.
    assert!(
        v["noop"]["cpu_us_per_task"].as_f64().unwrap_or(0.0) > 0.0,
        "{text}"
    );
    // The workers verified what they ran, most tasks under a root verified before.
    let signatures = v["noop"]["signatures_per_task"].as_f64().unwrap_or(0.0);
    assert!(signatures > 0.0 && signatures < 1.0, "{text}");
    assert_eq!(v["all_tasks_finished"], true, "{text}");
    // The package left the feed at most once per worker, and not at all the second time;
    // the baselines sent it once per target.
    let p = &v["packages"];
    let size = p["params"]["package_bytes"].as_u64().expect("package size");
    let first = p["shoal_first"]["bytes_from_centre"]
        .as_u64()
        .expect("bytes");
    assert!(first >= size && first <= 2 * size, "{p:#}");
    assert_eq!(p["shoal_again"]["bytes_from_centre"], 0, "{p:#}");
    assert_eq!(p["push_model"]["bytes_from_centre"], 20 * size, "{p:#}");
    // The feed's lag was measured over the records an integrator received.
    let lag = &v["feed"]["lag"][0];
    assert!(lag["samples"].as_u64().unwrap_or(0) > 0, "{lag}");
    assert_eq!(v["tasks_finished"], v["tasks_expected"], "{text}");
    assert!(v["tasks_expected"].as_u64().unwrap_or(0) > 0, "{text}");
    // The offered-load trace: a row per measured task, each seen planned and started.
    for shape in ["1", "10"] {
        let csv = std::fs::read_to_string(dir.path().join(format!("trace.{shape}")))
            .expect("trace written");
        let rows: Vec<Vec<i64>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').map(|f| f.parse().expect("a number")).collect())
            .collect();
        let measured = v[if shape == "1" {
            "offered_load"
        } else {
            "offered_load_in_deployments_of_10"
        }]["measured_tasks"]
            .as_u64()
            .expect("measured tasks");
        assert_eq!(rows.len() as u64, measured, "{csv}");
        assert!(
            rows.iter()
                .all(|r| r.len() == 4 && r[0] > 0 && r[2] >= r[0]),
            "{csv}"
        );
    }
}
