//! Agents with security on: they converge exchanging signed rows over the
//! wire encoding, and refuse forged rows and unauthorised AFCs.

use armillary_agent::security::{CertKind, DAY, Identity, Reject, Right, Security, sign_afc};
use armillary_agent::{AfcCert, AfcState, Agent, Config, InstallError, Message, Micros, Row};
use armillary_agent::{Refusal, ZonePath, security};
use std::sync::Arc;
use zone_sql::Value;

const NOW: Micros = 1_700_000_000_000_000;
const ROUND: Micros = 1_000_000;
const LEAVES: [&str; 3] = ["/a/h1", "/a/h2", "/b/h3"];

fn p(s: &str) -> ZonePath {
    ZonePath::parse(s).unwrap()
}

/// Agents driven by hand: messages go through the wire encoding and are
/// delivered at once.
struct Net {
    agents: Vec<Agent>,
    now: Micros,
}

impl Net {
    fn new(root: &Identity) -> Net {
        let agents = LEAVES
            .iter()
            .enumerate()
            .map(|(i, leaf)| {
                let mut cfg = Config::new(p(leaf), *leaf);
                cfg.seeds = LEAVES.iter().map(|s| Arc::from(*s)).collect();
                cfg.rng_seed = i as u64 + 1;
                let mut a = Agent::new(cfg, NOW);
                let id = root
                    .new_child(CertKind::Agent, leaf, NOW, NOW + 30 * DAY)
                    .unwrap();
                let sec = Security::for_agent(id, &p(leaf), NOW).unwrap();
                a.set_security(Some(Arc::new(sec)));
                a
            })
            .collect();
        Net { agents, now: NOW }
    }

    fn deliver(&mut self) {
        loop {
            let mut moved = false;
            for (i, leaf) in LEAVES.iter().enumerate() {
                let from: Arc<str> = Arc::from(*leaf);
                while let Some(t) = self.agents[i].poll_transmit() {
                    moved = true;
                    let msg = Message::decode(&t.msg.encode()).expect("valid on the wire");
                    if let Some(j) = LEAVES.iter().position(|l| **l == *t.to) {
                        self.agents[j].handle_message(self.now, &from, msg);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn run_rounds(&mut self, rounds: u64) {
        let until = self.now + rounds * ROUND;
        loop {
            self.deliver();
            let next = self.agents.iter().map(|a| a.poll_timeout()).min().unwrap();
            if next > until {
                self.now = until;
                return;
            }
            self.now = self.now.max(next);
            for a in &mut self.agents {
                if a.poll_timeout() <= self.now {
                    a.handle_timeout(self.now);
                }
            }
        }
    }

    fn members(&self, i: usize) -> i64 {
        match self.agents[i].root_row().get("nmembers") {
            Some(Value::Int(n)) => *n,
            _ => -1,
        }
    }

    fn rejected(&self, i: usize, reason: Refusal) -> u64 {
        self.agents[i]
            .stats()
            .rejected
            .get(&reason)
            .copied()
            .unwrap_or(0)
    }
}

fn client(root: &Identity, allow: &str) -> Identity {
    let allow = vec![Right::parse(allow).unwrap()];
    root.new_child(CertKind::Client { allow }, "ops", NOW, NOW + DAY)
        .unwrap()
}

#[test]
fn signed_agents_converge_and_refuse_forgeries() {
    let root = Identity::new_root(&ZonePath::root(), NOW, NOW + 365 * DAY);
    let mut net = Net::new(&root);
    net.run_rounds(20);
    for i in 0..3 {
        assert_eq!(
            net.members(i),
            3,
            "agent {i} sees {:?}",
            net.agents[i].root_row()
        );
        assert!(
            net.agents[i].stats().rejected.is_empty(),
            "agent {i}: {:?}",
            net.agents[i].stats().rejected
        );
        for z in net.agents[i].zones().to_vec() {
            for r in net.agents[i].table(&z).unwrap() {
                assert!(r.cert.is_some() && r.signature.len() == 64, "{}", r.zone);
            }
        }
    }

    // A held row, altered and made newer: its signature no longer holds.
    let h1 = net.agents[2].row_of(&p("/a")).unwrap().clone();
    let mut forged = (*h1).clone();
    forged.attrs.set("nmembers", 1000i64);
    forged.issued = net.now;
    let forged = Arc::new(forged.sealed());
    let from: Arc<str> = Arc::from("/a/h1");
    let msg = Message::decode(
        &Message::Ack {
            sender: p("/a/h1"),
            rows: vec![forged],
        }
        .encode(),
    )
    .unwrap();
    net.agents[2].handle_message(net.now, &from, msg);
    assert_eq!(net.rejected(2, Refusal::BadSignature), 1);
    assert_eq!(net.agents[2].row_of(&p("/a")).unwrap().issued, h1.issued);

    // An agent of /b signs a row claiming to be /a/h1: outside its certificate.
    let h3 = net.agents[2].security().unwrap().clone();
    let mut attrs = zone_sql::Attrs::new();
    attrs.set("nmembers", 1i64);
    let mut fake = Row::new(p("/a/h1"), p("/a/h1"), net.now, attrs.clone(), vec![]);
    h3.sign_row(&mut fake);
    let msg = Message::Push {
        target: p("/a"),
        rows: vec![Arc::new(fake)],
    };
    net.agents[1].handle_message(net.now, &from, Message::decode(&msg.encode()).unwrap());
    assert_eq!(net.rejected(1, Refusal::IssuerOutsideZone), 1);

    // An unsigned row, and one signed under a foreign root.
    let plain = Row::new(p("/b/h9"), p("/b/h9"), net.now, attrs.clone(), vec![]);
    net.agents[2].handle_message(
        net.now,
        &from,
        Message::Ack {
            sender: p("/a/h1"),
            rows: vec![Arc::new(plain)],
        },
    );
    assert_eq!(net.rejected(2, Refusal::Unsigned), 1);
    let other = Identity::new_root(&ZonePath::root(), NOW, NOW + DAY);
    let stranger = other
        .new_child(CertKind::Agent, "/b/h9", NOW, NOW + DAY)
        .unwrap();
    let stranger = Security::for_agent(stranger, &p("/b/h9"), NOW).unwrap();
    let mut r = Row::new(p("/b/h9"), p("/b/h9"), net.now, attrs, vec![]);
    stranger.sign_row(&mut r);
    net.agents[2].handle_message(
        net.now,
        &from,
        Message::Ack {
            sender: p("/a/h1"),
            rows: vec![Arc::new(r)],
        },
    );
    assert_eq!(net.rejected(2, Refusal::UntrustedCert), 1);
    assert!(net.agents[2].row_of(&p("/b/h9")).is_none());

    // Gossip goes on undisturbed.
    net.run_rounds(5);
    for i in 0..3 {
        assert_eq!(net.members(i), 3);
    }
}

#[test]
fn afcs_need_a_signer_allowed_their_scope() {
    let root = Identity::new_root(&ZonePath::root(), NOW, NOW + 365 * DAY);
    let mut net = Net::new(&root);
    net.run_rounds(10);
    let now = net.now;

    let sql = "SELECT MAX(load) AS load";
    // Unsigned.
    let e = net.agents[0]
        .install_afc(now, AfcCert::new(p("/a"), "load", sql, now))
        .unwrap_err();
    assert!(
        matches!(&e, InstallError::Refused(Reject::Unsigned(_))),
        "{e}"
    );
    // Signed by a client allowed /b only.
    let mut a = AfcCert::new(p("/a"), "load", sql, now);
    sign_afc(&client(&root, "afc:/b"), &mut a);
    let e = net.agents[0].install_afc(now, a).unwrap_err();
    assert!(
        matches!(&e, InstallError::Refused(Reject::AfcNotAllowed(_))),
        "{e}"
    );
    // The unsigned removal path is closed too.
    assert!(net.agents[0].remove_afc(now, &p("/a"), "load").is_err());

    // Signed by a client allowed /a: installed, and spread to /a's members only.
    let ops = client(&root, "afc:/a");
    let mut a = AfcCert::new(p("/a"), "load", sql, now);
    sign_afc(&ops, &mut a);
    net.agents[0].install_afc(now, a).unwrap();
    net.run_rounds(5);
    let state = |net: &Net, i: usize| {
        net.agents[i]
            .afcs()
            .get(&p("/a"), "load")
            .map(|s| s.state.clone())
    };
    assert_eq!(state(&net, 0), Some(AfcState::Active));
    assert_eq!(state(&net, 1), Some(AfcState::Active));
    assert_eq!(state(&net, 2), None);
    for i in 0..3 {
        assert!(
            net.agents[i].stats().rejected.is_empty(),
            "{:?}",
            net.agents[i].stats().rejected
        );
    }

    // A client allowed /a may not act at /.
    let mut g = AfcCert::new(ZonePath::root(), "g", sql, net.now);
    sign_afc(&ops, &mut g);
    assert!(net.agents[0].install_afc(net.now, g.clone()).is_err());
    assert!(!net.agents[2].offer_afc(net.now, Arc::new(g)));
    assert_eq!(net.rejected(2, Refusal::AfcNotAllowed), 1);

    // The client's signed tombstone removes it everywhere in /a.
    let mut t = AfcCert::tombstone(p("/a"), "load", net.now);
    sign_afc(&ops, &mut t);
    net.agents[1].install_afc(net.now, t).unwrap();
    net.run_rounds(5);
    assert_eq!(state(&net, 0), Some(AfcState::Removed));
    assert_eq!(state(&net, 1), Some(AfcState::Removed));

    // The root authority may install at the root; everyone adopts it.
    let mut r = AfcCert::new(ZonePath::root(), "top", sql, net.now);
    security::sign_afc(&root, &mut r);
    net.agents[2].install_afc(net.now, r).unwrap();
    net.run_rounds(5);
    for i in 0..3 {
        assert_eq!(
            net.agents[i]
                .afcs()
                .get(&ZonePath::root(), "top")
                .map(|s| s.state.clone()),
            Some(AfcState::Active),
            "agent {i}"
        );
    }
}

/// A node with keys restoring a data directory that holds a forged AFC: the
/// check runs at restore (security is on before saved state comes back),
/// so the forgery is dropped and counted, and a genuine AFC survives.
#[tokio::test]
async fn restored_afcs_are_checked_with_security_on() {
    use armillary_agent::node::store::Store;
    use armillary_agent::node::{Node, NodeConfig};
    let now = security::now_micros();
    let root = Identity::new_root(&ZonePath::root(), now - DAY, now + 365 * DAY);
    let ops = root
        .new_child(
            CertKind::Client {
                allow: vec![Right::parse("afc:/").unwrap()],
            },
            "ops",
            now - DAY,
            now + DAY,
        )
        .unwrap();
    let mut good = AfcCert::new(ZonePath::root(), "good", "SELECT MAX(load) AS load", now);
    sign_afc(&ops, &mut good);
    let mut forged = AfcCert::new(ZonePath::root(), "forged", "SELECT MIN(load) AS low", now);
    sign_afc(&ops, &mut forged);
    forged.sql = "SELECT MAX(load) AS low".into();
    let dir = std::env::temp_dir().join(format!("armillary-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let leaf = p("/a/h1");
    Store::open(&dir, &leaf, armillary_agent::ClusterId::default())
        .unwrap()
        .save_state(&[Arc::new(good), Arc::new(forged)], &Default::default())
        .unwrap();
    let id = root
        .new_child(CertKind::Agent, "/a/h1", now - DAY, now + DAY)
        .unwrap();
    let sec = Security::for_agent(id, &leaf, now).unwrap();
    let node = Node::start(NodeConfig {
        core: Config::new(leaf, ""),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.clone()),
        security: Some(Arc::new(sec)),
        sensors: None,
        services: Default::default(),
    })
    .await
    .unwrap();
    let names: Vec<String> = node
        .handle()
        .afcs(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.cert.name.to_string())
        .collect();
    assert_eq!(names, ["good"]);
    let status = node.handle().status().await.unwrap();
    assert_eq!(status.rejected.get("bad_signature"), Some(&1));
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
