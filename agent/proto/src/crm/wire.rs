//! CRM's messages between agents, in the service envelope, with the
//! bounded codec DDS's layers use. Every count and length is bounded
//! before anything is allocated; decoding never panics.
//!
//! ```text
//!  0 frame     group view stream origin-rank cast bytes      a view stack's frame
//!  1 progress  group view rank fifo[] total                  heartbeat and delivery progress
//!  2 join      group member
//!  3 leave     group member
//!  4 prepare   group view ballot                             phase 1a of the view change
//!  5 promise   group view ballot member accepted? flush      phase 1b
//!  6 refuse    group view ballot promised                    outbid
//!  7 accept    group view ballot decision                    phase 2a
//!  8 accepted  group view ballot member                      phase 2b
//!  9 decide    group decision                                the view after `view`
//! 10 welcome   group view state                              a joiner's first view
//! 11 excluded  group view                                    "you are not in my view"
//! 12 chunk     id index count bytes                          a piece of a larger message
//! ```

use super::member::{Ballot, MemberId, View};
use crate::dds::codec::{DecodeError, Reader, Writer};
use std::sync::Arc;

/// Most members of one group.
pub const MAX_MEMBERS: usize = 16;
/// Longest group name.
pub const MAX_GROUP_NAME: usize = 128;
/// Largest application message.
pub const MAX_DATA: usize = 1024 * 1024;
/// Entries one flush report or decision carries.
pub const MAX_ENTRIES: usize = 1 << 17;
/// Largest replicated state handed to a joiner.
pub const MAX_STATE: usize = 64 * 1024 * 1024;
/// Largest message before it is cut into chunks (below the transport's
/// 256 KiB message limit, with room for the envelope).
pub const MAX_PART: usize = 192 * 1024;
/// Largest message assembled from chunks.
pub const MAX_ASSEMBLED: usize = MAX_STATE + 1024 * 1024;
const MAX_ADDR: usize = 256;
const MAX_FRAME: usize = 1024 * 1024;

/// How a message is ordered and delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Per-sender order.
    Fifo,
    /// One order at every member, across senders.
    Total,
    /// Total order, delivered only once every member holds it.
    Safe,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fifo => "fifo",
            Mode::Total => "total",
            Mode::Safe => "safe",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Fifo, Mode::Total, Mode::Safe]
            .into_iter()
            .find(|m| m.name() == s)
    }

    pub(crate) fn tag(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_tag(t: u8) -> Result<Mode, DecodeError> {
        Ok(match t {
            0 => Mode::Fifo,
            1 => Mode::Total,
            2 => Mode::Safe,
            t => return Err(DecodeError::BadTag(t)),
        })
    }

    /// The view stream that carries messages of this mode.
    pub fn stream(self) -> Stream {
        match self {
            Mode::Fifo => Stream::Fifo,
            Mode::Total | Mode::Safe => Stream::Total,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The two stacks of a view: `fifo:frag:nak` and `total:frag:nak`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    Fifo = 0,
    Total = 1,
}

impl Stream {
    fn from_tag(t: u8) -> Result<Stream, DecodeError> {
        match t {
            0 => Ok(Stream::Fifo),
            1 => Ok(Stream::Total),
            t => Err(DecodeError::BadTag(t)),
        }
    }
}

/// A message delivered in a view: on the fifo stream the `idx`-th message
/// of the sender at `rank`; on the total stream the `idx`-th of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub stream: Stream,
    pub rank: u32,
    pub idx: u64,
    /// The sender's own number for the message in this view and stream
    /// (on the fifo stream, `idx`).
    pub seq: u64,
    pub mode: Mode,
    pub data: Arc<[u8]>,
}

/// What a member has delivered in its view when it promises: how far each
/// stream got, and the entries not yet known to be held by every member.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlushState {
    /// Per sender rank: fifo messages delivered.
    pub fifo: Vec<u64>,
    /// Total-stream messages delivered (in the stack's order).
    pub total: u64,
    pub entries: Vec<Entry>,
}

/// The decided successor of view `from`: its view, and the cut every
/// member that survives into it delivers in `from` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub from: u64,
    pub view: View,
    pub fifo_cut: Vec<u64>,
    pub total_cut: u64,
    /// Every entry above the least stability point of the promises, up
    /// to the cut: fifo ones by (rank, idx), then total ones by idx.
    pub fill: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrmMsg {
    Frame {
        group: Arc<str>,
        view: u64,
        stream: Stream,
        origin: u32,
        cast: bool,
        bytes: Vec<u8>,
    },
    Progress {
        group: Arc<str>,
        view: u64,
        rank: u32,
        fifo: Vec<u64>,
        total: u64,
    },
    Join {
        group: Arc<str>,
        member: MemberId,
    },
    Leave {
        group: Arc<str>,
        member: MemberId,
    },
    Prepare {
        group: Arc<str>,
        view: u64,
        ballot: Ballot,
    },
    Promise {
        group: Arc<str>,
        view: u64,
        ballot: Ballot,
        member: MemberId,
        accepted: Option<(Ballot, Decision)>,
        flush: FlushState,
    },
    Refuse {
        group: Arc<str>,
        view: u64,
        ballot: Ballot,
        promised: Ballot,
    },
    Accept {
        group: Arc<str>,
        view: u64,
        ballot: Ballot,
        decision: Decision,
    },
    Accepted {
        group: Arc<str>,
        view: u64,
        ballot: Ballot,
        member: MemberId,
    },
    Decide {
        group: Arc<str>,
        decision: Decision,
    },
    Welcome {
        group: Arc<str>,
        view: View,
        state: Vec<u8>,
    },
    Excluded {
        group: Arc<str>,
        view: u64,
    },
    Chunk {
        id: u64,
        index: u32,
        count: u32,
        bytes: Vec<u8>,
    },
}

impl CrmMsg {
    /// The group the message is for (None for a chunk).
    pub fn group(&self) -> Option<&Arc<str>> {
        use CrmMsg::*;
        match self {
            Frame { group, .. }
            | Progress { group, .. }
            | Join { group, .. }
            | Leave { group, .. }
            | Prepare { group, .. }
            | Promise { group, .. }
            | Refuse { group, .. }
            | Accept { group, .. }
            | Accepted { group, .. }
            | Decide { group, .. }
            | Welcome { group, .. }
            | Excluded { group, .. } => Some(group),
            Chunk { .. } => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        use CrmMsg::*;
        match self {
            Frame {
                group,
                view,
                stream,
                origin,
                cast,
                bytes,
            } => {
                w.u8(0)
                    .str(group)
                    .varint(*view)
                    .u8(*stream as u8)
                    .varint(*origin as u64)
                    .u8(*cast as u8)
                    .raw(bytes);
            }
            Progress {
                group,
                view,
                rank,
                fifo,
                total,
            } => {
                w.u8(1).str(group).varint(*view).varint(*rank as u64);
                counts(&mut w, fifo);
                w.varint(*total);
            }
            Join { group, member } => {
                w.u8(2).str(group);
                member_out(&mut w, member);
            }
            Leave { group, member } => {
                w.u8(3).str(group);
                member_out(&mut w, member);
            }
            Prepare {
                group,
                view,
                ballot,
            } => {
                w.u8(4).str(group).varint(*view);
                ballot_out(&mut w, ballot);
            }
            Promise {
                group,
                view,
                ballot,
                member,
                accepted,
                flush,
            } => {
                w.u8(5).str(group).varint(*view);
                ballot_out(&mut w, ballot);
                member_out(&mut w, member);
                match accepted {
                    None => {
                        w.u8(0);
                    }
                    Some((b, d)) => {
                        w.u8(1);
                        ballot_out(&mut w, b);
                        decision_out(&mut w, d);
                    }
                }
                counts(&mut w, &flush.fifo);
                w.varint(flush.total);
                entries_out(&mut w, &flush.entries);
            }
            Refuse {
                group,
                view,
                ballot,
                promised,
            } => {
                w.u8(6).str(group).varint(*view);
                ballot_out(&mut w, ballot);
                ballot_out(&mut w, promised);
            }
            Accept {
                group,
                view,
                ballot,
                decision,
            } => {
                w.u8(7).str(group).varint(*view);
                ballot_out(&mut w, ballot);
                decision_out(&mut w, decision);
            }
            Accepted {
                group,
                view,
                ballot,
                member,
            } => {
                w.u8(8).str(group).varint(*view);
                ballot_out(&mut w, ballot);
                member_out(&mut w, member);
            }
            Decide { group, decision } => {
                w.u8(9).str(group);
                decision_out(&mut w, decision);
            }
            Welcome { group, view, state } => {
                w.u8(10).str(group);
                view_out(&mut w, view);
                w.bytes(state);
            }
            Excluded { group, view } => {
                w.u8(11).str(group).varint(*view);
            }
            Chunk {
                id,
                index,
                count,
                bytes,
            } => {
                w.u8(12)
                    .varint(*id)
                    .varint(*index as u64)
                    .varint(*count as u64)
                    .raw(bytes);
            }
        }
        w.finish()
    }

    /// Decodes untrusted bytes.
    pub fn decode(b: &[u8]) -> Result<CrmMsg, DecodeError> {
        let mut r = Reader::new(b);
        let tag = r.u8()?;
        let m = if tag == 12 {
            let id = r.varint()?;
            let index = r.varint_max(u32::MAX as u64)? as u32;
            let count = r.varint_max((MAX_ASSEMBLED / 1024) as u64)? as u32;
            if index >= count {
                return Err(DecodeError::Invalid("chunk index"));
            }
            let bytes = r.rest().to_vec();
            if bytes.len() > MAX_PART {
                return Err(DecodeError::TooLong {
                    len: bytes.len() as u64,
                    max: MAX_PART,
                });
            }
            CrmMsg::Chunk {
                id,
                index,
                count,
                bytes,
            }
        } else {
            let group: Arc<str> = r.str(MAX_GROUP_NAME)?.into();
            match tag {
                0 => {
                    let view = r.varint()?;
                    let stream = Stream::from_tag(r.u8()?)?;
                    let origin = rank_in(&mut r)?;
                    let cast = flag(&mut r)?;
                    let bytes = r.rest();
                    if bytes.len() > MAX_FRAME {
                        return Err(DecodeError::TooLong {
                            len: bytes.len() as u64,
                            max: MAX_FRAME,
                        });
                    }
                    CrmMsg::Frame {
                        group,
                        view,
                        stream,
                        origin,
                        cast,
                        bytes: bytes.to_vec(),
                    }
                }
                1 => CrmMsg::Progress {
                    group,
                    view: r.varint()?,
                    rank: rank_in(&mut r)?,
                    fifo: counts_in(&mut r)?,
                    total: r.varint()?,
                },
                2 => CrmMsg::Join {
                    group,
                    member: member_in(&mut r)?,
                },
                3 => CrmMsg::Leave {
                    group,
                    member: member_in(&mut r)?,
                },
                4 => CrmMsg::Prepare {
                    group,
                    view: r.varint()?,
                    ballot: ballot_in(&mut r)?,
                },
                5 => {
                    let view = r.varint()?;
                    let ballot = ballot_in(&mut r)?;
                    let member = member_in(&mut r)?;
                    let accepted = match r.u8()? {
                        0 => None,
                        1 => Some((ballot_in(&mut r)?, decision_in(&mut r)?)),
                        t => return Err(DecodeError::BadTag(t)),
                    };
                    let fifo = counts_in(&mut r)?;
                    let total = r.varint()?;
                    let entries = entries_in(&mut r)?;
                    CrmMsg::Promise {
                        group,
                        view,
                        ballot,
                        member,
                        accepted,
                        flush: FlushState {
                            fifo,
                            total,
                            entries,
                        },
                    }
                }
                6 => CrmMsg::Refuse {
                    group,
                    view: r.varint()?,
                    ballot: ballot_in(&mut r)?,
                    promised: ballot_in(&mut r)?,
                },
                7 => CrmMsg::Accept {
                    group,
                    view: r.varint()?,
                    ballot: ballot_in(&mut r)?,
                    decision: decision_in(&mut r)?,
                },
                8 => CrmMsg::Accepted {
                    group,
                    view: r.varint()?,
                    ballot: ballot_in(&mut r)?,
                    member: member_in(&mut r)?,
                },
                9 => CrmMsg::Decide {
                    group,
                    decision: decision_in(&mut r)?,
                },
                10 => CrmMsg::Welcome {
                    group,
                    view: view_in(&mut r)?,
                    state: r.bytes(MAX_STATE)?.to_vec(),
                },
                11 => CrmMsg::Excluded {
                    group,
                    view: r.varint()?,
                },
                t => return Err(DecodeError::BadTag(t)),
            }
        };
        r.end()?;
        Ok(m)
    }
}

fn flag(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        t => Err(DecodeError::BadTag(t)),
    }
}

fn rank_in(r: &mut Reader<'_>) -> Result<u32, DecodeError> {
    Ok(r.varint_max(MAX_MEMBERS as u64 - 1)? as u32)
}

fn counts(w: &mut Writer, v: &[u64]) {
    w.varint(v.len() as u64);
    for c in v {
        w.varint(*c);
    }
}

fn counts_in(r: &mut Reader<'_>) -> Result<Vec<u64>, DecodeError> {
    let n = r.count(MAX_MEMBERS, 1)?;
    (0..n).map(|_| r.varint()).collect()
}

fn member_out(w: &mut Writer, m: &MemberId) {
    w.str(&m.addr).varint(m.inc).str(&m.zone);
}

fn member_in(r: &mut Reader<'_>) -> Result<MemberId, DecodeError> {
    let addr = r.str(MAX_ADDR)?;
    if addr.is_empty() {
        return Err(DecodeError::Invalid("empty member address"));
    }
    Ok(MemberId {
        addr: addr.into(),
        inc: r.varint()?,
        zone: r.str(MAX_ADDR)?.into(),
    })
}

fn ballot_out(w: &mut Writer, b: &Ballot) {
    w.varint(b.n);
    member_out(w, &b.by);
}

fn ballot_in(r: &mut Reader<'_>) -> Result<Ballot, DecodeError> {
    Ok(Ballot {
        n: r.varint()?,
        by: member_in(r)?,
    })
}

fn view_out(w: &mut Writer, v: &View) {
    w.varint(v.id).varint(v.members.len() as u64);
    for m in &v.members {
        member_out(w, m);
    }
}

fn view_in(r: &mut Reader<'_>) -> Result<View, DecodeError> {
    let id = r.varint()?;
    let n = r.count(MAX_MEMBERS, 2)?;
    if n == 0 {
        return Err(DecodeError::Invalid("empty view"));
    }
    let mut members: Vec<MemberId> = Vec::with_capacity(n);
    for _ in 0..n {
        let m = member_in(r)?;
        if members.iter().any(|x| x.addr == m.addr) {
            return Err(DecodeError::Invalid("an agent twice in a view"));
        }
        members.push(m);
    }
    Ok(View { id, members })
}

fn entries_out(w: &mut Writer, es: &[Entry]) {
    w.varint(es.len() as u64);
    for e in es {
        w.u8(e.stream as u8)
            .varint(e.rank as u64)
            .varint(e.idx)
            .varint(e.seq)
            .u8(e.mode.tag())
            .bytes(&e.data);
    }
}

fn entries_in(r: &mut Reader<'_>) -> Result<Vec<Entry>, DecodeError> {
    let n = r.count(MAX_ENTRIES, 6)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = Stream::from_tag(r.u8()?)?;
        let rank = rank_in(r)?;
        let idx = r.varint()?;
        let seq = r.varint()?;
        let mode = Mode::from_tag(r.u8()?)?;
        if idx == 0 || seq == 0 || mode.stream() != stream {
            return Err(DecodeError::Invalid("entry"));
        }
        out.push(Entry {
            stream,
            rank,
            idx,
            seq,
            mode,
            data: r.bytes(MAX_DATA)?.into(),
        });
    }
    Ok(out)
}

fn decision_out(w: &mut Writer, d: &Decision) {
    w.varint(d.from);
    view_out(w, &d.view);
    counts(w, &d.fifo_cut);
    w.varint(d.total_cut);
    entries_out(w, &d.fill);
}

fn decision_in(r: &mut Reader<'_>) -> Result<Decision, DecodeError> {
    let from = r.varint()?;
    let view = view_in(r)?;
    if view.id <= from {
        return Err(DecodeError::Invalid(
            "a decided view not after its predecessor",
        ));
    }
    Ok(Decision {
        from,
        view,
        fifo_cut: counts_in(r)?,
        total_cut: r.varint()?,
        fill: entries_in(r)?,
    })
}

/// Cuts an encoded message longer than [`MAX_PART`] into chunks numbered `id`.
pub fn split(id: u64, bytes: &[u8]) -> Vec<CrmMsg> {
    let count = bytes.len().div_ceil(MAX_PART).max(1) as u32;
    bytes
        .chunks(MAX_PART)
        .enumerate()
        .map(|(i, c)| CrmMsg::Chunk {
            id,
            index: i as u32,
            count,
            bytes: c.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(a: &str, inc: u64) -> MemberId {
        MemberId {
            addr: a.into(),
            inc,
            zone: format!("/{a}").into(),
        }
    }

    fn samples() -> Vec<CrmMsg> {
        let g: Arc<str> = "g".into();
        let b = Ballot {
            n: 3,
            by: m("a", 1),
        };
        let e = Entry {
            stream: Stream::Total,
            rank: 1,
            idx: 4,
            seq: 2,
            mode: Mode::Safe,
            data: Arc::from(&b"x"[..]),
        };
        let d = Decision {
            from: 2,
            view: View {
                id: 3,
                members: vec![m("a", 1), m("b", 2)],
            },
            fifo_cut: vec![1, 2],
            total_cut: 4,
            fill: vec![e.clone()],
        };
        vec![
            CrmMsg::Frame {
                group: g.clone(),
                view: 2,
                stream: Stream::Fifo,
                origin: 1,
                cast: true,
                bytes: vec![1, 2, 3],
            },
            CrmMsg::Progress {
                group: g.clone(),
                view: 2,
                rank: 0,
                fifo: vec![5, 6],
                total: 7,
            },
            CrmMsg::Join {
                group: g.clone(),
                member: m("c", 9),
            },
            CrmMsg::Leave {
                group: g.clone(),
                member: m("c", 9),
            },
            CrmMsg::Prepare {
                group: g.clone(),
                view: 2,
                ballot: b.clone(),
            },
            CrmMsg::Promise {
                group: g.clone(),
                view: 2,
                ballot: b.clone(),
                member: m("b", 2),
                accepted: Some((b.clone(), d.clone())),
                flush: FlushState {
                    fifo: vec![1, 2],
                    total: 4,
                    entries: vec![e],
                },
            },
            CrmMsg::Refuse {
                group: g.clone(),
                view: 2,
                ballot: b.clone(),
                promised: b.clone(),
            },
            CrmMsg::Accept {
                group: g.clone(),
                view: 2,
                ballot: b.clone(),
                decision: d.clone(),
            },
            CrmMsg::Accepted {
                group: g.clone(),
                view: 2,
                ballot: b,
                member: m("b", 2),
            },
            CrmMsg::Decide {
                group: g.clone(),
                decision: d.clone(),
            },
            CrmMsg::Welcome {
                group: g.clone(),
                view: d.view.clone(),
                state: vec![9; 10],
            },
            CrmMsg::Excluded { group: g, view: 5 },
            CrmMsg::Chunk {
                id: 1,
                index: 0,
                count: 2,
                bytes: vec![1],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in samples() {
            assert_eq!(CrmMsg::decode(&msg.encode()).unwrap(), msg);
        }
    }

    #[test]
    fn a_long_message_is_cut_into_chunks_under_the_part_limit() {
        let parts = split(7, &vec![1; MAX_PART * 2 + 1]);
        assert_eq!(parts.len(), 3);
        for p in &parts {
            let b = p.encode();
            assert!(b.len() <= MAX_PART + 16);
            assert_eq!(&CrmMsg::decode(&b).unwrap(), p);
        }
    }

    #[test]
    fn hostile_views_are_refused() {
        let mut w = Writer::new();
        w.u8(10).str("g").varint(1).varint(2);
        member_out(&mut w, &m("a", 1));
        member_out(&mut w, &m("a", 2));
        w.bytes(&[]);
        assert!(CrmMsg::decode(&w.finish()).is_err());
        let mut w = Writer::new();
        w.u8(1).str("g").varint(1).varint(u32::MAX as u64);
        assert!(CrmMsg::decode(&w.finish()).is_err());
    }

    proptest! {
        #[test]
        fn decoding_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = CrmMsg::decode(&b);
        }

        #[test]
        fn truncations_of_valid_messages_never_panic(cut in 0usize..200) {
            for msg in samples() {
                let b = msg.encode();
                let _ = CrmMsg::decode(&b[..cut.min(b.len())]);
            }
        }
    }
}
