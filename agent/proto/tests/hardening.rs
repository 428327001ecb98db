//! The zone tree under hostile state: limits applied where rows are made,
//! faulty AFCs kept out of rows, no rollback, no alternation, removals that
//! stay removed, and pushes that neither storm nor stop at a lost message.

use armillary_proto::afc::ScopeFull;
use armillary_proto::limits::{LimitError, MAX_AFCS_PER_SCOPE};
use armillary_proto::message::validate_row;
use armillary_proto::sim::{NetConfig, World, tree};
use armillary_proto::{
    AfcCert, AfcState, Agent, Config, InstallError, Message, Refusal, Row, ZonePath,
};
use std::sync::Arc;
use zone_sql::{Attrs, Value};

const ROUND: u64 = 1_000_000;

fn p(s: &str) -> ZonePath {
    ZonePath::parse(s).unwrap()
}

fn agent(leaf: &str) -> Agent {
    let mut c = Config::new(p(leaf), leaf);
    c.rng_seed = 7;
    Agent::new(c, 0)
}

/// A settled world of `n` agents, `branching` children per zone.
fn world(n: usize, branching: usize, f: impl Fn(usize, &mut Config)) -> World {
    let leaves = tree::balanced(n, branching);
    let configs = leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = Config::new(l.clone(), l.as_arc().clone());
            c.rng_seed = 11 ^ (i as u64 * 7919);
            c.seeds = vec![leaves[(i + 1) % n].as_arc().clone()];
            c.events = false;
            f(i, &mut c);
            c
        })
        .collect();
    let mut w = World::new(configs, NetConfig::default(), 3);
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

fn members(w: &World, i: usize) -> Option<i64> {
    match w.agent(i)?.root_row().get("nmembers") {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

/// Every row every live agent holds passes the receivers' validation.
fn all_rows_valid(w: &World) {
    for i in 0..w.len() {
        let Some(a) = w.agent(i) else { continue };
        for z in a.zones() {
            for r in a.table(z).unwrap() {
                if let Err(e) = validate_row(r) {
                    panic!("agent {i} holds an invalid row of {}: {e}", r.zone);
                }
            }
        }
    }
}

/// The messages an agent wants sent, drained.
fn sent(a: &mut Agent) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(t) = a.poll_transmit() {
        out.push(t.msg);
    }
    out
}

#[test]
fn attribute_changes_that_would_break_the_leaf_row_are_refused() {
    let mut a = agent("/z/h1");
    a.handle_timeout(0);
    let big = || Value::Str("x".repeat(3900).into());
    let mut accepted = 0;
    let mut refused = 0;
    for k in 0..6 {
        match a.set_attr(1, &format!("blob{k}"), big()) {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(matches!(e, LimitError::AttrsTooLarge { .. }), "{e}");
                assert!(e.is_size());
                assert!(e.to_string().contains("limit"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        accepted >= 2 && refused >= 1,
        "{accepted} accepted, {refused} refused"
    );
    let list = Value::list((0..100).map(|i| format!("s{i}")));
    assert!(matches!(
        a.set_attr(1, "names", list),
        Err(LimitError::ListTooLong { len: 100, .. })
    ));
    assert!(matches!(
        a.set_attr(1, "ratio", Value::Float(f64::NAN)),
        Err(LimitError::NotFinite { .. })
    ));
    assert!(matches!(
        a.set_attr(1, "nmembers", Value::Int(5)),
        Err(LimitError::Reserved(_))
    ));
    // What was accepted really travels: the issued row passes the wire's checks.
    a.handle_timeout(ROUND * 2);
    let row = a.row_of(&p("/z/h1")).unwrap().clone();
    assert_eq!(
        row.attrs.names().filter(|n| n.starts_with("blob")).count(),
        accepted
    );
    let msg = Message::Push {
        target: p("/z"),
        rows: vec![row],
    };
    assert!(Message::decode(&msg.encode()).is_ok());
}

#[test]
fn sensors_that_would_not_travel_are_left_out() {
    let mut a = agent("/z/h1");
    let sensors: Attrs = [
        ("load", Value::Float(f64::INFINITY)),
        ("cpu", Value::Float(0.5)),
        ("contacts", Value::Str("spoof".into())),
    ]
    .into_iter()
    .collect();
    a.set_sensors(sensors);
    a.handle_timeout(0);
    let row = a.row_of(&p("/z/h1")).unwrap();
    assert!(validate_row(row).is_ok());
    assert_eq!(row.get("cpu"), Some(&Value::Float(0.5)));
    assert!(row.get("load").is_none());
    assert_eq!(a.stats().rejected.get(&Refusal::InvalidSensor), Some(&2));
}

#[test]
fn a_faulty_afc_is_reported_and_never_poisons_a_row() {
    let mut w = world(64, 8, |_, _| {});
    let nan = "SELECT SUM(nmembers)*1e300*1e300*0.0 AS x";
    w.with_agent(5, |a, now| {
        a.install_afc(now, AfcCert::new(ZonePath::root(), "nan", nan, now))
            .unwrap()
    });
    // Outputs too large for the row: each is under the per-AFC output
    // limit, together they pass the row's attribute budget.
    for i in 0..64 {
        let tags = Value::list((0..60).map(|k| format!("tag-{i:03}-{k:02}-{}", "t".repeat(50))));
        let sensors: Attrs = [("load", Value::Float(1.0)), ("tags", tags)]
            .into_iter()
            .collect();
        w.set_sensors(i, sensors);
    }
    for k in 0..12 {
        let sql = format!("SELECT FIRST(16, tags) AS big{k}");
        w.with_agent(9, |a, now| {
            a.install_afc(
                now,
                AfcCert::new(ZonePath::root(), &format!("big{k}"), &sql, now),
            )
            .unwrap()
        });
    }
    run_rounds(&mut w, 30);
    all_rows_valid(&w);
    for i in 0..w.len() {
        assert_eq!(members(&w, i), Some(64), "agent {i}");
        let a = w.agent(i).unwrap();
        assert!(a.root_row().get("x").is_none());
        let faults: Vec<_> = a.afc_faults().collect();
        assert!(
            faults
                .iter()
                .any(|f| &*f.name == "nan" && f.reason.contains("finite")),
            "agent {i}: {faults:?}"
        );
        assert!(
            faults.iter().any(|f| f.name.starts_with("big")),
            "agent {i}"
        );
        assert!(a.stats().afc_faults > 0);
        // Some of the large outputs fit and are there.
        assert!(a.root_row().get("big0").is_some());
    }
}

#[test]
fn a_failing_system_afc_does_not_make_every_member_a_representative() {
    let names = ["/z/a", "/z/b", "/z/c", "/z/d", "/z/e", "/z/f"];
    let mut agents: Vec<Agent> = names.iter().map(|n| agent(n)).collect();
    for a in agents.iter_mut() {
        a.handle_timeout(0);
    }
    let rows: Vec<Arc<Row>> = agents
        .iter()
        .map(|a| a.row_of(a.leaf()).unwrap().clone())
        .collect();
    // A child row whose member count is text: SUM over it fails.
    let mut attrs = Attrs::new();
    attrs.set("nmembers", "many");
    attrs.set("contacts", Value::list(["/z/zz"]));
    let bad = Arc::new(Row::new(p("/z/zz"), p("/z/zz"), 10, attrs, vec![]));
    for a in agents.iter_mut() {
        for r in &rows {
            a.seed_row(10, r.clone());
        }
        a.seed_row(10, bad.clone());
        a.settle(20);
    }
    let reps = agents.iter().filter(|a| a.represents(&p("/z"))).count();
    assert_eq!(
        reps, 3,
        "the first three children's contacts, as the system AFC picks"
    );
    for a in &agents {
        assert!(
            a.afc_faults().any(|f| &*f.name == "system"),
            "the failure is reported"
        );
    }
}

#[test]
fn afc_installs_past_a_scope_bound_are_refused_with_the_limit() {
    let mut a = agent("/z/h1");
    a.handle_timeout(0);
    let mut refused = None;
    for k in 0..100 {
        let cert = AfcCert::new(
            ZonePath::root(),
            &format!("a{k}"),
            &format!("SELECT MAX(load) AS out{k}"),
            1 + k,
        );
        if let Err(e) = a.install_afc(1 + k, cert) {
            refused = Some((k, e));
            break;
        }
    }
    let (k, e) = refused.expect("a bound");
    assert_eq!(k as usize, MAX_AFCS_PER_SCOPE);
    assert!(
        matches!(e, InstallError::ScopeFull(ScopeFull::Count { .. })),
        "{e}"
    );
    assert!(e.to_string().contains(&MAX_AFCS_PER_SCOPE.to_string()));
    // Everything held rides in rows that pass the wire's checks.
    a.handle_timeout(ROUND * 2);
    assert!(validate_row(a.row_of(&p("/z/h1")).unwrap()).is_ok());
}

/// Three agents of one zone, all representatives of it, with an AFC that
/// aggregates `x`.
fn trio() -> Vec<Agent> {
    let mut agents: Vec<Agent> = ["/z/a", "/z/b", "/z/c"].iter().map(|n| agent(n)).collect();
    let afc = Arc::new(AfcCert::new(ZonePath::root(), "x", "SELECT MAX(x) AS x", 0));
    for a in agents.iter_mut() {
        a.restore([afc.clone()], Attrs::new());
        a.handle_timeout(0);
    }
    deliver_leaves(&mut agents, &[0, 1, 2], &[0, 1, 2], 1);
    agents
}

/// Hands the leaf rows of agents `from` to agents `to` as pushes, then flushes them.
fn deliver_leaves(agents: &mut [Agent], from: &[usize], to: &[usize], now: u64) {
    let rows: Vec<Arc<Row>> = from
        .iter()
        .map(|&i| agents[i].row_of(agents[i].leaf()).unwrap().clone())
        .collect();
    for &j in to {
        let leaf = agents[j].leaf().clone();
        let from: Arc<str> = Arc::from("/z/src");
        agents[j].handle_message(
            now,
            &from,
            Message::Push {
                target: leaf,
                rows: rows.clone(),
            },
        );
        agents[j].handle_timeout(now + 10_000);
        sent(&mut agents[j]);
    }
}

/// Hands agent `from`'s row of `/z` to agent `to`.
fn deliver_zone_row(agents: &mut [Agent], from: usize, to: usize, now: u64) {
    let row = agents[from].row_of(&p("/z")).unwrap().clone();
    let leaf = agents[to].leaf().clone();
    agents[to].handle_message(
        now,
        &Arc::from("/z/src"),
        Message::Push {
            target: leaf,
            rows: vec![row],
        },
    );
    agents[to].handle_timeout(now + 10_000);
    sent(&mut agents[to]);
}

fn x_of(a: &Agent) -> Option<Value> {
    a.row_of(&p("/z")).and_then(|r| r.get("x").cloned())
}

#[test]
fn a_representative_does_not_replace_a_zone_row_computed_from_newer_inputs() {
    // b sees a's newer zone row, but not the child row behind it.
    let mut ag = trio();
    ag[2].set_attr(ROUND, "x", Value::Int(1)).unwrap();
    ag[2].handle_timeout(ROUND + 10_000);
    deliver_leaves(&mut ag, &[2], &[0], ROUND + 20_000);
    assert_eq!(x_of(&ag[0]), Some(Value::Int(1)));
    deliver_zone_row(&mut ag, 0, 1, ROUND + 30_000);
    assert_eq!(x_of(&ag[1]), Some(Value::Int(1)));
    // b's rounds go by; it never re-issues the row with older content.
    for r in 2..6 {
        ag[1].handle_timeout(r * ROUND);
        sent(&mut ag[1]);
        assert_eq!(x_of(&ag[1]), Some(Value::Int(1)), "round {r}");
    }

    // The first representative, back after its row went stale, does not
    // roll back the row another computed from inputs it lacks.
    let mut ag = trio();
    let mut now = ROUND;
    // c and b carry on without a for 10 rounds; c changes x.
    ag[2].set_attr(now, "x", Value::Int(7)).unwrap();
    while now < 10 * ROUND {
        now += ROUND;
        for i in [1, 2] {
            ag[i].handle_timeout(now);
            sent(&mut ag[i]);
        }
        deliver_leaves(&mut ag, &[1, 2], &[1, 2], now + 1);
    }
    assert_eq!(x_of(&ag[1]), Some(Value::Int(7)));
    assert_eq!(ag[1].row_of(&p("/z")).unwrap().issuer, p("/z/b"));
    // a resumes and, before it hears anyone, issues the zone row from its
    // stale inputs: b refuses it, and keeps x.
    ag[0].handle_timeout(now);
    let stale = ag[0].row_of(&p("/z")).unwrap().clone();
    assert_eq!(stale.issuer, p("/z/a"));
    assert_eq!(stale.get("x"), Some(&Value::Null));
    for to in [1, 2] {
        let leaf = ag[to].leaf().clone();
        ag[to].handle_message(
            now + 1,
            &Arc::from("/z/a"),
            Message::Push {
                target: leaf,
                rows: vec![stale.clone()],
            },
        );
        assert_eq!(x_of(&ag[to]), Some(Value::Int(7)), "agent {to}");
    }
    assert_eq!(
        ag[1].stats().rejected.get(&Refusal::ZoneRowFromOlderInputs),
        Some(&1)
    );
    // a hears b's zone row and b's leaf row, not c's change: it keeps
    // issuing only what others refuse, and once it holds c's row its row
    // carries x again and is taken.
    deliver_leaves(&mut ag, &[1], &[0], now + 2);
    deliver_zone_row(&mut ag, 1, 0, now + 3);
    deliver_leaves(&mut ag, &[2], &[0], now + 4);
    ag[0].handle_timeout(now + 5 * ROUND);
    assert_eq!(x_of(&ag[0]), Some(Value::Int(7)));
    deliver_zone_row(&mut ag, 0, 1, now + 5 * ROUND + 1);
    assert_eq!(ag[1].row_of(&p("/z")).unwrap().issuer, p("/z/a"));
    assert_eq!(x_of(&ag[1]), Some(Value::Int(7)));
}

#[test]
fn representatives_with_lastingly_different_views_do_not_alternate() {
    // The first agent's zone table is too small for every child: its view
    // of its zone differs from the other representatives' for good.
    let mut w = world(24, 8, |i, c| {
        if i == 0 {
            c.max_children = 6;
        }
    });
    let zone = w.agent(0).unwrap().zones()[1].clone();
    let watcher = 20; // an agent of another zone, which holds the row of `zone`
    assert!(!zone.contains(w.agent(watcher).unwrap().leaf()));
    run_rounds(&mut w, 5);
    let mut changes = 0;
    let mut last = None;
    for _ in 0..40 {
        run_rounds(&mut w, 1);
        let a = w.agent(watcher).unwrap();
        let row = a.row_of(&zone).unwrap();
        let content = (row.issuer.clone(), row.get("nmembers").cloned());
        if last.as_ref().is_some_and(|l| *l != content) {
            changes += 1;
        }
        last = Some(content);
    }
    assert!(changes <= 1, "the zone row alternated {changes} times");
}

#[test]
fn a_removed_afc_stays_removed_after_a_partition_longer_than_the_horizon() {
    let keep = 20 * ROUND;
    let mut w = world(32, 4, |_, c| c.tombstone_keep = keep);
    let afc = AfcCert::new(ZonePath::root(), "gone", "SELECT MAX(load) AS gone", 0);
    w.with_agent(0, |a, now| a.install_afc(now, afc).unwrap());
    run_rounds(&mut w, 10);
    let halves = (w.agent(0).unwrap().zones()[1].clone(), {
        let z = w.agent(31).unwrap().zones()[1].clone();
        assert_ne!(z, w.agent(0).unwrap().zones()[1]);
        z
    });
    // Cut the first top-level zone off from the last; remove the AFC on the far side.
    w.partition(halves.0.clone(), halves.1.clone());
    run_rounds(&mut w, 2);
    w.with_agent(31, |a, now| {
        a.remove_afc(now, &ZonePath::root(), "gone").unwrap()
    });
    run_rounds(&mut w, 3 * keep / ROUND);
    for i in 0..w.len() {
        let a = w.agent(i).unwrap();
        let removed = a.afcs().get(&ZonePath::root(), "gone").unwrap().state == AfcState::Removed;
        assert_eq!(removed, i >= 16, "agent {i}: each side as it was left");
    }
    w.heal();
    run_rounds(&mut w, 60);
    for i in 0..w.len() {
        let a = w.agent(i).unwrap();
        let state = a
            .afcs()
            .get(&ZonePath::root(), "gone")
            .map(|e| e.state.clone());
        assert_eq!(state, Some(AfcState::Removed), "agent {i}");
        assert!(a.root_row().get("gone").is_none(), "agent {i}");
    }
}

#[test]
fn a_replayed_push_is_not_broadcast_again() {
    let mut w = world(64, 4, |_, _| {});
    w.with_agent(0, |a, now| a.set_attr(now, "probe", Value::Int(1)).unwrap());
    run_rounds(&mut w, 1);
    // Take an agent's copy of a pushed row and offer it to another twice.
    let row = w
        .agent(0)
        .unwrap()
        .row_of(w.agent(0).unwrap().leaf())
        .unwrap()
        .clone();
    let target = w.agent(40).unwrap().zones()[1].clone();
    let before = w.agent(40).unwrap().stats().push_msgs_sent;
    for _ in 0..2 {
        w.with_agent(40, |a, now| {
            a.handle_message(
                now,
                &Arc::from("x"),
                Message::Push {
                    target: target.clone(),
                    rows: vec![row.clone()],
                },
            )
        });
    }
    assert_eq!(w.agent(40).unwrap().stats().push_msgs_sent, before);
}

#[test]
fn agents_started_apart_in_one_zone_merge() {
    // Every agent's only seed is the first; the two of /b start alone.
    let zones = ["/a/h1", "/a/h2", "/b/h3", "/b/h4"];
    let configs = zones
        .iter()
        .enumerate()
        .map(|(i, z)| {
            let mut c = Config::new(p(z), *z);
            c.rng_seed = 5 + i as u64;
            c.seeds = vec![Arc::from("/a/h1")];
            c.events = false;
            c
        })
        .collect();
    let mut w = World::new(configs, NetConfig::default(), 9);
    run_rounds(&mut w, 40);
    for i in 0..4 {
        assert_eq!(members(&w, i), Some(4), "agent {i}");
    }
}

#[test]
fn every_message_fits_the_budget_even_with_big_tables() {
    // One agent of a zone of 300 children, a 4 KiB budget: its digest, its
    // reply to a peer that holds nothing, and its pushes are all cut to it.
    let mut c = Config::new(p("/z/a000"), "/z/a000");
    c.max_message = 4096;
    c.seeds = vec![Arc::from("/z/a001")];
    let mut a = Agent::new(c, 0);
    a.handle_timeout(0);
    sent(&mut a);
    for k in 1..300 {
        let leaf = p(&format!("/z/a{k:03}"));
        let mut attrs = Attrs::new();
        attrs.set("nmembers", 1i64);
        attrs.set("contacts", Value::list([leaf.as_str()]));
        attrs.set("note", Value::Str("n".repeat(60).into()));
        a.seed_row(
            10,
            Arc::new(Row::new(leaf.clone(), leaf, 10, attrs, vec![])),
        );
    }
    a.handle_timeout(ROUND);
    a.set_attr(ROUND, "probe", Value::Int(1)).unwrap();
    a.handle_timeout(ROUND + 10_000);
    let mut out = sent(&mut a);
    a.handle_message(
        ROUND + 20_000,
        &Arc::from("/z/a001"),
        Message::Syn {
            sender: p("/z/a001"),
            depth: 1,
            digest: vec![],
        },
    );
    out.extend(sent(&mut a));
    assert!(out.iter().any(|m| matches!(m, Message::Syn { .. })));
    assert!(out.iter().any(|m| matches!(m, Message::SynAck { .. })));
    assert!(out.iter().any(|m| matches!(m, Message::Push { .. })));
    for m in &out {
        let len = m.encode().len();
        assert!(len <= 4096, "a message of {len} bytes: {m:?}");
    }
}
