//! The replicated endpoint's runtime half: joining a group as a serving
//! member, and taking a client's request, which goes to the group in safe
//! order and is answered once this member applied it
//! (`armillary_proto::crm::endpoint`).

use super::{CrmCallError, CrmGlue, join, proto, with_crm};
use crate::node::NodeHandle;
use proto::{Crm, CrmError, Endpoint, External, Group, GroupInfo, KvStore, Mode, Reply, Request};
use std::sync::Arc;
use std::time::Duration;

/// Requests waiting for replies at once, all groups together.
const MAX_WAITING: usize = 16_384;

/// The services a member can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeKind {
    /// The built-in key-value store.
    Kv,
    /// A separate process, fed the ordered requests through the API.
    External,
}

impl ServeKind {
    pub fn parse(s: &str) -> Option<ServeKind> {
        match s {
            "kv" => Some(ServeKind::Kv),
            "external" => Some(ServeKind::External),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ServeKind::Kv => "kv",
            ServeKind::External => "external",
        }
    }
}

/// Joins `group` as a serving member of `kind` and waits until a view
/// holds this agent. Serving a group this agent serves already gives its
/// view; being in it without serving is a conflict.
pub async fn serve(
    h: &NodeHandle,
    group: String,
    kind: ServeKind,
    contacts: Vec<Arc<str>>,
    wait: Duration,
) -> Result<GroupInfo, CrmCallError> {
    let replica: Box<dyn proto::Replica> = match kind {
        ServeKind::Kv => Box::new(Endpoint::new(KvStore::default())),
        ServeKind::External => Box::new(External::new()),
    };
    join_with(h, group, replica, contacts, wait).await
}

/// Joins `group` running `replica` beside it (a program's own
/// deterministic service) and waits until a view holds this agent.
pub async fn join_with(
    h: &NodeHandle,
    group: String,
    replica: Box<dyn proto::Replica>,
    contacts: Vec<Arc<str>>,
    wait: Duration,
) -> Result<GroupInfo, CrmCallError> {
    let g = group.clone();
    with_crm(h, move |c, z, _, _| {
        if let Some(existing) = c.group(&g) {
            return if existing.replica().is_some() {
                Ok(())
            } else {
                Err(CrmCallError::NotServing(g))
            };
        }
        c.join(&z, &g, contacts, Some(replica))?;
        Ok(())
    })
    .await?;
    let (info, _) = join(h, group, Vec::new(), wait).await?;
    Ok(info)
}

/// The members of `group` the zone tree lists, with their view's size.
pub async fn listed(h: &NodeHandle, group: String) -> Result<Vec<(Arc<str>, usize)>, CrmCallError> {
    with_crm(h, move |c, z, _, _| Ok(c.listed(&z, &group))).await
}

/// A snapshot of the replica this agent runs beside `group`.
pub async fn replica_snapshot(
    h: &NodeHandle,
    group: String,
) -> Result<Option<Vec<u8>>, CrmCallError> {
    with_crm(h, move |c, _, _, _| {
        Ok(c.group(&group)
            .and_then(|g| g.replica())
            .map(|r| r.snapshot()))
    })
    .await
}

/// Takes request `seq` of `client` for the group this agent serves as
/// `kind`: sends it in safe order and gives the reply once this member
/// applied it (or the reply the group gave the request the first time).
pub async fn request(
    h: &NodeHandle,
    group: String,
    kind: ServeKind,
    client: u64,
    seq: u64,
    op: Vec<u8>,
    wait: Duration,
) -> Result<Vec<u8>, CrmCallError> {
    let g: Arc<str> = group.as_str().into();
    let data = Request { client, seq, op }.encode();
    let rx = with_crm(h, move |c, _, glue: &mut CrmGlue, now| {
        serving(c, &g, kind)?;
        if glue.waiting.len() >= MAX_WAITING {
            return Err(CrmCallError::Busy(MAX_WAITING));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        c.send(now, &g, Mode::Safe, data)?;
        glue.waiting
            .entry((g.clone(), client, seq))
            .or_default()
            .push(tx);
        Ok(rx)
    })
    .await?;
    let no_reply = || CrmCallError::NoReply(group.clone(), wait.as_millis() as u64);
    let bytes = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(b)) => b,
        _ => {
            forget(h, group.clone(), client, seq).await;
            return Err(no_reply());
        }
    };
    match Reply::decode(&bytes) {
        Some(Reply::Done(r)) => Ok(r),
        Some(Reply::Stale { last }) => Err(CrmCallError::Stale { client, seq, last }),
        None => Err(no_reply()),
    }
}

/// `group` at this agent, which must serve it as `kind`.
pub(super) fn serving<'a>(
    c: &'a mut Crm,
    group: &str,
    kind: ServeKind,
) -> Result<&'a mut Group, CrmCallError> {
    let g = c
        .group_mut(group)
        .ok_or_else(|| CrmError::UnknownGroup(group.to_string()))?;
    if g.replica().is_none() {
        return Err(CrmCallError::NotServing(group.to_string()));
    }
    if g.replica_as::<External>().is_some() != (kind == ServeKind::External) {
        return Err(CrmCallError::OtherService {
            group: group.to_string(),
            asked: kind.name(),
        });
    }
    Ok(g)
}

/// Drops the waiters of a request given up on.
async fn forget(h: &NodeHandle, group: String, client: u64, seq: u64) {
    let _ = with_crm(h, move |_, _, glue: &mut CrmGlue, _| {
        let key = (Arc::<str>::from(group.as_str()), client, seq);
        if let Some(w) = glue.waiting.get_mut(&key) {
            w.retain(|tx| !tx.is_closed());
            if w.is_empty() {
                glue.waiting.remove(&key);
            }
        }
        Ok(())
    })
    .await;
}
