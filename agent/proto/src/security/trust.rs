//! Trust: the root authorities a side accepts, and the verification of
//! certificate chains against them.
//!
//! A chain holds when every link's signature verifies under the key above it,
//! it ends at a trust anchor (a root carried in the chain must be the anchor
//! itself; usually the root is left out and found by its key), every signer
//! is an authority whose zone contains what it certifies, and every link,
//! the anchor included, is valid at the time of use within the clock skew.
//! Chains that verified are remembered (bounded), so a certificate seen again
//! costs one keyed hash of its bytes and a walk over its validity times.

use super::cache::VerifiedSet;
use super::cert::{CertKind, Certificate, MAX_CHAIN, check_within};
use super::error::SecurityError;
use crate::row::Micros;
use std::sync::Arc;

/// Clock disagreement tolerated on validity times (10 s, as for rows).
pub const CLOCK_SKEW: Micros = 10_000_000;
/// Verified chains remembered.
pub const TRUST_CACHE: usize = 4096;

/// The trust anchors of one agent or client, and its cache of verified chains.
pub struct Trust {
    anchors: Vec<Arc<Certificate>>,
    verified: VerifiedSet,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field(
                "anchors",
                &self.anchors.iter().map(|a| &a.subject).collect::<Vec<_>>(),
            )
            .field("cached", &self.verified.len())
            .finish()
    }
}

impl Trust {
    /// Trusts the given root authorities: each must be a self-signed
    /// authority certificate whose signature verifies.
    pub fn new(
        anchors: impl IntoIterator<Item = Arc<Certificate>>,
    ) -> Result<Trust, SecurityError> {
        let anchors: Vec<Arc<Certificate>> = anchors.into_iter().collect();
        for a in &anchors {
            if !a.is_self_signed() || a.kind != CertKind::Authority {
                return Err(SecurityError::Malformed(format!(
                    "the anchor {} is not a root authority (a self-signed authority certificate)",
                    a.subject
                )));
            }
            a.check_shape()?;
            a.verify_signature(&a.key)?;
        }
        Ok(Trust {
            anchors,
            verified: VerifiedSet::new(TRUST_CACHE),
        })
    }

    /// The clock skew tolerated on validity times ([`CLOCK_SKEW`]).
    pub fn skew(&self) -> Micros {
        CLOCK_SKEW
    }

    pub fn anchors(&self) -> &[Arc<Certificate>] {
        &self.anchors
    }

    /// The anchor with this public key.
    pub fn anchor(&self, key: &[u8; 32]) -> Option<&Arc<Certificate>> {
        self.anchors.iter().find(|a| a.key == *key)
    }

    /// Chains remembered as verified.
    pub fn cached(&self) -> usize {
        self.verified.len()
    }

    /// Checks `cert` and its chain at time `now`.
    pub fn verify(&self, cert: &Certificate, now: Micros) -> Result<(), SecurityError> {
        let key = self.verified.key(|h| cert.hash_chain(h));
        if !self.verified.contains(key) {
            cert.check_bounds()?;
            self.verify_chain(cert)?;
            self.check_times(cert, now)?;
            self.verified.insert(key);
            return Ok(());
        }
        self.check_times(cert, now)
    }

    /// Signatures, anchoring and zone rules: everything but time.
    fn verify_chain(&self, cert: &Certificate) -> Result<(), SecurityError> {
        let mut link = cert;
        for _ in 0..MAX_CHAIN {
            link.check_shape()?;
            match &link.parent {
                Some(p) => {
                    if p.kind != CertKind::Authority {
                        return Err(SecurityError::NotAnAuthority {
                            subject: link.subject.clone(),
                            signer: p.kind.label(),
                        });
                    }
                    if link.signer != p.key {
                        return Err(SecurityError::Malformed(format!(
                            "the certificate of {} names a signer other than its parent {}",
                            link.subject, p.subject
                        )));
                    }
                    if p.is_self_signed() {
                        // A root carried in the chain must be the anchor itself.
                        let anchor = self
                            .anchor(&p.key)
                            .ok_or_else(|| SecurityError::UntrustedAnchor(cert.subject.clone()))?;
                        if **p != **anchor {
                            return Err(SecurityError::UntrustedAnchor(cert.subject.clone()));
                        }
                        check_within(anchor, link)?;
                        return link.verify_signature(&anchor.key);
                    }
                    check_within(p, link)?;
                    link.verify_signature(&p.key)?;
                    link = p;
                }
                None if link.is_self_signed() => {
                    let anchor = self
                        .anchor(&link.key)
                        .ok_or_else(|| SecurityError::UntrustedAnchor(cert.subject.clone()))?;
                    if *link != **anchor {
                        return Err(SecurityError::UntrustedAnchor(cert.subject.clone()));
                    }
                    return Ok(());
                }
                None => {
                    let anchor = self
                        .anchor(&link.signer)
                        .ok_or_else(|| SecurityError::UntrustedAnchor(cert.subject.clone()))?;
                    check_within(anchor, link)?;
                    return link.verify_signature(&anchor.key);
                }
            }
        }
        Err(SecurityError::TooDeep(MAX_CHAIN + 1))
    }

    /// Every link, and the anchor it rests on, is valid at `now`.
    fn check_times(&self, cert: &Certificate, now: Micros) -> Result<(), SecurityError> {
        let mut last = cert;
        for c in cert.chain().take(MAX_CHAIN) {
            c.check_time(now, CLOCK_SKEW)?;
            last = c;
        }
        if let Some(anchor) = self.anchor(&last.signer)
            && !last.is_self_signed()
        {
            anchor.check_time(now, CLOCK_SKEW)?;
        }
        Ok(())
    }
}
