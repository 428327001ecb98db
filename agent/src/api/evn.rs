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
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::evn::{end_record, event_record, record_json, time_text};
use armillary_client::types::ErrorBody;
use armillary_client::types::evn::{
    ConditionInfo, ConditionInstalled, ConditionList, ConditionRemoved, ConditionRequest,
    DeliveryInfo, EventList, EventRecord, Filter, PublishRequest, Published, Record, RenewRequest,
    Renewed, SubscribeRequest, SubscriptionInfo, SubscriptionList, TableInfo, TableList,
    TableRequest, Unsubscribed,
};

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

/// A call's failure: a fault, answered with its name, or another error.
enum Failure {
    Fault(Fault),
    Api(ApiError),
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let f = match self {
            Failure::Fault(f) => f,
            Failure::Api(e) => return e.into_response(),
        };
        let status = match f {
            Fault::UnknownSubscription(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = ErrorBody {
            error: f.to_string(),
            fault: Some(f.name().to_string()),
        };
        (status, Json(body)).into_response()
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
    let b: SubscribeRequest = body_of(body)?;
    let now = crate::clock::now_micros();
    let filter = match b.filter {
        None => None,
        Some(Filter::Sql(t)) => Some(t),
        Some(Filter::Dialect { dialect, expr }) => {
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
    Ok((StatusCode::CREATED, Json(sub_info(&sub, now))).into_response())
}

fn sub_info(s: &proto::Subscription, now: Micros) -> SubscriptionInfo {
    let delivery = match &s.delivery {
        Delivery::Stream => DeliveryInfo {
            mode: "stream".into(),
            notify_to: None,
            end_to: None,
        },
        Delivery::Push { notify_to, end_to } => DeliveryInfo {
            mode: "push".into(),
            notify_to: Some(notify_to.clone()),
            end_to: end_to.clone(),
        },
    };
    SubscriptionInfo {
        id: s.id.to_string(),
        expires: time_text(s.expires),
        expires_in_ms: s.expires.saturating_sub(now) / 1000,
        filter: s.filter.clone(),
        zone: s.zone.as_ref().map(|z| z.to_string()),
        delivery,
        delivered: s.delivered,
        created: time_text(s.created),
        status: "active".into(),
    }
}

async fn list(State(s): State<ApiState>) -> Result<Json<SubscriptionList>, Failure> {
    let now = crate::clock::now_micros();
    let subs = evn::with_evn(&s.handle, move |e, _, _, _| {
        Ok(e.subscriptions()
            .map(|x| sub_info(x, now))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(SubscriptionList {
        subscriptions: subs,
    }))
}

async fn status(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionInfo>, Failure> {
    let sub = evn::status(&s.handle, id).await?;
    Ok(Json(sub_info(&sub, crate::clock::now_micros())))
}

async fn renew(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Renewed>, Failure> {
    let b: RenewRequest = body_of(body)?;
    let now = crate::clock::now_micros();
    let expires = expiry_of(b.expires.as_ref(), now)?;
    let at = evn::renew(&s.handle, id.clone(), expires).await?;
    Ok(Json(Renewed {
        id,
        expires: time_text(at),
        expires_in_ms: at.saturating_sub(now) / 1000,
    }))
}

async fn unsubscribe(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Unsubscribed>, Failure> {
    evn::end(&s.handle, id.clone(), EndReason::Unsubscribed).await?;
    Ok(Json(Unsubscribed { id, ended: true }))
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
                        .data(record_json(Record::Event(event_record(&e))).to_string()),
                    false,
                ),
                Item::End(r) => {
                    let mut end = end_record(&q.id, r);
                    // Durable: the stream may be opened again after the
                    // restart.
                    end.resumes = r == EndReason::SourceShuttingDown;
                    let data = record_json(Record::End(end)).to_string();
                    (SseEvent::default().event("end").data(data), true)
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

async fn publish(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let b: PublishRequest = body_of(body)?;
    let zone = crate::ZonePath::parse(&b.zone)
        .map_err(|e| ApiError::bad_request(format!("zone {:?}: {e}", b.zone)))?;
    let ttl = match b.ttl.as_deref() {
        None => proto::event::DEFAULT_TTL,
        t => span(t, "ttl")?,
    };
    let data = b.data.to_string();
    let e = evn::with_evn(&s.handle, move |e, z, _, _| {
        Ok(e.publish(&z, zone, &b.topic, &data, ttl)?)
    })
    .await?;
    let published = Published {
        id: format!("{}@{}", e.seq, e.origin),
        origin: e.origin.to_string(),
        seq: e.seq,
        zone: e.scope.to_string(),
        topic: e.topic.to_string(),
        signed: !e.sig.is_empty(),
    };
    Ok((StatusCode::ACCEPTED, Json(published)).into_response())
}

async fn recent(State(s): State<ApiState>) -> Result<Json<EventList>, Failure> {
    let events = evn::with_evn(&s.handle, |e, _, _, _| {
        Ok(e.recent()
            .map(|d| EventRecord {
                delivered: Some(time_text(d.at)),
                ..event_record(&d.event)
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(EventList { events }))
}

async fn list_tables(State(s): State<ApiState>) -> Result<Json<TableList>, Failure> {
    let t = evn::with_evn(&s.handle, |_, _, g, _| Ok(g.tables.list())).await?;
    let tables = t
        .into_iter()
        .map(|(table, rows)| TableInfo { table, rows })
        .collect();
    Ok(Json(TableList { tables }))
}

async fn put_table(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TableInfo>, Failure> {
    let body = body.map_err(|r| Failure::Api(r.into()))?;
    let b: TableRequest = super::error::parse_body(&body, "{\"rows\": [row objects]}")?;
    let rows = evn::put_table(&s.handle, name.clone(), b.rows.to_string()).await?;
    Ok(Json(TableInfo { table: name, rows }))
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
    let b: ConditionRequest =
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
    let installed = ConditionInstalled {
        name,
        installed: true,
    };
    Ok((StatusCode::CREATED, Json(installed)).into_response())
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
) -> Result<Json<ConditionRemoved>, Failure> {
    let n = name.clone();
    evn::with_evn(&s.handle, move |e, mut z, _, _| {
        Ok(e.remove_condition(&mut z, &n)?)
    })
    .await?;
    Ok(Json(ConditionRemoved {
        name,
        removed: true,
    }))
}

async fn conditions(State(s): State<ApiState>) -> Result<Json<ConditionList>, Failure> {
    let list = evn::with_evn(&s.handle, |e, z, _, _| {
        let leaf = z.leaf().clone();
        Ok(e.conditions()
            .map(|(c, st)| condition_info(c, st, &leaf))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(ConditionList { conditions: list }))
}

fn condition_info(
    c: &Arc<Condition>,
    st: Option<&proto::CondState>,
    leaf: &crate::ZonePath,
) -> ConditionInfo {
    let a = st.and_then(|s| s.answer.as_ref());
    let state = match st.map(|s| s.state) {
        Some(h) if h.firing() => "firing",
        Some(proto::Hysteresis::Pending(_)) => "pending",
        _ => "cleared",
    };
    let (local, local_error) = match st.and_then(|s| s.local.as_ref()) {
        Some(Ok(h)) => (Some(*h), None),
        Some(Err(e)) => (None, Some(e.clone())),
        None => (None, None),
    };
    ConditionInfo {
        name: c.name.to_string(),
        zone: c.scope.to_string(),
        sql: c.sql.to_string(),
        min: c.min,
        for_ms: c.hold_for / 1000,
        keep_firing_for_ms: c.keep_for / 1000,
        state: state.into(),
        value: a.map(|a| a.value),
        hits: a.map(|a| a.hits),
        contributors: a.map(|a| a.contributors),
        expected: a.map(|a| a.expected),
        missing: a.map(|a| a.missing.iter().map(|m| m.to_string()).collect()),
        staleness_ms: a.map(|a| a.staleness / 1000),
        evaluated_here: c.scope.contains(leaf),
        local,
        local_error,
        since: st.and_then(|s| s.since).map(time_text),
        by: c.by.to_string(),
    }
}
