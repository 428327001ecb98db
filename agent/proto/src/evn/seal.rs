//! Signatures on what EVN spreads (events, condition definitions): the
//! signer's certificate travels with the signature, so any agent can check
//! it against its trust anchors, through relays that hold no keys.

use crate::row::Micros;
use crate::security::{CertKind, Certificate, Trust};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The most bytes of a carried certificate.
pub const MAX_PROOF: usize = 2048;

/// Why a seal does not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("not signed, and this cluster signs what EVN spreads")]
    Unsigned,
    #[error("the signature or certificate does not check: {0}")]
    Bad(&'static str),
}

/// Signs `bytes`: the signer's certificate (encoded) and the signature.
pub fn sign(bytes: &[u8], key: &SigningKey, cert: &Certificate) -> (Vec<u8>, Vec<u8>) {
    let proof = postcard::to_allocvec(cert).unwrap_or_default();
    (proof, key.sign(bytes).to_bytes().to_vec())
}

/// Checks that an agent certified under `trust` for zone `signer` signed
/// `bytes`. `bytes` must cover `proof`.
pub fn verify(
    bytes: &[u8],
    proof: &[u8],
    sig: &[u8],
    signer: &str,
    trust: &Trust,
    now: Micros,
) -> Result<(), SealError> {
    if sig.is_empty() || proof.is_empty() {
        return Err(SealError::Unsigned);
    }
    if proof.len() > MAX_PROOF {
        return Err(SealError::Bad("oversized certificate"));
    }
    let cert: Certificate =
        postcard::from_bytes(proof).map_err(|_| SealError::Bad("no certificate"))?;
    if cert.kind != CertKind::Agent {
        return Err(SealError::Bad("not an agent's certificate"));
    }
    trust
        .verify(&cert, now)
        .map_err(|_| SealError::Bad("the certificate is not the cluster's"))?;
    let zone = cert
        .zone()
        .map_err(|_| SealError::Bad("the certificate names no zone"))?;
    if zone.as_str() != signer {
        return Err(SealError::Bad("the certificate names another agent"));
    }
    let key = VerifyingKey::from_bytes(&cert.key).map_err(|_| SealError::Bad("bad key"))?;
    let sig = Signature::from_slice(sig).map_err(|_| SealError::Bad("bad signature length"))?;
    key.verify(bytes, &sig)
        .map_err(|_| SealError::Bad("the signature does not match"))
}
