//! DDS hosted by every agent, over real QUIC on loopback: a channel created
//! at one agent is found by the others through the zone tree, subscribers
//! at other agents get every message in order, a late subscriber gets the
//! retained tail, and bad requests are refused with a reason.

use armillary_agent::dds::{self, DdsCallError, Next, Subscription, proto};
use armillary_agent::node::NodeHandle;
use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use proto::{DdsError, SlowPolicy};
use std::time::{Duration, Instant};

/// The next messages of `s`, or a failure after `limit`.
async fn next_messages(s: &mut Subscription, limit: Duration) -> Vec<proto::Delivery> {
    match tokio::time::timeout(limit, s.next()).await {
        Ok(Ok(Next::Messages(m))) => m,
        other => panic!("no messages: {other:?}"),
    }
}

/// Creates a channel at `h`, right after the agents started (the
/// runtime waits for DDS's first tick).
async fn create(h: &NodeHandle, name: &str, stack: &str, retain: u32) -> proto::ChannelInfo {
    dds::create(h, name.into(), stack.into(), None, retain, SlowPolicy::Skip)
        .await
        .unwrap()
}

async fn known_everywhere(handles: &[NodeHandle], name: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let mut all = true;
        for h in handles {
            let cs = dds::channels(h).await.unwrap();
            all &= cs.iter().any(|c| &*c.name == name);
        }
        if all {
            return;
        }
        assert!(start.elapsed() < limit, "{name} not known everywhere");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_deliver_in_order_across_agents() {
    let c = Cluster::start(ClusterSpec::new(4, 2, Duration::from_millis(200)))
        .await
        .unwrap();
    let handles: Vec<NodeHandle> = (0..4).map(|i| c.handle(i)).collect();
    let limit = Duration::from_secs(30);

    // Bad input is refused with the broken rule or the unknown name.
    let bad = dds::create(
        &handles[0],
        "x".into(),
        "nak:total".into(),
        None,
        0,
        SlowPolicy::Skip,
    )
    .await;
    assert!(
        matches!(bad, Err(DdsCallError::Dds(DdsError::Spec(_)))),
        "{bad:?}"
    );
    let unknown = dds::publish(&handles[1], "nope".into(), b"x".to_vec()).await;
    assert!(
        matches!(unknown, Err(DdsCallError::Dds(DdsError::UnknownChannel(_)))),
        "{unknown:?}"
    );

    let info = create(&handles[0], "ticks", "fifo:frag:nak", 8).await;
    assert_eq!(info.stack, "fifo:frag:nak");
    known_everywhere(&handles, "ticks", limit).await;

    let mut subs = Vec::new();
    for h in &handles[1..] {
        subs.push(dds::subscribe(h, "ticks".into(), false).await.unwrap());
    }
    // Warm-up messages until every subscriber has joined the tree.
    let start = Instant::now();
    let mut joined = vec![false; subs.len()];
    let mut w = 0;
    while joined.iter().any(|j| !j) {
        dds::publish(
            &handles[0],
            "ticks".into(),
            format!("warm {w}").into_bytes(),
        )
        .await
        .unwrap();
        w += 1;
        for (s, j) in subs.iter_mut().zip(joined.iter_mut()) {
            if let Ok(Ok(Next::Messages(_))) =
                tokio::time::timeout(Duration::from_millis(100), s.next()).await
            {
                *j = true;
            }
        }
        assert!(
            start.elapsed() < limit,
            "subscribers never joined: {joined:?}"
        );
    }
    for i in 0..50 {
        dds::publish(&handles[0], "ticks".into(), format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    for s in &mut subs {
        let mut got: Vec<String> = Vec::new();
        let mut last_seq = 0;
        while got.last().map(String::as_str) != Some("m49") {
            for d in next_messages(s, limit).await {
                assert!(d.seq > last_seq, "delivery numbers increase");
                last_seq = d.seq;
                let text = String::from_utf8(d.data).unwrap();
                if text.starts_with('m') {
                    got.push(text);
                }
            }
        }
        let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want, "every message once, in order");
    }

    // A late subscriber asks for the retained tail: the last 8.
    let mut late = dds::subscribe(&handles[3], "ticks".into(), true)
        .await
        .unwrap();
    let mut tail = Vec::new();
    while tail.len() < 8 {
        tail.extend(
            next_messages(&mut late, limit)
                .await
                .into_iter()
                .map(|d| String::from_utf8(d.data).unwrap()),
        );
    }
    assert_eq!(tail, (42..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
    drop(subs);
    drop(late);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_arrive_intact_across_zones() {
    let c = Cluster::start(ClusterSpec::new(4, 2, Duration::from_millis(200)))
        .await
        .unwrap();
    let handles: Vec<NodeHandle> = (0..4).map(|i| c.handle(i)).collect();
    let limit = Duration::from_secs(60);
    create(&handles[0], "blobs", "fifo:frag:nak", 0).await;
    known_everywhere(&handles, "blobs", limit).await;
    let mut sub = dds::subscribe(&handles[3], "blobs".into(), false)
        .await
        .unwrap();
    // Joined once a small message gets through.
    let start = Instant::now();
    loop {
        dds::publish(&handles[0], "blobs".into(), b"hello".to_vec())
            .await
            .unwrap();
        if let Ok(Ok(Next::Messages(_))) =
            tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            break;
        }
        assert!(start.elapsed() < limit, "never joined");
    }
    for size in [1 << 20, 16 << 20] {
        let blob: Vec<u8> = (0..size)
            .map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        dds::publish(&handles[0], "blobs".into(), blob.clone())
            .await
            .unwrap();
        let got = loop {
            let ms = next_messages(&mut sub, limit).await;
            if let Some(m) = ms.into_iter().find(|m| m.data.len() > 5) {
                break m;
            }
        };
        assert_eq!(got.data.len(), size);
        assert!(got.data == blob, "{size} bytes arrive intact");
    }
    drop(sub);
    c.shutdown().await;
}

/// Publishes warm-up messages on `name` until every subscriber has one.
async fn warm_up(h: &NodeHandle, name: &str, subs: &mut [Subscription], limit: Duration) {
    let start = Instant::now();
    let mut joined = vec![false; subs.len()];
    while joined.iter().any(|j| !j) {
        dds::publish(h, name.into(), b"warm".to_vec())
            .await
            .unwrap();
        for (s, j) in subs.iter_mut().zip(joined.iter_mut()) {
            if let Ok(Ok(Next::Messages(_))) =
                tokio::time::timeout(Duration::from_millis(50), s.next()).await
            {
                *j = true;
            }
        }
        assert!(start.elapsed() < limit, "never joined: {joined:?}");
    }
}

/// Reads `s` until it has `m{last}`; returns the `m...` messages in order.
async fn until_last(s: &mut Subscription, last: usize, limit: Duration) -> Vec<String> {
    let want = format!("m{last}");
    let mut got = Vec::new();
    while got.last() != Some(&want) {
        for d in next_messages(s, limit).await {
            let text = String::from_utf8(d.data).unwrap();
            if text.starts_with('m') {
                got.push(text);
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_messages_cross_relays_between_certified_agents_and_survive_a_killed_relay() {
    let mut spec = ClusterSpec::new(10, 3, Duration::from_millis(200));
    spec.secure = true;
    let mut c = Cluster::start(spec).await.unwrap();
    let handles: Vec<NodeHandle> = (0..10).map(|i| c.handle(i)).collect();
    let limit = Duration::from_secs(60);
    create(&handles[0], "signed", "sign:fifo:nak", 0).await;
    known_everywhere(&handles, "signed", limit).await;
    let mut subs = Vec::new();
    for h in &handles[1..] {
        subs.push(dds::subscribe(h, "signed".into(), false).await.unwrap());
    }
    warm_up(&handles[0], "signed", &mut subs, limit).await;
    for i in 0..20 {
        dds::publish(&handles[0], "signed".into(), format!("m{i}").into_bytes())
            .await
            .unwrap();
    }
    let first: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for s in &mut subs {
        assert_eq!(until_last(s, 19, limit).await, first);
    }
    // Every subscriber checked the origin's signature against the
    // certificate the messages carry; none was refused.
    for h in &handles[1..] {
        let cs: std::collections::BTreeMap<String, u64> = dds::stack_counters(h, "signed".into())
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert!(cs["sign_verified"] >= 20, "{cs:?}");
        assert_eq!(cs["sign_refused"], 0, "{cs:?}");
    }

    // A relay that feeds other subscribers, not the publisher, is killed.
    let mut relay = None;
    for (i, h) in handles.iter().enumerate().skip(1) {
        let t = dds::tree(h, "signed".into()).await.unwrap().unwrap();
        if !t.children.is_empty() {
            relay = Some(i);
            break;
        }
    }
    let relay = relay.expect("some subscriber relays for others");
    let dead = c.node(relay).unwrap().gossip_addr().to_string();
    let mut fed = Vec::new();
    for (i, h) in handles.iter().enumerate().skip(1) {
        let t = dds::tree(h, "signed".into()).await.unwrap().unwrap();
        if t.parent.as_deref() == Some(dead.as_str()) {
            fed.push(i);
        }
    }
    assert!(!fed.is_empty(), "the relay feeds someone");
    c.kill(relay);
    drop(subs.remove(relay - 1));
    for i in 20..80 {
        dds::publish(&handles[0], "signed".into(), format!("m{i}").into_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every surviving subscriber, those the relay fed among them, gets
    // every message once and in order: they re-join another relay, and
    // what they missed meanwhile is repaired end to end.
    let rest: Vec<String> = (20..80).map(|i| format!("m{i}")).collect();
    for s in &mut subs {
        assert_eq!(until_last(s, 79, limit).await, rest);
    }
    for &i in &fed {
        let t = dds::tree(&handles[i], "signed".into())
            .await
            .unwrap()
            .unwrap();
        assert!(
            t.parent.is_some() && t.parent.as_deref() != Some(dead.as_str()),
            "agent {i} left the dead relay for another: {t:?}"
        );
    }
    drop(subs);
    c.shutdown().await;
}
