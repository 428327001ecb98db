//! Row admission: the checks a received row passes before it enters a
//! table (path, issuer, clock, signature, no rollback), and what an
//! admitted row teaches (hints, AFCs).

use super::*;

impl Agent {
    /// True when `row`, newer than the fresh zone row of another issuer
    /// held in table `t`, was computed from an older version of one of the
    /// inputs both list: taking it would roll that child's contribution
    /// back (a representative that was paused or cut off, issuing before
    /// it caught up). Inputs only one of them lists do not count: that is
    /// a difference of membership, which hints and gossip merge.
    pub(super) fn rolls_back(&self, now: Micros, t: usize, row: &Row) -> bool {
        let Some(held) = self.levels[t].table.get(row.name()) else {
            return false;
        };
        let fail = self.fail_timeout(t);
        held.issuer != row.issuer
            && row.version() > held.version()
            && now.saturating_sub(held.issued) < fail * 2 / 3
            && older_somewhere(&row.inputs, &held.inputs)
    }

    pub(super) fn accept(&mut self, now: Micros, row: Arc<Row>) -> Accept {
        let depth = row.depth();
        if depth == 0 || depth > self.levels.len() || !row.zone.is_child_of(&self.zones[depth - 1])
        {
            self.reject(Refusal::RowOffPath);
            return Accept::Rejected;
        }
        // The parent matches (checked above), so comparing names suffices.
        if depth == self.levels.len() && row.name() == self.cfg.leaf.name() {
            return Accept::Stale;
        }
        if !row.zone.contains(&row.issuer) {
            self.reject(Refusal::RowIssuerOutsideZone);
            return Accept::Rejected;
        }
        let t = depth - 1;
        if row.issued > now + self.cfg.max_skew {
            self.reject(Refusal::RowFromFuture);
            return Accept::Rejected;
        }
        if now.saturating_sub(row.issued) > self.fail_timeout(t) {
            return Accept::Stale;
        }
        if self.security.is_some()
            && let Some(early) = self.verify_row(now, t, &row)
        {
            return early;
        }
        if depth < self.levels.len()
            && row.name() == self.zones[depth].name()
            && row.issuer != self.cfg.leaf
        {
            self.note_hints(depth, &row);
        }
        if self.rolls_back(now, t, &row) {
            tracing::debug!(zone = %row.zone, issuer = %row.issuer, inputs = ?row.inputs, held = ?self.levels[t].table.get(row.name()).map(|h| (&h.issuer, &h.inputs)), "zone row from older inputs refused");
            self.reject(Refusal::ZoneRowFromOlderInputs);
            return Accept::Stale;
        }
        match self.levels[t]
            .table
            .offer(row.clone(), self.cfg.max_children)
        {
            Offer::Stale => Accept::Stale,
            Offer::Same => Accept::Same,
            Offer::Full => {
                self.reject(Refusal::ZoneTableFull);
                Accept::Rejected
            }
            Offer::Accepted { content_changed } => {
                self.stats.rows_accepted += 1;
                let lost = &mut self.levels[t].lost;
                if !lost.is_empty() {
                    lost.retain(|(c, _)| !row.contacts().contains(c));
                }
                if content_changed {
                    self.adopt_afcs(now, &row);
                    self.schedule_flush(now);
                }
                Accept::Accepted { content_changed }
            }
        }
    }

    /// With security on: settles a row that is not newer than the held
    /// version without verifying it, and verifies the rest. Returns the
    /// outcome when the row goes no further.
    pub(super) fn verify_row(&mut self, now: Micros, t: usize, row: &Row) -> Option<Accept> {
        if let Some(held) = self.levels[t].table.get(row.name()) {
            match row.version().cmp(&held.version()) {
                std::cmp::Ordering::Less => return Some(Accept::Stale),
                std::cmp::Ordering::Equal => return Some(Accept::Same),
                std::cmp::Ordering::Greater => {}
            }
        }
        let sec = self.security.as_ref()?;
        match sec.verify_row(row, now) {
            Ok(()) => None,
            Err(r) => {
                self.reject(r.refusal());
                Some(Accept::Rejected)
            }
        }
    }

    /// Remembers contacts of our own zone `i` that its table does not show.
    pub(super) fn note_hints(&mut self, i: usize, row: &Row) {
        let level = &mut self.levels[i];
        if let Some(Value::List(mine)) = level.computed.get("contacts")
            && **mine == *row.contacts()
        {
            return;
        }
        for c in row.contacts() {
            if *c == self.cfg.addr || level.hints.contains(c) {
                continue;
            }
            let known = level.table.rows().iter().any(|r| r.contacts().contains(c));
            if !known && level.hints.len() < MAX_HINTS {
                level.hints.push(c.clone());
            }
        }
    }

    pub(super) fn adopt_afcs(&mut self, now: Micros, row: &Row) {
        let mut changed = false;
        for a in &row.afcs {
            if a.scope.contains(&self.cfg.leaf) {
                // Rows were verified with their AFCs: this is a cache hit.
                if let Some(sec) = &self.security
                    && let Err(r) = sec.verify_afc(a, now)
                {
                    self.reject(r.refusal());
                    continue;
                }
                if self.afcs.offer(a.clone(), now) {
                    changed = true;
                } else if self.afcs.revive(a, now) {
                    // The row shows a version we removed: carry the removal again.
                    self.mark_leaf_dirty();
                } else if self.afcs.get(&a.scope, &a.name).is_none() {
                    self.reject(Refusal::AfcScopeFull);
                }
            }
        }
        if changed {
            self.events.push_back(Event::AfcsChanged);
            self.mark_leaf_dirty();
        }
    }
}

/// Whether `new` lists an older version than `old` of some child both
/// list. Both are sorted by name.
pub(super) fn older_somewhere(new: &[(Arc<str>, Micros)], old: &[(Arc<str>, Micros)]) -> bool {
    old.iter().any(|(name, t)| {
        new.binary_search_by(|(n, _)| crate::table::cmp_names(n, name))
            .is_ok_and(|k| new[k].1 < *t)
    })
}
