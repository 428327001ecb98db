//! `encrypt`: AEAD (XChaCha20-Poly1305) under a channel key, with key
//! epochs in the header and a new key whenever the set of members changes.
//!
//! The channel's coordinator is the key manager. A member asks it for the
//! key when its stack starts and again every `key_refresh`; the manager
//! answers with the keys of the last epochs (so that a member that missed
//! a rekey still reads what was sealed before it) and, when the requester is new,
//! rekeys (at most once per `rekey_min`, so that a burst of joins costs one
//! rekey), sending the new key to every member. A member that leaves, or
//! stops asking for three refresh periods, is dropped and the manager
//! rekeys without it: it cannot read what follows. Keys travel point to
//! point between agents, never through relays, inside the transport's own
//! encryption (QUIC with TLS); relays carry ciphertext they cannot read.
//!
//! The seal covers the headers above and the body; the channel, the origin
//! and the epoch are its associated data, so a ciphertext cannot be moved
//! to another channel or origin. Nonces are 24 bytes: 16 drawn when the
//! stack starts (a restarted origin draws new ones) and a counter.
//!
//! Header: `0 epoch nonce[24]` sealed | `1` key request | `2 n (epoch
//! key[32])*n` the kept keys | `3` leave.

use crate::dds::codec::{DecodeError, Reader, Writer};
use crate::dds::layer::{Backpressure, Control, Cx, Dest, Layer, Msg, OriginId};
use crate::dds::params::Params;
use crate::dds::spec::LayerKind;
use crate::row::Micros;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Epochs whose keys a member keeps (messages in flight across a rekey).
const KEPT_EPOCHS: usize = 4;
/// Wait between key requests while messages wait for a key.
const ASK_AGAIN: Micros = 500_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncryptHeader {
    Sealed {
        epoch: u32,
        nonce: [u8; 24],
    },
    KeyRequest,
    /// The keys of the epochs the manager keeps, newest last.
    Key(Vec<(u32, [u8; 32])>),
    Leave,
}

impl EncryptHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            EncryptHeader::Sealed { epoch, nonce } => w.u8(0).varint(*epoch as u64).raw(nonce),
            EncryptHeader::KeyRequest => w.u8(1),
            EncryptHeader::Key(keys) => {
                w.u8(2).varint(keys.len() as u64);
                for (e, k) in keys {
                    w.varint(*e as u64).raw(k);
                }
                &mut w
            }
            EncryptHeader::Leave => w.u8(3),
        };
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<EncryptHeader, DecodeError> {
        let mut r = Reader::new(b);
        let h = match r.u8()? {
            0 => EncryptHeader::Sealed {
                epoch: r.varint_max(u32::MAX as u64)? as u32,
                nonce: r.array()?,
            },
            1 => EncryptHeader::KeyRequest,
            2 => {
                let n = r.count(KEPT_EPOCHS, 33)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push((r.varint_max(u32::MAX as u64)? as u32, r.array()?));
                }
                EncryptHeader::Key(keys)
            }
            3 => EncryptHeader::Leave,
            t => return Err(DecodeError::BadTag(t)),
        };
        r.end()?;
        Ok(h)
    }
}

pub struct Encrypt {
    channel: u64,
    local: OriginId,
    manager: Arc<str>,
    keys: BTreeMap<u32, [u8; 32]>,
    prefix: [u8; 16],
    counter: u64,
    out_wait: VecDeque<Msg>,
    in_wait: VecDeque<(u32, [u8; 24], Msg)>,
    wait_limit: usize,
    asked_at: Option<Micros>,
    /// The manager's members and when each was last heard.
    members: BTreeMap<Arc<str>, Micros>,
    last_rekey: Micros,
    /// This member left: it asks for no more keys.
    left: bool,
    rekey_min: Micros,
    refresh: Micros,
    sealed: u64,
    opened: u64,
    rekeys: u64,
    dropped: u64,
}

fn aad(channel: u64, origin: &OriginId, epoch: u32) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(b"armillary-dds-encrypt")
        .raw(&channel.to_le_bytes())
        .str(&origin.addr)
        .varint(origin.inc)
        .varint(epoch as u64);
    w.finish()
}

impl Encrypt {
    pub fn new(channel: u64, local: OriginId, manager: Arc<str>, p: &Params) -> Encrypt {
        Encrypt {
            channel,
            local,
            manager,
            keys: BTreeMap::new(),
            prefix: [0; 16],
            counter: 0,
            out_wait: VecDeque::new(),
            in_wait: VecDeque::new(),
            wait_limit: p.key_wait_buffer.max(1),
            asked_at: None,
            members: BTreeMap::new(),
            last_rekey: 0,
            left: false,
            rekey_min: p.rekey_min,
            refresh: p.key_refresh.max(1),
            sealed: 0,
            opened: 0,
            rekeys: 0,
            dropped: 0,
        }
    }

    fn is_manager(&self) -> bool {
        self.local.addr == self.manager
    }

    /// The current epoch.
    pub fn epoch(&self) -> Option<u32> {
        self.keys.keys().next_back().copied()
    }

    fn to(&self, to: &Arc<str>, h: EncryptHeader, cx: &mut Cx<'_>) {
        let mut m = Msg::new(self.local.clone(), Dest::Peer(to.clone()), Vec::new());
        m.push(h.encode());
        cx.down(m);
    }

    fn ask(&mut self, cx: &mut Cx<'_>) {
        if self.is_manager() || self.left || self.asked_at.is_some_and(|t| t + ASK_AGAIN > cx.now) {
            return;
        }
        self.asked_at = Some(cx.now);
        let m = self.manager.clone();
        self.to(&m, EncryptHeader::KeyRequest, cx);
    }

    fn add_key(&mut self, epoch: u32, key: [u8; 32]) {
        self.keys.insert(epoch, key);
        while self.keys.len() > KEPT_EPOCHS {
            self.keys.pop_first();
        }
    }

    fn seal(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        let Some((&epoch, key)) = self.keys.iter().next_back() else {
            if self.out_wait.len() >= self.wait_limit {
                self.out_wait.pop_front();
                self.dropped += 1;
            }
            self.out_wait.push_back(msg);
            return self.ask(cx);
        };
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(&self.prefix);
        nonce[16..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        let inner = msg.seal();
        let ad = aad(self.channel, &msg.origin, epoch);
        let ct = XChaCha20Poly1305::new(key.into())
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &inner,
                    aad: &ad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length below 256 GiB");
        msg.body = ct;
        msg.push(EncryptHeader::Sealed { epoch, nonce }.encode());
        self.sealed += 1;
        cx.down(msg);
    }

    fn open(&mut self, epoch: u32, nonce: [u8; 24], mut msg: Msg, cx: &mut Cx<'_>) {
        let Some(key) = self.keys.get(&epoch) else {
            if self
                .epoch()
                .is_some_and(|e| epoch as u64 + KEPT_EPOCHS as u64 <= e as u64)
            {
                return cx.refuse("expired_epoch");
            }
            if self.in_wait.len() >= self.wait_limit {
                self.in_wait.pop_front();
                self.dropped += 1;
            }
            self.in_wait.push_back((epoch, nonce, msg));
            return self.ask(cx);
        };
        let ad = aad(self.channel, &msg.origin, epoch);
        let pt = XChaCha20Poly1305::new(key.into()).decrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &msg.body,
                aad: &ad,
            },
        );
        match pt {
            Ok(pt) if msg.unseal(&pt).is_ok() => {
                self.opened += 1;
                cx.up(msg);
            }
            _ => cx.refuse("bad_ciphertext"),
        }
    }

    fn rekey(&mut self, cx: &mut Cx<'_>) {
        let mut key = [0u8; 32];
        cx.rng.fill_bytes(&mut key);
        self.add_key(self.epoch().map_or(1, |e| e + 1), key);
        self.last_rekey = cx.now;
        self.rekeys += 1;
        let members: Vec<Arc<str>> = self.members.keys().cloned().collect();
        for m in members {
            self.to(&m, self.key_message(), cx);
        }
    }

    fn key_message(&self) -> EncryptHeader {
        EncryptHeader::Key(self.keys.iter().map(|(e, k)| (*e, *k)).collect())
    }

    fn schedule_rekey(&self, cx: &mut Cx<'_>) {
        cx.arm("rekey", cx.now.max(self.last_rekey + self.rekey_min));
    }

    /// Sends and opens what waited for a key.
    fn retry(&mut self, cx: &mut Cx<'_>) {
        for m in std::mem::take(&mut self.out_wait) {
            self.seal(m, cx);
        }
        for (e, n, m) in std::mem::take(&mut self.in_wait) {
            self.open(e, n, m, cx);
        }
    }
}

impl Layer for Encrypt {
    fn kind(&self) -> LayerKind {
        LayerKind::Encrypt
    }

    fn admit(&self, _: Micros, _: usize) -> Result<(), Backpressure> {
        if self.keys.is_empty() && self.out_wait.len() >= self.wait_limit {
            return Err(Backpressure::NoKey);
        }
        Ok(())
    }

    fn down(&mut self, msg: Msg, cx: &mut Cx<'_>) {
        self.seal(msg, cx);
    }

    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>) {
        let Ok(h) = EncryptHeader::decode(header) else {
            return cx.refuse("bad_header");
        };
        // Key messages travel point to point: the sender is the transport's peer.
        let from = msg.via.clone().unwrap_or_else(|| msg.origin.addr.clone());
        match h {
            EncryptHeader::Sealed { epoch, nonce } => self.open(epoch, nonce, msg, cx),
            EncryptHeader::KeyRequest if self.is_manager() => {
                if self.members.insert(from.clone(), cx.now).is_none() {
                    self.schedule_rekey(cx);
                }
                if !self.keys.is_empty() {
                    self.to(&from, self.key_message(), cx);
                }
            }
            EncryptHeader::Leave if self.is_manager() => {
                if self.members.remove(&from).is_some() {
                    self.schedule_rekey(cx);
                }
            }
            EncryptHeader::Key(keys) if *from == *self.manager => {
                for (epoch, key) in keys {
                    self.add_key(epoch, key);
                }
                self.asked_at = None;
                self.retry(cx);
            }
            _ => cx.refuse("stray_key_message"),
        }
    }

    fn timer(&mut self, name: &'static str, cx: &mut Cx<'_>) {
        match name {
            "start" => {
                cx.rng.fill_bytes(&mut self.prefix);
                if self.is_manager() {
                    self.rekey(cx);
                } else {
                    self.ask(cx);
                }
                cx.set_timer("refresh", cx.now + self.refresh);
            }
            "refresh" => {
                cx.set_timer("refresh", cx.now + self.refresh);
                if self.is_manager() {
                    let since = cx.now.saturating_sub(3 * self.refresh);
                    let before = self.members.len();
                    self.members.retain(|_, heard| *heard >= since);
                    if self.members.len() != before {
                        self.schedule_rekey(cx);
                    }
                } else {
                    self.asked_at = None;
                    self.ask(cx);
                }
            }
            "rekey" => {
                self.rekey(cx);
                self.retry(cx);
            }
            _ => {}
        }
    }

    fn control(&mut self, ctl: &Control, cx: &mut Cx<'_>) {
        if *ctl == Control::Leaving && !self.is_manager() {
            // Unacknowledged: if it is lost, the manager drops this member
            // when its refreshes stop.
            self.left = true;
            let m = self.manager.clone();
            self.to(&m, EncryptHeader::Leave, cx);
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("sealed", self.sealed),
            ("opened", self.opened),
            ("rekeys", self.rekeys),
            ("epoch", self.epoch().unwrap_or(0) as u64),
            ("dropped", self.dropped),
            ("waiting", (self.in_wait.len() + self.out_wait.len()) as u64),
        ]);
    }
}
