//! `armillary watch ZONE`: one line per change of a zone's aggregate row.

use crate::client::{ApiArgs, Client, block_on};
use crate::cmd::zones::compact;
use crate::output::{CliError, CliResult};
use armillary_agent::security::format_time;
use armillary_client::EventStream;
use armillary_client::types::zones::{RowChange, WatchRecord};
use clap::Args;
use serde_json::{Map, Value, json};
use std::io::Write;

#[derive(Args)]
pub struct WatchArgs {
    /// The zone whose row to follow (the agent's own leaf works too).
    zone: String,
    /// Show only this attribute (repeatable); changes that leave the chosen
    /// attributes alone are not printed.
    #[arg(long = "attr", value_name = "A")]
    attrs: Vec<String>,
    /// Stop after this many lines.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// One JSON object per line: {"zone","time","attrs"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Largest event accepted from the stream.
pub const MAX_EVENT: usize = 1 << 20;

pub fn run(a: WatchArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let mut records = client.watch(&a.zone).await?;
        let mut last: Option<Map<String, Value>> = None;
        let mut lines = Lines::new(a.count);
        loop {
            match records.next().await? {
                Some(WatchRecord::Row(r)) => {
                    if let Some(line) = a.line(&r, &mut last)
                        && let Flow::Stop = lines.print(&line)
                    {
                        return Ok(());
                    }
                }
                Some(WatchRecord::Lagged { missed }) => eprintln!(
                    "note: fell behind and missed {missed} changes; the current row follows"
                ),
                Some(_) => {}
                None => {
                    return Err(CliError::failed(
                        "the agent closed the stream (it is shutting down?)",
                    ));
                }
            }
        }
    })
}

/// What an event stream's reader does after one event.
pub enum Flow {
    More,
    Stop,
}

/// Prints lines to standard output, stopping after `count` of them or when
/// the reader went away (`| head`).
pub struct Lines {
    printed: u64,
    count: Option<u64>,
}

impl Lines {
    pub fn new(count: Option<u64>) -> Lines {
        Lines { printed: 0, count }
    }

    pub fn print(&mut self, line: &str) -> Flow {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Flow::Stop;
        }
        self.printed += 1;
        match self.count {
            Some(n) if self.printed >= n => Flow::Stop,
            _ => Flow::More,
        }
    }
}

/// Reads the server-sent events of `stream` (each at most `max_event`
/// bytes), handing each (name, data) to `on` until it says stop; a broken
/// or closed stream is an error.
pub async fn read_events(
    mut stream: EventStream,
    max_event: usize,
    mut on: impl FnMut(&str, &Value) -> Result<Flow, CliError>,
) -> CliResult {
    stream.set_max(max_event);
    loop {
        match stream.next_raw().await? {
            Some((name, data)) => {
                if let Flow::Stop = on(&name, &data)? {
                    return Ok(());
                }
            }
            None => {
                return Err(CliError::failed(
                    "the agent closed the stream (it is shutting down?)",
                ));
            }
        }
    }
}

impl WatchArgs {
    /// The line for one `row` event; `None` when the chosen attributes did
    /// not change since the last line.
    fn line(&self, data: &RowChange, last: &mut Option<Map<String, Value>>) -> Option<String> {
        let all = data.attrs.clone();
        let attrs: Map<String, Value> = if self.attrs.is_empty() {
            all
        } else {
            self.attrs
                .iter()
                .map(|k| (k.clone(), all.get(k).cloned().unwrap_or(Value::Null)))
                .collect()
        };
        if !self.attrs.is_empty() && last.as_ref() == Some(&attrs) {
            return None;
        }
        let time = data.time;
        let line = if self.json {
            json!({ "zone": data.zone, "time": time, "attrs": attrs }).to_string()
        } else {
            let mut s = show_time(time);
            // With --attr, the order asked for; otherwise by name.
            let keys: Vec<&String> = if self.attrs.is_empty() {
                attrs.keys().collect()
            } else {
                self.attrs.iter().collect()
            };
            for k in keys {
                s.push_str(&format!("  {k}={}", compact(&attrs[k.as_str()])));
            }
            s
        };
        *last = Some(attrs);
        Some(line)
    }
}

/// `2025-03-01T12:00:00.123Z`
fn show_time(t: u64) -> String {
    let s = format_time(t);
    let base = s.strip_suffix('Z').unwrap_or(&s);
    format!("{base}.{:03}Z", t / 1000 % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_chosen_attributes_once_per_change() {
        let a = WatchArgs {
            zone: "/".into(),
            attrs: vec!["load".into()],
            count: None,
            json: false,
            api: ApiArgs::default(),
        };
        let ev = |load: f64, n: u64| {
            serde_json::from_value::<RowChange>(json!({"zone": "/", "time": 1_700_000_000_123_000u64, "attrs": {"load": load, "nmembers": n}})).unwrap()
        };
        let mut last = None;
        assert_eq!(
            a.line(&ev(1.5, 4), &mut last).unwrap(),
            "2023-11-14T22:13:20.123Z  load=1.5"
        );
        assert!(a.line(&ev(1.5, 5), &mut last).is_none());
        assert!(a.line(&ev(2.0, 5), &mut last).is_some());
    }
}
