//! The handle through which the API, the CLI's in-process commands and tests
//! talk to a running node. Every call runs on the node's own task, between
//! protocol steps, so the protocol core needs no locks.

use super::core::NodeCore;
use crate::Refusal;
use crate::afc::{AfcCert, ScopeFull};
use crate::gossip::InstallError;
use crate::message::AfcError;
use crate::path::ZonePath;
use crate::row::Micros;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};
use zone_sql::adhoc::NamedTable;
use zone_sql::{Attrs, Value};

/// Why a request to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("zone {zone} is not on this agent's path; this agent holds the tables of {known}")]
    UnknownZone { zone: ZonePath, known: String },
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("{0}")]
    BadRequest(String),
    /// The change would make this agent's row break a limit.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    #[error("the agent has stopped")]
    Stopped,
    #[error("could not save the agent's state: {0}")]
    Store(#[from] super::store::StoreError),
}

impl NodeError {
    /// The reason a refused request is counted and answered under; None
    /// for failures that are not refusals (the node stopped, the disk).
    pub fn refusal(&self) -> Option<Refusal> {
        Some(match self {
            NodeError::UnknownZone { .. } => Refusal::ApiUnknownZone,
            NodeError::Install(i) => match i {
                InstallError::OutOfScope(_) => Refusal::ApiAfcOutOfScope,
                InstallError::NotFound { .. } => Refusal::ApiAfcNotFound,
                InstallError::Refused(_) => Refusal::ApiAfcRefused,
                InstallError::ScopeFull(ScopeFull::Count { .. }) => Refusal::ApiAfcScopeFull,
                InstallError::ScopeFull(ScopeFull::Bytes { .. })
                | InstallError::Invalid(AfcError::TooLarge { .. } | AfcError::Text(_)) => {
                    Refusal::ApiAfcTooLarge
                }
                InstallError::Invalid(_) | InstallError::BadAfc(_) => Refusal::ApiAfcInvalid,
            },
            NodeError::Limit(l) if l.is_size() => Refusal::ApiAttrTooLarge,
            NodeError::Limit(_) => Refusal::ApiAttrInvalid,
            NodeError::BadRequest(_) => Refusal::ApiBadRequest,
            NodeError::Stopped | NodeError::Store(_) => return None,
        })
    }
}

/// A zone's aggregate row over the last minutes.
#[derive(Debug, Clone)]
pub struct HistoryView {
    pub zone: ZonePath,
    /// Microseconds between samples.
    pub period: u64,
    /// How far back the history reaches at most.
    pub window: u64,
    /// Attribute name to (time, value) points, oldest first.
    pub series: std::collections::BTreeMap<String, Vec<(u64, f64)>>,
}

/// A change a subscriber may want to hear about.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The agent's evaluation of `zone`'s aggregate row changed.
    Row {
        zone: ZonePath,
        #[serde(serialize_with = "ser_attrs")]
        attrs: Attrs,
        time: Micros,
    },
    /// The content of `zone`'s child table changed (a row changed, arrived or left).
    Table { zone: ZonePath, time: Micros },
    /// The set of AFCs changed.
    Afcs { time: Micros },
}

fn ser_attrs<S: serde::Serializer>(a: &Attrs, s: S) -> Result<S::Ok, S::Error> {
    zone_sql::json::attrs_to_json(a).serialize(s)
}

/// One row of a zone table as the API shows it.
#[derive(Debug, Clone)]
pub struct RowView {
    pub name: String,
    pub issuer: ZonePath,
    pub issued: Micros,
    pub attrs: Attrs,
}

/// One AFC and what the agent made of it.
#[derive(Debug, Clone)]
pub struct AfcView {
    pub cert: Arc<AfcCert>,
    pub state: &'static str,
    pub reason: Option<String>,
}

/// What a node is and how it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub leaf: ZonePath,
    pub gossip_addr: String,
    pub insecure: bool,
    pub identity: Option<String>,
    pub zones: Vec<ZonePath>,
    pub round: u64,
    pub now: Micros,
    pub counters: BTreeMap<String, u64>,
    /// Levels, such as components per status (`name{label="v"}` keys).
    pub gauges: BTreeMap<String, i64>,
    pub rejected: BTreeMap<String, u64>,
}

/// Fixed facts about a node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub leaf: ZonePath,
    pub gossip_addr: SocketAddr,
    pub insecure: bool,
}

pub(super) type Job = Box<dyn FnOnce(&mut NodeCore) + Send>;

/// A cheap, cloneable handle to a running node.
#[derive(Clone)]
pub struct NodeHandle {
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) changes: broadcast::Sender<Change>,
    pub(super) info: Arc<NodeInfo>,
}

impl NodeHandle {
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Runs `f` on the node's task and returns its result.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeCore) -> T + Send + 'static,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |core| {
            let _ = tx.send(f(core));
        });
        self.jobs.send(job).await.map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Like [`Self::call`] for fallible requests: a refused request is
    /// counted in the agent's rejection metrics.
    pub async fn try_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut NodeCore) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        self.call(move |c| {
            let r = f(c);
            if let Err(e) = &r {
                c.count_refusal(e);
            }
            r
        })
        .await?
    }

    pub async fn status(&self) -> Result<Status, NodeError> {
        self.call(|c| c.status()).await
    }

    /// The zones whose tables this agent holds, root first.
    pub async fn zones(&self) -> Result<Vec<ZonePath>, NodeError> {
        self.call(|c| c.host.gossip.zones().to_vec()).await
    }

    /// The child table of `zone`.
    pub async fn table(&self, zone: ZonePath) -> Result<Vec<RowView>, NodeError> {
        self.try_call(move |c| c.table(&zone)).await
    }

    /// This agent's evaluation of `zone`'s aggregate row.
    pub async fn zone_row(&self, zone: ZonePath) -> Result<Attrs, NodeError> {
        self.try_call(move |c| c.zone_row(&zone)).await
    }

    /// The history of `zone`'s aggregate row: the attributes named in
    /// `attrs` (every numeric one when empty), from `since` on.
    pub async fn history(
        &self,
        zone: ZonePath,
        attrs: Vec<String>,
        since: u64,
    ) -> Result<HistoryView, NodeError> {
        self.try_call(move |c| {
            let h = &c.history;
            let series = h.of(&zone, &attrs, since);
            if series.is_empty() && !h.zones().contains(&zone) {
                let zones = h.zones();
                let known = zones.iter().map(|z| z.as_str()).collect::<Vec<_>>();
                return Err(NodeError::UnknownZone {
                    zone,
                    known: known.join(", "),
                });
            }
            Ok(HistoryView {
                zone,
                period: h.period(),
                window: h.window(),
                series,
            })
        })
        .await
    }

    /// Fault injection: the agent's task stops for `d` as a process under
    /// SIGSTOP would (no input handled, no timer, nothing sent; its QUIC
    /// endpoint keeps running), then goes on with what queued up.
    pub async fn pause(&self, d: std::time::Duration) -> Result<(), NodeError> {
        self.call(move |c| c.pause = Some(d)).await
    }

    /// Every table the agent holds, for ad-hoc SQL.
    pub async fn tables(&self) -> Result<Vec<NamedTable>, NodeError> {
        self.call(|c| c.named_tables()).await
    }

    /// The AFCs this agent knows, optionally only those scoped at `zone`.
    pub async fn afcs(&self, zone: Option<ZonePath>) -> Result<Vec<AfcView>, NodeError> {
        self.call(move |c| c.afcs(zone.as_ref())).await
    }

    /// Installs an AFC (or, when `cert.removed`, a removal). In secure mode
    /// the certificate must be signed by a key allowed in its scope.
    pub async fn install_afc(&self, cert: AfcCert) -> Result<(), NodeError> {
        self.try_call(move |c| c.install_afc(cert)).await
    }

    /// Removes an AFC. In secure mode `signed` must be a signed tombstone;
    /// in insecure mode the agent makes the tombstone itself.
    pub async fn remove_afc(
        &self,
        scope: ZonePath,
        name: String,
        signed: Option<AfcCert>,
    ) -> Result<(), NodeError> {
        self.try_call(move |c| c.remove_afc(scope, &name, signed))
            .await
    }

    /// The attributes applications set on this agent.
    pub async fn local_attrs(&self) -> Result<Attrs, NodeError> {
        self.call(|c| {
            // The services' own attributes (`chm_...`) are theirs, not the
            // applications'.
            let prefixes: Vec<String> = c
                .host
                .services
                .names()
                .iter()
                .map(|n| format!("{n}_"))
                .collect();
            let mut attrs = c.host.gossip.local_attrs().clone();
            let theirs: Vec<String> = attrs
                .names()
                .filter(|k| prefixes.iter().any(|p| k.starts_with(p.as_str())))
                .map(|k| k.to_string())
                .collect();
            for k in theirs {
                attrs.remove(&k);
            }
            attrs
        })
        .await
    }

    pub async fn set_attr(&self, name: String, value: Value) -> Result<(), NodeError> {
        self.try_call(move |c| c.set_attr(&name, value)).await
    }

    /// Removes an application attribute; false when it was not set.
    pub async fn unset_attr(&self, name: String) -> Result<bool, NodeError> {
        self.try_call(move |c| c.unset_attr(&name)).await
    }

    /// Counts a request the API refused before it reached the node (a
    /// foreign `Host`, a missing token, a body that is not JSON).
    pub async fn count_rejected(&self, reason: Refusal) {
        let _ = self.call(move |c| c.host.gossip.reject(reason)).await;
    }

    /// Changes from now on. A subscriber that falls behind loses the oldest
    /// changes and is told how many (tokio's broadcast `Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
