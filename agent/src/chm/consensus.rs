//! CHM's consensus level at run time (`armillary_proto::chm::consensus`):
//! the agents interested in a consensus component (its home, which runs
//! its checks, and its watchers) are members of the CRM group `chm.ID`,
//! with the verdict log as the group's replica. Each member runs one task:
//! the home proposes each status change, and the coordinator of a view
//! without the home proposes that the home is lost. Verdicts are what the
//! group delivers; watch streams and lookups read them.
//!
//! A supervisor per agent keeps the home's membership across restarts:
//! registrations are durable, group membership is not (CRM is diskless),
//! so it rejoins the group of every consensus registration.

use super::{ChmCallError, changes, own};
use crate::crm::{self, CrmCallError};
use crate::node::{NodeError, NodeHandle};
use armillary_proto::chm::ComponentId;
use armillary_proto::chm::consensus::{MAX_MEMBERS, Proposal, Verdict, Verdicts, group_of};
use armillary_proto::crm::{GroupEvent, Mode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// How long joining a consensus group may take.
const JOIN_WAIT: Duration = Duration::from_secs(15);
/// How often the supervisor looks at the registrations.
const SUPERVISE: Duration = Duration::from_secs(1);

/// Groups a member task runs for, per agent (several agents may share a
/// process): gossip address and group.
static RUNNING: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

fn key(h: &NodeHandle, group: &str) -> (String, String) {
    (h.info().gossip_addr.to_string(), group.to_string())
}

impl From<CrmCallError> for ChmCallError {
    fn from(e: CrmCallError) -> ChmCallError {
        match e {
            CrmCallError::Node(n) => ChmCallError::Node(n),
            e => ChmCallError::Consensus(e.to_string()),
        }
    }
}

/// Makes this agent a member of `id`'s consensus group, as its home (which
/// creates the group when nobody has it) or as a watcher (which only joins
/// a group that exists, and only while it has room).
pub async fn ensure_member(
    h: &NodeHandle,
    id: &ComponentId,
    home: bool,
) -> Result<(), ChmCallError> {
    let group = group_of(id);
    if RUNNING.lock().expect("lock").contains(&key(h, &group)) {
        return Ok(());
    }
    if !home && crm::view(h, group.clone()).await?.is_none() {
        let listed = crm::listed(h, group.clone()).await?;
        if listed.is_empty() {
            return Err(ChmCallError::NotFound(format!(
                "{id} has no consensus group (yet): register it with --consensus at its agent"
            )));
        }
        if listed.iter().all(|(_, size)| *size >= MAX_MEMBERS) {
            return Err(ChmCallError::Consensus(format!(
                "the consensus group of {id} has {MAX_MEMBERS} members, the most it takes; watch from one of its members"
            )));
        }
    }
    crm::join_with(
        h,
        group.clone(),
        Box::new(Verdicts::default()),
        Vec::new(),
        JOIN_WAIT,
    )
    .await?;
    if RUNNING.lock().expect("lock").insert(key(h, &group)) {
        tokio::spawn(member(h.clone(), id.clone(), home));
    }
    Ok(())
}

/// Open watches of consensus components at each agent, by (agent, group).
static WATCHES: Mutex<BTreeMap<(String, String), usize>> = Mutex::new(BTreeMap::new());

/// A watch of a consensus component: this agent is in the component's
/// group while one is open, and a watcher (not the home) leaves the group
/// when its last watch ends, so its slot goes to the next watcher.
pub struct Watching {
    h: NodeHandle,
    id: ComponentId,
}

/// Joins `id`'s group as a watcher (a home is in it already) for as long as
/// the returned guard lives.
pub async fn watch(h: &NodeHandle, id: &ComponentId) -> Result<Watching, ChmCallError> {
    ensure_member(h, id, false).await?;
    *WATCHES
        .lock()
        .expect("lock")
        .entry(key(h, &group_of(id)))
        .or_default() += 1;
    Ok(Watching {
        h: h.clone(),
        id: id.clone(),
    })
}

impl Drop for Watching {
    fn drop(&mut self) {
        let group = group_of(&self.id);
        let k = key(&self.h, &group);
        {
            let mut w = WATCHES.lock().expect("lock");
            let Some(n) = w.get_mut(&k) else {
                return;
            };
            *n -= 1;
            if *n > 0 {
                return;
            }
            w.remove(&k);
        }
        let (h, id) = (self.h.clone(), self.id.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let home = own(&h)
                .await
                .is_ok_and(|o| o.iter().any(|o| o.registration.id == id));
            let watched = WATCHES.lock().expect("lock").contains_key(&k);
            if !home && !watched {
                let _ = crm::leave(&h, group).await;
            }
        });
    }
}

/// The verdicts this agent holds of `id`, when it is in its group.
pub async fn verdicts(h: &NodeHandle, id: &ComponentId) -> Option<Verdicts> {
    let snap = crm::replica_snapshot(h, group_of(id)).await.ok()??;
    Verdicts::from_snapshot(&snap)
}

/// Verdicts as the group delivers them from now on.
pub async fn follow(
    h: &NodeHandle,
    id: &ComponentId,
) -> Result<tokio::sync::broadcast::Receiver<GroupEvent>, ChmCallError> {
    Ok(crm::follow(h, group_of(id)).await?)
}

/// The verdict in a delivery of the group, if it made one.
pub fn verdict_of(e: &GroupEvent) -> Option<Verdict> {
    match e {
        GroupEvent::Deliver { reply: Some(r), .. } => Verdict::decode(r),
        _ => None,
    }
}

async fn propose(h: &NodeHandle, group: &str, p: Proposal) {
    if let Err(e) = crm::send(h, group.to_string(), Mode::Total, p.encode()).await {
        tracing::debug!(%group, error = %e, "proposal not sent");
    }
}

/// The home's current status of `id`, as its checks say.
async fn observed(h: &NodeHandle, id: &ComponentId, view: u64) -> Option<Proposal> {
    let c = own(h)
        .await
        .ok()?
        .into_iter()
        .find(|o| o.registration.id == *id)?;
    Some(Proposal::Observed {
        status: c.health.status,
        reason: c.health.reason.clone(),
        time: crate::node::now_micros(),
        view,
    })
}

/// One member's task, until it leaves the group.
async fn member(h: NodeHandle, id: ComponentId, home: bool) {
    let group = group_of(&id);
    let leaf = h.info().leaf.clone();
    let run = async {
        let mut events = crm::follow(&h, group.clone()).await.ok()?;
        let mut statuses = if home {
            Some(changes(&h).await.ok()?.0)
        } else {
            None
        };
        // The view this member is in, which the home's proposals carry.
        let mut in_view = crm::view(&h, group.clone())
            .await
            .ok()
            .flatten()
            .map_or(0, |g| g.view.id);
        if home && let Some(p) = observed(&h, &id, in_view).await {
            propose(&h, &group, p).await;
        }
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Ok(GroupEvent::View { view, .. }) => {
                        in_view = in_view.max(view.id);
                        if home {
                            // A home back in a view says again what it sees.
                            if let Some(p) = observed(&h, &id, in_view).await {
                                propose(&h, &group, p).await;
                            }
                        } else if *view.coordinator().zone == *leaf.as_str() {
                            let gone = verdicts(&h, &id).await.and_then(|v| {
                                let home = v.home()?.to_string();
                                (!view.members.iter().any(|m| *m.zone == *home)).then_some(())
                            });
                            if gone.is_some() {
                                let p = Proposal::HomeLost { view: view.id, time: crate::node::now_micros() };
                                propose(&h, &group, p).await;
                            }
                        }
                    }
                    Ok(GroupEvent::Left { .. }) | Err(RecvError::Closed) => return Some(()),
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                },
                c = async {
                    match statuses.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match c {
                    Ok(c) if c.id == id && c.zone == leaf => {
                        let p = Proposal::Observed { status: c.status, reason: c.reason, time: c.time, view: in_view };
                        propose(&h, &group, p).await;
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return Some(()),
                },
            }
        }
    };
    run.await;
    RUNNING.lock().expect("lock").remove(&key(&h, &group));
}

/// Keeps this agent in the group of every consensus component it
/// registered (again after a restart), and out of the groups of those it
/// deregistered; ends when the node stops.
pub async fn supervise(h: NodeHandle) {
    let mut homes: BTreeSet<ComponentId> = BTreeSet::new();
    loop {
        tokio::time::sleep(SUPERVISE).await;
        let mine = match own(&h).await {
            Ok(m) => m,
            Err(ChmCallError::Node(NodeError::Stopped)) => return,
            Err(_) => continue,
        };
        let now: BTreeSet<ComponentId> = mine
            .iter()
            .filter(|o| o.registration.consensus)
            .map(|o| o.registration.id.clone())
            .collect();
        for id in &now {
            if let Err(e) = ensure_member(&h, id, true).await {
                tracing::warn!(%id, error = %e, "cannot join the consensus group");
            }
        }
        for gone in homes.difference(&now) {
            let _ = crm::leave(&h, group_of(gone)).await;
        }
        homes = now;
    }
}

/// A watch line of a verdict: the weak level's fields, with the epoch.
pub fn verdict_json(id: &ComponentId, zone: &str, v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "id": id.as_str(),
        "status": v.status.as_str(),
        "previous": v.previous.unwrap_or(v.status).as_str(),
        "time": super::views::time(v.time),
        "time_us": v.time,
        "zone": zone,
        "reason": v.reason,
        "epoch": v.epoch,
        "level": "consensus",
        "by": v.by,
    })
}
