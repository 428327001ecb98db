//! The service host in the simulator: the gossip core and a second core in
//! one world, messages routed by the envelope's service id, the second core
//! reading the zone tree and publishing into its leaf row; the same run
//! whatever the number of threads.

use armillary_proto::host::{Core, Peer, PublishError, Service, ServiceId, Transmit, Zones};
use armillary_proto::sim::{Clock, NetConfig, World, tree};
use armillary_proto::{AfcCert, Config, Micros, Refusal, ZonePath};
use std::collections::VecDeque;
use zone_sql::Value;

const ROUND: u64 = 1_000_000;

/// A small core: every round it greets one contact of a sibling zone of
/// its leaf's parent, counts the greetings it receives, and publishes
/// the count as `echo_heard`.
#[derive(Default)]
struct Echo {
    next: Micros,
    sent: u64,
    heard: u64,
    outbox: VecDeque<Transmit<u64>>,
    refused_publish: Option<PublishError>,
}

impl Core for Echo {
    type Msg = u64;
    type Event = u64;
    type Cx<'a> = Zones<'a>;

    fn handle(&mut self, _: Micros, _: &Peer, msg: u64, mut zones: Zones<'_>) {
        self.heard += 1;
        let _ = msg;
        zones
            .publish("echo_heard", Value::Int(self.heard as i64))
            .expect("own prefix");
    }

    fn handle_timeout(&mut self, now: Micros, mut zones: Zones<'_>) {
        self.next = now + ROUND;
        // Someone else's attribute is refused, typed.
        if self.refused_publish.is_none() {
            self.refused_publish = zones.publish("load", Value::Int(1)).err();
        }
        let leaf = zones.leaf().clone();
        let parent = leaf.parent().expect("below the root");
        let me = zones.addr().clone();
        let to = zones
            .members(&parent)
            .unwrap_or_default()
            .iter()
            .filter(|r| r.zone != leaf)
            .flat_map(|r| r.contacts().iter())
            .find(|c| **c != me)
            .cloned();
        if let Some(to) = to {
            self.sent += 1;
            self.outbox.push_back(Transmit { to, msg: self.sent });
        }
    }

    fn poll_timeout(&self) -> Micros {
        self.next
    }

    fn poll_transmit(&mut self) -> Option<Transmit<u64>> {
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<u64> {
        None
    }
}

impl Service for Echo {
    const ID: ServiceId = 9;
    const NAME: &'static str = "echo";

    /// Every zone sums the greetings heard below it, without an AFC.
    fn aggregations() -> Vec<String> {
        vec!["SELECT SUM(echo_heard) AS echo_total".into()]
    }

    fn encode(msg: &u64) -> Vec<u8> {
        msg.to_le_bytes().to_vec()
    }

    fn decode(bytes: &[u8]) -> Result<u64, Refusal> {
        let b: [u8; 8] = bytes.try_into().map_err(|_| Refusal::MalformedMessage)?;
        Ok(u64::from_le_bytes(b))
    }

    /// What survives a crash: the count heard so far.
    fn save(&self) -> Option<Vec<u8>> {
        Some(Echo::encode(&self.heard))
    }

    fn restore(&mut self, state: &[u8], _: Zones<'_>) -> Result<(), Refusal> {
        self.heard = Echo::decode(state)?;
        Ok(())
    }
}

fn world(n: usize, threads: usize) -> World<(Echo,)> {
    let leaves = tree::balanced(n, 8);
    let configs: Vec<Config> = leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = Config::new(l.clone(), l.as_arc().clone());
            c.rng_seed = 17 ^ (i as u64 * 7919);
            c.seeds = vec![leaves[(i + 1) % n].as_arc().clone()];
            c.events = false;
            c
        })
        .collect();
    let clocks = vec![Clock::default(); n];
    let mut w = World::with_services(configs, clocks, NetConfig::default(), 17, |_| {
        (Echo::default(),)
    });
    w.set_threads(threads);
    w.set_parallel_min_events(1);
    w.warm_start();
    w.with_agent(0, |a, now| {
        a.install_afc(
            now,
            AfcCert::new(
                ZonePath::root(),
                "echo",
                "SELECT SUM(echo_heard) AS echo_heard",
                now,
            ),
        )
    })
    .expect("agent 0 is up")
    .expect("the AFC installs");
    w
}

type Outcome = Vec<(u64, u64, String)>;

/// What a run leaves: per agent, what its echo core sent and heard and
/// what its root row says; and what the network carried.
fn outcome(w: &World<(Echo,)>) -> Outcome {
    (0..w.len())
        .map(|i| {
            let h = w.host(i).expect("up");
            let echo = &h.services.0;
            (echo.sent, echo.heard, format!("{:?}", h.gossip.root_row()))
        })
        .chain([(w.net_stats.sent, w.net_stats.undecodable, String::new())])
        .collect()
}

fn run(threads: usize) -> (Outcome, World<(Echo,)>) {
    let mut w = world(200, threads);
    for r in 1..=20 {
        w.run_until(r * ROUND);
    }
    (outcome(&w), w)
}

#[test]
fn a_second_core_runs_beside_gossip_the_same_on_any_number_of_threads() {
    let (one, w) = run(1);
    assert_eq!(run(2).0, one);
    assert_eq!(run(3).0, one);

    // Both cores did their work in the one world: greetings went out and
    // came in through the envelope, nothing was undecodable, and the count
    // each echo core published reached the root through gossip.
    let sent: u64 = (0..w.len())
        .map(|i| w.host(i).unwrap().services.0.sent)
        .sum();
    let heard: u64 = (0..w.len())
        .map(|i| w.host(i).unwrap().services.0.heard)
        .sum();
    assert!(sent > 0 && heard > 0, "sent {sent}, heard {heard}");
    assert_eq!(w.net_stats.undecodable, 0);
    let root = w.agent(0).unwrap().root_row();
    let Some(Value::Int(total)) = root.get("echo_heard") else {
        panic!("no echo_heard at the root: {root:?}")
    };
    assert!(*total > 0 && *total as u64 <= heard, "{total} of {heard}");
    // The service's built-in aggregation ran in every zone beside it.
    assert_eq!(root.get("echo_total"), Some(&Value::Int(*total)));
    assert_eq!(root.get("nmembers"), Some(&Value::Int(200)));

    // A core publishes only under its own prefix.
    assert!(matches!(
        w.host(0).unwrap().services.0.refused_publish,
        Some(PublishError::ForeignPrefix { .. })
    ));

    // A service's state outlives a crash: restored before its first input.
    let mut w = w;
    let k = (0..w.len())
        .find(|i| w.host(*i).unwrap().services.0.heard > 0)
        .expect("some agent heard a greeting");
    let before = w.host(k).unwrap().services.0.heard;
    w.crash(k);
    w.restart(k);
    assert_eq!(w.host(k).unwrap().services.0.heard, before);
}

#[test]
fn a_built_in_aggregation_keeps_to_its_service_prefix() {
    let leaf = ZonePath::parse("/z/a").unwrap();
    let mut a = armillary_proto::Agent::new(Config::new(leaf, "a"), 0);
    let e = a
        .set_service_aggregations(vec![("echo", "SELECT SUM(n) AS load".into())])
        .unwrap_err();
    assert!(e.to_string().contains("not under its prefix echo_"), "{e}");
    let e = a
        .set_service_aggregations(vec![("echo", "SELECT SUM(n AS echo_n".into())])
        .unwrap_err();
    assert!(e.to_string().contains("does not compile"), "{e}");
    assert!(
        a.set_service_aggregations(vec![("echo", "SELECT SUM(n) AS echo_n".into())])
            .is_ok()
    );
}

#[test]
fn a_paused_agent_takes_no_input_and_catches_up_on_resume() {
    let mut w = world(40, 1);
    w.run_until(5 * ROUND);
    let heard = |w: &mut World<(Echo,)>, k: usize| {
        w.with_host(k, |h, now| h.with_service::<Echo, _>(now, |e, _| e.heard))
            .flatten()
    };
    let k = (0..w.len())
        .find(|i| heard(&mut w, *i).unwrap_or(0) > 0)
        .expect("some agent heard a greeting");
    let before = heard(&mut w, k).expect("up");
    w.pause(k);
    assert!(w.is_paused(k) && !w.alive(k) && w.host(k).is_none());
    w.run_until(15 * ROUND);
    assert!(w.net_stats.to_paused > 0, "{:?}", w.net_stats);
    w.resume(k);
    // Its state was kept, its timers fire at once with the clock jumped.
    assert_eq!(w.host(k).unwrap().service::<Echo>().unwrap().heard, before);
    assert!(w.host(k).unwrap().service::<Echo>().unwrap().next < w.local_now(k));
    w.run_until(25 * ROUND);
    assert!(heard(&mut w, k).unwrap() > before);
}
