//! `nak`: NACK-based reliability, end to end from an origin to every member.
//!
//! An origin numbers its messages for every member and keeps each until it
//! is stable: acknowledged by every member it has heard from recently. It
//! keeps the last `retain` messages past that for late subscribers, and
//! sends a heartbeat with its last number so that a member notices a lost
//! tail. A member delivers each message once, as it arrives (ordering is
//! `fifo`'s or `total`'s job above), notices holes, and asks for them: first
//! its repairer (the relay above it in the channel's tree, also a member
//! holding the stream) twice, then the origin, and so on until the hole is
//! filled. Any member that holds a message answers a request for it, and
//! one that lacks it too answers when its own repair comes; a repair a
//! member receives goes on to the members below it in the tree, who lack it
//! as well. So a relay repairs its zone without the origin.
//!
//! Bounds: an origin holds at most `nak_window` messages and `nak_bytes`
//! bytes (the oldest go first, and a request for one gets a cut-off); a
//! member holds as much of each stream for repairing others, accepts
//! nothing further ahead than the window, and follows at most
//! `max_streams` streams. A member that lags more than `lag_limit` behind
//! the group's median member, or is silent for `member_timeout`, stops
//! holding back stability: the first is cut off (told to skip ahead), so
//! one slow member never stalls the origin. A group slow as a whole (or a
//! lone member) holds the origin back instead: a publisher whose window is
//! full of unacknowledged messages is told to wait, so that a publisher
//! faster than everyone loses no one.
//!
//! Header (tag, then varints):
//! `0 seq lo` data, `1 hi lo` heartbeat, `2 inc upto` acknowledgement,
//! `3 addr inc n (from to)*n` request, `4 inc resume` cut-off, `5` pass.

use crate::dds::codec::{DecodeError, Reader, Writer};
use crate::dds::layer::{Backpressure, Control, Cx, Dest, Layer, Msg, OriginId};
use crate::dds::params::Params;
use crate::dds::spec::LayerKind;
use crate::row::Micros;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Ranges in one request.
const MAX_RANGES: usize = 32;
/// Messages asked for in one request, and answered for one request.
const MAX_ASK: u64 = 256;
/// Longest address in a header.
const MAX_ADDR: usize = 256;
/// Requests for messages a member lacks too, remembered to answer when
/// they arrive.
const MAX_WAITING: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NakHeader {
    Data {
        seq: u64,
        lo: u64,
    },
    /// The origin's last number and lowest held; `beat` counts heartbeats,
    /// so that no two are the same frame (relays drop frames seen before).
    Beat {
        hi: u64,
        lo: u64,
        beat: u64,
    },
    Ack {
        inc: u64,
        upto: u64,
    },
    Nak {
        addr: Arc<str>,
        inc: u64,
        ranges: Vec<(u64, u64)>,
    },
    CutOff {
        inc: u64,
        resume: u64,
    },
    Pass,
    /// A message the origin sends again to every member, because several
    /// asked for it at once (a loss high in the tree); `n` counts the
    /// origin's recasts, so that relays do not take it for the first copy.
    Recast {
        seq: u64,
        lo: u64,
        n: u64,
    },
}

impl NakHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            NakHeader::Data { seq, lo } => w.u8(0).varint(*seq).varint(*lo),
            NakHeader::Beat { hi, lo, beat } => w.u8(1).varint(*hi).varint(*lo).varint(*beat),
            NakHeader::Ack { inc, upto } => w.u8(2).varint(*inc).varint(*upto),
            NakHeader::Nak { addr, inc, ranges } => {
                w.u8(3).str(addr).varint(*inc).varint(ranges.len() as u64);
                for (a, b) in ranges {
                    w.varint(*a).varint(*b);
                }
                &mut w
            }
            NakHeader::CutOff { inc, resume } => w.u8(4).varint(*inc).varint(*resume),
            NakHeader::Pass => w.u8(5),
            NakHeader::Recast { seq, lo, n } => w.u8(6).varint(*seq).varint(*lo).varint(*n),
        };
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<NakHeader, DecodeError> {
        let mut r = Reader::new(b);
        let h = match r.u8()? {
            0 => NakHeader::Data {
                seq: r.varint()?,
                lo: r.varint()?,
            },
            1 => NakHeader::Beat {
                hi: r.varint()?,
                lo: r.varint()?,
                beat: r.varint()?,
            },
            2 => NakHeader::Ack {
                inc: r.varint()?,
                upto: r.varint()?,
            },
            3 => {
                let addr: Arc<str> = r.str(MAX_ADDR)?.into();
                let inc = r.varint()?;
                let n = r.count(MAX_RANGES, 2)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    let (a, b) = (r.varint()?, r.varint()?);
                    if a > b || a == 0 {
                        return Err(DecodeError::Invalid("request range"));
                    }
                    ranges.push((a, b));
                }
                NakHeader::Nak { addr, inc, ranges }
            }
            4 => NakHeader::CutOff {
                inc: r.varint()?,
                resume: r.varint()?,
            },
            5 => NakHeader::Pass,
            6 => NakHeader::Recast {
                seq: r.varint()?,
                lo: r.varint()?,
                n: r.varint()?,
            },
            t => return Err(DecodeError::BadTag(t)),
        };
        if let NakHeader::Data { seq: 0, .. } | NakHeader::Recast { seq: 0, .. } = h {
            return Err(DecodeError::Invalid("sequence number 0"));
        }
        r.end()?;
        Ok(h)
    }
}

/// How the origin answers one request for a message it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// To the asker.
    Peer,
    /// To every member, once.
    All,
    /// Not at all: a copy to every member has just gone.
    Spare,
}

/// Who asked for a message this member lacks too, and until when to answer.
type Askers = (Vec<Arc<str>>, Micros);

/// A message a member noticed missing.
#[derive(Debug, Clone, Copy)]
struct Hole {
    /// When it was noticed.
    noticed: Micros,
    /// When to ask next.
    due: Micros,
    /// When it was last asked for.
    asked: Micros,
    tries: u32,
}

impl Hole {
    fn new(now: Micros, delay: Micros) -> Hole {
        Hole {
            noticed: now,
            due: now + delay,
            asked: 0,
            tries: 0,
        }
    }
}

/// The buckets of repair delays (from noticing a message missing until it
/// arrives): upper bound in ms, and the counter's name.
pub const REPAIR_BUCKETS: [(u64, &str); 6] = [
    (10, "repaired_le_10ms"),
    (25, "repaired_le_25ms"),
    (50, "repaired_le_50ms"),
    (100, "repaired_le_100ms"),
    (250, "repaired_le_250ms"),
    (1000, "repaired_le_1s"),
];

/// The round trip to repairers, estimated from requests answered at the
/// first try (Karn's rule: a retried request's answer is ambiguous).
#[derive(Debug, Clone, Copy, Default)]
struct RttEstimate {
    srtt: Option<Micros>,
}

impl RttEstimate {
    fn sample(&mut self, rtt: Micros) {
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => (7 * s + rtt) / 8,
        });
    }
}

/// What an origin knows of one member.
struct Member {
    upto: u64,
    heard: Micros,
    /// Since when it has been more than `lag_limit` behind the group.
    lagging_since: Option<Micros>,
}

/// Messages held for repairs, bounded in count and bytes.
#[derive(Default)]
struct Store {
    msgs: BTreeMap<u64, Msg>,
    bytes: usize,
}

impl Store {
    fn insert(&mut self, seq: u64, msg: Msg, max: u64, max_bytes: usize) -> u64 {
        self.bytes += msg.wire_len();
        self.msgs.insert(seq, msg);
        let mut evicted = 0;
        while self.msgs.len() as u64 > max || (self.bytes > max_bytes && self.msgs.len() > 1) {
            self.pop_first();
            evicted += 1;
        }
        evicted
    }

    fn pop_first(&mut self) {
        if let Some((_, m)) = self.msgs.pop_first() {
            self.bytes -= m.wire_len();
        }
    }

    /// Drops everything up to `upto`.
    fn collect(&mut self, upto: u64) {
        while self.msgs.first_key_value().is_some_and(|(s, _)| *s <= upto) {
            self.pop_first();
        }
    }

    fn lo(&self, next: u64) -> u64 {
        self.msgs.first_key_value().map_or(next, |(s, _)| *s)
    }
}

/// What a member knows of one origin's stream.
struct Stream {
    /// The lowest number not yet received.
    next: u64,
    /// Numbers received above `next`.
    got: BTreeSet<u64>,
    hi: u64,
    store: Store,
    /// Holes: when noticed, when to ask next, and how often asked.
    missing: BTreeMap<u64, Hole>,
    acked: u64,
    ack_at: Micros,
    heard: Micros,
    /// The lowest number the origin last said it holds.
    origin_lo: u64,
}

pub struct Nak {
    local: OriginId,
    sync_all: bool,
    window: u64,
    max_bytes: usize,
    retain: u64,
    hold: Micros,
    nak_delay: Micros,
    nak_retry: Micros,
    nak_retry_min: Micros,
    rtt: RttEstimate,
    /// Wait the whole `nak_delay` before the first request, whatever the
    /// round trip (a repair layer below gets its chance first).
    patient: bool,
    ack_period: Micros,
    beat_period: Micros,
    member_timeout: Micros,
    lag_limit: u64,
    lag_grace: Micros,
    max_streams: usize,
    // As an origin.
    next_seq: u64,
    sent: Store,
    /// When each message still held was sent.
    sent_at: VecDeque<(u64, Micros)>,
    members: BTreeMap<Arc<str>, Member>,
    stable: u64,
    beats: u64,
    /// Messages sent again lately: when, and whether to every member.
    resent: BTreeMap<u64, (Micros, bool)>,
    // As a member.
    streams: BTreeMap<OriginId, Stream>,
    repairers: Vec<Arc<str>>,
    /// Who asked this member for a message it lacks too, and until when.
    waiting: BTreeMap<(OriginId, u64), Askers>,
    // Counters.
    sent_msgs: u64,
    delivered: u64,
    duplicates: u64,
    requests: u64,
    retransmits: u64,
    recasts: u64,
    resends_spared: u64,
    subtree_repairs: u64,
    cut_offs: u64,
    skipped: u64,
    evicted: u64,
    /// Holes filled, by delay since noticed ([`REPAIR_BUCKETS`], then over).
    repaired: [u64; REPAIR_BUCKETS.len() + 1],
}

impl Nak {
    pub fn new(local: OriginId, sync_all: bool, p: &Params) -> Nak {
        Nak {
            local,
            sync_all,
            window: p.nak_window.max(1),
            max_bytes: p.nak_bytes,
            retain: p.retain.min(p.nak_window),
            hold: p.nak_hold,
            nak_delay: p.nak_delay,
            nak_retry: p.nak_retry.max(1),
            nak_retry_min: p.nak_retry_min.clamp(1, p.nak_retry.max(1)),
            rtt: RttEstimate::default(),
            patient: false,
            ack_period: p.ack_period.max(1),
            beat_period: p.beat_period.max(1),
            member_timeout: p.member_timeout,
            lag_limit: p.lag_limit.max(1),
            lag_grace: p.lag_grace,
            max_streams: p.max_streams.max(1),
            next_seq: 1,
            sent: Store::default(),
            sent_at: VecDeque::new(),
            members: BTreeMap::new(),
            stable: 0,
            beats: 0,
            resent: BTreeMap::new(),
            streams: BTreeMap::new(),
            repairers: Vec::new(),
            waiting: BTreeMap::new(),
            sent_msgs: 0,
            delivered: 0,
            duplicates: 0,
            requests: 0,
            retransmits: 0,
            recasts: 0,
            resends_spared: 0,
            subtree_repairs: 0,
            cut_offs: 0,
            skipped: 0,
            evicted: 0,
            repaired: [0; REPAIR_BUCKETS.len() + 1],
        }
    }

    /// How long after noticing a hole the first request goes out: long
    /// enough for reordering, at most `nak_delay`; on a short round trip
    /// (a LAN) half of it, at least a fifth of the retry floor.
    fn first_delay(&self) -> Micros {
        match self.rtt.srtt {
            Some(s) if !self.patient => (s / 2).clamp(self.nak_retry_min / 5, self.nak_delay),
            _ => self.nak_delay,
        }
    }

    /// How long to wait for an answer before asking again: twice the round
    /// trip, between `nak_retry_min` and `nak_retry` (also the value before
    /// any round trip is known).
    fn retry_delay(&self) -> Micros {
        match self.rtt.srtt {
            None => self.nak_retry,
            Some(s) => (2 * s).clamp(self.nak_retry_min, self.nak_retry),
        }
    }

    /// Makes the first request wait the whole `nak_delay` (see `patient`).
    pub fn patient(&mut self, on: bool) {
        self.patient = on;
    }

    /// Notes that a hole was filled, `hole` as it was.
    fn filled(&mut self, hole: Hole, now: Micros) {
        let delay = now.saturating_sub(hole.noticed);
        let bucket = REPAIR_BUCKETS
            .iter()
            .position(|(ms, _)| delay <= ms * 1_000)
            .unwrap_or(REPAIR_BUCKETS.len());
        self.repaired[bucket] += 1;
        if hole.tries == 1 {
            self.rtt.sample(now.saturating_sub(hole.asked));
        }
    }

    fn hi(&self) -> u64 {
        self.next_seq - 1
    }

    /// This origin's messages some live member has not acknowledged.
    fn outstanding(&self) -> u64 {
        self.hi() - self.stable.min(self.hi())
    }

    fn lo(&self) -> u64 {
        self.sent.lo(self.next_seq)
    }

    /// The messages of this agent that every member holds.
    pub fn stable(&self) -> u64 {
        self.stable
    }

    fn send_to(&self, to: &Arc<str>, h: NakHeader, cx: &mut Cx<'_>) {
        let mut m = Msg::new(self.local.clone(), Dest::Peer(to.clone()), Vec::new());
        m.push(h.encode());
        cx.down(m);
    }

    /// The stream of `origin`, made on first sight, starting at `first`
    /// (the first number seen) or, when syncing everything, at `lo`.
    fn stream(&mut self, origin: &OriginId, first: u64, lo: u64, cx: &mut Cx<'_>) -> bool {
        if self.streams.contains_key(origin) {
            return true;
        }
        if self.streams.len() >= self.max_streams {
            let stalest = self
                .streams
                .iter()
                .min_by_key(|(_, s)| s.heard)
                .map(|(o, _)| o.clone());
            if let Some(o) = stalest {
                self.streams.remove(&o);
            }
        }
        let start = if self.sync_all {
            lo.clamp(1, first.max(1))
        } else {
            first.max(1)
        };
        let delay = self.first_delay();
        let mut missing = BTreeMap::new();
        for s in start..first.min(start + self.window) {
            missing.insert(s, Hole::new(cx.now, delay));
        }
        if !missing.is_empty() {
            cx.arm("nak", cx.now + delay);
        }
        self.streams.insert(
            origin.clone(),
            Stream {
                next: start,
                got: BTreeSet::new(),
                hi: start - 1,
                store: Store::default(),
                missing,
                acked: 0,
                ack_at: 0,
                heard: cx.now,
                origin_lo: lo,
            },
        );
        cx.control(Control::Synced {
            origin: origin.clone(),
            from_start: start == 1,
        });
        false
    }

    /// Notes that `origin` reached `hi`: every number up to it not yet
    /// received is a hole.
    fn note_hi(&mut self, origin: &OriginId, hi: u64, cx: &mut Cx<'_>) {
        let (window, delay) = (self.window, self.first_delay());
        let Some(st) = self.streams.get_mut(origin) else {
            return;
        };
        st.heard = cx.now;
        if hi <= st.hi {
            return;
        }
        let from = (st.hi + 1).max(st.next);
        let to = hi.min(st.next + window - 1);
        for s in from..=to {
            if !st.got.contains(&s) {
                st.missing
                    .entry(s)
                    .or_insert_with(|| Hole::new(cx.now, delay));
            }
        }
        st.hi = hi;
        if from <= to {
            cx.arm("nak", cx.now + delay);
        }
    }

    fn receive(&mut self, seq: u64, lo: u64, msg: Msg, cx: &mut Cx<'_>) {
        let origin = msg.origin.clone();
        self.stream(&origin, seq, lo, cx);
        let (window, max_bytes) = (self.window, self.max_bytes);
        let st = self.streams.get_mut(&origin).expect("made");
        st.origin_lo = st.origin_lo.max(lo);
        if seq < st.next || st.got.contains(&seq) {
            self.duplicates += 1;
            st.heard = cx.now;
            return;
        }
        if seq >= st.next + window {
            return cx.refuse("ahead_of_window");
        }
        st.got.insert(seq);
        let hole = st.missing.remove(&seq);
        self.evicted += st.store.insert(seq, msg.clone(), window, max_bytes);
        while st.got.remove(&st.next) {
            st.next += 1;
        }
        // Under a fast stream, acknowledge every eighth of the window
        // rather than only each `ack_period`, so that stability (and the
        // origin's window) keeps up with the stream.
        let ack = (st.next > st.acked + (window / 8).max(1)).then(|| {
            st.acked = st.next - 1;
            st.ack_at = cx.now;
            st.acked
        });
        if let Some(h) = hole {
            self.filled(h, cx.now);
        }
        if let Some(upto) = ack {
            let (to, inc) = (origin.addr.clone(), origin.inc);
            self.send_to(&to, NakHeader::Ack { inc, upto }, cx);
        }
        self.note_hi(&origin, seq, cx);
        self.delivered += 1;
        if matches!(msg.dest, Dest::Peer(_)) {
            // A repair: what this agent lacked, the zone below it lacks too.
            let mut m = msg.clone();
            m.dest = Dest::Subtree;
            m.push(NakHeader::Data { seq, lo }.encode());
            self.subtree_repairs += 1;
            cx.down(m);
        }
        if let Some((askers, until)) = self.waiting.remove(&(origin.clone(), seq))
            && until >= cx.now
        {
            for to in askers {
                let mut m = msg.clone();
                m.dest = Dest::Peer(to);
                m.push(NakHeader::Data { seq, lo }.encode());
                self.retransmits += 1;
                cx.down(m);
            }
        }
        cx.up(msg);
    }

    fn serve(&mut self, to: Arc<str>, stream: OriginId, ranges: &[(u64, u64)], cx: &mut Cx<'_>) {
        let own = stream == self.local;
        let lo = if own {
            self.lo()
        } else {
            match self.streams.get(&stream) {
                Some(s) => s.origin_lo,
                None => return,
            }
        };
        let mut budget = MAX_ASK;
        let mut cut = false;
        for &(a, b) in ranges {
            for seq in a..=b {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                let held = if own {
                    self.sent.msgs.get(&seq)
                } else {
                    self.streams[&stream].store.msgs.get(&seq)
                };
                match held.cloned() {
                    Some(mut m) => {
                        let resend = if own {
                            self.resend_of(seq, cx.now)
                        } else {
                            Resend::Peer
                        };
                        match resend {
                            Resend::Spare => self.resends_spared += 1,
                            Resend::All => {
                                m.dest = Dest::All;
                                self.recasts += 1;
                                let n = self.recasts;
                                m.push(NakHeader::Recast { seq, lo, n }.encode());
                                cx.down(m);
                            }
                            Resend::Peer => {
                                m.dest = Dest::Peer(to.clone());
                                m.push(NakHeader::Data { seq, lo }.encode());
                                self.retransmits += 1;
                                cx.down(m);
                            }
                        }
                    }
                    None if own && seq < lo && !cut => {
                        cut = true;
                        self.cut_offs += 1;
                        let inc = self.local.inc;
                        self.send_to(&to, NakHeader::CutOff { inc, resume: lo }, cx);
                    }
                    None if !own && self.waiting.len() < MAX_WAITING => {
                        // Missing here too: answer when it comes.
                        let until = cx.now + 2 * self.nak_retry;
                        let w = self
                            .waiting
                            .entry((stream.clone(), seq))
                            .or_insert((Vec::new(), until));
                        if !w.0.contains(&to) && w.0.len() < 16 {
                            w.0.push(to.clone());
                        }
                        w.1 = until;
                    }
                    None => {}
                }
            }
        }
    }

    /// How the origin answers a request for its message `seq`: the first
    /// request in a while to the asker alone; a second within
    /// [`Nak::resend_hold`] means the loss was shared (high in the tree),
    /// so one copy goes to every member instead of one per asker; askers
    /// after that within the hold wait for that copy. Under a loss shared
    /// by a whole subtree this bounds the origin's resends of one message
    /// to two per hold, where answering each asker costs one per member.
    fn resend_of(&mut self, seq: u64, now: Micros) -> Resend {
        let hold = self.resend_hold();
        match self.resent.get_mut(&seq) {
            Some((at, cast)) if *at + hold > now => {
                if *cast {
                    Resend::Spare
                } else {
                    *at = now;
                    *cast = true;
                    Resend::All
                }
            }
            _ => {
                if self.resent.len() as u64 >= self.window {
                    self.resent.retain(|_, (at, _)| *at + hold > now);
                }
                self.resent.insert(seq, (now, false));
                Resend::Peer
            }
        }
    }

    /// How long a resend stands for later requests of the same message:
    /// twice the least request interval, so an asker whose copy was lost
    /// is answered again on its next try but one.
    fn resend_hold(&self) -> Micros {
        2 * self.nak_retry_min
    }

    fn cut_off(&mut self, origin: &OriginId, resume: u64, cx: &mut Cx<'_>) {
        let Some(st) = self.streams.get_mut(origin) else {
            return;
        };
        if resume <= st.next {
            return;
        }
        let lost = (st.next..resume).filter(|s| !st.got.contains(s)).count() as u64;
        st.got = st.got.split_off(&resume);
        st.missing = st.missing.split_off(&resume);
        st.next = resume;
        st.hi = st.hi.max(resume - 1);
        while st.got.remove(&st.next) {
            st.next += 1;
        }
        self.skipped += lost;
        cx.control(Control::Skipped {
            origin: origin.clone(),
            count: lost,
        });
    }

    /// Asks for every hole that is due.
    fn ask(&mut self, cx: &mut Cx<'_>) {
        let mut next_due = Micros::MAX;
        let mut asks = Vec::new();
        let retry = self.retry_delay();
        for (origin, st) in self.streams.iter_mut() {
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            let mut tries = 0;
            let mut n = 0;
            for (seq, hole) in st.missing.iter_mut() {
                if hole.due > cx.now {
                    next_due = next_due.min(hole.due);
                    continue;
                }
                if n >= MAX_ASK {
                    next_due = next_due.min(cx.now + retry);
                    break;
                }
                let extends = ranges.last().is_some_and(|(_, b)| *b + 1 == *seq);
                if extends {
                    ranges.last_mut().expect("some").1 = *seq;
                } else if ranges.len() >= MAX_RANGES {
                    next_due = next_due.min(cx.now + retry);
                    break;
                } else {
                    ranges.push((*seq, *seq));
                }
                tries = tries.max(hole.tries);
                hole.tries += 1;
                hole.asked = cx.now;
                hole.due = cx.now + retry;
                next_due = next_due.min(hole.due);
                n += 1;
            }
            if !ranges.is_empty() {
                // The repairer twice (it answers when its own repair comes),
                // then the origin, and so on.
                let target = match self.repairers.first() {
                    Some(r) if tries % 2 == 0 && **r != *origin.addr => r.clone(),
                    _ => origin.addr.clone(),
                };
                asks.push((target, origin.clone(), ranges));
            }
        }
        for (target, origin, ranges) in asks {
            self.requests += 1;
            let h = NakHeader::Nak {
                addr: origin.addr,
                inc: origin.inc,
                ranges,
            };
            self.send_to(&target, h, cx);
        }
        if next_due != Micros::MAX {
            cx.set_timer("nak", next_due);
        }
    }

    fn acks(&mut self, cx: &mut Cx<'_>) {
        let keepalive = 4 * self.ack_period;
        let mut acks = Vec::new();
        for (origin, st) in self.streams.iter_mut() {
            let upto = st.next - 1;
            if upto > st.acked || cx.now >= st.ack_at + keepalive {
                st.acked = upto;
                st.ack_at = cx.now;
                acks.push((origin.addr.clone(), origin.inc, upto));
            }
        }
        for (to, inc, upto) in acks {
            self.send_to(&to, NakHeader::Ack { inc, upto }, cx);
        }
        self.waiting.retain(|_, (_, until)| *until >= cx.now);
        // Streams of origins gone quiet for long are forgotten.
        let gone = cx.now.saturating_sub(12 * self.member_timeout);
        self.streams.retain(|_, s| s.heard >= gone);
        cx.set_timer("ack", cx.now + self.ack_period);
    }

    /// As an origin: heartbeat, membership, cut-offs, stability and collection.
    fn beat(&mut self, cx: &mut Cx<'_>) {
        cx.set_timer("beat", cx.now + self.beat_period);
        if self.next_seq == 1 {
            return;
        }
        let (hi, lo) = (self.hi(), self.lo());
        let mut m = Msg::new(self.local.clone(), Dest::All, Vec::new());
        self.beats += 1;
        let beat = self.beats;
        m.push(NakHeader::Beat { hi, lo, beat }.encode());
        cx.down(m);
        let since = cx.now.saturating_sub(self.member_timeout);
        self.members.retain(|_, m| m.heard >= since);
        self.cut_laggards(cx);
        self.restabilize(cx);
    }

    /// Cuts off the members that have stayed more than `lag_limit` behind
    /// the group (its median member) for `lag_grace`: one slow member falls
    /// behind alone and is told to skip ahead, while a group that is slow
    /// as a whole holds the publisher back through the window instead
    /// (`admit`), so that a publisher faster than everyone loses no one.
    /// The grace spares a member that is only briefly behind (a pause, a
    /// burst of repairs): the publisher waits for it meanwhile.
    fn cut_laggards(&mut self, cx: &mut Cx<'_>) {
        if self.members.len() < 2 {
            return;
        }
        let mut uptos: Vec<u64> = self.members.values().map(|m| m.upto).collect();
        uptos.sort_unstable();
        let median = uptos[uptos.len() / 2];
        let (now, limit, grace) = (cx.now, self.lag_limit, self.lag_grace);
        let mut lagging: Vec<Arc<str>> = Vec::new();
        for (a, m) in self.members.iter_mut() {
            if m.upto + limit >= median {
                m.lagging_since = None;
                continue;
            }
            let since = *m.lagging_since.get_or_insert(now);
            if since + grace <= now {
                lagging.push(a.clone());
            }
        }
        let resume = self.hi() + 1;
        for a in lagging {
            self.members.remove(&a);
            self.cut_offs += 1;
            let inc = self.local.inc;
            self.send_to(&a, NakHeader::CutOff { inc, resume }, cx);
        }
    }

    fn restabilize(&mut self, cx: &mut Cx<'_>) {
        let hi = self.hi();
        let stable = self
            .members
            .values()
            .map(|m| m.upto.min(hi))
            .min()
            .unwrap_or(hi);
        if stable != self.stable {
            self.stable = stable;
            cx.control(Control::Stable { upto: stable });
        }
        let since = cx.now.saturating_sub(self.hold);
        while self.sent_at.front().is_some_and(|(_, at)| *at < since) {
            self.sent_at.pop_front();
        }
        let young = self.sent_at.front().map_or(hi, |(s, _)| s - 1);
        self.sent
            .collect(stable.min(young).min(hi.saturating_sub(self.retain)));
    }
}

impl Layer for Nak {
    fn kind(&self) -> LayerKind {
        LayerKind::Nak
    }

    /// A publisher whose window is full of messages some live member has
    /// not acknowledged waits: a lone laggard is cut off before (see
    /// `cut_laggards`), so the wait means the group as a whole is behind,
    /// and nothing is evicted unstable while the publisher could wait.
    fn admit(&self, _: Micros, _: usize) -> Result<(), Backpressure> {
        let outstanding = self.outstanding();
        if outstanding >= self.window {
            return Err(Backpressure::Window {
                outstanding,
                window: self.window,
            });
        }
        Ok(())
    }

    fn down(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        if msg.dest != Dest::All {
            msg.push(NakHeader::Pass.encode());
            return cx.down(msg);
        }
        // Near a full window, a laggard is cut off now rather than at the
        // next heartbeat, so that it does not shut the window first.
        if self.outstanding() >= self.window * 3 / 4 {
            self.cut_laggards(cx);
            self.restabilize(cx);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent_msgs += 1;
        self.evicted += self
            .sent
            .insert(seq, msg.clone(), self.window, self.max_bytes);
        self.sent_at.push_back((seq, cx.now));
        if self.sent_at.len() as u64 > self.window {
            self.sent_at.pop_front();
        }
        let lo = self.lo();
        msg.push(NakHeader::Data { seq, lo }.encode());
        cx.down(msg);
    }

    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>) {
        let Ok(h) = NakHeader::decode(header) else {
            return cx.refuse("bad_header");
        };
        let own = msg.origin == self.local;
        // The agent that sent a point-to-point message, as the transport knows it.
        let sender = msg.via.clone().unwrap_or_else(|| msg.origin.addr.clone());
        match h {
            NakHeader::Pass => cx.up(msg),
            NakHeader::Data { .. } if own => cx.up(msg),
            NakHeader::Data { seq, lo } => self.receive(seq, lo, msg, cx),
            // The origin's own recast coming back: delivered the first time.
            NakHeader::Recast { .. } if own => {}
            NakHeader::Recast { seq, lo, .. } => self.receive(seq, lo, msg, cx),
            NakHeader::Beat { .. } if own => {}
            NakHeader::Beat { hi, lo, .. } => {
                self.stream(&msg.origin, hi + 1, lo, cx);
                if let Some(st) = self.streams.get_mut(&msg.origin) {
                    st.origin_lo = st.origin_lo.max(lo);
                }
                self.note_hi(&msg.origin, hi, cx);
            }
            NakHeader::Ack { inc, upto } => {
                if inc != self.local.inc || upto > self.hi() {
                    return cx.refuse("stray_ack");
                }
                let m = self.members.entry(sender).or_insert(Member {
                    upto,
                    heard: 0,
                    lagging_since: None,
                });
                m.upto = m.upto.max(upto);
                m.heard = cx.now;
                self.restabilize(cx);
            }
            NakHeader::Nak { addr, inc, ranges } => {
                let stream = OriginId { addr, inc };
                self.serve(sender, stream, &ranges, cx);
            }
            NakHeader::CutOff { inc, resume } => {
                if inc == msg.origin.inc && sender == msg.origin.addr {
                    self.cut_off(&msg.origin, resume, cx);
                }
            }
        }
    }

    fn timer(&mut self, name: &'static str, cx: &mut Cx<'_>) {
        match name {
            "start" => {
                cx.set_timer("ack", cx.now + self.ack_period);
                cx.set_timer("beat", cx.now + self.beat_period);
            }
            "nak" => self.ask(cx),
            "ack" => self.acks(cx),
            "beat" => self.beat(cx),
            _ => {}
        }
    }

    fn control(&mut self, ctl: &Control, _: &mut Cx<'_>) {
        if let Control::Peers { repairers, .. } = ctl {
            self.repairers = repairers.clone();
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("sent", self.sent_msgs),
            ("delivered", self.delivered),
            ("duplicates", self.duplicates),
            ("requests", self.requests),
            ("retransmits", self.retransmits),
            ("recasts", self.recasts),
            ("resends_spared", self.resends_spared),
            ("subtree_repairs", self.subtree_repairs),
            ("cut_offs", self.cut_offs),
            ("skipped", self.skipped),
            ("evicted", self.evicted),
            ("repaired_over_1s", self.repaired[REPAIR_BUCKETS.len()]),
            ("repaired", self.repaired.iter().sum()),
            ("rtt_us", self.rtt.srtt.unwrap_or(0)),
            ("stable", self.stable),
            ("members", self.members.len() as u64),
            ("streams", self.streams.len() as u64),
            (
                "holes",
                self.streams.values().map(|s| s.missing.len() as u64).sum(),
            ),
            (
                "next",
                self.streams.values().map(|s| s.next).max().unwrap_or(0),
            ),
            ("hi", self.streams.values().map(|s| s.hi).max().unwrap_or(0)),
        ]);
        out.extend(REPAIR_BUCKETS.iter().map(|(_, n)| *n).zip(self.repaired));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn headers_round_trip() {
        for h in [
            NakHeader::Data { seq: 7, lo: 1 },
            NakHeader::Beat {
                hi: 9,
                lo: 3,
                beat: 4,
            },
            NakHeader::Ack { inc: 5, upto: 2 },
            NakHeader::Nak {
                addr: "x:1".into(),
                inc: 3,
                ranges: vec![(1, 4), (9, 9)],
            },
            NakHeader::CutOff { inc: 1, resume: 40 },
            NakHeader::Pass,
        ] {
            assert_eq!(NakHeader::decode(&h.encode()).unwrap(), h);
        }
        assert!(NakHeader::decode(&NakHeader::Data { seq: 0, lo: 0 }.encode()).is_err());
    }

    proptest! {
        #[test]
        fn hostile_headers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = NakHeader::decode(&b);
        }
    }
}
