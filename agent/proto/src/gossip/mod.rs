//! The gossip core of one agent: a deterministic state machine.
//!
//! No I/O here. The driver (the tokio runtime or the simulator) feeds it
//! messages and the time, and drains the messages it wants sent
//! ([`Agent::poll_transmit`]), its events ([`Agent::poll_event`]) and the
//! next time it wants to be woken ([`Agent::poll_timeout`]).
//!
//! One struct, its concerns in their own files:
//! - [`round`]: the periodic tick, expiry, and the flush that issues own rows;
//! - [`aggregate`]: zone rows evaluated from child tables by the AFCs;
//! - [`admit`]: the checks a received row passes before it enters a table;
//! - [`exchange`]: partner choice and the push-pull exchange;
//! - [`push`]: own rows sent eagerly down the tree;
//! - [`inputs`]: sensors, attributes, keys, client AFCs and restored state.

mod admit;
mod aggregate;
mod exchange;
mod inputs;
mod push;
mod round;

pub use aggregate::{ServiceAggregationError, system_afc};

use crate::afc::{AfcCert, AfcState, AfcStore, ScopeFull};
use crate::config::Config;
use crate::limits::{self, LimitError, MAX_AFCS_PER_ROW, MAX_ATTRS_BYTES, MAX_ROW_AFC_BYTES};
use crate::message::{AfcError, DigestEntry, Message, Wanted, validate_afc, validate_row};
use crate::path::ZonePath;
use crate::refusal::Refusal;
use crate::row::{Micros, Row, stable_hash};
use crate::security::{Reject, Security};
use crate::table::{Offer, ZoneTable};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use zone_sql::{Attrs, Program, Value};

/// A gossip message the agent wants sent.
pub type Transmit = crate::host::Transmit<Message>;

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
    pub msgs_received: u64,
    pub rows_accepted: u64,
    pub evaluations: u64,
    /// Evaluations in which an AFC was faulty (its output left out).
    pub afc_faults: u64,
    /// Zone rows not issued because another representative's fresh row
    /// comes first, or was computed from newer inputs.
    pub deferrals: u64,
    /// Rows learnt by gossip whose push this agent carried on.
    pub push_carried: u64,
    /// Refused input, by reason.
    pub rejected: BTreeMap<Refusal, u64>,
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
    /// This agent, not a representative of the zone below, stood in for
    /// them in this round's exchange at this level (see [`STAND_IN`]).
    stood_in: bool,
}

/// Room kept in every message for its envelope and fixed fields.
const MESSAGE_OVERHEAD: usize = 512;

/// Most hints and lost contacts kept per level.
const MAX_HINTS: usize = 8;
const MAX_LOST: usize = 32;
/// Chance per round of probing one lost contact at a level.
const LOST_PROBE: f64 = 0.125;
/// Exchanges per round, on average over a zone, that the members of the
/// zone who are not its representatives start one level up, in their
/// representatives' stead. A zone whose representatives all fail at once
/// is otherwise cut off from the rest of the tree until their rows time
/// out and new ones are picked (a failure timeout, 18 to 20 rounds): with
/// stand-ins it hears of the rest within a few rounds, at the cost of
/// about two exchanges per zone per round.
const STAND_IN: f64 = 2.0;

/// The protocol core of one agent.
pub struct Agent {
    cfg: Config,
    zones: Vec<ZonePath>,
    system: Program,
    /// The built-in aggregations of the services beside this core, each
    /// with the prefix its outputs lie under; every zone evaluates them
    /// after the system AFC and before the installed AFCs.
    service_programs: Vec<(&'static str, Program)>,
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
                stood_in: false,
            })
            .collect();
        let system = Program::compile(&system_afc(cfg.reps)).expect("the system AFC is valid");
        let mut rng = SmallRng::seed_from_u64(cfg.rng_seed);
        let phase = rng.random_range(0..cfg.round.max(1));
        Agent {
            zones,
            system,
            service_programs: Vec::new(),
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
    pub fn reject(&mut self, reason: Refusal) {
        *self.stats.rejected.entry(reason).or_default() += 1;
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
