//! DDS in the simulator: channels over the zone tree of a few hundred
//! agents, with loss, relay crashes, a slow subscriber and two publishers
//! under total order; delivery histories recorded and checked; the same
//! run whatever the number of threads.

use armillary_proto::Micros;
use armillary_proto::dds::{
    Dds, DdsConfig, DdsError, LayerKind, Params, PinnedKeys, SlowPolicy, SubId, SubscribeOpts,
};
use armillary_proto::sim::{Clock, NetConfig, World, tree};
use ed25519_dalek::SigningKey;
use std::collections::BTreeMap;
use std::sync::Arc;

const MS: Micros = 1_000;
const S: Micros = 1_000_000;

type W = World<(Dds,)>;

fn key(i: usize) -> SigningKey {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    SigningKey::from_bytes(&b)
}

/// A world of `n` agents (branching 8) running DDS, with the channel
/// directory's AFC installed, warmed up and run for `settle`.
fn world(n: usize, loss: f64, threads: usize, seed: u64) -> W {
    world_with(n, loss, threads, seed, Params::default())
}

fn world_with(n: usize, loss: f64, threads: usize, seed: u64, params: Params) -> W {
    let leaves = tree::balanced(n, 8);
    let keys = Arc::new(PinnedKeys(
        leaves
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_arc().clone(), key(i).verifying_key()))
            .collect(),
    ));
    let mut configs = tree::configs(&leaves, seed);
    for c in &mut configs {
        c.events = false;
    }
    let net = NetConfig {
        loss,
        latency: (5 * MS, 40 * MS),
    };
    let mut w = World::with_services(configs, vec![Clock::default(); n], net, seed, move |i| {
        let cfg = DdsConfig {
            signer: Some(Arc::new(key(i))),
            keys: Some(keys.clone()),
            rng_seed: seed ^ i as u64,
            params: params.clone(),
            ..DdsConfig::default()
        };
        (Dds::new(cfg),)
    });
    w.set_threads(threads);
    w.set_parallel_min_events(1);
    w.warm_start();
    w.run_until(w.now() + 2 * S);
    w
}

fn dds(w: &W, i: usize) -> &Dds {
    &w.host(i).expect("up").services.0
}

/// Runs `f` on agent `i`'s DDS core with its local time.
fn on<T>(w: &mut W, i: usize, f: impl FnOnce(&mut Dds, Micros) -> T) -> T {
    w.with_host(i, |h, now| f(&mut h.services.0, now))
        .expect("agent is up")
}

/// Runs until every agent of `who` knows channel `name`.
fn until_known(w: &mut W, who: &[usize], name: &str) {
    for _ in 0..120 {
        if who
            .iter()
            .all(|&i| dds(w, i).channels().iter().any(|c| &*c.name == name))
        {
            return;
        }
        w.run_until(w.now() + S / 2);
    }
    panic!("channel {name} did not reach every agent");
}

/// Recorded deliveries: per subscriber, (from, data) in delivery order.
#[derive(Default, Debug, PartialEq, Eq)]
struct Histories(BTreeMap<usize, Vec<(String, Vec<u8>)>>);

impl Histories {
    /// Takes what every subscriber has queued.
    fn collect(&mut self, w: &mut W, subs: &[(usize, SubId)]) {
        for &(i, sub) in subs {
            if !w.alive(i) {
                continue;
            }
            let got = on(w, i, |d, _| d.take(sub, usize::MAX)).expect("subscribed");
            self.0
                .entry(i)
                .or_default()
                .extend(got.into_iter().map(|d| (d.from.to_string(), d.data)));
        }
    }
}

/// Runs `dt` in steps of 50 ms, collecting deliveries.
fn run(w: &mut W, dt: Micros, subs: &[(usize, SubId)], h: &mut Histories) {
    let end = w.now() + dt;
    while w.now() < end {
        w.run_until((w.now() + 50 * MS).min(end));
        h.collect(w, subs);
    }
}

fn subscribe_all(w: &mut W, who: &[usize], name: &str, queue: usize) -> Vec<(usize, SubId)> {
    who.iter()
        .map(|&i| {
            let opts = SubscribeOpts {
                from_start: true,
                queue,
            };
            (
                i,
                on(w, i, |d, now| d.subscribe(now, name, opts)).expect("known"),
            )
        })
        .collect()
}

fn payload(origin: usize, k: usize) -> Vec<u8> {
    let mut b = format!("{origin}:{k}:").into_bytes();
    b.resize(b.len() + (k * 131) % 2500, b'x');
    b
}

/// Publishes, retrying while the stack holds it back.
fn publish(
    w: &mut W,
    i: usize,
    name: &str,
    data: Vec<u8>,
    subs: &[(usize, SubId)],
    h: &mut Histories,
) -> u32 {
    let mut refusals = 0;
    loop {
        match on(w, i, |d, now| d.publish(now, name, data.clone())) {
            Ok(()) => return refusals,
            Err(DdsError::Send(_)) => {
                refusals += 1;
                assert!(refusals < 2_000, "publisher held back for over 100 s");
                run(w, 50 * MS, subs, h);
            }
            Err(e) => panic!("publish: {e}"),
        }
    }
}

/// The relays of channel `name` that are neither subscribers nor `keep`.
fn relays(w: &W, name: &str, subscribers: &[usize], keep: usize) -> Vec<usize> {
    (0..w.len())
        .filter(|&i| w.alive(i) && i != keep && !subscribers.contains(&i))
        .filter(|&i| dds(w, i).tree(name).is_some_and(|t| !t.children.is_empty()))
        .collect()
}

struct Outcome {
    histories: Histories,
    sent: u64,
    repairs: u64,
    /// Agents whose parent crashed, and those of them that found another.
    orphans: usize,
    moved: usize,
}

/// The messages of the full-stack run: one of them 1 MiB.
fn full_payload(k: usize, count: usize) -> Vec<u8> {
    if k == count / 2 {
        return (0..1 << 20).map(|i: usize| (i * 31 % 251) as u8).collect();
    }
    payload(0, k)
}

/// One publisher, a full stack, loss, and relays crashing mid-stream.
fn full_stack_run(n: usize, loss: f64, threads: usize, count: usize) -> Outcome {
    let mut w = world(n, loss, threads, 21);
    let spec = "sign:encrypt:fifo:frag:flow:nak:gossip";
    on(&mut w, 0, |d, now| {
        d.create(now, "feed", spec, None, 0, SlowPolicy::Skip)
    })
    .unwrap();
    let subscribers: Vec<usize> = (1..n).step_by(3).collect();
    until_known(&mut w, &subscribers, "feed");
    let subs = subscribe_all(&mut w, &subscribers, "feed", 0);
    let mut h = Histories::default();
    run(&mut w, 5 * S, &subs, &mut h);
    let mut crashed: Vec<usize> = Vec::new();
    let mut orphans: Vec<usize> = Vec::new();
    for k in 0..count {
        publish(&mut w, 0, "feed", full_payload(k, count), &subs, &mut h);
        run(&mut w, 20 * MS, &subs, &mut h);
        if k == count / 3 || k == 2 * count / 3 {
            for r in relays(&w, "feed", &subscribers, 0).into_iter().take(3) {
                let addr = w.agent(r).unwrap().config().addr.clone();
                orphans.extend((0..n).filter(|&i| {
                    w.alive(i)
                        && dds(&w, i)
                            .tree("feed")
                            .is_some_and(|t| t.parent.as_ref() == Some(&addr))
                }));
                w.crash(r);
                crashed.push(r);
            }
        }
    }
    run(&mut w, 30 * S, &subs, &mut h);
    assert!(!crashed.is_empty(), "no relay to crash");
    let dead: Vec<Arc<str>> = crashed
        .iter()
        .map(|&r| {
            w.host(r)
                .map_or_else(|| origin_addr(r, n), |h| h.gossip.config().addr.clone())
        })
        .collect();
    orphans.retain(|&i| w.alive(i));
    let moved = orphans
        .iter()
        .filter(|&&i| {
            dds(&w, i)
                .tree("feed")
                .is_some_and(|t| t.parent.as_ref().is_none_or(|p| !dead.contains(p)))
        })
        .count();
    let repairs = subscribers
        .iter()
        .filter_map(|&i| dds(&w, i).stack("feed"))
        .map(|s| s.counter(LayerKind::Nak, "requests"))
        .sum();
    for &i in &subscribers {
        let got = h.0.get(&i).map_or(0, |v| v.len());
        if got != count {
            let missing: Vec<usize> = (0..count)
                .filter(|k| !h.0[&i].iter().any(|(_, d)| *d == payload(0, *k)))
                .collect();
            eprintln!(
                "sub {i} missing {missing:?} counters {:?} refused {:?}",
                dds(&w, i).stack("feed").map(|s| s.counters()),
                dds(&w, i).stack("feed").map(|s| s.refused().clone())
            );
        }
    }
    Outcome {
        histories: h,
        sent: w.net_stats.sent,
        repairs,
        orphans: orphans.len(),
        moved,
    }
}

#[test]
fn a_full_stack_channel_delivers_exactly_once_in_order_across_relay_crashes() {
    let (n, count) = (300, 120);
    let out = full_stack_run(n, 0.15, 1, count);
    let want: Vec<Vec<u8>> = (0..count).map(|k| full_payload(k, count)).collect();
    assert_eq!(out.histories.0.len(), (1..n).step_by(3).count());
    for (i, got) in &out.histories.0 {
        let data: Vec<Vec<u8>> = got.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(data.len(), count, "subscriber {i}: {} messages", data.len());
        assert!(
            data == want,
            "subscriber {i}: other messages or another order"
        );
    }
    assert!(out.repairs > 0, "15% loss and no repair asked");
    assert!(out.orphans > 0, "the crashed relays fed nobody");
    assert_eq!(out.moved, out.orphans, "agents left under a crashed relay");
    eprintln!(
        "full stack, {n} agents, 15% loss: {} messages on the wire, {} repair requests, {} agents re-parented",
        out.sent, out.repairs, out.moved
    );
    // The same run on two threads.
    let two = full_stack_run(n, 0.15, 2, count);
    assert_eq!(two.sent, out.sent);
    assert!(two.histories == out.histories, "1 and 2 threads differ");
}

/// Two publishers under total order; every subscriber's history recorded.
fn total_run(threads: usize) -> (Histories, u64) {
    let n = 120;
    let mut w = world(n, 0.1, threads, 33);
    on(&mut w, 3, |d, now| {
        d.create(
            now,
            "ticks",
            "sign:total:frag:flow:nak:gossip",
            None,
            0,
            SlowPolicy::Skip,
        )
    })
    .unwrap();
    let subscribers: Vec<usize> = (0..n).filter(|i| i % 4 == 1).collect();
    let publishers = [10, 70];
    let mut everyone = subscribers.clone();
    everyone.extend(publishers);
    until_known(&mut w, &everyone, "ticks");
    let subs = subscribe_all(&mut w, &subscribers, "ticks", 0);
    let mut h = Histories::default();
    run(&mut w, 5 * S, &subs, &mut h);
    for k in 0..60 {
        for p in publishers {
            publish(&mut w, p, "ticks", payload(p, k), &subs, &mut h);
        }
        run(&mut w, 15 * MS, &subs, &mut h);
    }
    run(&mut w, 20 * S, &subs, &mut h);
    (h, w.net_stats.sent)
}

#[test]
fn two_publishers_are_delivered_in_one_total_order_on_any_number_of_threads() {
    let (h, sent) = total_run(1);
    let first = h.0.values().next().expect("subscribers").clone();
    assert_eq!(first.len(), 120);
    for (i, got) in &h.0 {
        assert!(*got == first, "subscriber {i} delivered another order");
    }
    // Every message once, each publisher's in its order.
    for p in [10usize, 70] {
        let mine: Vec<&Vec<u8>> = first
            .iter()
            .filter(|(_, d)| d.starts_with(format!("{p}:").as_bytes()))
            .map(|(_, d)| d)
            .collect();
        let want: Vec<Vec<u8>> = (0..60).map(|k| payload(p, k)).collect();
        assert_eq!(mine.len(), 60);
        assert!(
            mine.iter().zip(&want).all(|(a, b)| *a == b),
            "publisher {p} out of order"
        );
    }
    // Both publishers are interleaved, not one after the other (which
    // would be one switch); how often depends on the seed's repairs.
    let switches = first.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(switches > 4, "{switches}");
    // The same run on two threads.
    let (h2, sent2) = total_run(2);
    assert_eq!(sent2, sent);
    assert!(h2 == h, "histories differ between 1 and 2 threads");
}

#[test]
fn a_slow_subscriber_falls_behind_alone() {
    let n = 100;
    // A small flow window, so that the crashed member holds it shut until
    // it times out.
    let params = Params {
        flow_window: 64,
        ..Params::default()
    };
    let mut w = world_with(n, 0.1, 2, 44, params);
    on(&mut w, 0, |d, now| {
        d.create(
            now,
            "slow",
            "fifo:flow:nak:gossip",
            None,
            0,
            SlowPolicy::Skip,
        )
    })
    .unwrap();
    on(&mut w, 0, |d, now| {
        d.create(now, "strict", "fifo:flow:nak", None, 0, SlowPolicy::Drop)
    })
    .unwrap();
    let subscribers: Vec<usize> = (1..n).step_by(4).collect();
    until_known(&mut w, &subscribers, "strict");
    let subs = subscribe_all(&mut w, &subscribers, "slow", 0);
    let strict = subscribe_all(&mut w, &subscribers, "strict", 0);
    // Agent 5 also has a slow reader on each channel (queues of 16, never read).
    let slow_skip = on(&mut w, 5, |d, now| {
        d.subscribe(
            now,
            "slow",
            SubscribeOpts {
                from_start: true,
                queue: 16,
            },
        )
    })
    .unwrap();
    let slow_drop = on(&mut w, 5, |d, now| {
        d.subscribe(
            now,
            "strict",
            SubscribeOpts {
                from_start: true,
                queue: 16,
            },
        )
    })
    .unwrap();
    // And one subscriber agent crashes mid-stream: a member that never acknowledges again.
    let dead = subscribers[7];
    let mut h = Histories::default();
    let mut all: Vec<(usize, SubId)> = subs.clone();
    all.extend(&strict);
    run(&mut w, 5 * S, &all, &mut h);
    let mut refusals = 0;
    for k in 0..300 {
        refusals += publish(&mut w, 0, "slow", payload(0, k), &all, &mut h);
        refusals += publish(&mut w, 0, "strict", payload(1, k), &all, &mut h);
        if k == 100 {
            w.crash(dead);
        }
        run(&mut w, 10 * MS, &all, &mut h);
    }
    run(&mut w, 20 * S, &all, &mut h);
    for &(i, _) in subs.iter().chain(&strict) {
        if i == dead {
            continue;
        }
        assert_eq!(h.0[&i].len(), 600, "subscriber {i}");
    }
    let d = dds(&w, 5);
    assert_eq!(
        d.lagged(slow_skip),
        Some(300 - 16),
        "the slow reader skipped, told how many"
    );
    assert!(
        !d.is_subscribed(slow_drop),
        "the slow reader of a drop channel was closed"
    );
    assert!(refusals > 0, "the dead member never held the window");
    eprintln!("publisher held back {refusals} times over 600 messages");
}

/// The address of agent `i` of a world of `n` (its leaf path).
fn origin_addr(i: usize, n: usize) -> Arc<str> {
    tree::balanced(n, 8)[i].as_arc().clone()
}

/// Figures for docs/dds.md: one publisher, a thousand subscribers, 15%
/// loss, 1 KB messages at 50 per second, with and without gossip repair.
/// `cargo test -p armillary-proto --test dds -- --ignored --nocapture figures`
/// (`DDS_LOSS=0` for a lossless baseline).
#[test]
#[ignore]
fn figures_one_publisher_a_thousand_subscribers() {
    let loss: f64 = std::env::var("DDS_LOSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.15);
    for spec in ["fifo:nak", "fifo:nak:gossip"] {
        let n = 1024;
        let mut w = world(n, loss, 0, 55);
        on(&mut w, 0, |d, now| {
            d.create(now, "f", spec, None, 0, SlowPolicy::Skip)
        })
        .unwrap();
        let subscribers: Vec<usize> = (1..=1000).collect();
        until_known(&mut w, &subscribers, "f");
        let subs = subscribe_all(&mut w, &subscribers, "f", 0);
        let mut h = Histories::default();
        run(&mut w, 5 * S, &subs, &mut h);
        let before: Vec<u64> = subscribers
            .iter()
            .map(|&i| dds(&w, i).stack("f").map_or(0, |s| s.bytes_out))
            .collect();
        let count = 200;
        let mut sent_at = Vec::new();
        let mut latencies: Vec<Micros> = Vec::new();
        let mut seen = vec![0usize; n];
        let step = 5 * MS;
        let mut collect = |w: &mut W, sent_at: &[Micros], latencies: &mut Vec<Micros>| {
            for &(i, sub) in &subs {
                let got = on(w, i, |d, _| d.take(sub, usize::MAX)).unwrap();
                for _ in got {
                    latencies.push(w.now() - sent_at[seen[i]]);
                    seen[i] += 1;
                }
            }
        };
        for k in 0..count {
            let mut data = format!("{k}:").into_bytes();
            data.resize(1024, b'.');
            sent_at.push(w.now());
            on(&mut w, 0, |d, now| d.publish(now, "f", data)).unwrap();
            for _ in 0..4 {
                w.run_until(w.now() + step);
                collect(&mut w, &sent_at, &mut latencies);
            }
        }
        let end = w.now() + 20 * S;
        while w.now() < end {
            w.run_until(w.now() + step);
            collect(&mut w, &sent_at, &mut latencies);
        }
        let complete = subscribers.iter().filter(|&&i| seen[i] == count).count();
        for &i in subscribers.iter().filter(|&&i| seen[i] != count) {
            let st = dds(&w, i).stack("f").unwrap();
            eprintln!(
                "incomplete {i}: {} of {count}; {:?} {:?} tree {:?}",
                seen[i],
                st.counters(),
                st.refused(),
                dds(&w, i).tree("f")
            );
        }
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] / MS
        };
        let bytes: Vec<u64> = subscribers
            .iter()
            .zip(&before)
            .map(|(&i, b)| dds(&w, i).stack("f").map_or(0, |s| s.bytes_out) - b)
            .collect();
        let requests: u64 = subscribers
            .iter()
            .filter_map(|&i| dds(&w, i).stack("f"))
            .map(|s| s.counter(LayerKind::Nak, "requests"))
            .sum();
        let origin = dds(&w, 0).stack("f").unwrap();
        let gossip_got: u64 = subscribers
            .iter()
            .filter_map(|&i| dds(&w, i).stack("f"))
            .map(|s| s.counter(LayerKind::Gossip, "repairs_got"))
            .sum();
        println!(
            "{spec}: {complete}/1000 subscribers complete; delivery latency ms p50 {} p99 {} p99.9 {} max {}; \
             per subscriber: {:.1} KB sent (acks, requests, digests, repairs) for {} KB received, \
             {:.2} repair requests; origin retransmits {}; gossip repairs {}",
            pct(0.5),
            pct(0.99),
            pct(0.999),
            latencies.last().unwrap() / MS,
            bytes.iter().sum::<u64>() as f64 / 1000.0 / 1024.0,
            count,
            requests as f64 / 1000.0,
            origin.counter(LayerKind::Nak, "retransmits"),
            gossip_got,
        );
        assert_eq!(complete, 1000);
    }
}

#[test]
fn the_api_refuses_with_typed_errors_and_every_agent_agrees_on_the_stack() {
    let mut w = world(24, 0.0, 1, 66);
    let bad = on(&mut w, 0, |d, now| {
        d.create(
            now,
            "x",
            "sign:encrypt:fifo:nak:frag",
            None,
            0,
            SlowPolicy::Skip,
        )
    });
    assert!(matches!(bad, Err(DdsError::Spec(_))), "{bad:?}");
    let bad = on(&mut w, 0, |d, now| {
        d.create(now, "a b", "nak", None, 0, SlowPolicy::Skip)
    });
    assert!(matches!(bad, Err(DdsError::BadName(_))));
    let info = on(&mut w, 0, |d, now| {
        d.create(now, "c", "fifo:nak", None, 5, SlowPolicy::Drop)
    })
    .unwrap();
    let again = on(&mut w, 0, |d, now| {
        d.create(now, "c", "nak", None, 0, SlowPolicy::Skip)
    });
    assert!(matches!(again, Err(DdsError::Exists(_))));
    let unknown = on(&mut w, 3, |d, now| {
        d.subscribe(now, "nope", SubscribeOpts::default())
    });
    assert!(matches!(unknown, Err(DdsError::UnknownChannel(_))));
    let unknown = on(&mut w, 3, |d, now| d.publish(now, "nope", b"x".to_vec()));
    assert!(matches!(unknown, Err(DdsError::UnknownChannel(_))));
    let all: Vec<usize> = (0..24).collect();
    until_known(&mut w, &all, "c");
    for i in all {
        let c = dds(&w, i)
            .channels()
            .into_iter()
            .find(|c| &*c.name == "c")
            .unwrap();
        assert_eq!(c, info, "agent {i} holds another descriptor");
    }
    let big = on(&mut w, 0, |d, now| d.publish(now, "c", vec![0; 1 << 20]));
    assert!(
        matches!(big, Err(DdsError::Send(_))),
        "no frag: one fragment at most"
    );
}
