//! `chm watch` goes on through its agent's restart: nothing of a watch is
//! on disk, so the watcher itself watches again once the agent answers
//! (which also brings that agent back into a consensus component's group).

use armillary_tests::{armillary_bin, run_ok, spawn_insecure, start_agents, temp_dir, until_apis};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// Flips the component's reported status until the watch prints a change.
fn until_a_change(a0: &str, lines: &Receiver<String>, flips: &mut usize) -> String {
    for _ in 0..40 {
        let status = ["warning", "passing"][*flips % 2];
        *flips += 1;
        run_ok(&["chm", "heartbeat", "web", "--status", status, "--api", a0]);
        if let Ok(line) = lines.recv_timeout(Duration::from_secs(2)) {
            return line;
        }
    }
    panic!("the watch printed no change");
}

#[test]
fn a_watch_goes_on_through_its_agents_restart() {
    let root = temp_dir("chm-watch-restart");
    let (mut agents, ports) = start_agents(&root, &["/z0/a0", "/z0/a1"]);
    until_apis(&ports);
    let (a0, a1) = (ports[0].api_addr(), ports[1].api_addr());
    run_ok(&["chm", "register", "web", "--ttl", "1h", "--api", &a0]);
    let mut watch = Command::new(armillary_bin())
        .args(["chm", "watch", "web", "--json", "--api", &a1])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the watch starts");
    let out = watch.stdout.take().expect("stdout");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut flips = 0;
    let first = until_a_change(&a0, &lines, &mut flips);
    assert!(first.contains("\"id\":\"web\""), "{first}");

    let _ = agents.0[1].kill();
    let _ = agents.0[1].wait();
    agents.0[1] = spawn_insecure("/z0/a1", &ports[1], Some(&ports[0]), &root.join("d1"));
    until_apis(&ports[1..]);
    while lines.try_recv().is_ok() {}
    let after = until_a_change(&a0, &lines, &mut flips);
    assert!(after.contains("\"id\":\"web\""), "{after}");
    assert!(
        watch.try_wait().expect("status").is_none(),
        "the watch ended"
    );
    let _ = watch.kill();
}
