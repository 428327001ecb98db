//! EVN over real QUIC, through the binary as users drive it: four agents in
//! two zones. Events published to a zone reach every subscriber in it once
//! and nobody outside; every fault exits 2 with its WS-Eventing name;
//! nothing is delivered after an Unsubscribe is answered or after expiry;
//! Renew sets the expiry exactly; a failing push endpoint gets one
//! DeliveryFailure end; a condition fires and clears once per transition,
//! names a stopped agent that no longer answers; a restarted agent keeps
//! its subscriptions and conditions and delivers nothing twice.

use armillary_tests::{
    Ports, Processes, armillary_bin, root_members, run_cli, run_ok, spawn_insecure, start_agents,
    temp_dir, wait_for,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const ZONES: [&str; 4] = ["/a/h0", "/a/h1", "/b/h2", "/b/h3"];

/// The command exited 2 and named `fault`.
fn faults(out: &Output, fault: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.contains(fault), "expected {fault} in: {err}");
}

/// One request to the agent's API; gives the status and the JSON body.
fn http(api: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(api).expect("the API answers");
    let body = body.to_string();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {api}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// An `evn subscribe --json` process and the lines it printed.
struct Subscriber {
    child: Child,
    id: String,
    lines: Receiver<Value>,
    got: Vec<Value>,
}

impl Subscriber {
    fn start(api: &str, extra: &[&str]) -> Subscriber {
        let mut child = Command::new(armillary_bin())
            .args(["evn", "subscribe", "--json", "--api", api])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("subscribe runs");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        err.read_line(&mut first).unwrap();
        let id = first
            .trim()
            .strip_prefix("subscription ")
            .unwrap_or_else(|| panic!("expected `subscription ID`, got {first:?}"))
            .to_string();
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let v: Value = serde_json::from_str(&l).expect("one JSON object per line");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Subscriber {
            child,
            id,
            lines,
            got: Vec::new(),
        }
    }

    /// Takes what has been printed, waiting up to `for_` for more.
    fn drain(&mut self, for_: Duration) -> &[Value] {
        let end = Instant::now() + for_;
        while let Ok(v) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            self.got.push(v);
        }
        &self.got
    }

    /// Events printed so far with topic `t`.
    fn topic(&self, t: &str) -> Vec<&Value> {
        self.got
            .iter()
            .filter(|v| v["type"] == "event" && v["topic"] == t)
            .collect()
    }

    /// Waits until `n` events of topic `t` are in; false after a minute.
    fn wait_topic(&mut self, t: &str, n: usize) -> bool {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            if self.topic(t).len() >= n {
                return true;
            }
            self.drain(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts each id's occurrences among `events`.
fn counts(events: &[&Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e["id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    m
}

/// A push endpoint on loopback: keeps every JSON body posted to it and
/// answers each with `status`.
struct Endpoint {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Endpoint {
    fn start(status: u16) -> Endpoint {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/notify", l.local_addr().unwrap());
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let b = bodies.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                let b = b.clone();
                std::thread::spawn(move || serve(conn, status, &b));
            }
        });
        Endpoint { url, bodies }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn of_type(&self, t: &str) -> Vec<Value> {
        self.bodies()
            .into_iter()
            .filter(|v| v["type"] == t)
            .collect()
    }
}

/// Answers HTTP/1.1 requests on one connection until it closes.
fn serve(conn: TcpStream, status: u16, bodies: &Mutex<Vec<Value>>) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(v) = serde_json::from_slice(&body) {
            bodies.lock().unwrap().push(v);
        }
        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn publish(api: &str, zone: &str, topic: &str, data: &Value) -> String {
    let out = run_ok(&[
        "evn",
        "publish",
        zone,
        "--topic",
        topic,
        "--data",
        &data.to_string(),
        "--api",
        api,
    ]);
    out.split_whitespace()
        .nth(1)
        .expect("published ID to ZONE")
        .to_string()
}

fn time_of(e: &Value) -> SystemTime {
    humantime::parse_rfc3339(e["time"].as_str().expect("an event time")).expect("RFC 3339")
}

/// Publishes `tick` events from `api` to `/` every 50 ms until dropped.
struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Ticker {
    fn start(api: String) -> Ticker {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let _ = run_cli(&[
                    "evn",
                    "publish",
                    "/",
                    "--topic",
                    "tick",
                    "--data",
                    &json!({ "n": n }).to_string(),
                    "--api",
                    &api,
                ]);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Ticker(stop)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn condition(api: &str, name: &str) -> Option<Value> {
    let out = run_cli(&["evn", "condition", "list", "--json", "--api", api]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find(|c| c["name"] == name).cloned()
}

#[test]
fn events_subscriptions_and_conditions_over_quic() {
    let root = temp_dir("evn");
    let (mut agents, ports) = start_agents(&root, &ZONES);
    let api: Vec<String> = ports.iter().map(|p| p.api_addr()).collect();
    wait_for("every agent counts four members", || {
        api.iter().all(|a| root_members(a) == Some(4))
    });

    faults_are_named(&api[0]);

    // Scoped delivery: every subscriber in the scope once, none outside.
    let mut subs: Vec<Subscriber> = api
        .iter()
        .map(|a| Subscriber::start(a, &["--filter", "topic LIKE 'deploy%'"]))
        .collect();
    let ids_a: Vec<String> = (0..5)
        .map(|i| publish(&api[2], "/a", "deploy/a", &json!({"i": i})))
        .collect();
    let ids_all: Vec<String> = (0..5)
        .map(|i| publish(&api[1], "/", "deploy/all", &json!({"i": i, "who": "ops"})))
        .collect();
    publish(&api[0], "/", "other", &json!({}));
    for (i, s) in subs.iter_mut().enumerate() {
        assert!(s.wait_topic("deploy/all", 5), "agent {i}: {:?}", s.got);
        if i < 2 {
            assert!(s.wait_topic("deploy/a", 5), "agent {i}: {:?}", s.got);
        }
    }
    // Time for anti-entropy to bring any duplicate.
    std::thread::sleep(Duration::from_secs(2));
    for (i, s) in subs.iter_mut().enumerate() {
        s.drain(Duration::from_millis(100));
        let all = counts(&s.topic("deploy/all"));
        assert_eq!(all.len(), 5, "agent {i}");
        assert!(all.values().all(|&n| n == 1), "agent {i}: {all:?}");
        assert!(ids_all.iter().all(|id| all.contains_key(id)));
        let scoped = counts(&s.topic("deploy/a"));
        if i < 2 {
            assert_eq!(scoped.len(), 5, "agent {i}");
            assert!(scoped.values().all(|&n| n == 1), "agent {i}: {scoped:?}");
            assert!(ids_a.iter().all(|id| scoped.contains_key(id)));
        } else {
            assert!(scoped.is_empty(), "outside /a, agent {i} got {scoped:?}");
        }
        assert!(
            s.topic("other").is_empty(),
            "the filter let `other` through"
        );
        let e = s.topic("deploy/all")[0];
        for k in ["id", "topic", "zone", "origin", "time", "data"] {
            assert!(!e[k].is_null(), "an event without {k}: {e}");
        }
        assert_eq!(e["origin"], "/a/h1");
    }
    drop(subs);

    lifetimes(&api);
    conditions_and_restart(&root, &mut agents, &ports, &api);
}

/// Every fault exits 2 with its name; oversized payloads and bad SQL too.
fn faults_are_named(api: &str) {
    let sub = |extra: &[&str]| {
        let mut args = vec!["evn", "subscribe", "--api", api];
        args.extend(extra);
        run_cli(&args)
    };
    faults(&sub(&["--expires", "soon"]), "InvalidExpirationTime");
    faults(&sub(&["--expires=-PT5M"]), "InvalidExpirationTime");
    faults(
        &sub(&["--expires", "2001-01-01T00:00:00Z"]),
        "InvalidExpirationTime",
    );
    faults(&sub(&["--expires", "P1Y"]), "UnsupportedExpirationType");
    faults(&sub(&["--filter", "topic = "]), "CannotProcessFilter");
    faults(&sub(&["--filter", "COUNT(*) > 1"]), "FilteringNotSupported");
    faults(
        &sub(&["--filter", "topic IN (SELECT 1)"]),
        "FilteringNotSupported",
    );
    faults(
        &sub(&["--notify-to", "ftp://example.invalid/x"]),
        "DeliveryModeRequestedUnavailable",
    );
    faults(&sub(&["--zone", "not a zone"]), "InvalidMessage");
    faults(
        &run_cli(&["evn", "renew", "nope", "--expires", "10m", "--api", api]),
        "UnableToRenew",
    );
    let gone = run_cli(&["evn", "status", "nope", "--api", api]);
    faults(&gone, "UnknownSubscription");
    // What only the API can say.
    for (body, fault) in [
        (
            json!({"filter": {"dialect": "xpath", "expr": "/a"}}),
            "FilteringRequestedUnavailable",
        ),
        (json!({"expires": true}), "UnsupportedExpirationType"),
        (
            json!({"delivery": {"mode": "carrier-pigeon"}}),
            "DeliveryModeRequestedUnavailable",
        ),
        (json!({"colour": 1}), "InvalidMessage"),
    ] {
        let (code, v) = http(api, "POST", "/v1/evn/subscriptions", &body);
        assert_eq!((code, v["fault"].as_str()), (400, Some(fault)), "{body}");
    }

    // An oversized payload is refused where it is made, with the limit.
    let big = json!({ "blob": "x".repeat(9 * 1024) }).to_string();
    let out = run_cli(&[
        "evn", "publish", "/", "--topic", "t", "--data", &big, "--api", api,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("8192"));
    let out = run_cli(&[
        "evn",
        "publish",
        "/",
        "--topic",
        "t",
        "--data",
        "{not json",
        "--api",
        api,
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Bad SQL in a condition.
    for sql in ["DELETE FROM conns", "SELEC 1"] {
        let out = run_cli(&[
            "evn",
            "condition",
            "add",
            "bad",
            "--zone",
            "/",
            "--sql",
            sql,
            "--api",
            api,
        ]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
}

/// Expiry, Unsubscribe and Renew, with events published all the while,
/// and a push endpoint that keeps failing.
fn lifetimes(api: &[String]) {
    let _ticks = Ticker::start(api[0].clone());

    // Expiry: the stream ends with `Expired`; nothing published after the
    // expiry (plus 50 ms) is delivered, and nothing after the end.
    let mut s = Subscriber::start(&api[2], &["--expires", "3s", "--filter", "topic = 'tick'"]);
    let st: Value = serde_json::from_str(&run_ok(&[
        "evn", "status", &s.id, "--json", "--api", &api[2],
    ]))
    .unwrap();
    let expires = humantime::parse_rfc3339(st["expires"].as_str().unwrap()).unwrap();
    let status = s.child.wait().expect("subscribe ends at expiry");
    assert!(status.success());
    s.drain(Duration::from_millis(300));
    let last = s.got.last().expect("an end record");
    assert_eq!(
        (&last["type"], &last["reason"]),
        (&json!("end"), &json!("Expired"))
    );
    let ticks = s.topic("tick");
    assert!(!ticks.is_empty(), "no tick reached the subscriber");
    let late = expires + Duration::from_millis(50);
    assert!(
        ticks.iter().all(|e| time_of(e) <= late),
        "delivered after the expiry: {ticks:?}"
    );
    faults(
        &run_cli(&["evn", "status", &s.id, "--api", &api[2]]),
        "UnknownSubscription",
    );

    // Unsubscribe: once answered, nothing more.
    let mut s = Subscriber::start(&api[3], &["--filter", "topic = 'tick'"]);
    assert!(s.wait_topic("tick", 3));
    run_ok(&["evn", "unsubscribe", &s.id, "--api", &api[3]]);
    let answered = SystemTime::now();
    s.child.wait().expect("the stream ends");
    s.drain(Duration::from_millis(300));
    let last = s.got.last().unwrap();
    assert_eq!(
        (&last["type"], &last["reason"]),
        (&json!("end"), &json!("Unsubscribed"))
    );
    let ticks = s.topic("tick");
    assert!(
        ticks.iter().all(|e| time_of(e) < answered),
        "delivered after the unsubscribe was answered: {ticks:?}"
    );
    faults(
        &run_cli(&["evn", "unsubscribe", &s.id, "--api", &api[3]]),
        "UnknownSubscription",
    );

    // Renew sets the expiry exactly as given.
    let s = Subscriber::start(&api[1], &["--expires", "10m"]);
    let at =
        humantime::format_rfc3339_micros(SystemTime::now() + Duration::from_secs(3600)).to_string();
    let r: Value = serde_json::from_str(&run_ok(&[
        "evn",
        "renew",
        &s.id,
        "--expires",
        &at,
        "--json",
        "--api",
        &api[1],
    ]))
    .unwrap();
    assert_eq!(r["expires"], json!(at));
    let st: Value = serde_json::from_str(&run_ok(&[
        "evn", "status", &s.id, "--json", "--api", &api[1],
    ]))
    .unwrap();
    assert_eq!(st["expires"], json!(at));
    let r: Value = serde_json::from_str(&run_ok(&[
        "evn",
        "renew",
        &s.id,
        "--expires",
        "PT30M",
        "--json",
        "--api",
        &api[1],
    ]))
    .unwrap();
    let left = r["expires_in_ms"].as_u64().unwrap();
    assert!(left <= 1_800_000 && left > 1_700_000, "{r}");
    run_ok(&["evn", "unsubscribe", &s.id, "--api", &api[1]]);

    // A push endpoint that always fails: retried, then one DeliveryFailure.
    let failing = Endpoint::start(500);
    let id = run_ok(&[
        "evn",
        "subscribe",
        "--filter",
        "topic = 'tick'",
        "--notify-to",
        &failing.url,
        "--api",
        &api[2],
    ])
    .trim()
    .to_string();
    wait_for("the push subscription to end", || {
        !failing.of_type("end").is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    let ends = failing.of_type("end");
    assert_eq!(ends.len(), 1, "{ends:?}");
    assert_eq!(ends[0]["reason"], "DeliveryFailure");
    assert_eq!(ends[0]["id"], json!(id));
    let tries = failing.of_type("event").len();
    assert!(tries >= 5, "the push was tried {tries} times");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        failing.of_type("event").len(),
        tries,
        "pushed after the end"
    );
    faults(
        &run_cli(&["evn", "status", &id, "--api", &api[2]]),
        "UnknownSubscription",
    );
}

fn put_table(api: &str, failed: i64) {
    run_ok(&[
        "evn",
        "table",
        "put",
        "conns",
        "--rows",
        &json!([{ "peer": "x", "failed": failed }]).to_string(),
        "--api",
        api,
    ]);
}

/// A condition over the four agents; a stopped one named; a restarted one
/// keeps its subscriptions and conditions and delivers nothing twice.
fn conditions_and_restart(root: &Path, agents: &mut Processes, ports: &[Ports], api: &[String]) {
    for (i, a) in api.iter().enumerate() {
        put_table(a, if i % 2 == 0 { 10 } else { 1 });
    }
    let mut watch = Subscriber::start(&api[3], &["--filter", "topic = 'condition/conns'"]);
    run_ok(&[
        "evn",
        "condition",
        "add",
        "conns",
        "--zone",
        "/",
        "--sql",
        "SELECT COUNT(*) > 0 AS hit FROM conns WHERE failed > 5",
        "--min",
        "2",
        "--api",
        &api[0],
    ]);
    assert!(watch.wait_topic("condition/conns", 1), "{:?}", watch.got);
    let fired = watch.topic("condition/conns")[0].clone();
    assert_eq!(fired["data"]["state"], "firing", "{fired}");
    assert_eq!(fired["data"]["expected"], 4);
    wait_for("all four to contribute", || {
        condition(&api[2], "conns").is_some_and(|c| c["contributors"] == 4 && c["hits"] == 2)
    });
    // One fewer hit: cleared, once.
    put_table(&api[2], 0);
    assert!(watch.wait_topic("condition/conns", 2), "{:?}", watch.got);
    std::thread::sleep(Duration::from_secs(2));
    watch.drain(Duration::from_millis(100));
    let states: Vec<&Value> = watch
        .topic("condition/conns")
        .iter()
        .map(|e| &e["data"]["state"])
        .collect();
    assert_eq!(states, [&json!("firing"), &json!("cleared")]);

    // Subscriptions at agent 1 before its restart: a stream and a push.
    let pushed = Endpoint::start(200);
    let push_id = run_ok(&[
        "evn",
        "subscribe",
        "--filter",
        "topic LIKE 'restart/%'",
        "--notify-to",
        &pushed.url,
        "--api",
        &api[1],
    ])
    .trim()
    .to_string();
    let mut stream = Subscriber::start(&api[1], &["--filter", "topic LIKE 'restart/%'"]);
    let before = publish(&api[0], "/", "restart/before", &json!({}));
    assert!(stream.wait_topic("restart/before", 1));
    wait_for("the push before the restart", || {
        pushed.of_type("event").len() == 1
    });

    // Agent 3 stops: once its answer is too old it is named, and the
    // condition still answers for the rest.
    let _ = agents.0[3].kill();
    let _ = agents.0[3].wait();
    wait_for("the stopped agent named as not contributing", || {
        condition(&api[0], "conns").is_some_and(|c| {
            c["contributors"] == 3 && c["expected"] == 4 && c["missing"] == json!(["/b/h3"])
        })
    });

    // Agent 1 restarts from its data directory.
    let _ = agents.0[1].kill();
    let _ = agents.0[1].wait();
    agents.0[1] = spawn_insecure(ZONES[1], &ports[1], Some(&ports[0]), &root.join("d1"));
    wait_for("the restarted agent's API", || {
        root_members(&api[1]).is_some()
    });
    let st: Value = serde_json::from_str(&run_ok(&[
        "evn", "status", &push_id, "--json", "--api", &api[1],
    ]))
    .unwrap();
    assert_eq!(st["delivery"]["mode"], "push");
    assert!(
        condition(&api[1], "conns").is_some(),
        "the condition is gone"
    );
    let after = publish(&api[0], "/", "restart/after", &json!({}));
    assert!(stream.wait_topic("restart/after", 1), "{:?}", stream.got);
    wait_for("the push after the restart", || {
        pushed.of_type("event").len() >= 2
    });
    // Anti-entropy offers `before` again to the restarted agent: it was
    // delivered already and is not delivered twice.
    std::thread::sleep(Duration::from_secs(3));
    stream.drain(Duration::from_millis(100));
    let ev = pushed.of_type("event");
    let ids: Vec<&str> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [before.as_str(), after.as_str()]);
    let s = counts(&stream.topic("restart/before"));
    assert_eq!(s.values().copied().collect::<Vec<_>>(), [1], "{s:?}");
    assert_eq!(stream.topic("restart/after").len(), 1);
}

/// Every agent evaluates conditions, not only those serving an API: four
/// agents in one process, one API-less handle each, all contribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_of_a_cluster_contributes() {
    use armillary_agent::ZonePath;
    use armillary_agent::evn::{self, proto::Condition};
    let c = armillary_tests::cluster(4, 2, false).await;
    for (i, _) in c.live() {
        evn::put_table(&c.handle(i), "conns".into(), r#"[{"failed":9}]"#.into())
            .await
            .expect("table put");
    }
    let cond = Condition::new(
        "all",
        ZonePath::root(),
        "SELECT COUNT(*) > 0 AS hit FROM conns WHERE failed > 5",
        4,
    );
    evn::with_evn(&c.handle(0), move |e, mut z, _, _| {
        Ok(e.add_condition(&mut z, cond)?)
    })
    .await
    .expect("condition added");
    let mut answered = false;
    for _ in 0..600 {
        let a = evn::with_evn(&c.handle(3), |e, _, _, _| {
            Ok(e.conditions()
                .find(|(c, _)| &*c.name == "all")
                .and_then(|(_, st)| st?.answer.clone()))
        })
        .await
        .expect("reads");
        if a.is_some_and(|a| a.contributors == 4 && a.hits == 4 && a.value) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "not every agent contributed");
    armillary_tests::finish(c).await;
}
