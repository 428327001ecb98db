//! `armillary dds bench`: DDS throughput and latency over real QUIC on
//! loopback, against a plain QUIC fan-out measured in the same run.
//!
//! Per subscriber count N it starts N+1 agents at the benchmarks'
//! operating point (a fifth of the agents' sensors changing every second,
//! the root's AFCs installed, certificates with `--secure`), creates a
//! channel at agent 0 with the chosen stack, subscribes once at each other
//! agent, and publishes `--messages` messages of `--size` bytes from agent
//! 0 as fast as the stack takes them. Each message carries its number and
//! the time it was published, so every subscriber checks that it got each
//! message once and in order, and times it.
//!
//! - `dds`: the run above; with `--loss P` every agent's transport drops
//!   that share of the messages it sends, and the stack repairs them.
//! - `dds_slow` (with `--slow`): the same, plus one more subscriber at
//!   agent 1 that reads at 1% of the `dds` run's rate: the others' figures
//!   are compared with the `dds` run.
//! - `quic`: the baseline, a plain fan-out written here: one QUIC endpoint
//!   sends each message to N endpoints over one stream each (the agents'
//!   TLS and transport settings, a bounded queue per subscriber). QUIC
//!   repairs its own losses, so no loss is injected into it.

use super::bench::{ClusterArgs, operating_point, progress, total_bytes, until_all};
use crate::output::{CliError, CliResult, print_json};
use crate::runtime;
use armillary_agent::dds::{self, Next, Subscription, proto};
use armillary_agent::node::NodeHandle;
use armillary_agent::node::cluster::Cluster;
use clap::Args;
use proto::{DdsError, SendError, SlowPolicy};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const CHANNEL: &str = "bench";
/// The number warm-up messages carry.
const WARM: u64 = u64::MAX;
/// A subscriber that gets nothing for this long is done.
const IDLE: Duration = Duration::from_secs(10);
/// Messages queued per subscriber in the plain fan-out.
const QUEUE: usize = 1024;

#[derive(Args)]
pub struct DdsBenchArgs {
    /// Subscriber counts to measure, comma separated (one subscriber per agent).
    #[arg(long, value_delimiter = ',', default_value = "4,64")]
    subscribers: Vec<usize>,
    /// Message size in bytes (at least 16: number and time).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Share of the agents' messages dropped by their transport, e.g. 0.1.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    loss: f64,
    /// Messages published per run.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Publish at this many messages a second (0: as fast as the stack
    /// takes them). Repair times mean most below saturation, where they
    /// are not queueing delays.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// The channel's stack.
    #[arg(long, default_value = "fifo:nak")]
    stack: String,
    /// Also run with one more subscriber reading at 1% of the rate.
    #[arg(long)]
    slow: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Figures {
    subscribers: usize,
    /// `dds`, `dds_slow` or `quic` (the plain fan-out).
    mode: &'static str,
    stack: String,
    size: usize,
    messages: u64,
    /// The publishing rate asked for (0: as fast as taken).
    rate: u64,
    loss: f64,
    secure: bool,
    /// Messages per second from the first publish until the last
    /// subscriber (the slow one aside) had them all.
    msgs_per_s: f64,
    /// Messages per second the publisher got accepted.
    publish_per_s: f64,
    #[serde(flatten)]
    delivery: Summary,
    /// Holes the subscribers' `nak` noticed and filled, and the share of
    /// them filled within 100 ms of being noticed.
    repaired: u64,
    repaired_within_100ms: f64,
    /// Repair requests per subscriber.
    requests_per_subscriber: f64,
    /// Bytes every agent sent over the run (gossip included), per subscriber.
    bytes_per_subscriber: f64,
    /// Times the publisher was told to wait (flow control).
    backpressure: u64,
    /// The slow subscriber: messages it read and missed (policy `skip`).
    slow_read: u64,
    slow_missed: u64,
}

pub fn run(a: DdsBenchArgs) -> CliResult {
    if a.subscribers.iter().any(|n| !(1..=256).contains(n)) {
        return Err(CliError::usage("--subscribers counts must lie in 1..=256"));
    }
    if !(16..=proto::MAX_MESSAGE).contains(&a.size) {
        return Err(CliError::usage(format!(
            "--size must lie in 16..={} bytes",
            proto::MAX_MESSAGE
        )));
    }
    if !(0.0..0.5).contains(&a.loss) {
        return Err(CliError::usage(
            "--loss is the share of messages dropped: at least 0, below 0.5",
        ));
    }
    if a.messages == 0 {
        return Err(CliError::usage("--messages must be at least 1"));
    }
    proto::Spec::parse(&a.stack).map_err(|e| CliError::usage(e.to_string()))?;
    runtime::init_logging_at(!a.cluster.secure, "warn");
    let rt = runtime::tokio()?;
    let runs = if a.slow { 3 } else { 2 };
    let bar = progress(a.json, (a.subscribers.len() * runs) as u64);
    let mut all = Vec::new();
    for &n in &a.subscribers {
        bar.set_message(format!("{n} subscribers, plain QUIC fan-out"));
        all.push(rt.block_on(quic(&a, n))?);
        bar.inc(1);
        bar.set_message(format!("{n} subscribers, DDS {}", a.stack));
        let f = rt.block_on(measure(&a, n, None))?;
        // The slow one reads at 1% of the rate asked for, or measured.
        let rate = if a.rate > 0 {
            a.rate as f64
        } else {
            f.msgs_per_s
        };
        all.push(f);
        bar.inc(1);
        if a.slow {
            bar.set_message(format!("{n} subscribers and a slow one, DDS {}", a.stack));
            all.push(rt.block_on(measure(&a, n, Some(rate / 100.0)))?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if a.json {
        return print_json(&all);
    }
    print_table(&all);
    Ok(())
}

fn print_table(all: &[Figures]) {
    println!(
        "{:>4} {:>8} {:>20} {:>9} {:>8} {:>8} {:>8} {:>6} {:>5} {:>5} {:>8} {:>7} {:>9}",
        "subs",
        "mode",
        "stack",
        "msgs/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "lost",
        "dup",
        "reord",
        "repaired",
        "≤100ms",
        "B/sub"
    );
    for f in all {
        println!(
            "{:>4} {:>8} {:>20} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>5} {:>5} {:>8} {:>6.2}% {:>9.0}{}",
            f.subscribers,
            f.mode,
            f.stack,
            f.msgs_per_s,
            f.delivery.p50_ms,
            f.delivery.p99_ms,
            f.delivery.p999_ms,
            f.delivery.lost,
            f.delivery.duplicated,
            f.delivery.reordered,
            f.repaired,
            f.repaired_within_100ms * 100.0,
            f.bytes_per_subscriber,
            if f.delivery.complete {
                ""
            } else {
                "  (incomplete)"
            }
        );
    }
    let find = |n: usize, m: &str| all.iter().find(|f| f.subscribers == n && f.mode == m);
    let mut sizes: Vec<usize> = all.iter().map(|f| f.subscribers).collect();
    sizes.dedup();
    for n in sizes {
        if let (Some(d), Some(q)) = (find(n, "dds"), find(n, "quic")) {
            println!(
                "{n} subscribers: DDS {:.0} msg/s, {:.2}x the plain QUIC fan-out's {:.0}",
                d.msgs_per_s,
                d.msgs_per_s / q.msgs_per_s.max(1.0),
                q.msgs_per_s
            );
        }
        if let (Some(d), Some(s)) = (find(n, "dds"), find(n, "dds_slow")) {
            println!(
                "{n} subscribers: with one more reading at 1% of the rate, the others' p99 {:.2} ms against {:.2} ms ({:+.1}%); the slow one read {} and missed {}",
                s.delivery.p99_ms,
                d.delivery.p99_ms,
                (s.delivery.p99_ms / d.delivery.p99_ms.max(1e-9) - 1.0) * 100.0,
                s.slow_read,
                s.slow_missed
            );
        }
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct Tally {
    seen: Vec<bool>,
    distinct: u64,
    duplicated: u64,
    reordered: u64,
    last: Option<u64>,
    latencies_us: Vec<u32>,
    done_at: Option<Instant>,
    read: u64,
    missed: u64,
}

impl Tally {
    fn new(messages: u64) -> Tally {
        Tally {
            seen: vec![false; messages as usize],
            ..Tally::default()
        }
    }

    /// Notes one message; whether the last one has come.
    fn note(&mut self, data: &[u8], base: Instant) -> bool {
        let Some((i, sent)) = stamp_of(data) else {
            return false;
        };
        if i == WARM {
            return false;
        }
        self.read += 1;
        let Some(slot) = self.seen.get_mut(i as usize) else {
            return false;
        };
        if *slot {
            self.duplicated += 1;
            return false;
        }
        *slot = true;
        self.distinct += 1;
        if self.last.is_some_and(|l| i < l) {
            self.reordered += 1;
        }
        self.last = Some(self.last.map_or(i, |l| l.max(i)));
        let now = base.elapsed().as_micros() as u64;
        self.latencies_us
            .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
        let all = self.distinct == self.seen.len() as u64;
        if all {
            self.done_at = Some(Instant::now());
        }
        all
    }

    fn lost(&self) -> u64 {
        self.seen.len() as u64 - self.distinct
    }
}

/// A message: its number, the time it was published (µs since `base`),
/// then padding up to `size`.
fn message(i: u64, base: Instant, size: usize) -> Vec<u8> {
    let mut m = vec![0u8; size];
    m[..8].copy_from_slice(&i.to_le_bytes());
    m[8..16].copy_from_slice(&(base.elapsed().as_micros() as u64).to_le_bytes());
    m
}

fn stamp_of(data: &[u8]) -> Option<(u64, u64)> {
    let i = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let t = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
    Some((i, t))
}

/// How a slow reader reads: this many messages a second, until told to stop.
#[derive(Clone)]
struct Slow {
    rate: f64,
    stop: Arc<tokio::sync::Notify>,
}

/// Reads `sub` until it has every message, is idle for [`IDLE`], or (a
/// slow reader, which sleeps after each batch) is told to stop. The
/// subscription comes back with the tally: it stays subscribed (and its
/// agent a member) until the run's figures are read.
async fn collect(
    mut sub: Subscription,
    messages: u64,
    base: Instant,
    slow: Option<Slow>,
) -> (Tally, Subscription) {
    let mut t = Tally::new(messages);
    let stopped = || async {
        match &slow {
            Some(s) => s.stop.notified().await,
            None => std::future::pending().await,
        }
    };
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(IDLE, sub.next()) => n,
            _ = stopped() => return (t, sub),
        };
        match next {
            Ok(Ok(Next::Messages(ms))) => {
                let n = ms.len();
                let mut all = false;
                for d in ms {
                    all |= t.note(&d.data, base);
                }
                if all {
                    return (t, sub);
                }
                if let Some(s) = &slow {
                    let nap = Duration::from_secs_f64(n as f64 / s.rate.max(1.0));
                    tokio::select! {
                        _ = tokio::time::sleep(nap) => {}
                        _ = stopped() => return (t, sub),
                    }
                }
            }
            Ok(Ok(Next::Missed(k))) => t.missed += k,
            _ => return (t, sub),
        }
    }
}

/// What the measured subscribers (the slow one aside) got.
#[derive(Serialize)]
struct Summary {
    /// Publish to delivery, over every message at every subscriber.
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Messages never delivered, delivered twice, delivered after a later one.
    lost: u64,
    duplicated: u64,
    reordered: u64,
    /// When the last of them had every message.
    #[serde(skip)]
    last: Option<Instant>,
    /// Whether every one had every message.
    complete: bool,
}

fn summarize(tallies: &[Tally]) -> Summary {
    let mut lat: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(f64::NAN, |us| *us as f64 / 1000.0)
    };
    Summary {
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        lost: tallies.iter().map(Tally::lost).sum(),
        duplicated: tallies.iter().map(|t| t.duplicated).sum(),
        reordered: tallies.iter().map(|t| t.reordered).sum(),
        last: tallies.iter().filter_map(|t| t.done_at).max(),
        complete: tallies.iter().all(|t| t.done_at.is_some()),
    }
}

/// Messages one publish offers at most: what a client library's write
/// buffer holds, as `dds publish` sends the lines piped to it.
const BATCH: u64 = 256;

/// Publishes `messages` numbered messages (paced at `rate` a second, or as
/// fast as the channel takes them), each publish offering those due by
/// then; returns how often the channel held the publisher back. Runs as a
/// task of its own, like any client of the agent.
async fn publish_all(
    publisher: NodeHandle,
    messages: u64,
    size: usize,
    rate: u64,
    base: Instant,
    start: Instant,
) -> Result<u64, CliError> {
    let mut backpressure = 0;
    let mut next = 0;
    let mut held: Vec<Vec<u8>> = Vec::new();
    while next < messages || !held.is_empty() {
        if held.is_empty() {
            pace(start, next, rate).await;
            let due = if rate == 0 {
                messages
            } else {
                (start.elapsed().as_secs_f64() * rate as f64) as u64 + 1
            };
            let end = due.clamp(next + 1, messages).min(next + BATCH);
            held = (next..end).map(|i| message(i, base, size)).collect();
            next = end;
        }
        let unsent = dds::publish_many(&publisher, CHANNEL.into(), std::mem::take(&mut held))
            .await
            .map_err(failed)?;
        held = unsent.rest;
        match unsent.why {
            None => {}
            Some(DdsError::Send(SendError::Backpressure { .. })) => {
                backpressure += 1;
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            Some(e) => return Err(failed(e)),
        }
    }
    Ok(backpressure)
}

/// Waits until message `i` is due at `rate` messages a second from `start`.
async fn pace(start: Instant, i: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
    if due > Instant::now() {
        tokio::time::sleep_until(due.into()).await;
    }
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::failed(e.to_string())
}

/// Waits until every agent knows the channel.
async fn known_everywhere(c: &Cluster, limit: Duration) -> Result<(), CliError> {
    let end = Instant::now() + limit;
    loop {
        let mut all = true;
        for (_, n) in c.live() {
            let cs = dds::channels(&n.handle()).await.map_err(failed)?;
            all &= cs.iter().any(|c| &*c.name == CHANNEL);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(CliError::failed(
                "the channel did not reach every agent; is the cluster converged?",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes warm-up messages until every subscriber has one: the tree is
/// built.
async fn warm_up(
    publisher: &NodeHandle,
    subs: &mut [Subscription],
    base: Instant,
    size: usize,
    limit: Duration,
) -> Result<(), CliError> {
    let end = Instant::now() + limit;
    let mut joined = vec![false; subs.len()];
    while joined.iter().any(|j| !j) {
        if Instant::now() > end {
            let missing = joined.iter().filter(|j| !**j).count();
            return Err(CliError::failed(format!(
                "{missing} subscribers never joined the channel's tree"
            )));
        }
        let _ = dds::publish(publisher, CHANNEL.into(), message(WARM, base, size)).await;
        for (s, j) in subs.iter_mut().zip(joined.iter_mut()) {
            if !*j
                && let Ok(Ok(Next::Messages(_))) =
                    tokio::time::timeout(Duration::from_millis(50), s.next()).await
            {
                *j = true;
            }
        }
    }
    // Let the warm-up's tail drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in subs.iter_mut() {
        while let Ok(Ok(Next::Messages(_))) =
            tokio::time::timeout(Duration::from_millis(10), s.next()).await
        {}
    }
    Ok(())
}

/// The sums of some stack counters over the subscribers' agents.
async fn stack_sums(c: &Cluster, names: &[&str]) -> Vec<u64> {
    let mut sums = vec![0; names.len()];
    for (i, n) in c.live() {
        if i == 0 {
            continue;
        }
        let Ok(cs) = dds::stack_counters(&n.handle(), CHANNEL.into()).await else {
            continue;
        };
        for (k, v) in cs {
            if let Some(j) = names.iter().position(|n| *n == k) {
                sums[j] += v;
            }
        }
    }
    sums
}

const REPAIR_COUNTERS: [&str; 6] = [
    "nak_repaired",
    "nak_repaired_le_10ms",
    "nak_repaired_le_25ms",
    "nak_repaired_le_50ms",
    "nak_repaired_le_100ms",
    "nak_requests",
];

/// One DDS run with `n` subscribers, and with `slow` a slow one reading
/// that many messages a second.
async fn measure(a: &DdsBenchArgs, n: usize, slow: Option<f64>) -> Result<Figures, CliError> {
    let agents = n + 1;
    let (c, churn) = operating_point(&a.cluster, agents, false).await?;
    let patience = *a.cluster.round * 60;
    until_all(&c, patience, |r| {
        r.get("nmembers") == Some(&zone_sql::Value::Int(agents as i64))
    })
    .await;
    let publisher = c.handle(0);
    dds::create(
        &publisher,
        CHANNEL.into(),
        a.stack.clone(),
        None,
        0,
        SlowPolicy::Skip,
    )
    .await
    .map_err(failed)?;
    known_everywhere(&c, patience).await?;
    let base = Instant::now();
    let mut subs = Vec::with_capacity(n);
    for i in 1..agents {
        subs.push(
            dds::subscribe(&c.handle(i), CHANNEL.into(), false)
                .await
                .map_err(failed)?,
        );
    }
    warm_up(&publisher, &mut subs, base, a.size, patience).await?;
    let slow_sub = match slow {
        Some(_) => Some(
            dds::subscribe(&c.handle(1), CHANNEL.into(), false)
                .await
                .map_err(failed)?,
        ),
        None => None,
    };
    for (_, node) in c.live() {
        node.transport().set_loss(a.loss);
    }
    let before = stack_sums(&c, &REPAIR_COUNTERS).await;
    let bytes0 = total_bytes(&c).await;
    let readers: Vec<_> = subs
        .into_iter()
        .map(|s| tokio::spawn(collect(s, a.messages, base, None)))
        .collect();
    let stop = Arc::new(tokio::sync::Notify::new());
    let slow_reader = slow_sub.map(|s| {
        let how = slow.map(|rate| Slow {
            rate,
            stop: stop.clone(),
        });
        tokio::spawn(collect(s, a.messages, base, how))
    });

    let start = Instant::now();
    let (messages, size, rate) = (a.messages, a.size, a.rate);
    let backpressure = tokio::spawn(publish_all(publisher, messages, size, rate, base, start))
        .await
        .map_err(failed)??;
    let published = start.elapsed().as_secs_f64();
    let mut tallies = Vec::with_capacity(n);
    let mut kept = Vec::with_capacity(n);
    for r in readers {
        let (t, sub) = r.await.map_err(failed)?;
        tallies.push(t);
        kept.push(sub);
    }
    // The slow one is not waited for beyond the others.
    stop.notify_one();
    let slow_tally = match slow_reader {
        Some(r) => Some(r.await.map_err(failed)?),
        None => None,
    };
    for (_, node) in c.live() {
        node.transport().set_loss(0.0);
    }
    let bytes = total_bytes(&c).await.saturating_sub(bytes0);
    let after = stack_sums(&c, &REPAIR_COUNTERS).await;
    if tracing::enabled!(tracing::Level::DEBUG) {
        for (i, n) in c.live() {
            let cs = dds::stack_counters(&n.handle(), CHANNEL.into()).await;
            tracing::debug!(agent = i, counters = ?cs, "stack counters after the run");
            if let Ok(st) = n.handle().status().await {
                let net: Vec<_> = st
                    .counters
                    .iter()
                    .filter(|(k, v)| **v > 0 && k.starts_with("net_"))
                    .collect();
                let refused = &st.rejected;
                tracing::debug!(
                    agent = i,
                    ?net,
                    ?refused,
                    "transport counters after the run"
                );
            }
        }
    }
    drop(kept);
    churn.stop();
    c.shutdown().await;
    let d: Vec<u64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let s = summarize(&tallies);
    let secs = s
        .last
        .map_or(f64::NAN, |t| t.duration_since(start).as_secs_f64());
    let within: u64 = d[1..5].iter().sum();
    Ok(Figures {
        subscribers: n,
        mode: if slow.is_some() { "dds_slow" } else { "dds" },
        stack: a.stack.clone(),
        size: a.size,
        messages: a.messages,
        rate: a.rate,
        loss: a.loss,
        secure: a.cluster.secure,
        msgs_per_s: a.messages as f64 / secs,
        publish_per_s: a.messages as f64 / published,
        repaired: d[0],
        repaired_within_100ms: if d[0] == 0 {
            1.0
        } else {
            within as f64 / d[0] as f64
        },
        requests_per_subscriber: d[5] as f64 / n as f64,
        bytes_per_subscriber: bytes as f64 / n as f64,
        backpressure,
        slow_read: slow_tally.as_ref().map_or(0, |(t, _)| t.read),
        slow_missed: slow_tally.as_ref().map_or(0, |(t, _)| t.missed),
        delivery: s,
    })
}

/// The plain fan-out's subscriber: reads length-prefixed messages from
/// the first stream of the first connection.
async fn quic_subscriber(ep: quinn::Endpoint, messages: u64, base: Instant) -> Tally {
    let mut t = Tally::new(messages);
    let read = async {
        let conn = ep.accept().await?.await.ok()?;
        let mut s = conn.accept_uni().await.ok()?;
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.ok()?;
            let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
            s.read_exact(&mut buf).await.ok()?;
            if t.note(&buf, base) {
                return Some(());
            }
        }
    };
    let _ = tokio::time::timeout(IDLE * 3, read).await;
    t
}

/// The baseline: one endpoint sends every message to `n` endpoints, one
/// stream and one bounded queue each.
async fn quic(a: &DdsBenchArgs, n: usize) -> Result<Figures, CliError> {
    let (server, client) = armillary_agent::node::tls::configs().map_err(failed)?;
    let local: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let base = Instant::now();
    let mut readers = Vec::with_capacity(n);
    let mut addrs = Vec::with_capacity(n);
    let mut endpoints = Vec::with_capacity(n + 1);
    for _ in 0..n {
        let ep = quinn::Endpoint::server(server.clone(), local).map_err(failed)?;
        addrs.push(ep.local_addr().map_err(failed)?);
        endpoints.push(ep.clone());
        readers.push(tokio::spawn(quic_subscriber(ep, a.messages, base)));
    }
    let mut publisher = quinn::Endpoint::client(local).map_err(failed)?;
    publisher.set_default_client_config(client);
    endpoints.push(publisher.clone());
    let mut queues = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    let mut conns = Vec::with_capacity(n);
    for addr in addrs {
        let conn = publisher
            .connect(addr, armillary_agent::node::tls::SERVER_NAME)
            .map_err(failed)?
            .await
            .map_err(failed)?;
        let mut s = conn.open_uni().await.map_err(failed)?;
        conns.push(conn.clone());
        let (tx, mut rx) = mpsc::channel::<Arc<Vec<u8>>>(QUEUE);
        queues.push(tx);
        writers.push(tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let len = (m.len() as u32).to_le_bytes();
                if s.write_all(&len).await.is_err() || s.write_all(&m).await.is_err() {
                    break;
                }
            }
            let _ = s.finish();
            // The connection lives until the subscriber has read it all.
            let _ = conn.closed().await;
        }));
    }
    let start = Instant::now();
    // The publisher is a task of its own, as in the DDS runs.
    let (messages, size, rate) = (a.messages, a.size, a.rate);
    tokio::spawn(async move {
        for i in 0..messages {
            pace(start, i, rate).await;
            let m = Arc::new(message(i, base, size));
            for q in &queues {
                q.send(m.clone()).await.map_err(failed)?;
            }
        }
        Ok::<_, CliError>(())
    })
    .await
    .map_err(failed)??;
    let published = start.elapsed().as_secs_f64();
    let mut tallies = Vec::with_capacity(n);
    for r in readers {
        tallies.push(r.await.map_err(failed)?);
    }
    let bytes: u64 = conns.iter().map(|c| c.stats().udp_tx.bytes).sum();
    for w in writers {
        w.abort();
    }
    for ep in endpoints {
        ep.close(0u32.into(), b"done");
    }
    let s = summarize(&tallies);
    let secs = s
        .last
        .map_or(f64::NAN, |t| t.duration_since(start).as_secs_f64());
    Ok(Figures {
        subscribers: n,
        mode: "quic",
        stack: "-".into(),
        size: a.size,
        messages: a.messages,
        rate: a.rate,
        loss: 0.0,
        secure: false,
        msgs_per_s: a.messages as f64 / secs,
        publish_per_s: a.messages as f64 / published,
        repaired: 0,
        repaired_within_100ms: 1.0,
        requests_per_subscriber: 0.0,
        bytes_per_subscriber: bytes as f64 / n as f64,
        backpressure: 0,
        slow_read: 0,
        slow_missed: 0,
        delivery: s,
    })
}
