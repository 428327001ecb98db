//! An external machine's runtime half: the feed of ordered requests a
//! separate process follows, and the answers and states it sends back
//! (`armillary_proto::crm::external`).
//!
//! One process follows a group at a time. Each follow is a session; a new
//! one replaces the old (a process restarted before its old connection
//! was seen closed takes over), and answers of a replaced session are
//! refused, so two processes never answer for one member. Every session
//! starts from the replicated base state and the whole log after it.

use super::endpoint::serving;
use super::{CrmCallError, CrmGlue, ServeKind, with_crm};
use crate::node::NodeHandle;
use crate::row::Micros;
use armillary_proto::crm::{Crm, External, Logged, Reply};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Requests handed to a process per batch.
const BATCH: usize = 512;
/// How often a waiting feed checks it is still the group's session.
const RECHECK: Duration = Duration::from_secs(1);

/// The process following one group.
pub(super) struct Slot {
    session: u64,
    pub(super) notify: Arc<Notify>,
}

/// What a process is told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    /// Start from this state, the service's after position `at` (empty
    /// for a new group); the requests after it follow.
    Restore {
        session: u64,
        at: u64,
        state: Vec<u8>,
    },
    /// Run this request and answer it.
    Apply(Logged),
    /// Hand over the state after the last request answered, so the log
    /// before it can go.
    Snapshot { at: u64 },
}

/// A process's place in a group's requests.
pub struct MachineFeed {
    group: Arc<str>,
    session: u64,
    notify: Arc<Notify>,
    generation: Option<u64>,
    sent: u64,
    /// The answered position the state was last asked at.
    asked: Option<u64>,
}

/// Starts a session for the process following `group`, which this agent
/// serves with an external machine; it replaces any earlier session.
pub async fn attach(h: &NodeHandle, group: String) -> Result<MachineFeed, CrmCallError> {
    with_crm(h, move |c, _, glue: &mut CrmGlue, _| {
        let name: Arc<str> = group.as_str().into();
        // The session's first feed starts the process from the base.
        external(c, &group)?;
        glue.sessions += 1;
        let session = glue.sessions;
        let slot = glue.machines.entry(name.clone()).or_insert_with(|| Slot {
            session,
            notify: Arc::new(Notify::new()),
        });
        slot.session = session;
        // The replaced session's feed wakes up and finds it is replaced.
        slot.notify.notify_waiters();
        Ok(MachineFeed {
            group: name,
            session,
            notify: slot.notify.clone(),
            generation: None,
            sent: 0,
            asked: None,
        })
    })
    .await
}

impl MachineFeed {
    /// The next events for the process, waiting until there are some.
    /// Fails once the session is replaced or this agent left the group.
    pub async fn next(&mut self, h: &NodeHandle) -> Result<Vec<MachineEvent>, CrmCallError> {
        loop {
            let notified = self.notify.notified();
            let (group, session) = (self.group.clone(), self.session);
            let place = (self.generation, self.sent, self.asked);
            let (events, place) = with_crm(h, move |c, _, glue: &mut CrmGlue, _| {
                let ext = external(c, &group)?;
                if glue.machines.get(&group).map(|s| s.session) != Some(session) {
                    return Err(CrmCallError::Superseded {
                        group: group.to_string(),
                        session,
                    });
                }
                Ok(feed(ext, session, place))
            })
            .await?;
            (self.generation, self.sent, self.asked) = place;
            if !events.is_empty() {
                return Ok(events);
            }
            let _ = tokio::time::timeout(RECHECK, notified).await;
        }
    }
}

type Place = (Option<u64>, u64, Option<u64>);

/// What the process has not been told yet, from its place.
fn feed(ext: &mut External, session: u64, place: Place) -> (Vec<MachineEvent>, Place) {
    let (mut generation, mut sent, mut asked) = place;
    let mut out = Vec::new();
    if generation != Some(ext.generation()) {
        // A new session, or the state was replaced by a state transfer.
        generation = Some(ext.generation());
        ext.restart();
        let (at, state) = ext.base();
        out.push(MachineEvent::Restore {
            session,
            at,
            state: state.to_vec(),
        });
        sent = at;
        asked = None;
    }
    for e in ext.after(sent, BATCH) {
        sent = e.at;
        out.push(MachineEvent::Apply(e.clone()));
    }
    let (base_at, _) = ext.base();
    let due = asked
        .is_none_or(|a| base_at >= a || ext.answered() >= a + ext.compaction_interval() as u64);
    if ext.wants_state() && due {
        asked = Some(ext.answered());
        out.push(MachineEvent::Snapshot { at: ext.answered() });
    }
    (out, (generation, sent, asked))
}

/// Takes the answers of `session`'s process for `group` (in order, each
/// for the position after the last) and, with `state`, its state after a
/// position answered; each answered client gets its reply. Gives the
/// last position answered.
pub async fn answer(
    h: &NodeHandle,
    group: String,
    session: u64,
    replies: Vec<(u64, Vec<u8>)>,
    state: Option<(u64, Vec<u8>)>,
) -> Result<u64, CrmCallError> {
    with_crm(h, move |c, _, glue: &mut CrmGlue, _| {
        let ext = external(c, &group)?;
        let name: Arc<str> = group.as_str().into();
        if glue.machines.get(&name).map(|s| s.session) != Some(session) {
            return Err(CrmCallError::Superseded { group, session });
        }
        // The answers before a refused one stand, and their clients hear.
        for (at, reply) in replies {
            let (client, seq) = ext.answer(at, &reply)?;
            if let Some(waiters) = glue.waiting.remove(&(name.clone(), client, seq)) {
                let bytes = Reply::Done(reply).encode();
                for w in waiters {
                    let _ = w.send(bytes.clone());
                }
            }
        }
        if let Some((at, state)) = state {
            ext.take_state(at, state)?;
        }
        Ok(ext.answered())
    })
    .await
}

/// The external machine of `group` at this agent.
fn external<'a>(c: &'a mut Crm, group: &str) -> Result<&'a mut External, CrmCallError> {
    Ok(serving(c, group, ServeKind::External)?
        .replica_as::<External>()
        .expect("an external group runs an external machine"))
}

/// Leaves each of `groups` whose process fell so far behind (or never
/// came) that its log is full: the member cannot keep the group's state
/// without it.
pub(super) fn leave_if_full(crm: &mut Crm, groups: &BTreeSet<Arc<str>>, now: Micros) {
    for group in groups {
        let full = crm
            .group_mut(group)
            .and_then(|g| g.replica_as::<External>())
            .filter(|e| e.is_full())
            .map(|e| e.backlog());
        if let Some(backlog) = full {
            tracing::warn!(%group, backlog, "the external machine fell behind; leaving the group");
            let _ = crm.leave(now, group);
        }
    }
}
