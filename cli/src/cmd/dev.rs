//! `armillary dev`: a local system of many agents in one process, each with
//! its own QUIC endpoint on loopback, with one API. Insecure by default;
//! `--secure` certifies every agent with a throwaway root authority whose
//! keys are written to a temporary directory for signing AFCs.

use crate::cmd::agent::ApiAccessArgs;
use crate::output::{CliError, CliResult};
use crate::runtime;
use armillary_agent::ZonePath;
use armillary_agent::api::ApiAccess;
use armillary_agent::chm::dns::DnsServer;
use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use armillary_agent::node::sensors::{DEFAULT_INTERVAL, Sensors};
use armillary_agent::security::KeysDir;
use armillary_agent::sim::tree;
use clap::Args;
use std::net::SocketAddr;

#[derive(Args)]
pub struct DevArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 16)]
    agents: usize,
    /// Most children per zone (16 agents with 4: two levels of four).
    #[arg(long, default_value_t = 4)]
    branching: usize,
    /// Address of the HTTP API (served by the first agent).
    #[arg(long, default_value = "127.0.0.1:8080")]
    api: SocketAddr,
    /// Address of CHM's DNS interface (UDP and TCP, answered by the first agent).
    #[arg(long, default_value = "127.0.0.1:8600")]
    dns: SocketAddr,
    /// Gossip round length.
    #[arg(long, default_value = "1s")]
    round: humantime::Duration,
    /// Certify every agent with a throwaway authority (signed rows,
    /// authenticated connections); AFCs then need `--key` with the printed directory.
    #[arg(long)]
    secure: bool,
    #[command(flatten)]
    access: ApiAccessArgs,
}

pub fn run(a: DevArgs) -> CliResult {
    if a.agents == 0 || a.agents > 4096 {
        return Err(CliError::usage("--agents must be between 1 and 4096"));
    }
    let access = a.access.resolve(a.api)?;
    runtime::init_logging(!a.secure);
    runtime::tokio()?.block_on(dev(a, access))
}

async fn dev(a: DevArgs, access: ApiAccess) -> CliResult {
    let listener = tokio::net::TcpListener::bind(a.api).await.map_err(|e| {
        CliError::failed(format!(
            "cannot serve the API on {}: {e}; pick another address with --api",
            a.api
        ))
    })?;
    let mut spec = ClusterSpec::new(a.agents, a.branching, *a.round);
    spec.api_addr = Some(a.api.to_string());
    spec.sensors = Some(Sensors::spawn(DEFAULT_INTERVAL));
    spec.secure = a.secure;
    // A development system on loopback runs command checks.
    spec.services.cmd_checks = true;
    let cluster = Cluster::start(spec)
        .await
        .map_err(|e| CliError::failed(format!("cannot start the agents: {e}")))?;
    let leaves = cluster.leaves.clone();
    let first = cluster.handle(0);
    let keys = match cluster.authority() {
        Some(auth) => {
            let dir = std::env::temp_dir().join(format!("armillary-dev-{}", std::process::id()));
            auth.save(&dir, true).map_err(|e| {
                CliError::failed(format!("cannot write the dev authority's keys: {e}"))
            })?;
            Some(dir)
        }
        None => None,
    };
    let dns = DnsServer::bind(a.dns, first.clone())
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    print_intro(&a, &leaves, keys.as_deref(), dns.local_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(armillary_agent::api::serve(
        listener,
        first,
        access,
        async move {
            let _ = stop_rx.await;
        },
    ));
    runtime::wait_for_signal().await;
    eprintln!("stopping {} agents...", leaves.len());
    let _ = stop_tx.send(());
    let _ = api.await;
    let _ = dns.shutdown().await;
    cluster.shutdown().await;
    if let Some(k) = keys {
        let _ = std::fs::remove_dir_all(k);
    }
    Ok(())
}

fn print_intro(a: &DevArgs, leaves: &[ZonePath], keys: Option<&std::path::Path>, dns: SocketAddr) {
    let (mode, key) = match keys {
        Some(k) => (
            format!("secure, authority keys in {}", k.display()),
            format!(" --key {}", k.display()),
        ),
        None => ("INSECURE (no keys)".to_string(), String::new()),
    };
    let levels = tree::levels(leaves);
    let api = a.api;
    let mut env = if api.to_string() == "127.0.0.1:8080" {
        String::new()
    } else {
        format!("export ARMILLARY_API={api}\n  ")
    };
    if let Some(f) = &a.access.token_file {
        env.push_str(&format!(
            "export ARMILLARY_API_TOKEN=$(cat {})   # the API needs its token\n  ",
            f.display()
        ));
    }
    println!(
        "Armillary dev system: {} agents, {} levels, gossip every {}, {mode}.
API of {} on http://{api}/v1/status, dashboard on http://{api}/
DNS on {dns} (udp and tcp): dig @{} -p {} web-1.component.armillary.

Try:
  {env}armillary zones                     # the root table
{}  armillary set role web                # an attribute on {}
  armillary afc install busy --zone / --sql 'SELECT MAX(load) AS load, AVG(cpu, nmembers) AS cpu'{key}
  armillary watch / --attr load --attr cpu --attr nmembers
  armillary query 'SELECT name, nmembers FROM \"/\" ORDER BY name'
  armillary chm register web-1 --http http://127.0.0.1:{}/v1/status --interval 2s --keyword web
  armillary chm lookup web-1
  armillary query 'SELECT name, chm_passing, chm_critical FROM \"/\"'

Ctrl-C stops every agent.",
        leaves.len(),
        levels,
        a.round,
        leaves[0],
        dns.ip(),
        dns.port(),
        if levels > 1 {
            format!(
                "  armillary zones {:<20} # one zone's children\n",
                leaves[0].ancestor(1).as_str()
            )
        } else {
            String::new()
        },
        leaves[0],
        api.port(),
    );
}
