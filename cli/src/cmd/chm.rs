//! `armillary chm ...`: component health monitoring. Components register
//! with the agent at `--api`, which checks them; any agent looks them up.

use crate::client::{ApiArgs, Client, block_on};
use crate::cmd::IdArgs;
use crate::cmd::watch::{Flow, Lines, MAX_EVENT, read_events};
use crate::output::{CliError, CliResult, print_json};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ChmCommand {
    /// Register a component with this agent (or replace its registration).
    Register(RegisterArgs),
    /// A TTL component's heartbeat.
    Heartbeat(HeartbeatArgs),
    /// Remove a component from this agent.
    Deregister(IdArgs),
    /// Put a component in maintenance (critical, with a reason) or take it out.
    Maint(MaintArgs),
    /// Where a component runs and how it is, from anywhere in the tree.
    Lookup(LookupArgs),
    /// The components of a zone [default: this agent's leaf zone].
    List(ListArgs),
    /// The passing providers of a keyword, nearest zone first.
    Providers(ProvidersArgs),
    /// One line per status change.
    Watch(ChmWatchArgs),
    /// Report per-call timestamps of a provider for QoS diagnosis.
    Qos(QosArgs),
}

pub fn run(c: ChmCommand) -> CliResult {
    match c {
        ChmCommand::Register(a) => register(a),
        ChmCommand::Heartbeat(a) => heartbeat(a),
        ChmCommand::Deregister(a) => deregister(a),
        ChmCommand::Maint(a) => maint(a),
        ChmCommand::Lookup(a) => lookup(a),
        ChmCommand::List(a) => list(a),
        ChmCommand::Providers(a) => providers(a),
        ChmCommand::Watch(a) => watch(a),
        ChmCommand::Qos(a) => qos(a),
    }
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("check").required(true).args(["http", "tcp", "cmd", "ttl"]))]
pub struct RegisterArgs {
    /// Component id: lower-case letters, digits, '.', '_' and '-'.
    id: String,
    /// Check by GET: 2xx passing, 429 warning, anything else critical.
    #[arg(long, value_name = "URL")]
    http: Option<String>,
    /// Check by opening a TCP connection.
    #[arg(long, value_name = "HOST:PORT")]
    tcp: Option<String>,
    /// Check by running a command: exit 0 passing, 1 warning, other critical.
    #[arg(long, value_name = "CMD")]
    cmd: Option<String>,
    /// The component sends heartbeats (`chm heartbeat`) at least this often.
    #[arg(long, value_name = "DUR")]
    ttl: Option<humantime::Duration>,
    /// Time between checks [default: 10s].
    #[arg(long, value_name = "DUR")]
    interval: Option<humantime::Duration>,
    /// How long one check may take [default: 5s].
    #[arg(long, value_name = "DUR")]
    timeout: Option<humantime::Duration>,
    /// A keyword providers are found by (repeatable).
    #[arg(long = "keyword", value_name = "WORD")]
    keywords: Vec<String>,
    /// Where clients reach the component.
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    /// Consecutive failures before critical [default: 1].
    #[arg(long, value_name = "N")]
    failures_before_critical: Option<u32>,
    /// Consecutive successes before passing [default: 1].
    #[arg(long, value_name = "N")]
    successes_before_passing: Option<u32>,
    /// Deregister the component once it has been critical this long.
    #[arg(long, value_name = "DUR")]
    deregister_after: Option<humantime::Duration>,
    /// Agree its verdicts in a group of the agents interested in it (its
    /// own and its watchers', up to 5): every member sees the same
    /// (epoch, status) sequence, and a minority side issues none.
    #[arg(long)]
    consensus: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn dur(d: &humantime::Duration) -> Value {
    json!(d.to_string())
}

fn register(a: RegisterArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    let mut body = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        body.insert(k.into(), v);
    };
    if let Some(u) = &a.http {
        put("http", json!(u));
    }
    if let Some(t) = &a.tcp {
        put("tcp", json!(t));
    }
    if let Some(c) = &a.cmd {
        put("cmd", json!(c));
    }
    if let Some(t) = &a.ttl {
        put("ttl", dur(t));
    }
    if let Some(i) = &a.interval {
        put("interval", dur(i));
    }
    if let Some(t) = &a.timeout {
        put("timeout", dur(t));
    }
    if !a.keywords.is_empty() {
        put("keywords", json!(a.keywords));
    }
    if let Some(x) = &a.address {
        put("address", json!(x));
    }
    if let Some(n) = a.failures_before_critical {
        put("failures_before_critical", json!(n));
    }
    if let Some(n) = a.successes_before_passing {
        put("successes_before_passing", json!(n));
    }
    if let Some(d) = &a.deregister_after {
        put("deregister_after", dur(d));
    }
    if a.consensus {
        put("consensus", json!(true));
    }
    let body = Value::Object(body).to_string();
    block_on(async move {
        client
            .call(
                Method::PUT,
                &["v1", "chm", "components", &a.id],
                &[],
                Some(body),
            )
            .await?;
        if a.consensus {
            eprintln!("registered {} (consensus level)", a.id);
        } else {
            eprintln!("registered {}", a.id);
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct HeartbeatArgs {
    id: String,
    /// The status the component reports.
    #[arg(long, default_value = "passing", value_parser = ["passing", "warning", "critical"])]
    status: String,
    /// Text kept as the check's output (the reason when the status changes).
    #[arg(long, value_name = "TEXT", default_value = "")]
    output: String,
    #[command(flatten)]
    api: ApiArgs,
}

fn heartbeat(a: HeartbeatArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    let body = json!({ "status": a.status, "output": a.output }).to_string();
    block_on(async move {
        client
            .call(
                Method::PUT,
                &["v1", "chm", "components", &a.id, "heartbeat"],
                &[],
                Some(body),
            )
            .await?;
        Ok(())
    })
}

fn deregister(a: IdArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        client
            .call(
                Method::DELETE,
                &["v1", "chm", "components", &a.id],
                &[],
                None,
            )
            .await?;
        eprintln!("deregistered {}", a.id);
        Ok(())
    })
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("mode").required(true).args(["enable", "disable"]))]
pub struct MaintArgs {
    id: String,
    /// Put the component in maintenance: reported critical with the reason.
    #[arg(long)]
    enable: bool,
    /// Why (with --enable).
    #[arg(long, value_name = "TEXT", requires = "enable")]
    reason: Option<String>,
    /// Take the component out of maintenance.
    #[arg(long)]
    disable: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn maint(a: MaintArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    let body = json!({ "enable": a.enable, "reason": a.reason }).to_string();
    block_on(async move {
        client
            .call(
                Method::PUT,
                &["v1", "chm", "components", &a.id, "maint"],
                &[],
                Some(body),
            )
            .await?;
        Ok(())
    })
}

#[derive(Args)]
pub struct LookupArgs {
    id: String,
    /// One JSON object: id, status, reason, zone, since, observers, age_s,
    /// keywords, address, qos.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn qos_text(q: &Value) -> String {
    format!(
        "{} ({:.1}% outliers, {} samples)",
        text(&q["level"]),
        q["outlier_ratio"].as_f64().unwrap_or(0.0) * 100.0,
        q["samples"]
    )
}

fn lookup(a: LookupArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let r = client.chm_lookup(&a.id).await?;
        if a.json {
            return print_json(&r);
        }
        let level = match r.epoch {
            Some(e) => format!("consensus, epoch {e}"),
            None => "weak".into(),
        };
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(",")
            }
        };
        println!("{}  {}  since {}  ({level})", r.id, r.status, r.since);
        println!("  reason:    {}", r.reason);
        println!("  zone:      {} (agent {})", r.zone, r.agent);
        println!("  address:   {}", r.address.as_deref().unwrap_or("-"));
        println!("  keywords:  {}", list(&r.keywords));
        println!("  observers: {} ({:.1}s old)", list(&r.observers), r.age_s);
        println!(
            "  qos:       {} ({:.1}% outliers, {} samples)",
            r.qos.level,
            r.qos.outlier_ratio * 100.0,
            r.qos.samples
        );
        Ok(())
    })
}

#[derive(Args)]
pub struct ListArgs {
    /// The zone [default: this agent's leaf zone].
    zone: Option<String>,
    /// Only components with this status.
    #[arg(long, value_parser = ["passing", "warning", "critical"])]
    status: Option<String>,
    /// A JSON array of objects as `lookup --json` prints.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn table(rows: &[Value]) {
    let cols = ["id", "status", "zone", "address", "reason"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| text(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([cols[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |r: Vec<String>| {
        let mut s = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
    for r in cells {
        println!("{}", line(r));
    }
}

fn list(a: ListArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(z) = &a.zone {
            q.push(("zone", z));
        }
        if let Some(s) = &a.status {
            q.push(("status", s));
        }
        let r = client.get(&["v1", "chm", "list"], &q).await?;
        let rows = r["components"].as_array().cloned().unwrap_or_default();
        if a.json {
            return print_json(&rows);
        }
        table(&rows);
        if r["complete"] == false {
            eprintln!(
                "note: some zones did not answer or the listing reached its limit; the list may be incomplete"
            );
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct ProvidersArgs {
    keyword: String,
    /// At most this many.
    #[arg(long, default_value_t = 16)]
    limit: usize,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn providers(a: ProvidersArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let limit = a.limit.to_string();
        let r = client
            .get(
                &["v1", "chm", "providers", &a.keyword],
                &[("limit", &limit)],
            )
            .await?;
        let rows = r.as_array().cloned().unwrap_or_default();
        if a.json {
            return print_json(&rows);
        }
        if rows.is_empty() {
            eprintln!("no passing provider of {}", a.keyword);
            return Ok(());
        }
        for r in &rows {
            println!(
                "{}  {}  {}  qos {}",
                text(&r["id"]),
                text(&r["zone"]),
                text(&r["address"]),
                text(&r["qos"]["level"])
            );
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct ChmWatchArgs {
    /// A component id, or a zone (starting with '/') [default: every
    /// component of this agent's leaf zone].
    target: Option<String>,
    /// Stop after this many changes.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// One {"id","status","previous","time","zone"} object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn watch(a: ChmWatchArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let mut q: Vec<(&str, &str)> = Vec::new();
        match &a.target {
            Some(t) if t.starts_with('/') => q.push(("zone", t)),
            Some(t) => q.push(("id", t)),
            None => {}
        }
        let mut lines = Lines::new(a.count);
        let mut resp = client.stream(&["v1", "chm", "watch"], &q).await?;
        loop {
            match read_events(resp, MAX_EVENT, |name, d| {
                on_change(&a, &mut lines, name, d)
            })
            .await
            {
                Ok(()) => return Ok(()),
                // Bad input stays bad; anything else is the agent gone.
                Err(e) if e.exit_code() == 2 => return Err(e),
                Err(e) => eprintln!("note: {e}; reconnecting"),
            }
            // The agent restarts (nothing of a watch is on disk): watch
            // again once it answers, which also brings this agent back
            // into a consensus component's group.
            resp = loop {
                tokio::time::sleep(RECONNECT).await;
                match client.stream(&["v1", "chm", "watch"], &q).await {
                    Ok(r) => break r,
                    Err(e) if e.is_bad_input() => return Err(e.into()),
                    Err(_) => {}
                }
            };
            eprintln!("note: watching again");
        }
    })
}

/// How often a watch whose agent went away tries it again.
const RECONNECT: std::time::Duration = std::time::Duration::from_millis(500);

/// Prints one event of a watch.
fn on_change(a: &ChmWatchArgs, lines: &mut Lines, name: &str, d: &Value) -> Result<Flow, CliError> {
    match name {
        "status" => {
            let consensus = d["level"] == "consensus";
            let line = if a.json {
                let mut v = json!({
                    "id": d["id"], "status": d["status"], "previous": d["previous"],
                    "time": d["time"], "zone": d["zone"],
                    "level": if consensus { "consensus" } else { "weak" },
                });
                if consensus {
                    v["epoch"] = d["epoch"].clone();
                }
                v.to_string()
            } else {
                let epoch = if consensus {
                    format!("epoch {}  ", d["epoch"])
                } else {
                    String::new()
                };
                format!(
                    "{}  {}  {epoch}{} -> {}  {}  {}",
                    text(&d["time"]),
                    text(&d["id"]),
                    text(&d["previous"]),
                    text(&d["status"]),
                    text(&d["zone"]),
                    text(&d["reason"])
                )
            };
            return Ok(lines.print(&line));
        }
        "lagged" => eprintln!("note: missed {} changes (too slow)", d["missed"]),
        "minority" => eprintln!(
            "note: this agent's side of the consensus group has no majority: no verdicts until it heals"
        ),
        _ => {}
    }
    Ok(Flow::More)
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("samples").required(true).args(["t1", "file"]))]
pub struct QosArgs {
    /// The provider's component id.
    id: String,
    /// The consumer sent the request (µs, consumer's clock).
    #[arg(long, requires_all = ["t2", "t3", "t4"], allow_hyphen_values = true)]
    t1: Option<i64>,
    /// The provider received it (µs, provider's clock).
    #[arg(long, allow_hyphen_values = true)]
    t2: Option<i64>,
    /// The provider sent the reply (µs, provider's clock).
    #[arg(long, allow_hyphen_values = true)]
    t3: Option<i64>,
    /// The consumer received the reply (µs, consumer's clock).
    #[arg(long, allow_hyphen_values = true)]
    t4: Option<i64>,
    /// JSON lines {"t1":..,"t2":..,"t3":..,"t4":..}.
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Samples sent in one request.
const BATCH: usize = 1000;

fn read_samples(path: &PathBuf) -> Result<Vec<Value>, CliError> {
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| CliError::usage(format!("{}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| CliError::usage(format!("{} line {}: {e}", path.display(), n + 1)))?;
        let ok = ["t1", "t2", "t3", "t4"].iter().all(|k| v[*k].is_i64());
        if !ok {
            return Err(CliError::usage(format!(
                "{} line {}: give {{\"t1\":..,\"t2\":..,\"t3\":..,\"t4\":..}} in integer microseconds",
                path.display(),
                n + 1
            )));
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err(CliError::usage(format!(
            "{} holds no samples",
            path.display()
        )));
    }
    Ok(out)
}

fn qos(a: QosArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    let samples = match &a.file {
        Some(f) => read_samples(f)?,
        None => vec![json!({ "t1": a.t1, "t2": a.t2, "t3": a.t3, "t4": a.t4 })],
    };
    block_on(async move {
        let mut last = Value::Null;
        for chunk in samples.chunks(BATCH) {
            let body = json!({ "samples": chunk }).to_string();
            last = client
                .call(
                    Method::POST,
                    &["v1", "chm", "components", &a.id, "qos"],
                    &[],
                    Some(body),
                )
                .await?;
        }
        if a.json {
            return print_json(&last["qos"]);
        }
        println!("{}: {}", a.id, qos_text(&last["qos"]));
        Ok(())
    })
}
