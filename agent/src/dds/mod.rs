//! DDS's runtime half: it wakes the API streams of local subscribers when
//! their messages are ready and serves DDS's requests from the API. The
//! protocol itself (layers, stacks, channels over the zone tree) is
//! `armillary_proto::dds`.

pub use armillary_proto::dds as proto;

use crate::host::{Host, ServiceId, Services};
use crate::node::{Glue, Jobs, NodeError, NodeHandle};
use crate::path::ZonePath;
use crate::row::Micros;
use proto::{
    ChannelInfo, CloseReason, Dds, DdsError, DdsEvent, Delivery, SlowPolicy, SubId, SubscribeOpts,
};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// Messages one wake of a stream takes at most.
const TAKE: usize = 256;

/// Why a DDS request failed.
#[derive(Debug, thiserror::Error)]
pub enum DdsCallError {
    #[error(transparent)]
    Dds(#[from] DdsError),
    #[error("this agent does not run DDS")]
    NotRunning,
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// One local subscriber's wake-up and end.
struct Waker {
    notify: Arc<Notify>,
    closed: Option<CloseReason>,
    missed: u64,
}

/// DDS's runtime half.
#[derive(Default)]
pub struct DdsGlue {
    subs: BTreeMap<SubId, Waker>,
    /// Messages lost to this agent because an origin cut it off.
    lost: u64,
}

impl DdsGlue {
    pub fn new() -> DdsGlue {
        DdsGlue::default()
    }
}

impl Glue for DdsGlue {
    fn service(&self) -> ServiceId {
        <Dds as crate::host::Service>::ID
    }

    fn on_event(&mut self, event: Box<dyn Any + Send>, _now: Micros) {
        let Ok(e) = event.downcast::<DdsEvent>() else {
            return;
        };
        match *e {
            DdsEvent::Ready { sub } => {
                if let Some(w) = self.subs.get(&sub) {
                    w.notify.notify_one();
                }
            }
            DdsEvent::Lagged { sub, missed } => {
                if let Some(w) = self.subs.get_mut(&sub) {
                    w.missed += missed;
                    w.notify.notify_one();
                }
            }
            DdsEvent::Closed { sub, reason } => {
                if let Some(w) = self.subs.get_mut(&sub) {
                    w.closed = Some(reason);
                    w.notify.notify_one();
                }
            }
            DdsEvent::Lost {
                channel,
                origin,
                count,
            } => {
                tracing::warn!(%channel, %origin, count, "messages lost: cut off by their origin");
                self.lost += count;
            }
        }
    }

    fn after_input(&mut self, _host: &mut Host<Box<dyn Services>>, _jobs: &Jobs, _now: Micros) {}

    fn counters(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, u64>) {
        out.insert("dds_lost".into(), self.lost);
        let Some(d) = host.service::<Dds>() else {
            return;
        };
        let s = &d.stats;
        for (k, v) in [
            ("dds_frames_sent", s.frames_sent),
            ("dds_frames_forwarded", s.frames_forwarded),
            ("dds_frames_dropped_seen", s.frames_dropped_seen),
            ("dds_joins_sent", s.joins_sent),
            ("dds_parent_changes", s.parent_changes),
            ("dds_refused", s.refused),
            ("dds_delivered", s.delivered),
        ] {
            out.insert(k.into(), v);
        }
    }

    fn gauges(&self, _host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, i64>) {
        out.insert("dds_subscribers".into(), self.subs.len() as i64);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Runs `f` with DDS's core and its runtime half on the node's task.
async fn with_dds<T: Send + 'static>(
    h: &NodeHandle,
    f: impl FnOnce(&mut Dds, &mut DdsGlue, Micros) -> Result<T, DdsCallError> + Send + 'static,
) -> Result<T, DdsCallError> {
    h.with_glue(move |d, _, g, now| f(d, g, now))
        .await?
        .ok_or(DdsCallError::NotRunning)?
}

/// Creates a channel coordinated by this agent.
pub async fn create(
    h: &NodeHandle,
    name: String,
    spec: String,
    zone: Option<ZonePath>,
    retain: u32,
    policy: SlowPolicy,
) -> Result<ChannelInfo, DdsCallError> {
    // DDS learns this agent's address at its first tick after the agent
    // starts: a create in that instant waits for it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let (name, spec, zone) = (name.clone(), spec.clone(), zone.clone());
        let r = with_dds(h, move |d, _, now| {
            Ok(d.create(now, &name, &spec, zone, retain, policy)?)
        })
        .await;
        match r {
            Err(DdsCallError::Dds(DdsError::NotStarted))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            r => return r,
        }
    }
}

/// The channels this agent knows.
pub async fn channels(h: &NodeHandle) -> Result<Vec<ChannelInfo>, DdsCallError> {
    with_dds(h, |d, _, _| Ok(d.channels())).await
}

/// Publishes one message on `name` from this agent.
pub async fn publish(h: &NodeHandle, name: String, data: Vec<u8>) -> Result<(), DdsCallError> {
    with_dds(h, move |d, _, now| Ok(d.publish(now, &name, data)?)).await
}

/// Publishes `msgs` on `name` in order, as many as the channel takes now:
/// what it did not take comes back, with the reason.
pub async fn publish_many(
    h: &NodeHandle,
    name: String,
    msgs: Vec<Vec<u8>>,
) -> Result<proto::Unsent, DdsCallError> {
    with_dds(h, move |d, _, now| Ok(d.publish_many(now, &name, msgs))).await
}

/// A local subscriber: its messages in order, until it is closed.
pub struct Subscription {
    handle: NodeHandle,
    sub: SubId,
    notify: Arc<Notify>,
    done: bool,
}

/// What a subscription's next wake brings.
#[derive(Debug)]
pub enum Next {
    Messages(Vec<Delivery>),
    /// Messages missed because this subscriber fell behind (policy `skip`).
    Missed(u64),
    /// The subscriber was closed: too slow (policy `drop`), or unsubscribed.
    Closed(CloseReason),
}

/// Subscribes a stream to `name`.
pub async fn subscribe(
    h: &NodeHandle,
    name: String,
    from_start: bool,
) -> Result<Subscription, DdsCallError> {
    let (sub, notify) = with_dds(h, move |d, g, now| {
        let opts = SubscribeOpts {
            from_start,
            ..SubscribeOpts::default()
        };
        let sub = d.subscribe(now, &name, opts)?;
        let notify = Arc::new(Notify::new());
        // Whatever is queued already (the retained tail) is taken at once.
        notify.notify_one();
        g.subs.insert(
            sub,
            Waker {
                notify: notify.clone(),
                closed: None,
                missed: 0,
            },
        );
        Ok((sub, notify))
    })
    .await?;
    Ok(Subscription {
        handle: h.clone(),
        sub,
        notify,
        done: false,
    })
}

impl Subscription {
    /// Waits for the next messages, a gap, or the end.
    pub async fn next(&mut self) -> Result<Next, DdsCallError> {
        loop {
            let sub = self.sub;
            let got = with_dds(&self.handle, move |d, g, _| {
                let w = g.subs.get_mut(&sub);
                let missed = w.as_ref().map_or(0, |w| w.missed);
                if missed > 0 {
                    if let Some(w) = w {
                        w.missed = 0;
                    }
                    return Ok(Some(Next::Missed(missed)));
                }
                if d.is_subscribed(sub) {
                    let m = d.take(sub, TAKE)?;
                    return Ok((!m.is_empty()).then_some(Next::Messages(m)));
                }
                let reason = g
                    .subs
                    .remove(&sub)
                    .and_then(|w| w.closed)
                    .unwrap_or(CloseReason::Unsubscribed);
                Ok(Some(Next::Closed(reason)))
            })
            .await?;
            match got {
                Some(n @ Next::Closed(_)) => {
                    self.done = true;
                    return Ok(n);
                }
                Some(n) => return Ok(n),
                None => self.notify.notified().await,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (h, sub) = (self.handle.clone(), self.sub);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The stream went away: its subscriber goes too.
        rt.spawn(async move {
            let _ = with_dds(&h, move |d, g, now| {
                g.subs.remove(&sub);
                Ok(d.unsubscribe(now, sub)?)
            })
            .await;
        });
    }
}

/// The counters of `name`'s stack at this agent, each prefixed by its
/// layer (`nak_requests`, `nak_repaired_le_100ms`, ...): empty while this
/// agent runs no stack for it.
pub async fn stack_counters(
    h: &NodeHandle,
    name: String,
) -> Result<Vec<(String, u64)>, DdsCallError> {
    with_dds(h, move |d, _, _| {
        Ok(d.stack(&name).map(|s| s.counters()).unwrap_or_default())
    })
    .await
}

/// This agent's place in the tree of `name` (parent, children, member).
pub async fn tree(h: &NodeHandle, name: String) -> Result<Option<proto::TreeInfo>, DdsCallError> {
    with_dds(h, move |d, _, _| Ok(d.tree(&name))).await
}
