//! The agent's protocol core: a deterministic state machine.
//!
//! No I/O here. The driver (the tokio runtime or the simulator) feeds it
//! messages and the time, and drains the messages it wants sent
//! ([`Agent::poll_transmit`]), its events ([`Agent::poll_event`]) and the
//! next time it wants to be woken ([`Agent::poll_timeout`]).

use crate::afc::{AfcCert, AfcState, AfcStore, ScopeFull};
use crate::config::Config;
use crate::limits::{self, LimitError, MAX_AFCS_PER_ROW, MAX_ATTRS_BYTES, MAX_ROW_AFC_BYTES};
use crate::message::{AfcError, DigestEntry, Message, Wanted, validate_afc, validate_row};
use crate::path::ZonePath;
use crate::row::{Micros, Row, stable_hash};
use crate::security::{Reject, Security};
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
    /// Evaluations in which an AFC was faulty (its output left out).
    pub afc_faults: u64,
    /// Zone rows not issued because another representative's fresh row
    /// comes first, or was computed from newer inputs.
    pub deferrals: u64,
    /// Rows learnt by gossip whose push this agent carried on.
    pub push_carried: u64,
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
    /// Keys or rights refused it.
    #[error("AFC refused: {0}")]
    Refused(#[from] Reject),
    /// Its fields break a bound.
    #[error("AFC rejected: {0}")]
    Invalid(#[from] AfcError),
    /// Its name or SQL is not a valid AFC.
    #[error("AFC rejected: {0}")]
    BadAfc(String),
    /// Its scope has no room for another AFC.
    #[error("AFC rejected: {0}")]
    ScopeFull(#[from] ScopeFull),
    #[error("no AFC named {name} in {scope}")]
    NotFound { scope: ZonePath, name: String },
}

impl InstallError {
    /// The security refusal's metric label, when keys or rights refused the
    /// AFC (rather than its content).
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            InstallError::Refused(r) => Some(r.reason()),
            _ => None,
        }
    }
}

/// An AFC that could not contribute to one zone's row, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct AfcFault {
    pub zone: ZonePath,
    pub scope: ZonePath,
    pub name: Arc<str>,
    pub reason: String,
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
    /// AFCs whose output was left out of the last evaluation, and why.
    faults: Vec<AfcFault>,
    /// When this agent last pushed its own row of this table, and whether
    /// a newer one waits for the next slot (see [`Agent::paced`]).
    last_push: Micros,
    push_owed: bool,
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
                faults: Vec::new(),
                last_push: 0,
                push_owed: false,
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
            afcs: AfcStore::new(cfg.tombstone_keep),
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
    /// Readings that would not travel (a reserved or malformed name, a value
    /// out of bounds) are left out and counted.
    pub fn set_sensors(&mut self, mut sensors: Attrs) {
        let bad: Vec<_> = sensors
            .iter()
            .filter(|(n, v)| {
                limits::check_name(n).is_err()
                    || limits::is_reserved(n)
                    || limits::check_value(n, v).is_err()
            })
            .map(|(n, _)| n.clone())
            .collect();
        for n in bad {
            sensors.remove(&n);
            self.reject("invalid_sensor");
        }
        if sensors != self.sensors {
            self.sensors = sensors;
            self.mark_leaf_dirty();
        }
    }

    /// Sets an application attribute on the leaf row, unless the row would
    /// then break a limit its receivers apply ([`limits::check_attrs`]).
    pub fn set_attr(&mut self, now: Micros, name: &str, value: Value) -> Result<(), LimitError> {
        limits::check_name(name)?;
        if limits::is_reserved(name) {
            return Err(LimitError::Reserved(name.to_string()));
        }
        limits::check_value(name, &value)?;
        let mut local = self.local.clone();
        local.set(name, value);
        limits::check_attrs(&self.leaf_attrs(&local))?;
        self.local = local;
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
        validate_afc(&cert)?;
        if let Some(sec) = &self.security {
            sec.verify_new_afc(&cert, now)?;
        }
        let (state, _) = crate::afc::compile(&cert);
        if let AfcState::Rejected(why) = state {
            return Err(InstallError::BadAfc(why));
        }
        self.afcs.room_for(&cert, now)?;
        self.afcs.offer(Arc::new(cert), now);
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
            return Err(InstallError::Refused(Reject::Unsigned(
                "with security on, a removal is a tombstone signed by a client or authority; install the signed tombstone",
            )));
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
        self.afcs.offer(
            Arc::new(AfcCert::tombstone(scope.clone(), name, issued)),
            now,
        );
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
        let changed = self.afcs.offer(cert, now);
        if changed {
            self.afcs_changed(now);
        }
        changed
    }

    /// Restores durable state after a restart: AFCs and application
    /// attributes. Turn security on first: AFCs that
    /// do not verify (as at their issue time) are dropped and counted, and
    /// so are attributes that no longer pass the row limits.
    pub fn restore(&mut self, afcs: impl IntoIterator<Item = Arc<AfcCert>>, local: Attrs) {
        for a in afcs {
            if validate_afc(&a).is_err() {
                self.reject("invalid_saved_afc");
                continue;
            }
            if let Some(sec) = &self.security
                && let Err(r) = sec.verify_afc(&a, a.issued)
            {
                self.reject(r.reason());
                continue;
            }
            self.afcs.offer(a, 0);
        }
        let mut kept = Attrs::new();
        for (n, v) in local.iter() {
            let mut next = kept.clone();
            next.set(n.clone(), v.clone());
            let ok = limits::check_name(n).is_ok()
                && !limits::is_reserved(n)
                && limits::check_attrs(&self.leaf_attrs(&next)).is_ok();
            if ok {
                kept = next;
            } else {
                self.reject("invalid_saved_attr");
            }
        }
        self.local = kept;
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
            Message::Ack { sender, rows } => {
                if self.shared_depth(&sender, self.levels.len()).is_some() {
                    self.accept_gossip(now, &sender, rows);
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
        self.afcs.expire(now);
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
            let (attrs, afcs) = self.leaf_content(now);
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
                let row = Row::new(leaf.clone(), leaf, issued, attrs, afcs);
                if let Some(row) = self.issue(leaf_level, row) {
                    self.levels[leaf_level].table.offer(row.clone(), usize::MAX);
                    if content_changed {
                        originated.push((leaf_level, row));
                    }
                }
            }
        }
        for i in (0..self.levels.len()).rev() {
            self.evaluate(now, i);
            if i == 0 || !self.levels[i].is_rep {
                continue;
            }
            let carried = self.carried_afcs(now, i - 1);
            let content = crate::row::content_hash(&self.levels[i].computed, &carried);
            let (content_changed, due) =
                self.issue_needed(now, i - 1, self.zones[i].name(), content);
            if !(content_changed || due) {
                continue;
            }
            let Some(issued) = self.zone_issue_time(now, i) else {
                self.stats.deferrals += 1;
                continue;
            };
            let row = Row::new(
                self.zones[i].clone(),
                self.cfg.leaf.clone(),
                issued,
                self.with_input_times(i),
                carried,
            )
            .with_inputs(self.inputs_of(i));
            if let Some(row) = self.issue(i - 1, row) {
                self.levels[i - 1].table.offer(row.clone(), usize::MAX);
                if content_changed && self.levels[i].is_primary {
                    originated.push((i - 1, row));
                }
            }
        }
        if self.cfg.push {
            let originated = self.paced(now, originated);
            if !originated.is_empty() {
                self.push_down(originated);
            }
        }
    }

    /// Paces the push of this agent's own rows: at most one version of each
    /// per round. A row that changes again within the round (a busy zone
    /// under churn changes with every child) waits, and the newest version
    /// goes at the next slot; without pacing, push traffic would grow with
    /// the rate of change below a zone, which grows with its size.
    fn paced(&mut self, now: Micros, originated: Vec<(usize, Arc<Row>)>) -> Vec<(usize, Arc<Row>)> {
        let gap = self.cfg.round;
        for (t, _) in &originated {
            self.levels[*t].push_owed = true;
        }
        let mut out = Vec::new();
        let mut next: Option<Micros> = None;
        for t in 0..self.levels.len() {
            let level = &self.levels[t];
            if !level.push_owed {
                continue;
            }
            let due = level.last_push.saturating_add(gap);
            if now < due && level.last_push > 0 {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let name = self.zones[t + 1].name();
            let own = level
                .table
                .get(name)
                .filter(|r| r.issuer == self.cfg.leaf)
                .cloned();
            let level = &mut self.levels[t];
            level.push_owed = false;
            if let Some(row) = own {
                level.last_push = now;
                out.push((t, row));
            }
        }
        if let Some(due) = next {
            self.flush_at = Some(self.flush_at.map_or(due, |f| f.min(due)));
        }
        out
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

    /// Signs a row this agent issues (when security is on) and checks it
    /// as its receivers will ([`validate_row`]): a row they would refuse is
    /// not issued, and counted, rather than silently dropped downstream.
    fn issue(&mut self, t: usize, mut row: Row) -> Option<Arc<Row>> {
        if let Some(sec) = &self.security {
            sec.sign_row(&mut row);
        }
        if let Err(e) = validate_row(&row) {
            tracing::warn!(zone = %row.zone, table = t, error = %e, "row not issued: it breaks a row limit");
            self.reject("row_not_issued");
            return None;
        }
        Some(Arc::new(row))
    }

    /// The issue time of a new row for zone `i` (in table `i - 1`), or None
    /// when this representative must leave the row to the one that holds
    /// it. A fresh row of a representative that comes first in the zone's
    /// order (the first contact) is left alone, so two representatives with
    /// different views never alternate; and a row computed from newer
    /// inputs than ours is never replaced by ours, so a zone row never rolls
    /// back. The new row's time passes the held one, whatever the clocks.
    fn zone_issue_time(&mut self, now: Micros, i: usize) -> Option<Micros> {
        let mut issued = now.max(self.last_issued);
        if let Some(h) = self.levels[i - 1].table.get(self.zones[i].name())
            && h.issuer != self.cfg.leaf
        {
            let age = now.saturating_sub(h.issued);
            let fail = self.fail_timeout(i - 1);
            if age < fail * 2 / 3 && precedes(&h.issuer, &self.cfg.leaf) {
                return None;
            }
            if age < fail * 2 / 3 && !self.holds_inputs(i, &h.inputs) {
                return None;
            }
            issued = issued.max(h.issued + 1);
        }
        self.last_issued = issued;
        Some(issued)
    }

    /// True when `row`, newer than the fresh zone row of another issuer
    /// held in table `t`, was computed from an older version of one of the
    /// inputs both list: taking it would roll that child's contribution
    /// back (a representative that was paused or cut off, issuing before
    /// it caught up). Inputs only one of them lists do not count: that is
    /// a difference of membership, which hints and gossip merge.
    fn rolls_back(&self, now: Micros, t: usize, row: &Row) -> bool {
        let Some(held) = self.levels[t].table.get(row.name()) else {
            return false;
        };
        let fail = self.fail_timeout(t);
        held.issuer != row.issuer
            && row.version() > held.version()
            && now.saturating_sub(held.issued) < fail * 2 / 3
            && older_somewhere(&row.inputs, &held.inputs)
    }

    /// Whether zone `i`'s table holds each of `inputs` it holds at all at
    /// the listed version or newer.
    fn holds_inputs(&self, i: usize, inputs: &[(Arc<str>, Micros)]) -> bool {
        let table = &self.levels[i].table;
        inputs
            .iter()
            .all(|(name, t)| table.get(name).is_none_or(|r| r.issued >= *t))
    }

    /// The versions of zone `i`'s inputs, for the row this agent issues.
    fn inputs_of(&self, i: usize) -> Vec<(Arc<str>, Micros)> {
        let rows = self.levels[i].table.rows();
        if rows.len() > crate::row::MAX_INPUTS {
            return Vec::new();
        }
        rows.iter()
            .map(|r| (r.name_arc().clone(), r.issued))
            .collect()
    }

    /// The attributes of this agent's leaf row with `local` as the
    /// application attributes: sensors, `local`, the standard attributes.
    fn leaf_attrs(&self, local: &Attrs) -> Attrs {
        let mut attrs = self.sensors.clone();
        for (n, v) in local.iter() {
            attrs.set(n.clone(), v.clone());
        }
        for (r, _) in limits::RESERVED {
            attrs.remove(r);
        }
        attrs.set("nmembers", 1i64);
        attrs.set("depth", self.cfg.leaf.depth() as i64);
        attrs.set("contacts", Value::list([self.cfg.addr.clone()]));
        if let Some(api) = &self.cfg.api_addr {
            attrs.set("servers", Value::list([api.clone()]));
        }
        attrs
    }

    /// What this agent's own leaf row says, and the AFCs it carries.
    fn leaf_content(&self, now: Micros) -> (Attrs, Vec<Arc<AfcCert>>) {
        (
            self.leaf_attrs(&self.local),
            self.carried_afcs(now, self.levels.len() - 1),
        )
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
        let mut faults: Vec<AfcFault> = Vec::new();
        let fault = |faults: &mut Vec<AfcFault>, e: &crate::afc::StoredAfc, reason: String| {
            faults.push(AfcFault {
                zone: zone.clone(),
                scope: e.cert.scope.clone(),
                name: e.cert.name.clone(),
                reason,
            })
        };
        let mut out = match self.system.eval(&frame, seed) {
            Ok(a) => a,
            Err(e) => {
                // Never every member a representative: fall back to the
                // first children's contacts, as the system AFC would pick.
                faults.push(AfcFault {
                    zone: zone.clone(),
                    scope: ZonePath::root(),
                    name: "system".into(),
                    reason: e.to_string(),
                });
                fallback_system(self.levels[i].table.rows(), self.cfg.reps)
            }
        };
        out.set("depth", i as i64);
        out.set("nchildren", nchildren);
        out.set("nreporting", nreporting);
        let mut budget = MAX_ATTRS_BYTES - limits::SYSTEM_ATTRS_BYTES;
        for afc in self.afcs.applicable(&zone) {
            let Some(program) = &afc.program else {
                continue;
            };
            let a = match program.eval(&frame, seed) {
                Ok(a) => a,
                Err(e) => {
                    fault(&mut faults, afc, e.to_string());
                    continue;
                }
            };
            if let Err(e) = limits::check_output(&a) {
                fault(&mut faults, afc, format!("output left out: {e}"));
                continue;
            }
            if let Some(n) = a.names().find(|n| out.get(n).is_some()) {
                fault(
                    &mut faults,
                    afc,
                    format!("output {n} already set by another AFC"),
                );
                continue;
            }
            let len = a.encoded_len();
            if len > budget {
                fault(
                    &mut faults,
                    afc,
                    format!(
                        "output left out: its {len} bytes do not fit the {budget} bytes left of the row's {MAX_ATTRS_BYTES}-byte attribute budget"
                    ),
                );
                continue;
            }
            budget -= len;
            for (n, v) in a.iter() {
                out.set(n.clone(), v.clone());
            }
        }
        if !faults.is_empty() {
            self.stats.afc_faults += 1;
            let errors: Vec<String> = faults
                .iter()
                .take(4)
                .map(|f| truncate(format!("{}: {}", f.name, f.reason), 160))
                .collect();
            out.set("afc_errors", Value::list(errors));
        }
        let hash = crate::row::content_hash(&out, &[]);
        let (is_rep, is_primary) = match out.get("contacts") {
            Some(Value::List(l)) => (
                l.contains(&self.cfg.addr),
                l.first().is_some_and(|a| *a == self.cfg.addr),
            ),
            _ => (false, false),
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
        level.faults = faults;
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

    /// Zone `i`'s row as issued: the evaluation, and the issue time of its
    /// oldest input (how fresh it is).
    fn with_input_times(&self, i: usize) -> Attrs {
        let mut attrs = self.levels[i].computed.clone();
        if let Some(oldest) = self.levels[i].table.oldest_issued() {
            attrs.set("oldest_input", Value::Time(oldest as i64));
        }
        attrs
    }

    /// AFCs that rows of table `t` carry: those installed at that zone, and
    /// those installed above it that its own table does not show yet (the
    /// nearest scopes first), within the row's AFC budget.
    fn carried_afcs(&self, now: Micros, t: usize) -> Vec<Arc<AfcCert>> {
        let zone = &self.zones[t];
        let mut own: Vec<Arc<AfcCert>> = Vec::new();
        let mut upward: Vec<Arc<AfcCert>> = Vec::new();
        for e in self.afcs.iter().filter(|e| self.afcs.carried(e, now)) {
            let scope = &e.cert.scope;
            if scope == zone {
                own.push(e.cert.clone());
                continue;
            }
            let d = scope.depth();
            if d < t && self.zones[d] == *scope && !self.visible_in(d, &e.cert) {
                upward.push(e.cert.clone());
            }
        }
        upward.sort_by_key(|a| std::cmp::Reverse(a.scope.depth()));
        let mut room = MAX_ROW_AFC_BYTES;
        let mut out = Vec::with_capacity(own.len() + upward.len());
        for a in own.into_iter().chain(upward) {
            let len = a.encoded_len();
            if len > room || out.len() == MAX_AFCS_PER_ROW {
                continue;
            }
            room -= len;
            out.push(a);
        }
        out
    }

    /// AFCs that could not contribute to zone rows at the last evaluation.
    pub fn afc_faults(&self) -> impl Iterator<Item = &AfcFault> {
        self.levels.iter().flat_map(|l| l.faults.iter())
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
        if self.rolls_back(now, t, &row) {
            tracing::debug!(zone = %row.zone, issuer = %row.issuer, inputs = ?row.inputs, held = ?self.levels[t].table.get(row.name()).map(|h| (&h.issuer, &h.inputs)), "zone row from older inputs refused");
            self.reject("zone_row_from_older_inputs");
            return Accept::Stale;
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
                    self.reject(r.reason());
                    continue;
                }
                if self.afcs.offer(a.clone(), now) {
                    changed = true;
                } else if self.afcs.revive(a, now) {
                    // The row shows a version we removed: carry the removal again.
                    self.mark_leaf_dirty();
                } else if self.afcs.get(&a.scope, &a.name).is_none() {
                    self.reject("afc_scope_full");
                }
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

    /// The versions held in tables `0..=depth`, in table order, cut to the
    /// message budget: whole tables from `depth` (the one the exchange is
    /// for) upwards, then as much of the next as fits; the peer offers what
    /// the cut left out.
    fn digest(&self, depth: usize) -> Vec<DigestEntry> {
        let mut room = self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD);
        let mut tables: Vec<Vec<DigestEntry>> = Vec::new();
        'tables: for t in (0..=depth.min(self.levels.len() - 1)).rev() {
            let mut entries = Vec::new();
            for r in self.levels[t].table.rows() {
                let e = DigestEntry {
                    depth: t as u8,
                    name: r.name_arc().clone(),
                    issued: r.issued,
                    issuer_hash: r.issuer_hash(),
                };
                let len = e.encoded_len();
                if len > room {
                    tables.push(entries);
                    break 'tables;
                }
                room -= len;
                entries.push(e);
            }
            tables.push(entries);
        }
        tables.into_iter().rev().flatten().collect()
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
        // The wanted list first (it is small), then rows in what room is left.
        let mut room = self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD);
        wanted.retain(|w: &Wanted| {
            let len = w.encoded_len();
            let fits = len <= room;
            if fits {
                room -= len;
            }
            fits
        });
        let rows = fill(room, offer.into_iter().map(|(_, _, r)| r));
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
        let Some(max_t) = self.shared_depth(&sender, self.levels.len()) else {
            return;
        };
        self.accept_gossip(now, &sender, rows);
        let give: Vec<Arc<Row>> = wanted
            .iter()
            .filter(|w| (w.depth as usize) <= max_t)
            .filter_map(|w| self.levels[w.depth as usize].table.get(&w.name).cloned())
            .collect();
        let rows = fill(
            self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD),
            give.into_iter(),
        );
        if !rows.is_empty() {
            let sender = self.cfg.leaf.clone();
            self.send(from.clone(), Message::Ack { sender, rows });
        }
    }

    /// Accepts rows an exchange with the agent at `sender` brought, and
    /// carries the push on for those that are new and recent: the peer's
    /// side of the tree is the peer's to cover, so this agent pushes them
    /// into its own zone below the level the two share. Only
    /// representatives of that zone do this (they are the ones gossiping
    /// there), only for rows younger than [`Config::push_carry_rounds`], and
    /// within the push budget: a push lost on the way is repaired within a
    /// round, not after the many rounds gossip alone needs.
    fn accept_gossip(&mut self, now: Micros, sender: &ZonePath, rows: Vec<Arc<Row>>) {
        let below = sender.common_depth(&self.cfg.leaf) + 1;
        let carry = self.cfg.push && below < self.levels.len() && self.levels[below].is_rep;
        let mut forward = Vec::new();
        for r in rows {
            let t = r.depth().saturating_sub(1);
            let recent =
                now.saturating_sub(r.issued) <= self.cfg.push_carry_rounds * self.cfg.round;
            let accepted = matches!(
                self.accept(now, r.clone()),
                Accept::Accepted {
                    content_changed: true
                }
            );
            if carry && accepted && recent && t < below {
                forward.push((t, r));
            }
        }
        if !forward.is_empty() {
            self.stats.push_carried += forward.len() as u64;
            self.push_from(below, forward);
        }
    }

    // ----- push ----------------------------------------------------------

    fn on_push(&mut self, now: Micros, target: ZonePath, rows: Vec<Arc<Row>>) {
        if !target.contains(&self.cfg.leaf) || target.depth() == 0 {
            self.reject("push for a zone this agent is not in");
            return;
        }
        // Only rows new here go on: a replayed or duplicate push of a row
        // already held stops at this agent.
        let mut forward = Vec::new();
        for r in rows {
            let t = r.depth().saturating_sub(1);
            if let Accept::Accepted { .. } = self.accept(now, r.clone())
                && t < target.depth()
            {
                forward.push((t, r));
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
            let parts = split(
                self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD),
                &batch,
            );
            for (zone, contacts) in targets {
                let Some(to) = self.pick_contact(&contacts) else {
                    continue;
                };
                for rows in &parts {
                    let msg = Message::Push {
                        target: zone.clone(),
                        rows: rows.clone(),
                    };
                    let len = msg.encoded_len();
                    if self.push_spent + len > self.cfg.push_budget {
                        self.stats.push_suppressed += 1;
                        continue;
                    }
                    self.push_spent += len;
                    self.stats.push_msgs_sent += 1;
                    self.stats.push_bytes_sent += len as u64;
                    self.send(to.clone(), msg);
                }
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
}

/// Room kept in every message for its envelope and fixed fields.
const MESSAGE_OVERHEAD: usize = 512;

/// Takes rows in order while they fit in `room` bytes.
fn fill(mut room: usize, rows: impl Iterator<Item = Arc<Row>>) -> Vec<Arc<Row>> {
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

/// Splits rows into consecutive batches of at most `room` bytes each.
fn split(room: usize, rows: &[Arc<Row>]) -> Vec<Vec<Arc<Row>>> {
    let mut out: Vec<Vec<Arc<Row>>> = Vec::new();
    let mut left = 0;
    for r in rows {
        let len = r.encoded_len();
        if out.is_empty() || len > left {
            out.push(Vec::new());
            left = room;
        }
        left = left.saturating_sub(len);
        out.last_mut().expect("a batch").push(r.clone());
    }
    out
}

/// The system AFC: standard attributes every zone row has.
pub fn system_afc(reps: usize) -> String {
    format!(
        "SELECT SUM(nmembers) AS nmembers, FIRST({reps}, contacts) AS contacts, FIRST({reps}, servers) AS servers"
    )
}

/// The standard attributes from a table directly, for when the system AFC
/// fails: the members summed, the first children's contacts and servers.
fn fallback_system(rows: &[Arc<Row>], reps: usize) -> Attrs {
    let mut out = Attrs::new();
    let members: i64 = rows
        .iter()
        .filter_map(|r| match r.get("nmembers") {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        })
        .fold(0i64, |a, b| a.saturating_add(b))
        .min(limits::MAX_NMEMBERS);
    out.set("nmembers", members);
    for attr in ["contacts", "servers"] {
        let first: Vec<Arc<str>> = rows
            .iter()
            .filter_map(|r| match r.get(attr) {
                Some(Value::List(l)) => Some(l.iter().cloned()),
                _ => None,
            })
            .flatten()
            .take(reps)
            .collect();
        out.set(attr, Value::List(first.into()));
    }
    out
}

/// Whether `new` lists an older version than `old` of some child both
/// list. Both are sorted by name.
fn older_somewhere(new: &[(Arc<str>, Micros)], old: &[(Arc<str>, Micros)]) -> bool {
    old.iter().any(|(name, t)| {
        new.binary_search_by(|(n, _)| crate::table::cmp_names(n, name))
            .is_ok_and(|k| new[k].1 < *t)
    })
}

/// Cuts a message to at most `max` bytes, on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// True when leaf `a` comes before leaf `b` in the zone tree's order (by
/// child name at the first level where they differ): the order in which
/// the system AFC picks a zone's contacts, so the first contact comes first.
fn precedes(a: &ZonePath, b: &ZonePath) -> bool {
    for (x, y) in a.components().zip(b.components()) {
        match crate::table::cmp_names(x, y) {
            std::cmp::Ordering::Equal => continue,
            o => return o.is_lt(),
        }
    }
    a.depth() < b.depth()
}
