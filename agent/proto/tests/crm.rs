//! CRM in the simulator: many groups over the zone tree of a few hundred
//! agents, with loss, crashes, a partition and its healing; every group's
//! history recorded and checked; the same run whatever the number of
//! threads.

use armillary_proto::crm::check::History;
use armillary_proto::crm::{Crm, CrmConfig, MemberId, Mode, Phase, Replica};
use armillary_proto::sim::{Clock, NetConfig, World, tree};
use armillary_proto::{Micros, ZonePath};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const MS: Micros = 1_000;
const S: Micros = 1_000_000;

type W = World<(Crm,)>;

/// Sums the bytes it is sent: equal sums mean the same messages applied.
#[derive(Default)]
struct Sum(u64);

impl Replica for Sum {
    fn apply(&mut self, _: &MemberId, _: Mode, data: &[u8]) -> Option<Vec<u8>> {
        self.0 += data.len() as u64;
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(state.try_into().map_err(|_| "not 8 bytes".to_string())?);
        Ok(())
    }
}

fn world(n: usize, loss: f64, threads: usize, seed: u64) -> W {
    let leaves = tree::balanced(n, 8);
    let mut configs = tree::configs(&leaves, seed);
    for c in &mut configs {
        c.events = false;
    }
    let net = NetConfig {
        loss,
        latency: (2 * MS, 20 * MS),
    };
    let mut w = World::with_services(configs, vec![Clock::default(); n], net, seed, |_| {
        (Crm::new(CrmConfig::default()),)
    });
    w.set_threads(threads);
    w.set_parallel_min_events(1);
    w.warm_start();
    w.run_until(w.now() + S);
    w
}

fn addr(w: &W, i: usize) -> Arc<str> {
    w.agent(i).expect("up").config().addr.clone()
}

struct Run {
    /// Group name to its members' agent indices.
    groups: BTreeMap<String, Vec<usize>>,
    hist: BTreeMap<String, History>,
    sent: u64,
}

impl Run {
    fn new() -> Run {
        Run {
            groups: BTreeMap::new(),
            hist: BTreeMap::new(),
            sent: 0,
        }
    }

    /// Takes every agent's events into the groups' histories.
    fn collect(&mut self, w: &mut W) {
        for i in 0..w.len() {
            if !w.alive(i) {
                continue;
            }
            let a = addr(w, i);
            let evs = w
                .with_host(i, |h, _| {
                    let c = &mut h.services.0;
                    let evs = c.take_events();
                    evs.into_iter()
                        .map(|e| {
                            let name = e.group().to_string();
                            let me = c.group(&name).map(|g| g.me().clone());
                            (name, me, e)
                        })
                        .collect::<Vec<_>>()
                })
                .expect("alive");
            for (name, me, e) in evs {
                let me = me.unwrap_or(MemberId {
                    zone: a.clone(),
                    addr: a.clone(),
                    inc: 0,
                });
                self.hist.entry(name).or_default().record(&a, &me, &e);
            }
        }
    }

    fn send(&mut self, w: &mut W, i: usize, name: &str, mode: Mode, data: String) {
        if !w.alive(i) {
            return;
        }
        let got = w
            .with_host(i, |h, now| {
                let c = &mut h.services.0;
                let me = c.group(name).map(|g| g.me().clone())?;
                c.send(now, name, mode, data.clone().into_bytes()).ok()?;
                Some(me)
            })
            .flatten();
        if let Some(me) = got {
            self.sent += 1;
            self.hist
                .entry(name.to_string())
                .or_default()
                .sent(&me, mode, data.as_bytes());
        }
    }

    /// Runs `dt`; every member of every group sends one message each `every`.
    fn traffic(&mut self, w: &mut W, dt: Micros, every: Micros, tag: &str) {
        let end = w.now() + dt;
        let mut k = 0usize;
        while w.now() < end {
            let groups: Vec<(String, Vec<usize>)> = self
                .groups
                .iter()
                .map(|(n, m)| (n.clone(), m.clone()))
                .collect();
            for (name, members) in groups {
                for (r, &i) in members.iter().enumerate() {
                    let mode = [Mode::Fifo, Mode::Total, Mode::Safe][(k + r) % 3];
                    self.send(w, i, &name, mode, format!("{tag}:{i}:{k}"));
                }
            }
            k += 1;
            w.run_until((w.now() + every).min(end));
            self.collect(w);
        }
    }

    fn quiet(&mut self, w: &mut W, dt: Micros) {
        let end = w.now() + dt;
        while w.now() < end {
            w.run_until((w.now() + 100 * MS).min(end));
            self.collect(w);
        }
    }

    /// Checks every group's history; gives the total deliveries and the
    /// view changes seen.
    fn check(&self, w: &W) -> (usize, usize) {
        let mut deliveries = 0;
        let mut views = 0;
        for (name, h) in &self.hist {
            let finals: Vec<MemberId> = self.groups[name]
                .iter()
                .filter_map(|&i| w.host(i))
                .filter_map(|h| h.services.0.group(name))
                .filter(|g| g.phase() == Phase::Member)
                .map(|g| g.me().clone())
                .collect();
            let s = h.check(&finals).unwrap_or_else(|v| {
                let states: Vec<String> = self.groups[name]
                    .iter()
                    .filter_map(|&i| w.host(i))
                    .filter_map(|h| h.services.0.group(name))
                    .map(|g| g.describe())
                    .collect();
                for (m, steps) in h.steps() {
                    eprintln!("{m}:");
                    for st in steps {
                        eprintln!("  {st:?}");
                    }
                }
                panic!("group {name}: {v}\n{states:#?}")
            });
            deliveries += s.deliveries;
            views += s.views;
        }
        (deliveries, views)
    }

    /// The members of `name` in one view at the end, and their replicas agree.
    fn settled(&self, w: &W, name: &str) -> bool {
        let gs: Vec<_> = self.groups[name]
            .iter()
            .filter_map(|&i| w.host(i))
            .filter_map(|h| h.services.0.group(name))
            .collect();
        let alive = self.groups[name].iter().filter(|&&i| w.alive(i)).count();
        gs.len() == alive
            && gs
                .iter()
                .all(|g| g.phase() == Phase::Member && g.view() == gs[0].view())
            && gs[0].view().members.len() == alive
            && gs
                .iter()
                .map(|g| g.replica().expect("replica").snapshot())
                .collect::<BTreeSet<_>>()
                .len()
                == 1
    }
}

/// Forms `count` groups of `size`, member r of group g being agent
/// `g + r * count` (so members sit in different zones); the first creates
/// the group, the others join through it.
fn form(w: &mut W, run: &mut Run, count: usize, size: usize) {
    for g in 0..count {
        let name = format!("g{g}");
        let members: Vec<usize> = (0..size).map(|r| g + r * count).collect();
        let creator = addr(w, members[0]);
        for (r, &i) in members.iter().enumerate() {
            let contacts = if r == 0 {
                vec![]
            } else {
                vec![creator.clone()]
            };
            let name = name.clone();
            w.with_host(i, |h, now| {
                h.with_service::<Crm, _>(now, |c, z| {
                    c.join(&z, &name, contacts, Some(Box::new(Sum::default())))
                })
                .expect("runs crm")
            })
            .expect("alive")
            .expect("joined");
        }
        run.groups.insert(name, members);
    }
    for _ in 0..100 {
        run.quiet(w, 100 * MS);
        if run.groups.keys().all(|n| run.settled(w, n)) {
            return;
        }
    }
    panic!("groups did not form");
}

#[test]
fn many_groups_keep_virtual_synchrony_through_crashes_a_partition_and_loss() {
    let n = 250;
    let count = 50;
    let mut w = world(n, 0.05, 2, 1);
    let mut run = Run::new();
    form(&mut w, &mut run, count, 5);
    run.traffic(&mut w, 2 * S, 100 * MS, "a");
    // A member of every fourth group, and the coordinator of the next ones.
    for g in 0..count {
        match g % 4 {
            0 => w.crash(g + 2 * count),
            1 => w.crash(g),
            _ => {}
        }
    }
    // The zone of the last agents is cut off from everyone: one member
    // of each of several groups.
    let cut = w
        .agent(n - 1)
        .expect("up")
        .config()
        .leaf
        .parent()
        .expect("parent");
    w.partition(cut, ZonePath::root());
    run.traffic(&mut w, 4 * S, 100 * MS, "b");
    w.heal();
    run.traffic(&mut w, 6 * S, 100 * MS, "c");
    run.quiet(&mut w, 6 * S);
    for name in run.groups.keys() {
        assert!(run.settled(&w, name), "group {name} did not settle");
    }
    let (deliveries, views) = run.check(&w);
    eprintln!(
        "{count} groups: {} sent, {deliveries} deliveries checked, {views} views",
        run.sent
    );
    assert!(deliveries as u64 > 3 * run.sent);
}

#[test]
fn a_seed_gives_the_same_histories_on_one_two_and_three_threads() {
    let digest = |threads: usize| {
        let mut w = world(60, 0.05, threads, 7);
        let mut run = Run::new();
        form(&mut w, &mut run, 10, 3);
        run.traffic(&mut w, S, 100 * MS, "a");
        w.crash(0);
        run.traffic(&mut w, 2 * S, 100 * MS, "b");
        run.quiet(&mut w, 2 * S);
        run.check(&w);
        format!(
            "{:?}",
            run.hist
                .iter()
                .map(|(n, h)| (n.clone(), h.steps().clone()))
                .collect::<Vec<_>>()
        )
    };
    let one = digest(1);
    assert_eq!(one, digest(2));
    assert_eq!(one, digest(3));
}

#[test]
fn agents_that_create_one_group_at_once_end_in_one_group() {
    let mut w = world(64, 0.0, 1, 3);
    let mut run = Run::new();
    let members = vec![3, 20, 41, 60];
    // Nobody has the group yet: each creates its own.
    for &i in &members {
        w.with_host(i, |h, now| {
            h.with_service::<Crm, _>(now, |c, z| {
                c.join(&z, "one", vec![], Some(Box::new(Sum::default())))
            })
            .expect("runs crm")
        })
        .expect("alive")
        .expect("joined");
    }
    run.groups.insert("one".into(), members);
    for _ in 0..200 {
        run.quiet(&mut w, 100 * MS);
        if run.settled(&w, "one") {
            break;
        }
    }
    assert!(run.settled(&w, "one"), "the groups did not merge into one");
    run.traffic(&mut w, S, 100 * MS, "a");
    run.quiet(&mut w, 2 * S);
    run.check(&w);
}
