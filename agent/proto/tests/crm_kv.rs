//! The replicated key-value endpoint in the simulator: groups of three
//! serve the store, simulated clients send requests (one at a time each,
//! with a client id and a sequence number) and retry the same request at
//! the next member when theirs is slow, gone or cut off, while a nemesis
//! crashes members, restarts them (they rejoin as new incarnations) and
//! cuts a zone off under loss. Every group's client history must be
//! linearizable, and every member must end with the same store.

use armillary_proto::crm::linear::{Call, check_kv};
use armillary_proto::crm::{
    Crm, CrmConfig, Endpoint, KvOp, KvReply, KvStore, Mode, Phase, Reply, Request,
};
use armillary_proto::sim::{Clock, NetConfig, World, tree};
use armillary_proto::{Micros, ZonePath};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
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

fn serve(w: &mut W, i: usize, group: &str, contacts: Vec<Arc<str>>) -> bool {
    w.with_host(i, |h, now| {
        h.with_service::<Crm, _>(now, |c, z| {
            c.join(
                &z,
                group,
                contacts,
                Some(Box::new(Endpoint::new(KvStore::default()))),
            )
            .is_ok()
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

struct Run {
    groups: Vec<Group>,
    clients: Vec<Client>,
    rng: SmallRng,
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
        // Replies: the deliveries at the member each client waits on.
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
                let Some((client, seq)) = Request::key_of(&data) else {
                    continue;
                };
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
                    let Some(Reply::Done(r)) = Reply::decode(&reply) else {
                        panic!("request {seq} of {client} answered stale");
                    };
                    g.calls.push(Call {
                        invoke: o.invoke,
                        complete: Some(w.now()),
                        op: o.op,
                        ret: Some(serde_json::from_slice(&r).expect("a store reply")),
                    });
                }
            }
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
    let n = 150;
    let mut w = world(n, 0.05, 11);
    let count = 24;
    let stride = n / 3;
    let mut run = Run {
        groups: Vec::new(),
        clients: Vec::new(),
        rng: SmallRng::seed_from_u64(5),
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
            assert!(serve(&mut w, i, &name, contacts));
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
        serve(&mut w, i, &name, vec![contact]);
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
        let stores: BTreeSet<Vec<u8>> = g
            .members
            .iter()
            .filter_map(|&i| w.host(i))
            .filter_map(|h| h.services.0.group(&g.name))
            .filter(|gr| gr.phase() == Phase::Member)
            .map(|gr| gr.replica().expect("serving").snapshot())
            .collect();
        assert_eq!(stores.len(), 1, "group {}: members' stores differ", g.name);
    }
    eprintln!("{count} groups: {answered} calls answered and checked, {failovers} failovers");
    assert!(answered > 10_000, "only {answered} calls answered");
    assert!(failovers >= count as u64 / 2, "the crashes moved no client");
}
