//! The standard experiment behind `armillary sim`: a settled hierarchy, one
//! attribute change at a random leaf, one AFC installed at the root, and how
//! many rounds each live agent needs to see them, at an operating point of
//! churning sensors, typical AFCs, loss, crashes, skewed clocks and, when
//! asked, signed rows.

use super::clock::{Clock, EPOCH, MAX_DRIFT_PPM};
use super::keys::SimAuthority;
use super::oracle::Oracle;
use super::tree;
use super::world::{NetConfig, WireStats, World, par_map};
use crate::afc::{AfcCert, compile};
use crate::config::Config;
use crate::path::ZonePath;
use crate::row::Micros;
use rand::rngs::SmallRng;
use rand::seq::{SliceRandom, index};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use zone_sql::{Attrs, Value};

/// The AFC every simulated agent starts with: load statistics and the probe.
pub const STATS_AFC: &str =
    "SELECT AVG(load, nmembers) AS load, MAX(load_max) AS load_max, MAX(probe) AS probe";
/// The AFC installed during the run unless the scenario names another.
pub const NEW_AFC: &str = "SELECT MIN(nmembers) AS smallest_zone, MAX(nmembers) AS largest_zone";
/// Length of a simulated round.
const ROUND: Micros = 1_000_000;
/// The name the AFC installed during the run goes by.
pub const NEW_AFC_NAME: &str = "new_afc";

/// Typical AFCs (`--afcs K` installs the first K, cycling with a suffix on
/// names and outputs): weighted average, maximum, counts and sums over a
/// `WHERE`, the first three contacts in an order. `{}` is the suffix.
const TYPICAL_AFCS: [(&str, &str); 4] = [
    (
        "mean_load{}",
        "SELECT AVG(COALESCE(mean_load{}, load), nmembers) AS mean_load{}",
    ),
    (
        "peak_load{}",
        "SELECT MAX(COALESCE(peak_load{}, load)) AS peak_load{}",
    ),
    (
        "busy{}",
        "SELECT COUNT(*) AS busy_children{}, SUM(nmembers) AS busy_members{} WHERE load > 2.0",
    ),
    (
        "hottest{}",
        "SELECT FIRST(3, COALESCE(hottest{}, contacts)) AS hottest{} ORDER BY load DESC",
    ),
];

/// The `k`-th typical AFC: (name, SQL).
pub fn typical_afc(k: usize) -> (String, String) {
    let (name, sql) = TYPICAL_AFCS[k % TYPICAL_AFCS.len()];
    let suffix = match k / TYPICAL_AFCS.len() {
        0 => String::new(),
        c => format!("_{}", c + 1),
    };
    (name.replace("{}", &suffix), sql.replace("{}", &suffix))
}

/// Parameters of one simulation run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub agents: usize,
    pub branching: usize,
    pub reps: usize,
    pub loss: f64,
    pub crash: f64,
    pub rounds: u64,
    pub seed: u64,
    pub push: bool,
    /// One-way latency range in microseconds.
    pub latency: (Micros, Micros),
    /// Round at whose start the attribute changes.
    pub change_round: u64,
    /// Round at whose start the new AFC is installed.
    pub afc_round: u64,
    /// The AFC installed then (None: [`NEW_AFC`]).
    pub afc_sql: Option<String>,
    /// Round at whose start the crashes happen (None: the change round).
    pub crash_round: Option<u64>,
    /// Crash each agent at a random round instead.
    pub crash_spread: bool,
    /// Fraction of agents whose `load` changes each round.
    pub churn: f64,
    /// Typical AFCs installed at the root from the start ([`typical_afc`]).
    pub afcs: usize,
    /// Rows signed and verified, certificates carried: a throwaway
    /// authority certifies every agent and signs the AFCs.
    pub secure: bool,
    /// Each agent's clock is off by up to this many milliseconds either way
    /// (uniform) and drifts by up to [`MAX_DRIFT_PPM`]; 0: perfect clocks.
    pub skew_ms: u64,
    /// Start from an empty state, agents joining through seeds, instead of a settled one.
    pub cold: bool,
    /// Threads that run the agents (0: as many as the machine offers). The
    /// result does not depend on it.
    pub threads: usize,
    /// Encode every delivered message again and count those whose bytes
    /// differ (a check of the codec, for tests; it costs time).
    pub check_round_trip: bool,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            agents: 1000,
            branching: 16,
            reps: 3,
            loss: 0.0,
            crash: 0.0,
            rounds: 60,
            seed: 1,
            push: true,
            latency: (5_000, 50_000),
            change_round: 5,
            afc_round: 7,
            afc_sql: None,
            crash_round: None,
            crash_spread: false,
            churn: 0.0,
            afcs: 0,
            secure: false,
            skew_ms: 0,
            cold: false,
            threads: 0,
            check_round_trip: false,
        }
    }
}

impl Scenario {
    /// The AFC installed during the run.
    pub fn new_afc_sql(&self) -> &str {
        self.afc_sql.as_deref().unwrap_or(NEW_AFC)
    }

    /// Checks the AFC texts: the installed one and the typical ones must
    /// compile with names and outputs an agent accepts.
    pub fn check(&self) -> Result<(), String> {
        let check = |name: &str, sql: &str| match compile(&AfcCert::new(
            ZonePath::root(),
            name,
            sql,
            0,
        ))
        .0
        {
            crate::afc::AfcState::Rejected(why) => Err(format!("AFC {name}: {why}")),
            _ => Ok(()),
        };
        check(NEW_AFC_NAME, self.new_afc_sql())?;
        for k in 0..self.afcs {
            let (name, sql) = typical_afc(k);
            check(&name, &sql)?;
        }
        Ok(())
    }
}

/// Percentiles of a distribution of rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Mean and maximum over agents.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MeanMax {
    pub mean: f64,
    pub max: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub agents: usize,
    pub levels: usize,
    pub branching: usize,
    pub reps: usize,
    pub loss: f64,
    pub crash: f64,
    /// Round of the crashes (null: spread over the run).
    pub crash_round: Option<u64>,
    pub churn: f64,
    pub afcs: usize,
    pub secure: bool,
    pub skew_ms: u64,
    pub push: bool,
    pub seed: u64,
    pub rounds: u64,
    pub change_round: u64,
    pub afc_round: u64,
    pub afc_sql: String,
    /// Rounds from the change (the install) until each live agent's root row
    /// shows it for good: counted from the first round after which the agent
    /// never lost it again, to the end of the run.
    pub rounds_to_converge: Option<Quantiles>,
    pub afc_rounds_to_converge: Option<Quantiles>,
    /// Live agents whose root row does not show the change / the AFC's
    /// correct value at the end.
    pub unconverged: usize,
    pub afc_unconverged: usize,
    /// Times a live agent's root row lost the change / the AFC's correct
    /// value after showing it.
    pub flaps: u64,
    pub afc_flaps: u64,
    /// The AFC's correct outputs at the root at the end (from the true tree
    /// of live agents); an output left out as invalid is absent.
    pub afc_value: serde_json::Map<String, serde_json::Value>,
    /// Live agents that report the new AFC faulty on some zone at the end
    /// (an output that would break a row limit, left out), and one reason.
    pub afc_faulty: usize,
    pub afc_fault_reason: Option<String>,
    /// Per agent per round from the change on, from the real encoding.
    pub msgs_per_agent_round: MeanMax,
    pub bytes_per_agent_round: MeanMax,
    /// The share of those bytes spent on eager push.
    pub push_bytes_per_agent_round: MeanMax,
    /// Gossip exchanges an agent starts per round, and the zones it represents.
    pub exchanges_per_agent_round: MeanMax,
    /// Zone evaluations an agent runs per round (where simulated time goes).
    pub evaluations_per_agent_round: MeanMax,
    pub max_zones_represented: usize,
    pub live_agents: usize,
    pub crashed: usize,
    pub messages_sent: u64,
    pub messages_lost: u64,
    /// Messages the receiver could not decode (dropped).
    pub messages_undecodable: u64,
    /// With the round-trip check on: messages re-encoded, and those whose
    /// bytes differed from what arrived.
    pub round_trips: u64,
    pub round_trip_mismatches: u64,
    /// Input the live agents refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    pub peak_rss_mb: f64,
    pub wall_s: f64,
    /// Threads the simulator ran on.
    pub threads: usize,
    pub agent_rounds_per_sec: f64,
    /// Every live agent's root row showed the change and the AFC's correct value at some round.
    pub converged: bool,
    /// Every live agent's root row ends with the change and the AFC's correct value.
    pub stable: bool,
}

/// When one agent's root row showed a value: since when, without a break,
/// whether it ever did, and how often it lost it.
#[derive(Debug, Clone, Copy, Default)]
struct Track {
    since: Option<u64>,
    ever: bool,
    flaps: u64,
}

impl Track {
    fn observe(&mut self, round: u64, shows: bool) {
        match (self.since, shows) {
            (None, true) => {
                self.since = Some(round);
                self.ever = true;
            }
            (Some(_), false) => {
                self.since = None;
                self.flaps += 1;
            }
            _ => {}
        }
    }
}

/// Draws each agent's clock: offset uniform in ±`skew_ms`, drift in ±[`MAX_DRIFT_PPM`].
fn clocks(n: usize, skew_ms: u64, seed: u64) -> Vec<Clock> {
    if skew_ms == 0 {
        return vec![Clock::default(); n];
    }
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xc10c_c10c);
    let skew = (skew_ms * 1000) as i64;
    (0..n)
        .map(|_| Clock {
            offset: rng.random_range(-skew..=skew),
            drift_ppm: rng.random_range(-MAX_DRIFT_PPM..=MAX_DRIFT_PPM),
        })
        .collect()
}

fn sensors(load: f64) -> Attrs {
    [
        ("load", Value::Float(load)),
        ("load_max", Value::Float(load)),
        ("probe", Value::Int(0)),
    ]
    .into_iter()
    .collect()
}

/// The agents' settings: the scenario's protocol choices and, for each,
/// an operator's seed list (an agent nearby and one anywhere).
fn configs(s: &Scenario, leaves: &[ZonePath], rng: &mut SmallRng) -> Vec<Config> {
    let n = leaves.len();
    leaves
        .iter()
        .enumerate()
        .map(|(i, leaf)| {
            let mut c = Config::new(leaf.clone(), leaf.as_arc().clone());
            c.round = ROUND;
            c.reps = s.reps;
            c.push = s.push;
            c.events = false;
            c.rng_seed = s.seed.wrapping_mul(0x100_0000_01b3) ^ i as u64;
            // A settled tree needs no seed probes; keep the figures Astrolabe's.
            if !s.cold {
                c.seed_probe = 0.0;
            }
            let near = (i / s.branching) * s.branching + rng.random_range(0..s.branching);
            let far = rng.random_range(0..n);
            c.seeds = [near.min(n - 1), far]
                .iter()
                .filter(|j| **j != i)
                .map(|j| leaves[*j].as_arc().clone())
                .collect();
            c
        })
        .collect()
}

/// How the live agents fared with one value (the change or the AFC).
struct Outcome {
    /// Rounds from `from` to showing it for good, over those that end with it.
    rounds: Option<Quantiles>,
    /// Live agents that do not show it at the end.
    missing: usize,
    flaps: u64,
    /// Every live agent showed it at some round.
    reached: bool,
}

impl Outcome {
    fn of(live: &[usize], tracks: &[Track], from: u64) -> Outcome {
        let mut got: Vec<u64> = live
            .iter()
            .filter_map(|i| tracks[*i].since.map(|r| r - from + 1))
            .collect();
        got.sort_unstable();
        Outcome {
            missing: live.len() - got.len(),
            rounds: quantiles(&got),
            flaps: live.iter().map(|i| tracks[*i].flaps).sum(),
            reached: live.iter().all(|i| tracks[*i].ever),
        }
    }
}

/// What the live agents sent per round since the baseline, from the wire
/// counts, and what they refused.
struct Traffic {
    msgs: MeanMax,
    bytes: MeanMax,
    push_bytes: MeanMax,
    exchanges: MeanMax,
    evaluations: MeanMax,
    max_zones_represented: usize,
    rejected: BTreeMap<String, u64>,
}

impl Traffic {
    fn of(
        world: &World,
        live: &[usize],
        baseline: &[Option<(WireStats, u64, u64)>],
        rounds: u64,
    ) -> Traffic {
        let rounds = rounds as f64;
        let mut per_agent: Vec<[f64; 5]> = Vec::new();
        let mut max_rep = 0;
        let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
        for &i in live {
            let Some(a) = world.agent(i) else { continue };
            for (why, k) in &a.stats().rejected {
                *rejected.entry(why.to_string()).or_default() += k;
            }
            let Some((b, syns, evals)) = baseline[i] else {
                continue;
            };
            let w = world.wire_stats(i);
            per_agent.push([
                (w.msgs - b.msgs) as f64 / rounds,
                (w.bytes - b.bytes) as f64 / rounds,
                (w.push_bytes - b.push_bytes) as f64 / rounds,
                (a.stats().syns_sent - syns) as f64 / rounds,
                (a.stats().evaluations - evals) as f64 / rounds,
            ]);
            let reps = a.zones().iter().skip(1).filter(|z| a.represents(z)).count();
            max_rep = max_rep.max(reps);
        }
        let mm = |k: usize| MeanMax {
            mean: per_agent.iter().map(|x| x[k]).sum::<f64>() / per_agent.len().max(1) as f64,
            max: per_agent.iter().map(|x| x[k]).fold(0.0, f64::max),
        };
        Traffic {
            msgs: mm(0),
            bytes: mm(1),
            push_bytes: mm(2),
            exchanges: mm(3),
            evaluations: mm(4),
            max_zones_represented: max_rep,
            rejected,
        }
    }
}

/// Runs the scenario; `progress(round, rounds)` is called after each round.
pub fn run(s: &Scenario, mut progress: impl FnMut(u64, u64)) -> Report {
    let started = Instant::now();
    let mut rng = SmallRng::seed_from_u64(s.seed);
    let leaves = tree::balanced(s.agents, s.branching);
    let levels = tree::levels(&leaves);
    let n = leaves.len();

    let configs = configs(s, &leaves, &mut rng);
    let mut world = World::with_clocks(
        configs,
        clocks(n, s.skew_ms, s.seed),
        NetConfig {
            loss: s.loss,
            latency: s.latency,
        },
        s.seed,
    );
    world.set_threads(s.threads);
    world.set_check_round_trip(s.check_round_trip);
    // With security, every agent gets its certificate before it holds any
    // AFC, so that the AFCs it restores are checked.
    let authority = s.secure.then(|| SimAuthority::new(s.seed));
    if let Some(auth) = &authority {
        let indexed: Vec<(usize, &ZonePath)> = leaves.iter().enumerate().collect();
        let keys = par_map(&indexed, world.threads(), |(i, leaf)| auth.agent(*i, leaf));
        for (i, sec) in keys.into_iter().enumerate() {
            world.set_security(i, Some(sec));
        }
    }
    let sign = |a: AfcCert| match &authority {
        Some(auth) => auth.sign(a),
        None => a,
    };
    let mut loads: Vec<f64> = (0..n).map(|_| rng.random_range(0.0..4.0)).collect();
    for (i, load) in loads.iter().enumerate() {
        world.set_sensors(i, sensors(*load));
    }
    // AFCs held from the start, issued at the epoch as if installed before.
    let root = ZonePath::root();
    let mut held = vec![Arc::new(sign(AfcCert::new(
        root.clone(),
        "stats",
        STATS_AFC,
        EPOCH,
    )))];
    for k in 0..s.afcs {
        let (name, sql) = typical_afc(k);
        held.push(Arc::new(sign(AfcCert::new(
            root.clone(),
            &name,
            &sql,
            EPOCH,
        ))));
    }
    world.with_each_agent(|_, a, _| a.restore(held.iter().cloned(), Attrs::new()));
    if !s.cold {
        world.warm_start();
    }

    // Who changes, who installs, who crashes and when.
    let change_at = rng.random_range(0..n);
    let afc_at = rng.random_range(0..n);
    let mut order: Vec<usize> = (0..n).filter(|i| *i != change_at && *i != afc_at).collect();
    order.shuffle(&mut rng);
    let ncrash = ((s.crash * n as f64).round() as usize).min(order.len());
    let crash_round = (!s.crash_spread).then(|| s.crash_round.unwrap_or(s.change_round));
    let mut crashes: Vec<(u64, usize)> = order[..ncrash]
        .iter()
        .map(|i| {
            let r = crash_round.unwrap_or_else(|| rng.random_range(1..s.rounds.max(2)));
            (r, *i)
        })
        .collect();
    crashes.sort();
    let mut churn_rng = SmallRng::seed_from_u64(s.seed ^ 0xc4_0112);
    let nchurn = ((s.churn * n as f64).round() as usize).min(n);

    // The AFC under test, and the oracle that knows its correct value.
    let new_afc = AfcCert::new(root.clone(), NEW_AFC_NAME, s.new_afc_sql(), 0);
    let outputs: Vec<String> = match compile(&new_afc) {
        (_, Some(p)) => p.outputs().iter().map(|o| o.to_string()).collect(),
        _ => Vec::new(),
    };
    let mut installed: Option<Arc<AfcCert>> = None;
    let mut oracle: Option<Oracle> = None;
    let mut correct = Attrs::new();

    let mut seen = vec![Track::default(); n];
    let mut afc_seen = vec![Track::default(); n];
    let mut baseline: Vec<Option<(WireStats, u64, u64)>> = vec![None; n];
    let window_start = s.change_round.min(s.rounds);
    let mut ci = 0;
    for r in 1..=s.rounds {
        while ci < crashes.len() && crashes[ci].0 == r {
            world.crash(crashes[ci].1);
            ci += 1;
        }
        if nchurn > 0 {
            for i in index::sample(&mut churn_rng, n, nchurn) {
                loads[i] = churn_rng.random_range(0.0..4.0);
                world.set_sensors(i, sensors(loads[i]));
            }
        }
        if r == window_start {
            for (i, b) in baseline.iter_mut().enumerate() {
                *b = world
                    .stats_of(i)
                    .map(|st| (world.wire_stats(i), st.syns_sent, st.evaluations));
            }
        }
        if r == s.change_round {
            world.with_agent(change_at, |a, now| {
                let _ = a.set_attr(now, "probe", Value::Int(1));
            });
        }
        if r == s.afc_round {
            let issued = world.local_now(afc_at);
            let cert = Arc::new(sign(AfcCert {
                issued,
                ..new_afc.clone()
            }));
            world.with_agent(afc_at, |a, now| {
                let _ = a.install_afc(now, (*cert).clone());
            });
            oracle = Some(Oracle::new(
                s.reps,
                held.iter().cloned().chain([cert.clone()]),
            ));
            installed = Some(cert);
        }
        world.run_until(r * ROUND);
        if let Some(o) = &oracle {
            correct = o.root_row(&world);
        }
        for i in 0..n {
            let Some(a) = world.agent(i) else { continue };
            let row = a.root_row();
            if r >= s.change_round {
                seen[i].observe(r, row.get("probe") == Some(&Value::Int(1)));
            }
            if let Some(cert) = &installed {
                let holds = a
                    .afcs()
                    .get(&root, NEW_AFC_NAME)
                    .is_some_and(|e| *e.cert == **cert);
                let right = holds && outputs.iter().all(|o| row.get(o) == correct.get(o));
                afc_seen[i].observe(r, right);
            }
        }
        progress(r, s.rounds);
    }

    let live: Vec<usize> = (0..n).filter(|i| world.alive(*i)).collect();
    let change = Outcome::of(&live, &seen, s.change_round);
    let afc = Outcome::of(&live, &afc_seen, s.afc_round);

    let window = (s.rounds + 1).saturating_sub(window_start).max(1);
    let t = Traffic::of(&world, &live, &baseline, window);
    let afc_value = zone_sql::json::attrs_to_json(
        &outputs
            .iter()
            .filter_map(|o| correct.get(o).map(|v| (o.as_str(), v.clone())))
            .collect(),
    );
    let faults: Vec<String> = live
        .iter()
        .filter_map(|&i| world.agent(i))
        .filter_map(|a| {
            a.afc_faults()
                .find(|f| &*f.name == NEW_AFC_NAME)
                .map(|f| f.reason.clone())
        })
        .collect();
    let some_live = !live.is_empty();
    let net = &world.net_stats;
    let wall_s = started.elapsed().as_secs_f64();
    Report {
        agents: n,
        levels,
        branching: s.branching,
        reps: s.reps,
        loss: s.loss,
        crash: s.crash,
        crash_round,
        churn: s.churn,
        afcs: s.afcs,
        secure: s.secure,
        skew_ms: s.skew_ms,
        push: s.push,
        seed: s.seed,
        rounds: s.rounds,
        change_round: s.change_round,
        afc_round: s.afc_round,
        afc_sql: s.new_afc_sql().to_string(),
        converged: change.reached && afc.reached && some_live,
        stable: change.missing == 0 && afc.missing == 0 && some_live,
        rounds_to_converge: change.rounds,
        afc_rounds_to_converge: afc.rounds,
        unconverged: change.missing,
        afc_unconverged: afc.missing,
        flaps: change.flaps,
        afc_flaps: afc.flaps,
        afc_value,
        afc_faulty: faults.len(),
        afc_fault_reason: faults.into_iter().next(),
        msgs_per_agent_round: t.msgs,
        bytes_per_agent_round: t.bytes,
        push_bytes_per_agent_round: t.push_bytes,
        exchanges_per_agent_round: t.exchanges,
        evaluations_per_agent_round: t.evaluations,
        max_zones_represented: t.max_zones_represented,
        live_agents: live.len(),
        crashed: n - live.len(),
        messages_sent: net.sent,
        messages_lost: net.lost,
        messages_undecodable: net.undecodable,
        round_trips: net.round_trips,
        round_trip_mismatches: net.round_trip_mismatches,
        rejected: t.rejected,
        peak_rss_mb: peak_rss_mb(),
        wall_s,
        threads: world.threads(),
        agent_rounds_per_sec: (n as f64 * s.rounds as f64) / wall_s.max(1e-9),
    }
}

fn quantiles(sorted: &[u64]) -> Option<Quantiles> {
    if sorted.is_empty() {
        return None;
    }
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    Some(Quantiles {
        p50: at(0.5),
        p99: at(0.99),
        max: *sorted.last().expect("not empty"),
    })
}

/// Peak resident memory of this process in MiB (Linux), 0 elsewhere.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
