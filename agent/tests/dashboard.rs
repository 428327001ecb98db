//! The dashboard in a real browser: headless Chromium loads the page from an
//! agent of a cluster with components registered, runs its scripts, and the
//! test reads the DOM it built (health counts, the critical component, line
//! plots) and keeps a screenshot (`dashboard.png` in cargo's test tmpdir).

use armillary_agent::api;
use armillary_agent::chm::{self, proto};
use armillary_agent::node::cluster::{Cluster, ClusterSpec};
use proto::{Check, CheckSpec, ComponentId, Registration, Status};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn chromium() -> String {
    let c = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = Command::new(&c)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs Chromium: install it (apt-get install chromium) or set CHROMIUM to its path"
    );
    c
}

fn ttl(id: &str) -> Registration {
    let mut r = Registration::new(
        ComponentId::parse(id).unwrap(),
        CheckSpec::new(Check::Ttl { ttl: 3_600_000_000 }),
    );
    r.keywords = vec!["web".into()];
    r
}

/// Runs headless Chromium on `url` with `args`; its stdout.
fn browse(bin: &str, url: &str, args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!("armillary-chromium-{}", std::process::id()));
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1400,2200",
            // Let the page's scripts fetch and draw before the DOM is taken.
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_health_and_plots_in_a_browser() {
    let bin = chromium();
    let c = Cluster::start(ClusterSpec::new(4, 2, Duration::from_millis(250)))
        .await
        .unwrap();
    for (i, id, status) in [
        (0, "web-1", Status::Passing),
        (1, "web-2", Status::Passing),
        (3, "db-9", Status::Critical),
    ] {
        chm::register(&c.handle(i), ttl(id)).await.unwrap();
        chm::heartbeat(
            &c.handle(i),
            ComponentId::parse(id).unwrap(),
            status,
            "set by the test".into(),
        )
        .await
        .unwrap();
    }
    // The root counts all three, and the history holds a few samples.
    let h = c.handle(0);
    let start = Instant::now();
    loop {
        let root = h.zone_row(armillary_agent::ZonePath::root()).await.unwrap();
        let n = |k| match root.get(k) {
            Some(zone_sql::Value::Int(i)) => *i,
            _ => 0,
        };
        let hist = h
            .history(
                armillary_agent::ZonePath::root(),
                vec!["chm_passing".into()],
                0,
            )
            .await
            .map(|v| v.series.get("chm_passing").map_or(0, |p| p.len()))
            .unwrap_or(0);
        if n("chm_passing") == 2 && n("chm_critical") == 1 && hist >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "root never counted: {root:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        h.clone(),
        api::ApiAccess::default(),
        async {
            let _ = stopped.await;
        },
    ));

    let dom = {
        let (bin, url) = (bin.clone(), url.clone());
        tokio::task::spawn_blocking(move || browse(&bin, &url, &["--dump-dom"]))
            .await
            .unwrap()
    };
    let section = |id: &str| {
        let from = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in the page"));
        let to = dom[from..]
            .find("</section>")
            .map_or(dom.len(), |e| from + e);
        dom[from..to].to_string()
    };
    let health = section("health-section");
    assert!(
        health.contains("2 passing, 0 warning, 1 critical"),
        "{health}"
    );
    assert!(
        health.contains("db-9"),
        "the critical component is listed: {health}"
    );
    assert!(
        !health.contains("web-1"),
        "passing components are not critical: {health}"
    );
    let plots = section("plots-section");
    assert!(plots.matches("<polyline").count() >= 3, "{plots}");
    assert!(plots.contains("chm_critical"), "{plots}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let arg = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || browse(&bin, &url, &[&arg]))
        .await
        .unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    let _ = stop.send(());
    let _ = server.await;
    c.shutdown().await;
}
