//! The replicated endpoint: a deterministic service run by every member
//! of a group, answering each client request exactly once.
//!
//! A request carries a client id and a sequence number. The member that
//! takes it sends it to the group in safe mode (totally ordered, and
//! delivered only once every member holds it, so a reply is never given
//! for a request a crash could lose). Every member applies it in that
//! order. The client table (Viewstamped Replication's) keeps each client's
//! last sequence number and reply, and is part of the replicated state:
//! a request retried at another member, after the first one crashed, gets
//! the reply of its first execution instead of running twice.
//!
//! Invariants:
//! - a client has at most one request outstanding: a request numbered
//!   below its last is answered [`Reply::Stale`] and not run;
//! - the table holds at most [`MAX_CLIENTS`]; the client whose last
//!   request is oldest in the total order goes first, the same on every
//!   member;
//! - snapshots carry the table with the state, so joiners answer retries
//!   as the old members would.

use super::group::Replica;
use super::member::MemberId;
use super::wire::Mode;
use std::collections::BTreeMap;

/// Clients remembered at once.
pub const MAX_CLIENTS: usize = 65_536;
/// Largest operation or reply.
pub const MAX_OP: usize = 256 * 1024;
/// First byte of an encoded request: tells requests from other messages.
const REQUEST_TAG: u8 = 0xE7;
const REPLY_DONE: u8 = 0;
const REPLY_STALE: u8 = 1;

/// A deterministic service a group replicates behind the endpoint.
pub trait StateMachine: Send {
    /// Runs one operation; the same operations in the same order give
    /// the same replies and state on every member.
    fn apply(&mut self, op: &[u8]) -> Vec<u8>;
    fn snapshot(&self) -> Vec<u8>;
    /// Restores a snapshot from untrusted bytes.
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
}

/// One client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub client: u64,
    pub seq: u64,
    pub op: Vec<u8>,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + self.op.len());
        out.push(REQUEST_TAG);
        out.extend_from_slice(&self.client.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.op);
        out
    }

    /// The request in a delivered message, None for other messages.
    pub fn decode(data: &[u8]) -> Option<Request> {
        let (&tag, rest) = data.split_first()?;
        if tag != REQUEST_TAG || rest.len() < 16 || rest.len() - 16 > MAX_OP {
            return None;
        }
        Some(Request {
            client: u64::from_be_bytes(rest[..8].try_into().ok()?),
            seq: u64::from_be_bytes(rest[8..16].try_into().ok()?),
            op: rest[16..].to_vec(),
        })
    }

    /// Client and number of a request, without copying its operation.
    pub fn key_of(data: &[u8]) -> Option<(u64, u64)> {
        if data.first() != Some(&REQUEST_TAG) || data.len() < 17 {
            return None;
        }
        Some((
            u64::from_be_bytes(data[1..9].try_into().ok()?),
            u64::from_be_bytes(data[9..17].try_into().ok()?),
        ))
    }
}

/// What the endpoint answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The service's reply (the same for every retry of the request).
    Done(Vec<u8>),
    /// The client has sent a later request since: this one is not run.
    Stale { last: u64 },
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Done(r) => {
                let mut out = Vec::with_capacity(1 + r.len());
                out.push(REPLY_DONE);
                out.extend_from_slice(r);
                out
            }
            Reply::Stale { last } => {
                let mut out = vec![REPLY_STALE];
                out.extend_from_slice(&last.to_be_bytes());
                out
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<Reply> {
        match b.split_first()? {
            (&REPLY_DONE, r) => Some(Reply::Done(r.to_vec())),
            (&REPLY_STALE, r) if r.len() == 8 => Some(Reply::Stale {
                last: u64::from_be_bytes(r.try_into().ok()?),
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    seq: u64,
    /// Position in the total order of the client's last request.
    at: u64,
    /// Its reply; None while an external machine has not answered it.
    reply: Option<Vec<u8>>,
}

/// What the client table says of a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen<'a> {
    /// Not run yet: run it.
    New,
    /// The client's last request again: its reply (None: not answered yet).
    Retry(Option<&'a [u8]>),
    /// Older than the client's last.
    Stale(u64),
}

/// Each client's last request and reply, bounded to [`MAX_CLIENTS`]; the
/// client whose last request is oldest in the total order leaves first,
/// the same on every member.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ClientTable {
    clients: BTreeMap<u64, Session>,
    /// Clients by the position of their last request: who goes first.
    by_age: BTreeMap<u64, u64>,
}

impl ClientTable {
    pub(crate) fn seen(&self, client: u64, seq: u64) -> Seen<'_> {
        match self.clients.get(&client) {
            Some(s) if seq == s.seq => Seen::Retry(s.reply.as_deref()),
            Some(s) if seq < s.seq => Seen::Stale(s.seq),
            _ => Seen::New,
        }
    }

    /// Records request `seq` of `client`, run at position `at`.
    pub(crate) fn record(&mut self, client: u64, seq: u64, at: u64, reply: Option<Vec<u8>>) {
        if let Some(old) = self.clients.insert(client, Session { seq, at, reply }) {
            self.by_age.remove(&old.at);
        }
        self.by_age.insert(at, client);
        while self.clients.len() > MAX_CLIENTS {
            let Some((_, c)) = self.by_age.pop_first() else {
                break;
            };
            self.clients.remove(&c);
        }
    }

    /// Gives the request run at `at` its reply, if it is still its
    /// client's last.
    pub(crate) fn fill(&mut self, client: u64, at: u64, reply: &[u8]) {
        if let Some(s) = self.clients.get_mut(&client)
            && s.at == at
        {
            s.reply = Some(reply.to_vec());
        }
    }

    /// Whether every request at or before `at` has its reply.
    pub(crate) fn answered_through(&self, at: u64) -> bool {
        self.by_age
            .range(..=at)
            .all(|(_, c)| self.clients[c].reply.is_some())
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.clients.len() as u64).to_be_bytes());
        for (c, s) in &self.clients {
            out.extend_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&s.seq.to_be_bytes());
            out.extend_from_slice(&s.at.to_be_bytes());
            match &s.reply {
                Some(r) => {
                    out.push(1);
                    out.extend_from_slice(&(r.len() as u32).to_be_bytes());
                    out.extend_from_slice(r);
                }
                None => out.push(0),
            }
        }
    }

    /// Reads a table from untrusted bytes; no request after `applied`.
    pub(crate) fn decode(r: &mut Reader<'_>, applied: u64) -> Result<ClientTable, String> {
        let n = r.u64()?;
        if n > MAX_CLIENTS as u64 {
            return Err(format!("{n} clients in a snapshot; at most {MAX_CLIENTS}"));
        }
        let mut t = ClientTable::default();
        for _ in 0..n {
            let c = r.u64()?;
            let seq = r.u64()?;
            let at = r.u64()?;
            let reply = match r.take(1)?[0] {
                0 => None,
                1 => {
                    let len = r.u32()? as usize;
                    if len > MAX_OP {
                        return Err(format!("a {len}-byte reply in a snapshot"));
                    }
                    Some(r.take(len)?.to_vec())
                }
                b => return Err(format!("a reply marked {b} in a snapshot")),
            };
            if at > applied || t.by_age.insert(at, c).is_some() {
                return Err("a snapshot's client table is inconsistent".into());
            }
            if t.clients.insert(c, Session { seq, at, reply }).is_some() {
                return Err("a client twice in a snapshot".into());
            }
        }
        Ok(t)
    }
}

/// A [`StateMachine`] behind a client table: a [`Replica`] for a group.
pub struct Endpoint<S> {
    sm: S,
    table: ClientTable,
    /// Requests applied (the position in the total order).
    applied: u64,
    /// Retries answered from the table.
    pub retries: u64,
}

impl<S: StateMachine> Endpoint<S> {
    pub fn new(sm: S) -> Endpoint<S> {
        Endpoint {
            sm,
            table: ClientTable::default(),
            applied: 0,
            retries: 0,
        }
    }

    pub fn state(&self) -> &S {
        &self.sm
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Runs `req` unless the table answers it.
    pub fn execute(&mut self, req: &Request) -> Reply {
        match self.table.seen(req.client, req.seq) {
            Seen::Retry(reply) => {
                self.retries += 1;
                return Reply::Done(reply.unwrap_or_default().to_vec());
            }
            Seen::Stale(last) => return Reply::Stale { last },
            Seen::New => {}
        }
        self.applied += 1;
        let mut reply = self.sm.apply(&req.op);
        reply.truncate(MAX_OP);
        self.table
            .record(req.client, req.seq, self.applied, Some(reply.clone()));
        Reply::Done(reply)
    }
}

impl<S: StateMachine> Replica for Endpoint<S> {
    fn apply(&mut self, _from: &MemberId, mode: Mode, data: &[u8]) -> Option<Vec<u8>> {
        // Only totally ordered requests run: a FIFO one would run in a
        // different place on each member.
        if mode.stream() != super::wire::Stream::Total {
            return None;
        }
        let req = Request::decode(data)?;
        Some(self.execute(&req).encode())
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.applied.to_be_bytes());
        self.table.encode(&mut out);
        out.extend_from_slice(&self.sm.snapshot());
        out
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let mut r = Reader(state);
        let applied = r.u64()?;
        let table = ClientTable::decode(&mut r, applied)?;
        if !table.answered_through(applied) {
            return Err("a snapshot's client table lacks a reply".into());
        }
        self.sm.restore(r.0)?;
        self.applied = applied;
        self.table = table;
        Ok(())
    }
}

/// Reads a snapshot's fields, refusing one that ends early.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a snapshot ends early".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::kv::{KvOp, KvStore};

    fn req(client: u64, seq: u64, op: KvOp) -> Request {
        Request {
            client,
            seq,
            op: op.encode(),
        }
    }

    fn incr(key: &str) -> KvOp {
        KvOp::Incr {
            key: key.into(),
            by: 1,
        }
    }

    #[test]
    fn a_retry_gets_the_first_reply_and_runs_once() {
        let mut e = Endpoint::new(KvStore::default());
        let a = e.execute(&req(7, 1, incr("x")));
        let again = e.execute(&req(7, 1, incr("x")));
        assert_eq!(a, again);
        assert_eq!(e.applied(), 1);
        assert_eq!(e.retries, 1);
        e.execute(&req(7, 2, incr("x")));
        assert_eq!(
            e.execute(&req(7, 1, incr("x"))),
            Reply::Stale { last: 2 },
            "an older request is not run"
        );
        assert_eq!(e.state().get("x"), Some(&crate::crm::kv::KvValue::Int(2)));
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_same_client_everywhere() {
        let mut e = Endpoint::new(KvStore::default());
        for c in 0..(MAX_CLIENTS as u64 + 10) {
            e.execute(&req(c, 1, incr("x")));
        }
        assert_eq!(e.table.clients.len(), MAX_CLIENTS);
        assert!(!e.table.clients.contains_key(&0) && e.table.clients.contains_key(&10));
        assert_eq!(e.table.by_age.len(), MAX_CLIENTS);
    }

    #[test]
    fn a_snapshot_carries_the_table_and_refuses_hostile_bytes() {
        let mut e = Endpoint::new(KvStore::default());
        e.execute(&req(1, 1, incr("x")));
        e.execute(&req(2, 5, incr("y")));
        let snap = e.snapshot();
        let mut f = Endpoint::new(KvStore::default());
        f.restore(&snap).expect("restores");
        assert_eq!(f.snapshot(), snap);
        // A retry at the restored member is answered from the table.
        let before = f.applied();
        f.execute(&req(2, 5, incr("y")));
        assert_eq!(f.applied(), before);
        for cut in 0..snap.len() {
            let _ = Endpoint::new(KvStore::default()).restore(&snap[..cut]);
        }
        let mut huge = snap.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(Endpoint::new(KvStore::default()).restore(&huge).is_err());
    }

    #[test]
    fn only_ordered_requests_run() {
        let mut e = Endpoint::new(KvStore::default());
        let m = MemberId {
            addr: "a".into(),
            inc: 1,
            zone: "/a".into(),
        };
        let data = req(1, 1, incr("x")).encode();
        assert!(e.apply(&m, Mode::Fifo, &data).is_none());
        assert!(e.apply(&m, Mode::Safe, b"not a request").is_none());
        let r = e.apply(&m, Mode::Safe, &data).expect("a reply");
        assert!(matches!(Reply::decode(&r), Some(Reply::Done(_))));
        assert_eq!(Request::key_of(&data), Some((1, 1)));
    }
}
