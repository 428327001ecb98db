//! `fifo`: each origin's messages delivered in the order it sent them.
//!
//! Every message for all members is numbered per origin; a receiver holds
//! those that come early until their turn (at most `order_buffer`). Where
//! a stream starts comes from `nak` below ([`Control::Synced`]): from the
//! origin's first message, or from the first one seen. When `nak` reports
//! that this member was cut off, the held messages are delivered from the
//! lowest on.
//!
//! Header: `0 seq` (varint) | `1` pass.

use crate::dds::codec::{DecodeError, Reader, Writer};
use crate::dds::layer::{Control, Cx, Dest, Layer, Msg, OriginId};
use crate::dds::params::Params;
use crate::dds::spec::LayerKind;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FifoHeader {
    Data { seq: u64 },
    Pass,
}

impl FifoHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            FifoHeader::Data { seq } => w.u8(0).varint(*seq),
            FifoHeader::Pass => w.u8(1),
        };
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<FifoHeader, DecodeError> {
        let mut r = Reader::new(b);
        let h = match r.u8()? {
            0 => FifoHeader::Data {
                seq: r.varint_max(u64::MAX - 1)?,
            },
            1 => FifoHeader::Pass,
            t => return Err(DecodeError::BadTag(t)),
        };
        r.end()?;
        Ok(h)
    }
}

#[derive(Default)]
struct Order {
    /// The next number to deliver; None until the stream's start is known.
    next: Option<u64>,
    held: BTreeMap<u64, Msg>,
}

pub struct Fifo {
    next_seq: u64,
    limit: usize,
    streams: BTreeMap<OriginId, Order>,
    held: usize,
    delivered: u64,
    overflow: u64,
}

impl Fifo {
    pub fn new(p: &Params) -> Fifo {
        Fifo {
            next_seq: 1,
            limit: p.order_buffer.max(1),
            streams: BTreeMap::new(),
            held: 0,
            delivered: 0,
            overflow: 0,
        }
    }

    fn drain(&mut self, origin: &OriginId, cx: &mut Cx<'_>) {
        let Some(o) = self.streams.get_mut(origin) else {
            return;
        };
        let Some(mut next) = o.next else { return };
        while let Some(m) = o.held.remove(&next) {
            self.held -= 1;
            self.delivered += 1;
            next += 1;
            cx.up(m);
        }
        o.next = Some(next);
    }
}

impl Layer for Fifo {
    fn kind(&self) -> LayerKind {
        LayerKind::Fifo
    }

    fn down(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        let h = if msg.dest == Dest::All {
            self.next_seq += 1;
            FifoHeader::Data {
                seq: self.next_seq - 1,
            }
        } else {
            FifoHeader::Pass
        };
        msg.push(h.encode());
        cx.down(msg);
    }

    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>) {
        let seq = match FifoHeader::decode(header) {
            Ok(FifoHeader::Pass) => return cx.up(msg),
            Ok(FifoHeader::Data { seq }) => seq,
            Err(_) => return cx.refuse("bad_header"),
        };
        let origin = msg.origin.clone();
        let o = self.streams.entry(origin.clone()).or_default();
        let next = *o.next.get_or_insert(seq);
        if seq < next || o.held.contains_key(&seq) {
            return cx.refuse("late_or_duplicate");
        }
        if self.held >= self.limit {
            self.overflow += 1;
            return cx.refuse("overflow");
        }
        o.held.insert(seq, msg);
        self.held += 1;
        self.drain(&origin, cx);
    }

    fn control(&mut self, ctl: &Control, cx: &mut Cx<'_>) {
        match ctl {
            Control::Synced { origin, from_start } => {
                let o = self.streams.entry(origin.clone()).or_default();
                if *from_start {
                    o.next = Some(1);
                }
            }
            Control::Skipped { origin, .. } => {
                if let Some(o) = self.streams.get_mut(origin) {
                    o.next = o.held.keys().next().copied();
                }
                self.drain(origin, cx);
            }
            _ => {}
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("delivered", self.delivered),
            ("held", self.held as u64),
            ("overflow", self.overflow),
        ]);
    }
}
