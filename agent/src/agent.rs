//! The agent's protocol core: a deterministic state machine.
//!
//! No I/O here. The driver (the tokio runtime or the simulator) feeds it
//! messages and the time, and drains the messages it wants sent
//! ([`Agent::poll_transmit`]), its events ([`Agent::poll_event`]) and the
//! next time it wants to be woken ([`Agent::poll_timeout`]).

use crate::afc::{AfcCert, AfcState, AfcStore, StoredAfc};
use crate::config::Config;
use crate::message::{DigestEntry, Message, Wanted, validate_afc};
use crate::path::ZonePath;
use crate::row::{Micros, RESERVED, Row, stable_hash};
use crate::security::Security;
use crate::table::{Offer, ZoneTable};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use zone_sql::{Attrs, Program, Value};

/// A message the agent wants sent.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub to: Arc<str>,
    pub msg: Message,
}

/// Something applications may want to know about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The agent's view of `zone`'s aggregate row changed.
    ZoneChanged { zone: ZonePath, attrs: Attrs },
    /// A child row timed out and was dropped from `zone`'s table.
    RowExpired { zone: ZonePath, child: String },
    /// The set of AFCs changed.
    AfcsChanged,
}

/// Counters of what the agent did; the runtime exports them as metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub msgs_sent: u64,
    pub bytes_sent: u64,
    /// Gossip exchanges this agent started.
    pub syns_sent: u64,
    pub push_msgs_sent: u64,
    pub push_bytes_sent: u64,
    pub push_suppressed: u64,
    pub msgs_received: u64,
    pub rows_accepted: u64,
    /// Members of our own zones learned from other issuers' rows.
    pub hints: u64,
    pub evaluations: u64,
    /// Refused input, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
}

/// Why an offered AFC was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InstallError {
    #[error(
        "AFC scope {0} does not contain this agent's zone; install it through an agent inside {0}"
    )]
    OutOfScope(ZonePath),
    #[error("AFC rejected: {0}")]
    Rejected(String),
    #[error("no AFC named {name} in {scope}")]
    NotFound { scope: ZonePath, name: String },
}

impl InstallError {
    /// The security refusal's metric label, when keys or rights refused the
    /// AFC (rather than its content).
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            InstallError::Rejected(why) => crate::security::Reject::label_of(why),
            _ => None,
        }
    }
}

/// The result of offering a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    Rejected,
    Stale,
    Same,
    Accepted { content_changed: bool },
}

/// One zone on the agent's path: its child table and the agent's evaluation of it.
#[derive(Debug)]
struct Level {
    table: ZoneTable,
    /// The agent's own evaluation of this zone's row.
    computed: Attrs,
    computed_hash: u64,
    evaluated_key: Option<(u64, u64, i64)>,
    /// This agent is among the zone's representatives.
    is_rep: bool,
    /// This agent is the first representative (the one that pushes).
    is_primary: bool,
    /// The zone's failure timeout, from its membership at the last evaluation.
    fail_timeout: Micros,
    /// Contacts of this zone seen in other issuers' rows but absent from the
    /// table: members to meet, so that separately started groups merge.
    hints: Vec<Arc<str>>,
    /// Contacts of children that timed out, probed now and then so that a
    /// healed partition reconnects; with the time they were lost.
    lost: Vec<(Arc<str>, Micros)>,
}

/// Most hints and lost contacts kept per level.
const MAX_HINTS: usize = 8;
const MAX_LOST: usize = 32;
/// Chance per round of probing one lost contact at a level.
const LOST_PROBE: f64 = 0.125;

/// The protocol core of one agent.
pub struct Agent {
    cfg: Config,
    zones: Vec<ZonePath>,
    system: Program,
    levels: Vec<Level>,
    sensors: Attrs,
    local: Attrs,
    afcs: AfcStore,
    rng: SmallRng,
    round: u64,
    next_tick: Micros,
    flush_at: Option<Micros>,
    leaf_dirty: bool,
    last_issued: Micros,
    push_spent: usize,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    /// Signing and verification; None in insecure mode (and the simulator).
    security: Option<Arc<Security>>,
}

impl Agent {
    /// A fresh agent at `now`; its first round starts within one round length.
    pub fn new(cfg: Config, now: Micros) -> Agent {
        let depth = cfg.leaf.depth();
        assert!(depth >= 1, "an agent's zone must be below the root");
        let zones: Vec<ZonePath> = (0..=depth).map(|d| cfg.leaf.ancestor(d)).collect();
        let levels = zones[..depth]
            .iter()
            .map(|z| Level {
                table: ZoneTable::new(z.clone()),
                computed: Attrs::new(),
                computed_hash: 0,
                evaluated_key: None,
                is_rep: true,
                is_primary: true,
                fail_timeout: cfg.fail_timeout(1),
                hints: Vec::new(),
                lost: Vec::new(),
            })
            .collect();
        let system = Program::compile(&system_afc(cfg.reps)).expect("the system AFC is valid");
        let mut rng = SmallRng::seed_from_u64(cfg.rng_seed);
        let phase = rng.random_range(0..cfg.round.max(1));
        Agent {
            zones,
            system,
            levels,
            sensors: Attrs::new(),
            local: Attrs::new(),
            afcs: AfcStore::default(),
            rng,
            round: 0,
            next_tick: now + phase,
            flush_at: Some(now),
            leaf_dirty: true,
            last_issued: 0,
            push_spent: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            security: None,
            cfg,
        }
    }

    // ----- reading -------------------------------------------------------

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn leaf(&self) -> &ZonePath {
        &self.cfg.leaf
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn round(&self) -> u64 {
        self.round
    }

    /// The zones whose tables this agent holds, root first.
    pub fn zones(&self) -> &[ZonePath] {
        &self.zones[..self.levels.len()]
    }

    /// The child table of `zone`, if `zone` is on this agent's path.
    pub fn table(&self, zone: &ZonePath) -> Option<&[Arc<Row>]> {
        self.level_of(zone).map(|i| self.levels[i].table.rows())
    }

    /// This agent's evaluation of `zone`'s aggregate row.
    pub fn zone_row(&self, zone: &ZonePath) -> Option<&Attrs> {
        self.level_of(zone).map(|i| &self.levels[i].computed)
    }

    /// This agent's view of the whole system: the root zone's aggregate row.
    pub fn root_row(&self) -> &Attrs {
        &self.levels[0].computed
    }

    /// The attributes applications set on this agent's leaf row.
    pub fn local_attrs(&self) -> &Attrs {
        &self.local
    }

    pub fn afcs(&self) -> &AfcStore {
        &self.afcs
    }

    /// True when this agent represents `zone` (is among its contacts).
    pub fn represents(&self, zone: &ZonePath) -> bool {
        if *zone == self.cfg.leaf {
            return true;
        }
        self.level_of(zone).is_some_and(|i| self.levels[i].is_rep)
    }

    /// The security layer, when on.
    pub fn security(&self) -> Option<&Arc<Security>> {
        self.security.as_ref()
    }

    fn level_of(&self, zone: &ZonePath) -> Option<usize> {
        let d = zone.depth();
        (d < self.levels.len() && self.zones[d] == *zone).then_some(d)
    }

    // ----- driving -------------------------------------------------------

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next time [`Agent::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Micros {
        match self.flush_at {
            Some(f) => f.min(self.next_tick),
            None => self.next_tick,
        }
    }

    /// Runs what is due at `now`: a gossip round, coalesced re-aggregation.
    pub fn handle_timeout(&mut self, now: Micros) {
        if now >= self.next_tick {
            self.tick(now);
        } else if self.flush_at.is_some_and(|f| now >= f) {
            self.flush(now);
        }
    }

    /// Sets the built-in sensor readings that go into the leaf row.
    pub fn set_sensors(&mut self, sensors: Attrs) {
        if sensors != self.sensors {
            self.sensors = sensors;
            self.mark_leaf_dirty();
        }
    }

    /// Sets an application attribute on the leaf row.
    pub fn set_attr(&mut self, now: Micros, name: &str, value: Value) -> Result<(), String> {
        check_attr_name(name)?;
        if value.encoded_len() > 4096 {
            return Err(format!("value of {name} is over 4096 bytes"));
        }
        self.local.set(name, value);
        self.mark_leaf_dirty();
        self.schedule_flush(now);
        Ok(())
    }

    /// Removes an application attribute; returns whether it was set.
    pub fn unset_attr(&mut self, now: Micros, name: &str) -> bool {
        let had = self.local.remove(name).is_some();
        if had {
            self.mark_leaf_dirty();
            self.schedule_flush(now);
        }
        had
    }

    /// Turns security on (rows this agent issues are signed; rows and AFCs
    /// it receives must verify) or off (the default: the simulator and
    /// `--insecure`). Rows already issued are re-issued, signed or not, at
    /// the next flush. The identity should be an agent certificate for this
    /// agent's leaf zone ([`Security::for_agent`] checks this).
    pub fn set_security(&mut self, security: Option<Arc<Security>>) {
        self.security = security;
        self.mark_leaf_dirty();
    }

    /// Installs (or replaces) an AFC whose scope contains this agent. With
    /// security on, it must be signed by an authority over its scope or a
    /// client allowed it, with a certificate valid now.
    pub fn install_afc(&mut self, now: Micros, cert: AfcCert) -> Result<(), InstallError> {
        if !cert.scope.contains(&self.cfg.leaf) {
            return Err(InstallError::OutOfScope(cert.scope));
        }
        validate_afc(&cert).map_err(InstallError::Rejected)?;
        if let Some(sec) = &self.security {
            sec.verify_new_afc(&cert, now)
                .map_err(|r| InstallError::Rejected(r.to_string()))?;
        }
        let (state, _) = crate::afc::compile(&cert);
        if let AfcState::Rejected(why) = state {
            return Err(InstallError::Rejected(why));
        }
        self.afcs.offer(Arc::new(cert));
        self.afcs_changed(now);
        Ok(())
    }

    /// Removes an AFC by installing its tombstone. With security on, the
    /// tombstone must be signed: give it to [`Agent::install_afc`] instead.
    pub fn remove_afc(
        &mut self,
        now: Micros,
        scope: &ZonePath,
        name: &str,
    ) -> Result<(), InstallError> {
        if self.security.is_some() {
            return Err(InstallError::Rejected(
                "unsigned: with security on, a removal is a tombstone signed by a client or authority; install the signed tombstone".into(),
            ));
        }
        let held = self
            .afcs
            .get(scope, name)
            .filter(|e| e.state != AfcState::Removed)
            .ok_or_else(|| InstallError::NotFound {
                scope: scope.clone(),
                name: name.to_string(),
            })?;
        let issued = now.max(held.cert.issued + 1);
        self.afcs
            .offer(Arc::new(AfcCert::tombstone(scope.clone(), name, issued)));
        self.afcs_changed(now);
        Ok(())
    }

    /// Offers a signed AFC (or tombstone) as a client sent it.
    pub fn offer_afc(&mut self, now: Micros, cert: Arc<AfcCert>) -> bool {
        if let Some(sec) = &self.security
            && let Err(r) = sec.verify_new_afc(&cert, now)
        {
            self.reject(r.reason());
            return false;
        }
        let changed = self.afcs.offer(cert);
        if changed {
            self.afcs_changed(now);
        }
        changed
    }

    /// Restores durable state after a restart: AFCs and application
    /// attributes. With security on, AFCs that do not verify (as at their
    /// issue time) are dropped and counted.
    pub fn restore(&mut self, afcs: impl IntoIterator<Item = Arc<AfcCert>>, local: Attrs) {
        for a in afcs {
            if let Some(sec) = &self.security
                && let Err(r) = sec.verify_afc(&a, a.issued)
            {
                *self.stats.rejected.entry(r.reason()).or_default() += 1;
                continue;
            }
            self.afcs.offer(a);
        }
        self.local = local;
        self.mark_leaf_dirty();
    }

    /// Handles one message from the agent at transport address `from`.
    pub fn handle_message(&mut self, now: Micros, from: &Arc<str>, msg: Message) {
        self.stats.msgs_received += 1;
        match msg {
            Message::Syn {
                sender,
                depth,
                digest,
            } => self.on_syn(now, from, sender, depth, digest),
            Message::SynAck {
                sender,
                rows,
                wanted,
            } => self.on_synack(now, from, sender, rows, wanted),
            Message::Ack { rows } => {
                for r in rows {
                    self.accept(now, r);
                }
            }
            Message::Push { target, rows } => self.on_push(now, target, rows),
        }
    }

    /// Counts a refused input (the runtime adds transport-level reasons).
    pub fn reject(&mut self, reason: &'static str) {
        *self.stats.rejected.entry(reason).or_default() += 1;
    }

    // ----- rounds --------------------------------------------------------

    fn tick(&mut self, now: Micros) {
        self.round += 1;
        self.push_spent = 0;
        self.next_tick = now + self.cfg.round;
        self.afcs.expire(now, self.cfg.tombstone_keep);
        self.expire(now);
        let keep = self.cfg.tombstone_keep;
        for level in &mut self.levels {
            level.lost.retain(|(_, at)| now.saturating_sub(*at) < keep);
        }
        self.leaf_dirty = true;
        self.flush(now);
        self.gossip(now);
    }

    fn mark_leaf_dirty(&mut self) {
        self.leaf_dirty = true;
    }

    fn schedule_flush(&mut self, now: Micros) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.cfg.coalesce);
        }
    }

    fn afcs_changed(&mut self, now: Micros) {
        self.events.push_back(Event::AfcsChanged);
        self.mark_leaf_dirty();
        self.schedule_flush(now);
    }

    fn fail_timeout(&self, level: usize) -> Micros {
        self.levels[level].fail_timeout
    }

    fn expire(&mut self, now: Micros) {
        for i in 0..self.levels.len() {
            let cutoff = now.saturating_sub(self.fail_timeout(i));
            let keep = self.zones[i + 1].name().to_string();
            let dropped = self.levels[i].table.expire(cutoff, &keep);
            for r in dropped {
                let level = &mut self.levels[i];
                for c in r.contacts() {
                    if *c != self.cfg.addr && !level.lost.iter().any(|(l, _)| l == c) {
                        level.lost.push((c.clone(), now));
                    }
                }
                if level.lost.len() > MAX_LOST {
                    let excess = level.lost.len() - MAX_LOST;
                    level.lost.drain(..excess);
                }
                self.events.push_back(Event::RowExpired {
                    zone: self.zones[i].clone(),
                    child: r.name().to_string(),
                });
            }
        }
    }

    /// Re-issues the leaf row if needed, re-aggregates bottom-up, pushes what changed.
    fn flush(&mut self, now: Micros) {
        self.flush_at = None;
        let mut originated: Vec<(usize, Arc<Row>)> = Vec::new();
        let leaf_level = self.levels.len() - 1;
        if self.leaf_dirty {
            self.leaf_dirty = false;
            let (attrs, afcs) = self.leaf_content();
            let content = crate::row::content_hash(&attrs, &afcs);
            let (content_changed, due) =
                self.issue_needed(now, leaf_level, self.cfg.leaf.name(), content);
            if content_changed || due {
                let issued = if now > self.last_issued {
                    now
                } else {
                    self.last_issued + 1
                };
                self.last_issued = issued;
                let leaf = self.cfg.leaf.clone();
                let row = self.signed(Row::new(leaf.clone(), leaf, issued, attrs, afcs));
                self.levels[leaf_level].table.offer(row.clone(), usize::MAX);
                if content_changed {
                    originated.push((leaf_level, row));
                }
            }
        }
        for i in (0..self.levels.len()).rev() {
            self.evaluate(now, i);
            if i == 0 || !self.levels[i].is_rep {
                continue;
            }
            let carried = self.carried_afcs(i - 1);
            let content = crate::row::content_hash(&self.levels[i].computed, &carried);
            let (content_changed, due) =
                self.issue_needed(now, i - 1, self.zones[i].name(), content);
            if content_changed || due {
                let row = Row::new(
                    self.zones[i].clone(),
                    self.cfg.leaf.clone(),
                    self.issue_time(now),
                    self.with_oldest_input(i),
                    carried,
                );
                let row = self.signed(row);
                self.levels[i - 1].table.offer(row.clone(), usize::MAX);
                if content_changed && self.levels[i].is_primary {
                    originated.push((i - 1, row));
                }
            }
        }
        if self.cfg.push && !originated.is_empty() {
            self.push_down(originated);
        }
    }

    /// Whether this agent should issue a new row for child `name` of table
    /// `t` whose content hashes to `content`: (its content changed, the held
    /// version is due for its refresh at a quarter of the failure timeout).
    fn issue_needed(&self, now: Micros, t: usize, name: &str, content: u64) -> (bool, bool) {
        let refresh = self.fail_timeout(t) / 4;
        let held = self.levels[t].table.get(name);
        // A held row signed otherwise than security now asks is due at once.
        let secure = self.security.is_some();
        (
            held.is_none_or(|h| h.content_hash() != content),
            held.is_none_or(|h| {
                now.saturating_sub(h.issued) >= refresh || h.cert.is_some() != secure
            }),
        )
    }

    /// Signs a row this agent issues, when security is on.
    fn signed(&self, mut row: Row) -> Arc<Row> {
        if let Some(sec) = &self.security {
            sec.sign_row(&mut row);
        }
        Arc::new(row)
    }

    fn issue_time(&mut self, now: Micros) -> Micros {
        self.last_issued = now.max(self.last_issued);
        self.last_issued
    }

    /// What this agent's own leaf row says: sensors, application attributes,
    /// the standard attributes, and the AFCs it carries.
    fn leaf_content(&self) -> (Attrs, Vec<Arc<AfcCert>>) {
        let mut attrs = self.sensors.clone();
        for (n, v) in self.local.iter() {
            attrs.set(n.clone(), v.clone());
        }
        for r in RESERVED {
            attrs.remove(r);
        }
        attrs.set("nmembers", 1i64);
        attrs.set("depth", self.cfg.leaf.depth() as i64);
        attrs.set("contacts", Value::list([self.cfg.addr.clone()]));
        if let Some(api) = &self.cfg.api_addr {
            attrs.set("servers", Value::list([api.clone()]));
        }
        (attrs, self.carried_afcs(self.levels.len() - 1))
    }

    /// Evaluates zone `i`'s row from its table, unless nothing it depends on moved.
    fn evaluate(&mut self, now: Micros, i: usize) {
        let half_fail = self.fail_timeout(i) / 2;
        let since = (now + 1).saturating_sub(half_fail);
        let nreporting = self.levels[i].table.fresh_count(since) as i64;
        let level = &self.levels[i];
        let key = (
            level.table.content_version(),
            self.afcs.version(),
            nreporting,
        );
        if level.evaluated_key == Some(key) {
            return;
        }
        self.stats.evaluations += 1;
        let zone = self.zones[i].clone();
        let nchildren = level.table.len() as i64;
        let frame = self.levels[i].table.frame();
        let seed = stable_hash(zone.as_str());
        let mut out = match self.system.eval(&frame, seed) {
            Ok(a) => a,
            Err(_) => Attrs::new(),
        };
        out.set("depth", i as i64);
        out.set("nchildren", nchildren);
        out.set("nreporting", nreporting);
        let mut errors: Vec<String> = Vec::new();
        let mut budget = crate::message::MAX_ROW_BYTES / 2;
        for afc in self.afcs.applicable(&zone) {
            let Some(program) = &afc.program else {
                continue;
            };
            match program.eval(&frame, seed) {
                Ok(a) => {
                    let len = a.encoded_len();
                    if len > budget {
                        errors.push(format!("{}: row size limit reached", afc.cert.name));
                        continue;
                    }
                    budget -= len;
                    for (n, v) in a.iter() {
                        if out.get(n).is_some() {
                            errors.push(format!(
                                "{}: output {n} already set by another AFC",
                                afc.cert.name
                            ));
                        } else {
                            out.set(n.clone(), v.clone());
                        }
                    }
                }
                Err(e) => errors.push(format!("{}: {e}", afc.cert.name)),
            }
        }
        if !errors.is_empty() {
            errors.truncate(4);
            for e in errors.iter_mut() {
                if e.len() > 160 {
                    let mut cut = 160;
                    while !e.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    e.truncate(cut);
                }
            }
            out.set("afc_errors", Value::list(errors));
        }
        let hash = crate::row::content_hash(&out, &[]);
        let (is_rep, is_primary) = match out.get("contacts") {
            Some(Value::List(l)) => (
                l.contains(&self.cfg.addr),
                l.first().is_some_and(|a| *a == self.cfg.addr),
            ),
            _ => (true, true),
        };
        let members = match out.get("nmembers") {
            Some(Value::Int(n)) => (*n).max(1) as u64,
            _ => nchildren.max(1) as u64,
        };
        let level = &mut self.levels[i];
        level.fail_timeout = self.cfg.fail_timeout(members);
        level.evaluated_key = Some(key);
        level.is_rep = is_rep;
        level.is_primary = is_primary;
        let changed = hash != level.computed_hash;
        level.computed_hash = hash;
        if changed && self.cfg.events {
            self.events.push_back(Event::ZoneChanged {
                zone,
                attrs: out.clone(),
            });
        }
        level.computed = out;
    }

    fn with_oldest_input(&self, i: usize) -> Attrs {
        let mut attrs = self.levels[i].computed.clone();
        if let Some(oldest) = self.levels[i].table.oldest_issued() {
            attrs.set("oldest_input", Value::Time(oldest as i64));
        }
        attrs
    }

    /// AFCs that rows of table `t` carry: those installed at that zone, and
    /// those installed above it that its own table does not show yet.
    fn carried_afcs(&self, t: usize) -> Vec<Arc<AfcCert>> {
        let zone = &self.zones[t];
        self.afcs
            .iter()
            .filter(|e| !matches!(e.state, AfcState::Rejected(_)))
            .filter(|e| {
                let scope = &e.cert.scope;
                if scope == zone {
                    return true;
                }
                let d = scope.depth();
                d < t && self.zones[d] == *scope && !self.visible_in(d, &e.cert)
            })
            .map(|e| e.cert.clone())
            .collect()
    }

    fn visible_in(&self, level: usize, cert: &AfcCert) -> bool {
        self.levels[level].table.rows().iter().any(|r| {
            r.afcs
                .iter()
                .any(|a| a.name == cert.name && a.scope == cert.scope && a.issued >= cert.issued)
        })
    }

    // ----- accepting rows ------------------------------------------------

    fn accept(&mut self, now: Micros, row: Arc<Row>) -> Accept {
        let depth = row.depth();
        if depth == 0 || depth > self.levels.len() || !row.zone.is_child_of(&self.zones[depth - 1])
        {
            self.reject("row outside this agent's path");
            return Accept::Rejected;
        }
        // The parent matches (checked above), so comparing names suffices.
        if depth == self.levels.len() && row.name() == self.cfg.leaf.name() {
            return Accept::Stale;
        }
        if !row.zone.contains(&row.issuer) {
            self.reject("row issuer outside its zone");
            return Accept::Rejected;
        }
        let t = depth - 1;
        if row.issued > now + self.cfg.max_skew {
            self.reject("row issued in the future");
            return Accept::Rejected;
        }
        if now.saturating_sub(row.issued) > self.fail_timeout(t) {
            return Accept::Stale;
        }
        if self.security.is_some()
            && let Some(early) = self.verify_row(now, t, &row)
        {
            return early;
        }
        if depth < self.levels.len()
            && row.name() == self.zones[depth].name()
            && row.issuer != self.cfg.leaf
        {
            self.note_hints(depth, &row);
        }
        match self.levels[t]
            .table
            .offer(row.clone(), self.cfg.max_children)
        {
            Offer::Stale => Accept::Stale,
            Offer::Same => Accept::Same,
            Offer::Full => {
                self.reject("zone table full");
                Accept::Rejected
            }
            Offer::Accepted { content_changed } => {
                self.stats.rows_accepted += 1;
                let lost = &mut self.levels[t].lost;
                if !lost.is_empty() {
                    lost.retain(|(c, _)| !row.contacts().contains(c));
                }
                if content_changed {
                    self.adopt_afcs(now, &row);
                    self.schedule_flush(now);
                }
                Accept::Accepted { content_changed }
            }
        }
    }

    /// With security on: settles a row that is not newer than the held
    /// version without verifying it, and verifies the rest. Returns the
    /// outcome when the row goes no further.
    fn verify_row(&mut self, now: Micros, t: usize, row: &Row) -> Option<Accept> {
        if let Some(held) = self.levels[t].table.get(row.name()) {
            match row.version().cmp(&held.version()) {
                std::cmp::Ordering::Less => return Some(Accept::Stale),
                std::cmp::Ordering::Equal => return Some(Accept::Same),
                std::cmp::Ordering::Greater => {}
            }
        }
        let sec = self.security.as_ref()?;
        match sec.verify_row(row, now) {
            Ok(()) => None,
            Err(r) => {
                self.reject(r.reason());
                Some(Accept::Rejected)
            }
        }
    }

    /// Remembers contacts of our own zone `i` that its table does not show.
    fn note_hints(&mut self, i: usize, row: &Row) {
        let level = &mut self.levels[i];
        if let Some(Value::List(mine)) = level.computed.get("contacts")
            && **mine == *row.contacts()
        {
            return;
        }
        for c in row.contacts() {
            if *c == self.cfg.addr || level.hints.contains(c) {
                continue;
            }
            let known = level.table.rows().iter().any(|r| r.contacts().contains(c));
            if !known && level.hints.len() < MAX_HINTS {
                self.stats.hints += 1;
                level.hints.push(c.clone());
            }
        }
    }

    fn adopt_afcs(&mut self, now: Micros, row: &Row) {
        let mut changed = false;
        for a in &row.afcs {
            if a.scope.contains(&self.cfg.leaf) {
                // Rows were verified with their AFCs: this is a cache hit.
                if let Some(sec) = &self.security
                    && let Err(r) = sec.verify_afc(a, now)
                {
                    *self.stats.rejected.entry(r.reason()).or_default() += 1;
                    continue;
                }
                changed |= self.afcs.offer(a.clone());
            }
        }
        if changed {
            self.events.push_back(Event::AfcsChanged);
            self.mark_leaf_dirty();
        }
    }

    // ----- gossip --------------------------------------------------------

    fn gossip(&mut self, now: Micros) {
        let _ = now;
        let leaf_level = self.levels.len() - 1;
        // Partner address -> deepest table to exchange.
        let mut partners: Vec<(Arc<str>, usize)> = Vec::new();
        for i in (0..self.levels.len()).rev() {
            let participates = i == leaf_level || self.levels[i + 1].is_rep;
            if !participates {
                continue;
            }
            if let Some(h) = self.levels[i].hints.pop() {
                partners.push((h, leaf_level));
            }
            if !self.levels[i].lost.is_empty() && self.rng.random_bool(LOST_PROBE) {
                let k = self.rng.random_range(0..self.levels[i].lost.len());
                partners.push((self.levels[i].lost[k].0.clone(), i));
            }
            let mine = self.zones[i + 1].name();
            let addr = &self.cfg.addr;
            let siblings: Vec<usize> = self.levels[i]
                .table
                .rows()
                .iter()
                .enumerate()
                .filter(|(_, r)| r.name() != mine && r.contacts().iter().any(|c| c != addr))
                .map(|(k, _)| k)
                .collect();
            if !siblings.is_empty() {
                let k = siblings[self.rng.random_range(0..siblings.len())];
                let contacts = self.levels[i].table.rows()[k].contacts().to_vec();
                if let Some(a) = self.pick_contact(&contacts) {
                    partners.push((a, i));
                }
                continue;
            }
            // No sibling known at this level: ask a representative of this
            // zone, or a seed, and exchange every table we may share.
            let contacts = if i > 0 {
                self.levels[i - 1]
                    .table
                    .get(self.zones[i].name())
                    .map(|r| r.contacts().to_vec())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            if let Some(a) = self.pick_contact(&contacts).or_else(|| self.pick_seed()) {
                partners.push((a, leaf_level));
            }
        }
        if self.cfg.seed_probe > 0.0
            && !self.cfg.seeds.is_empty()
            && self.rng.random_bool(self.cfg.seed_probe.min(1.0))
            && let Some(s) = self.pick_seed()
        {
            partners.push((s, leaf_level));
        }
        // One exchange per partner, covering the deepest table asked for it.
        partners.sort();
        let mut merged: Vec<(Arc<str>, usize)> = Vec::with_capacity(partners.len());
        for (a, d) in partners {
            match merged.last_mut() {
                Some((b, e)) if *b == a => *e = (*e).max(d),
                _ => merged.push((a, d)),
            }
        }
        for (to, depth) in merged {
            let digest = self.digest(depth);
            self.stats.syns_sent += 1;
            self.send(
                to,
                Message::Syn {
                    sender: self.cfg.leaf.clone(),
                    depth: depth as u8,
                    digest,
                },
            );
        }
    }

    fn pick_contact(&mut self, contacts: &[Arc<str>]) -> Option<Arc<str>> {
        let others: Vec<&Arc<str>> = contacts.iter().filter(|c| **c != self.cfg.addr).collect();
        if others.is_empty() {
            return None;
        }
        Some(others[self.rng.random_range(0..others.len())].clone())
    }

    fn pick_seed(&mut self) -> Option<Arc<str>> {
        let seeds: Vec<Arc<str>> = self
            .cfg
            .seeds
            .iter()
            .filter(|s| **s != self.cfg.addr)
            .cloned()
            .collect();
        if seeds.is_empty() {
            return None;
        }
        Some(seeds[self.rng.random_range(0..seeds.len())].clone())
    }

    fn digest(&self, depth: usize) -> Vec<DigestEntry> {
        let mut out = Vec::new();
        for (t, level) in self.levels.iter().enumerate().take(depth + 1) {
            for r in level.table.rows() {
                out.push(DigestEntry {
                    depth: t as u8,
                    name: r.name_arc().clone(),
                    issued: r.issued,
                    issuer_hash: r.issuer_hash(),
                });
            }
        }
        out
    }

    /// The deepest table shared with the agent at `sender`, or None if the two clash.
    fn shared_depth(&mut self, sender: &ZonePath, asked: usize) -> Option<usize> {
        if *sender == self.cfg.leaf
            || sender.contains(&self.cfg.leaf)
            || self.cfg.leaf.contains(sender)
        {
            self.reject("gossip from a clashing zone");
            return None;
        }
        let common = sender.common_depth(&self.cfg.leaf);
        Some(common.min(asked).min(self.levels.len() - 1))
    }

    fn on_syn(
        &mut self,
        now: Micros,
        from: &Arc<str>,
        sender: ZonePath,
        asked: u8,
        digest: Vec<DigestEntry>,
    ) {
        let Some(max_t) = self.shared_depth(&sender, asked as usize) else {
            return;
        };
        // Digests list entries by table, then child name, as tables hold them;
        // a peer that sends them otherwise gets them sorted here.
        let mut digest = digest;
        let in_order = |a: &DigestEntry, b: &DigestEntry| {
            a.depth < b.depth
                || (a.depth == b.depth && crate::table::cmp_names(&a.name, &b.name).is_le())
        };
        if !digest.is_sorted_by(in_order) {
            digest.sort_by(|a, b| (a.depth, &a.name).cmp(&(b.depth, &b.name)));
        }
        // Rows they lack (priority 0) or hold older (priority 1), upper tables
        // first; and the rows we want from them.
        let mut offer: Vec<(u8, usize, Arc<Row>)> = Vec::new();
        let mut wanted = Vec::new();
        let leaf_level = self.levels.len() - 1;
        let sender_table = sender.depth() - 1;
        let mut k = 0;
        for t in 0..=max_t {
            while k < digest.len() && (digest[k].depth as usize) < t {
                k += 1;
            }
            let begin = k;
            while k < digest.len() && digest[k].depth as usize == t {
                k += 1;
            }
            let theirs = &digest[begin..k];
            let fail = self.fail_timeout(t);
            let rows = self.levels[t].table.rows();
            let (mut a, mut b) = (0, 0);
            while a < rows.len() || b < theirs.len() {
                // Step through both name-sorted lists together.
                let (mine, their) = match (rows.get(a), theirs.get(b)) {
                    (Some(r), Some(e)) => match crate::table::cmp_names(r.name(), &e.name) {
                        std::cmp::Ordering::Less => (Some(r), None),
                        std::cmp::Ordering::Greater => (None, Some(e)),
                        std::cmp::Ordering::Equal => (Some(r), Some(e)),
                    },
                    either => either,
                };
                if mine.is_some() {
                    a += 1;
                }
                if their.is_some() {
                    b += 1;
                }
                match (mine, their) {
                    (Some(r), None) if t != sender_table || r.zone != sender => {
                        offer.push((0, t, r.clone()))
                    }
                    (Some(r), Some(e))
                        if e.version() < r.version() && (t != sender_table || r.zone != sender) =>
                    {
                        offer.push((1, t, r.clone()))
                    }
                    (m, Some(e)) => {
                        let newer = m.is_none_or(|r| r.version() < e.version());
                        let own = t == leaf_level && *e.name == *self.cfg.leaf.name();
                        let fresh = now.saturating_sub(e.issued) <= fail;
                        if newer && !own && fresh {
                            wanted.push(Wanted {
                                depth: e.depth,
                                name: e.name.clone(),
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        offer.sort_by_key(|(p, t, _)| (*p, *t));
        let rows = self.fill(offer.into_iter().map(|(_, _, r)| r));
        self.send(
            from.clone(),
            Message::SynAck {
                sender: self.cfg.leaf.clone(),
                rows,
                wanted,
            },
        );
    }

    fn on_synack(
        &mut self,
        now: Micros,
        from: &Arc<str>,
        sender: ZonePath,
        rows: Vec<Arc<Row>>,
        wanted: Vec<Wanted>,
    ) {
        for r in rows {
            self.accept(now, r);
        }
        let Some(max_t) = self.shared_depth(&sender, self.levels.len()) else {
            return;
        };
        let give: Vec<Arc<Row>> = wanted
            .iter()
            .filter(|w| (w.depth as usize) <= max_t)
            .filter_map(|w| self.levels[w.depth as usize].table.get(&w.name).cloned())
            .collect();
        let rows = self.fill(give.into_iter());
        if !rows.is_empty() {
            self.send(from.clone(), Message::Ack { rows });
        }
    }

    /// Takes rows in order until the message budget is spent.
    fn fill(&self, rows: impl Iterator<Item = Arc<Row>>) -> Vec<Arc<Row>> {
        let mut room = self.cfg.max_message.saturating_sub(512);
        let mut out = Vec::new();
        for r in rows {
            let len = r.encoded_len();
            if len > room {
                continue;
            }
            room -= len;
            out.push(r);
        }
        out
    }

    // ----- push ----------------------------------------------------------

    fn on_push(&mut self, now: Micros, target: ZonePath, rows: Vec<Arc<Row>>) {
        if !target.contains(&self.cfg.leaf) || target.depth() == 0 {
            self.reject("push for a zone this agent is not in");
            return;
        }
        let mut forward = Vec::new();
        for r in rows {
            let t = r.depth().saturating_sub(1);
            match self.accept(now, r.clone()) {
                Accept::Accepted { .. } if t < target.depth() => forward.push((t, r)),
                Accept::Same if t < target.depth() => {
                    // With security on, a row of the held version was not
                    // verified: pass on the held copy, which was.
                    let r = match &self.security {
                        Some(_) => self.levels[t].table.get(r.name()).cloned().unwrap_or(r),
                        None => r,
                    };
                    forward.push((t, r))
                }
                _ => {}
            }
        }
        if !forward.is_empty() && self.cfg.push {
            self.push_from(target.depth(), forward);
        }
    }

    /// Sends freshly issued rows to every agent below the tables they belong to.
    fn push_down(&mut self, rows: Vec<(usize, Arc<Row>)>) {
        let from = rows.iter().map(|(t, _)| *t).min().unwrap_or(0);
        self.push_from(from, rows);
    }

    /// For each level from `from` down to the leaf zone, sends to one contact of
    /// every sibling zone the rows that its agents must see.
    fn push_from(&mut self, from: usize, rows: Vec<(usize, Arc<Row>)>) {
        for j in from..self.levels.len() {
            let mine = self.zones[j + 1].name();
            let batch: Vec<Arc<Row>> = rows
                .iter()
                .filter(|(t, _)| *t <= j)
                .map(|(_, r)| r.clone())
                .collect();
            if batch.is_empty() {
                continue;
            }
            let targets: Vec<(ZonePath, Vec<Arc<str>>)> = self.levels[j]
                .table
                .rows()
                .iter()
                .filter(|g| g.name() != mine)
                .map(|g| (g.zone.clone(), g.contacts().to_vec()))
                .collect();
            for (zone, contacts) in targets {
                let Some(to) = self.pick_contact(&contacts) else {
                    continue;
                };
                let msg = Message::Push {
                    target: zone,
                    rows: batch.clone(),
                };
                let len = msg.encoded_len();
                if self.push_spent + len > self.cfg.push_budget {
                    self.stats.push_suppressed += 1;
                    continue;
                }
                self.push_spent += len;
                self.stats.push_msgs_sent += 1;
                self.stats.push_bytes_sent += len as u64;
                self.send(to, msg);
            }
        }
    }

    fn send(&mut self, to: Arc<str>, msg: Message) {
        self.stats.msgs_sent += 1;
        self.stats.bytes_sent += msg.encoded_len() as u64;
        self.outbox.push_back(Transmit { to, msg });
    }

    /// Inserts a row as if received (used to start the simulator from a settled state).
    pub fn seed_row(&mut self, now: Micros, row: Arc<Row>) {
        self.accept(now, row);
    }

    /// Re-aggregates now (used to start the simulator from a settled state).
    pub fn settle(&mut self, now: Micros) {
        self.flush(now);
        self.outbox.clear();
    }

    /// The row this agent holds for `zone` in its parent's table.
    pub fn row_of(&self, zone: &ZonePath) -> Option<&Arc<Row>> {
        let d = zone.depth();
        if d == 0 || d > self.levels.len() {
            return None;
        }
        self.levels[d - 1]
            .table
            .get(zone.name())
            .filter(|r| r.zone == *zone)
    }

    /// AFCs in this agent's store, with their state.
    pub fn afc_list(&self) -> Vec<&StoredAfc> {
        self.afcs.iter().collect()
    }
}

/// The system AFC: standard attributes every zone row has.
pub fn system_afc(reps: usize) -> String {
    format!(
        "SELECT SUM(nmembers) AS nmembers, FIRST({reps}, contacts) AS contacts, FIRST({reps}, servers) AS servers"
    )
}

fn check_attr_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.as_bytes()[0].is_ascii_digit()
    {
        return Err(format!(
            "attribute name {name:?} is not allowed: use letters, digits and '_', not starting with a digit, at most 64 bytes"
        ));
    }
    if RESERVED.contains(&name) {
        return Err(format!("attribute {name} is reserved: the agent sets it"));
    }
    Ok(())
}
