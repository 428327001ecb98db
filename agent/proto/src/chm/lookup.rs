//! Looking components up from any agent, as a DNS resolver does,
//! iteratively and without a central server.
//!
//! The asking agent first reads what it holds itself: the leaf rows of its
//! own leaf zone (every component of its neighbours, exactly), then, for
//! every zone on its path from the bottom up, the Bloom filters of the
//! sibling zones. Each sibling whose filter matches is a candidate, nearest
//! first. It asks a contact of a candidate ([`Query`]); the contact, which
//! holds the tables of the candidate zone and of every zone below it on its
//! own path, answers the same way ([`Answer`]): the matching components of
//! its own leaf zone, and referrals to the matching zones it cannot read.
//! A contact that does not answer in time is replaced by the next contact
//! of the same zone. A few queries run at once; a lookup by id ends at the
//! first record, a search by keyword once nothing nearer than its results
//! is left to ask.

use super::qos::{Level, QosView};
use super::registry::{ComponentId, Status};
use crate::path::ZonePath;
use crate::row::Micros;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// Queries of one search in flight at once.
pub const PARALLEL: usize = 4;
/// Queries one search sends at most.
pub const MAX_QUERIES: usize = 64;
/// Contacts of one zone tried before giving it up.
pub const MAX_TRIES: usize = 3;
/// Most records one answer or one search returns.
pub const MAX_RECORDS: usize = 32;
/// Most records one listing returns.
pub const MAX_LISTED: usize = 512;
/// Most records one answer to a listing carries (within [`ANSWER_BYTES`]).
pub const MAX_ANSWER_LISTED: usize = 256;
/// Encoded bytes of records one answer carries at most.
pub const ANSWER_BYTES: usize = 32 * 1024;
/// Most referrals one answer carries, and contacts per referral.
pub const MAX_REFERRALS: usize = 64;
pub const MAX_CONTACTS: usize = 8;

/// What is looked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Want {
    Id(ComponentId),
    Keyword(String),
    /// Every component below the zone asked about (a listing).
    All,
}

/// Asks a contact of `zone` for what it holds of `want` below `zone`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    pub qid: u64,
    pub want: Want,
    pub zone: ZonePath,
}

/// A zone to ask next, with its contacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub zone: ZonePath,
    pub contacts: Vec<Arc<str>>,
}

/// A contact's answer: whether it lies in the zone asked about, the
/// records it read, and the zones it referred to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub qid: u64,
    pub inside: bool,
    pub records: Vec<Record>,
    pub referrals: Vec<Referral>,
    /// Records were left out to keep the answer within its budget.
    pub truncated: bool,
}

/// What a lookup tells of a component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: ComponentId,
    pub status: Status,
    pub reason: String,
    /// The leaf zone of the component's agent.
    pub zone: ZonePath,
    pub since: Micros,
    /// Who judged it: its agent, or the neighbours that hold that agent dead.
    pub observers: Vec<ZonePath>,
    /// How old the knowledge was when the answering agent read it.
    pub age: Micros,
    pub keywords: Vec<String>,
    pub address: Option<String>,
    pub qos: QosView,
    /// The gossip address of the component's agent.
    pub agent: Arc<str>,
}

/// Why a lookup found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no component {0} is known anywhere in the zone tree")]
    NotFound(ComponentId),
}

/// A candidate zone of a search.
#[derive(Debug, Clone)]
pub(super) struct Candidate {
    pub zone: ZonePath,
    pub contacts: Vec<Arc<str>>,
    pub tries: usize,
    /// Levels up from the asking agent to the common ancestor.
    pub distance: usize,
}

/// One lookup or keyword search of this agent.
#[derive(Debug)]
pub(super) struct Search {
    pub want: Want,
    /// Only records and zones in this zone count (the root but for listings).
    pub within: ZonePath,
    pub limit: usize,
    pub found: Vec<(usize, Record)>,
    pub queue: Vec<Candidate>,
    pub inflight: usize,
    pub sent: usize,
    pub seen: BTreeSet<ZonePath>,
    /// Some zone could not be asked, or answered with records left out.
    pub truncated: bool,
}

impl Search {
    pub fn new(want: Want, limit: usize) -> Search {
        Search {
            want,
            within: ZonePath::root(),
            limit,
            found: Vec::new(),
            queue: Vec::new(),
            inflight: 0,
            sent: 0,
            seen: BTreeSet::new(),
            truncated: false,
        }
    }

    /// Queues a zone unless it was queued before.
    pub fn offer(&mut self, me: &ZonePath, zone: ZonePath, contacts: Vec<Arc<str>>) {
        let related = self.within.contains(&zone) || zone.contains(&self.within);
        if !related || contacts.is_empty() || !self.seen.insert(zone.clone()) {
            return;
        }
        let distance = me.depth() - me.common_depth(&zone).min(me.depth());
        self.queue.push(Candidate {
            zone,
            contacts: contacts.into_iter().take(MAX_CONTACTS).collect(),
            tries: 0,
            distance,
        });
        // Nearest last, so that pop takes it.
        self.queue.sort_by_key(|c| std::cmp::Reverse(c.distance));
    }

    pub fn add_records(&mut self, me: &ZonePath, records: impl IntoIterator<Item = Record>) {
        let cap = match self.want {
            Want::All => self.limit,
            _ => MAX_RECORDS * 2,
        };
        for r in records {
            if self.found.len() >= cap {
                break;
            }
            if !self.within.contains(&r.zone)
                || self
                    .found
                    .iter()
                    .any(|(_, f)| f.id == r.id && f.zone == r.zone)
            {
                continue;
            }
            let d = me.depth() - me.common_depth(&r.zone).min(me.depth());
            self.found.push((d, r));
        }
    }

    /// True when nothing more is worth asking.
    pub fn finished(&self) -> bool {
        match self.want {
            Want::Id(_) => !self.found.is_empty() || self.exhausted(),
            Want::Keyword(_) => {
                let usable = self.providers_by_distance();
                let enough = usable.len() >= self.limit
                    && self
                        .queue
                        .iter()
                        .all(|c| c.distance > usable[self.limit - 1].0);
                (enough && self.inflight == 0) || self.exhausted()
            }
            Want::All => self.found.len() >= self.limit || self.exhausted(),
        }
    }

    /// Whether a listing saw every zone it was referred to, in full.
    pub fn complete(&self) -> bool {
        !self.truncated
            && self.queue.is_empty()
            && self.inflight == 0
            && self.found.len() < self.limit
    }

    /// Every record found, nearest zone first, then by zone and id.
    pub fn all(&self) -> Vec<Record> {
        let mut v: Vec<&(usize, Record)> = self.found.iter().collect();
        v.sort_by(|a, b| (a.0, &a.1.zone, &a.1.id).cmp(&(b.0, &b.1.zone, &b.1.id)));
        v.into_iter().map(|(_, r)| r.clone()).collect()
    }

    fn exhausted(&self) -> bool {
        self.inflight == 0 && (self.queue.is_empty() || self.sent >= MAX_QUERIES)
    }

    fn providers_by_distance(&self) -> Vec<(usize, &Record)> {
        let mut v: Vec<(usize, &Record)> = self
            .found
            .iter()
            .filter(|(_, r)| r.status == Status::Passing && r.qos.level != Level::Severe)
            .map(|(d, r)| (*d, r))
            .collect();
        v.sort_by(|a, b| {
            (a.0, a.1.qos.level, &a.1.id, &a.1.zone).cmp(&(b.0, b.1.qos.level, &b.1.id, &b.1.zone))
        });
        v
    }

    /// The providers found: passing, not severe, nearest zone first, then
    /// ok before unknown before moderate.
    pub fn providers(&self) -> Vec<Record> {
        self.providers_by_distance()
            .into_iter()
            .take(self.limit)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The record of a lookup by id: the nearest found.
    pub fn record(&self) -> Option<Record> {
        self.found
            .iter()
            .min_by_key(|(d, _)| *d)
            .map(|(_, r)| r.clone())
    }
}
