//! One member's state machine of one group: views, delivery in three
//! modes, and the view change with its flush.
//!
//! **Within a view** a group runs two DDS stacks, `fifo:frag:nak` and
//! `total:frag:nak` (the coordinator is `total`'s sequencer), each built
//! for that view alone: a view is a stack's lifetime, as in Ensemble, so
//! the layers never see a membership change. Members send each other
//! their progress (what they delivered) as heartbeats; an entry every
//! member reported is stable and leaves the log, and a safe message is
//! handed to the application once stable.
//!
//! **A view change** decides, once, the successor of view v: its members
//! and the cut of v every survivor delivers first. It is single-decree
//! Paxos among the members of v (Prepare, Promise, Accept, Accepted,
//! Decide), run by the lowest-ranked member nobody suspects:
//! - a member that promises stops delivering in v (it is frozen) and
//!   reports what it delivered and what of it is unstable;
//! - the proposer needs promises from a majority of v (primary partition
//!   only: a minority side never decides and says so), takes a value
//!   already accepted by a promiser if any (highest ballot), or else the
//!   promisers as the new members, with the union of their reports as the
//!   cut;
//! - once a majority accepted, every member of v is told; each delivers
//!   what it lacks up to the cut, in the streams' orders, and installs the
//!   new view; joiners get the replicated state from the new coordinator.
//!
//! So every message delivered in v by a member that survives into v+1 is
//! delivered in v by every such member (view synchrony), the total order
//! is one order, and no two successors of a view exist. A member's own
//! messages that were not delivered in v are sent again in v+1
//! (self-delivery). A member behind by more than one decision, excluded,
//! or cut off cannot catch up without a state it lacks: it joins again as
//! a new incarnation.

use super::log::Log;
use super::member::{Ballot, MemberId, View};
use super::window::Window;
use super::wire::{CrmMsg, Decision, Entry, FlushState, MAX_DATA, MAX_MEMBERS, Mode, Stream};
use crate::dds::codec::{Reader, Writer};
use crate::dds::layer::Dest;
use crate::dds::{OriginId, Params, Spec, Stack, StackConfig, StackEvent};
use crate::host::Transmit;
use crate::row::Micros;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

const MS: Micros = 1_000;

/// The timings and bounds of a group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Progress is sent at least this often (the heartbeat).
    pub heartbeat: Micros,
    /// A member not heard from for this long is suspected.
    pub suspect_after: Micros,
    /// Progress after deliveries waits at most this long (batched).
    pub progress_delay: Micros,
    /// A view change phase without the answers it needs starts again.
    pub phase_timeout: Micros,
    pub join_retry: Micros,
    /// Entries held unstable before sends are held back.
    pub max_unstable: usize,
    pub max_unstable_bytes: usize,
    /// Own messages (and their bytes) a member may have that some member
    /// does not hold yet: group-wide flow control (see `window`).
    pub window: usize,
    pub window_bytes: usize,
    /// A member that holds stability back past the bounds for this long
    /// is excluded.
    pub lag_grace: Micros,
    /// Sends queued while a view changes or the group is joined.
    pub max_pending: usize,
    /// A leave not answered within this is done alone.
    pub leave_timeout: Micros,
    pub params: Params,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        let params = Params {
            nak_delay: 2 * MS,
            nak_retry: 20 * MS,
            nak_retry_min: 2 * MS,
            ack_period: 20 * MS,
            beat_period: 20 * MS,
            order_delay: 0,
            nak_hold: 30_000 * MS,
            ..Params::default()
        };
        GroupConfig {
            heartbeat: 50 * MS,
            suspect_after: 500 * MS,
            progress_delay: MS,
            phase_timeout: 300 * MS,
            join_retry: 300 * MS,
            max_unstable: 8192,
            max_unstable_bytes: 16 * 1024 * 1024,
            window: 1024,
            window_bytes: 4 * 1024 * 1024,
            lag_grace: 2_000 * MS,
            max_pending: 8192,
            leave_timeout: 2_000 * MS,
            params,
        }
    }
}

/// A deterministic state machine the group replicates: every member
/// applies the same messages in the same order. A joiner starts from the
/// coordinator's snapshot at the cut.
pub trait Replica: Send {
    /// Applies a delivered message; the answer, if any, goes to whoever
    /// waits for it at the sending member.
    fn apply(&mut self, from: &MemberId, mode: Mode, data: &[u8]) -> Option<Vec<u8>>;
    fn snapshot(&self) -> Vec<u8>;
    /// Restores a snapshot from untrusted bytes.
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
    /// The replica as `Any`, for a runtime that feeds it more than the
    /// group's deliveries (an external machine's answers).
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// What a group tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    View {
        group: Arc<str>,
        view: View,
    },
    Deliver {
        group: Arc<str>,
        view: u64,
        from: MemberId,
        mode: Mode,
        /// The sender's number on the fifo stream; the view's on the total one.
        seq: u64,
        data: Arc<[u8]>,
        /// The replica's answer, when one runs here.
        reply: Option<Vec<u8>>,
    },
    /// A view change started: sends wait for the next view.
    Blocked {
        group: Arc<str>,
        view: u64,
    },
    /// No majority of the view is reachable: nothing is delivered until
    /// it is.
    Minority {
        group: Arc<str>,
        view: u64,
    },
    /// This member is out of the group's view; it joins again as
    /// `member`, a new incarnation.
    Rejoining {
        group: Arc<str>,
        member: MemberId,
        why: Rejoin,
    },
    Left {
        group: Arc<str>,
    },
}

impl GroupEvent {
    /// The group the event is about.
    pub fn group(&self) -> &Arc<str> {
        match self {
            GroupEvent::View { group, .. }
            | GroupEvent::Deliver { group, .. }
            | GroupEvent::Blocked { group, .. }
            | GroupEvent::Minority { group, .. }
            | GroupEvent::Rejoining { group, .. }
            | GroupEvent::Left { group } => group,
        }
    }
}

/// Why a member left its view to join again as a new incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejoin {
    /// A member of a later view said this one is not in it.
    Excluded,
    /// A stack lost messages this member cannot get back (cut off, or a
    /// stream that starts in the middle here).
    StreamLost,
    /// A decision about a later view came: the views between are gone.
    BehindByViews,
    /// The decided next view leaves this member out.
    LeftOut,
    /// The decided cut holds a gap this member cannot fill.
    CannotCatchUp,
    /// It was alone in a group another group of the same name outgrew.
    Merged,
}

impl Rejoin {
    pub fn label(self) -> &'static str {
        match self {
            Rejoin::Excluded => "excluded",
            Rejoin::StreamLost => "stream_lost",
            Rejoin::BehindByViews => "behind_by_views",
            Rejoin::LeftOut => "left_out",
            Rejoin::CannotCatchUp => "cannot_catch_up",
            Rejoin::Merged => "merged",
        }
    }
}

/// Why a send was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendRefused {
    #[error("message of {len} bytes; a group message takes at most {MAX_DATA}")]
    TooLarge { len: usize },
    #[error(
        "{held} messages are not yet held by every member (the bound is {max}); wait and retry"
    )]
    Full { held: usize, max: usize },
    #[error("this member has left the group")]
    Left,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Joining,
    Member,
    /// Member, but no majority of its view answers.
    Minority,
    Leaving,
    Left,
}

struct Streams {
    fifo: Stack,
    total: Stack,
}

impl Streams {
    fn build(group: &str, view: &View, me: &MemberId, params: &Params) -> Streams {
        let make = |stream: Stream, spec: &str| {
            let spec = Spec::parse(spec).expect("a valid built-in stack");
            let mut cfg = StackConfig::new(
                channel_id(group, view.id, stream),
                OriginId {
                    addr: me.addr.clone(),
                    inc: view.id,
                },
                view.coordinator().addr.clone(),
            );
            cfg.params = params.clone();
            cfg.rng_seed = me.inc ^ view.id;
            cfg.report_starts = true;
            Stack::build(&spec, &cfg)
        };
        Streams {
            fifo: make(Stream::Fifo, "fifo:frag:nak"),
            total: make(Stream::Total, "total:frag:nak"),
        }
    }

    fn get(&mut self, s: Stream) -> &mut Stack {
        match s {
            Stream::Fifo => &mut self.fifo,
            Stream::Total => &mut self.total,
        }
    }
}

/// The channel id a view's stream signs and seals under.
fn channel_id(group: &str, view: u64, stream: Stream) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group
        .bytes()
        .chain(view.to_le_bytes())
        .chain([stream as u8])
    {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// An own message sent and not yet delivered here: its number, mode and bytes.
type OwnMsg = (u64, Mode, Arc<[u8]>);

/// The promises a proposal holds: each promiser's accepted value and report.
type Promises = BTreeMap<MemberId, (Option<(Ballot, Decision)>, FlushState)>;

/// A view change this member runs.
struct Proposal {
    ballot: Ballot,
    promises: Promises,
    asked: BTreeSet<MemberId>,
    decision: Option<Decision>,
    accepted: BTreeSet<MemberId>,
    deadline: Micros,
    /// When the phase's message goes again to those that did not answer.
    resend_at: Micros,
}

/// Counters of one group at one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    pub delivered: u64,
    pub sent: u64,
    pub views: u64,
    pub proposals: u64,
    pub resent: u64,
    pub dropped_frozen: u64,
    pub refused: u64,
}

pub struct Group {
    name: Arc<str>,
    me: MemberId,
    cfg: GroupConfig,
    phase: Phase,
    view: View,
    streams: Option<Streams>,
    log: Log,
    /// Own messages sent in this view: per stream, the number of the last
    /// one, and those not delivered yet.
    own_sent: [u64; 2],
    own_unseen: [VecDeque<OwnMsg>; 2],
    /// Own messages of this view not yet held by every member.
    window: Window,
    heard: Vec<Micros>,
    suspects: BTreeSet<MemberId>,
    joins: BTreeSet<MemberId>,
    leaves: BTreeSet<MemberId>,
    promised: Option<Ballot>,
    accepted: Option<(Ballot, Decision)>,
    frozen: bool,
    /// When waiting for another proposer ends.
    promise_deadline: Micros,
    proposal: Option<Proposal>,
    last_decision: Option<Decision>,
    pending: VecDeque<(Mode, Arc<[u8]>)>,
    contacts: Vec<Arc<str>>,
    next_contact: usize,
    next_join: Micros,
    leave_deadline: Micros,
    replica: Option<Box<dyn Replica>>,
    next_beat: Micros,
    progress_due: Micros,
    lagging_since: Option<Micros>,
    minority_told: bool,
    /// While joining: the view the promise and acceptance are about.
    pending_view: u64,
    /// No proposal of this member's before this (after it was outbid or
    /// found no majority).
    retry_at: Micros,
    /// When each agent outside the view was last helped on.
    helped: BTreeMap<Arc<str>, Micros>,
    out: VecDeque<Transmit<CrmMsg>>,
    events: VecDeque<GroupEvent>,
    pub stats: GroupStats,
}

impl Group {
    fn blank(name: Arc<str>, me: MemberId, cfg: GroupConfig) -> Group {
        Group {
            view: View {
                id: 0,
                members: vec![me.clone()],
            },
            log: Log::new(1, 0),
            name,
            me,
            cfg,
            phase: Phase::Joining,
            streams: None,
            own_sent: [0; 2],
            own_unseen: [VecDeque::new(), VecDeque::new()],
            window: Window::default(),
            heard: vec![0],
            suspects: BTreeSet::new(),
            joins: BTreeSet::new(),
            leaves: BTreeSet::new(),
            promised: None,
            accepted: None,
            frozen: false,
            promise_deadline: 0,
            proposal: None,
            last_decision: None,
            pending: VecDeque::new(),
            contacts: Vec::new(),
            next_contact: 0,
            next_join: Micros::MAX,
            leave_deadline: Micros::MAX,
            replica: None,
            next_beat: 0,
            progress_due: Micros::MAX,
            lagging_since: None,
            minority_told: false,
            pending_view: 0,
            retry_at: 0,
            helped: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: GroupStats::default(),
        }
    }

    /// A new group whose first view holds this member alone.
    pub fn create(now: Micros, name: Arc<str>, me: MemberId, cfg: GroupConfig) -> Group {
        let mut g = Group::blank(name, me.clone(), cfg);
        g.install(
            now,
            View {
                id: 1,
                members: vec![me],
            },
        );
        g
    }

    /// Joins the group through the agents at `contacts` (members, or
    /// agents that know one), asking each in turn until a view holds this
    /// member.
    pub fn join(
        now: Micros,
        name: Arc<str>,
        me: MemberId,
        contacts: Vec<Arc<str>>,
        cfg: GroupConfig,
    ) -> Group {
        let mut g = Group::blank(name, me, cfg);
        g.contacts = contacts;
        g.next_join = now;
        g.handle_timeout(now);
        g
    }

    /// Runs `replica` beside the group: it applies every delivery, and a
    /// joiner's starts from the coordinator's snapshot.
    pub fn set_replica(&mut self, replica: Box<dyn Replica>) {
        self.replica = Some(replica);
    }

    pub fn take_replica(&mut self) -> Option<Box<dyn Replica>> {
        self.replica.take()
    }

    pub fn replica(&self) -> Option<&dyn Replica> {
        self.replica.as_deref()
    }

    /// The replica as its own type, when it is a `T` that offers itself.
    pub fn replica_as<T: 'static>(&mut self) -> Option<&mut T> {
        self.replica.as_mut()?.as_any_mut()?.downcast_mut::<T>()
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn me(&self) -> &MemberId {
        &self.me
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The installed view (id 0 while joining).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Whether a view change holds delivery (this member promised).
    pub fn is_blocked(&self) -> bool {
        self.frozen
    }

    /// The view change state, for diagnostics.
    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {:?} view {} frozen {} promised {:?} accepted {:?} proposal {:?} suspects {:?} joins {:?} pending {} unseen {:?}",
            self.me,
            self.phase,
            self.stats,
            self.view.id,
            self.frozen,
            self.promised.as_ref().map(|b| (b.n, b.by.to_string())),
            self.accepted.as_ref().map(|(b, d)| (b.n, d.view.id)),
            self.proposal.as_ref().map(|p| (
                p.ballot.n,
                p.promises.len(),
                p.decision.is_some(),
                p.accepted.len()
            )),
            self.suspects
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>(),
            self.joins.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            self.pending.len(),
            self.own_unseen.iter().map(|q| q.len()).collect::<Vec<_>>(),
        )
    }

    /// Entries held until every member has them.
    pub fn unstable(&self) -> usize {
        self.log.len()
    }

    /// Why a message of `len` bytes would be refused now, if it would.
    pub fn refusal(&self, len: usize) -> Option<SendRefused> {
        if len > MAX_DATA {
            return Some(SendRefused::TooLarge { len });
        }
        if matches!(self.phase, Phase::Left | Phase::Leaving) {
            return Some(SendRefused::Left);
        }
        let held = self.log.len() + self.pending.len();
        if held >= self.cfg.max_unstable || self.log.bytes() >= self.cfg.max_unstable_bytes {
            return Some(SendRefused::Full {
                held,
                max: self.cfg.max_unstable,
            });
        }
        if !self.window_room(self.pending.len()) {
            return Some(SendRefused::Full {
                held: self.window.len() + self.pending.len(),
                max: self.cfg.window,
            });
        }
        if self.pending.len() >= self.cfg.max_pending {
            return Some(SendRefused::Full {
                held: self.pending.len(),
                max: self.cfg.max_pending,
            });
        }
        None
    }

    /// Sends `data` to every member in `mode`. While a view changes (or
    /// the group is being joined) it waits and goes in the next view.
    pub fn send(&mut self, now: Micros, mode: Mode, data: Vec<u8>) -> Result<(), SendRefused> {
        if let Some(why) = self.refusal(data.len()) {
            return Err(why);
        }
        let data: Arc<[u8]> = data.into();
        if self.window_open() && self.pending.is_empty() {
            self.transmit(now, mode, data);
        } else {
            self.pending.push_back((mode, data));
        }
        self.pump(now);
        Ok(())
    }

    /// Leaves the group: the next view is installed without this member.
    pub fn leave(&mut self, now: Micros) {
        match self.phase {
            Phase::Left | Phase::Leaving => {}
            Phase::Joining => self.finish_leave(),
            Phase::Member | Phase::Minority if self.view.members.len() == 1 => self.finish_leave(),
            Phase::Member | Phase::Minority => {
                self.phase = Phase::Leaving;
                self.leave_deadline = now + self.cfg.leave_timeout;
                self.leaves.insert(self.me.clone());
                let to = self.acting_coordinator().addr.clone();
                if to != self.me.addr {
                    self.send_to(
                        &to,
                        CrmMsg::Leave {
                            group: self.name.clone(),
                            member: self.me.clone(),
                        },
                    );
                }
                self.maybe_propose(now);
            }
        }
    }

    /// A part of a longer message from `addr` came in (a flush report, a
    /// decision or a state being carried in chunks): the member is alive,
    /// and a phase that waits on it waits while its message arrives, so a
    /// view change with a long flush is not given up half-received.
    pub fn part_from(&mut self, now: Micros, addr: &str) {
        if !self.in_view() {
            return;
        }
        let Some(r) = self.view.rank_at(addr) else {
            return;
        };
        if let Some(h) = self.heard.get_mut(r) {
            *h = now;
        }
        let phase = self.cfg.phase_timeout;
        if let Some(p) = &mut self.proposal
            && p.asked.iter().any(|m| &*m.addr == addr)
        {
            p.deadline = p.deadline.max(now + phase);
            // Asking again would only send the long message again.
            p.resend_at = p.resend_at.max(now + phase / 5);
        }
        if self.promised.as_ref().is_some_and(|b| &*b.by.addr == addr) {
            self.promise_deadline = self.promise_deadline.max(now + 2 * phase);
        }
    }

    /// A hint from outside (the zone tree, a health check) that `addr`
    /// has failed.
    pub fn suspect(&mut self, now: Micros, addr: &str) {
        if let Some(r) = self.view.rank_at(addr) {
            let m = self.view.members[r].clone();
            if m != self.me {
                self.suspects.insert(m);
                self.maybe_propose(now);
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit<CrmMsg>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<GroupEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Micros {
        let mut t = self.next_join.min(self.leave_deadline);
        if self.in_view() {
            t = t.min(self.next_beat).min(self.progress_due);
        }
        if let Some(p) = &self.proposal {
            t = t.min(p.deadline).min(p.resend_at);
        }
        if self.in_view() && self.promised.is_some() && self.proposal.is_none() {
            t = t.min(self.promise_deadline);
        }
        if let Some(s) = &self.streams {
            t = t.min(s.fifo.poll_timeout()).min(s.total.poll_timeout());
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Micros) {
        if self.phase == Phase::Left {
            return;
        }
        if let Some(s) = &mut self.streams {
            s.fifo.handle_timeout(now);
            s.total.handle_timeout(now);
        }
        if self.phase == Phase::Joining && now >= self.next_join {
            self.next_join = now + self.cfg.join_retry;
            if !self.contacts.is_empty() {
                let to = self.contacts[self.next_contact % self.contacts.len()].clone();
                self.next_contact += 1;
                self.send_to(
                    &to,
                    CrmMsg::Join {
                        group: self.name.clone(),
                        member: self.me.clone(),
                    },
                );
            }
        }
        if self.phase == Phase::Leaving && now >= self.leave_deadline {
            self.finish_leave();
            return;
        }
        if self.in_view() {
            if now >= self.progress_due || now >= self.next_beat {
                self.send_progress(now);
            }
            self.detect(now);
            if let Some(p) = &self.proposal
                && now >= p.deadline
            {
                self.phase_expired(now);
            }
            if self.proposal.as_ref().is_some_and(|p| now >= p.resend_at) {
                self.resend_phase(now);
            }
            if self.proposal.is_none() && self.promised.is_some() && now >= self.promise_deadline {
                // The proposer went quiet: take over if it is our turn.
                self.promise_deadline = now + 2 * self.cfg.phase_timeout;
                if let Some(p) = &self.promised
                    && p.by != self.me
                {
                    self.suspects.insert(p.by.clone());
                }
                self.maybe_propose(now);
            }
            self.maybe_propose(now);
        }
        self.pump(now);
    }

    /// Handles a message from the agent at `from`.
    pub fn handle(&mut self, now: Micros, from: &str, msg: CrmMsg) {
        if self.phase == Phase::Left {
            return;
        }
        if self.phase == Phase::Joining {
            match msg {
                CrmMsg::Welcome { view, state, .. } => self.welcome(now, from, view, state),
                CrmMsg::Prepare { view, ballot, .. } if ballot.by.addr.as_ref() == from => {
                    self.joining_prepare(view, ballot)
                }
                CrmMsg::Accept {
                    view,
                    ballot,
                    decision,
                    ..
                } if ballot.by.addr.as_ref() == from => self.joining_accept(view, ballot, decision),
                _ => {}
            }
            return;
        }
        let sender = self.view.rank_at(from);
        if let Some(r) = sender {
            self.heard[r] = now;
        }
        match msg {
            CrmMsg::Frame {
                view,
                stream,
                origin,
                cast,
                bytes,
                ..
            } => {
                if view == self.view.id && sender.is_some() {
                    if let (Some(s), Some(o)) =
                        (&mut self.streams, self.view.members.get(origin as usize))
                    {
                        let origin = OriginId {
                            addr: o.addr.clone(),
                            inc: view,
                        };
                        s.get(stream)
                            .receive(now, from.into(), origin, cast, &bytes);
                    }
                } else {
                    self.stale(now, from, view);
                }
            }
            CrmMsg::Progress {
                view,
                rank,
                fifo,
                total,
                ..
            } => {
                if view == self.view.id && sender == Some(rank as usize) {
                    self.log.progress(rank as usize, &fifo, total);
                    self.window.settle(&self.log);
                    self.hand_total(now);
                } else {
                    self.stale(now, from, view);
                }
            }
            CrmMsg::Join { member, .. } => {
                if &*member.addr != from && sender.is_none() {
                    self.stats.refused += 1;
                } else if self.acting_coordinator() == &self.me {
                    self.joins.retain(|j| j.addr != member.addr);
                    let untouched = self.log.total_done == 0
                        && self.log.fifo_done.iter().all(|c| *c == 0)
                        && !self.frozen;
                    if self.view.contains(&member)
                        && self.view.coordinator() == &self.me
                        && untouched
                    {
                        // Its welcome was lost, and nothing was delivered
                        // since: the state is the one it would have got.
                        let state = self
                            .replica
                            .as_ref()
                            .map(|r| r.snapshot())
                            .unwrap_or_default();
                        let msg = CrmMsg::Welcome {
                            group: self.name.clone(),
                            view: self.view.clone(),
                            state,
                        };
                        self.send_to(&member.addr, msg);
                        return self.pump(now);
                    }
                    if let Some(r) = self.view.rank_at(&member.addr)
                        && self.view.members[r] != self.me
                    {
                        // A new incarnation (the old one is gone), or one
                        // in the view that never got its welcome: it
                        // comes in again as a joiner.
                        self.suspects.insert(self.view.members[r].clone());
                    }
                    self.joins.insert(member);
                    self.maybe_propose(now);
                } else {
                    let to = self.acting_coordinator().addr.clone();
                    self.send_to(
                        &to,
                        CrmMsg::Join {
                            group: self.name.clone(),
                            member,
                        },
                    );
                }
            }
            CrmMsg::Leave { member, .. } => {
                if &*member.addr == from && self.view.contains(&member) {
                    self.leaves.insert(member);
                    self.maybe_propose(now);
                }
            }
            CrmMsg::Prepare { view, ballot, .. } => {
                if sender.is_none() || ballot.by.addr.as_ref() != from {
                    return self.stale(now, from, view);
                }
                if view != self.view.id {
                    return self.stale(now, from, view);
                }
                self.on_prepare(now, ballot);
            }
            CrmMsg::Promise {
                view,
                ballot,
                member,
                accepted,
                flush,
                ..
            } => {
                if view == self.view.id && &*member.addr == from && self.view.contains(&member) {
                    self.on_promise(now, ballot, member, accepted, flush);
                }
            }
            CrmMsg::Refuse {
                view,
                ballot,
                promised,
                ..
            } => {
                if view == self.view.id
                    && sender.is_some()
                    && self.proposal.as_ref().is_some_and(|p| p.ballot == ballot)
                {
                    self.outbid(now, promised);
                }
            }
            CrmMsg::Accept {
                view,
                ballot,
                decision,
                ..
            } => {
                if view == self.view.id && sender.is_some() && ballot.by.addr.as_ref() == from {
                    self.on_accept(now, ballot, decision);
                }
            }
            CrmMsg::Accepted {
                view,
                ballot,
                member,
                ..
            } => {
                if view == self.view.id && &*member.addr == from && self.view.contains(&member) {
                    self.on_accepted(now, ballot, member);
                }
            }
            CrmMsg::Decide { decision, .. } => {
                if sender.is_some() {
                    self.on_decide(now, decision);
                }
            }
            CrmMsg::Excluded { view, .. } => {
                if view > self.view.id && sender.is_some() {
                    self.rejoin(now, Rejoin::Excluded);
                }
            }
            CrmMsg::Welcome { .. } | CrmMsg::Chunk { .. } => {}
        }
        self.pump(now);
    }

    /// A view change of a view this member was put in but never got its
    /// welcome for: it promises, holding nothing of the view (so it helps
    /// a majority form, and is left out and joins again).
    fn joining_prepare(&mut self, view: u64, ballot: Ballot) {
        if self.pending_view != view {
            self.pending_view = view;
            self.promised = None;
            self.accepted = None;
        }
        if let Some(p) = &self.promised
            && *p > ballot
        {
            let msg = CrmMsg::Refuse {
                group: self.name.clone(),
                view,
                ballot: ballot.clone(),
                promised: p.clone(),
            };
            return self.send_to(&ballot.by.addr, msg);
        }
        self.promised = Some(ballot.clone());
        let msg = CrmMsg::Promise {
            group: self.name.clone(),
            view,
            ballot: ballot.clone(),
            member: self.me.clone(),
            accepted: self.accepted.clone(),
            flush: FlushState::default(),
        };
        self.send_to(&ballot.by.addr, msg);
    }

    fn joining_accept(&mut self, view: u64, ballot: Ballot, decision: Decision) {
        if self.pending_view != view
            || decision.from != view
            || self.promised.as_ref().is_some_and(|p| *p > ballot)
        {
            return;
        }
        self.promised = Some(ballot.clone());
        self.accepted = Some((ballot.clone(), decision));
        let msg = CrmMsg::Accepted {
            group: self.name.clone(),
            view,
            ballot: ballot.clone(),
            member: self.me.clone(),
        };
        self.send_to(&ballot.by.addr, msg);
    }

    fn in_view(&self) -> bool {
        matches!(self.phase, Phase::Member | Phase::Minority | Phase::Leaving)
    }

    fn can_send(&self) -> bool {
        self.phase == Phase::Member && !self.frozen && self.streams.is_some()
    }

    /// Whether a message can go to the stacks now: the view takes sends
    /// and this member's window has room.
    fn window_open(&self) -> bool {
        self.can_send() && self.window_room(0)
    }

    /// Whether this member's window takes `queued` more messages.
    fn window_room(&self, queued: usize) -> bool {
        self.window
            .has_room(queued, self.cfg.window, self.cfg.window_bytes)
    }

    fn my_rank(&self) -> usize {
        self.view.rank_of(&self.me).expect("a member of its view")
    }

    /// The lowest-ranked member this one does not suspect.
    fn acting_coordinator(&self) -> &MemberId {
        self.view
            .members
            .iter()
            .find(|m| **m == self.me || !self.suspects.contains(m))
            .unwrap_or(&self.me)
    }

    fn send_to(&mut self, to: &Arc<str>, msg: CrmMsg) {
        self.out.push_back(Transmit {
            to: to.clone(),
            msg,
        });
    }

    fn send_to_others(&mut self, msg: CrmMsg) {
        let others: Vec<Arc<str>> = self
            .view
            .members
            .iter()
            .filter(|m| **m != self.me)
            .map(|m| m.addr.clone())
            .collect();
        for to in others {
            self.send_to(&to, msg.clone());
        }
    }

    /// A message about another view: help the sender on, or tell it it
    /// is out.
    fn stale(&mut self, now: Micros, from: &str, view: u64) {
        let from: Arc<str> = from.into();
        if view < self.view.id {
            let last = self.helped.get(&from).copied().unwrap_or(0);
            if last != 0 && now < last + self.cfg.heartbeat {
                return;
            }
            if self.helped.len() >= 4 * MAX_MEMBERS {
                self.helped.clear();
            }
            self.helped.insert(from.clone(), now);
            match &self.last_decision {
                Some(d) if d.from == view => {
                    let msg = CrmMsg::Decide {
                        group: self.name.clone(),
                        decision: d.clone(),
                    };
                    self.send_to(&from, msg);
                }
                _ => {
                    let msg = CrmMsg::Excluded {
                        group: self.name.clone(),
                        view: self.view.id,
                    };
                    self.send_to(&from, msg);
                }
            }
        }
    }

    /// Puts the application's message into its view stream.
    fn transmit(&mut self, now: Micros, mode: Mode, data: Arc<[u8]>) {
        let stream = mode.stream();
        let seq = self.own_sent[stream as usize] + 1;
        let mut w = Writer::with_capacity(data.len() + 12);
        w.u8(mode.tag()).varint(seq).raw(&data);
        let Some(s) = &mut self.streams else { return };
        match s.get(stream).send(now, w.finish()) {
            Ok(()) => {
                self.own_sent[stream as usize] = seq;
                self.window.sent(now, stream, data.len());
                self.own_unseen[stream as usize].push_back((seq, mode, data));
                self.stats.sent += 1;
            }
            Err(_) => {
                // The stack holds it back (its window): retry in order.
                self.pending.push_front((mode, data));
            }
        }
    }

    /// Moves what the stacks produced: frames out, deliveries up.
    fn pump(&mut self, now: Micros) {
        loop {
            let mut progressed = false;
            while self.window_open() {
                let Some((mode, data)) = self.pending.pop_front() else {
                    break;
                };
                let before = self.pending.len();
                self.transmit(now, mode, data);
                if self.pending.len() > before {
                    break;
                }
                progressed = true;
            }
            let Some(s) = &mut self.streams else { return };
            let mut frames = Vec::new();
            let mut delivered = Vec::new();
            let mut lost = false;
            for stream in [Stream::Fifo, Stream::Total] {
                let st = s.get(stream);
                while let Some(f) = st.poll_frame() {
                    frames.push((stream, f));
                }
                while let Some(d) = st.poll_delivery() {
                    delivered.push((stream, d));
                }
                while let Some(ev) = st.poll_event() {
                    match ev {
                        StackEvent::Lost { .. } => lost = true,
                        StackEvent::Started { from_start, .. } => lost |= !from_start,
                    }
                }
            }
            for (stream, f) in frames {
                progressed = true;
                let Some(origin) = self.view.rank_at(&f.origin.addr) else {
                    continue;
                };
                let msg = CrmMsg::Frame {
                    group: self.name.clone(),
                    view: self.view.id,
                    stream,
                    origin: origin as u32,
                    cast: f.dest == Dest::All,
                    bytes: f.bytes,
                };
                match f.dest {
                    Dest::All => self.send_to_others(msg),
                    Dest::Peer(to) => self.send_to(&to, msg),
                    Dest::Subtree => {}
                }
            }
            for (stream, d) in delivered {
                progressed = true;
                self.delivered(now, stream, &d.origin, &d.data);
            }
            if lost {
                // Cut off by an origin, or a stream that starts in the
                // middle here: this member cannot deliver what the others
                // deliver.
                self.rejoin(now, Rejoin::StreamLost);
                return;
            }
            if !progressed {
                return;
            }
        }
    }

    /// A message the view's stack delivered.
    fn delivered(&mut self, now: Micros, stream: Stream, origin: &OriginId, data: &[u8]) {
        if self.frozen || self.phase == Phase::Joining {
            self.stats.dropped_frozen += 1;
            return;
        }
        let Some(rank) = self.view.rank_at(&origin.addr) else {
            return;
        };
        let mut r = Reader::new(data);
        let (Ok(tag), Ok(seq)) = (r.u8(), r.varint()) else {
            self.stats.refused += 1;
            return;
        };
        let Ok(mode) = Mode::from_tag(tag) else {
            self.stats.refused += 1;
            return;
        };
        if mode.stream() != stream || seq == 0 {
            self.stats.refused += 1;
            return;
        }
        let idx = match stream {
            Stream::Fifo => self.log.fifo_done[rank] + 1,
            Stream::Total => self.log.total_done + 1,
        };
        if stream == Stream::Fifo && seq != idx {
            self.stats.refused += 1;
            return;
        }
        let e = Entry {
            stream,
            rank: rank as u32,
            idx,
            seq,
            mode,
            data: r.rest().into(),
        };
        self.record(now, e);
    }

    /// Records a delivered entry and hands what is due to the application.
    fn record(&mut self, now: Micros, e: Entry) {
        let stream = e.stream;
        let own = self.view.members[e.rank as usize] == self.me;
        if own {
            let unseen = &mut self.own_unseen[stream as usize];
            while unseen.front().is_some_and(|(s, _, _)| *s <= e.seq) {
                unseen.pop_front();
            }
            if stream == Stream::Total {
                self.window.delivered_total(e.idx);
            }
        }
        self.log.push(e.clone());
        if own {
            self.window.settle(&self.log);
        }
        match stream {
            Stream::Fifo => self.hand(e),
            Stream::Total => self.hand_total(now),
        }
        self.progress_due = self.progress_due.min(now + self.cfg.progress_delay);
    }

    /// Hands the total-stream entries whose turn has come.
    fn hand_total(&mut self, _now: Micros) {
        while let Some(e) = self.log.next_for_app().cloned() {
            self.log.handed(e.idx);
            self.hand(e);
        }
    }

    fn hand(&mut self, e: Entry) {
        let from = self.view.members[e.rank as usize].clone();
        let reply = self
            .replica
            .as_mut()
            .and_then(|r| r.apply(&from, e.mode, &e.data));
        self.stats.delivered += 1;
        self.events.push_back(GroupEvent::Deliver {
            group: self.name.clone(),
            view: self.view.id,
            from,
            mode: e.mode,
            seq: e.idx,
            data: e.data,
            reply,
        });
    }

    fn send_progress(&mut self, now: Micros) {
        self.progress_due = Micros::MAX;
        self.next_beat = now + self.cfg.heartbeat;
        let msg = CrmMsg::Progress {
            group: self.name.clone(),
            view: self.view.id,
            rank: self.my_rank() as u32,
            fifo: self.log.fifo_done.clone(),
            total: self.log.total_done,
        };
        self.send_to_others(msg);
    }

    /// Suspects the silent, and the member that holds stability back too long.
    fn detect(&mut self, now: Micros) {
        for (r, m) in self.view.members.iter().enumerate() {
            if *m != self.me && now.saturating_sub(self.heard[r]) > self.cfg.suspect_after {
                self.suspects.insert(m.clone());
            }
        }
        // One of this member's messages unstable past the grace: whoever
        // lacks it holds every sender back; it goes.
        if !self.frozen
            && self
                .window
                .oldest()
                .is_some_and(|t| now.saturating_sub(t) > self.cfg.lag_grace)
        {
            self.suspect_laggard();
        }
        let over = self.log.len() >= self.cfg.max_unstable
            || self.log.bytes() >= self.cfg.max_unstable_bytes;
        if !over {
            self.lagging_since = None;
        } else if let Some(since) = self.lagging_since {
            if now.saturating_sub(since) > self.cfg.lag_grace {
                self.suspect_laggard();
            }
        } else {
            self.lagging_since = Some(now);
        }
    }

    /// Suspects the member holding stability back, unless it is this one.
    fn suspect_laggard(&mut self) {
        if let Some(r) = self.log.laggard()
            && self.view.members[r] != self.me
        {
            self.suspects.insert(self.view.members[r].clone());
        }
    }

    /// Starts a view change when one is needed and this member is the one
    /// to run it.
    fn maybe_propose(&mut self, now: Micros) {
        if !self.in_view()
            || self.proposal.is_some()
            || now < self.retry_at
            || self.acting_coordinator() != &self.me
        {
            return;
        }
        if let Some(p) = &self.promised
            && p.by != self.me
            && !self.suspects.contains(&p.by)
            && now < self.promise_deadline
        {
            return;
        }
        let change = self.view.members.iter().any(|m| self.suspects.contains(m))
            || self.joins.iter().any(|j| !self.view.contains(j))
            || self.leaves.iter().any(|m| self.view.contains(m))
            || self.promised.is_some();
        if change {
            let n = self
                .promised
                .as_ref()
                .map_or(self.view.id, |b| b.n.max(self.view.id))
                + 1;
            self.propose(now, n);
        }
    }

    fn propose(&mut self, now: Micros, n: u64) {
        let ballot = Ballot {
            n,
            by: self.me.clone(),
        };
        let asked: BTreeSet<MemberId> = self
            .view
            .members
            .iter()
            .filter(|m| **m == self.me || !self.suspects.contains(m))
            .cloned()
            .collect();
        self.stats.proposals += 1;
        self.proposal = Some(Proposal {
            ballot: ballot.clone(),
            promises: BTreeMap::new(),
            asked: asked.clone(),
            decision: None,
            accepted: BTreeSet::new(),
            deadline: now + self.cfg.phase_timeout,
            resend_at: now + self.cfg.phase_timeout / 5,
        });
        let msg = CrmMsg::Prepare {
            group: self.name.clone(),
            view: self.view.id,
            ballot: ballot.clone(),
        };
        // Suspects are asked too (a wrong suspicion still helps a
        // majority form), but not waited for.
        self.send_to_others(msg);
        self.on_prepare(now, ballot);
    }

    fn on_prepare(&mut self, now: Micros, ballot: Ballot) {
        if self.promised.as_ref().is_some_and(|p| *p > ballot) {
            let msg = CrmMsg::Refuse {
                group: self.name.clone(),
                view: self.view.id,
                ballot: ballot.clone(),
                promised: self.promised.clone().expect("promised"),
            };
            if ballot.by == self.me {
                let p = self.promised.clone().expect("promised");
                return self.outbid(now, p);
            }
            return self.send_to(&ballot.by.addr, msg);
        }
        if ballot.by != self.me
            && let Some(p) = &self.proposal
            && p.ballot < ballot
        {
            // Someone else runs a higher proposal: let it.
            self.proposal = None;
        }
        self.promised = Some(ballot.clone());
        self.freeze(now);
        let flush = self.log.flush_state();
        let accepted = self.accepted.clone();
        if ballot.by == self.me {
            let me = self.me.clone();
            self.on_promise(now, ballot, me, accepted, flush);
        } else {
            let msg = CrmMsg::Promise {
                group: self.name.clone(),
                view: self.view.id,
                ballot: ballot.clone(),
                member: self.me.clone(),
                accepted,
                flush,
            };
            self.send_to(&ballot.by.addr, msg);
        }
    }

    /// Stops delivering in this view until the decision.
    fn freeze(&mut self, now: Micros) {
        self.promise_deadline = now + 2 * self.cfg.phase_timeout;
        if !self.frozen {
            self.frozen = true;
            self.events.push_back(GroupEvent::Blocked {
                group: self.name.clone(),
                view: self.view.id,
            });
        }
    }

    fn outbid(&mut self, now: Micros, promised: Ballot) {
        self.proposal = None;
        let mine = self.my_rank();
        let theirs = self.view.rank_of(&promised.by);
        if theirs.is_some_and(|t| t < mine) && !self.suspects.contains(&promised.by) {
            // A lower-ranked proposer runs it; wait for it.
            self.promise_deadline = now + 2 * self.cfg.phase_timeout;
            self.retry_at = self.promise_deadline;
            return;
        }
        self.propose(now, promised.n.max(self.view.id) + 1);
    }

    fn on_promise(
        &mut self,
        now: Micros,
        ballot: Ballot,
        member: MemberId,
        accepted: Option<(Ballot, Decision)>,
        flush: FlushState,
    ) {
        let Some(p) = &mut self.proposal else { return };
        if p.ballot != ballot || p.decision.is_some() {
            return;
        }
        p.promises.insert(member, (accepted, flush));
        let all = p.asked.iter().all(|m| p.promises.contains_key(m));
        if all {
            self.choose(now);
        }
    }

    /// Sends the phase's message again to the members that did not answer
    /// (messages are lost; a view change should not exclude for one loss).
    fn resend_phase(&mut self, now: Micros) {
        let view = self.view.id;
        let name = self.name.clone();
        let Some(p) = &mut self.proposal else { return };
        // A decision is sent again only once its fill could have arrived.
        p.resend_at = now + self.cfg.phase_timeout / 5 + transfer_time(p.decision.as_ref());
        let (to, msg): (Vec<Arc<str>>, CrmMsg) = match &p.decision {
            None => (
                self.view
                    .members
                    .iter()
                    .filter(|m| **m != self.me && !p.promises.contains_key(*m))
                    .map(|m| m.addr.clone())
                    .collect(),
                CrmMsg::Prepare {
                    group: name,
                    view,
                    ballot: p.ballot.clone(),
                },
            ),
            Some(d) => (
                p.promises
                    .keys()
                    .filter(|m| **m != self.me && !p.accepted.contains(*m))
                    .map(|m| m.addr.clone())
                    .collect(),
                CrmMsg::Accept {
                    group: name,
                    view,
                    ballot: p.ballot.clone(),
                    decision: d.clone(),
                },
            ),
        };
        for a in to {
            self.send_to(&a, msg.clone());
        }
    }

    /// A phase ran out: go on with a majority, or start again without the
    /// silent.
    fn phase_expired(&mut self, now: Micros) {
        let Some(p) = &self.proposal else { return };
        let majority = self.view.majority();
        if p.decision.is_none() && p.promises.len() >= majority {
            return self.choose(now);
        }
        let silent: Vec<MemberId> = match &p.decision {
            None => p
                .asked
                .iter()
                .filter(|m| !p.promises.contains_key(*m))
                .cloned()
                .collect(),
            Some(_) => p
                .promises
                .keys()
                .filter(|m| !p.accepted.contains(*m))
                .cloned()
                .collect(),
        };
        let n = p.ballot.n + 1;
        self.suspects
            .extend(silent.into_iter().filter(|m| *m != self.me));
        self.proposal = None;
        let reachable = self
            .view
            .members
            .iter()
            .filter(|m| **m == self.me || !self.suspects.contains(m))
            .count();
        if reachable < majority {
            if !self.minority_told {
                self.minority_told = true;
                if self.phase == Phase::Member {
                    self.phase = Phase::Minority;
                }
                self.events.push_back(GroupEvent::Minority {
                    group: self.name.clone(),
                    view: self.view.id,
                });
            }
            // Try again later: the partition may heal.
            self.suspects.clear();
            self.retry_at = now + 2 * self.cfg.phase_timeout;
            return;
        }
        self.propose(now, n);
    }

    /// Picks the value: one already accepted, or the promisers and their cut.
    fn choose(&mut self, now: Micros) {
        let Some(p) = &mut self.proposal else { return };
        if p.promises.len() < self.view.majority() {
            return;
        }
        let decision = match p
            .promises
            .values()
            .filter_map(|(a, _)| a.as_ref())
            .max_by(|a, b| a.0.cmp(&b.0))
        {
            Some((_, d)) => d.clone(),
            None => {
                let d = cut(
                    &self.view,
                    p.ballot.n,
                    &p.promises,
                    &self.leaves,
                    &self.joins,
                );
                match d {
                    Some(d) => d,
                    None => {
                        // Every promiser is leaving: the group ends.
                        self.proposal = None;
                        return;
                    }
                }
            }
        };
        // The decision carries the fill: give it the time its bytes take.
        let fill = transfer_time(Some(&decision));
        p.decision = Some(decision.clone());
        p.deadline = now + self.cfg.phase_timeout + fill;
        p.resend_at = now + self.cfg.phase_timeout / 5 + fill;
        let ballot = p.ballot.clone();
        let to: Vec<MemberId> = p
            .promises
            .keys()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        let msg = CrmMsg::Accept {
            group: self.name.clone(),
            view: self.view.id,
            ballot: ballot.clone(),
            decision: decision.clone(),
        };
        for m in to {
            self.send_to(&m.addr, msg.clone());
        }
        self.on_accept(now, ballot, decision);
    }

    fn on_accept(&mut self, now: Micros, ballot: Ballot, decision: Decision) {
        if self.promised.as_ref().is_some_and(|p| *p > ballot) || decision.from != self.view.id {
            return;
        }
        self.promised = Some(ballot.clone());
        self.accepted = Some((ballot.clone(), decision));
        // Accepting binds as promising does (the prepare may have been lost).
        self.freeze(now);
        if ballot.by == self.me {
            let me = self.me.clone();
            self.on_accepted(now, ballot, me);
        } else {
            let msg = CrmMsg::Accepted {
                group: self.name.clone(),
                view: self.view.id,
                ballot: ballot.clone(),
                member: self.me.clone(),
            };
            self.send_to(&ballot.by.addr, msg);
        }
    }

    fn on_accepted(&mut self, now: Micros, ballot: Ballot, member: MemberId) {
        let majority = self.view.majority();
        let Some(p) = &mut self.proposal else { return };
        if p.ballot != ballot {
            return;
        }
        p.accepted.insert(member);
        if p.accepted.len() < majority {
            return;
        }
        let decision = p.decision.clone().expect("accepted a chosen value");
        self.proposal = None;
        let msg = CrmMsg::Decide {
            group: self.name.clone(),
            decision: decision.clone(),
        };
        self.send_to_others(msg);
        self.on_decide(now, decision);
    }

    /// Applies the decided successor of the current view.
    fn on_decide(&mut self, now: Micros, d: Decision) {
        if d.from != self.view.id || !self.in_view() {
            if d.from > self.view.id && self.in_view() {
                // Behind by more than one view: the cut of the views
                // between is gone.
                self.rejoin(now, Rejoin::BehindByViews);
            }
            return;
        }
        if !d.view.contains(&self.me) {
            if self.phase == Phase::Leaving {
                self.finish_leave();
            } else {
                self.rejoin(now, Rejoin::LeftOut);
            }
            return;
        }
        if !self.catch_up(now, &d) {
            self.rejoin(now, Rejoin::CannotCatchUp);
            return;
        }
        // Own messages the old view did not deliver go again in the new one.
        let mut resend: Vec<(Mode, Arc<[u8]>)> = Vec::new();
        for s in [Stream::Fifo, Stream::Total] {
            for (_, mode, data) in self.own_unseen[s as usize].drain(..) {
                resend.push((mode, data));
            }
        }
        self.stats.resent += resend.len() as u64;
        for m in resend.into_iter().rev() {
            self.pending.push_front(m);
        }
        let joiners: Vec<MemberId> = d
            .view
            .members
            .iter()
            .filter(|m| !self.view.contains(m))
            .cloned()
            .collect();
        self.last_decision = Some(d.clone());
        self.install(now, d.view.clone());
        if d.view.coordinator() == &self.me && !joiners.is_empty() {
            let state = self
                .replica
                .as_ref()
                .map(|r| r.snapshot())
                .unwrap_or_default();
            for j in joiners {
                let msg = CrmMsg::Welcome {
                    group: self.name.clone(),
                    view: d.view.clone(),
                    state: state.clone(),
                };
                self.send_to(&j.addr, msg);
            }
        }
        self.pump(now);
    }

    /// Delivers what this member lacks of the cut, in the streams' orders.
    fn catch_up(&mut self, now: Micros, d: &Decision) -> bool {
        let n = self.view.members.len();
        if d.fifo_cut.len() != n
            || self.log.total_done > d.total_cut
            || (0..n).any(|r| self.log.fifo_done[r] > d.fifo_cut[r])
        {
            // It delivered past the cut: it cannot stay.
            return false;
        }
        self.frozen = false;
        for r in 0..n {
            let mut next = self.log.fifo_done[r] + 1;
            for e in d
                .fill
                .iter()
                .filter(|e| e.stream == Stream::Fifo && e.rank as usize == r)
            {
                if e.idx == next && e.idx <= d.fifo_cut[r] {
                    self.record(now, e.clone());
                    next += 1;
                }
            }
            if self.log.fifo_done[r] < d.fifo_cut[r] {
                return false;
            }
        }
        let mut next = self.log.total_done + 1;
        for e in d.fill.iter().filter(|e| e.stream == Stream::Total) {
            if e.idx == next && e.idx <= d.total_cut && (e.rank as usize) < n {
                self.log.push(e.clone());
                if self.view.members[e.rank as usize] == self.me {
                    let unseen = &mut self.own_unseen[1];
                    while unseen.front().is_some_and(|(s, _, _)| *s <= e.seq) {
                        unseen.pop_front();
                    }
                }
                next += 1;
            }
        }
        if self.log.total_done < d.total_cut {
            return false;
        }
        // Everything up to the cut is held by every survivor: safe ones too.
        for e in self.log.unhanded() {
            if e.idx <= d.total_cut {
                self.log.handed(e.idx);
                self.hand(e);
            }
        }
        true
    }

    /// Installs `view` with fresh stacks.
    fn install(&mut self, now: Micros, view: View) {
        let me = view
            .rank_of(&self.me)
            .expect("installing a view holding this member");
        let n = view.members.len();
        self.streams = Some(Streams::build(
            &self.name,
            &view,
            &self.me,
            &self.cfg.params,
        ));
        self.log = Log::new(n, me);
        self.heard = vec![now; n];
        self.suspects.clear();
        self.joins.retain(|j| !view.contains(j));
        self.leaves.retain(|m| view.contains(m));
        self.promised = None;
        self.accepted = None;
        self.frozen = false;
        self.proposal = None;
        self.own_sent = [0; 2];
        self.window = Window::default();
        self.lagging_since = None;
        self.minority_told = false;
        if matches!(self.phase, Phase::Joining | Phase::Minority) {
            self.phase = Phase::Member;
        }
        self.next_join = Micros::MAX;
        self.view = view.clone();
        self.stats.views += 1;
        self.events.push_back(GroupEvent::View {
            group: self.name.clone(),
            view,
        });
        self.send_progress(now);
        if let Some(s) = &mut self.streams {
            s.fifo.handle_timeout(now);
            s.total.handle_timeout(now);
        }
    }

    fn welcome(&mut self, now: Micros, from: &str, view: View, state: Vec<u8>) {
        if !view.contains(&self.me) || &*view.coordinator().addr != from {
            return;
        }
        if let Some(r) = &mut self.replica
            && r.restore(&state).is_err()
        {
            self.stats.refused += 1;
            return;
        }
        self.last_decision = None;
        // A promise made for this view while joining binds: the member
        // reported that it holds nothing of the view, so it delivers
        // nothing in it until the decision.
        let promise = (self.pending_view == view.id && self.promised.is_some())
            .then(|| (self.promised.take(), self.accepted.take()));
        self.install(now, view);
        if let Some((promised, accepted)) = promise {
            self.promised = promised;
            self.accepted = accepted;
            self.frozen = true;
            self.promise_deadline = now + 2 * self.cfg.phase_timeout;
        }
        self.pump(now);
    }

    /// Out of the view: join again as a new incarnation.
    fn rejoin(&mut self, now: Micros, why: Rejoin) {
        let contacts: Vec<Arc<str>> = self
            .view
            .members
            .iter()
            .filter(|m| **m != self.me)
            .map(|m| m.addr.clone())
            .chain(self.contacts.iter().cloned())
            .collect();
        let mut contacts_dedup = Vec::new();
        for c in contacts {
            if !contacts_dedup.contains(&c) {
                contacts_dedup.push(c);
            }
        }
        let me = MemberId {
            addr: self.me.addr.clone(),
            inc: self.me.inc.max(now) + 1,
            zone: self.me.zone.clone(),
        };
        let mut g = Group::blank(self.name.clone(), me.clone(), self.cfg.clone());
        g.replica = self.replica.take();
        g.contacts = contacts_dedup;
        g.next_join = now;
        g.stats = std::mem::take(&mut self.stats);
        g.events = std::mem::take(&mut self.events);
        g.out = std::mem::take(&mut self.out);
        tracing::debug!(group = %self.name, member = %self.me, ?why, "rejoining");
        g.events.push_back(GroupEvent::Rejoining {
            group: self.name.clone(),
            member: me,
            why,
        });
        *self = g;
    }

    fn finish_leave(&mut self) {
        self.phase = Phase::Left;
        self.streams = None;
        self.pending.clear();
        self.leave_deadline = Micros::MAX;
        self.next_beat = Micros::MAX;
        self.progress_due = Micros::MAX;
        self.next_join = Micros::MAX;
        self.proposal = None;
        self.promised = None;
        self.events.push_back(GroupEvent::Left {
            group: self.name.clone(),
        });
    }
}

/// How long a decision's fill takes to reach the members, at a rate
/// (32 MB/s) an agent keeps even while loaded.
fn transfer_time(d: Option<&Decision>) -> Micros {
    let bytes: usize = d.map_or(0, |d| d.fill.iter().map(|e| e.data.len()).sum());
    bytes as Micros / 32
}

/// The new view and its cut from a majority's promises: the promisers in
/// rank order (less those leaving), then the joiners; the cut the union
/// of what they delivered. A promiser whose report has a gap the others
/// cannot fill is left out (it joins again).
fn cut(
    view: &View,
    n: u64,
    promises: &Promises,
    leaves: &BTreeSet<MemberId>,
    joins: &BTreeSet<MemberId>,
) -> Option<Decision> {
    let size = view.members.len();
    let mut fifo_cut = vec![0u64; size];
    let mut total_cut = 0;
    let mut fill: BTreeMap<(Stream, u32, u64), Entry> = BTreeMap::new();
    for (_, f) in promises.values() {
        for (r, c) in f.fifo.iter().enumerate().take(size) {
            fifo_cut[r] = fifo_cut[r].max(*c);
        }
        total_cut = total_cut.max(f.total);
        for e in &f.entries {
            if (e.rank as usize) < size {
                fill.entry((e.stream, e.rank, e.idx))
                    .or_insert_with(|| e.clone());
            }
        }
    }
    let covered = |f: &FlushState| {
        (0..size).all(|r| {
            let from = f.fifo.get(r).copied().unwrap_or(0);
            (from + 1..=fifo_cut[r]).all(|i| fill.contains_key(&(Stream::Fifo, r as u32, i)))
        }) && (f.total + 1..=total_cut)
            .all(|i| fill.keys().any(|k| k.0 == Stream::Total && k.2 == i))
    };
    let mut members: Vec<MemberId> = view
        .members
        .iter()
        .filter(|m| {
            promises
                .get(*m)
                .is_some_and(|(_, f)| (f.fifo.is_empty() || f.fifo.len() == size) && covered(f))
                && !leaves.contains(*m)
        })
        .cloned()
        .collect();
    for j in joins {
        if members.len() >= MAX_MEMBERS {
            break;
        }
        if !members.iter().any(|m| m.addr == j.addr) {
            members.push(j.clone());
        }
    }
    if members.is_empty() {
        return None;
    }
    let mut entries: Vec<Entry> = fill.into_values().collect();
    entries.sort_by_key(|e| {
        (
            e.stream,
            if e.stream == Stream::Fifo { e.rank } else { 0 },
            e.idx,
        )
    });
    Some(Decision {
        from: view.id,
        view: View { id: n, members },
        fifo_cut,
        total_cut,
        fill: entries,
    })
}
