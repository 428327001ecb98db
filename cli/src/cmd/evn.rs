//! `armillary evn ...`: WS-Eventing subscriptions at the agent at `--api`,
//! urgent events to a zone, the agent's local tables, and distributed
//! conditions. A fault exits 2 with its WS-Eventing name in the message.

use crate::client::{ApiArgs, Client, block_on};
use crate::cmd::IdArgs;
use crate::cmd::watch::{Flow, Lines};
use crate::output::{CliError, CliResult, print_json};
use armillary_client::types::evn::{
    ConditionRequest, DeliverySpec, EventRecord, Filter, PublishRequest, Record, SubscribeRequest,
};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::time::Duration;

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
    let req = SubscribeRequest {
        filter: a.filter.clone().map(|expr| Filter::Dialect {
            dialect: Some("sql".into()),
            expr,
        }),
        zone: a.zone.clone(),
        expires: a.expires.clone().map(Value::String),
        delivery: a.notify_to.clone().map(|url| DeliverySpec {
            mode: Some("push".into()),
            notify_to: Some(url),
            end_to: a.end_to.clone(),
        }),
        notify_to: None,
    };
    block_on(async move {
        let api = &client;
        let sub = api.evn_subscribe(&req).await?;
        let id = sub.id.clone();
        if a.notify_to.is_some() {
            if a.json {
                return print_json(&sub);
            }
            println!("{id}");
            return Ok(());
        }
        eprintln!("subscription {id}");
        let mut lines = Lines::new(a.count);
        let mut last_ok = tokio::time::Instant::now();
        loop {
            let mut records = match api.evn_events(&id).await {
                Ok(r) => r,
                // Gone (expired or ended while we were away), or refused.
                Err(e) if e.is_bad_input() => return Err(e.into()),
                Err(e) if last_ok.elapsed() > RECONNECT_FOR => return Err(e.into()),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            last_ok = tokio::time::Instant::now();
            let broken = loop {
                match records.next().await {
                    Ok(Some(Record::Event(e))) => {
                        let line = if a.json {
                            record_json(Record::Event(e))
                        } else {
                            human(&e)
                        };
                        if let Flow::Stop = lines.print(&line) {
                            let _ = api.evn_unsubscribe(&id).await;
                            return Ok(());
                        }
                    }
                    // The agent stops; the subscription is kept there and
                    // followed again once it is back.
                    Ok(Some(Record::End(end))) if end.resumes => {
                        eprintln!(
                            "the agent is shutting down; following {id} again when it is back"
                        );
                        break None;
                    }
                    Ok(Some(Record::End(end))) => {
                        if a.json {
                            println!("{}", record_json(Record::End(end)));
                        } else {
                            eprintln!("subscription ended: {}", end.reason);
                        }
                        return Ok(());
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            if let Some(e) = broken
                && last_ok.elapsed() > RECONNECT_FOR
            {
                return Err(e.into());
            }
            // The stream dropped (the agent restarting): the subscription
            // is kept there; follow it again.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// One event as a line: time, topic, zone, origin, data.
fn human(e: &EventRecord) -> String {
    format!(
        "{}  {}  {}  {}  {}",
        e.time, e.topic, e.zone, e.origin, e.data
    )
}

/// A record as one JSON line, `type` first among its keys' peers.
fn record_json(r: Record) -> String {
    serde_json::to_string(&r).unwrap_or_default()
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
        let r = client
            .evn_renew(&a.id, Value::String(a.expires.clone()))
            .await?;
        if a.json {
            return print_json(&r);
        }
        println!("{} expires {}", a.id, r.expires);
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
        let v = client.evn_status(&a.id).await?;
        if a.json {
            return print_json(&v);
        }
        println!("subscription {}", a.id);
        println!(
            "  expires    {} (in {} s)",
            v.expires,
            v.expires_in_ms / 1000
        );
        println!("  delivery   {}", v.delivery.mode);
        for (what, x) in [
            ("notify to", &v.delivery.notify_to),
            ("end to   ", &v.delivery.end_to),
            ("filter   ", &v.filter),
            ("zone     ", &v.zone),
        ] {
            if let Some(x) = x {
                println!("  {what}  {x}");
            }
        }
        println!("  delivered  {}", v.delivered);
        Ok(())
    })
}

fn unsubscribe(a: IdArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        client.evn_unsubscribe(&a.id).await?;
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
    let req = PublishRequest {
        zone: a.zone.clone(),
        topic: a.topic.clone(),
        data,
        ttl: a.ttl.clone(),
    };
    let client = Client::new(&a.api)?;
    block_on(async move {
        let p = client.evn_publish(&req).await?;
        if a.json {
            return print_json(&p);
        }
        println!("published {} to {}", p.id, a.zone);
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
        let t = client.evn_table_put(&a.table, rows).await?;
        println!("table {}: {} rows", t.table, t.rows);
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
            let req = ConditionRequest {
                name: a.name.clone(),
                zone: a.zone.clone(),
                sql: a.sql.clone(),
                min: Some(a.min),
                hold_for: a.hold_for.clone(),
                keep_firing_for: a.keep_firing_for.clone(),
            };
            let client = Client::new(&a.api)?;
            block_on(async move {
                client.evn_condition_add(&req).await?;
                println!("condition {} installed for {}", a.name, a.zone);
                Ok(())
            })
        }
        ConditionCommand::List(a) => {
            let client = Client::new(&a.api)?;
            block_on(async move {
                let list = client.evn_conditions().await?.conditions;
                if a.json {
                    return print_json(&list);
                }
                if list.is_empty() {
                    println!("no conditions");
                }
                let count = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
                for c in list {
                    println!(
                        "{}  {}  {}  true at {} of {} contributors ({} expected), min {}",
                        c.name,
                        c.zone,
                        c.state,
                        count(c.hits),
                        count(c.contributors),
                        count(c.expected),
                        c.min,
                    );
                    if let Some(m) = c.missing.filter(|m| !m.is_empty()) {
                        println!("    not answering: {}", m.join(", "));
                    }
                    if let Some(e) = c.local_error {
                        println!("    here: {e}");
                    }
                }
                Ok(())
            })
        }
        ConditionCommand::Remove(a) => {
            let client = Client::new(&a.api)?;
            block_on(async move {
                client.evn_condition_remove(&a.name).await?;
                println!("condition {} removed", a.name);
                Ok(())
            })
        }
    }
}
