//! The state a node's task owns: the protocol core and what surrounds it
//! (durable store, counters, change fan-out). Handle calls run here.

use super::glue::{Glue, Jobs};
use super::handle::{AfcView, Change, NodeError, RowView, Status};
use super::history::History;
use super::store::Store;
use super::transport::NetCounters;
use super::transport::{Body, Inbound};
use crate::afc::{AfcCert, AfcState};
use crate::gossip::{Event, InstallError};
use crate::host::{Host, Services};
use crate::path::ZonePath;
use crate::security::now_micros;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::broadcast;
use zone_sql::adhoc::NamedTable;
use zone_sql::{Attrs, Value};

/// The node's own state, touched only by its task.
pub struct NodeCore {
    /// The gossip core and the services beside it.
    pub host: Host<Box<dyn Services>>,
    pub(super) store: Option<Store>,
    pub(super) changes: broadcast::Sender<Change>,
    pub(super) net: Arc<NetCounters>,
    pub(super) insecure: bool,
    pub(super) identity: Option<String>,
    pub(super) gossip_addr: String,
    /// Content fingerprint per table, to report table changes.
    table_marks: Vec<u64>,
    /// The durable state last written (AFC-set version, local attrs).
    saved: (u64, Attrs),
    /// Each service's state last written.
    saved_services: BTreeMap<&'static str, Vec<u8>>,
    /// The services' runtime halves.
    glue: Vec<Box<dyn Glue>>,
    jobs: Jobs,
    /// The aggregate rows over the last minutes, for plots.
    pub(super) history: History,
    /// A pause asked for by a test ([`super::NodeHandle::pause`]).
    pub(super) pause: Option<std::time::Duration>,
}

impl NodeCore {
    // Each argument is one part the node's task owns; only `Node::start` calls it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        host: Host<Box<dyn Services>>,
        store: Option<Store>,
        changes: broadcast::Sender<Change>,
        net: Arc<NetCounters>,
        insecure: bool,
        identity: Option<String>,
        gossip_addr: String,
        glue: Vec<Box<dyn Glue>>,
        jobs: Jobs,
    ) -> NodeCore {
        let agent = &host.gossip;
        let saved = (agent.afcs().version(), agent.local_attrs().clone());
        let levels = agent.zones().len();
        // Two seconds or a round between samples: ten minutes of points.
        let history = History::new(agent.config().round.max(2_000_000));
        NodeCore {
            host,
            store,
            changes,
            net,
            insecure,
            identity,
            gossip_addr,
            table_marks: vec![0; levels],
            saved,
            saved_services: BTreeMap::new(),
            glue,
            jobs,
            history,
            pause: None,
        }
    }

    /// The host and the runtime half of type `G`, for an API call of its
    /// service; None when the node runs no such service.
    pub fn glue<G: Glue>(&mut self) -> Option<(&mut Host<Box<dyn Services>>, &mut G)> {
        let g = self
            .glue
            .iter_mut()
            .find_map(|g| g.as_any_mut().downcast_mut::<G>())?;
        Some((&mut self.host, g))
    }

    /// Hands a message from the network to the core it is for.
    pub(super) fn deliver(&mut self, m: Inbound) {
        let now = now_micros();
        match m.body {
            Body::Gossip(msg) => self.host.gossip.handle_message(now, &m.from.addr, msg),
            Body::Service { id, payload } => {
                if let Err(reason) = self.host.handle_service(now, &m.from, id, &payload) {
                    tracing::debug!(from = %m.from.addr, service = id, %reason, "message refused");
                    self.host.gossip.reject(reason);
                }
            }
        }
    }

    /// Counts a refused API request under its reason.
    pub(super) fn count_refusal(&mut self, e: &NodeError) {
        if let Some(r) = e.refusal() {
            self.host.gossip.reject(r);
        }
    }

    fn check_zone(&self, zone: &ZonePath) -> Result<(), NodeError> {
        if self.host.gossip.zones().contains(zone) {
            Ok(())
        } else {
            Err(NodeError::UnknownZone {
                zone: zone.clone(),
                known: self
                    .host
                    .gossip
                    .zones()
                    .iter()
                    .map(|z| z.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    pub(super) fn status(&self) -> Status {
        let s = self.host.gossip.stats();
        let mut counters = BTreeMap::new();
        for (k, v) in [
            ("msgs_sent", s.msgs_sent),
            ("bytes_sent", s.bytes_sent),
            ("exchanges_started", s.syns_sent),
            ("push_msgs_sent", s.push_msgs_sent),
            ("push_bytes_sent", s.push_bytes_sent),
            ("msgs_received", s.msgs_received),
            ("rows_accepted", s.rows_accepted),
            ("evaluations", s.evaluations),
            ("afc_faults", s.afc_faults),
            ("zone_row_deferrals", s.deferrals),
            ("push_carried", s.push_carried),
        ] {
            counters.insert(k.to_string(), v);
        }
        self.net.add_counters(&mut counters);
        let mut gauges = BTreeMap::new();
        for g in &self.glue {
            g.counters(&self.host, &mut counters);
            g.gauges(&self.host, &mut gauges);
        }
        let mut rejected: BTreeMap<String, u64> = s
            .rejected
            .iter()
            .map(|(k, v)| (k.label().to_string(), *v))
            .collect();
        self.net.add_rejected(&mut rejected);
        Status {
            leaf: self.host.gossip.leaf().clone(),
            gossip_addr: self.gossip_addr.clone(),
            insecure: self.insecure,
            identity: self.identity.clone(),
            zones: self.host.gossip.zones().to_vec(),
            round: self.host.gossip.round(),
            now: now_micros(),
            counters,
            gauges,
            rejected,
        }
    }

    pub(super) fn table(&self, zone: &ZonePath) -> Result<Vec<RowView>, NodeError> {
        self.check_zone(zone)?;
        Ok(self
            .host
            .gossip
            .table(zone)
            .unwrap_or_default()
            .iter()
            .map(|r| RowView {
                name: r.name().to_string(),
                issuer: r.issuer.clone(),
                issued: r.issued,
                attrs: r.attrs.clone(),
            })
            .collect())
    }

    pub(super) fn zone_row(&self, zone: &ZonePath) -> Result<Attrs, NodeError> {
        if zone == self.host.gossip.leaf() {
            return Ok(self
                .host
                .gossip
                .row_of(zone)
                .map(|r| r.attrs.clone())
                .unwrap_or_default());
        }
        self.check_zone(zone)?;
        Ok(self.host.gossip.zone_row(zone).cloned().unwrap_or_default())
    }

    pub(super) fn named_tables(&self) -> Vec<NamedTable> {
        self.host
            .gossip
            .zones()
            .iter()
            .map(|z| NamedTable {
                columns: Vec::new(),
                name: z.as_str().to_string(),
                rows: self
                    .host
                    .gossip
                    .table(z)
                    .unwrap_or_default()
                    .iter()
                    .map(|r| (r.name().to_string(), r.attrs.clone()))
                    .collect(),
            })
            .collect()
    }

    pub(super) fn afcs(&self, zone: Option<&ZonePath>) -> Vec<AfcView> {
        self.host
            .gossip
            .afcs()
            .iter()
            .filter(|a| zone.is_none_or(|z| a.cert.scope == *z))
            .map(|a| {
                // An active AFC whose output was left out of some zone's
                // row is reported faulty there.
                let faults: Vec<_> = self
                    .host
                    .gossip
                    .afc_faults()
                    .filter(|f| f.scope == a.cert.scope && f.name == a.cert.name)
                    .collect();
                let (state, reason) = match (&a.state, faults.first()) {
                    (AfcState::Rejected(why), _) => (a.state.label(), Some(why.clone())),
                    (AfcState::Active, Some(f)) => (
                        "faulty",
                        Some(format!(
                            "on {}{}: {}",
                            f.zone,
                            match faults.len() {
                                1 => String::new(),
                                n => format!(" and {} more zones", n - 1),
                            },
                            f.reason
                        )),
                    ),
                    _ => (a.state.label(), None),
                };
                AfcView {
                    cert: a.cert.clone(),
                    state,
                    reason,
                }
            })
            .collect()
    }

    pub(super) fn install_afc(&mut self, cert: AfcCert) -> Result<(), NodeError> {
        let now = now_micros();
        self.host.gossip.install_afc(now, cert)?;
        self.after_input();
        Ok(())
    }

    pub(super) fn remove_afc(
        &mut self,
        scope: ZonePath,
        name: &str,
        signed: Option<AfcCert>,
    ) -> Result<(), NodeError> {
        let now = now_micros();
        let held = self
            .host
            .gossip
            .afcs()
            .get(&scope, name)
            .is_some_and(|a| a.state != AfcState::Removed);
        if !held {
            return Err(InstallError::NotFound {
                scope,
                name: name.to_string(),
            }
            .into());
        }
        match signed {
            Some(t) => {
                if !t.removed || t.scope != scope || *t.name != *name {
                    return Err(NodeError::BadRequest(format!(
                        "the signed removal must be a tombstone for {name} in {scope}"
                    )));
                }
                self.host.gossip.install_afc(now, t)?;
            }
            None => self.host.gossip.remove_afc(now, &scope, name)?,
        }
        self.after_input();
        Ok(())
    }

    pub(super) fn set_attr(&mut self, name: &str, value: Value) -> Result<(), NodeError> {
        self.host.gossip.set_attr(now_micros(), name, value)?;
        self.after_input();
        Ok(())
    }

    pub(super) fn unset_attr(&mut self, name: &str) -> Result<bool, NodeError> {
        let had = self.host.gossip.unset_attr(now_micros(), name);
        self.after_input();
        Ok(had)
    }

    /// Saves durable state if it changed; the store writes atomically.
    fn persist(&mut self) {
        self.persist_services();
        let version = self.host.gossip.afcs().version();
        if self.saved.0 == version && self.saved.1 == *self.host.gossip.local_attrs() {
            return;
        }
        let Some(store) = &self.store else {
            return;
        };
        let afcs: Vec<Arc<AfcCert>> = self
            .host
            .gossip
            .afcs()
            .iter()
            .filter(|a| !matches!(a.state, AfcState::Rejected(_)))
            .map(|a| a.cert.clone())
            .collect();
        match store.save_state(&afcs, self.host.gossip.local_attrs()) {
            Ok(()) => self.saved = (version, self.host.gossip.local_attrs().clone()),
            Err(e) => tracing::error!(error = %e, "could not save the agent's state"),
        }
    }

    /// Saves each service's state that changed since it was last written.
    fn persist_services(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        for (name, state) in self.host.services.save() {
            if self.saved_services.get(name) == Some(&state) {
                continue;
            }
            match store.save_service(name, &state) {
                Ok(()) => {
                    self.saved_services.insert(name, state);
                }
                Err(e) => {
                    tracing::error!(service = name, error = %e, "could not save the service's state")
                }
            }
        }
    }

    /// Drains the core's events into subscribers, reports table changes and
    /// saves durable state; called after every input.
    pub(super) fn after_input(&mut self) {
        let now = now_micros();
        while let Some(ev) = self.host.gossip.poll_event() {
            let change = match ev {
                Event::ZoneChanged { zone, attrs } => Change::Row {
                    zone,
                    attrs,
                    time: now,
                },
                Event::AfcsChanged => Change::Afcs { time: now },
                Event::RowExpired { zone, child } => {
                    tracing::info!(%zone, %child, "child row timed out");
                    continue;
                }
            };
            let _ = self.changes.send(change);
        }
        // Service events go to their runtime halves; each then takes the
        // work its core asks for.
        while let Some(e) = self.host.services.poll_event() {
            match self.glue.iter_mut().find(|g| g.service() == e.service) {
                Some(g) => g.on_event(e.event, now),
                None => tracing::trace!(service = e.service, "service event"),
            }
        }
        for g in &mut self.glue {
            g.after_input(&mut self.host, &self.jobs, now);
        }
        if self.changes.receiver_count() > 0 {
            for (i, zone) in self.host.gossip.zones().iter().enumerate() {
                let mark = self
                    .host
                    .gossip
                    .table(zone)
                    .unwrap_or_default()
                    .iter()
                    .fold(0u64, |h, r| {
                        h.rotate_left(7) ^ r.content_hash() ^ crate::row::stable_hash(r.name())
                    });
                if self.table_marks[i] != mark {
                    self.table_marks[i] = mark;
                    let _ = self.changes.send(Change::Table {
                        zone: zone.clone(),
                        time: now,
                    });
                }
            }
        }
        self.sample_history(now);
        self.persist();
    }

    /// Adds the aggregate rows to the history when a sample is due.
    fn sample_history(&mut self, now: u64) {
        if !self.history.due(now) {
            return;
        }
        let g = &self.host.gossip;
        let root = ZonePath::root();
        let rows = g
            .zone_row(&root)
            .map(|a| (root.clone(), a))
            .into_iter()
            .chain(g.zones().iter().flat_map(|z| {
                g.table(z)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(move |r| Some((z.child(r.name()).ok()?, &r.attrs)))
            }));
        self.history.sample(now, rows);
    }
}
