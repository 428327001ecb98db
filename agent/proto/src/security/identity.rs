//! An identity: a secret key with its certificate and the trust anchor its
//! chain rests on, and the role it plays. Reading and writing the keys
//! directory that holds one is the runtime's (`armillary_agent::keys`).

use super::cert::{CertKind, Certificate};
use super::error::SecurityError;
use super::trust::Trust;
use crate::path::ZonePath;
use crate::row::Micros;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// What a keys directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Authority,
    Agent,
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Authority, Role::Agent, Role::Client];

    pub fn label(self) -> &'static str {
        match self {
            Role::Authority => "authority",
            Role::Agent => "agent",
            Role::Client => "client",
        }
    }

    /// The role a certificate kind plays.
    pub fn of(kind: &CertKind) -> Role {
        match kind {
            CertKind::Authority => Role::Authority,
            CertKind::Agent => Role::Agent,
            CertKind::Client { .. } => Role::Client,
        }
    }

    /// `ROLE.key`
    pub fn key_file(self) -> String {
        format!("{}.key", self.label())
    }

    /// `ROLE.cert`
    pub fn cert_file(self) -> String {
        format!("{}.cert", self.label())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A secret key, its certificate, and the trust anchor its chain rests on.
pub struct Identity {
    pub key: SigningKey,
    pub cert: Arc<Certificate>,
    pub anchor: Arc<Certificate>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("kind", &self.cert.kind)
            .field("subject", &self.cert.subject)
            .field("key", &self.cert.fingerprint())
            .finish()
    }
}

/// A fresh secret key from the operating system's generator.
pub fn generate_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random::<[u8; 32]>())
}

impl Identity {
    /// A new root authority for `zone`, valid from `now` until `expires`.
    pub fn new_root(zone: &ZonePath, now: Micros, expires: Micros) -> Identity {
        let key = generate_key();
        let cert = Arc::new(Certificate::self_signed(&key, zone, now, expires));
        Identity {
            key,
            anchor: cert.clone(),
            cert,
        }
    }

    /// A new identity certified by this authority: a sub-authority, an
    /// agent or a client, with a fresh key.
    pub fn new_child(
        &self,
        kind: CertKind,
        subject: &str,
        now: Micros,
        expires: Micros,
    ) -> Result<Identity, SecurityError> {
        let key = generate_key();
        let cert = self.issue(kind, subject, key.verifying_key().to_bytes(), now, expires)?;
        Ok(Identity {
            key,
            cert: Arc::new(cert),
            anchor: self.anchor.clone(),
        })
    }

    /// Certifies someone else's public key (this identity must be an authority).
    pub fn issue(
        &self,
        kind: CertKind,
        subject: &str,
        key: [u8; 32],
        now: Micros,
        expires: Micros,
    ) -> Result<Certificate, SecurityError> {
        Certificate::issue(&self.key, &self.cert, kind, subject, key, now, expires)
    }

    pub fn role(&self) -> Role {
        Role::of(&self.cert.kind)
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.cert.key
    }

    /// The ed25519 signature of `bytes`.
    pub fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(bytes).to_bytes().to_vec()
    }

    /// Trust in this identity's anchor alone.
    pub fn trust(&self) -> Result<Trust, SecurityError> {
        Trust::new([self.anchor.clone()])
    }

    /// Checks that the certificate verifies against the anchor at `now`.
    pub fn check(&self, now: Micros) -> Result<(), SecurityError> {
        self.trust()?.verify(&self.cert, now)
    }
}
