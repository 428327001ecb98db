//! `/v1/evn/...`: WS-Eventing subscriptions (subscribe, renew, get status,
//! unsubscribe, and the event stream), urgent events, the local tables and
//! the distributed conditions.
//!
//! Faults are `{"error": "NAME: what to do", "fault": "NAME"}` with 400 (404
//! for an unknown subscription), NAME as WS-Eventing names it.

use super::ApiState;
use super::error::ApiError;
use crate::evn::{self, EvnCallError, Item, proto, tables};
use crate::row::Micros;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use futures_util::Stream;
use proto::subs::{self, Delivery, EndReason, Fault};
use proto::{Condition, EvnError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::evn::{end_json, event_json, time_text};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/evn/subscriptions", post(subscribe).get(list))
        .route(
            "/v1/evn/subscriptions/{id}",
            get(status).delete(unsubscribe),
        )
        .route("/v1/evn/subscriptions/{id}/renew", post(renew))
        .route("/v1/evn/subscriptions/{id}/events", get(events))
        .route("/v1/evn/events", post(publish).get(recent))
        .route("/v1/evn/tables", get(list_tables))
        .route(
            "/v1/evn/tables/{name}",
            put(put_table)
                .delete(remove_table)
                .layer(DefaultBodyLimit::max(tables::MAX_TABLE_BYTES + 1024)),
        )
        .route("/v1/evn/conditions", post(add_condition).get(conditions))
        .route(
            "/v1/evn/conditions/{name}",
            axum::routing::delete(remove_condition),
        )
}

/// A fault as the API answers it.
struct FaultError(Fault);

impl IntoResponse for FaultError {
    fn into_response(self) -> Response {
        let status = match self.0 {
            Fault::UnknownSubscription(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        (
            status,
            Json(json!({"error": self.0.to_string(), "fault": self.0.name()})),
        )
            .into_response()
    }
}

enum Failure {
    Fault(Fault),
    Api(ApiError),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Fault(f) => FaultError(f).into_response(),
            Failure::Api(e) => e.into_response(),
        }
    }
}

impl From<EvnCallError> for Failure {
    fn from(e: EvnCallError) -> Failure {
        match e {
            EvnCallError::Fault(f) => Failure::Fault(f),
            EvnCallError::Node(n) => Failure::Api(n.into()),
            EvnCallError::NotRunning => {
                Failure::Api(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
            }
            EvnCallError::NotStreamed(_) => {
                Failure::Api(ApiError::new(StatusCode::CONFLICT, e.to_string()))
            }
            EvnCallError::Table(t) => {
                let status = match t {
                    tables::TableError::TooManyRows(_) | tables::TableError::TooManyColumns(_) => {
                        StatusCode::PAYLOAD_TOO_LARGE
                    }
                    tables::TableError::Full => StatusCode::CONFLICT,
                    _ => StatusCode::BAD_REQUEST,
                };
                Failure::Api(ApiError::new(status, t.to_string()))
            }
            EvnCallError::Evn(e) => {
                let status = match &e {
                    EvnError::Event(proto::EventError::TooLarge(_)) => {
                        StatusCode::PAYLOAD_TOO_LARGE
                    }
                    EvnError::Condition(proto::ConditionError::Full) => StatusCode::CONFLICT,
                    EvnError::Condition(proto::ConditionError::Unknown(_))
                    | EvnError::NoRoute(_) => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_REQUEST,
                };
                Failure::Api(ApiError::new(status, e.to_string()))
            }
        }
    }
}

impl From<Fault> for Failure {
    fn from(f: Fault) -> Failure {
        Failure::Fault(f)
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Api(e)
    }
}

/// A body as JSON; anything else is an `InvalidMessage` fault.
fn body_of<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Failure> {
    let body = body.map_err(|r| Failure::Api(r.into()))?;
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    serde_json::from_slice(text).map_err(|e| Failure::Fault(Fault::InvalidMessage(e.to_string())))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FilterBody {
    Sql(String),
    Dialect {
        #[serde(default)]
        dialect: Option<String>,
        expr: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryBody {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    notify_to: Option<String>,
    #[serde(default)]
    end_to: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    #[serde(default)]
    filter: Option<FilterBody>,
    #[serde(default)]
    zone: Option<String>,
    /// A duration (`10m`, `PT10M`) or a date-time; a number is milliseconds.
    #[serde(default)]
    expires: Option<Value>,
    #[serde(default)]
    delivery: Option<DeliveryBody>,
    /// Shorthand for a push delivery to this URL.
    #[serde(default)]
    notify_to: Option<String>,
}

/// The dialects a filter may name: SQL, by name or URI.
const DIALECTS: [&str; 2] = ["sql", "urn:armillary:evn:filter:sql"];

fn expiry_of(v: Option<&Value>, now: Micros) -> Result<Micros, Fault> {
    match v {
        None | Some(Value::Null) => Ok(now + subs::DEFAULT_EXPIRY),
        Some(Value::String(s)) => subs::parse_expiry(s, now),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(ms) if ms > 0 && ms.saturating_mul(1000) <= subs::MAX_EXPIRY => {
                Ok(now + ms * 1000)
            }
            _ => Err(Fault::InvalidExpirationTime(format!(
                "{n} ms is not between 1 ms and a year"
            ))),
        },
        Some(other) => Err(Fault::UnsupportedExpirationType(format!(
            "{other} is neither a duration, a date-time nor milliseconds"
        ))),
    }
}

fn zone_of(z: Option<&str>) -> Result<Option<crate::ZonePath>, Fault> {
    z.map(|z| {
        crate::ZonePath::parse(z).map_err(|e| Fault::InvalidMessage(format!("zone {z:?}: {e}")))
    })
    .transpose()
}

async fn subscribe(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let b: SubscribeBody = body_of(body)?;
    let now = crate::clock::now_micros();
    let filter = match b.filter {
        None => None,
        Some(FilterBody::Sql(t)) => Some(t),
        Some(FilterBody::Dialect { dialect, expr }) => {
            if let Some(d) = dialect
                && !DIALECTS.contains(&d.as_str())
            {
                return Err(Failure::Fault(Fault::FilteringRequestedUnavailable(d)));
            }
            Some(expr)
        }
    };
    let delivery = match (b.delivery, b.notify_to) {
        (None, None) => Delivery::Stream,
        (None, Some(url)) => Delivery::Push {
            notify_to: url,
            end_to: None,
        },
        (Some(d), shorthand) => {
            match d
                .mode
                .as_deref()
                .unwrap_or(if d.notify_to.is_some() || shorthand.is_some() {
                    "push"
                } else {
                    "stream"
                }) {
                "stream" | "sse" => Delivery::Stream,
                "push" => Delivery::Push {
                    notify_to: d.notify_to.or(shorthand).ok_or_else(|| {
                        Fault::DeliveryModeRequestedUnavailable(
                            "push delivery needs notify_to".into(),
                        )
                    })?,
                    end_to: d.end_to,
                },
                other => {
                    return Err(Failure::Fault(Fault::DeliveryModeRequestedUnavailable(
                        format!("mode {other:?} is not offered; use \"stream\" or \"push\""),
                    )));
                }
            }
        }
    };
    let req = subs::Request {
        filter,
        zone: zone_of(b.zone.as_deref())?,
        expires: expiry_of(b.expires.as_ref(), now)?,
        delivery,
    };
    let (sub, _) = evn::subscribe(&s.handle, req).await?;
    Ok((StatusCode::CREATED, Json(sub_json(&sub, now))).into_response())
}

fn sub_json(s: &proto::Subscription, now: Micros) -> Value {
    let (mode, notify_to, end_to) = match &s.delivery {
        Delivery::Stream => ("stream", None, None),
        Delivery::Push { notify_to, end_to } => ("push", Some(notify_to.clone()), end_to.clone()),
    };
    json!({
        "id": &*s.id,
        "expires": time_text(s.expires),
        "expires_in_ms": s.expires.saturating_sub(now) / 1000,
        "filter": s.filter,
        "zone": s.zone.as_ref().map(|z| z.to_string()),
        "delivery": {"mode": mode, "notify_to": notify_to, "end_to": end_to},
        "delivered": s.delivered,
        "created": time_text(s.created),
        "status": "active",
    })
}

async fn list(State(s): State<ApiState>) -> Result<Json<Value>, Failure> {
    let now = crate::clock::now_micros();
    let subs = evn::with_evn(&s.handle, move |e, _, _, _| {
        Ok(e.subscriptions()
            .map(|x| sub_json(x, now))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!({"subscriptions": subs})))
}

async fn status(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Json<Value>, Failure> {
    let sub = evn::status(&s.handle, id).await?;
    Ok(Json(sub_json(&sub, crate::clock::now_micros())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    #[serde(default)]
    expires: Option<Value>,
}

async fn renew(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Failure> {
    let b: RenewBody = body_of(body)?;
    let now = crate::clock::now_micros();
    let expires = expiry_of(b.expires.as_ref(), now)?;
    let at = evn::renew(&s.handle, id.clone(), expires).await?;
    Ok(Json(
        json!({"id": id, "expires": time_text(at), "expires_in_ms": at.saturating_sub(now) / 1000}),
    ))
}

async fn unsubscribe(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Failure> {
    evn::end(&s.handle, id.clone(), EndReason::Unsubscribed).await?;
    Ok(Json(json!({"id": id, "ended": true})))
}

/// The subscription's events as server-sent events: `event` records, then
/// one `end` record when it ends (`SourceShuttingDown` when this agent
/// stops; the subscription itself is kept and may be streamed again).
async fn events(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Failure> {
    let q = evn::stream_of(&s.handle, id).await?;
    let closing = Box::pin(ApiState::closed(s.closing.clone()));
    let stream =
        futures_util::stream::unfold((q, closing, false), |(q, mut closing, done)| async move {
            if done {
                return None;
            }
            let item = tokio::select! {
                i = q.next() => i,
                _ = &mut closing => Item::End(EndReason::SourceShuttingDown),
            };
            let (ev, done) = match item {
                Item::Event(e) => (
                    SseEvent::default()
                        .event("event")
                        .data(event_json(&e).to_string()),
                    false,
                ),
                Item::End(r) => {
                    let mut end = end_json(&q.id, r);
                    if r == EndReason::SourceShuttingDown {
                        // Durable: the stream may be opened again after
                        // the restart.
                        end["resumes"] = json!(true);
                    }
                    (SseEvent::default().event("end").data(end.to_string()), true)
                }
            };
            Some((Ok(ev), (q, closing, done)))
        });
    Ok(Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    zone: String,
    topic: String,
    #[serde(default)]
    data: Value,
    /// A duration (`30s`); default one minute.
    #[serde(default)]
    ttl: Option<String>,
}

async fn publish(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let b: PublishBody = body_of(body)?;
    let zone = crate::ZonePath::parse(&b.zone)
        .map_err(|e| ApiError::bad_request(format!("zone {:?}: {e}", b.zone)))?;
    let ttl = match b.ttl.as_deref() {
        None => proto::event::DEFAULT_TTL,
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("ttl {t:?} is not a duration: {e}")))?
            .as_micros() as Micros,
    };
    let data = b.data.to_string();
    let e = evn::with_evn(&s.handle, move |e, z, _, _| {
        Ok(e.publish(&z, zone, &b.topic, &data, ttl)?)
    })
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": format!("{}@{}", e.seq, e.origin),
            "origin": &*e.origin,
            "seq": e.seq,
            "zone": e.scope.as_str(),
            "topic": &*e.topic,
            "signed": !e.sig.is_empty(),
        })),
    )
        .into_response())
}

async fn recent(State(s): State<ApiState>) -> Result<Json<Value>, Failure> {
    let events = evn::with_evn(&s.handle, |e, _, _, _| {
        Ok(e.recent()
            .map(|d| {
                let mut j = event_json(&d.event);
                j["delivered"] = json!(time_text(d.at));
                j
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!({"events": events})))
}

async fn list_tables(State(s): State<ApiState>) -> Result<Json<Value>, Failure> {
    let t = evn::with_evn(&s.handle, |_, _, g, _| Ok(g.tables.list())).await?;
    let t: Vec<Value> = t
        .into_iter()
        .map(|(n, r)| json!({"table": n, "rows": r}))
        .collect();
    Ok(Json(json!({"tables": t})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableBody {
    rows: Value,
}

async fn put_table(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, Failure> {
    let body = body.map_err(|r| Failure::Api(r.into()))?;
    let b: TableBody = super::error::parse_body(&body, "{\"rows\": [row objects]}")?;
    let n = evn::put_table(&s.handle, name.clone(), b.rows.to_string()).await?;
    Ok(Json(json!({"table": name, "rows": n})))
}

async fn remove_table(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Failure> {
    let n = name.clone();
    let had = evn::with_evn(&s.handle, move |_, _, g, _| {
        let had = g.tables.remove(&n);
        g.wake.notify_one();
        Ok(had)
    })
    .await?;
    if !had {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no table {name} at this agent"),
        )
        .into());
    }
    Ok(Json(json!({"table": name, "removed": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionBody {
    name: String,
    zone: String,
    sql: String,
    #[serde(default)]
    min: Option<u64>,
    #[serde(default, rename = "for")]
    hold_for: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
}

fn span(v: Option<&str>, what: &str) -> Result<Micros, ApiError> {
    match v {
        None => Ok(0),
        Some(t) => humantime::parse_duration(t)
            .map(|d| d.as_micros() as Micros)
            .map_err(|e| ApiError::bad_request(format!("{what} {t:?} is not a duration: {e}"))),
    }
}

async fn add_condition(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let body = body.map_err(|r| Failure::Api(r.into()))?;
    let b: ConditionBody =
        super::error::parse_body(&body, "a condition: {\"name\", \"zone\", \"sql\", ...}")?;
    let scope = crate::ZonePath::parse(&b.zone)
        .map_err(|e| ApiError::bad_request(format!("zone {:?}: {e}", b.zone)))?;
    check_sql(&b.sql)?;
    let c = Condition {
        hold_for: span(b.hold_for.as_deref(), "for")?,
        keep_for: span(b.keep_firing_for.as_deref(), "keep_firing_for")?,
        ..Condition::new(&b.name, scope, &b.sql, b.min.unwrap_or(1))
    };
    let name = b.name.clone();
    evn::with_evn(&s.handle, move |e, mut z, _, _| {
        Ok(e.add_condition(&mut z, c)?)
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": name, "installed": true})),
    )
        .into_response())
}

/// A condition's SQL must be one read-only query; tables are checked where
/// it runs (an application may fill its table later).
fn check_sql(sql: &str) -> Result<(), ApiError> {
    zone_sql::adhoc::check_query(sql)
        .map_err(|e| ApiError::bad_request(format!("the condition's SQL is refused: {e}")))
}

async fn remove_condition(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, Failure> {
    let n = name.clone();
    evn::with_evn(&s.handle, move |e, mut z, _, _| {
        Ok(e.remove_condition(&mut z, &n)?)
    })
    .await?;
    Ok(Json(json!({"name": name, "removed": true})))
}

async fn conditions(State(s): State<ApiState>) -> Result<Json<Value>, Failure> {
    let list = evn::with_evn(&s.handle, |e, z, _, _| {
        let leaf = z.leaf().clone();
        Ok(e.conditions()
            .map(|(c, st)| condition_json(c, st, &leaf))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!({"conditions": list})))
}

fn condition_json(
    c: &Arc<Condition>,
    st: Option<&proto::CondState>,
    leaf: &crate::ZonePath,
) -> Value {
    let a = st.and_then(|s| s.answer.as_ref());
    let state = match st.map(|s| s.state) {
        Some(h) if h.firing() => "firing",
        Some(proto::Hysteresis::Pending(_)) => "pending",
        _ => "cleared",
    };
    let (local, local_error) = match st.and_then(|s| s.local.as_ref()) {
        Some(Ok(h)) => (json!(h), Value::Null),
        Some(Err(e)) => (Value::Null, json!(e)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "name": &*c.name,
        "zone": c.scope.as_str(),
        "sql": &*c.sql,
        "min": c.min,
        "for_ms": c.hold_for / 1000,
        "keep_firing_for_ms": c.keep_for / 1000,
        "state": state,
        "value": a.map(|a| a.value),
        "hits": a.map(|a| a.hits),
        "contributors": a.map(|a| a.contributors),
        "expected": a.map(|a| a.expected),
        "missing": a.map(|a| a.missing.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
        "staleness_ms": a.map(|a| a.staleness / 1000),
        "evaluated_here": c.scope.contains(leaf),
        "local": local,
        "local_error": local_error,
        "since": st.and_then(|s| s.since).map(time_text),
        "by": &*c.by,
    })
}
