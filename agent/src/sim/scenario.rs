//! The standard experiment behind `armillary sim`: a settled hierarchy, one
//! attribute change at a random leaf, one AFC installed at the root, and how
//! many rounds each live agent needs to see them.

use super::tree;
use super::world::{NetConfig, World};
use crate::afc::AfcCert;
use crate::config::Config;
use crate::path::ZonePath;
use crate::row::Micros;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use zone_sql::{Attrs, Value};

/// The AFC every simulated agent starts with: load statistics and the probe.
pub const STATS_AFC: &str =
    "SELECT AVG(load, nmembers) AS load, MAX(load_max) AS load_max, MAX(probe) AS probe";
/// The AFC installed during the run.
pub const NEW_AFC: &str = "SELECT MIN(nmembers) AS smallest_zone, MAX(nmembers) AS largest_zone";

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
    /// Start from an empty state, agents joining through seeds, instead of a settled one.
    pub cold: bool,
    /// Threads that run the agents (0: as many as the machine offers). The
    /// result does not depend on it.
    pub threads: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            agents: 1000,
            branching: 16,
            reps: 3,
            loss: 0.0,
            crash: 0.0,
            rounds: 40,
            seed: 1,
            push: true,
            latency: (5_000, 50_000),
            change_round: 5,
            afc_round: 7,
            cold: false,
            threads: 0,
        }
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
    pub push: bool,
    pub seed: u64,
    pub rounds: u64,
    pub change_round: u64,
    pub afc_round: u64,
    pub rounds_to_converge: Option<Quantiles>,
    pub afc_rounds_to_converge: Option<Quantiles>,
    /// Live agents that never saw the change / the AFC.
    pub unconverged: usize,
    pub afc_unconverged: usize,
    pub msgs_per_agent_round: MeanMax,
    pub bytes_per_agent_round: MeanMax,
    /// The share of those bytes spent on eager push.
    pub push_bytes_per_agent_round: MeanMax,
    /// Gossip exchanges an agent starts per round, and the zones it represents.
    pub exchanges_per_agent_round: MeanMax,
    pub max_zones_represented: usize,
    pub live_agents: usize,
    pub crashed: usize,
    pub messages_lost: u64,
    pub peak_rss_mb: f64,
    pub wall_s: f64,
    /// Threads the simulator ran on.
    pub threads: usize,
    pub agent_rounds_per_sec: f64,
    pub converged: bool,
}

/// Runs the scenario; `progress(round, rounds)` is called after each round.
pub fn run(s: &Scenario, mut progress: impl FnMut(u64, u64)) -> Report {
    let started = Instant::now();
    let round: Micros = 1_000_000;
    let mut rng = SmallRng::seed_from_u64(s.seed);
    let leaves = tree::balanced(s.agents, s.branching);
    let levels = tree::levels(&leaves);
    let n = leaves.len();

    let configs: Vec<Config> = leaves
        .iter()
        .enumerate()
        .map(|(i, leaf)| {
            let mut c = Config::new(leaf.clone(), leaf.as_arc().clone());
            c.round = round;
            c.reps = s.reps;
            c.push = s.push;
            c.events = false;
            c.rng_seed = s.seed.wrapping_mul(0x100_0000_01b3) ^ i as u64;
            // A settled tree needs no seed probes; keep the figures Astrolabe's.
            if !s.cold {
                c.seed_probe = 0.0;
            }
            // An operator's seed list: an agent nearby and one anywhere.
            let near = (i / s.branching) * s.branching + rng.random_range(0..s.branching);
            let far = rng.random_range(0..n);
            c.seeds = [near.min(n - 1), far]
                .iter()
                .filter(|j| **j != i)
                .map(|j| leaves[*j].as_arc().clone())
                .collect();
            c
        })
        .collect();
    let mut world = World::new(
        configs,
        NetConfig {
            loss: s.loss,
            latency: s.latency,
        },
        s.seed,
    );
    world.set_threads(s.threads);
    let stats_afc = Arc::new(AfcCert::new(ZonePath::root(), "stats", STATS_AFC, 0));
    for i in 0..n {
        let load: f64 = rng.random_range(0.0..4.0);
        let sensors: Attrs = [
            ("load", Value::Float(load)),
            ("load_max", Value::Float(load)),
            ("probe", Value::Int(0)),
        ]
        .into_iter()
        .collect();
        world.set_sensors(i, sensors);
    }
    world.with_each_agent(|_, a, _| a.restore([stats_afc.clone()], Attrs::new()));
    if !s.cold {
        world.warm_start();
    }

    // Who changes, who installs, who crashes and when.
    let change_at = rng.random_range(0..n);
    let afc_at = rng.random_range(0..n);
    let mut order: Vec<usize> = (0..n).filter(|i| *i != change_at && *i != afc_at).collect();
    order.shuffle(&mut rng);
    let ncrash = ((s.crash * n as f64).round() as usize).min(order.len());
    let mut crashes: Vec<(u64, usize)> = order[..ncrash]
        .iter()
        .map(|i| (rng.random_range(1..s.rounds.max(2)), *i))
        .collect();
    crashes.sort();

    let mut seen = vec![None::<u64>; n];
    let mut afc_seen = vec![None::<u64>; n];
    let mut baseline: Vec<Option<(u64, u64, u64, u64)>> = vec![None; n];
    let window_start = s.change_round.min(s.rounds);
    let mut ci = 0;
    for r in 1..=s.rounds {
        while ci < crashes.len() && crashes[ci].0 == r {
            world.crash(crashes[ci].1);
            ci += 1;
        }
        if r == window_start {
            for (i, b) in baseline.iter_mut().enumerate() {
                *b = world.stats_of(i).map(counters);
            }
        }
        if r == s.change_round {
            world.with_agent(change_at, |a, now| {
                let _ = a.set_attr(now, "probe", Value::Int(1));
            });
        }
        if r == s.afc_round {
            world.with_agent(afc_at, |a, now| {
                let _ = a.install_afc(now, AfcCert::new(ZonePath::root(), "sizes", NEW_AFC, now));
            });
        }
        world.run_until(r * round);
        for i in 0..n {
            let Some(a) = world.agent(i) else { continue };
            if r >= s.change_round
                && seen[i].is_none()
                && a.root_row().get("probe") == Some(&Value::Int(1))
            {
                seen[i] = Some(r - s.change_round + 1);
            }
            if r >= s.afc_round
                && afc_seen[i].is_none()
                && a.root_row().get("smallest_zone").is_some()
            {
                afc_seen[i] = Some(r - s.afc_round + 1);
            }
        }
        progress(r, s.rounds);
    }

    let live: Vec<usize> = (0..n).filter(|i| world.alive(*i)).collect();
    let collect = |v: &[Option<u64>]| -> (Option<Quantiles>, usize) {
        let mut got: Vec<u64> = live.iter().filter_map(|i| v[*i]).collect();
        let missing = live.len() - got.len();
        got.sort_unstable();
        (quantiles(&got), missing)
    };
    let (rounds_to_converge, unconverged) = collect(&seen);
    let (afc_rounds_to_converge, afc_unconverged) = collect(&afc_seen);

    let window = (s.rounds + 1).saturating_sub(window_start).max(1) as f64;
    let mut per_agent = Vec::new();
    let mut max_rep = 0;
    for &i in &live {
        let (Some(a), Some(Some(b))) = (world.agent(i), baseline.get(i)) else {
            continue;
        };
        let now = counters(a.stats());
        per_agent.push((
            (now.0 - b.0) as f64 / window,
            (now.1 - b.1) as f64 / window,
            (now.2 - b.2) as f64 / window,
            (now.3 - b.3) as f64 / window,
        ));
        let reps = a.zones().iter().skip(1).filter(|z| a.represents(z)).count();
        max_rep = max_rep.max(reps);
    }
    let mm = |f: fn(&(f64, f64, f64, f64)) -> f64| MeanMax {
        mean: per_agent.iter().map(f).sum::<f64>() / per_agent.len().max(1) as f64,
        max: per_agent.iter().map(f).fold(0.0, f64::max),
    };
    let wall_s = started.elapsed().as_secs_f64();
    Report {
        agents: n,
        levels,
        branching: s.branching,
        reps: s.reps,
        loss: s.loss,
        crash: s.crash,
        push: s.push,
        seed: s.seed,
        rounds: s.rounds,
        change_round: s.change_round,
        afc_round: s.afc_round,
        converged: unconverged == 0 && afc_unconverged == 0 && !live.is_empty(),
        rounds_to_converge,
        afc_rounds_to_converge,
        unconverged,
        afc_unconverged,
        msgs_per_agent_round: mm(|x| x.0),
        bytes_per_agent_round: mm(|x| x.1),
        push_bytes_per_agent_round: mm(|x| x.2),
        exchanges_per_agent_round: mm(|x| x.3),
        max_zones_represented: max_rep,
        live_agents: live.len(),
        crashed: n - live.len(),
        messages_lost: world.net_stats.lost,
        peak_rss_mb: peak_rss_mb(),
        wall_s,
        threads: world.threads(),
        agent_rounds_per_sec: (n as f64 * s.rounds as f64) / wall_s.max(1e-9),
    }
}

fn counters(s: &crate::agent::Stats) -> (u64, u64, u64, u64) {
    (s.msgs_sent, s.bytes_sent, s.push_bytes_sent, s.syns_sent)
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
