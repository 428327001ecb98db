//! The agent's local HTTP API: JSON over HTTP/1.1 for operators, the CLI and
//! dashboards. Every handler goes through a [`NodeHandle`]; nothing here
//! touches the protocol core directly.
//!
//! Errors are `{"error": "..."}` with a fitting status. In insecure mode every
//! response carries `x-armillary-insecure: true`. Every request passes the
//! [`guard`] first: its `Host` must name this API, a body must be JSON, and
//! with a token set it must carry it.

mod access;
mod afcs;
mod chm;
mod crm;
mod dds;
mod error;
mod evn;
mod guard;
mod history;
mod metrics;
mod sse;
mod tables;
mod watch;

pub use access::{AccessError, ApiAccess, ApiToken};
pub use error::ApiError;
pub use guard::JSON;

use crate::node::NodeHandle;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::{get, put};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{Semaphore, watch as signal};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Ad-hoc queries running at once; more wait their turn.
const QUERY_SLOTS: usize = 2;

/// The header that marks an agent without keys.
pub const INSECURE_HEADER: &str = "x-armillary-insecure";

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub handle: NodeHandle,
    /// Turns true when the server shuts down, ending open event streams.
    pub closing: signal::Receiver<bool>,
    pub query_slots: Arc<Semaphore>,
}

impl ApiState {
    /// Resolves when the server is shutting down (never, without `serve`).
    pub async fn closed(mut closing: signal::Receiver<bool>) {
        if closing.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The API's routes, served over `handle` at `bound` (the address the
/// `Host` check compares with) for those `access` lets in.
pub fn router(handle: NodeHandle, bound: SocketAddr, access: ApiAccess) -> Router {
    let (_, closing) = signal::channel(false);
    build(handle, bound, access, closing)
}

fn build(
    handle: NodeHandle,
    bound: SocketAddr,
    access: ApiAccess,
    closing: signal::Receiver<bool>,
) -> Router {
    let insecure = handle.info().insecure;
    let guard = guard::Guard::new(bound, access, handle.clone());
    let state = ApiState {
        handle,
        closing,
        query_slots: Arc::new(Semaphore::new(QUERY_SLOTS)),
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/v1/status", get(tables::status))
        .route("/v1/zones", get(tables::zones))
        .route("/v1/zone", get(tables::zone))
        .route("/v1/query", axum::routing::post(tables::query))
        .route(
            "/v1/afcs",
            get(afcs::list).post(afcs::install).delete(afcs::remove),
        )
        .route("/v1/attrs", get(tables::attrs))
        .route(
            "/v1/attrs/{name}",
            put(tables::set_attr).delete(tables::unset_attr),
        )
        .route("/v1/watch", get(watch::watch))
        .route("/v1/history", get(history::history))
        .route("/metrics", get(metrics::metrics))
        .merge(chm::routes())
        .merge(dds::routes())
        .merge(crm::routes())
        .merge(evn::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(guard, guard::guard))
        .layer(axum::middleware::map_response(
            move |mut res: Response| async move {
                if insecure {
                    res.headers_mut().insert(
                        HeaderName::from_static(INSECURE_HEADER),
                        HeaderValue::from_static("true"),
                    );
                }
                res
            },
        ))
        .with_state(state)
}

/// The web dashboard: one self-contained page over this API (zone tables
/// with live updates, the aggregate row, AFCs, refused input, a query box).
const DASHBOARD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dashboards/index.html"
));

async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(DASHBOARD)
}

/// Serves the API on `listener` to those `access` lets in, until `shutdown`
/// resolves; open event streams are ended then, so shutdown does not wait
/// on watchers. An API reachable beyond loopback without a token is refused
/// ([`AccessError::NeedsToken`] as an `InvalidInput` error).
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: NodeHandle,
    access: ApiAccess,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bound = listener.local_addr()?;
    access
        .check_exposure(bound)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (closing_tx, closing) = signal::channel(false);
    let app = build(handle, bound, access, closing);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = closing_tx.send(true);
        })
        .await
}
