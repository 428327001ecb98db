//! Groups on a small seeded network: every message through the codec,
//! with loss, delay, crashes and partitions; every history checked.

use super::check::History;
use super::group::{Group, GroupConfig, GroupEvent, Phase, Replica};
use super::member::{MemberId, View};
use super::wire::{CrmMsg, Mode};
use crate::row::Micros;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

const MS: Micros = 1_000;
const S: Micros = 1_000_000;

fn addr(i: usize) -> Arc<str> {
    format!("n{i}").into()
}

/// A replica that sums the numbers it is sent, for state transfer.
#[derive(Default)]
struct Sum(u64);

impl Replica for Sum {
    fn apply(&mut self, _: &MemberId, _: Mode, data: &[u8]) -> Option<Vec<u8>> {
        self.0 += data.len() as u64;
        Some(self.0.to_le_bytes().to_vec())
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(state.try_into().map_err(|_| "not 8 bytes".to_string())?);
        Ok(())
    }
}

/// A message on its way: when it arrives, its number, to, from, bytes.
type InFlight = (Micros, u64, Arc<str>, Arc<str>, Vec<u8>);

struct Net {
    now: Micros,
    rng: SmallRng,
    loss: f64,
    latency: (Micros, Micros),
    nodes: BTreeMap<Arc<str>, Group>,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    cut: BTreeSet<(Arc<str>, Arc<str>)>,
    hist: History,
    events: Vec<(Arc<str>, GroupEvent)>,
    cfg: GroupConfig,
    sent: u64,
    /// Members that get no data frames (alive, heartbeats flow).
    starved: BTreeSet<Arc<str>>,
}

impl Net {
    fn new(seed: u64, loss: f64) -> Net {
        Net {
            now: S,
            rng: SmallRng::seed_from_u64(seed),
            loss,
            latency: (200, 2 * MS),
            nodes: BTreeMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            hist: History::new(),
            events: Vec::new(),
            cfg: GroupConfig::default(),
            sent: 0,
            starved: BTreeSet::new(),
        }
    }

    fn me(i: usize, inc: u64) -> MemberId {
        MemberId {
            addr: addr(i),
            inc,
            zone: addr(i),
        }
    }

    fn create(&mut self, i: usize) {
        let g = Group::create(self.now, "g".into(), Net::me(i, self.now), self.cfg.clone());
        self.add(i, g);
    }

    fn join(&mut self, i: usize, contacts: &[usize]) {
        let g = Group::join(
            self.now,
            "g".into(),
            Net::me(i, self.now),
            contacts.iter().map(|c| addr(*c)).collect(),
            self.cfg.clone(),
        );
        self.add(i, g);
    }

    fn add(&mut self, i: usize, mut g: Group) {
        g.set_replica(Box::new(Sum::default()));
        self.nodes.insert(addr(i), g);
        self.drain(&addr(i));
    }

    fn group(&self, i: usize) -> &Group {
        &self.nodes[&addr(i)]
    }

    fn drain(&mut self, a: &Arc<str>) {
        let Some(g) = self.nodes.get_mut(a) else {
            return;
        };
        let me = g.me().clone();
        let mut outs = Vec::new();
        while let Some(t) = g.poll_transmit() {
            outs.push(t);
        }
        while let Some(e) = g.poll_event() {
            self.hist.record(a, &me, &e);
            self.events.push((a.clone(), e));
        }
        for t in outs {
            let bytes = t.msg.encode();
            if self.cut.contains(&(a.clone(), t.to.clone()))
                || (self.starved.contains(&t.to) && matches!(t.msg, CrmMsg::Frame { .. }))
                || self.rng.random_bool(self.loss)
            {
                continue;
            }
            let at = self.now + self.rng.random_range(self.latency.0..=self.latency.1);
            self.seq += 1;
            self.queue
                .push(Reverse((at, self.seq, t.to, a.clone(), bytes)));
        }
    }

    fn run_for(&mut self, dt: Micros) {
        let end = self.now + dt;
        let mut spins = 0u32;
        loop {
            let next_msg = self.queue.peek().map_or(Micros::MAX, |r| r.0.0);
            let next_timer = self
                .nodes
                .values()
                .map(Group::poll_timeout)
                .min()
                .unwrap_or(Micros::MAX);
            let t = next_msg.min(next_timer).max(self.now);
            if t > end {
                self.now = end;
                return;
            }
            self.now = t;
            if next_msg <= t {
                let Reverse((_, _, to, from, bytes)) = self.queue.pop().expect("peeked");
                let msg = CrmMsg::decode(&bytes).expect("every message decodes");
                if let Some(g) = self.nodes.get_mut(&to) {
                    g.handle(t, &from, msg);
                    self.drain(&to);
                }
                continue;
            }
            spins += 1;
            assert!(spins < 1_000_000, "timers do not advance at {t}");
            let due: Vec<Arc<str>> = self
                .nodes
                .iter()
                .filter(|(_, g)| g.poll_timeout() <= t)
                .map(|(a, _)| a.clone())
                .collect();
            for a in due {
                if let Some(g) = self.nodes.get_mut(&a) {
                    g.handle_timeout(t);
                }
                self.drain(&a);
            }
        }
    }

    /// Sends from `i`; records it when taken.
    fn send(&mut self, i: usize, mode: Mode, data: String) -> bool {
        let a = addr(i);
        let Some(g) = self.nodes.get_mut(&a) else {
            return false;
        };
        let me = g.me().clone();
        let ok = g.send(self.now, mode, data.clone().into_bytes()).is_ok();
        if ok {
            self.sent += 1;
            self.hist.sent(&me, mode, data.as_bytes());
        }
        self.drain(&a);
        ok
    }

    fn crash(&mut self, i: usize) {
        self.nodes.remove(&addr(i));
    }

    fn partition(&mut self, a: &[usize], b: &[usize]) {
        for x in a {
            for y in b {
                self.cut.insert((addr(*x), addr(*y)));
                self.cut.insert((addr(*y), addr(*x)));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Runs until every node in `who` is a member of one view holding
    /// exactly `who`.
    fn until_view(&mut self, who: &[usize], within: Micros) -> View {
        let end = self.now + within;
        while self.now < end {
            self.run_for(20 * MS);
            let want: BTreeSet<Arc<str>> = who.iter().map(|i| addr(*i)).collect();
            let views: Vec<&View> = who
                .iter()
                .filter_map(|i| self.nodes.get(&addr(*i)))
                .filter(|g| g.phase() == Phase::Member)
                .map(|g| g.view())
                .collect();
            if views.len() == who.len()
                && views.iter().all(|v| *v == views[0])
                && views[0]
                    .members
                    .iter()
                    .map(|m| m.addr.clone())
                    .collect::<BTreeSet<_>>()
                    == want
            {
                return views[0].clone();
            }
        }
        let got: Vec<String> = who
            .iter()
            .filter_map(|i| self.nodes.get(&addr(*i)))
            .map(|g| format!("{} {:?} {:?}", g.me(), g.phase(), g.view()))
            .collect();
        panic!("no common view of {who:?}: {got:#?}");
    }

    /// The incarnations alive and members at the end.
    fn finals(&self) -> Vec<MemberId> {
        self.nodes
            .values()
            .filter(|g| g.phase() == Phase::Member)
            .map(|g| g.me().clone())
            .collect()
    }

    fn check(&self) -> super::check::Summary {
        match self.hist.check(&self.finals()) {
            Ok(s) => s,
            Err(v) => panic!("{v}"),
        }
    }

    fn sum(&self, i: usize) -> u64 {
        let r = self.group(i).replica().expect("replica");
        u64::from_le_bytes(r.snapshot().try_into().expect("8 bytes"))
    }
}

fn formed(seed: u64, n: usize, loss: f64) -> Net {
    let mut net = Net::new(seed, loss);
    net.create(0);
    for i in 1..n {
        net.join(i, &[0]);
    }
    let all: Vec<usize> = (0..n).collect();
    net.until_view(&all, 10 * S);
    net
}

const MODES: [Mode; 3] = [Mode::Fifo, Mode::Total, Mode::Safe];

/// Each node of `who` sends `per` messages over `dt`, modes in turn.
fn traffic(net: &mut Net, who: &[usize], per: usize, dt: Micros, tag: &str) {
    let step = dt / per.max(1) as u64;
    for k in 0..per {
        for &i in who {
            let mode = MODES[(k + i) % 3];
            net.send(i, mode, format!("{tag}:{i}:{k}"));
        }
        net.run_for(step);
    }
}

#[test]
fn three_members_deliver_every_mode_in_order_with_one_total_order() {
    let mut net = formed(1, 3, 0.0);
    traffic(&mut net, &[0, 1, 2], 200, 400 * MS, "a");
    net.run_for(S);
    let s = net.check();
    assert_eq!(s.sent, 600);
    // Every member delivered every message.
    for i in 0..3 {
        let got = net
            .events
            .iter()
            .filter(|(a, e)| **a == *addr(i) && matches!(e, GroupEvent::Deliver { .. }))
            .count();
        assert_eq!(got, 600, "member {i}");
    }
    assert_eq!(net.sum(0), net.sum(1));
    assert_eq!(net.sum(1), net.sum(2));
}

#[test]
fn a_crashed_member_and_then_the_coordinator_are_excluded_and_survivors_stay_synchronous() {
    let mut net = formed(2, 5, 0.0);
    traffic(&mut net, &[0, 1, 2, 3, 4], 50, 100 * MS, "a");
    net.crash(3);
    traffic(&mut net, &[0, 1, 2, 4], 100, 400 * MS, "b");
    let v = net.until_view(&[0, 1, 2, 4], 5 * S);
    assert!(v.id > 2);
    net.crash(0);
    traffic(&mut net, &[1, 2, 4], 100, 300 * MS, "c");
    let v2 = net.until_view(&[1, 2, 4], 5 * S);
    // The next in rank takes over.
    assert_eq!(v2.coordinator(), &v.members[1]);
    traffic(&mut net, &[1, 2, 4], 50, 100 * MS, "d");
    net.run_for(2 * S);
    let s = net.check();
    assert!(s.synchrony_pairs >= 6, "{s:?}");
    assert_eq!(net.sum(1), net.sum(2));
    assert_eq!(net.sum(2), net.sum(4));
}

#[test]
fn under_loss_with_crashes_every_property_holds() {
    for seed in 1..=6 {
        let mut net = formed(seed, 4, 0.15);
        traffic(&mut net, &[0, 1, 2, 3], 60, 300 * MS, "a");
        net.crash((seed % 4) as usize);
        let rest: Vec<usize> = (0..4).filter(|i| *i != (seed % 4) as usize).collect();
        traffic(&mut net, &rest, 60, 300 * MS, "b");
        net.until_view(&rest, 10 * S);
        net.run_for(3 * S);
        net.check();
        let sums: BTreeSet<u64> = rest.iter().map(|i| net.sum(*i)).collect();
        assert_eq!(sums.len(), 1, "seed {seed}: replicas differ: {sums:?}");
    }
}

#[test]
fn a_minority_side_decides_nothing_and_rejoins_after_the_partition_heals() {
    let mut net = formed(3, 5, 0.0);
    let ranked: Vec<usize> = net
        .group(0)
        .view()
        .members
        .iter()
        .map(|m| m.addr[1..].parse().expect("nN"))
        .collect();
    let (minority, majority) = ranked.split_at(2);
    let (minority, majority) = (minority.to_vec(), majority.to_vec());
    net.partition(&minority, &majority);
    traffic(&mut net, &[0, 1, 2, 3, 4], 40, 200 * MS, "a");
    let v = net.until_view(&majority, 5 * S);
    assert_eq!(*v.coordinator().addr, *addr(majority[0]));
    net.run_for(2 * S);
    for &i in &minority {
        assert!(
            net.events
                .iter()
                .any(|(a, e)| **a == *addr(i) && matches!(e, GroupEvent::Minority { .. })),
            "n{i} said nothing of its minority"
        );
        assert_ne!(net.group(i).phase(), Phase::Member);
        assert_eq!(
            net.group(i).view().members.len(),
            5,
            "no view installed on the minority side"
        );
    }
    net.heal();
    net.until_view(&[0, 1, 2, 3, 4], 10 * S);
    traffic(&mut net, &[0, 1, 2, 3, 4], 20, 100 * MS, "b");
    net.run_for(2 * S);
    net.check();
    let sums: BTreeSet<u64> = (0..5).map(|i| net.sum(i)).collect();
    assert_eq!(sums.len(), 1, "replicas differ after the rejoin: {sums:?}");
}

#[test]
fn a_joiner_gets_the_state_and_a_leaver_gets_out() {
    let mut net = formed(4, 3, 0.0);
    traffic(&mut net, &[0, 1, 2], 30, 60 * MS, "a");
    net.join(3, &[1]);
    traffic(&mut net, &[0, 1, 2], 30, 60 * MS, "b");
    net.until_view(&[0, 1, 2, 3], 5 * S);
    net.run_for(S);
    assert_eq!(
        net.sum(3),
        net.sum(0),
        "the joiner's replica starts from the coordinator's"
    );
    net.nodes.get_mut(&addr(0)).expect("n0").leave(net.now);
    net.drain(&addr(0));
    net.until_view(&[1, 2, 3], 5 * S);
    assert!(
        net.events
            .iter()
            .any(|(a, e)| **a == *addr(0) && matches!(e, GroupEvent::Left { .. }))
    );
    traffic(&mut net, &[1, 2, 3], 20, 60 * MS, "c");
    net.run_for(S);
    net.check();
    assert_eq!(net.sum(1), net.sum(3));
}

#[test]
fn a_safe_message_waits_until_every_member_holds_it() {
    let mut net = formed(5, 3, 0.0);
    net.partition(&[2], &[0, 1]);
    net.send(0, Mode::Safe, "s".into());
    net.run_for(100 * MS);
    let delivered = |net: &Net| {
        net.events
            .iter()
            .filter(|(_, e)| matches!(e, GroupEvent::Deliver { data, .. } if &**data == b"s"))
            .count()
    };
    assert_eq!(delivered(&net), 0, "delivered before member 2 held it");
    net.heal();
    net.run_for(300 * MS);
    assert_eq!(delivered(&net), 3);
    net.check();
}

#[test]
fn seeded_nemesis_runs_keep_every_property() {
    for seed in 10..50u64 {
        let mut net = formed(seed, 5, if seed % 2 == 0 { 0.1 } else { 0.02 });
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut alive: Vec<usize> = (0..5).collect();
        for round in 0..4 {
            traffic(&mut net, &alive, 20, 100 * MS, &format!("r{round}"));
            match rng.random_range(0..3) {
                0 if alive.len() > 3 => {
                    // A crash only of a view of everyone alive: a second
                    // crash before the view change would leave no majority.
                    net.until_view(&alive, 15 * S);
                    let k = alive.remove(rng.random_range(0..alive.len()));
                    net.crash(k);
                }
                1 => {
                    let k = alive[rng.random_range(0..alive.len())];
                    let others: Vec<usize> = alive.iter().copied().filter(|x| *x != k).collect();
                    net.partition(&[k], &others);
                    traffic(&mut net, &alive, 10, 700 * MS, &format!("p{round}"));
                    net.heal();
                }
                _ => {}
            }
        }
        net.until_view(&alive, 15 * S);
        traffic(&mut net, &alive, 10, 50 * MS, "end");
        net.run_for(3 * S);
        net.check();
        let sums: BTreeSet<u64> = alive.iter().map(|i| net.sum(*i)).collect();
        assert_eq!(sums.len(), 1, "seed {seed}: replicas differ: {sums:?}");
    }
}

#[test]
fn bad_input_gets_a_clear_refusal() {
    use super::group::SendRefused;
    use super::service::{CrmError, check_name};
    let mut net = formed(6, 2, 0.0);
    let g = net.nodes.get_mut(&addr(0)).expect("n0");
    let err = g
        .send(net.now, Mode::Total, vec![0; super::wire::MAX_DATA + 1])
        .unwrap_err();
    assert!(matches!(err, SendRefused::TooLarge { .. }));
    assert!(err.to_string().contains("at most"));
    assert_eq!(Mode::parse("causal"), None);
    assert!(matches!(check_name("a b"), Err(CrmError::BadName(_))));
    assert!(check_name("kv-1.prod_a").is_ok());
    g.leave(net.now);
    assert_eq!(
        g.send(net.now, Mode::Fifo, b"x".to_vec()),
        Err(SendRefused::Left)
    );
}

#[test]
fn a_member_more_than_the_bound_behind_is_excluded_instead_of_stalling_the_group() {
    let mut net = Net::new(7, 0.0);
    net.cfg.max_unstable = 64;
    net.cfg.lag_grace = 200 * MS;
    net.create(0);
    net.join(1, &[0]);
    net.join(2, &[0]);
    net.until_view(&[0, 1, 2], 5 * S);
    // Member 2 hears the others' data but its own progress never arrives.
    let mut refused = 0;
    for k in 0..400 {
        net.cut.insert((addr(2), addr(0)));
        net.cut.insert((addr(2), addr(1)));
        if !net.send(0, Mode::Fifo, format!("f{k}")) {
            refused += 1;
        }
        net.run_for(MS);
    }
    assert!(refused > 0, "the sender was never held back");
    let v = net.until_view(&[0, 1], 5 * S);
    assert!(!v.members.iter().any(|m| &*m.addr == "n2"));
    net.heal();
    net.run_for(2 * S);
    net.check();
}

#[test]
fn a_group_cut_into_single_members_forms_again_after_the_heal() {
    let mut net = formed(6, 3, 0.0);
    traffic(&mut net, &[0, 1, 2], 30, 60 * MS, "a");
    net.partition(&[0], &[1, 2]);
    net.partition(&[1], &[2]);
    traffic(&mut net, &[0, 1, 2], 30, 60 * MS, "b");
    net.run_for(3 * S);
    for i in 0..3 {
        assert_ne!(
            net.group(i).phase(),
            Phase::Member,
            "n{i} alone kept delivering"
        );
    }
    net.heal();
    net.until_view(&[0, 1, 2], 10 * S);
    traffic(&mut net, &[0, 1, 2], 20, 60 * MS, "c");
    net.run_for(2 * S);
    net.check();
}

#[test]
fn a_flood_is_held_to_the_members_windows_and_every_message_arrives() {
    let window = 32;
    let mut net = Net::new(11, 0.02);
    net.cfg.window = window;
    net.create(0);
    net.join(1, &[0]);
    net.join(2, &[0]);
    net.until_view(&[0, 1, 2], 5 * S);
    let (mut taken, mut refused, mut most) = (0u64, 0u64, 0usize);
    for round in 0..300 {
        for i in 0..3 {
            for k in 0..8 {
                let mode = [Mode::Fifo, Mode::Total, Mode::Safe][(round + k) % 3];
                if net.send(i, mode, format!("m{i}.{round}.{k}")) {
                    taken += 1;
                } else {
                    refused += 1;
                }
            }
        }
        net.run_for(MS);
        for i in 0..3 {
            most = most.max(net.group(i).unstable());
        }
    }
    assert!(refused > 0, "the senders were never held back");
    assert!(taken > 1000, "only {taken} messages taken");
    // What a member holds unstable is its peers' windows and its own, and
    // what arrives while the reports that free them are on their way.
    assert!(
        most <= 4 * window,
        "{most} unstable at one member, windows of {window}"
    );
    net.run_for(2 * S);
    let v = net.until_view(&[0, 1, 2], S);
    assert_eq!(v.id, net.group(0).view().id);
    net.check();
    let delivered = net.group(2).stats.delivered;
    assert_eq!(delivered, taken, "every taken message delivered at n2");
}

#[test]
fn a_member_that_keeps_messages_unstable_past_the_grace_does_not_stall_the_senders() {
    let window = 16;
    let mut net = Net::new(13, 0.0);
    net.cfg.window = window;
    net.cfg.lag_grace = 300 * MS;
    net.create(0);
    net.join(1, &[0]);
    net.join(2, &[0]);
    net.until_view(&[0, 1, 2], 5 * S);
    let first = net.group(0).view().id;
    // n2 stays alive and answers, but gets no data: every sender's window
    // fills with messages n2 lacks, and only a view change (whose flush
    // gives n2 what it lacks, or leaves it out) opens them again.
    net.starved.insert(addr(2));
    let mut taken = 0;
    for k in 0..400 {
        taken += u64::from(net.send(0, Mode::Fifo, format!("f{k}")));
        taken += u64::from(net.send(1, Mode::Total, format!("t{k}")));
        net.run_for(5 * MS);
    }
    assert!(
        taken > 4 * window as u64,
        "{taken} taken: the senders stalled on n2"
    );
    assert!(net.group(0).view().id > first, "no view change");
    net.starved.clear();
    net.run_for(2 * S);
    net.check();
}
