//! Gossip exchanges: partner choice each round, and the three-message
//! push-pull exchange (`Syn` digest, `SynAck` rows and wants, `Ack`).

use super::*;

impl Agent {
    pub(super) fn gossip(&mut self) {
        let leaf_level = self.levels.len() - 1;
        // Partner address -> deepest table to exchange.
        let mut partners: Vec<(Arc<str>, usize)> = Vec::new();
        for i in (0..self.levels.len()).rev() {
            let participates = i == leaf_level || self.levels[i + 1].is_rep;
            let stands_in = !participates && self.stands_in(i);
            self.levels[i].stood_in = stands_in;
            if !participates && !stands_in {
                continue;
            }
            if let Some(h) = self.levels[i].hints.pop() {
                partners.push((h, leaf_level));
            }
            if !self.levels[i].lost.is_empty() && self.rng.random_bool(LOST_PROBE) {
                let k = self.rng.random_range(0..self.levels[i].lost.len());
                partners.push((self.levels[i].lost[k].0.clone(), i));
            }
            let mine = self.zones[i + 1].name();
            let addr = &self.cfg.addr;
            let siblings: Vec<usize> = self.levels[i]
                .table
                .rows()
                .iter()
                .enumerate()
                .filter(|(_, r)| r.name() != mine && r.contacts().iter().any(|c| c != addr))
                .map(|(k, _)| k)
                .collect();
            if !siblings.is_empty() {
                let k = siblings[self.rng.random_range(0..siblings.len())];
                let contacts = self.levels[i].table.rows()[k].contacts().to_vec();
                if let Some(a) = self.pick_contact(&contacts) {
                    partners.push((a, i));
                }
                continue;
            }
            if stands_in {
                continue;
            }
            // No sibling known at this level: ask a representative of this
            // zone, or a seed, and exchange every table we may share.
            let contacts = if i > 0 {
                self.levels[i - 1]
                    .table
                    .get(self.zones[i].name())
                    .map(|r| r.contacts().to_vec())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            if let Some(a) = self.pick_contact(&contacts).or_else(|| self.pick_seed()) {
                partners.push((a, leaf_level));
            }
        }
        if self.cfg.seed_probe > 0.0
            && !self.cfg.seeds.is_empty()
            && self.rng.random_bool(self.cfg.seed_probe.min(1.0))
            && let Some(s) = self.pick_seed()
        {
            partners.push((s, leaf_level));
        }
        // One exchange per partner, covering the deepest table asked for it.
        partners.sort();
        let mut merged: Vec<(Arc<str>, usize)> = Vec::with_capacity(partners.len());
        for (a, d) in partners {
            match merged.last_mut() {
                Some((b, e)) if *b == a => *e = (*e).max(d),
                _ => merged.push((a, d)),
            }
        }
        for (to, depth) in merged {
            let digest = self.digest(depth);
            self.stats.syns_sent += 1;
            self.send(
                to,
                Message::Syn {
                    sender: self.cfg.leaf.clone(),
                    depth: depth as u8,
                    digest,
                },
            );
        }
    }

    /// Whether this agent, a participant at level `i + 1` but not a
    /// representative of its zone there, stands in at level `i` this round:
    /// with a chance that makes [`STAND_IN`] exchanges per zone per round
    /// over its participants.
    fn stands_in(&mut self, i: usize) -> bool {
        let below = i + 1;
        let leaf_level = self.levels.len() - 1;
        if below != leaf_level && !self.levels[below + 1].is_rep {
            return false;
        }
        let participants: usize = self.levels[below]
            .table
            .rows()
            .iter()
            .map(|r| r.contacts().len())
            .sum();
        self.rng
            .random_bool((STAND_IN / participants.max(1) as f64).min(1.0))
    }

    pub(super) fn pick_contact(&mut self, contacts: &[Arc<str>]) -> Option<Arc<str>> {
        let others: Vec<&Arc<str>> = contacts.iter().filter(|c| **c != self.cfg.addr).collect();
        if others.is_empty() {
            return None;
        }
        Some(others[self.rng.random_range(0..others.len())].clone())
    }

    pub(super) fn pick_seed(&mut self) -> Option<Arc<str>> {
        let seeds: Vec<Arc<str>> = self
            .cfg
            .seeds
            .iter()
            .filter(|s| **s != self.cfg.addr)
            .cloned()
            .collect();
        if seeds.is_empty() {
            return None;
        }
        Some(seeds[self.rng.random_range(0..seeds.len())].clone())
    }

    /// The versions held in tables `0..=depth`, in table order, cut to the
    /// message budget: whole tables from `depth` (the one the exchange is
    /// for) upwards, then as much of the next as fits; the peer offers what
    /// the cut left out.
    pub(super) fn digest(&self, depth: usize) -> Vec<DigestEntry> {
        let mut room = self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD);
        let mut tables: Vec<Vec<DigestEntry>> = Vec::new();
        'tables: for t in (0..=depth.min(self.levels.len() - 1)).rev() {
            let mut entries = Vec::new();
            for r in self.levels[t].table.rows() {
                let e = DigestEntry {
                    depth: t as u8,
                    name: r.name_arc().clone(),
                    issued: r.issued,
                    issuer_hash: r.issuer_hash(),
                };
                let len = e.encoded_len();
                if len > room {
                    tables.push(entries);
                    break 'tables;
                }
                room -= len;
                entries.push(e);
            }
            tables.push(entries);
        }
        tables.into_iter().rev().flatten().collect()
    }

    /// The deepest table shared with the agent at `sender`, or None if the two clash.
    pub(super) fn shared_depth(&mut self, sender: &ZonePath, asked: usize) -> Option<usize> {
        if *sender == self.cfg.leaf
            || sender.contains(&self.cfg.leaf)
            || self.cfg.leaf.contains(sender)
        {
            self.reject(Refusal::ClashingZone);
            return None;
        }
        let common = sender.common_depth(&self.cfg.leaf);
        Some(common.min(asked).min(self.levels.len() - 1))
    }

    pub(super) fn on_syn(
        &mut self,
        now: Micros,
        from: &Arc<str>,
        sender: ZonePath,
        asked: u8,
        digest: Vec<DigestEntry>,
    ) {
        let Some(max_t) = self.shared_depth(&sender, asked as usize) else {
            return;
        };
        // Digests list entries by table, then child name, as tables hold them;
        // a peer that sends them otherwise gets them sorted here.
        let mut digest = digest;
        let in_order = |a: &DigestEntry, b: &DigestEntry| {
            a.depth < b.depth
                || (a.depth == b.depth && crate::table::cmp_names(&a.name, &b.name).is_le())
        };
        if !digest.is_sorted_by(in_order) {
            digest.sort_by(|a, b| (a.depth, &a.name).cmp(&(b.depth, &b.name)));
        }
        // Rows they lack (priority 0) or hold older (priority 1), upper tables
        // first; and the rows we want from them.
        let mut offer: Vec<(u8, usize, Arc<Row>)> = Vec::new();
        let mut wanted = Vec::new();
        let leaf_level = self.levels.len() - 1;
        let sender_table = sender.depth() - 1;
        let mut k = 0;
        for t in 0..=max_t {
            while k < digest.len() && (digest[k].depth as usize) < t {
                k += 1;
            }
            let begin = k;
            while k < digest.len() && digest[k].depth as usize == t {
                k += 1;
            }
            let theirs = &digest[begin..k];
            let fail = self.fail_timeout(t);
            let rows = self.levels[t].table.rows();
            let (mut a, mut b) = (0, 0);
            while a < rows.len() || b < theirs.len() {
                // Step through both name-sorted lists together.
                let (mine, their) = match (rows.get(a), theirs.get(b)) {
                    (Some(r), Some(e)) => match crate::table::cmp_names(r.name(), &e.name) {
                        std::cmp::Ordering::Less => (Some(r), None),
                        std::cmp::Ordering::Greater => (None, Some(e)),
                        std::cmp::Ordering::Equal => (Some(r), Some(e)),
                    },
                    either => either,
                };
                if mine.is_some() {
                    a += 1;
                }
                if their.is_some() {
                    b += 1;
                }
                match (mine, their) {
                    (Some(r), None) if t != sender_table || r.zone != sender => {
                        offer.push((0, t, r.clone()))
                    }
                    (Some(r), Some(e))
                        if e.version() < r.version() && (t != sender_table || r.zone != sender) =>
                    {
                        offer.push((1, t, r.clone()))
                    }
                    (m, Some(e)) => {
                        let newer = m.is_none_or(|r| r.version() < e.version());
                        let own = t == leaf_level && *e.name == *self.cfg.leaf.name();
                        let fresh = now.saturating_sub(e.issued) <= fail;
                        if newer && !own && fresh {
                            wanted.push(Wanted {
                                depth: e.depth,
                                name: e.name.clone(),
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        offer.sort_by_key(|(p, t, _)| (*p, *t));
        // The wanted list first (it is small), then rows in what room is left.
        let mut room = self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD);
        wanted.retain(|w: &Wanted| {
            let len = w.encoded_len();
            let fits = len <= room;
            if fits {
                room -= len;
            }
            fits
        });
        let rows = fill(room, offer.into_iter().map(|(_, _, r)| r));
        self.send(
            from.clone(),
            Message::SynAck {
                sender: self.cfg.leaf.clone(),
                rows,
                wanted,
            },
        );
    }

    pub(super) fn on_synack(
        &mut self,
        now: Micros,
        from: &Arc<str>,
        sender: ZonePath,
        rows: Vec<Arc<Row>>,
        wanted: Vec<Wanted>,
    ) {
        let Some(max_t) = self.shared_depth(&sender, self.levels.len()) else {
            return;
        };
        self.accept_gossip(now, &sender, rows);
        let give: Vec<Arc<Row>> = wanted
            .iter()
            .filter(|w| (w.depth as usize) <= max_t)
            .filter_map(|w| self.levels[w.depth as usize].table.get(&w.name).cloned())
            .collect();
        let rows = fill(
            self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD),
            give.into_iter(),
        );
        if !rows.is_empty() {
            let sender = self.cfg.leaf.clone();
            self.send(from.clone(), Message::Ack { sender, rows });
        }
    }

    /// Accepts rows an exchange with the agent at `sender` brought, and
    /// carries the push on for those that are new and recent: the peer's
    /// side of the tree is the peer's to cover, so this agent pushes them
    /// into its own zone below the level the two share. Only
    /// representatives of that zone, and members standing in for them, do
    /// this (they are the ones gossiping there), only for rows younger than [`Config::push_carry_rounds`], and
    /// within the push budget: a push lost on the way is repaired within a
    /// round, not after the many rounds gossip alone needs.
    pub(super) fn accept_gossip(&mut self, now: Micros, sender: &ZonePath, rows: Vec<Arc<Row>>) {
        let below = sender.common_depth(&self.cfg.leaf) + 1;
        let carry = self.cfg.push
            && below < self.levels.len()
            && (self.levels[below].is_rep || self.levels[below - 1].stood_in);
        let mut forward = Vec::new();
        for r in rows {
            let t = r.depth().saturating_sub(1);
            let recent =
                now.saturating_sub(r.issued) <= self.cfg.push_carry_rounds * self.cfg.round;
            let accepted = matches!(
                self.accept(now, r.clone()),
                Accept::Accepted {
                    content_changed: true
                }
            );
            if carry && accepted && recent && t < below {
                forward.push((t, r));
            }
        }
        if !forward.is_empty() {
            self.stats.push_carried += forward.len() as u64;
            self.push_from(below, forward);
        }
    }
}

/// Takes rows in order while they fit in `room` bytes.
pub(super) fn fill(mut room: usize, rows: impl Iterator<Item = Arc<Row>>) -> Vec<Arc<Row>> {
    let mut out = Vec::new();
    for r in rows {
        let len = r.encoded_len();
        if len > room {
            continue;
        }
        room -= len;
        out.push(r);
    }
    out
}
