//! `total`: one delivery order for every member, across origins, set by a
//! sequencer (the channel's coordinator), JGroups SEQUENCER style with the
//! order sent apart from the data.
//!
//! Each origin numbers its messages (`tseq`); the sequencer, a member like
//! any other, takes them in each origin's order and gives each the next
//! global number, sending the assignments in batched order messages in its
//! own stream (made reliable by `nak` below). A member delivers a message
//! once its global number is the next one and it holds both the message
//! and its assignment. Where the global sequence starts comes from `nak`
//! ([`Control::Synced`] for the sequencer's stream). A sequencer that
//! crashes stops the order until it is back (failing over the sequencer
//! needs agreement on what it had ordered: the view change of CRM's
//! virtual synchrony layer).
//!
//! Header: `0 tseq` data | `1 g0 n (addr inc t0 count)*n` order | `2` pass.

use crate::dds::codec::{DecodeError, Reader, Writer};
use crate::dds::layer::{Control, Cx, Dest, Layer, Msg, OriginId};
use crate::dds::params::Params;
use crate::dds::spec::LayerKind;
use crate::row::Micros;
use std::collections::BTreeMap;
use std::sync::Arc;

const MAX_RUNS: usize = 32;
const MAX_ADDR: usize = 256;

/// Consecutive messages of one origin given consecutive global numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub origin: OriginId,
    pub t0: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TotalHeader {
    Data { tseq: u64 },
    Order { g0: u64, runs: Vec<Run> },
    Pass,
}

impl TotalHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            TotalHeader::Data { tseq } => {
                w.u8(0).varint(*tseq);
            }
            TotalHeader::Order { g0, runs } => {
                w.u8(1).varint(*g0).varint(runs.len() as u64);
                for r in runs {
                    w.str(&r.origin.addr)
                        .varint(r.origin.inc)
                        .varint(r.t0)
                        .varint(r.count);
                }
            }
            TotalHeader::Pass => {
                w.u8(2);
            }
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<TotalHeader, DecodeError> {
        let mut r = Reader::new(b);
        let h = match r.u8()? {
            0 => TotalHeader::Data { tseq: r.varint()? },
            1 => {
                let g0 = r.varint()?;
                let n = r.count(MAX_RUNS, 4)?;
                let mut runs = Vec::with_capacity(n);
                let mut total: u64 = 0;
                for _ in 0..n {
                    let addr: Arc<str> = r.str(MAX_ADDR)?.into();
                    let inc = r.varint()?;
                    let t0 = r.varint()?;
                    let count = r.varint_max(1 << 20)?;
                    total += count;
                    if count == 0 || t0 == 0 || t0.checked_add(count).is_none() {
                        return Err(DecodeError::Invalid("order run"));
                    }
                    runs.push(Run {
                        origin: OriginId { addr, inc },
                        t0,
                        count,
                    });
                }
                if g0 == 0 || g0.checked_add(total).is_none() {
                    return Err(DecodeError::Invalid("global number"));
                }
                TotalHeader::Order { g0, runs }
            }
            2 => TotalHeader::Pass,
            t => return Err(DecodeError::BadTag(t)),
        };
        r.end()?;
        Ok(h)
    }
}

pub struct Total {
    local: OriginId,
    sequencer: Arc<str>,
    limit: usize,
    delay: Micros,
    next_tseq: u64,
    /// Messages waiting for their assignment or their turn.
    pending: BTreeMap<(OriginId, u64), Msg>,
    /// Global numbers assigned and not yet delivered.
    order: BTreeMap<u64, (OriginId, u64)>,
    next_g: Option<u64>,
    /// The sequencer's streams: the next number of each origin to assign.
    assign_next: BTreeMap<OriginId, u64>,
    next_assign: u64,
    batch: Vec<Run>,
    batch_g0: u64,
    delivered: u64,
    orders_sent: u64,
    overflow: u64,
}

impl Total {
    pub fn new(local: OriginId, sequencer: Arc<str>, p: &Params) -> Total {
        Total {
            local,
            sequencer,
            limit: p.order_buffer.max(1),
            delay: p.order_delay,
            next_tseq: 1,
            pending: BTreeMap::new(),
            order: BTreeMap::new(),
            next_g: None,
            assign_next: BTreeMap::new(),
            next_assign: 1,
            batch: Vec::new(),
            batch_g0: 1,
            delivered: 0,
            orders_sent: 0,
            overflow: 0,
        }
    }

    fn is_sequencer(&self) -> bool {
        self.local.addr == self.sequencer
    }

    /// The sequencer: numbers what is next in each origin's order.
    fn assign(&mut self, origin: &OriginId, cx: &mut Cx<'_>) {
        let Some(mut t) = self.assign_next.get(origin).copied() else {
            return;
        };
        while self.pending.contains_key(&(origin.clone(), t)) {
            if self.batch.is_empty() {
                self.batch_g0 = self.next_assign;
                cx.arm("order", cx.now + self.delay);
            }
            match self.batch.last_mut() {
                Some(r) if r.origin == *origin && r.t0 + r.count == t => r.count += 1,
                _ => self.batch.push(Run {
                    origin: origin.clone(),
                    t0: t,
                    count: 1,
                }),
            }
            self.next_assign += 1;
            t += 1;
            if self.batch.len() >= MAX_RUNS {
                self.flush(cx);
            }
        }
        self.assign_next.insert(origin.clone(), t);
    }

    fn flush(&mut self, cx: &mut Cx<'_>) {
        if self.batch.is_empty() {
            return;
        }
        let runs = std::mem::take(&mut self.batch);
        let mut m = Msg::new(self.local.clone(), Dest::All, Vec::new());
        m.push(
            TotalHeader::Order {
                g0: self.batch_g0,
                runs,
            }
            .encode(),
        );
        self.orders_sent += 1;
        cx.down(m);
    }

    fn deliver(&mut self, cx: &mut Cx<'_>) {
        let Some(mut g) = self.next_g else { return };
        while let Some(key) = self.order.get(&g) {
            let Some(m) = self.pending.remove(key) else {
                break;
            };
            self.order.remove(&g);
            self.delivered += 1;
            g += 1;
            cx.up(m);
        }
        self.next_g = Some(g);
    }

    fn bound(&mut self) {
        while self.pending.len() > self.limit {
            self.pending.pop_first();
            self.overflow += 1;
        }
        while self.order.len() > self.limit {
            self.order.pop_first();
            self.overflow += 1;
        }
    }
}

impl Layer for Total {
    fn kind(&self) -> LayerKind {
        LayerKind::Total
    }

    fn down(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        let h = if msg.dest == Dest::All {
            self.next_tseq += 1;
            TotalHeader::Data {
                tseq: self.next_tseq - 1,
            }
        } else {
            TotalHeader::Pass
        };
        msg.push(h.encode());
        cx.down(msg);
    }

    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>) {
        match TotalHeader::decode(header) {
            Err(_) => cx.refuse("bad_header"),
            Ok(TotalHeader::Pass) => cx.up(msg),
            Ok(TotalHeader::Data { tseq }) => {
                let origin = msg.origin.clone();
                self.pending.insert((origin.clone(), tseq), msg);
                if self.is_sequencer() {
                    self.assign_next.entry(origin.clone()).or_insert(tseq);
                    self.assign(&origin, cx);
                }
                self.bound();
                self.deliver(cx);
            }
            Ok(TotalHeader::Order { g0, runs }) => {
                if *msg.origin.addr != *self.sequencer {
                    return cx.refuse("order_not_from_sequencer");
                }
                self.next_g.get_or_insert(g0);
                let mut g = g0;
                for r in runs {
                    for k in 0..r.count {
                        if self.next_g.is_some_and(|n| g >= n) {
                            self.order.insert(g, (r.origin.clone(), r.t0 + k));
                        }
                        g += 1;
                    }
                }
                self.bound();
                self.deliver(cx);
            }
        }
    }

    fn timer(&mut self, name: &'static str, cx: &mut Cx<'_>) {
        if name == "order" {
            self.flush(cx);
        }
    }

    fn control(&mut self, ctl: &Control, cx: &mut Cx<'_>) {
        match ctl {
            Control::Synced { origin, from_start } => {
                if *origin.addr == *self.sequencer && *from_start && self.next_g.is_none() {
                    self.next_g = Some(1);
                }
                if self.is_sequencer() && *from_start {
                    self.assign_next.entry(origin.clone()).or_insert(1);
                }
            }
            Control::Skipped { origin, .. } if *origin.addr == *self.sequencer => {
                self.next_g = self.order.keys().next().copied();
                self.deliver(cx);
            }
            _ => {}
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("delivered", self.delivered),
            ("orders_sent", self.orders_sent),
            ("pending", self.pending.len() as u64),
            ("overflow", self.overflow),
        ]);
    }
}
