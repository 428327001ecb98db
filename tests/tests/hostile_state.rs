//! Four `armillary agent` processes under hostile state, tried as a new user
//! would: a NaN AFC at the root, six 3.9 KB attributes, a 100-string list and
//! 100 AFCs at the root. Each is refused with a message or accepted and
//! really carried; through all of it, every agent's root table keeps
//! counting four members.

use armillary_tests::{
    Processes, armillary_bin, free_port, root_members, run_cli, temp_dir, wait_for,
};
use std::process::{Command, Output, Stdio};

fn api(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn afcs(port: u16) -> Vec<serde_json::Value> {
    let out = run_cli(&["afc", "list", "--json", "--api", &api(port)]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// A leaf row's attribute as agent `port` holds it in its leaf zone's table.
fn leaf_attr(port: u16, zone: &str, child: &str, attr: &str) -> Option<serde_json::Value> {
    let out = run_cli(&["zones", zone, "--json", "--api", &api(port)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let rows = v.get("rows").or(Some(&v))?.as_array()?.clone();
    rows.into_iter()
        .find(|r| r["name"] == child)
        .and_then(|r| r.get(attr).cloned())
}

/// Refused (exit 1 or 2, a message naming a limit) or accepted.
fn outcome(out: &Output) -> Result<(), String> {
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "unexpected exit: {:?} {err}",
        out.status
    );
    assert!(err.contains("limit"), "a refusal names the limit: {err}");
    Err(err)
}

#[test]
fn hostile_state_is_refused_or_really_carried() {
    let root = temp_dir("hostile-state");
    let zones = ["/a/h1", "/a/h2", "/b/h3", "/b/h4"];
    let gossip: Vec<u16> = zones.iter().map(|_| free_port()).collect();
    let apis: Vec<u16> = zones.iter().map(|_| free_port()).collect();
    let mut agents = Processes(Vec::new());
    for (i, zone) in zones.iter().enumerate() {
        let mut cmd = Command::new(armillary_bin());
        cmd.args(["agent", "--insecure", "--zone", zone])
            .args(["--listen", &format!("127.0.0.1:{}", gossip[i])])
            .args(["--api", &api(apis[i])])
            .arg("--data-dir")
            .arg(root.join(format!("agent{i}")))
            .args(["--gossip-interval", "200ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if i > 0 {
            cmd.args(["--join", &format!("127.0.0.1:{}", gossip[0])]);
        }
        agents.0.push(cmd.spawn().expect("agent starts"));
    }
    let all_four = || apis.iter().all(|p| root_members(&api(*p)) == Some(4));
    wait_for("four members everywhere", all_four);

    // A NaN AFC at the root: accepted, reported faulty, never in a row.
    let nan = run_cli(&[
        "afc",
        "install",
        "nan",
        "--zone",
        "/",
        "--sql",
        "SELECT SUM(nmembers)*1e300*1e300*0.0 AS x",
        "--api",
        &api(apis[0]),
    ]);
    assert!(
        nan.status.success(),
        "{}",
        String::from_utf8_lossy(&nan.stderr)
    );
    wait_for("the NaN AFC reported faulty everywhere", || {
        apis.iter().all(|p| {
            afcs(*p).iter().any(|a| {
                a["name"] == "nan"
                    && a["state"] == "faulty"
                    && a["reason"].as_str().is_some_and(|r| r.contains("finite"))
            })
        })
    });
    assert!(all_four());

    // Six 3.9 KB attributes on one agent: refused with a message, or carried.
    let blob = "x".repeat(3900);
    let mut accepted = Vec::new();
    for k in 0..6 {
        let name = format!("blob{k}");
        let out = run_cli(&["set", &name, &blob, "--api", &api(apis[1])]);
        if outcome(&out).is_ok() {
            accepted.push(name);
        }
    }
    assert!(!accepted.is_empty() && accepted.len() < 6, "{accepted:?}");
    // A 100-string list: refused.
    let list =
        serde_json::to_string(&(0..100).map(|i| format!("s{i}")).collect::<Vec<_>>()).unwrap();
    assert!(outcome(&run_cli(&["set", "names", &list, "--api", &api(apis[1])])).is_err());
    // What was accepted reaches the other agent of the zone.
    wait_for("accepted attributes carried", || {
        accepted
            .iter()
            .all(|n| leaf_attr(apis[0], "/a", "h2", n).is_some_and(|v| v.as_str() == Some(&*blob)))
    });
    assert!(all_four());

    // 100 AFCs at the root: those accepted reach the far side; the rest
    // are refused with the limit.
    let mut installed = Vec::new();
    for k in 0..100 {
        let name = format!("many{k}");
        let out = run_cli(&[
            "afc",
            "install",
            &name,
            "--zone",
            "/",
            "--sql",
            &format!("SELECT MAX(nmembers) AS out{k}"),
            "--api",
            &api(apis[0]),
        ]);
        if outcome(&out).is_ok() {
            installed.push(name);
        }
    }
    assert!(
        installed.len() > 10 && installed.len() < 100,
        "{}",
        installed.len()
    );
    wait_for("every accepted AFC active on the far side", || {
        let held = afcs(apis[3]);
        installed.iter().all(|n| {
            held.iter()
                .any(|a| a["name"] == n.as_str() && a["state"] == "active")
        })
    });
    wait_for("four members everywhere at the end", all_four);
    drop(agents);
    let _ = std::fs::remove_dir_all(root);
}
