//! `armillary crm kv ...`: the client of a group's replicated key-value
//! store. A client has an id and numbers its requests; when the member it
//! uses fails (no answer, not serving, gone) it retries the same request,
//! with the same id and number, at the next of `--endpoints`, so the group
//! runs it once whichever member took it.

use crate::client::{ApiArgs, Client, block_on};
use crate::output::{CliError, CliResult, print_json};
use armillary_agent::crm::proto::{KvOp, KvReply, KvValue};
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;
use std::io::Write;
use std::time::{Duration, Instant};

/// How long one operation may take, all retries together.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct KvArgs {
    group: String,
    #[command(subcommand)]
    op: KvCommand,
    /// Agent API addresses of the group's members, tried in this order
    /// [default: --api].
    #[arg(long, value_delimiter = ',', global = true, value_name = "A,B,C")]
    endpoints: Vec<String>,
    /// One JSON object: {"value": ..}, or {"ok": .., "value": ..} for cas.
    #[arg(long, global = true)]
    json: bool,
    /// The agent's HTTP API when --endpoints is not given.
    #[arg(long = "api", env = "ARMILLARY_API", default_value = crate::client::DEFAULT_API, value_name = "ADDR", global = true)]
    api: String,
    /// A file holding the API's bearer token.
    #[arg(long = "api-token-file", value_name = "FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
    /// Reads KEY (null when unset).
    Get { key: String },
    /// Adds N (default 1) to the integer at KEY (0 when unset).
    Incr {
        key: String,
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
    },
    /// Sets KEY to NEW if it holds OLD.
    Cas {
        key: String,
        old: String,
        new: String,
    },
    /// Runs --ops operations from --clients clients at once, each client
    /// one request at a time, and prints throughput, latency and failovers.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// `incr` (every operation increments one counter: the final value
    /// must equal the operations acknowledged) or `mix` (get, put, incr
    /// and cas over 64 keys).
    #[arg(long, default_value = "incr")]
    workload: String,
    /// Writes every call (invocation and reply times in µs, op, reply)
    /// as JSON lines, for a linearizability check.
    #[arg(long, value_name = "FILE")]
    history: Option<std::path::PathBuf>,
}

pub fn run(a: KvArgs) -> CliResult {
    armillary_agent::crm::proto::check_name(&a.group)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let clients = endpoints(
        &a.endpoints,
        &ApiArgs {
            api: a.api.clone(),
            token_file: a.token_file.clone(),
        },
    )?;
    let op = match a.op {
        KvCommand::Bench(b) => return bench(a.group, clients, b, a.json),
        KvCommand::Put { key, value } => KvOp::Put { key, value },
        KvCommand::Get { key } => KvOp::Get { key },
        KvCommand::Incr { key, by } => KvOp::Incr { key, by },
        KvCommand::Cas { key, old, new } => KvOp::Cas { key, old, new },
    };
    op.check().map_err(|e| CliError::usage(e.to_string()))?;
    block_on(async move {
        let mut c = KvClient::new(a.group, clients);
        let reply = c.call(&op).await?;
        if a.json {
            return print_json(&reply);
        }
        match reply {
            KvReply::Value { value } => println!("{}", shown(&value)),
            KvReply::Cas { ok, value } => {
                println!(
                    "{}  {}",
                    if ok { "swapped" } else { "not swapped" },
                    shown(&value)
                )
            }
            KvReply::Error { error } => return Err(CliError::failed(error)),
        }
        Ok(())
    })
}

/// Clients of `list`, or of `api` alone when the list is empty.
pub fn endpoints(list: &[String], api: &ApiArgs) -> Result<Vec<Client>, CliError> {
    if list.is_empty() {
        return Ok(vec![Client::new(api)?]);
    }
    list.iter()
        .map(|e| {
            Client::new(&ApiArgs {
                api: e.clone(),
                token_file: api.token_file.clone(),
            })
        })
        .collect()
}

fn shown(v: &Option<KvValue>) -> String {
    match v {
        None => "(unset)".into(),
        Some(KvValue::Int(n)) => n.to_string(),
        Some(KvValue::Text(t)) => t.clone(),
    }
}

/// One client: its id, its request numbers, where it sends.
pub struct KvClient {
    group: String,
    endpoints: Vec<Client>,
    at: usize,
    id: u64,
    seq: u64,
    pub failovers: u64,
}

impl KvClient {
    pub fn new(group: String, endpoints: Vec<Client>) -> KvClient {
        KvClient {
            group,
            endpoints,
            at: 0,
            id: rand::random::<u64>() >> 1,
            seq: 0,
            failovers: 0,
        }
    }

    /// Runs `op` once in the group: the same request goes to one member
    /// after the other until one answers. A refusal by the store is a reply.
    pub async fn call(&mut self, op: &KvOp) -> Result<KvReply, CliError> {
        let fields = serde_json::to_value(op)
            .map_err(|_| CliError::failed("an operation did not encode"))?;
        let text = self.call_route("kv", fields).await?;
        serde_json::from_str(&text)
            .map_err(|e| CliError::failed(format!("a reply that is not the store's ({e}): {text}")))
    }

    /// Sends the request `fields` (with the client's id and next number)
    /// to the group's `route`, failing over as [`KvClient::call`] does;
    /// gives the reply's text (a success, or the service's refusal, 422).
    pub async fn call_route(&mut self, route: &str, fields: Value) -> Result<String, CliError> {
        self.seq += 1;
        let Value::Object(mut body) = fields else {
            return Err(CliError::failed("a request is a JSON object"));
        };
        body.insert("client".into(), self.id.into());
        body.insert("seq".into(), self.seq.into());
        let body = Value::Object(body).to_string();
        let end = Instant::now() + PATIENCE;
        let mut last = String::new();
        let mut tried = 0;
        // Rounds in a row where no member could even be reached.
        let (mut unreachable, mut round_unreachable) = (0, true);
        while Instant::now() < end && unreachable < 3 {
            let c = &self.endpoints[self.at];
            match c
                .send(
                    Method::POST,
                    &["v1", "crm", "groups", &self.group, route],
                    &[],
                    Some(body.clone()),
                )
                .await
            {
                Ok((s, text)) if s.is_success() || s == StatusCode::UNPROCESSABLE_ENTITY => {
                    return Ok(text);
                }
                Ok((s, text))
                    if s == StatusCode::BAD_REQUEST || s == StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    return Err(CliError::usage(error_text(&text)));
                }
                Ok((s, text)) => {
                    round_unreachable = false;
                    last = format!("{s}: {}", error_text(&text));
                }
                Err(e) => last = e.to_string(),
            }
            // Not answered there: the next member, the same request.
            self.failovers += 1;
            tried += 1;
            self.at = (self.at + 1) % self.endpoints.len();
            if tried % self.endpoints.len() == 0 {
                unreachable = if round_unreachable {
                    unreachable + 1
                } else {
                    0
                };
                round_unreachable = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(CliError::failed(format!(
            "no member of {} answered (last: {last}); are a majority of its members up, and do --endpoints name them?",
            self.group,
        )))
    }
}

fn error_text(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.chars().take(300).collect())
}

/// One call as the history file keeps it.
#[derive(Serialize)]
struct Call<'a> {
    client: u64,
    invoke: u64,
    complete: Option<u64>,
    op: &'a KvOp,
    ret: Option<&'a KvReply>,
}

#[derive(Serialize)]
struct Figures {
    ops: u64,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    failovers: u64,
    /// The longest a single operation took: the stall a client saw.
    max_ms: f64,
    /// Operations that got no reply in time (not acknowledged).
    errors: u64,
    clients: u64,
    workload: String,
}

fn bench(group: String, endpoints: Vec<Client>, b: BenchArgs, json: bool) -> CliResult {
    if b.clients == 0 || b.ops == 0 {
        return Err(CliError::usage("--ops and --clients must be at least 1"));
    }
    if b.workload != "incr" && b.workload != "mix" {
        return Err(CliError::usage(format!(
            "unknown workload {:?}: give incr or mix",
            b.workload
        )));
    }
    let history = match &b.history {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| {
            CliError::usage(format!("cannot write the history to {}: {e}", p.display()))
        })?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let endpoints = std::sync::Arc::new(endpoints);
    let start = Instant::now();
    let us = move || start.elapsed().as_micros() as u64;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut lat, mut failovers, mut errors, mut lines) = (Vec::new(), 0, 0, Vec::new());
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..b.clients {
            let n = b.ops / b.clients + u64::from(c < b.ops % b.clients);
            let endpoints = endpoints.clone();
            let group = group.clone();
            let mix = b.workload == "mix";
            let done = done.clone();
            let keep = history.is_some();
            tasks.push(tokio::spawn(async move {
                let mut kv = KvClient::new(group, endpoints.to_vec());
                let (mut lat, mut errors, mut lines) = (Vec::new(), 0u64, Vec::new());
                for i in 0..n {
                    let op = workload(mix, c, i);
                    let t0 = us();
                    let r = kv.call(&op).await;
                    let t1 = us();
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match &r {
                        Ok(_) => lat.push((t1 - t0) as f64 / 1000.0),
                        Err(_) => errors += 1,
                    }
                    if keep {
                        let ret = r.as_ref().ok();
                        let line = serde_json::to_string(&Call {
                            client: kv.id,
                            invoke: t0,
                            complete: ret.map(|_| t1),
                            op: &op,
                            ret,
                        })
                        .unwrap_or_default();
                        lines.push(line);
                    }
                }
                (lat, kv.failovers, errors, lines)
            }));
        }
        let total = b.ops;
        let done2 = done.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                eprintln!(
                    "... {} of {total} operations",
                    done2.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
        });
        for t in tasks {
            if let Ok((l, f, e, h)) = t.await {
                lat.extend(l);
                failovers += f;
                errors += e;
                lines.extend(h);
            }
        }
        ticker.abort();
    });
    let secs = start.elapsed().as_secs_f64();
    if let Some(mut f) = history {
        for l in &lines {
            writeln!(f, "{l}")
                .map_err(|e| CliError::failed(format!("writing the history: {e}")))?;
        }
    }
    let acked = lat.len() as u64;
    let max_ms = lat.iter().cloned().fold(0.0, f64::max);
    let fig = Figures {
        ops: acked,
        ops_per_s: acked as f64 / secs,
        p50_ms: super::bench_chm::quantile(&mut lat, 0.5),
        p99_ms: super::bench_chm::quantile(&mut lat, 0.99),
        failovers,
        max_ms,
        errors,
        clients: b.clients,
        workload: b.workload,
    };
    if json {
        return print_json(&fig);
    }
    println!(
        "{} ops acknowledged ({} without a reply) from {} clients in {secs:.1} s: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, longest {:.0} ms, {} failovers",
        fig.ops,
        fig.errors,
        fig.clients,
        fig.ops_per_s,
        fig.p50_ms,
        fig.p99_ms,
        fig.max_ms,
        fig.failovers
    );
    Ok(())
}

/// The `i`-th operation of client `c`.
fn workload(mix: bool, c: u64, i: u64) -> KvOp {
    if !mix {
        return KvOp::Incr {
            key: "bench".into(),
            by: 1,
        };
    }
    let key = format!("k{}", (c * 7919 + i * 104_729) % 64);
    match i % 4 {
        0 => KvOp::Get { key },
        1 => KvOp::Put {
            key,
            value: format!("{c}-{i}"),
        },
        2 => KvOp::Incr {
            key: format!("n{key}"),
            by: 1,
        },
        _ => KvOp::Cas {
            key,
            old: format!("{c}-{}", i - 2),
            new: format!("{c}-{i}"),
        },
    }
}
