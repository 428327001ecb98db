//! `armillary bench evn`: EVN's figures over real QUIC on loopback, at the
//! benchmarks' operating point (a fifth of the agents' sensors changing
//! every second, the root's AFCs installed, certificates with `--secure`).
//!
//! - **Urgent events.** Every agent subscribes; `--events` events go to the
//!   root, one every 20 ms from agent after agent, and each subscriber
//!   times each delivery from the event's publication. The figure that
//!   matters is the last subscriber's. Measured with the eager push (how
//!   EVN runs), then with `--loss` of every agent's outgoing messages
//!   dropped (exactly once still?), and, as the baseline, in a cluster
//!   whose push is off so that anti-entropy alone carries the events (how
//!   plain gossip dissemination, Serf's user events for one, behaves).
//! - **Conditions.** Every agent of a second cluster runs a condition over
//!   its local `conns` table; one agent's table turns it true, then false
//!   again, `--transitions` times, and an observer times the local change
//!   to its firing or cleared notification. Then `--stopped` agents are
//!   killed, and the time until the answer names exactly them is taken,
//!   beside the deadline after which a silent agent is named.

use super::bench::{Churn, ClusterArgs, operating_point_with, progress, until_all};
use super::bench_chm::quantile;
use crate::output::{CliError, CliResult, print_json};
use crate::runtime;
use armillary_agent::ZonePath;
use armillary_agent::evn::{self, EvnCallError, Item, proto};
use armillary_agent::node::NodeHandle;
use armillary_agent::node::cluster::Cluster;
use clap::Args;
use proto::subs::Request;
use proto::{Condition, Delivery};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use zone_sql::Value;

const S: u64 = 1_000_000;
/// How long a run waits for its last deliveries.
const SETTLE: Duration = Duration::from_secs(30);
const CONDITION: &str = "bench";

#[derive(Args)]
pub struct EvnBenchArgs {
    /// Agents for the event runs.
    #[arg(long, default_value_t = 32)]
    agents: usize,
    /// Events per run.
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Share of every agent's outgoing messages dropped in the lossy run.
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// Agents of the condition run (0: skip it).
    #[arg(long, default_value_t = 64)]
    condition_agents: usize,
    /// Local changes that make the condition true and false again.
    #[arg(long, default_value_t = 10)]
    transitions: usize,
    /// Agents stopped at the end of the condition run.
    #[arg(long, default_value_t = 4)]
    stopped: usize,
    /// Skip the anti-entropy-only baseline.
    #[arg(long)]
    no_baseline: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct EventRun {
    mode: &'static str,
    agents: usize,
    loss: f64,
    events: usize,
    /// Publication to delivery, over every delivery at every agent.
    p50_ms: f64,
    p99_ms: f64,
    /// Publication to delivery at the last subscriber, over events.
    last_p50_ms: f64,
    last_p99_ms: f64,
    /// Every subscriber got every event, none twice.
    exactly_once: bool,
    missing: u64,
    duplicates: u64,
    /// The baseline's last-subscriber p50 over this run's.
    speedup_vs_baseline: Option<f64>,
}

#[derive(Serialize)]
struct Conditions {
    agents: usize,
    transitions: usize,
    /// Local change to the observer's `firing` notification.
    fire_p50_ms: f64,
    fire_p99_ms: f64,
    /// Local change back to the observer's `cleared` notification.
    clear_p50_ms: f64,
    clear_p99_ms: f64,
    /// Transitions whose notification never came.
    missed_notifications: u64,
    /// Notifications beyond one per transition.
    extra_notifications: u64,
    stopped: usize,
    /// After this long without a fresh row an agent is named as silent.
    deadline_ms: u64,
    /// From the kill until the answer named exactly the stopped agents.
    named_after_ms: Option<f64>,
    contributors: Option<u64>,
    expected: Option<u64>,
}

#[derive(Serialize)]
struct Figures {
    secure: bool,
    operating_point: &'static str,
    events: Vec<EventRun>,
    conditions: Option<Conditions>,
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::failed(e.to_string())
}

pub fn run(a: EvnBenchArgs) -> CliResult {
    if a.agents < 2 || a.events == 0 {
        return Err(CliError::usage(
            "--agents must be at least 2 and --events at least 1",
        ));
    }
    if !(0.0..0.5).contains(&a.loss) {
        return Err(CliError::usage("--loss must lie in [0, 0.5)"));
    }
    if a.condition_agents > 0 && a.stopped + 2 > a.condition_agents {
        return Err(CliError::usage(
            "--stopped must leave at least two of --condition-agents running",
        ));
    }
    runtime::init_logging(!a.cluster.secure);
    runtime::tokio()?.block_on(async move {
        let mut events = Vec::new();
        let (c, churn) = start(&a, a.agents, None).await?;
        events.push(event_run(&c, &a, "push", 0.0).await?);
        if a.loss > 0.0 {
            for (_, n) in c.live() {
                n.transport().set_loss(a.loss);
            }
            events.push(event_run(&c, &a, "push", a.loss).await?);
        }
        churn.stop();
        c.shutdown().await;
        if !a.no_baseline {
            let (c, churn) = start(&a, a.agents, Some(0)).await?;
            let base = event_run(&c, &a, "anti-entropy", 0.0).await?;
            churn.stop();
            c.shutdown().await;
            for e in &mut events {
                e.speedup_vs_baseline = Some(base.last_p50_ms / e.last_p50_ms);
            }
            events.push(base);
        }
        let conditions = if a.condition_agents > 0 {
            let (mut c, churn) = start(&a, a.condition_agents, None).await?;
            let r = conditions(&mut c, &a).await?;
            churn.stop();
            c.shutdown().await;
            Some(r)
        } else {
            None
        };
        let fig = Figures {
            secure: a.cluster.secure,
            operating_point: "a fifth of the sensors changing every second, root AFCs installed",
            events,
            conditions,
        };
        if a.json {
            return print_json(&fig);
        }
        print_figures(&fig);
        Ok(())
    })
}

fn print_figures(fig: &Figures) {
    println!(
        "mode          agents  loss  events  p50 ms  p99 ms  last p50  last p99  once  missing  dups  speedup"
    );
    for e in &fig.events {
        println!(
            "{:<13} {:>6} {:>4.0}% {:>7} {:>7.1} {:>7.1} {:>9.1} {:>9.1} {:>5} {:>8} {:>5} {:>8}",
            e.mode,
            e.agents,
            e.loss * 100.0,
            e.events,
            e.p50_ms,
            e.p99_ms,
            e.last_p50_ms,
            e.last_p99_ms,
            if e.exactly_once { "yes" } else { "NO" },
            e.missing,
            e.duplicates,
            e.speedup_vs_baseline
                .map(|s| format!("{s:.1}x"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    if let Some(c) = &fig.conditions {
        println!(
            "condition over {} agents, {} transitions: fired p50 {:.0} ms p99 {:.0} ms, cleared p50 {:.0} ms p99 {:.0} ms after the local change, {} missed and {} extra notifications",
            c.agents,
            c.transitions,
            c.fire_p50_ms,
            c.fire_p99_ms,
            c.clear_p50_ms,
            c.clear_p99_ms,
            c.missed_notifications,
            c.extra_notifications
        );
        match c.named_after_ms {
            Some(ms) => println!(
                "{} agents stopped: named after {:.0} ms (deadline {} ms), {} of {} contributing",
                c.stopped,
                ms,
                c.deadline_ms,
                c.contributors.unwrap_or(0),
                c.expected.unwrap_or(0)
            ),
            None => println!(
                "{} agents stopped: NOT named within {} s (deadline {} ms)",
                c.stopped,
                SETTLE.as_secs(),
                c.deadline_ms
            ),
        }
    }
}

/// A cluster of `n` at the operating point, EVN's fanout set, every agent
/// counted at the root.
async fn start(
    a: &EvnBenchArgs,
    n: usize,
    fanout: Option<usize>,
) -> Result<(Cluster, Churn), CliError> {
    if !a.json {
        eprintln!("starting {n} agents ...");
    }
    let (c, churn) =
        operating_point_with(&a.cluster, n, |s| s.services.evn_fanout = fanout).await?;
    let all = until_all(
        &c,
        Duration::from_secs(120),
        |root| matches!(root.get("nmembers"), Some(Value::Int(m)) if *m == n as i64),
    )
    .await;
    if !all {
        return Err(CliError::failed(format!(
            "{n} agents did not all see each other within 120 s"
        )));
    }
    Ok((c, churn))
}

/// Deliveries seen: per event id, each agent's latencies in µs.
type Seen = Arc<Mutex<HashMap<String, Vec<(usize, u64)>>>>;

async fn subscribe(h: &NodeHandle, filter: Option<&str>) -> Result<Arc<evn::Queue>, CliError> {
    let now = armillary_agent::node::now_micros();
    let req = Request {
        filter: filter.map(str::to_string),
        zone: None,
        expires: now + 3600 * S,
        delivery: Delivery::Stream,
    };
    let (_, q) = evn::subscribe(h, req).await.map_err(failed)?;
    Ok(q)
}

async fn publish(
    h: &NodeHandle,
    scope: ZonePath,
    topic: &str,
    data: String,
) -> Result<String, CliError> {
    let topic = topic.to_string();
    let e = evn::with_evn(h, move |e, z, _, _| {
        Ok(e.publish(&z, scope, &topic, &data, 60 * S)?)
    })
    .await
    .map_err(|e: EvnCallError| failed(e))?;
    Ok(format!("{}@{}", e.seq, e.origin))
}

async fn event_run(
    c: &Cluster,
    a: &EvnBenchArgs,
    mode: &'static str,
    loss: f64,
) -> Result<EventRun, CliError> {
    let live: Vec<usize> = c.live().map(|(i, _)| i).collect();
    let topic = format!("bench/{mode}/{}", (loss * 100.0) as u32);
    let filter = format!("topic = '{topic}'");
    let seen: Seen = Arc::default();
    let mut consumers = Vec::new();
    for &i in &live {
        let q = subscribe(&c.handle(i), Some(&filter)).await?;
        let seen = seen.clone();
        consumers.push(tokio::spawn(async move {
            while let Item::Event(e) = q.next().await {
                let lat = armillary_agent::node::now_micros().saturating_sub(e.time);
                let id = format!("{}@{}", e.seq, e.origin);
                seen.lock().unwrap().entry(id).or_default().push((i, lat));
            }
        }));
    }
    let bar = progress(a.json, a.events as u64);
    bar.set_message(format!("{mode} events, {:.0}% loss", loss * 100.0));
    let mut ids = Vec::new();
    for k in 0..a.events {
        let from = live[k % live.len()];
        let data = format!(
            r#"{{"kind":"failover","from":"cleveland","to":"sunnyvale","in_s":300,"n":{k}}}"#
        );
        ids.push(publish(&c.handle(from), ZonePath::root(), &topic, data).await?);
        bar.inc(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bar.finish_and_clear();
    let want = live.len();
    let end = Instant::now() + SETTLE;
    while Instant::now() < end {
        let done = {
            let s = seen.lock().unwrap();
            ids.iter()
                .all(|id| s.get(id).is_some_and(|v| v.len() >= want))
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Room for a duplicate to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for t in consumers {
        t.abort();
    }
    let s = seen.lock().unwrap();
    let (mut all, mut last) = (Vec::new(), Vec::new());
    let (mut missing, mut duplicates) = (0u64, 0u64);
    for id in &ids {
        let got = s.get(id).map(Vec::as_slice).unwrap_or_default();
        let mut per: HashMap<usize, u64> = HashMap::new();
        for &(i, lat) in got {
            *per.entry(i).or_default() += 1;
            all.push(lat as f64 / 1000.0);
        }
        missing += (want - per.len()) as u64;
        duplicates += per.values().map(|n| n - 1).sum::<u64>();
        if per.len() == want {
            let worst = got.iter().map(|&(_, l)| l).max().unwrap_or(0);
            last.push(worst as f64 / 1000.0);
        }
    }
    Ok(EventRun {
        mode,
        agents: want,
        loss,
        events: ids.len(),
        p50_ms: quantile(&mut all, 0.5),
        p99_ms: quantile(&mut all, 0.99),
        last_p50_ms: quantile(&mut last, 0.5),
        last_p99_ms: quantile(&mut last, 0.99),
        exactly_once: missing == 0 && duplicates == 0,
        missing,
        duplicates,
        speedup_vs_baseline: None,
    })
}

async fn put_conns(h: &NodeHandle, failed: i64) -> Result<(), CliError> {
    let rows = format!(r#"[{{"peer":"db","failed":{failed}}}]"#);
    evn::put_table(h, "conns".into(), rows)
        .await
        .map_err(self::failed)?;
    Ok(())
}

/// The condition's answer at `h`: contributors, expected, missing names.
async fn answer(h: &NodeHandle) -> Option<(u64, u64, Vec<String>)> {
    evn::with_evn(h, |e, _, _, _| {
        Ok(e.conditions()
            .find(|(c, _)| &*c.name == CONDITION)
            .and_then(|(_, st)| st?.answer.clone()))
    })
    .await
    .ok()
    .flatten()
    .map(|a| {
        let mut m: Vec<String> = a.missing.iter().map(|s| s.to_string()).collect();
        m.sort();
        (a.contributors, a.expected, m)
    })
}

/// Waits for the next notification of `state`; its arrival time.
async fn next_state(
    rx: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    state: &str,
) -> Option<Instant> {
    let end = tokio::time::Instant::now() + SETTLE;
    while let Ok(Some((s, at))) = tokio::time::timeout_at(end, rx.recv()).await {
        if s == state {
            return Some(at);
        }
    }
    None
}

async fn conditions(c: &mut Cluster, a: &EvnBenchArgs) -> Result<Conditions, CliError> {
    let n = a.condition_agents;
    for (i, _) in c.live() {
        put_conns(&c.handle(i), 0).await?;
    }
    let observer = c.handle(0);
    let q = subscribe(&observer, Some(&format!("topic = 'condition/{CONDITION}'"))).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let follow = tokio::spawn(async move {
        while let Item::Event(e) = q.next().await {
            let v: serde_json::Value = serde_json::from_str(&e.data).unwrap_or_default();
            let state = v["state"].as_str().unwrap_or_default().to_string();
            if tx.send((state, Instant::now())).is_err() {
                break;
            }
        }
    });
    let cond = Condition::new(
        CONDITION,
        ZonePath::root(),
        "SELECT COUNT(*) > 0 AS hit FROM conns WHERE failed > 5",
        1,
    );
    evn::with_evn(&observer, move |e, mut z, _, _| {
        Ok(e.add_condition(&mut z, cond)?)
    })
    .await
    .map_err(failed)?;
    if !a.json {
        eprintln!("condition over {n} agents: waiting for every answer ...");
    }
    let end = Instant::now() + Duration::from_secs(120);
    while answer(&observer)
        .await
        .is_none_or(|(k, e, _)| k < n as u64 || e < n as u64)
    {
        if Instant::now() > end {
            return Err(CliError::failed(
                "the condition's answer never counted every agent",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bar = progress(a.json, a.transitions as u64);
    bar.set_message("condition transitions");
    let (mut fire, mut clear) = (Vec::new(), Vec::new());
    for t in 0..a.transitions {
        let h = c.handle(1 + t % (n - 1));
        let at = Instant::now();
        put_conns(&h, 10).await?;
        if let Some(got) = next_state(&mut rx, "firing").await {
            fire.push(got.duration_since(at).as_secs_f64() * 1000.0);
        }
        let at = Instant::now();
        put_conns(&h, 0).await?;
        if let Some(got) = next_state(&mut rx, "cleared").await {
            clear.push(got.duration_since(at).as_secs_f64() * 1000.0);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut extra = 0u64;
    while rx.try_recv().is_ok() {
        extra += 1;
    }
    let missed = (2 * a.transitions - fire.len() - clear.len()) as u64;

    // Stop the last agents; wait until the answer names exactly them.
    let mut gone: Vec<String> = (n - a.stopped..n)
        .map(|i| c.leaves[i].to_string())
        .collect();
    gone.sort();
    if !a.json {
        eprintln!("stopping {} agents ...", a.stopped);
    }
    let deadline_ms = evn::with_evn(&observer, |_, z, _, _| {
        Ok(z.config().fail_timeout(8) / 2 / 1000)
    })
    .await
    .map_err(failed)?;
    let killed_at = Instant::now();
    for i in n - a.stopped..n {
        c.kill(i);
    }
    let mut named_after = None;
    let mut last = None;
    let end = Instant::now() + SETTLE;
    while Instant::now() < end {
        last = answer(&observer).await;
        if let Some((k, e, m)) = &last
            && *k == (n - a.stopped) as u64
            && *e == n as u64
            && *m == gone
        {
            named_after = Some(killed_at.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    follow.abort();
    Ok(Conditions {
        agents: n,
        transitions: a.transitions,
        fire_p50_ms: quantile(&mut fire, 0.5),
        fire_p99_ms: quantile(&mut fire, 0.99),
        clear_p50_ms: quantile(&mut clear, 0.5),
        clear_p99_ms: quantile(&mut clear, 0.99),
        missed_notifications: missed,
        extra_notifications: extra,
        stopped: a.stopped,
        deadline_ms,
        named_after_ms: named_after,
        contributors: last.as_ref().map(|l| l.0),
        expected: last.as_ref().map(|l| l.1),
    })
}
