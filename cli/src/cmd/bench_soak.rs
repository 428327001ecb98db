//! `armillary bench soak`: CHM's failure detector under message loss and a
//! paused agent, over real QUIC on loopback, counting false verdicts.
//!
//! Every agent hosts components whose HTTP checks always pass, a fifth of
//! the agents change their `load` every second, the root carries the usual
//! AFCs, and every agent's transport drops a share of its outgoing messages
//! (`--loss`). Halfway through, one agent's task stops for `--pause` as a
//! process under SIGSTOP would. Every second each agent's root row is read,
//! and every agent's status changes are followed:
//! - a component on a healthy agent turning critical anywhere, or any root
//!   row counting a critical component outside the pause and its recovery,
//!   is a false verdict;
//! - the paused agent's components should turn critical while it is
//!   paused, and every root row should count none again soon after.

use super::bench::{Churn, ClusterArgs, install_afcs, until_all};
use super::bench_chm::{Endpoints, serve_endpoints};
use crate::output::{CliError, CliResult, print_json};
use crate::runtime;
use armillary_agent::ZonePath;
use armillary_agent::chm::{self, proto};
use armillary_agent::node::cluster::Cluster;
use clap::Args;
use proto::{Check, CheckSpec, ComponentId, Registration, Status};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zone_sql::Value;

#[derive(Args)]
pub struct SoakArgs {
    /// Agents.
    #[arg(long, default_value_t = 16)]
    agents: usize,
    /// How long the soak runs.
    #[arg(long, default_value = "10m")]
    duration: humantime::Duration,
    /// Share of each agent's outgoing messages dropped.
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// How long the one agent is paused, halfway through.
    #[arg(long, default_value = "5s")]
    pause: humantime::Duration,
    /// Components per agent.
    #[arg(long, default_value_t = 2)]
    components: usize,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Figures {
    agents: usize,
    secure: bool,
    duration_s: f64,
    loss: f64,
    pause_s: f64,
    /// Components on healthy agents seen turning critical by some agent.
    false_critical_changes: u64,
    /// Root-row readings (agent × second) counting a critical component
    /// outside the pause and its recovery.
    false_critical_samples: u64,
    /// Root-row readings in all.
    samples: u64,
    /// Whether the paused agent's components turned critical elsewhere
    /// while it was paused.
    paused_seen_critical: bool,
    /// From the end of the pause until every root row counts none critical.
    recovered_after_s: Option<f64>,
    /// The failure detectors' work over the run, summed over the agents.
    probes: u64,
    suspicions: u64,
    refutations: u64,
    deaths: u64,
}

fn component(agent: usize, k: usize) -> String {
    format!("soak-{agent}-{k}")
}

pub fn run(a: SoakArgs) -> CliResult {
    if !(4..=256).contains(&a.agents) {
        return Err(CliError::usage("--agents must lie in 4..=256"));
    }
    if !(0.0..0.5).contains(&a.loss) {
        return Err(CliError::usage("--loss must lie in [0, 0.5)"));
    }
    if a.duration.as_secs() < 10 || *a.pause * 2 > *a.duration {
        return Err(CliError::usage(
            "--duration must be at least 10s and twice --pause",
        ));
    }
    if !(1..=64).contains(&a.components) {
        return Err(CliError::usage("--components must lie in 1..=64"));
    }
    runtime::init_logging_at(!a.cluster.secure, "warn");
    let f = runtime::tokio()?.block_on(soak(&a))?;
    if a.json {
        return print_json(&f);
    }
    println!(
        "{} agents for {:.0} s, {:.0}% loss, one paused {:.1} s{}:",
        f.agents,
        f.duration_s,
        f.loss * 100.0,
        f.pause_s,
        if f.secure { ", secure" } else { "" }
    );
    println!(
        "  false critical verdicts: {} status changes, {} of {} root-row readings",
        f.false_critical_changes, f.false_critical_samples, f.samples
    );
    println!(
        "  paused agent's components critical while paused: {}; all root rows clear {} after the pause",
        if f.paused_seen_critical { "yes" } else { "no" },
        f.recovered_after_s
            .map_or("never".to_string(), |s| format!("{s:.1} s"))
    );
    println!(
        "  detectors: {} probes, {} suspicions, {} refutations, {} deaths",
        f.probes, f.suspicions, f.refutations, f.deaths
    );
    Ok(())
}

/// When the pause ran, in microseconds since the epoch, once known.
#[derive(Default)]
struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

async fn soak(a: &SoakArgs) -> Result<Figures, CliError> {
    let n = a.agents;
    // Endpoints that always answer 200: nobody fails them.
    let (base, server) = serve_endpoints(Endpoints::default()).await?;
    let (spec, feeds) = a.cluster.spec(n);
    let c = Cluster::start(spec)
        .await
        .map_err(|e| CliError::failed(format!("cannot start {n} agents: {e}")))?;
    install_afcs(&c).await?;
    let churn = Churn::start(feeds, 0.2 * n as f64);
    for i in 0..n {
        for k in 0..a.components {
            let id = component(i, k);
            let mut spec = CheckSpec::new(Check::Http {
                url: format!("{base}/c/{id}"),
            });
            spec.interval = 1_000_000;
            spec.timeout = 1_000_000;
            let r = Registration::new(ComponentId::parse(&id).expect("a valid id"), spec);
            chm::register(&c.handle(i), r)
                .await
                .map_err(|e| CliError::failed(format!("cannot register {id}: {e}")))?;
        }
    }
    // Settled: every root row counts every component passing.
    let all = (n * a.components) as i64;
    let settled = until_all(&c, *a.cluster.round * 120, |r| {
        r.get("chm_passing") == Some(&Value::Int(all))
    })
    .await;
    if !settled {
        return Err(CliError::failed(
            "the agents never counted every component passing",
        ));
    }
    let paused = n / 2 + 1;
    let paused_zone = c.leaves[paused].clone();
    let stats0 = detector_stats(&c).await;
    for (_, node) in c.live() {
        node.transport().set_loss(a.loss);
    }

    // Status changes at every agent.
    let window = Arc::new(Window::default());
    let grace = Duration::from_secs(15).as_micros() as u64;
    let false_changes = Arc::new(AtomicU64::new(0));
    let mut followers = Vec::new();
    for (_, node) in c.live() {
        let (mut rx, _) = chm::changes(&node.handle())
            .await
            .map_err(|e| CliError::failed(e.to_string()))?;
        let (window, false_changes, paused_zone) =
            (window.clone(), false_changes.clone(), paused_zone.clone());
        followers.push(tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ch) if ch.status == Status::Critical => {
                        let (s, e) = (
                            window.start.load(Ordering::Relaxed),
                            window.end.load(Ordering::Relaxed),
                        );
                        let excused =
                            ch.zone == paused_zone && s > 0 && ch.time >= s && (e == 0 || ch.time <= e + grace);
                        if !excused {
                            tracing::warn!(id = %ch.id, zone = %ch.zone, reason = %ch.reason, "false critical verdict");
                            false_changes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        }));
    }

    let start = Instant::now();
    let pause_at = start + (*a.duration - *a.pause) / 2;
    let mut pausing = false;
    let (mut samples, mut false_samples) = (0u64, 0u64);
    let mut paused_seen_critical = false;
    let mut recovered_after = None;
    while start.elapsed() < *a.duration {
        if !pausing && Instant::now() >= pause_at {
            pausing = true;
            window
                .start
                .store(armillary_agent::node::now_micros(), Ordering::Relaxed);
            let _ = c.handle(paused).pause(*a.pause).await;
            let wake = armillary_agent::node::now_micros() + a.pause.as_micros() as u64;
            let h = c.handle(paused);
            let w = window.clone();
            tokio::spawn(async move {
                // The first job after the pause returns once it is over.
                let _ = h.status().await;
                w.end.store(
                    wake.max(armillary_agent::node::now_micros()),
                    Ordering::Relaxed,
                );
            });
        }
        let now = armillary_agent::node::now_micros();
        let (s, e) = (
            window.start.load(Ordering::Relaxed),
            window.end.load(Ordering::Relaxed),
        );
        let in_pause = s > 0 && now >= s && (e == 0 || now <= e);
        let mut any_critical = false;
        for (i, node) in c.live() {
            if i == paused && in_pause {
                continue;
            }
            let root = node
                .handle()
                .zone_row(ZonePath::root())
                .await
                .unwrap_or_default();
            let crit = matches!(root.get("chm_critical"), Some(Value::Int(k)) if *k > 0);
            samples += 1;
            any_critical |= crit;
            if crit && in_pause {
                paused_seen_critical = true;
            }
            if crit && !in_pause && (s == 0 || (e > 0 && now > e + grace)) {
                false_samples += 1;
            }
        }
        if e > 0 && now > e && !any_critical && recovered_after.is_none() {
            recovered_after = Some((now - e) as f64 / 1e6);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stats1 = detector_stats(&c).await;
    for f in followers {
        f.abort();
    }
    churn.stop();
    c.shutdown().await;
    server.abort();
    let d = |k: usize| stats1[k].saturating_sub(stats0[k]);
    Ok(Figures {
        agents: n,
        secure: a.cluster.secure,
        duration_s: a.duration.as_secs_f64(),
        loss: a.loss,
        pause_s: a.pause.as_secs_f64(),
        false_critical_changes: false_changes.load(Ordering::Relaxed),
        false_critical_samples: false_samples,
        samples,
        paused_seen_critical,
        recovered_after_s: recovered_after,
        probes: d(0),
        suspicions: d(1),
        refutations: d(2),
        deaths: d(3),
    })
}

/// Probes, suspicions, refutations and deaths, summed over the live agents.
async fn detector_stats(c: &Cluster) -> [u64; 4] {
    let mut out = [0; 4];
    for (_, node) in c.live() {
        if let Ok(s) = node.handle().status().await {
            let g = |k: &str| s.counters.get(k).copied().unwrap_or(0);
            for (o, k) in out.iter_mut().zip([
                "chm_detector_probes{kind=\"direct\"}",
                "chm_detector_suspicions",
                "chm_detector_refutations",
                "chm_detector_deaths",
            ]) {
                *o += g(k);
            }
        }
    }
    out
}
