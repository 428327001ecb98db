//! Protocol properties checked in the deterministic simulator, fixed seeds.

use armillary_agent::sim::{self, NetConfig, Scenario, World, tree};
use armillary_agent::{AfcCert, AfcState, Config, ZonePath};
use std::sync::Arc;
use zone_sql::{Attrs, Value};

const ROUND: u64 = 1_000_000;

fn scenario(agents: usize, branching: usize) -> Scenario {
    Scenario {
        agents,
        branching,
        rounds: 40,
        ..Scenario::default()
    }
}

/// A settled world of `n` agents with the given push mode.
fn world(n: usize, branching: usize, push: bool, loss: f64, seed: u64) -> World {
    let leaves = tree::balanced(n, branching);
    let configs = leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = Config::new(l.clone(), l.as_arc().clone());
            c.push = push;
            c.rng_seed = seed ^ (i as u64 * 7919);
            c.seeds = vec![leaves[(i + 1) % n].as_arc().clone()];
            c
        })
        .collect();
    let mut w = World::new(
        configs,
        NetConfig {
            loss,
            ..NetConfig::default()
        },
        seed,
    );
    for i in 0..n {
        let sensors: Attrs = [("load", Value::Float(i as f64 % 4.0))]
            .into_iter()
            .collect();
        w.set_sensors(i, sensors);
    }
    w.warm_start();
    w
}

fn run_rounds(w: &mut World, rounds: u64) {
    let start = w.now() / ROUND;
    for r in 1..=rounds {
        w.run_until((start + r) * ROUND);
    }
}

fn root_members(w: &World, i: usize) -> i64 {
    match w.agent(i).unwrap().root_row().get("nmembers") {
        Some(Value::Int(n)) => *n,
        _ => -1,
    }
}

#[test]
fn pure_gossip_converges_with_fixed_seed() {
    let mut s = scenario(512, 8);
    s.push = false;
    let r = sim::run(&s, |_, _| {});
    assert!(r.converged, "{r:?}");
    assert_eq!(r.levels, 3);
    let q = r.rounds_to_converge.unwrap();
    assert!(q.max <= 20, "pure gossip took {} rounds", q.max);
    assert!(r.afc_rounds_to_converge.as_ref().unwrap().max <= 20);
}

#[test]
fn push_reaches_every_agent_within_two_rounds() {
    let r = sim::run(&scenario(512, 8), |_, _| {});
    assert!(r.converged, "{r:?}");
    assert!(r.rounds_to_converge.as_ref().unwrap().max <= 2, "{r:?}");
    assert!(r.afc_rounds_to_converge.as_ref().unwrap().max <= 2, "{r:?}");
}

#[test]
fn same_seed_same_result() {
    let mut s = scenario(300, 6);
    s.loss = 0.1;
    s.push = false;
    let a = sim::run(&s, |_, _| {});
    let b = sim::run(&s, |_, _| {});
    assert_eq!(a.rounds_to_converge, b.rounds_to_converge);
    assert_eq!(a.afc_rounds_to_converge, b.afc_rounds_to_converge);
    assert_eq!(a.bytes_per_agent_round, b.bytes_per_agent_round);
    assert_eq!(a.messages_lost, b.messages_lost);
    s.seed = 2;
    let c = sim::run(&s, |_, _| {});
    assert_ne!(a.messages_lost, c.messages_lost);
}

#[test]
fn converges_under_loss_and_crashes() {
    for push in [false, true] {
        let mut s = scenario(512, 8);
        s.loss = 0.15;
        s.crash = 0.08;
        s.push = push;
        s.rounds = 50;
        let r = sim::run(&s, |_, _| {});
        assert!(r.converged, "push {push}: {r:?}");
        assert!(r.crashed > 0);
        assert!(r.messages_lost > 0);
    }
}

#[test]
fn bytes_per_agent_stay_bounded_as_the_system_grows() {
    let small = sim::run(&scenario(256, 16), |_, _| {});
    let large = sim::run(&scenario(4096, 16), |_, _| {});
    // One more level of tables, not sixteen times the traffic.
    assert!(
        large.bytes_per_agent_round.mean < small.bytes_per_agent_round.mean * 2.5,
        "small {:?} large {:?}",
        small.bytes_per_agent_round,
        large.bytes_per_agent_round
    );
}

#[test]
fn failed_agents_disappear_from_every_table() {
    let n = 200;
    let mut w = world(n, 6, false, 0.0, 3);
    run_rounds(&mut w, 3);
    let dead = [5usize, 77, 150];
    for d in dead {
        w.crash(d);
    }
    run_rounds(&mut w, 80);
    let dead_addrs: Vec<Arc<str>> = dead
        .iter()
        .map(|d| {
            w.agent(0)
                .map(|_| ())
                .map(|_| tree::balanced(n, 6)[*d].as_arc().clone())
                .unwrap()
        })
        .collect();
    for i in 0..n {
        let Some(a) = w.agent(i) else { continue };
        for z in a.zones() {
            for row in a.table(z).unwrap() {
                for d in &dead_addrs {
                    assert_ne!(row.zone.as_arc(), d, "agent {i} still lists {d} in {z}");
                    assert!(
                        !row.contacts().contains(d),
                        "agent {i}: {d} still a contact in {z}"
                    );
                    assert_ne!(
                        row.issuer.as_arc(),
                        d,
                        "agent {i}: row issued by {d} in {z}"
                    );
                }
            }
        }
        assert_eq!(root_members(&w, i), (n - dead.len()) as i64, "agent {i}");
    }
}

#[test]
fn partition_between_subtrees_heals() {
    let n = 128;
    let mut w = world(n, 4, false, 0.0, 4);
    let leaves = tree::balanced(n, 4);
    let a = leaves[0].ancestor(1);
    let b = leaves[n - 1].ancestor(1);
    assert_ne!(a, b);
    let in_a = leaves.iter().filter(|l| a.contains(l)).count() as i64;
    w.partition(a.clone(), b.clone());
    run_rounds(&mut w, 60);
    // Each side has dropped the other.
    let in_b = leaves.iter().filter(|l| b.contains(l)).count() as i64;
    assert_eq!(root_members(&w, 0), n as i64 - in_b);
    assert_eq!(root_members(&w, n - 1), n as i64 - in_a);
    w.heal();
    run_rounds(&mut w, 30);
    for i in 0..n {
        assert_eq!(root_members(&w, i), n as i64, "agent {i} after healing");
    }
}

#[test]
fn afc_installed_then_removed_everywhere() {
    let n = 300;
    let mut w = world(n, 6, false, 0.0, 5);
    run_rounds(&mut w, 2);
    // Recursive, as AFCs are: the same query runs at every level.
    let sql = "SELECT MAX(COALESCE(peak, load)) AS peak";
    w.with_agent(42, |a, now| {
        a.install_afc(now, AfcCert::new(ZonePath::root(), "peak", sql, now))
            .unwrap()
    });
    run_rounds(&mut w, 25);
    for i in 0..n {
        let a = w.agent(i).unwrap();
        assert_eq!(
            a.root_row().get("peak"),
            Some(&Value::Float(3.0)),
            "agent {i}"
        );
    }
    w.with_agent(7, |a, now| {
        a.remove_afc(now, &ZonePath::root(), "peak").unwrap()
    });
    run_rounds(&mut w, 25);
    for i in 0..n {
        let a = w.agent(i).unwrap();
        assert_eq!(a.root_row().get("peak"), None, "agent {i}");
        assert_eq!(
            a.afcs().get(&ZonePath::root(), "peak").unwrap().state,
            AfcState::Removed
        );
    }
}

#[test]
fn afc_scoped_to_a_subtree_applies_only_there() {
    let n = 200;
    let mut w = world(n, 6, true, 0.0, 6);
    let leaves = tree::balanced(n, 6);
    let scope = leaves[0].ancestor(1);
    let inside = leaves
        .iter()
        .position(|l| scope.contains(l) && *l != leaves[0])
        .unwrap();
    w.with_agent(inside, |a, now| {
        a.install_afc(
            now,
            AfcCert::new(scope.clone(), "cnt", "SELECT COUNT(*) AS nrows", now),
        )
        .unwrap()
    });
    run_rounds(&mut w, 25);
    for (i, leaf) in leaves.iter().enumerate().take(n) {
        let a = w.agent(i).unwrap();
        let zone_row = a.zone_row(&leaf.ancestor(1)).unwrap();
        assert_eq!(
            zone_row.get("nrows").is_some(),
            scope.contains(leaf),
            "agent {i}"
        );
        assert!(a.root_row().get("nrows").is_none());
    }
}

#[test]
fn restarted_agent_keeps_afcs_and_attributes_and_rejoins() {
    let n = 64;
    let mut w = world(n, 4, true, 0.0, 7);
    w.with_agent(10, |a, now| {
        a.set_attr(now, "role", Value::from("db")).unwrap();
        a.install_afc(
            now,
            AfcCert::new(
                ZonePath::root(),
                "roles",
                "SELECT SUM(CASE WHEN role = 'db' THEN 1 ELSE COALESCE(dbs, 0) END) AS dbs",
                now,
            ),
        )
        .unwrap();
    });
    run_rounds(&mut w, 10);
    w.crash(10);
    run_rounds(&mut w, 2);
    w.restart(10);
    run_rounds(&mut w, 30);
    let a = w.agent(10).unwrap();
    assert_eq!(a.local_attrs().get("role"), Some(&Value::from("db")));
    assert_eq!(a.root_row().get("dbs"), Some(&Value::Int(1)));
    assert_eq!(root_members(&w, 10), n as i64);
    assert_eq!(root_members(&w, 0), n as i64);
}

#[test]
fn cold_start_joins_through_seeds() {
    let mut s = scenario(256, 8);
    s.cold = true;
    s.change_round = 30;
    s.afc_round = 30;
    s.rounds = 60;
    let r = sim::run(&s, |_, _| {});
    assert!(r.converged, "{r:?}");
}

/// A report without the figures that measure the machine rather than the run.
fn outcome(r: &sim::Report) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    let o = v.as_object_mut().unwrap();
    for k in ["peak_rss_mb", "wall_s", "agent_rounds_per_sec", "threads"] {
        assert!(o.remove(k).is_some(), "report lacks {k}");
    }
    v
}

#[test]
fn thread_count_does_not_change_the_result() {
    let mut s = scenario(700, 8);
    // Long latency: windows large enough to be shared between threads.
    s.latency = (40_000, 90_000);
    s.loss = 0.1;
    s.crash = 0.05;
    s.push = false;
    s.rounds = 30;
    s.threads = 1;
    let one = sim::run(&s, |_, _| {});
    assert_eq!(one.threads, 1);
    for threads in [2, 3] {
        s.threads = threads;
        let many = sim::run(&s, |_, _| {});
        assert_eq!(many.threads, threads);
        assert_eq!(outcome(&one), outcome(&many), "{threads} threads");
    }
    // Large enough for the settled start to be built on several threads.
    let mut s = scenario(1100, 16);
    s.rounds = 12;
    s.threads = 1;
    let one = sim::run(&s, |_, _| {});
    s.threads = 2;
    assert_eq!(outcome(&one), outcome(&sim::run(&s, |_, _| {})));
    // With push, and from a cold start.
    let mut s = scenario(300, 6);
    s.cold = true;
    s.rounds = 25;
    s.change_round = 15;
    s.afc_round = 15;
    s.threads = 1;
    let one = sim::run(&s, |_, _| {});
    s.threads = 2;
    assert_eq!(outcome(&one), outcome(&sim::run(&s, |_, _| {})));
}

/// Every agent's counters and root row after a run with crashes, a restart,
/// a partition and an attribute change.
fn world_trace(threads: usize, latency: (u64, u64)) -> (Vec<String>, u64, u64) {
    let n = 150;
    let leaves = tree::balanced(n, 5);
    let configs = leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = Config::new(l.clone(), l.as_arc().clone());
            c.push = i % 2 == 0;
            c.rng_seed = 11 ^ (i as u64 * 7919);
            c.seeds = vec![leaves[(i + 1) % n].as_arc().clone()];
            c
        })
        .collect();
    let mut w = World::new(
        configs,
        NetConfig {
            loss: 0.05,
            latency,
        },
        11,
    );
    w.set_threads(threads);
    // Share even the smallest windows between threads.
    w.set_parallel_min_events(0);
    assert_eq!(w.threads(), threads);
    for i in 0..n {
        let sensors: Attrs = [("load", Value::Float(i as f64 % 5.0))]
            .into_iter()
            .collect();
        w.set_sensors(i, sensors);
    }
    w.warm_start();
    run_rounds(&mut w, 3);
    w.crash(17);
    w.crash(90);
    w.partition(leaves[0].ancestor(1), leaves[n - 1].ancestor(1));
    w.with_agent(33, |a, now| {
        a.set_attr(now, "probe", Value::Int(7)).unwrap()
    });
    // Stop between round boundaries too.
    w.run_until(w.now() + 2_345_678);
    w.restart(17);
    run_rounds(&mut w, 4);
    w.heal();
    run_rounds(&mut w, 5);
    let per_agent = (0..n)
        .map(|i| match w.agent(i) {
            Some(a) => format!("{:?} {:?}", a.stats(), a.root_row()),
            None => "dead".to_string(),
        })
        .collect();
    (per_agent, w.net_stats.sent, w.net_stats.lost)
}

#[test]
fn world_runs_the_same_on_any_number_of_threads() {
    for latency in [(5_000, 50_000), (0, 20_000), (30_000, 30_000)] {
        let one = world_trace(1, latency);
        assert!(one.1 > 0 && one.2 > 0, "{latency:?}");
        for threads in [2, 4] {
            let many = world_trace(threads, latency);
            assert_eq!(
                one.1, many.1,
                "{latency:?} {threads} threads: messages sent"
            );
            assert_eq!(
                one.2, many.2,
                "{latency:?} {threads} threads: messages lost"
            );
            for (i, (a, b)) in one.0.iter().zip(&many.0).enumerate() {
                assert_eq!(a, b, "{latency:?} {threads} threads: agent {i}");
            }
        }
    }
}
