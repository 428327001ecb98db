//! The client commands (`zones`, `query`, `afc install|list|remove`,
//! `watch`, `set`, `unset`) against `armillary dev` run as a child process.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_armillary");

/// A local port nobody listens on (bound, then released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

/// One GET over plain HTTP/1.1; (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_get_as(addr, path, &format!("Host: {addr}\r\n"))
}

/// One GET with the given header lines (each ending in CRLF).
fn http_get_as(addr: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// `armillary dev --agents 4` with its API on a free port; killed on drop.
struct Dev {
    child: Child,
    api: String,
}

impl Dev {
    fn start() -> Dev {
        Dev::start_with(&[])
    }

    /// With more `armillary dev` flags; ready once the API answers at all.
    fn start_with(flags: &[&str]) -> Dev {
        let api = format!("127.0.0.1:{}", free_port());
        let child = Command::new(BIN)
            .args(["dev", "--agents", "4", "--round", "200ms", "--api", &api])
            .args(["--dns", "127.0.0.1:0"])
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("`armillary dev` starts");
        let dev = Dev { child, api };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200 | 401, _)) = http_get(&dev.api, "/v1/status") {
                return dev;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("`armillary dev` did not serve /v1/status on {}", dev.api);
    }

    fn status(&self) -> Value {
        let (code, body) = http_get(&self.api, "/v1/status").expect("status answers");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }

    /// Runs a client command against this system.
    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, None)
    }

    /// Runs a client command with `ARMILLARY_API_TOKEN` set to `token`.
    fn run_env(&self, args: &[&str], token: Option<&str>) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("ARMILLARY_API", &self.api)
            .env_remove("ARMILLARY_API_TOKEN")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("ARMILLARY_API_TOKEN", t);
        }
        cmd.output().expect("the binary runs")
    }

    /// Runs a command that must succeed and returns its standard output.
    fn ok(&self, args: &[&str]) -> String {
        succeeded(self.run(args), &format!("armillary {args:?}"))
    }

    /// Runs a command that prints one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Waits until `f` holds for the JSON output of `args`.
    fn eventually(&self, args: &[&str], f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.json(args);
            if f(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "armillary {args:?} never held: {v}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fails_with(out: &Output, code: i32, text: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(text), "expected {text:?} in: {err}");
}

fn row<'a>(rows: &'a Value, name: &str) -> Option<&'a Value> {
    rows.as_array()?.iter().find(|r| r["name"] == name)
}

/// The agent's own name in the root table, e.g. `a00` for `/a00`.
fn top_name(dev: &Dev) -> String {
    let leaf = dev.status()["leaf"].as_str().unwrap().to_string();
    leaf.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn zones_and_queries() {
    let dev = Dev::start();
    let me = top_name(&dev);
    let rows = dev.eventually(&["zones", "--json"], |v| row(v, &me).is_some());
    for r in rows.as_array().unwrap() {
        assert!(r["name"].is_string() && r["nmembers"].is_u64(), "{r}");
    }
    let table = dev.ok(&["zones", "/"]);
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("name "), "{table}");
    assert!(header.contains("nmembers"), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&me)), "{table}");

    fails_with(
        &dev.run(&["zones", "/nowhere"]),
        2,
        "not on this agent's path",
    );
    fails_with(&dev.run(&["zones", "nowhere"]), 2, "absolute zone path");

    let rows = dev.json(&[
        "query",
        "--json",
        "SELECT name, nmembers FROM \"/\" ORDER BY name",
    ]);
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["nmembers"].is_u64()), "{rows:?}");
    let text = dev.ok(&["query", "SELECT COUNT(*) AS n FROM \"/\""]);
    assert_eq!(text.lines().next(), Some("n"), "{text}");

    fails_with(&dev.run(&["query", "SELEC nonsense"]), 2, "error: ");
    fails_with(
        &dev.run(&["query", "SELECT x FROM \"/no/such/table\""]),
        2,
        "query failed",
    );
}

#[test]
fn afc_install_list_remove() {
    let dev = Dev::start();
    let out = dev.ok(&[
        "afc",
        "install",
        "busy",
        "--zone",
        "/",
        "--sql",
        "SELECT MAX(load) AS maxload",
    ]);
    assert!(out.starts_with("installed busy in / (active"), "{out}");

    let dir = std::env::temp_dir().join(format!("armillary-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("count.sql");
    std::fs::write(&file, "SELECT SUM(nmembers) AS counted\n").unwrap();
    let afc = dev.json(&[
        "afc",
        "install",
        "count",
        "--zone",
        "/",
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(afc["sql"], "SELECT SUM(nmembers) AS counted");
    assert_eq!(afc["state"], "active");

    let list = dev.json(&["afc", "list", "--json"]);
    let busy = row(&list, "busy").expect("busy is listed");
    assert_eq!(busy["scope"], "/");
    assert_eq!(busy["state"], "active");
    assert_eq!(busy["signer"], "insecure");
    let table = dev.ok(&["afc", "list", "--zone", "/"]);
    assert!(
        table.starts_with("name   scope  state   reason  signer    issued"),
        "{table}"
    );
    assert!(table.contains("busy") && table.contains("count"), "{table}");

    // The AFC computes its attribute at the root.
    let root = http_get(&dev.api, "/v1/zone?zone=/").unwrap().1;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut root: Value = serde_json::from_str(&root).unwrap();
    while root["counted"].is_null() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        root = serde_json::from_str(&http_get(&dev.api, "/v1/zone?zone=/").unwrap().1).unwrap();
    }
    assert!(root["counted"].is_u64(), "{root}");

    fails_with(
        &dev.run(&[
            "afc",
            "install",
            "bad",
            "--zone",
            "/",
            "--sql",
            "SELECT MAX(",
        ]),
        2,
        "AFC rejected",
    );
    fails_with(
        &dev.run(&[
            "afc",
            "install",
            "far",
            "--zone",
            "/zz",
            "--sql",
            "SELECT 1 AS one",
        ]),
        2,
        "install it through an agent inside",
    );
    fails_with(
        &dev.run(&["afc", "install", "x", "--zone", "/"]),
        2,
        "--sql",
    );
    fails_with(
        &dev.run(&[
            "afc",
            "install",
            "x",
            "--zone",
            "/",
            "--sql",
            "SELECT 1 AS one",
            "--key",
            dir.to_str().unwrap(),
        ]),
        2,
        "holds no Armillary keys",
    );

    // Signed here with a client's keys (the dev system takes signed AFCs too).
    let (root_keys, ops_keys) = (dir.join("root"), dir.join("ops"));
    let (root_keys, ops_keys) = (root_keys.to_str().unwrap(), ops_keys.to_str().unwrap());
    dev.ok(&["keys", "authority", "--zone", "/", "--out", root_keys]);
    dev.ok(&[
        "keys",
        "client",
        "--name",
        "ops",
        "--allow",
        "afc:/",
        "--authority",
        root_keys,
        "--out",
        ops_keys,
    ]);
    let afc = dev.json(&[
        "afc",
        "install",
        "signed",
        "--zone",
        "/",
        "--sql",
        "SELECT MIN(load) AS minload",
        "--key",
        ops_keys,
        "--json",
    ]);
    assert_eq!(afc["signer"], "ops");
    assert_eq!(afc["state"], "active");
    let out = dev.ok(&["afc", "remove", "signed", "--zone", "/", "--key", ops_keys]);
    assert_eq!(out.trim(), "removed signed from /");
    let list = dev.json(&["afc", "list", "--json"]);
    assert_eq!(row(&list, "signed").unwrap()["signer"], "ops");

    let out = dev.ok(&["afc", "remove", "busy", "--zone", "/"]);
    assert_eq!(out.trim(), "removed busy from /");
    fails_with(
        &dev.run(&["afc", "remove", "busy", "--zone", "/"]),
        2,
        "no AFC named busy in /",
    );
    let list = dev.json(&["afc", "list", "--json"]);
    assert_eq!(row(&list, "busy").unwrap()["state"], "removed");
    let _ = std::fs::remove_dir_all(&dir);

    // The offline tester is still there.
    let out = Command::new(BIN)
        .args(["afc", "test", "--sql", "SELECT SUM(nmembers) AS n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(br#"[{"nmembers":2}]"#)?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"n":2}"#);
}

/// Reads a child's output lines on a thread, so a test can wait with a timeout.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Installs an AFC that carries `peak` to the root.
const PEAK_AFC: &[&str] = &[
    "afc",
    "install",
    "peak",
    "--zone",
    "/",
    "--sql",
    "SELECT MAX(peak) AS peak",
];

#[test]
fn set_unset_and_watch() {
    let dev = Dev::start();
    let me = top_name(&dev);
    dev.ok(PEAK_AFC);

    let mut watch = Command::new(BIN)
        .args(["watch", "/", "--attr", "peak", "--count", "2", "--json"])
        .env("ARMILLARY_API", &dev.api)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut watch);
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the current row comes at once");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["zone"], "/");
    assert!(first["time"].is_u64(), "{first}");
    assert_eq!(first["attrs"], serde_json::json!({"peak": null}));

    dev.ok(&["set", "peak", "42"]);
    let second = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("the change arrives");
    let second: Value = serde_json::from_str(&second).unwrap();
    assert_eq!(second["attrs"]["peak"], 42, "{second}");
    let status = watch.wait().unwrap();
    assert!(status.success(), "watch stops by itself after --count 2");

    // Human lines: the time, then attr=value.
    let out = dev.ok(&["watch", "/", "--attr", "peak", "--count", "1"]);
    let line = out.trim();
    assert!(
        line.starts_with("20") && line.ends_with("  peak=42"),
        "{line}"
    );

    dev.ok(&["set", "role", "web"]);
    dev.ok(&["set", "tags", r#"["a","b"]"#]);
    dev.ok(&["set", "up", "true"]);
    let rows = dev.eventually(&["zones", "--json"], |v| {
        row(v, &me).is_some_and(|r| r["up"] == true)
    });
    let mine = row(&rows, &me).unwrap();
    assert_eq!(mine["peak"], 42);
    assert_eq!(mine["role"], "web");
    assert_eq!(mine["tags"], serde_json::json!(["a", "b"]));

    fails_with(&dev.run(&["set", "nmembers", "3"]), 2, "reserved");
    fails_with(
        &dev.run(&["set", "peak", r#"{"a":1}"#]),
        2,
        "nested objects",
    );

    dev.ok(&["unset", "role"]);
    let out = dev.run(&["unset", "role"]);
    fails_with(&out, 0, "role was not set");
    dev.eventually(&["zones", "--json"], |v| {
        row(v, &me).is_some_and(|r| r.get("role").is_none())
    });
}

#[test]
fn unreachable_agent_and_bad_addresses() {
    let port = free_port();
    let api = format!("127.0.0.1:{port}");
    let out = Command::new(BIN)
        .args(["zones", "--api", &api])
        .output()
        .unwrap();
    fails_with(
        &out,
        1,
        &format!("cannot reach the agent API at http://{api}"),
    );
    fails_with(&out, 1, "armillary dev");

    let out = Command::new(BIN)
        .args(["query", "SELECT 1"])
        .env("ARMILLARY_API", &api)
        .output()
        .unwrap();
    fails_with(&out, 1, &format!("http://{api}"));

    let out = Command::new(BIN)
        .args(["set", "x", "1", "--api", "not an address"])
        .output()
        .unwrap();
    fails_with(&out, 2, "is not an address");
    let out = Command::new(BIN)
        .args(["watch", "/", "--count", "0", "--api", &api])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

const TOKEN: &str = "dev-token-0123456789abcdef";

/// Succeeds, or fails the test with the command's error.
fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn a_token_protected_api_with_the_token_from_env_or_flag() {
    let dir = std::env::temp_dir().join(format!("armillary-cli-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let file = file.to_str().unwrap();
    let dev = Dev::start_with(&["--api-token-file", file, "--api-host", "mon.example.com"]);

    // Without the token, or with a wrong one: exit code 2 and what to do.
    fails_with(&dev.run(&["zones"]), 2, "ARMILLARY_API_TOKEN");
    fails_with(
        &dev.run_env(&["zones"], Some("wrong-token-0123456789")),
        2,
        "not this API's",
    );
    fails_with(
        &dev.run_env(&["zones"], Some("short")),
        2,
        "ARMILLARY_API_TOKEN",
    );

    // From the environment.
    let env = Some(TOKEN);
    let out = succeeded(dev.run_env(&["zones", "--json"], env), "zones");
    assert!(out.starts_with('['), "{out}");
    let out = dev.run_env(PEAK_AFC, env);
    assert!(succeeded(out, "afc install").starts_with("installed peak in /"));
    succeeded(dev.run_env(&["set", "peak", "7"], env), "set");
    let out = dev.run_env(&["watch", "/", "--attr", "peak", "--count", "1"], env);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut line = succeeded(out, "watch");
    while !line.trim().ends_with("peak=7") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let out = dev.run_env(&["watch", "/", "--attr", "peak", "--count", "1"], env);
        line = succeeded(out, "watch");
    }
    assert!(line.trim().ends_with("peak=7"), "{line}");

    // From --api-token-file, which wins over the environment.
    let flag = ["--api-token-file", file];
    let out = dev.run_env(
        &[&["afc", "list", "--json"][..], &flag].concat(),
        Some("wrong-token-0123456789"),
    );
    let list: Value = serde_json::from_str(&succeeded(out, "afc list")).unwrap();
    assert_eq!(row(&list, "peak").unwrap()["state"], "active");
    succeeded(dev.run(&[&["unset", "peak"][..], &flag].concat()), "unset");
    fails_with(
        &dev.run(&["zones", "--api-token-file", "/nonexistent/token"]),
        2,
        "cannot read the API token file",
    );

    // The dashboard page needs no token; --api-host names are accepted.
    let (code, page) = http_get(&dev.api, "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("<title>Armillary</title>"));
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let named = format!("Host: mon.example.com\r\n{bearer}");
    assert_eq!(http_get_as(&dev.api, "/v1/attrs", &named).unwrap().0, 200);
    let foreign = format!("Host: evil.example\r\n{bearer}");
    let (code, body) = http_get_as(&dev.api, "/v1/attrs", &foreign).unwrap();
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("--api-host"), "{body}");
    drop(dev);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dev_refuses_an_api_beyond_loopback_without_a_token() {
    let out = Command::new(BIN)
        .args([
            "dev",
            "--agents",
            "2",
            "--api",
            &format!("0.0.0.0:{}", free_port()),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails_with(&out, 2, "--api-token-file");
    let out = Command::new(BIN)
        .args(["dev", "--agents", "2", "--api-host", "http://x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    fails_with(&out, 2, "--api-host");
}

#[test]
fn chm_commands_register_look_up_and_refuse_bad_input_with_exit_code_2() {
    let dev = Dev::start();
    let status_url = format!("http://{}/v1/status", dev.api);
    dev.ok(&[
        "chm",
        "register",
        "web-1",
        "--http",
        &status_url,
        "--interval",
        "200ms",
        "--keyword",
        "web",
        "--address",
        "127.0.0.1:80",
    ]);
    dev.ok(&[
        "chm",
        "register",
        "job",
        "--cmd",
        "echo busy; exit 1",
        "--interval",
        "200ms",
    ]);
    dev.ok(&["chm", "register", "beat", "--ttl", "1h"]);
    dev.ok(&["chm", "heartbeat", "beat", "--status", "passing"]);
    let r = dev.eventually(&["chm", "lookup", "web-1", "--json"], |v| {
        v["status"] == "passing"
    });
    for key in [
        "id",
        "status",
        "reason",
        "zone",
        "since",
        "observers",
        "age_s",
        "keywords",
        "address",
        "qos",
    ] {
        assert!(r.get(key).is_some(), "lookup --json lacks {key}: {r}");
    }
    assert_eq!(r["qos"]["level"], "unknown");
    dev.eventually(&["chm", "lookup", "job", "--json"], |v| {
        v["status"] == "warning"
    });
    let p = dev.json(&["chm", "providers", "web", "--json"]);
    assert_eq!(p.as_array().map(Vec::len), Some(1), "{p}");
    let l = dev.json(&["chm", "list", "--status", "passing", "--json"]);
    assert_eq!(l.as_array().map(Vec::len), Some(2), "{l}");
    // Maintenance turns it critical with the reason; disabling restores it.
    dev.ok(&["chm", "maint", "beat", "--enable", "--reason", "upgrade"]);
    let r = dev.json(&["chm", "lookup", "beat", "--json"]);
    assert_eq!(r["status"], "critical");
    assert!(r["reason"].as_str().unwrap().contains("upgrade"), "{r}");
    dev.ok(&["chm", "maint", "beat", "--disable"]);
    // QoS samples: one accepted, one with T4 before T1 refused.
    dev.ok(&[
        "chm", "qos", "web-1", "--t1", "0", "--t2", "10", "--t3", "20", "--t4", "40",
    ]);
    for bad in [
        vec![
            "chm", "qos", "web-1", "--t1", "50", "--t2", "10", "--t3", "20", "--t4", "40",
        ],
        vec!["chm", "register", "Bad_Id", "--ttl", "10s"],
        vec!["chm", "register", "x", "--http", "not-a-url"],
        vec!["chm", "register", "x", "--ttl", "-5s"],
        vec![
            "chm",
            "register",
            "x",
            "--tcp",
            "127.0.0.1:1",
            "--interval",
            "0s",
        ],
        vec!["chm", "lookup", "nope"],
        vec!["chm", "heartbeat", "nope"],
        vec!["chm", "deregister", "nope"],
    ] {
        let out = dev.run(&bad);
        assert_eq!(out.status.code(), Some(2), "armillary {bad:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "armillary {bad:?} says nothing");
    }
    dev.ok(&["chm", "deregister", "job"]);
    let out = dev.run(&["chm", "lookup", "job"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn dds_commands_create_publish_subscribe_and_refuse_bad_input_with_exit_code_2() {
    let dev = Dev::start();
    let c = dev.json(&[
        "dds",
        "create",
        "ticks",
        "--stack",
        "fifo:frag:nak",
        "--retain",
        "10",
        "--json",
    ]);
    assert_eq!(c["name"], "ticks");
    assert_eq!(c["stack"], "fifo:frag:nak");
    dev.eventually(&["dds", "channels", "--json"], |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|c| c["name"] == "ticks"))
    });
    // Bad stacks and unknown channels exit 2 with the reason.
    fails_with(
        &dev.run(&["dds", "create", "x", "--stack", "nak:total"]),
        2,
        "total",
    );
    fails_with(
        &dev.run(&["dds", "create", "y", "--stack", "fifo:bogus"]),
        2,
        "bogus",
    );
    fails_with(&dev.run(&["dds", "publish", "nope", "hello"]), 2, "nope");
    fails_with(
        &dev.run(&["dds", "subscribe", "nope", "--count", "1"]),
        2,
        "nope",
    );
    // Without frag a message must fit one fragment: 413, exit 2, the limit.
    dev.ok(&["dds", "create", "small", "--stack", "fifo:nak"]);
    let big = "x".repeat(100 * 1024);
    fails_with(
        &dev.run(&["dds", "publish", "small", &big]),
        2,
        "takes at most",
    );
    // sign needs agents with certificates; this cluster has none.
    fails_with(
        &dev.run(&["dds", "create", "signed", "--stack", "sign:fifo:nak"]),
        2,
        "certificates",
    );
    // One message per line of standard input, then one given as an argument.
    let mut p = Command::new(BIN)
        .args(["dds", "publish", "ticks"])
        .env("ARMILLARY_API", &dev.api)
        .env_remove("ARMILLARY_API_TOKEN")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(b"a\nb\n").unwrap();
    assert!(p.wait().unwrap().success());
    dev.ok(&["dds", "publish", "ticks", "c"]);
    let out = dev.ok(&[
        "dds",
        "subscribe",
        "ticks",
        "--from-start",
        "--count",
        "3",
        "--json",
    ]);
    let msgs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let data: Vec<&str> = msgs.iter().map(|m| m["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["a", "b", "c"], "{out}");
    for m in &msgs {
        assert_eq!(m["channel"], "ticks");
        assert!(m["seq"].is_u64() && m["from"].is_string(), "{m}");
    }
    // A 2 MiB binary file is one message, base64 in the JSON line.
    let blob: Vec<u8> = (0..2u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let file = std::env::temp_dir().join(format!("armillary-blob-{}", std::process::id()));
    std::fs::write(&file, &blob).unwrap();
    dev.ok(&["dds", "publish", "ticks", "--file", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    let out = dev.ok(&[
        "dds",
        "subscribe",
        "ticks",
        "--from-start",
        "--count",
        "4",
        "--json",
    ]);
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["encoding"], "base64");
    let data = last["data"].as_str().unwrap();
    assert_eq!(data.len(), blob.len().div_ceil(3) * 4, "the whole message");
}
