//! `armillary agent` as an operator runs it: keys made with `armillary keys`,
//! two secure agent processes on loopback, AFCs installed with and without a
//! signing key, a crash and a restart from the data directory alone.

use armillary_tests::{
    Processes, agent_command, armillary_bin, free_port, root_members, run_cli, run_ok, temp_dir,
    wait_for,
};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The command failed with `code` and said `text`.
fn fails_with(out: &Output, code: i32, text: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(text), "expected {text:?} in: {err}");
}

fn start(
    zone: &str,
    gossip: u16,
    api: u16,
    join: Option<u16>,
    data: &Path,
    keys: Option<&Path>,
) -> Child {
    let mut cmd = agent_command(zone, gossip, api, join, data);
    if let Some(k) = keys {
        cmd.arg("--keys").arg(k);
    }
    cmd.spawn().expect("agent starts")
}

/// A counter of the agent's `/v1/status` (0 when unreadable).
fn counter(api: u16, name: &str) -> u64 {
    let (_, body) = raw_get_path(&format!("127.0.0.1:{api}"), "/v1/status", "127.0.0.1", "");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["counters"][name].as_u64().unwrap_or(0)
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
    run_ok(&["keys", "authority", "--zone", "/", "--out", &s("auth")]);
    run_ok(&[
        "keys",
        "agent",
        "--zone",
        "/x/h1",
        "--authority",
        &s("auth"),
        "--out",
        &s("k1"),
    ]);
    run_ok(&[
        "keys",
        "agent",
        "--zone",
        "/x/h2",
        "--authority",
        &s("auth"),
        "--out",
        &s("k2"),
    ]);
    run_ok(&[
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
        root_members(&format!("127.0.0.1:{a1}")) == Some(2)
            && root_members(&format!("127.0.0.1:{a2}")) == Some(2)
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
    run_ok(&[
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
    wait_for("two members again", || {
        root_members(&format!("127.0.0.1:{a1}")) == Some(2)
    });
    // h2 still held a connection to h1's previous run: the restarted h1
    // resets it at h2's first packet (its reset and connection-id keys are
    // kept in its data directory), so h2 reconnects at once instead of
    // sending into it until the idle timeout.
    wait_for("h2 counts the reset of its stale connection", || {
        counter(a2, "net_peer_resets") >= 1
    });

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

/// An insecure agent's settings file in `root` with its API on port `api`,
/// and `extra` settings.
fn settings_file(root: &Path, api: u16, extra: &str) -> std::path::PathBuf {
    let file = root.join("agent.toml");
    let text = format!(
        "zone = \"/lab/h1\"\nlisten = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{api}\"\n\
         data_dir = \"{}\"\ninsecure = true\ngossip_interval = \"200ms\"\n{extra}",
        free_port(),
        root.join("data").display()
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn settings_file_runs_an_agent_and_bad_settings_say_what_is_wrong() {
    let root = temp_dir("cli-config");
    std::fs::create_dir_all(&root).unwrap();
    let a = free_port();
    let good = settings_file(&root, a, "reps = 2\n");
    let child = Command::new(armillary_bin())
        .args(["agent", "--config"])
        .arg(&good)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let agents = Processes(vec![child]);
    wait_for("the agent from the settings file answers", || {
        root_members(&format!("127.0.0.1:{a}")) == Some(1)
    });
    drop(agents);

    let bad = root.join("bad.toml");
    std::fs::write(&bad, "zone = \"/lab/h1\"\ngossip_intervall = \"1s\"\n").unwrap();
    let out = run_cli(&["agent", "--config", &bad.to_string_lossy()]);
    fails_with(&out, 2, "gossip_intervall");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn an_api_with_a_token_and_names_from_the_settings_file() {
    let root = temp_dir("cli-token");
    std::fs::create_dir_all(&root).unwrap();
    let token = root.join("api-token");
    std::fs::write(&token, "agent-token-0123456789abcdef\n").unwrap();
    let a = free_port();
    let extra = format!(
        "api_host = [\"mon.example.com\"]\napi_token_file = \"{}\"\n",
        token.display()
    );
    let settings = settings_file(&root, a, &extra);
    let child = Command::new(armillary_bin())
        .args(["agent", "--config"])
        .arg(&settings)
        .env_remove("ARMILLARY_API_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let agents = Processes(vec![child]);
    let api = format!("127.0.0.1:{a}");
    let query = |extra: &[&str]| {
        Command::new(armillary_bin())
            .args(["query", "SELECT SUM(nmembers) AS n FROM \"/\"", "--json"])
            .args(["--api", &api])
            .args(extra)
            .env_remove("ARMILLARY_API_TOKEN")
            .output()
            .expect("armillary runs")
    };
    let with_token = ["--api-token-file", &token.to_string_lossy()];
    wait_for("the agent answers the CLI with its token", || {
        let out = query(&with_token);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"n\":1")
    });
    let out = query(&[]);
    fails_with(&out, 2, "bearer token");
    // The name from the settings file is one the API answers to.
    let (status, _) = raw_get(&api, "mon.example.com", "agent-token-0123456789abcdef");
    assert_eq!(status, 200);
    let (status, body) = raw_get(&api, "evil.example", "agent-token-0123456789abcdef");
    assert_eq!(status, 421, "{body}");
    drop(agents);

    // Beyond loopback without a token, the agent does not start.
    let out = run_cli(&[
        "agent",
        "--zone",
        "/lab/h2",
        "--insecure",
        "--data-dir",
        &root.join("data2").to_string_lossy(),
        "--listen",
        "127.0.0.1:0",
        "--api",
        "0.0.0.0:0",
    ]);
    fails_with(&out, 2, "--api-token-file");
    let _ = std::fs::remove_dir_all(&root);
}

/// GET /v1/attrs with the given Host and bearer token; (status, body).
fn raw_get(api: &str, host: &str, token: &str) -> (u16, String) {
    raw_get_path(api, "/v1/attrs", host, token)
}

fn raw_get_path(api: &str, path: &str, host: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text.split_once("\r\n\r\n").unwrap().1.to_string())
}
