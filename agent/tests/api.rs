//! The local HTTP API against a real (insecure, single) node.

use armillary_agent::afc::AfcCert;
use armillary_agent::api;
use armillary_agent::config::Config;
use armillary_agent::node::{Node, NodeConfig};
use armillary_agent::path::ZonePath;
use armillary_agent::security::{self, CertKind, DAY, Identity, Right, Security, now_micros};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A node at `/a/h1` with its API on a free local port.
struct Fixture {
    node: Node,
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Fixture {
    async fn start() -> Fixture {
        Fixture::start_with(None).await
    }

    /// A node with keys when `security` is given.
    async fn start_with(security: Option<Security>) -> Fixture {
        Fixture::start_access(security, api::ApiAccess::default()).await
    }

    /// A node whose API lets in what `access` allows.
    async fn start_access(security: Option<Security>, access: api::ApiAccess) -> Fixture {
        let cfg = NodeConfig {
            core: Config::new(ZonePath::parse("/a/h1").unwrap(), ""),
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: None,
            security: security.map(Arc::new),
            sensors: None,
            services: Default::default(),
        };
        let node = Node::start(cfg).await.expect("node starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(listener, node.handle(), access, async {
            let _ = stopped.await;
        }));
        Fixture {
            node,
            base,
            http: reqwest::Client::new(),
            stop: Some(stop),
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        reply(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    /// The `/metrics` text.
    async fn metrics(&self) -> String {
        let r = self.http.get(self.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        reply(
            self.http
                .post(self.url(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Sends `body` to `path`, declared as `ty` (no content type for `None`).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        ty: Option<&str>,
        body: &str,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method, self.url(path))
            .body(body.to_string());
        if let Some(t) = ty {
            req = req.header("content-type", t);
        }
        req.send().await.unwrap()
    }

    /// Waits until `f` holds for GET `path`, or fails after 5 s.
    async fn eventually(&self, path: &str, f: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let (status, v) = self.get(path).await;
            if status == StatusCode::OK && f(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "GET {path} never satisfied the condition: {:?}",
            self.get(path).await
        );
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.server)
            .await
            .expect("the API shuts down promptly")
            .unwrap()
            .unwrap();
        self.node.shutdown().await;
    }
}

async fn reply(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {v}"))
}

fn rows_named<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["rows"].as_array()?.iter().find(|r| r["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_insecure_marking() {
    let f = Fixture::start().await;
    let r = f.http.get(f.url("/v1/status")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-armillary-insecure"], "true");
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["leaf"], "/a/h1");
    assert_eq!(s["insecure"], true);
    assert_eq!(s["zones"], json!(["/", "/a"]));
    assert!(
        s["counters"].is_object() && s["rejected"].is_object(),
        "{s}"
    );
    assert!(s["round"].is_u64() && s["now"].is_u64(), "{s}");

    // Errors are JSON and marked too.
    let r = f.http.get(f.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["x-armillary-insecure"], "true");
    let (status, v) = f.post("/v1/status", json!({})).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(error_of(&v).contains("POST"), "{v}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_tables_and_rows() {
    let f = Fixture::start().await;
    let root = f
        .eventually("/v1/zones", |v| rows_named(v, "a").is_some())
        .await;
    assert_eq!(root["zone"], "/");
    assert_eq!(rows_named(&root, "a").unwrap()["nmembers"], 1);
    let meta = &root["meta"][0];
    assert_eq!(meta["name"], "a");
    assert_eq!(meta["issuer"], "/a/h1");
    assert!(
        meta["issued"].is_u64() && meta["age_s"].is_number(),
        "{meta}"
    );

    let (status, t) = f.get("/v1/zones?zone=/a").await;
    assert_eq!(status, StatusCode::OK);
    assert!(rows_named(&t, "h1").is_some(), "{t}");

    let (status, row) = f.get("/v1/zone?zone=/a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(row["nmembers"], 1, "{row}");
    let (status, leaf) = f.get("/v1/zone?zone=/a/h1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(leaf.is_object(), "{leaf}");

    let (status, v) = f.get("/v1/zones?zone=/b").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&v).contains("not on this agent's path"), "{v}");
    let (status, v) = f.get("/v1/zone?zone=/b").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = f.get("/v1/zones?zone=eu").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("absolute zone path"), "{v}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_queries() {
    let f = Fixture::start().await;
    f.eventually("/v1/zones", |v| rows_named(v, "a").is_some())
        .await;
    let (status, v) = f
        .post(
            "/v1/query",
            json!({"sql": "SELECT nmembers, name FROM \"/\" ORDER BY name"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], json!([{"name": "a", "nmembers": 1}]));
    // The columns in SELECT order, which JSON objects do not keep.
    assert_eq!(v["columns"], json!(["nmembers", "name"]));

    let (status, v) = f.post("/v1/query", json!({"sql": "SELEC nonsense"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("query failed"), "{v}");
    let (status, v) = f
        .post("/v1/query", json!({"sql": "DROP TABLE \"/\""}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = f.post("/v1/query", json!({"query": "SELECT 1"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("\"sql\""), "{v}");
    let r = f
        .http
        .post(f.url("/v1/query"))
        .body("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let big = "x".repeat(api::MAX_BODY + 1);
    let (status, v) = f
        .post("/v1/query", json!({ "sql": format!("SELECT '{big}'") }))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_of(&v).contains("64 KiB"), "{v}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn afc_install_list_remove() {
    let f = Fixture::start().await;
    let (status, v) = f
        .post(
            "/v1/afcs",
            json!({"name": "maxload", "zone": "/", "sql": "SELECT MAX(load) AS load"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let a = &v["installed"];
    assert_eq!(a["name"], "maxload");
    assert_eq!(a["scope"], "/");
    assert_eq!(a["sql"], "SELECT MAX(load) AS load");
    assert_eq!(a["state"], "active");
    assert_eq!(a["signer"], "insecure");
    assert_eq!(a["removed"], false);
    assert!(a["issued"].is_u64() && a["reason"].is_null(), "{a}");

    let (status, list) = f.get("/v1/afcs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "maxload"),
        "{list}"
    );
    let (_, scoped) = f.get("/v1/afcs?zone=/a").await;
    assert!(
        scoped
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["scope"] == "/a"),
        "{scoped}"
    );

    // Bad SQL, reserved outputs, foreign scopes and malformed bodies.
    let (status, v) = f
        .post(
            "/v1/afcs",
            json!({"name": "bad", "zone": "/", "sql": "SELECT MAX("}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = f
        .post(
            "/v1/afcs",
            json!({"name": "res", "zone": "/", "sql": "SELECT SUM(nmembers) AS nmembers"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("reserved"), "{v}");
    let (status, v) = f
        .post(
            "/v1/afcs",
            json!({"name": "far", "zone": "/b", "sql": "SELECT MAX(load) AS load"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&v).contains("install it through an agent inside"),
        "{v}"
    );
    let (status, v) = f.post("/v1/afcs", json!({"name": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("name, zone and sql"), "{v}");

    // A signed-form certificate is accepted in insecure mode.
    let cert = json!({
        "scope": "/a", "name": "minload", "sql": "SELECT MIN(load) AS minload",
        "issued": 1u64, "expires": null, "removed": false,
        "signer": "insecure", "signature": []
    });
    let (status, v) = f.post("/v1/afcs", json!({ "cert": cert })).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["installed"]["scope"], "/a");

    let r = f
        .http
        .delete(f.url("/v1/afcs?zone=/&name=maxload"))
        .send()
        .await
        .unwrap();
    let (status, v) = reply(r).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["removed"]["state"], "removed");
    assert_eq!(v["removed"]["removed"], true);

    let r = f
        .http
        .delete(f.url("/v1/afcs?zone=/&name=maxload"))
        .send()
        .await
        .unwrap();
    let (status, v) = reply(r).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error_of(&v).contains("no AFC named maxload"), "{v}");
    let r = f.http.delete(f.url("/v1/afcs")).send().await.unwrap();
    assert_eq!(reply(r).await.0, StatusCode::BAD_REQUEST);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_attributes() {
    let f = Fixture::start().await;
    let put = |name: &str, body: &str| {
        f.http
            .put(f.url(&format!("/v1/attrs/{name}")))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let (status, v) = reply(put("load", "2.5").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"name": "load", "value": 2.5}));
    reply(put("tags", r#"["web","db"]"#).await.unwrap()).await;
    let (_, attrs) = f.get("/v1/attrs").await;
    assert_eq!(attrs, json!({"load": 2.5, "tags": ["web", "db"]}));

    let (status, v) = reply(put("nmembers", "3").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("reserved"), "{v}");
    let (status, v) = reply(put("load", "{\"a\":1}").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&v).contains("nested objects"), "{v}");
    let (status, _) = reply(put("load", "not json").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = reply(put("9lives", "1").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let del = || f.http.delete(f.url("/v1/attrs/load")).send();
    let (status, v) = reply(del().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!({"name": "load", "removed": true}));
    let (_, v) = reply(del().await.unwrap()).await;
    assert_eq!(v["removed"], false);
    let (_, attrs) = f.get("/v1/attrs").await;
    assert_eq!(attrs, json!({"tags": ["web", "db"]}));
    f.stop().await;
}

/// Reads server-sent events from a response.
struct Events {
    body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>,
    >,
    buf: String,
}

impl Events {
    fn new(r: reqwest::Response) -> Events {
        Events {
            body: Box::pin(r.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event as (name, data).
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut data) = (String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return (name, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.body.next())
                .await
                .expect("an event within 5 s")
                .expect("the stream stays open")
                .unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes() {
    let f = Fixture::start().await;
    let (status, v) = f
        .post(
            "/v1/afcs",
            json!({"name": "maxload", "zone": "/", "sql": "SELECT MAX(load) AS load"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    let r = f
        .http
        .get(f.url("/v1/watch?zone=/a&table=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(r);
    let (name, first) = events.next().await;
    assert_eq!(name, "row");
    assert_eq!(first["zone"], "/a");
    assert!(
        first["time"].is_u64() && first["attrs"].is_object(),
        "{first}"
    );
    let (name, table) = events.next().await;
    assert_eq!(name, "table");
    assert!(table["rows"].is_array(), "{table}");

    let r = f
        .send(
            reqwest::Method::PUT,
            "/v1/attrs/load",
            Some("application/json"),
            "7",
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (mut saw_row, mut saw_table) = (false, false);
    while !(saw_row && saw_table) {
        let (name, data) = events.next().await;
        match name.as_str() {
            "row" if data["attrs"]["load"] == 7 => saw_row = true,
            "table" if rows_named(&data, "h1").is_some_and(|r| r["load"] == 7) => saw_table = true,
            _ => {}
        }
    }

    // The leaf can be watched too; its row changes with its own attributes.
    let r = f
        .http
        .get(f.url("/v1/watch?zone=/a/h1"))
        .send()
        .await
        .unwrap();
    let mut leaf = Events::new(r);
    let (name, first) = leaf.next().await;
    assert_eq!(name, "row");
    assert_eq!(first["attrs"]["load"], 7, "{first}");
    f.send(
        reqwest::Method::PUT,
        "/v1/attrs/load",
        Some("application/json"),
        "8",
    )
    .await;
    loop {
        let (name, data) = leaf.next().await;
        if name == "row" && data["attrs"]["load"] == 8 {
            break;
        }
    }

    let (status, v) = f.get("/v1/watch?zone=/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    // Open streams do not hold up shutdown.
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics() {
    let f = Fixture::start().await;
    let r = f.http.get(f.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
    );
    let text = r.text().await.unwrap();
    assert!(
        text.contains("# TYPE armillary_msgs_sent_total counter"),
        "{text}"
    );
    assert!(text.contains("armillary_evaluations_total "), "{text}");
    assert!(
        text.contains("# TYPE armillary_rejected_total counter"),
        "{text}"
    );
    assert!(text.contains("armillary_insecure 1\n"), "{text}");
    assert!(text.contains("\narmillary_round "), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("armillary_"), "{line}");
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
    }
    f.stop().await;
}

/// A signed AFC (or tombstone) as the API takes it.
fn signed(by: &Identity, mut cert: AfcCert) -> Value {
    security::sign_afc(by, &mut cert);
    json!({ "cert": cert })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_mode_wants_signatures() {
    let now = now_micros();
    let (from, until) = (now - 60_000_000, now + DAY);
    let root = Identity::new_root(&ZonePath::root(), from, until);
    let agent = root
        .new_child(CertKind::Agent, "/a/h1", from, until)
        .unwrap();
    let client = |name: &str, zone: &str| {
        let allow = vec![Right::Afc(ZonePath::parse(zone).unwrap())];
        root.new_child(CertKind::Client { allow }, name, from, until)
            .unwrap()
    };
    let (ops, intern) = (client("ops", "/"), client("intern", "/b"));
    let leaf = ZonePath::parse("/a/h1").unwrap();
    let f = Fixture::start_with(Some(Security::for_agent(agent, &leaf, now).unwrap())).await;

    let r = f.http.get(f.url("/v1/status")).send().await.unwrap();
    assert!(r.headers().get("x-armillary-insecure").is_none());
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["insecure"], false);
    assert_eq!(s["identity"], "/a/h1");

    let (status, v) = f
        .post(
            "/v1/afcs",
            json!({"name": "maxload", "zone": "/", "sql": "SELECT MAX(load) AS load"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&v).contains("--key"), "{v}");

    let afc = || {
        AfcCert::new(
            ZonePath::root(),
            "maxload",
            "SELECT MAX(load) AS load",
            now_micros(),
        )
    };
    let (status, v) = f.post("/v1/afcs", signed(&intern, afc())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(error_of(&v).contains("afc_not_allowed"), "{v}");

    let (status, v) = f.post("/v1/afcs", signed(&ops, afc())).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["installed"]["signer"], "ops");
    assert_eq!(v["installed"]["state"], "active");

    let url = f.url("/v1/afcs?zone=/&name=maxload");
    let (status, v) = reply(f.http.delete(&url).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let tomb = signed(
        &ops,
        AfcCert::tombstone(ZonePath::root(), "maxload", now_micros()),
    );
    let (status, v) = reply(f.http.delete(&url).json(&tomb).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["removed"]["state"], "removed");

    let text = f.metrics().await;
    assert!(text.contains("armillary_insecure 0\n"), "{text}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_answers_503() {
    let Fixture {
        node,
        base,
        http,
        stop,
        server,
    } = Fixture::start().await;
    node.shutdown().await;
    let r = http.get(format!("{base}/v1/status")).send().await.unwrap();
    let (status, v) = reply(r).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(&v).contains("stopped"), "{v}");
    let _ = stop.unwrap().send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_is_served_and_uses_only_documented_endpoints() {
    let f = Fixture::start().await;
    let r = f.http.get(f.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("<title>Armillary</title>"));
    // Every API path the page calls answers.
    for path in ["/v1/status", "/v1/zones?zone=/", "/v1/afcs"] {
        assert!(page.contains(path.split('?').next().unwrap()), "{path}");
        let (status, _) = f.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    assert!(page.contains("/v1/watch?table=true&zone="));
    assert!(page.contains("/v1/query"));
    // Data from other agents goes in as text only.
    assert!(!page.contains("innerHTML"));
    f.stop().await;
}

/// The host:port the fixture's API listens on.
fn addr_of(f: &Fixture) -> String {
    f.base.trim_start_matches("http://").to_string()
}

/// What `/v1/status` counts under `rejected` for `reason`.
async fn refused(f: &Fixture, reason: &str) -> u64 {
    let (_, s) = f.get("/v1/status").await;
    s["rejected"][reason].as_u64().unwrap_or(0)
}

/// The names of the AFCs the agent holds.
async fn afc_names(f: &Fixture) -> Vec<String> {
    let (_, list) = f.get("/v1/afcs").await;
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

/// One request over a plain TCP connection, exactly as written; (status, body).
async fn raw(addr: &str, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_json_are_refused_and_change_nothing() {
    let f = Fixture::start().await;
    let afc = r#"{"name":"evil","zone":"/","sql":"SELECT MAX(load) AS evil"}"#;
    // What a form or a fetch on any web page can send without a preflight.
    for ty in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let (status, v) = reply(f.send(reqwest::Method::POST, "/v1/afcs", ty, afc).await).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ty:?}: {v}");
        assert!(
            error_of(&v).contains("Content-Type: application/json"),
            "{v}"
        );
    }
    assert!(!afc_names(&f).await.contains(&"evil".to_string()));
    let r = f
        .send(
            reqwest::Method::PUT,
            "/v1/attrs/role",
            Some("text/plain"),
            "\"web\"",
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (_, attrs) = f.get("/v1/attrs").await;
    assert_eq!(attrs, json!({}));
    let r = f
        .send(
            reqwest::Method::DELETE,
            "/v1/afcs?zone=/&name=x",
            Some("text/plain"),
            "{}",
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(refused(&f, "api_bad_content_type").await, 7);

    // JSON with parameters is fine; requests without a body need no type.
    let json = Some("application/json; charset=utf-8");
    let (status, v) = reply(f.send(reqwest::Method::POST, "/v1/afcs", json, afc).await).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let r = f
        .http
        .delete(f.url("/v1/afcs?zone=/&name=evil"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_names_are_refused() {
    let f = Fixture::start().await;
    let port = f.base.rsplit(':').next().unwrap().to_string();
    for host in [
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        "evil.example".to_string(),
    ] {
        let r = f
            .http
            .get(f.url("/v1/status"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        let (status, v) = reply(r).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host}: {v}");
        assert!(error_of(&v).contains("--api-host"), "{v}");
        let r = f
            .http
            .post(f.url("/v1/afcs"))
            .header("host", &host)
            .json(&json!({"name": "evil", "zone": "/", "sql": "SELECT MAX(load) AS evil"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        let r = f
            .http
            .get(f.url("/"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    assert!(!afc_names(&f).await.contains(&"evil".to_string()));
    // HTTP/1.0 without a Host header.
    let (status, body) = raw(&addr_of(&f), "GET /v1/status HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("no Host header"), "{body}");
    assert_eq!(refused(&f, "api_bad_host").await, 10);

    // The API's own loopback names, with its port.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = f
            .http
            .get(f.url("/v1/status"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{host}");
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_given_with_api_host_are_accepted() {
    let mut access = api::ApiAccess::default();
    access.allow_host("Mon.Example.com").unwrap();
    let f = Fixture::start_access(None, access).await;
    let host = |h: &'static str| f.http.get(f.url("/v1/status")).header("host", h).send();
    assert_eq!(
        host("mon.example.com:8080").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        host("MON.EXAMPLE.COM").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        host("other.example.com").await.unwrap().status(),
        StatusCode::MISDIRECTED_REQUEST
    );
    let (status, body) = raw(
        &addr_of(&f),
        "GET /v1/attrs HTTP/1.1\r\nHost: mon.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    f.stop().await;
}

const TOKEN: &str = "sesame-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_set() {
    let access = api::ApiAccess {
        token: Some(api::ApiToken::new(TOKEN).unwrap()),
        ..api::ApiAccess::default()
    };
    let f = Fixture::start_access(None, access).await;
    let bearer = format!("Bearer {TOKEN}");
    for path in [
        "/v1/status",
        "/v1/zones",
        "/v1/afcs",
        "/metrics",
        "/v1/watch",
    ] {
        let r = f.http.get(f.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"armillary\""
        );
        let v: Value = r.json().await.unwrap();
        assert!(error_of(&v).contains("ARMILLARY_API_TOKEN"), "{v}");
    }
    let r = f
        .http
        .post(f.url("/v1/afcs"))
        .header("authorization", "Bearer not-the-token-at-all")
        .json(&json!({"name": "evil", "zone": "/", "sql": "SELECT MAX(load) AS evil"}))
        .send()
        .await
        .unwrap();
    let (status, v) = reply(r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&v).contains("--api-token-file"), "{v}");

    // With the token everything works as before.
    let authed = |req: reqwest::RequestBuilder| req.header("authorization", &bearer);
    let r = authed(f.http.post(f.url("/v1/afcs")))
        .json(&json!({"name": "maxload", "zone": "/", "sql": "SELECT MAX(load) AS load"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = authed(f.http.get(f.url("/v1/status")))
        .send()
        .await
        .unwrap();
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["rejected"]["api_unauthorized"], 6, "{s}");
    let r = authed(f.http.get(f.url("/v1/afcs"))).send().await.unwrap();
    let list: Value = r.json().await.unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["maxload"]);
    let text = authed(f.http.get(f.url("/metrics")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("armillary_rejected_total{reason=\"api_unauthorized\"} 6\n"),
        "{text}"
    );

    // The dashboard page itself needs none: it asks for the token.
    let r = f.http.get(f.url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("<title>Armillary</title>"));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cors_permission_is_ever_sent() {
    let access = api::ApiAccess {
        token: Some(api::ApiToken::new(TOKEN).unwrap()),
        ..api::ApiAccess::default()
    };
    for f in [
        Fixture::start().await,
        Fixture::start_access(None, access).await,
    ] {
        let origin = "http://evil.example";
        let no_cors = |r: &reqwest::Response, what: &str| {
            for (name, _) in r.headers() {
                assert!(
                    !name.as_str().starts_with("access-control-"),
                    "{what}: {name} sent"
                );
            }
        };
        // A preflight for a JSON POST gets no permission.
        let r = f
            .http
            .request(reqwest::Method::OPTIONS, f.url("/v1/afcs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
            .await
            .unwrap();
        assert!(!r.status().is_success(), "{}", r.status());
        no_cors(&r, "preflight");
        for path in ["/", "/v1/status", "/v1/zones", "/metrics", "/v1/nothing"] {
            let r = f
                .http
                .get(f.url(path))
                .header("origin", origin)
                .header("authorization", format!("Bearer {TOKEN}"))
                .send()
                .await
                .unwrap();
            no_cors(&r, path);
        }
        let r = f
            .send(
                reqwest::Method::POST,
                "/v1/query",
                Some("text/plain"),
                r#"{"sql":"SELECT 1"}"#,
            )
            .await;
        no_cors(&r, "POST");
        f.stop().await;
    }
}

/// The page's script and, within it, its API client section.
fn dashboard_script(page: &str) -> (&str, &str) {
    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .expect("the page has a script")
        .0;
    let client = script
        .split_once("// api-client:begin")
        .and_then(|(_, rest)| rest.split_once("// api-client:end"))
        .expect("the script marks its API client")
        .0;
    (script, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sends_json_and_the_token() {
    let access = api::ApiAccess {
        token: Some(api::ApiToken::new(TOKEN).unwrap()),
        ..api::ApiAccess::default()
    };
    let f = Fixture::start_access(None, access).await;
    let page = f.http.get(f.url("/")).send().await.unwrap().text().await;
    let page = page.unwrap();
    let (script, client) = dashboard_script(&page);
    // Every request goes through the client, which declares JSON bodies;
    // no EventSource (it cannot send the token), no token kept beyond the tab.
    let outside = script.replace(client, "");
    for banned in [
        "fetch(",
        "EventSource",
        "localStorage",
        "XMLHttpRequest",
        "body:",
    ] {
        assert!(
            !outside.contains(banned),
            "the page uses {banned} outside its API client"
        );
    }
    assert_eq!(client.matches("fetch(").count(), 1, "{client}");
    assert!(client.contains(r#"headers["content-type"] = "application/json""#));

    // The client itself, run by Node against this API.
    let Ok(node) = std::process::Command::new("node").arg("--version").output() else {
        eprintln!("node is not installed: the dashboard client was checked by reading only");
        f.stop().await;
        return;
    };
    assert!(node.status.success());
    let harness = include_str!("dashboard_client.js").replace("/* api-client */", client);
    let dir = std::env::temp_dir().join(format!("armillary-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("client.js");
    std::fs::write(&file, harness).unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&file)
        .env("API", &f.base)
        .env("TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["no_token"], 401, "{v}");
    assert!(
        v["no_token_asked"]
            .as_str()
            .unwrap()
            .contains("bearer token"),
        "{v}"
    );
    assert_eq!(v["wrong_token"], 401, "{v}");
    assert!(
        v["wrong_token_asked"]
            .as_str()
            .unwrap()
            .contains("not this API's"),
        "{v}"
    );
    assert_eq!(v["token"], "/a/h1", "{v}");
    assert_eq!(v["token_asked"], Value::Null, "{v}");
    assert_eq!(v["query"], json!(["n"]), "{v}");
    assert_eq!(v["afcs"], 0, "{v}");
    assert_eq!(v["first_event"], json!({"name": "row", "zone": "/"}), "{v}");
    assert_eq!(v["body_types"], json!(["application/json"]), "{v}");
    assert_eq!(v["token_in_url"], false, "{v}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_history_for_plots() {
    let f = Fixture::start().await;
    // Samples come every two seconds: wait for two of the root's row.
    let h = f
        .eventually("/v1/history?zone=/&attr=nmembers", |v| {
            v["series"]["nmembers"]
                .as_array()
                .is_some_and(|p| p.len() >= 2)
        })
        .await;
    assert_eq!(h["zone"], "/");
    assert_eq!(h["period_s"], 2.0);
    assert_eq!(h["window_s"], 600.0);
    let pts = h["series"]["nmembers"].as_array().unwrap();
    assert_eq!(pts[0][1], 1.0, "{h}");
    assert!(pts[0][0].as_f64().unwrap() < pts[1][0].as_f64().unwrap());
    // Every numeric attribute of a zone when none is named; text is not.
    let (status, all) = f.get("/v1/history?zone=/a&window=10m").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let names: Vec<&String> = all["series"].as_object().unwrap().keys().collect();
    assert!(names.iter().any(|n| *n == "nmembers"), "{names:?}");
    assert!(!names.iter().any(|n| *n == "contacts"), "{names:?}");
    // A zone without history, an attribute it lacks, bad parameters.
    let (status, v) = f.get("/v1/history?zone=/b").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let (status, v) = f.get("/v1/history?zone=/&attr=nosuch").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(error_of(&v).contains("nosuch"), "{v}");
    let (status, v) = f.get("/v1/history?zone=/&window=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _) = f.get("/v1/history?zone=/&bogus=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    f.stop().await;
}

/// The metric names a PromQL expression reads (`armillary_...`).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("armillary_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboards_query_only_metrics_the_agent_exports() {
    let f = Fixture::start().await;
    // An HTTP check runs, so that the per-kind check families exist.
    let r = f
        .send(
            reqwest::Method::PUT,
            "/v1/chm/components/self",
            Some("application/json"),
            &json!({"http": f.url("/v1/status"), "interval": "1s"}).to_string(),
        )
        .await;
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let mut text = String::new();
    for _ in 0..100 {
        text = f.metrics().await;
        if text.contains("armillary_chm_checks_run_total{kind=\"http\"}") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(
        exported.contains("armillary_chm_checks_run_total"),
        "{text}"
    );
    let boards = [
        (
            "gossip.json",
            include_str!("../../dashboards/grafana/gossip.json"),
        ),
        (
            "chm.json",
            include_str!("../../dashboards/grafana/chm.json"),
        ),
    ];
    for (file, board) in boards {
        let b: Value = serde_json::from_str(board).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(b["uid"].is_string() && b["title"].is_string(), "{file}");
        let panels = b["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{file}");
        let mut queried = 0;
        for p in panels {
            let targets = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: {p}"));
            assert!(
                !targets.is_empty(),
                "{file}: panel {} has no query",
                p["title"]
            );
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                let names = metrics_in(expr);
                assert!(
                    !names.is_empty(),
                    "{file}: {expr} reads no armillary metric"
                );
                for n in names {
                    assert!(
                        exported.contains(n.as_str()),
                        "{file}: {expr} reads {n}, which /metrics does not export"
                    );
                    queried += 1;
                }
            }
        }
        assert!(queried >= 10, "{file}");
    }
    f.stop().await;
}
