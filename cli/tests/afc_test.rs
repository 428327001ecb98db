//! `armillary afc test`: evaluates a query over a table from a file or stdin.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_armillary"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // The binary may exit before reading (a bad query is refused first).
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    child.wait_with_output().expect("the binary finishes")
}

const TABLE: &str = r#"[
  {"name": "h1", "load": 0.5, "nmembers": 1, "contacts": ["10.0.0.1:7946"]},
  {"name": "h2", "load": 2.5, "nmembers": 1, "contacts": ["10.0.0.2:7946"]},
  {"name": "h3", "load": null, "nmembers": 1, "contacts": ["10.0.0.3:7946"]}
]"#;

#[test]
fn prints_the_summary_row_as_json() {
    let out = run(
        &[
            "afc",
            "test",
            "--sql",
            "SELECT MAX(load) AS load, AVG(load) AS avg_load, SUM(nmembers) AS nmembers, \
             COUNT(*) AS n, FIRST(2, contacts) AS contacts ORDER BY load DESC NULLS LAST",
        ],
        TABLE,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(row["load"], 2.5);
    assert_eq!(row["avg_load"], 1.5);
    assert_eq!(row["nmembers"], 3);
    assert_eq!(row["n"], 3);
    assert_eq!(
        row["contacts"],
        serde_json::json!(["10.0.0.2:7946", "10.0.0.1:7946"])
    );
}

#[test]
fn reads_the_table_from_a_file() {
    let dir = std::env::temp_dir().join(format!("armillary-afc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("table.json");
    std::fs::write(&file, TABLE).unwrap();
    let out = run(
        &[
            "afc",
            "test",
            "--sql",
            "SELECT MIN(load) AS load",
            "--table",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success());
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(row["load"], 0.5);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_query_is_exit_code_2_with_its_position() {
    let out = run(&["afc", "test", "--sql", "SELECT FOO(load) AS x"], TABLE);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FOO") || err.contains("foo"), "{err}");
    assert!(err.contains("column"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_table_is_exit_code_2() {
    for bad in [
        "{\"not\": \"an array\"}",
        "[{\"a\": {\"nested\": 1}}]",
        "not json",
    ] {
        let out = run(&["afc", "test", "--sql", "SELECT MAX(a) AS a"], bad);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid table"));
    }
    let out = run(
        &[
            "afc",
            "test",
            "--sql",
            "SELECT MAX(a) AS a",
            "--table",
            "/nonexistent/t.json",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sim_prints_the_report_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_armillary"))
        .args([
            "sim",
            "--agents",
            "64",
            "--branching",
            "4",
            "--rounds",
            "20",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "agents",
        "levels",
        "rounds_to_converge",
        "afc_rounds_to_converge",
        "msgs_per_agent_round",
        "bytes_per_agent_round",
        "peak_rss_mb",
        "wall_s",
        "agent_rounds_per_sec",
        "converged",
    ] {
        assert!(r.get(key).is_some(), "missing {key}");
    }
    assert_eq!(r["agents"], 64);
    assert_eq!(r["levels"], 3);
    assert_eq!(r["converged"], true);
    assert!(r["rounds_to_converge"]["max"].as_u64().unwrap() <= 2);
    let bad = Command::new(env!("CARGO_BIN_EXE_armillary"))
        .args(["sim", "--loss", "1.5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
