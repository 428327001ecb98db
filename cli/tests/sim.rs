//! `armillary sim` at an operating point: flags, report keys, bad input.

use std::process::Command;

fn sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_armillary"))
        .arg("sim")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn operating_point_flags_reach_the_report() {
    let out = sim(&[
        "--agents",
        "100",
        "--branching",
        "5",
        "--rounds",
        "30",
        "--churn",
        "0.2",
        "--afcs",
        "5",
        "--crash",
        "0.05",
        "--loss",
        "0.05",
        "--secure",
        "--skew",
        "500",
        "--afc",
        "SELECT SUM(nmembers)*1e300*1e300*0.0 AS x",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["churn"], 0.2);
    assert_eq!(r["afcs"], 5);
    assert_eq!(r["secure"], true);
    assert_eq!(r["skew_ms"], 500);
    // Crashes at the change round by default.
    assert_eq!(r["crash_round"], r["change_round"]);
    assert_eq!(r["crashed"], 5);
    for key in [
        "stable",
        "unconverged",
        "afc_unconverged",
        "bytes_per_agent_round",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    assert!(r["bytes_per_agent_round"]["mean"].as_f64().unwrap() > 0.0);
    assert_eq!(r["unconverged"], 0, "{r}");
    // NaN is no value: the correct root row has no x.
    assert_eq!(r["afc_value"], serde_json::json!({}));
}

#[test]
fn human_output_names_stability() {
    let out = sim(&[
        "--agents",
        "40",
        "--branching",
        "4",
        "--rounds",
        "12",
        "--crash-spread",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stable"), "{text}");
    assert!(text.contains("crash 0 (spread)"), "{text}");
}

#[test]
fn bad_operating_points_exit_2() {
    for args in [
        &["--churn", "1.5"][..],
        &["--afc", "SELEC nonsense"],
        &["--afc", "SELECT SUM(x) AS nmembers"],
        &["--afcs", "1000"],
        &["--skew", "999999"],
        &["--crash-round", "3", "--crash-spread"],
        &["--crash-round", "0"],
    ] {
        let out = sim(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
