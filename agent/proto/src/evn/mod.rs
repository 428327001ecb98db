//! EVN: urgent events to a zone, WS-Eventing subscriptions, and distributed
//! conditions, as one service beside the gossip core.
//!
//! - **Events** ([`event`]) are published to a zone scope, signed by their
//!   origin, and pushed eagerly down the tree: an agent that gets an event
//!   for a zone it belongs to sends it to the first representatives
//!   ([`EvnConfig::fanout`]) of every child zone beside its own, at every
//!   level down to its leaf; each of them does the same in its zone. Gossip
//!   is the backup: every agent periodically sends a digest of the live
//!   events it holds to a random peer of its zones, which sends back what
//!   the digest lacks and asks for what it lacks itself, so agents that
//!   join or heal before an event's time to live runs out still get it.
//!   Events are deduplicated by `(origin, seq)`: each is delivered once
//!   per agent, and an event already held is never pushed again.
//! - **Subscriptions** ([`subs`]) match events by zone and filter
//!   ([`filter`]) and end exactly once.
//! - **Conditions** ([`condition`]) are spread like events, but kept until
//!   removed; each agent of a condition's scope publishes its local result
//!   and the zone tree sums them.
//!
//! The runtime evaluates each condition's SQL over the agent's local
//! tables (with DataFusion) and hands the result in with
//! [`Evn::set_local`]; everything else happens here.

pub mod condition;
pub mod event;
pub mod filter;
pub mod seal;
pub mod subs;
pub mod wire;

pub use condition::{Answer, Condition, ConditionError, Hysteresis, Transition};
pub use event::{Event, EventError, EventId};
pub use filter::{Filter, FilterError};
pub use subs::{Delivery, EndReason, Ended, Fault, Subscription, Subscriptions};
pub use wire::EvnMsg;

use crate::host::{Core, Peer, Service, ServiceId, Transmit, Zones};
use crate::path::ZonePath;
use crate::refusal::Refusal;
use crate::row::Micros;
use crate::security::{Certificate, Trust};
use ed25519_dalek::SigningKey;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use zone_sql::Value;

/// EVN's envelope id.
pub const ID: ServiceId = 12;
/// The most live events one agent holds for anti-entropy.
pub const MAX_LIVE: usize = 4096;
/// The most event ids one agent remembers as seen.
pub const MAX_SEEN: usize = 65_536;
/// Delivered events kept for inspection.
const RECENT: usize = 256;
/// Events and ends waiting for the driver before the oldest are dropped.
const MAX_PENDING: usize = 65_536;
/// How often conditions are looked at.
const CONDITION_TICK: Micros = 100_000;
/// The topic prefix of condition transitions.
pub const CONDITION_TOPIC: &str = event::RESERVED_TOPIC;

/// EVN's settings.
#[derive(Clone)]
pub struct EvnConfig {
    pub seed: u64,
    /// Anti-entropy period while something is held.
    pub gossip_every: Micros,
    /// Anti-entropy period when nothing is.
    pub idle_gossip_every: Micros,
    /// Representatives of each child zone an event is pushed to.
    pub fanout: usize,
    /// Signs published events and conditions.
    pub signer: Option<(Arc<SigningKey>, Arc<Certificate>)>,
    /// Checks the events and conditions that arrive; None: insecure.
    pub trust: Option<Arc<Trust>>,
    /// How far ahead of this agent's clock an event may be published.
    pub max_skew: Micros,
}

impl Default for EvnConfig {
    fn default() -> EvnConfig {
        EvnConfig {
            seed: 0,
            gossip_every: 500_000,
            idle_gossip_every: 2_000_000,
            fanout: 2,
            signer: None,
            trust: None,
            max_skew: 10_000_000,
        }
    }
}

/// What EVN tells its driver.
#[derive(Debug, Clone)]
pub enum EvnEvent {
    /// Subscription `sub` gets `event`.
    Notify { sub: Arc<str>, event: Arc<Event> },
    /// A subscription ended; told once.
    Ended(Ended),
    /// The set of conditions this agent evaluates changed.
    ConditionsChanged,
}

/// Counters.
#[derive(Debug, Default, Clone, Serialize)]
pub struct EvnStats {
    pub published: u64,
    pub delivered: u64,
    pub notified: u64,
    pub duplicates: u64,
    pub pushes_sent: u64,
    pub gossip_sent: u64,
    pub repaired: u64,
    pub refused: u64,
    pub expired: u64,
    pub transitions: u64,
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvnError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Condition(#[from] ConditionError),
    #[error("no agent of zone {0} is known from here; check the zone's name")]
    NoRoute(String),
    #[error("condition {name}: {why}")]
    Aggregation { name: String, why: String },
}

/// A delivered event and when it was delivered here.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub event: Arc<Event>,
    pub at: Micros,
}

/// One condition at this agent: its local result, the scope-wide answer
/// as seen from here, and its state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CondState {
    /// This agent's local result: Some(Ok(hit)), Some(Err(why)), or None
    /// outside the scope or before the first evaluation.
    pub local: Option<Result<bool, String>>,
    pub answer: Option<Answer>,
    pub state: Hysteresis,
    /// When the last transition happened.
    pub since: Option<Micros>,
    /// Attribute values last published, to publish only changes.
    #[serde(skip)]
    published: BTreeMap<String, Value>,
}

struct Live {
    event: Arc<Event>,
    /// The depth of the widest zone this agent has pushed it in
    /// (`usize::MAX`: none).
    spread: usize,
}

/// One origin's seen event numbers, each with when it may be forgotten.
type SeenFrom = (Arc<str>, Vec<(u64, Micros)>);

/// EVN's durable state.
#[derive(Serialize, Deserialize)]
struct Saved {
    subs: Vec<Subscription>,
    conds: Vec<Condition>,
    last_seq: u64,
    states: Vec<(Arc<str>, Hysteresis)>,
    /// The ids seen, by origin, with the time each may be forgotten: a
    /// restarted agent does not deliver again what it delivered before.
    seen: Vec<SeenFrom>,
}

/// The EVN core of one agent.
pub struct Evn {
    cfg: EvnConfig,
    rng: SmallRng,
    subs: Subscriptions,
    catalog: condition::Catalog,
    conds: BTreeMap<Arc<str>, CondState>,
    live: BTreeMap<EventId, Live>,
    seen: HashMap<EventId, Micros>,
    seen_by_expiry: BTreeSet<(Micros, EventId)>,
    recent: VecDeque<Delivered>,
    last_seq: u64,
    next_gossip: Micros,
    next_tick: Micros,
    started: bool,
    aggregations: Vec<String>,
    out: VecDeque<Transmit<EvnMsg>>,
    events: VecDeque<EvnEvent>,
    next_sub: u64,
    stats: EvnStats,
}

impl Evn {
    pub fn new(cfg: EvnConfig) -> Evn {
        Evn {
            rng: SmallRng::seed_from_u64(cfg.seed),
            cfg,
            subs: Subscriptions::default(),
            catalog: condition::Catalog::default(),
            conds: BTreeMap::new(),
            live: BTreeMap::new(),
            seen: HashMap::new(),
            seen_by_expiry: BTreeSet::new(),
            recent: VecDeque::new(),
            last_seq: 0,
            next_gossip: 0,
            next_tick: 0,
            started: false,
            aggregations: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_sub: 0,
            stats: EvnStats::default(),
        }
    }

    pub fn stats(&self) -> &EvnStats {
        &self.stats
    }

    // ---- events ----

    /// Publishes an event to every agent of `scope`: signed when this
    /// agent signs, checked as a receiver would check it, delivered here
    /// when this agent is in the scope, and pushed toward and down it.
    pub fn publish(
        &mut self,
        zones: &Zones<'_>,
        scope: ZonePath,
        topic: &str,
        data: &str,
        ttl: Micros,
    ) -> Result<Arc<Event>, EvnError> {
        let now = zones.now();
        event::check_topic(topic)?;
        event::check_data(data)?;
        if ttl == 0 || ttl > event::MAX_TTL {
            return Err(EventError::BadTtl.into());
        }
        if !scope.contains(zones.leaf()) && self.toward(zones, &scope).is_none() {
            return Err(EvnError::NoRoute(scope.to_string()));
        }
        let seq = self.next_seq(now);
        let mut e = Event {
            origin: zones.leaf().as_arc().clone(),
            seq,
            scope,
            topic: topic.into(),
            data: data.into(),
            time: now,
            ttl,
            proof: Vec::new(),
            sig: Vec::new(),
        };
        if let Some((key, cert)) = &self.cfg.signer {
            e.sign(key, cert);
        }
        e.check_shape()?;
        let e = Arc::new(e);
        self.stats.published += 1;
        let scope = e.scope.clone();
        self.take(zones, e.clone(), Some(scope), true);
        Ok(e)
    }

    /// Event numbers follow the clock, never below the last one used.
    fn next_seq(&mut self, now: Micros) -> u64 {
        self.last_seq = (self.last_seq + 1).max(now);
        self.last_seq
    }

    /// Checks an arriving event; the reason it is refused.
    fn check(&self, e: &Event, now: Micros) -> Result<(), EventError> {
        e.check_shape()?;
        if e.time > now.saturating_add(self.cfg.max_skew) {
            return Err(EventError::FromFuture);
        }
        if e.expires() <= now {
            return Err(EventError::Expired);
        }
        if let Some(trust) = &self.cfg.trust {
            e.verify(trust, now)?;
        }
        Ok(())
    }

    /// Takes an event (published here, pushed, or repaired by gossip):
    /// once per agent it is delivered and stored; `down` is the zone this
    /// agent was asked to push it in (None from gossip).
    fn take(&mut self, zones: &Zones<'_>, e: Arc<Event>, down: Option<ZonePath>, local: bool) {
        let now = zones.now();
        let id = e.id();
        let leaf = zones.leaf().clone();
        let inside = e.scope.contains(&leaf);
        if self.seen.contains_key(&id) {
            self.stats.duplicates += 1;
            // A wider responsibility than before: push in the levels not
            // yet covered, nothing twice.
            if let (Some(d), true) = (down, inside) {
                let within = deeper(&d, &e.scope);
                if let Some(l) = self.live.get(&id)
                    && within.depth() < l.spread
                {
                    let from = l.spread;
                    self.spread(zones, &e, within.depth(), from);
                    if let Some(l) = self.live.get_mut(&id) {
                        l.spread = within.depth();
                    }
                }
            }
            return;
        }
        if !local && self.check(&e, now).is_err() {
            self.stats.refused += 1;
            return;
        }
        self.remember(&e);
        if !inside {
            // Passing through toward the scope; kept (not delivered) so
            // that anti-entropy carries it in if every push is lost.
            if down.is_some() {
                self.route_toward(zones, &e);
            }
            self.store(e, usize::MAX);
            return;
        }
        let mut spread = usize::MAX;
        if let Some(d) = down {
            let within = deeper(&d, &e.scope);
            if within.contains(&leaf) {
                self.spread(zones, &e, within.depth(), usize::MAX);
                spread = within.depth();
            }
        }
        self.store(e.clone(), spread);
        self.deliver(e, now);
    }

    fn remember(&mut self, e: &Event) {
        let until = e.expires().saturating_add(self.cfg.max_skew);
        if self.seen.len() >= MAX_SEEN
            && let Some(first) = self.seen_by_expiry.pop_first()
        {
            self.seen.remove(&first.1);
        }
        self.seen.insert(e.id(), until);
        self.seen_by_expiry.insert((until, e.id()));
    }

    /// The seen set grouped by origin, for saving.
    fn seen_by_origin(&self) -> Vec<SeenFrom> {
        let mut by: BTreeMap<&Arc<str>, Vec<(u64, Micros)>> = BTreeMap::new();
        for ((origin, seq), until) in &self.seen {
            by.entry(origin).or_default().push((*seq, *until));
        }
        by.into_iter()
            .map(|(o, mut v)| {
                v.sort_unstable();
                (o.clone(), v)
            })
            .collect()
    }

    fn store(&mut self, e: Arc<Event>, spread: usize) {
        if self.live.len() >= MAX_LIVE {
            // Drop the one that expires first.
            if let Some(k) = self
                .live
                .iter()
                .min_by_key(|(_, l)| l.event.expires())
                .map(|(k, _)| k.clone())
            {
                self.live.remove(&k);
            }
        }
        self.live.insert(e.id(), Live { event: e, spread });
    }

    /// Hands an event to the subscriptions that want it.
    fn deliver(&mut self, e: Arc<Event>, now: Micros) {
        self.stats.delivered += 1;
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Delivered {
            event: e.clone(),
            at: now,
        });
        for sub in self.subs.matching(&e, now) {
            self.stats.notified += 1;
            self.emit(EvnEvent::Notify {
                sub,
                event: e.clone(),
            });
        }
    }

    fn emit(&mut self, ev: EvnEvent) {
        if self.events.len() >= MAX_PENDING {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// Pushes `e` to the representatives of every child zone beside this
    /// agent's own, in the zones of its path from depth `from` down to (not
    /// including) depth `until`, and down to its leaf.
    fn spread(&mut self, zones: &Zones<'_>, e: &Arc<Event>, from: usize, until: usize) {
        let path = zones.zones().to_vec();
        let me = zones.addr().clone();
        for (depth, zone) in path.iter().enumerate() {
            if depth < from || depth >= until {
                continue;
            }
            let mine = path
                .get(depth + 1)
                .cloned()
                .unwrap_or_else(|| zones.leaf().clone());
            let Some(rows) = zones.members(zone) else {
                continue;
            };
            for r in rows {
                if r.zone == mine {
                    continue;
                }
                let child = r.zone.clone();
                for to in r
                    .contacts()
                    .iter()
                    .filter(|c| **c != me)
                    .take(self.cfg.fanout)
                {
                    self.stats.pushes_sent += 1;
                    self.out.push_back(Transmit {
                        to: to.clone(),
                        msg: EvnMsg::Push {
                            event: (**e).clone(),
                            down: child.clone(),
                        },
                    });
                }
            }
        }
    }

    /// The child zone toward `scope` that this agent knows, with its
    /// contacts, when `scope` is outside this agent's leaf's zones.
    fn toward(&self, zones: &Zones<'_>, scope: &ZonePath) -> Option<(ZonePath, Vec<Arc<str>>)> {
        let d = zones.leaf().common_depth(scope);
        if d >= scope.depth() {
            return None;
        }
        let at = zones.zones().get(d)?;
        let next = scope.ancestor(d + 1);
        let row = zones.members(at)?.iter().find(|r| r.zone == next)?;
        Some((next, row.contacts().to_vec()))
    }

    fn route_toward(&mut self, zones: &Zones<'_>, e: &Arc<Event>) {
        let Some((next, contacts)) = self.toward(zones, &e.scope) else {
            return;
        };
        let me = zones.addr().clone();
        for to in contacts.iter().filter(|c| **c != me).take(self.cfg.fanout) {
            self.stats.pushes_sent += 1;
            self.out.push_back(Transmit {
                to: to.clone(),
                msg: EvnMsg::Push {
                    event: (**e).clone(),
                    down: next.clone(),
                },
            });
        }
    }

    /// Events delivered here lately, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Delivered> {
        self.recent.iter()
    }

    /// Whether this agent holds event `id` as seen.
    pub fn has_seen(&self, id: &EventId) -> bool {
        self.seen.contains_key(id)
    }

    // ---- anti-entropy ----

    fn gossip(&mut self, zones: &Zones<'_>) {
        let path = zones.zones();
        if path.is_empty() {
            return;
        }
        let level = self.rng.random_range(0..path.len());
        let Some(rows) = zones.members(&path[level]) else {
            return;
        };
        let me = zones.addr().clone();
        let candidates: Vec<_> = rows
            .iter()
            .filter(|r| r.contacts().iter().any(|c| *c != me))
            .collect();
        if candidates.is_empty() {
            return;
        }
        let r = candidates[self.rng.random_range(0..candidates.len())];
        let contacts: Vec<_> = r.contacts().iter().filter(|c| **c != me).collect();
        let to = contacts[self.rng.random_range(0..contacts.len())].clone();
        let zone = r.zone.clone();
        let mut events: Vec<EventId> = self
            .live
            .values()
            .filter(|l| overlaps(&l.event.scope, &zone))
            .map(|l| l.event.id())
            .collect();
        if events.len() > wire::MAX_DIGEST {
            // The newest are the likeliest to be missing somewhere.
            events.sort_by_key(|id| std::cmp::Reverse(id.1));
            events.truncate(wire::MAX_DIGEST);
        }
        self.stats.gossip_sent += 1;
        self.out.push_back(Transmit {
            to,
            msg: EvnMsg::Digest {
                leaf: zones.leaf().clone(),
                events,
                conds: self.catalog.digest(),
            },
        });
    }

    fn on_digest(
        &mut self,
        zones: &Zones<'_>,
        from: &Peer,
        leaf: ZonePath,
        ids: Vec<EventId>,
        conds: Vec<wire::CondVersion>,
    ) {
        let listed: BTreeSet<&EventId> = ids.iter().collect();
        let want_events: Vec<EventId> = ids
            .iter()
            .filter(|id| !self.seen.contains_key(*id))
            .cloned()
            .collect();
        let events = self.events_for(&leaf, |id| !listed.contains(id));
        let theirs: BTreeMap<&str, (Micros, &str)> =
            conds.iter().map(|(n, v, b)| (&**n, (*v, &**b))).collect();
        let give: Vec<Condition> = self
            .catalog
            .all()
            .filter(|c| {
                theirs
                    .get(&*c.name)
                    .is_none_or(|(v, b)| (c.version, &*c.by) > (*v, *b))
            })
            .map(|c| (**c).clone())
            .collect();
        let want_conds: Vec<Arc<str>> = conds
            .iter()
            .filter(|(n, v, b)| self.catalog.is_newer(n, *v, b))
            .map(|(n, ..)| n.clone())
            .collect();
        if events.is_empty() && give.is_empty() && want_events.is_empty() && want_conds.is_empty() {
            return;
        }
        let _ = zones;
        self.out.push_back(Transmit {
            to: from.addr.clone(),
            msg: EvnMsg::Reply {
                events,
                conds: give,
                want_events,
                want_conds,
            },
        });
    }

    /// Live events for an agent at `leaf`, within the reply's budget.
    fn events_for(&self, leaf: &ZonePath, pick: impl Fn(&EventId) -> bool) -> Vec<Event> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (id, l) in &self.live {
            if !l.event.scope.contains(leaf) || !pick(id) {
                continue;
            }
            let size = l.event.data.len() + l.event.proof.len() + 128;
            if out.len() >= wire::MAX_REPLY_EVENTS || bytes + size > wire::REPLY_BYTES {
                break;
            }
            bytes += size;
            out.push((*l.event).clone());
        }
        out
    }

    fn on_reply(
        &mut self,
        zones: &mut Zones<'_>,
        from: &Peer,
        events: Vec<Event>,
        conds: Vec<Condition>,
        want_events: Vec<EventId>,
        want_conds: Vec<Arc<str>>,
    ) {
        for e in events {
            if !self.seen.contains_key(&e.id()) {
                self.stats.repaired += 1;
            }
            self.take(zones, Arc::new(e), None, false);
        }
        let mut changed = false;
        for c in conds {
            changed |= self.merge_condition(c, zones.now());
        }
        if changed {
            self.conditions_changed(zones);
        }
        if want_events.is_empty() && want_conds.is_empty() {
            return;
        }
        let wanted: BTreeSet<EventId> = want_events.into_iter().collect();
        // The asker's leaf is unknown here: send what it named, if held.
        let events: Vec<Event> = wanted
            .iter()
            .filter_map(|id| self.live.get(id))
            .take(wire::MAX_REPLY_EVENTS)
            .map(|l| (*l.event).clone())
            .collect();
        let conds: Vec<Condition> = want_conds
            .iter()
            .filter_map(|n| self.catalog.all().find(|c| c.name == *n))
            .map(|c| (**c).clone())
            .collect();
        if events.is_empty() && conds.is_empty() {
            return;
        }
        self.out.push_back(Transmit {
            to: from.addr.clone(),
            msg: EvnMsg::Reply {
                events,
                conds,
                want_events: Vec::new(),
                want_conds: Vec::new(),
            },
        });
    }

    fn expire(&mut self, now: Micros) {
        while let Some(first) = self.seen_by_expiry.first() {
            if first.0 > now {
                break;
            }
            let (_, id) = self.seen_by_expiry.pop_first().expect("non-empty");
            self.seen.remove(&id);
        }
        let before = self.live.len();
        self.live.retain(|_, l| l.event.expires() > now);
        self.stats.expired += (before - self.live.len()) as u64;
        self.subs.expire(now);
        while let Some(end) = self.subs.take_ended() {
            self.emit(EvnEvent::Ended(end));
        }
    }

    // ---- subscriptions ----

    /// Adds a subscription; its id is new and unguessable by another
    /// subscriber of this agent.
    pub fn subscribe(&mut self, req: subs::Request, now: Micros) -> Result<Subscription, Fault> {
        self.next_sub += 1;
        let id: Arc<str> = format!(
            "{:016x}{:08x}",
            self.rng.random::<u64>(),
            self.next_sub as u32
        )
        .into();
        let s = self.subs.subscribe(id, req, now)?.clone();
        Ok(s)
    }

    pub fn renew(&mut self, id: &str, expires: Micros, now: Micros) -> Result<Micros, Fault> {
        self.subs.renew(id, expires, now)
    }

    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subs.get(id)
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subs.iter()
    }

    /// Ends a subscription (unsubscribe, a delivery failure, the source
    /// cancelling); false when it was not held.
    pub fn end(&mut self, id: &str, reason: EndReason) -> bool {
        let ended = self.subs.end(id, reason);
        while let Some(end) = self.subs.take_ended() {
            self.emit(EvnEvent::Ended(end));
        }
        ended
    }

    // ---- conditions ----

    /// Installs or replaces a condition for the whole cluster.
    pub fn add_condition(
        &mut self,
        zones: &mut Zones<'_>,
        mut c: Condition,
    ) -> Result<(), EvnError> {
        c.version = zones.now().max(
            self.catalog
                .all()
                .find(|h| h.name == c.name)
                .map_or(0, |h| h.version + 1),
        );
        c.by = zones.leaf().as_arc().clone();
        c.removed = false;
        self.seal_condition(&mut c);
        c.check()?;
        zone_sql::Program::compile(&c.aggregation()).map_err(|e| EvnError::Aggregation {
            name: c.name.to_string(),
            why: e.to_string(),
        })?;
        if self.catalog.create(c)? {
            self.conditions_changed(zones);
        }
        Ok(())
    }

    /// Removes a condition everywhere; its tombstone keeps it from coming back.
    pub fn remove_condition(&mut self, zones: &mut Zones<'_>, name: &str) -> Result<(), EvnError> {
        let Some(held) = self.catalog.get(name) else {
            return Err(ConditionError::Unknown(name.to_string()).into());
        };
        let mut c = (**held).clone();
        c.version = zones.now().max(c.version + 1);
        c.by = zones.leaf().as_arc().clone();
        c.removed = true;
        self.seal_condition(&mut c);
        self.catalog.merge(c)?;
        self.conditions_changed(zones);
        Ok(())
    }

    fn seal_condition(&self, c: &mut Condition) {
        c.proof.clear();
        c.sig.clear();
        if let Some((key, cert)) = &self.cfg.signer {
            c.proof = postcard::to_allocvec(&**cert).unwrap_or_default();
            c.sig = seal::sign(&c.signing_bytes(), key, cert).1;
        }
    }

    fn merge_condition(&mut self, c: Condition, now: Micros) -> bool {
        if let Some(trust) = &self.cfg.trust
            && seal::verify(&c.signing_bytes(), &c.proof, &c.sig, &c.by, trust, now).is_err()
        {
            self.stats.refused += 1;
            return false;
        }
        match self.catalog.merge(c) {
            Ok(changed) => changed,
            Err(_) => {
                self.stats.refused += 1;
                false
            }
        }
    }

    /// The catalog changed: aggregations follow it, removed conditions'
    /// attributes go.
    fn conditions_changed(&mut self, zones: &mut Zones<'_>) {
        let live: Vec<Arc<Condition>> = self.catalog.live().cloned().collect();
        let aggs: Vec<String> = live.iter().map(|c| c.aggregation()).collect();
        if aggs != self.aggregations && zones.set_aggregations(aggs.clone()).is_ok() {
            self.aggregations = aggs;
        }
        let gone: Vec<Arc<str>> = self
            .conds
            .keys()
            .filter(|n| self.catalog.get(n).is_none())
            .cloned()
            .collect();
        for name in gone {
            self.conds.remove(&name);
            for a in condition::attrs_of(&name) {
                let _ = zones.unpublish(&a);
            }
        }
        for c in &live {
            self.conds.entry(c.name.clone()).or_default();
        }
        self.emit(EvnEvent::ConditionsChanged);
    }

    /// The live conditions.
    pub fn conditions(&self) -> impl Iterator<Item = (&Arc<Condition>, Option<&CondState>)> {
        self.catalog.live().map(|c| (c, self.conds.get(&c.name)))
    }

    /// The conditions this agent evaluates: those whose scope holds it.
    pub fn to_evaluate(&self, leaf: &ZonePath) -> Vec<Arc<Condition>> {
        self.catalog
            .live()
            .filter(|c| c.scope.contains(leaf))
            .cloned()
            .collect()
    }

    /// This agent's local result for condition `name` (from the runtime's
    /// evaluation over its local tables): `Ok(hit)`, or why it failed.
    pub fn set_local(&mut self, zones: &mut Zones<'_>, name: &str, result: Result<bool, String>) {
        let Some(c) = self.catalog.get(name).cloned() else {
            return;
        };
        if !c.scope.contains(zones.leaf()) {
            return;
        }
        let st = self.conds.entry(c.name.clone()).or_default();
        st.local = Some(result);
        self.publish_condition(zones, &c);
        self.look(zones, &c);
    }

    /// Publishes this agent's part of condition `c`: its own answer, and
    /// the report of its leaf-level zone when it is the zone's reporter.
    fn publish_condition(&mut self, zones: &mut Zones<'_>, c: &Condition) {
        let now = zones.now();
        let [hit, evaluated, miss, stale, names] = condition::attrs_of(&c.name);
        let mut want: BTreeMap<String, Option<Value>> = BTreeMap::new();
        let local = self.conds.get(&c.name).and_then(|s| s.local.clone());
        match local {
            Some(Ok(h)) if c.scope.contains(zones.leaf()) => {
                want.insert(hit, Some(Value::Int(h as i64)));
                want.insert(evaluated, Some(Value::Int(1)));
            }
            _ => {
                want.insert(hit, None);
                want.insert(evaluated, None);
            }
        }
        let report = zones.zones().last().cloned().and_then(|l| {
            let rows = zones.members(&l)?;
            if !overlaps(&c.scope, &l) {
                return None;
            }
            let deadline = zones.config().fail_timeout(rows.len() as u64) / 2;
            let me = zones.leaf().as_str();
            condition::is_reporter(me, rows, now, deadline)
                .then(|| condition::report(c, rows, now, deadline))
        });
        match report {
            Some((x, y, s)) => {
                want.insert(miss, Some(Value::Int(x as i64)));
                want.insert(stale, Some(Value::Int(y as i64)));
                want.insert(names, Some(Value::List(s.into())));
            }
            None => {
                want.insert(miss, None);
                want.insert(stale, None);
                want.insert(names, None);
            }
        }
        let st = self.conds.entry(c.name.clone()).or_default();
        for (name, v) in want {
            let same = match &v {
                Some(v) => st.published.get(&name) == Some(v),
                None => !st.published.contains_key(&name),
            };
            if same {
                continue;
            }
            match v {
                Some(v) => {
                    if zones.publish(&name, v.clone()).is_ok() {
                        st.published.insert(name, v);
                    }
                }
                None => {
                    let _ = zones.unpublish(&name);
                    st.published.remove(&name);
                }
            }
        }
    }

    /// Reads condition `c`'s scope-wide answer and steps its hysteresis;
    /// a transition goes to this agent's subscribers as an event.
    fn look(&mut self, zones: &Zones<'_>, c: &Condition) {
        let now = zones.now();
        let row = zones.aggregate(&c.scope).cloned().or_else(|| {
            let parent = c.scope.parent()?;
            zones
                .members(&parent)?
                .iter()
                .find(|r| r.zone == c.scope)
                .map(|r| r.attrs.clone())
        });
        let Some(row) = row else {
            return;
        };
        let ans = condition::answer(c, &row, now);
        let st = self.conds.entry(c.name.clone()).or_default();
        let t = st.state.step(ans.value, now, c);
        st.answer = Some(ans.clone());
        let Some(t) = t else {
            return;
        };
        st.since = Some(now);
        self.stats.transitions += 1;
        let state = match t {
            Transition::Fired => "firing",
            Transition::Cleared => "cleared",
        };
        let data = serde_json::json!({
            "state": state,
            "contributors": ans.contributors,
            "expected": ans.expected,
            "hits": ans.hits,
            "missing": ans.missing,
        })
        .to_string();
        let seq = self.next_seq(now);
        let e = Arc::new(Event {
            origin: zones.leaf().as_arc().clone(),
            seq,
            scope: c.scope.clone(),
            topic: format!("{CONDITION_TOPIC}{}", c.name).into(),
            data: data.into(),
            time: now,
            ttl: event::DEFAULT_TTL,
            proof: Vec::new(),
            sig: Vec::new(),
        });
        self.deliver(e, now);
    }

    fn tick_conditions(&mut self, zones: &mut Zones<'_>) {
        let live: Vec<Arc<Condition>> = self.catalog.live().cloned().collect();
        for c in live {
            self.publish_condition(zones, &c);
            self.look(zones, &c);
        }
    }
}

/// The more specific of two zones one of which holds the other.
fn deeper(a: &ZonePath, b: &ZonePath) -> ZonePath {
    if a.depth() >= b.depth() {
        a.clone()
    } else {
        b.clone()
    }
}

/// Whether one of the zones holds the other.
fn overlaps(a: &ZonePath, b: &ZonePath) -> bool {
    a.contains(b) || b.contains(a)
}

impl Core for Evn {
    type Msg = EvnMsg;
    type Event = EvnEvent;
    type Cx<'a> = Zones<'a>;

    fn handle(&mut self, _now: Micros, from: &Peer, msg: EvnMsg, mut zones: Zones<'_>) {
        match msg {
            EvnMsg::Push { event, down } => {
                if !down.contains(zones.leaf()) && !event.scope.contains(&down) {
                    self.stats.refused += 1;
                    return;
                }
                self.take(&zones, Arc::new(event), Some(down), false);
            }
            EvnMsg::Digest {
                leaf,
                events,
                conds,
            } => self.on_digest(&zones, from, leaf, events, conds),
            EvnMsg::Reply {
                events,
                conds,
                want_events,
                want_conds,
            } => self.on_reply(&mut zones, from, events, conds, want_events, want_conds),
        }
    }

    fn handle_timeout(&mut self, now: Micros, mut zones: Zones<'_>) {
        if !self.started {
            self.started = true;
            self.next_gossip = now + self.rng.random_range(0..self.cfg.gossip_every.max(1));
            self.conditions_changed(&mut zones);
        }
        self.expire(now);
        if now >= self.next_tick {
            self.next_tick = now + CONDITION_TICK;
            self.tick_conditions(&mut zones);
        }
        if now >= self.next_gossip {
            let busy = !self.live.is_empty() || self.catalog.all().next().is_some();
            let every = if busy {
                self.cfg.gossip_every
            } else {
                self.cfg.idle_gossip_every
            };
            // A little jitter so agents do not gossip in step.
            self.next_gossip = now + every - every / 8 + self.rng.random_range(0..every / 4 + 1);
            self.gossip(&zones);
        }
    }

    fn poll_timeout(&self) -> Micros {
        if !self.started {
            return 0;
        }
        let mut t = self
            .next_gossip
            .min(self.next_tick)
            .min(self.subs.next_expiry());
        if let Some(first) = self.seen_by_expiry.first() {
            t = t.min(first.0);
        }
        t
    }

    fn poll_transmit(&mut self) -> Option<Transmit<EvnMsg>> {
        self.out.pop_front()
    }

    fn poll_event(&mut self) -> Option<EvnEvent> {
        self.events.pop_front()
    }
}

impl Service for Evn {
    const ID: ServiceId = ID;
    const NAME: &'static str = "evn";

    fn encode(msg: &EvnMsg) -> Vec<u8> {
        msg.encode()
    }

    fn decode(bytes: &[u8]) -> Result<EvnMsg, Refusal> {
        EvnMsg::decode(bytes).map_err(|_| Refusal::MalformedMessage)
    }

    fn save(&self) -> Option<Vec<u8>> {
        let saved = Saved {
            subs: self.subs.saved(),
            conds: self.catalog.all().map(|c| (**c).clone()).collect(),
            last_seq: self.last_seq,
            states: self
                .conds
                .iter()
                .map(|(n, s)| (n.clone(), s.state))
                .collect(),
            seen: self.seen_by_origin(),
        };
        postcard::to_allocvec(&saved).ok()
    }

    fn restore(&mut self, state: &[u8], mut zones: Zones<'_>) -> Result<(), Refusal> {
        let saved: Saved = postcard::from_bytes(state).map_err(|_| Refusal::MalformedMessage)?;
        let now = zones.now();
        self.last_seq = self.last_seq.max(saved.last_seq);
        for (origin, seqs) in saved.seen {
            for (seq, until) in seqs {
                if until > now && self.seen.len() < MAX_SEEN {
                    self.seen.insert((origin.clone(), seq), until);
                    self.seen_by_expiry.insert((until, (origin.clone(), seq)));
                }
            }
        }
        self.subs.restore(saved.subs, now);
        while let Some(end) = self.subs.take_ended() {
            self.emit(EvnEvent::Ended(end));
        }
        for c in saved.conds {
            // Our own definitions were checked when made; others' again.
            let _ = self.merge_condition(c, now);
        }
        for (name, state) in saved.states {
            if self.catalog.get(&name).is_some() {
                self.conds.entry(name).or_default().state = state;
            }
        }
        self.conditions_changed(&mut zones);
        Ok(())
    }
}
