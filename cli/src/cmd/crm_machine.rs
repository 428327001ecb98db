//! `armillary crm machine GROUP -- CMD ...` and `armillary crm request`:
//! a group's service run by a separate process, and its client.
//!
//! The bridge follows the ordered requests of the agent at `--api` (which
//! serves the group with `crm serve GROUP --external`) and hands them to
//! the command as JSON lines on its standard input:
//!
//! - `{"type":"restore","session":S,"at":N,"state":"..."}`: start from this
//!   state (empty for a new group), the service's after position N;
//! - `{"type":"apply","at":N,"client":C,"seq":Q,"op":"..."}`: run it;
//! - `{"type":"snapshot","at":N}`: hand the state over.
//!
//! The command answers with JSON lines on its standard output: for each
//! `apply`, in order, `{"at":N,"reply":"..."}`; for a `snapshot`,
//! `{"at":N,"state":"..."}` with the position of the last request it ran.
//! It must be deterministic: every member's command gets the same
//! requests in the same order and must give the same replies.

use crate::client::{ApiArgs, Client, block_on};
use crate::output::{CliError, CliResult, print_json};
use clap::Args;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Largest line a command may write: a state of 16 MiB escaped in JSON.
const MAX_LINE: usize = 6 * (16 << 20) + 1024;
/// Largest feed record: a request of 256 KiB escaped, or a state.
const MAX_RECORD: usize = MAX_LINE;
/// Answers posted together at most.
const BATCH: usize = 512;

#[derive(Args)]
pub struct MachineArgs {
    group: String,
    /// The command that runs the service, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// One line of the command's output.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    at: u64,
    reply: Option<String>,
    state: Option<String>,
}

pub fn machine(a: MachineArgs) -> CliResult {
    super::crm::check_group(&a.group)?;
    let client = Client::new(&a.api)?;
    block_on(async move {
        let mut feed = client
            .stream(&["v1", "crm", "groups", &a.group, "machine"], &[])
            .await?;
        feed.set_max(MAX_RECORD);
        let mut child = tokio::process::Command::new(&a.command[0])
            .args(&a.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CliError::usage(format!("cannot run {:?}: {e}", a.command[0])))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut lines = read_lines(child.stdout.take().expect("piped"));
        let mut session = None;
        let mut replies = Vec::new();
        let mut state = None;
        loop {
            tokio::select! {
                rec = feed.next_raw() => {
                    let Some((name, data)) = rec? else {
                        return Err(CliError::failed(format!("{} closed the feed", client.shown())));
                    };
                    match name.as_str() {
                        "end" => {
                            return Err(CliError::failed(format!(
                                "the feed ended: {}",
                                data["reason"].as_str().unwrap_or("-")
                            )));
                        }
                        "restore" => {
                            session = data["session"].as_u64();
                            replies.clear();
                            state = None;
                        }
                        _ => {}
                    }
                    let mut text = data.to_string();
                    text.push('\n');
                    if stdin.write_all(text.as_bytes()).await.is_err() {
                        return Err(exited(&mut child).await);
                    }
                }
                line = lines.recv() => {
                    let Some(line) = line else {
                        return Err(exited(&mut child).await);
                    };
                    let line = line?;
                    let ans: Answer = serde_json::from_str(line.trim()).map_err(|e| {
                        CliError::failed(format!(
                            "{:?} wrote a line that is not an answer ({e}); write {{\"at\":N,\"reply\":\"...\"}} or {{\"at\":N,\"state\":\"...\"}}",
                            a.command[0]
                        ))
                    })?;
                    match (ans.reply, ans.state) {
                        (Some(r), None) => replies.push(json!({"at": ans.at, "reply": r})),
                        (None, Some(s)) => state = Some(json!({"at": ans.at, "state": s})),
                        _ => return Err(CliError::failed(format!(
                            "{:?} wrote an answer with neither or both of reply and state",
                            a.command[0]
                        ))),
                    }
                    // Post what is there, in one request.
                    if replies.len() < BATCH && state.is_none() && !lines.is_empty() {
                        continue;
                    }
                    let Some(s) = session else { continue };
                    let mut body = json!({"session": s, "replies": std::mem::take(&mut replies)});
                    if let Some(st) = state.take() {
                        body["state"] = st;
                    }
                    let _: Value = client
                        .call(
                            Method::POST,
                            &["v1", "crm", "groups", &a.group, "machine"],
                            &[],
                            Some(body.to_string()),
                        )
                        .await?;
                }
            }
        }
    })
}

/// The command's output lines, read on a task of their own (a line is
/// never cut when the feed wakes the bridge first); each at most
/// [`MAX_LINE`] bytes.
fn read_lines(
    out: tokio::process::ChildStdout,
) -> tokio::sync::mpsc::Receiver<Result<String, CliError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(BATCH);
    tokio::spawn(async move {
        let mut out = BufReader::new(out);
        loop {
            let mut line = String::new();
            let r = match (&mut out)
                .take(MAX_LINE as u64 + 1)
                .read_line(&mut line)
                .await
            {
                Ok(0) => return,
                Ok(_) if line.len() > MAX_LINE => Err(CliError::failed(format!(
                    "the command wrote a line longer than {MAX_LINE} bytes"
                ))),
                Ok(_) => Ok(line),
                Err(e) => Err(CliError::failed(format!(
                    "reading the command's output: {e}"
                ))),
            };
            let stop = r.is_err();
            if tx.send(r).await.is_err() || stop {
                return;
            }
        }
    });
    rx
}

async fn exited(child: &mut tokio::process::Child) -> CliError {
    match child.wait().await {
        Ok(s) => CliError::failed(format!("the machine's command ended ({s})")),
        Err(e) => CliError::failed(format!("the machine's command: {e}")),
    }
}

#[derive(Args)]
pub struct RequestArgs {
    group: String,
    /// The operation, as the group's service reads it.
    op: String,
    /// Agent API addresses of the group's members, tried in this order
    /// [default: --api].
    #[arg(long, value_delimiter = ',', value_name = "A,B,C")]
    endpoints: Vec<String>,
    /// One JSON object: {"reply": ..}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn request(a: RequestArgs) -> CliResult {
    super::crm::check_group(&a.group)?;
    let endpoints = super::crm_kv::endpoints(&a.endpoints, &a.api)?;
    block_on(async move {
        let mut c = super::crm_kv::KvClient::new(a.group, endpoints);
        let fields = json!({"op": a.op});
        let text = c.call_route("request", fields).await?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::failed(format!("a reply that is not JSON ({e}): {text}")))?;
        if a.json {
            return print_json(&v);
        }
        println!("{}", v["reply"].as_str().unwrap_or_default());
        Ok(())
    })
}
