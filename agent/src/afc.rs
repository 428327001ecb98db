//! Aggregation function certificates (AFCs) and the agent's store of them.
//!
//! An AFC is a named SQL program with a zone scope. It applies to every zone in
//! its scope's subtree, and travels in the rows of its scope's own table, so
//! exactly the agents below the scope see it. A removal is a newer tombstone.

use crate::path::ZonePath;
use crate::row::{Micros, RESERVED};
use crate::security::Certificate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use zone_sql::Program;

/// Longest accepted AFC name, in bytes.
pub const MAX_AFC_NAME: usize = 64;

/// A signed AFC (or its tombstone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AfcCert {
    /// The zone whose subtree the AFC aggregates.
    pub scope: ZonePath,
    pub name: Arc<str>,
    /// The SQL program; empty for a tombstone.
    pub sql: Arc<str>,
    pub issued: Micros,
    /// After this time the AFC counts as removed.
    pub expires: Option<Micros>,
    /// A tombstone: the AFC of this name and scope is removed.
    pub removed: bool,
    /// Who signed it: the subject of `cert` (an authority's zone or a
    /// client's name); `insecure` without keys.
    pub signer: Arc<str>,
    /// The signer's ed25519 signature over [`AfcCert::signing_bytes`].
    pub signature: Vec<u8>,
    /// The signer's certificate and its chain (None in insecure mode).
    #[serde(default)]
    pub cert: Option<Arc<Certificate>>,
}

/// Separates AFC signatures from every other kind of signed bytes.
const AFC_TAG: &str = "armillary-afc-v1";

impl AfcCert {
    /// An unsigned AFC, as `armillary dev` and the simulator install them.
    pub fn new(scope: ZonePath, name: &str, sql: &str, issued: Micros) -> AfcCert {
        AfcCert {
            scope,
            name: name.into(),
            sql: sql.into(),
            issued,
            expires: None,
            removed: false,
            signer: "insecure".into(),
            signature: Vec::new(),
            cert: None,
        }
    }

    /// The tombstone that removes this AFC.
    pub fn tombstone(scope: ZonePath, name: &str, issued: Micros) -> AfcCert {
        AfcCert {
            removed: true,
            ..AfcCert::new(scope, name, "", issued)
        }
    }

    pub fn encoded_len(&self) -> usize {
        3 + self.scope.as_str().len()
            + 2
            + self.name.len()
            + 3
            + self.sql.len()
            + 10
            + 11
            + 1
            + 2
            + self.signer.len()
            + 2
            + self.signature.len()
            + 1
            + self.cert.as_ref().map_or(0, |c| c.encoded_len())
    }

    /// The identity of an AFC across versions.
    pub fn key(&self) -> (ZonePath, Arc<str>) {
        (self.scope.clone(), self.name.clone())
    }

    /// The bytes a signer signs: everything but the signature and the
    /// certificate (which the signature is checked against).
    pub fn signing_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(&(
            AFC_TAG,
            &self.scope,
            &self.name,
            &self.sql,
            self.issued,
            self.expires,
            self.removed,
            &self.signer,
        ))
        .unwrap_or_default()
    }

    pub fn is_live(&self, now: Micros) -> bool {
        !self.removed && self.expires.is_none_or(|e| now < e)
    }
}

/// What the agent made of an AFC.
#[derive(Debug, Clone, PartialEq)]
pub enum AfcState {
    Active,
    /// Not accepted: bad SQL, reserved outputs, bad signature...
    Rejected(String),
    Removed,
    Expired,
}

impl AfcState {
    pub fn label(&self) -> &'static str {
        match self {
            AfcState::Active => "active",
            AfcState::Rejected(_) => "rejected",
            AfcState::Removed => "removed",
            AfcState::Expired => "expired",
        }
    }
}

/// One AFC as the agent holds it.
#[derive(Debug, Clone)]
pub struct StoredAfc {
    pub cert: Arc<AfcCert>,
    pub state: AfcState,
    pub program: Option<Program>,
}

impl StoredAfc {
    fn valid(&self) -> bool {
        !matches!(self.state, AfcState::Rejected(_))
    }
}

/// Checks an AFC before it is stored: name, SQL, outputs.
pub fn compile(cert: &AfcCert) -> (AfcState, Option<Program>) {
    if cert.name.is_empty()
        || cert.name.len() > MAX_AFC_NAME
        || !cert
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return (
            AfcState::Rejected(format!("bad AFC name {:?}", cert.name)),
            None,
        );
    }
    if cert.removed {
        return (AfcState::Removed, None);
    }
    match Program::compile(&cert.sql) {
        Err(e) => (AfcState::Rejected(e.to_string()), None),
        Ok(p) => {
            if let Some(bad) = p.outputs().iter().find(|o| RESERVED.contains(&&***o)) {
                return (
                    AfcState::Rejected(format!(
                        "output {bad} is a reserved attribute; choose another name"
                    )),
                    None,
                );
            }
            (AfcState::Active, Some(p))
        }
    }
}

/// The AFCs an agent knows, keyed by (scope, name); newest valid version wins.
#[derive(Debug, Default, Clone)]
pub struct AfcStore {
    entries: BTreeMap<(ZonePath, Arc<str>), StoredAfc>,
    version: u64,
}

impl AfcStore {
    /// A counter that moves whenever the set of AFCs changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Offers a version; returns true when it replaced what the store held.
    ///
    /// Preference: valid over invalid, then newer issue time.
    pub fn offer(&mut self, cert: Arc<AfcCert>) -> bool {
        let key = cert.key();
        if let Some(held) = self.entries.get(&key) {
            if held.cert.issued >= cert.issued && (held.valid() || held.cert.issued > cert.issued) {
                return false;
            }
            if Arc::ptr_eq(&held.cert, &cert) || *held.cert == *cert {
                return false;
            }
        }
        let (state, program) = compile(&cert);
        if let Some(held) = self.entries.get(&key)
            && held.valid()
            && matches!(state, AfcState::Rejected(_))
        {
            return false;
        }
        self.entries.insert(
            key,
            StoredAfc {
                cert,
                state,
                program,
            },
        );
        self.version += 1;
        true
    }

    /// Marks expired AFCs and forgets tombstones older than `keep` (microseconds).
    pub fn expire(&mut self, now: Micros, keep: Micros) {
        let mut changed = false;
        self.entries.retain(|_, e| {
            if e.state == AfcState::Active && !e.cert.is_live(now) {
                e.state = AfcState::Expired;
                e.program = None;
                changed = true;
            }
            let dead = matches!(e.state, AfcState::Removed | AfcState::Expired)
                && now.saturating_sub(e.cert.issued.max(e.cert.expires.unwrap_or(0))) > keep;
            changed |= dead;
            !dead
        });
        if changed {
            self.version += 1;
        }
    }

    pub fn get(&self, scope: &ZonePath, name: &str) -> Option<&StoredAfc> {
        self.entries.get(&(scope.clone(), Arc::from(name)))
    }

    pub fn iter(&self) -> impl Iterator<Item = &StoredAfc> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The active programs that compute `zone`'s row: for each name, the one
    /// with the most specific scope containing `zone`; sorted by name.
    pub fn applicable<'a>(&'a self, zone: &ZonePath) -> Vec<&'a StoredAfc> {
        let mut by_name: BTreeMap<&str, &StoredAfc> = BTreeMap::new();
        for e in self.entries.values() {
            if e.state != AfcState::Active || !e.cert.scope.contains(zone) {
                continue;
            }
            match by_name.get(&*e.cert.name) {
                Some(o) if o.cert.scope.depth() >= e.cert.scope.depth() => {}
                _ => {
                    by_name.insert(&e.cert.name, e);
                }
            }
        }
        by_name.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ZonePath {
        ZonePath::parse(s).unwrap()
    }

    #[test]
    fn newer_valid_versions_win_and_tombstones_remove() {
        let mut s = AfcStore::default();
        assert!(s.offer(Arc::new(AfcCert::new(
            p("/"),
            "a",
            "SELECT MAX(x) AS x",
            10
        ))));
        assert!(!s.offer(Arc::new(AfcCert::new(p("/"), "a", "SELECT MIN(x) AS x", 5))));
        // A newer but invalid version does not displace a valid one.
        assert!(!s.offer(Arc::new(AfcCert::new(p("/"), "a", "SELEC nonsense", 20))));
        assert_eq!(s.applicable(&p("/eu")).len(), 1);
        assert!(s.offer(Arc::new(AfcCert::tombstone(p("/"), "a", 30))));
        assert_eq!(s.get(&p("/"), "a").unwrap().state, AfcState::Removed);
        assert!(s.applicable(&p("/eu")).is_empty());
        s.expire(1_000, 100);
        assert!(s.is_empty());
    }

    #[test]
    fn most_specific_scope_wins_per_name() {
        let mut s = AfcStore::default();
        s.offer(Arc::new(AfcCert::new(p("/"), "a", "SELECT MAX(x) AS x", 1)));
        s.offer(Arc::new(AfcCert::new(
            p("/eu"),
            "a",
            "SELECT MIN(x) AS x",
            1,
        )));
        let eu = s.applicable(&p("/eu/paris"));
        assert_eq!(eu.len(), 1);
        assert_eq!(eu[0].cert.scope, p("/eu"));
        let us = s.applicable(&p("/us"));
        assert_eq!(us[0].cert.scope, p("/"));
    }

    #[test]
    fn reserved_outputs_are_rejected() {
        let mut s = AfcStore::default();
        s.offer(Arc::new(AfcCert::new(
            p("/"),
            "a",
            "SELECT SUM(x) AS nmembers",
            1,
        )));
        assert!(matches!(
            s.get(&p("/"), "a").unwrap().state,
            AfcState::Rejected(_)
        ));
    }
}
