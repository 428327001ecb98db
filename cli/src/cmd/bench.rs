//! `armillary bench spread`: how fast a change reaches every agent's root
//! row over real QUIC on loopback, and what the agents spend on it.
//!
//! Each size runs twice in the same process: with the eager push (how
//! Armillary runs) and with periodic gossip alone (the baseline, Astrolabe's
//! protocol), so the figures compare on the same machine at the same time.
//! With `--churn F` each of those runs once idle and once with a fraction F
//! of the agents' `load` sensor changing every second, so rows change all
//! the time while the changes spread.

use crate::output::{CliError, CliResult, print_json};
use crate::runtime;
use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use armillary_agent::node::sensors::{Sensors, process_cpu_ms};
use armillary_agent::node::{Change, NodeHandle};
use armillary_agent::security::sign_afc;
use armillary_agent::{AfcCert, ZonePath};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use zone_sql::{Attrs, Value};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Seconds from setting an attribute until every agent's root row shows it.
    Spread(SpreadArgs),
    /// CHM's verdict times, lookups and bytes at 10 components per agent.
    Chm(super::bench_chm::ChmBenchArgs),
    /// False CHM verdicts under message loss with one agent paused.
    Soak(super::bench_soak::SoakArgs),
    /// CRM: ordered multicast throughput and latency, crash to next view,
    /// and the replicated key-value endpoint with a member killed.
    Crm(super::bench_crm::CrmBenchArgs),
    /// EVN: urgent event latency to every agent with and without loss (the
    /// baseline: anti-entropy alone), and condition change to notification.
    Evn(super::bench_evn::EvnBenchArgs),
}

/// The benchmarked cluster's shape, shared by every `bench` command.
#[derive(Args)]
pub(super) struct ClusterArgs {
    /// Gossip round length.
    #[arg(long, default_value = "1s")]
    pub round: humantime::Duration,
    /// Most children per zone.
    #[arg(long, default_value_t = 8)]
    pub branching: usize,
    /// Run with certificates: authenticated connections, signed rows.
    #[arg(long)]
    pub secure: bool,
}

impl ClusterArgs {
    /// A cluster of `n` agents of this shape, each with a sensor feed of its
    /// own (read once, so rows have their usual size): the feeds come back
    /// for churn.
    pub fn spec(&self, n: usize) -> (ClusterSpec, Vec<watch::Sender<Attrs>>) {
        let mut spec = ClusterSpec::new(n, self.branching, *self.round);
        spec.secure = self.secure;
        let reading = Sensors::new().read();
        let (feeds, readers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| watch::channel(reading.clone())).unzip();
        spec.own_sensors = readers;
        (spec, feeds)
    }
}

/// `n` agents of `args`' shape at the benchmarks' operating point: a fifth
/// of the agents' `load` sensor changing every second, the root's AFCs
/// installed (and the gossip core alone with `gossip_only`).
pub(super) async fn operating_point(
    args: &ClusterArgs,
    n: usize,
    gossip_only: bool,
) -> Result<(Cluster, Churn), CliError> {
    operating_point_with(args, n, |s| s.services.gossip_only = gossip_only).await
}

/// [`operating_point`] with the spec changed by `tune` first.
pub(super) async fn operating_point_with(
    args: &ClusterArgs,
    n: usize,
    tune: impl FnOnce(&mut ClusterSpec),
) -> Result<(Cluster, Churn), CliError> {
    let (mut spec, feeds) = args.spec(n);
    tune(&mut spec);
    let c = Cluster::start(spec)
        .await
        .map_err(|e| CliError::failed(format!("cannot start {n} agents: {e}")))?;
    install_afcs(&c).await?;
    let churn = Churn::start(feeds, 0.2 * n as f64);
    Ok((c, churn))
}

/// A bar of `len` runs on the terminal; hidden when the output is JSON.
pub(super) fn progress(json: bool, len: u64) -> ProgressBar {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("valid template"),
    );
    bar
}

/// Installs [`AFCS`] at the root, signed when the cluster is secure.
pub(super) async fn install_afcs(c: &Cluster) -> Result<(), CliError> {
    for (name, sql) in AFCS {
        let mut afc = AfcCert::new(
            ZonePath::root(),
            name,
            sql,
            armillary_agent::node::now_micros(),
        );
        if let Some(auth) = c.authority() {
            sign_afc(auth, &mut afc);
        }
        c.handle(0)
            .install_afc(afc)
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
    }
    Ok(())
}

#[derive(Args)]
pub struct SpreadArgs {
    /// Cluster sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128")]
    agents: Vec<usize>,
    /// Changes measured per size and mode.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Also run with this fraction of agents changing their `load` sensor
    /// every second (e.g. 0.2), beside the idle runs.
    #[arg(long, value_name = "F")]
    churn: Option<f64>,
    /// Skip the gossip-only baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Figures {
    agents: usize,
    mode: &'static str,
    levels: usize,
    secure: bool,
    reps: usize,
    /// Fraction of agents whose `load` changes every second (0: idle).
    churn: f64,
    /// Sensor changes made per second over the run.
    sensor_changes_per_s: f64,
    /// Seconds until an agent's root row showed the change, over every agent and change.
    p50_s: f64,
    max_s: f64,
    /// Mean over changes of the slowest agent.
    mean_max_s: f64,
    /// Gossip bytes sent per agent per second while no `bench` change
    /// spreads (with churn: sensors still changing).
    quiet_bytes_per_agent_s: f64,
    /// The same while the changes spread.
    bytes_per_agent_s: f64,
    /// CPU per agent, percent of one core, while the changes spread.
    cpu_pct_per_agent: f64,
    converged: bool,
}

pub fn run(c: BenchCommand) -> CliResult {
    match c {
        BenchCommand::Spread(a) => spread(a),
        BenchCommand::Chm(a) => super::bench_chm::run(a),
        BenchCommand::Soak(a) => super::bench_soak::run(a),
        BenchCommand::Crm(a) => super::bench_crm::run(a),
        BenchCommand::Evn(a) => super::bench_evn::run(a),
    }
}

fn spread(a: SpreadArgs) -> CliResult {
    if a.agents.iter().any(|n| !(2..=1024).contains(n)) || a.reps == 0 {
        return Err(CliError::usage(
            "--agents sizes must lie in 2..=1024 and --reps be at least 1",
        ));
    }
    let churns = match a.churn {
        None => vec![0.0],
        Some(f) if f > 0.0 && f <= 1.0 => vec![0.0, f],
        Some(f) => {
            return Err(CliError::usage(format!(
                "--churn {f}: give the fraction of agents changing per second, above 0 and at most 1"
            )));
        }
    };
    runtime::init_logging(!a.cluster.secure);
    let rt = runtime::tokio()?;
    let modes: &[(&str, bool)] = if a.no_baseline {
        &[("push", true)]
    } else {
        &[("push", true), ("gossip", false)]
    };
    let bar = progress(a.json, (a.agents.len() * modes.len() * churns.len()) as u64);
    let mut all = Vec::new();
    for &n in &a.agents {
        for &(mode, push) in modes {
            for &churn in &churns {
                bar.set_message(format!("{n} agents, {mode}, churn {churn}"));
                let f = rt.block_on(measure(&a, n, mode, push, churn))?;
                all.push(f);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    if a.json {
        return print_json(&all);
    }
    println!(
        "{:>6} {:>7} {:>6} {:>9} {:>6} {:>8} {:>8} {:>10} {:>13} {:>13} {:>9}",
        "agents",
        "mode",
        "churn",
        "changes/s",
        "levels",
        "p50 s",
        "max s",
        "mean max",
        "quiet B/s/ag",
        "spread B/s/ag",
        "cpu %/ag"
    );
    for f in &all {
        println!(
            "{:>6} {:>7} {:>6} {:>9.1} {:>6} {:>8.3} {:>8.3} {:>10.3} {:>13.0} {:>13.0} {:>9.2}{}",
            f.agents,
            f.mode,
            f.churn,
            f.sensor_changes_per_s,
            f.levels,
            f.p50_s,
            f.max_s,
            f.mean_max_s,
            f.quiet_bytes_per_agent_s,
            f.bytes_per_agent_s,
            f.cpu_pct_per_agent,
            if f.converged {
                ""
            } else {
                "  (did not converge)"
            }
        );
    }
    for n in &a.agents {
        for &churn in &churns {
            let get = |m: &str| {
                all.iter()
                    .find(|f| f.agents == *n && f.mode == m && f.churn == churn)
            };
            if let (Some(p), Some(g)) = (get("push"), get("gossip"))
                && p.max_s > 0.0
            {
                println!(
                    "{n} agents, churn {churn}: push reaches every root row {:.1}x sooner than gossip alone (max), for {:.2}x the bytes",
                    g.max_s / p.max_s,
                    p.bytes_per_agent_s / g.bytes_per_agent_s.max(1.0)
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn total_bytes(c: &Cluster) -> u64 {
    let mut sum = 0;
    for (_, n) in c.live() {
        if let Ok(s) = n.handle().status().await {
            sum += s.counters.get("net_bytes_sent").copied().unwrap_or(0);
        }
    }
    sum
}

/// Polls until every agent's root row satisfies `ok`, or `limit` passes.
pub(super) async fn until_all(
    c: &Cluster,
    limit: Duration,
    ok: impl Fn(&zone_sql::Attrs) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    loop {
        let mut all = true;
        for (_, n) in c.live() {
            let root = n
                .handle()
                .zone_row(ZonePath::root())
                .await
                .unwrap_or_default();
            if !ok(&root) {
                all = false;
                break;
            }
        }
        if all {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds until `h`'s root row shows `bench = want`, or None on timeout.
async fn seen(h: NodeHandle, want: i64, start: Instant, limit: Duration) -> Option<f64> {
    let mut rx = h.subscribe();
    let shows = |attrs: &zone_sql::Attrs| attrs.get("bench") == Some(&Value::Int(want));
    if let Ok(root) = h.zone_row(ZonePath::root()).await
        && shows(&root)
    {
        return Some(start.elapsed().as_secs_f64());
    }
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(Change::Row { zone, attrs, .. }) if zone.depth() == 0 && shows(&attrs) => {
                    return Some(start.elapsed().as_secs_f64());
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if let Ok(root) = h.zone_row(ZonePath::root()).await
                        && shows(&root)
                    {
                        return Some(start.elapsed().as_secs_f64());
                    }
                }
                Err(_) => return None,
            }
        }
    };
    tokio::time::timeout(limit, wait).await.ok().flatten()
}

/// The AFCs every run installs at the root: the measured one, and the
/// fleet's load, which moves whenever a sensor changes.
pub(super) const AFCS: [(&str, &str); 2] = [
    ("bench", "SELECT MAX(bench) AS bench"),
    ("load", "SELECT AVG(load, nmembers) AS load"),
];

/// How often the churn driver wakes to change sensors.
const CHURN_TICK: Duration = Duration::from_millis(50);

/// Changes the `load` reading of random agents, `per_s` of them a second
/// spread evenly, until dropped; counts the changes made.
pub(super) struct Churn {
    task: tokio::task::JoinHandle<()>,
    changes: Arc<AtomicU64>,
}

impl Churn {
    pub(super) fn start(feeds: Vec<watch::Sender<Attrs>>, per_s: f64) -> Churn {
        let changes = Arc::new(AtomicU64::new(0));
        let made = changes.clone();
        let task = tokio::spawn(async move {
            let mut rng = SmallRng::from_os_rng();
            let mut tick = tokio::time::interval(CHURN_TICK);
            let mut owed = 0.0;
            loop {
                tick.tick().await;
                owed += per_s * CHURN_TICK.as_secs_f64();
                while owed >= 1.0 {
                    owed -= 1.0;
                    let feed = &feeds[rng.random_range(0..feeds.len())];
                    let old = feed.borrow().get("load").cloned();
                    let load = loop {
                        let v = Value::Float(f64::from(rng.random_range(0u32..400)) / 100.0);
                        if Some(&v) != old.as_ref() {
                            break v;
                        }
                    };
                    feed.send_modify(|a| a.set("load", load));
                    made.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Churn { task, changes }
    }

    /// Stops it; the changes made.
    pub(super) fn stop(self) -> u64 {
        self.task.abort();
        self.changes.load(Ordering::Relaxed)
    }
}

async fn measure(
    a: &SpreadArgs,
    n: usize,
    mode: &'static str,
    push: bool,
    churn: f64,
) -> Result<Figures, CliError> {
    let round = *a.cluster.round;
    let (mut spec, feeds) = a.cluster.spec(n);
    spec.push = push;
    let c = Cluster::start(spec)
        .await
        .map_err(|e| CliError::failed(format!("cannot start {n} agents: {e}")))?;
    let levels = armillary_agent::sim::tree::levels(&c.leaves);
    let patience = round * 60;
    let mut converged = until_all(&c, patience, |r| {
        r.get("nmembers") == Some(&Value::Int(n as i64))
    })
    .await;
    install_afcs(&c).await?;
    let churning = Churn::start(feeds, churn * n as f64);
    let churn_start = Instant::now();
    c.handle(0)
        .set_attr("bench".into(), Value::Int(0))
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    converged &= until_all(&c, patience, |r| r.get("bench") == Some(&Value::Int(0))).await;
    // Settle, then the quiet cost.
    tokio::time::sleep(round * 3).await;
    let quiet = round * 5;
    let b0 = total_bytes(&c).await;
    tokio::time::sleep(quiet).await;
    let b1 = total_bytes(&c).await;
    let quiet_rate = (b1 - b0) as f64 / n as f64 / quiet.as_secs_f64();

    let (t0, cpu0, bytes0) = (Instant::now(), process_cpu_ms(), total_bytes(&c).await);
    let mut samples = Vec::new();
    let mut maxes = Vec::new();
    for r in 1..=a.reps {
        let who = (r * 7919) % n;
        let start = Instant::now();
        let waits: Vec<_> = c
            .live()
            .map(|(_, node)| tokio::spawn(seen(node.handle(), r as i64, start, patience)))
            .collect();
        c.handle(who)
            .set_attr("bench".into(), Value::Int(r as i64))
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
        let mut worst: f64 = 0.0;
        for w in waits {
            match w.await.ok().flatten() {
                Some(s) => {
                    samples.push(s);
                    worst = worst.max(s);
                }
                None => converged = false,
            }
        }
        maxes.push(worst);
        tokio::time::sleep(round).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_ms().saturating_sub(cpu0) as f64 / 1000.0;
    let bytes = total_bytes(&c).await.saturating_sub(bytes0) as f64;
    let sensor_changes_per_s = churning.stop() as f64 / churn_start.elapsed().as_secs_f64();
    c.shutdown().await;
    samples.sort_by(f64::total_cmp);
    let p50 = samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(Figures {
        agents: n,
        mode,
        levels,
        secure: a.cluster.secure,
        reps: a.reps,
        churn,
        sensor_changes_per_s,
        p50_s: p50,
        max_s: samples.last().copied().unwrap_or(f64::NAN),
        mean_max_s: maxes.iter().sum::<f64>() / maxes.len().max(1) as f64,
        quiet_bytes_per_agent_s: quiet_rate,
        bytes_per_agent_s: bytes / n as f64 / secs,
        cpu_pct_per_agent: cpu / secs / n as f64 * 100.0,
        converged,
    })
}
