//! Status, zone tables, aggregate rows, ad-hoc SQL and local attributes.

use super::ApiState;
use super::error::{ApiError, parse_body};
use crate::node::{NodeHandle, RowView, now_micros};
use crate::path::ZonePath;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue, json};
use zone_sql::adhoc::{self, MAX_QUERY_TEXT};
use zone_sql::json::{attrs_to_json, value_from_json, value_to_json};

/// How long an ad-hoc query may run.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `?zone=/eu` (the root when absent).
#[derive(Deserialize)]
pub struct ZoneParam {
    zone: Option<String>,
}

impl ZoneParam {
    pub fn path(&self) -> Result<ZonePath, ApiError> {
        parse_zone(self.zone.as_deref().unwrap_or("/"))
    }
}

/// Parses a zone path given by the caller.
pub fn parse_zone(text: &str) -> Result<ZonePath, ApiError> {
    ZonePath::parse(text).map_err(|e| {
        ApiError::bad_request(format!(
            "bad zone {text:?}: {e}; give an absolute zone path such as / or /eu/paris"
        ))
    })
}

pub async fn status(State(s): State<ApiState>) -> Result<Json<JsonValue>, ApiError> {
    let status = s.handle.status().await?;
    Ok(Json(json!(status)))
}

/// One row as the API shows it: `name`, then the attributes.
pub fn row_json(r: &RowView) -> Map<String, JsonValue> {
    let mut m = Map::new();
    m.insert("name".into(), JsonValue::String(r.name.clone()));
    for (k, v) in attrs_to_json(&r.attrs) {
        if k != "name" {
            m.insert(k, v);
        }
    }
    m
}

/// The child table of `zone`: rows and, in `meta`, who issued each and when.
pub async fn table_json(handle: &NodeHandle, zone: &ZonePath) -> Result<JsonValue, ApiError> {
    let rows = handle.table(zone.clone()).await?;
    let now = now_micros();
    let meta: Vec<JsonValue> = rows
        .iter()
        .map(|r| {
            let age = (now as i128 - r.issued as i128) as f64 / 1e6;
            json!({
                "name": r.name,
                "issuer": r.issuer,
                "issued": r.issued,
                "age_s": (age * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    let rows: Vec<JsonValue> = rows
        .iter()
        .map(|r| JsonValue::Object(row_json(r)))
        .collect();
    Ok(json!({ "zone": zone, "rows": rows, "meta": meta }))
}

pub async fn zones(
    State(s): State<ApiState>,
    q: Result<Query<ZoneParam>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let zone = q?.path()?;
    Ok(Json(table_json(&s.handle, &zone).await?))
}

pub async fn zone(
    State(s): State<ApiState>,
    q: Result<Query<ZoneParam>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let zone = q?.path()?;
    let attrs = s.handle.zone_row(zone).await?;
    Ok(Json(JsonValue::Object(attrs_to_json(&attrs))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
}

pub async fn query(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let body: QueryBody = parse_body(&body?, r#"{"sql": "SELECT ..."}"#)?;
    if body.sql.len() > MAX_QUERY_TEXT {
        return Err(ApiError::bad_request(format!(
            "the query is {} bytes, more than {MAX_QUERY_TEXT}; shorten it",
            body.sql.len()
        )));
    }
    let _slot =
        s.query_slots.acquire().await.map_err(|_| {
            ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        })?;
    let tables = s.handle.tables().await?;
    let result = tokio::time::timeout(QUERY_TIMEOUT, adhoc::query(tables, &body.sql))
        .await
        .map_err(|_| {
            ApiError::bad_request(format!(
                "the query ran longer than {} s; narrow it with WHERE or LIMIT",
                QUERY_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| {
            ApiError::bad_request(format!(
                "query failed: {e} (tables are named by zone path, quoted: SELECT * FROM \"/\")"
            ))
        })?;
    Ok(Json(
        json!({ "columns": result.columns, "rows": result.rows }),
    ))
}

pub async fn attrs(State(s): State<ApiState>) -> Result<Json<JsonValue>, ApiError> {
    let attrs = s.handle.local_attrs().await?;
    Ok(Json(JsonValue::Object(attrs_to_json(&attrs))))
}

pub async fn set_attr(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let json: JsonValue = parse_body(
        &body?,
        "a JSON value (42, 1.5, true, \"text\", [\"a\",\"b\"])",
    )?;
    let value = value_from_json(&json)
        .map_err(|e| ApiError::bad_request(format!("bad value for {name}: {e}")))?;
    let shown = value_to_json(&value);
    s.handle.set_attr(name.clone(), value).await?;
    Ok(Json(json!({ "name": name, "value": shown })))
}

pub async fn unset_attr(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    let removed = s.handle.unset_attr(name.clone()).await?;
    Ok(Json(json!({ "name": name, "removed": removed })))
}
