//! `armillary sim`: the deterministic simulator.

use crate::output::{CliError, CliResult, print_json};
use armillary_agent::sim::{self, Report, Scenario};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// Most typical AFCs: with the base AFC and the one installed during the
/// run, within the AFCs one row may carry.
const MAX_AFCS: usize = armillary_agent::limits::MAX_AFCS_PER_SCOPE - 2;
/// Largest clock offset: a minute (the protocol tolerates 10 s between two
/// clocks; beyond, the run shows what breaks).
const MAX_SKEW_MS: u64 = 60_000;

#[derive(Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Args)]
pub struct SimArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Most children per zone.
    #[arg(long, default_value_t = 16)]
    branching: usize,
    /// Representatives per zone.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Probability that each message is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Fraction of agents that crash (at --crash-round, or spread with --crash-spread).
    #[arg(long, default_value_t = 0.0)]
    crash: f64,
    /// Round at whose start the crashes happen (default: the change round,
    /// so that the fraction is dead when the change happens).
    #[arg(long, conflicts_with = "crash_spread")]
    crash_round: Option<u64>,
    /// Crash each agent at a random round of the run instead.
    #[arg(long)]
    crash_spread: bool,
    /// Fraction of agents whose sensor attribute `load` changes each round.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Typical AFCs installed at the root from the start (weighted AVG, MAX,
    /// COUNT and SUM with WHERE, FIRST with ORDER BY, cycled).
    #[arg(long, default_value_t = 0)]
    afcs: usize,
    /// The AFC installed at --afc-round (default: MIN and MAX of nmembers);
    /// its convergence is the round each root row shows its correct value.
    #[arg(long, value_name = "SQL")]
    afc: Option<String>,
    /// Rows signed and verified, certificates carried (a throwaway authority
    /// certifies every agent and signs the AFCs).
    #[arg(long)]
    secure: bool,
    /// Each agent's clock is off by up to MS milliseconds either way, and
    /// drifts by up to 100 ppm.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    skew: u64,
    /// Rounds to simulate (1 simulated second each): enough, by default,
    /// for crashed agents to time out everywhere (42 rounds at 100,000
    /// agents) and the membership to settle.
    #[arg(long, default_value_t = 60)]
    rounds: u64,
    /// Seed of every random choice: the same seed gives the same result.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Eager push of changed rows (off: periodic gossip alone, as Astrolabe measured it).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    push: OnOff,
    /// Round at whose start one attribute changes at a random leaf.
    #[arg(long, default_value_t = 5)]
    change_round: u64,
    /// Round at whose start a new AFC is installed at the root.
    #[arg(long, default_value_t = 7)]
    afc_round: u64,
    /// One-way network latency range in milliseconds, "MIN-MAX".
    #[arg(long, default_value = "5-50")]
    latency_ms: String,
    /// Start from empty tables (agents join through seeds) instead of a settled tree.
    #[arg(long)]
    cold: bool,
    /// Threads that run the agents (0: one per core). The result does not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: SimArgs) -> CliResult {
    if a.agents < 2 {
        return Err(CliError::usage("--agents must be at least 2"));
    }
    if a.branching < 2 {
        return Err(CliError::usage("--branching must be at least 2"));
    }
    if a.reps < 1 || a.reps > zone_sql::MAX_FIRST_N {
        return Err(CliError::usage(format!(
            "--reps must be between 1 and {}",
            zone_sql::MAX_FIRST_N
        )));
    }
    for (name, v) in [("--loss", a.loss), ("--crash", a.crash)] {
        if !(0.0..1.0).contains(&v) {
            return Err(CliError::usage(format!("{name} must be in [0, 1)")));
        }
    }
    if !(0.0..=1.0).contains(&a.churn) {
        return Err(CliError::usage("--churn must be in [0, 1]"));
    }
    if a.rounds == 0 {
        return Err(CliError::usage("--rounds must be at least 1"));
    }
    if a.crash_round == Some(0) {
        return Err(CliError::usage("--crash-round must be at least 1"));
    }
    if a.afcs > MAX_AFCS {
        return Err(CliError::usage(format!(
            "--afcs must be at most {MAX_AFCS}"
        )));
    }
    if a.skew > MAX_SKEW_MS {
        return Err(CliError::usage(format!(
            "--skew must be at most {MAX_SKEW_MS} ms"
        )));
    }
    let latency = parse_latency(&a.latency_ms)?;
    let scenario = Scenario {
        agents: a.agents,
        branching: a.branching,
        reps: a.reps,
        loss: a.loss,
        crash: a.crash,
        rounds: a.rounds,
        seed: a.seed,
        push: matches!(a.push, OnOff::On),
        latency,
        change_round: a.change_round,
        afc_round: a.afc_round,
        afc_sql: a.afc,
        crash_round: a.crash_round,
        crash_spread: a.crash_spread,
        churn: a.churn,
        afcs: a.afcs,
        secure: a.secure,
        skew_ms: a.skew,
        cold: a.cold,
        threads: a.threads,
        check_round_trip: false,
    };
    scenario.check().map_err(CliError::usage)?;
    let bar = ProgressBar::new(a.rounds);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} simulating {pos}/{len} rounds [{bar:30}] {elapsed}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = sim::run(&scenario, |r, _| bar.set_position(r));
    bar.finish_and_clear();
    if a.json {
        print_json(&report)
    } else {
        print_human(&report);
        Ok(())
    }
}

fn parse_latency(s: &str) -> Result<(u64, u64), CliError> {
    let bad = || {
        CliError::usage(format!(
            "--latency-ms wants MIN-MAX in milliseconds, got {s:?}"
        ))
    };
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi || hi > 60_000 {
        return Err(bad());
    }
    Ok((lo * 1000, hi * 1000))
}

fn print_human(r: &Report) {
    let q = |q: &Option<sim::scenario::Quantiles>| match q {
        Some(q) => format!("p50 {}  p99 {}  max {}", q.p50, q.p99, q.max),
        None => "never".to_string(),
    };
    let crashes = match r.crash_round {
        Some(round) => format!("at round {round}"),
        None => "spread".to_string(),
    };
    println!(
        "{} agents, {} levels, branching {}, {} reps, loss {}, crash {} ({crashes}), churn {}, {} AFCs, push {}, {}, skew {} ms, seed {}",
        r.agents,
        r.levels,
        r.branching,
        r.reps,
        r.loss,
        r.crash,
        r.churn,
        r.afcs,
        if r.push { "on" } else { "off" },
        if r.secure { "secure" } else { "insecure" },
        r.skew_ms,
        r.seed
    );
    println!(
        "  change reached root rows   {} rounds ({} unconverged, {} flaps)",
        q(&r.rounds_to_converge),
        r.unconverged,
        r.flaps
    );
    println!(
        "  new AFC correct            {} rounds ({} unconverged, {} flaps)",
        q(&r.afc_rounds_to_converge),
        r.afc_unconverged,
        r.afc_flaps
    );
    println!(
        "  AFC correct value          {}",
        serde_json::Value::Object(r.afc_value.clone())
    );
    if r.afc_faulty > 0 {
        println!(
            "  new AFC faulty             on {} agents: {}",
            r.afc_faulty,
            r.afc_fault_reason.as_deref().unwrap_or("")
        );
    }
    println!(
        "  messages / agent / round   mean {:.2}  max {:.2}",
        r.msgs_per_agent_round.mean, r.msgs_per_agent_round.max
    );
    println!(
        "  bytes / agent / round      mean {:.0}  max {:.0}  (push: mean {:.0})",
        r.bytes_per_agent_round.mean,
        r.bytes_per_agent_round.max,
        r.push_bytes_per_agent_round.mean
    );
    println!(
        "  messages                   {} sent, {} lost, {} undecodable",
        r.messages_sent, r.messages_lost, r.messages_undecodable
    );
    if !r.rejected.is_empty() {
        let why: Vec<String> = r
            .rejected
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        println!("  refused by agents          {}", why.join(", "));
    }
    println!(
        "  live agents                {} of {}",
        r.live_agents, r.agents
    );
    println!(
        "  cost                       {:.1} s wall, {:.0} MiB peak, {:.0} agent-rounds/s, {} threads",
        r.wall_s, r.peak_rss_mb, r.agent_rounds_per_sec, r.threads
    );
    println!(
        "  converged                  {}",
        if r.converged { "yes" } else { "NO" }
    );
    println!(
        "  stable                     {}",
        if r.stable { "yes" } else { "NO" }
    );
}
