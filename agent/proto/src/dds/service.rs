//! The DDS service: channels over the zone tree.
//!
//! - **Directory.** A channel's creator publishes its descriptor in its
//!   leaf row (`dds_channels`); the built-in aggregation [`CHANNELS_AFC`] carries the
//!   descriptors up to every zone, so every agent of the zone finds it.
//!   Members publish the ids of their channels (`dds_member`), so that
//!   members of one zone find each other for gossip repair.
//! - **Tree.** For a channel of zone Z, the relay of a zone X inside Z is
//!   the first live contact (representative) of X. An agent that wants the
//!   channel joins the relay of the deepest zone on its path that it does
//!   not relay itself, so every join goes strictly up: no loops. Joins are
//!   soft state, refreshed every `join_period` and dropped after five
//!   periods without one; the parent answers each, and a child that hears
//!   nothing for five periods suspects it and joins the next contact. Frames for every member travel the tree both
//!   ways: from a publisher up to the root and down to every branch,
//!   each relay forwarding what it did not see before to every tree
//!   neighbour but the sender, each with its own bounded queue in the
//!   runtime's transport.
//! - **Members and relays.** An agent with local subscribers, or that
//!   publishes or created the channel, is a member: it runs the channel's
//!   stack. A relay with no local interest only forwards. Reliability is
//!   end to end, member to origin, in the stack; a relay that is also a
//!   member repairs its zone (it is the first one asked).
//! - **Subscribers.** Local subscribers (the runtime's streams) each have
//!   a bounded queue; when it is full the channel's [`SlowPolicy`]
//!   applies, to that subscriber alone.

use super::channel::{ChannelId, Descriptor, MAX_RETAIN, SlowPolicy, check_name};
use super::error::DdsError;
use super::layer::{Control, Dest, OriginId};
use super::params::Params;
use super::spec::{LayerKind, Spec};
use super::stack::{KeyBook, Stack, StackConfig, StackEvent};
use super::wire::{DdsMsg, FrameMsg};
use crate::host::{Core, Peer, Service, ServiceId, Transmit, Zones};
use crate::path::ZonePath;
use crate::refusal::Refusal;
use crate::row::Micros;
use ed25519_dalek::SigningKey;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use zone_sql::Value;

/// The built-in aggregation that lists the channels of every zone.
pub const CHANNELS_AFC: &str = "SELECT FIRST(16, dds_channels) AS dds_channels";

const MS: Micros = 1_000;
/// Frames relayed at most this many hops.
const MAX_TTL: u8 = 40;
/// Frames remembered per channel to drop copies that loop.
const SEEN_FRAMES: usize = 4096;

/// A subscriber's handle.
pub type SubId = u64;

#[derive(Debug, Clone)]
pub struct DdsConfig {
    /// The key this agent signs with (channels with `sign`).
    pub signer: Option<Arc<SigningKey>>,
    /// What its signed messages carry for the receivers' key book (its
    /// certificate, for [`super::CertKeys`]).
    pub proof: Arc<[u8]>,
    /// The keys origins sign with.
    pub keys: Option<Arc<dyn KeyBook>>,
    pub params: Params,
    /// How often the service looks at the zone tree and refreshes joins.
    pub tick: Micros,
    pub join_period: Micros,
    /// Channels this agent takes part in (created, member or relay).
    pub max_channels: usize,
    /// Messages queued for one local subscriber.
    pub sub_queue: usize,
    pub rng_seed: u64,
}

impl std::fmt::Debug for dyn KeyBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBook")
    }
}

impl Default for DdsConfig {
    fn default() -> DdsConfig {
        DdsConfig {
            signer: None,
            proof: Arc::from(Vec::new()),
            keys: None,
            params: Params::default(),
            tick: 100 * MS,
            join_period: 1_000 * MS,
            max_channels: 64,
            sub_queue: 4096,
            rng_seed: 1,
        }
    }
}

/// A message for a local subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub channel: Arc<str>,
    /// This agent's delivery number in the channel (with `total`, the same
    /// at every member that delivers from the start).
    pub seq: u64,
    /// The origin agent.
    pub from: Arc<str>,
    pub data: Vec<u8>,
}

/// What [`Dds::publish_many`] did not publish: the messages left, in
/// order, and why the first of them was not taken.
#[derive(Debug, Default)]
pub struct Unsent {
    pub rest: Vec<Vec<u8>>,
    pub why: Option<DdsError>,
}

/// Why a subscriber was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Its queue was full and the channel's policy is `drop`.
    TooSlow,
    Unsubscribed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdsEvent {
    /// A subscriber has messages to take.
    Ready {
        sub: SubId,
    },
    /// A subscriber missed `missed` messages (its queue was full).
    Lagged {
        sub: SubId,
        missed: u64,
    },
    Closed {
        sub: SubId,
        reason: CloseReason,
    },
    /// This agent was cut off by `origin`: `count` messages are lost here.
    Lost {
        channel: Arc<str>,
        origin: Arc<str>,
        count: u64,
    },
}

/// What the API shows of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub name: Arc<str>,
    pub zone: ZonePath,
    pub stack: String,
    pub retain: u32,
    pub policy: SlowPolicy,
    pub coordinator: Arc<str>,
    pub id: ChannelId,
}

impl From<&Descriptor> for ChannelInfo {
    fn from(d: &Descriptor) -> ChannelInfo {
        ChannelInfo {
            name: d.name.clone(),
            zone: d.zone.clone(),
            stack: d.spec.to_string(),
            retain: d.retain,
            policy: d.policy,
            coordinator: d.coordinator.clone(),
            id: d.id(),
        }
    }
}

/// An agent's place in a channel's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeInfo {
    /// None at the root.
    pub parent: Option<Arc<str>>,
    pub children: Vec<Arc<str>>,
    /// Whether this agent runs the channel's stack.
    pub member: bool,
}

/// Options of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOpts {
    /// Start with what the channel retains (its `retain` tail).
    pub from_start: bool,
    /// Queue bound (0: the agent's default).
    pub queue: usize,
}

impl Default for SubscribeOpts {
    fn default() -> SubscribeOpts {
        SubscribeOpts {
            from_start: true,
            queue: 0,
        }
    }
}

struct Sub {
    channel: ChannelId,
    queue: VecDeque<Delivery>,
    cap: usize,
    lagged: u64,
}

/// Which stack an agent runs for a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The whole stack: local subscribers, a publisher, the coordinator.
    Member,
    /// The layers from `nak` down, keyless: a relay that repairs its zone.
    Repairer,
}

/// One channel at this agent.
struct Channel {
    desc: Descriptor,
    id: ChannelId,
    created: bool,
    published: bool,
    sync_all: bool,
    stack: Option<Stack>,
    role: Role,
    subs: BTreeSet<SubId>,
    /// The parent in the tree and whether it is a member.
    upstream: Option<Arc<str>>,
    upstream_member: bool,
    parent_heard: Micros,
    joined_at: Micros,
    children: BTreeMap<Arc<str>, Micros>,
    suspects: BTreeMap<Arc<str>, Micros>,
    seen: rustc_hash::FxHashSet<u64>,
    seen_order: VecDeque<u64>,
    delivered: u64,
    tail: VecDeque<Delivery>,
    peers_sent: Option<Control>,
    forwarded: u64,
}

impl Channel {
    fn new(desc: Descriptor) -> Channel {
        Channel {
            id: desc.id(),
            desc,
            created: false,
            published: false,
            sync_all: true,
            stack: None,
            role: Role::Member,
            subs: BTreeSet::new(),
            upstream: None,
            upstream_member: false,
            parent_heard: 0,
            joined_at: 0,
            children: BTreeMap::new(),
            suspects: BTreeMap::new(),
            seen: rustc_hash::FxHashSet::default(),
            seen_order: VecDeque::new(),
            delivered: 0,
            tail: VecDeque::new(),
            peers_sent: None,
            forwarded: 0,
        }
    }

    /// Whether this agent runs the channel's stack.
    fn wants_member(&self) -> bool {
        self.created || self.published || !self.subs.is_empty()
    }

    fn wanted(&self) -> bool {
        self.wants_member() || !self.children.is_empty()
    }

    /// The stack this agent should run now.
    fn wants_role(&self) -> Option<Role> {
        if self.wants_member() {
            Some(Role::Member)
        } else if !self.children.is_empty() && self.desc.spec.repair_part().is_some() {
            Some(Role::Repairer)
        } else {
            None
        }
    }

    fn role_now(&self) -> Option<Role> {
        self.stack.as_ref().map(|_| self.role)
    }

    /// Remembers a frame; false when it was seen before.
    fn first_sight(&mut self, key: u64) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.seen_order.push_back(key);
        if self.seen_order.len() > SEEN_FRAMES
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    fn neighbours(&self) -> impl Iterator<Item = &Arc<str>> {
        self.upstream.iter().chain(self.children.keys())
    }
}

/// Counters of the service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DdsStats {
    pub frames_sent: u64,
    pub frames_forwarded: u64,
    pub frames_dropped_seen: u64,
    pub joins_sent: u64,
    pub parent_changes: u64,
    pub refused: u64,
    pub delivered: u64,
}

pub struct Dds {
    cfg: DdsConfig,
    addr: Option<Arc<str>>,
    leaf: Option<ZonePath>,
    channels: BTreeMap<ChannelId, Channel>,
    /// Channels seen in the zone tree, by name.
    directory: BTreeMap<Arc<str>, Descriptor>,
    subs: BTreeMap<SubId, Sub>,
    next_sub: SubId,
    next_tick: Micros,
    attrs_dirty: bool,
    outbox: VecDeque<Transmit<DdsMsg>>,
    events: VecDeque<DdsEvent>,
    pub stats: DdsStats,
}

/// A frame's identity, to drop copies that come round again.
fn frame_key(f: &FrameMsg) -> u64 {
    let mut h = crate::row::stable_hash(&f.origin) ^ f.inc.rotate_left(17);
    for chunk in f.bytes.chunks(8) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(b)).wrapping_mul(0x100_0000_01b3);
    }
    h ^ f.bytes.len() as u64
}

impl Dds {
    pub fn new(cfg: DdsConfig) -> Dds {
        Dds {
            cfg,
            addr: None,
            leaf: None,
            channels: BTreeMap::new(),
            directory: BTreeMap::new(),
            subs: BTreeMap::new(),
            next_sub: 1,
            next_tick: 0,
            attrs_dirty: false,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: DdsStats::default(),
        }
    }

    // ---- The API the runtime serves (HTTP routes, the CLI). ----

    /// Creates a channel in `zone` (default: the root) with the stack
    /// `spec`; this agent becomes its coordinator. It takes effect at the
    /// next timeout (the descriptor is published then).
    pub fn create(
        &mut self,
        now: Micros,
        name: &str,
        spec: &str,
        zone: Option<ZonePath>,
        retain: u32,
        policy: SlowPolicy,
    ) -> Result<ChannelInfo, DdsError> {
        check_name(name)?;
        let spec = Spec::parse(spec)?;
        if spec.has(LayerKind::Sign) && (self.cfg.signer.is_none() || self.cfg.keys.is_none()) {
            return Err(DdsError::NoSigningKey);
        }
        if retain > MAX_RETAIN {
            return Err(DdsError::RetainTooLarge(retain));
        }
        if self.directory.contains_key(name)
            || self.channels.values().any(|c| *c.desc.name == *name)
        {
            return Err(DdsError::Exists(name.to_string()));
        }
        let zone = zone.unwrap_or_else(ZonePath::root);
        if let Some(leaf) = &self.leaf
            && (!zone.contains(leaf) || zone == *leaf)
        {
            return Err(DdsError::ZoneNotOnPath {
                zone: zone.to_string(),
            });
        }
        if self.channels.len() >= self.cfg.max_channels {
            return Err(DdsError::TooManyChannels(self.cfg.max_channels));
        }
        let coordinator = self.addr.clone().ok_or(DdsError::NotStarted)?;
        let desc = Descriptor {
            name: name.into(),
            zone,
            spec,
            retain,
            policy,
            coordinator,
        };
        let info = ChannelInfo::from(&desc);
        self.adopt(desc, true);
        self.next_tick = now;
        Ok(info)
    }

    /// The channels this agent knows: its own and those the zone tree lists.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        let mut out: BTreeMap<Arc<str>, ChannelInfo> = self
            .directory
            .values()
            .map(|d| (d.name.clone(), d.into()))
            .collect();
        for c in self.channels.values() {
            out.insert(c.desc.name.clone(), (&c.desc).into());
        }
        out.into_values().collect()
    }

    /// Subscribes a local stream to `name`.
    pub fn subscribe(
        &mut self,
        now: Micros,
        name: &str,
        opts: SubscribeOpts,
    ) -> Result<SubId, DdsError> {
        let id = self.join(name)?;
        let sub = self.next_sub;
        self.next_sub += 1;
        let cap = if opts.queue == 0 {
            self.cfg.sub_queue
        } else {
            opts.queue
        };
        let c = self.channels.get_mut(&id).expect("joined");
        if c.stack.is_none() && c.subs.is_empty() {
            c.sync_all = opts.from_start;
        }
        c.subs.insert(sub);
        let mut queue = VecDeque::new();
        if opts.from_start {
            queue.extend(c.tail.iter().cloned());
        }
        self.subs.insert(
            sub,
            Sub {
                channel: id,
                queue,
                cap: cap.max(1),
                lagged: 0,
            },
        );
        self.next_tick = now;
        Ok(sub)
    }

    pub fn unsubscribe(&mut self, now: Micros, sub: SubId) -> Result<(), DdsError> {
        let s = self
            .subs
            .remove(&sub)
            .ok_or(DdsError::UnknownSubscriber(sub))?;
        if let Some(c) = self.channels.get_mut(&s.channel) {
            c.subs.remove(&sub);
        }
        self.events.push_back(DdsEvent::Closed {
            sub,
            reason: CloseReason::Unsubscribed,
        });
        self.next_tick = now;
        Ok(())
    }

    /// Publishes `data` on `name`, from this agent.
    pub fn publish(&mut self, now: Micros, name: &str, data: Vec<u8>) -> Result<(), DdsError> {
        self.publish_many(now, name, vec![data])
            .why
            .map_or(Ok(()), Err)
    }

    /// Publishes `msgs` in order, as many as the channel takes now, and
    /// gives back the rest with the reason the first of them was not taken
    /// (flow control holding the publisher back, a message too large, an
    /// unknown channel), for the caller to offer again or give up.
    pub fn publish_many(&mut self, now: Micros, name: &str, msgs: Vec<Vec<u8>>) -> Unsent {
        let id = match self.publishing(now, name) {
            Ok(id) => id,
            Err(why) => {
                return Unsent {
                    rest: msgs,
                    why: Some(why),
                };
            }
        };
        let c = self.channels.get_mut(&id).expect("joined");
        let stack = c.stack.as_mut().expect("built");
        let mut unsent = Unsent::default();
        let mut msgs = msgs.into_iter();
        while let Some(m) = msgs.next() {
            if let Err(why) = stack.admit(now, m.len()) {
                unsent.why = Some(why.into());
                unsent.rest = std::iter::once(m).chain(msgs).collect();
                break;
            }
            stack.send_admitted(now, m);
        }
        self.drain(now, id);
        unsent
    }

    /// The channel `name`, with this agent as a publisher running its stack.
    fn publishing(&mut self, now: Micros, name: &str) -> Result<ChannelId, DdsError> {
        let id = self.join(name)?;
        let c = self.channels.get_mut(&id).expect("joined");
        c.published = true;
        if c.role_now() != Some(Role::Member) {
            self.build_stack(now, id, Role::Member);
        }
        Ok(id)
    }

    /// Takes up to `max` queued messages of a subscriber.
    pub fn take(&mut self, sub: SubId, max: usize) -> Result<Vec<Delivery>, DdsError> {
        let s = self
            .subs
            .get_mut(&sub)
            .ok_or(DdsError::UnknownSubscriber(sub))?;
        let n = max.min(s.queue.len());
        Ok(s.queue.drain(..n).collect())
    }

    /// Messages a subscriber missed because its queue was full.
    pub fn lagged(&self, sub: SubId) -> Option<u64> {
        self.subs.get(&sub).map(|s| s.lagged)
    }

    pub fn is_subscribed(&self, sub: SubId) -> bool {
        self.subs.contains_key(&sub)
    }

    /// The stack of `name` at this agent, when it is a member (statistics).
    pub fn stack(&self, name: &str) -> Option<&Stack> {
        self.channels
            .values()
            .find(|c| *c.desc.name == *name)
            .and_then(|c| c.stack.as_ref())
    }

    /// This agent's place in the tree of `name`.
    pub fn tree(&self, name: &str) -> Option<TreeInfo> {
        self.channels
            .values()
            .find(|c| *c.desc.name == *name)
            .map(|c| TreeInfo {
                parent: c.upstream.clone(),
                children: c.children.keys().cloned().collect(),
                member: c.stack.is_some(),
            })
    }

    // ---- Inside. ----

    fn adopt(&mut self, desc: Descriptor, created: bool) -> ChannelId {
        let id = desc.id();
        let c = self
            .channels
            .entry(id)
            .or_insert_with(|| Channel::new(desc.clone()));
        if created {
            c.created = true;
            self.attrs_dirty = true;
        }
        id
    }

    /// The channel `name`, taken part in from now on.
    fn join(&mut self, name: &str) -> Result<ChannelId, DdsError> {
        if let Some(c) = self.channels.values().find(|c| *c.desc.name == *name) {
            return Ok(c.id);
        }
        let desc = self
            .directory
            .get(name)
            .cloned()
            .ok_or_else(|| DdsError::UnknownChannel(name.to_string()))?;
        if self.channels.len() >= self.cfg.max_channels {
            return Err(DdsError::TooManyChannels(self.cfg.max_channels));
        }
        self.attrs_dirty = true;
        Ok(self.adopt(desc, false))
    }

    fn build_stack(&mut self, now: Micros, id: ChannelId, role: Role) {
        let Some(addr) = self.addr.clone() else {
            return;
        };
        let c = self.channels.get_mut(&id).expect("channel");
        let spec = match role {
            Role::Member => c.desc.spec.clone(),
            Role::Repairer => match c.desc.spec.repair_part() {
                Some(s) => s,
                None => return,
            },
        };
        let mut params = self.cfg.params.clone();
        params.retain = c.desc.retain as u64;
        let cfg = StackConfig {
            channel: id,
            local: OriginId {
                addr: addr.clone(),
                inc: now.max(1),
            },
            coordinator: c.desc.coordinator.clone(),
            sync_all: role == Role::Member && (c.sync_all || c.created),
            rng_seed: self.cfg.rng_seed ^ crate::row::stable_hash(&addr),
            signer: self.cfg.signer.clone(),
            proof: self.cfg.proof.clone(),
            keys: self.cfg.keys.clone(),
            params,
            report_starts: false,
        };
        c.stack = Some(Stack::build(&spec, &cfg));
        c.role = role;
        c.peers_sent = None;
        self.attrs_dirty = true;
    }

    fn send(&mut self, to: Arc<str>, msg: DdsMsg) {
        self.outbox.push_back(Transmit { to, msg });
    }

    /// Moves what a channel's stack produced: frames onto the tree or to
    /// their agent, deliveries into the subscribers' queues.
    fn drain(&mut self, now: Micros, id: ChannelId) {
        let Some(c) = self.channels.get_mut(&id) else {
            return;
        };
        let Some(stack) = c.stack.as_mut() else {
            return;
        };
        let mut frames = Vec::new();
        while let Some(f) = stack.poll_frame() {
            frames.push(f);
        }
        let mut delivered = Vec::new();
        while let Some(d) = stack.poll_delivery() {
            // A repairer's stack ends at nak: what it would deliver is for nobody.
            if c.role == Role::Member {
                delivered.push(d);
            }
        }
        let mut lost = Vec::new();
        while let Some(StackEvent::Lost { origin, count }) = stack.poll_event() {
            if c.role == Role::Member {
                lost.push((origin.addr, count));
            }
        }
        let mut out = Vec::new();
        for f in frames {
            let msg = FrameMsg {
                id,
                origin: f.origin.addr,
                inc: f.origin.inc,
                cast: !matches!(f.dest, Dest::Peer(_)),
                ttl: MAX_TTL,
                bytes: f.bytes,
            };
            match f.dest {
                Dest::All => {
                    c.first_sight(frame_key(&msg));
                    for n in c.neighbours() {
                        out.push((n.clone(), DdsMsg::Frame(msg.clone())));
                    }
                }
                Dest::Subtree => {
                    c.first_sight(frame_key(&msg));
                    for n in c.children.keys() {
                        out.push((n.clone(), DdsMsg::Frame(msg.clone())));
                    }
                }
                Dest::Peer(to) => out.push((to, DdsMsg::Frame(msg))),
            }
        }
        let name = c.desc.name.clone();
        let policy = c.desc.policy;
        let retain = c.desc.retain as usize;
        let mut fresh = Vec::new();
        for d in delivered {
            c.delivered += 1;
            let del = Delivery {
                channel: name.clone(),
                seq: c.delivered,
                from: d.origin.addr,
                data: d.data,
            };
            if retain > 0 {
                c.tail.push_back(del.clone());
                if c.tail.len() > retain {
                    c.tail.pop_front();
                }
            }
            fresh.push(del);
        }
        let subs: Vec<SubId> = c.subs.iter().copied().collect();
        self.stats.frames_sent += out.len() as u64;
        for (to, m) in out {
            self.send(to, m);
        }
        for (origin, count) in lost {
            self.events.push_back(DdsEvent::Lost {
                channel: name.clone(),
                origin,
                count,
            });
        }
        if fresh.is_empty() {
            return;
        }
        self.stats.delivered += fresh.len() as u64;
        for sub in subs {
            self.offer(sub, policy, &fresh);
        }
        let _ = now;
    }

    /// Queues messages for one subscriber, by the channel's policy when full.
    fn offer(&mut self, sub: SubId, policy: SlowPolicy, msgs: &[Delivery]) {
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        let was_empty = s.queue.is_empty();
        let mut missed = 0;
        for m in msgs {
            if s.queue.len() >= s.cap {
                if policy == SlowPolicy::Drop {
                    let channel = s.channel;
                    self.subs.remove(&sub);
                    if let Some(c) = self.channels.get_mut(&channel) {
                        c.subs.remove(&sub);
                    }
                    self.events.push_back(DdsEvent::Closed {
                        sub,
                        reason: CloseReason::TooSlow,
                    });
                    return;
                }
                s.queue.pop_front();
                missed += 1;
            }
            s.queue.push_back(m.clone());
        }
        s.lagged += missed;
        if missed > 0 {
            self.events.push_back(DdsEvent::Lagged { sub, missed });
        }
        if was_empty {
            self.events.push_back(DdsEvent::Ready { sub });
        }
    }

    /// Reads the channels the zone tree lists.
    fn read_directory(&mut self, zones: &Zones<'_>) {
        let mut found: BTreeMap<Arc<str>, Descriptor> = BTreeMap::new();
        let mut add = |v: Option<&Value>| {
            if let Some(Value::List(items)) = v {
                for t in items.iter() {
                    if let Ok(d) = Descriptor::parse(t) {
                        found.entry(d.name.clone()).or_insert(d);
                    }
                }
            }
        };
        for z in zones.zones() {
            if let Some(a) = zones.aggregate(z) {
                add(a.get("dds_channels"));
            }
            for r in zones.members(z).unwrap_or_default() {
                add(r.get("dds_channels"));
            }
        }
        self.directory = found;
    }

    /// This agent's leaf attributes: the channels it created and those it is a member of.
    fn publish_attrs(&mut self, zones: &mut Zones<'_>) {
        if !self.attrs_dirty {
            return;
        }
        self.attrs_dirty = false;
        let created: Vec<Arc<str>> = self
            .channels
            .values()
            .filter(|c| c.created)
            .take(16)
            .map(|c| c.desc.text().into())
            .collect();
        let member: Vec<Arc<str>> = self
            .channels
            .values()
            .filter(|c| c.stack.is_some())
            .take(64)
            .map(|c| format!("{:016x}", c.id).into())
            .collect();
        for (name, list) in [("dds_channels", created), ("dds_member", member)] {
            let r = if list.is_empty() {
                zones.unpublish(name).map(|_| ())
            } else {
                zones.publish(name, Value::List(list.into()))
            };
            if let Err(e) = r {
                tracing::warn!(%e, "dds attribute not published");
            }
        }
    }

    /// The first contact of `zone` this channel does not suspect.
    fn relay_of(zones: &Zones<'_>, zone: &ZonePath, c: &Channel) -> Option<Arc<str>> {
        zones
            .contacts(zone)
            .into_iter()
            .find(|a| !c.suspects.contains_key(a))
    }

    /// Recomputes this agent's parent in the channel's tree, joins it, and
    /// tells the stack whom to ask for repairs and to gossip with.
    fn tend(&mut self, now: Micros, id: ChannelId, zones: &Zones<'_>) {
        let me = zones.addr().clone();
        let leaf = zones.leaf().clone();
        let join_period = self.cfg.join_period;
        let c = self.channels.get_mut(&id).expect("channel");
        c.suspects.retain(|_, until| *until > now);
        c.children.retain(|_, heard| *heard + 5 * join_period > now);
        // A parent silent for five periods is suspected.
        if let Some(p) = c.upstream.clone()
            && c.joined_at > 0
            && c.parent_heard + 5 * join_period < now
            && c.joined_at + 5 * join_period < now
        {
            c.suspects.insert(p, now + 30 * join_period);
        }
        let mut upstream = None;
        let mut zone = leaf.parent();
        while let Some(z) = zone {
            if !c.desc.zone.contains(&z) {
                break;
            }
            if let Some(r) = Dds::relay_of(zones, &z, c)
                && r != me
            {
                upstream = Some(r);
                break;
            }
            zone = z.parent();
        }
        if !c.wanted() {
            upstream = None;
        }
        if upstream != c.upstream {
            if let Some(old) = c.upstream.take() {
                self.outbox.push_back(Transmit {
                    to: old,
                    msg: DdsMsg::Leave { id },
                });
            }
            self.stats.parent_changes += 1;
            c.upstream = upstream.clone();
            c.upstream_member = false;
            c.joined_at = 0;
            c.peers_sent = None;
        }
        if let Some(up) = upstream
            && c.joined_at + join_period <= now
        {
            if c.joined_at == 0 {
                c.parent_heard = now;
            }
            c.joined_at = now;
            self.stats.joins_sent += 1;
            let descriptor = c.desc.text();
            self.outbox.push_back(Transmit {
                to: up,
                msg: DdsMsg::Join { descriptor },
            });
        }
        if let Some(stack) = c.stack.as_mut() {
            let repairers: Vec<Arc<str>> = c
                .upstream
                .iter()
                .filter(|_| c.upstream_member)
                .cloned()
                .collect();
            let hex = format!("{id:016x}");
            let gossip: Vec<Arc<str>> = leaf
                .parent()
                .and_then(|p| zones.members(&p))
                .unwrap_or_default()
                .iter()
                .filter(|r| r.zone != leaf)
                .filter(|r| {
                    matches!(r.get("dds_member"), Some(Value::List(l)) if l.iter().any(|x| **x == *hex))
                })
                .flat_map(|r| r.contacts().first().cloned())
                .collect();
            let ctl = Control::Peers { repairers, gossip };
            if c.peers_sent.as_ref() != Some(&ctl) {
                c.peers_sent = Some(ctl.clone());
                stack.control(now, ctl);
            }
        }
    }

    fn on_frame(&mut self, now: Micros, from: &Peer, f: FrameMsg) {
        let id = f.id;
        let Some(c) = self.channels.get_mut(&id) else {
            self.stats.refused += 1;
            return;
        };
        if f.cast {
            if !c.first_sight(frame_key(&f)) {
                self.stats.frames_dropped_seen += 1;
                return;
            }
            if f.ttl > 0 {
                let fwd = FrameMsg {
                    ttl: f.ttl - 1,
                    ..f.clone()
                };
                let to: Vec<Arc<str>> = c
                    .neighbours()
                    .filter(|n| **n != from.addr)
                    .cloned()
                    .collect();
                c.forwarded += to.len() as u64;
                self.stats.frames_forwarded += to.len() as u64;
                for t in to {
                    self.outbox.push_back(Transmit {
                        to: t,
                        msg: DdsMsg::Frame(fwd.clone()),
                    });
                }
            }
        }
        if let Some(stack) = c.stack.as_mut() {
            let origin = OriginId {
                addr: f.origin,
                inc: f.inc,
            };
            stack.receive(now, from.addr.clone(), origin, f.cast, &f.bytes);
            self.drain(now, id);
        }
    }
}

impl Core for Dds {
    type Msg = DdsMsg;
    type Event = DdsEvent;
    type Cx<'a> = Zones<'a>;

    fn handle(&mut self, now: Micros, from: &Peer, msg: DdsMsg, zones: Zones<'_>) {
        if self.addr.is_none() {
            self.addr = Some(zones.addr().clone());
            self.leaf = Some(zones.leaf().clone());
        }
        match msg {
            DdsMsg::Join { descriptor } => {
                let Ok(desc) = Descriptor::parse(&descriptor) else {
                    self.stats.refused += 1;
                    return;
                };
                let known = self.channels.contains_key(&desc.id());
                if !known && self.channels.len() >= self.cfg.max_channels {
                    self.stats.refused += 1;
                    return;
                }
                let id = self.adopt(desc, false);
                let c = self.channels.get_mut(&id).expect("adopted");
                c.children.insert(from.addr.clone(), now);
                let member = c.stack.is_some();
                self.send(from.addr.clone(), DdsMsg::Joined { id, member });
                if !known {
                    self.tend(now, id, &zones);
                }
            }
            DdsMsg::Joined { id, member } => {
                if let Some(c) = self.channels.get_mut(&id)
                    && c.upstream.as_ref() == Some(&from.addr)
                {
                    c.parent_heard = now;
                    if c.upstream_member != member {
                        c.upstream_member = member;
                        c.peers_sent = None;
                    }
                }
            }
            DdsMsg::Leave { id } => {
                if let Some(c) = self.channels.get_mut(&id) {
                    c.children.remove(&from.addr);
                }
            }
            DdsMsg::Frame(f) => self.on_frame(now, from, f),
        }
    }

    fn handle_timeout(&mut self, now: Micros, mut zones: Zones<'_>) {
        self.addr = Some(zones.addr().clone());
        self.leaf = Some(zones.leaf().clone());
        if now >= self.next_tick {
            self.next_tick = now + self.cfg.tick;
            self.read_directory(&zones);
            let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
            for id in ids {
                let c = self.channels.get_mut(&id).expect("channel");
                let (want, have) = (c.wants_role(), c.role_now());
                if want != have {
                    if have == Some(Role::Member)
                        && let Some(s) = c.stack.as_mut()
                    {
                        s.control(now, Control::Leaving);
                        self.drain(now, id);
                    }
                    let c = self.channels.get_mut(&id).expect("channel");
                    c.stack = None;
                    self.attrs_dirty = true;
                    if let Some(role) = want {
                        self.build_stack(now, id, role);
                    }
                }
                self.tend(now, id, &zones);
                let c = &self.channels[&id];
                if !c.wanted() && c.upstream.is_none() {
                    self.channels.remove(&id);
                    self.attrs_dirty = true;
                }
            }
            self.publish_attrs(&mut zones);
        }
        let due: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, c)| c.stack.as_ref().is_some_and(|s| s.poll_timeout() <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(s) = self.channels.get_mut(&id).and_then(|c| c.stack.as_mut()) {
                s.handle_timeout(now);
            }
            self.drain(now, id);
        }
    }

    fn poll_timeout(&self) -> Micros {
        self.channels
            .values()
            .filter_map(|c| c.stack.as_ref().map(|s| s.poll_timeout()))
            .fold(self.next_tick, Micros::min)
    }

    fn poll_transmit(&mut self) -> Option<Transmit<DdsMsg>> {
        self.outbox.pop_front()
    }

    fn poll_event(&mut self) -> Option<DdsEvent> {
        self.events.pop_front()
    }
}

impl Service for Dds {
    const ID: ServiceId = 10;
    const NAME: &'static str = "dds";

    /// Every zone lists the channels below it, for every agent running DDS.
    fn aggregations() -> Vec<String> {
        vec![CHANNELS_AFC.to_string()]
    }

    fn encode(msg: &DdsMsg) -> Vec<u8> {
        msg.encode()
    }

    fn decode(bytes: &[u8]) -> Result<DdsMsg, Refusal> {
        DdsMsg::decode(bytes).map_err(|_| Refusal::MalformedMessage)
    }

    /// The channels this agent created: it stays their coordinator across a restart.
    fn save(&self) -> Option<Vec<u8>> {
        let created: Vec<String> = self
            .channels
            .values()
            .filter(|c| c.created)
            .map(|c| c.desc.text())
            .collect();
        if created.is_empty() {
            return None;
        }
        let mut w = super::codec::Writer::new();
        w.varint(created.len() as u64);
        for t in &created {
            w.str(t);
        }
        Some(w.finish())
    }

    fn restore(&mut self, state: &[u8], _: Zones<'_>) -> Result<(), Refusal> {
        let mut r = super::codec::Reader::new(state);
        let n = r
            .count(self.cfg.max_channels, 1)
            .map_err(|_| Refusal::InvalidSavedState)?;
        for _ in 0..n {
            let t = r
                .str(super::channel::MAX_DESCRIPTOR)
                .map_err(|_| Refusal::InvalidSavedState)?;
            let d = Descriptor::parse(t).map_err(|_| Refusal::InvalidSavedState)?;
            self.adopt(d, true);
        }
        r.end().map_err(|_| Refusal::InvalidSavedState)
    }
}
