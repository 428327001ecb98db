//! `armillary`: the agent, the local demo cluster, the simulator and every client command.

mod cmd;
mod output;

use clap::{Parser, Subcommand};

/// The simulator allocates many small messages; mimalloc handles that load
/// markedly better than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

/// Armillary: SQL over the live state of a whole fleet, by peer-to-peer gossip.
#[derive(Parser)]
#[command(name = "armillary", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic simulator: many agents in one process.
    Sim(cmd::sim::SimArgs),
    /// Aggregation function certificates (AFCs).
    #[command(subcommand)]
    Afc(cmd::afc::AfcCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(args) => cmd::sim::run(args),
        Command::Afc(c) => cmd::afc::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
