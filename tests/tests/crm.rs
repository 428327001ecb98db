//! CRM over real QUIC: three `armillary agent` processes on loopback form a
//! group through the zone tree's directory, send in the three modes from
//! every member while the coordinator is killed, and the histories the
//! `crm join --json` streams print are checked (views agree, view
//! synchrony, one total order, FIFO, no duplication or creation,
//! self-delivery).

use armillary_agent::crm::proto::check::History;
use armillary_agent::crm::proto::{GroupEvent, MemberId, Mode, View};
use armillary_tests::{Processes, armillary_bin, run_cli, start_agents, temp_dir, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn member(zone: &str) -> MemberId {
    MemberId {
        addr: zone.into(),
        inc: 0,
        zone: zone.into(),
    }
}

/// One `crm join --json` stream's lines, as they come.
fn follow(api: u16, lines: Arc<Mutex<Vec<Value>>>) -> std::process::Child {
    let mut child = Command::new(armillary_bin())
        .args([
            "crm",
            "join",
            "g",
            "--json",
            "--api",
            &format!("127.0.0.1:{api}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("crm join runs");
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                lines.lock().expect("lines").push(v);
            }
        }
    });
    child
}

fn view_of(api: u16) -> Option<Value> {
    let out = run_cli(&[
        "crm",
        "view",
        "g",
        "--json",
        "--api",
        &format!("127.0.0.1:{api}"),
    ]);
    serde_json::from_slice(&out.stdout).ok()
}

fn members(v: &Value) -> Vec<String> {
    v["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_group_of_three_agents_stays_synchronous_when_its_coordinator_is_killed() {
    let root = temp_dir("crm-three");
    let zones = ["/z0/a0", "/z1/a1", "/z2/a2"];
    let (mut agents, ports) = start_agents(&root, &zones);
    let ports: Vec<(u16, u16)> = ports.iter().map(|p| (p.gossip, p.api)).collect();
    // The first creates the group; the others find it in the zone tree.
    let streams: Vec<Arc<Mutex<Vec<Value>>>> = (0..3).map(|_| Arc::default()).collect();
    let mut joins = Processes(Vec::new());
    for (_, a) in &ports {
        // An unknown group is bad input (exit 2) once the API answers.
        wait_for("the agents' APIs", || {
            run_cli(&["crm", "view", "g", "--api", &format!("127.0.0.1:{a}")])
                .status
                .code()
                == Some(2)
        });
    }
    joins.0.push(follow(ports[0].1, streams[0].clone()));
    wait_for("the group created", || view_of(ports[0].1).is_some());
    // Its directory entry reaches the others through the zone tree.
    std::thread::sleep(Duration::from_secs(2));
    for i in 1..3 {
        joins.0.push(follow(ports[i].1, streams[i].clone()));
    }
    wait_for("a view of all three", || {
        (0..3).all(|i| view_of(ports[i].1).is_some_and(|v| members(&v).len() == 3))
    });

    let mut hist = History::new();
    let send = |hist: &mut History, i: usize, k: usize| {
        let mode = ["fifo", "total", "safe"][(i + k) % 3];
        let data = format!("m{i}-{k}");
        let out = run_cli(&[
            "crm",
            "send",
            "g",
            &data,
            "--mode",
            mode,
            "--api",
            &format!("127.0.0.1:{}", ports[i].1),
        ]);
        if out.status.success() {
            hist.sent(
                &member(zones[i]),
                Mode::parse(mode).expect("mode"),
                data.as_bytes(),
            );
        }
    };
    for k in 0..8 {
        for i in 0..3 {
            send(&mut hist, i, k);
        }
    }
    // The coordinator dies; the survivors go on sending while the view changes.
    let coordinator = view_of(ports[1].1).expect("view")["coordinator"]
        .as_str()
        .expect("coordinator")
        .to_string();
    let dead = zones
        .iter()
        .position(|z| **z == coordinator)
        .expect("a member");
    let _ = agents.0[dead].kill();
    let _ = agents.0[dead].wait();
    let alive: Vec<usize> = (0..3).filter(|i| *i != dead).collect();
    for k in 8..16 {
        for &i in &alive {
            send(&mut hist, i, k);
        }
    }
    wait_for("a view of the two survivors", || {
        alive
            .iter()
            .all(|&i| view_of(ports[i].1).is_some_and(|v| members(&v).len() == 2))
    });
    for k in 16..20 {
        for &i in &alive {
            send(&mut hist, i, k);
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    drop(joins);

    let mut views = 0;
    for (i, lines) in streams.iter().enumerate() {
        let me = member(zones[i]);
        for v in lines.lock().expect("lines").iter() {
            let ev = match v["type"].as_str() {
                Some("view") => {
                    views += 1;
                    GroupEvent::View {
                        group: "g".into(),
                        view: View {
                            id: v["view_id"].as_u64().expect("id"),
                            members: members(v).iter().map(|z| member(z)).collect(),
                        },
                    }
                }
                Some("msg") => GroupEvent::Deliver {
                    group: "g".into(),
                    view: v["view_id"].as_u64().expect("id"),
                    from: member(v["from"].as_str().expect("from")),
                    mode: Mode::parse(v["mode"].as_str().expect("mode")).expect("mode"),
                    seq: v["seq"].as_u64().expect("seq"),
                    data: v["data"].as_str().expect("text").as_bytes().into(),
                    reply: None,
                },
                _ => continue,
            };
            hist.record(zones[i], &me, &ev);
        }
    }
    let finals: Vec<MemberId> = alive.iter().map(|&i| member(zones[i])).collect();
    let s = hist.check(&finals).unwrap_or_else(|v| panic!("{v}"));
    assert!(s.deliveries >= 2 * s.sent - 24, "{s:?}");
    assert!(s.synchrony_pairs >= 1, "{s:?}");
    assert!(views >= 5, "views seen: {views}");
}
