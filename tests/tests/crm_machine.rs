//! A replicated service run by external processes, over real QUIC: three
//! agents serve a group with `crm serve --external`, each with a counter
//! run by `armillary crm machine` as a separate command (a Python
//! program reading JSON lines), and four clients send 600 additions
//! through `armillary crm request` with every member as an endpoint while
//! the member they all use is killed halfway. Every addition is
//! acknowledged once with a distinct count, the total is their number, and
//! the killed agent, restarted empty, gets the state from the group (the
//! state its process last handed over and the requests after it).

use armillary_tests::{
    api_list, run_cli, spawn_insecure, start_agents, temp_dir, until_apis, wait_for,
};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The service: a counter. `add N` adds, anything else reads; it hands
/// its state over every 100 requests and whenever asked.
const COUNTER: &str = r#"
import json, sys
n, last = 0, 0
for line in sys.stdin:
    e = json.loads(line)
    if e["type"] == "restore":
        n, last = int(e["state"] or 0), e["at"]
    elif e["type"] == "apply":
        op = e["op"].split()
        if op[0] == "add":
            n += int(op[1])
        last = e["at"]
        print(json.dumps({"at": last, "reply": str(n)}), flush=True)
        if last % 100 == 0:
            print(json.dumps({"at": last, "state": str(n)}), flush=True)
    elif e["type"] == "snapshot":
        print(json.dumps({"at": last, "state": str(n)}), flush=True)
"#;

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 150;

fn bridge(api: &str, script: &Path) -> Child {
    Command::new(armillary_tests::armillary_bin())
        .args(["crm", "machine", "g", "--api", api, "--", "python3"])
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the bridge runs")
}

fn request(endpoints: &str, op: &str) -> Option<String> {
    let out = run_cli(&[
        "crm",
        "request",
        "g",
        op,
        "--json",
        "--endpoints",
        endpoints,
    ]);
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["reply"].as_str().map(str::to_string)
}

fn serve(api: &str, contact: Option<&str>) {
    let mut args = vec!["crm", "serve", "g", "--external", "--json", "--api", api];
    if let Some(c) = contact {
        args.extend(["--contacts", c]);
    }
    let out = run_cli(&args);
    assert!(
        out.status.success(),
        "serve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_external_counter_counts_each_request_once_while_its_member_is_killed() {
    let root = temp_dir("crm-machine");
    std::fs::create_dir_all(&root).expect("a test directory");
    let script = root.join("counter.py");
    std::fs::write(&script, COUNTER).expect("script written");
    let (mut agents, ports) = start_agents(&root, &["/z0/a0", "/z1/a1", "/z2/a2"]);
    until_apis(&ports);
    let contact = ports[0].gossip_addr();
    for (i, p) in ports.iter().enumerate() {
        serve(&p.api_addr(), (i > 0).then_some(contact.as_str()));
    }
    // Bad input is refused before any request.
    let a0 = ports[0].api_addr();
    assert_eq!(
        run_cli(&["crm", "serve", "g", "--api", &a0]).status.code(),
        Some(2)
    );
    assert_eq!(
        run_cli(&["crm", "machine", "g", "--api", &a0])
            .status
            .code(),
        Some(2),
        "a machine needs a command"
    );
    assert_eq!(
        run_cli(&["crm", "request", "no/such", "x", "--api", &a0])
            .status
            .code(),
        Some(2)
    );
    // The built-in store's requests are not the external service's.
    let kv = run_cli(&["crm", "kv", "g", "get", "k", "--api", &a0]);
    assert_eq!(kv.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&kv.stderr).contains("not served by"),
        "{}",
        String::from_utf8_lossy(&kv.stderr)
    );

    let mut bridges: Vec<Child> = ports
        .iter()
        .map(|p| bridge(&p.api_addr(), &script))
        .collect();
    let all = api_list(&ports);
    let survivors = api_list(&ports[1..]);
    let done = Arc::new(AtomicUsize::new(0));
    let replies = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (all, done, replies) = (all.clone(), done.clone(), replies.clone());
            std::thread::spawn(move || {
                for _ in 0..PER_CLIENT {
                    let r = request(&all, "add 1");
                    replies.lock().expect("lock").push(r);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // Halfway, the member every client uses first dies, with its process.
    wait_for("half the additions", || {
        done.load(Ordering::SeqCst) >= CLIENTS * PER_CLIENT / 2
    });
    let _ = agents.0[0].kill();
    let _ = agents.0[0].wait();
    let _ = bridges[0].kill();
    for c in clients {
        c.join().expect("a client");
    }
    let mut counts: Vec<i64> = replies
        .lock()
        .expect("lock")
        .iter()
        .map(|r| {
            r.as_deref()
                .expect("every addition is acknowledged")
                .parse()
                .expect("a count")
        })
        .collect();
    counts.sort();
    let total = (CLIENTS * PER_CLIENT) as i64;
    assert_eq!(counts, (1..=total).collect::<Vec<_>>(), "each ran once");
    assert_eq!(
        request(&survivors, "get").as_deref(),
        Some(total.to_string().as_str())
    );

    // Restarted empty, the agent serves again and its new process starts
    // from the group's state.
    agents.0[0] = spawn_insecure("/z0/a0", &ports[0], Some(&ports[1]), &root.join("d0"));
    wait_for("the restarted agent's API", || {
        run_cli(&["crm", "view", "g", "--api", &a0]).status.code() == Some(2)
    });
    serve(&a0, Some(&ports[1].gossip_addr()));
    bridges[0] = bridge(&a0, &script);
    assert_eq!(
        request(&a0, "get").as_deref(),
        Some(total.to_string().as_str()),
        "the joiner's process has the group's count"
    );
    for mut b in bridges {
        let _ = b.kill();
        let _ = b.wait();
    }
}
