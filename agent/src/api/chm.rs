//! CHM's routes under `/v1/chm/`: register, heartbeat, maintenance and
//! deregistration of this agent's components; lookup, listing, providers,
//! QoS samples, status history and a watch (SSE) from anywhere in the tree.

use super::ApiState;
use super::error::{ApiError, parse_body};
use super::tables::parse_zone;
use crate::chm::proto::registry::MAX_OUTPUT;
use crate::chm::proto::{
    Check, CheckSpec, ChmError, ComponentId, Registration, RegistryError, Sample, Status,
    StatusChange,
};
use crate::chm::{self, ChmCallError, views};
use crate::node::NodeHandle;
use crate::path::ZonePath;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post, put};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// The routes, merged into the API's router.
pub fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/v1/chm/components", get(own))
        .route("/v1/chm/components/{id}", put(register).delete(deregister))
        .route(
            "/v1/chm/components/{id}/heartbeat",
            put(heartbeat).post(heartbeat),
        )
        .route("/v1/chm/components/{id}/maint", put(maint).post(maint))
        .route("/v1/chm/components/{id}/qos", post(qos))
        .route("/v1/chm/lookup/{id}", get(lookup))
        .route("/v1/chm/list", get(list))
        .route("/v1/chm/providers/{keyword}", get(providers))
        .route("/v1/chm/history", get(history))
        .route("/v1/chm/watch", get(watch))
}

impl From<ChmCallError> for ApiError {
    fn from(e: ChmCallError) -> ApiError {
        let e = match e {
            ChmCallError::Node(n) => return n.into(),
            e => e,
        };
        let status = match &e {
            ChmCallError::Chm(ChmError::Registry(RegistryError::Unknown(_)))
            | ChmCallError::NotFound(_) => StatusCode::NOT_FOUND,
            ChmCallError::Chm(ChmError::Registry(
                RegistryError::Full | RegistryError::RowBudget { .. },
            )) => StatusCode::CONFLICT,
            ChmCallError::Chm(_) => StatusCode::BAD_REQUEST,
            ChmCallError::CmdChecksOff => StatusCode::FORBIDDEN,
            ChmCallError::NotRunning => StatusCode::NOT_IMPLEMENTED,
            ChmCallError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ChmCallError::Consensus(_) => StatusCode::SERVICE_UNAVAILABLE,
            ChmCallError::Node(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn parse_id(text: &str) -> Result<ComponentId, ApiError> {
    ComponentId::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A duration: text such as `"10s"` or `"500ms"`, or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum Dur {
    Text(String),
    Secs(f64),
}

impl Dur {
    fn micros(&self, name: &str) -> Result<u64, ApiError> {
        let bad = |why: String| {
            ApiError::bad_request(format!(
                "bad {name}: {why}; give a duration such as \"10s\" or \"500ms\""
            ))
        };
        match self {
            Dur::Text(t) => humantime::parse_duration(t)
                .map(|d| d.as_micros().min(u64::MAX as u128) as u64)
                .map_err(|e| bad(format!("{t:?}: {e}"))),
            Dur::Secs(s) if s.is_finite() && *s >= 0.0 && *s < 1e9 => Ok((s * 1e6) as u64),
            Dur::Secs(s) => Err(bad(format!("{s} is not a positive number of seconds"))),
        }
    }
}

/// The body of `PUT /v1/chm/components/{id}`: exactly one of `http`,
/// `tcp`, `cmd` and `ttl`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    http: Option<String>,
    tcp: Option<String>,
    cmd: Option<String>,
    ttl: Option<Dur>,
    interval: Option<Dur>,
    timeout: Option<Dur>,
    #[serde(default)]
    keywords: Vec<String>,
    address: Option<String>,
    failures_before_critical: Option<u32>,
    successes_before_passing: Option<u32>,
    deregister_after: Option<Dur>,
    /// Verdicts agreed in a group of the interested agents.
    #[serde(default)]
    consensus: bool,
}

impl RegisterBody {
    fn registration(self, id: ComponentId) -> Result<Registration, ApiError> {
        let mut checks = Vec::new();
        if let Some(url) = self.http {
            checks.push(Check::Http { url });
        }
        if let Some(addr) = self.tcp {
            checks.push(Check::Tcp { addr });
        }
        if let Some(command) = self.cmd {
            checks.push(Check::Cmd { command });
        }
        if let Some(t) = &self.ttl {
            checks.push(Check::Ttl {
                ttl: t.micros("ttl")?,
            });
        }
        if checks.len() != 1 {
            return Err(ApiError::bad_request(
                "give exactly one check: http (a URL), tcp (host:port), cmd (a command) or ttl (a duration)",
            ));
        }
        let mut spec = CheckSpec::new(checks.remove(0));
        if let Some(i) = &self.interval {
            spec.interval = i.micros("interval")?;
        }
        if let Some(t) = &self.timeout {
            spec.timeout = t.micros("timeout")?;
        }
        if let Some(n) = self.failures_before_critical {
            spec.failures_before_critical = n;
        }
        if let Some(n) = self.successes_before_passing {
            spec.successes_before_passing = n;
        }
        let mut reg = Registration::new(id, spec);
        reg.keywords = self.keywords;
        reg.address = self.address;
        reg.consensus = self.consensus;
        reg.deregister_after = self
            .deregister_after
            .map(|d| d.micros("deregister_after"))
            .transpose()?;
        reg.validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(reg)
    }
}

async fn register(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let b: RegisterBody = parse_body(
        &body,
        "a registration: {\"http\": URL, \"interval\": \"10s\", ...}",
    )?;
    let reg = b.registration(id.clone())?;
    let consensus = reg.consensus;
    chm::register(&s.handle, reg).await?;
    if consensus {
        // The registration stands; the supervisor keeps trying to join.
        chm::consensus::ensure_member(&s.handle, &id, true).await?;
    }
    Ok(Json(json!({
        "id": id.as_str(),
        "registered": true,
        "level": if consensus { "consensus" } else { "weak" },
    })))
}

async fn deregister(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    chm::deregister(&s.handle, id.clone()).await?;
    Ok(Json(json!({ "id": id.as_str(), "deregistered": true })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    status: Option<String>,
    #[serde(default)]
    output: String,
}

fn parse_status(text: &str) -> Result<Status, ApiError> {
    Status::parse(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "bad status {text:?}: give passing, warning or critical"
        ))
    })
}

async fn heartbeat(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let b: HeartbeatBody = if body.iter().all(u8::is_ascii_whitespace) {
        HeartbeatBody {
            status: None,
            output: String::new(),
        }
    } else {
        parse_body(
            &body,
            "a heartbeat: {\"status\": \"passing\", \"output\": TEXT}",
        )?
    };
    let status = parse_status(b.status.as_deref().unwrap_or("passing"))?;
    if b.output.len() > MAX_OUTPUT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the output is {} bytes; send at most {MAX_OUTPUT}",
                b.output.len()
            ),
        ));
    }
    chm::heartbeat(&s.handle, id.clone(), status, b.output).await?;
    Ok(Json(
        json!({ "id": id.as_str(), "status": status.as_str() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintBody {
    enable: bool,
    reason: Option<String>,
}

async fn maint(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let b: MaintBody = parse_body(
        &body,
        "{\"enable\": true, \"reason\": TEXT} or {\"enable\": false}",
    )?;
    let reason = b
        .enable
        .then(|| b.reason.unwrap_or_else(|| "maintenance".into()));
    chm::maint(&s.handle, id.clone(), reason).await?;
    Ok(Json(json!({ "id": id.as_str(), "maintenance": b.enable })))
}

/// One sample or many: `{"t1","t2","t3","t4"}` or `{"samples": [...]}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum QosBody {
    Many { samples: Vec<Sample> },
    One(Sample),
}

/// Samples one request carries at most.
const MAX_SAMPLES: usize = 1000;

async fn qos(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let b: QosBody = parse_body(
        &body,
        "a sample {\"t1\":..,\"t2\":..,\"t3\":..,\"t4\":..} (µs) or {\"samples\": [...]}",
    )?;
    let samples = match b {
        QosBody::One(s) => vec![s],
        QosBody::Many { samples } => samples,
    };
    if samples.is_empty() || samples.len() > MAX_SAMPLES {
        return Err(ApiError::bad_request(format!(
            "send from 1 to {MAX_SAMPLES} samples, not {}",
            samples.len()
        )));
    }
    let n = samples.len();
    let view = chm::qos(&s.handle, id.clone(), samples).await?;
    Ok(Json(
        json!({ "id": id.as_str(), "accepted": n, "qos": views::qos(&view) }),
    ))
}

async fn own(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let own = chm::own(&s.handle).await?;
    Ok(Json(Value::Array(own.iter().map(views::own).collect())))
}

async fn lookup(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<armillary_client::types::chm::ComponentRecord>, ApiError> {
    let id = parse_id(&id)?;
    let r = chm::lookup(&s.handle, id.as_str().to_string()).await?;
    let mut v = views::component(&r);
    // A member of the component's consensus group answers its verdict.
    match chm::consensus::verdicts(&s.handle, &id)
        .await
        .as_ref()
        .and_then(|v| v.current())
    {
        Some(verdict) => {
            v.status = verdict.status.as_str().to_string();
            v.reason = verdict.reason.to_string();
            v.epoch = Some(verdict.epoch);
            v.level = Some("consensus".into());
        }
        None => v.level = Some("weak".into()),
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
struct ListParams {
    zone: Option<String>,
    status: Option<String>,
}

async fn list(
    State(s): State<ApiState>,
    q: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = q?;
    let zone = match &q.zone {
        Some(z) => parse_zone(z)?,
        None => s.handle.info().leaf.parent().unwrap_or_else(ZonePath::root),
    };
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let (records, complete) = chm::list(&s.handle, zone.clone()).await?;
    let records: Vec<Value> = records
        .iter()
        .filter(|r| status.is_none_or(|st| r.status == st))
        .map(views::record)
        .collect();
    Ok(Json(json!({
        "zone": zone.as_str(),
        "complete": complete,
        "components": records,
    })))
}

#[derive(Deserialize)]
struct ProvidersParams {
    limit: Option<usize>,
}

async fn providers(
    State(s): State<ApiState>,
    Path(keyword): Path<String>,
    q: Result<Query<ProvidersParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let limit = q?.limit.unwrap_or(16);
    let r = chm::providers(&s.handle, keyword, limit).await?;
    Ok(Json(Value::Array(r.iter().map(views::record).collect())))
}

#[derive(Deserialize)]
struct WatchParams {
    id: Option<String>,
    zone: Option<String>,
}

/// What a watch or a history follows.
#[derive(Clone)]
enum Target {
    /// Every component this agent hears of (its leaf zone).
    Home,
    Id(ComponentId),
    Zone(ZonePath),
}

impl Target {
    fn of(q: &WatchParams) -> Result<Target, ApiError> {
        Ok(match (&q.id, &q.zone) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request("give id or zone, not both"));
            }
            (Some(id), None) => Target::Id(parse_id(id)?),
            (None, Some(z)) => Target::Zone(parse_zone(z)?),
            (None, None) => Target::Home,
        })
    }

    fn matches(&self, c: &StatusChange) -> bool {
        match self {
            Target::Home => true,
            Target::Id(id) => c.id == *id,
            Target::Zone(z) => z.contains(&c.zone),
        }
    }
}

async fn history(
    State(s): State<ApiState>,
    q: Result<Query<WatchParams>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let target = Target::of(&q?.0)?;
    let (_, kept) = chm::changes(&s.handle).await?;
    Ok(Json(Value::Array(
        kept.iter()
            .filter(|c| target.matches(c))
            .map(views::change)
            .collect(),
    )))
}

/// How often a watch of a component or zone beyond this agent's leaf
/// zone asks the tree again.
const POLL: Duration = Duration::from_secs(1);

/// A watcher's state: the status last reported per (zone, id).
struct Watch {
    handle: NodeHandle,
    target: Target,
    rx: tokio::sync::broadcast::Receiver<StatusChange>,
    seen: BTreeMap<(ZonePath, ComponentId), Status>,
    queue: std::collections::VecDeque<Event>,
    poll: tokio::time::Interval,
    closing: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl Watch {
    /// Records `status` of (zone, id); an event when it changed.
    fn note(&mut self, zone: ZonePath, id: ComponentId, status: Status, time: u64, reason: &str) {
        let key = (zone.clone(), id.clone());
        let previous = self.seen.insert(key, status);
        if let Some(p) = previous
            && p != status
        {
            let c = StatusChange {
                id,
                status,
                previous: p,
                time,
                zone,
                reason: reason.to_string(),
            };
            self.queue.push_back(
                Event::default()
                    .event("status")
                    .data(views::change(&c).to_string()),
            );
        }
    }

    /// Asks the tree for the target's current statuses.
    async fn refresh(&mut self) {
        let now = crate::node::now_micros();
        let records = match &self.target {
            Target::Home => return,
            Target::Id(id) => match chm::lookup(&self.handle, id.as_str().to_string()).await {
                Ok(r) => vec![r],
                Err(_) => return,
            },
            Target::Zone(z) => match chm::list(&self.handle, z.clone()).await {
                Ok((r, _)) => r,
                Err(_) => return,
            },
        };
        for r in records {
            self.note(r.zone, r.id, r.status, now, &r.reason);
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            tokio::select! {
                _ = &mut self.closing => return None,
                c = self.rx.recv() => match c {
                    Ok(c) if self.target.matches(&c) => {
                        let key = (c.zone.clone(), c.id.clone());
                        let prev = self.seen.insert(key, c.status);
                        if prev != Some(c.status) {
                            let c = StatusChange { previous: prev.unwrap_or(c.previous), ..c };
                            self.queue.push_back(
                                Event::default().event("status").data(views::change(&c).to_string()),
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        return Some(Event::default().event("lagged").data(json!({ "missed": n }).to_string()));
                    }
                    Err(RecvError::Closed) => return None,
                },
                _ = self.poll.tick() => self.refresh().await,
            }
        }
    }
}

/// `GET /v1/chm/watch[?id=ID|zone=Z]`: server-sent `status` events
/// (`{"id","status","previous","time","zone","reason"}`), one per change.
/// A component or zone beyond this agent's leaf zone is followed by asking
/// the tree every second; this agent's own and its neighbours' changes
/// come at once.
async fn watch(
    State(s): State<ApiState>,
    q: Result<Query<WatchParams>, QueryRejection>,
) -> Result<Sse<axum::response::sse::KeepAliveStream<EventStream>>, ApiError> {
    let target = Target::of(&q?.0)?;
    if let Target::Id(id) = &target
        && let Some(stream) = consensus_watch(&s, id).await?
    {
        return Ok(Sse::new(stream.boxed()).keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        ));
    }
    let (rx, _) = chm::changes(&s.handle).await?;
    let mut w = Watch {
        handle: s.handle.clone(),
        target,
        rx,
        seen: BTreeMap::new(),
        queue: Default::default(),
        poll: tokio::time::interval(POLL),
        closing: Box::pin(ApiState::closed(s.closing.clone())),
    };
    w.poll
        .set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The current statuses, so that the first change is told as one.
    w.poll.tick().await;
    w.refresh().await;
    for r in chm::list(
        &s.handle,
        s.handle.info().leaf.parent().unwrap_or_else(ZonePath::root),
    )
    .await
    .map(|(r, _)| r)
    .unwrap_or_default()
    {
        let c = StatusChange {
            id: r.id.clone(),
            status: r.status,
            previous: r.status,
            time: 0,
            zone: r.zone.clone(),
            reason: String::new(),
        };
        if w.target.matches(&c) {
            w.seen.insert((r.zone, r.id), r.status);
        }
    }
    w.queue.clear();
    let ready = Event::default()
        .event("ready")
        .data(json!({ "watching": true }).to_string());
    w.queue.push_back(ready);
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        let ev = w.next().await?;
        Some((Ok(ev), w))
    });
    Ok(Sse::new(stream.boxed()).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

type EventStream = futures_util::stream::BoxStream<'static, Result<Event, Infallible>>;

/// A watch of a consensus component: this agent joins its group (the
/// home is in it already) and streams the verdicts the group delivers,
/// the current one first. None when the component has no consensus group.
async fn consensus_watch(s: &ApiState, id: &ComponentId) -> Result<Option<EventStream>, ApiError> {
    let watching = match chm::consensus::watch(&s.handle, id).await {
        Ok(w) => w,
        Err(ChmCallError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let rx = chm::consensus::follow(&s.handle, id).await?;
    let held = chm::consensus::verdicts(&s.handle, id).await;
    let zone = chm::lookup(&s.handle, id.as_str().to_string())
        .await
        .map(|r| r.zone.as_str().to_string())
        .or_else(|_| {
            held.as_ref()
                .and_then(|v| v.home().map(str::to_string))
                .ok_or(())
        })
        .unwrap_or_default();
    let mut first = std::collections::VecDeque::new();
    first.push_back(
        Event::default()
            .event("ready")
            .data(json!({ "watching": true, "level": "consensus" }).to_string()),
    );
    if let Some(v) = held.as_ref().and_then(|v| v.current()) {
        first.push_back(
            Event::default()
                .event("status")
                .data(chm::consensus::verdict_json(id, &zone, v).to_string()),
        );
    }
    let id = id.clone();
    let closing = Box::pin(ApiState::closed(s.closing.clone()));
    let stream = futures_util::stream::unfold(
        (rx, closing, first),
        move |(mut rx, mut closing, mut first)| {
            let id = id.clone();
            let zone = zone.clone();
            async move {
                loop {
                    if let Some(e) = first.pop_front() {
                        return Some((Ok(e), (rx, closing, first)));
                    }
                    let next = tokio::select! {
                        n = rx.recv() => n,
                        _ = &mut closing => return None,
                    };
                    match next {
                        Ok(e) => {
                            if let Some(v) = chm::consensus::verdict_of(&e) {
                                first.push_back(Event::default().event("status").data(
                                    chm::consensus::verdict_json(&id, &zone, &v).to_string(),
                                ));
                            } else if matches!(e, armillary_proto::crm::GroupEvent::Minority { .. })
                            {
                                first.push_back(Event::default().event("minority").data(
                                    json!({"level": "consensus", "minority": true}).to_string(),
                                ));
                            } else if matches!(e, armillary_proto::crm::GroupEvent::Left { .. }) {
                                return None;
                            }
                        }
                        Err(RecvError::Lagged(n)) => first.push_back(
                            Event::default()
                                .event("lagged")
                                .data(json!({ "missed": n }).to_string()),
                        ),
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        },
    );
    // The watch holds this agent in the group until the stream is dropped.
    let stream = stream.map(move |e| {
        let _held = &watching;
        e
    });
    Ok(Some(stream.boxed()))
}
