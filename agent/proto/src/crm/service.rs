//! The CRM service: this agent's groups, their messages in the service
//! envelope, and the group directory in the zone tree.
//!
//! - **Directory.** A member publishes `crm_groups`, a list of
//!   `NAME=ADDR` for the groups it belongs to; the built-in aggregation
//!   [`GROUPS_AFC`] carries a few up to every zone, so an agent that joins
//!   a group finds a member to ask. An agent that finds none creates the
//!   group, alone in its first view.
//! - **Large messages.** A message longer than [`MAX_PART`] (a flush
//!   report, a decision, a joiner's state) goes as numbered chunks and is
//!   put together again on arrival, within bounds.

use super::group::{Group, GroupConfig, GroupEvent, Phase, Replica, SendRefused};
use super::member::{MemberId, View};
use super::wire::{CrmMsg, MAX_ASSEMBLED, MAX_GROUP_NAME, MAX_PART, Mode, split};
use crate::host::{Core, Peer, Service, ServiceId, Transmit, Zones};
use crate::refusal::Refusal;
use crate::row::Micros;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use zone_sql::Value;

/// The built-in aggregation that lists groups and a member of each per zone.
pub const GROUPS_AFC: &str = "SELECT FIRST(16, crm_groups) AS crm_groups";

const MS: Micros = 1_000;
/// Chunked messages being put together at once, all peers together.
const MAX_PARTIALS: usize = 64;
/// Events kept for a driver that does not take them; the oldest go first.
const MAX_EVENTS: usize = 1 << 16;
/// A chunked message not complete after this is dropped.
const PARTIAL_TIMEOUT: Micros = 10_000 * MS;

#[derive(Debug, Clone)]
pub struct CrmConfig {
    pub group: GroupConfig,
    /// Groups this agent belongs to at once.
    pub max_groups: usize,
}

impl Default for CrmConfig {
    fn default() -> CrmConfig {
        CrmConfig {
            group: GroupConfig::default(),
            max_groups: 64,
        }
    }
}

/// Why a request of the application was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrmError {
    #[error("bad group name {0:?}: use 1 to {MAX_GROUP_NAME} letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("no group {0} on this agent; join it first")]
    UnknownGroup(String),
    #[error("this agent is already in group {0}")]
    AlreadyMember(String),
    #[error("this agent is in {0} groups, the most it takes")]
    TooManyGroups(usize),
    #[error(transparent)]
    Send(#[from] SendRefused),
}

/// Checks a group name: what the directory and the API carry.
pub fn check_name(name: &str) -> Result<(), CrmError> {
    if crate::limits::is_plain_name(name, MAX_GROUP_NAME) {
        Ok(())
    } else {
        Err(CrmError::BadName(
            name.chars().take(MAX_GROUP_NAME + 8).collect(),
        ))
    }
}

/// The driver's notice that [`Crm::take_events`] has events to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsReady;

/// A group as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: Arc<str>,
    pub me: MemberId,
    pub phase: Phase,
    pub view: View,
    pub unstable: usize,
}

struct Partial {
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
    started: Micros,
}

/// The CRM service of one agent.
pub struct Crm {
    cfg: CrmConfig,
    inc: Option<u64>,
    groups: BTreeMap<Arc<str>, Group>,
    out: VecDeque<Transmit<CrmMsg>>,
    /// Events for the application, taken with [`Crm::take_events`].
    events: VecDeque<GroupEvent>,
    /// Notices for the driver: events wait to be taken.
    ready: bool,
    partials: BTreeMap<(Arc<str>, u64), Partial>,
    next_chunk: u64,
    published: Option<Vec<Arc<str>>>,
    /// Per group: members the zone tree lists, with the size of their view.
    directory: BTreeMap<Arc<str>, Vec<(Arc<str>, usize)>>,
    next_merge: Micros,
    /// Chunked messages dropped (incomplete, over the bounds).
    pub chunks_dropped: u64,
    /// Events dropped because nobody took them.
    pub events_dropped: u64,
}

impl Crm {
    pub fn new(cfg: CrmConfig) -> Crm {
        Crm {
            cfg,
            inc: None,
            groups: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            ready: false,
            partials: BTreeMap::new(),
            next_chunk: 1,
            published: None,
            directory: BTreeMap::new(),
            next_merge: 0,
            chunks_dropped: 0,
            events_dropped: 0,
        }
    }

    fn me(&mut self, zones: &Zones<'_>) -> MemberId {
        let inc = *self.inc.get_or_insert(zones.now().max(1));
        MemberId {
            addr: zones.addr().clone(),
            inc,
            zone: zones.leaf().as_arc().clone(),
        }
    }

    /// Joins `name` through `contacts`, or through the members the zone
    /// tree lists when none are given; creates it when nobody has it.
    pub fn join(
        &mut self,
        zones: &Zones<'_>,
        name: &str,
        contacts: Vec<Arc<str>>,
        replica: Option<Box<dyn Replica>>,
    ) -> Result<(), CrmError> {
        check_name(name)?;
        if self.groups.contains_key(name) {
            return Err(CrmError::AlreadyMember(name.to_string()));
        }
        if self.groups.len() >= self.cfg.max_groups {
            return Err(CrmError::TooManyGroups(self.cfg.max_groups));
        }
        let now = zones.now();
        let me = self.me(zones);
        let contacts: Vec<Arc<str>> = if contacts.is_empty() {
            self.read_directory(zones);
            self.directory
                .get(name)
                .map(|l| l.iter().map(|(a, _)| a.clone()).collect())
                .unwrap_or_default()
        } else {
            contacts
        }
        .into_iter()
        .filter(|a| *a != me.addr)
        .collect();
        let name: Arc<str> = name.into();
        let mut g = if contacts.is_empty() {
            Group::create(now, name.clone(), me, self.cfg.group.clone())
        } else {
            Group::join(now, name.clone(), me, contacts, self.cfg.group.clone())
        };
        if let Some(r) = replica {
            g.set_replica(r);
        }
        self.groups.insert(name, g);
        self.drain();
        Ok(())
    }

    pub fn send(
        &mut self,
        now: Micros,
        name: &str,
        mode: Mode,
        data: Vec<u8>,
    ) -> Result<(), CrmError> {
        let g = self
            .groups
            .get_mut(name)
            .ok_or_else(|| CrmError::UnknownGroup(name.to_string()))?;
        g.send(now, mode, data)?;
        self.drain();
        Ok(())
    }

    /// Why `name` would refuse a message of `len` bytes now, if it would.
    pub fn refusal(&self, name: &str, len: usize) -> Result<Option<SendRefused>, CrmError> {
        let g = self
            .groups
            .get(name)
            .ok_or_else(|| CrmError::UnknownGroup(name.to_string()))?;
        Ok(g.refusal(len))
    }

    pub fn leave(&mut self, now: Micros, name: &str) -> Result<(), CrmError> {
        let g = self
            .groups
            .get_mut(name)
            .ok_or_else(|| CrmError::UnknownGroup(name.to_string()))?;
        g.leave(now);
        self.drain();
        Ok(())
    }

    /// Takes every event queued ([`Core::poll_event`] tells when there are some).
    pub fn take_events(&mut self) -> Vec<GroupEvent> {
        self.events.drain(..).collect()
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    pub fn group_mut(&mut self, name: &str) -> Option<&mut Group> {
        self.groups.get_mut(name)
    }

    pub fn info(&self, name: &str) -> Option<GroupInfo> {
        self.groups.get(name).map(|g| GroupInfo {
            name: g.name().clone(),
            me: g.me().clone(),
            phase: g.phase(),
            view: g.view().clone(),
            unstable: g.unstable(),
        })
    }

    pub fn groups(&self) -> Vec<GroupInfo> {
        self.groups.keys().filter_map(|n| self.info(n)).collect()
    }

    /// The members of group `name` the zone tree lists (agent address and
    /// the size of the view each is in): who a joiner would ask.
    pub fn listed(&mut self, zones: &Zones<'_>, name: &str) -> Vec<(Arc<str>, usize)> {
        self.read_directory(zones);
        self.directory.get(name).cloned().unwrap_or_default()
    }

    /// Groups and members the zone tree lists.
    fn read_directory(&mut self, zones: &Zones<'_>) {
        let mut found: BTreeMap<Arc<str>, Vec<(Arc<str>, usize)>> = BTreeMap::new();
        let mut add = |v: Option<&Value>| {
            if let Some(Value::List(items)) = v {
                for t in items.iter() {
                    let Some((n, rest)) = t.split_once('=') else {
                        continue;
                    };
                    let (a, size) = match rest.rsplit_once('#') {
                        Some((a, s)) => (a, s.parse().unwrap_or(1)),
                        None => (rest, 1),
                    };
                    if check_name(n).is_ok() && !a.is_empty() {
                        let list = found.entry(n.into()).or_default();
                        if !list.iter().any(|x| &*x.0 == a) && list.len() < 16 {
                            list.push((a.into(), size));
                        }
                    }
                }
            }
        };
        for z in zones.zones().iter().rev() {
            for r in zones.members(z).unwrap_or_default() {
                add(r.get("crm_groups"));
            }
            if let Some(a) = zones.aggregate(z) {
                add(a.get("crm_groups"));
            }
        }
        self.directory = found;
    }

    fn publish(&mut self, zones: &mut Zones<'_>) {
        let addr = zones.addr().clone();
        let list: Vec<Arc<str>> = self
            .groups
            .values()
            .filter(|g| matches!(g.phase(), Phase::Member))
            .take(16)
            .map(|g| format!("{}={addr}#{}", g.name(), g.view().members.len()).into())
            .collect();
        if self.published.as_ref() == Some(&list) {
            return;
        }
        let r = if list.is_empty() {
            zones.unpublish("crm_groups").map(|_| ())
        } else {
            zones.publish("crm_groups", Value::List(list.clone().into()))
        };
        match r {
            Ok(()) => self.published = Some(list),
            Err(e) => tracing::warn!(%e, "crm attribute not published"),
        }
    }

    /// Two agents that created one group at once (neither saw the other
    /// in the zone tree yet) end up in two groups of one name: a group of
    /// this agent alone, that delivered nothing yet, joins the other (the
    /// larger, or on a tie the one at the lower address).
    fn merge_lone_groups(&mut self, zones: &Zones<'_>) {
        let now = zones.now();
        if now < self.next_merge {
            return;
        }
        self.next_merge = now + 1_000 * MS;
        if !self
            .groups
            .values()
            .any(|g| g.phase() == Phase::Member && g.view().members.len() == 1)
        {
            return;
        }
        self.read_directory(zones);
        let mine = zones.addr().clone();
        let lone: Vec<Arc<str>> = self
            .groups
            .values()
            .filter(|g| {
                g.phase() == Phase::Member
                    && g.view().members.len() == 1
                    && g.stats.delivered == 0
                    && g.unstable() == 0
            })
            .map(|g| g.name().clone())
            .collect();
        for name in lone {
            let Some(list) = self.directory.get(&name) else {
                continue;
            };
            let best = list
                .iter()
                .filter(|(a, size)| *a != mine && (*size > 1 || *a < mine))
                .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
                .map(|(a, _)| a.clone());
            let Some(to) = best else { continue };
            let Some(mut old) = self.groups.remove(&name) else {
                continue;
            };
            let me = MemberId {
                inc: old.me().inc.max(now) + 1,
                ..old.me().clone()
            };
            tracing::info!(group = %name, %to, "another group of this name: joining it");
            let mut g = Group::join(
                now,
                name.clone(),
                me.clone(),
                vec![to],
                self.cfg.group.clone(),
            );
            if let Some(r) = old.take_replica() {
                g.set_replica(r);
            }
            self.events.push_back(GroupEvent::Rejoining {
                group: name.clone(),
                member: me,
                why: super::group::Rejoin::Merged,
            });
            self.ready = true;
            self.groups.insert(name, g);
        }
    }

    /// Moves what the groups produced out, and forgets the groups left.
    fn drain(&mut self) {
        let mut gone = Vec::new();
        for (name, g) in &mut self.groups {
            while let Some(t) = g.poll_transmit() {
                self.out.push_back(t);
            }
            while let Some(e) = g.poll_event() {
                if self.events.len() >= MAX_EVENTS {
                    self.events.pop_front();
                    self.events_dropped += 1;
                }
                self.events.push_back(e);
                self.ready = true;
            }
            if g.phase() == Phase::Left {
                gone.push(name.clone());
            }
        }
        for n in gone {
            self.groups.remove(&n);
        }
    }

    /// Puts a chunk away; gives the whole message once every chunk is in.
    fn assemble(
        &mut self,
        now: Micros,
        from: &Arc<str>,
        id: u64,
        index: u32,
        count: u32,
        bytes: Vec<u8>,
    ) -> Option<Vec<u8>> {
        self.partials
            .retain(|_, p| now.saturating_sub(p.started) < PARTIAL_TIMEOUT);
        let key = (from.clone(), id);
        if !self.partials.contains_key(&key) {
            if self.partials.len() >= MAX_PARTIALS
                || (count as usize).saturating_mul(MAX_PART) > MAX_ASSEMBLED
            {
                self.chunks_dropped += 1;
                return None;
            }
            self.partials.insert(
                key.clone(),
                Partial {
                    parts: vec![None; count as usize],
                    bytes: 0,
                    started: now,
                },
            );
        }
        let p = self.partials.get_mut(&key).expect("inserted");
        if p.parts.len() != count as usize || index as usize >= p.parts.len() {
            self.chunks_dropped += 1;
            self.partials.remove(&key);
            return None;
        }
        if p.parts[index as usize].is_none() {
            p.bytes += bytes.len();
            p.parts[index as usize] = Some(bytes);
        }
        if p.parts.iter().any(Option::is_none) {
            return None;
        }
        let p = self.partials.remove(&key).expect("present");
        let mut all = Vec::with_capacity(p.bytes);
        for part in p.parts.into_iter().flatten() {
            all.extend_from_slice(&part);
        }
        Some(all)
    }

    fn dispatch(&mut self, now: Micros, from: &Peer, msg: CrmMsg) {
        match msg {
            CrmMsg::Chunk {
                id,
                index,
                count,
                bytes,
            } => {
                for g in self.groups.values_mut() {
                    g.part_from(now, &from.addr);
                }
                if let Some(all) = self.assemble(now, &from.addr, id, index, count, bytes) {
                    match CrmMsg::decode(&all) {
                        Ok(CrmMsg::Chunk { .. }) | Err(_) => self.chunks_dropped += 1,
                        Ok(m) => self.dispatch(now, from, m),
                    }
                }
            }
            m => {
                let Some(name) = m.group().cloned() else {
                    return;
                };
                if let Some(g) = self.groups.get_mut(&name) {
                    g.handle(now, &from.addr, m);
                }
            }
        }
    }
}

impl Core for Crm {
    type Msg = CrmMsg;
    type Event = EventsReady;
    type Cx<'a> = Zones<'a>;

    fn handle(&mut self, now: Micros, from: &Peer, msg: CrmMsg, _zones: Zones<'_>) {
        self.dispatch(now, from, msg);
        self.drain();
    }

    fn handle_timeout(&mut self, now: Micros, mut zones: Zones<'_>) {
        for g in self.groups.values_mut() {
            if g.poll_timeout() <= now {
                g.handle_timeout(now);
            }
        }
        self.merge_lone_groups(&zones);
        self.drain();
        self.publish(&mut zones);
    }

    fn poll_timeout(&self) -> Micros {
        self.groups
            .values()
            .map(Group::poll_timeout)
            .min()
            .unwrap_or(Micros::MAX)
    }

    fn poll_transmit(&mut self) -> Option<Transmit<CrmMsg>> {
        let t = self.out.pop_front()?;
        let bytes = t.msg.encode();
        if bytes.len() <= MAX_PART {
            return Some(t);
        }
        let id = self.next_chunk;
        self.next_chunk += 1;
        let mut parts = split(id, &bytes).into_iter();
        let first = parts.next()?;
        // The other chunks go next, before anything queued after the message.
        for (i, m) in parts.enumerate() {
            self.out.insert(
                i,
                Transmit {
                    to: t.to.clone(),
                    msg: m,
                },
            );
        }
        Some(Transmit {
            to: t.to,
            msg: first,
        })
    }

    fn poll_event(&mut self) -> Option<EventsReady> {
        std::mem::take(&mut self.ready).then_some(EventsReady)
    }
}

impl Service for Crm {
    const ID: ServiceId = 11;
    const NAME: &'static str = "crm";

    /// Every zone lists a few groups and a member of each.
    fn aggregations() -> Vec<String> {
        vec![GROUPS_AFC.to_string()]
    }

    fn encode(msg: &CrmMsg) -> Vec<u8> {
        msg.encode()
    }

    fn decode(bytes: &[u8]) -> Result<CrmMsg, Refusal> {
        CrmMsg::decode(bytes).map_err(|_| Refusal::MalformedMessage)
    }
}
