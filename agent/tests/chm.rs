//! CHM over real QUIC on loopback: checks run by the agents, health seen
//! from every agent, failed agents detected, registrations kept across a
//! restart.

use armillary_agent::chm::{self, ChmCallError, proto};
use armillary_agent::node::NodeHandle;
use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use proto::{Check, CheckSpec, ComponentId, Registration, Status};
use std::time::{Duration, Instant};

fn reg(id: &str, check: Check) -> Registration {
    let mut spec = CheckSpec::new(check);
    spec.interval = 200_000;
    spec.timeout = 1_000_000;
    let mut r = Registration::new(ComponentId::parse(id).unwrap(), spec);
    r.keywords = vec!["web".into()];
    r
}

/// Waits until `id` has `status` as seen from every live agent.
async fn seen_everywhere(c: &Cluster, id: &str, status: Status, limit: Duration) -> Duration {
    let start = Instant::now();
    let handles: Vec<NodeHandle> = c.live().map(|(i, _)| c.handle(i)).collect();
    loop {
        let mut all = true;
        for h in &handles {
            match chm::lookup(h, id.to_string()).await {
                Ok(r) if r.status == status => {}
                _ => all = false,
            }
        }
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{id} not {status} everywhere within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP server answering 200 on every path until it is aborted.
async fn http_server() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", l.local_addr().unwrap());
    let app = axum::Router::new().fallback(|| async { "ok" });
    let task = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_checked_looked_up_everywhere_and_failed_agents_turn_critical() {
    let dir = tempdir();
    let mut spec = ClusterSpec::new(8, 4, Duration::from_millis(250));
    spec.data_root = Some(dir.clone());
    let mut c = Cluster::start(spec).await.unwrap();
    let (url, server) = http_server().await;
    chm::register(&c.handle(0), reg("web-1", Check::Http { url }))
        .await
        .unwrap();
    let mut ttl = reg("cache-7", Check::Ttl { ttl: 3_600_000_000 });
    ttl.keywords = vec!["cache".into()];
    chm::register(&c.handle(7), ttl).await.unwrap();
    chm::heartbeat(
        &c.handle(7),
        ComponentId::parse("cache-7").unwrap(),
        Status::Passing,
        String::new(),
    )
    .await
    .unwrap();
    let limit = Duration::from_secs(30);
    seen_everywhere(&c, "web-1", Status::Passing, limit).await;
    seen_everywhere(&c, "cache-7", Status::Passing, limit).await;
    // From the farthest agent: where it runs, who observed it.
    let r = chm::lookup(&c.handle(7), "web-1".into()).await.unwrap();
    assert_eq!(r.zone, c.leaves[0]);
    assert_eq!(r.observers, vec![c.leaves[0].clone()]);
    assert!(r.reason.contains("200 OK"), "{}", r.reason);
    let p = chm::providers(&c.handle(5), "web".into(), 8).await.unwrap();
    assert_eq!(p.len(), 1);
    // Every zone counts it; the whole tree lists both.
    let (all, complete) = chm::list(&c.handle(3), armillary_agent::ZonePath::root())
        .await
        .unwrap();
    assert!(complete);
    assert_eq!(all.len(), 2);

    // The checked server stops: critical at every agent.
    server.abort();
    seen_everywhere(&c, "web-1", Status::Critical, limit).await;

    // An agent dies: its component turns critical everywhere else, with the
    // reason "agent unreachable".
    c.kill(7);
    seen_everywhere(&c, "cache-7", Status::Critical, limit).await;
    let r = chm::lookup(&c.handle(0), "cache-7".into()).await.unwrap();
    assert_eq!(r.reason, proto::AGENT_UNREACHABLE);

    // Unknown ids are not found; bad input is refused with a reason.
    assert!(matches!(
        chm::lookup(&c.handle(0), "nope".into()).await,
        Err(ChmCallError::NotFound(_))
    ));
    // Command checks are off unless the operator turns them on.
    assert!(matches!(
        chm::register(
            &c.handle(1),
            reg(
                "job",
                Check::Cmd {
                    command: "true".into()
                }
            )
        )
        .await,
        Err(ChmCallError::CmdChecksOff)
    ));

    // A restarted agent keeps its registrations.
    let addr = c.stop(0).await.unwrap();
    c.restart(0, addr).await.unwrap();
    let own = chm::own(&c.handle(0)).await.unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].registration.id.as_str(), "web-1");
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "armillary-chm-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
