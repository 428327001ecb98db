//! CHM's consensus level: the verdicts on a component agreed in a CRM
//! group, so that every interested agent acts on the same sequence of
//! `(epoch, status)` and no two act on different ones (no split brain).
//!
//! The group `chm.ID` is formed by the component's own agent (its *home*,
//! which runs the checks) and the agents that watch it, up to
//! [`MAX_MEMBERS`]. Members propose, in total order:
//! - the home proposes each status its checks give ([`Proposal::Observed`]);
//! - when a view without the home is installed, its coordinator proposes
//!   [`Proposal::HomeLost`]: the component is critical, `agent unreachable`.
//!
//! [`Verdicts`], the group's replica, applies proposals in the group's
//! total order with one rule: a proposal that changes the status is a new
//! verdict, numbered by the next epoch; others are ignored. Only the home
//! (the member whose zone the first proposal named) may propose a status.
//! Because CRM delivers only in a primary partition, a minority side
//! (say the home cut off) issues no verdict at all: the majority declares
//! the home lost, and the home learns the verdicts when it comes back.

use super::registry::{ComponentId, Status};
use crate::crm::{MemberId, Mode, Replica};
use crate::row::Micros;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// The group of a consensus component.
pub const GROUP_PREFIX: &str = "chm.";
/// Members of a consensus group: the home and the first watchers.
pub const MAX_MEMBERS: usize = 5;
/// Verdicts each member keeps (the latest is the current one).
pub const KEPT: usize = 64;
/// The reason of a verdict for a home that left the group's view.
pub const HOME_LOST: &str = "agent unreachable (left the consensus group's view)";
/// First byte of a proposal: tells them from other group messages.
const TAG: u8 = 0xC4;
/// Longest reason carried.
const MAX_REASON: usize = 256;

/// The CRM group of component `id`.
pub fn group_of(id: &ComponentId) -> String {
    format!("{GROUP_PREFIX}{}", id.as_str())
}

/// The component a group name is for, if it is a consensus group.
pub fn component_of(group: &str) -> Option<ComponentId> {
    ComponentId::parse(group.strip_prefix(GROUP_PREFIX)?).ok()
}

/// What a member proposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "p", rename_all = "snake_case")]
pub enum Proposal {
    /// The home's checks gave `status`.
    Observed {
        status: Status,
        reason: String,
        time: Micros,
        /// The view the home was in when it proposed: a `HomeLost` of an
        /// earlier view, ordered after it, no longer holds.
        #[serde(default)]
        view: u64,
    },
    /// A view without the home was installed.
    HomeLost { view: u64, time: Micros },
}

impl Proposal {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TAG];
        serde_json::to_writer(&mut out, self).expect("a proposal serializes");
        out
    }

    pub fn decode(data: &[u8]) -> Option<Proposal> {
        match data.split_first() {
            Some((&TAG, rest)) if rest.len() <= 4 * MAX_REASON + 256 => {
                serde_json::from_slice(rest).ok()
            }
            _ => None,
        }
    }
}

/// One agreed verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub epoch: u64,
    pub status: Status,
    pub previous: Option<Status>,
    pub reason: String,
    /// When the proposal behind it was made (the proposer's clock).
    pub time: Micros,
    /// The zone of the member that proposed it.
    pub by: String,
}

impl Verdict {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a verdict serializes")
    }

    pub fn decode(b: &[u8]) -> Option<Verdict> {
        serde_json::from_slice(b).ok()
    }
}

/// The replicated verdicts of one component: the group's replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdicts {
    /// The zone of the home, set by its first proposal.
    home: Option<String>,
    /// The latest view the home proposed from.
    #[serde(default)]
    home_view: u64,
    kept: VecDeque<Verdict>,
}

impl Verdicts {
    pub fn current(&self) -> Option<&Verdict> {
        self.kept.back()
    }

    pub fn home(&self) -> Option<&str> {
        self.home.as_deref()
    }

    pub fn kept(&self) -> impl Iterator<Item = &Verdict> {
        self.kept.iter()
    }

    /// Applies one proposal from `from`: the new verdict, if it makes one.
    pub fn propose(&mut self, from: &MemberId, p: Proposal) -> Option<Verdict> {
        let (status, reason, time) = match p {
            Proposal::Observed {
                status,
                reason,
                time,
                view,
            } => {
                let home = self.home.get_or_insert_with(|| from.zone.to_string());
                if *home != *from.zone {
                    return None;
                }
                self.home_view = self.home_view.max(view);
                (status, reason, time)
            }
            Proposal::HomeLost { view, time } => {
                self.home.as_ref()?;
                if view <= self.home_view {
                    // The home spoke from this view or a later one.
                    return None;
                }
                (Status::Critical, HOME_LOST.to_string(), time)
            }
        };
        let previous = self.current().map(|v| v.status);
        if previous == Some(status) {
            return None;
        }
        let v = Verdict {
            epoch: self.current().map_or(1, |v| v.epoch + 1),
            status,
            previous,
            reason: reason.chars().take(MAX_REASON).collect(),
            time,
            by: from.zone.to_string(),
        };
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(v.clone());
        Some(v)
    }

    /// Reads the state a member's replica snapshot holds.
    pub fn from_snapshot(b: &[u8]) -> Option<Verdicts> {
        let v: Verdicts = serde_json::from_slice(b).ok()?;
        let ordered = v
            .kept
            .iter()
            .zip(v.kept.iter().skip(1))
            .all(|(a, b)| b.epoch == a.epoch + 1);
        (v.kept.len() <= KEPT && ordered).then_some(v)
    }
}

impl Replica for Verdicts {
    fn apply(&mut self, from: &MemberId, mode: Mode, data: &[u8]) -> Option<Vec<u8>> {
        if mode.stream() != crate::crm::wire::Stream::Total {
            return None;
        }
        let p = Proposal::decode(data)?;
        self.propose(from, p).map(|v| v.encode())
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("verdicts serialize")
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        *self = Verdicts::from_snapshot(state).ok_or("not a verdict log")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(zone: &str) -> MemberId {
        MemberId {
            addr: zone.into(),
            inc: 1,
            zone: zone.into(),
        }
    }

    fn observed(status: Status) -> Proposal {
        observed_in(status, 0)
    }

    fn observed_in(status: Status, view: u64) -> Proposal {
        Proposal::Observed {
            status,
            reason: "check".into(),
            time: 1,
            view,
        }
    }

    #[test]
    fn a_home_lost_older_than_the_homes_last_word_makes_no_verdict() {
        let mut v = Verdicts::default();
        let home = m("/a/h");
        v.propose(&home, observed_in(Status::Passing, 5)).unwrap();
        // Lost in view 4, but the home spoke from view 5: ordered late.
        assert!(
            v.propose(&m("/b/w"), Proposal::HomeLost { view: 4, time: 2 })
                .is_none()
        );
        assert!(
            v.propose(&m("/b/w"), Proposal::HomeLost { view: 5, time: 2 })
                .is_none()
        );
        let lost = v
            .propose(&m("/b/w"), Proposal::HomeLost { view: 6, time: 3 })
            .unwrap();
        assert_eq!((lost.epoch, lost.status), (2, Status::Critical));
    }

    #[test]
    fn a_change_makes_the_next_epoch_and_repeats_make_none() {
        let mut v = Verdicts::default();
        let home = m("/a/h");
        assert_eq!(
            v.propose(&home, observed(Status::Critical)).unwrap().epoch,
            1
        );
        assert!(v.propose(&home, observed(Status::Critical)).is_none());
        let second = v.propose(&home, observed(Status::Passing)).unwrap();
        assert_eq!((second.epoch, second.previous), (2, Some(Status::Critical)));
        // Only the home proposes statuses; anyone may say it is lost.
        assert!(v.propose(&m("/b/w"), observed(Status::Warning)).is_none());
        let lost = v
            .propose(&m("/b/w"), Proposal::HomeLost { view: 3, time: 2 })
            .unwrap();
        assert_eq!((lost.epoch, lost.status), (3, Status::Critical));
        assert!(
            v.propose(&m("/c/w"), Proposal::HomeLost { view: 4, time: 3 })
                .is_none()
        );
        assert_eq!(
            v.propose(&home, observed(Status::Passing)).unwrap().epoch,
            4
        );
    }

    #[test]
    fn replicas_applying_one_order_agree_and_snapshots_are_checked() {
        let props = [
            (m("/a/h"), observed(Status::Passing)),
            (m("/b/w"), Proposal::HomeLost { view: 2, time: 5 }),
            (m("/a/h"), observed(Status::Passing)),
            (m("/a/h"), observed(Status::Warning)),
        ];
        let mut a = Verdicts::default();
        let mut b = Verdicts::default();
        let va: Vec<_> = props
            .iter()
            .filter_map(|(f, p)| a.apply(f, Mode::Total, &p.encode()))
            .collect();
        let vb: Vec<_> = props
            .iter()
            .filter_map(|(f, p)| b.apply(f, Mode::Safe, &p.encode()))
            .collect();
        assert_eq!(va, vb);
        assert_eq!(va.len(), 4);
        assert!(
            a.apply(&m("/a/h"), Mode::Fifo, &props[0].1.encode())
                .is_none()
        );
        let mut c = Verdicts::default();
        c.restore(&a.snapshot()).unwrap();
        assert_eq!(c, a);
        assert!(c.restore(b"{}").is_err() || c.kept.is_empty());
        let mut bad: serde_json::Value = serde_json::from_slice(&a.snapshot()).unwrap();
        bad["kept"][1]["epoch"] = 9.into();
        assert!(Verdicts::from_snapshot(&serde_json::to_vec(&bad).unwrap()).is_none());
        assert!(Proposal::decode(b"\xC4{").is_none());
        assert_eq!(
            component_of(&group_of(&ComponentId::parse("web-1").unwrap())),
            ComponentId::parse("web-1").ok()
        );
    }
}
