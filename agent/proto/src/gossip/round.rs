//! Rounds: the periodic tick, timed-out children, and the flush that
//! re-issues this agent's own rows (the leaf row, and the zone rows it
//! represents) when their content changed or their refresh is due.

use super::*;

impl Agent {
    pub(super) fn tick(&mut self, now: Micros) {
        self.round += 1;
        self.push_spent = 0;
        self.next_tick = now + self.cfg.round;
        self.afcs.expire(now);
        self.expire(now);
        let keep = self.cfg.tombstone_keep;
        for level in &mut self.levels {
            level.lost.retain(|(_, at)| now.saturating_sub(*at) < keep);
        }
        self.leaf_dirty = true;
        self.flush(now);
        self.gossip();
    }

    pub(super) fn fail_timeout(&self, level: usize) -> Micros {
        self.levels[level].fail_timeout
    }

    pub(super) fn expire(&mut self, now: Micros) {
        for i in 0..self.levels.len() {
            let cutoff = now.saturating_sub(self.fail_timeout(i));
            let keep = self.zones[i + 1].name().to_string();
            let dropped = self.levels[i].table.expire(cutoff, &keep);
            for r in dropped {
                let level = &mut self.levels[i];
                for c in r.contacts() {
                    if *c != self.cfg.addr && !level.lost.iter().any(|(l, _)| l == c) {
                        level.lost.push((c.clone(), now));
                    }
                }
                if level.lost.len() > MAX_LOST {
                    let excess = level.lost.len() - MAX_LOST;
                    level.lost.drain(..excess);
                }
                self.events.push_back(Event::RowExpired {
                    zone: self.zones[i].clone(),
                    child: r.name().to_string(),
                });
            }
        }
    }

    /// Re-issues the leaf row if needed, re-aggregates bottom-up, pushes what changed.
    pub(super) fn flush(&mut self, now: Micros) {
        self.flush_at = None;
        let mut originated: Vec<(usize, Arc<Row>)> = Vec::new();
        let leaf_level = self.levels.len() - 1;
        if self.leaf_dirty {
            self.leaf_dirty = false;
            let (attrs, afcs) = self.leaf_content(now);
            let content = crate::row::content_hash(&attrs, &afcs);
            let (content_changed, due) =
                self.issue_needed(now, leaf_level, self.cfg.leaf.name(), content);
            if content_changed || due {
                let issued = if now > self.last_issued {
                    now
                } else {
                    self.last_issued + 1
                };
                self.last_issued = issued;
                let leaf = self.cfg.leaf.clone();
                let row = Row::new(leaf.clone(), leaf, issued, attrs, afcs);
                if let Some(row) = self.issue(leaf_level, row) {
                    self.levels[leaf_level].table.offer(row.clone(), usize::MAX);
                    if content_changed {
                        originated.push((leaf_level, row));
                    }
                }
            }
        }
        for i in (0..self.levels.len()).rev() {
            self.evaluate(now, i);
            if i == 0 || !self.levels[i].is_rep {
                continue;
            }
            let carried = self.carried_afcs(now, i - 1);
            let content = crate::row::content_hash(&self.levels[i].computed, &carried);
            let (content_changed, due) =
                self.issue_needed(now, i - 1, self.zones[i].name(), content);
            if !(content_changed || due) {
                continue;
            }
            let Some(issued) = self.zone_issue_time(now, i) else {
                self.stats.deferrals += 1;
                continue;
            };
            let row = Row::new(
                self.zones[i].clone(),
                self.cfg.leaf.clone(),
                issued,
                self.with_input_times(i),
                carried,
            )
            .with_inputs(self.inputs_of(i));
            if let Some(row) = self.issue(i - 1, row) {
                self.levels[i - 1].table.offer(row.clone(), usize::MAX);
                if content_changed && self.levels[i].is_primary {
                    originated.push((i - 1, row));
                }
            }
        }
        if self.cfg.push {
            let originated = self.paced(now, originated);
            if !originated.is_empty() {
                self.push_down(originated);
            }
        }
    }

    /// Whether this agent should issue a new row for child `name` of table
    /// `t` whose content hashes to `content`: (its content changed, the held
    /// version is due for its refresh at a quarter of the failure timeout).
    pub(super) fn issue_needed(
        &self,
        now: Micros,
        t: usize,
        name: &str,
        content: u64,
    ) -> (bool, bool) {
        let refresh = self.fail_timeout(t) / 4;
        let held = self.levels[t].table.get(name);
        // A held row signed otherwise than security now asks is due at once.
        let secure = self.security.is_some();
        (
            held.is_none_or(|h| h.content_hash() != content),
            held.is_none_or(|h| {
                now.saturating_sub(h.issued) >= refresh || h.cert.is_some() != secure
            }),
        )
    }

    /// Signs a row this agent issues (when security is on) and checks it
    /// as its receivers will ([`validate_row`]): a row they would refuse is
    /// not issued, and counted, rather than silently dropped downstream.
    pub(super) fn issue(&mut self, t: usize, mut row: Row) -> Option<Arc<Row>> {
        if let Some(sec) = &self.security {
            sec.sign_row(&mut row);
        }
        if let Err(e) = validate_row(&row) {
            tracing::warn!(zone = %row.zone, table = t, error = %e, "row not issued: it breaks a row limit");
            self.reject(Refusal::RowNotIssued);
            return None;
        }
        Some(Arc::new(row))
    }

    /// The issue time of a new row for zone `i` (in table `i - 1`), or None
    /// when this representative must leave the row to the one that holds
    /// it. A fresh row of a representative that comes first in the zone's
    /// order (the first contact) is left alone, so two representatives with
    /// different views never alternate; and a row computed from newer
    /// inputs than ours is never replaced by ours, so a zone row never rolls
    /// back. The new row's time passes the held one, whatever the clocks.
    pub(super) fn zone_issue_time(&mut self, now: Micros, i: usize) -> Option<Micros> {
        let mut issued = now.max(self.last_issued);
        if let Some(h) = self.levels[i - 1].table.get(self.zones[i].name())
            && h.issuer != self.cfg.leaf
        {
            let age = now.saturating_sub(h.issued);
            let fail = self.fail_timeout(i - 1);
            if age < fail * 2 / 3 && precedes(&h.issuer, &self.cfg.leaf) {
                return None;
            }
            if age < fail * 2 / 3 && !self.holds_inputs(i, &h.inputs) {
                return None;
            }
            issued = issued.max(h.issued + 1);
        }
        self.last_issued = issued;
        Some(issued)
    }

    /// Whether zone `i`'s table holds each of `inputs` it holds at all at
    /// the listed version or newer.
    pub(super) fn holds_inputs(&self, i: usize, inputs: &[(Arc<str>, Micros)]) -> bool {
        let table = &self.levels[i].table;
        inputs
            .iter()
            .all(|(name, t)| table.get(name).is_none_or(|r| r.issued >= *t))
    }

    /// The versions of zone `i`'s inputs, for the row this agent issues.
    pub(super) fn inputs_of(&self, i: usize) -> Vec<(Arc<str>, Micros)> {
        let rows = self.levels[i].table.rows();
        if rows.len() > crate::row::MAX_INPUTS {
            return Vec::new();
        }
        rows.iter()
            .map(|r| (r.name_arc().clone(), r.issued))
            .collect()
    }
}

/// True when leaf `a` comes before leaf `b` in the zone tree's order (by
/// child name at the first level where they differ): the order in which
/// the system AFC picks a zone's contacts, so the first contact comes first.
pub(super) fn precedes(a: &ZonePath, b: &ZonePath) -> bool {
    for (x, y) in a.components().zip(b.components()) {
        match crate::table::cmp_names(x, y) {
            std::cmp::Ordering::Equal => continue,
            o => return o.is_lt(),
        }
    }
    a.depth() < b.depth()
}
