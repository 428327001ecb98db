//! The versioned envelope over real QUIC on loopback: a peer of another
//! cluster is refused at the hello and counted, an unknown format version
//! gets its own refusal, at the hello and on a message stream, and a
//! message of our cluster and version arrives with its service id.

use armillary_agent::host::FORMAT_VERSION;
use armillary_agent::host::envelope::{seal, seal_gossip};
use armillary_agent::node::transport::{Body, Inbound};
use armillary_agent::node::{NetCounters, Transport};
use armillary_agent::{ClusterId, Message, ZonePath};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

fn transport(cluster: ClusterId) -> (Transport, Arc<NetCounters>, mpsc::Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel(16);
    let counters = Arc::new(NetCounters::default());
    let t = Transport::bind(
        "127.0.0.1:0".parse().unwrap(),
        None,
        None,
        cluster,
        tx,
        counters.clone(),
        1 << 20,
    )
    .expect("binds on loopback");
    (t, counters, rx)
}

fn ack() -> Message {
    Message::Ack {
        sender: ZonePath::parse("/z/a").unwrap(),
        rows: Vec::new(),
    }
}

/// Waits (at most 5 s) until `counters` count `reason` at least `n` times.
async fn counted(counters: &NetCounters, reason: &str, n: u64) -> bool {
    for _ in 0..100 {
        let mut r = BTreeMap::new();
        counters.add_rejected(&mut r);
        if r.get(reason).copied().unwrap_or(0) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn another_cluster_is_refused_at_the_hello_and_counted() {
    let ours = ClusterId::default();
    let theirs = ClusterId::named("elsewhere").unwrap();
    let (b, b_counters, mut b_in) = transport(ours);
    let to = b.local_addr().to_string();

    let (stranger, _, _s_in) = transport(theirs);
    stranger.send(&to, seal_gossip(theirs, &ack()));
    assert!(counted(&b_counters, "wrong_cluster", 1).await);
    assert!(b_in.try_recv().is_err(), "a stranger's message got through");

    // A peer of our cluster gets through, its service id kept.
    let (friend, _, _f_in) = transport(ours);
    friend.send(&to, seal(ours, 9, b"payload"));
    let got = tokio::time::timeout(Duration::from_secs(5), b_in.recv())
        .await
        .expect("delivered in time")
        .expect("delivered");
    match got.body {
        Body::Service { id, payload } => assert_eq!((id, &payload[..]), (9, &b"payload"[..])),
        Body::Gossip(m) => panic!("a service message arrived as gossip: {m:?}"),
    }
    assert_eq!(*got.from.addr, *friend.local_addr().to_string());
    for t in [b, stranger, friend] {
        t.close().await;
    }
}

#[tokio::test]
async fn an_unknown_version_is_refused_as_such() {
    let ours = ClusterId::default();
    let (b, b_counters, mut b_in) = transport(ours);
    let to = b.local_addr().to_string();

    // At the hello: a peer of a later release.
    let (newer, _, _n_in) = transport(ours);
    newer.announce_version(FORMAT_VERSION + 1);
    newer.send(&to, seal_gossip(ours, &ack()));
    assert!(counted(&b_counters, "unknown_version", 1).await);
    assert!(b_in.try_recv().is_err());

    // On a message stream, after a good hello.
    let (peer, _, _p_in) = transport(ours);
    let mut bytes = seal_gossip(ours, &ack());
    bytes[0] = FORMAT_VERSION + 1;
    peer.send(&to, bytes);
    assert!(counted(&b_counters, "unknown_version", 2).await);
    // The same connection still carries messages of our version.
    peer.send(&to, seal_gossip(ours, &ack()));
    let got = tokio::time::timeout(Duration::from_secs(5), b_in.recv())
        .await
        .expect("delivered in time")
        .expect("delivered");
    assert!(matches!(got.body, Body::Gossip(Message::Ack { .. })));
    for t in [b, newer, peer] {
        t.close().await;
    }
}
