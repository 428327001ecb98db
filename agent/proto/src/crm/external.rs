//! An external machine: the replicated endpoint with its service run by
//! a separate process, fed through the agent's API.
//!
//! The group orders requests as for any [`Endpoint`](super::Endpoint);
//! what differs is that the reply is not known when a request is
//! delivered. Each member's process gets the ordered requests, runs them
//! in that order and answers each one later; the member answers its
//! waiting client then. The process must be deterministic, as a
//! [`StateMachine`](super::StateMachine) must: every member's process
//! gives the same reply at the same position.
//!
//! The replicated state is the last state the process handed over (its
//! snapshot after position `base_at`) and the requests ordered since, with
//! the client table. A joiner's process starts from that state and runs
//! the requests after it, which gives it the same state and replies, so
//! state transfer never waits for a process. A process that starts (or
//! restarts) is always handed the base and the whole log again.
//!
//! Invariants:
//! - the log holds exactly the positions `base_at + 1 ..= applied`;
//! - answers come in order: the one for `answered + 1` and no other;
//! - every request at or before `base_at` has its reply in the table;
//! - the log is bounded ([`MAX_LOG`], [`MAX_LOG_BYTES`]); past it the
//!   member must leave the group ([`External::is_full`]): it cannot keep
//!   the state without its process.

use super::endpoint::{ClientTable, MAX_OP, Reader, Reply, Request, Seen};
use super::group::Replica;
use super::member::MemberId;
use super::wire::{Mode, Stream};
use std::any::Any;
use std::collections::VecDeque;

/// Requests held for a process at most.
pub const MAX_LOG: usize = 100_000;
/// Bytes of requests held for a process at most.
pub const MAX_LOG_BYTES: usize = 64 * 1024 * 1024;
/// Largest state a process may hand over.
pub const MAX_STATE: usize = 16 * 1024 * 1024;
/// Requests after which the process is asked for its state, by default.
pub const COMPACT_AFTER: usize = 1_000;

/// One ordered request for the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Its position in the group's total order of requests.
    pub at: u64,
    pub client: u64,
    pub seq: u64,
    pub op: Vec<u8>,
}

/// Why a process's answer or state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    #[error("an answer for position {got}, but the next one due is {expected}")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("a state for position {at}, but only {base_at} to {answered} can be taken")]
    StateOutOfRange {
        at: u64,
        base_at: u64,
        answered: u64,
    },
    #[error("a {0}-byte reply; at most {MAX_OP}")]
    ReplyTooLarge(usize),
    #[error("a {0}-byte state; at most {MAX_STATE}")]
    StateTooLarge(usize),
}

/// The external machine's replica at one member.
#[derive(Debug)]
pub struct External {
    table: ClientTable,
    /// Requests run (the position in the total order).
    applied: u64,
    base_at: u64,
    base: Vec<u8>,
    log: VecDeque<Logged>,
    log_bytes: usize,
    /// The last position this member's process answered.
    answered: u64,
    /// Bumped whenever the state is replaced, so a feeder starts over.
    generation: u64,
    /// Requests answered after which the process is asked for its state.
    compact_after: usize,
    /// Retries answered from the table.
    pub retries: u64,
}

impl Default for External {
    fn default() -> External {
        External {
            table: ClientTable::default(),
            applied: 0,
            base_at: 0,
            base: Vec::new(),
            log: VecDeque::new(),
            log_bytes: 0,
            answered: 0,
            generation: 0,
            compact_after: COMPACT_AFTER,
            retries: 0,
        }
    }
}

impl External {
    pub fn new() -> External {
        External::default()
    }

    /// Asks the process for its state every `n` requests (at least 1).
    pub fn compact_after(mut self, n: usize) -> External {
        self.compact_after = n.max(1);
        self
    }

    pub fn compaction_interval(&self) -> usize {
        self.compact_after
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// The state the process starts from, and its position.
    pub fn base(&self) -> (u64, &[u8]) {
        (self.base_at, &self.base)
    }

    /// Changes when the state is replaced by a snapshot.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Up to `max` requests after position `at`, in order.
    pub fn after(&self, at: u64, max: usize) -> impl Iterator<Item = &Logged> {
        let skip = at.saturating_sub(self.base_at) as usize;
        self.log.iter().skip(skip).take(max)
    }

    /// Requests held.
    pub fn backlog(&self) -> usize {
        self.log.len()
    }

    /// Whether the log passed its bound: the member cannot go on.
    pub fn is_full(&self) -> bool {
        self.log.len() > MAX_LOG || self.log_bytes > MAX_LOG_BYTES
    }

    /// Whether the process should hand its state over.
    pub fn wants_state(&self) -> bool {
        self.answered.saturating_sub(self.base_at) as usize >= self.compact_after
    }

    /// A new process starts from the base: answers start over after it.
    pub fn restart(&mut self) {
        self.answered = self.base_at;
    }

    /// The process's reply at position `at`: gives the client and number
    /// of the request, whose waiters get [`Reply::Done`] with it.
    pub fn answer(&mut self, at: u64, reply: &[u8]) -> Result<(u64, u64), MachineError> {
        if reply.len() > MAX_OP {
            return Err(MachineError::ReplyTooLarge(reply.len()));
        }
        let expected = self.answered + 1;
        let entry = self
            .log
            .get((at.wrapping_sub(self.base_at + 1)) as usize)
            .filter(|_| at == expected);
        let Some(e) = entry else {
            return Err(MachineError::OutOfOrder { expected, got: at });
        };
        let (client, seq) = (e.client, e.seq);
        self.table.fill(client, at, reply);
        self.answered = at;
        Ok((client, seq))
    }

    /// The process's state after position `at`: the log before it goes.
    pub fn take_state(&mut self, at: u64, state: Vec<u8>) -> Result<(), MachineError> {
        if state.len() > MAX_STATE {
            return Err(MachineError::StateTooLarge(state.len()));
        }
        if at < self.base_at || at > self.answered {
            return Err(MachineError::StateOutOfRange {
                at,
                base_at: self.base_at,
                answered: self.answered,
            });
        }
        while self.log.front().is_some_and(|e| e.at <= at) {
            let e = self.log.pop_front().expect("front");
            self.log_bytes -= e.op.len();
        }
        self.base_at = at;
        self.base = state;
        Ok(())
    }
}

impl Replica for External {
    fn apply(&mut self, _from: &MemberId, mode: Mode, data: &[u8]) -> Option<Vec<u8>> {
        if mode.stream() != Stream::Total {
            return None;
        }
        let req = Request::decode(data)?;
        match self.table.seen(req.client, req.seq) {
            Seen::Retry(reply) => {
                self.retries += 1;
                // Not answered yet: the waiters hear when the process answers.
                return reply.map(|r| Reply::Done(r.to_vec()).encode());
            }
            Seen::Stale(last) => return Some(Reply::Stale { last }.encode()),
            Seen::New => {}
        }
        self.applied += 1;
        self.table.record(req.client, req.seq, self.applied, None);
        self.log_bytes += req.op.len();
        self.log.push_back(Logged {
            at: self.applied,
            client: req.client,
            seq: req.seq,
            op: req.op,
        });
        None
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.base.len() + self.log_bytes);
        out.extend_from_slice(&self.applied.to_be_bytes());
        out.extend_from_slice(&self.base_at.to_be_bytes());
        out.extend_from_slice(&(self.base.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.base);
        for e in &self.log {
            out.extend_from_slice(&e.client.to_be_bytes());
            out.extend_from_slice(&e.seq.to_be_bytes());
            out.extend_from_slice(&(e.op.len() as u32).to_be_bytes());
            out.extend_from_slice(&e.op);
        }
        self.table.encode(&mut out);
        out
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let mut r = Reader(state);
        let applied = r.u64()?;
        let base_at = r.u64()?;
        if base_at > applied || (applied - base_at) as usize > MAX_LOG {
            return Err(format!(
                "a snapshot with state at {base_at} and {applied} requests"
            ));
        }
        let len = r.u32()? as usize;
        if len > MAX_STATE {
            return Err(format!("a {len}-byte state in a snapshot"));
        }
        let base = r.take(len)?.to_vec();
        let mut log = VecDeque::new();
        let mut log_bytes = 0;
        for at in base_at + 1..=applied {
            let client = r.u64()?;
            let seq = r.u64()?;
            let len = r.u32()? as usize;
            if len > MAX_OP || log_bytes + len > MAX_LOG_BYTES {
                return Err(format!("a {len}-byte request in a snapshot"));
            }
            log_bytes += len;
            log.push_back(Logged {
                at,
                client,
                seq,
                op: r.take(len)?.to_vec(),
            });
        }
        let table = ClientTable::decode(&mut r, applied)?;
        if !r.0.is_empty() {
            return Err("bytes after a snapshot".into());
        }
        if !table.answered_through(base_at) {
            return Err("a snapshot's client table lacks a reply".into());
        }
        *self = External {
            table,
            applied,
            base_at,
            base,
            log,
            log_bytes,
            answered: base_at,
            generation: self.generation + 1,
            compact_after: self.compact_after,
            retries: self.retries,
        };
        Ok(())
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> MemberId {
        MemberId {
            addr: "a".into(),
            inc: 1,
            zone: "/a".into(),
        }
    }

    fn req(client: u64, seq: u64, op: &str) -> Vec<u8> {
        Request {
            client,
            seq,
            op: op.as_bytes().to_vec(),
        }
        .encode()
    }

    /// A process: a running sum of the numbers it is sent.
    fn run(e: &mut External, sum: &mut i64) -> Vec<(u64, u64, Vec<u8>)> {
        let todo: Vec<Logged> = e.after(e.answered(), usize::MAX).cloned().collect();
        let mut out = Vec::new();
        for l in todo {
            *sum += std::str::from_utf8(&l.op).unwrap().parse::<i64>().unwrap();
            let reply = sum.to_string().into_bytes();
            let (c, s) = e.answer(l.at, &reply).expect("in order");
            out.push((c, s, reply));
        }
        out
    }

    #[test]
    fn replies_come_from_the_process_and_a_retry_runs_once() {
        let mut e = External::new();
        assert_eq!(e.apply(&me(), Mode::Safe, &req(1, 1, "5")), None);
        assert_eq!(e.apply(&me(), Mode::Fifo, &req(2, 1, "5")), None);
        assert_eq!(e.backlog(), 1, "only ordered requests run");
        // Retried before the process answered: still pending, not run again.
        assert_eq!(e.apply(&me(), Mode::Safe, &req(1, 1, "5")), None);
        assert_eq!(e.backlog(), 1);
        let mut sum = 0;
        assert_eq!(run(&mut e, &mut sum), vec![(1, 1, b"5".to_vec())]);
        let again = e.apply(&me(), Mode::Safe, &req(1, 1, "5")).expect("known");
        assert_eq!(Reply::decode(&again), Some(Reply::Done(b"5".to_vec())));
        assert_eq!(e.retries, 2);
        e.apply(&me(), Mode::Safe, &req(1, 2, "1"));
        let stale = e.apply(&me(), Mode::Safe, &req(1, 1, "5")).expect("stale");
        assert_eq!(Reply::decode(&stale), Some(Reply::Stale { last: 2 }));
    }

    #[test]
    fn answers_must_come_in_order() {
        let mut e = External::new();
        e.apply(&me(), Mode::Safe, &req(1, 1, "1"));
        e.apply(&me(), Mode::Safe, &req(2, 1, "1"));
        assert_eq!(
            e.answer(2, b"x"),
            Err(MachineError::OutOfOrder {
                expected: 1,
                got: 2
            })
        );
        assert!(e.answer(1, b"x").is_ok());
        assert!(e.answer(1, b"x").is_err(), "not twice");
        assert!(e.answer(3, b"x").is_err(), "not past the log");
        assert!(e.answer(2, &vec![0; MAX_OP + 1]).is_err());
    }

    #[test]
    fn a_joiner_replays_the_log_from_the_handed_state() {
        let mut a = External::new();
        let mut sum_a = 0;
        for i in 1..=10 {
            a.apply(&me(), Mode::Safe, &req(i, 1, &i.to_string()));
        }
        run(&mut a, &mut sum_a);
        assert!(a.take_state(11, vec![]).is_err(), "not past the answers");
        a.take_state(6, (1..=6).sum::<i64>().to_string().into_bytes())
            .expect("taken");
        assert_eq!(a.backlog(), 4);
        for i in 11..=12 {
            a.apply(&me(), Mode::Safe, &req(i, 1, &i.to_string()));
        }
        let snap = a.snapshot();
        let mut b = External::new();
        b.restore(&snap).expect("restores");
        assert_eq!(b.generation(), 1);
        assert_eq!(b.snapshot(), snap);
        let (at, state) = b.base();
        assert_eq!(at, 6);
        let mut sum_b: i64 = std::str::from_utf8(state).unwrap().parse().unwrap();
        let replies = run(&mut b, &mut sum_b);
        assert_eq!(replies.len(), 6);
        assert_eq!(sum_b, (1..=12).sum::<i64>());
        run(&mut a, &mut sum_a);
        assert_eq!(sum_a, sum_b);
        // A retry of a request answered before the handed state is known.
        let r = b.apply(&me(), Mode::Safe, &req(3, 1, "3")).expect("known");
        assert_eq!(Reply::decode(&r), Some(Reply::Done(b"6".to_vec())));
        // A restarted process starts over from the base.
        b.restart();
        assert_eq!(b.answered(), 6);
        assert_eq!(b.after(b.answered(), 100).count(), 6);
    }

    #[test]
    fn hostile_snapshots_are_refused() {
        let mut a = External::new();
        for i in 1..=3 {
            a.apply(&me(), Mode::Safe, &req(i, 1, "1"));
        }
        let snap = a.snapshot();
        for cut in 0..snap.len() {
            assert!(External::new().restore(&snap[..cut]).is_err());
        }
        let mut long = snap.clone();
        long.push(0);
        assert!(External::new().restore(&long).is_err());
        let mut many = snap.clone();
        many[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(External::new().restore(&many).is_err());
        // A state handed over without the replies before it.
        let mut unanswered = snap.clone();
        unanswered[8..16].copy_from_slice(&3u64.to_be_bytes());
        assert!(External::new().restore(&unanswered).is_err());
    }

    #[test]
    fn the_log_is_bounded() {
        let mut e = External::new();
        for i in 0..=MAX_LOG as u64 {
            e.apply(&me(), Mode::Safe, &req(i, 1, ""));
        }
        assert!(e.is_full());
    }
}
