//! Aggregation function certificates (AFCs) and the agent's store of them.
//!
//! An AFC is a named SQL program with a zone scope. It applies to every zone in
//! its scope's subtree, and travels in the rows of its scope's own table, so
//! exactly the agents below the scope see it. A removal is a newer tombstone.

use crate::limits::{self, MAX_AFCS_PER_SCOPE, MAX_SCOPE_AFC_BYTES};
use crate::path::ZonePath;
use crate::row::Micros;
use crate::security::Certificate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use zone_sql::Program;

/// Longest accepted AFC name, in bytes.
pub const MAX_AFC_NAME: usize = 64;
/// Most tombstones kept per scope.
pub const MAX_TOMBSTONES_PER_SCOPE: usize = 256;

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
    /// Where this version stands in the preference order.
    rank: Rank,
    /// When a tombstone was last needed: rows carry it for the tombstone
    /// horizon from then on (see [`AfcStore::carried`]).
    revived: Micros,
}

impl StoredAfc {
    fn valid(&self) -> bool {
        !matches!(self.state, AfcState::Rejected(_))
    }
}

/// The preference order of two versions of one AFC, total and the same on
/// every agent whatever the order they arrive in: valid over invalid, then
/// the newer issue time, then a tombstone over a live version, then the
/// larger digest of the signed content.
type Rank = (bool, Micros, bool, u64);

fn rank(cert: &AfcCert, valid: bool) -> Rank {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hasher::write(&mut h, &cert.signing_bytes());
    std::hash::Hasher::write(&mut h, &cert.signature);
    let digest = std::hash::Hasher::finish(&h);
    (valid, cert.issued, cert.removed, digest)
}

/// Why the store has no room for a new AFC at a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeFull {
    #[error(
        "scope {scope} already holds {count} live AFCs, the limit per scope ({MAX_AFCS_PER_SCOPE}); remove one first"
    )]
    Count { scope: ZonePath, count: usize },
    #[error(
        "the AFCs of scope {scope} would take {bytes} bytes, over the limit of {MAX_SCOPE_AFC_BYTES} bytes per scope (every row of the scope's table carries them; tombstones of removed AFCs count until collected); remove or shorten AFCs"
    )]
    Bytes { scope: ZonePath, bytes: usize },
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
            if let Some(bad) = p.outputs().iter().find(|o| limits::is_reserved(o)) {
                return (
                    AfcState::Rejected(format!(
                        "output {bad} is a reserved attribute; choose another name"
                    )),
                    None,
                );
            }
            if let Some(Err(e)) = p
                .outputs()
                .iter()
                .map(|o| limits::check_name(o))
                .find(Result::is_err)
            {
                return (AfcState::Rejected(format!("output {e}")), None);
            }
            (AfcState::Active, Some(p))
        }
    }
}

/// The AFCs an agent knows, keyed by (scope, name); newest valid version wins.
#[derive(Debug, Clone)]
pub struct AfcStore {
    entries: BTreeMap<(ZonePath, Arc<str>), StoredAfc>,
    version: u64,
    /// The tombstone horizon: how long rows carry a removal.
    keep: Micros,
}

impl Default for AfcStore {
    fn default() -> Self {
        AfcStore::new(24 * 3600 * 1_000_000)
    }
}

impl AfcStore {
    /// An empty store whose rows carry removals for `keep` microseconds.
    pub fn new(keep: Micros) -> AfcStore {
        AfcStore {
            entries: BTreeMap::new(),
            version: 0,
            keep,
        }
    }

    /// A counter that moves whenever the set of AFCs changes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Offers a version; returns true when it replaced what the store held.
    /// The version kept is the first in the [`Rank`] order, so every agent
    /// keeps the same one whatever order versions arrive in. A new AFC for
    /// a scope that has no room ([`AfcStore::room_for`]) is refused.
    pub fn offer(&mut self, cert: Arc<AfcCert>, now: Micros) -> bool {
        let key = cert.key();
        if let Some(held) = self.entries.get(&key) {
            if Arc::ptr_eq(&held.cert, &cert) || *held.cert == *cert {
                return false;
            }
            // Fast path: an older version never beats a valid newer one.
            if held.valid() && held.cert.issued > cert.issued {
                return false;
            }
        }
        let (state, program) = compile(&cert);
        let valid = !matches!(state, AfcState::Rejected(_));
        let rank = rank(&cert, valid);
        if let Some(held) = self.entries.get(&key) {
            if held.rank >= rank {
                return false;
            }
        } else if self.room_for(&cert, now).is_err() {
            return false;
        }
        self.entries.insert(
            key,
            StoredAfc {
                cert,
                state,
                program,
                rank,
                revived: now,
            },
        );
        self.version += 1;
        true
    }

    /// Whether `cert` fits its scope's bounds: live AFCs per scope and the
    /// bytes every row of the scope's table carries.
    pub fn room_for(&self, cert: &AfcCert, now: Micros) -> Result<(), ScopeFull> {
        let scope = &cert.scope;
        let (mut count, mut bytes) = (0, 0);
        for e in self
            .iter()
            .filter(|e| e.cert.scope == *scope && e.cert.name != cert.name)
        {
            if self.carried(e, now) {
                bytes += e.cert.encoded_len();
                count += usize::from(e.state == AfcState::Active);
            }
        }
        if !cert.removed && count >= MAX_AFCS_PER_SCOPE {
            return Err(ScopeFull::Count {
                scope: scope.clone(),
                count,
            });
        }
        bytes += cert.encoded_len();
        if bytes > MAX_SCOPE_AFC_BYTES {
            return Err(ScopeFull::Bytes {
                scope: scope.clone(),
                bytes,
            });
        }
        Ok(())
    }

    /// Whether rows carry this AFC: every valid one, except tombstones and
    /// expired AFCs older than the tombstone horizon. Old tombstones stay in
    /// the store (an older version offered again loses to them) and are
    /// carried again when a row shows the version they removed
    /// ([`AfcStore::revive`]).
    pub fn carried(&self, e: &StoredAfc, now: Micros) -> bool {
        let keep = self.keep;
        match e.state {
            AfcState::Active => true,
            AfcState::Rejected(_) => false,
            AfcState::Removed => now.saturating_sub(e.cert.issued.max(e.revived)) < keep,
            AfcState::Expired => now.saturating_sub(e.cert.expires.unwrap_or(0)) < keep,
        }
    }

    /// When `cert` lost to a held tombstone, carries that tombstone again
    /// from `now`, so that the agents still holding the removed version
    /// learn of the removal; returns whether it was revived.
    pub fn revive(&mut self, cert: &AfcCert, now: Micros) -> bool {
        let Some(e) = self.entries.get(&cert.key()) else {
            return false;
        };
        if e.state != AfcState::Removed || cert.removed || e.cert.issued < cert.issued {
            return false;
        }
        if self.carried(e, now) {
            return false;
        }
        if let Some(e) = self.entries.get_mut(&cert.key()) {
            e.revived = now;
        }
        self.version += 1;
        true
    }

    /// Marks expired AFCs, forgets expired ones older than the tombstone
    /// horizon, and keeps at most [`MAX_TOMBSTONES_PER_SCOPE`]
    /// tombstones per scope (the oldest go first).
    ///
    /// Tombstones are otherwise kept for good: collecting one would let the
    /// version it removed come back from an agent that was away longer
    /// (a long partition, a data directory restored from an old copy).
    pub fn expire(&mut self, now: Micros) {
        let keep = self.keep;
        let mut changed = false;
        let mut tombstones: BTreeMap<ZonePath, usize> = BTreeMap::new();
        self.entries.retain(|(scope, _), e| {
            if e.state == AfcState::Active && !e.cert.is_live(now) {
                e.state = AfcState::Expired;
                e.program = None;
                changed = true;
            }
            if e.state == AfcState::Removed {
                *tombstones.entry(scope.clone()).or_default() += 1;
            }
            let dead = e.state == AfcState::Expired
                && now.saturating_sub(e.cert.expires.unwrap_or(0)) > keep;
            changed |= dead;
            !dead
        });
        for (scope, n) in tombstones {
            if n <= MAX_TOMBSTONES_PER_SCOPE {
                continue;
            }
            let mut times: Vec<Micros> = self
                .entries
                .iter()
                .filter(|((s, _), e)| *s == scope && e.state == AfcState::Removed)
                .map(|(_, e)| e.cert.issued)
                .collect();
            times.sort_unstable();
            let cutoff = times[n - MAX_TOMBSTONES_PER_SCOPE];
            self.entries.retain(|(s, _), e| {
                *s != scope || e.state != AfcState::Removed || e.cert.issued >= cutoff
            });
            changed = true;
        }
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
        assert!(s.offer(
            Arc::new(AfcCert::new(p("/"), "a", "SELECT MAX(x) AS x", 10)),
            0
        ));
        assert!(!s.offer(
            Arc::new(AfcCert::new(p("/"), "a", "SELECT MIN(x) AS x", 5)),
            0
        ));
        // A newer but invalid version does not displace a valid one.
        assert!(!s.offer(Arc::new(AfcCert::new(p("/"), "a", "SELEC nonsense", 20)), 0));
        assert_eq!(s.applicable(&p("/eu")).len(), 1);
        assert!(s.offer(Arc::new(AfcCert::tombstone(p("/"), "a", 30)), 0));
        assert_eq!(s.get(&p("/"), "a").unwrap().state, AfcState::Removed);
        assert!(s.applicable(&p("/eu")).is_empty());
    }

    #[test]
    fn tombstones_outlive_the_horizon_and_come_back_when_needed() {
        let mut s = AfcStore::new(100);
        let live = Arc::new(AfcCert::new(p("/"), "a", "SELECT MAX(x) AS x", 10));
        assert!(s.offer(live.clone(), 10));
        assert!(s.offer(Arc::new(AfcCert::tombstone(p("/"), "a", 30)), 30));
        let e = s.get(&p("/"), "a").unwrap().clone();
        assert!(s.carried(&e, 100));
        // Past the horizon: kept, no longer carried, and the removed
        // version still loses to it.
        s.expire(1_000);
        let e = s.get(&p("/"), "a").unwrap().clone();
        assert_eq!(e.state, AfcState::Removed);
        assert!(!s.carried(&e, 1_000));
        assert!(!s.offer(live.clone(), 1_000));
        // A row showing the removed version makes rows carry the removal again.
        assert!(s.revive(&live, 1_000));
        let e = s.get(&p("/"), "a").unwrap().clone();
        assert!(s.carried(&e, 1_050));
        assert!(!s.revive(&live, 1_050));
    }

    #[test]
    fn the_version_kept_does_not_depend_on_arrival_order() {
        // Same name, scope and issue time; different content: every order
        // of arrival keeps the same one.
        let versions: Vec<Arc<AfcCert>> = [
            AfcCert::new(p("/"), "a", "SELECT MAX(x) AS x", 10),
            AfcCert::new(p("/"), "a", "SELECT MIN(x) AS x", 10),
            AfcCert::new(p("/"), "a", "SELECT SUM(x) AS x", 10),
            AfcCert::tombstone(p("/"), "a", 10),
            AfcCert::new(p("/"), "a", "SELEC broken", 11),
        ]
        .into_iter()
        .map(Arc::new)
        .collect();
        let mut kept = Vec::new();
        for rot in 0..versions.len() {
            for rev in [false, true] {
                let mut order: Vec<_> = versions.clone();
                order.rotate_left(rot);
                if rev {
                    order.reverse();
                }
                let mut s = AfcStore::default();
                for v in order {
                    s.offer(v, 0);
                }
                kept.push(s.get(&p("/"), "a").unwrap().cert.clone());
            }
        }
        assert!(kept.windows(2).all(|w| w[0] == w[1]), "{kept:?}");
        // Valid over invalid, and a tombstone wins a tie of issue times.
        assert!(kept[0].removed);
    }

    #[test]
    fn a_scope_holds_a_bounded_set() {
        let mut s = AfcStore::default();
        for i in 0..MAX_AFCS_PER_SCOPE {
            let a = AfcCert::new(p("/"), &format!("a{i}"), "SELECT MAX(x) AS x", 1);
            assert!(s.room_for(&a, 0).is_ok());
            assert!(s.offer(Arc::new(a), 0));
        }
        let extra = AfcCert::new(p("/"), "extra", "SELECT MAX(x) AS x", 1);
        assert!(matches!(
            s.room_for(&extra, 0),
            Err(ScopeFull::Count { .. })
        ));
        assert!(!s.offer(Arc::new(extra), 0));
        // A new version of a held name still fits; another scope has room.
        let again = AfcCert::new(p("/"), "a0", "SELECT MIN(x) AS x", 2);
        assert!(s.offer(Arc::new(again), 0));
        let elsewhere = AfcCert::new(p("/eu"), "b", "SELECT MAX(x) AS x", 1);
        assert!(s.offer(Arc::new(elsewhere), 0));
        // Bytes: a few long AFCs fill a scope.
        let mut s = AfcStore::default();
        let long = format!("SELECT MAX(x) AS x WHERE y <> '{}'", "p".repeat(3000));
        let mut fitted = 0;
        for i in 0..8 {
            let a = AfcCert::new(p("/"), &format!("l{i}"), &long, 1);
            if s.room_for(&a, 0).is_ok() {
                fitted += 1;
                s.offer(Arc::new(a), 0);
            } else {
                assert!(matches!(s.room_for(&a, 0), Err(ScopeFull::Bytes { .. })));
            }
        }
        assert!((1..8).contains(&fitted), "{fitted}");
    }

    #[test]
    fn most_specific_scope_wins_per_name() {
        let mut s = AfcStore::default();
        s.offer(
            Arc::new(AfcCert::new(p("/"), "a", "SELECT MAX(x) AS x", 1)),
            0,
        );
        s.offer(
            Arc::new(AfcCert::new(p("/eu"), "a", "SELECT MIN(x) AS x", 1)),
            0,
        );
        let eu = s.applicable(&p("/eu/paris"));
        assert_eq!(eu.len(), 1);
        assert_eq!(eu[0].cert.scope, p("/eu"));
        let us = s.applicable(&p("/us"));
        assert_eq!(us[0].cert.scope, p("/"));
    }

    #[test]
    fn reserved_outputs_are_rejected() {
        let mut s = AfcStore::default();
        s.offer(
            Arc::new(AfcCert::new(p("/"), "a", "SELECT SUM(x) AS nmembers", 1)),
            0,
        );
        assert!(matches!(
            s.get(&p("/"), "a").unwrap().state,
            AfcState::Rejected(_)
        ));
    }
}
