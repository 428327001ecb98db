//! Distributed conditions: a SQL query every agent of a scope runs over its
//! own local tables, and an aggregate of the local results combined in the
//! network through the zone tree.
//!
//! How the local results travel: each agent of the scope publishes, in its
//! leaf row, `evn_c_NAME` (1 when its local query is true, else 0) and
//! `evn_n_NAME` (1: it evaluated). In each leaf-level zone one member, the
//! first whose row is fresh (name order), also publishes what its table
//! shows of the members that did not answer in time: `evn_x_NAME` (how
//! many of them had answered once, so that their old `n` is still summed),
//! `evn_y_NAME` (how many of those still count as true from that old
//! answer) and `evn_s_NAME` (the names, a few, of all that did not answer
//! in time). Every zone sums these, so the scope's row gives the whole
//! answer: true at `c - y` agents, `n - x` contributors of `nmembers`, and
//! the names of those that did not contribute. Before any reporter has
//! spoken the answer is still right: `n` counts only agents that answered. The definitions themselves spread by EVN's
//! anti-entropy and are kept on disk, so an agent that comes back
//! contributes without anyone installing the condition again.

use crate::path::ZonePath;
use crate::row::{Micros, Row};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use zone_sql::{Attrs, Value};

/// The most conditions a cluster holds at once.
pub const MAX_CONDITIONS: usize = 8;
/// The most removed conditions remembered (so none comes back).
pub const MAX_TOMBSTONES: usize = 256;
/// The most bytes of a condition's SQL.
pub const MAX_SQL: usize = 4096;
/// The longest name.
pub const MAX_NAME: usize = 24;
/// The longest `for` or `keep_firing_for`.
pub const MAX_HOLD: Micros = 3_600_000_000;
/// How many non-contributors a zone row names.
pub const MISSING_NAMES: usize = 16;

/// A condition as the operator gave it, with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub name: Arc<str>,
    pub scope: ZonePath,
    pub sql: Arc<str>,
    /// It fires when at least this many agents are true.
    pub min: u64,
    /// How long the threshold must hold before it fires.
    pub hold_for: Micros,
    /// How long it keeps firing after the threshold stops holding.
    pub keep_for: Micros,
    /// When it was set or removed, on the setter's clock, and the setter.
    pub version: Micros,
    pub by: Arc<str>,
    pub removed: bool,
    /// The setter's certificate, postcard-encoded (empty when insecure).
    #[serde(default)]
    pub proof: Vec<u8>,
    /// ed25519 over the definition without this field (empty when insecure).
    #[serde(default)]
    pub sig: Vec<u8>,
}

/// Why a condition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error(
        "condition name {0:?} is not allowed: 1 to {MAX_NAME} lower-case letters, digits or '_', starting with a letter"
    )]
    BadName(String),
    #[error("the condition's SQL is {0} bytes; at most {MAX_SQL}")]
    SqlTooLong(usize),
    #[error("--min must be at least 1")]
    BadMin,
    #[error("--for and --keep-firing-for must be at most {} s", MAX_HOLD / 1_000_000)]
    BadHold,
    #[error(
        "{MAX_CONDITIONS} conditions are installed, the most a cluster holds; remove one first"
    )]
    Full,
    #[error("no condition {0}")]
    Unknown(String),
}

impl Condition {
    /// A new definition, not yet versioned or signed (`add_condition` does
    /// both), firing at once and clearing at once.
    pub fn new(name: &str, scope: ZonePath, sql: &str, min: u64) -> Condition {
        Condition {
            name: name.into(),
            scope,
            sql: sql.into(),
            min,
            hold_for: 0,
            keep_for: 0,
            version: 0,
            by: "".into(),
            removed: false,
            proof: Vec::new(),
            sig: Vec::new(),
        }
    }

    /// Checks what the operator chose; the same checks where it arrives.
    pub fn check(&self) -> Result<(), ConditionError> {
        check_name(&self.name)?;
        if self.sql.len() > MAX_SQL {
            return Err(ConditionError::SqlTooLong(self.sql.len()));
        }
        if self.min == 0 {
            return Err(ConditionError::BadMin);
        }
        if self.hold_for > MAX_HOLD || self.keep_for > MAX_HOLD {
            return Err(ConditionError::BadHold);
        }
        Ok(())
    }

    /// The bytes the setter signs: the definition without its signature.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.sig.clear();
        let mut b = b"armillary-evn-condition-v1\0".to_vec();
        b.extend(postcard::to_allocvec(&unsigned).unwrap_or_default());
        b
    }

    /// Its version order: later wins, the setter's name breaking ties.
    pub fn order(&self) -> (Micros, &str) {
        (self.version, &self.by)
    }

    /// The aggregation every zone evaluates for it.
    pub fn aggregation(&self) -> String {
        let n = &self.name;
        format!(
            "SELECT SUM(evn_c_{n}) AS evn_c_{n}, SUM(evn_n_{n}) AS evn_n_{n}, \
             SUM(evn_x_{n}) AS evn_x_{n}, SUM(evn_y_{n}) AS evn_y_{n}, \
             FIRST({MISSING_NAMES}, evn_s_{n}) AS evn_s_{n}"
        )
    }
}

/// Checks a condition's name.
pub fn check_name(name: &str) -> Result<(), ConditionError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConditionError::BadName(name.to_string()))
    }
}

/// The attribute names of condition `name`: hit, evaluated, missing,
/// stale hits, missing names.
pub fn attrs_of(name: &str) -> [String; 5] {
    ["c", "n", "x", "y", "s"].map(|k| format!("evn_{k}_{name}"))
}

/// The conditions this agent knows, the removed ones included.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    defs: BTreeMap<Arc<str>, Arc<Condition>>,
    /// Live definitions that arrived past [`MAX_CONDITIONS`] and lost the
    /// cut: not asked for again until a condition goes.
    refused: BTreeMap<Arc<str>, (Micros, Arc<str>)>,
}

impl Catalog {
    /// Takes a definition made here: refused past [`MAX_CONDITIONS`].
    pub fn create(&mut self, c: Condition) -> Result<bool, ConditionError> {
        if !c.removed && !self.defs.contains_key(&c.name) && self.live().count() >= MAX_CONDITIONS {
            return Err(ConditionError::Full);
        }
        self.merge(c)
    }

    /// Takes `c` if it is newer than what is held; true when it changed.
    /// Past [`MAX_CONDITIONS`] (agents that made conditions at once), the
    /// newest live definition by `(version, setter, name)` is refused, so every
    /// agent keeps the same ones whatever the order they arrived in.
    pub fn merge(&mut self, c: Condition) -> Result<bool, ConditionError> {
        c.check()?;
        if let Some(held) = self.defs.get(&c.name)
            && held.order() >= c.order()
        {
            return Ok(false);
        }
        let (name, removed) = (c.name.clone(), c.removed);
        self.defs.insert(name.clone(), Arc::new(c));
        if removed {
            // Room again: what lost the cut may come back.
            self.refused.clear();
        }
        while self.live().count() > MAX_CONDITIONS {
            let newest = self
                .live()
                .max_by_key(|c| (c.version, c.by.clone(), c.name.clone()))
                .map(|c| (c.name.clone(), c.version, c.by.clone()))
                .expect("more than the cap");
            self.defs.remove(&newest.0);
            if self.refused.len() < MAX_TOMBSTONES {
                self.refused.insert(newest.0.clone(), (newest.1, newest.2));
            }
            if newest.0 == name {
                return Err(ConditionError::Full);
            }
        }
        self.trim();
        Ok(true)
    }

    /// Forgets the oldest tombstones past [`MAX_TOMBSTONES`].
    fn trim(&mut self) {
        let dead = self.defs.values().filter(|c| c.removed).count();
        if dead <= MAX_TOMBSTONES {
            return;
        }
        let mut old: Vec<(Micros, Arc<str>)> = self
            .defs
            .values()
            .filter(|c| c.removed)
            .map(|c| (c.version, c.name.clone()))
            .collect();
        old.sort();
        for (_, name) in old.into_iter().take(dead - MAX_TOMBSTONES) {
            self.defs.remove(&name);
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Condition>> {
        self.defs.get(name).filter(|c| !c.removed)
    }

    /// The live conditions.
    pub fn live(&self) -> impl Iterator<Item = &Arc<Condition>> {
        self.defs.values().filter(|c| !c.removed)
    }

    /// Every definition, tombstones included, for anti-entropy and saving.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Condition>> {
        self.defs.values()
    }

    /// `(name, version, setter)` of every definition.
    pub fn digest(&self) -> Vec<(Arc<str>, Micros, Arc<str>)> {
        self.defs
            .values()
            .map(|c| (c.name.clone(), c.version, c.by.clone()))
            .collect()
    }

    /// Whether the digest entry names something newer than what is held.
    pub fn is_newer(&self, name: &str, version: Micros, by: &str) -> bool {
        let refused = self
            .refused
            .get(name)
            .is_some_and(|(v, b)| (version, by) <= (*v, &**b));
        !refused
            && self
                .defs
                .get(name)
                .is_none_or(|c| (version, by) > (c.version, &*c.by))
    }
}

/// A condition's scope-wide answer as this agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Agents where the local query is true.
    pub hits: u64,
    /// Agents whose answer is in.
    pub contributors: u64,
    /// Agents of the scope.
    pub expected: u64,
    /// Some of the agents that did not contribute.
    pub missing: Vec<Arc<str>>,
    /// How old the oldest input behind the answer is.
    pub staleness: Micros,
    /// Whether `hits >= min`.
    pub value: bool,
}

fn int(a: &Attrs, name: &str) -> u64 {
    match a.get(name) {
        Some(Value::Int(i)) => (*i).max(0) as u64,
        _ => 0,
    }
}

/// Reads condition `c`'s answer from the scope zone's row `scope_row`.
pub fn answer(c: &Condition, scope_row: &Attrs, now: Micros) -> Answer {
    let [hit, evaluated, miss, stale, names] = attrs_of(&c.name);
    let expected = int(scope_row, "nmembers");
    let contributors = int(scope_row, &evaluated)
        .saturating_sub(int(scope_row, &miss))
        .min(expected);
    let hits = int(scope_row, &hit).saturating_sub(int(scope_row, &stale));
    let missing = match scope_row.get(&names) {
        Some(Value::List(l)) => l.to_vec(),
        _ => Vec::new(),
    };
    let staleness = match scope_row.get("oldest_input") {
        Some(Value::Time(t)) => now.saturating_sub((*t).max(0) as Micros),
        _ => 0,
    };
    Answer {
        hits,
        contributors,
        expected,
        missing,
        staleness,
        value: hits >= c.min,
    }
}

/// What the first fresh member of a leaf-level zone publishes for `c`,
/// over the members of `members` within the scope that did not answer in
/// time (row older than `deadline`, or no answer): how many of them had
/// answered once, how many of those answered true, and some names of all.
pub fn report(
    c: &Condition,
    members: &[Arc<Row>],
    now: Micros,
    deadline: Micros,
) -> (u64, u64, Vec<Arc<str>>) {
    let [hit, evaluated, ..] = attrs_of(&c.name);
    let (mut x, mut y, mut names) = (0u64, 0u64, Vec::new());
    for r in members {
        if !c.scope.contains(&r.zone) {
            continue;
        }
        let fresh = r.version().0.saturating_add(deadline) >= now;
        let answered = matches!(r.get(&evaluated), Some(Value::Int(1)));
        if fresh && answered {
            continue;
        }
        if answered {
            x += 1;
            if matches!(r.get(&hit), Some(Value::Int(1))) {
                y += 1;
            }
        }
        if names.len() < MISSING_NAMES {
            names.push(r.zone.as_arc().clone());
        }
    }
    (x, y, names)
}

/// Whether the agent whose leaf is `me` reports for its leaf-level zone:
/// it is the first member, in name order, whose row is fresh.
pub fn is_reporter(me: &str, members: &[Arc<Row>], now: Micros, deadline: Micros) -> bool {
    members
        .iter()
        .filter(|r| r.version().0.saturating_add(deadline) >= now || r.zone.as_str() == me)
        .map(|r| r.zone.as_str())
        .min()
        == Some(me)
}

/// Edge-triggered state of one condition at one agent, with hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Hysteresis {
    #[default]
    Cleared,
    /// True since then, not yet for `hold_for`.
    Pending(Micros),
    Firing,
    /// False since then, not yet for `keep_for`.
    Clearing(Micros),
}

/// A transition to tell the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Fired,
    Cleared,
}

impl Hysteresis {
    /// Feeds the raw value at `now`; gives the transition, if one happens.
    pub fn step(&mut self, raw: bool, now: Micros, c: &Condition) -> Option<Transition> {
        use Hysteresis::*;
        let (next, t) = match (*self, raw) {
            (Cleared, true) if c.hold_for == 0 => (Firing, Some(Transition::Fired)),
            (Cleared, true) => (Pending(now), None),
            (Pending(since), true) if now.saturating_sub(since) >= c.hold_for => {
                (Firing, Some(Transition::Fired))
            }
            (Pending(_), false) => (Cleared, None),
            (Firing, false) if c.keep_for == 0 => (Cleared, Some(Transition::Cleared)),
            (Firing, false) => (Clearing(now), None),
            (Clearing(_), true) => (Firing, None),
            (Clearing(since), false) if now.saturating_sub(since) >= c.keep_for => {
                (Cleared, Some(Transition::Cleared))
            }
            (s, _) => (s, None),
        };
        *self = next;
        t
    }

    /// When a pending change would complete (`Micros::MAX`: none).
    pub fn due(&self, c: &Condition) -> Micros {
        match *self {
            Hysteresis::Pending(s) => s.saturating_add(c.hold_for),
            Hysteresis::Clearing(s) => s.saturating_add(c.keep_for),
            _ => Micros::MAX,
        }
    }

    pub fn firing(&self) -> bool {
        matches!(self, Hysteresis::Firing | Hysteresis::Clearing(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    fn cond(hold: Micros, keep: Micros) -> Condition {
        Condition {
            hold_for: hold,
            keep_for: keep,
            version: 1,
            by: "/a".into(),
            ..Condition::new("conns", ZonePath::root(), "SELECT true AS hit", 1)
        }
    }

    #[test]
    fn hysteresis_fires_and_clears_once_per_transition() {
        let c = cond(2 * S, 3 * S);
        let mut h = Hysteresis::default();
        assert_eq!(h.step(true, 0, &c), None);
        assert_eq!(h.step(false, S, &c), None); // a blip: no fire
        assert_eq!(h.step(true, 2 * S, &c), None);
        assert_eq!(h.step(true, 3 * S, &c), None);
        assert_eq!(h.step(true, 4 * S, &c), Some(Transition::Fired));
        assert_eq!(h.step(true, 5 * S, &c), None);
        assert_eq!(h.step(false, 6 * S, &c), None);
        assert_eq!(h.step(true, 7 * S, &c), None); // back before keep ran out
        assert_eq!(h.step(false, 8 * S, &c), None);
        assert_eq!(h.step(false, 10 * S, &c), None);
        assert_eq!(h.step(false, 11 * S, &c), Some(Transition::Cleared));
        assert_eq!(h.step(false, 12 * S, &c), None);
        let c0 = cond(0, 0);
        let mut h = Hysteresis::default();
        assert_eq!(h.step(true, 0, &c0), Some(Transition::Fired));
        assert_eq!(h.step(false, 0, &c0), Some(Transition::Cleared));
    }

    #[test]
    fn the_catalog_keeps_the_newest_and_its_tombstones() {
        let mut cat = Catalog::default();
        assert_eq!(cat.merge(cond(0, 0)), Ok(true));
        assert_eq!(cat.merge(cond(0, 0)), Ok(false));
        let mut gone = cond(0, 0);
        gone.version = 5;
        gone.removed = true;
        assert_eq!(cat.merge(gone), Ok(true));
        assert!(cat.get("conns").is_none());
        // The older definition does not come back.
        assert_eq!(cat.merge(cond(0, 0)), Ok(false));
        assert!(cat.get("conns").is_none());
        for i in 0..MAX_CONDITIONS {
            let mut c = cond(0, 0);
            c.name = format!("c{i}").into();
            cat.merge(c).unwrap();
        }
        let mut more = cond(0, 0);
        more.name = "more".into();
        assert_eq!(cat.create(more.clone()), Err(ConditionError::Full));
        // Arriving, the newest by (version, setter) loses the cut, whatever
        // came first.
        more.version = 0;
        let mut late = Catalog::default();
        late.merge(more.clone()).unwrap();
        for c in cat.live() {
            let _ = late.merge((**c).clone());
        }
        let names = |c: &Catalog| c.live().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(cat.merge(more.clone()), Ok(true));
        assert_eq!(names(&cat), names(&late));
        assert_eq!(cat.live().count(), MAX_CONDITIONS);
        assert!(cat.get("more").is_some());
        let mut bad = cond(0, 0);
        bad.name = "Bad-Name".into();
        assert!(matches!(cat.merge(bad), Err(ConditionError::BadName(_))));
    }

    #[test]
    fn the_answer_subtracts_what_did_not_answer_in_time() {
        let c = cond(0, 0);
        let mut row = Attrs::new();
        row.set("nmembers", 64i64);
        row.set("evn_c_conns", 10i64);
        // 62 answered once, 2 of them too long ago; 2 never answered.
        row.set("evn_n_conns", 62i64);
        row.set("evn_x_conns", 2i64);
        row.set("evn_y_conns", 1i64);
        let names: Vec<Arc<str>> = vec!["/a/1".into(), "/b/2".into()];
        row.set("evn_s_conns", Value::List(names.clone().into()));
        let a = answer(&c, &row, 0);
        assert_eq!((a.hits, a.contributors, a.expected), (9, 60, 64));
        assert_eq!(a.missing, names);
        assert!(a.value);
    }
}
