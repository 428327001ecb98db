//! CRM's runtime half: it fans each group's view and message events out
//! to the API streams that follow the group, and serves CRM's requests
//! from the API. The protocol (views, ordering, the view change) is
//! `armillary_proto::crm`.

pub use armillary_proto::crm as proto;

use crate::host::{Host, Service, ServiceId, Services};
use crate::node::{Glue, Jobs, NodeError, NodeHandle};
use crate::row::Micros;
use proto::{Crm, CrmError, GroupEvent, GroupInfo, Mode, Phase};
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::{broadcast, oneshot};

mod endpoint;
mod machine;
pub use endpoint::{ServeKind, join_with, listed, replica_snapshot, request, serve};
pub use machine::{MachineEvent, MachineFeed, answer, attach};

/// Events one stream may fall behind by before it is told it lagged.
const STREAM_QUEUE: usize = 32_768;

/// Why a CRM request failed.
#[derive(Debug, thiserror::Error)]
pub enum CrmCallError {
    #[error(transparent)]
    Crm(#[from] CrmError),
    #[error("this agent does not run CRM")]
    NotRunning,
    #[error(
        "group {group} has no view holding this agent after {secs} s; is a majority of it reachable?"
    )]
    NoView { group: String, secs: u64 },
    #[error("this agent is in group {0} but does not serve it; use a serving member")]
    NotServing(String),
    #[error(
        "group {group} is not served by the {asked} service here; send it the requests of the service it runs"
    )]
    OtherService { group: String, asked: &'static str },
    #[error(
        "session {session} is not the current one of group {group}'s machine (a newer process follows it, or none does); follow the feed again"
    )]
    Superseded { group: String, session: u64 },
    #[error(transparent)]
    Machine(#[from] proto::MachineError),
    #[error("{0} requests wait for replies at this agent, the most it holds; retry later")]
    Busy(usize),
    #[error("group {0} gave no reply in {1} ms; try another member")]
    NoReply(String, u64),
    #[error("request {seq} of client {client:x} is older than its last ({last}): it was not run")]
    Stale { client: u64, seq: u64, last: u64 },
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A request waiting for its reply: group, client, sequence number.
type RequestKey = (Arc<str>, u64, u64);

/// CRM's runtime half.
#[derive(Default)]
pub struct CrmGlue {
    streams: BTreeMap<Arc<str>, broadcast::Sender<GroupEvent>>,
    /// Requests taken here, waiting for their reply: by group, client, seq.
    waiting: BTreeMap<RequestKey, Vec<oneshot::Sender<Vec<u8>>>>,
    /// Groups whose external machine follows them, by group.
    machines: BTreeMap<Arc<str>, machine::Slot>,
    sessions: u64,
    ready: bool,
    views: u64,
    rejoins: u64,
    minority: u64,
}

impl CrmGlue {
    pub fn new() -> CrmGlue {
        CrmGlue::default()
    }

    fn sender(&mut self, group: &Arc<str>) -> broadcast::Sender<GroupEvent> {
        self.streams
            .entry(group.clone())
            .or_insert_with(|| broadcast::channel(STREAM_QUEUE).0)
            .clone()
    }
}

impl Glue for CrmGlue {
    fn service(&self) -> ServiceId {
        <Crm as Service>::ID
    }

    fn on_event(&mut self, _event: Box<dyn Any + Send>, _now: Micros) {
        self.ready = true;
    }

    fn after_input(&mut self, host: &mut Host<Box<dyn Services>>, _jobs: &Jobs, now: Micros) {
        if !std::mem::take(&mut self.ready) {
            return;
        }
        let Some(crm) = host
            .services
            .service_mut(<Crm as Service>::ID)
            .and_then(|s| s.downcast_mut::<Crm>())
        else {
            return;
        };
        let mut delivered = BTreeSet::new();
        for e in crm.take_events() {
            if let GroupEvent::Deliver { group, .. } = &e {
                delivered.insert(group.clone());
            }
            if let GroupEvent::Deliver {
                group,
                data,
                reply: Some(reply),
                ..
            } = &e
                && let Some((client, seq)) = proto::Request::key_of(data)
                && let Some(waiters) = self.waiting.remove(&(group.clone(), client, seq))
            {
                for w in waiters {
                    let _ = w.send(reply.clone());
                }
            }
            match &e {
                GroupEvent::View { .. } => self.views += 1,
                GroupEvent::Rejoining { group, why, .. } => {
                    tracing::warn!(%group, why = why.label(), "left the view to join again");
                    self.rejoins += 1;
                }
                GroupEvent::Minority { group, view } => {
                    tracing::warn!(%group, view, "no majority of the view reachable");
                    self.minority += 1;
                }
                _ => {}
            }
            let group = e.group().clone();
            let left = matches!(e, GroupEvent::Left { .. });
            if let Some(m) = self.machines.get(&group) {
                m.notify.notify_one();
            }
            if let Some(tx) = self.streams.get(&group) {
                let _ = tx.send(e);
            }
            if left {
                self.streams.remove(&group);
                self.machines.remove(&group);
            }
        }
        machine::leave_if_full(crm, &delivered, now);
    }

    fn counters(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, u64>) {
        out.insert("crm_views".into(), self.views);
        out.insert("crm_rejoins".into(), self.rejoins);
        out.insert("crm_minority".into(), self.minority);
        let Some(c) = host.service::<Crm>() else {
            return;
        };
        out.insert("crm_chunks_dropped".into(), c.chunks_dropped);
        out.insert("crm_events_dropped".into(), c.events_dropped);
        let (mut delivered, mut sent, mut proposals) = (0, 0, 0);
        for g in c.groups() {
            if let Some(g) = c.group(&g.name) {
                delivered += g.stats.delivered;
                sent += g.stats.sent;
                proposals += g.stats.proposals;
            }
        }
        out.insert("crm_delivered".into(), delivered);
        out.insert("crm_sent".into(), sent);
        out.insert("crm_proposals".into(), proposals);
    }

    fn gauges(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, i64>) {
        if let Some(c) = host.service::<Crm>() {
            out.insert("crm_groups".into(), c.groups().len() as i64);
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Runs `f` with CRM's core, the zone tree and its runtime half on the node's task.
async fn with_crm<T: Send + 'static>(
    h: &NodeHandle,
    f: impl FnOnce(&mut Crm, crate::host::Zones<'_>, &mut CrmGlue, Micros) -> Result<T, CrmCallError>
    + Send
    + 'static,
) -> Result<T, CrmCallError> {
    h.with_glue(f).await?.ok_or(CrmCallError::NotRunning)?
}

/// Joins `group` (through `contacts`, agent addresses, or the members the
/// zone tree lists; creating it when nobody has it) and waits until a view
/// holds this agent. Joining a group this agent is in already is no
/// error: it gives the current view.
pub async fn join(
    h: &NodeHandle,
    group: String,
    contacts: Vec<Arc<str>>,
    wait: std::time::Duration,
) -> Result<(GroupInfo, broadcast::Receiver<GroupEvent>), CrmCallError> {
    let g = group.clone();
    let rx = with_crm(h, move |c, z, glue, _| {
        let name: Arc<str> = g.as_str().into();
        let rx = glue.sender(&name).subscribe();
        match c.join(&z, &g, contacts, None) {
            Ok(()) | Err(CrmError::AlreadyMember(_)) => Ok(rx),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(i) = view(h, group.clone()).await?
            && matches!(i.phase, Phase::Member)
        {
            return Ok((i, rx));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CrmCallError::NoView {
                secs: wait.as_secs(),
                group,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Follows `group`'s events (this agent must be in it).
pub async fn follow(
    h: &NodeHandle,
    group: String,
) -> Result<broadcast::Receiver<GroupEvent>, CrmCallError> {
    with_crm(h, move |c, _, glue, _| {
        if c.group(&group).is_none() {
            return Err(CrmError::UnknownGroup(group).into());
        }
        Ok(glue.sender(&group.as_str().into()).subscribe())
    })
    .await
}

/// Sends `data` to `group` in `mode`.
pub async fn send(
    h: &NodeHandle,
    group: String,
    mode: Mode,
    data: Vec<u8>,
) -> Result<(), CrmCallError> {
    with_crm(h, move |c, _, _, now| Ok(c.send(now, &group, mode, data)?)).await
}

/// Sends as many of `batch` as the group takes now, in order; gives back
/// the rest, untouched (they wait for this member's window to open).
pub async fn send_many(
    h: &NodeHandle,
    group: String,
    mode: Mode,
    batch: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, CrmCallError> {
    with_crm(h, move |c, _, _, now| {
        let mut rest = batch.into_iter().peekable();
        while let Some(data) = rest.peek() {
            match c.refusal(&group, data.len())? {
                None => {}
                Some(proto::SendRefused::Full { .. }) => break,
                Some(why) => return Err(CrmError::Send(why).into()),
            }
            let data = rest.next().expect("peeked");
            c.send(now, &group, mode, data)?;
        }
        Ok(rest.collect())
    })
    .await
}

/// This agent's view of `group`, None when it is not in it.
pub async fn view(h: &NodeHandle, group: String) -> Result<Option<GroupInfo>, CrmCallError> {
    with_crm(h, move |c, _, _, _| Ok(c.info(&group))).await
}

/// The groups this agent is in.
pub async fn groups(h: &NodeHandle) -> Result<Vec<GroupInfo>, CrmCallError> {
    with_crm(h, |c, _, _, _| Ok(c.groups())).await
}

/// Leaves `group`: returns once the next view is installed without this
/// agent (or the leave timed out).
pub async fn leave(h: &NodeHandle, group: String) -> Result<(), CrmCallError> {
    let g = group.clone();
    with_crm(h, move |c, _, _, now| Ok(c.leave(now, &g)?)).await?;
    for _ in 0..250 {
        if view(h, group.clone()).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
