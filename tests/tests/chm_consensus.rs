//! CHM's consensus level over real QUIC: a component registered with
//! consensus at one agent, watched from three others (four members of its
//! group). Its check flaps; every watcher sees the same `(epoch, status)`
//! sequence. A watcher cut off by a partition is a minority of one and
//! sees no verdict; the rest go on. With the home cut off, the majority
//! agrees that it is lost.

use armillary_agent::chm::consensus::{self, verdict_of};
use armillary_agent::chm::{self, proto as chm_proto};
use armillary_tests::{cluster, finish};
use chm_proto::consensus::{HOME_LOST, Verdict};
use chm_proto::{Check, CheckSpec, ComponentId, Registration, Status};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Seen = Arc<Mutex<Vec<Verdict>>>;

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

fn statuses(seen: &Seen) -> Vec<(u64, Status)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|v| (v.epoch, v.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_agree_on_verdicts_and_a_minority_issues_none() {
    let c = cluster(4, 2, false).await;
    let id = ComponentId::parse("db").unwrap();
    let home = c.handle(0);
    let mut reg = Registration::new(id.clone(), CheckSpec::new(Check::Ttl { ttl: 60_000_000 }));
    reg.consensus = true;
    chm::register(&home, reg).await.expect("registers");
    consensus::ensure_member(&home, &id, true)
        .await
        .expect("the home creates the group");

    let mut seen: Vec<Seen> = Vec::new();
    for w in 1..4 {
        let h = c.handle(w);
        // The group's directory entry reaches the watcher through the tree.
        let mut tries = 0;
        while let Err(e) = consensus::ensure_member(&h, &id, false).await {
            tries += 1;
            assert!(tries < 100, "watcher {w} cannot join: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut rx = consensus::follow(&h, &id).await.expect("follows");
        let s: Seen = Arc::default();
        let s2 = s.clone();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                if let Some(v) = verdict_of(&e) {
                    s2.lock().unwrap().push(v);
                }
            }
        });
        seen.push(s);
    }
    settle().await;

    // The check flaps.
    let flap = |n: usize| {
        let home = home.clone();
        let id = id.clone();
        async move {
            for k in 0..n {
                let st = if k % 2 == 0 {
                    Status::Passing
                } else {
                    Status::Critical
                };
                chm::heartbeat(&home, id.clone(), st, format!("flap {k}"))
                    .await
                    .expect("heartbeat");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    flap(6).await;
    settle().await;
    let first = statuses(&seen[0]);
    assert!(first.len() >= 6, "verdicts seen: {first:?}");
    for s in &seen[1..] {
        assert_eq!(statuses(s), first, "watchers disagree");
    }
    for pair in first.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "epochs go one by one");
        assert_ne!(pair[1].1, pair[0].1, "a verdict changes the status");
    }

    // Watcher 3 is cut off from everyone: a minority of one.
    let addr = |i: usize| c.node(i).unwrap().gossip_addr();
    let cut = 3;
    let others: Vec<_> = (0..4).filter(|&i| i != cut).map(addr).collect();
    c.node(cut).unwrap().transport().block(others);
    for i in (0..4).filter(|&i| i != cut) {
        c.node(i).unwrap().transport().block([addr(cut)]);
    }
    settle().await;
    let before = seen[cut - 1].lock().unwrap().len();
    flap(4).await;
    settle().await;
    assert_eq!(
        seen[cut - 1].lock().unwrap().len(),
        before,
        "the cut-off watcher issued or saw a verdict"
    );
    let majority = statuses(&seen[0]);
    assert!(majority.len() >= first.len() + 4, "the majority went on");
    assert_eq!(statuses(&seen[1]), majority);

    // Healed, then the home is cut off while passing: the rest agree it is lost.
    for (_, n) in c.live() {
        n.transport().unblock_all();
    }
    chm::heartbeat(&home, id.clone(), Status::Passing, "up".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rest: Vec<_> = (1..4).map(addr).collect();
    c.node(0).unwrap().transport().block(rest);
    for i in 1..4 {
        c.node(i).unwrap().transport().block([addr(0)]);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let last = seen[0].lock().unwrap().last().cloned().expect("verdicts");
    assert_eq!(last.status, Status::Critical);
    assert_eq!(last.reason, HOME_LOST);
    let agreed = statuses(&seen[0]);
    assert_eq!(statuses(&seen[1]), agreed);
    // The healed watcher agrees on every epoch it saw.
    for (e, st) in statuses(&seen[cut - 1]) {
        assert!(agreed.contains(&(e, st)), "epoch {e}: {st:?} not agreed");
    }
    for (_, n) in c.live() {
        n.transport().unblock_all();
    }
    // A watch through the API's guard: the watcher is in the group while
    // it is open, and leaves when it ends, freeing its slot.
    let w = c.handle(2);
    let guard = consensus::watch(&w, &id).await.expect("watches");
    let group = chm_proto::consensus::group_of(&id);
    assert!(
        armillary_agent::crm::view(&w, group.clone())
            .await
            .unwrap()
            .is_some()
    );
    drop(guard);
    let mut left = false;
    for _ in 0..100 {
        if armillary_agent::crm::view(&w, group.clone())
            .await
            .unwrap()
            .is_none()
        {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left,
        "the watcher stayed in the group after its watch ended"
    );

    finish(c).await;
}
