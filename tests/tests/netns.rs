//! A partition between two sub-trees, made with real network namespaces: six
//! `armillary agent` processes, three per namespace, joined by a veth pair.
//! Taking the link down partitions them; bringing it up heals.
//!
//! Needs root (to make namespaces). Where `ip netns` is not permitted the test
//! says so and returns; `network.rs` covers partitions with the
//! fault-injecting transport everywhere.

use armillary_tests::{PATIENCE, armillary_bin, temp_dir};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Lab {
    ns: [String; 2],
    children: Vec<Child>,
    dirs: Vec<std::path::PathBuf>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn in_ns(ns: &str, args: &[&str]) -> bool {
    let mut v = vec!["netns", "exec", ns];
    v.extend_from_slice(args);
    ip(&v)
}

/// Members counted by the agent whose API is `api` inside `ns`.
fn members(ns: &str, api: &str) -> Option<i64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(armillary_bin())
        .args([
            "query",
            "SELECT SUM(nmembers) AS n FROM \"/\"",
            "--json",
            "--api",
            api,
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?.get("n")?.as_i64()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + PATIENCE;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("gave up waiting for: {what}");
    false
}

#[test]
fn partition_between_namespaces_heals() {
    let tag = std::process::id() % 100_000;
    let ns = [format!("arm{tag}a"), format!("arm{tag}b")];
    if !ip(&["netns", "add", &ns[0]]) {
        eprintln!("network namespaces are not available here (not root?); skipped");
        return;
    }
    let mut lab = Lab {
        ns: ns.clone(),
        children: Vec::new(),
        dirs: Vec::new(),
    };
    assert!(ip(&["netns", "add", &ns[1]]));
    let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
    assert!(ip(&[
        "link", "add", &va, "type", "veth", "peer", "name", &vb
    ]));
    assert!(ip(&["link", "set", &va, "netns", &ns[0]]));
    assert!(ip(&["link", "set", &vb, "netns", &ns[1]]));
    let addrs = ["10.77.0.1", "10.77.0.2"];
    for (i, (n, v)) in [(&ns[0], &va), (&ns[1], &vb)].into_iter().enumerate() {
        assert!(in_ns(n, &["ip", "link", "set", "lo", "up"]));
        assert!(in_ns(
            n,
            &["ip", "addr", "add", &format!("{}/24", addrs[i]), "dev", v]
        ));
        assert!(in_ns(n, &["ip", "link", "set", v, "up"]));
    }
    let join = format!("{}:7700,{}:7700", addrs[0], addrs[1]);
    for (side, n) in ns.iter().enumerate() {
        for h in 0..3 {
            let dir = temp_dir(&format!("netns{side}{h}"));
            lab.dirs.push(dir.clone());
            let child = Command::new("ip")
                .args(["netns", "exec", n])
                .arg(armillary_bin())
                .args([
                    "agent",
                    "--zone",
                    &format!("/{}/h{h}", ["a", "b"][side]),
                    "--listen",
                    &format!("{}:{}", addrs[side], 7700 + h),
                    "--api",
                    &format!("127.0.0.1:{}", 8100 + h),
                    "--join",
                    &join,
                    "--data-dir",
                ])
                .arg(&dir)
                .args(["--insecure", "--gossip-interval", "200ms"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("armillary agent starts");
            lab.children.push(child);
        }
    }
    let names = ns.clone();
    let all_see = move |want: i64| {
        let names = names.clone();
        move || {
            names.iter().all(|n| {
                (0..3).all(|h| members(n, &format!("127.0.0.1:{}", 8100 + h)) == Some(want))
            })
        }
    };
    assert!(wait_for("six members everywhere", all_see(6)));
    // Cut the link: each side keeps only itself.
    assert!(in_ns(&lab.ns[0], &["ip", "link", "set", &va, "down"]));
    assert!(wait_for("each side alone", all_see(3)));
    // Heal.
    assert!(in_ns(&lab.ns[0], &["ip", "link", "set", &va, "up"]));
    assert!(wait_for("healed: six again", all_see(6)));
}
