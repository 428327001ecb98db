//! CHM's DNS interface read by a real resolver client (hickory-resolver over
//! UDP), against agents gossiping over QUIC on loopback.

use armillary_agent::chm::dns::DnsServer;
use armillary_agent::chm::{self, proto};
use armillary_agent::node::NodeHandle;
use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use proto::{Check, CheckSpec, ComponentId, Registration, Status};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn ttl_reg(id: &str, keyword: &str, address: &str) -> Registration {
    let mut r = Registration::new(
        ComponentId::parse(id).unwrap(),
        CheckSpec::new(Check::Ttl { ttl: 3_600_000_000 }),
    );
    r.keywords = vec![keyword.into()];
    r.address = Some(address.into());
    r
}

async fn beat(h: &NodeHandle, id: &str, status: Status) {
    chm::heartbeat(h, ComponentId::parse(id).unwrap(), status, String::new())
        .await
        .unwrap();
}

fn resolver(at: SocketAddr) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = at.port();
    let ns = NameServerConfig::new(at.ip(), true, vec![udp]);
    let cfg = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let mut b = TokioResolver::builder_with_config(cfg, TokioRuntimeProvider::default());
    let o = b.options_mut();
    o.cache_size = 0;
    o.attempts = 2;
    o.timeout = Duration::from_secs(5);
    b.build().unwrap()
}

/// The answer records of `name`, or the resolver's error.
async fn ask(
    r: &TokioResolver,
    name: &str,
    t: RecordType,
) -> Result<Vec<hickory_resolver::proto::rr::Record>, hickory_resolver::net::NetError> {
    r.lookup(name, t).await.map(|l| l.answers().to_vec())
}

/// Asks until `ok` holds for the answer, or fails after `limit`.
async fn until<F>(r: &TokioResolver, name: &str, t: RecordType, limit: Duration, ok: F)
where
    F: Fn(
        &Result<Vec<hickory_resolver::proto::rr::Record>, hickory_resolver::net::NetError>,
    ) -> bool,
{
    let start = Instant::now();
    loop {
        let a = ask(r, name, t).await;
        if ok(&a) {
            return;
        }
        assert!(start.elapsed() < limit, "{name} {t}: last answer {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_finds_passing_components_nearest_first_and_nothing_else() {
    let c = Cluster::start(ClusterSpec::new(4, 2, Duration::from_millis(200)))
        .await
        .unwrap();
    // web-1 far from the DNS agent, web-2 on it; db-1 critical.
    chm::register(&c.handle(0), ttl_reg("web-1", "web", "10.1.2.3:8080"))
        .await
        .unwrap();
    chm::register(&c.handle(3), ttl_reg("web-2", "web", "10.1.2.4:8081"))
        .await
        .unwrap();
    chm::register(&c.handle(1), ttl_reg("db-1", "db", "10.1.2.5:5432"))
        .await
        .unwrap();
    beat(&c.handle(0), "web-1", Status::Passing).await;
    beat(&c.handle(3), "web-2", Status::Passing).await;
    beat(&c.handle(1), "db-1", Status::Critical).await;

    let dns = DnsServer::bind("127.0.0.1:0".parse().unwrap(), c.handle(3))
        .await
        .unwrap();
    let r = resolver(dns.local_addr());
    let limit = Duration::from_secs(30);

    // A and SRV of a passing component, TTL 0.
    until(
        &r,
        "web-1.component.armillary.",
        RecordType::A,
        limit,
        |a| a.as_ref().is_ok_and(|rs| !rs.is_empty()),
    )
    .await;
    let a = ask(&r, "web-1.component.armillary.", RecordType::A)
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].data.ip_addr(), Some("10.1.2.3".parse().unwrap()));
    assert_eq!(a[0].ttl, 0);
    let srv = ask(&r, "WEB-1.component.armillary.", RecordType::SRV)
        .await
        .unwrap();
    let RData::SRV(s) = &srv[0].data else {
        panic!("not an SRV: {srv:?}")
    };
    assert_eq!(s.port, 8080);

    // The providers of a keyword, nearest first: web-2 runs on the
    // answering agent, web-1 three zones away.
    until(&r, "web.service.armillary.", RecordType::SRV, limit, |a| {
        a.as_ref().is_ok_and(|rs| rs.len() == 2)
    })
    .await;
    let mut srvs: Vec<(u16, u16)> = ask(&r, "web.service.armillary.", RecordType::SRV)
        .await
        .unwrap()
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(s) => Some((s.priority, s.port)),
            _ => None,
        })
        .collect();
    srvs.sort();
    assert_eq!(srvs, [(0, 8081), (1, 8080)]);

    // Unknown names are NXDOMAIN; a critical component has no records.
    let e = ask(&r, "nope.component.armillary.", RecordType::A)
        .await
        .unwrap_err();
    assert!(e.is_nx_domain(), "{e:?}");
    let e = ask(&r, "nothing.service.armillary.", RecordType::SRV)
        .await
        .unwrap_err();
    assert!(e.is_nx_domain(), "{e:?}");
    until(&r, "db-1.component.armillary.", RecordType::A, limit, |a| {
        a.as_ref()
            .is_err_and(|e| e.is_no_records_found() && !e.is_nx_domain())
    })
    .await;

    // web-1 turns critical: its records go, and web-2 alone provides.
    beat(&c.handle(0), "web-1", Status::Critical).await;
    until(
        &r,
        "web-1.component.armillary.",
        RecordType::A,
        limit,
        |a| {
            a.as_ref()
                .is_err_and(|e| e.is_no_records_found() && !e.is_nx_domain())
        },
    )
    .await;
    until(&r, "web.service.armillary.", RecordType::SRV, limit, |a| {
        a.as_ref().is_ok_and(|rs| rs.len() == 1)
    })
    .await;
    dns.shutdown().await.unwrap();
    c.shutdown().await;
}
