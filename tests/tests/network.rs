//! Agents over real QUIC on loopback: 32 agents in three levels.

use armillary_agent::{AfcCert, ZonePath};
use armillary_tests::{Cluster, Views, armillary_bin, cluster, finish, wait_all};
use std::collections::HashSet;
use zone_sql::Value;

const AGENTS: usize = 32;
const BRANCHING: usize = 4;

fn three_levels(c: &Cluster) {
    assert_eq!(armillary_agent::sim::tree::levels(&c.leaves), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_reaches_every_root_row() {
    let c = cluster(AGENTS, BRANCHING, false).await;
    three_levels(&c);
    assert!(
        wait_all(&c, "everyone counts 32 members", |_, v| v
            .root_int("nmembers")
            == Some(32))
        .await
    );
    let afc = AfcCert::new(
        ZonePath::root(),
        "maxx",
        "SELECT MAX(x) AS x",
        armillary_agent::node::now_micros(),
    );
    c.handle(5).install_afc(afc).await.unwrap();
    c.handle(17)
        .set_attr("x".into(), Value::Int(42))
        .await
        .unwrap();
    assert!(
        wait_all(&c, "x = 42 in every root row", |_, v| v.root_int("x")
            == Some(42))
        .await
    );
    // A change spreads the same way.
    c.handle(30)
        .set_attr("x".into(), Value::Int(99))
        .await
        .unwrap();
    assert!(
        wait_all(&c, "x = 99 in every root row", |_, v| v.root_int("x")
            == Some(99))
        .await
    );
    finish(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agents_disappear_from_every_table() {
    let mut c = cluster(AGENTS, BRANCHING, false).await;
    assert!(
        wait_all(&c, "everyone counts 32 members", |_, v| v
            .root_int("nmembers")
            == Some(32))
        .await
    );
    let victims = [9usize, 20, 31];
    let gone: Vec<ZonePath> = victims.iter().map(|&i| c.leaves[i].clone()).collect();
    for &i in &victims {
        c.kill(i);
    }
    let ok = wait_all(&c, "the killed agents are gone", |_, v| {
        v.root_int("nmembers") == Some(29)
            && gone
                .iter()
                .all(|leaf| !v.lists(&leaf.parent().expect("leaf has a parent"), leaf.name()))
    })
    .await;
    assert!(ok);
    finish(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_keeps_afcs_and_attributes() {
    let mut c = cluster(AGENTS, BRANCHING, true).await;
    let h = c.handle(3);
    h.set_attr("role".into(), Value::Str("db".into()))
        .await
        .unwrap();
    let afc = AfcCert::new(
        ZonePath::root(),
        "roles",
        "SELECT FIRST(3, role) AS role",
        armillary_agent::node::now_micros(),
    );
    h.install_afc(afc).await.unwrap();
    // A clean stop, and a crash of another agent after it saved its state.
    let addr = c.stop(3).await.unwrap();
    c.handle(4)
        .set_attr("role".into(), Value::Str("cache".into()))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let addr4 = c.nodes[4].as_ref().unwrap().gossip_addr();
    c.kill(4);
    c.restart(3, addr).await.unwrap();
    c.restart(4, addr4).await.unwrap();
    let v3 = Views::of(&c.handle(3)).await;
    assert!(
        v3.afcs
            .iter()
            .any(|(s, n, st)| s == "/" && n == "roles" && *st == "active"),
        "restarted agent lost its AFC: {:?}",
        v3.afcs
    );
    let local3 = c.handle(3).local_attrs().await.unwrap();
    assert_eq!(local3.get("role"), Some(&Value::Str("db".into())));
    let local4 = c.handle(4).local_attrs().await.unwrap();
    assert_eq!(local4.get("role"), Some(&Value::Str("cache".into())));
    // And the system carries on with both.
    assert!(
        wait_all(&c, "both roles in every root row", |_, v| {
            match v.root.get("role") {
                Some(Value::List(l)) => {
                    let s: HashSet<&str> = l.iter().map(|x| &**x).collect();
                    s.contains("db") && s.contains("cache")
                }
                _ => false,
            }
        })
        .await
    );
    finish(c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_between_subtrees_heals() {
    let c = cluster(AGENTS, BRANCHING, false).await;
    assert!(
        wait_all(&c, "everyone counts 32 members", |_, v| v
            .root_int("nmembers")
            == Some(32))
        .await
    );
    // Cut the first top-level zone off from the rest (fault-injecting
    // transport: both sides drop each other's traffic).
    let top = c.leaves[0].ancestor(1);
    let (inside, outside): (Vec<usize>, Vec<usize>) =
        (0..AGENTS).partition(|&i| top.contains(&c.leaves[i]));
    let addr = |i: usize| c.nodes[i].as_ref().unwrap().gossip_addr();
    let in_addrs: Vec<_> = inside.iter().map(|&i| addr(i)).collect();
    let out_addrs: Vec<_> = outside.iter().map(|&i| addr(i)).collect();
    for &i in &inside {
        c.nodes[i]
            .as_ref()
            .unwrap()
            .transport()
            .block(out_addrs.clone());
    }
    for &i in &outside {
        c.nodes[i]
            .as_ref()
            .unwrap()
            .transport()
            .block(in_addrs.clone());
    }
    let n_in = inside.len() as i64;
    let n_out = outside.len() as i64;
    assert!(
        wait_all(&c, "each side sees only itself", |i, v| {
            let want = if inside.contains(&i) { n_in } else { n_out };
            v.root_int("nmembers") == Some(want)
        })
        .await
    );
    for (_, n) in c.live() {
        n.transport().unblock_all();
    }
    assert!(
        wait_all(&c, "the partition healed", |_, v| v.root_int("nmembers")
            == Some(32))
        .await
    );
    finish(c).await;
}

/// The API of agent 0 on an ephemeral port, for the CLI.
async fn serve_api(c: &Cluster) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(armillary_agent::api::serve(
        listener,
        c.handle(0),
        armillary_agent::api::ApiAccess::default(),
        async move {
            let _ = rx.await;
        },
    ));
    (addr, tx)
}

fn cli(api: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(armillary_bin())
        .args(args)
        .args(["--api", api])
        .output()
        .expect("armillary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn afc_installed_through_the_cli_runs_everywhere_and_removal_stops_it() {
    let c = cluster(AGENTS, BRANCHING, false).await;
    let (api, stop) = serve_api(&c).await;
    let out = tokio::task::spawn_blocking({
        let api = api.clone();
        move || {
            cli(
                &api,
                &[
                    "afc",
                    "install",
                    "widest",
                    "--zone",
                    "/",
                    "--sql",
                    "SELECT MAX(nchildren) AS widest",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_all(&c, "every agent evaluates the AFC", |_, v| {
            v.root.get("widest").is_some()
                && v.afcs
                    .iter()
                    .any(|(s, n, st)| s == "/" && n == "widest" && *st == "active")
        })
        .await
    );
    let out = tokio::task::spawn_blocking({
        let api = api.clone();
        move || cli(&api, &["afc", "remove", "widest", "--zone", "/"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "remove failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_all(&c, "no agent evaluates it any more", |_, v| {
            v.root.get("widest").is_none()
                && v.afcs
                    .iter()
                    .any(|(s, n, st)| s == "/" && n == "widest" && *st == "removed")
        })
        .await
    );
    let _ = stop.send(());
    finish(c).await;
}
