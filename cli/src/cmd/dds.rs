//! `armillary dds ...`: reliable multicast channels. A channel is created
//! at one agent with its layer stack; any agent publishes on it and
//! subscribes to it through its own API.

use crate::client::{ApiArgs, Client, block_on};
use crate::cmd::watch::{Flow, Lines, read_events};
use crate::output::{CliError, CliResult, print_json};
use base64::Engine;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use std::io::BufRead;
use std::path::PathBuf;

/// Largest message event: a 16 MiB message as base64 in its JSON object.
const MAX_MESSAGE_EVENT: usize = 24 << 20;
/// How long a publish waits out the channel's backpressure.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Subcommand)]
pub enum DdsCommand {
    /// Create a channel coordinated by this agent.
    Create(CreateArgs),
    /// The channels this agent knows.
    Channels(ChannelsArgs),
    /// Publish messages on a channel.
    Publish(PublishArgs),
    /// Print a channel's messages as they arrive.
    Subscribe(SubscribeArgs),
    /// Throughput, latency and repairs over QUIC on loopback, against a
    /// plain QUIC fan-out.
    Bench(super::dds_bench::DdsBenchArgs),
}

pub fn run(c: DdsCommand) -> CliResult {
    match c {
        DdsCommand::Create(a) => create(a),
        DdsCommand::Channels(a) => channels(a),
        DdsCommand::Publish(a) => publish(a),
        DdsCommand::Subscribe(a) => subscribe(a),
        DdsCommand::Bench(a) => super::dds_bench::run(a),
    }
}

#[derive(Args)]
pub struct CreateArgs {
    channel: String,
    /// Layers top to bottom, e.g. sign:encrypt:fifo:frag:nak.
    #[arg(long, value_name = "SPEC")]
    stack: String,
    /// The zone the channel lives in [default: /].
    #[arg(long, value_name = "Z")]
    zone: Option<String>,
    /// Messages kept for late subscribers (`subscribe --from-start`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    retain: u32,
    /// What a subscriber that falls behind gets: skip (misses the oldest,
    /// told how many) or drop (closed).
    #[arg(long, default_value = "skip")]
    policy: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn create(a: CreateArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let mut body =
            json!({"name": a.channel, "stack": a.stack, "retain": a.retain, "policy": a.policy});
        if let Some(z) = &a.zone {
            body["zone"] = json!(z);
        }
        let c = client
            .call(
                Method::POST,
                &["v1", "dds", "channels"],
                &[],
                Some(body.to_string()),
            )
            .await?;
        if a.json {
            return print_json(&c);
        }
        println!(
            "created {} in {} with {} (retain {}, policy {})",
            text(&c["name"]),
            text(&c["zone"]),
            text(&c["stack"]),
            c["retain"],
            text(&c["policy"])
        );
        Ok(())
    })
}

#[derive(Args)]
pub struct ChannelsArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn channels(a: ChannelsArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let cs = client.get(&["v1", "dds", "channels"], &[]).await?;
        if a.json {
            return print_json(&cs);
        }
        let list = cs.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("no channels");
        }
        for c in list {
            println!(
                "{:<24} {:<16} {:<40} retain {:<5} {:<5} coordinator {}",
                text(&c["name"]),
                text(&c["zone"]),
                text(&c["stack"]),
                c["retain"],
                text(&c["policy"]),
                text(&c["coordinator"])
            );
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct PublishArgs {
    channel: String,
    /// The message; without it (and without --file), one message per line
    /// of standard input.
    #[arg(conflicts_with = "file")]
    data: Option<String>,
    /// Publish this file's content as one message (binary is fine).
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

/// One message as the publish body takes it: text as it is, else base64.
fn message_json(data: &[u8]) -> Value {
    match std::str::from_utf8(data) {
        Ok(t) => json!({ "data": t }),
        Err(_) => json!({
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "encoding": "base64",
        }),
    }
}

/// Lines of standard input sent in one request at most, and their bytes.
const BATCH_LINES: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;

/// Reads standard input on a thread of its own, a line at a time, so that
/// the lines already typed or piped go in one request and a line typed
/// alone goes at once.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(BATCH_LINES);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn publish(a: PublishArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    let one: Option<Vec<u8>> = match (&a.data, &a.file) {
        (Some(d), _) => Some(d.clone().into_bytes()),
        (None, Some(f)) => Some(
            std::fs::read(f)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", f.display())))?,
        ),
        (None, None) => None,
    };
    block_on(async move {
        let path = ["v1", "dds", "channels", &a.channel, "messages"];
        // A publisher held back by the channel's flow control gets 503
        // and waits.
        let post = |body: String| client.call_when_ready(Method::POST, &path, body, PATIENCE);
        if let Some(d) = one {
            post(message_json(&d).to_string()).await?;
            return Ok(());
        }
        let mut lines = stdin_lines();
        let read = |r: std::io::Result<String>| {
            r.map_err(|e| CliError::failed(format!("cannot read standard input: {e}")))
        };
        while let Some(first) = lines.recv().await {
            let first = read(first)?;
            let mut bytes = first.len();
            let mut batch = vec![message_json(first.as_bytes())];
            while batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
                match lines.try_recv() {
                    Ok(l) => {
                        let l = read(l)?;
                        bytes += l.len();
                        batch.push(message_json(l.as_bytes()));
                    }
                    Err(_) => break,
                }
            }
            // The agent takes what its flow control lets through, in
            // order; the rest is offered again.
            while !batch.is_empty() {
                let body = json!({ "messages": batch }).to_string();
                let r = post(body).await?;
                let taken = match r["published"].as_u64() {
                    Some(k) if k > 0 => (k as usize).min(batch.len()),
                    _ => return Err(CliError::failed(format!("the agent took no message: {r}"))),
                };
                batch.drain(..taken);
            }
        }
        Ok(())
    })
}

#[derive(Args)]
pub struct SubscribeArgs {
    channel: String,
    /// Stop after N messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Start with the messages the channel retains.
    #[arg(long)]
    from_start: bool,
    /// One {"channel","seq","from","data"} per message.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn subscribe(a: SubscribeArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let q: Vec<(&str, &str)> = if a.from_start {
            vec![("from_start", "true")]
        } else {
            Vec::new()
        };
        let resp = client
            .stream(&["v1", "dds", "channels", &a.channel, "subscribe"], &q)
            .await?;
        let mut lines = Lines::new(a.count);
        read_events(resp, MAX_MESSAGE_EVENT, |name, d| {
            match name {
                "message" => {
                    let line = if a.json {
                        d.to_string()
                    } else {
                        format!("{}  {}  {}", d["seq"], text(&d["from"]), text(&d["data"]))
                    };
                    return Ok(lines.print(&line));
                }
                "lagged" => eprintln!("note: missed {} messages (too slow)", d["missed"]),
                "closed" => {
                    return Err(CliError::failed(format!(
                        "the agent closed the subscription: {}",
                        text(&d["reason"])
                    )));
                }
                _ => {}
            }
            Ok(Flow::More)
        })
        .await
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}
