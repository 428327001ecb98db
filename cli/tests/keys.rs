//! `armillary keys`: authority, sub-authority, agent and client directories,
//! `keys show`, and the refusals (exit code 2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_armillary"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&ok(args).stdout).expect("one JSON object")
}

/// Fails with exit code 2 and a message containing `needle`.
fn usage_error(args: &[&str], needle: &str) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
    assert!(out.stdout.is_empty());
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("armillary-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, s: &str) -> String {
        self.0.join(s).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn authority_agent_client_and_show() {
    let t = TempDir::new("chain");
    let (root, eu, h7, ops) = (t.join("root"), t.join("eu"), t.join("h7"), t.join("ops"));

    let out = ok(&["keys", "authority", "--zone", "/", "--out", &root]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("root authority"), "{text}");
    assert!(
        text.contains("authority.key") && text.contains("anchor.cert"),
        "{text}"
    );
    assert!(text.contains("next: armillary keys agent"), "{text}");

    let v = json(&[
        "keys",
        "authority",
        "--zone",
        "/eu",
        "--parent",
        &root,
        "--out",
        &eu,
        "--days",
        "30",
        "--json",
    ]);
    assert_eq!(v["kind"], "authority");
    assert_eq!(v["subject"], "/eu");
    assert_eq!(v["written"].as_array().unwrap().len(), 3);

    ok(&[
        "keys",
        "agent",
        "--zone",
        "/eu/paris/h7",
        "--authority",
        &eu,
        "--out",
        &h7,
    ]);
    for f in ["agent.key", "agent.cert", "anchor.cert"] {
        assert!(Path::new(&h7).join(f).is_file(), "{f}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(Path::new(&h7).join("agent.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The anchor every directory carries is the root's.
    assert_eq!(
        std::fs::read(Path::new(&h7).join("anchor.cert")).unwrap(),
        std::fs::read(Path::new(&root).join("anchor.cert")).unwrap()
    );

    let v = json(&["keys", "show", &h7, "--json"]);
    assert_eq!(v["kind"], "agent");
    assert_eq!(v["subject"], "/eu/paris/h7");
    assert_eq!(v["valid"], true);
    assert!(v["key"].as_str().unwrap().starts_with("ed25519:"));
    let chain: Vec<&str> = v["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["subject"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["/eu/paris/h7", "/eu", "/"]);
    // The agent certificate does not outlive the /eu authority (30 days).
    assert_eq!(v["expires"], v["chain"][1]["expires"]);

    ok(&[
        "keys",
        "client",
        "--name",
        "ops",
        "--allow",
        "afc:/eu/paris,afc:/eu/berlin",
        "--authority",
        &eu,
        "--out",
        &ops,
    ]);
    let v = json(&["keys", "show", &ops, "--json"]);
    assert_eq!(v["kind"], "client");
    assert_eq!(v["subject"], "ops");
    assert_eq!(
        v["rights"],
        serde_json::json!(["afc:/eu/paris", "afc:/eu/berlin"])
    );

    let out = ok(&["keys", "show", &root]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("authority keys") && text.contains("status    valid"),
        "{text}"
    );
}

#[test]
fn refusals_are_usage_errors() {
    let t = TempDir::new("refusals");
    let (root, eu, h7) = (t.join("root"), t.join("eu"), t.join("h7"));
    ok(&["keys", "authority", "--zone", "/", "--out", &root]);
    ok(&[
        "keys",
        "authority",
        "--zone",
        "/eu",
        "--parent",
        &root,
        "--out",
        &eu,
    ]);

    // Outside the authority's zone.
    usage_error(
        &[
            "keys",
            "agent",
            "--zone",
            "/us/x",
            "--authority",
            &eu,
            "--out",
            &h7,
        ],
        "outside the zone /eu",
    );
    usage_error(
        &[
            "keys",
            "authority",
            "--zone",
            "/us",
            "--parent",
            &eu,
            "--out",
            &h7,
        ],
        "outside the zone /eu",
    );
    usage_error(
        &[
            "keys",
            "client",
            "--name",
            "c",
            "--allow",
            "afc:/us",
            "--authority",
            &eu,
            "--out",
            &h7,
        ],
        "outside the zone /eu",
    );
    // Bad rights, names and zones.
    usage_error(
        &[
            "keys",
            "client",
            "--name",
            "c",
            "--allow",
            "read:/eu",
            "--authority",
            &eu,
            "--out",
            &h7,
        ],
        "bad right",
    );
    usage_error(
        &[
            "keys",
            "client",
            "--name",
            "bad name",
            "--allow",
            "afc:/eu",
            "--authority",
            &eu,
            "--out",
            &h7,
        ],
        "bad client name",
    );
    usage_error(
        &[
            "keys",
            "agent",
            "--zone",
            "eu/x",
            "--authority",
            &eu,
            "--out",
            &h7,
        ],
        "invalid --zone",
    );
    usage_error(
        &[
            "keys",
            "agent",
            "--zone",
            "/eu/x",
            "--authority",
            &eu,
            "--out",
            &h7,
            "--days",
            "0",
        ],
        "--days",
    );
    // Existing keys without --force; with it, replaced.
    ok(&[
        "keys",
        "agent",
        "--zone",
        "/eu/x",
        "--authority",
        &eu,
        "--out",
        &h7,
    ]);
    usage_error(
        &[
            "keys",
            "agent",
            "--zone",
            "/eu/x",
            "--authority",
            &eu,
            "--out",
            &h7,
        ],
        "--force",
    );
    ok(&[
        "keys",
        "agent",
        "--zone",
        "/eu/y",
        "--authority",
        &eu,
        "--out",
        &h7,
        "--force",
    ]);
    assert_eq!(json(&["keys", "show", &h7, "--json"])["subject"], "/eu/y");
    // Foreign or unreadable directories.
    usage_error(
        &[
            "keys",
            "agent",
            "--zone",
            "/eu/z",
            "--authority",
            &h7,
            "--out",
            &t.join("z"),
        ],
        "agent keys, but authority keys are needed",
    );
    usage_error(&["keys", "show", &t.join("missing")], "cannot read");
    std::fs::create_dir_all(t.join("empty")).unwrap();
    usage_error(&["keys", "show", &t.join("empty")], "no Armillary keys");
    std::fs::write(Path::new(&h7).join("agent.cert"), "{ not json").unwrap();
    usage_error(&["keys", "show", &h7], "not a valid certificate file");
    // A missing flag is clap's own usage error, exit code 2 as well.
    let out = run(&[
        "keys",
        "client",
        "--name",
        "c",
        "--authority",
        &eu,
        "--out",
        &h7,
    ]);
    assert_eq!(out.status.code(), Some(2));
}
