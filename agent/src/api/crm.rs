//! `/v1/crm/...`: process groups. Join a group (and follow its view and
//! message events over SSE), send in a mode, read the view, leave.

use super::ApiState;
use super::error::{ApiError, parse_body};
use super::sse::{self, Batch};
use crate::crm::{self, CrmCallError, proto};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use base64::Engine;
use futures_util::Stream;
use proto::{CrmError, GroupEvent, GroupInfo, Mode, SendRefused, View};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Largest send body: a message of [`proto::wire::MAX_DATA`] bytes as base64.
const MAX_SEND_BODY: usize = proto::wire::MAX_DATA / 3 * 4 + 1024;
/// How long a join waits for a view holding this agent.
const JOIN_WAIT: Duration = Duration::from_secs(15);
/// Largest key-value request: a value of [`proto::kv::MAX_VALUE`] bytes
/// (twice, for cas) escaped in JSON.
const MAX_KV_BODY: usize = 2 * 6 * proto::kv::MAX_VALUE + 4096;
/// Largest request for an external machine: an operation of
/// [`proto::endpoint::MAX_OP`] bytes escaped in JSON.
const MAX_REQUEST_BODY: usize = 6 * proto::endpoint::MAX_OP + 1024;
/// Largest batch of a machine's answers (with a state).
const MAX_ANSWER_BODY: usize = 6 * proto::external::MAX_STATE + 1024 * 1024;
/// How long a request waits for its reply before the client is told to
/// try another member.
const REPLY_WAIT: Duration = Duration::from_secs(3);

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/crm/groups", get(list))
        .route("/v1/crm/groups/{name}", get(view).delete(leave))
        .route("/v1/crm/groups/{name}/join", post(join))
        .route("/v1/crm/groups/{name}/events", get(events))
        .route("/v1/crm/groups/{name}/serve", post(serve))
        .route(
            "/v1/crm/groups/{name}/kv",
            post(kv).layer(DefaultBodyLimit::max(MAX_KV_BODY)),
        )
        .route(
            "/v1/crm/groups/{name}/request",
            post(request).layer(DefaultBodyLimit::max(MAX_REQUEST_BODY)),
        )
        .route(
            "/v1/crm/groups/{name}/machine",
            get(machine_feed)
                .post(machine_answer)
                .layer(DefaultBodyLimit::max(MAX_ANSWER_BODY)),
        )
        .route(
            "/v1/crm/groups/{name}/messages",
            post(send).layer(DefaultBodyLimit::max(MAX_SEND_BODY)),
        )
}

impl From<CrmCallError> for ApiError {
    fn from(e: CrmCallError) -> ApiError {
        match e {
            CrmCallError::Node(n) => n.into(),
            CrmCallError::NotRunning => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            CrmCallError::NoView { .. } | CrmCallError::NoReply(..) | CrmCallError::Busy(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            // Every member runs the same service: no use trying another.
            CrmCallError::OtherService { .. } => ApiError::bad_request(e.to_string()),
            CrmCallError::Machine(
                proto::MachineError::ReplyTooLarge(_) | proto::MachineError::StateTooLarge(_),
            ) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            CrmCallError::NotServing(_)
            | CrmCallError::Stale { .. }
            | CrmCallError::Superseded { .. }
            | CrmCallError::Machine(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            CrmCallError::Crm(c) => {
                let status = match &c {
                    CrmError::UnknownGroup(_) => StatusCode::NOT_FOUND,
                    CrmError::BadName(_) => StatusCode::BAD_REQUEST,
                    CrmError::AlreadyMember(_) | CrmError::TooManyGroups(_) => StatusCode::CONFLICT,
                    CrmError::Send(SendRefused::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
                    CrmError::Send(SendRefused::Full { .. }) => StatusCode::SERVICE_UNAVAILABLE,
                    CrmError::Send(SendRefused::Left) => StatusCode::CONFLICT,
                };
                ApiError::new(status, c.to_string())
            }
        }
    }
}

/// A request body for group `name`: the group's name checked, the body
/// read as `T` (`shape` says what to give).
fn group_body<T: serde::de::DeserializeOwned>(
    name: &str,
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    let b = parse_body(&body?, shape)?;
    proto::check_name(name).map_err(CrmCallError::from)?;
    Ok(b)
}

/// A view as the API and the CLI show it: members by zone.
pub fn view_json(group: &str, v: &View) -> Value {
    json!({
        "group": group,
        "view_id": v.id,
        "members": v.members.iter().map(|m| &*m.zone).collect::<Vec<_>>(),
        "addrs": v.members.iter().map(|m| &*m.addr).collect::<Vec<_>>(),
        "coordinator": &*v.coordinator().zone,
    })
}

fn info_json(i: &GroupInfo) -> Value {
    let mut v = view_json(&i.name, &i.view);
    v["phase"] = json!(format!("{:?}", i.phase).to_lowercase());
    v["unstable"] = json!(i.unstable);
    v
}

/// One event of a group's stream: its SSE name and JSON.
pub fn event_json(e: &GroupEvent) -> Option<(&'static str, Value)> {
    Some(match e {
        GroupEvent::View { group, view } => {
            let mut v = view_json(group, view);
            v["type"] = json!("view");
            ("view", v)
        }
        GroupEvent::Deliver {
            view,
            from,
            mode,
            seq,
            data,
            ..
        } => {
            let mut v = json!({
                "type": "msg",
                "view_id": view,
                "from": &*from.zone,
                "seq": seq,
                "mode": mode.name(),
            });
            match std::str::from_utf8(data) {
                Ok(t) => v["data"] = json!(t),
                Err(_) => {
                    v["data"] = json!(base64::engine::general_purpose::STANDARD.encode(data));
                    v["encoding"] = json!("base64");
                }
            }
            ("msg", v)
        }
        GroupEvent::Blocked { view, .. } => {
            ("blocked", json!({"type": "blocked", "view_id": view}))
        }
        GroupEvent::Minority { view, .. } => {
            ("minority", json!({"type": "minority", "view_id": view}))
        }
        GroupEvent::Rejoining { member, why, .. } => (
            "rejoining",
            json!({"type": "rejoining", "incarnation": member.inc, "why": why.label()}),
        ),
        GroupEvent::Left { .. } => ("left", json!({"type": "left"})),
    })
}

async fn list(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let gs = crm::groups(&s.handle).await?;
    Ok(Json(Value::Array(gs.iter().map(info_json).collect())))
}

async fn view(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    proto::check_name(&name).map_err(CrmCallError::from)?;
    match crm::view(&s.handle, name.clone()).await? {
        Some(i) => Ok(Json(info_json(&i))),
        None => Err(CrmCallError::Crm(CrmError::UnknownGroup(name)).into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    /// Agent addresses to ask (otherwise the members the zone tree lists).
    #[serde(default)]
    contacts: Vec<String>,
}

async fn join(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let b: JoinBody = if body.is_empty() {
        JoinBody::default()
    } else {
        parse_body(&body, r#"{} or {"contacts": ["10.0.0.7:7000"]}"#)?
    };
    let contacts = contacts_of(&b.contacts)?;
    let (i, _) = crm::join(&s.handle, name, contacts, JOIN_WAIT).await?;
    Ok(Json(info_json(&i)))
}

/// The agent addresses a join asks, within the bound a view holds.
fn contacts_of(contacts: &[String]) -> Result<Vec<Arc<str>>, ApiError> {
    if contacts.len() > proto::wire::MAX_MEMBERS {
        return Err(ApiError::bad_request(format!(
            "{} contacts; give at most {}",
            contacts.len(),
            proto::wire::MAX_MEMBERS
        )));
    }
    Ok(contacts.iter().map(|c| c.as_str().into()).collect())
}

async fn leave(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    crm::leave(&s.handle, name.clone()).await?;
    Ok(Json(json!({"group": name, "left": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    data: String,
    /// `base64` when `data` is base64 of binary content.
    encoding: Option<String>,
    mode: Option<String>,
}

async fn send(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                r.status(),
                format!(
                    "a group message is at most {} MiB",
                    proto::wire::MAX_DATA >> 20
                ),
            )
        } else {
            r.into()
        }
    })?;
    let b: SendBody = parse_body(
        &body,
        r#"{"data": "text", "mode": "fifo|total|safe"} (with "encoding": "base64" for binary)"#,
    )?;
    let mode = match b.mode.as_deref() {
        None => Mode::Fifo,
        Some(m) => Mode::parse(m).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown mode {m:?}: give fifo (per-sender order), total (one order for all) or safe (total, delivered once every member holds it)"
            ))
        })?,
    };
    let data = match b.encoding.as_deref() {
        None | Some("utf-8") => b.data.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(b.data.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("data is not base64: {e}")))?,
        Some(e) => {
            return Err(ApiError::bad_request(format!(
                "unknown encoding {e:?}: give base64, or none for text"
            )));
        }
    };
    let bytes = data.len();
    crm::send(&s.handle, name, mode, data).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"sent": true, "mode": mode.name(), "bytes": bytes})),
    ))
}

/// The group's events from now on, the current view first.
async fn events(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rx = crm::follow(&s.handle, name.clone()).await?;
    let first: Vec<Event> = crm::view(&s.handle, name.clone())
        .await?
        .filter(|i| i.view.id > 0)
        .map(|i| {
            let mut v = view_json(&name, &i.view);
            v["type"] = json!("view");
            Event::default().event("view").data(v.to_string())
        })
        .into_iter()
        .collect();
    Ok(sse::stream(
        s.closing.clone(),
        first,
        rx,
        |mut rx| async move {
            let batch = match rx.recv().await {
                Ok(e) => {
                    let events = event_json(&e)
                        .map(|(name, v)| Event::default().event(name).data(v.to_string()))
                        .into_iter()
                        .collect();
                    if matches!(e, GroupEvent::Left { .. }) {
                        Batch::last(events)
                    } else {
                        Batch::more(events)
                    }
                }
                Err(RecvError::Lagged(n)) => Batch::more(vec![
                    Event::default()
                        .event("lagged")
                        .data(json!({"type": "lagged", "missed": n}).to_string()),
                ]),
                Err(RecvError::Closed) => return None,
            };
            Some((rx, batch))
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServeBody {
    /// The service: `kv`, the built-in key-value store.
    service: String,
    #[serde(default)]
    contacts: Vec<String>,
}

/// Joins the group as a serving member; answers once a view holds it.
async fn serve(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: ServeBody = group_body(&name, body, r#"{"service": "kv"}"#)?;
    let kind = crm::ServeKind::parse(&b.service).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown service {:?}: give kv (the built-in key-value store) or external (a process following /v1/crm/groups/{{name}}/machine)",
            b.service
        ))
    })?;
    let contacts = contacts_of(&b.contacts)?;
    let i = crm::serve(&s.handle, name, kind, contacts, JOIN_WAIT).await?;
    let mut v = info_json(&i);
    v["service"] = json!(b.service);
    Ok(Json(v))
}

/// One key-value request: `{"client": N, "seq": N, "op": "put", "key":
/// .., "value": ..}` (or get, incr with "by", cas with "old" and "new").
/// The reply is the store's: `{"value": ..}`, `{"ok": .., "value": ..}`,
/// or 422 with `{"error": ..}` for an operation the store refused.
async fn kv(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    const SHAPE: &str = r#"{"client": 7, "seq": 1, "op": "incr", "key": "n", "by": 1}"#;
    let mut v: serde_json::Map<String, Value> = parse_body(&body?, SHAPE)?;
    let mut number = |field: &str| -> Result<u64, ApiError> {
        v.remove(field).and_then(|n| n.as_u64()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field} must be a non-negative integer; give e.g. {SHAPE}"
            ))
        })
    };
    let client = number("client")?;
    let seq = number("seq")?;
    let op: proto::KvOp = serde_json::from_value(Value::Object(v)).map_err(|e| {
        ApiError::bad_request(format!(
            "not a key-value operation ({e}); give e.g. {SHAPE}"
        ))
    })?;
    op.check()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    proto::check_name(&name).map_err(CrmCallError::from)?;
    let reply = crm::request(
        &s.handle,
        name,
        crm::ServeKind::Kv,
        client,
        seq,
        op.encode(),
        REPLY_WAIT,
    )
    .await?;
    let refused = serde_json::from_slice::<proto::KvReply>(&reply)
        .is_ok_and(|r| matches!(r, proto::KvReply::Error { .. }));
    let status = if refused {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        reply,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    client: u64,
    seq: u64,
    op: String,
}

/// One request for the group's external machine: `{"client": N, "seq":
/// N, "op": "..."}`, answered `{"reply": "..."}` once this member's
/// process ran it (or with the reply of its first run).
async fn request(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: RequestBody = group_body(&name, body, r#"{"client": 7, "seq": 1, "op": "text"}"#)?;
    if b.op.len() > proto::endpoint::MAX_OP {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a {}-byte operation; at most {} KiB",
                b.op.len(),
                proto::endpoint::MAX_OP >> 10
            ),
        ));
    }
    let reply = crm::request(
        &s.handle,
        name,
        crm::ServeKind::External,
        b.client,
        b.seq,
        b.op.into_bytes(),
        REPLY_WAIT,
    )
    .await?;
    Ok(Json(json!({"reply": String::from_utf8_lossy(&reply)})))
}

/// One event of a machine's feed as its process reads it.
pub fn machine_event_json(e: &crm::MachineEvent) -> Value {
    match e {
        crm::MachineEvent::Restore { session, at, state } => json!({
            "type": "restore",
            "session": session,
            "at": at,
            "state": String::from_utf8_lossy(state),
        }),
        crm::MachineEvent::Apply(l) => json!({
            "type": "apply",
            "at": l.at,
            "client": l.client,
            "seq": l.seq,
            "op": String::from_utf8_lossy(&l.op),
        }),
        crm::MachineEvent::Snapshot { at } => json!({"type": "snapshot", "at": at}),
    }
}

/// The ordered requests for this member's external machine (SSE): a
/// `restore` first, then `apply` in order, and now and then `snapshot`;
/// `end` with the reason when the session is over.
async fn machine_feed(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    proto::check_name(&name).map_err(CrmCallError::from)?;
    let feed = crm::attach(&s.handle, name).await?;
    let h = s.handle.clone();
    Ok(sse::stream(
        s.closing.clone(),
        Vec::new(),
        feed,
        move |mut feed| {
            let h = h.clone();
            async move {
                let batch = match feed.next(&h).await {
                    Ok(events) => Batch::more(
                        events
                            .iter()
                            .map(|e| {
                                let v = machine_event_json(e);
                                let kind = v["type"].as_str().unwrap_or("apply").to_string();
                                Event::default().event(kind).data(v.to_string())
                            })
                            .collect(),
                    ),
                    Err(e) => Batch::last(vec![
                        Event::default()
                            .event("end")
                            .data(json!({"type": "end", "reason": e.to_string()}).to_string()),
                    ]),
                };
                Some((feed, batch))
            }
        },
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    session: u64,
    #[serde(default)]
    replies: Vec<MachineReply>,
    state: Option<MachineState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineReply {
    at: u64,
    reply: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineState {
    at: u64,
    state: String,
}

/// A machine's answers: `{"session": S, "replies": [{"at": N, "reply":
/// ".."}], "state": {"at": N, "state": ".."}}`, replies in order from
/// the position after the last answered. Answered `{"answered": N}`.
async fn machine_answer(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b: AnswerBody = group_body(
        &name,
        body,
        r#"{"session": 1, "replies": [{"at": 1, "reply": "text"}], "state": {"at": 1, "state": "text"}}"#,
    )?;
    let replies = b
        .replies
        .into_iter()
        .map(|r| (r.at, r.reply.into_bytes()))
        .collect();
    let state = b.state.map(|s| (s.at, s.state.into_bytes()));
    let answered = crm::answer(&s.handle, name, b.session, replies, state).await?;
    Ok(Json(json!({"answered": answered})))
}
