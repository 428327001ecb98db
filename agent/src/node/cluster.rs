//! Many agents in one process, each with its own QUIC endpoint on
//! loopback: `armillary dev`, the network benchmark and the tests use it.

use super::{Node, NodeConfig, StartError};
use crate::config::Config;
use crate::path::ZonePath;
use crate::security::{CertKind, Identity, Security, now_micros};
use crate::sim::tree;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use zone_sql::Attrs;

/// How to build a local cluster.
#[derive(Clone)]
pub struct ClusterSpec {
    pub agents: usize,
    pub branching: usize,
    pub round: Duration,
    /// Eager push of changed rows (off: gossip alone).
    pub push: bool,
    /// Certificates from a throwaway authority: authenticated peers, signed rows.
    pub secure: bool,
    /// A data directory per agent under this directory.
    pub data_root: Option<PathBuf>,
    /// The API address the first agent advertises in `servers`.
    pub api_addr: Option<String>,
    pub sensors: Option<watch::Receiver<Attrs>>,
    /// Readings of each agent's own sensors, by index, in place of the
    /// shared `sensors` (the network benchmark changes them one agent at a time).
    pub own_sensors: Vec<watch::Receiver<Attrs>>,
    /// How every agent's services run.
    pub services: super::ServiceOptions,
}

impl ClusterSpec {
    pub fn new(agents: usize, branching: usize, round: Duration) -> ClusterSpec {
        ClusterSpec {
            agents,
            branching,
            round,
            push: true,
            secure: false,
            data_root: None,
            api_addr: None,
            sensors: None,
            own_sensors: Vec::new(),
            services: Default::default(),
        }
    }
}

/// A running local cluster; agents are addressed by index (their rank in
/// [`tree::balanced`] order).
pub struct Cluster {
    pub spec: ClusterSpec,
    pub leaves: Vec<ZonePath>,
    pub nodes: Vec<Option<Node>>,
    seeds: Vec<Arc<str>>,
    authority: Option<Identity>,
}

impl Cluster {
    /// Starts every agent; the first three are everyone's seeds.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, StartError> {
        let leaves = tree::balanced(spec.agents, spec.branching);
        let authority = spec.secure.then(|| {
            Identity::new_root(
                &ZonePath::root(),
                now_micros(),
                now_micros() + 86_400_000_000,
            )
        });
        let mut c = Cluster {
            nodes: Vec::with_capacity(leaves.len()),
            leaves,
            spec,
            seeds: Vec::new(),
            authority,
        };
        for i in 0..c.leaves.len() {
            let node = c
                .launch(i, "127.0.0.1:0".parse().expect("valid address"))
                .await?;
            if c.seeds.len() < 3 {
                c.seeds.push(node.gossip_addr().to_string().into());
            }
            c.nodes.push(Some(node));
        }
        Ok(c)
    }

    /// The data directory of agent `i`, if the cluster keeps them.
    pub fn data_dir(&self, i: usize) -> Option<PathBuf> {
        self.spec
            .data_root
            .as_ref()
            .map(|r| r.join(format!("agent{i}")))
    }

    async fn launch(&self, i: usize, listen: std::net::SocketAddr) -> Result<Node, StartError> {
        let leaf = self.leaves[i].clone();
        let mut core = Config::new(leaf.clone(), "");
        core.round = self.spec.round.as_micros() as u64;
        core.seeds = self.seeds.clone();
        core.push = self.spec.push;
        if i == 0 {
            core.api_addr = self.spec.api_addr.clone().map(Into::into);
        }
        let security = self.authority.as_ref().map(|a| {
            let id = a
                .new_child(
                    CertKind::Agent,
                    leaf.as_str(),
                    now_micros(),
                    now_micros() + 86_400_000_000,
                )
                .expect("the root authority certifies any zone");
            Arc::new(Security::for_agent(id, &leaf, now_micros()).expect("fresh keys verify"))
        });
        Node::start(NodeConfig {
            core,
            listen,
            data_dir: self.data_dir(i),
            security,
            sensors: self
                .spec
                .own_sensors
                .get(i)
                .or(self.spec.sensors.as_ref())
                .cloned(),
            services: self.spec.services.clone(),
        })
        .await
    }

    /// The throwaway root authority of a secure cluster (it may sign AFCs).
    pub fn authority(&self) -> Option<&Identity> {
        self.authority.as_ref()
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes.get(i).and_then(|n| n.as_ref())
    }

    pub fn handle(&self, i: usize) -> super::NodeHandle {
        self.node(i).expect("agent is running").handle()
    }

    /// The running agents with their indices.
    pub fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// Kills agent `i` as a crash would: no goodbye, nothing saved after.
    pub fn kill(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.kill();
        }
    }

    /// Stops agent `i` cleanly; returns its address for a restart.
    pub async fn stop(&mut self, i: usize) -> Option<std::net::SocketAddr> {
        let n = self.nodes[i].take()?;
        let addr = n.gossip_addr();
        n.shutdown().await;
        Some(addr)
    }

    /// Starts agent `i` again on `listen`, with its data directory if any.
    /// A stopped agent's socket is freed once its tasks wind down, so the
    /// bind is retried for a few seconds.
    pub async fn restart(
        &mut self,
        i: usize,
        listen: std::net::SocketAddr,
    ) -> Result<(), StartError> {
        let mut tries = 0;
        loop {
            match self.launch(i, listen).await {
                Ok(n) => {
                    self.nodes[i] = Some(n);
                    return Ok(());
                }
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops every agent cleanly.
    pub async fn shutdown(self) {
        futures_util::future::join_all(self.nodes.into_iter().flatten().map(Node::shutdown)).await;
    }
}
