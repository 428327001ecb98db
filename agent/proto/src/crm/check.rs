//! Checkers of recorded group histories: what every member incarnation
//! installed and delivered, and what was sent. Used by the simulator
//! tests at scale and by the tests over real QUIC.
//!
//! Properties checked:
//! - **views agree**: a view id names one member list in a group's
//!   lineage (the incarnations linked by the views they installed; groups
//!   of one name created apart are two lineages until they merge), and
//!   each incarnation installs views in increasing order;
//! - **view synchrony**: two incarnations that install view v and then
//!   the same next view delivered the same messages in v;
//! - **total order**: total and safe messages are delivered in one order
//!   (every pair of incarnations agrees on the order of what both
//!   delivered);
//! - **FIFO**: each sender's messages of a stream are delivered in the
//!   order it sent them;
//! - **no duplication, no creation**: an incarnation delivers a message at
//!   most once, and only messages sent, by their sender;
//! - **self-delivery**: an incarnation that stays to the end delivers
//!   every message it sent.
//!
//! Messages are told apart by their bytes: tests send unique payloads.

use super::group::GroupEvent;
use super::member::{MemberId, View};
use super::wire::{Mode, Stream};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    View(View),
    Deliver {
        view: u64,
        from: MemberId,
        mode: Mode,
        data: Vec<u8>,
    },
}

/// A broken property, with what shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("view {id} has two member lists: {a:?} and {b:?}")]
    ViewsDisagree {
        id: u64,
        a: Vec<String>,
        b: Vec<String>,
    },
    #[error("{member} installed view {id} after view {after}")]
    ViewOrder { member: String, id: u64, after: u64 },
    #[error("{member} delivered {data:?} twice")]
    Duplicate { member: String, data: String },
    #[error("{member} delivered {data:?}, which {from} never sent")]
    Created {
        member: String,
        from: String,
        data: String,
    },
    #[error(
        "view synchrony broken in view {view}: {a} and {b} both went on to view {next}; only {a} delivered {only_a:?}, only {b} delivered {only_b:?}"
    )]
    ViewSynchrony {
        view: u64,
        next: u64,
        a: String,
        b: String,
        only_a: Vec<String>,
        only_b: Vec<String>,
    },
    #[error("total order broken: {a} delivered {x:?} before {y:?}, {b} the other way")]
    TotalOrder {
        a: String,
        b: String,
        x: String,
        y: String,
    },
    #[error("{member} delivered {from}'s {data:?} out of its send order")]
    Fifo {
        member: String,
        from: String,
        data: String,
    },
    #[error("{member} stayed to the end but never delivered its own {data:?}")]
    SelfDelivery { member: String, data: String },
}

/// What a check looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub incarnations: usize,
    pub views: usize,
    pub deliveries: usize,
    pub sent: usize,
    /// Pairs of incarnations compared in a view for view synchrony.
    pub synchrony_pairs: usize,
}

/// What one incarnation delivered in a view, and the view it installed next.
type InView = (MemberId, Option<u64>, BTreeSet<Vec<u8>>);

#[derive(Debug, Default, Clone)]
pub struct History {
    steps: BTreeMap<MemberId, Vec<Step>>,
    /// Every message sent: its sender, mode, and its place in the
    /// sender's sends of that stream.
    sent: HashMap<Vec<u8>, (MemberId, Mode, u64)>,
    sends: BTreeMap<(MemberId, Stream), u64>,
    /// Each agent's current incarnation in the group, as its events say.
    current: BTreeMap<String, MemberId>,
}

fn text(d: &[u8]) -> String {
    String::from_utf8_lossy(d).into_owned()
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Records a send the group took (`Ok` from `send`).
    pub fn sent(&mut self, from: &MemberId, mode: Mode, data: &[u8]) {
        let k = self.sends.entry((from.clone(), mode.stream())).or_default();
        *k += 1;
        self.sent.insert(data.to_vec(), (from.clone(), mode, *k));
    }

    /// Records an event of the group of the agent `agent` whose member is
    /// `me` when the agent's history starts.
    pub fn record(&mut self, agent: &str, me: &MemberId, ev: &GroupEvent) {
        let cur = self
            .current
            .entry(agent.to_string())
            .or_insert_with(|| me.clone())
            .clone();
        match ev {
            GroupEvent::View { view, .. } => self
                .steps
                .entry(cur)
                .or_default()
                .push(Step::View(view.clone())),
            GroupEvent::Deliver {
                view,
                from,
                mode,
                data,
                ..
            } => self.steps.entry(cur).or_default().push(Step::Deliver {
                view: *view,
                from: from.clone(),
                mode: *mode,
                data: data.to_vec(),
            }),
            GroupEvent::Rejoining { member, .. } => {
                self.current.insert(agent.to_string(), member.clone());
            }
            _ => {}
        }
    }

    /// The incarnation the agent's events are recorded under now.
    pub fn incarnation(&self, agent: &str) -> Option<&MemberId> {
        self.current.get(agent)
    }

    pub fn steps(&self) -> &BTreeMap<MemberId, Vec<Step>> {
        &self.steps
    }

    /// Each incarnation's lineage: incarnations are joined when one view
    /// (id and members) was installed by both, or when one is a member of
    /// a view the other installed.
    fn lineages(&self) -> HashMap<MemberId, usize> {
        let ids: Vec<&MemberId> = self.steps.keys().collect();
        let index: HashMap<&MemberId, usize> =
            ids.iter().enumerate().map(|(i, m)| (*m, i)).collect();
        let mut parent: Vec<usize> = (0..ids.len()).collect();
        fn root(p: &mut [usize], mut i: usize) -> usize {
            while p[i] != i {
                p[i] = p[p[i]];
                i = p[i];
            }
            i
        }
        for (m, steps) in &self.steps {
            let a = index[m];
            for st in steps {
                if let Step::View(v) = st {
                    for x in &v.members {
                        if let Some(&b) = index.get(x) {
                            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                            parent[ra] = rb;
                        }
                    }
                }
            }
        }
        ids.iter()
            .enumerate()
            .map(|(i, m)| ((*m).clone(), root(&mut parent, i)))
            .collect()
    }

    /// Checks every property; `finals` are the incarnations that stayed
    /// to the end of a quiet run (for self-delivery).
    pub fn check(&self, finals: &[MemberId]) -> Result<Summary, Violation> {
        let mut s = Summary {
            incarnations: self.steps.len(),
            sent: self.sent.len(),
            ..Summary::default()
        };
        // Lineages: incarnations that installed one same view are one
        // group's history. Groups of one name created apart (before either
        // saw the other) are separate lineages until their members merge.
        let lineage = self.lineages();
        // Views agree within a lineage, and come in order.
        let mut views: BTreeMap<(usize, u64), Vec<MemberId>> = BTreeMap::new();
        for (m, steps) in &self.steps {
            let mut last = 0;
            for st in steps {
                if let Step::View(v) = st {
                    if v.id <= last {
                        return Err(Violation::ViewOrder {
                            member: m.to_string(),
                            id: v.id,
                            after: last,
                        });
                    }
                    last = v.id;
                    match views.get(&(lineage[m], v.id)) {
                        Some(a) if *a != v.members => {
                            return Err(Violation::ViewsDisagree {
                                id: v.id,
                                a: a.iter().map(|m| m.to_string()).collect(),
                                b: v.members.iter().map(|m| m.to_string()).collect(),
                            });
                        }
                        Some(_) => {}
                        None => {
                            views.insert((lineage[m], v.id), v.members.clone());
                        }
                    }
                }
            }
        }
        s.views = views.len();
        // Per incarnation: duplicates, creation, FIFO; deliveries per view
        // with the next view installed.
        let mut per_view: BTreeMap<(usize, u64), Vec<InView>> = BTreeMap::new();
        let mut orders: Vec<(MemberId, Vec<&[u8]>)> = Vec::new();
        for (m, steps) in &self.steps {
            let mut seen: BTreeSet<&[u8]> = BTreeSet::new();
            let mut fifo_last: BTreeMap<(MemberId, Stream), u64> = BTreeMap::new();
            let mut order = Vec::new();
            let mut cur: Option<(u64, BTreeSet<Vec<u8>>)> = None;
            for st in steps {
                match st {
                    Step::View(v) => {
                        if let Some((id, set)) = cur.take() {
                            per_view.entry((lineage[m], id)).or_default().push((
                                m.clone(),
                                Some(v.id),
                                set,
                            ));
                        }
                        cur = Some((v.id, BTreeSet::new()));
                    }
                    Step::Deliver { from, data, .. } => {
                        s.deliveries += 1;
                        if !seen.insert(data) {
                            return Err(Violation::Duplicate {
                                member: m.to_string(),
                                data: text(data),
                            });
                        }
                        let Some((who, mode, k)) = self.sent.get(data) else {
                            return Err(Violation::Created {
                                member: m.to_string(),
                                from: from.to_string(),
                                data: text(data),
                            });
                        };
                        if who != from {
                            return Err(Violation::Created {
                                member: m.to_string(),
                                from: from.to_string(),
                                data: text(data),
                            });
                        }
                        let last = fifo_last.entry((from.clone(), mode.stream())).or_default();
                        if *k <= *last {
                            return Err(Violation::Fifo {
                                member: m.to_string(),
                                from: from.to_string(),
                                data: text(data),
                            });
                        }
                        *last = *k;
                        if mode.stream() == Stream::Total {
                            order.push(data.as_slice());
                        }
                        if let Some((_, set)) = &mut cur {
                            set.insert(data.clone());
                        }
                    }
                }
            }
            if let Some((id, set)) = cur.take() {
                per_view
                    .entry((lineage[m], id))
                    .or_default()
                    .push((m.clone(), None, set));
            }
            orders.push((m.clone(), order));
        }
        // View synchrony.
        for ((_, view), list) in &per_view {
            for (i, (a, na, sa)) in list.iter().enumerate() {
                for (b, nb, sb) in &list[i + 1..] {
                    let (Some(na), Some(nb)) = (na, nb) else {
                        continue;
                    };
                    if na != nb {
                        continue;
                    }
                    s.synchrony_pairs += 1;
                    if sa != sb {
                        return Err(Violation::ViewSynchrony {
                            view: *view,
                            next: *na,
                            a: a.to_string(),
                            b: b.to_string(),
                            only_a: sa.difference(sb).take(5).map(|d| text(d)).collect(),
                            only_b: sb.difference(sa).take(5).map(|d| text(d)).collect(),
                        });
                    }
                }
            }
        }
        // Total order: pairwise agreement on what both delivered.
        for (i, (a, oa)) in orders.iter().enumerate() {
            let pos: HashMap<&[u8], usize> = oa.iter().enumerate().map(|(i, d)| (*d, i)).collect();
            for (b, ob) in &orders[i + 1..] {
                let mut last: Option<(usize, &[u8])> = None;
                for d in ob {
                    if let Some(&p) = pos.get(d) {
                        if let Some((lp, ld)) = last
                            && p < lp
                        {
                            return Err(Violation::TotalOrder {
                                a: a.to_string(),
                                b: b.to_string(),
                                x: text(d),
                                y: text(ld),
                            });
                        }
                        last = Some((p, d));
                    }
                }
            }
        }
        // Self-delivery.
        for m in finals {
            let got: BTreeSet<&[u8]> = self
                .steps
                .get(m)
                .into_iter()
                .flatten()
                .filter_map(|st| match st {
                    Step::Deliver { data, .. } => Some(data.as_slice()),
                    _ => None,
                })
                .collect();
            for (data, (who, _, _)) in &self.sent {
                if who == m && !got.contains(data.as_slice()) {
                    return Err(Violation::SelfDelivery {
                        member: m.to_string(),
                        data: text(data),
                    });
                }
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn m(a: &str) -> MemberId {
        MemberId {
            addr: a.into(),
            inc: 1,
            zone: a.into(),
        }
    }

    fn view(id: u64, ms: &[&str]) -> GroupEvent {
        GroupEvent::View {
            group: "g".into(),
            view: View {
                id,
                members: ms.iter().map(|a| m(a)).collect(),
            },
        }
    }

    fn deliver(v: u64, from: &str, mode: Mode, d: &str) -> GroupEvent {
        GroupEvent::Deliver {
            group: "g".into(),
            view: v,
            from: m(from),
            mode,
            seq: 0,
            data: Arc::from(d.as_bytes()),
            reply: None,
        }
    }

    #[test]
    fn a_clean_history_passes_and_each_broken_property_is_caught() {
        let mut h = History::new();
        h.sent(&m("a"), Mode::Total, b"x");
        h.sent(&m("a"), Mode::Total, b"y");
        for who in ["a", "b"] {
            h.record(who, &m(who), &view(1, &["a", "b"]));
            h.record(who, &m(who), &deliver(1, "a", Mode::Total, "x"));
            h.record(who, &m(who), &deliver(1, "a", Mode::Total, "y"));
            h.record(who, &m(who), &view(2, &["a", "b"]));
        }
        let s = h.check(&[m("a"), m("b")]).unwrap();
        assert_eq!(s.synchrony_pairs, 1);

        // Only one of two survivors delivered y in view 1.
        let mut bad = History::new();
        bad.sent(&m("a"), Mode::Fifo, b"x");
        bad.sent(&m("a"), Mode::Fifo, b"y");
        for who in ["a", "b"] {
            bad.record(who, &m(who), &view(1, &["a", "b"]));
            bad.record(who, &m(who), &deliver(1, "a", Mode::Fifo, "x"));
        }
        bad.record("a", &m("a"), &deliver(1, "a", Mode::Fifo, "y"));
        for who in ["a", "b"] {
            bad.record(who, &m(who), &view(2, &["a", "b"]));
        }
        assert!(matches!(
            bad.check(&[]),
            Err(Violation::ViewSynchrony { .. })
        ));

        // Opposite total orders.
        let mut bad = History::new();
        bad.sent(&m("a"), Mode::Total, b"x");
        bad.sent(&m("b"), Mode::Total, b"y");
        bad.record("a", &m("a"), &deliver(1, "a", Mode::Total, "x"));
        bad.record("a", &m("a"), &deliver(1, "b", Mode::Total, "y"));
        bad.record("b", &m("b"), &deliver(1, "b", Mode::Total, "y"));
        bad.record("b", &m("b"), &deliver(1, "a", Mode::Total, "x"));
        assert!(matches!(bad.check(&[]), Err(Violation::TotalOrder { .. })));

        // Twice, invented, out of order, never to oneself.
        let mut bad = History::new();
        bad.sent(&m("a"), Mode::Fifo, b"x");
        bad.record("b", &m("b"), &deliver(1, "a", Mode::Fifo, "x"));
        bad.record("b", &m("b"), &deliver(1, "a", Mode::Fifo, "x"));
        assert!(matches!(bad.check(&[]), Err(Violation::Duplicate { .. })));
        let mut bad = History::new();
        bad.record("b", &m("b"), &deliver(1, "a", Mode::Fifo, "z"));
        assert!(matches!(bad.check(&[]), Err(Violation::Created { .. })));
        let mut bad = History::new();
        bad.sent(&m("a"), Mode::Fifo, b"x");
        bad.sent(&m("a"), Mode::Fifo, b"y");
        bad.record("b", &m("b"), &deliver(1, "a", Mode::Fifo, "y"));
        bad.record("b", &m("b"), &deliver(1, "a", Mode::Fifo, "x"));
        assert!(matches!(bad.check(&[]), Err(Violation::Fifo { .. })));
        let mut bad = History::new();
        bad.sent(&m("a"), Mode::Fifo, b"x");
        bad.record("a", &m("a"), &view(1, &["a"]));
        assert!(matches!(
            bad.check(&[m("a")]),
            Err(Violation::SelfDelivery { .. })
        ));

        // Two member lists for one view id.
        let mut bad = History::new();
        bad.record("a", &m("a"), &view(1, &["a", "b"]));
        bad.record("b", &m("b"), &view(1, &["b"]));
        assert!(matches!(
            bad.check(&[]),
            Err(Violation::ViewsDisagree { .. })
        ));
        // A split of one view into two next views of one id.
        let mut bad = History::new();
        for who in ["a", "b", "c", "d"] {
            bad.record(who, &m(who), &view(4, &["a", "b", "c", "d"]));
        }
        for who in ["a", "b"] {
            bad.record(who, &m(who), &view(5, &["a", "b"]));
        }
        for who in ["c", "d"] {
            bad.record(who, &m(who), &view(5, &["c", "d"]));
        }
        assert!(matches!(
            bad.check(&[]),
            Err(Violation::ViewsDisagree { .. })
        ));

        // Two groups of one name created apart are two lineages.
        let mut ok = History::new();
        ok.record("a", &m("a"), &view(1, &["a"]));
        ok.record("b", &m("b"), &view(1, &["b"]));
        ok.record("b", &m("b"), &view(2, &["b", "c"]));
        ok.record("c", &m("c"), &view(2, &["b", "c"]));
        assert!(ok.check(&[]).is_ok());
    }
}
