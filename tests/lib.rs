//! Test harness: clusters of real agents in one process, each with its own
//! QUIC endpoint on loopback, and helpers to wait for what gossip promises.

use armillary_agent::ZonePath;
use armillary_agent::node::NodeHandle;
pub use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zone_sql::{Attrs, Value};

/// The gossip round the tests run with: short, so a test takes seconds.
pub const ROUND: Duration = Duration::from_millis(200);
/// How long a test waits for a property before it fails (a hang guard, not
/// a performance assertion).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A fresh, unused directory path under the system's temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!(
        "armillary-test-{}-{name}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Starts `n` agents in a balanced tree; with `durable`, each keeps a data
/// directory under a fresh temporary directory.
pub async fn cluster(n: usize, branching: usize, durable: bool) -> Cluster {
    let mut spec = ClusterSpec::new(n, branching, ROUND);
    if durable {
        spec.data_root = Some(temp_dir("cluster"));
    }
    Cluster::start(spec).await.expect("agents start")
}

/// Waits until `check` holds for every live agent's view; false after
/// [`PATIENCE`].
pub async fn wait_all<F>(c: &Cluster, what: &str, mut check: F) -> bool
where
    F: FnMut(usize, &Views) -> bool,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut all = true;
        for (i, n) in c.live() {
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

/// Stops the cluster and removes its data directories.
pub async fn finish(c: Cluster) {
    let root = c.spec.data_root.clone();
    c.shutdown().await;
    if let Some(r) = root {
        let _ = std::fs::remove_dir_all(r);
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

/// Agent processes started by a test; killed when dropped.
pub struct Processes(pub Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until every agent of `ports` answers on its API (a group it is
/// not in is refused as bad input).
pub fn until_apis(ports: &[Ports]) {
    for p in ports {
        wait_for("the agents' APIs", || {
            run_cli(&["crm", "view", "g", "--api", &p.api_addr()])
                .status
                .code()
                == Some(2)
        });
    }
}

/// The API addresses of `ports`, comma-separated (an `--endpoints` list).
pub fn api_list(ports: &[Ports]) -> String {
    ports
        .iter()
        .map(|p| p.api_addr())
        .collect::<Vec<_>>()
        .join(",")
}

/// Loopback ports of one agent started by [`start_agents`].
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub gossip: u16,
    pub api: u16,
}

impl Ports {
    pub fn api_addr(&self) -> String {
        format!("127.0.0.1:{}", self.api)
    }

    pub fn gossip_addr(&self) -> String {
        format!("127.0.0.1:{}", self.gossip)
    }
}

/// The command that runs an `armillary agent` for `zone` on loopback ports
/// `gossip` and `api`, with its data under `data` and a 200 ms gossip
/// interval, joining the agent at gossip port `join`.
pub fn agent_command(
    zone: &str,
    gossip: u16,
    api: u16,
    join: Option<u16>,
    data: &Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(armillary_bin());
    cmd.args(["agent", "--zone", zone])
        .args(["--listen", &format!("127.0.0.1:{gossip}")])
        .args(["--api", &format!("127.0.0.1:{api}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--gossip-interval", "200ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(j) = join {
        cmd.args(["--join", &format!("127.0.0.1:{j}")]);
    }
    cmd
}

/// Starts one insecure agent for `zone` at `p`, data in `data`.
pub fn spawn_insecure(
    zone: &str,
    p: &Ports,
    join: Option<&Ports>,
    data: &Path,
) -> std::process::Child {
    agent_command(zone, p.gossip, p.api, join.map(|j| j.gossip), data)
        .arg("--insecure")
        .spawn()
        .expect("agent starts")
}

/// Starts one insecure `armillary agent` per zone on loopback (data under
/// `root`, a 200 ms gossip interval), all joining the first.
pub fn start_agents(root: &Path, zones: &[&str]) -> (Processes, Vec<Ports>) {
    let ports: Vec<Ports> = zones
        .iter()
        .map(|_| Ports {
            gossip: free_port(),
            api: free_port(),
        })
        .collect();
    let mut agents = Processes(Vec::new());
    for (i, p) in ports.iter().enumerate() {
        let join = (i > 0).then(|| &ports[0]);
        let data = root.join(format!("d{i}"));
        agents.0.push(spawn_insecure(zones[i], p, join, &data));
    }
    (agents, ports)
}

/// Runs the `armillary` binary with `args` and collects its output.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(armillary_bin())
        .args(args)
        .output()
        .expect("armillary runs")
}

/// Runs the `armillary` binary with `args`; panics unless it succeeds, and
/// gives its standard output.
pub fn run_ok(args: &[&str]) -> String {
    let out = run_cli(args);
    assert!(
        out.status.success(),
        "armillary {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `SUM(nmembers)` over the root table as the agent at `api` sees it.
pub fn root_members(api: &str) -> Option<i64> {
    let out = run_cli(&[
        "query",
        "SELECT SUM(nmembers) AS n FROM \"/\"",
        "--json",
        "--api",
        api,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?.get("n")?.as_i64()
}

/// A loopback port free for both UDP (gossip) and TCP (API).
pub fn free_port() -> u16 {
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let t = std::net::TcpListener::bind(("127.0.0.1", u.local_addr().unwrap().port()));
    match t {
        Ok(t) => t.local_addr().unwrap().port(),
        Err(_) => free_port(),
    }
}

/// Polls `f` until it holds; panics after [`PATIENCE`].
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + PATIENCE;
    while std::time::Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("gave up waiting for: {what}");
}
