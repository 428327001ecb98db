//! A stack: the layers of a [`Spec`], built once and never changed, and
//! the engine that moves messages between them.
//!
//! The application's message enters at the top ([`Stack::send`]); what
//! leaves the bottom is a [`Frame`] for the channel to carry
//! ([`Stack::poll_frame`]); a frame from the network enters at the bottom
//! ([`Stack::receive`]); what leaves the top is a [`Delivered`] message
//! ([`Stack::poll_delivery`]). Frames for every member also come back up
//! this agent's own stack, so an origin delivers its own messages like any
//! member. Work is queued, not recursive: a layer's outputs are handled in
//! the order it produced them, its controls first.

use super::layer::{Backpressure, Control, Cx, Dest, Layer, Msg, OriginId, Out};
use super::layers;
use super::params::{MAX_MESSAGE, Params};
use super::spec::{LayerKind, Spec};
use crate::row::Micros;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Where `sign` finds the key an origin signs with.
pub trait KeyBook: Send + Sync {
    /// The key `origin`'s messages must be signed with, given the proof
    /// they carry (the origin's certificate, or nothing), at `now`.
    fn key_of(&self, origin: &str, proof: &[u8], now: Micros) -> Option<VerifyingKey>;
}

/// A fixed book of origins' keys; messages carry no proof.
#[derive(Debug, Default, Clone)]
pub struct PinnedKeys(pub BTreeMap<Arc<str>, VerifyingKey>);

impl KeyBook for PinnedKeys {
    fn key_of(&self, origin: &str, _: &[u8], _: Micros) -> Option<VerifyingKey> {
        self.0.get(origin).copied()
    }
}

/// What one agent's stack of one channel is built with.
#[derive(Clone)]
pub struct StackConfig {
    /// The channel's id: every signature and seal is bound to it.
    pub channel: u64,
    /// This agent's stream.
    pub local: OriginId,
    /// The channel's coordinator: `total`'s sequencer and `encrypt`'s key manager.
    pub coordinator: Arc<str>,
    /// Deliver every stream from the first message its origin still holds
    /// (otherwise from the first message seen).
    pub sync_all: bool,
    pub rng_seed: u64,
    /// The key this agent signs with (`sign`).
    pub signer: Option<Arc<SigningKey>>,
    /// What this agent's signed messages carry for the receivers' key
    /// book: its certificate (empty with pinned keys).
    pub proof: Arc<[u8]>,
    /// The keys origins sign with (`sign`).
    pub keys: Option<Arc<dyn KeyBook>>,
    pub params: Params,
    /// Report where each origin's stream starts here
    /// ([`StackEvent::Started`]), for a user that must know whether it
    /// delivers a stream whole (a group's view).
    pub report_starts: bool,
}

impl StackConfig {
    /// A configuration with the defaults, for `local` in `channel`.
    pub fn new(channel: u64, local: OriginId, coordinator: Arc<str>) -> StackConfig {
        StackConfig {
            channel,
            local,
            coordinator,
            sync_all: true,
            rng_seed: 1,
            signer: None,
            proof: Arc::from(Vec::new()),
            keys: None,
            params: Params::default(),
            report_starts: false,
        }
    }
}

/// What leaves the bottom of the stack: bytes for every member or one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub origin: OriginId,
    pub dest: Dest,
    pub bytes: Vec<u8>,
}

/// What leaves the top: a message for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub origin: OriginId,
    pub data: Vec<u8>,
}

/// What a stack tells its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackEvent {
    /// Messages of `origin` that will never be delivered (this member was cut off).
    Lost { origin: OriginId, count: u64 },
    /// `origin`'s stream is delivered here from its first message
    /// (`from_start`) or from the middle (only with
    /// [`StackConfig::report_starts`]).
    Started { origin: OriginId, from_start: bool },
}

/// Why the application's message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error(
        "message of {len} bytes; this channel takes at most {max} (a stack with frag takes up to 16 MiB)"
    )]
    TooLarge { len: usize, max: usize },
    #[error("{layer} holds the message back: {why}")]
    Backpressure {
        layer: LayerKind,
        #[source]
        why: Backpressure,
    },
}

enum Work {
    /// To layer `i` going down (`i == n`: the wire).
    Down(usize, Msg),
    /// Leaving layer `i` going up (to `i - 1`; `0`: the application).
    Up(usize, Msg),
}

pub struct Stack {
    spec: Spec,
    layers: Vec<Box<dyn Layer>>,
    timers: Vec<Vec<(&'static str, Micros)>>,
    local: OriginId,
    rng: SmallRng,
    max_message: usize,
    report_starts: bool,
    frames: VecDeque<Frame>,
    delivered: VecDeque<Delivered>,
    events: VecDeque<StackEvent>,
    work: VecDeque<Work>,
    out: Vec<Out>,
    refused: BTreeMap<(LayerKind, &'static str), u64>,
    /// Frames handed to the channel, and their bytes.
    pub frames_out: u64,
    pub bytes_out: u64,
}

impl Stack {
    /// Builds the layers of `spec`, top to bottom; every layer gets its timers
    /// armed on the first [`Stack::handle_timeout`].
    pub fn build(spec: &Spec, cfg: &StackConfig) -> Stack {
        let built: Vec<Box<dyn Layer>> = spec
            .layers()
            .iter()
            .map(|k| layers::make(*k, spec, cfg))
            .collect();
        Stack::from_layers(spec.clone(), built, cfg)
    }

    /// A stack of hand-made layers (tests of one layer with stand-ins).
    pub fn from_layers(spec: Spec, layers: Vec<Box<dyn Layer>>, cfg: &StackConfig) -> Stack {
        let max_message = if spec.has(LayerKind::Frag) {
            MAX_MESSAGE
        } else {
            cfg.params.frag_size
        };
        let n = layers.len();
        Stack {
            spec,
            layers,
            timers: vec![vec![("start", 0)]; n],
            local: cfg.local.clone(),
            rng: SmallRng::seed_from_u64(cfg.rng_seed ^ cfg.local.inc ^ cfg.channel),
            max_message,
            report_starts: cfg.report_starts,
            frames: VecDeque::new(),
            delivered: VecDeque::new(),
            events: VecDeque::new(),
            work: VecDeque::new(),
            out: Vec::new(),
            refused: BTreeMap::new(),
            frames_out: 0,
            bytes_out: 0,
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn local(&self) -> &OriginId {
        &self.local
    }

    /// Largest message [`Stack::send`] takes.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Whether a message of `len` bytes would be taken now.
    pub fn admit(&self, now: Micros, len: usize) -> Result<(), SendError> {
        if len > self.max_message {
            return Err(SendError::TooLarge {
                len,
                max: self.max_message,
            });
        }
        for l in &self.layers {
            l.admit(now, len).map_err(|why| SendError::Backpressure {
                layer: l.kind(),
                why,
            })?;
        }
        Ok(())
    }

    /// Sends `data` to every member, from the top of the stack.
    pub fn send(&mut self, now: Micros, data: Vec<u8>) -> Result<(), SendError> {
        self.admit(now, data.len())?;
        self.send_admitted(now, data);
        Ok(())
    }

    /// [`Stack::send`] of a message [`Stack::admit`] has just taken.
    pub fn send_admitted(&mut self, now: Micros, data: Vec<u8>) {
        let msg = Msg::new(self.local.clone(), Dest::All, data);
        self.work.push_back(Work::Down(0, msg));
        self.run(now);
    }

    /// A frame from the network, handed over by the agent `via`: `bytes` as
    /// the bottom of `origin`'s stack wrote them, `cast` when it was sent
    /// to every member.
    pub fn receive(
        &mut self,
        now: Micros,
        via: Arc<str>,
        origin: OriginId,
        cast: bool,
        bytes: &[u8],
    ) {
        let dest = if cast {
            Dest::All
        } else {
            Dest::Peer(self.local.addr.clone())
        };
        match Msg::decode_inner(origin, dest, bytes) {
            Ok(mut msg) => {
                msg.via = Some(via);
                let n = self.layers.len();
                self.work.push_back(Work::Up(n, msg));
                self.run(now);
            }
            Err(_) => {
                let bottom = self.layers.last().map_or(LayerKind::Nak, |l| l.kind());
                self.count_refused(bottom, "malformed_frame");
            }
        }
    }

    /// Tells every layer `ctl`.
    pub fn control(&mut self, now: Micros, ctl: Control) {
        self.broadcast(now, None, &ctl);
        self.run(now);
    }

    /// Fires every layer timer due at `now`.
    pub fn handle_timeout(&mut self, now: Micros) {
        for i in 0..self.layers.len() {
            while let Some(k) = self.timers[i].iter().position(|(_, at)| *at <= now) {
                let (name, _) = self.timers[i].swap_remove(k);
                self.call(now, i, |l, cx| l.timer(name, cx));
            }
        }
        self.run(now);
    }

    pub fn poll_timeout(&self) -> Micros {
        self.timers
            .iter()
            .flatten()
            .map(|(_, at)| *at)
            .min()
            .unwrap_or(Micros::MAX)
    }

    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.frames.pop_front()
    }

    pub fn poll_delivery(&mut self) -> Option<Delivered> {
        self.delivered.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<StackEvent> {
        self.events.pop_front()
    }

    /// Inputs refused, by layer and reason.
    pub fn refused(&self) -> &BTreeMap<(LayerKind, &'static str), u64> {
        &self.refused
    }

    /// Every layer's counters, prefixed by its name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for l in &self.layers {
            let mut c = Vec::new();
            l.counters(&mut c);
            out.extend(c.into_iter().map(|(n, v)| (format!("{}_{n}", l.kind()), v)));
        }
        out
    }

    /// One counter of the layer `kind`.
    pub fn counter(&self, kind: LayerKind, name: &str) -> u64 {
        let want = format!("{kind}_{name}");
        self.counters()
            .into_iter()
            .find(|(n, _)| *n == want)
            .map_or(0, |(_, v)| v)
    }

    fn count_refused(&mut self, kind: LayerKind, reason: &'static str) {
        *self.refused.entry((kind, reason)).or_default() += 1;
    }

    /// Calls layer `i` and queues what it produced.
    fn call(&mut self, now: Micros, i: usize, f: impl FnOnce(&mut dyn Layer, &mut Cx<'_>)) {
        let mut out = std::mem::take(&mut self.out);
        {
            let mut cx = Cx {
                now,
                rng: &mut self.rng,
                out: &mut out,
                timers: &mut self.timers[i],
            };
            f(&mut *self.layers[i], &mut cx);
        }
        let kind = self.layers[i].kind();
        let mut controls = Vec::new();
        for o in out.drain(..) {
            match o {
                Out::Down(m) => self.work.push_back(Work::Down(i + 1, m)),
                Out::Up(m) => self.work.push_back(Work::Up(i, m)),
                Out::Control(c) => controls.push(c),
                Out::Refused(r) => self.count_refused(kind, r),
            }
        }
        self.out = out;
        for c in controls {
            match &c {
                Control::Skipped { origin, count } => self.events.push_back(StackEvent::Lost {
                    origin: origin.clone(),
                    count: *count,
                }),
                Control::Synced { origin, from_start } if self.report_starts => {
                    self.events.push_back(StackEvent::Started {
                        origin: origin.clone(),
                        from_start: *from_start,
                    })
                }
                _ => {}
            }
            self.broadcast(now, Some(i), &c);
        }
    }

    fn broadcast(&mut self, now: Micros, from: Option<usize>, ctl: &Control) {
        for j in 0..self.layers.len() {
            if Some(j) != from {
                self.call(now, j, |l, cx| l.control(ctl, cx));
            }
        }
    }

    fn run(&mut self, now: Micros) {
        let n = self.layers.len();
        while let Some(w) = self.work.pop_front() {
            match w {
                Work::Down(i, msg) if i == n => self.wire(now, msg),
                Work::Down(i, msg) => self.call(now, i, |l, cx| l.down(msg, cx)),
                Work::Up(0, msg) => self.delivered.push_back(Delivered {
                    origin: msg.origin,
                    data: msg.body,
                }),
                Work::Up(i, mut msg) => {
                    let j = i - 1;
                    match msg.pop() {
                        Some(h) => self.call(now, j, |l, cx| l.up(&h, msg, cx)),
                        None => {
                            let kind = self.layers[j].kind();
                            self.count_refused(kind, "missing_header");
                        }
                    }
                }
            }
        }
    }

    /// The bottom: a frame out, and for every member also back up here.
    fn wire(&mut self, _now: Micros, msg: Msg) {
        let bytes = msg.encode_inner();
        self.frames_out += 1;
        self.bytes_out += bytes.len() as u64;
        if msg.dest == Dest::All {
            let mut back = msg.clone();
            back.via = Some(self.local.addr.clone());
            back.looped = true;
            self.work.push_back(Work::Up(self.layers.len(), back));
        }
        self.frames.push_back(Frame {
            origin: msg.origin,
            dest: msg.dest,
            bytes,
        });
    }
}
