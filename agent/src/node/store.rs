//! The agent's data directory: what a restarted agent must keep.
//!
//! Layout:
//! - `armillary.json`: the marker (format version, the agent's zone and its
//!   cluster id), so an agent never writes into a directory that is not its
//!   own, nor joins another cluster with it;
//! - `state.json`: the AFCs the agent holds (installed here or adopted) and
//!   the attributes applications set;
//! - `services/NAME.state`: each service's own durable state, as the
//!   service encodes it;
//! - `keys/`: a copy of the agent's keys directory (secure mode).
//!
//! Every file is replaced atomically ([`crate::fsutil::write_atomic`]).

use crate::ClusterId;
use crate::afc::AfcCert;
use crate::fsutil::{read_bounded, write_atomic};
use crate::path::ZonePath;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zone_sql::Attrs;

const MARKER: &str = "armillary.json";
const STATE: &str = "state.json";
const SERVICES: &str = "services";
const RESET_KEY: &str = "quic-reset.key";
const FORMAT: u32 = 1;
/// Largest state file read back.
const MAX_STATE_BYTES: u64 = 16 << 20;

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{0} is not an Armillary data directory (it is not empty and has no {MARKER}); choose an empty or new directory"
    )]
    NotOurs(PathBuf),
    #[error(
        "{dir} belongs to the agent of zone {found}; start with --zone {found}, or use another --data-dir for {wanted}"
    )]
    OtherZone {
        dir: PathBuf,
        found: String,
        wanted: ZonePath,
    },
    #[error(
        "{dir} belongs to an agent of cluster {found}; start with that --cluster-id, or use another --data-dir for cluster {wanted}"
    )]
    OtherCluster {
        dir: PathBuf,
        found: String,
        wanted: ClusterId,
    },
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
}

fn write_marker(path: &Path, leaf: &ZonePath, cluster: &str) -> Result<(), StoreError> {
    let m = Marker {
        format: FORMAT,
        zone: leaf.as_str().to_string(),
        cluster: Some(cluster.to_string()),
    };
    let bytes = serde_json::to_vec_pretty(&m).expect("marker serialises");
    write_atomic(path, &bytes, false).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |err| StoreError::Io {
        path: path.to_path_buf(),
        err,
    }
}

#[derive(Serialize, Deserialize)]
struct Marker {
    format: u32,
    zone: String,
    /// The cluster id in hex; absent in directories made before clusters.
    #[serde(default)]
    cluster: Option<String>,
}

/// What the agent keeps across restarts.
#[derive(Serialize, Deserialize, Default)]
pub struct SavedState {
    pub afcs: Vec<Arc<AfcCert>>,
    pub attrs: Attrs,
}

/// An opened data directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (or initialises) the data directory of the agent at `leaf` in
    /// `cluster`.
    pub fn open(dir: &Path, leaf: &ZonePath, cluster: ClusterId) -> Result<Store, StoreError> {
        let ours = cluster.to_string();
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let marker = dir.join(MARKER);
        if marker.exists() {
            let bytes = read_bounded(&marker, 4096).map_err(io_err(&marker))?;
            let m: Marker = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: marker.clone(),
                msg: e.to_string(),
            })?;
            if m.format != FORMAT {
                return Err(StoreError::Corrupt {
                    path: marker,
                    msg: format!("format {} is not {FORMAT}", m.format),
                });
            }
            if m.zone != leaf.as_str() {
                return Err(StoreError::OtherZone {
                    dir: dir.to_path_buf(),
                    found: m.zone,
                    wanted: leaf.clone(),
                });
            }
            match m.cluster {
                Some(found) if found != ours => {
                    return Err(StoreError::OtherCluster {
                        dir: dir.to_path_buf(),
                        found,
                        wanted: cluster,
                    });
                }
                Some(_) => {}
                None => write_marker(&marker, leaf, &ours)?,
            }
        } else {
            let empty = fs::read_dir(dir).map_err(io_err(dir))?.next().is_none();
            if !empty {
                return Err(StoreError::NotOurs(dir.to_path_buf()));
            }
            write_marker(&marker, leaf, &ours)?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the agent's keys are kept.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Copies a keys directory into the data directory (file by file, each atomically).
    pub fn adopt_keys(&self, from: &Path) -> Result<(), StoreError> {
        let to = self.keys_dir();
        if from == to {
            return Ok(());
        }
        fs::create_dir_all(&to).map_err(io_err(&to))?;
        for entry in fs::read_dir(from).map_err(io_err(from))? {
            let entry = entry.map_err(io_err(from))?;
            let p = entry.path();
            if !p.is_file() {
                continue;
            }
            let bytes = read_bounded(&p, 64 * 1024).map_err(io_err(&p))?;
            let private = p.extension().is_some_and(|e| e == "key");
            write_atomic(&to.join(entry.file_name()), &bytes, private).map_err(io_err(&to))?;
        }
        Ok(())
    }

    /// The key of this agent's QUIC stateless resets, made on first start
    /// and kept: an agent restarted at the same address then resets the
    /// connections its peers still hold to its previous run at their first
    /// packet, instead of their sending into them until the idle timeout.
    pub fn reset_key(&self) -> Result<[u8; 32], StoreError> {
        let path = self.dir.join(RESET_KEY);
        if path.exists() {
            let bytes = read_bounded(&path, 64).map_err(io_err(&path))?;
            return bytes.try_into().map_err(|_| StoreError::Corrupt {
                path: path.clone(),
                msg: "not a 32-byte key; delete it to make a new one".into(),
            });
        }
        let key: [u8; 32] = rand::random();
        write_atomic(&path, &key, true).map_err(io_err(&path))?;
        Ok(key)
    }

    /// The saved state, or an empty one on first start.
    pub fn load_state(&self) -> Result<SavedState, StoreError> {
        let path = self.dir.join(STATE);
        if !path.exists() {
            return Ok(SavedState::default());
        }
        let bytes = read_bounded(&path, MAX_STATE_BYTES).map_err(io_err(&path))?;
        let state: SavedState =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                msg: format!("{e}; move the file away to start without saved state"),
            })?;
        Ok(state)
    }

    /// The saved state of the service `name`, if it has any.
    pub fn load_service(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.service_path(name);
        if !path.exists() {
            return Ok(None);
        }
        read_bounded(&path, MAX_STATE_BYTES)
            .map(Some)
            .map_err(io_err(&path))
    }

    /// Replaces the saved state of the service `name`.
    pub fn save_service(&self, name: &str, state: &[u8]) -> Result<(), StoreError> {
        let dir = self.dir.join(SERVICES);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = self.service_path(name);
        write_atomic(&path, state, false).map_err(io_err(&path))
    }

    fn service_path(&self, name: &str) -> PathBuf {
        self.dir.join(SERVICES).join(format!("{name}.state"))
    }

    /// Replaces the saved state.
    pub fn save_state(&self, afcs: &[Arc<AfcCert>], attrs: &Attrs) -> Result<(), StoreError> {
        let path = self.dir.join(STATE);
        let state = SavedState {
            afcs: afcs.to_vec(),
            attrs: attrs.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        write_atomic(&path, &bytes, false).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zone_sql::Value;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("armillary-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn keeps_state_and_refuses_foreign_dirs() {
        let leaf = ZonePath::parse("/eu/h1").unwrap();
        let d = tmp("state");
        let s = Store::open(&d, &leaf, ClusterId::default()).unwrap();
        assert!(s.load_state().unwrap().afcs.is_empty());
        let mut attrs = Attrs::new();
        attrs.set("role", Value::Str("db".into()));
        let afc = Arc::new(AfcCert::new(ZonePath::root(), "m", "SELECT MAX(x) AS x", 7));
        s.save_state(std::slice::from_ref(&afc), &attrs).unwrap();
        let s2 = Store::open(&d, &leaf, ClusterId::default()).unwrap();
        let st = s2.load_state().unwrap();
        assert_eq!(st.attrs, attrs);
        assert_eq!(*st.afcs[0], *afc);
        // Another zone's agent may not use it.
        let other = ZonePath::parse("/us/h2").unwrap();
        assert!(matches!(
            Store::open(&d, &other, ClusterId::default()),
            Err(StoreError::OtherZone { .. })
        ));
        // Nor an agent of another cluster.
        let prod = ClusterId::named("prod").unwrap();
        assert!(matches!(
            Store::open(&d, &leaf, prod),
            Err(StoreError::OtherCluster { .. })
        ));
        // A directory with someone else's files is refused.
        let f = tmp("foreign");
        fs::create_dir_all(&f).unwrap();
        fs::write(f.join("notes.txt"), "hello").unwrap();
        assert!(matches!(
            Store::open(&f, &leaf, ClusterId::default()),
            Err(StoreError::NotOurs(_))
        ));
        // Each service's state in a file of its own.
        assert_eq!(s2.load_service("chm").unwrap(), None);
        s2.save_service("chm", b"\x01\x02").unwrap();
        s2.save_service("evn", b"e").unwrap();
        assert_eq!(
            s2.load_service("chm").unwrap().as_deref(),
            Some(&b"\x01\x02"[..])
        );
        assert!(d.join("services").join("evn.state").is_file());
        // A torn or hostile state file is a clear error, not a panic.
        fs::write(d.join(STATE), "{\"afcs\": [").unwrap();
        assert!(matches!(
            Store::open(&d, &leaf, ClusterId::default())
                .unwrap()
                .load_state(),
            Err(StoreError::Corrupt { .. })
        ));
        let _ = fs::remove_dir_all(&d);
        let _ = fs::remove_dir_all(&f);
    }
}
