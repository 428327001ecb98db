//! `armillary afc install|list|remove`: AFCs on a running agent, through its
//! API; `--key DIR` signs them here with a client's or authority's keys.

use crate::client::{ApiArgs, Client, block_on};
use crate::cmd::zones::print_table;
use crate::output::{CliError, CliResult, print_json};
use armillary_agent::afc::AfcCert;
use armillary_agent::path::ZonePath;
use armillary_agent::security::{Identity, KeysDir, Role, format_time, now_micros, sign_afc};
use armillary_client::types::afc::AfcInfo;
use clap::Args;
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

/// Largest SQL file read.
const MAX_SQL_FILE: u64 = 64 * 1024;

#[derive(Args)]
pub struct InstallArgs {
    /// The AFC's name: letters, digits, '-' and '_'.
    name: String,
    /// The zone whose subtree it aggregates (its scope).
    #[arg(long)]
    zone: String,
    /// The SQL, e.g. "SELECT MAX(load) AS load".
    #[arg(long, conflicts_with = "file", required_unless_present = "file")]
    sql: Option<String>,
    /// A file holding the SQL.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Sign with the client or authority keys in this directory (needed when
    /// the agent runs with keys).
    #[arg(long, value_name = "DIR")]
    key: Option<PathBuf>,
    /// Print the installed AFC as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only the AFCs scoped at this zone.
    #[arg(long)]
    zone: Option<String>,
    /// Print one JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct RemoveArgs {
    /// The AFC's name.
    name: String,
    /// Its scope.
    #[arg(long)]
    zone: String,
    /// Sign the removal with the client or authority keys in this directory.
    #[arg(long, value_name = "DIR")]
    key: Option<PathBuf>,
    /// Print the removed AFC as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn zone(text: &str) -> Result<ZonePath, CliError> {
    ZonePath::parse(text).map_err(|e| CliError::usage(format!("--zone {text:?}: {e}")))
}

/// Loads signing keys: a client's or an authority's.
fn signer(dir: &Path) -> Result<Identity, CliError> {
    let id = Identity::load(dir).map_err(|e| CliError::usage(e.to_string()))?;
    if id.role() == Role::Agent {
        return Err(CliError::usage(format!(
            "{} holds agent keys; sign AFCs with client or authority keys (`armillary keys client|authority`)",
            dir.display()
        )));
    }
    Ok(id)
}

fn signed(dir: &Path, mut cert: AfcCert) -> Result<Value, CliError> {
    sign_afc(&signer(dir)?, &mut cert);
    let cert = serde_json::to_value(&cert)
        .map_err(|e| CliError::failed(format!("cannot encode the AFC: {e}")))?;
    Ok(json!({ "cert": cert }))
}

fn read_sql(path: &Path) -> Result<String, CliError> {
    use std::io::Read;
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let mut text = String::new();
    f.take(MAX_SQL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_SQL_FILE {
        return Err(CliError::usage(format!(
            "{} is larger than {} KiB; an AFC is one query",
            path.display(),
            MAX_SQL_FILE / 1024
        )));
    }
    Ok(text.trim().to_string())
}

pub fn install(a: InstallArgs) -> CliResult {
    let scope = zone(&a.zone)?;
    let sql = match (&a.sql, &a.file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => read_sql(f)?,
        (None, None) => return Err(CliError::usage("give the AFC's SQL with --sql or --file")),
    };
    let body = match &a.key {
        Some(dir) => signed(dir, AfcCert::new(scope, &a.name, &sql, now_micros()))?,
        None => json!({ "name": a.name, "zone": scope, "sql": sql }),
    };
    let client = Client::new(&a.api)?;
    block_on(async move {
        let reply = client
            .call(Method::POST, &["v1", "afcs"], &[], Some(body.to_string()))
            .await?;
        let afc = &reply["installed"];
        if a.json {
            return print_json(afc);
        }
        println!(
            "installed {} in {} ({}, signed by {})",
            afc["name"].as_str().unwrap_or(&a.name),
            afc["scope"].as_str().unwrap_or(&a.zone),
            afc["state"].as_str().unwrap_or("?"),
            afc["signer"].as_str().unwrap_or("?"),
        );
        Ok(())
    })
}

pub fn list(a: ListArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let afcs = client.afcs(a.zone.as_deref()).await?;
        if a.json {
            return print_json(&afcs);
        }
        let rows: Vec<Map<String, Value>> = afcs.iter().map(summary).collect();
        print_table(
            &rows,
            &["name", "scope", "state", "reason", "signer", "issued"],
        );
        Ok(())
    })
}

/// The columns `afc list` shows.
fn summary(afc: &AfcInfo) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), json!(afc.name));
    m.insert("scope".into(), json!(afc.scope));
    m.insert("state".into(), json!(afc.state));
    m.insert("reason".into(), json!(afc.reason));
    m.insert("signer".into(), json!(afc.signer));
    m.insert("issued".into(), json!(format_time(afc.issued)));
    m
}

pub fn remove(a: RemoveArgs) -> CliResult {
    let scope = zone(&a.zone)?;
    let body = match &a.key {
        Some(dir) => Some(
            signed(
                dir,
                AfcCert::tombstone(scope.clone(), &a.name, now_micros()),
            )?
            .to_string(),
        ),
        None => None,
    };
    let client = Client::new(&a.api)?;
    block_on(async move {
        let reply = client
            .call(
                Method::DELETE,
                &["v1", "afcs"],
                &[("zone", scope.as_str()), ("name", a.name.as_str())],
                body,
            )
            .await?;
        let afc = &reply["removed"];
        if afc["state"] != "removed" {
            return Err(CliError::failed(format!(
                "the agent kept a newer version of {} (issued {}); check this host's clock and try again",
                a.name,
                afc["issued"].as_u64().map(format_time).unwrap_or_default()
            )));
        }
        if a.json {
            return print_json(afc);
        }
        println!("removed {} from {}", a.name, scope);
        Ok(())
    })
}
