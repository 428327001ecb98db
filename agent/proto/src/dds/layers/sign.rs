//! `sign`: every message carries its origin's ed25519 signature, checked
//! end to end: relays forward frames untouched, so the member that
//! delivers is the one that checks. The signature covers the channel, the
//! origin's stream and everything above this layer (its headers and the
//! body); the key an origin must sign with comes from the channel's
//! [`KeyBook`]. Unsigned, forged or unknown-signer messages are refused
//! and counted, never delivered.
//!
//! Header: the 64-byte signature, then the proof of the signer's key
//! (its certificate with [`crate::dds::CertKeys`], nothing with pinned
//! keys), at most [`MAX_PROOF`] bytes.

use crate::dds::codec::Writer;
use crate::dds::layer::{Cx, Layer, Msg, OriginId};
use crate::dds::spec::LayerKind;
use crate::dds::stack::KeyBook;
use ed25519_dalek::{Signature, Signer, SigningKey};
use std::sync::Arc;

/// Longest proof a header may carry.
pub const MAX_PROOF: usize = 4096;

pub struct Sign {
    channel: u64,
    signer: Option<Arc<SigningKey>>,
    proof: Arc<[u8]>,
    keys: Option<Arc<dyn KeyBook>>,
    signed: u64,
    verified: u64,
    refused: u64,
}

/// What a signature covers.
fn signed_bytes(channel: u64, origin: &OriginId, msg: &Msg) -> Vec<u8> {
    let inner = msg.encode_inner();
    let mut w = Writer::with_capacity(inner.len() + 64);
    w.raw(b"armillary-dds-sign")
        .raw(&channel.to_le_bytes())
        .str(&origin.addr)
        .varint(origin.inc)
        .raw(&inner);
    w.finish()
}

impl Sign {
    pub fn new(
        channel: u64,
        signer: Option<Arc<SigningKey>>,
        proof: Arc<[u8]>,
        keys: Option<Arc<dyn KeyBook>>,
    ) -> Sign {
        Sign {
            channel,
            signer,
            proof,
            keys,
            signed: 0,
            verified: 0,
            refused: 0,
        }
    }
}

impl Layer for Sign {
    fn kind(&self) -> LayerKind {
        LayerKind::Sign
    }

    fn down(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        let Some(key) = &self.signer else {
            return cx.refuse("no_signing_key");
        };
        let sig = key.sign(&signed_bytes(self.channel, &msg.origin, &msg));
        let mut header = Vec::with_capacity(64 + self.proof.len());
        header.extend_from_slice(&sig.to_bytes());
        header.extend_from_slice(&self.proof);
        msg.push(header);
        self.signed += 1;
        cx.down(msg);
    }

    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>) {
        // This stack signed it a moment ago, on its way down.
        if msg.looped {
            return cx.up(msg);
        }
        let Some((sig, proof)) = header
            .split_first_chunk::<64>()
            .filter(|(_, p)| p.len() <= MAX_PROOF)
        else {
            self.refused += 1;
            return cx.refuse("unsigned");
        };
        let key = self
            .keys
            .as_ref()
            .and_then(|k| k.key_of(&msg.origin.addr, proof, cx.now));
        let Some(key) = key else {
            self.refused += 1;
            return cx.refuse("unknown_signer");
        };
        let bytes = signed_bytes(self.channel, &msg.origin, &msg);
        if key
            .verify_strict(&bytes, &Signature::from_bytes(sig))
            .is_err()
        {
            self.refused += 1;
            return cx.refuse("bad_signature");
        }
        self.verified += 1;
        cx.up(msg);
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("signed", self.signed),
            ("verified", self.verified),
            ("refused", self.refused),
        ]);
    }
}
