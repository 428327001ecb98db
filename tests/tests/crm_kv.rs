//! The replicated key-value endpoint over real QUIC: three agents serve
//! it, four clients send 1,000 increments through `armillary crm kv
//! bench` with every member as an endpoint, and the member they all use
//! is killed halfway. Every increment is acknowledged, the final value is
//! their number (none lost, none run twice), and the recorded history is
//! linearizable.

use armillary_agent::crm::proto::linear::{Call, check_kv};
use armillary_agent::crm::proto::{KvOp, KvReply, KvValue};
use armillary_tests::{api_list, run_cli, start_agents, temp_dir, until_apis};
use serde::Deserialize;
use serde_json::Value;
use std::process::{Command, Stdio};

#[derive(Deserialize)]
struct Line {
    invoke: u64,
    complete: Option<u64>,
    op: KvOp,
    ret: Option<KvReply>,
}

fn counter(endpoints: &str) -> Option<i64> {
    let out = run_cli(&[
        "crm",
        "kv",
        "g",
        "get",
        "bench",
        "--json",
        "--endpoints",
        endpoints,
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["value"].as_i64()
}

/// Waits until the counter reads at least `n` at the member at `api`,
/// asking over HTTP from here (a CLI run per read is too slow to catch
/// the bench halfway).
fn until_count(api: &str, n: i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let url = format!("http://{api}/v1/crm/groups/g/kv");
        let end = std::time::Instant::now() + armillary_tests::PATIENCE;
        for seq in 1u64.. {
            assert!(
                std::time::Instant::now() < end,
                "the count never reached {n}"
            );
            let body =
                serde_json::json!({"client": 0x7e57, "seq": seq, "op": "get", "key": "bench"});
            let read = async {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .ok()?;
                r.json::<Value>().await.ok()?["value"].as_i64()
            };
            if read.await.is_some_and(|v| v >= n) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
}

#[test]
fn increments_run_exactly_once_while_the_serving_member_is_killed() {
    let root = temp_dir("crm-kv");
    let (mut agents, ports) = start_agents(&root, &["/z0/a0", "/z1/a1", "/z2/a2"]);
    until_apis(&ports);
    for (i, p) in ports.iter().enumerate() {
        let mut args = vec!["crm", "serve", "g", "--kv", "--json"];
        let api = p.api_addr();
        let contact = ports[0].gossip_addr();
        args.extend(["--api", &api]);
        if i > 0 {
            args.extend(["--contacts", &contact]);
        }
        let out = run_cli(&args);
        assert!(
            out.status.success(),
            "serve: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A bad operation is bad input, before any request.
    let bad = run_cli(&["crm", "kv", "g", "get", "", "--api", &ports[0].api_addr()]);
    assert_eq!(bad.status.code(), Some(2));

    let all = api_list(&ports);
    let survivors = api_list(&ports[1..]);
    let history = root.join("history.jsonl");
    let bench = Command::new(armillary_tests::armillary_bin())
        .args([
            "crm",
            "kv",
            "g",
            "bench",
            "--ops",
            "1000",
            "--clients",
            "4",
            "--json",
        ])
        .args(["--endpoints", &all])
        .arg("--history")
        .arg(&history)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bench runs");
    // Halfway, the member every client uses first dies.
    until_count(&ports[1].api_addr(), 500);
    let _ = agents.0[0].kill();
    let _ = agents.0[0].wait();
    let out = bench.wait_with_output().expect("bench ends");
    assert!(out.status.success());
    let fig: Value = serde_json::from_slice(&out.stdout).expect("bench prints JSON");
    for key in ["ops", "ops_per_s", "p50_ms", "p99_ms", "failovers"] {
        assert!(fig.get(key).is_some(), "bench --json lacks {key}: {fig}");
    }
    assert_eq!(fig["errors"], 0, "every increment is acknowledged: {fig}");
    assert_eq!(fig["ops"], 1000);
    assert!(
        fig["failovers"].as_u64() >= Some(4),
        "every client failed over: {fig}"
    );
    assert_eq!(counter(&survivors), Some(1000), "none lost, none run twice");

    let calls: Vec<Call<KvOp, KvReply>> = std::fs::read_to_string(&history)
        .expect("history written")
        .lines()
        .map(|l| {
            let l: Line = serde_json::from_str(l).expect("a history line");
            Call {
                invoke: l.invoke,
                complete: l.complete,
                op: l.op,
                ret: l.ret,
            }
        })
        .collect();
    assert_eq!(calls.len(), 1000);
    // Each acknowledged increment returned a distinct count.
    let mut seen: Vec<i64> = calls
        .iter()
        .filter_map(|c| match &c.ret {
            Some(KvReply::Value {
                value: Some(KvValue::Int(n)),
            }) => Some(*n),
            _ => None,
        })
        .collect();
    seen.sort();
    assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
    check_kv(&calls).expect("the history is linearizable");
}
