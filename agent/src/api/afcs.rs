//! Listing, installing and removing AFCs.

use super::ApiState;
use super::error::{ApiError, parse_body};
use super::tables::parse_zone;
use crate::afc::AfcCert;
use crate::node::{AfcView, NodeHandle, now_micros};
use crate::path::ZonePath;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

/// One AFC as the API shows it.
pub fn afc_json(a: &AfcView) -> JsonValue {
    let c = &a.cert;
    let info = armillary_client::types::afc::AfcInfo {
        name: c.name.to_string(),
        scope: c.scope.to_string(),
        sql: c.sql.to_string(),
        state: a.state.to_string(),
        reason: a.reason.clone(),
        issued: c.issued,
        expires: c.expires,
        signer: c.signer.to_string(),
        removed: c.removed,
    };
    serde_json::to_value(info).unwrap_or(JsonValue::Null)
}

/// `?zone=Z&name=N`.
#[derive(Deserialize)]
pub struct AfcParams {
    zone: Option<String>,
    name: Option<String>,
}

pub async fn list(
    State(s): State<ApiState>,
    q: Result<Query<AfcParams>, QueryRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let q = q?;
    let zone = q.zone.as_deref().map(parse_zone).transpose()?;
    let afcs = s.handle.afcs(zone).await?;
    Ok(Json(JsonValue::Array(
        afcs.iter()
            .filter(|a| q.name.as_deref().is_none_or(|n| *a.cert.name == *n))
            .map(afc_json)
            .collect(),
    )))
}

/// The body of `POST /v1/afcs`: a signed certificate, or the parts of an
/// unsigned one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallBody {
    cert: Option<AfcCert>,
    name: Option<String>,
    zone: Option<String>,
    sql: Option<String>,
}

const INSTALL_SHAPE: &str =
    r#"{"name": "load", "zone": "/", "sql": "SELECT MAX(load) AS load"} or {"cert": <signed AFC>}"#;

/// What the node holds now for (scope, name).
async fn held(handle: &NodeHandle, scope: &ZonePath, name: &str) -> Result<JsonValue, ApiError> {
    let afcs = handle.afcs(Some(scope.clone())).await?;
    afcs.iter()
        .find(|a| &*a.cert.name == name)
        .map(afc_json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no AFC named {name} in {scope}; list them with GET /v1/afcs"),
            )
        })
}

pub async fn install(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let body: InstallBody = parse_body(&body?, INSTALL_SHAPE)?;
    let cert = match body {
        InstallBody {
            cert: Some(cert),
            name: None,
            zone: None,
            sql: None,
        } => cert,
        InstallBody {
            cert: None,
            name: Some(name),
            zone: Some(zone),
            sql: Some(sql),
        } => AfcCert::new(parse_zone(&zone)?, &name, &sql, now_micros()),
        _ => {
            return Err(ApiError::bad_request(format!(
                "send either a signed certificate or name, zone and sql: {INSTALL_SHAPE}"
            )));
        }
    };
    if cert.removed {
        return Err(ApiError::bad_request(
            "this certificate is a removal; send it with DELETE /v1/afcs",
        ));
    }
    let (scope, name) = (cert.scope.clone(), cert.name.clone());
    s.handle.install_afc(cert).await?;
    Ok(Json(
        json!({ "installed": held(&s.handle, &scope, &name).await? }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    cert: AfcCert,
}

pub async fn remove(
    State(s): State<ApiState>,
    q: Result<Query<AfcParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<JsonValue>, ApiError> {
    let q = q?;
    let (Some(zone), Some(name)) = (q.zone.as_deref(), q.name.clone()) else {
        return Err(ApiError::bad_request(
            "say which AFC to remove: DELETE /v1/afcs?zone=/&name=load",
        ));
    };
    let scope = parse_zone(zone)?;
    let body = body?;
    let signed = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let b: RemoveBody = parse_body(&body, r#"{"cert": <signed tombstone>}"#)?;
        Some(b.cert)
    };
    s.handle
        .remove_afc(scope.clone(), name.clone(), signed)
        .await?;
    Ok(Json(
        json!({ "removed": held(&s.handle, &scope, &name).await? }),
    ))
}
