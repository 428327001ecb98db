//! The replicated key-value endpoint in the simulator: groups of three
//! serve the store, simulated clients send requests (one at a time each,
//! with a client id and a sequence number) and retry the same request at
//! the next member when theirs is slow, gone or cut off, while a nemesis
//! crashes members, restarts them (they rejoin as new incarnations) and
//! cuts a zone off under loss. Every group's client history must be
//! linearizable, and every member must end with the same store. The same
//! run is made with the store as an external machine: each member's
//! "process" reads the ordered requests, answers them later and now and
//! then hands its state over, as `armillary crm machine` does.

use armillary_proto::crm::linear::{Call, check_kv};
use armillary_proto::crm::{
    Crm, CrmConfig, Endpoint, External, KvOp, KvReply, KvStore, Mode, Phase, Replica, Reply,
    Request, StateMachine,
};
use armillary_proto::sim::{Clock, NetConfig, World, tree};
use armillary_proto::{Micros, ZonePath};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const MS: Micros = 1_000;
const S: Micros = 1_000_000;
/// A client waits this long for a reply before it tries the next member.
const RETRY_AFTER: Micros = 800 * MS;

type W = World<(Crm,)>;

fn world(n: usize, loss: f64, seed: u64) -> W {
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
    w.set_threads(2);
    w.set_parallel_min_events(1);
    w.warm_start();
    w.run_until(w.now() + S);
    w
}

fn addr(w: &W, i: usize) -> Arc<str> {
    w.agent(i).expect("up").config().addr.clone()
}

fn serve(w: &mut W, i: usize, group: &str, contacts: Vec<Arc<str>>, external: bool) -> bool {
    let replica: Box<dyn Replica> = if external {
        // Handing the state over often, so joiners start from one.
        Box::new(External::new().compact_after(64))
    } else {
        Box::new(Endpoint::new(KvStore::default()))
    };
    w.with_host(i, |h, now| {
        h.with_service::<Crm, _>(now, |c, z| {
            c.join(&z, group, contacts, Some(replica)).is_ok()
        })
        .expect("runs crm")
    })
    .unwrap_or(false)
}

struct Outstanding {
    seq: u64,
    op: KvOp,
    invoke: Micros,
    sent_at: Micros,
}

struct Client {
    id: u64,
    group: usize,
    at: usize,
    seq: u64,
    now: Option<Outstanding>,
    failovers: u64,
}

struct Group {
    name: String,
    members: Vec<usize>,
    calls: Vec<Call<KvOp, KvReply>>,
}

/// A member's external process: the store, and the state generation it
/// started from.
struct Process {
    generation: u64,
    store: KvStore,
}

struct Run {
    groups: Vec<Group>,
    clients: Vec<Client>,
    rng: SmallRng,
    /// With external machines: each serving member's process, by agent
    /// and group.
    external: bool,
    processes: BTreeMap<(usize, String), Process>,
}

impl Run {
    fn op(&mut self) -> KvOp {
        let key = format!("k{}", self.rng.random_range(0..3));
        match self.rng.random_range(0..4) {
            0 => KvOp::Get { key },
            1 => KvOp::Put {
                key,
                value: format!("v{}", self.rng.random_range(0..4)),
            },
            2 => KvOp::Incr {
                key: format!("n{key}"),
                by: 1,
            },
            _ => KvOp::Cas {
                key,
                old: format!("v{}", self.rng.random_range(0..4)),
                new: format!("v{}", self.rng.random_range(0..4)),
            },
        }
    }

    /// Sends client `c`'s outstanding request to its current member.
    fn send(&mut self, w: &mut W, c: usize) {
        let cl = &mut self.clients[c];
        let g = &self.groups[cl.group];
        let i = g.members[cl.at];
        let out = cl.now.as_mut().expect("outstanding");
        out.sent_at = w.now();
        let data = Request {
            client: cl.id,
            seq: out.seq,
            op: out.op.encode(),
        }
        .encode();
        let name = g.name.clone();
        let taken = w
            .with_host(i, |h, now| {
                let crm = &mut h.services.0;
                crm.group(&name)
                    .is_some_and(|g| g.phase() == Phase::Member && g.replica().is_some())
                    && crm.send(now, &name, Mode::Safe, data).is_ok()
            })
            .unwrap_or(false);
        if !taken {
            // Not served there: the next member at the next step.
            out.sent_at = 0;
        }
    }

    /// One step: new requests, retries, and the replies that came.
    fn step(&mut self, w: &mut W, issue: bool) {
        let now = w.now();
        for c in 0..self.clients.len() {
            match &self.clients[c].now {
                None if issue => {
                    let op = self.op();
                    let cl = &mut self.clients[c];
                    cl.seq += 1;
                    cl.now = Some(Outstanding {
                        seq: cl.seq,
                        op,
                        invoke: now,
                        sent_at: 0,
                    });
                    self.send(w, c);
                }
                Some(o) if o.sent_at == 0 || now >= o.sent_at + RETRY_AFTER => {
                    let cl = &mut self.clients[c];
                    cl.at = (cl.at + 1) % self.groups[cl.group].members.len();
                    cl.failovers += 1;
                    self.send(w, c);
                }
                _ => {}
            }
        }
        w.run_until(now + 10 * MS);
        // Replies: the deliveries at the member each client waits on, and
        // the answers of its process.
        let mut replies = Vec::new();
        for i in 0..w.len() {
            if !w.alive(i) {
                continue;
            }
            let evs = w
                .with_host(i, |h, _| h.services.0.take_events())
                .expect("alive");
            for e in evs {
                let armillary_proto::crm::GroupEvent::Deliver {
                    group,
                    data,
                    reply: Some(reply),
                    ..
                } = e
                else {
                    continue;
                };
                if let Some((client, seq)) = Request::key_of(&data) {
                    replies.push((i, group.to_string(), client, seq, reply));
                }
            }
        }
        if self.external {
            replies.extend(self.run_processes(w));
        }
        for (i, group, client, seq, reply) in replies {
            self.complete(w.now(), i, &group, client, seq, &reply);
        }
    }

    /// Every serving member's process runs what it has not run yet and
    /// answers; past the compaction point it hands its state over.
    fn run_processes(&mut self, w: &mut W) -> Vec<(usize, String, u64, u64, Vec<u8>)> {
        let mut out = Vec::new();
        for g in &self.groups {
            for &i in &g.members {
                if !w.alive(i) {
                    continue;
                }
                let name = g.name.clone();
                let process = self.processes.entry((i, name.clone()));
                let answers = w
                    .with_host(i, |h, _| {
                        let crm = &mut h.services.0;
                        let ext = crm.group_mut(&name)?.replica_as::<External>()?;
                        let p = process.or_insert_with(|| Process {
                            generation: u64::MAX,
                            store: KvStore::default(),
                        });
                        if p.generation != ext.generation() {
                            // Started, or the state was replaced: from the base.
                            p.generation = ext.generation();
                            ext.restart();
                            p.store = KvStore::default();
                            let (_, base) = ext.base();
                            if !base.is_empty() {
                                p.store.restore(base).expect("a handed state");
                            }
                        }
                        let todo: Vec<_> = ext.after(ext.answered(), usize::MAX).cloned().collect();
                        let mut answers = Vec::new();
                        for l in todo {
                            let reply = p.store.apply(&l.op);
                            let (client, seq) = ext.answer(l.at, &reply).expect("in order");
                            answers.push((client, seq, Reply::Done(reply).encode()));
                        }
                        if ext.wants_state() {
                            let at = ext.answered();
                            ext.take_state(at, p.store.snapshot()).expect("answered");
                        }
                        Some(answers)
                    })
                    .flatten()
                    .unwrap_or_default();
                out.extend(
                    answers
                        .into_iter()
                        .map(|(c, s, r)| (i, g.name.clone(), c, s, r)),
                );
            }
        }
        out
    }

    /// The client waiting at member `i` for request `seq` gets `reply`.
    fn complete(
        &mut self,
        now: Micros,
        i: usize,
        group: &str,
        client: u64,
        seq: u64,
        reply: &[u8],
    ) {
        for cl in &mut self.clients {
            let g = &mut self.groups[cl.group];
            if cl.id != client
                || *g.name != *group
                || g.members[cl.at] != i
                || cl.now.as_ref().is_none_or(|o| o.seq != seq)
            {
                continue;
            }
            let o = cl.now.take().expect("outstanding");
            let Some(Reply::Done(r)) = Reply::decode(reply) else {
                panic!("request {seq} of {client} answered stale");
            };
            g.calls.push(Call {
                invoke: o.invoke,
                complete: Some(now),
                op: o.op,
                ret: Some(serde_json::from_slice(&r).expect("a store reply")),
            });
        }
    }

    fn run(&mut self, w: &mut W, dt: Micros, issue: bool) {
        let end = w.now() + dt;
        while w.now() < end {
            self.step(w, issue);
        }
    }
}

#[test]
fn the_store_stays_linearizable_through_crashes_restarts_a_partition_and_loss() {
    nemesis(false);
}

#[test]
fn an_external_machine_stays_linearizable_through_the_same() {
    nemesis(true);
}

fn nemesis(external: bool) {
    let n = 150;
    let mut w = world(n, 0.05, 11);
    let count = 24;
    let stride = n / 3;
    let mut run = Run {
        groups: Vec::new(),
        clients: Vec::new(),
        rng: SmallRng::seed_from_u64(5),
        external,
        processes: BTreeMap::new(),
    };
    for g in 0..count {
        // Members in different zones.
        let members: Vec<usize> = (0..3).map(|r| g + r * stride).collect();
        let name = format!("kv{g}");
        let creator = addr(&w, members[0]);
        for (r, &i) in members.iter().enumerate() {
            let contacts = if r == 0 {
                vec![]
            } else {
                vec![creator.clone()]
            };
            assert!(serve(&mut w, i, &name, contacts, external));
        }
        run.groups.push(Group {
            name,
            members,
            calls: Vec::new(),
        });
        for k in 0..3 {
            run.clients.push(Client {
                id: (g * 10 + k) as u64 + 1,
                group: g,
                at: k % 3,
                seq: 0,
                now: None,
                failovers: 0,
            });
        }
    }
    run.run(&mut w, 3 * S, false);
    run.run(&mut w, 3 * S, true);
    // Crash the first member of half the groups: their clients there fail over.
    for g in 0..count / 2 {
        w.crash(run.groups[g].members[0]);
    }
    run.run(&mut w, 4 * S, true);
    // The crashed come back empty and serve again, as new incarnations.
    for g in 0..count / 2 {
        let i = run.groups[g].members[0];
        w.restart(i);
        let contact = addr(&w, run.groups[g].members[1]);
        let name = run.groups[g].name.clone();
        // Its process died with it.
        run.processes.remove(&(i, name.clone()));
        serve(&mut w, i, &name, vec![contact], external);
    }
    run.run(&mut w, 3 * S, true);
    // A zone holding one member of several groups is cut off, then healed.
    let cut = w
        .agent(stride)
        .expect("up")
        .config()
        .leaf
        .parent()
        .expect("parent");
    w.partition(cut, ZonePath::root());
    run.run(&mut w, 4 * S, true);
    w.heal();
    run.run(&mut w, 4 * S, true);
    // Quiet: outstanding requests finish or are left unanswered.
    run.run(&mut w, 8 * S, false);

    let mut answered = 0;
    let failovers: u64 = run.clients.iter().map(|c| c.failovers).sum();
    for c in &run.clients {
        if let Some(o) = &c.now {
            run.groups[c.group].calls.push(Call {
                invoke: o.invoke,
                complete: None,
                op: o.op.clone(),
                ret: None,
            });
        }
    }
    for g in &run.groups {
        answered += g.calls.iter().filter(|c| c.ret.is_some()).count();
        check_kv(&g.calls).unwrap_or_else(|(key, e)| panic!("group {} key {key}: {e}", g.name));
        let members = g.members.iter().filter(|&&i| {
            w.host(i)
                .and_then(|h| h.services.0.group(&g.name))
                .is_some_and(|gr| gr.phase() == Phase::Member)
        });
        let stores: BTreeSet<Vec<u8>> = if external {
            members
                .map(|&i| run.processes[&(i, g.name.clone())].store.snapshot())
                .collect()
        } else {
            members
                .filter_map(|&i| w.host(i))
                .filter_map(|h| h.services.0.group(&g.name))
                .map(|gr| gr.replica().expect("serving").snapshot())
                .collect()
        };
        assert_eq!(stores.len(), 1, "group {}: members' stores differ", g.name);
    }
    eprintln!(
        "{count} groups (external: {external}): {answered} calls answered and checked, {failovers} failovers"
    );
    assert!(answered > 10_000, "only {answered} calls answered");
    assert!(failovers >= count as u64 / 2, "the crashes moved no client");
}
