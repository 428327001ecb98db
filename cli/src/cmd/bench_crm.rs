//! `armillary bench crm`: CRM's figures over real QUIC on loopback, at the
//! benchmarks' operating point (a fifth of the agents' sensors changing
//! every second, the root's AFCs installed, certificates with `--secure`).
//!
//! - **Multicast.** Every member of one group sends `--messages` messages
//!   of `--size` bytes in all, in fifo, total and safe mode in turn, as
//!   fast as the group takes them (or at `--rate` messages a second, for
//!   latency under a given load); each message carries the time it was
//!   sent, so every member times each delivery. Fifo (no ordering across
//!   senders) is the baseline the ordered modes are measured against.
//! - **Crash to view.** A member is killed (the coordinator every other
//!   time), and the time until every survivor installed a view without it
//!   is taken; it then restarts empty and joins again as a new incarnation.
//! - **Key-value endpoint.** Every member serves the store; clients send
//!   increments one at a time, each to the first member that answers, and
//!   the member they all use is killed halfway: ops/s, latency, and the
//!   stall the clients saw.

use super::bench::{ClusterArgs, operating_point};
use crate::output::{CliError, CliResult, print_json};
use crate::runtime;
use armillary_agent::crm::{self, CrmCallError, ServeKind, proto};
use armillary_agent::node::NodeHandle;
use armillary_agent::node::cluster::Cluster;
use clap::Args;
use proto::{GroupEvent, KvOp, Mode};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;

const GROUP: &str = "bench";
/// Messages handed to the group per call.
const BATCH: usize = 256;
/// A member that gets nothing for this long is done.
const IDLE: Duration = Duration::from_secs(10);
const JOIN_WAIT: Duration = Duration::from_secs(20);

#[derive(Args)]
pub struct CrmBenchArgs {
    /// Group members (one per agent).
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Messages sent per mode, all members together.
    #[arg(long, default_value_t = 30_000)]
    messages: u64,
    /// Messages per second, all members together (0: as fast as the
    /// group takes them, which measures throughput and latency at
    /// saturation; a rate below it measures latency under that load).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Message size in bytes (at least 24).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Members killed one after the other for the crash-to-view figure.
    #[arg(long, default_value_t = 4)]
    crashes: usize,
    /// Key-value operations (0: skip the endpoint).
    #[arg(long, default_value_t = 4000)]
    kv_ops: u64,
    #[arg(long, default_value_t = 4)]
    kv_clients: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Multicast {
    mode: &'static str,
    members: usize,
    size: usize,
    messages: u64,
    /// Deliveries missed (a stream that lagged, or a member that stopped).
    missed: u64,
    /// Messages delivered at every member per second.
    msgs_per_s: f64,
    /// Send to delivery, over every delivery at every member.
    p50_ms: f64,
    p99_ms: f64,
    /// Throughput over the fifo run's (the baseline).
    vs_fifo: f64,
}

#[derive(Serialize)]
struct CrashToView {
    samples: usize,
    p50_ms: f64,
    max_ms: f64,
    /// Detection: the group's suspicion timeout.
    suspect_ms: u64,
}

#[derive(Serialize)]
struct Kv {
    ops: u64,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The longest one operation took: the stall when its member died.
    stall_ms: f64,
    failovers: u64,
    final_value: Option<i64>,
}

#[derive(Serialize)]
struct Figures {
    secure: bool,
    /// The offered rate, all members together (0: as fast as taken).
    rate: u64,
    operating_point: &'static str,
    multicast: Vec<Multicast>,
    crash_to_view: Option<CrashToView>,
    kv: Option<Kv>,
}

pub fn run(a: CrmBenchArgs) -> CliResult {
    if a.size < 24 {
        return Err(CliError::usage("--size must be at least 24 bytes"));
    }
    if a.members < 2 {
        return Err(CliError::usage("--members must be at least 2"));
    }
    if a.size > proto::wire::MAX_DATA {
        return Err(CliError::usage(format!(
            "--size is at most {} bytes",
            proto::wire::MAX_DATA
        )));
    }
    runtime::tokio()?.block_on(async move {
        let (mut cluster, churn) = operating_point(&a.cluster, a.members, false).await?;
        form(&cluster, GROUP, None).await?;
        let mut multicast = Vec::new();
        let mut fifo_rate = f64::NAN;
        for (k, mode) in [Mode::Fifo, Mode::Total, Mode::Safe].into_iter().enumerate() {
            if !a.json {
                eprintln!("{} multicast: {} messages ...", mode.name(), a.messages);
            }
            let mut m = multicast_run(&cluster, &a, mode, k as u8 + 1).await?;
            if mode == Mode::Fifo {
                fifo_rate = m.msgs_per_s;
            }
            m.vs_fifo = m.msgs_per_s / fifo_rate;
            multicast.push(m);
        }
        let crash_to_view = if a.crashes > 0 {
            if !a.json {
                eprintln!("crash to view: {} crashes ...", a.crashes);
            }
            Some(crashes(&mut cluster, a.crashes).await?)
        } else {
            None
        };
        let kv = if a.kv_ops > 0 {
            if !a.json {
                eprintln!("key-value endpoint: {} increments ...", a.kv_ops);
            }
            Some(kv(&mut cluster, &a).await?)
        } else {
            None
        };
        drop(churn);
        let fig = Figures {
            secure: a.cluster.secure,
            rate: a.rate,
            operating_point: "a fifth of the sensors changing every second, root AFCs installed",
            multicast,
            crash_to_view,
            kv,
        };
        if a.json {
            return print_json(&fig);
        }
        println!("mode   members  size  msgs/s    p50 ms  p99 ms  vs fifo  missed");
        for m in &fig.multicast {
            println!(
                "{:<6} {:>7} {:>5} {:>8.0} {:>8.2} {:>7.2} {:>7.2}x {:>7}",
                m.mode, m.members, m.size, m.msgs_per_s, m.p50_ms, m.p99_ms, m.vs_fifo, m.missed
            );
        }
        if let Some(c) = &fig.crash_to_view {
            println!(
                "crash to view at every survivor: p50 {:.0} ms, max {:.0} ms over {} crashes (suspicion after {} ms)",
                c.p50_ms, c.max_ms, c.samples, c.suspect_ms
            );
        }
        if let Some(k) = &fig.kv {
            println!(
                "key-value: {} increments, {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, stall {:.0} ms when the serving member died, {} failovers, final value {:?}",
                k.ops, k.ops_per_s, k.p50_ms, k.p99_ms, k.stall_ms, k.failovers, k.final_value
            );
        }
        Ok(())
    })
}

fn failed(e: CrmCallError) -> CliError {
    CliError::failed(e.to_string())
}

/// Every live agent joins `group` (serving `kind`), and waits for one view of all.
async fn form(c: &Cluster, group: &str, kind: Option<ServeKind>) -> Result<(), CliError> {
    let live: Vec<usize> = c.live().map(|(i, _)| i).collect();
    let first: Arc<str> = c
        .node(live[0])
        .expect("live")
        .gossip_addr()
        .to_string()
        .into();
    for (k, &i) in live.iter().enumerate() {
        let contacts = if k == 0 { vec![] } else { vec![first.clone()] };
        let h = c.handle(i);
        match kind {
            Some(kind) => crm::serve(&h, group.into(), kind, contacts, JOIN_WAIT)
                .await
                .map(|_| ()),
            None => crm::join(&h, group.into(), contacts, JOIN_WAIT)
                .await
                .map(|_| ()),
        }
        .map_err(failed)?;
    }
    until_view(c, group, live.len()).await
}

async fn until_view(c: &Cluster, group: &str, n: usize) -> Result<(), CliError> {
    let end = Instant::now() + JOIN_WAIT;
    while Instant::now() < end {
        let mut all = true;
        for (i, _) in c.live() {
            let v = crm::view(&c.handle(i), group.into())
                .await
                .map_err(failed)?;
            all &= v.is_some_and(|v| v.view.members.len() == n);
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(CliError::failed(format!(
        "group {group} did not reach a view of {n} members"
    )))
}

async fn multicast_run(
    c: &Cluster,
    a: &CrmBenchArgs,
    mode: Mode,
    run: u8,
) -> Result<Multicast, CliError> {
    let start = Instant::now();
    let members: Vec<NodeHandle> = c.live().map(|(i, _)| c.handle(i)).collect();
    let mut readers = Vec::new();
    for h in &members {
        let mut rx = crm::follow(h, GROUP.into()).await.map_err(failed)?;
        let want = a.messages;
        readers.push(tokio::spawn(async move {
            let (mut lat, mut missed, mut last) = (Vec::new(), 0u64, start.elapsed());
            while (lat.len() as u64 + missed) < want {
                match tokio::time::timeout(IDLE, rx.recv()).await {
                    Ok(Ok(GroupEvent::Deliver { data, .. }))
                        if data.len() >= 24 && data[16] == run =>
                    {
                        let sent = u64::from_le_bytes(data[..8].try_into().expect("8"));
                        last = start.elapsed();
                        lat.push((last.as_micros() as u64).saturating_sub(sent) as f64 / 1000.0);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(RecvError::Lagged(n))) => missed += n,
                    Ok(Err(RecvError::Closed)) | Err(_) => break,
                }
            }
            missed = want.saturating_sub(lat.len() as u64);
            (lat, missed, last)
        }));
    }
    let per = a.messages / members.len() as u64;
    let mut senders = Vec::new();
    for (r, h) in members.iter().enumerate() {
        let h = h.clone();
        let n = per + u64::from((r as u64) < a.messages % members.len() as u64);
        let size = a.size;
        let all = members.clone();
        let per_s = (a.rate > 0).then(|| a.rate as f64 / members.len() as f64);
        senders.push(tokio::spawn(async move {
            let mut k = 0u64;
            let mut stuck_since: Option<Instant> = None;
            let mut backlog: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
            while k < n || !backlog.is_empty() {
                // Paced: only what is due by now; else as fast as taken.
                let due = match per_s {
                    Some(p) => n.min((p * start.elapsed().as_secs_f64()) as u64 + 1),
                    None => n,
                };
                if backlog.is_empty() && k >= due {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                while backlog.len() < BATCH && k < due {
                    let mut m = vec![0u8; size];
                    m[8..16].copy_from_slice(&((r as u64) << 40 | k).to_le_bytes());
                    m[16] = run;
                    backlog.push(m);
                    k += 1;
                }
                // Each message is stamped when it is handed over.
                let now = start.elapsed().as_micros() as u64;
                for m in &mut backlog {
                    m[..8].copy_from_slice(&now.to_le_bytes());
                }
                let offered = backlog.len();
                backlog = crm::send_many(&h, GROUP.into(), mode, backlog)
                    .await
                    .map_err(failed)?;
                if backlog.len() < offered {
                    stuck_since = None;
                } else if stuck_since.get_or_insert_with(Instant::now).elapsed() > IDLE {
                    return Err(stalled(&all, mode).await);
                }
                if !backlog.is_empty() {
                    // The window is closed until the members' next reports.
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
            }
            Ok::<(), CliError>(())
        }));
    }
    for s in senders {
        s.await.map_err(|e| CliError::failed(e.to_string()))??;
    }
    let (mut lat, mut missed, mut end) = (Vec::new(), 0, Duration::ZERO);
    for r in readers {
        let (l, m, last) = r.await.map_err(|e| CliError::failed(e.to_string()))?;
        lat.extend(l);
        missed += m;
        end = end.max(last);
    }
    let delivered_everywhere = a.messages.saturating_sub(missed);
    Ok(Multicast {
        mode: mode.name(),
        members: members.len(),
        size: a.size,
        messages: a.messages,
        missed,
        msgs_per_s: delivered_everywhere as f64 / end.as_secs_f64(),
        p50_ms: super::bench_chm::quantile(&mut lat, 0.5),
        p99_ms: super::bench_chm::quantile(&mut lat, 0.99),
        vs_fifo: 1.0,
    })
}

/// What each member holds when a group took nothing for [`IDLE`].
async fn stalled(members: &[NodeHandle], mode: Mode) -> CliError {
    let mut parts = Vec::new();
    for h in members {
        if let Ok(Some(i)) = crm::view(h, GROUP.into()).await {
            parts.push(format!(
                "{} {:?} view {} unstable {}",
                i.me.zone, i.phase, i.view.id, i.unstable
            ));
        }
        if let Ok(st) = h.status().await {
            let counted: Vec<String> = st
                .counters
                .iter()
                .filter(|(k, v)| **v > 0 && (k.starts_with("net_") || k.starts_with("crm_")))
                .map(|(k, v)| format!("{k}={v}"))
                .chain(st.rejected.iter().map(|(k, v)| format!("refused {k}={v}")))
                .collect();
            tracing::warn!(counters = %counted.join(" "), "a member of the stalled group");
        }
    }
    CliError::failed(format!(
        "the group took no {} message for {} s: {}",
        mode.name(),
        IDLE.as_secs(),
        parts.join("; ")
    ))
}

/// Kills members one after the other and times the next view.
async fn crashes(c: &mut Cluster, count: usize) -> Result<CrashToView, CliError> {
    let n = c.live().count();
    let mut times = Vec::new();
    for k in 0..count {
        // The coordinator every other time, another member otherwise.
        let info = crm::view(&c.handle(0), GROUP.into())
            .await
            .map_err(failed)?
            .ok_or_else(|| CliError::failed("agent 0 left the group"))?;
        let coord = info.view.coordinator().addr.clone();
        let victim = c
            .live()
            .map(|(i, node)| (i, node.gossip_addr().to_string()))
            .filter(|(i, _)| *i != 0)
            .find(|(_, addr)| (k % 2 == 0) == (**addr == *coord))
            .or_else(|| {
                c.live()
                    .map(|(i, node)| (i, node.gossip_addr().to_string()))
                    .find(|(i, _)| *i != 0)
            })
            .ok_or_else(|| CliError::failed("no member to kill"))?;
        let (i, addr) = victim;
        let t0 = Instant::now();
        c.kill(i);
        until_view(c, GROUP, n - 1).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        // Back, empty, as a new incarnation.
        let listen = addr.parse().expect("an address");
        c.restart(i, listen)
            .await
            .map_err(|e| CliError::failed(format!("cannot restart agent {i}: {e}")))?;
        let contact: Arc<str> = c.node(0).expect("live").gossip_addr().to_string().into();
        crm::join(&c.handle(i), GROUP.into(), vec![contact], JOIN_WAIT)
            .await
            .map_err(failed)?;
        until_view(c, GROUP, n).await?;
    }
    let max_ms = times.iter().cloned().fold(0.0, f64::max);
    Ok(CrashToView {
        samples: times.len(),
        p50_ms: super::bench_chm::quantile(&mut times, 0.5),
        max_ms,
        suspect_ms: proto::GroupConfig::default().suspect_after / 1000,
    })
}

/// Increments from clients that fail over, the first member killed halfway.
async fn kv(c: &mut Cluster, a: &CrmBenchArgs) -> Result<Kv, CliError> {
    const KV: &str = "bench-kv";
    form(c, KV, Some(ServeKind::Kv)).await?;
    // Clients try the members in this order; the first dies halfway.
    let order: Vec<usize> = c.live().map(|(i, _)| i).filter(|&i| i != 0).collect();
    let handles: Vec<NodeHandle> = order.iter().map(|&i| c.handle(i)).collect();
    let start = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..a.kv_clients {
        let handles = handles.clone();
        let n = a.kv_ops / a.kv_clients + u64::from(client < a.kv_ops % a.kv_clients);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let op = KvOp::Incr {
                key: "n".into(),
                by: 1,
            }
            .encode();
            let (mut lat, mut failovers, mut at) = (Vec::new(), 0u64, 0usize);
            let id = rand::random::<u64>() >> 1;
            for seq in 1..=n {
                let t0 = Instant::now();
                loop {
                    let r = crm::request(
                        &handles[at],
                        KV.into(),
                        ServeKind::Kv,
                        id,
                        seq,
                        op.clone(),
                        Duration::from_secs(3),
                    )
                    .await;
                    if r.is_ok() {
                        break;
                    }
                    failovers += 1;
                    at = (at + 1) % handles.len();
                    if failovers > 10 * n {
                        return (lat, failovers);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (lat, failovers)
        }));
    }
    while done.load(std::sync::atomic::Ordering::Relaxed) < a.kv_ops / 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill(order[0]);
    let (mut lat, mut failovers) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.map_err(|e| CliError::failed(e.to_string()))?;
        lat.extend(l);
        failovers += f;
    }
    let secs = start.elapsed().as_secs_f64();
    let final_value = match crm::request(
        &c.handle(0),
        KV.into(),
        ServeKind::Kv,
        u64::MAX >> 1,
        1,
        KvOp::Get { key: "n".into() }.encode(),
        Duration::from_secs(3),
    )
    .await
    {
        Ok(r) => match serde_json::from_slice::<proto::KvReply>(&r) {
            Ok(proto::KvReply::Value {
                value: Some(proto::KvValue::Int(v)),
            }) => Some(v),
            _ => None,
        },
        Err(_) => None,
    };
    let stall_ms = lat.iter().cloned().fold(0.0, f64::max);
    Ok(Kv {
        ops: lat.len() as u64,
        ops_per_s: lat.len() as f64 / secs,
        p50_ms: super::bench_chm::quantile(&mut lat, 0.5),
        p99_ms: super::bench_chm::quantile(&mut lat, 0.99),
        stall_ms,
        failovers,
        final_value,
    })
}
