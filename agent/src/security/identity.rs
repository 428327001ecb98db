//! An identity: a secret key with its certificate and trust anchor, and the
//! keys directory that holds them.
//!
//! # Keys directory
//!
//! One directory per identity, written by `armillary keys`:
//!
//! | role | files |
//! | --- | --- |
//! | authority | `authority.key`, `authority.cert`, `anchor.cert` |
//! | agent | `agent.key`, `agent.cert`, `anchor.cert` (what `armillary agent --keys DIR` reads) |
//! | client | `client.key`, `client.cert`, `anchor.cert` |
//!
//! Every file is JSON, byte strings as base64, so an operator can read the
//! certificates:
//!
//! - `ROLE.key`: `{"role": "agent", "secret_key": "...", "public_key": "..."}`,
//!   mode 0600. The secret never leaves this file.
//! - `ROLE.cert`: the certificate and its chain, `{"chain": [leaf, ..., the
//!   first certificate a root signed]}`; a root authority's is self-signed.
//! - `anchor.cert`: the root authority's self-signed certificate, the trust
//!   anchor every agent and client of the system shares.
//!
//! Loading checks everything: sizes, JSON, that the secret key matches the
//! certificate, that the anchor is a root, and that the certificate verifies
//! against the anchor.

use super::b64;
use super::cert::{CertKind, Certificate, MAX_CERT_BYTES};
use super::clock::now_micros;
use super::error::SecurityError;
use super::trust::Trust;
use crate::fsutil::{read_bounded, write_atomic};
use crate::path::ZonePath;
use crate::row::Micros;
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest key or certificate file read (JSON of a chain at most 4 KiB of postcard).
const MAX_FILE_BYTES: u64 = 8 * MAX_CERT_BYTES as u64;
/// The anchor's file name in every keys directory.
pub const ANCHOR_FILE: &str = "anchor.cert";

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

/// Why a keys directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(
        "{dir} holds no Armillary keys (no authority.key, agent.key or client.key); create them with `armillary keys authority|agent|client --out {dir}`"
    )]
    NoKeys { dir: String },
    #[error("{dir} holds keys of several kinds ({found}); keep one identity per directory")]
    Ambiguous { dir: String, found: String },
    #[error("{dir} holds {found} keys, but {wanted} keys are needed here")]
    WrongRole {
        dir: String,
        found: Role,
        wanted: Role,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid {what}: {reason}")]
    Malformed {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error(
        "the secret key in {key} does not belong to the certificate in {cert}: the files come from different runs; create the directory again"
    )]
    KeyMismatch { key: String, cert: String },
    #[error(
        "the certificate in {dir} does not verify against its anchor.cert: {source}; issue a new one with `armillary keys`"
    )]
    Invalid { dir: String, source: SecurityError },
    #[error(
        "{path} already exists; pass --force to replace the keys in its directory (a replaced secret key is lost)"
    )]
    Exists { path: String },
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// A secret key file's content.
#[derive(Serialize, Deserialize)]
struct KeyFile {
    role: Role,
    #[serde(
        serialize_with = "b64::serialize",
        deserialize_with = "b64::deserialize_key"
    )]
    secret_key: [u8; 32],
    #[serde(
        serialize_with = "b64::serialize",
        deserialize_with = "b64::deserialize_key"
    )]
    public_key: [u8; 32],
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

    /// Writes the keys directory (created if missing). Refuses to replace
    /// any existing key or certificate file unless `force`. Returns the
    /// files written.
    pub fn save(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, KeysError> {
        let role = self.role();
        if !force {
            let mut existing: Vec<String> = Role::ALL.iter().map(|r| r.key_file()).collect();
            existing.extend(Role::ALL.iter().map(|r| r.cert_file()));
            existing.push(ANCHOR_FILE.to_string());
            if let Some(p) = existing.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
                return Err(KeysError::Exists { path: show(&p) });
            }
        }
        create_dir(dir)?;
        let key_file = KeyFile {
            role,
            secret_key: self.key.to_bytes(),
            public_key: self.cert.key,
        };
        // Certificates first: a directory cut short lacks its key and says so.
        let files = [
            (dir.join(ANCHOR_FILE), json(&*self.anchor), false),
            (dir.join(role.cert_file()), json(&*self.cert), false),
            (dir.join(role.key_file()), json(&key_file), true),
        ];
        for (path, bytes, private) in &files {
            write_atomic(path, bytes, *private).map_err(|source| KeysError::Write {
                path: show(path),
                source,
            })?;
        }
        Ok(files.into_iter().map(|(p, _, _)| p).collect())
    }

    /// Loads and fully checks the keys directory `dir`, whatever its role.
    pub fn load(dir: &Path) -> Result<Identity, KeysError> {
        Self::load_at(dir, None, now_micros())
    }

    /// Loads and fully checks a keys directory that must hold `role` keys.
    pub fn load_as(dir: &Path, role: Role) -> Result<Identity, KeysError> {
        Self::load_at(dir, Some(role), now_micros())
    }

    /// [`Identity::load`] at a given time, optionally requiring a role.
    pub fn load_at(dir: &Path, role: Option<Role>, now: Micros) -> Result<Identity, KeysError> {
        let id = Self::read(dir)?;
        if let Some(wanted) = role
            && id.role() != wanted
        {
            return Err(KeysError::WrongRole {
                dir: show(dir),
                found: id.role(),
                wanted,
            });
        }
        id.check(now).map_err(|source| KeysError::Invalid {
            dir: show(dir),
            source,
        })?;
        Ok(id)
    }

    /// Reads a keys directory, checking its files' form and that they belong
    /// together, but not the certificate's validity (see [`Identity::check`]).
    pub fn read(dir: &Path) -> Result<Identity, KeysError> {
        let role = detect_role(dir)?;
        let key_path = dir.join(role.key_file());
        let cert_path = dir.join(role.cert_file());
        let anchor_path = dir.join(ANCHOR_FILE);
        let key_file: KeyFile = read_json(&key_path, "key file")?;
        let cert: Certificate = read_json(&cert_path, "certificate file")?;
        let anchor: Certificate = read_json(&anchor_path, "anchor file")?;
        let malformed = |path: &Path, what, reason: String| KeysError::Malformed {
            path: show(path),
            what,
            reason,
        };
        if key_file.role != role {
            return Err(malformed(
                &key_path,
                "key file",
                format!("it says it holds {} keys", key_file.role),
            ));
        }
        if Role::of(&cert.kind) != role {
            return Err(malformed(
                &cert_path,
                "certificate file",
                format!("it holds a {} certificate", cert.kind.label()),
            ));
        }
        cert.check_bounds()
            .map_err(|e| malformed(&cert_path, "certificate file", e.to_string()))?;
        if !anchor.is_self_signed() || anchor.kind != CertKind::Authority {
            return Err(malformed(
                &anchor_path,
                "anchor file",
                "it holds no root authority certificate".into(),
            ));
        }
        let key = SigningKey::from_bytes(&key_file.secret_key);
        let public = key.verifying_key().to_bytes();
        if public != key_file.public_key || public != cert.key {
            return Err(KeysError::KeyMismatch {
                key: show(&key_path),
                cert: show(&cert_path),
            });
        }
        Ok(Identity {
            key,
            cert: Arc::new(cert),
            anchor: Arc::new(anchor),
        })
    }
}

/// Which role's key a directory holds.
fn detect_role(dir: &Path) -> Result<Role, KeysError> {
    if !dir.is_dir() {
        return Err(KeysError::Read {
            path: show(dir),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let found: Vec<Role> = Role::ALL
        .into_iter()
        .filter(|r| dir.join(r.key_file()).exists())
        .collect();
    match found.as_slice() {
        [] => Err(KeysError::NoKeys { dir: show(dir) }),
        [r] => Ok(*r),
        many => Err(KeysError::Ambiguous {
            dir: show(dir),
            found: many
                .iter()
                .map(|r| r.key_file())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, KeysError> {
    let bytes = read_bounded(path, MAX_FILE_BYTES).map_err(|source| KeysError::Read {
        path: show(path),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| KeysError::Malformed {
        path: show(path),
        what,
        reason: e.to_string(),
    })
}

fn json(v: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn create_dir(dir: &Path) -> Result<(), KeysError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|source| KeysError::Write {
        path: show(dir),
        source,
    })
}

fn show(p: &Path) -> String {
    p.display().to_string()
}
