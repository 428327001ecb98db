//! `armillary afc ...`: try, install, list and remove aggregation queries.

use crate::output::{CliError, CliResult, print_json};
use clap::{Args, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use zone_sql::{Frame, Program, json};

#[derive(Subcommand)]
pub enum AfcCommand {
    /// Evaluate an AFC over a zone table given as a JSON array of row objects
    /// (from --table FILE or standard input) and print the result row as JSON.
    Test(TestArgs),
    /// Install an AFC on the agent at --api; it spreads to every agent in its scope.
    Install(super::afc_remote::InstallArgs),
    /// List the AFCs the agent at --api knows, with their state.
    List(super::afc_remote::ListArgs),
    /// Remove an AFC (a tombstone spreads like the AFC did).
    Remove(super::afc_remote::RemoveArgs),
}

#[derive(Args)]
pub struct TestArgs {
    /// The AFC's SQL, e.g. "SELECT MAX(load) AS load, SUM(nmembers) AS nmembers".
    #[arg(long)]
    sql: String,
    /// A JSON file holding an array of row objects; standard input when absent.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Seed for RANDOM(n, a).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(cmd: AfcCommand) -> CliResult {
    match cmd {
        AfcCommand::Test(args) => test(args),
        AfcCommand::Install(args) => super::afc_remote::install(args),
        AfcCommand::List(args) => super::afc_remote::list(args),
        AfcCommand::Remove(args) => super::afc_remote::remove(args),
    }
}

/// Upper bound on a table file, so a wrong file does not eat the machine.
const MAX_TABLE_BYTES: u64 = 64 * 1024 * 1024;

fn test(args: TestArgs) -> CliResult {
    let program =
        Program::compile(&args.sql).map_err(|e| CliError::usage(format!("invalid AFC: {e}")))?;
    let text = match &args.table {
        Some(path) => {
            let f = std::fs::File::open(path).map_err(|e| {
                CliError::usage(format!("cannot read table file {}: {e}", path.display()))
            })?;
            read_bounded(f, &format!("table file {}", path.display()))?
        }
        None => read_bounded(std::io::stdin().lock(), "standard input")?,
    };
    let rows =
        json::table_from_json(&text).map_err(|e| CliError::usage(format!("invalid table: {e}")))?;
    let frame = Frame::from_rows(rows.iter());
    let out = program
        .eval(&frame, args.seed)
        .map_err(|e| CliError::usage(format!("evaluation failed: {e}")))?;
    print_json(&json::attrs_to_json(&out))
}

fn read_bounded(r: impl Read, what: &str) -> Result<String, CliError> {
    let mut text = String::new();
    r.take(MAX_TABLE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::usage(format!("cannot read {what}: {e}")))?;
    if text.len() as u64 > MAX_TABLE_BYTES {
        return Err(CliError::usage(format!(
            "{what} is larger than {} MiB",
            MAX_TABLE_BYTES / 1024 / 1024
        )));
    }
    Ok(text)
}
