//! EVN in the simulator: urgent events reach every agent of their scope
//! exactly once, under loss, through crashes and a healed partition, and
//! nowhere else; a condition over the zone tree fires once, names the
//! agents that stopped answering, and an agent that comes back contributes
//! without the condition being installed again.

use armillary_proto::evn::subs::Request;
use armillary_proto::evn::{Condition, Delivery, Evn, EvnConfig, Hysteresis};
use armillary_proto::sim::{Clock, NetConfig, World, tree};
use armillary_proto::{Micros, ZonePath};
use std::sync::Arc;

const MS: Micros = 1_000;
const S: Micros = 1_000_000;

type W = World<(Evn,)>;

fn world(n: usize, branching: usize, loss: f64, seed: u64) -> (W, Vec<ZonePath>) {
    let leaves = tree::balanced(n, branching);
    let mut configs = tree::configs(&leaves, seed);
    for c in &mut configs {
        c.events = false;
    }
    let net = NetConfig {
        loss,
        latency: (MS, 10 * MS),
    };
    let mut w = World::with_services(configs, vec![Clock::default(); n], net, seed, move |i| {
        (Evn::new(EvnConfig {
            seed: seed ^ (i as u64 + 1),
            ..EvnConfig::default()
        }),)
    });
    w.set_threads(2);
    w.set_parallel_min_events(1);
    w.warm_start();
    w.run_until(w.now() + 3 * S);
    (w, leaves)
}

fn evn<T>(
    w: &mut W,
    i: usize,
    f: impl FnOnce(&mut Evn, &mut armillary_proto::host::Zones<'_>) -> T,
) -> Option<T> {
    w.with_host(i, |h, now| {
        h.with_service::<Evn, _>(now, |e, mut z| f(e, &mut z))
            .expect("runs evn")
    })
}

fn subscribe(w: &mut W, i: usize, filter: Option<&str>) {
    evn(w, i, |e, z| {
        e.subscribe(
            Request {
                filter: filter.map(str::to_string),
                zone: None,
                expires: z.now() + 3600 * S,
                delivery: Delivery::Stream,
            },
            z.now(),
        )
        .expect("subscribes")
    });
}

/// How many times agent `i` delivered events of `topic`, and when first.
fn deliveries(w: &W, i: usize, topic: &str) -> (usize, Option<Micros>) {
    let Some(h) = w.host(i) else {
        return (0, None);
    };
    let e = h.service::<Evn>().expect("runs evn");
    let mut n = 0;
    let mut first = None;
    for d in e.recent().filter(|d| &*d.event.topic == topic) {
        n += 1;
        first.get_or_insert(d.at);
    }
    (n, first)
}

fn publish(w: &mut W, i: usize, scope: &ZonePath, topic: &str, ttl: Micros) -> Micros {
    evn(w, i, |e, z| {
        e.publish(z, scope.clone(), topic, r#"{"dc":"cleveland"}"#, ttl)
            .expect("publishes")
            .time
    })
    .expect("up")
}

fn quantile(mut v: Vec<Micros>, q: f64) -> Micros {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

#[test]
fn events_reach_their_scope_once_under_loss_and_nothing_outside() {
    let n = 256;
    let (mut w, leaves) = world(n, 8, 0.10, 7);
    for i in 0..n {
        subscribe(&mut w, i, None);
    }
    // A partition cuts one zone off; an agent is down when the event goes.
    let cut = leaves[200].parent().expect("zone");
    w.partition(cut.clone(), ZonePath::root());
    w.crash(37);
    let root = ZonePath::root();
    let sent = publish(&mut w, 3, &root, "dc/offline", 120 * S);
    // And one to a zone the publisher is not in.
    let zone = leaves[100].parent().expect("zone");
    publish(&mut w, 3, &zone, "cache/changed", 120 * S);
    w.run_until(w.now() + 5 * S);
    let mut lat = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        if i == 37 || cut.contains(leaf) {
            continue;
        }
        let (k, at) = deliveries(&w, i, "dc/offline");
        assert_eq!(k, 1, "agent {i} got the event {k} times");
        lat.push(at.expect("delivered") - sent);
    }
    for (i, leaf) in leaves.iter().enumerate() {
        let (k, _) = deliveries(&w, i, "cache/changed");
        let inside = zone.contains(leaf) && !cut.contains(leaf);
        assert_eq!(k, inside as usize, "agent {i} ({leaf}) inside {zone}");
    }
    // Healed and restarted before the time to live runs out: they get it too.
    w.heal();
    w.restart(37);
    subscribe(&mut w, 37, None);
    w.run_until(w.now() + 10 * S);
    for i in 0..n {
        let (k, _) = deliveries(&w, i, "dc/offline");
        assert_eq!(k, 1, "agent {i} got the event {k} times after healing");
    }
    let p50 = quantile(lat.clone(), 0.5);
    let p99 = quantile(lat.clone(), 0.99);
    eprintln!(
        "256 agents, 10% loss: publish to delivery p50 {} ms, p99 {} ms",
        p50 / MS,
        p99 / MS
    );
    // Nearly everyone gets it from the eager push, not the gossip behind it.
    assert!(p50 < S, "p50 {p50}");
}

#[test]
fn an_expired_event_is_not_delivered_to_latecomers() {
    let (mut w, _) = world(16, 4, 0.0, 11);
    for i in 0..16 {
        subscribe(&mut w, i, None);
    }
    w.crash(9);
    publish(&mut w, 0, &ZonePath::root(), "short", 2 * S);
    w.run_until(w.now() + 5 * S);
    w.restart(9);
    w.run_until(w.now() + 5 * S);
    assert_eq!(deliveries(&w, 9, "short").0, 0);
    assert_eq!(deliveries(&w, 1, "short").0, 1);
}

#[test]
fn an_event_whose_pushes_toward_its_scope_are_lost_still_arrives() {
    let n = 64;
    let (mut w, leaves) = world(n, 4, 0.0, 5);
    for i in 0..n {
        subscribe(&mut w, i, None);
    }
    // The publisher's zone cannot reach the scope when it publishes.
    let from = leaves[0].ancestor(1);
    let zone = leaves[n - 1].ancestor(1);
    assert!(!zone.contains(&leaves[0]));
    w.partition(from.clone(), zone.clone());
    publish(&mut w, 0, &zone, "late", 60 * S);
    w.run_until(w.now() + 2 * S);
    assert!((0..n).all(|i| deliveries(&w, i, "late").0 == 0));
    w.heal();
    w.run_until(w.now() + 15 * S);
    for (i, leaf) in leaves.iter().enumerate() {
        let (k, _) = deliveries(&w, i, "late");
        assert_eq!(k, zone.contains(leaf) as usize, "agent {i} ({leaf})");
    }
}

fn condition(name: &str, min: u64) -> Condition {
    Condition::new(
        name,
        ZonePath::root(),
        "SELECT COUNT(*) > 0 AS hit FROM conns WHERE failed > 5",
        min,
    )
}

/// Plays the runtime: every agent that evaluates `name` reports `hit(i)`.
fn evaluate(w: &mut W, n: usize, name: &str, hit: impl Fn(usize) -> bool) {
    for i in 0..n {
        if !w.alive(i) {
            continue;
        }
        evn(w, i, |e, z| {
            if e.to_evaluate(z.leaf()).iter().any(|c| &*c.name == name) {
                e.set_local(z, name, Ok(hit(i)));
            }
        });
    }
}

/// hits, contributors, expected, missing, state.
type Seen = (u64, u64, u64, Vec<Arc<str>>, Hysteresis);

fn answer(w: &mut W, i: usize, name: &str) -> Option<Seen> {
    let h = w.host(i)?;
    let e = h.service::<Evn>()?;
    let (_, st) = e.conditions().find(|(c, _)| &*c.name == name)?;
    let st = st?;
    let a = st.answer.as_ref()?;
    Some((
        a.hits,
        a.contributors,
        a.expected,
        a.missing.clone(),
        st.state,
    ))
}

#[test]
fn a_condition_fires_once_names_the_silent_and_takes_back_the_returning() {
    let n = 64;
    let (mut w, leaves) = world(n, 8, 0.02, 21);
    // Down before the condition exists: it must learn it when it returns.
    w.crash(50);
    let observer = 5;
    subscribe(&mut w, observer, Some("topic = 'condition/conns'"));
    evn(&mut w, 0, |e, z| {
        e.add_condition(z, condition("conns", 3)).expect("adds")
    });
    let hot = |i: usize| [10usize, 20, 30].contains(&i);
    for _ in 0..40 {
        evaluate(&mut w, n, "conns", hot);
        w.run_until(w.now() + 250 * MS);
    }
    w.restart(50);
    for _ in 0..60 {
        evaluate(&mut w, n, "conns", hot);
        w.run_until(w.now() + 250 * MS);
    }
    let (hits, contributors, expected, missing, state) =
        answer(&mut w, observer, "conns").expect("an answer");
    assert_eq!(
        (hits, contributors, expected),
        (3, 64, 64),
        "missing {missing:?}"
    );
    assert_eq!(state, Hysteresis::Firing);
    assert_eq!(
        deliveries(&w, observer, "condition/conns").0,
        1,
        "fired once"
    );
    // Four agents stop answering: within the deadline the answer names them.
    let stopped = [12usize, 33, 44, 60];
    for &i in &stopped {
        w.crash(i);
    }
    for _ in 0..48 {
        evaluate(&mut w, n, "conns", hot);
        w.run_until(w.now() + 250 * MS);
    }
    let (hits, contributors, expected, mut missing, _) =
        answer(&mut w, observer, "conns").expect("an answer");
    missing.sort();
    let mut names: Vec<Arc<str>> = stopped
        .iter()
        .map(|&i| leaves[i].as_arc().clone())
        .collect();
    names.sort();
    assert_eq!((contributors, expected), (60, 64));
    assert_eq!(missing, names);
    assert_eq!(hits, 3);
    // The hot agents cool down: it clears, once.
    for _ in 0..20 {
        evaluate(&mut w, n, "conns", |_| false);
        w.run_until(w.now() + 250 * MS);
    }
    let (hits, .., state) = answer(&mut w, observer, "conns").expect("an answer");
    assert_eq!((hits, state), (0, Hysteresis::Cleared));
    assert_eq!(
        deliveries(&w, observer, "condition/conns").0,
        2,
        "fired and cleared"
    );
    // Removed, it goes from every row and does not come back.
    evn(&mut w, 7, |e, z| {
        e.remove_condition(z, "conns").expect("removes")
    });
    w.restart(12);
    for _ in 0..20 {
        w.run_until(w.now() + 250 * MS);
    }
    for i in 0..n {
        if let Some(h) = w.host(i) {
            let e = h.service::<Evn>().expect("evn");
            assert!(e.conditions().next().is_none(), "agent {i} still holds it");
        }
    }
}
