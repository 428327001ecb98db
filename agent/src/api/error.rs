//! API errors: a status and a message that says what to do, sent as
//! `{"error": "..."}`.

use crate::Refusal;
use crate::node::NodeError;
use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A failed request.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        let status = match e.refusal() {
            Some(r) => status_of(r),
            None if matches!(e, NodeError::Stopped) => StatusCode::SERVICE_UNAVAILABLE,
            None => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The HTTP status of a refused request.
pub fn status_of(r: Refusal) -> StatusCode {
    match r {
        Refusal::ApiUnknownZone | Refusal::ApiAfcNotFound => StatusCode::NOT_FOUND,
        Refusal::ApiAfcRefused => StatusCode::FORBIDDEN,
        Refusal::ApiAfcScopeFull => StatusCode::CONFLICT,
        Refusal::ApiAfcTooLarge | Refusal::ApiAttrTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::ApiBadHost => StatusCode::MISDIRECTED_REQUEST,
        Refusal::ApiUnauthorized => StatusCode::UNAUTHORIZED,
        Refusal::ApiBadContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                status,
                format!(
                    "the request body is larger than {} KiB; send less",
                    super::MAX_BODY / 1024
                ),
            );
        }
        ApiError::new(status, format!("could not read the request body: {r}"))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("bad query string: {}", r.body_text()))
    }
}

/// Parses a JSON request body.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(format!(
            "the request body is empty; send {what}"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not {what}: {e}")))
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}; see GET / (the dashboard), /v1/status, /v1/zones, /v1/zone, /v1/afcs, /v1/attrs, /v1/watch, POST /v1/query, GET /metrics",
            uri.path()
        ),
    )
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::afc::ScopeFull;
    use crate::gossip::InstallError;
    use crate::path::ZonePath;

    #[test]
    fn node_errors_map_to_statuses() {
        let status = |e: NodeError| ApiError::from(e).status;
        let root = ZonePath::root();
        assert_eq!(
            status(NodeError::UnknownZone {
                zone: root.clone(),
                known: String::new()
            }),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(
                InstallError::NotFound {
                    scope: root.clone(),
                    name: "x".into()
                }
                .into()
            ),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(InstallError::BadAfc("bad".into()).into()),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(
                InstallError::Refused(crate::security::Reject::AfcNotAllowed(
                    "client c may not".into()
                ))
                .into()
            ),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(
                InstallError::ScopeFull(ScopeFull::Count {
                    scope: root.clone(),
                    count: 32
                })
                .into()
            ),
            StatusCode::CONFLICT
        );
        assert_eq!(
            status(crate::limits::LimitError::AttrsTooLarge { len: 20_000 }.into()),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(InstallError::OutOfScope(root).into()),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(NodeError::Stopped), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            status(NodeError::BadRequest("no".into())),
            StatusCode::BAD_REQUEST
        );
    }
}
