//! `armillary bench chm`: CHM over real QUIC on loopback, at an operating
//! point: every agent hosts ten components with HTTP checks every second
//! against a real HTTP server, a fifth of the agents change their `load`
//! sensor every second, and the root carries the usual AFCs.
//!
//! Per size it measures
//! - a check that starts failing, until every agent's lookup says critical;
//! - an agent killed, until every other agent's lookup of one of its
//!   components says critical (reason `agent unreachable`);
//! - a lookup from the agent farthest from the component;
//! - the bytes per agent per second the agents send, against a baseline of
//!   the same cluster, sensors and AFCs with the gossip core alone (no CHM),
//!   started in the same run.

use super::bench::{ClusterArgs, operating_point, progress, total_bytes, until_all};
use crate::output::{CliError, CliResult, print_json};
use crate::runtime;
use armillary_agent::ZonePath;
use armillary_agent::chm::{self, proto};
use armillary_agent::node::NodeHandle;
use armillary_agent::node::cluster::Cluster;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use clap::Args;
use proto::{Check, CheckSpec, ComponentId, Registration, Status};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ChmBenchArgs {
    /// Cluster sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    agents: Vec<usize>,
    /// Components per agent.
    #[arg(long, default_value_t = 10)]
    components: usize,
    /// Failures measured per size and kind (check stopped, agent killed).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Seconds of steady state over which bytes are counted.
    #[arg(long, default_value = "10s")]
    window: humantime::Duration,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Figures {
    agents: usize,
    levels: usize,
    secure: bool,
    components_per_agent: usize,
    /// A check failing, until critical at every agent (seconds, over every
    /// agent and failure).
    check_p50_s: f64,
    check_p99_s: f64,
    /// An agent killed, until its components are critical at every agent.
    kill_p50_s: f64,
    kill_p99_s: f64,
    /// Lookups from the agent farthest from the component.
    lookup_p50_ms: f64,
    lookup_p99_ms: f64,
    /// Bytes sent per agent per second, steady state, with CHM.
    bytes_per_agent_s: f64,
    /// The same cluster with the gossip core alone.
    baseline_bytes_per_agent_s: f64,
    /// What CHM adds.
    chm_bytes_per_agent_s: f64,
    /// Verdicts that never came within the patience.
    missed: usize,
}

/// Health endpoints every check calls: `/c/{id}` answers 200 unless the
/// bench has failed `id`.
#[derive(Clone, Default)]
pub(super) struct Endpoints {
    failing: Arc<Mutex<BTreeSet<String>>>,
}

impl Endpoints {
    fn fail(&self, id: &str, fail: bool) {
        let mut f = self.failing.lock().expect("lock");
        if fail {
            f.insert(id.to_string());
        } else {
            f.remove(id);
        }
    }
}

async fn endpoint(State(e): State<Endpoints>, Path(id): Path<String>) -> StatusCode {
    if e.failing.lock().expect("lock").contains(&id) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

pub(super) async fn serve_endpoints(
    e: Endpoints,
) -> Result<(String, tokio::task::JoinHandle<()>), CliError> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::failed(format!("cannot serve the health endpoints: {e}")))?;
    let base = format!("http://{}", l.local_addr().expect("bound"));
    let app = axum::Router::new()
        .route("/c/{id}", axum::routing::get(endpoint))
        .with_state(e);
    let task = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok((base, task))
}

fn component(agent: usize, k: usize) -> String {
    format!("svc-{agent}-{k}")
}

pub fn run(a: ChmBenchArgs) -> CliResult {
    if a.agents.iter().any(|n| !(4..=256).contains(n)) || a.reps == 0 {
        return Err(CliError::usage(
            "--agents sizes must lie in 4..=256 and --reps be at least 1",
        ));
    }
    if !(1..=64).contains(&a.components) {
        return Err(CliError::usage("--components must lie in 1..=64"));
    }
    runtime::init_logging_at(!a.cluster.secure, "warn");
    let rt = runtime::tokio()?;
    let bar = progress(a.json, a.agents.len() as u64 * 2);
    let mut all = Vec::new();
    for &n in &a.agents {
        bar.set_message(format!("{n} agents, gossip alone (baseline)"));
        let baseline = rt.block_on(baseline(&a, n))?;
        bar.inc(1);
        bar.set_message(format!(
            "{n} agents, CHM with {} components each",
            a.components
        ));
        all.push(rt.block_on(measure(&a, n, baseline))?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if a.json {
        return print_json(&all);
    }
    println!(
        "{:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>11} {:>11}",
        "agents",
        "levels",
        "check p50",
        "check p99",
        "kill p50",
        "kill p99",
        "lookup p50",
        "lookup p99",
        "B/s/ag",
        "gossip B/s",
        "CHM B/s/ag"
    );
    for f in &all {
        println!(
            "{:>6} {:>6} {:>8.2}s {:>8.2}s {:>8.2}s {:>8.2}s {:>8.1}ms {:>8.1}ms {:>11.0} {:>11.0} {:>11.0}{}",
            f.agents,
            f.levels,
            f.check_p50_s,
            f.check_p99_s,
            f.kill_p50_s,
            f.kill_p99_s,
            f.lookup_p50_ms,
            f.lookup_p99_ms,
            f.bytes_per_agent_s,
            f.baseline_bytes_per_agent_s,
            f.chm_bytes_per_agent_s,
            if f.missed > 0 {
                format!("  ({} verdicts missed)", f.missed)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Bytes per agent per second over `window`.
async fn rate(c: &Cluster, window: Duration) -> f64 {
    let b0 = total_bytes(c).await;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let b1 = total_bytes(c).await;
    b1.saturating_sub(b0) as f64 / c.live().count() as f64 / t0.elapsed().as_secs_f64()
}

/// Whether a root row counts `n` members.
fn members(root: &zone_sql::Attrs, n: usize) -> bool {
    root.get("nmembers") == Some(&zone_sql::Value::Int(n as i64))
}

async fn baseline(a: &ChmBenchArgs, n: usize) -> Result<f64, CliError> {
    let (c, churn) = operating_point(&a.cluster, n, true).await?;
    until_all(&c, *a.cluster.round * 60, |r| members(r, n)).await;
    tokio::time::sleep(*a.cluster.round * 3).await;
    let r = rate(&c, *a.window).await;
    churn.stop();
    c.shutdown().await;
    Ok(r)
}

/// Seconds until `h`'s lookup of `id` says `status`, or None after `limit`.
async fn until_status(
    h: NodeHandle,
    id: String,
    status: Status,
    start: Instant,
    limit: Duration,
) -> Option<f64> {
    loop {
        if let Ok(r) = chm::lookup(&h, id.clone()).await
            && r.status == status
        {
            return Some(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Times `id` reaching `status` at every live agent but `skip`.
async fn everywhere(
    c: &Cluster,
    id: &str,
    status: Status,
    start: Instant,
    limit: Duration,
    skip: Option<usize>,
) -> Vec<Option<f64>> {
    let waits: Vec<_> = c
        .live()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, node)| {
            tokio::spawn(until_status(
                node.handle(),
                id.to_string(),
                status,
                start,
                limit,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for w in waits {
        out.push(w.await.ok().flatten());
    }
    out
}

pub(crate) fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Zone-tree distance between two leaves: levels up to their common ancestor.
fn distance(a: &ZonePath, b: &ZonePath) -> usize {
    let (x, y): (Vec<_>, Vec<_>) = (
        a.as_str().split('/').collect(),
        b.as_str().split('/').collect(),
    );
    let common = x.iter().zip(&y).take_while(|(p, q)| p == q).count();
    x.len() - common
}

async fn measure(a: &ChmBenchArgs, n: usize, baseline: f64) -> Result<Figures, CliError> {
    let endpoints = Endpoints::default();
    let (base, server) = serve_endpoints(endpoints.clone()).await?;
    let (mut c, churn) = operating_point(&a.cluster, n, false).await?;
    let levels = armillary_agent::sim::tree::levels(&c.leaves);
    for i in 0..n {
        for k in 0..a.components {
            let id = component(i, k);
            let mut spec = CheckSpec::new(Check::Http {
                url: format!("{base}/c/{id}"),
            });
            spec.interval = 1_000_000;
            spec.timeout = 500_000;
            let mut r = Registration::new(ComponentId::parse(&id).expect("a valid id"), spec);
            r.keywords = vec![format!("kw{k}")];
            r.address = Some(format!("127.0.0.1:{}", 9000 + k));
            chm::register(&c.handle(i), r)
                .await
                .map_err(|e| CliError::failed(format!("cannot register {id}: {e}")))?;
        }
    }
    let patience = *a.cluster.round * 60;
    until_all(&c, patience, |r| members(r, n)).await;
    // Every agent sees the last component passing before the measures.
    let ready = everywhere(
        &c,
        &component(n - 1, a.components - 1),
        Status::Passing,
        Instant::now(),
        patience,
        None,
    )
    .await;
    let mut missed = ready.iter().filter(|r| r.is_none()).count();
    tokio::time::sleep(*a.cluster.round * 3).await;
    let bytes = rate(&c, *a.window).await;

    // Lookups from the farthest agent.
    let mut lookups = Vec::new();
    for r in 0..50 {
        let owner = (r * 7) % n;
        let from = (0..n)
            .max_by_key(|j| (distance(&c.leaves[owner], &c.leaves[*j]), *j))
            .expect("agents");
        let id = component(owner, r % a.components);
        let t = Instant::now();
        if chm::lookup(&c.handle(from), id).await.is_ok() {
            lookups.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }

    // Checks that start failing.
    let mut checks = Vec::new();
    for r in 0..a.reps {
        let id = component((r * 5 + 1) % n, r % a.components);
        let start = Instant::now();
        endpoints.fail(&id, true);
        for t in everywhere(&c, &id, Status::Critical, start, patience, None).await {
            match t {
                Some(s) => checks.push(s),
                None => missed += 1,
            }
        }
        endpoints.fail(&id, false);
        everywhere(&c, &id, Status::Passing, Instant::now(), patience, None).await;
    }

    // Agents killed: never the seeds (the first three).
    let mut kills = Vec::new();
    for r in 0..a.reps.min(n.saturating_sub(4)) {
        let victim = n - 1 - r * 3 % (n - 3);
        let id = component(victim, 0);
        let start = Instant::now();
        c.kill(victim);
        for t in everywhere(&c, &id, Status::Critical, start, patience, Some(victim)).await {
            match t {
                Some(s) => kills.push(s),
                None => missed += 1,
            }
        }
    }
    churn.stop();
    c.shutdown().await;
    server.abort();
    Ok(Figures {
        agents: n,
        levels,
        secure: a.cluster.secure,
        components_per_agent: a.components,
        check_p50_s: quantile(&mut checks, 0.5),
        check_p99_s: quantile(&mut checks, 0.99),
        kill_p50_s: quantile(&mut kills, 0.5),
        kill_p99_s: quantile(&mut kills, 0.99),
        lookup_p50_ms: quantile(&mut lookups, 0.5),
        lookup_p99_ms: quantile(&mut lookups, 0.99),
        bytes_per_agent_s: bytes,
        baseline_bytes_per_agent_s: baseline,
        chm_bytes_per_agent_s: bytes - baseline,
        missed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_levels_to_the_common_zone() {
        let z = |s| ZonePath::parse(s).unwrap();
        assert_eq!(distance(&z("/a/b/c"), &z("/a/b/d")), 1);
        assert_eq!(distance(&z("/a/b/c"), &z("/x/y/z")), 3);
        assert_eq!(distance(&z("/a/b"), &z("/a/b")), 0);
    }

    #[test]
    fn quantiles_pick_ranks() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert!(quantile(&mut [], 0.5).is_nan());
    }
}
