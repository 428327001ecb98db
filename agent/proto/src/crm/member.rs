//! Who is in a group: members, views and the ballots that order view
//! changes.

use std::sync::Arc;

/// One incarnation of a member: its agent's address and the incarnation
/// of the agent's CRM service. Nothing is on disk, so a restarted agent is
/// a new incarnation and joins again as a new member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    pub addr: Arc<str>,
    pub inc: u64,
    /// The agent's leaf zone, for people to read (`from` in events).
    pub zone: Arc<str>,
}

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.addr, self.inc)
    }
}

/// A numbered view: the members in rank order. The first is the
/// coordinator, the total-order sequencer and the one that runs the next
/// view change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: u64,
    pub members: Vec<MemberId>,
}

impl View {
    pub fn coordinator(&self) -> &MemberId {
        &self.members[0]
    }

    pub fn rank_of(&self, m: &MemberId) -> Option<usize> {
        self.members.iter().position(|x| x == m)
    }

    /// The rank of the member at `addr` (one member per agent in a view).
    pub fn rank_at(&self, addr: &str) -> Option<usize> {
        self.members.iter().position(|x| &*x.addr == addr)
    }

    pub fn contains(&self, m: &MemberId) -> bool {
        self.rank_of(m).is_some()
    }

    /// Members a view change needs: a strict majority of this view.
    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

/// A proposal number for the view after the current one: higher wins;
/// equal numbers are ordered by proposer, so no two proposals tie.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    pub n: u64,
    pub by: MemberId,
}
