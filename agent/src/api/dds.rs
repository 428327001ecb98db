//! `/v1/dds/...`: channels (create, list), publishing by POST and
//! subscribing over SSE.

use super::ApiState;
use super::error::{ApiError, parse_body};
use super::sse::{self, Batch};
use super::tables::parse_zone;
use crate::dds::{self, DdsCallError, Next, proto};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::routing::{get, post};
use base64::Engine;
use futures_util::Stream;
use proto::{ChannelInfo, CloseReason, DdsError, Delivery, SendError, SlowPolicy};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;

/// Largest publish body: a message of [`proto::MAX_MESSAGE`] bytes as
/// base64 in its JSON object.
pub const MAX_PUBLISH_BODY: usize = proto::MAX_MESSAGE / 3 * 4 + 1024;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/dds/channels", get(list).post(create))
        .route(
            "/v1/dds/channels/{name}/messages",
            post(publish).layer(DefaultBodyLimit::max(MAX_PUBLISH_BODY)),
        )
        .route("/v1/dds/channels/{name}/subscribe", get(subscribe))
}

impl From<DdsCallError> for ApiError {
    fn from(e: DdsCallError) -> ApiError {
        match e {
            DdsCallError::Node(n) => n.into(),
            DdsCallError::NotRunning => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            DdsCallError::Dds(d) => {
                let status = match &d {
                    DdsError::UnknownChannel(_) => StatusCode::NOT_FOUND,
                    DdsError::Exists(_) => StatusCode::CONFLICT,
                    DdsError::TooManyChannels(_) => StatusCode::CONFLICT,
                    DdsError::NotStarted => StatusCode::SERVICE_UNAVAILABLE,
                    DdsError::Send(SendError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
                    // The publisher waits and retries (flow control, or
                    // the channel key not yet here).
                    DdsError::Send(SendError::Backpressure { .. }) => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    _ => StatusCode::BAD_REQUEST,
                };
                ApiError::new(status, d.to_string())
            }
        }
    }
}

/// A channel as the API and the CLI show it.
pub fn channel(c: &ChannelInfo) -> Value {
    json!({
        "name": &*c.name,
        "zone": c.zone.as_str(),
        "stack": c.stack,
        "retain": c.retain,
        "policy": c.policy.name(),
        "coordinator": &*c.coordinator,
    })
}

/// A delivered message: its data as text when it is UTF-8, else base64
/// with `"encoding": "base64"`.
pub fn message(d: &Delivery) -> Value {
    let mut v = json!({
        "channel": &*d.channel,
        "seq": d.seq,
        "from": &*d.from,
    });
    match std::str::from_utf8(&d.data) {
        Ok(t) => v["data"] = json!(t),
        Err(_) => {
            v["data"] = json!(base64::engine::general_purpose::STANDARD.encode(&d.data));
            v["encoding"] = json!("base64");
        }
    }
    v
}

async fn list(State(s): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let cs = dds::channels(&s.handle).await?;
    Ok(Json(Value::Array(cs.iter().map(channel).collect())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    stack: String,
    zone: Option<String>,
    #[serde(default)]
    retain: u32,
    policy: Option<String>,
}

async fn create(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let b: CreateBody = parse_body(
        &body?,
        r#"{"name": "prices", "stack": "fifo:nak:frag", "zone": "/", "retain": 100, "policy": "skip"}"#,
    )?;
    let zone = b.zone.as_deref().map(parse_zone).transpose()?;
    let policy = match b.policy.as_deref() {
        None | Some("skip") => SlowPolicy::Skip,
        Some("drop") => SlowPolicy::Drop,
        Some(p) => {
            return Err(ApiError::bad_request(format!(
                "unknown policy {p:?}: give skip (a slow subscriber misses the oldest messages and is told) or drop (it is closed)"
            )));
        }
    };
    let c = dds::create(&s.handle, b.name, b.stack, zone, b.retain, policy).await?;
    Ok((StatusCode::CREATED, Json(channel(&c))))
}

/// Messages one publish request carries at most.
pub const MAX_BATCH: usize = 4096;

/// One message of a publish body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    data: String,
    /// `base64` when `data` is base64 of binary content.
    encoding: Option<String>,
}

impl MessageBody {
    fn bytes(self) -> Result<Vec<u8>, ApiError> {
        match self.encoding.as_deref() {
            None | Some("utf-8") => Ok(self.data.into_bytes()),
            Some("base64") => base64::engine::general_purpose::STANDARD
                .decode(self.data.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("data is not base64: {e}"))),
            Some(e) => Err(ApiError::bad_request(format!(
                "unknown encoding {e:?}: give base64, or none for text"
            ))),
        }
    }
}

/// A publish body: one message, or several in order.
#[derive(Deserialize)]
#[serde(untagged)]
enum PublishBody {
    One(MessageBody),
    Batch { messages: Vec<MessageBody> },
}

/// Publishes one message (`{"data"}`: 202 `{"published": true}`), or a
/// batch (`{"messages": [...]}`: 202 `{"published": K}`, the first K taken
/// in order; the publisher offers the rest again, and 503 means none was
/// taken yet).
async fn publish(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                r.status(),
                format!(
                    "a message is at most {} MiB (as base64 in JSON, {} bytes of body); split it",
                    proto::MAX_MESSAGE >> 20,
                    MAX_PUBLISH_BODY
                ),
            )
        } else {
            r.into()
        }
    });
    let b: PublishBody = parse_body(
        &body?,
        r#"{"data": "text"}, {"data": "...", "encoding": "base64"}, or {"messages": [such objects]}"#,
    )?;
    let (messages, one) = match b {
        PublishBody::One(m) => (vec![m], true),
        PublishBody::Batch { messages } if messages.is_empty() => {
            return Err(ApiError::bad_request(
                "messages is empty: give at least one message",
            ));
        }
        PublishBody::Batch { messages } if messages.len() > MAX_BATCH => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} messages in one request; send at most {MAX_BATCH} at a time",
                    messages.len()
                ),
            ));
        }
        PublishBody::Batch { messages } => (messages, false),
    };
    let msgs = messages
        .into_iter()
        .map(MessageBody::bytes)
        .collect::<Result<Vec<_>, _>>()?;
    let (n, total) = (msgs.len(), msgs.iter().map(Vec::len).sum::<usize>());
    let unsent = dds::publish_many(&s.handle, name, msgs).await?;
    if let Some(why) = unsent.why
        && unsent.rest.len() == n
    {
        return Err(DdsCallError::Dds(why).into());
    }
    let held: usize = unsent.rest.iter().map(Vec::len).sum();
    let published = if one {
        json!(true)
    } else {
        json!(n - unsent.rest.len())
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "published": published, "bytes": total - held })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeParams {
    #[serde(default)]
    from_start: bool,
}

async fn subscribe(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    q: Result<Query<SubscribeParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = q?;
    let sub = dds::subscribe(&s.handle, name, q.0.from_start).await?;
    Ok(sse::stream(
        s.closing.clone(),
        Vec::new(),
        sub,
        |mut sub| async move {
            let batch = match sub.next().await.ok()? {
                Next::Messages(ms) => Batch::more(
                    ms.iter()
                        .map(|m| {
                            Event::default()
                                .event("message")
                                .data(message(m).to_string())
                        })
                        .collect(),
                ),
                Next::Missed(n) => Batch::more(vec![
                    Event::default()
                        .event("lagged")
                        .data(json!({ "missed": n }).to_string()),
                ]),
                Next::Closed(r) => {
                    let reason = match r {
                        CloseReason::TooSlow => "too_slow",
                        CloseReason::Unsubscribed => "unsubscribed",
                    };
                    Batch::last(vec![
                        Event::default()
                            .event("closed")
                            .data(json!({ "reason": reason }).to_string()),
                    ])
                }
            };
            Some((sub, batch))
        },
    ))
}
