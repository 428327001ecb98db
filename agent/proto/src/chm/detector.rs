//! The failure detector among the agents of one leaf zone (the agents
//! whose leaf rows share a table): SWIM with Lifeguard's refinements.
//!
//! - Every probe period an agent pings the next member of a shuffled
//!   round; without an ack within the probe timeout it asks `indirect`
//!   other members to ping it; without any ack by the end of the period it
//!   suspects the member and tells the group.
//! - A suspicion becomes a death after a timeout that starts at
//!   `suspicion_max` and falls towards `suspicion_min` as independent
//!   suspicions (confirmations) arrive (Lifeguard's dynamic suspicion).
//!   A member that hears of a suspicion probes the suspect at once, so a
//!   crashed agent gathers its confirmations within a period.
//! - A suspected member refutes by raising its incarnation; pings to a
//!   suspect carry the suspicion first (Lifeguard's buddy system), so it
//!   learns of it from the first ping it gets.
//! - Local health (Lifeguard's multiplier): each failed probe and each
//!   refutation of a suspicion about oneself raise it, each successful
//!   probe lowers it; probe timeouts and periods scale with it, so a slow
//!   or overloaded agent suspects others more slowly.
//! - A gap in time larger than `pause_gap` between two inputs means this
//!   agent did not run (a pause, SIGSTOP, a starved host): probes in flight
//!   are dropped uncounted, suspicion timers start again, the local health
//!   goes to its worst, and the agent announces itself with a new
//!   incarnation. It never declares others dead from stale timers.
//!
//! Updates (alive, suspect, dead, with incarnations) ride on every message
//! (a few times each) and, in a small zone, are also sent to every member
//! at once.

use super::timers::Timers;
use crate::row::Micros;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// The detector's settings. Times in microseconds.
#[derive(Debug, Clone)]
pub struct DetectorConfig {
    /// One probe per period.
    pub probe_interval: Micros,
    /// How long a direct ping waits for its ack before indirect probes.
    pub probe_timeout: Micros,
    /// Members asked to probe indirectly.
    pub indirect: usize,
    /// Suspicion timeouts: with `confirmations` independent suspicions or
    /// more, the shortest; with none, the longest.
    pub suspicion_min: Micros,
    pub suspicion_max: Micros,
    pub confirmations: u32,
    /// The worst local health (Lifeguard's multiplier, 0 is healthy).
    pub max_health: u32,
    /// A longer gap between two inputs is a pause of this agent.
    pub pause_gap: Micros,
    /// Each update rides on this many messages times log2 of the zone size.
    pub retransmit: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            probe_interval: 200_000,
            probe_timeout: 100_000,
            indirect: 3,
            suspicion_min: 400_000,
            suspicion_max: 3_000_000,
            confirmations: 2,
            max_health: 8,
            pause_gap: 1_000_000,
            retransmit: 3,
        }
    }
}

/// What a member is held to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum State {
    Alive,
    Suspect,
    Dead,
}

/// One piece of membership news.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The member's gossip address.
    pub member: Arc<str>,
    pub inc: u64,
    pub state: State,
    /// Who suspects it (for a suspicion), to count confirmations.
    pub by: Option<Arc<str>>,
}

/// What a probe message does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    Ping {
        seq: u64,
    },
    Ack {
        seq: u64,
    },
    /// Ping `target` for me and ack `seq` if it answers.
    PingReq {
        seq: u64,
        target: Arc<str>,
    },
    /// Updates alone.
    News,
}

/// A detector message: the sender's incarnation, news, and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub inc: u64,
    pub updates: Vec<Update>,
    pub body: Body,
}

/// Most updates one message carries.
pub const MAX_UPDATES: usize = 8;
/// Zones up to this size get news sent to every member at once.
const BROADCAST_MAX: usize = 32;

/// A change of verdict on a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub member: Arc<str>,
    pub dead: bool,
    pub at: Micros,
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectorStats {
    pub probes: u64,
    pub indirect_probes: u64,
    pub failed_probes: u64,
    pub suspicions: u64,
    pub refutations: u64,
    pub deaths: u64,
    pub revivals: u64,
    pub pauses: u64,
}

#[derive(Debug, Clone)]
struct Member {
    inc: u64,
    state: State,
    /// When this agent came to hold the state.
    since: Micros,
    suspectors: BTreeSet<Arc<str>>,
}

/// The detector's named timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The next probe period.
    Probe,
    /// A direct ping got no ack in time: probe indirectly.
    ProbeTimeout(u64),
    /// Neither direct nor indirect ack by the end of the period: suspect.
    ProbeFailed(u64),
    /// A relayed ping's answer is no longer awaited.
    Relay(u64),
    /// A suspicion of this member becomes a death.
    Suspicion(Arc<str>),
}

/// A probe in flight: whom, and whether an ack came.
#[derive(Debug, Clone)]
struct Pending {
    target: Arc<str>,
    acked: bool,
}

/// The detector of one agent.
pub struct Detector {
    cfg: DetectorConfig,
    me: Arc<str>,
    inc: u64,
    members: BTreeMap<Arc<str>, Member>,
    round: Vec<Arc<str>>,
    health: u32,
    seq: u64,
    pending: BTreeMap<u64, Pending>,
    /// Pings this agent relays for others: its seq to (requester, their seq).
    relays: BTreeMap<u64, (Arc<str>, u64)>,
    news: VecDeque<(Update, u32)>,
    timers: Timers<Timer>,
    last_now: Option<Micros>,
    rng: SmallRng,
    outbox: VecDeque<(Arc<str>, Probe)>,
    verdicts: VecDeque<Verdict>,
    pub stats: DetectorStats,
}

impl Detector {
    /// A detector for the agent at `me`; its incarnation starts from the
    /// clock, so an agent that restarts outranks what others hold of it.
    pub fn new(cfg: DetectorConfig, me: Arc<str>, now: Micros, seed: u64) -> Detector {
        let mut rng = SmallRng::seed_from_u64(seed);
        let first = now + rng.random_range(0..cfg.probe_interval.max(1));
        let mut timers = Timers::default();
        timers.set(Timer::Probe, first);
        Detector {
            cfg,
            me,
            inc: now / 1000,
            members: BTreeMap::new(),
            round: Vec::new(),
            health: 0,
            seq: 0,
            pending: BTreeMap::new(),
            relays: BTreeMap::new(),
            news: VecDeque::new(),
            timers,
            last_now: None,
            rng,
            outbox: VecDeque::new(),
            verdicts: VecDeque::new(),
            stats: DetectorStats::default(),
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.inc
    }

    pub fn health(&self) -> u32 {
        self.health
    }

    /// The members held dead, with since when.
    pub fn dead(&self) -> impl Iterator<Item = (&Arc<str>, Micros)> {
        self.members
            .iter()
            .filter(|(_, m)| m.state == State::Dead)
            .map(|(a, m)| (a, m.since))
    }

    pub fn state_of(&self, member: &str) -> Option<State> {
        self.members.get(member).map(|m| m.state)
    }

    pub fn is_dead(&self, member: &str) -> bool {
        self.state_of(member) == Some(State::Dead)
    }

    /// Sets the members of the zone (their addresses, this agent's left
    /// out); members that left are forgotten.
    pub fn set_members(&mut self, now: Micros, addrs: impl IntoIterator<Item = Arc<str>>) {
        let wanted: BTreeSet<Arc<str>> = addrs.into_iter().filter(|a| *a != self.me).collect();
        let gone: Vec<Arc<str>> = self
            .members
            .keys()
            .filter(|a| !wanted.contains(*a))
            .cloned()
            .collect();
        for a in gone {
            if self
                .members
                .remove(&a)
                .is_some_and(|m| m.state == State::Dead)
            {
                self.verdicts.push_back(Verdict {
                    member: a.clone(),
                    dead: false,
                    at: now,
                });
            }
            self.timers.cancel(&Timer::Suspicion(a));
        }
        for a in wanted {
            self.members.entry(a).or_insert(Member {
                inc: 0,
                state: State::Alive,
                since: now,
                suspectors: BTreeSet::new(),
            });
        }
    }

    pub fn poll_timeout(&self) -> Micros {
        self.timers.next()
    }

    pub fn poll_transmit(&mut self) -> Option<(Arc<str>, Probe)> {
        self.outbox.pop_front()
    }

    pub fn poll_verdict(&mut self) -> Option<Verdict> {
        self.verdicts.pop_front()
    }

    /// Notes the time of an input; a gap longer than `pause_gap` since the
    /// last one is handled as a pause of this agent. Returns the gap then.
    pub fn observe_time(&mut self, now: Micros) -> Option<Micros> {
        let last = self.last_now.replace(now.max(self.last_now.unwrap_or(0)))?;
        let gap = now.saturating_sub(last);
        let quiet = self.scaled(self.cfg.probe_interval) * 2;
        if gap <= self.cfg.pause_gap.max(quiet) {
            return None;
        }
        self.stats.pauses += 1;
        self.pending.clear();
        self.relays.clear();
        self.timers.retain(|t| matches!(t, Timer::Suspicion(_)));
        self.timers.delay_all(gap);
        for m in self.members.values_mut() {
            if m.state == State::Suspect {
                m.since = now;
            }
        }
        self.health = self.cfg.max_health;
        self.inc += 1;
        let me = self.alive_update();
        self.spread(me);
        let first = now + self.rng.random_range(0..self.cfg.probe_interval.max(1));
        self.timers.set(Timer::Probe, first);
        Some(gap)
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Micros) {
        self.observe_time(now);
        while let Some((t, _)) = self.timers.pop_due(now) {
            match t {
                Timer::Probe => self.probe(now),
                Timer::ProbeTimeout(seq) => self.indirect(now, seq),
                Timer::ProbeFailed(seq) => self.failed(now, seq),
                Timer::Relay(seq) => {
                    self.relays.remove(&seq);
                }
                Timer::Suspicion(m) => self.expire(now, m),
            }
        }
    }

    /// Handles a message from the member at `from`.
    pub fn handle(&mut self, now: Micros, from: &Arc<str>, msg: Probe) {
        self.observe_time(now);
        if let Some(m) = self.members.get(from)
            && msg.inc > m.inc
        {
            self.apply(
                now,
                Update {
                    member: from.clone(),
                    inc: msg.inc,
                    state: State::Alive,
                    by: None,
                },
            );
        }
        for u in msg.updates.into_iter().take(MAX_UPDATES) {
            self.apply(now, u);
        }
        match msg.body {
            Body::Ping { seq } => self.send(from.clone(), Body::Ack { seq }),
            Body::Ack { seq } => {
                if let Some((requester, theirs)) = self.relays.remove(&seq) {
                    self.timers.cancel(&Timer::Relay(seq));
                    self.send(requester, Body::Ack { seq: theirs });
                } else if let Some(p) = self.pending.get_mut(&seq)
                    && !p.acked
                {
                    p.acked = true;
                    self.health = self.health.saturating_sub(1);
                }
            }
            Body::PingReq { seq, target } => {
                if self.members.contains_key(&target) {
                    let mine = self.next_seq();
                    self.relays.insert(mine, (from.clone(), seq));
                    self.timers
                        .set(Timer::Relay(mine), now + self.cfg.probe_interval);
                    self.send(target, Body::Ping { seq: mine });
                }
            }
            Body::News => {}
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn scaled(&self, t: Micros) -> Micros {
        t * (self.health as u64 + 1)
    }

    /// One probe period: ping the next live member of the round.
    fn probe(&mut self, now: Micros) {
        self.timers
            .set(Timer::Probe, now + self.scaled(self.cfg.probe_interval));
        let Some(target) = self.next_target() else {
            return;
        };
        self.ping(now, target);
    }

    fn ping(&mut self, now: Micros, target: Arc<str>) {
        if self
            .pending
            .values()
            .any(|p| p.target == target && !p.acked)
        {
            return;
        }
        self.stats.probes += 1;
        let seq = self.next_seq();
        self.pending.insert(
            seq,
            Pending {
                target: target.clone(),
                acked: false,
            },
        );
        self.timers.set(
            Timer::ProbeTimeout(seq),
            now + self.scaled(self.cfg.probe_timeout),
        );
        self.timers.set(
            Timer::ProbeFailed(seq),
            now + self.scaled(self.cfg.probe_interval),
        );
        self.send(target, Body::Ping { seq });
    }

    fn next_target(&mut self) -> Option<Arc<str>> {
        for _ in 0..2 {
            while let Some(a) = self.round.pop() {
                if self.members.get(&a).is_some_and(|m| m.state != State::Dead) {
                    return Some(a);
                }
            }
            self.round = self
                .members
                .iter()
                .filter(|(_, m)| m.state != State::Dead)
                .map(|(a, _)| a.clone())
                .collect();
            self.round.shuffle(&mut self.rng);
        }
        None
    }

    /// The direct ping went unanswered: ask others to try.
    fn indirect(&mut self, _now: Micros, seq: u64) {
        let Some(p) = self.pending.get(&seq) else {
            return;
        };
        if p.acked {
            return;
        }
        let target = p.target.clone();
        let mut helpers: Vec<Arc<str>> = self
            .members
            .iter()
            .filter(|(a, m)| **a != target && m.state == State::Alive)
            .map(|(a, _)| a.clone())
            .collect();
        helpers.shuffle(&mut self.rng);
        for h in helpers.into_iter().take(self.cfg.indirect) {
            self.stats.indirect_probes += 1;
            self.send(
                h,
                Body::PingReq {
                    seq,
                    target: target.clone(),
                },
            );
        }
    }

    /// The period ended: without an ack, suspect the target.
    fn failed(&mut self, now: Micros, seq: u64) {
        self.timers.cancel(&Timer::ProbeTimeout(seq));
        let Some(p) = self.pending.remove(&seq) else {
            return;
        };
        if p.acked {
            return;
        }
        self.stats.failed_probes += 1;
        self.health = (self.health + 1).min(self.cfg.max_health);
        let Some(m) = self.members.get(&p.target) else {
            return;
        };
        if m.state == State::Dead {
            return;
        }
        let inc = m.inc;
        self.apply(
            now,
            Update {
                member: p.target,
                inc,
                state: State::Suspect,
                by: Some(self.me.clone()),
            },
        );
    }

    fn expire(&mut self, now: Micros, member: Arc<str>) {
        let Some(m) = self.members.get(&member) else {
            return;
        };
        if m.state != State::Suspect {
            return;
        }
        let inc = m.inc;
        self.apply(
            now,
            Update {
                member,
                inc,
                state: State::Dead,
                by: None,
            },
        );
    }

    /// The suspicion timeout with `c` confirmations beyond the first.
    fn suspicion_timeout(&self, c: usize) -> Micros {
        let (min, max) = (
            self.cfg.suspicion_min as f64,
            self.cfg.suspicion_max.max(self.cfg.suspicion_min) as f64,
        );
        let k = self.cfg.confirmations.max(1) as f64;
        let frac = ((c as f64 + 1.0).ln() / (k + 1.0).ln()).min(1.0);
        (max - (max - min) * frac).max(min) as Micros
    }

    fn alive_update(&self) -> Update {
        Update {
            member: self.me.clone(),
            inc: self.inc,
            state: State::Alive,
            by: None,
        }
    }

    /// Applies one update by SWIM's precedence: a higher incarnation wins;
    /// at one incarnation, dead over suspect over alive.
    fn apply(&mut self, now: Micros, u: Update) {
        if u.member == self.me {
            if u.state != State::Alive && u.inc >= self.inc {
                self.stats.refutations += 1;
                self.inc = u.inc + 1;
                self.health = (self.health + 1).min(self.cfg.max_health);
                let me = self.alive_update();
                self.spread(me);
            }
            return;
        }
        let timeout_c;
        {
            let Some(m) = self.members.get_mut(&u.member) else {
                return;
            };
            let newer = u.inc > m.inc;
            match u.state {
                State::Alive => {
                    if !newer {
                        return;
                    }
                    let was = m.state;
                    m.inc = u.inc;
                    m.state = State::Alive;
                    m.since = now;
                    m.suspectors.clear();
                    self.timers.cancel(&Timer::Suspicion(u.member.clone()));
                    if was == State::Dead {
                        self.stats.revivals += 1;
                        self.verdicts.push_back(Verdict {
                            member: u.member.clone(),
                            dead: false,
                            at: now,
                        });
                    }
                    self.spread(u);
                    return;
                }
                State::Suspect => {
                    if m.state == State::Dead && !newer {
                        return;
                    }
                    if !newer && u.inc < m.inc {
                        return;
                    }
                    let fresh = newer || m.state == State::Alive;
                    if fresh && m.state == State::Dead {
                        self.stats.revivals += 1;
                        self.verdicts.push_back(Verdict {
                            member: u.member.clone(),
                            dead: false,
                            at: now,
                        });
                    }
                    if fresh {
                        m.inc = u.inc;
                        m.state = State::Suspect;
                        m.since = now;
                        m.suspectors.clear();
                        self.stats.suspicions += 1;
                    }
                    let by = u.by.clone().unwrap_or_else(|| u.member.clone());
                    if !m.suspectors.insert(by) && !fresh {
                        return;
                    }
                    timeout_c = m.suspectors.len().saturating_sub(1);
                }
                State::Dead => {
                    if m.state == State::Dead || u.inc < m.inc {
                        return;
                    }
                    m.inc = u.inc;
                    m.state = State::Dead;
                    m.since = now;
                    m.suspectors.clear();
                    self.timers.cancel(&Timer::Suspicion(u.member.clone()));
                    self.pending.retain(|_, p| p.target != u.member);
                    self.stats.deaths += 1;
                    self.verdicts.push_back(Verdict {
                        member: u.member.clone(),
                        dead: true,
                        at: now,
                    });
                    self.spread(u);
                    return;
                }
            }
        }
        // A suspicion, new or confirmed: (re)arm its timer from when it
        // began, and check the suspect ourselves.
        let since = self.members[&u.member].since;
        let at = since + self.suspicion_timeout(timeout_c);
        self.timers
            .set(Timer::Suspicion(u.member.clone()), at.max(now));
        let member = u.member.clone();
        let mine = u.by.as_ref() == Some(&self.me);
        self.spread(u);
        if !mine {
            self.ping(now, member);
        }
    }

    /// Queues an update for piggybacking and, in a small zone, sends it
    /// to every member now.
    fn spread(&mut self, u: Update) {
        let n = self.members.len();
        let times = self.cfg.retransmit * (usize::BITS - (n + 1).leading_zeros());
        self.news.retain(|(x, _)| x.member != u.member);
        if n <= BROADCAST_MAX {
            let to: Vec<Arc<str>> = self
                .members
                .iter()
                .filter(|(_, m)| m.state != State::Dead)
                .map(|(a, _)| a.clone())
                .collect();
            for a in to {
                self.outbox.push_back((
                    a,
                    Probe {
                        inc: self.inc,
                        updates: vec![u.clone()],
                        body: Body::News,
                    },
                ));
            }
        }
        self.news.push_back((u, times));
    }

    /// Sends `body` to `to` with the news most in need of spreading, the
    /// news about `to` itself first.
    fn send(&mut self, to: Arc<str>, body: Body) {
        let mut updates = Vec::new();
        if let Some(m) = self.members.get(&to)
            && m.state == State::Suspect
        {
            updates.push(Update {
                member: to.clone(),
                inc: m.inc,
                state: State::Suspect,
                by: Some(self.me.clone()),
            });
        }
        let mut keep = VecDeque::with_capacity(self.news.len());
        while let Some((u, left)) = self.news.pop_front() {
            if updates.len() < MAX_UPDATES && !updates.iter().any(|x| x.member == u.member) {
                updates.push(u.clone());
                if left > 1 {
                    keep.push_back((u, left - 1));
                }
            } else {
                keep.push_back((u, left));
            }
        }
        self.news = keep;
        self.outbox.push_back((
            to,
            Probe {
                inc: self.inc,
                updates,
                body,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_shorten_the_suspicion() {
        let d = Detector::new(DetectorConfig::default(), "a".into(), 0, 1);
        let c = DetectorConfig::default();
        assert_eq!(d.suspicion_timeout(0), c.suspicion_max);
        assert!(d.suspicion_timeout(1) < c.suspicion_max);
        assert_eq!(d.suspicion_timeout(2), c.suspicion_min);
        assert_eq!(d.suspicion_timeout(9), c.suspicion_min);
    }

    #[test]
    fn a_suspect_refutes_with_a_higher_incarnation() {
        let mut d = Detector::new(DetectorConfig::default(), "a".into(), 5_000, 1);
        d.set_members(0, ["a".into(), "b".into()]);
        let inc = d.incarnation();
        let b: Arc<str> = "b".into();
        d.handle(
            10,
            &b,
            Probe {
                inc: 1,
                updates: vec![Update {
                    member: "a".into(),
                    inc,
                    state: State::Suspect,
                    by: Some(b.clone()),
                }],
                body: Body::Ping { seq: 1 },
            },
        );
        assert_eq!(d.incarnation(), inc + 1);
        let mut saw_alive = false;
        while let Some((_, p)) = d.poll_transmit() {
            saw_alive |= p
                .updates
                .iter()
                .any(|u| &*u.member == "a" && u.state == State::Alive && u.inc == inc + 1);
        }
        assert!(saw_alive);
    }
}
