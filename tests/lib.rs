//! Test harness: clusters of real agents in one process, each with its own
//! QUIC endpoint on loopback, and helpers to wait for what gossip promises.

use armillary_agent::node::{Node, NodeConfig, NodeHandle};
use armillary_agent::sim::tree;
use armillary_agent::{Config, ZonePath};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zone_sql::{Attrs, Value};

/// The gossip round the tests run with: short, so a test takes seconds.
pub const ROUND: Duration = Duration::from_millis(200);
/// How long a test waits for a property before it fails (a hang guard, not
/// a performance assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A set of agents on loopback.
pub struct Cluster {
    pub leaves: Vec<ZonePath>,
    pub nodes: Vec<Option<Node>>,
    pub data: Vec<Option<PathBuf>>,
    seeds: Vec<Arc<str>>,
    round: Duration,
}

/// A fresh, empty directory under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "armillary-test-{}-{name}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

impl Cluster {
    /// Starts `n` agents in a balanced tree of the given branching; the
    /// first three are everyone's seeds. With `durable`, each agent keeps a
    /// data directory.
    pub async fn start(n: usize, branching: usize, durable: bool) -> Cluster {
        Self::start_with(n, branching, durable, ROUND).await
    }

    pub async fn start_with(n: usize, branching: usize, durable: bool, round: Duration) -> Cluster {
        let leaves = tree::balanced(n, branching);
        let mut c = Cluster {
            nodes: Vec::with_capacity(n),
            data: vec![None; n],
            leaves: leaves.clone(),
            seeds: Vec::new(),
            round,
        };
        for i in 0..n {
            if durable {
                c.data[i] = Some(temp_dir(&format!("agent{i}")));
            }
            let node = c.launch(i, "127.0.0.1:0").await;
            if c.seeds.len() < 3 {
                c.seeds.push(node.gossip_addr().to_string().into());
            }
            c.nodes.push(Some(node));
        }
        c
    }

    async fn launch(&self, i: usize, listen: &str) -> Node {
        // A stopped agent's socket is freed once its tasks have wound
        // down; a restart on the same address retries for a moment.
        let mut tries = 0;
        loop {
            let mut core = Config::new(self.leaves[i].clone(), "");
            core.round = self.round.as_micros() as u64;
            core.seeds = self.seeds.clone();
            let started = Node::start(
                NodeConfig {
                    core,
                    listen: listen.parse().expect("valid address"),
                    data_dir: self.data[i].clone(),
                    auth: None,
                    identity: None,
                    sensors: None,
                },
                |_| {},
            )
            .await;
            match started {
                Ok(n) => return n,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("agent {} does not start: {e}", self.leaves[i]),
            }
        }
    }

    pub fn handle(&self, i: usize) -> NodeHandle {
        self.nodes[i].as_ref().expect("agent is running").handle()
    }

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

    /// Stops agent `i` cleanly.
    pub async fn stop(&mut self, i: usize) -> std::net::SocketAddr {
        let n = self.nodes[i].take().expect("agent is running");
        let addr = n.gossip_addr();
        n.shutdown().await;
        addr
    }

    /// Starts agent `i` again on `listen` (its data directory, if any, is reused).
    pub async fn restart(&mut self, i: usize, listen: std::net::SocketAddr) {
        let node = self.launch(i, &listen.to_string()).await;
        self.nodes[i] = Some(node);
    }

    /// Waits until `check` holds for every live agent's view; returns false
    /// after [`PATIENCE`].
    pub async fn wait_all<F>(&self, what: &str, mut check: F) -> bool
    where
        F: FnMut(usize, &Views) -> bool,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut all = true;
            for (i, n) in self.live() {
                let v = Views::of(&n.handle()).await;
                if !check(i, &v) {
                    all = false;
                    break;
                }
            }
            if all {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                eprintln!("gave up waiting for: {what}");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn shutdown(self) {
        for n in self.nodes.into_iter().flatten() {
            n.shutdown().await;
        }
        for d in self.data.into_iter().flatten() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What one agent sees: its root row and every table it holds.
pub struct Views {
    pub root: Attrs,
    pub tables: Vec<(ZonePath, Vec<String>)>,
    pub afcs: Vec<(String, String, &'static str)>,
}

impl Views {
    pub async fn of(h: &NodeHandle) -> Views {
        let root = h.zone_row(ZonePath::root()).await.unwrap_or_default();
        let mut tables = Vec::new();
        for z in h.zones().await.unwrap_or_default() {
            let rows = h.table(z.clone()).await.unwrap_or_default();
            tables.push((z, rows.into_iter().map(|r| r.name).collect()));
        }
        let afcs = h
            .afcs(None)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.cert.scope.to_string(), a.cert.name.to_string(), a.state))
            .collect();
        Views { root, tables, afcs }
    }

    pub fn root_int(&self, attr: &str) -> Option<i64> {
        match self.root.get(attr) {
            Some(Value::Int(i)) => Some(*i),
            Some(Value::Float(f)) => Some(*f as i64),
            _ => None,
        }
    }

    /// True when `child` is listed in the table of `zone`.
    pub fn lists(&self, zone: &ZonePath, child: &str) -> bool {
        self.tables
            .iter()
            .any(|(z, names)| z == zone && names.iter().any(|n| n == child))
    }
}

/// The `armillary` binary next to the test executable (cargo builds it for
/// the workspace's tests).
pub fn armillary_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join(format!("armillary{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}
