//! Armillary's security layer: ed25519 certificates, signed rows and AFCs.
//!
//! - [`cert`]: certificates and their chains (authority, agent, client).
//! - [`trust`]: the trust anchors and chain verification, with its cache.
//! - [`identity`]: a secret key with its certificate and trust anchor.
//! - [`Security`]: what the protocol core holds to sign the rows it issues
//!   and verify the rows and AFCs it receives.
//!
//! An agent signs every row it issues; its certificate travels in the row, so
//! any receiver can check a row from an issuer it never met. A row holds when
//! its signature verifies under an agent certificate for its issuer that
//! chains to a trust anchor, its zone contains the issuer, and every AFC it
//! carries holds. An AFC holds when an authority over its scope, or a client
//! allowed `afc:Z` with Z containing the scope, signed it.

pub mod b64;
mod cache;
pub mod cert;
pub mod error;
pub mod identity;
pub mod trust;

#[cfg(test)]
mod tests;

pub use crate::time::{DAY, format_time};
pub use cert::{CertKind, Certificate, MAX_CERT_BYTES, MAX_CHAIN, Right, fingerprint};
pub use error::SecurityError;
pub use identity::{Identity, Role};
pub use trust::{CLOCK_SKEW, Trust};

use crate::afc::AfcCert;
use crate::path::ZonePath;
use crate::refusal::Refusal;
use crate::row::{Micros, Row};
use cache::VerifiedSet;
use ed25519_dalek::{Signature, VerifyingKey};
use std::hash::Hash;
use std::sync::Arc;

/// Verified AFCs remembered.
pub const AFC_CACHE: usize = 4096;

/// Why a row or AFC was refused; [`Reject::refusal`] is its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("unsigned: {0}")]
    Unsigned(&'static str),
    #[error("bad_signature: {0}")]
    BadSignature(String),
    #[error("untrusted_cert: {0}")]
    UntrustedCert(String),
    #[error("expired_cert: {0}")]
    ExpiredCert(String),
    #[error("issuer_outside_zone: {0}")]
    IssuerOutsideZone(String),
    #[error("afc_not_allowed: {0}")]
    AfcNotAllowed(String),
}

impl Reject {
    /// The reason, for metrics and logs.
    pub fn refusal(&self) -> Refusal {
        match self {
            Reject::Unsigned(_) => Refusal::Unsigned,
            Reject::BadSignature(_) => Refusal::BadSignature,
            Reject::UntrustedCert(_) => Refusal::UntrustedCert,
            Reject::ExpiredCert(_) => Refusal::ExpiredCert,
            Reject::IssuerOutsideZone(_) => Refusal::IssuerOutsideZone,
            Reject::AfcNotAllowed(_) => Refusal::AfcNotAllowed,
        }
    }
}

impl From<SecurityError> for Reject {
    fn from(e: SecurityError) -> Reject {
        match e {
            SecurityError::BadSignature(_) => Reject::BadSignature(e.to_string()),
            SecurityError::Expired { .. } | SecurityError::NotYetValid { .. } => {
                Reject::ExpiredCert(e.to_string())
            }
            _ => Reject::UntrustedCert(e.to_string()),
        }
    }
}

/// The security state the protocol core holds: its identity (to sign) and
/// its trust (to verify), with a cache of verified AFCs.
pub struct Security {
    identity: Arc<Identity>,
    trust: Arc<Trust>,
    afcs: VerifiedSet,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("identity", &self.identity)
            .field("trust", &self.trust)
            .finish()
    }
}

impl Security {
    pub fn new(identity: Arc<Identity>, trust: Arc<Trust>) -> Security {
        Security {
            identity,
            trust,
            afcs: VerifiedSet::new(AFC_CACHE),
        }
    }

    /// Security for the agent at `leaf`: the identity must be an agent
    /// certificate for exactly that zone, valid at `now` under its anchor.
    pub fn for_agent(
        identity: Identity,
        leaf: &ZonePath,
        now: Micros,
    ) -> Result<Security, SecurityError> {
        if identity.cert.kind != CertKind::Agent || identity.cert.subject != leaf.as_str() {
            return Err(SecurityError::Malformed(format!(
                "the agent runs as {leaf} but its keys hold a {} certificate for {}; issue one with `armillary keys agent --zone {leaf}`",
                identity.cert.kind.label(),
                identity.cert.subject
            )));
        }
        let trust = identity.trust()?;
        trust.verify(&identity.cert, now)?;
        Ok(Security::new(Arc::new(identity), Arc::new(trust)))
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    pub fn trust(&self) -> &Arc<Trust> {
        &self.trust
    }

    /// AFCs remembered as verified.
    pub fn cached_afcs(&self) -> usize {
        self.afcs.len()
    }

    /// Signs a row this agent issues: sets its certificate and signature.
    pub fn sign_row(&self, row: &mut Row) {
        let sig = self.identity.sign(&row.signing_bytes());
        row.set_signature(Some(self.identity.cert.clone()), sig);
    }

    /// Checks a received row: its issuer's certificate chain, that the
    /// certificate is the issuer's agent certificate, the signature, and
    /// every AFC it carries. (That the row's zone contains its issuer is
    /// the gossip core's check, made on every row, signed or not.)
    pub fn verify_row(&self, row: &Row, now: Micros) -> Result<(), Reject> {
        let Some(cert) = &row.cert else {
            return Err(Reject::Unsigned("a row without a certificate"));
        };
        if row.signature.is_empty() {
            return Err(Reject::Unsigned("a row without a signature"));
        }
        if cert.kind != CertKind::Agent {
            return Err(Reject::UntrustedCert(format!(
                "row of {} signed with a {} certificate; agents sign rows",
                row.zone,
                cert.kind.label()
            )));
        }
        if cert.subject != row.issuer.as_str() {
            return Err(Reject::IssuerOutsideZone(format!(
                "row of {} claims issuer {} but is signed by agent {}",
                row.zone, row.issuer, cert.subject
            )));
        }
        self.trust.verify(cert, now)?;
        if !signature_holds(&cert.key, &row.signing_bytes(), &row.signature) {
            return Err(Reject::BadSignature(format!(
                "row of {} issued by {}",
                row.zone, row.issuer
            )));
        }
        for afc in &row.afcs {
            self.verify_afc(afc, now)?;
        }
        Ok(())
    }

    /// Checks an AFC or tombstone as it travels: signed by an authority over
    /// its scope or a client allowed it, its signer's chain valid when it was
    /// issued, and not issued in the future. Verified AFCs are remembered.
    pub fn verify_afc(&self, afc: &AfcCert, now: Micros) -> Result<(), Reject> {
        let Some(cert) = &afc.cert else {
            return Err(Reject::Unsigned(
                "an AFC without a certificate; sign it with a client or authority key (`--key DIR`)",
            ));
        };
        if afc.signature.is_empty() {
            return Err(Reject::Unsigned(
                "an AFC without a signature; sign it with a client or authority key (`--key DIR`)",
            ));
        }
        if afc.issued > now.saturating_add(self.trust.skew()) {
            return Err(Reject::ExpiredCert(format!(
                "AFC {} in {} is issued in the future ({})",
                afc.name,
                afc.scope,
                format_time(afc.issued)
            )));
        }
        let key = self.afcs.key(|h| {
            afc.scope.hash(h);
            afc.name.hash(h);
            afc.sql.hash(h);
            afc.issued.hash(h);
            afc.expires.hash(h);
            afc.removed.hash(h);
            afc.signer.hash(h);
            afc.signature.hash(h);
            cert.hash_chain(h);
        });
        if self.afcs.contains(key) {
            return Ok(());
        }
        check_afc_right(cert, &afc.scope)?;
        if *afc.signer != *cert.subject {
            return Err(Reject::UntrustedCert(format!(
                "AFC {} names signer {} but carries the certificate of {}",
                afc.name, afc.signer, cert.subject
            )));
        }
        // The signer's right counts when it signed: an AFC outlives the
        // client certificate that installed it.
        self.trust.verify(cert, afc.issued)?;
        if !signature_holds(&cert.key, &afc.signing_bytes(), &afc.signature) {
            return Err(Reject::BadSignature(format!(
                "AFC {} in {} signed by {}",
                afc.name, afc.scope, afc.signer
            )));
        }
        self.afcs.insert(key);
        Ok(())
    }

    /// Checks an AFC a client hands in now: [`Security::verify_afc`], and the
    /// signer's certificate must still be valid now.
    pub fn verify_new_afc(&self, afc: &AfcCert, now: Micros) -> Result<(), Reject> {
        self.verify_afc(afc, now)?;
        if let Some(cert) = &afc.cert {
            self.trust.verify(cert, now)?;
        }
        Ok(())
    }
}

/// The signer may act on AFCs in `scope`: an authority whose zone contains
/// it, or a client with a right `afc:Z`, Z containing it.
fn check_afc_right(cert: &Certificate, scope: &ZonePath) -> Result<(), Reject> {
    let allowed = match &cert.kind {
        CertKind::Authority => cert.zone().is_ok_and(|z| z.contains(scope)),
        CertKind::Client { allow } => allow.iter().any(|r| r.zone().contains(scope)),
        CertKind::Agent => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Reject::AfcNotAllowed(format!(
            "{} {} may not install AFCs in {scope}",
            cert.kind.label(),
            cert.subject
        )))
    }
}

/// Signs an AFC or tombstone with a client's or authority's identity: sets
/// its signer name, certificate and signature.
pub fn sign_afc(identity: &Identity, afc: &mut AfcCert) {
    afc.signer = identity.cert.subject.as_str().into();
    afc.cert = Some(identity.cert.clone());
    afc.signature = identity.sign(&afc.signing_bytes());
}

/// An ed25519 signature check (strict: no malleable or weak-key signatures).
pub fn signature_holds(key: &[u8; 32], bytes: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    key.verify_strict(bytes, &Signature::from_bytes(&sig))
        .is_ok()
}
