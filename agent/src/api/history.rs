//! `GET /v1/history?zone=Z&attr=A[,B...][&window=5m]`: a zone's aggregate
//! row over the last minutes, as the dashboard's plots draw it.

use super::ApiState;
use super::error::ApiError;
use super::tables::parse_zone;
use crate::node::now_micros;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

/// Attributes one request may name.
const MAX_ATTRS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    zone: Option<String>,
    /// Comma-separated attribute names; every numeric one when absent.
    attr: Option<String>,
    /// How far back, e.g. `5m` (the whole history when absent).
    window: Option<String>,
}

pub async fn history(
    State(s): State<ApiState>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let Query(p) = q?;
    let zone = parse_zone(p.zone.as_deref().unwrap_or("/"))?;
    let attrs: Vec<String> = p
        .attr
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if attrs.len() > MAX_ATTRS {
        return Err(ApiError::bad_request(format!(
            "{} attributes named, more than {MAX_ATTRS}; ask for fewer",
            attrs.len()
        )));
    }
    let since = match p.window.as_deref() {
        None => 0,
        Some(w) => {
            let d = humantime::parse_duration(w).map_err(|e| {
                ApiError::bad_request(format!("bad window {w:?}: {e}; give a duration such as 5m"))
            })?;
            now_micros().saturating_sub(d.as_micros() as u64)
        }
    };
    let h = s.handle.history(zone, attrs.clone(), since).await?;
    if let Some(missing) = attrs.iter().find(|a| !h.series.contains_key(*a)) {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!(
                "zone {} has no numeric attribute {missing:?} in its history; it has {}",
                h.zone,
                h.series.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let series: serde_json::Map<String, JsonValue> = h
        .series
        .iter()
        .map(|(a, pts)| {
            let pts: Vec<JsonValue> = pts
                .iter()
                .map(|(t, v)| json!([*t as f64 / 1e6, v]))
                .collect();
            (a.clone(), JsonValue::Array(pts))
        })
        .collect();
    Ok(Json(json!({
        "zone": h.zone,
        "period_s": h.period as f64 / 1e6,
        "window_s": h.window as f64 / 1e6,
        "series": series,
    })))
}
