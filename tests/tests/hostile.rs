//! Security and hostile input over real QUIC: certified agents converge,
//! strangers and garbage are refused, counted, and change nothing.

use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use armillary_agent::node::{NetCounters, Node, NodeConfig, NodeError, Transport};
use armillary_agent::security::{CertKind, Identity, Reject, Security, now_micros, sign_afc};
use armillary_agent::{AfcCert, ClusterId, Config, InstallError, Message, ZonePath};
use armillary_tests::{ROUND, Views, wait_all};
use std::sync::Arc;
use std::time::Duration;
use zone_sql::Value;

async fn rejected(c: &Cluster, i: usize) -> std::collections::BTreeMap<String, u64> {
    c.handle(i).status().await.unwrap().rejected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certified_agents_converge_and_only_signed_afcs_install() {
    let mut spec = ClusterSpec::new(32, 4, ROUND);
    spec.secure = true;
    let c = Cluster::start(spec).await.unwrap();
    assert!(
        wait_all(&c, "32 members everywhere", |_, v| v.root_int("nmembers")
            == Some(32))
        .await
    );
    // Unsigned: refused, and says how to fix it.
    let unsigned = AfcCert::new(ZonePath::root(), "maxx", "SELECT MAX(x) AS x", now_micros());
    match c.handle(3).install_afc(unsigned.clone()).await {
        Err(e @ NodeError::Install(InstallError::Refused(Reject::Unsigned(_)))) => {
            assert!(e.to_string().contains("--key"), "{e}")
        }
        other => panic!("unsigned AFC accepted: {other:?}"),
    }
    // Signed by a client without the right to install at the root: refused.
    let auth = c.authority().unwrap();
    let eu_only = auth
        .new_child(
            CertKind::Client {
                allow: vec![armillary_agent::security::Right::parse("afc:/z00").unwrap()],
            },
            "ops",
            now_micros(),
            now_micros() + 3_600_000_000,
        )
        .unwrap();
    let mut wrong = unsigned.clone();
    sign_afc(&eu_only, &mut wrong);
    assert!(c.handle(3).install_afc(wrong).await.is_err());
    // Signed by the authority: spreads, and the attribute reaches every root row.
    let mut signed = unsigned;
    sign_afc(auth, &mut signed);
    c.handle(3).install_afc(signed).await.unwrap();
    c.handle(20)
        .set_attr("x".into(), Value::Int(7))
        .await
        .unwrap();
    assert!(wait_all(&c, "x = 7 everywhere", |_, v| v.root_int("x") == Some(7)).await);
    // Honest agents never refuse each other's rows.
    for i in 0..32 {
        let r = rejected(&c, i).await;
        assert!(
            !r.keys().any(|k| k == "bad_signature"
                || k == "issuer_outside_zone"
                || k == "untrusted_cert"),
            "agent {i} refused honest input: {r:?}"
        );
    }
    c.shutdown().await;
}

/// A node of zone `leaf` joining through `seed`, with the given security.
async fn stranger(leaf: &str, seed: &str, security: Option<Security>) -> Node {
    let leaf = ZonePath::parse(leaf).unwrap();
    let mut core = Config::new(leaf, "");
    core.round = ROUND.as_micros() as u64;
    core.seeds = vec![seed.into()];
    Node::start(NodeConfig {
        core,
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: None,
        security: security.map(Arc::new),
        sensors: None,
        services: Default::default(),
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_at_the_door() {
    let mut spec = ClusterSpec::new(8, 4, ROUND);
    spec.secure = true;
    let c = Cluster::start(spec).await.unwrap();
    assert!(wait_all(&c, "8 members", |_, v| v.root_int("nmembers") == Some(8)).await);
    let seed = c.node(0).unwrap().gossip_addr().to_string();
    // No keys at all, and keys from another authority.
    let plain = stranger("/z00/intruder", &seed, None).await;
    let other_root = Identity::new_root(
        &ZonePath::root(),
        now_micros(),
        now_micros() + 3_600_000_000,
    );
    let forged_leaf = ZonePath::parse("/z00/forger").unwrap();
    let forged_id = other_root
        .new_child(
            CertKind::Agent,
            forged_leaf.as_str(),
            now_micros(),
            now_micros() + 3_600_000_000,
        )
        .unwrap();
    let forged = stranger(
        "/z00/forger",
        &seed,
        Some(Security::for_agent(forged_id, &forged_leaf, now_micros()).unwrap()),
    )
    .await;
    tokio::time::sleep(ROUND * 15).await;
    for (i, _) in c.live() {
        let v = Views::of(&c.handle(i)).await;
        let z00 = ZonePath::parse("/z00").unwrap();
        assert!(!v.lists(&z00, "intruder") && !v.lists(&z00, "forger"));
        assert_eq!(v.root_int("nmembers"), Some(8));
    }
    let r = rejected(&c, 0).await;
    assert!(
        r.get("untrusted_peer").copied().unwrap_or(0) > 0,
        "foreign certificate not counted: {r:?}"
    );
    assert!(
        r.get("unauthenticated_peer").copied().unwrap_or(0) > 0,
        "keyless peer not counted: {r:?}"
    );
    plain.shutdown().await;
    forged.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_messages_are_counted_and_ignored() {
    let c = Cluster::start(ClusterSpec::new(4, 4, ROUND)).await.unwrap();
    assert!(wait_all(&c, "4 members", |_, v| v.root_int("nmembers") == Some(4)).await);
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let evil = Transport::bind(
        "127.0.0.1:0".parse().unwrap(),
        None,
        None,
        ClusterId::default(),
        tx,
        Arc::new(NetCounters::default()),
        1 << 20,
    )
    .unwrap();
    let target = c.node(1).unwrap().gossip_addr();
    evil.send_bytes(target, vec![0xff; 100]);
    evil.send_bytes(target, vec![7; 300 * 1024]);
    // A valid message cut short.
    let msg = armillary_agent::host::envelope::seal_gossip(
        ClusterId::default(),
        &Message::Ack {
            sender: ZonePath::parse("/z00/a").unwrap(),
            rows: Vec::new(),
        },
    );
    evil.send_bytes(target, msg[..msg.len().saturating_sub(1)].to_vec());
    let mut counted = false;
    for _ in 0..100 {
        let r = rejected(&c, 1).await;
        if r.get("malformed_message").copied().unwrap_or(0) >= 1
            && r.get("oversized_message").copied().unwrap_or(0) >= 1
        {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        counted,
        "rejections not counted: {:?}",
        rejected(&c, 1).await
    );
    // The agent carries on.
    c.handle(1)
        .set_attr("ok".into(), Value::Bool(true))
        .await
        .unwrap();
    assert!(
        wait_all(&c, "still 4 members", |_, v| v.root_int("nmembers")
            == Some(4))
        .await
    );
    evil.close().await;
    c.shutdown().await;
}
