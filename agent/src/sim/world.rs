//! A deterministic world of agents: simulated time, latency, loss,
//! partitions, crashes and restarts, all driven by one seeded generator.

use crate::afc::AfcCert;
use crate::agent::{Agent, Stats};
use crate::config::Config;
use crate::message::Message;
use crate::path::ZonePath;
use crate::row::Micros;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use zone_sql::Attrs;

/// How the simulated network behaves.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Probability that a message is lost.
    pub loss: f64,
    /// One-way delay, uniform in this range (microseconds).
    pub latency: (Micros, Micros),
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            loss: 0.0,
            latency: (5_000, 50_000),
        }
    }
}

/// What falls due: a wake-up, or the delivery of the message parked at a
/// slot of the in-flight list (heap entries stay small: sifting is the
/// simulator's innermost loop).
#[derive(Clone, Copy)]
enum Due {
    Deliver { slot: u32 },
    Wake { agent: u32 },
}

struct Scheduled {
    at: Micros,
    seq: u64,
    due: Due,
}

struct InFlight {
    to: u32,
    from: u32,
    msg: Message,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Messages and bytes counted by the network.
#[derive(Debug, Clone, Default)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub partitioned: u64,
    pub to_dead: u64,
}

/// What an agent keeps across a crash: its configuration and durable state.
#[derive(Clone)]
struct Durable {
    cfg: Config,
    afcs: Vec<Arc<AfcCert>>,
    local: Attrs,
    sensors: Attrs,
}

/// Many agents in one process, one clock, one seeded generator.
pub struct World {
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    in_flight: Vec<Option<InFlight>>,
    free_slots: Vec<u32>,
    agents: Vec<Option<Agent>>,
    durable: Vec<Durable>,
    scheduled: Vec<Micros>,
    index: FxHashMap<Arc<str>, u32>,
    rng: SmallRng,
    net: NetConfig,
    partitions: Vec<(ZonePath, ZonePath)>,
    pub net_stats: NetStats,
    restarts: u64,
}

impl World {
    /// A world of agents with the given configurations; addresses must be unique.
    pub fn new(configs: Vec<Config>, net: NetConfig, seed: u64) -> World {
        let index = configs
            .iter()
            .enumerate()
            .map(|(i, c)| (c.addr.clone(), i as u32))
            .collect();
        let durable = configs
            .iter()
            .map(|c| Durable {
                cfg: c.clone(),
                afcs: Vec::new(),
                local: Attrs::new(),
                sensors: Attrs::new(),
            })
            .collect();
        let agents: Vec<Option<Agent>> = configs
            .into_iter()
            .map(|c| Some(Agent::new(c, 0)))
            .collect();
        let mut w = World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            in_flight: Vec::new(),
            free_slots: Vec::new(),
            scheduled: vec![Micros::MAX; agents.len()],
            agents,
            durable,
            index,
            rng: SmallRng::seed_from_u64(seed ^ 0x5157_0001),
            net,
            partitions: Vec::new(),
            net_stats: NetStats::default(),
            restarts: 0,
        };
        for i in 0..w.agents.len() {
            w.reschedule(i as u32);
        }
        w
    }

    pub fn now(&self) -> Micros {
        self.now
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn agent(&self, i: usize) -> Option<&Agent> {
        self.agents[i].as_ref()
    }

    /// Mutable access for set-up and scenario steps; reschedules the agent after.
    pub fn with_agent<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Agent, Micros) -> T,
    ) -> Option<T> {
        let now = self.now;
        let out = self.agents[i].as_mut().map(|a| f(a, now));
        self.drain(i as u32);
        out
    }

    pub fn alive(&self, i: usize) -> bool {
        self.agents[i].is_some()
    }

    pub fn live_count(&self) -> usize {
        self.agents.iter().filter(|a| a.is_some()).count()
    }

    pub fn index_of(&self, addr: &str) -> Option<usize> {
        self.index.get(addr).map(|i| *i as usize)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Sets the sensor readings an agent reports (kept across restarts).
    pub fn set_sensors(&mut self, i: usize, sensors: Attrs) {
        self.durable[i].sensors = sensors.clone();
        if let Some(a) = self.agents[i].as_mut() {
            a.set_sensors(sensors);
        }
    }

    /// Stops an agent: it loses everything but its durable state.
    pub fn crash(&mut self, i: usize) {
        if let Some(a) = self.agents[i].take() {
            self.durable[i].afcs = a.afcs().iter().map(|e| e.cert.clone()).collect();
            self.durable[i].local = a.local_attrs().clone();
        }
        self.scheduled[i] = Micros::MAX;
    }

    /// Starts a crashed agent again from its durable state.
    pub fn restart(&mut self, i: usize) {
        if self.agents[i].is_some() {
            return;
        }
        self.restarts += 1;
        let d = self.durable[i].clone();
        let mut cfg = d.cfg;
        cfg.rng_seed = cfg
            .rng_seed
            .wrapping_add(0x9e37_79b9_7f4a_7c15 * self.restarts);
        let mut a = Agent::new(cfg, self.now);
        a.restore(d.afcs, d.local);
        a.set_sensors(d.sensors);
        self.agents[i] = Some(a);
        self.reschedule(i as u32);
    }

    /// Drops every message between the agents under `a` and those under `b`.
    pub fn partition(&mut self, a: ZonePath, b: ZonePath) {
        self.partitions.push((a, b));
    }

    pub fn heal(&mut self) {
        self.partitions.clear();
    }

    /// Sums the counters of the live agents.
    pub fn stats_of(&self, i: usize) -> Option<&Stats> {
        self.agents[i].as_ref().map(|a| a.stats())
    }

    /// Runs every event due up to and including `until`.
    pub fn run_until(&mut self, until: Micros) {
        while let Some(Reverse(top)) = self.queue.peek() {
            if top.at > until {
                break;
            }
            let Reverse(ev) = self.queue.pop().expect("peeked");
            self.now = ev.at;
            match ev.due {
                Due::Wake { agent } => {
                    if self.scheduled[agent as usize] != ev.at {
                        continue;
                    }
                    self.scheduled[agent as usize] = Micros::MAX;
                    if let Some(a) = self.agents[agent as usize].as_mut() {
                        a.handle_timeout(ev.at);
                    }
                    self.drain(agent);
                }
                Due::Deliver { slot } => {
                    let InFlight { to, from, msg } = self.in_flight[slot as usize]
                        .take()
                        .expect("parked message");
                    self.free_slots.push(slot);
                    let from_addr = self.durable[from as usize].cfg.addr.clone();
                    match self.agents[to as usize].as_mut() {
                        Some(a) => a.handle_message(ev.at, &from_addr, msg),
                        None => {
                            self.net_stats.to_dead += 1;
                            continue;
                        }
                    }
                    self.drain(to);
                }
            }
        }
        self.now = self.now.max(until);
    }

    fn push(&mut self, at: Micros, due: Due) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            due,
        }));
    }

    fn reschedule(&mut self, i: u32) {
        let Some(a) = self.agents[i as usize].as_ref() else {
            return;
        };
        let at = a.poll_timeout().max(self.now);
        if at < self.scheduled[i as usize] {
            self.scheduled[i as usize] = at;
            self.push(at, Due::Wake { agent: i });
        }
    }

    /// Moves an agent's outgoing messages onto the network and re-arms its timer.
    fn drain(&mut self, i: u32) {
        loop {
            let Some(t) = self.agents[i as usize]
                .as_mut()
                .and_then(|a| a.poll_transmit())
            else {
                break;
            };
            self.net_stats.sent += 1;
            let Some(&to) = self.index.get(&t.to) else {
                self.net_stats.to_dead += 1;
                continue;
            };
            if self.net.loss > 0.0 && self.rng.random::<f64>() < self.net.loss {
                self.net_stats.lost += 1;
                continue;
            }
            if self.blocked(i as usize, to as usize) {
                self.net_stats.partitioned += 1;
                continue;
            }
            let (lo, hi) = self.net.latency;
            let delay = if hi > lo {
                self.rng.random_range(lo..=hi)
            } else {
                lo
            };
            let parked = Some(InFlight {
                to,
                from: i,
                msg: t.msg,
            });
            let slot = match self.free_slots.pop() {
                Some(s) => {
                    self.in_flight[s as usize] = parked;
                    s
                }
                None => {
                    self.in_flight.push(parked);
                    (self.in_flight.len() - 1) as u32
                }
            };
            self.push(self.now + delay, Due::Deliver { slot });
        }
        while self.agents[i as usize]
            .as_mut()
            .and_then(|a| a.poll_event())
            .is_some()
        {}
        self.reschedule(i);
    }

    fn blocked(&self, a: usize, b: usize) -> bool {
        if self.partitions.is_empty() {
            return false;
        }
        let (la, lb) = (&self.durable[a].cfg.leaf, &self.durable[b].cfg.leaf);
        self.partitions
            .iter()
            .any(|(x, y)| (x.contains(la) && y.contains(lb)) || (x.contains(lb) && y.contains(la)))
    }
}

impl World {
    /// Fills every agent's tables as if the system had run for a while: leaf
    /// rows first, then each zone's row as its first representative computes
    /// it, bottom-up, each handed to every agent that holds the table.
    ///
    /// Requires agents indexed in path order with leaves at one depth, as
    /// [`super::tree::balanced`] makes them.
    pub fn warm_start(&mut self) {
        let n = self.agents.len();
        if n == 0 {
            return;
        }
        let leaves: Vec<ZonePath> = self.durable.iter().map(|d| d.cfg.leaf.clone()).collect();
        let depth = leaves[0].depth();
        for i in 0..n {
            self.settle(i);
        }
        // Zone at depth d (a row in the table at depth d-1), bottom-up.
        for d in (1..=depth).rev() {
            self.now += 1;
            let parents = groups(&leaves, d - 1);
            let mut p = 0;
            for (start, _) in groups(&leaves, d) {
                while parents[p].1 <= start {
                    p += 1;
                }
                let zone = leaves[start].ancestor(d);
                if d < depth {
                    self.settle(start);
                }
                let Some(row) = self.agents[start]
                    .as_ref()
                    .and_then(|a| a.row_of(&zone).cloned())
                else {
                    continue;
                };
                let (ps, pe) = parents[p];
                for j in ps..pe {
                    if j != start
                        && let Some(a) = self.agents[j].as_mut()
                    {
                        a.seed_row(self.now, row.clone());
                    }
                }
            }
        }
        self.now += 1;
        for i in 0..n {
            self.settle(i);
        }
    }

    fn settle(&mut self, i: usize) {
        let now = self.now;
        if let Some(a) = self.agents[i].as_mut() {
            a.settle(now);
            while a.poll_event().is_some() {}
        }
        self.scheduled[i] = Micros::MAX;
        self.reschedule(i as u32);
    }
}

/// Contiguous index ranges of agents sharing their ancestor at depth `d`.
fn groups(leaves: &[ZonePath], d: usize) -> Vec<(usize, usize)> {
    let prefix = |l: &ZonePath| -> usize {
        if d == 0 {
            return 0;
        }
        l.as_str()
            .match_indices('/')
            .nth(d)
            .map(|(i, _)| i)
            .unwrap_or(l.as_str().len())
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut key = &leaves[0].as_str()[..prefix(&leaves[0])];
    for (i, l) in leaves.iter().enumerate().skip(1) {
        let k = &l.as_str()[..prefix(l)];
        if k != key {
            out.push((start, i));
            start = i;
            key = k;
        }
    }
    out.push((start, leaves.len()));
    out
}
