//! CHM, component health monitoring (the weak level): components register
//! with their local agent, which judges their health from the checks the
//! runtime runs for it; health is published in the zone tree and
//! aggregated per zone; any agent looks a component up like a DNS name.
//!
//! - [`registry`]: ids, checks, thresholds, maintenance, validation.
//! - [`detector`]: SWIM with Lifeguard among the agents of a leaf zone, so
//!   the components of an unreachable agent turn critical in about a second.
//! - [`summary`]: the leaf row's `chm_` attributes and the built-in
//!   aggregation (counts, first critical ids, Bloom filter).
//! - [`lookup`]: iterative lookup by id and search by keyword.
//! - [`qos`]: the seed's T1..T4 diagnosis, merged across consumers.
//! - [`consensus`]: the consensus level, verdicts agreed in a CRM group.
//!
//! The runtime drives [`Chm`] through [`crate::host::Host::with_service`]:
//! it registers components, runs the checks [`Chm::poll_check`] hands it
//! and reports their outcomes, forwards heartbeats and QoS samples, and
//! reads the [`ChmEvent`]s (status changes for a watch, lookup results).
//! Every timer is named ([`Timer`]).

pub mod bloom;
pub mod consensus;
pub mod detector;
pub mod lookup;
pub mod qos;
pub mod registry;
pub mod summary;
mod timers;

pub use detector::{DetectorConfig, DetectorStats};
pub use lookup::{LookupError, Record};
pub use qos::{Level, QosError, QosView, Sample};
pub use registry::{
    AGENT_UNREACHABLE, Check, CheckSpec, ComponentId, Health, Registration, RegistryError, Status,
};

use crate::host::{Core, Peer, Service, ServiceId, Transmit, Zones};
use crate::path::ZonePath;
use crate::refusal::Refusal;
use crate::row::{Micros, Row};
use bloom::{Bloom, Key};
use detector::{Detector, Probe};
use lookup::{Answer, Query, Referral, Search, Want};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use summary::Entry;
use timers::Timers;
use zone_sql::Value;

/// CHM's envelope id.
pub const ID: ServiceId = 2;
/// QoS parameters one share carries at most, and one consumer keeps to share.
pub const MAX_SHARE: usize = 256;

/// CHM's settings. Times in microseconds.
#[derive(Debug, Clone)]
pub struct ChmConfig {
    pub detector: DetectorConfig,
    /// How long a lookup waits for one contact before it asks the next.
    pub query_timeout: Micros,
    /// How often a consumer's agent sends its QoS samples to the provider's.
    pub qos_share_interval: Micros,
    /// How often a provider's merged QoS may change its row when its
    /// level stays the same.
    pub qos_publish_interval: Micros,
    /// Seed of the detector's random choices.
    pub seed: u64,
}

impl Default for ChmConfig {
    fn default() -> Self {
        ChmConfig {
            detector: DetectorConfig::default(),
            query_timeout: 250_000,
            qos_share_interval: 2_000_000,
            qos_publish_interval: 10_000_000,
            seed: 0,
        }
    }
}

/// CHM's messages between agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChmMsg {
    Probe(Probe),
    Query(Query),
    Answer(Answer),
    /// QoS parameters of calls to `id`, for the agent that hosts it.
    QosShare {
        id: ComponentId,
        params: Vec<[f32; 4]>,
    },
}

/// A component held by this agent.
#[derive(Debug, Clone)]
pub struct Component {
    pub registration: Registration,
    pub health: Health,
    /// The last check's output, kept apart from the status (bounded).
    pub output: String,
}

/// A check the runtime must run now, then report with [`Chm::record_check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueCheck {
    pub id: ComponentId,
    pub check: Check,
    pub timeout: Micros,
}

/// A change of a component's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub id: ComponentId,
    pub status: Status,
    pub previous: Status,
    pub time: Micros,
    /// The leaf zone of the component's agent.
    pub zone: ZonePath,
    pub reason: String,
}

/// What CHM tells its runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum ChmEvent {
    /// A component of this agent or of its leaf zone changed status (a
    /// neighbour's as its row and this agent's detector say).
    StatusChanged(StatusChange),
    /// A component of this agent was deregistered after its critical period.
    Deregistered { id: ComponentId, time: Micros },
    /// The result of [`Chm::lookup`].
    Lookup {
        ticket: u64,
        result: Result<Record, LookupError>,
    },
    /// The result of [`Chm::providers`].
    Providers {
        ticket: u64,
        keyword: String,
        records: Vec<Record>,
    },
    /// The result of [`Chm::list`]: `complete` is false when some zone
    /// could not be asked or the listing reached its limit.
    Listed {
        ticket: u64,
        records: Vec<Record>,
        complete: bool,
    },
}

/// Why a request to CHM was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChmError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Qos(#[from] QosError),
    #[error("bad QoS parameters for {0}: not finite")]
    NotFinite(ComponentId),
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChmStats {
    pub checks_due: u64,
    pub checks_recorded: u64,
    pub status_changes: u64,
    pub lookups: u64,
    pub queries_sent: u64,
    pub queries_answered: u64,
    pub query_timeouts: u64,
    pub qos_samples: u64,
    pub qos_refused: u64,
    /// Attributes that could not be published (the row's budget was full).
    pub publish_failures: u64,
}

/// CHM's named timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// A component's check falls due.
    Check(ComponentId),
    /// A TTL component's heartbeat is late.
    Ttl(ComponentId),
    /// A component has been critical for its `deregister_after`.
    Deregister(ComponentId),
    /// A lookup's query got no answer in time.
    Query(u64),
    /// Consumers' QoS samples go to the providers' agents.
    QosShare,
}

impl Timer {
    pub fn name(&self) -> &'static str {
        match self {
            Timer::Check(_) => "check",
            Timer::Ttl(_) => "ttl",
            Timer::Deregister(_) => "deregister",
            Timer::Query(_) => "query",
            Timer::QosShare => "qos_share",
        }
    }
}

/// What a consumer's agent keeps of one provider's QoS.
#[derive(Default)]
struct Consumed {
    offset: qos::Offset,
    diagnosis: qos::Diagnosis,
    unshared: Vec<qos::Params>,
    host: Option<Arc<str>>,
    looking: bool,
}

/// What a search is for.
#[derive(Debug, Clone)]
enum Purpose {
    Lookup,
    List,
    Providers(String),
    /// Finding the agent of a provider to share QoS with.
    QosHost(ComponentId),
}

/// The durable state: the registrations and maintenance.
#[derive(Serialize, Deserialize)]
struct Saved {
    components: Vec<(Registration, Option<String>)>,
}

/// The CHM core of one agent.
pub struct Chm {
    cfg: ChmConfig,
    components: BTreeMap<ComponentId, Component>,
    detector: Option<Detector>,
    timers: Timers<Timer>,
    due: VecDeque<ComponentId>,
    outbox: VecDeque<Transmit<ChmMsg>>,
    events: VecDeque<ChmEvent>,
    published: BTreeMap<&'static str, Value>,
    /// Status of the neighbours' components as last seen, for events.
    seen: BTreeMap<(ZonePath, ComponentId), Status>,
    searches: BTreeMap<u64, (Search, Purpose)>,
    /// Queries in flight: qid to (ticket, candidate).
    queries: BTreeMap<u64, (u64, lookup::Candidate)>,
    next_id: u64,
    consumed: BTreeMap<ComponentId, Consumed>,
    provided: BTreeMap<ComponentId, (qos::Merged, QosView, Micros)>,
    /// The last results of lookups and searches, by ticket, for a driver
    /// that asks for them rather than reading events.
    results: VecDeque<(u64, ChmEvent)>,
    pub stats: ChmStats,
}

/// Results of lookups and searches kept for [`Chm::result`].
pub const KEPT_RESULTS: usize = 64;

impl Chm {
    pub fn new(cfg: ChmConfig) -> Chm {
        let mut timers = Timers::default();
        timers.set(Timer::QosShare, cfg.qos_share_interval);
        Chm {
            cfg,
            components: BTreeMap::new(),
            detector: None,
            timers,
            due: VecDeque::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            published: BTreeMap::new(),
            seen: BTreeMap::new(),
            searches: BTreeMap::new(),
            queries: BTreeMap::new(),
            next_id: 0,
            consumed: BTreeMap::new(),
            provided: BTreeMap::new(),
            results: VecDeque::new(),
            stats: ChmStats::default(),
        }
    }

    // ----- the runtime's API -----

    /// Registers a component (or replaces the registration of its id). Its
    /// status is critical until its first check passes.
    pub fn register(
        &mut self,
        now: Micros,
        mut zones: Zones<'_>,
        reg: Registration,
    ) -> Result<(), ChmError> {
        reg.validate()?;
        if let Some(c) = self.components.get(&reg.id)
            && c.registration == reg
        {
            return Ok(());
        }
        if !self.components.contains_key(&reg.id)
            && self.components.len() >= registry::MAX_COMPONENTS
        {
            return Err(RegistryError::Full.into());
        }
        let worst = |r: &Registration| Entry::worst_len(&r.id, r.address.as_deref(), &r.keywords);
        summary::fits(
            self.components
                .values()
                .filter(|c| c.registration.id != reg.id)
                .map(|c| worst(&c.registration))
                .chain([worst(&reg)]),
        )
        .map_err(|(needed, limit)| RegistryError::RowBudget { needed, limit })?;
        self.install(now, reg, None);
        self.sync(now, &mut zones);
        Ok(())
    }

    fn install(&mut self, now: Micros, reg: Registration, maintenance: Option<String>) {
        let id = reg.id.clone();
        self.forget_timers(&id);
        match reg.check.check {
            Check::Ttl { ttl } => self.timers.set(Timer::Ttl(id.clone()), now + ttl),
            _ => self.timers.set(Timer::Check(id.clone()), now),
        }
        let mut health = Health::new(now);
        if maintenance.is_some() {
            health.set_maintenance(now, maintenance);
        }
        if let Some(d) = reg.deregister_after
            && health.maintenance.is_none()
        {
            self.timers.set(Timer::Deregister(id.clone()), now + d);
        }
        self.components.insert(
            id,
            Component {
                registration: reg,
                health,
                output: String::new(),
            },
        );
    }

    fn forget_timers(&mut self, id: &ComponentId) {
        for t in [
            Timer::Check(id.clone()),
            Timer::Ttl(id.clone()),
            Timer::Deregister(id.clone()),
        ] {
            self.timers.cancel(&t);
        }
        self.due.retain(|d| d != id);
    }

    pub fn deregister(
        &mut self,
        now: Micros,
        mut zones: Zones<'_>,
        id: &ComponentId,
    ) -> Result<(), ChmError> {
        self.known(id)?;
        self.components.remove(id);
        self.forget_timers(id);
        self.provided.remove(id);
        self.sync(now, &mut zones);
        Ok(())
    }

    fn known(&mut self, id: &ComponentId) -> Result<&mut Component, RegistryError> {
        self.components
            .get_mut(id)
            .ok_or_else(|| RegistryError::Unknown(id.clone()))
    }

    /// Puts a component in maintenance (`Some(reason)`), or takes it out.
    pub fn maint(
        &mut self,
        now: Micros,
        mut zones: Zones<'_>,
        id: &ComponentId,
        reason: Option<String>,
    ) -> Result<(), ChmError> {
        let c = self.known(id)?;
        let reason = reason.map(|r| registry::cut(&r, registry::MAX_REASON));
        if let Some(prev) = c.health.set_maintenance(now, reason) {
            self.changed(now, &zones, id, prev);
        }
        self.sync(now, &mut zones);
        Ok(())
    }

    /// A heartbeat of a TTL component, with the status it reports itself.
    pub fn heartbeat(
        &mut self,
        now: Micros,
        mut zones: Zones<'_>,
        id: &ComponentId,
        status: Status,
        output: &str,
    ) -> Result<(), ChmError> {
        let c = self.known(id)?;
        let Check::Ttl { ttl } = c.registration.check.check else {
            return Err(
                RegistryError::NotTtl(id.clone(), c.registration.check.check.kind()).into(),
            );
        };
        self.timers.set(Timer::Ttl(id.clone()), now + ttl);
        let reason = if output.is_empty() {
            "heartbeat"
        } else {
            output
        };
        self.outcome(now, &zones, id, status, reason, output);
        self.sync(now, &mut zones);
        Ok(())
    }

    /// The next check due, for the runtime to run and report.
    pub fn poll_check(&mut self) -> Option<DueCheck> {
        while let Some(id) = self.due.pop_front() {
            if let Some(c) = self.components.get(&id) {
                return Some(DueCheck {
                    id,
                    check: c.registration.check.check.clone(),
                    timeout: c.registration.check.timeout,
                });
            }
        }
        None
    }

    /// Reports the outcome of a check the runtime ran: its status and its
    /// output (whose first line is the reason when the status changes).
    pub fn record_check(
        &mut self,
        now: Micros,
        mut zones: Zones<'_>,
        id: &ComponentId,
        status: Status,
        output: &str,
    ) -> Result<(), ChmError> {
        self.known(id)?;
        self.stats.checks_recorded += 1;
        let reason = output.lines().next().unwrap_or("").trim();
        let reason = if reason.is_empty() {
            status.as_str()
        } else {
            reason
        };
        let reason = reason.to_string();
        self.outcome(now, &zones, id, status, &reason, output);
        self.sync(now, &mut zones);
        Ok(())
    }

    fn outcome(
        &mut self,
        now: Micros,
        zones: &Zones<'_>,
        id: &ComponentId,
        status: Status,
        reason: &str,
        output: &str,
    ) {
        let Some(c) = self.components.get_mut(id) else {
            return;
        };
        c.output = registry::cut(output, registry::MAX_OUTPUT);
        let spec = c.registration.check.clone();
        if let Some(prev) = c.health.record(now, status, reason, &spec) {
            self.changed(now, zones, id, prev);
        }
    }

    /// A status change of an own component: its event, and its
    /// deregistration timer.
    fn changed(&mut self, now: Micros, zones: &Zones<'_>, id: &ComponentId, previous: Status) {
        let Some(c) = self.components.get(id) else {
            return;
        };
        self.stats.status_changes += 1;
        let h = &c.health;
        let critical = h.status == Status::Critical && h.maintenance.is_none();
        match c.registration.deregister_after {
            Some(d) if critical => self.timers.set(Timer::Deregister(id.clone()), h.since + d),
            _ => {
                self.timers.cancel(&Timer::Deregister(id.clone()));
            }
        }
        self.events.push_back(ChmEvent::StatusChanged(StatusChange {
            id: id.clone(),
            status: h.status,
            previous,
            time: now,
            zone: zones.leaf().clone(),
            reason: h.reason.clone(),
        }));
    }

    /// This agent's components.
    pub fn components(&self) -> impl Iterator<Item = &Component> {
        self.components.values()
    }

    pub fn component(&self, id: &ComponentId) -> Option<&Component> {
        self.components.get(id)
    }

    /// The detector's counters and the leaf-zone members it holds dead.
    pub fn detector(&self) -> Option<&Detector> {
        self.detector.as_ref()
    }

    /// Every component of this agent's leaf zone, as this agent judges it.
    pub fn neighbourhood(&self, now: Micros, zones: &Zones<'_>) -> Vec<Record> {
        self.home_records(now, zones, |_| true)
    }

    /// Starts a lookup of `id` anywhere in the tree; its result comes as
    /// [`ChmEvent::Lookup`] with the returned ticket.
    pub fn lookup(&mut self, now: Micros, zones: Zones<'_>, id: &str) -> Result<u64, ChmError> {
        let id = ComponentId::parse(id)?;
        self.stats.lookups += 1;
        Ok(self.search(now, &zones, Want::Id(id), 1, Purpose::Lookup))
    }

    /// Starts a search for the passing providers of `keyword`, nearest zone
    /// first, `ok` before `unknown` before `moderate`, `severe` left out;
    /// at most `limit`. Its result comes as [`ChmEvent::Providers`].
    pub fn providers(
        &mut self,
        now: Micros,
        zones: Zones<'_>,
        keyword: &str,
        limit: usize,
    ) -> Result<u64, ChmError> {
        if !registry::is_name(keyword, registry::MAX_KEYWORD) {
            return Err(RegistryError::BadKeyword(registry::cut(keyword, 80)).into());
        }
        let limit = limit.clamp(1, lookup::MAX_RECORDS);
        Ok(self.search(
            now,
            &zones,
            Want::Keyword(keyword.into()),
            limit,
            Purpose::Providers(keyword.into()),
        ))
    }

    /// Starts a listing of every component in `within` (at most
    /// [`lookup::MAX_LISTED`]), nearest zone first; its result comes as
    /// [`ChmEvent::Listed`].
    pub fn list(&mut self, now: Micros, zones: Zones<'_>, within: ZonePath) -> u64 {
        self.stats.lookups += 1;
        self.next_id += 1;
        let ticket = self.next_id;
        let mut s = Search::new(Want::All, lookup::MAX_LISTED);
        s.within = within;
        self.start(now, &zones, ticket, s, Purpose::List);
        ticket
    }

    /// A consumer's timestamps of one call to provider `id`: checked,
    /// corrected for the clocks' offset, diagnosed here and shared with
    /// the provider's agent. Returns this agent's own view of the provider.
    pub fn report_qos(&mut self, id: &ComponentId, sample: Sample) -> Result<QosView, ChmError> {
        if let Err(e) = sample.check() {
            self.stats.qos_refused += 1;
            return Err(e.into());
        }
        self.stats.qos_samples += 1;
        let c = self.consumed.entry(id.clone()).or_default();
        let offset = c.offset.add(sample);
        let p = sample.params(offset);
        c.diagnosis.add(p);
        if c.unshared.len() == MAX_SHARE {
            c.unshared.remove(0);
        }
        c.unshared.push(p);
        Ok(c.diagnosis.view())
    }

    /// The merged QoS of an own component, from every consumer's agent.
    pub fn qos_of(&self, id: &ComponentId) -> QosView {
        self.provided
            .get(id)
            .map_or(QosView::UNKNOWN, |(m, _, _)| m.view())
    }

    // ----- publishing -----

    fn detector_mut(&mut self, now: Micros, zones: &Zones<'_>) -> &mut Detector {
        let (cfg, seed) = (&self.cfg.detector, self.cfg.seed);
        self.detector.get_or_insert_with(|| {
            let seed = seed ^ crate::row::stable_hash(zones.addr());
            Detector::new(cfg.clone(), zones.addr().clone(), now, seed)
        })
    }

    /// The leaf zone's rows with their members' addresses.
    fn home<'z>(zones: &'z Zones<'_>) -> Vec<(&'z Arc<Row>, Arc<str>)> {
        let Some(parent) = zones.leaf().parent() else {
            return Vec::new();
        };
        zones
            .members(&parent)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.contacts().first().map(|a| (r, a.clone())))
            .collect()
    }

    /// Brings the detector's members, the leaf row and the neighbours'
    /// events up to date.
    fn sync(&mut self, now: Micros, zones: &mut Zones<'_>) {
        let addrs: Vec<Arc<str>> = Self::home(zones).into_iter().map(|(_, a)| a).collect();
        self.detector_mut(now, zones).set_members(now, addrs);
        while self
            .detector
            .as_mut()
            .and_then(|d| d.poll_verdict())
            .is_some()
        {}
        self.publish(now, zones);
        self.neighbour_events(now, zones);
    }

    fn own_entry(&self, c: &Component) -> Entry {
        let r = &c.registration;
        Entry {
            id: r.id.clone(),
            status: c.health.status,
            since: c.health.since,
            qos: self
                .provided
                .get(&r.id)
                .map_or(QosView::UNKNOWN, |(_, v, _)| *v),
            address: r.address.clone(),
            keywords: r.keywords.clone(),
            reason: c.health.reason.clone(),
        }
    }

    fn publish(&mut self, _now: Micros, zones: &mut Zones<'_>) {
        let mut counts = [0i64; 3];
        let mut bloom = Bloom::default();
        let mut entries = Vec::with_capacity(self.components.len());
        let mut critical: Vec<Arc<str>> = Vec::new();
        for c in self.components.values() {
            let e = self.own_entry(c);
            counts[e.status as usize] += 1;
            bloom.insert(Key::Id(e.id.as_str()));
            for k in &e.keywords {
                bloom.insert(Key::Keyword(k));
            }
            if e.status == Status::Critical && critical.len() < summary::CRITICAL_IDS_N {
                critical.push(e.id.as_str().into());
            }
            entries.push(Arc::<str>::from(e.encode()));
        }
        // The dead neighbours this agent accounts for.
        let home = Self::home(zones);
        let me = zones.addr().clone();
        let det = self.detector.as_ref();
        let dead = |a: &Arc<str>| *a != me && det.is_some_and(|d| d.is_dead(a));
        let mut adj = [0i64; 3];
        let mut dead_names: Vec<Arc<str>> = Vec::new();
        let listed: std::collections::BTreeSet<Arc<str>> = home
            .iter()
            .filter(|(_, a)| !dead(a))
            .flat_map(|(r, _)| summary::list(r, summary::CRITICAL_IDS).iter().cloned())
            .collect();
        let n = home.len();
        for (k, (row, addr)) in home.iter().enumerate() {
            if !dead(addr) {
                continue;
            }
            if dead_names.len() < summary::MAX_DEAD_LISTED {
                dead_names.push(row.zone.name().into());
            }
            // The first live member after it, in name order, accounts for it.
            let accountant = (1..n).map(|s| &home[(k + s) % n].1).find(|a| !dead(a));
            if accountant != Some(&me) {
                continue;
            }
            let corr = summary::dead_correction(row);
            for (a, c) in adj.iter_mut().zip(corr) {
                *a += c;
            }
            for e in summary::entries(row) {
                let id: Arc<str> = e.id.as_str().into();
                if e.status != Status::Critical
                    && critical.len() < summary::CRITICAL_IDS_N
                    && !listed.contains(&id)
                    && !critical.contains(&id)
                {
                    critical.push(id);
                }
            }
        }
        let mut want: Vec<(&'static str, Option<Value>)> = vec![
            (summary::COMPONENTS, Some(Value::List(entries.into()))),
            (summary::PASSING, Some(Value::Int(counts[0]))),
            (summary::WARNING, Some(Value::Int(counts[1]))),
            (summary::CRITICAL, Some(Value::Int(counts[2]))),
            (summary::CRITICAL_IDS, Some(Value::List(critical.into()))),
            (summary::BLOOM, Some(Value::Str(bloom.to_hex().into()))),
        ];
        let nonzero = |v: i64| (v != 0).then_some(Value::Int(v));
        want.push((summary::ADJ_PASSING, nonzero(adj[0])));
        want.push((summary::ADJ_WARNING, nonzero(adj[1])));
        want.push((summary::ADJ_CRITICAL, nonzero(adj[2])));
        want.push((
            summary::DEAD,
            (!dead_names.is_empty()).then(|| Value::List(dead_names.into())),
        ));
        for (name, v) in want {
            match v {
                Some(v) if self.published.get(name) != Some(&v) => {
                    match zones.publish(name, v.clone()) {
                        Ok(()) => {
                            self.published.insert(name, v);
                        }
                        Err(e) => {
                            self.stats.publish_failures += 1;
                            tracing::warn!(attr = name, %e, "CHM attribute not published");
                        }
                    }
                }
                None if self.published.remove(name).is_some() => {
                    let _ = zones.unpublish(name);
                }
                _ => {}
            }
        }
    }

    /// The records of the components of this agent's leaf zone that `keep`
    /// keeps, as this agent judges them.
    fn home_records(
        &self,
        now: Micros,
        zones: &Zones<'_>,
        keep: impl Fn(&Entry) -> bool,
    ) -> Vec<Record> {
        let home = Self::home(zones);
        let me = zones.addr();
        let det = self.detector.as_ref();
        let mut out = Vec::new();
        for (row, addr) in &home {
            let held_dead = *addr != *me && det.is_some_and(|d| d.is_dead(addr));
            let dead_since = det
                .and_then(|d| d.dead().find(|(a, _)| *a == addr).map(|(_, t)| t))
                .unwrap_or(now);
            let own = *addr == *me;
            let observers: Vec<ZonePath> = if held_dead {
                let name = row.zone.name();
                let mut obs: Vec<ZonePath> = home
                    .iter()
                    .filter(|(r, _)| summary::list(r, summary::DEAD).iter().any(|d| &**d == name))
                    .map(|(r, _)| r.zone.clone())
                    .collect();
                if !obs.contains(zones.leaf()) {
                    obs.push(zones.leaf().clone());
                }
                obs
            } else {
                vec![row.zone.clone()]
            };
            let entries: Vec<Entry> = if own {
                self.components
                    .values()
                    .map(|c| self.own_entry(c))
                    .collect()
            } else {
                summary::entries(row).collect()
            };
            for e in entries.into_iter().filter(|e| keep(e)) {
                let age = if own {
                    let c = &self.components[&e.id];
                    now.saturating_sub(c.health.last_check.unwrap_or(c.health.since))
                } else {
                    now.saturating_sub(row.issued)
                };
                let (status, reason, since) = if held_dead {
                    (Status::Critical, AGENT_UNREACHABLE.to_string(), dead_since)
                } else if own {
                    let h = &self.components[&e.id].health;
                    (h.status, h.reason.clone(), h.since)
                } else {
                    (e.status, e.reason.clone(), e.since)
                };
                out.push(Record {
                    id: e.id,
                    status,
                    reason,
                    zone: row.zone.clone(),
                    since,
                    observers: observers.clone(),
                    age,
                    keywords: e.keywords,
                    address: e.address,
                    qos: e.qos,
                    agent: addr.clone(),
                });
            }
        }
        out
    }

    /// Status changes of the neighbours' components, as events.
    fn neighbour_events(&mut self, now: Micros, zones: &Zones<'_>) {
        let me = zones.leaf().clone();
        let records = self.home_records(now, zones, |_| true);
        let mut next = BTreeMap::new();
        for r in records {
            if r.zone == me {
                continue;
            }
            let key = (r.zone.clone(), r.id.clone());
            if let Some(prev) = self.seen.get(&key)
                && *prev != r.status
            {
                self.events.push_back(ChmEvent::StatusChanged(StatusChange {
                    id: r.id.clone(),
                    status: r.status,
                    previous: *prev,
                    time: now,
                    zone: r.zone.clone(),
                    reason: r.reason.clone(),
                }));
            }
            next.insert(key, r.status);
        }
        self.seen = next;
    }

    // ----- lookups -----

    /// The Bloom filter key of `want`; None when every zone matches.
    fn key(want: &Want) -> Option<Key<'_>> {
        match want {
            Want::Id(id) => Some(Key::Id(id.as_str())),
            Want::Keyword(k) => Some(Key::Keyword(k)),
            Want::All => None,
        }
    }

    /// What this agent holds of `want` within `within`: the matching
    /// components of its leaf zone, and the matching zones it cannot read,
    /// nearest first.
    fn resolve(
        &self,
        now: Micros,
        zones: &Zones<'_>,
        want: &Want,
        within: &ZonePath,
    ) -> (Vec<Record>, Vec<Referral>) {
        let mut records = self.home_records(now, zones, |e| match want {
            Want::Id(id) => e.id == *id,
            Want::Keyword(k) => e.keywords.iter().any(|x| x == k),
            Want::All => true,
        });
        records.retain(|r| within.contains(&r.zone));
        let leaf = zones.leaf();
        let key = Self::key(want);
        let mut referrals = Vec::new();
        let path = zones.zones();
        for z in path.iter().rev().skip(1) {
            if z.depth() < within.depth() {
                break;
            }
            for row in zones.members(z).unwrap_or_default() {
                if row.zone.contains(leaf) {
                    continue;
                }
                let hit = match (key, row.get(summary::BLOOM)) {
                    (None, _) => true,
                    (Some(key), Some(Value::Str(s))) => {
                        Bloom::from_hex(s).is_some_and(|b| b.contains(key))
                    }
                    _ => false,
                };
                if hit && referrals.len() < lookup::MAX_REFERRALS {
                    referrals.push(Referral {
                        zone: row.zone.clone(),
                        contacts: row
                            .contacts()
                            .iter()
                            .take(lookup::MAX_CONTACTS)
                            .cloned()
                            .collect(),
                    });
                }
            }
        }
        (records, referrals)
    }

    fn search(
        &mut self,
        now: Micros,
        zones: &Zones<'_>,
        want: Want,
        limit: usize,
        purpose: Purpose,
    ) -> u64 {
        self.next_id += 1;
        let ticket = self.next_id;
        self.start(now, zones, ticket, Search::new(want, limit), purpose);
        ticket
    }

    /// Starts search `ticket` from what this agent holds itself.
    fn start(&mut self, now: Micros, zones: &Zones<'_>, ticket: u64, mut s: Search, p: Purpose) {
        let (records, referrals) = self.resolve(now, zones, &s.want, &ZonePath::root());
        let me = zones.leaf().clone();
        s.add_records(&me, records);
        for r in referrals {
            s.offer(&me, r.zone, r.contacts);
        }
        self.searches.insert(ticket, (s, p));
        self.pump(now, &me, ticket);
    }

    /// Sends what a search may send, or ends it.
    fn pump(&mut self, now: Micros, me: &ZonePath, ticket: u64) {
        let Some((s, _)) = self.searches.get_mut(&ticket) else {
            return;
        };
        while !s.finished() && s.inflight < lookup::PARALLEL && s.sent < lookup::MAX_QUERIES {
            let Some(c) = s.queue.pop() else { break };
            s.inflight += 1;
            s.sent += 1;
            self.next_id += 1;
            let qid = self.next_id;
            let to = c.contacts[c.tries % c.contacts.len()].clone();
            self.outbox.push_back(Transmit {
                to,
                msg: ChmMsg::Query(Query {
                    qid,
                    want: s.want.clone(),
                    zone: c.zone.clone(),
                }),
            });
            self.stats.queries_sent += 1;
            self.timers
                .set(Timer::Query(qid), now + self.cfg.query_timeout);
            self.queries.insert(qid, (ticket, c));
        }
        if s.finished() {
            self.finish(me, ticket);
        }
    }

    /// The result of the lookup or search `ticket`, once it has ended
    /// (the last [`KEPT_RESULTS`] are kept).
    pub fn result(&self, ticket: u64) -> Option<&ChmEvent> {
        self.results
            .iter()
            .find(|(t, _)| *t == ticket)
            .map(|(_, e)| e)
    }

    fn done(&mut self, ticket: u64, e: ChmEvent) {
        if self.results.len() == KEPT_RESULTS {
            self.results.pop_front();
        }
        self.results.push_back((ticket, e.clone()));
        self.events.push_back(e);
    }

    fn finish(&mut self, _me: &ZonePath, ticket: u64) {
        let Some((s, purpose)) = self.searches.remove(&ticket) else {
            return;
        };
        self.queries.retain(|_, (t, _)| *t != ticket);
        match purpose {
            Purpose::Lookup => {
                let Want::Id(id) = s.want.clone() else { return };
                let result = s.record().ok_or(LookupError::NotFound(id));
                self.done(ticket, ChmEvent::Lookup { ticket, result });
            }
            Purpose::Providers(keyword) => {
                let records = s.providers();
                self.done(
                    ticket,
                    ChmEvent::Providers {
                        ticket,
                        keyword,
                        records,
                    },
                );
            }
            Purpose::List => {
                let complete = s.complete();
                self.done(
                    ticket,
                    ChmEvent::Listed {
                        ticket,
                        records: s.all(),
                        complete,
                    },
                );
            }
            Purpose::QosHost(id) => {
                if let Some(c) = self.consumed.get_mut(&id) {
                    c.looking = false;
                    c.host = s.record().map(|r| r.agent);
                }
            }
        }
    }

    fn on_answer(&mut self, now: Micros, zones: &Zones<'_>, a: Answer) {
        let Some((ticket, cand)) = self.queries.remove(&a.qid) else {
            return;
        };
        self.timers.cancel(&Timer::Query(a.qid));
        let me = zones.leaf().clone();
        let Some((s, _)) = self.searches.get_mut(&ticket) else {
            return;
        };
        s.inflight -= 1;
        if !a.inside {
            // A stale contact: try the zone's next one.
            Self::retry(s, cand);
        } else {
            s.truncated |= a.truncated;
            s.add_records(&me, a.records.into_iter().take(lookup::MAX_ANSWER_LISTED));
            for r in a.referrals.into_iter().take(lookup::MAX_REFERRALS) {
                if cand.zone.contains(&r.zone) {
                    s.offer(&me, r.zone, r.contacts);
                }
            }
        }
        self.pump(now, &me, ticket);
    }

    fn retry(s: &mut Search, mut c: lookup::Candidate) {
        c.tries += 1;
        if c.tries < lookup::MAX_TRIES.min(c.contacts.len()) {
            s.queue.push(c);
            s.queue.sort_by_key(|c| std::cmp::Reverse(c.distance));
        } else {
            s.truncated = true;
        }
    }

    fn on_query_timeout(&mut self, now: Micros, zones: &Zones<'_>, qid: u64) {
        let Some((ticket, cand)) = self.queries.remove(&qid) else {
            return;
        };
        self.stats.query_timeouts += 1;
        if let Some((s, _)) = self.searches.get_mut(&ticket) {
            s.inflight -= 1;
            Self::retry(s, cand);
        }
        let me = zones.leaf().clone();
        self.pump(now, &me, ticket);
    }

    fn on_query(&mut self, now: Micros, zones: &Zones<'_>, from: &Peer, q: Query) {
        self.stats.queries_answered += 1;
        let inside = q.zone.contains(zones.leaf());
        let (mut records, referrals) = if inside {
            self.resolve(now, zones, &q.want, &q.zone)
        } else {
            (Vec::new(), Vec::new())
        };
        let most = match q.want {
            Want::All => lookup::MAX_ANSWER_LISTED,
            _ => lookup::MAX_RECORDS,
        };
        let mut bytes = 0;
        let fit = records
            .iter()
            .take(most)
            .take_while(|r| {
                bytes += postcard::experimental::serialized_size(r).unwrap_or(usize::MAX);
                bytes <= lookup::ANSWER_BYTES
            })
            .count();
        let truncated = fit < records.len();
        records.truncate(fit);
        self.outbox.push_back(Transmit {
            to: from.addr.clone(),
            msg: ChmMsg::Answer(Answer {
                qid: q.qid,
                inside,
                records,
                referrals,
                truncated,
            }),
        });
    }

    // ----- QoS -----

    fn share_qos(&mut self, now: Micros, zones: &mut Zones<'_>) {
        let me = zones.addr().clone();
        let ids: Vec<ComponentId> = self
            .consumed
            .iter()
            .filter(|(_, c)| !c.unshared.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if self.components.contains_key(&id) {
                let params =
                    std::mem::take(&mut self.consumed.get_mut(&id).expect("listed").unshared);
                self.take_share(now, zones, &me, &id, params);
                continue;
            }
            let c = self.consumed.get_mut(&id).expect("listed");
            match c.host.clone() {
                Some(host) => {
                    let params = std::mem::take(&mut c.unshared)
                        .into_iter()
                        .map(|p| p.map(|v| v as f32))
                        .collect();
                    self.outbox.push_back(Transmit {
                        to: host,
                        msg: ChmMsg::QosShare { id, params },
                    });
                }
                None if !c.looking => {
                    c.looking = true;
                    self.search(now, zones, Want::Id(id.clone()), 1, Purpose::QosHost(id));
                }
                None => {}
            }
        }
    }

    /// QoS parameters of an own component from consumer agent `from`.
    fn take_share(
        &mut self,
        now: Micros,
        zones: &mut Zones<'_>,
        from: &Arc<str>,
        id: &ComponentId,
        params: Vec<qos::Params>,
    ) {
        if !self.components.contains_key(id) {
            return;
        }
        let interval = self.cfg.qos_publish_interval;
        let (m, shown, at) = self
            .provided
            .entry(id.clone())
            .or_insert_with(|| (qos::Merged::default(), QosView::UNKNOWN, 0));
        m.add(from, params);
        let v = m.view();
        if v.level != shown.level || now >= at.saturating_add(interval) {
            *shown = v;
            *at = now;
            self.publish(now, zones);
        }
    }

    fn on_share(
        &mut self,
        now: Micros,
        zones: &mut Zones<'_>,
        from: &Peer,
        id: ComponentId,
        params: Vec<[f32; 4]>,
    ) {
        let params: Vec<qos::Params> = params
            .into_iter()
            .take(MAX_SHARE)
            .filter(|p| p.iter().all(|v| v.is_finite() && *v >= 0.0))
            .map(|p| p.map(f64::from))
            .collect();
        self.take_share(now, zones, &from.addr.clone(), &id, params);
    }

    // ----- timers -----

    fn run_timers(&mut self, now: Micros, zones: &mut Zones<'_>) {
        while let Some((t, _)) = self.timers.pop_due(now) {
            match t {
                Timer::Check(id) => {
                    if let Some(c) = self.components.get(&id) {
                        self.stats.checks_due += 1;
                        let next = now + c.registration.check.interval;
                        self.timers.set(Timer::Check(id.clone()), next);
                        if !self.due.contains(&id) {
                            self.due.push_back(id);
                        }
                    }
                }
                Timer::Ttl(id) => {
                    let ttl = match self
                        .components
                        .get(&id)
                        .map(|c| &c.registration.check.check)
                    {
                        Some(Check::Ttl { ttl }) => *ttl,
                        _ => continue,
                    };
                    self.timers.set(Timer::Ttl(id.clone()), now + ttl);
                    let c = self.components.get_mut(&id).expect("checked");
                    // A missed TTL is critical at once, whatever the thresholds.
                    c.health.failures = c.registration.check.failures_before_critical;
                    let spec = c.registration.check.clone();
                    if let Some(prev) = c.health.record(now, Status::Critical, "TTL expired", &spec)
                    {
                        self.changed(now, zones, &id, prev);
                    }
                }
                Timer::Deregister(id) => {
                    let expired = self.components.get(&id).is_some_and(|c| {
                        c.health.status == Status::Critical && c.health.maintenance.is_none()
                    });
                    if expired {
                        self.components.remove(&id);
                        self.forget_timers(&id);
                        self.provided.remove(&id);
                        self.events
                            .push_back(ChmEvent::Deregistered { id, time: now });
                    }
                }
                Timer::Query(qid) => self.on_query_timeout(now, zones, qid),
                Timer::QosShare => {
                    self.timers
                        .set(Timer::QosShare, now + self.cfg.qos_share_interval);
                    self.share_qos(now, zones);
                }
            }
        }
    }

    /// After a pause of this agent, heartbeats could not arrive: every TTL
    /// starts again from now.
    fn after_pause(&mut self, now: Micros) {
        for c in self.components.values() {
            if let Check::Ttl { ttl } = c.registration.check.check {
                self.timers
                    .set(Timer::Ttl(c.registration.id.clone()), now + ttl);
            }
        }
    }

    fn drain_detector(&mut self) {
        if let Some(d) = self.detector.as_mut() {
            while let Some((to, p)) = d.poll_transmit() {
                self.outbox.push_back(Transmit {
                    to,
                    msg: ChmMsg::Probe(p),
                });
            }
        }
    }
}

impl Core for Chm {
    type Msg = ChmMsg;
    type Event = ChmEvent;
    type Cx<'a> = Zones<'a>;

    fn handle(&mut self, now: Micros, from: &Peer, msg: ChmMsg, mut zones: Zones<'_>) {
        if self.detector_mut(now, &zones).observe_time(now).is_some() {
            self.after_pause(now);
        }
        match msg {
            ChmMsg::Probe(p) => {
                let addrs: Vec<Arc<str>> = Self::home(&zones).into_iter().map(|(_, a)| a).collect();
                let d = self.detector_mut(now, &zones);
                d.set_members(now, addrs);
                d.handle(now, &from.addr, p);
                if d.poll_verdict().is_some() {
                    while self
                        .detector
                        .as_mut()
                        .and_then(|d| d.poll_verdict())
                        .is_some()
                    {}
                    self.sync(now, &mut zones);
                }
            }
            ChmMsg::Query(q) => self.on_query(now, &zones, from, q),
            ChmMsg::Answer(a) => self.on_answer(now, &zones, a),
            ChmMsg::QosShare { id, params } => self.on_share(now, &mut zones, from, id, params),
        }
        self.drain_detector();
    }

    fn handle_timeout(&mut self, now: Micros, mut zones: Zones<'_>) {
        if self.detector_mut(now, &zones).observe_time(now).is_some() {
            self.after_pause(now);
        }
        self.run_timers(now, &mut zones);
        if let Some(d) = self.detector.as_mut()
            && d.poll_timeout() <= now
        {
            d.handle_timeout(now);
        }
        self.sync(now, &mut zones);
        self.drain_detector();
    }

    fn poll_timeout(&self) -> Micros {
        match &self.detector {
            None => 0,
            Some(d) => d.poll_timeout().min(self.timers.next()),
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit<ChmMsg>> {
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<ChmEvent> {
        self.events.pop_front()
    }
}

/// Largest CHM message accepted.
pub const MAX_MESSAGE: usize = 48 * 1024;

impl Service for Chm {
    const ID: ServiceId = ID;
    const NAME: &'static str = "chm";

    fn aggregations() -> Vec<String> {
        vec![summary::aggregation()]
    }

    fn encode(msg: &ChmMsg) -> Vec<u8> {
        postcard::to_allocvec(msg).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<ChmMsg, Refusal> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Refusal::MalformedMessage);
        }
        let msg: ChmMsg = postcard::from_bytes(bytes).map_err(|_| Refusal::MalformedMessage)?;
        let ok = match &msg {
            ChmMsg::Probe(p) => p.updates.len() <= detector::MAX_UPDATES,
            ChmMsg::Query(_) => true,
            ChmMsg::Answer(a) => {
                a.records.len() <= lookup::MAX_ANSWER_LISTED
                    && a.referrals.len() <= lookup::MAX_REFERRALS
                    && a.referrals
                        .iter()
                        .all(|r| r.contacts.len() <= lookup::MAX_CONTACTS && !r.contacts.is_empty())
            }
            ChmMsg::QosShare { params, .. } => params.len() <= MAX_SHARE,
        };
        if ok {
            Ok(msg)
        } else {
            Err(Refusal::MalformedMessage)
        }
    }

    fn save(&self) -> Option<Vec<u8>> {
        let saved = Saved {
            components: self
                .components
                .values()
                .map(|c| (c.registration.clone(), c.health.maintenance.clone()))
                .collect(),
        };
        serde_json::to_vec(&saved).ok()
    }

    fn restore(&mut self, state: &[u8], mut zones: Zones<'_>) -> Result<(), Refusal> {
        if state.len() > 1 << 20 {
            return Err(Refusal::InvalidSavedState);
        }
        let saved: Saved = serde_json::from_slice(state).map_err(|_| Refusal::InvalidSavedState)?;
        if saved.components.len() > registry::MAX_COMPONENTS {
            return Err(Refusal::InvalidSavedState);
        }
        let worst = saved
            .components
            .iter()
            .map(|(r, _)| Entry::worst_len(&r.id, r.address.as_deref(), &r.keywords));
        let valid = saved.components.iter().all(|(r, m)| {
            r.validate().is_ok() && m.as_ref().is_none_or(|m| m.len() <= registry::MAX_REASON)
        });
        if !valid || summary::fits(worst).is_err() {
            return Err(Refusal::InvalidSavedState);
        }
        let now = zones.now();
        for (reg, maint) in saved.components {
            self.install(now, reg, maint);
        }
        self.sync(now, &mut zones);
        Ok(())
    }
}
