//! Push: freshly issued rows sent eagerly down the dissemination tree,
//! paced to one version of each own row per round and within the push
//! budget; gossip repairs what a push misses.

use super::*;

impl Agent {
    /// Paces the push of this agent's own rows: at most one version of each
    /// per round. A row that changes again within the round (a busy zone
    /// under churn changes with every child) waits, and the newest version
    /// goes at the next slot; without pacing, push traffic would grow with
    /// the rate of change below a zone, which grows with its size.
    pub(super) fn paced(
        &mut self,
        now: Micros,
        originated: Vec<(usize, Arc<Row>)>,
    ) -> Vec<(usize, Arc<Row>)> {
        let gap = self.cfg.round;
        for (t, _) in &originated {
            self.levels[*t].push_owed = true;
        }
        let mut out = Vec::new();
        let mut next: Option<Micros> = None;
        for t in 0..self.levels.len() {
            let level = &self.levels[t];
            if !level.push_owed {
                continue;
            }
            let due = level.last_push.saturating_add(gap);
            if now < due && level.last_push > 0 {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            let name = self.zones[t + 1].name();
            let own = level
                .table
                .get(name)
                .filter(|r| r.issuer == self.cfg.leaf)
                .cloned();
            let level = &mut self.levels[t];
            level.push_owed = false;
            if let Some(row) = own {
                level.last_push = now;
                out.push((t, row));
            }
        }
        if let Some(due) = next {
            self.flush_at = Some(self.flush_at.map_or(due, |f| f.min(due)));
        }
        out
    }

    pub(super) fn on_push(&mut self, now: Micros, target: ZonePath, rows: Vec<Arc<Row>>) {
        if !target.contains(&self.cfg.leaf) || target.depth() == 0 {
            self.reject(Refusal::PushOutsideZone);
            return;
        }
        // Only rows new here go on: a replayed or duplicate push of a row
        // already held stops at this agent.
        let mut forward = Vec::new();
        for r in rows {
            let t = r.depth().saturating_sub(1);
            if let Accept::Accepted { .. } = self.accept(now, r.clone())
                && t < target.depth()
            {
                forward.push((t, r));
            }
        }
        if !forward.is_empty() && self.cfg.push {
            self.push_from(target.depth(), forward);
        }
    }

    /// Sends freshly issued rows to every agent below the tables they belong to.
    pub(super) fn push_down(&mut self, rows: Vec<(usize, Arc<Row>)>) {
        let from = rows.iter().map(|(t, _)| *t).min().unwrap_or(0);
        self.push_from(from, rows);
    }

    /// For each level from `from` down to the leaf zone, sends to one contact of
    /// every sibling zone the rows that its agents must see.
    pub(super) fn push_from(&mut self, from: usize, rows: Vec<(usize, Arc<Row>)>) {
        for j in from..self.levels.len() {
            let mine = self.zones[j + 1].name();
            let batch: Vec<Arc<Row>> = rows
                .iter()
                .filter(|(t, _)| *t <= j)
                .map(|(_, r)| r.clone())
                .collect();
            if batch.is_empty() {
                continue;
            }
            let targets: Vec<(ZonePath, Vec<Arc<str>>)> = self.levels[j]
                .table
                .rows()
                .iter()
                .filter(|g| g.name() != mine)
                .map(|g| (g.zone.clone(), g.contacts().to_vec()))
                .collect();
            let parts = split(
                self.cfg.max_message.saturating_sub(MESSAGE_OVERHEAD),
                &batch,
            );
            for (zone, contacts) in targets {
                let Some(to) = self.pick_contact(&contacts) else {
                    continue;
                };
                for rows in &parts {
                    let msg = Message::Push {
                        target: zone.clone(),
                        rows: rows.clone(),
                    };
                    let len = msg.encoded_len();
                    if self.push_spent + len > self.cfg.push_budget {
                        continue;
                    }
                    self.push_spent += len;
                    self.stats.push_msgs_sent += 1;
                    self.stats.push_bytes_sent += len as u64;
                    self.send(to.clone(), msg);
                }
            }
        }
    }

    pub(super) fn send(&mut self, to: Arc<str>, msg: Message) {
        self.stats.msgs_sent += 1;
        self.stats.bytes_sent += msg.encoded_len() as u64;
        self.outbox.push_back(Transmit { to, msg });
    }
}

/// Splits rows into consecutive batches of at most `room` bytes each.
pub(super) fn split(room: usize, rows: &[Arc<Row>]) -> Vec<Vec<Arc<Row>>> {
    let mut out: Vec<Vec<Arc<Row>>> = Vec::new();
    let mut left = 0;
    for r in rows {
        let len = r.encoded_len();
        if out.is_empty() || len > left {
            out.push(Vec::new());
            left = room;
        }
        left = left.saturating_sub(len);
        out.last_mut().expect("a batch").push(r.clone());
    }
    out
}
