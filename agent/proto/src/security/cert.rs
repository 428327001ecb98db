//! Certificates: an ed25519 public key bound to a kind and a subject, signed
//! by an authority, with the chain of authority certificates above it.
//!
//! A root authority signs its own certificate; every trust anchor is one. A
//! certificate signed directly by a root does not carry the root (the
//! verifier holds it as an anchor); one signed by a sub-authority carries
//! that sub-authority's certificate as `parent`, and so on up to the first
//! certificate a root signed. On the wire and in files a chain is a flat list,
//! leaf first, so decoding never recurses.

use super::b64;
use super::error::SecurityError;
use crate::path::ZonePath;
use crate::row::Micros;
use crate::time::format_time;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

/// Most links in a chain, the leaf included.
pub const MAX_CHAIN: usize = 8;
/// Largest encoded chain, in bytes.
pub const MAX_CERT_BYTES: usize = 4096;
/// Longest client name.
pub const MAX_CLIENT_NAME: usize = 64;
/// Most rights one client certificate grants.
pub const MAX_RIGHTS: usize = 32;

/// Separates certificate signatures from every other kind of signed bytes.
const CERT_TAG: &str = "armillary-cert-v1";

/// Something a client certificate allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Right {
    /// Install and remove AFCs whose scope lies inside this zone (`afc:/eu`).
    Afc(ZonePath),
}

impl Right {
    pub fn parse(text: &str) -> Result<Right, SecurityError> {
        let bad = || SecurityError::BadRight(text.to_string());
        let zone = text.strip_prefix("afc:").ok_or_else(bad)?;
        ZonePath::parse(zone).map(Right::Afc).map_err(|_| bad())
    }

    /// The zone the right covers.
    pub fn zone(&self) -> &ZonePath {
        match self {
            Right::Afc(z) => z,
        }
    }
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Right::Afc(z) => write!(f, "afc:{z}"),
        }
    }
}

impl FromStr for Right {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Right, SecurityError> {
        Right::parse(s)
    }
}

impl Serialize for Right {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Right {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Right, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Right::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a certificate's key may do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// Signs certificates for zones inside its own zone, and AFCs scoped there.
    Authority,
    /// Signs the rows its agent issues; the subject is the agent's leaf zone.
    Agent,
    /// Signs AFCs and their removals in the zones it is allowed.
    Client { allow: Vec<Right> },
}

impl CertKind {
    pub fn label(&self) -> &'static str {
        match self {
            CertKind::Authority => "authority",
            CertKind::Agent => "agent",
            CertKind::Client { .. } => "client",
        }
    }
}

/// A certificate and, through `parent`, the chain that vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub kind: CertKind,
    /// A zone path for authorities and agents, a name for clients.
    pub subject: String,
    /// The certified ed25519 public key.
    pub key: [u8; 32],
    /// Valid from this time (microseconds since the Unix epoch)...
    pub issued: Micros,
    /// ...until this time.
    pub expires: Micros,
    /// The key that signed this certificate: the parent's key, the root's
    /// (when the parent is a root and left out), or `key` itself for a root.
    pub signer: [u8; 32],
    /// The ed25519 signature over [`Certificate::signing_bytes`].
    pub signature: Vec<u8>,
    /// The signing authority's certificate, unless that is a root.
    pub parent: Option<Arc<Certificate>>,
}

impl Certificate {
    /// A root authority for `zone`, signed by its own key.
    pub fn self_signed(
        key: &SigningKey,
        zone: &ZonePath,
        issued: Micros,
        expires: Micros,
    ) -> Certificate {
        let public = key.verifying_key().to_bytes();
        let mut cert = Certificate {
            kind: CertKind::Authority,
            subject: zone.to_string(),
            key: public,
            issued,
            expires,
            signer: public,
            signature: Vec::new(),
            parent: None,
        };
        cert.signature = key.sign(&cert.signing_bytes()).to_bytes().to_vec();
        cert
    }

    /// A certificate for `key`, signed by the authority whose secret key is
    /// `signer_key` and whose certificate is `signer_cert`. Checks that the
    /// subject lies inside the authority's zone and that the chain stays
    /// within bounds; the validity is cut at the authority's own expiry.
    pub fn issue(
        signer_key: &SigningKey,
        signer_cert: &Arc<Certificate>,
        kind: CertKind,
        subject: &str,
        key: [u8; 32],
        issued: Micros,
        expires: Micros,
    ) -> Result<Certificate, SecurityError> {
        if signer_cert.kind != CertKind::Authority {
            return Err(SecurityError::NotAnAuthority {
                subject: subject.to_string(),
                signer: signer_cert.kind.label(),
            });
        }
        if signer_key.verifying_key().to_bytes() != signer_cert.key {
            return Err(SecurityError::Malformed(
                "the signing key does not match the authority's certificate".into(),
            ));
        }
        let parent = (!signer_cert.is_self_signed()).then(|| signer_cert.clone());
        let mut cert = Certificate {
            kind,
            subject: subject.to_string(),
            key,
            issued,
            expires: expires.min(signer_cert.chain_expiry()),
            signer: signer_cert.key,
            signature: Vec::new(),
            parent,
        };
        cert.signature = signer_key.sign(&cert.signing_bytes()).to_bytes().to_vec();
        cert.check_shape()?;
        check_within(signer_cert, &cert)?;
        cert.check_bounds()?;
        Ok(cert)
    }

    /// The chain, this certificate first.
    pub fn chain(&self) -> impl Iterator<Item = &Certificate> {
        std::iter::successors(Some(self), |c| c.parent.as_deref())
    }

    /// Links in the chain, this certificate included.
    pub fn depth(&self) -> usize {
        self.chain().take(MAX_CHAIN + 1).count()
    }

    /// A root: signed by its own key, no parent.
    pub fn is_self_signed(&self) -> bool {
        self.parent.is_none() && self.signer == self.key
    }

    /// The earliest expiry along the chain.
    pub fn chain_expiry(&self) -> Micros {
        self.chain()
            .take(MAX_CHAIN)
            .map(|c| c.expires)
            .min()
            .unwrap_or(0)
    }

    /// The zone of an authority or agent certificate.
    pub fn zone(&self) -> Result<ZonePath, SecurityError> {
        match self.kind {
            CertKind::Client { .. } => Err(SecurityError::Malformed(format!(
                "client {} has no zone",
                self.subject
            ))),
            _ => ZonePath::parse(&self.subject)
                .map_err(|e| SecurityError::Malformed(format!("subject {:?}: {e}", self.subject))),
        }
    }

    /// The rights of a client certificate (none for other kinds).
    pub fn rights(&self) -> &[Right] {
        match &self.kind {
            CertKind::Client { allow } => allow,
            _ => &[],
        }
    }

    /// The key as people compare it: `ed25519:` and its base64.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }

    /// The bytes the signer signs: every field but the signature, the parent
    /// by its signature (which covers the parent's own fields).
    pub fn signing_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&(
            CERT_TAG,
            &self.kind,
            &self.subject,
            &self.key,
            self.issued,
            self.expires,
            &self.signer,
            self.parent.as_ref().map(|p| p.signature.as_slice()),
        ))
        .unwrap_or_default()
    }

    /// Checks this link's signature against `signer`.
    pub fn verify_signature(&self, signer: &[u8; 32]) -> Result<(), SecurityError> {
        let bad = || SecurityError::BadSignature(self.subject.clone());
        let key = VerifyingKey::from_bytes(signer).map_err(|_| bad())?;
        let sig: [u8; 64] = self.signature.as_slice().try_into().map_err(|_| bad())?;
        key.verify_strict(&self.signing_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| bad())
    }

    /// This link's fields are well formed for its kind.
    pub fn check_shape(&self) -> Result<(), SecurityError> {
        match &self.kind {
            CertKind::Authority => {
                self.zone()?;
            }
            CertKind::Agent => {
                if self.zone()?.is_root() {
                    return Err(SecurityError::Malformed(
                        "an agent certificate for the root zone: agents sit below it".into(),
                    ));
                }
            }
            CertKind::Client { allow } => {
                check_client_name(&self.subject)?;
                if allow.len() > MAX_RIGHTS {
                    return Err(SecurityError::Malformed(format!(
                        "{} rights; at most {MAX_RIGHTS}",
                        allow.len()
                    )));
                }
            }
        }
        if self.expires < self.issued {
            return Err(SecurityError::Malformed(format!(
                "the certificate of {} expires before it is issued",
                self.subject
            )));
        }
        if self.signature.len() != 64 {
            return Err(SecurityError::BadSignature(self.subject.clone()));
        }
        Ok(())
    }

    /// The chain is at most [`MAX_CHAIN`] links and [`MAX_CERT_BYTES`] bytes.
    pub fn check_bounds(&self) -> Result<(), SecurityError> {
        let depth = self.depth();
        if depth > MAX_CHAIN {
            return Err(SecurityError::TooDeep(depth));
        }
        let len = self.encoded_len();
        if len > MAX_CERT_BYTES {
            return Err(SecurityError::TooLarge(len));
        }
        Ok(())
    }

    /// Encoded size of the whole chain in bytes: an upper bound of the
    /// postcard encoding, cheap to compute (message budgets add it up).
    pub fn encoded_len(&self) -> usize {
        // Varint lengths and times are counted at their widest.
        5 + self
            .chain()
            .take(MAX_CHAIN + 1)
            .map(|c| {
                let kind = match &c.kind {
                    CertKind::Client { allow } => {
                        5 + allow
                            .iter()
                            .map(|r| 3 + 4 + r.zone().as_str().len())
                            .sum::<usize>()
                    }
                    _ => 1,
                };
                kind + 3 + c.subject.len() + 33 + 10 + 10 + 33 + 3 + c.signature.len()
            })
            .sum::<usize>()
    }

    /// Feeds every byte of the chain to a hasher (cache keys).
    pub fn hash_chain(&self, h: &mut impl Hasher) {
        for c in self.chain().take(MAX_CHAIN + 1) {
            c.kind.hash(h);
            c.subject.hash(h);
            c.key.hash(h);
            c.issued.hash(h);
            c.expires.hash(h);
            c.signer.hash(h);
            c.signature.hash(h);
        }
    }

    /// Validity of one link at `now`, with `skew` of clock disagreement allowed.
    pub fn check_time(&self, now: Micros, skew: Micros) -> Result<(), SecurityError> {
        if self.issued > now.saturating_add(skew) {
            return Err(SecurityError::NotYetValid {
                subject: self.subject.clone(),
                issued: format_time(self.issued),
            });
        }
        if now > self.expires.saturating_add(skew) {
            return Err(SecurityError::Expired {
                subject: self.subject.clone(),
                expires: format_time(self.expires),
            });
        }
        Ok(())
    }
}

/// The key as people compare it: `ed25519:` and its base64.
pub fn fingerprint(key: &[u8; 32]) -> String {
    format!("ed25519:{}", b64::encode(key))
}

/// Checks a client name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn check_client_name(name: &str) -> Result<(), SecurityError> {
    if crate::limits::is_plain_name(name, MAX_CLIENT_NAME) {
        Ok(())
    } else {
        Err(SecurityError::BadName(name.to_string()))
    }
}

/// The zone rule: what `child` names lies inside `authority`'s zone.
pub fn check_within(authority: &Certificate, child: &Certificate) -> Result<(), SecurityError> {
    let zone = authority.zone()?;
    let outside = |what: String| SecurityError::OutsideZone {
        what,
        zone: zone.to_string(),
    };
    match &child.kind {
        CertKind::Authority | CertKind::Agent => {
            let z = child.zone()?;
            if !zone.contains(&z) {
                return Err(outside(format!("{} {z}", child.kind.label())));
            }
        }
        CertKind::Client { allow } => {
            if let Some(r) = allow.iter().find(|r| !zone.contains(r.zone())) {
                return Err(outside(format!(
                    "the right {r} of client {}",
                    child.subject
                )));
            }
        }
    }
    Ok(())
}

// ----- serde: a flat list of links, leaf first ---------------------------

#[derive(Serialize)]
struct LinkRef<'a> {
    kind: &'a CertKind,
    subject: &'a str,
    #[serde(serialize_with = "b64::serialize")]
    key: &'a [u8; 32],
    issued: Micros,
    expires: Micros,
    #[serde(serialize_with = "b64::serialize")]
    signer: &'a [u8; 32],
    #[serde(serialize_with = "b64::serialize")]
    signature: &'a [u8],
}

#[derive(Serialize)]
struct ChainRef<'a> {
    chain: Vec<LinkRef<'a>>,
}

#[derive(Deserialize)]
struct Link {
    kind: CertKind,
    subject: String,
    #[serde(deserialize_with = "b64::deserialize_key")]
    key: [u8; 32],
    issued: Micros,
    expires: Micros,
    #[serde(deserialize_with = "b64::deserialize_key")]
    signer: [u8; 32],
    #[serde(deserialize_with = "b64::deserialize_vec")]
    signature: Vec<u8>,
}

#[derive(Deserialize)]
struct Chain {
    chain: Vec<Link>,
}

impl Serialize for Certificate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ChainRef {
            chain: self
                .chain()
                .map(|c| LinkRef {
                    kind: &c.kind,
                    subject: &c.subject,
                    key: &c.key,
                    issued: c.issued,
                    expires: c.expires,
                    signer: &c.signer,
                    signature: &c.signature,
                })
                .collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Certificate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Certificate, D::Error> {
        let Chain { chain } = Chain::deserialize(d)?;
        if chain.is_empty() || chain.len() > MAX_CHAIN {
            return Err(serde::de::Error::custom(format!(
                "a certificate chain of {} links; 1 to {MAX_CHAIN} are allowed",
                chain.len()
            )));
        }
        let mut parent: Option<Arc<Certificate>> = None;
        for l in chain.into_iter().rev() {
            parent = Some(Arc::new(Certificate {
                kind: l.kind,
                subject: l.subject,
                key: l.key,
                issued: l.issued,
                expires: l.expires,
                signer: l.signer,
                signature: l.signature,
                parent,
            }));
        }
        let leaf = parent.expect("the chain is not empty");
        Ok(Arc::unwrap_or_clone(leaf))
    }
}
