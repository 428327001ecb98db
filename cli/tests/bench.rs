//! `armillary bench spread` over real QUIC on loopback, small and quick:
//! what it reports, not how fast (figures are for `docs/benchmarks.md`).

use serde_json::Value;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_armillary");

/// Runs `armillary bench ARGS`, which must succeed, and parses its JSON.
fn bench_json(args: &[&str]) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    run_json(&all)
}

/// The JSON a command prints, which must succeed.
fn run_json(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn spread_with_churn_reports_idle_and_churning_runs() {
    let runs = bench_json(&[
        "spread",
        "--agents",
        "4",
        "--branching",
        "2",
        "--reps",
        "2",
        "--round",
        "200ms",
        "--churn",
        "0.5",
        "--no-baseline",
        "--json",
    ]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (idle, churn) = (&runs[0], &runs[1]);
    for r in runs {
        assert_eq!(r["agents"], 4);
        assert_eq!(r["mode"], "push");
        assert_eq!(r["converged"], true, "{r}");
        assert!(r["bytes_per_agent_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(idle["churn"], 0.0);
    assert_eq!(idle["sensor_changes_per_s"], 0.0);
    assert_eq!(churn["churn"], 0.5);
    // Two agents' loads a second, spread over the run.
    assert!(
        churn["sensor_changes_per_s"].as_f64().unwrap() > 0.5,
        "{churn}"
    );
}

#[test]
fn churn_must_be_a_fraction() {
    for bad in ["0", "1.5", "-0.2"] {
        let out = Command::new(BIN)
            .args([
                "bench",
                "spread",
                "--agents",
                "4",
                &format!("--churn={bad}"),
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--churn {bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--churn"));
    }
}

#[test]
fn chm_bench_reports_verdicts_lookups_and_bytes() {
    let runs = bench_json(&[
        "chm",
        "--agents",
        "6",
        "--branching",
        "3",
        "--reps",
        "1",
        "--round",
        "250ms",
        "--components",
        "2",
        "--window",
        "1s",
        "--json",
    ]);
    let r = &runs.as_array().unwrap()[0];
    assert_eq!(r["agents"], 6);
    assert_eq!(r["components_per_agent"], 2);
    assert_eq!(r["missed"], 0, "{r}");
    for k in [
        "check_p50_s",
        "check_p99_s",
        "kill_p50_s",
        "kill_p99_s",
        "lookup_p50_ms",
    ] {
        assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
    }
    // The agents with CHM send more than the same agents without it.
    assert!(
        r["baseline_bytes_per_agent_s"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(r["bytes_per_agent_s"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn chm_bench_refuses_bad_sizes_with_exit_code_2() {
    for args in [["--agents", "2"], ["--components", "0"]] {
        let out = Command::new(BIN)
            .args(["bench", "chm"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn soak_counts_no_false_verdicts_and_sees_the_paused_agent() {
    let r = bench_json(&[
        "soak",
        "--agents",
        "8",
        "--duration",
        "16s",
        "--pause",
        "4s",
        "--round",
        "500ms",
        "--branching",
        "4",
        "--json",
    ]);
    assert_eq!(r["false_critical_changes"], 0, "{r}");
    assert_eq!(r["false_critical_samples"], 0, "{r}");
    assert_eq!(r["paused_seen_critical"], true, "{r}");
    assert!(r["recovered_after_s"].is_number(), "{r}");
    assert!(r["samples"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn dds_bench_compares_a_channel_with_plain_quic_and_checks_every_message() {
    let runs = run_json(&[
        "dds",
        "bench",
        "--subscribers",
        "2",
        "--messages",
        "400",
        "--size",
        "256",
        "--loss",
        "0.05",
        "--slow",
        "--round",
        "200ms",
        "--json",
    ]);
    let runs = runs.as_array().expect("an array");
    let mode = |m: &str| {
        runs.iter()
            .find(|r| r["mode"] == m)
            .unwrap_or_else(|| panic!("no {m} run in {runs:?}"))
    };
    for m in ["quic", "dds", "dds_slow"] {
        let r = mode(m);
        assert_eq!(r["subscribers"], 2);
        assert_eq!(r["complete"], true, "{r}");
        // Every message once and in order, losses and all.
        for k in ["lost", "duplicated", "reordered"] {
            assert_eq!(r[k], 0, "{m} {k}: {r}");
        }
        assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    }
    // The 5% loss was repaired by the stack, and counted.
    let d = mode("dds");
    assert!(d["repaired"].as_u64().unwrap() > 0, "{d}");
    assert!(d["requests_per_subscriber"].as_f64().unwrap() > 0.0, "{d}");
    // The slow reader read some, and missed or is behind.
    assert!(mode("dds_slow")["slow_read"].as_u64().unwrap() > 0);
}

#[test]
fn dds_bench_refuses_bad_input_with_exit_code_2() {
    for args in [
        &["--subscribers", "0"][..],
        &["--size", "8"],
        &["--loss", "0.9"],
        &["--stack", "nak:fifo"],
    ] {
        let out = Command::new(BIN)
            .args(["dds", "bench"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}
