//! Protocol properties checked in the deterministic simulator, fixed seeds.

use armillary_proto::sim::{self, NetConfig, Scenario, World, tree};
use armillary_proto::{AfcCert, AfcState, Config, ZonePath};
use std::sync::Arc;
use zone_sql::{Attrs, Value};

const ROUND: u64 = 1_000_000;

// Bounds a little above the values measured with these seeds: pure gossip
// p50 6, max 8 (AFC max 7); under 15% loss and 8% crashed, max 11 without
// push and 8 with; bytes per agent and round x1.32 from 1,000 to 4,000.
const PURE_GOSSIP_P50: u64 = 7;
const PURE_GOSSIP_MAX: u64 = 10;
const LOSSY_GOSSIP_MAX: u64 = 15;
const LOSSY_PUSH_MAX: u64 = 10;
const BYTES_RATIO_1K_4K: f64 = 1.5;

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
    assert!(r.converged && r.stable, "{r:?}");
    assert_eq!(r.levels, 3);
    let q = r.rounds_to_converge.unwrap();
    assert!(q.max <= PURE_GOSSIP_MAX, "pure gossip took {q:?}");
    assert!(q.p50 <= PURE_GOSSIP_P50, "pure gossip took {q:?}");
    let afc = r.afc_rounds_to_converge.unwrap();
    assert!(afc.max <= PURE_GOSSIP_MAX, "the AFC took {afc:?}");
}

#[test]
fn push_reaches_every_agent_within_two_rounds() {
    let r = sim::run(&scenario(512, 8), |_, _| {});
    assert!(r.converged && r.stable, "{r:?}");
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
    assert_eq!(outcome(&a), outcome(&b));
    s.seed = 2;
    let c = sim::run(&s, |_, _| {});
    assert_ne!(a.messages_lost, c.messages_lost);
}

#[test]
fn converges_under_loss_and_crashes_within_bounds() {
    for (push, max) in [(false, LOSSY_GOSSIP_MAX), (true, LOSSY_PUSH_MAX)] {
        let mut s = scenario(512, 8);
        s.loss = 0.15;
        s.crash = 0.08;
        s.push = push;
        s.rounds = 50;
        let r = sim::run(&s, |_, _| {});
        assert!(r.converged && r.stable, "push {push}: {r:?}");
        // Crashed at the change round: 8% dead when the change happens.
        assert_eq!(r.crash_round, Some(s.change_round));
        assert_eq!(r.crashed, 41);
        assert!(r.messages_lost > 0);
        let q = r.rounds_to_converge.as_ref().unwrap();
        assert!(q.max <= max, "push {push}: {q:?}");
        // The new AFC's correct value counts the live agents only, which
        // takes the failure timeout to settle.
        assert!(r.afc_rounds_to_converge.is_some(), "push {push}: {r:?}");
    }
}

#[test]
fn bytes_per_agent_stay_bounded_as_the_system_grows() {
    let mut s = scenario(1000, 16);
    s.rounds = 20;
    let small = sim::run(&s, |_, _| {});
    s.agents = 4000;
    let large = sim::run(&s, |_, _| {});
    assert_eq!((small.levels, large.levels), (3, 3));
    // Four times the agents, the same depth: about the same bytes per agent.
    let ratio = large.bytes_per_agent_round.mean / small.bytes_per_agent_round.mean;
    assert!(
        ratio < BYTES_RATIO_1K_4K,
        "x{ratio:.2}: small {:?} large {:?}",
        small.bytes_per_agent_round,
        large.bytes_per_agent_round
    );
    // Real encoding: a leaf's digest alone is dozens of bytes.
    assert!(small.bytes_per_agent_round.mean > 500.0, "{small:?}");
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

/// Runs `s` on one thread and on each of `threads`: the same outcome.
fn same_on_threads(mut s: Scenario, threads: &[usize]) {
    s.threads = 1;
    let one = sim::run(&s, |_, _| {});
    assert_eq!(one.threads, 1);
    for &t in threads {
        s.threads = t;
        let many = sim::run(&s, |_, _| {});
        assert_eq!(many.threads, t);
        assert_eq!(outcome(&one), outcome(&many), "{t} threads");
    }
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
    same_on_threads(s, &[2, 3]);
    // Large enough for the settled start to be built on several threads.
    let mut s = scenario(1100, 16);
    s.rounds = 12;
    same_on_threads(s, &[2]);
    // Secure, skewed clocks, churn and typical AFCs.
    let mut s = scenario(300, 6);
    s.secure = true;
    s.skew_ms = 1500;
    s.churn = 0.2;
    s.afcs = 3;
    s.loss = 0.05;
    s.rounds = 15;
    same_on_threads(s, &[2]);
    // With push, and from a cold start.
    let mut s = scenario(300, 6);
    s.cold = true;
    s.rounds = 25;
    s.change_round = 15;
    s.afc_round = 15;
    same_on_threads(s, &[2]);
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

#[test]
fn restart_after_the_failure_timeout_rejoins_everywhere_and_stays() {
    let n = 64;
    let mut w = world(n, 4, false, 0.0, 8);
    run_rounds(&mut w, 3);
    let gone = 21;
    let cfg = w.agent(gone).unwrap().config().clone();
    // The largest failure timeout any table of this world uses.
    let t_fail = cfg.fail_timeout(n as u64) / ROUND;
    w.crash(gone);
    run_rounds(&mut w, t_fail + 10);
    for i in (0..n).filter(|i| *i != gone) {
        assert_eq!(
            root_members(&w, i),
            n as i64 - 1,
            "agent {i} still counts it"
        );
    }
    w.restart(gone);
    run_rounds(&mut w, 20);
    // Visible again everywhere, and it stays.
    for _ in 0..10 {
        run_rounds(&mut w, 1);
        for i in 0..n {
            assert_eq!(root_members(&w, i), n as i64, "agent {i}");
            let a = w.agent(i).unwrap();
            if cfg.leaf.parent() == a.leaf().parent() {
                let table = a.table(&cfg.leaf.parent().unwrap()).unwrap();
                assert!(table.iter().any(|r| r.zone == cfg.leaf), "agent {i}");
            }
        }
    }
}

#[test]
fn all_traffic_round_trips_through_the_codec() {
    for secure in [false, true] {
        let mut s = scenario(150, 5);
        s.loss = 0.1;
        s.crash = 0.05;
        s.churn = 0.2;
        s.afcs = 4;
        s.secure = secure;
        s.rounds = 20;
        s.check_round_trip = true;
        let r = sim::run(&s, |_, _| {});
        assert!(r.converged, "secure {secure}: {r:?}");
        assert_eq!(r.messages_undecodable, 0, "secure {secure}");
        assert_eq!(r.round_trip_mismatches, 0, "secure {secure}");
        // Every message that was not lost and reached a live agent was
        // decoded and encoded again (a few are still in flight at the end,
        // some went to crashed agents).
        let delivered = r.messages_sent - r.messages_lost;
        assert!(
            r.round_trips as f64 > delivered as f64 * 0.9,
            "secure {secure}: {} of {delivered}",
            r.round_trips
        );
    }
}

/// The last round in which some live agent's root row came to show the
/// change for good.
fn last_gain(r: &sim::Report) -> u64 {
    r.change_round + r.rounds_to_converge.as_ref().expect("converged").max - 1
}

#[test]
fn final_state_stays_stable() {
    for push in [false, true] {
        let mut s = scenario(400, 8);
        s.loss = 0.1;
        s.crash = 0.05;
        s.churn = 0.1;
        s.afcs = 2;
        s.push = push;
        s.rounds = 60;
        let r = sim::run(&s, |_, _| {});
        assert!(r.stable, "push {push}: {r:?}");
        assert_eq!((r.unconverged, r.afc_unconverged), (0, 0));
        // Nobody lost or regained the change in the last 30 rounds, nor the
        // AFC's value in the last 20 (it waits for the failure timeout).
        assert!(last_gain(&r) <= s.rounds - 30, "push {push}: {r:?}");
        let afc = r.afc_rounds_to_converge.as_ref().unwrap();
        assert!(
            s.afc_round + afc.max - 1 <= s.rounds - 20,
            "push {push}: {r:?}"
        );
    }
}

#[test]
fn skewed_clocks_converge_and_stay() {
    for push in [false, true] {
        let mut s = scenario(400, 8);
        s.skew_ms = 2000;
        s.push = push;
        s.churn = 0.1;
        s.rounds = 40;
        let r = sim::run(&s, |_, _| {});
        assert!(r.converged && r.stable, "push {push}: {r:?}");
        assert!(last_gain(&r) <= s.rounds - 20, "push {push}: {r:?}");
        assert_eq!(r.afc_flaps, 0, "push {push}: {r:?}");
        // No row is refused as issued in the future, no host goes missing.
        // (Rows of a representative whose clock runs ahead but whose inputs
        // are older are refused as rollbacks: that is the skew guard working.)
        let other: Vec<_> = r
            .rejected
            .iter()
            .filter(|(k, _)| k.as_str() != "zone_row_from_older_inputs")
            .collect();
        assert!(other.is_empty(), "push {push}: {other:?}");
        assert_eq!(
            r.afc_value.get("largest_zone"),
            Some(&serde_json::json!(58))
        );
    }
}

#[test]
fn clocks_beyond_the_bound_are_refused() {
    // Up to a minute apart: rows from clocks more than 10 s ahead are refused.
    let mut s = scenario(200, 8);
    s.skew_ms = 30_000;
    s.rounds = 15;
    let r = sim::run(&s, |_, _| {});
    assert!(
        r.rejected
            .get(armillary_proto::Refusal::RowFromFuture.label())
            .is_some_and(|n| *n > 0),
        "{r:?}"
    );
}

#[test]
fn secure_runs_sign_and_verify_every_row() {
    let mut s = scenario(200, 8);
    s.afcs = 2;
    s.rounds = 20;
    let plain = sim::run(&s, |_, _| {});
    s.secure = true;
    let secure = sim::run(&s, |_, _| {});
    assert!(plain.stable && secure.stable, "{secure:?}");
    assert!(secure.rejected.is_empty(), "{:?}", secure.rejected);
    assert_eq!(secure.messages_undecodable, 0);
    // Signatures and certificates travel in every row.
    let ratio = secure.bytes_per_agent_round.mean / plain.bytes_per_agent_round.mean;
    assert!(ratio > 1.3, "x{ratio:.2}");
}

#[test]
fn secure_world_refuses_unsigned_rows_and_afcs() {
    use armillary_proto::sim::keys::SimAuthority;
    let n = 50;
    let mut w = world(n, 5, false, 0.0, 9);
    let auth = SimAuthority::new(9);
    let leaves = tree::balanced(n, 5);
    // Every agent but the last signs; the last sends unsigned rows.
    for (i, leaf) in leaves.iter().enumerate().take(n - 1) {
        w.set_security(i, Some(auth.agent(i, leaf)));
    }
    run_rounds(&mut w, 25);
    let unsigned: u64 = (0..n - 1)
        .map(|i| {
            w.agent(i)
                .unwrap()
                .stats()
                .rejected
                .get(&armillary_proto::Refusal::Unsigned)
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert!(unsigned > 0);
    // Its rows timed out everywhere and no new one was let in.
    for i in 0..n - 1 {
        assert_eq!(root_members(&w, i), n as i64 - 1, "agent {i}");
    }
    // An unsigned AFC is refused at install; a signed one spreads.
    let unsigned = AfcCert::new(
        ZonePath::root(),
        "m",
        "SELECT MAX(COALESCE(m, load)) AS m",
        0,
    );
    let r = w.with_agent(3, |a, now| {
        a.install_afc(
            now,
            AfcCert {
                issued: now,
                ..unsigned.clone()
            },
        )
    });
    assert!(r.unwrap().is_err());
    w.with_agent(3, |a, now| {
        a.install_afc(
            now,
            auth.sign(AfcCert {
                issued: now,
                ..unsigned
            }),
        )
    })
    .unwrap()
    .unwrap();
    run_rounds(&mut w, 20);
    for i in 0..n - 1 {
        let a = w.agent(i).unwrap();
        assert_eq!(a.root_row().get("m"), Some(&Value::Float(3.0)), "agent {i}");
    }
}

#[test]
fn churn_with_typical_afcs_converges_and_stays() {
    for push in [false, true] {
        let mut s = scenario(300, 8);
        s.churn = 0.2;
        s.afcs = 4;
        s.push = push;
        s.rounds = 30;
        let r = sim::run(&s, |_, _| {});
        assert!(r.converged && r.stable, "push {push}: {r:?}");
        assert_eq!(r.messages_undecodable, 0);
        // MIN and MAX of nmembers under the root.
        assert!(r.afc_value.contains_key("largest_zone"), "{r:?}");
    }
}

#[test]
fn afc_convergence_is_measured_against_the_correct_value() {
    // Load changes every round: an AFC of load never settles on the
    // correct value, one of membership does.
    let mut s = scenario(200, 8);
    s.churn = 0.3;
    s.push = false;
    s.rounds = 25;
    s.afc_sql = Some("SELECT AVG(COALESCE(mean, load), nmembers) AS mean".into());
    let r = sim::run(&s, |_, _| {});
    assert!(!r.stable && r.afc_unconverged > 0, "{r:?}");
    assert_eq!(r.unconverged, 0);
    s.churn = 0.0;
    let r = sim::run(&s, |_, _| {});
    assert!(r.stable, "{r:?}");
    assert!(r.afc_value.contains_key("mean"));
}

#[test]
fn oracle_agrees_with_settled_agents_and_leaves_invalid_output_out() {
    use armillary_proto::sim::oracle::Oracle;
    let n = 120;
    let mut w = world(n, 5, true, 0.0, 10);
    let afcs = [
        Arc::new(AfcCert::new(
            ZonePath::root(),
            "peak",
            "SELECT MAX(COALESCE(peak, load)) AS peak, AVG(COALESCE(mean, load), nmembers) AS mean",
            0,
        )),
        Arc::new(AfcCert::new(
            ZonePath::root(),
            "nan",
            "SELECT SUM(nmembers)*1e300*1e300*0.0 AS x",
            0,
        )),
    ];
    w.with_agent(0, |a, now| a.install_afc(now, (*afcs[0]).clone()).unwrap());
    run_rounds(&mut w, 20);
    let oracle = Oracle::new(3, afcs.iter().take(1).cloned());
    let truth = oracle.root_row(&w);
    for k in ["nmembers", "contacts", "peak", "mean"] {
        assert!(truth.get(k).is_some(), "{k}");
        for i in 0..n {
            assert_eq!(
                w.agent(i).unwrap().root_row().get(k),
                truth.get(k),
                "{k} at {i}"
            );
        }
    }
    let with_nan = Oracle::new(3, afcs.iter().cloned()).root_row(&w);
    assert_eq!(with_nan.get("x"), None);
    assert_eq!(with_nan.get("nmembers"), Some(&Value::Int(n as i64)));
    assert_eq!(with_nan.get("peak"), truth.get("peak"));
}

#[test]
fn an_afc_with_invalid_output_is_reported_faulty_and_the_tree_still_converges() {
    let mut s = scenario(200, 8);
    s.afc_sql = Some("SELECT SUM(nmembers)*1e300*1e300*0.0 AS x".into());
    s.rounds = 25;
    let r = sim::run(&s, |_, _| {});
    assert!(r.converged && r.stable, "{r:?}");
    assert!(r.afc_value.is_empty(), "{r:?}");
    assert_eq!(r.afc_faulty, r.live_agents, "{r:?}");
    assert!(
        r.afc_fault_reason
            .as_deref()
            .is_some_and(|m| m.contains("left out")),
        "{r:?}"
    );
}

/// A leaf zone whose representatives all crash at once is cut off from the
/// rest of the tree until their rows time out (16 rounds at 8 members):
/// its other members stand in for them and hear of a change far away
/// sooner.
#[test]
fn a_zone_whose_representatives_all_fail_still_hears_of_changes() {
    let n = 512;
    let leaves = tree::balanced(n, 8);
    let configs = leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = Config::new(l.clone(), l.as_arc().clone());
            c.rng_seed = 11 ^ (i as u64 * 7919);
            c
        })
        .collect();
    let mut w = World::new(
        configs,
        NetConfig {
            loss: 0.1,
            ..NetConfig::default()
        },
        11,
    );
    let probe = Arc::new(AfcCert::new(
        ZonePath::root(),
        "probe",
        "SELECT MAX(probe) AS probe",
        sim::EPOCH,
    ));
    w.with_each_agent(|_, a, _| a.restore([probe.clone()], Attrs::new()));
    w.warm_start();
    run_rounds(&mut w, 3);

    // The representatives of agent 4's leaf zone, as its parent table lists them.
    let zone = leaves[4].parent().unwrap();
    let parent = zone.parent().unwrap();
    let a = w.agent(4).unwrap();
    let row = a
        .table(&parent)
        .unwrap()
        .iter()
        .find(|r| r.zone == zone)
        .unwrap();
    let reps: Vec<usize> = row
        .contacts()
        .iter()
        .map(|c| leaves.iter().position(|l| l.as_arc() == c).unwrap())
        .collect();
    assert_eq!(reps.len(), 3, "{reps:?}");
    for r in &reps {
        w.crash(*r);
    }
    w.with_agent(n - 1, |a, now| {
        a.set_attr(now, "probe", Value::Int(1)).unwrap()
    });
    let members: Vec<usize> = (0..n)
        .filter(|i| leaves[*i].parent().as_ref() == Some(&zone) && w.alive(*i))
        .collect();
    // Without stand-ins the zone hears of the change in round 15 (these
    // reps also represent the zone above, so two levels are cut off);
    // with them, in round 11.
    run_rounds(&mut w, 12);
    assert_eq!(members.len(), 5);
    for i in members {
        let row = w.agent(i).unwrap().root_row();
        assert_eq!(row.get("probe"), Some(&Value::Int(1)), "agent {i}: {row:?}");
    }
}
