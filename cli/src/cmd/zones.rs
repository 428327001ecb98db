//! `armillary zones` and `armillary query`: zone tables and ad-hoc SQL as
//! human tables or JSON; also the table printer the other client commands use.

use crate::client::{ApiArgs, Client, block_on};
use crate::output::{CliError, CliResult, print_json};
use clap::Args;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

#[derive(Args)]
pub struct ZonesArgs {
    /// The zone whose child table to show.
    #[arg(default_value = "/")]
    zone: String,
    /// Print one JSON array of row objects (`name` plus attributes).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct QueryArgs {
    /// The query; tables are named by zone path, quoted:
    /// SELECT name, nmembers FROM "/" ORDER BY name
    sql: String,
    /// Print one JSON array of row objects.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn zones(a: ZonesArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let reply = client
            .get(&["v1", "zones"], &[("zone", a.zone.as_str())])
            .await?;
        let rows = objects(&reply["rows"])?;
        if a.json {
            return print_json(&rows);
        }
        print_table(&rows, &["name"]);
        Ok(())
    })
}

pub fn query(a: QueryArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let body = json!({ "sql": a.sql }).to_string();
        let reply = client
            .call(Method::POST, &["v1", "query"], &[], Some(body))
            .await?;
        let rows = objects(&reply["rows"])?;
        if a.json {
            return print_json(&rows);
        }
        // Columns in SELECT order, as the agent reports them.
        let columns: Vec<&str> = reply["columns"]
            .as_array()
            .map(|c| c.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_else(|| vec!["name"]);
        print_table(&rows, &columns);
        Ok(())
    })
}

/// The row objects of a reply.
pub fn objects(v: &Value) -> Result<Vec<Map<String, Value>>, CliError> {
    v.as_array()
        .map(|rows| rows.iter().filter_map(|r| r.as_object().cloned()).collect())
        .ok_or_else(|| CliError::failed(format!("the agent sent no rows: {v}")))
}

/// Prints rows as an aligned table: the `first` columns that occur, then
/// every other attribute in name order. Numbers are right-aligned.
pub fn print_table(rows: &[Map<String, Value>], first: &[&str]) {
    if rows.is_empty() {
        eprintln!("(no rows)");
        return;
    }
    print!("{}", render_table(rows, first));
}

/// Longest cell shown; longer values are cut with an ellipsis.
const MAX_CELL: usize = 48;

pub fn render_table(rows: &[Map<String, Value>], first: &[&str]) -> String {
    let present: BTreeSet<&str> = rows
        .iter()
        .flat_map(|r| r.keys().map(String::as_str))
        .collect();
    let mut cols: Vec<&str> = first
        .iter()
        .copied()
        .filter(|c| present.contains(c))
        .collect();
    cols.extend(present.iter().copied().filter(|c| !first.contains(c)));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| cell(r.get(*c).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let numeric: Vec<bool> = cols
        .iter()
        .map(|c| {
            let mut vals = rows.iter().filter_map(|r| r.get(*c));
            vals.clone().any(Value::is_number) && vals.all(|v| v.is_number() || v.is_null())
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let header: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
    for line in std::iter::once(&header).chain(cells.iter()) {
        let mut text = String::new();
        for (i, v) in line.iter().enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            let pad = widths[i] - v.chars().count();
            if numeric[i] {
                text.extend(std::iter::repeat_n(' ', pad));
                text.push_str(v);
            } else {
                text.push_str(v);
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// A value in few characters: lists joined by commas, floats to at most
/// three decimals, nothing for null.
pub fn compact(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(x)) => float(x),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(compact).collect::<Vec<_>>().join(","),
        Value::Object(_) => v.to_string(),
    }
}

fn float(x: f64) -> String {
    if x != 0.0 && (x.abs() < 0.001 || x.abs() >= 1e15) {
        return format!("{x:.2e}");
    }
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn cell(v: &Value) -> String {
    let s = compact(v).replace(['\n', '\t'], " ");
    if s.chars().count() > MAX_CELL {
        let mut cut: String = s.chars().take(MAX_CELL - 1).collect();
        cut.push('…');
        cut
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_values() {
        assert_eq!(compact(&json!(null)), "-");
        assert_eq!(compact(&json!(3)), "3");
        assert_eq!(compact(&json!(2.5)), "2.5");
        assert_eq!(compact(&json!(0.123456)), "0.123");
        assert_eq!(compact(&json!(2.0)), "2");
        assert_eq!(compact(&json!(0.00001)), "1.00e-5");
        assert_eq!(compact(&json!(["a:1", "b:2"])), "a:1,b:2");
        assert_eq!(compact(&json!("web")), "web");
    }

    #[test]
    fn tables_put_name_first_and_align() {
        let rows = objects(&json!([
            {"zone": "x", "name": "b", "load": 10},
            {"name": "a", "load": 2.25, "tags": ["p", "q"]},
        ]))
        .unwrap();
        let t = render_table(&rows, &["name"]);
        assert_eq!(
            t,
            "name  load  tags  zone\n\
             b       10  -     x\n\
             a     2.25  p,q   -\n"
        );
    }
}
