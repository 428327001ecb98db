//! The key book of a cluster with certificates: a signed message carries
//! its origin agent's certificate, and the receiver takes the key from it
//! once the chain checks against its trust anchors (cached by [`Trust`]),
//! so `sign` works end to end between agents that never met, through
//! relays that hold no keys.
//!
//! What `sign` then guarantees: the message was written by an agent the
//! cluster's authority certified, and not changed since. The origin's
//! address in the frame is its claim; the certificate names its zone.

use super::layers::sign::MAX_PROOF;
use super::stack::KeyBook;
use crate::row::Micros;
use crate::security::{CertKind, Certificate, Trust};
use ed25519_dalek::VerifyingKey;
use std::sync::Arc;

/// Keys from the certificates messages carry, checked against `trust`.
pub struct CertKeys {
    trust: Arc<Trust>,
}

impl CertKeys {
    pub fn new(trust: Arc<Trust>) -> CertKeys {
        CertKeys { trust }
    }

    /// What an agent's signed messages carry: its certificate, encoded.
    pub fn proof_of(cert: &Certificate) -> Vec<u8> {
        postcard::to_allocvec(cert).unwrap_or_default()
    }
}

impl KeyBook for CertKeys {
    fn key_of(&self, _origin: &str, proof: &[u8], now: Micros) -> Option<VerifyingKey> {
        if proof.is_empty() || proof.len() > MAX_PROOF {
            return None;
        }
        let cert: Certificate = postcard::from_bytes(proof).ok()?;
        // Only agents publish; a client publishes through its agent.
        if cert.kind != CertKind::Agent {
            return None;
        }
        self.trust.verify(&cert, now).ok()?;
        VerifyingKey::from_bytes(&cert.key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::ZonePath;
    use crate::security::Identity;

    const DAY: Micros = 86_400_000_000;

    #[test]
    fn keys_come_from_certified_agents_only() {
        let root = Identity::new_root(&ZonePath::root(), 0, 10 * DAY);
        let agent = root
            .new_child(CertKind::Agent, "/eu/a", 0, 10 * DAY)
            .unwrap();
        let book = CertKeys::new(Arc::new(root.trust().unwrap()));
        let proof = CertKeys::proof_of(&agent.cert);
        let key = book.key_of("x:1", &proof, DAY).expect("a certified agent");
        assert_eq!(key.to_bytes(), agent.public_key());
        // Expired, garbage, empty, or from another authority: no key.
        assert!(book.key_of("x:1", &proof, 11 * DAY).is_none());
        assert!(book.key_of("x:1", &proof[..proof.len() / 2], DAY).is_none());
        assert!(book.key_of("x:1", &[], DAY).is_none());
        let other = Identity::new_root(&ZonePath::root(), 0, 10 * DAY);
        let stranger = other
            .new_child(CertKind::Agent, "/eu/a", 0, 10 * DAY)
            .unwrap();
        let forged = CertKeys::proof_of(&stranger.cert);
        assert!(book.key_of("x:1", &forged, DAY).is_none());
        // An authority's own certificate is not an agent's.
        assert!(
            book.key_of("x:1", &CertKeys::proof_of(&root.cert), DAY)
                .is_none()
        );
    }
}
