//! The layer trait and what flows between layers.
//!
//! A [`Msg`] goes down from the application through every layer to the
//! wire, each layer pushing exactly one header of its own; on the way up
//! the stack pops the outermost header and hands it to the layer that
//! pushed it, so a layer sees only its own header (Horus and Ensemble's
//! discipline). A layer that transforms what is above it (`encrypt`,
//! `frag`) seals the headers above and the body into one byte string
//! ([`Msg::seal`]) and unseals it on the way up.
//!
//! A layer is a sans-IO state machine: it is called with the time in its
//! [`Cx`], and answers by putting messages down or up, broadcasting a
//! [`Control`] to the other layers of its stack, and setting its own named
//! timers.

use super::codec::{DecodeError, Reader, Writer};
use super::spec::LayerKind;
use crate::row::Micros;
use rand::rngs::SmallRng;
use std::sync::Arc;

/// Most headers one message carries (one per layer, with room for layers
/// that seal the headers above them).
pub const MAX_HEADERS: usize = 16;
/// Largest header of one layer.
pub const MAX_HEADER: usize = 8 * 1024;

/// The stream a message belongs to: the agent that published it and the
/// incarnation of its stack there (a restarted agent starts a new stream).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OriginId {
    pub addr: Arc<str>,
    pub inc: u64,
}

/// Where a message goes: every member of the channel, the members below
/// this agent in the channel's tree, or one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    All,
    /// A repair this agent received that its subtree lacks as well.
    Subtree,
    Peer(Arc<str>),
}

/// A message in a stack: its origin, destination, the header stack and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub origin: OriginId,
    pub dest: Dest,
    /// The agent that handed this frame to this one (up path): the
    /// transport's authenticated peer, this agent for its own frames.
    pub via: Option<Arc<str>>,
    /// This stack's own frame coming back up from its bottom (never set
    /// for a frame from the network): layers that check what others sent
    /// (`sign`) trust it.
    pub looped: bool,
    /// Innermost (the top layer's) first, outermost last.
    headers: Vec<Vec<u8>>,
    pub body: Vec<u8>,
}

impl Msg {
    pub fn new(origin: OriginId, dest: Dest, body: Vec<u8>) -> Msg {
        Msg {
            origin,
            dest,
            via: None,
            looped: false,
            headers: Vec::new(),
            body,
        }
    }

    /// Pushes this layer's header (down path).
    pub fn push(&mut self, header: Vec<u8>) {
        self.headers.push(header);
    }

    /// Pops the outermost header (up path, by the stack).
    pub(crate) fn pop(&mut self) -> Option<Vec<u8>> {
        self.headers.pop()
    }

    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// The encoded headers and body, as one byte string: what travels
    /// below the bottom layer, and what a sealing layer transforms.
    pub fn encode_inner(&self) -> Vec<u8> {
        let len = self.body.len() + self.headers.iter().map(|h| h.len() + 3).sum::<usize>() + 1;
        let mut w = Writer::with_capacity(len);
        w.varint(self.headers.len() as u64);
        for h in &self.headers {
            w.bytes(h);
        }
        w.raw(&self.body);
        w.finish()
    }

    /// Reads what [`Msg::encode_inner`] wrote, from untrusted bytes.
    pub fn decode_inner(origin: OriginId, dest: Dest, bytes: &[u8]) -> Result<Msg, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.count(MAX_HEADERS, 1)?;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            headers.push(r.bytes(MAX_HEADER)?.to_vec());
        }
        Ok(Msg {
            origin,
            dest,
            via: None,
            looped: false,
            headers,
            body: r.rest().to_vec(),
        })
    }

    /// Takes the headers above and the body as one byte string, leaving
    /// the message without headers and with an empty body.
    pub fn seal(&mut self) -> Vec<u8> {
        if self.headers.is_empty() {
            let mut out = Vec::with_capacity(self.body.len() + 1);
            out.push(0);
            out.extend_from_slice(&self.body);
            self.body.clear();
            return out;
        }
        let out = self.encode_inner();
        self.headers.clear();
        self.body.clear();
        out
    }

    /// Restores what [`Msg::seal`] took.
    pub fn unseal(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let m = Msg::decode_inner(self.origin.clone(), self.dest.clone(), bytes)?;
        self.headers = m.headers;
        self.body = m.body;
        Ok(())
    }

    /// Bytes this message takes on the wire below the bottom layer.
    pub fn wire_len(&self) -> usize {
        self.body.len() + self.headers.iter().map(|h| h.len() + 2).sum::<usize>() + 1
    }
}

/// What one layer tells the others of its stack, and what the channel
/// tells every layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// From the channel: the agents to ask first for repairs (this agent's
    /// upstream relay), and the members to gossip with.
    Peers {
        repairers: Vec<Arc<str>>,
        gossip: Vec<Arc<str>>,
    },
    /// From `nak`: the stream of `origin` will be delivered from its first
    /// message (`from_start`), or from the middle.
    Synced { origin: OriginId, from_start: bool },
    /// From `nak` at an origin: this agent's messages up to `upto` are
    /// held by every member it knows.
    Stable { upto: u64 },
    /// From `nak`: the origin cut this member off; `count` messages of
    /// `origin` will never be delivered here.
    Skipped { origin: OriginId, count: u64 },
    /// From the channel: this agent leaves the channel.
    Leaving,
}

/// Why the application's message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Backpressure {
    #[error("{outstanding} messages not yet held by every subscriber; the flow window is {window}")]
    Window { outstanding: u64, window: u64 },
    #[error("over the channel's rate of {rate} messages per second")]
    Rate { rate: u64 },
    #[error("waiting for the channel key")]
    NoKey,
}

/// What a layer call produced, in order.
#[derive(Debug)]
pub(crate) enum Out {
    Down(Msg),
    Up(Msg),
    Control(Control),
    Refused(&'static str),
}

/// What a layer is handed on every call: the time, the stack's seeded
/// generator, its own timers and the outputs.
pub struct Cx<'a> {
    pub now: Micros,
    pub rng: &'a mut SmallRng,
    pub(crate) out: &'a mut Vec<Out>,
    pub(crate) timers: &'a mut Vec<(&'static str, Micros)>,
}

impl Cx<'_> {
    /// Hands `msg` to the layer below (or the wire).
    pub fn down(&mut self, msg: Msg) {
        self.out.push(Out::Down(msg));
    }

    /// Hands `msg` to the layer above (or the application).
    pub fn up(&mut self, msg: Msg) {
        self.out.push(Out::Up(msg));
    }

    /// Tells every other layer of the stack.
    pub fn control(&mut self, c: Control) {
        self.out.push(Out::Control(c));
    }

    /// Drops what came in, counted under `reason`.
    pub fn refuse(&mut self, reason: &'static str) {
        self.out.push(Out::Refused(reason));
    }

    /// Sets the timer `name` to fire at `at` (replacing an earlier setting).
    pub fn set_timer(&mut self, name: &'static str, at: Micros) {
        match self.timers.iter_mut().find(|(n, _)| *n == name) {
            Some(t) => t.1 = at,
            None => self.timers.push((name, at)),
        }
    }

    /// Sets the timer `name` unless it is already due sooner.
    pub fn arm(&mut self, name: &'static str, at: Micros) {
        let due = self.timer(name);
        if at < due {
            self.set_timer(name, at);
        }
    }

    /// When the timer `name` fires (`Micros::MAX`: not set).
    pub fn timer(&self, name: &'static str) -> Micros {
        self.timers
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Micros::MAX, |t| t.1)
    }
}

/// One microprotocol.
pub trait Layer: Send {
    fn kind(&self) -> LayerKind;

    /// A message from above: push one header and pass it down (or hold it).
    fn down(&mut self, msg: Msg, cx: &mut Cx<'_>);

    /// A message from below with this layer's header popped.
    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>);

    /// The timer `name` fired.
    fn timer(&mut self, name: &'static str, cx: &mut Cx<'_>) {
        let _ = (name, cx);
    }

    /// Another layer or the channel told the stack something.
    fn control(&mut self, ctl: &Control, cx: &mut Cx<'_>) {
        let _ = (ctl, cx);
    }

    /// Whether the application may send a message of `len` bytes now.
    fn admit(&self, now: Micros, len: usize) -> Result<(), Backpressure> {
        let _ = (now, len);
        Ok(())
    }

    /// The layer's counters, for the stack's statistics.
    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        let _ = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin() -> OriginId {
        OriginId {
            addr: "a".into(),
            inc: 1,
        }
    }

    #[test]
    fn seal_and_unseal_keep_headers_and_body() {
        let mut m = Msg::new(origin(), Dest::All, b"body".to_vec());
        m.push(vec![1, 2]);
        m.push(vec![]);
        let before = m.clone();
        let sealed = m.seal();
        assert_eq!(m.header_count(), 0);
        assert!(m.body.is_empty());
        m.unseal(&sealed).unwrap();
        assert_eq!(m, before);
        let mut plain = Msg::new(origin(), Dest::All, b"x".to_vec());
        let s = plain.seal();
        plain.unseal(&s).unwrap();
        assert_eq!(plain.body, b"x");
    }

    proptest! {
        #[test]
        fn inner_decoding_never_panics(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Msg::decode_inner(origin(), Dest::All, &b);
        }
    }
}
