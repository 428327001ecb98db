//! The correct answer a simulation is checked against: the root row that
//! the live agents' current leaf rows make, aggregated bottom-up over the
//! true tree with the same compiled programs and rules as the agents.
//!
//! The agent's own evaluation (`Agent::evaluate`) works on its tables and
//! keeps state; this is the same computation as a pure function of the
//! child rows, written here so that the check does not trust the code it
//! checks: the system AFC, then each applicable AFC in name order, an
//! output already set by an earlier AFC skipped, an output that is invalid
//! on a zone (a NaN or infinite number, a list over
//! [`limits::MAX_LIST_LEN`], more than the row's share of bytes) left out.

use super::world::World;
use crate::afc::{AfcCert, AfcStore};
use crate::gossip::system_afc;
use crate::limits::{self, MAX_ATTRS_BYTES, SYSTEM_ATTRS_BYTES};
use crate::path::ZonePath;
use crate::row::stable_hash;
use crate::table::cmp_names;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use zone_sql::{Attrs, Frame, Program};

/// A zone's child rows by name: leaf rows as the agents hold them, zone
/// rows as computed here.
type Children<'a> = Vec<(Arc<str>, Cow<'a, Attrs>)>;

/// The programs every zone row is computed with.
pub struct Oracle {
    system: Program,
    afcs: AfcStore,
}

impl Oracle {
    /// An oracle for agents with `reps` representatives per zone and these AFCs.
    pub fn new(reps: usize, afcs: impl IntoIterator<Item = Arc<AfcCert>>) -> Oracle {
        let mut store = AfcStore::default();
        for a in afcs {
            store.offer(a, 0);
        }
        Oracle {
            system: Program::compile(&system_afc(reps)).expect("the system AFC is valid"),
            afcs: store,
        }
    }

    /// The root row over the live agents of `world` (their leaf rows as
    /// last issued); empty when no agent is alive.
    pub fn root_row(&self, world: &World) -> Attrs {
        // tables[d]: the child rows of each zone at depth d.
        let mut tables: Vec<BTreeMap<ZonePath, Children>> = Vec::new();
        for i in 0..world.len() {
            let Some(a) = world.agent(i) else { continue };
            let Some(row) = a.row_of(a.leaf()) else {
                continue;
            };
            let parent = a.leaf().parent().expect("agents live below the root");
            let d = parent.depth();
            if tables.len() <= d {
                tables.resize_with(d + 1, BTreeMap::new);
            }
            tables[d]
                .entry(parent)
                .or_default()
                .push((row.name_arc().clone(), Cow::Borrowed(&row.attrs)));
        }
        for d in (1..tables.len()).rev() {
            for (zone, rows) in std::mem::take(&mut tables[d]) {
                let row = self.zone_row(&zone, rows);
                let parent = zone.parent().expect("below the root");
                tables[d - 1]
                    .entry(parent)
                    .or_default()
                    .push((zone.name().into(), Cow::Owned(row)));
            }
        }
        match tables.first_mut().and_then(|t| t.remove(&ZonePath::root())) {
            Some(rows) => self.zone_row(&ZonePath::root(), rows),
            None => Attrs::new(),
        }
    }

    /// One zone's row from its children's rows.
    fn zone_row(&self, zone: &ZonePath, mut rows: Children) -> Attrs {
        rows.sort_by(|a, b| cmp_names(&a.0, &b.0));
        let frame = Frame::from_rows(rows.iter().map(|(_, a)| a.as_ref()));
        let seed = stable_hash(zone.as_str());
        let mut out = self.system.eval(&frame, seed).unwrap_or_default();
        let n = rows.len() as i64;
        out.set("depth", zone.depth() as i64);
        out.set("nchildren", n);
        out.set("nreporting", n);
        let mut budget = MAX_ATTRS_BYTES - SYSTEM_ATTRS_BYTES;
        for afc in self.afcs.applicable(zone) {
            let Some(Ok(a)) = afc.program.as_ref().map(|p| p.eval(&frame, seed)) else {
                continue;
            };
            let len = a.encoded_len();
            if len > budget
                || limits::check_output(&a).is_err()
                || a.names().any(|n| out.get(n).is_some())
            {
                continue;
            }
            budget -= len;
            for (name, v) in a.iter() {
                out.set(name.clone(), v.clone());
            }
        }
        out
    }
}
