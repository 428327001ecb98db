//! `armillary agent`: one agent, gossiping over QUIC and serving the HTTP API.

use crate::output::{CliError, CliResult};
use crate::runtime;
use armillary_agent::api::{AccessError, ApiAccess, ApiToken};
use armillary_agent::chm::dns::DnsServer;
use armillary_agent::cluster::DEFAULT_CLUSTER;
use armillary_agent::node::sensors::{DEFAULT_INTERVAL, Sensors};
use armillary_agent::node::{Node, NodeConfig, Store};
use armillary_agent::security::{Identity, KeysDir, Role, Security, now_micros};
use armillary_agent::{ClusterId, Config, ZonePath};
use clap::Args;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct AgentArgs {
    /// This agent's leaf zone, e.g. /eu/paris/h7.
    #[arg(long)]
    zone: Option<String>,
    /// UDP address for gossip (QUIC) [default: 0.0.0.0:7700].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address other agents reach this one at [default: the listen address,
    /// or this host's address toward the first --join address].
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Address of the HTTP API [default: 127.0.0.1:8080].
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Serve CHM's DNS interface (`ID.component.armillary.`,
    /// `KEYWORD.service.armillary.`) on this UDP and TCP address.
    #[arg(long, value_name = "ADDR")]
    dns: Option<SocketAddr>,
    /// Agents to join through (host:port, comma separated).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// The cluster this agent belongs to: agents of other clusters are
    /// refused. Kept in the data directory [default: armillary].
    #[arg(long)]
    cluster_id: Option<String>,
    /// Directory of durable state (AFCs, attributes, keys).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keys directory written by `armillary keys agent`.
    #[arg(long, conflicts_with = "insecure")]
    keys: Option<PathBuf>,
    /// Run without keys: no authentication, no signatures.
    #[arg(long)]
    insecure: bool,
    /// TOML file with the same settings (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Gossip round length [default: 1s].
    #[arg(long)]
    gossip_interval: Option<humantime::Duration>,
    /// Let components register command checks (`chm register --cmd`):
    /// whoever may use the API then runs commands as this agent's user.
    #[arg(long)]
    enable_cmd_checks: bool,
    #[command(flatten)]
    access: ApiAccessArgs,
}

/// Who may use the API: `--api-host` and `--api-token-file`, on `agent` and `dev`.
#[derive(Args, Default)]
pub struct ApiAccessArgs {
    /// Another name the API answers to in the Host header (repeatable). By
    /// default only its own address: localhost, 127.0.0.1 and [::1] on loopback.
    #[arg(long = "api-host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// A file holding the bearer token every API request must carry; needed
    /// when the API is served beyond loopback.
    #[arg(long = "api-token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ApiAccessArgs {
    /// The access rules for an API bound to `api`; exit code 2 for a bad
    /// name or token file, or an API beyond loopback without a token.
    pub fn resolve(&self, api: SocketAddr) -> Result<ApiAccess, CliError> {
        let usage = |e: AccessError| CliError::usage(e.to_string());
        let mut access = ApiAccess::default();
        for h in &self.hosts {
            access.allow_host(h).map_err(usage)?;
        }
        if let Some(f) = &self.token_file {
            access.token = Some(ApiToken::read(f).map_err(usage)?);
            warn_if_readable(f);
        }
        access.check_exposure(api).map_err(usage)?;
        Ok(access)
    }
}

/// A token file others on the host can read is worth a warning.
fn warn_if_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} can be read by other users; `chmod 600` it",
                path.display()
            );
        }
    }
}

/// The settings file: the flags' names, with `_` for `-`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    zone: Option<String>,
    listen: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    api: Option<SocketAddr>,
    dns: Option<SocketAddr>,
    #[serde(default)]
    join: Vec<String>,
    cluster_id: Option<String>,
    data_dir: Option<PathBuf>,
    keys: Option<PathBuf>,
    insecure: Option<bool>,
    gossip_interval: Option<String>,
    /// Representatives per zone.
    reps: Option<usize>,
    /// Failure timeout: rounds plus rounds per doubling of the zone's members.
    fail_rounds: Option<u64>,
    fail_rounds_per_doubling: Option<u64>,
    /// Eager push of changed rows.
    push: Option<bool>,
    sensor_interval: Option<String>,
    /// Names the API answers to besides its address (`--api-host`).
    #[serde(default)]
    api_host: Vec<String>,
    api_token_file: Option<PathBuf>,
    /// Command checks allowed (`--enable-cmd-checks`).
    enable_cmd_checks: Option<bool>,
}

fn read_settings(path: &Path) -> Result<FileSettings, CliError> {
    let bytes = armillary_agent::fsutil::read_bounded(path, 1 << 20)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| CliError::usage(format!("{} is not UTF-8 text", path.display())))?;
    toml::from_str(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
}

fn duration(text: &str, what: &str) -> Result<Duration, CliError> {
    humantime::parse_duration(text)
        .map_err(|e| CliError::usage(format!("{what} {text:?}: {e} (e.g. \"1s\", \"500ms\")")))
}

fn resolve(addr: &str) -> Result<SocketAddr, CliError> {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            CliError::usage(format!(
                "cannot resolve --join address {addr:?} (host:port)"
            ))
        })
}

/// The address peers should use: the listen address, or when that is a
/// wildcard, the local address of the route toward the first seed.
fn advertised(listen: SocketAddr, seeds: &[SocketAddr]) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let ip = seeds
        .first()
        .and_then(|s| {
            let probe = UdpSocket::bind((listen.ip(), 0)).ok()?;
            probe.connect(s).ok()?;
            probe.local_addr().ok().map(|a| a.ip())
        })
        .unwrap_or_else(|| "127.0.0.1".parse().expect("valid ip"));
    SocketAddr::new(ip, listen.port())
}

pub fn run(a: AgentArgs) -> CliResult {
    let file = match &a.config {
        Some(p) => read_settings(p)?,
        None => FileSettings::default(),
    };
    let zone = a
        .zone
        .or(file.zone)
        .ok_or_else(|| CliError::usage("give the agent's zone: --zone /eu/paris/h7"))?;
    let leaf = ZonePath::parse(&zone).map_err(|e| CliError::usage(format!("--zone: {e}")))?;
    if leaf.depth() == 0 {
        return Err(CliError::usage(
            "--zone must name a leaf below /, e.g. /eu/paris/h7",
        ));
    }
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "0.0.0.0:7700".parse().expect("valid address"));
    let api = a
        .api
        .or(file.api)
        .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid address"));
    let dns = a.dns.or(file.dns);
    let join: Vec<String> = if a.join.is_empty() { file.join } else { a.join };
    let cluster_name = a
        .cluster_id
        .or(file.cluster_id)
        .unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    let cluster = ClusterId::named(&cluster_name)
        .map_err(|e| CliError::usage(format!("--cluster-id: {e}")))?;
    let access = ApiAccessArgs {
        hosts: if a.access.hosts.is_empty() {
            file.api_host
        } else {
            a.access.hosts
        },
        token_file: a.access.token_file.or(file.api_token_file),
    }
    .resolve(api)?;
    let seeds = join
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| resolve(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let data_dir = a.data_dir.or(file.data_dir).ok_or_else(|| {
        CliError::usage("give a data directory for durable state: --data-dir DIR")
    })?;
    let insecure = a.insecure || file.insecure.unwrap_or(false);
    let keys = a.keys.or(file.keys);
    if insecure && keys.is_some() {
        return Err(CliError::usage("--insecure and --keys exclude each other"));
    }
    let round = match (a.gossip_interval, &file.gossip_interval) {
        (Some(d), _) => *d,
        (None, Some(t)) => duration(t, "gossip_interval")?,
        (None, None) => Duration::from_secs(1),
    };
    if round < Duration::from_millis(50) || round > Duration::from_secs(600) {
        return Err(CliError::usage(
            "the gossip interval must lie between 50ms and 10m",
        ));
    }
    let sensor_interval = match &file.sensor_interval {
        Some(t) => duration(t, "sensor_interval")?,
        None => DEFAULT_INTERVAL,
    };

    // The data directory first: it must be ours before anything is written.
    let store =
        Store::open(&data_dir, &leaf, cluster).map_err(|e| CliError::usage(e.to_string()))?;
    let security = if insecure {
        None
    } else {
        let from = match keys {
            Some(k) => {
                store
                    .adopt_keys(&k)
                    .map_err(|e| CliError::usage(format!("cannot keep the keys: {e}")))?;
                store.keys_dir()
            }
            None if store.keys_dir().exists() => store.keys_dir(),
            None => {
                return Err(CliError::usage(
                    "give the agent's keys (--keys DIR, from `armillary keys agent`) or run with --insecure",
                ));
            }
        };
        let identity =
            Identity::load_as(&from, Role::Agent).map_err(|e| CliError::usage(e.to_string()))?;
        Some(
            Security::for_agent(identity, &leaf, now_micros())
                .map_err(|e| CliError::usage(e.to_string()))?,
        )
    };

    let adv = a
        .advertise
        .or(file.advertise)
        .unwrap_or_else(|| advertised(listen, &seeds));
    let mut core = Config::new(leaf.clone(), adv.to_string());
    core.cluster = cluster;
    core.api_addr = Some(api.to_string().into());
    core.seeds = seeds.iter().map(|s| s.to_string().into()).collect();
    core.round = round.as_micros() as u64;
    if let Some(r) = file.reps {
        core.reps = r.clamp(1, 16);
    }
    if let Some(f) = file.fail_rounds {
        core.fail_base = f.max(2);
    }
    if let Some(f) = file.fail_rounds_per_doubling {
        core.fail_per_log2 = f;
    }
    if let Some(p) = file.push {
        core.push = p;
    }

    let services = armillary_agent::node::ServiceOptions {
        cmd_checks: a.enable_cmd_checks || file.enable_cmd_checks.unwrap_or(false),
        ..Default::default()
    };
    let has_token = access.token.is_some();
    runtime::init_logging(insecure);
    runtime::tokio()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(api).await.map_err(|e| {
            CliError::failed(format!(
                "cannot serve the API on {api}: {e}; choose another --api"
            ))
        })?;
        let node = Node::start(NodeConfig {
            core,
            listen,
            data_dir: Some(data_dir.clone()),
            security: security.map(Arc::new),
            sensors: Some(Sensors::spawn(sensor_interval)),
            services,
        })
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
        tracing::info!(
            zone = %leaf,
            gossip = %node.gossip_addr(),
            %api,
            api_token = has_token,
            data_dir = %data_dir.display(),
            secure = !insecure,
            "agent started"
        );
        if insecure {
            tracing::warn!(
                "running without keys: peers are not authenticated and rows are not signed"
            );
        }
        let dns = match dns {
            Some(addr) => {
                let d = DnsServer::bind(addr, node.handle())
                    .await
                    .map_err(|e| CliError::failed(e.to_string()))?;
                tracing::info!(dns = %d.local_addr(), "serving DNS");
                Some(d)
            }
            None => None,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(armillary_agent::api::serve(
            listener,
            node.handle(),
            access,
            async move {
                let _ = stop_rx.await;
            },
        ));
        runtime::wait_for_signal().await;
        tracing::info!("stopping");
        let _ = stop_tx.send(());
        let _ = server.await;
        if let Some(d) = dns {
            let _ = d.shutdown().await;
        }
        node.shutdown().await;
        Ok(())
    })
}
