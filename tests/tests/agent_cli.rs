//! `armillary agent` as an operator runs it: keys made with `armillary keys`,
//! two secure agent processes on loopback, AFCs installed with and without a
//! signing key, a crash and a restart from the data directory alone.

use armillary_tests::{Processes, armillary_bin, free_port, run_cli, temp_dir, wait_for};
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn ok(args: &[&str]) -> String {
    let out = run_cli(args);
    assert!(
        out.status.success(),
        "armillary {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start(
    zone: &str,
    gossip: u16,
    api: u16,
    join: Option<u16>,
    data: &Path,
    keys: Option<&Path>,
) -> Child {
    let mut cmd = Command::new(armillary_bin());
    cmd.args(["agent", "--zone", zone])
        .args(["--listen", &format!("127.0.0.1:{gossip}")])
        .args(["--api", &format!("127.0.0.1:{api}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--gossip-interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(j) = join {
        cmd.args(["--join", &format!("127.0.0.1:{j}")]);
    }
    if let Some(k) = keys {
        cmd.arg("--keys").arg(k);
    }
    cmd.spawn().expect("agent starts")
}

fn members(api: u16) -> Option<i64> {
    let out = run_cli(&[
        "query",
        "SELECT SUM(nmembers) AS n FROM \"/\"",
        "--json",
        "--api",
        &format!("127.0.0.1:{api}"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?.get("n")?.as_i64()
}

fn afc_state(api: u16, name: &str) -> Option<String> {
    let out = run_cli(&[
        "afc",
        "list",
        "--json",
        "--api",
        &format!("127.0.0.1:{api}"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["state"].as_str().map(String::from))
}

#[test]
fn secure_agents_from_keys_to_restart() {
    let root = temp_dir("cli-keys");
    std::fs::create_dir_all(&root).unwrap();
    let p = |n: &str| root.join(n);
    let s = |n: &str| p(n).to_string_lossy().into_owned();
    ok(&["keys", "authority", "--zone", "/", "--out", &s("auth")]);
    ok(&[
        "keys",
        "agent",
        "--zone",
        "/x/h1",
        "--authority",
        &s("auth"),
        "--out",
        &s("k1"),
    ]);
    ok(&[
        "keys",
        "agent",
        "--zone",
        "/x/h2",
        "--authority",
        &s("auth"),
        "--out",
        &s("k2"),
    ]);
    ok(&[
        "keys",
        "client",
        "--name",
        "ops",
        "--allow",
        "afc:/",
        "--authority",
        &s("auth"),
        "--out",
        &s("ops"),
    ]);

    let (g1, a1, g2, a2) = (free_port(), free_port(), free_port(), free_port());
    let mut agents = Processes(vec![
        start("/x/h1", g1, a1, None, &p("d1"), Some(&p("k1"))),
        start("/x/h2", g2, a2, Some(g1), &p("d2"), Some(&p("k2"))),
    ]);
    wait_for("both agents count two members", || {
        members(a1) == Some(2) && members(a2) == Some(2)
    });
    let api1 = format!("127.0.0.1:{a1}");
    // Without a key the agent refuses the AFC: exit code 2, a message saying what to do.
    let out = run_cli(&[
        "afc",
        "install",
        "hosts",
        "--zone",
        "/",
        "--sql",
        "SELECT COUNT(*) AS hosts",
        "--api",
        &api1,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key"));
    // With the client's key it spreads to the other agent.
    ok(&[
        "afc",
        "install",
        "hosts",
        "--zone",
        "/",
        "--sql",
        "SELECT COUNT(*) AS hosts",
        "--key",
        &s("ops"),
        "--api",
        &api1,
    ]);
    wait_for("the AFC is active on h2", || {
        afc_state(a2, "hosts").as_deref() == Some("active")
    });

    // Crash h1; restart it from its data directory alone (no --keys).
    let _ = agents.0[0].kill();
    let _ = agents.0[0].wait();
    agents.0[0] = start("/x/h1", g1, a1, Some(g2), &p("d1"), None);
    wait_for("h1 is back with its AFC", || {
        afc_state(a1, "hosts").as_deref() == Some("active")
    });
    wait_for("two members again", || members(a1) == Some(2));

    // A data directory that belongs to another zone is refused, with exit code 2.
    let out = run_cli(&[
        "agent",
        "--zone",
        "/x/h3",
        "--data-dir",
        &s("d1"),
        "--insecure",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/x/h1"));
    drop(agents);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn settings_file_runs_an_agent_and_bad_settings_say_what_is_wrong() {
    let root = temp_dir("cli-config");
    std::fs::create_dir_all(&root).unwrap();
    let (g, a) = (free_port(), free_port());
    let good = root.join("agent.toml");
    std::fs::write(
        &good,
        format!(
            "zone = \"/lab/h1\"\nlisten = \"127.0.0.1:{g}\"\napi = \"127.0.0.1:{a}\"\n\
             data_dir = \"{}\"\ninsecure = true\ngossip_interval = \"200ms\"\nreps = 2\n",
            root.join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new(armillary_bin())
        .args(["agent", "--config"])
        .arg(&good)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let agents = Processes(vec![child]);
    wait_for("the agent from the settings file answers", || {
        members(a) == Some(1)
    });
    drop(agents);

    let bad = root.join("bad.toml");
    std::fs::write(&bad, "zone = \"/lab/h1\"\ngossip_intervall = \"1s\"\n").unwrap();
    let out = run_cli(&["agent", "--config", &bad.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gossip_intervall"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&root);
}
