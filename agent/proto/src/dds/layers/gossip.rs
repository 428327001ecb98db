//! `gossip`: bimodal-multicast repair between members. Every frame for all
//! members is numbered per origin; each member keeps the last
//! `gossip_buffer` frames it saw and, every `gossip_period`, sends one
//! random peer (a member in its own zone, from the channel) a digest: per
//! stream, the highest number seen and the holes in the last
//! `gossip_window`. The peer answers with the frames it holds of those
//! holes and of what lies past the digest's highest, at most
//! `gossip_budget` per digest. Frames seen twice are dropped here, before
//! `nak`. Repair thus comes from a neighbour, and `nak` asks further away
//! only for what gossip did not bring in time.
//!
//! Header: `0 seq` data | `1` pass | `2 n (addr inc hi m seq*m)*n` digest.

use crate::dds::codec::{DecodeError, Reader, Writer};
use crate::dds::layer::{Control, Cx, Dest, Layer, Msg, OriginId};
use crate::dds::params::Params;
use crate::dds::spec::LayerKind;
use crate::row::Micros;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

const MAX_ENTRIES: usize = 16;
const MAX_HOLES: usize = 64;
const MAX_ADDR: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestEntry {
    pub origin: OriginId,
    pub hi: u64,
    pub holes: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipHeader {
    Data { seq: u64 },
    Pass,
    Digest(Vec<DigestEntry>),
}

impl GossipHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            GossipHeader::Data { seq } => {
                w.u8(0).varint(*seq);
            }
            GossipHeader::Pass => {
                w.u8(1);
            }
            GossipHeader::Digest(entries) => {
                w.u8(2).varint(entries.len() as u64);
                for e in entries {
                    w.str(&e.origin.addr)
                        .varint(e.origin.inc)
                        .varint(e.hi)
                        .varint(e.holes.len() as u64);
                    for h in &e.holes {
                        w.varint(*h);
                    }
                }
            }
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<GossipHeader, DecodeError> {
        let mut r = Reader::new(b);
        let h = match r.u8()? {
            0 => GossipHeader::Data { seq: r.varint()? },
            1 => GossipHeader::Pass,
            2 => {
                let n = r.count(MAX_ENTRIES, 4)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let addr: Arc<str> = r.str(MAX_ADDR)?.into();
                    let inc = r.varint()?;
                    let hi = r.varint()?;
                    let m = r.count(MAX_HOLES, 1)?;
                    let mut holes = Vec::with_capacity(m);
                    for _ in 0..m {
                        holes.push(r.varint()?);
                    }
                    entries.push(DigestEntry {
                        origin: OriginId { addr, inc },
                        hi,
                        holes,
                    });
                }
                GossipHeader::Digest(entries)
            }
            t => return Err(DecodeError::BadTag(t)),
        };
        r.end()?;
        Ok(h)
    }
}

#[derive(Default)]
struct Seen {
    first: u64,
    hi: u64,
    got: BTreeSet<u64>,
}

pub struct Gossip {
    local: OriginId,
    period: Micros,
    buffer: usize,
    window: u64,
    budget: usize,
    next_seq: u64,
    seen: BTreeMap<OriginId, Seen>,
    store: BTreeMap<(OriginId, u64), Msg>,
    fifo: VecDeque<(OriginId, u64)>,
    peers: Vec<Arc<str>>,
    digests: u64,
    repairs_sent: u64,
    repairs_got: u64,
    duplicates: u64,
}

impl Gossip {
    pub fn new(local: OriginId, p: &Params) -> Gossip {
        Gossip {
            local,
            period: p.gossip_period.max(1),
            buffer: p.gossip_buffer.max(1),
            window: p.gossip_window.max(1),
            budget: p.gossip_budget,
            next_seq: 1,
            seen: BTreeMap::new(),
            store: BTreeMap::new(),
            fifo: VecDeque::new(),
            peers: Vec::new(),
            digests: 0,
            repairs_sent: 0,
            repairs_got: 0,
            duplicates: 0,
        }
    }

    fn keep(&mut self, origin: OriginId, seq: u64, msg: Msg) {
        let s = self.seen.entry(origin.clone()).or_insert_with(|| Seen {
            first: seq,
            hi: seq,
            got: BTreeSet::new(),
        });
        s.first = s.first.min(seq);
        s.hi = s.hi.max(seq);
        s.got.insert(seq);
        let floor = s.hi.saturating_sub(self.window);
        while s.got.first().is_some_and(|f| *f <= floor) {
            s.got.pop_first();
        }
        s.first = s.first.max(floor + 1).min(seq);
        self.store.insert((origin.clone(), seq), msg);
        self.fifo.push_back((origin, seq));
        while self.fifo.len() > self.buffer {
            if let Some(k) = self.fifo.pop_front() {
                self.store.remove(&k);
            }
        }
        if self.seen.len() > self.buffer {
            let stalest = self.seen.keys().next().cloned();
            if let Some(o) = stalest {
                self.seen.remove(&o);
            }
        }
    }

    fn digest(&self) -> Vec<DigestEntry> {
        let mut out: Vec<DigestEntry> = self
            .seen
            .iter()
            .filter(|(o, _)| **o != self.local)
            .map(|(o, s)| DigestEntry {
                origin: o.clone(),
                hi: s.hi,
                holes: (s.first.max(s.hi.saturating_sub(self.window) + 1)..=s.hi)
                    .filter(|q| !s.got.contains(q))
                    .take(MAX_HOLES)
                    .collect(),
            })
            .collect();
        // The streams with most holes first.
        out.sort_by_key(|e| std::cmp::Reverse(e.holes.len()));
        out.truncate(MAX_ENTRIES);
        out
    }

    fn answer(&mut self, to: &Arc<str>, entries: &[DigestEntry], cx: &mut Cx<'_>) {
        let mut budget = self.budget;
        for e in entries {
            let mine = self.seen.get(&e.origin).map_or(0, |s| s.hi);
            let past = (e.hi + 1..=mine).take(self.budget);
            for seq in e.holes.iter().copied().chain(past) {
                if budget == 0 {
                    return;
                }
                if let Some(m) = self.store.get(&(e.origin.clone(), seq)) {
                    let mut m = m.clone();
                    m.dest = Dest::Peer(to.clone());
                    m.push(GossipHeader::Data { seq }.encode());
                    budget -= 1;
                    self.repairs_sent += 1;
                    cx.down(m);
                }
            }
        }
    }
}

impl Layer for Gossip {
    fn kind(&self) -> LayerKind {
        LayerKind::Gossip
    }

    fn down(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        if msg.dest != Dest::All {
            msg.push(GossipHeader::Pass.encode());
            return cx.down(msg);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.keep(msg.origin.clone(), seq, msg.clone());
        msg.push(GossipHeader::Data { seq }.encode());
        cx.down(msg);
    }

    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>) {
        match GossipHeader::decode(header) {
            Err(_) => cx.refuse("bad_header"),
            Ok(GossipHeader::Pass) => cx.up(msg),
            Ok(GossipHeader::Data { .. }) if msg.origin == self.local => cx.up(msg),
            Ok(GossipHeader::Data { seq }) => {
                let dup = self
                    .seen
                    .get(&msg.origin)
                    .is_some_and(|s| s.got.contains(&seq) || seq + self.window <= s.hi);
                if dup {
                    self.duplicates += 1;
                    return;
                }
                if msg.dest != Dest::All {
                    self.repairs_got += 1;
                }
                self.keep(msg.origin.clone(), seq, msg.clone());
                cx.up(msg);
            }
            Ok(GossipHeader::Digest(entries)) => {
                let to = msg.via.clone().unwrap_or_else(|| msg.origin.addr.clone());
                self.answer(&to, &entries, cx);
            }
        }
    }

    fn timer(&mut self, name: &'static str, cx: &mut Cx<'_>) {
        if name != "start" && name != "digest" {
            return;
        }
        cx.set_timer("digest", cx.now + self.period);
        let others: Vec<&Arc<str>> = self
            .peers
            .iter()
            .filter(|p| ***p != *self.local.addr)
            .collect();
        if others.is_empty() {
            return;
        }
        let to = others[cx.rng.random_range(0..others.len())].clone();
        let entries = self.digest();
        if entries.is_empty() {
            return;
        }
        let mut m = Msg::new(self.local.clone(), Dest::Peer(to), Vec::new());
        m.push(GossipHeader::Digest(entries).encode());
        self.digests += 1;
        cx.down(m);
    }

    fn control(&mut self, ctl: &Control, _: &mut Cx<'_>) {
        if let Control::Peers { gossip, .. } = ctl {
            self.peers = gossip.clone();
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("digests", self.digests),
            ("repairs_sent", self.repairs_sent),
            ("repairs_got", self.repairs_got),
            ("duplicates", self.duplicates),
        ]);
    }
}
