//! Peer authentication with Armillary certificates: each side of a QUIC
//! connection sends its agent certificate and a signature over the TLS
//! session's exported keying material (see [`PeerAuth`]).

use super::transport::PeerAuth;
use crate::Refusal;
use crate::security::{CertKind, Certificate, Identity, Trust, now_micros};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Serialize, Deserialize)]
struct Hello {
    cert: Certificate,
    signature: Vec<u8>,
}

/// Authenticates agents certified under our trust anchors.
pub struct CertAuth {
    identity: Arc<Identity>,
    trust: Arc<Trust>,
}

impl CertAuth {
    pub fn new(identity: Arc<Identity>, trust: Arc<Trust>) -> CertAuth {
        CertAuth { identity, trust }
    }
}

impl PeerAuth for CertAuth {
    fn hello(&self, binding: &[u8]) -> Vec<u8> {
        let hello = Hello {
            cert: (*self.identity.cert).clone(),
            signature: self.identity.sign(binding),
        };
        postcard::to_allocvec(&hello).unwrap_or_default()
    }

    fn check(&self, bytes: &[u8], binding: &[u8]) -> Result<String, Refusal> {
        let hello: Hello = postcard::from_bytes(bytes).map_err(|_| Refusal::BadHello)?;
        self.trust
            .verify(&hello.cert, now_micros())
            .map_err(|_| Refusal::UntrustedPeer)?;
        if hello.cert.kind != CertKind::Agent {
            return Err(Refusal::PeerNotAgent);
        }
        let key = VerifyingKey::from_bytes(&hello.cert.key).map_err(|_| Refusal::UntrustedPeer)?;
        let sig =
            Signature::from_slice(&hello.signature).map_err(|_| Refusal::BadHelloSignature)?;
        key.verify_strict(binding, &sig)
            .map_err(|_| Refusal::BadHelloSignature)?;
        Ok(hello.cert.subject)
    }
}
