//! `armillary`: the agent, the local demo cluster, the simulator and every client command.

mod client;
mod cmd;
mod output;
mod runtime;

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
    /// Run one agent: gossip over QUIC and the HTTP API.
    Agent(cmd::agent::AgentArgs),
    /// Benchmarks over real QUIC on loopback.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// Run a local demo system of many agents in one process (insecure).
    Dev(cmd::dev::DevArgs),
    /// Run the deterministic simulator: many agents in one process.
    Sim(cmd::sim::SimArgs),
    /// Component health monitoring: register, check, look up, watch.
    #[command(subcommand)]
    Chm(cmd::chm::ChmCommand),
    /// Reliable multicast channels: create, list, publish, subscribe.
    #[command(subcommand)]
    Dds(cmd::dds::DdsCommand),
    /// Process groups: join, send in fifo, total or safe order, view, leave.
    #[command(subcommand)]
    Crm(cmd::crm::CrmCommand),
    /// Events: WS-Eventing subscriptions, urgent events to a zone, local
    /// tables and distributed conditions.
    #[command(subcommand)]
    Evn(cmd::evn::EvnCommand),
    /// Aggregation function certificates (AFCs).
    #[command(subcommand)]
    Afc(cmd::afc::AfcCommand),
    /// Keys and certificates: authorities, agents, clients.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Show a zone's child table (the agent at --api's view).
    Zones(cmd::zones::ZonesArgs),
    /// Run an ad-hoc SQL query over every table the agent at --api holds.
    Query(cmd::zones::QueryArgs),
    /// Follow a zone's aggregate row: one line per change.
    Watch(cmd::watch::WatchArgs),
    /// Set an attribute of the agent at --api (it goes into its leaf row).
    Set(cmd::attr::SetArgs),
    /// Remove an attribute set with `armillary set`.
    Unset(cmd::attr::UnsetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => cmd::agent::run(args),
        Command::Dev(args) => cmd::dev::run(args),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Chm(c) => cmd::chm::run(c),
        Command::Dds(c) => cmd::dds::run(c),
        Command::Crm(c) => cmd::crm::run(c),
        Command::Evn(c) => cmd::evn::run(c),
        Command::Afc(c) => cmd::afc::run(c),
        Command::Keys(c) => cmd::keys::run(c),
        Command::Zones(a) => cmd::zones::zones(a),
        Command::Query(a) => cmd::zones::query(a),
        Command::Watch(a) => cmd::watch::run(a),
        Command::Set(a) => cmd::attr::set(a),
        Command::Unset(a) => cmd::attr::unset(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
