//! `frag`: fragmentation and reassembly. A message that fits in one
//! fragment travels whole behind a one-byte header; a larger one is sealed
//! (with the headers above it) and cut into numbered fragments, reassembled
//! at the receiver in any order. Partial messages are bounded in number,
//! bytes and age; the oldest goes first when a bound is hit.
//!
//! Header: `0` (whole) | `1, id, index, count` (varints).

use crate::dds::codec::{DecodeError, Reader, Writer};
use crate::dds::layer::{Cx, Layer, Msg, OriginId};
use crate::dds::params::{MAX_MESSAGE, Params};
use crate::dds::spec::LayerKind;
use crate::row::Micros;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragHeader {
    Whole,
    Part { id: u64, index: u32, count: u32 },
}

impl FragHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            FragHeader::Whole => {
                w.u8(0);
            }
            FragHeader::Part { id, index, count } => {
                w.u8(1)
                    .varint(*id)
                    .varint(*index as u64)
                    .varint(*count as u64);
            }
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<FragHeader, DecodeError> {
        let mut r = Reader::new(b);
        let h = match r.u8()? {
            0 => FragHeader::Whole,
            1 => {
                let id = r.varint()?;
                let index = r.varint_max(u32::MAX as u64)? as u32;
                let count = r.varint_max(u32::MAX as u64)? as u32;
                if count < 2 || index >= count {
                    return Err(DecodeError::Invalid("fragment index"));
                }
                FragHeader::Part { id, index, count }
            }
            t => return Err(DecodeError::BadTag(t)),
        };
        r.end()?;
        Ok(h)
    }
}

struct Partial {
    started: Micros,
    pieces: Vec<Option<Vec<u8>>>,
    have: usize,
    bytes: usize,
}

pub struct Frag {
    size: usize,
    budget: usize,
    max_partials: usize,
    timeout: Micros,
    next_id: u64,
    partials: BTreeMap<(OriginId, u64), Partial>,
    held: usize,
    sent_parts: u64,
    reassembled: u64,
    evicted: u64,
}

impl Frag {
    pub fn new(p: &Params) -> Frag {
        Frag {
            size: p.frag_size.max(64),
            budget: p.frag_budget,
            max_partials: p.frag_partials.max(1),
            timeout: p.frag_timeout,
            next_id: 0,
            partials: BTreeMap::new(),
            held: 0,
            sent_parts: 0,
            reassembled: 0,
            evicted: 0,
        }
    }

    fn max_count(&self) -> u32 {
        (MAX_MESSAGE + 1024).div_ceil(self.size) as u32 + 1
    }

    fn drop_partial(&mut self, key: &(OriginId, u64)) {
        if let Some(p) = self.partials.remove(key) {
            self.held -= p.bytes;
            self.evicted += 1;
        }
    }

    fn oldest(&self) -> Option<(OriginId, u64)> {
        self.partials
            .iter()
            .min_by_key(|(_, p)| p.started)
            .map(|(k, _)| k.clone())
    }
}

impl Layer for Frag {
    fn kind(&self) -> LayerKind {
        LayerKind::Frag
    }

    fn down(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        if msg.wire_len() <= self.size {
            msg.push(FragHeader::Whole.encode());
            cx.down(msg);
            return;
        }
        let sealed = msg.seal();
        let count = sealed.len().div_ceil(self.size) as u32;
        let id = self.next_id;
        self.next_id += 1;
        for (index, chunk) in sealed.chunks(self.size).enumerate() {
            let mut part = Msg::new(msg.origin.clone(), msg.dest.clone(), chunk.to_vec());
            part.push(
                FragHeader::Part {
                    id,
                    index: index as u32,
                    count,
                }
                .encode(),
            );
            self.sent_parts += 1;
            cx.down(part);
        }
    }

    fn up(&mut self, header: &[u8], mut msg: Msg, cx: &mut Cx<'_>) {
        let (id, index, count) = match FragHeader::decode(header) {
            Ok(FragHeader::Whole) => return cx.up(msg),
            Ok(FragHeader::Part { id, index, count }) => (id, index as usize, count),
            Err(_) => return cx.refuse("bad_header"),
        };
        if count > self.max_count() || msg.body.len() > self.size || msg.header_count() != 0 {
            return cx.refuse("oversized");
        }
        let key = (msg.origin.clone(), id);
        if let Some(p) = self.partials.get(&key)
            && p.pieces.len() != count as usize
        {
            return cx.refuse("inconsistent_count");
        }
        if !self.partials.contains_key(&key) {
            while self.partials.len() >= self.max_partials {
                let Some(old) = self.oldest() else { break };
                self.drop_partial(&old);
            }
            self.partials.insert(
                key.clone(),
                Partial {
                    started: cx.now,
                    pieces: vec![None; count as usize],
                    have: 0,
                    bytes: 0,
                },
            );
            cx.arm("reap", cx.now + self.timeout);
        }
        let len = msg.body.len();
        while self.held + len > self.budget {
            match self.oldest() {
                Some(old) if old != key => self.drop_partial(&old),
                _ => {
                    self.drop_partial(&key);
                    return cx.refuse("over_budget");
                }
            }
        }
        let p = self.partials.get_mut(&key).expect("inserted");
        if p.pieces[index].is_some() {
            return cx.refuse("duplicate");
        }
        p.pieces[index] = Some(std::mem::take(&mut msg.body));
        p.have += 1;
        p.bytes += len;
        self.held += len;
        if p.have < p.pieces.len() {
            return;
        }
        let p = self.partials.remove(&key).expect("present");
        self.held -= p.bytes;
        let mut whole = Vec::with_capacity(p.bytes);
        for piece in p.pieces.into_iter().flatten() {
            whole.extend_from_slice(&piece);
        }
        if msg.unseal(&whole).is_err() {
            return cx.refuse("bad_reassembly");
        }
        self.reassembled += 1;
        cx.up(msg);
    }

    fn timer(&mut self, name: &'static str, cx: &mut Cx<'_>) {
        if name != "reap" {
            return;
        }
        let stale: Vec<_> = self
            .partials
            .iter()
            .filter(|(_, p)| p.started + self.timeout <= cx.now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.drop_partial(&k);
        }
        if let Some(first) = self.partials.values().map(|p| p.started).min() {
            cx.set_timer("reap", first + self.timeout);
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("sent_parts", self.sent_parts),
            ("reassembled", self.reassembled),
            ("evicted", self.evicted),
            ("held_bytes", self.held as u64),
        ]);
    }
}
