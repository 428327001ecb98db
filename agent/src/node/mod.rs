//! The networked agent: tokio drives the sans-IO protocol core, QUIC
//! carries its messages, the data directory keeps what must survive a
//! restart, and a [`NodeHandle`] serves the API.

pub mod auth;
pub mod cluster;
mod core;
pub mod glue;
mod handle;
pub mod history;
pub mod sensors;
pub mod store;
pub mod tls;
pub mod transport;

pub use self::core::NodeCore;
pub use crate::security::now_micros;
pub use glue::{Glue, Jobs, ServiceSet};
pub use handle::{AfcView, Change, HistoryView, NodeError, NodeHandle, NodeInfo, RowView, Status};
pub use store::{Store, StoreError};
pub use transport::{NetCounters, PeerAuth, Transport, TransportError};

use crate::config::Config;
use crate::gossip::Agent;
use crate::host::Host;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use zone_sql::Attrs;

/// Messages waiting for the protocol core before new ones are dropped.
const INBOUND_QUEUE: usize = 4096;
/// Handle calls waiting for the node's task.
const JOB_QUEUE: usize = 256;
/// Changes a slow subscriber may fall behind before it loses the oldest.
const CHANGE_BUFFER: usize = 1024;

/// How to run one node.
pub struct NodeConfig {
    /// The protocol settings. `addr` is filled in from the bound address
    /// when empty.
    pub core: Config,
    /// The UDP address QUIC listens on (port 0 picks one).
    pub listen: SocketAddr,
    /// The data directory; `None` keeps nothing across restarts (tests, `dev`).
    pub data_dir: Option<PathBuf>,
    /// Keys and trust: peers are authenticated and rows signed; `None` is
    /// insecure mode.
    pub security: Option<Arc<crate::security::Security>>,
    /// Sensor readings for the leaf row (shared by the nodes of a process).
    pub sensors: Option<watch::Receiver<Attrs>>,
    /// How the hosted services run.
    pub services: ServiceOptions,
}

/// Settings of the services every agent hosts.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// CHM runs command checks (`--cmd`). Off unless the operator turns it
    /// on or the API is reachable from this host only: whoever may register
    /// a component may then run commands as the agent.
    pub cmd_checks: bool,
    /// Settings of CHM's core (the seed of its random choices is filled in).
    pub chm: crate::chm::proto::ChmConfig,
    /// Run the gossip core alone, with no service: the baseline that
    /// benchmarks measure the services' cost against.
    pub gossip_only: bool,
    /// Representatives of each child zone an EVN event is pushed to (None:
    /// the default; 0: anti-entropy alone, the baseline of `bench evn`).
    pub evn_fanout: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    transport: Arc<Transport>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Binds the transport, restores saved state and starts the protocol
    /// with the services every agent hosts ([`ServiceSet::standard`]).
    pub async fn start(cfg: NodeConfig) -> Result<Node, StartError> {
        let set = if cfg.services.gossip_only {
            ServiceSet::none()
        } else {
            ServiceSet::standard(&cfg.services, cfg.security.as_deref())
        };
        Node::start_with(cfg, set).await
    }

    /// [`Node::start`] with a chosen set of services beside the gossip
    /// core: messages for them are routed by the envelope's service id.
    pub async fn start_with(cfg: NodeConfig, set: ServiceSet) -> Result<Node, StartError> {
        let ServiceSet {
            cores: services,
            glue,
        } = set;
        let auth: Option<Arc<dyn PeerAuth>> = cfg.security.as_ref().map(|s| {
            Arc::new(auth::CertAuth::new(s.identity().clone(), s.trust().clone()))
                as Arc<dyn PeerAuth>
        });
        let identity = cfg
            .security
            .as_ref()
            .map(|s| s.identity().cert.subject.clone());
        let counters = Arc::new(NetCounters::default());
        let (in_tx, mut in_rx) = mpsc::channel(INBOUND_QUEUE);
        let store = match &cfg.data_dir {
            Some(d) => Some(Store::open(d, &cfg.core.leaf, cfg.core.cluster)?),
            None => None,
        };
        let reset_key = store.as_ref().map(Store::reset_key).transpose()?;
        let transport = Arc::new(Transport::bind(
            cfg.listen,
            reset_key,
            auth,
            cfg.core.cluster,
            in_tx,
            counters.clone(),
            crate::message::MAX_MESSAGE_BYTES,
        )?);
        let local = transport.local_addr();
        let mut core_cfg = cfg.core;
        if core_cfg.addr.is_empty() {
            core_cfg.addr = local.to_string().into();
        }
        if core_cfg.rng_seed == 0 {
            core_cfg.rng_seed = rand::random();
        }
        let gossip_addr = core_cfg.addr.to_string();
        let leaf = core_cfg.leaf.clone();
        let mut agent = Agent::new(core_cfg, now_micros());
        // Security first: restored AFCs are checked like any others.
        agent.set_security(cfg.security.clone());
        if let Some(s) = &store {
            let saved = s.load_state()?;
            tracing::info!(
                afcs = saved.afcs.len(),
                attrs = saved.attrs.len(),
                "restored saved state"
            );
            agent.restore(saved.afcs, saved.attrs);
        }
        // Then each service's own state, before its first input.
        let mut host = Host::new(agent, services);
        if let Some(s) = &store {
            let mut saved = Vec::new();
            for name in host.services.names() {
                if let Some(state) = s.load_service(name)? {
                    saved.push((name, state));
                }
            }
            host.restore(now_micros(), saved.iter().map(|(n, b)| (*n, &b[..])));
        }
        let (jobs_tx, mut jobs_rx) =
            mpsc::channel::<Box<dyn FnOnce(&mut NodeCore) + Send>>(JOB_QUEUE);
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let insecure = cfg.security.is_none();
        let handle = NodeHandle {
            jobs: jobs_tx,
            changes: changes.clone(),
            info: Arc::new(NodeInfo {
                leaf,
                gossip_addr: local,
                insecure,
            }),
        };
        let mut glue = glue;
        for g in &mut glue {
            g.start(&handle);
        }
        let mut core = NodeCore::new(
            host,
            store,
            changes,
            counters,
            insecure,
            identity,
            gossip_addr,
            glue,
            Jobs(handle.jobs.clone()),
        );
        let (stop, mut stopped) = watch::channel(false);
        let mut sensors = cfg.sensors;
        let tp = transport.clone();
        let task = tokio::spawn(async move {
            if let Some(s) = &mut sensors {
                core.host.gossip.set_sensors(s.borrow_and_update().clone());
            }
            loop {
                let due = core.host.poll_timeout();
                let wait = Duration::from_micros(due.saturating_sub(now_micros()));
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    Some(job) = jobs_rx.recv() => {
                        job(&mut core);
                        if let Some(d) = core.pause.take() {
                            // As a stopped process: no input, timer or transmit.
                            tokio::time::sleep(d).await;
                        }
                    }
                    Some(m) = in_rx.recv() => {
                        core.deliver(m);
                        // Drain what else has arrived before sending replies.
                        while let Ok(m) = in_rx.try_recv() {
                            core.deliver(m);
                        }
                    }
                    _ = tokio::time::sleep(wait) => core.host.handle_timeout(now_micros()),
                    Ok(()) = async {
                        match &mut sensors {
                            Some(s) => s.changed().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let reading = sensors.as_mut().map(|s| s.borrow_and_update().clone());
                        if let Some(r) = reading {
                            core.host.gossip.set_sensors(r);
                        }
                    }
                }
                let now = now_micros();
                if core.host.poll_timeout() <= now {
                    core.host.handle_timeout(now);
                }
                while let Some(t) = core.host.poll_transmit() {
                    tp.send(&t.to, t.bytes);
                }
                core.after_input();
            }
            core.after_input();
            tracing::debug!("agent stopped");
        });
        Ok(Node {
            handle,
            transport,
            stop,
            task,
        })
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The address QUIC is bound to.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The transport, for fault injection in tests.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Stops the protocol, saves state and closes connections.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.transport.close().await;
    }

    /// Stops at once without a goodbye, as a crash would (state already
    /// saved stays; nothing more is written).
    pub fn kill(self) {
        self.task.abort();
        self.transport.shutdown_now();
    }
}
