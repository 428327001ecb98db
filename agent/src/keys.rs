//! The keys directory: one identity (a secret key, its certificate and the
//! trust anchor) per directory, written by `armillary keys`.
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

use crate::clock::now_micros;
use crate::fsutil::{read_bounded, write_atomic};
use armillary_proto::row::Micros;
use armillary_proto::security::{
    CertKind, Certificate, Identity, MAX_CERT_BYTES, Role, SecurityError, b64,
};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest key or certificate file read (JSON of a chain at most 4 KiB of postcard).
const MAX_FILE_BYTES: u64 = 8 * MAX_CERT_BYTES as u64;
/// The anchor's file name in every keys directory.
pub const ANCHOR_FILE: &str = "anchor.cert";

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

/// Reading and writing an [`Identity`]'s keys directory.
pub trait KeysDir: Sized {
    /// Writes the keys directory (created if missing). Refuses to replace
    /// any existing key or certificate file unless `force`. Returns the
    /// files written.
    fn save(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, KeysError>;
    /// Loads and fully checks the keys directory `dir`, whatever its role.
    fn load(dir: &Path) -> Result<Self, KeysError>;
    /// Loads and fully checks a keys directory that must hold `role` keys.
    fn load_as(dir: &Path, role: Role) -> Result<Self, KeysError>;
    /// [`KeysDir::load`] at a given time, optionally requiring a role.
    fn load_at(dir: &Path, role: Option<Role>, now: Micros) -> Result<Self, KeysError>;
    /// Reads a keys directory, checking its files' form and that they belong
    /// together, but not the certificate's validity (see [`Identity::check`]).
    fn read(dir: &Path) -> Result<Self, KeysError>;
}

impl KeysDir for Identity {
    fn save(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, KeysError> {
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

    fn load(dir: &Path) -> Result<Identity, KeysError> {
        Self::load_at(dir, None, now_micros())
    }

    fn load_as(dir: &Path, role: Role) -> Result<Identity, KeysError> {
        Self::load_at(dir, Some(role), now_micros())
    }

    fn load_at(dir: &Path, role: Option<Role>, now: Micros) -> Result<Identity, KeysError> {
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

    fn read(dir: &Path) -> Result<Identity, KeysError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use armillary_proto::path::ZonePath;
    use armillary_proto::security::DAY;

    const NOW: Micros = 1_700_000_000_000_000;
    const YEAR: Micros = 365 * DAY;

    fn root(zone: &str) -> Identity {
        Identity::new_root(&ZonePath::parse(zone).unwrap(), NOW, NOW + 10 * YEAR)
    }

    fn agent(auth: &Identity, leaf: &str) -> Identity {
        auth.new_child(CertKind::Agent, leaf, NOW, NOW + YEAR)
            .unwrap()
    }

    #[test]
    fn keys_directories_round_trip_and_refuse_what_does_not_belong() {
        let base = std::env::temp_dir().join(format!("armillary-keys-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let ca = root("/");
        let h7 = agent(&ca, "/eu/h7");
        let (ca_dir, h7_dir) = (base.join("ca"), base.join("h7"));
        ca.save(&ca_dir, false).unwrap();
        let written = h7.save(&h7_dir, false).unwrap();
        assert_eq!(written.len(), 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(h7_dir.join("agent.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = Identity::load_at(&h7_dir, Some(Role::Agent), NOW).unwrap();
        assert_eq!(back.cert, h7.cert);
        assert_eq!(back.public_key(), h7.public_key());
        let ca_back = Identity::load_at(&ca_dir, None, NOW).unwrap();
        assert_eq!(ca_back.role(), Role::Authority);
        // The certificate file is readable JSON with base64 keys.
        let text = std::fs::read_to_string(h7_dir.join("agent.cert")).unwrap();
        assert!(text.contains("\"subject\": \"/eu/h7\""), "{text}");
        assert!(text.contains(&b64::encode(&h7.cert.key)));
        // Refusals.
        assert!(matches!(
            h7.save(&h7_dir, false),
            Err(KeysError::Exists { .. })
        ));
        h7.save(&h7_dir, true).unwrap();
        assert!(matches!(
            Identity::load_at(&h7_dir, Some(Role::Authority), NOW),
            Err(KeysError::WrongRole { .. })
        ));
        assert!(matches!(
            Identity::load_at(&base, None, NOW),
            Err(KeysError::NoKeys { .. })
        ));
        assert!(matches!(
            Identity::load_at(&h7_dir, None, NOW + 2 * YEAR),
            Err(KeysError::Invalid { .. })
        ));
        // A key from another identity.
        std::fs::copy(ca_dir.join("authority.key"), h7_dir.join("agent.key")).unwrap();
        assert!(matches!(
            Identity::load_at(&h7_dir, None, NOW),
            Err(KeysError::Malformed { .. })
        ));
        let other = agent(&ca, "/eu/h7");
        let other_dir = base.join("other");
        other.save(&other_dir, false).unwrap();
        std::fs::copy(other_dir.join("agent.key"), h7_dir.join("agent.key")).unwrap();
        assert!(matches!(
            Identity::load_at(&h7_dir, None, NOW),
            Err(KeysError::KeyMismatch { .. })
        ));
        // Garbage and oversized files.
        std::fs::write(h7_dir.join("agent.cert"), "not json").unwrap();
        assert!(matches!(
            Identity::load_at(&h7_dir, None, NOW),
            Err(KeysError::Malformed { .. })
        ));
        std::fs::write(h7_dir.join("agent.cert"), vec![b' '; 1 << 20]).unwrap();
        assert!(matches!(
            Identity::load_at(&h7_dir, None, NOW),
            Err(KeysError::Read { .. })
        ));
        // A foreign anchor.
        other.save(&h7_dir, true).unwrap();
        assert!(Identity::load_at(&h7_dir, None, NOW).is_ok());
        let foreign = root("/");
        foreign.save(&base.join("foreign"), false).unwrap();
        std::fs::copy(
            base.join("foreign").join("anchor.cert"),
            h7_dir.join("anchor.cert"),
        )
        .unwrap();
        assert!(matches!(
            Identity::load_at(&h7_dir, None, NOW),
            Err(KeysError::Invalid { .. })
        ));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
