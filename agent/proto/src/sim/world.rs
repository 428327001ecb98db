//! A deterministic world of agents: simulated time, latency, loss,
//! partitions, crashes and restarts, all driven by one seeded generator.
//!
//! # Time windows
//!
//! No message arrives sooner than the network's minimum latency `L` after it
//! was sent, so within a window `[kL, (k+1)L)` of simulated time every
//! delivery was already scheduled when the window began, and no agent can
//! affect another inside it. The world therefore runs window by window: it
//! takes every event due in the window, hands each agent its own events in
//! `(time, sequence)` order (its own timers fire between them, in time
//! order, as they would one event at a time), runs the agents on several
//! threads, and then, on one thread and in agent order, passes the messages
//! they sent through the seeded network (loss, latency, partitions) and
//! schedules the next events. What an agent does depends only on its own
//! events, and the merge order only on agent indices, so a seed gives the
//! same run whatever the number of threads. With no minimum latency the
//! windows are 1 µs long: a message sent at `t` with no delay is delivered
//! in a later window at the same `t`.
//!
//! # The wire
//!
//! Messages travel as their real encoding ([`Packet`]): the threads that run
//! a window encode what each agent sends, and decode, with the receiver's
//! validation, what each agent receives, so the merge thread only moves
//! bytes. Bytes are counted per sending agent from the encoded length; a
//! message that does not decode is counted and dropped, as a real receiver
//! would. Each distinct row is decoded once and shared by every agent that
//! receives it ([`crate::row_wire`]), as equal bytes decode to equal rows:
//! that is how 100,000 agents fit in memory.
//!
//! # Faults
//!
//! Loss and latency ([`NetConfig`]), partitions between zones, crashes
//! (an agent loses all but its durable state) and restarts, and pauses (an
//! agent keeps its state but takes no input, and its clock has jumped when
//! it resumes, as after SIGSTOP and SIGCONT).
//!
//! # Services
//!
//! Each simulated agent is a [`Host`]: its gossip core and the services
//! beside it (none by default), every message routed by its envelope's
//! service id, as in the runtime. A world of services is made with
//! [`World::with_services`].
//!
//! # Clocks
//!
//! World time starts at 0; each agent reads its own [`Clock`] (a real-date
//! epoch, an offset and a drift). Every time handed to an agent is its local
//! time, and its wake-up times are converted back to world time.

use super::clock::Clock;
use super::pool::Pool;
use super::wire::Packet;
use crate::afc::AfcCert;
use crate::config::Config;
use crate::gossip::{Agent, Stats};
use crate::host::{Envelope, Host, Peer, Services};
use crate::path::ZonePath;
use crate::row::{Micros, Row};
use crate::security::Security;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
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

/// What falls due for an agent: a wake-up, or a message's delivery.
enum Due {
    Deliver { from: u32, packet: Packet },
    Wake,
}

/// One scheduled event. Events of one window are kept in the order they
/// were scheduled, which orders the events of one agent due at one time.
struct Scheduled {
    at: Micros,
    to: u32,
    due: Due,
}

/// Messages counted by the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub partitioned: u64,
    pub to_dead: u64,
    /// Messages that reached a paused agent, which takes no input.
    pub to_paused: u64,
    /// Delivered messages that the receiver could not decode (dropped).
    pub undecodable: u64,
    /// With [`World::set_check_round_trip`]: decoded messages encoded again
    /// and compared with the bytes that arrived, and those that differed.
    pub round_trips: u64,
    pub round_trip_mismatches: u64,
}

/// What one agent put on the wire, from the real encoding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    pub msgs: u64,
    pub bytes: u64,
    /// The share of eager pushes (`Message::Push`).
    pub push_msgs: u64,
    pub push_bytes: u64,
}

/// What an agent keeps across a crash: its configuration, keys and durable state.
#[derive(Clone)]
struct Durable {
    cfg: Config,
    security: Option<Arc<Security>>,
    afcs: Vec<Arc<AfcCert>>,
    local: Attrs,
    sensors: Attrs,
    /// Each service's saved state, by name.
    services: Vec<(&'static str, Vec<u8>)>,
}

/// What every worker reads: the address book and the agents' clocks.
struct Directory {
    index: FxHashMap<Arc<str>, u32>,
    /// Each agent as its receivers see it.
    peers: Vec<Peer>,
    clocks: Vec<Clock>,
}

/// A message an agent sent during a window, encoded, before the network saw it.
struct Sent {
    from: u32,
    /// World time.
    at: Micros,
    /// The addressee's index, if the address is known.
    to: Option<u32>,
    packet: Packet,
}

/// One agent's share of a window: the agent itself (moved out of the world
/// while it runs) and how many of the chunk's deliveries are its own.
struct Task<S> {
    id: u32,
    agent: Box<Host<S>>,
    /// Time of its first event in the window.
    start: Micros,
    deliveries: usize,
}

struct Delivery {
    at: Micros,
    from: u32,
    packet: Packet,
}

/// A run of consecutive agents processed by one thread; its output is
/// merged in agent order, so how a window is cut into chunks changes nothing.
struct Chunk<S> {
    /// Window end (exclusive): timers due before it fire inside the window.
    end: Micros,
    tasks: Vec<Task<S>>,
    deliveries: Vec<Delivery>,
    sent: Vec<Sent>,
    events: usize,
    /// Encode every decoded message again and compare.
    check_round_trip: bool,
    undecodable: u64,
    round_trips: u64,
    round_trip_mismatches: u64,
}

impl<S> Default for Chunk<S> {
    fn default() -> Chunk<S> {
        Chunk {
            end: 0,
            tasks: Vec::new(),
            deliveries: Vec::new(),
            sent: Vec::new(),
            events: 0,
            check_round_trip: false,
            undecodable: 0,
            round_trips: 0,
            round_trip_mismatches: 0,
        }
    }
}

/// Makes the services of agent `i` (at the start, and at each restart).
type MakeServices<S> = Arc<dyn Fn(usize) -> S + Send + Sync>;

/// Windows with fewer events than this run on the calling thread alone
/// (handing them to other threads would cost more than it saves).
const PARALLEL_MIN_EVENTS: usize = 64;
/// Chunks per thread in a window (so that a slow chunk does not leave the
/// other threads idle at the end of the window).
const CHUNKS_PER_THREAD: usize = 8;
/// Worlds smaller than this many agents per thread are set up on one thread.
const PARALLEL_MIN_AGENTS: usize = 512;

/// Many agents in one process, one clock, one seeded generator; each agent
/// a gossip core and the services `S`.
pub struct World<S: Services = ()> {
    now: Micros,
    /// Events by window: bucket `k` holds those due in `[k * width, (k+1) * width)`.
    buckets: BTreeMap<u64, Vec<Scheduled>>,
    spare_buckets: Vec<Vec<Scheduled>>,
    spare_chunks: Vec<Chunk<S>>,
    /// Window length: the minimum latency (at least 1 µs).
    width: Micros,
    agents: Vec<Option<Box<Host<S>>>>,
    /// Paused agents, kept out of `agents` until they resume.
    paused: Vec<Option<Box<Host<S>>>>,
    services: MakeServices<S>,
    durable: Vec<Durable>,
    /// Time of each agent's pending wake-up (MAX: none).
    scheduled: Vec<Micros>,
    dir: Arc<Directory>,
    rng: SmallRng,
    net: NetConfig,
    partitions: Vec<(ZonePath, ZonePath)>,
    pub net_stats: NetStats,
    /// Per agent: what it sent, from the real encoding.
    wire: Vec<WireStats>,
    check_round_trip: bool,
    restarts: u64,
    threads: usize,
    parallel_min_events: usize,
    pool: Option<Pool<Chunk<S>>>,
}

/// The number of threads the machine offers.
pub fn available_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl World {
    /// A world of agents with the given configurations; addresses must be
    /// unique. Every clock reads world time from [`super::clock::EPOCH`].
    /// It runs on as many threads as the machine offers
    /// ([`World::set_threads`] changes that; results do not depend on it).
    pub fn new(configs: Vec<Config>, net: NetConfig, seed: u64) -> World {
        let clocks = vec![Clock::default(); configs.len()];
        World::with_clocks(configs, clocks, net, seed)
    }

    /// [`World::new`] with each agent's own clock.
    pub fn with_clocks(
        configs: Vec<Config>,
        clocks: Vec<Clock>,
        net: NetConfig,
        seed: u64,
    ) -> World {
        World::with_services(configs, clocks, net, seed, |_| ())
    }
}

impl<S: Services> World<S> {
    /// [`World::with_clocks`] with services beside every gossip core:
    /// `services(i)` makes agent `i`'s, at the start and at each restart.
    pub fn with_services(
        configs: Vec<Config>,
        clocks: Vec<Clock>,
        net: NetConfig,
        seed: u64,
        services: impl Fn(usize) -> S + Send + Sync + 'static,
    ) -> World<S> {
        let services: MakeServices<S> = Arc::new(services);
        assert_eq!(configs.len(), clocks.len(), "one clock per agent");
        let index = configs
            .iter()
            .enumerate()
            .map(|(i, c)| (c.addr.clone(), i as u32))
            .collect();
        let peers = configs.iter().map(|c| Peer::at(c.addr.clone())).collect();
        let threads = available_threads();
        let started: Vec<(&Config, &Clock)> = configs.iter().zip(&clocks).collect();
        let numbered: Vec<(usize, &(&Config, &Clock))> = started.iter().enumerate().collect();
        let agents = par_map(&numbered, threads, |(i, (c, clock))| {
            let gossip = Agent::new((*c).clone(), clock.local(0));
            Some(Box::new(Host::new(gossip, services(*i))))
        });
        let durable = configs
            .into_iter()
            .map(|cfg| Durable {
                cfg,
                security: None,
                afcs: Vec::new(),
                local: Attrs::new(),
                sensors: Attrs::new(),
                services: Vec::new(),
            })
            .collect();
        let n = agents.len();
        let mut w = World {
            now: 0,
            buckets: BTreeMap::new(),
            spare_buckets: Vec::new(),
            spare_chunks: Vec::new(),
            // Offsets inside a window must fit in 32 bits.
            width: net.latency.0.clamp(1, u32::MAX as u64),
            scheduled: vec![Micros::MAX; n],
            paused: (0..n).map(|_| None).collect(),
            agents,
            services,
            durable,
            dir: Arc::new(Directory {
                index,
                peers,
                clocks,
            }),
            rng: SmallRng::seed_from_u64(seed ^ 0x5157_0001),
            net,
            partitions: Vec::new(),
            net_stats: NetStats::default(),
            wire: vec![WireStats::default(); n],
            check_round_trip: false,
            restarts: 0,
            threads: 1,
            parallel_min_events: PARALLEL_MIN_EVENTS,
            pool: None,
        };
        w.set_threads(threads);
        for i in 0..w.agents.len() {
            w.reschedule(i as u32);
        }
        w
    }

    /// Runs the agents on `n` threads (0: as many as the machine offers).
    /// The results are the same for every `n`.
    pub fn set_threads(&mut self, n: usize) {
        let n = if n == 0 { available_threads() } else { n };
        if n == self.threads && (n == 1 || self.pool.is_some()) {
            return;
        }
        self.threads = n;
        self.pool = None;
        if n > 1 {
            let dir = self.dir.clone();
            self.pool = Some(Pool::new(
                n - 1,
                Arc::new(move |c: &mut Chunk<S>| run_chunk(c, &dir)),
            ));
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Windows with fewer events than this run on one thread (tests lower
    /// it to exercise the threads on small worlds).
    pub fn set_parallel_min_events(&mut self, n: usize) {
        self.parallel_min_events = n;
    }

    /// Encode every decoded message again and count those whose bytes
    /// differ from what arrived (in [`NetStats`]); for tests of the wire.
    pub fn set_check_round_trip(&mut self, on: bool) {
        self.check_round_trip = on;
    }

    /// World time (agents read their own clocks: [`World::local_now`]).
    pub fn now(&self) -> Micros {
        self.now
    }

    /// What agent `i`'s clock reads now.
    pub fn local_now(&self, i: usize) -> Micros {
        self.dir.clocks[i].local(self.now)
    }

    pub fn clock(&self, i: usize) -> Clock {
        self.dir.clocks[i]
    }

    /// What agent `i` has sent so far, from the real encoding (kept across
    /// its restarts).
    pub fn wire_stats(&self, i: usize) -> WireStats {
        self.wire[i]
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Agent `i`'s gossip core, if it is up.
    pub fn agent(&self, i: usize) -> Option<&Agent> {
        self.agents[i].as_deref().map(|h| &h.gossip)
    }

    /// Agent `i`'s cores, if it is up.
    pub fn host(&self, i: usize) -> Option<&Host<S>> {
        self.agents[i].as_deref()
    }

    /// Mutable access for set-up and scenario steps, with the agent's local
    /// time; reschedules the agent after.
    pub fn with_agent<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Agent, Micros) -> T,
    ) -> Option<T> {
        let now = self.local_now(i);
        let out = self.agents[i].as_deref_mut().map(|h| f(&mut h.gossip, now));
        self.drain(i as u32);
        out
    }

    /// [`World::with_agent`] with the agent's cores: the gossip core and
    /// its services (reach one with [`Host::with_service`]).
    pub fn with_host<T>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Host<S>, Micros) -> T,
    ) -> Option<T> {
        let now = self.local_now(i);
        let out = self.agents[i].as_deref_mut().map(|h| f(h, now));
        self.drain(i as u32);
        out
    }

    /// [`World::with_agent`] for every live agent, `f` running on the
    /// world's threads; what the agents send goes out in agent order.
    pub fn with_each_agent(&mut self, f: impl Fn(usize, &mut Agent, Micros) + Sync) {
        let (now, dir) = (self.now, self.dir.clone());
        self.par_agents(|i, a| {
            if let Some(h) = a {
                f(i, &mut h.gossip, dir.clocks[i].local(now))
            }
        });
        for i in 0..self.agents.len() {
            self.drain(i as u32);
        }
    }

    pub fn alive(&self, i: usize) -> bool {
        self.agents[i].is_some()
    }

    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Turns security on for agent `i` (kept across restarts): it signs the
    /// rows it issues and verifies those it receives. Set it before the
    /// agent holds AFCs, which must then be signed.
    pub fn set_security(&mut self, i: usize, security: Option<Arc<Security>>) {
        self.durable[i].security = security.clone();
        if let Some(h) = self.agents[i].as_mut() {
            h.gossip.set_security(security);
        }
    }

    /// Sets the sensor readings an agent reports (kept across restarts).
    pub fn set_sensors(&mut self, i: usize, sensors: Attrs) {
        self.durable[i].sensors = sensors.clone();
        if let Some(h) = self.agents[i].as_mut() {
            h.gossip.set_sensors(sensors);
        }
    }

    /// Pauses an agent, as SIGSTOP does: it keeps its state but takes no
    /// input (messages to it are dropped and counted) and its timers stand
    /// still until [`World::resume`].
    pub fn pause(&mut self, i: usize) {
        if let Some(h) = self.agents[i].take() {
            self.paused[i] = Some(h);
            self.scheduled[i] = Micros::MAX;
        }
    }

    /// Resumes a paused agent: its clock has jumped by the pause, and every
    /// timer that fell due meanwhile fires at once.
    pub fn resume(&mut self, i: usize) {
        if let Some(h) = self.paused[i].take() {
            self.agents[i] = Some(h);
            self.reschedule(i as u32);
        }
    }

    pub fn is_paused(&self, i: usize) -> bool {
        self.paused[i].is_some()
    }

    /// Stops an agent: it loses everything but its durable state.
    pub fn crash(&mut self, i: usize) {
        if let Some(h) = self.agents[i].take().or_else(|| self.paused[i].take()) {
            let a = &h.gossip;
            self.durable[i].afcs = a.afcs().iter().map(|e| e.cert.clone()).collect();
            self.durable[i].local = a.local_attrs().clone();
            self.durable[i].services = h.services.save();
        }
        self.scheduled[i] = Micros::MAX;
    }

    /// Starts a crashed agent again from its durable state.
    pub fn restart(&mut self, i: usize) {
        if self.agents[i].is_some() || self.paused[i].is_some() {
            return;
        }
        self.restarts += 1;
        let d = self.durable[i].clone();
        let mut cfg = d.cfg;
        cfg.rng_seed = cfg
            .rng_seed
            .wrapping_add(0x9e37_79b9_7f4a_7c15u64.wrapping_mul(self.restarts));
        let mut a = Agent::new(cfg, self.local_now(i));
        // Security first, so that the restored AFCs are checked.
        a.set_security(d.security);
        a.restore(d.afcs, d.local);
        a.set_sensors(d.sensors);
        let mut host = Host::new(a, (self.services)(i));
        let saved = d.services.iter().map(|(n, s)| (*n, &s[..]));
        host.restore(self.local_now(i), saved);
        self.agents[i] = Some(Box::new(host));
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
        self.agents[i].as_ref().map(|h| h.gossip.stats())
    }

    /// Runs every event due up to and including `until`, window by window.
    pub fn run_until(&mut self, until: Micros) {
        let mut window: Vec<Scheduled> = self.spare_buckets.pop().unwrap_or_default();
        let mut keys: Vec<(u64, u32)> = Vec::new();
        while let Some(mut entry) = self.buckets.first_entry() {
            let start = entry.key().saturating_mul(self.width);
            if start > until {
                break;
            }
            let bucket_end = start.saturating_add(self.width);
            let end = bucket_end.min(until.saturating_add(1));
            if end < bucket_end {
                // The window stops at `until`: later events stay, in order.
                let bucket = entry.get_mut();
                for ev in std::mem::take(bucket) {
                    if ev.at < end {
                        window.push(ev);
                    } else {
                        bucket.push(ev);
                    }
                }
                if bucket.is_empty() {
                    entry.remove();
                }
                if window.is_empty() {
                    break;
                }
            } else {
                window.append(entry.get_mut());
                self.spare_buckets.push(entry.remove());
            }
            self.run_window(&mut window, &mut keys, start, end);
            self.now = self.now.max(end - 1);
        }
        self.spare_buckets.push(window);
        self.now = self.now.max(until);
    }

    /// Runs the events of one window (all due in `[start, end)`), then merges.
    fn run_window(
        &mut self,
        events: &mut Vec<Scheduled>,
        keys: &mut Vec<(u64, u32)>,
        start: Micros,
        end: Micros,
    ) {
        // By agent, then time, then the order of scheduling (the index).
        keys.clear();
        keys.extend(
            events
                .iter()
                .enumerate()
                .map(|(k, e)| (((e.to as u64) << 32) | (e.at - start), k as u32)),
        );
        keys.sort_unstable();
        let parallel = self.threads > 1 && events.len() >= self.parallel_min_events;
        let target = if parallel {
            events.len().div_ceil(self.threads * CHUNKS_PER_THREAD)
        } else {
            usize::MAX
        };
        let mut chunks: Vec<Chunk<S>> = Vec::new();
        let mut chunk = self.take_chunk(end);
        let mut cur: Option<(u32, Option<Micros>, usize)> = None;
        for &(_, k) in keys.iter() {
            let ev = &mut events[k as usize];
            let (at, to) = (ev.at, ev.to);
            let due = std::mem::replace(&mut ev.due, Due::Wake);
            if cur.is_some_and(|(id, _, _)| id != to) {
                let (id, first, n) = cur.take().expect("some");
                self.add_task(&mut chunk, id, first, n);
                if chunk.events >= target {
                    chunks.push(std::mem::replace(&mut chunk, self.take_chunk(end)));
                }
            }
            let (_, first, n) = cur.get_or_insert((to, None, 0));
            match due {
                Due::Wake => {
                    if self.scheduled[to as usize] == at {
                        self.scheduled[to as usize] = Micros::MAX;
                        first.get_or_insert(at);
                    }
                }
                Due::Deliver { from, packet } => {
                    if self.agents[to as usize].is_some() {
                        chunk.deliveries.push(Delivery { at, from, packet });
                        *n += 1;
                        first.get_or_insert(at);
                    } else if self.paused[to as usize].is_some() {
                        self.net_stats.to_paused += 1;
                    } else {
                        self.net_stats.to_dead += 1;
                    }
                }
            }
        }
        events.clear();
        if let Some((id, first, n)) = cur {
            self.add_task(&mut chunk, id, first, n);
        }
        chunks.push(chunk);

        let mut chunks = match &self.pool {
            Some(pool) if parallel && chunks.len() > 1 => pool.run_all(chunks),
            _ => {
                for c in chunks.iter_mut() {
                    run_chunk(c, &self.dir);
                }
                chunks
            }
        };

        // Merge in agent order: first the network, then the agents' timers.
        for c in chunks.iter_mut() {
            self.net_stats.undecodable += std::mem::take(&mut c.undecodable);
            self.net_stats.round_trips += std::mem::take(&mut c.round_trips);
            self.net_stats.round_trip_mismatches += std::mem::take(&mut c.round_trip_mismatches);
            for s in c.sent.drain(..) {
                self.send(s.from, s.at, s.to, s.packet);
            }
        }
        for mut c in chunks {
            for t in c.tasks.drain(..) {
                let at = self.dir.clocks[t.id as usize]
                    .world(t.agent.poll_timeout())
                    .max(end);
                self.agents[t.id as usize] = Some(t.agent);
                self.arm(t.id, at);
            }
            c.events = 0;
            self.spare_chunks.push(c);
        }
    }

    fn take_chunk(&mut self, end: Micros) -> Chunk<S> {
        let mut c = self.spare_chunks.pop().unwrap_or_default();
        c.end = end;
        c.check_round_trip = self.check_round_trip;
        c
    }

    /// Moves agent `id` into the chunk with its last `deliveries` deliveries,
    /// if it is alive and has something to do.
    fn add_task(
        &mut self,
        chunk: &mut Chunk<S>,
        id: u32,
        start: Option<Micros>,
        deliveries: usize,
    ) {
        let Some(start) = start else { return };
        let Some(agent) = self.agents[id as usize].take() else {
            return;
        };
        chunk.events += deliveries + 1;
        chunk.tasks.push(Task {
            id,
            agent,
            start,
            deliveries,
        });
    }

    fn schedule(&mut self, at: Micros, to: u32, due: Due) {
        let spare = &mut self.spare_buckets;
        self.buckets
            .entry(at / self.width)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(Scheduled { at, to, due });
    }

    /// Sets agent `i`'s wake-up to `at` unless an earlier one is pending.
    fn arm(&mut self, i: u32, at: Micros) {
        if at < self.scheduled[i as usize] {
            self.scheduled[i as usize] = at;
            self.schedule(at, i, Due::Wake);
        }
    }

    fn reschedule(&mut self, i: u32) {
        let Some(a) = self.agents[i as usize].as_ref() else {
            return;
        };
        let at = self.dir.clocks[i as usize]
            .world(a.poll_timeout())
            .max(self.now);
        self.arm(i, at);
    }

    /// Passes one message through the network: loss, partitions, latency.
    fn send(&mut self, from: u32, at: Micros, to: Option<u32>, packet: Packet) {
        self.net_stats.sent += 1;
        let w = &mut self.wire[from as usize];
        w.msgs += 1;
        w.bytes += packet.len() as u64;
        if packet.is_push() {
            w.push_msgs += 1;
            w.push_bytes += packet.len() as u64;
        }
        let Some(to) = to else {
            self.net_stats.to_dead += 1;
            return;
        };
        if self.net.loss > 0.0 && self.rng.random::<f64>() < self.net.loss {
            self.net_stats.lost += 1;
            return;
        }
        if self.blocked(from as usize, to as usize) {
            self.net_stats.partitioned += 1;
            return;
        }
        let (lo, hi) = self.net.latency;
        let delay = if hi > lo {
            self.rng.random_range(lo..=hi)
        } else {
            lo
        };
        self.schedule(at + delay, to, Due::Deliver { from, packet });
    }

    /// Moves an agent's outgoing messages onto the network and re-arms its
    /// timer (outside windows: set-up and scenario steps).
    fn drain(&mut self, i: u32) {
        while let Some(t) = self.agents[i as usize]
            .as_mut()
            .and_then(|h| h.poll_transmit())
        {
            let to = self.dir.index.get(&t.to).copied();
            self.send(i, self.now, to, Packet::from_outgoing(t));
        }
        if let Some(h) = self.agents[i as usize].as_mut() {
            drop_events(h);
        }
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

    /// Runs `f` on every agent slot, on the world's threads (each a
    /// contiguous range of agents). `f` must touch nothing but its agent.
    fn par_agents(&mut self, f: impl Fn(usize, &mut Option<Box<Host<S>>>) + Sync) {
        let n = self.agents.len();
        let threads = self.threads.min(n / PARALLEL_MIN_AGENTS).max(1);
        if threads == 1 {
            for (i, a) in self.agents.iter_mut().enumerate() {
                f(i, a);
            }
            return;
        }
        let per = n.div_ceil(threads);
        let f = &f;
        std::thread::scope(|s| {
            let mut parts = self.agents.chunks_mut(per).enumerate();
            let (_, mine) = parts.next().expect("agents");
            for (p, part) in parts {
                s.spawn(move || {
                    for (k, a) in part.iter_mut().enumerate() {
                        f(p * per + k, a);
                    }
                });
            }
            for (k, a) in mine.iter_mut().enumerate() {
                f(k, a);
            }
        });
    }
}

/// `f` over `items` on up to `threads` threads, results in order.
pub(super) fn par_map<T: Sync, U: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> U + Sync,
) -> Vec<U> {
    let threads = threads.min(items.len() / PARALLEL_MIN_AGENTS).max(1);
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let mut parts = items.chunks(per);
        let mine = parts.next().expect("items");
        let others: Vec<_> = parts
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<U>>()))
            .collect();
        let mut out: Vec<U> = mine.iter().map(f).collect();
        for h in others {
            out.extend(h.join().expect("set-up thread"));
        }
        out
    })
}

/// Runs each agent of a chunk through its events of the window, in time
/// order, firing its timers between them, and collects what it sends. The
/// agent reads its own clock; times here are world times.
fn run_chunk<S: Services>(c: &mut Chunk<S>, dir: &Directory) {
    let last = c.end - 1;
    let mut deliveries = c.deliveries.drain(..);
    for t in c.tasks.iter_mut() {
        let (a, id) = (&mut *t.agent, t.id);
        let clock = dir.clocks[id as usize];
        let mut now = t.start;
        for d in deliveries.by_ref().take(t.deliveries) {
            fire_timers(a, id, &mut now, d.at, dir, &mut c.sent);
            now = d.at;
            let from = &dir.peers[d.from as usize];
            let cluster = a.gossip.config().cluster;
            let handled = match d.packet.open(cluster) {
                Ok(Envelope::Gossip(msg)) => {
                    if c.check_round_trip {
                        c.round_trips += 1;
                        if Packet::seal(cluster, &msg) != d.packet {
                            c.round_trip_mismatches += 1;
                        }
                    }
                    a.gossip.handle_message(clock.local(now), &from.addr, msg);
                    Ok(())
                }
                Ok(Envelope::Service { id, payload }) => {
                    a.handle_service(clock.local(now), from, id, payload)
                }
                Err(e) => Err(e.refusal()),
            };
            if let Err(why) = handled {
                tracing::debug!(to = %a.gossip.leaf(), %why, "undecodable message dropped");
                c.undecodable += 1;
                continue;
            }
            collect(a, id, now, dir, &mut c.sent);
        }
        fire_timers(a, id, &mut now, last, dir, &mut c.sent);
    }
}

/// Fires the agent's timers due at or before world time `upto`.
fn fire_timers<S: Services>(
    a: &mut Host<S>,
    id: u32,
    now: &mut Micros,
    upto: Micros,
    dir: &Directory,
    sent: &mut Vec<Sent>,
) {
    let clock = dir.clocks[id as usize];
    loop {
        let due = clock.world(a.poll_timeout());
        if due > upto {
            return;
        }
        *now = due.max(*now);
        a.handle_timeout(clock.local(*now));
        collect(a, id, *now, dir, sent);
    }
}

/// Encodes what the agent wants sent (and drops its events: nobody listens).
fn collect<S: Services>(
    a: &mut Host<S>,
    id: u32,
    at: Micros,
    dir: &Directory,
    sent: &mut Vec<Sent>,
) {
    while let Some(t) = a.poll_transmit() {
        sent.push(Sent {
            from: id,
            at,
            to: dir.index.get(&t.to).copied(),
            packet: Packet::from_outgoing(t),
        });
    }
    drop_events(a);
}

/// Drops the events of every core of a host: nobody listens in the simulator.
fn drop_events<S: Services>(h: &mut Host<S>) {
    while h.gossip.poll_event().is_some() {}
    while h.services.poll_event().is_some() {}
}

impl<S: Services> World<S> {
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
        let dir = self.dir.clone();
        let now = self.now;
        self.par_agents(|i, a| settle(a, dir.clocks[i].local(now)));
        // Zone at depth d (a row in the table at depth d-1), bottom-up: its
        // first agent computes the row, every agent of the parent zone gets it.
        for d in (1..=depth).rev() {
            self.now += 1;
            let now = self.now;
            let parents = groups(&leaves, d - 1);
            let zones = groups(&leaves, d);
            if d < depth {
                let mut first = vec![false; n];
                for (start, _) in &zones {
                    first[*start] = true;
                }
                self.par_agents(|i, a| {
                    if first[i] {
                        settle(a, dir.clocks[i].local(now))
                    }
                });
            }
            let rows: Vec<(usize, Option<Arc<Row>>)> = zones
                .iter()
                .map(|(start, _)| {
                    let zone = leaves[*start].ancestor(d);
                    let row = self.agents[*start]
                        .as_ref()
                        .and_then(|h| h.gossip.row_of(&zone).cloned());
                    (*start, row)
                })
                .collect();
            self.par_agents(|j, a| {
                let Some(h) = a else { return };
                let a = &mut h.gossip;
                let local = dir.clocks[j].local(now);
                let (ps, pe) = parents[parents.partition_point(|(_, e)| *e <= j)];
                let from = rows.partition_point(|(start, _)| *start < ps);
                for (start, row) in &rows[from..] {
                    if *start >= pe {
                        break;
                    }
                    if *start != j
                        && let Some(row) = row
                    {
                        a.seed_row(local, row.clone());
                    }
                }
            });
        }
        self.now += 1;
        let now = self.now;
        self.par_agents(|i, a| settle(a, dir.clocks[i].local(now)));
        for i in 0..n {
            self.scheduled[i] = Micros::MAX;
            self.reschedule(i as u32);
        }
    }
}

/// Re-aggregates an agent at once (set-up), dropping what it would send.
fn settle<S: Services>(a: &mut Option<Box<Host<S>>>, now: Micros) {
    if let Some(h) = a {
        h.gossip.settle(now);
        drop_events(h);
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
