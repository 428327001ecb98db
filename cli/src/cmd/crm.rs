//! `armillary crm ...`: process groups with virtual synchrony. The agent
//! at `--api` is the member; these commands act for it.

use crate::client::{ApiArgs, Client, block_on};
use crate::cmd::watch::{Flow, Lines, read_events};
use crate::output::{CliError, CliResult, print_json};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

/// Largest event: a 1 MiB message as base64 in its JSON object.
const MAX_EVENT: usize = 2 << 20;
/// How long a send waits out a full group (503).
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);
const MODES: [&str; 3] = ["fifo", "total", "safe"];

#[derive(Subcommand)]
pub enum CrmCommand {
    /// Join a group (creating it when nobody has it) and print its view
    /// and message events as they come, one per line.
    Join(JoinArgs),
    /// Send a message to a group this agent is in.
    Send(SendArgs),
    /// The group's current view at this agent.
    View(ViewArgs),
    /// Leave a group: returns once the next view is installed without this agent.
    Leave(LeaveArgs),
    /// Join a group as a serving member of a replicated service; returns
    /// once this agent is in the group's view.
    Serve(ServeArgs),
    /// Use a group's replicated key-value store.
    Kv(super::crm_kv::KvArgs),
    /// Run a group's service in a separate command at this agent (which
    /// serves it with `crm serve GROUP --external`): the command reads the
    /// ordered requests as JSON lines and answers each one.
    Machine(super::crm_machine::MachineArgs),
    /// Send one request to a group's external service, failing over
    /// across --endpoints; prints its reply.
    Request(super::crm_machine::RequestArgs),
}

pub fn run(c: CrmCommand) -> CliResult {
    match c {
        CrmCommand::Join(a) => join(a),
        CrmCommand::Send(a) => send(a),
        CrmCommand::View(a) => view(a),
        CrmCommand::Leave(a) => leave(a),
        CrmCommand::Serve(a) => serve(a),
        CrmCommand::Kv(a) => super::crm_kv::run(a),
        CrmCommand::Machine(a) => super::crm_machine::machine(a),
        CrmCommand::Request(a) => super::crm_machine::request(a),
    }
}

#[derive(Args)]
pub struct JoinArgs {
    group: String,
    /// Stop after N message events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// One JSON object per event: {"type":"view",...} or {"type":"msg",...}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn join(a: JoinArgs) -> CliResult {
    check_group(&a.group)?;
    let client = Client::new(&a.api)?;
    block_on(async move {
        client
            .call(
                Method::POST,
                &["v1", "crm", "groups", &a.group, "join"],
                &[],
                Some("{}".into()),
            )
            .await?;
        let resp = client
            .stream(&["v1", "crm", "groups", &a.group, "events"], &[])
            .await?;
        let mut lines = Lines::new(a.count);
        read_events(resp, MAX_EVENT, |name, d| {
            let line = if a.json {
                d.to_string()
            } else {
                match name {
                    "view" => format!(
                        "view {}  coordinator {}  members {}",
                        d["view_id"],
                        text(&d["coordinator"]),
                        list(&d["members"])
                    ),
                    "msg" => format!(
                        "{}  {}  {}#{}  {}",
                        d["view_id"],
                        text(&d["mode"]),
                        text(&d["from"]),
                        d["seq"],
                        text(&d["data"])
                    ),
                    "left" => {
                        println!("left the group");
                        return Ok(Flow::Stop);
                    }
                    "lagged" => {
                        eprintln!("note: missed {} events (too slow)", d["missed"]);
                        return Ok(Flow::More);
                    }
                    other => format!("{other}  {d}"),
                }
            };
            match name {
                "msg" => Ok(lines.print(&line)),
                _ => {
                    // Views and notices do not count towards --count.
                    println!("{line}");
                    Ok(Flow::More)
                }
            }
        })
        .await
    })
}

#[derive(Args)]
pub struct SendArgs {
    group: String,
    data: String,
    /// fifo (per-sender order), total (one order at every member) or safe
    /// (total, delivered once every member holds it).
    #[arg(long, default_value = "fifo")]
    mode: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn send(a: SendArgs) -> CliResult {
    check_group(&a.group)?;
    if !MODES.contains(&a.mode.as_str()) {
        return Err(CliError::usage(format!(
            "unknown mode {:?}: give fifo, total or safe",
            a.mode
        )));
    }
    let client = Client::new(&a.api)?;
    block_on(async move {
        let body = json!({"data": a.data, "mode": a.mode}).to_string();
        let r = client
            .call_when_ready(
                Method::POST,
                &["v1", "crm", "groups", &a.group, "messages"],
                body,
                PATIENCE,
            )
            .await?;
        if a.json {
            return print_json(&r);
        }
        println!(
            "sent {} bytes to {} ({})",
            r["bytes"],
            a.group,
            text(&r["mode"])
        );
        Ok(())
    })
}

#[derive(Args)]
pub struct ViewArgs {
    group: String,
    /// {"group","view_id","members":[...],"coordinator"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn view(a: ViewArgs) -> CliResult {
    check_group(&a.group)?;
    let client = Client::new(&a.api)?;
    block_on(async move {
        let v = client.get(&["v1", "crm", "groups", &a.group], &[]).await?;
        if a.json {
            return print_json(&v);
        }
        println!(
            "{}  view {}  {}  coordinator {}  members {}",
            text(&v["group"]),
            v["view_id"],
            text(&v["phase"]),
            text(&v["coordinator"]),
            list(&v["members"])
        );
        Ok(())
    })
}

#[derive(Args)]
pub struct LeaveArgs {
    group: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn leave(a: LeaveArgs) -> CliResult {
    check_group(&a.group)?;
    let client = Client::new(&a.api)?;
    block_on(async move {
        let r = client
            .call(
                Method::DELETE,
                &["v1", "crm", "groups", &a.group],
                &[],
                None,
            )
            .await?;
        if a.json {
            return print_json(&r);
        }
        println!("left {}", a.group);
        Ok(())
    })
}

#[derive(Args)]
pub struct ServeArgs {
    group: String,
    /// Serve the built-in key-value store (put, get, incr, cas).
    #[arg(long, conflicts_with = "external")]
    kv: bool,
    /// Serve a service run by a separate command, which follows this
    /// agent with `armillary crm machine GROUP -- CMD`.
    #[arg(long)]
    external: bool,
    /// Agent addresses of members to join through [default: the members
    /// the zone tree lists].
    #[arg(long, value_delimiter = ',', value_name = "ADDR,..")]
    contacts: Vec<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn serve(a: ServeArgs) -> CliResult {
    check_group(&a.group)?;
    let service = match (a.kv, a.external) {
        (true, _) => "kv",
        (_, true) => "external",
        _ => {
            return Err(CliError::usage(
                "say what to serve: --kv (the built-in key-value store) or --external (a command run by `armillary crm machine`)",
            ));
        }
    };
    let client = Client::new(&a.api)?;
    block_on(async move {
        let body = json!({"service": service, "contacts": a.contacts}).to_string();
        let v = client
            .call(
                Method::POST,
                &["v1", "crm", "groups", &a.group, "serve"],
                &[],
                Some(body),
            )
            .await?;
        if a.json {
            return print_json(&v);
        }
        println!(
            "serving {} ({service})  view {}  coordinator {}  members {}",
            a.group,
            v["view_id"],
            text(&v["coordinator"]),
            list(&v["members"])
        );
        Ok(())
    })
}

/// A bad group name is bad input (exit 2) before any request.
pub fn check_group(g: &str) -> CliResult {
    armillary_agent::crm::proto::check_name(g).map_err(|e| CliError::usage(e.to_string()))
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}
