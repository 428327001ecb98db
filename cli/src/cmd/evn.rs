//! `armillary evn ...`: WS-Eventing subscriptions at the agent at `--api`,
//! urgent events to a zone, the agent's local tables, and distributed
//! conditions. A fault exits 2 with its WS-Eventing name in the message.

use crate::client::{ApiArgs, Client, block_on};
use crate::cmd::watch::{Flow, Lines, read_events};
use crate::output::{CliError, CliResult, print_json};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

/// Largest event record on the stream: an 8 KiB payload with its envelope.
const MAX_EVENT: usize = 64 * 1024;
/// How long a stream that dropped (the agent restarting) is tried again.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

#[derive(Subcommand)]
pub enum EvnCommand {
    /// Subscribe to events at this agent: print them as they come, or have
    /// them pushed to --notify-to.
    Subscribe(SubscribeArgs),
    /// Set a subscription's new expiry.
    Renew(RenewArgs),
    /// A subscription's status (WS-Eventing GetStatus).
    Status(StatusArgs),
    /// End a subscription: nothing is delivered for it afterwards.
    Unsubscribe(IdArgs),
    /// Publish an urgent event to every agent of ZONE.
    Publish(PublishArgs),
    /// This agent's local tables, which conditions read.
    #[command(subcommand)]
    Table(TableCommand),
    /// Distributed conditions over the agents' local tables.
    #[command(subcommand)]
    Condition(ConditionCommand),
}

pub fn run(c: EvnCommand) -> CliResult {
    match c {
        EvnCommand::Subscribe(a) => subscribe(a),
        EvnCommand::Renew(a) => renew(a),
        EvnCommand::Status(a) => status(a),
        EvnCommand::Unsubscribe(a) => unsubscribe(a),
        EvnCommand::Publish(a) => publish(a),
        EvnCommand::Table(TableCommand::Put(a)) => table_put(a),
        EvnCommand::Condition(c) => condition(c),
    }
}

#[derive(Args)]
pub struct SubscribeArgs {
    /// A SQL predicate over the event's fields: topic, zone, origin, seq,
    /// time and the top-level fields of its data.
    #[arg(long, value_name = "SQL")]
    filter: Option<String>,
    /// Only events published to this zone or inside it.
    #[arg(long, value_name = "Z")]
    zone: Option<String>,
    /// A duration (10m, PT10M) or a date-time (2026-12-05T10:00:00Z).
    #[arg(long, value_name = "DUR|DATETIME")]
    expires: Option<String>,
    /// Push the events by HTTP POST to this URL instead; prints the id and exits.
    #[arg(long, value_name = "URL")]
    notify_to: Option<String>,
    /// Where the SubscriptionEnd of a push subscription goes (default: a
    /// single try at --notify-to).
    #[arg(long, value_name = "URL", requires = "notify_to")]
    end_to: Option<String>,
    /// Stop (and unsubscribe) after N events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn subscribe(a: SubscribeArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    let mut body = json!({});
    if let Some(f) = &a.filter {
        body["filter"] = json!({"dialect": "sql", "expr": f});
    }
    if let Some(z) = &a.zone {
        body["zone"] = json!(z);
    }
    if let Some(e) = &a.expires {
        body["expires"] = json!(e);
    }
    if let Some(url) = &a.notify_to {
        body["delivery"] = json!({"mode": "push", "notify_to": url, "end_to": a.end_to});
    }
    block_on(async move {
        let sub = client
            .call(
                Method::POST,
                &["v1", "evn", "subscriptions"],
                &[],
                Some(body.to_string()),
            )
            .await?;
        let id = sub["id"].as_str().unwrap_or_default().to_string();
        if a.notify_to.is_some() {
            if a.json {
                return print_json(&sub);
            }
            println!("{id}");
            return Ok(());
        }
        eprintln!("subscription {id}");
        let lines = std::cell::RefCell::new(Lines::new(a.count));
        let started = tokio::time::Instant::now();
        let mut last_ok = started;
        loop {
            let resp = match client
                .stream(&["v1", "evn", "subscriptions", &id, "events"], &[])
                .await
            {
                Ok(r) => r,
                // Gone (expired or ended while we were away), or refused.
                Err(e) if e.exit_code() == 2 => return Err(e),
                Err(e) if last_ok.elapsed() > RECONNECT_FOR => return Err(e),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            last_ok = tokio::time::Instant::now();
            let mut ended = false;
            let mut counted_out = false;
            let read = read_events(&client, resp, MAX_EVENT, |name, d| match name {
                "event" => {
                    let line = if a.json { d.to_string() } else { human(d) };
                    let flow = lines.borrow_mut().print(&line);
                    if let Flow::Stop = flow {
                        counted_out = true;
                    }
                    Ok(flow)
                }
                // The agent stops; the subscription is kept there and
                // followed again once it is back.
                "end" if d["resumes"].as_bool() == Some(true) => {
                    eprintln!("the agent is shutting down; following {id} again when it is back");
                    Ok(Flow::Stop)
                }
                "end" => {
                    ended = true;
                    if a.json {
                        println!("{d}");
                    } else {
                        eprintln!(
                            "subscription ended: {}",
                            d["reason"].as_str().unwrap_or("?")
                        );
                    }
                    Ok(Flow::Stop)
                }
                _ => Ok(Flow::More),
            })
            .await;
            if counted_out {
                let _ = client
                    .call(
                        Method::DELETE,
                        &["v1", "evn", "subscriptions", &id],
                        &[],
                        None,
                    )
                    .await;
                return Ok(());
            }
            if ended {
                return Ok(());
            }
            if let Err(e) = read
                && last_ok.elapsed() > RECONNECT_FOR
            {
                return Err(e);
            }
            // The stream dropped (the agent restarting): the subscription
            // is kept there; follow it again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// One event as a line: time, topic, zone, origin, data.
fn human(d: &Value) -> String {
    format!(
        "{}  {}  {}  {}  {}",
        d["time"].as_str().unwrap_or("-"),
        d["topic"].as_str().unwrap_or("-"),
        d["zone"].as_str().unwrap_or("-"),
        d["origin"].as_str().unwrap_or("-"),
        d["data"]
    )
}

#[derive(Args)]
pub struct RenewArgs {
    id: String,
    /// A duration (10m, PT10M) or a date-time.
    #[arg(long, value_name = "DUR|DATETIME")]
    expires: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn renew(a: RenewArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let v = client
            .call(
                Method::POST,
                &["v1", "evn", "subscriptions", &a.id, "renew"],
                &[],
                Some(json!({"expires": a.expires}).to_string()),
            )
            .await?;
        if a.json {
            return print_json(&v);
        }
        println!("{} expires {}", a.id, v["expires"].as_str().unwrap_or("?"));
        Ok(())
    })
}

#[derive(Args)]
pub struct StatusArgs {
    id: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn status(a: StatusArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let v = client
            .get(&["v1", "evn", "subscriptions", &a.id], &[])
            .await?;
        if a.json {
            return print_json(&v);
        }
        println!("subscription {}", a.id);
        println!(
            "  expires    {} (in {} s)",
            v["expires"].as_str().unwrap_or("?"),
            v["expires_in_ms"].as_u64().unwrap_or(0) / 1000
        );
        println!(
            "  delivery   {}",
            v["delivery"]["mode"].as_str().unwrap_or("?")
        );
        if let Some(url) = v["delivery"]["notify_to"].as_str() {
            println!("  notify to  {url}");
        }
        if let Some(f) = v["filter"].as_str() {
            println!("  filter     {f}");
        }
        if let Some(z) = v["zone"].as_str() {
            println!("  zone       {z}");
        }
        println!("  delivered  {}", v["delivered"]);
        Ok(())
    })
}

#[derive(Args)]
pub struct IdArgs {
    id: String,
    #[command(flatten)]
    api: ApiArgs,
}

fn unsubscribe(a: IdArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        client
            .call(
                Method::DELETE,
                &["v1", "evn", "subscriptions", &a.id],
                &[],
                None,
            )
            .await?;
        println!("unsubscribed {}", a.id);
        Ok(())
    })
}

#[derive(Args)]
pub struct PublishArgs {
    zone: String,
    #[arg(long, value_name = "T")]
    topic: String,
    /// The payload: JSON, at most 8 KiB.
    #[arg(long, value_name = "JSON")]
    data: Option<String>,
    /// How long latecomers still get it (default 1m, at most 1h).
    #[arg(long, value_name = "DUR")]
    ttl: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn publish(a: PublishArgs) -> CliResult {
    let data: Value = match &a.data {
        None => Value::Null,
        Some(t) => serde_json::from_str(t)
            .map_err(|e| CliError::usage(format!("--data is not JSON: {e}")))?,
    };
    let mut body = json!({"zone": a.zone, "topic": a.topic, "data": data});
    if let Some(t) = &a.ttl {
        body["ttl"] = json!(t);
    }
    let client = Client::new(&a.api)?;
    block_on(async move {
        let v = client
            .call(
                Method::POST,
                &["v1", "evn", "events"],
                &[],
                Some(body.to_string()),
            )
            .await?;
        if a.json {
            return print_json(&v);
        }
        println!(
            "published {} to {}",
            v["id"].as_str().unwrap_or("?"),
            a.zone
        );
        Ok(())
    })
}

#[derive(Subcommand)]
pub enum TableCommand {
    /// Replace this agent's local table TABLE with the given rows.
    Put(TablePutArgs),
}

#[derive(Args)]
pub struct TablePutArgs {
    table: String,
    /// A JSON array of row objects; `-` reads it from standard input.
    #[arg(long, value_name = "JSON")]
    rows: String,
    #[command(flatten)]
    api: ApiArgs,
}

fn table_put(a: TablePutArgs) -> CliResult {
    let text = if a.rows == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| {
            CliError::failed(format!("cannot read the rows from standard input: {e}"))
        })?
    } else {
        a.rows.clone()
    };
    let rows: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("--rows is not JSON: {e}")))?;
    if !rows.is_array() {
        return Err(CliError::usage(
            "--rows must be a JSON array of row objects",
        ));
    }
    let client = Client::new(&a.api)?;
    block_on(async move {
        let v = client
            .call(
                Method::PUT,
                &["v1", "evn", "tables", &a.table],
                &[],
                Some(json!({"rows": rows}).to_string()),
            )
            .await?;
        println!("table {}: {} rows", a.table, v["rows"]);
        Ok(())
    })
}

#[derive(Subcommand)]
pub enum ConditionCommand {
    /// Install a condition for every agent of ZONE.
    Add(ConditionAddArgs),
    /// The conditions, with their answers as this agent sees them.
    List(ConditionListArgs),
    /// Remove a condition everywhere.
    Remove(ConditionRemoveArgs),
}

#[derive(Args)]
pub struct ConditionAddArgs {
    name: String,
    #[arg(long, value_name = "Z")]
    zone: String,
    /// SQL over the local tables; its `hit` column (or first) is the
    /// agent's truth value.
    #[arg(long, value_name = "SQL")]
    sql: String,
    /// Fire when at least N agents are true.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min: u64,
    /// How long it must hold before firing.
    #[arg(long = "for", value_name = "DUR")]
    hold_for: Option<String>,
    /// How long it keeps firing after it stops holding.
    #[arg(long, value_name = "DUR")]
    keep_firing_for: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct ConditionListArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct ConditionRemoveArgs {
    name: String,
    #[command(flatten)]
    api: ApiArgs,
}

fn condition(c: ConditionCommand) -> CliResult {
    match c {
        ConditionCommand::Add(a) => {
            if a.min == 0 {
                return Err(CliError::usage("--min must be at least 1"));
            }
            let mut body = json!({"name": a.name, "zone": a.zone, "sql": a.sql, "min": a.min});
            if let Some(d) = &a.hold_for {
                body["for"] = json!(d);
            }
            if let Some(d) = &a.keep_firing_for {
                body["keep_firing_for"] = json!(d);
            }
            let client = Client::new(&a.api)?;
            block_on(async move {
                client
                    .call(
                        Method::POST,
                        &["v1", "evn", "conditions"],
                        &[],
                        Some(body.to_string()),
                    )
                    .await?;
                println!("condition {} installed for {}", a.name, a.zone);
                Ok(())
            })
        }
        ConditionCommand::List(a) => {
            let client = Client::new(&a.api)?;
            block_on(async move {
                let v = client.get(&["v1", "evn", "conditions"], &[]).await?;
                if a.json {
                    return print_json(&v["conditions"]);
                }
                let list = v["conditions"].as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    println!("no conditions");
                }
                for c in list {
                    let count = |k: &str| c[k].as_u64().map_or("-".to_string(), |n| n.to_string());
                    println!(
                        "{}  {}  {}  true at {} of {} contributors ({} expected), min {}",
                        c["name"].as_str().unwrap_or("?"),
                        c["zone"].as_str().unwrap_or("?"),
                        c["state"].as_str().unwrap_or("?"),
                        count("hits"),
                        count("contributors"),
                        count("expected"),
                        c["min"],
                    );
                    if let Some(m) = c["missing"].as_array().filter(|m| !m.is_empty()) {
                        let names: Vec<&str> = m.iter().filter_map(Value::as_str).collect();
                        println!("    not answering: {}", names.join(", "));
                    }
                    if let Some(e) = c["local_error"].as_str() {
                        println!("    here: {e}");
                    }
                }
                Ok(())
            })
        }
        ConditionCommand::Remove(a) => {
            let client = Client::new(&a.api)?;
            block_on(async move {
                client
                    .call(
                        Method::DELETE,
                        &["v1", "evn", "conditions", &a.name],
                        &[],
                        None,
                    )
                    .await?;
                println!("condition {} removed", a.name);
                Ok(())
            })
        }
    }
}
