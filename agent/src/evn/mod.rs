//! EVN's runtime half: it hands each subscription's events to its
//! consumer (a stream the subscriber holds, or a task pushing them by HTTP
//! POST with retries and backoff), holds the application tables, and runs
//! each condition's SQL over the local tables with DataFusion. The
//! protocol (routing, anti-entropy, conditions' combination) is
//! `armillary_proto::evn`.

pub use armillary_proto::evn as proto;

pub mod deliver;
pub mod tables;

pub use deliver::{Item, Queue, end_record, event_record, record_json, time_text};

use crate::host::{Host, Service, ServiceId, Services};
use crate::node::{Glue, Jobs, NodeError, NodeHandle};
use crate::row::Micros;
use proto::{EndReason, Evn, EvnError, EvnEvent, Fault};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tables::{LocalTables, TableError};
use tokio::sync::Notify;

/// How often every condition is evaluated when nothing wakes it sooner.
const EVAL_EVERY: Duration = Duration::from_secs(1);

/// Why an EVN request failed.
#[derive(Debug, thiserror::Error)]
pub enum EvnCallError {
    #[error(transparent)]
    Fault(#[from] Fault),
    #[error(transparent)]
    Evn(#[from] EvnError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("this agent does not run EVN")]
    NotRunning,
    #[error("subscription {0} is delivered by push; its events are not streamed")]
    NotStreamed(String),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// EVN's runtime half.
pub struct EvnGlue {
    queues: BTreeMap<Arc<str>, Arc<Queue>>,
    /// Push queues whose task is not started yet.
    to_start: Vec<Arc<Queue>>,
    jobs: Option<Jobs>,
    http: Option<reqwest::Client>,
    synced: bool,
    pub tables: LocalTables,
    /// Wakes the condition evaluator.
    pub wake: Arc<Notify>,
    stats: Arc<deliver::Stats>,
}

impl Default for EvnGlue {
    fn default() -> EvnGlue {
        EvnGlue::new()
    }
}

impl EvnGlue {
    pub fn new() -> EvnGlue {
        EvnGlue {
            queues: BTreeMap::new(),
            to_start: Vec::new(),
            jobs: None,
            http: None,
            synced: false,
            tables: LocalTables::default(),
            wake: Arc::new(Notify::new()),
            stats: Arc::default(),
        }
    }

    /// The queue of a new or restored subscription.
    pub fn open(&mut self, sub: &proto::Subscription) -> Arc<Queue> {
        if let Some(q) = self.queues.get(&sub.id) {
            return q.clone();
        }
        let q = Arc::new(Queue::new(sub, self.stats.clone()));
        if q.is_push() {
            self.to_start.push(q.clone());
        }
        self.queues.insert(sub.id.clone(), q.clone());
        q
    }

    pub fn queue(&self, id: &str) -> Option<&Arc<Queue>> {
        self.queues.get(id)
    }

    fn start_pushes(&mut self) {
        let Some(jobs) = self.jobs.clone() else {
            return;
        };
        for q in self.to_start.drain(..) {
            let http = self
                .http
                .get_or_insert_with(|| {
                    reqwest::Client::builder()
                        .timeout(deliver::PUSH_TIMEOUT)
                        .build()
                        .unwrap_or_default()
                })
                .clone();
            tokio::spawn(deliver::push(q, http, jobs.clone()));
        }
    }
}

impl Glue for EvnGlue {
    fn service(&self) -> ServiceId {
        <Evn as Service>::ID
    }

    /// Every agent evaluates the conditions over its own local tables.
    fn start(&mut self, handle: &NodeHandle) {
        tokio::spawn(evaluate(handle.clone()));
    }

    fn on_event(&mut self, event: Box<dyn Any + Send>, _now: Micros) {
        let Ok(e) = event.downcast::<EvnEvent>() else {
            return;
        };
        match *e {
            EvnEvent::Notify { sub, event } => {
                if let Some(q) = self.queues.get(&sub) {
                    q.push(Item::Event(event));
                }
            }
            EvnEvent::Ended(end) => match self.queues.remove(&end.id) {
                Some(q) => q.end(end.reason),
                // Ended before its queue was opened (at restore): a push
                // subscriber still gets its SubscriptionEnd.
                None if end.reason.is_subscription_end()
                    && matches!(end.delivery, proto::Delivery::Push { .. }) =>
                {
                    let q = Queue::ended(end.id, end.delivery, end.reason, self.stats.clone());
                    self.to_start.push(Arc::new(q));
                }
                None => {}
            },
            EvnEvent::ConditionsChanged => self.wake.notify_one(),
        }
    }

    fn after_input(&mut self, host: &mut Host<Box<dyn Services>>, jobs: &Jobs, _now: Micros) {
        if self.jobs.is_none() {
            self.jobs = Some(jobs.clone());
        }
        if !self.synced {
            self.synced = true;
            if let Some(e) = host.service::<Evn>() {
                let subs: Vec<_> = e.subscriptions().cloned().collect();
                for s in &subs {
                    self.open(s);
                }
            }
        }
        if !self.to_start.is_empty() {
            self.start_pushes();
        }
    }

    fn counters(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, u64>) {
        self.stats.counters(out);
        let Some(e) = host.service::<Evn>() else {
            return;
        };
        let s = e.stats();
        for (k, v) in [
            ("published", s.published),
            ("delivered", s.delivered),
            ("notified", s.notified),
            ("duplicates", s.duplicates),
            ("pushes_sent", s.pushes_sent),
            ("gossip_sent", s.gossip_sent),
            ("repaired", s.repaired),
            ("refused", s.refused),
            ("expired", s.expired),
            ("transitions", s.transitions),
        ] {
            out.insert(format!("evn_{k}"), v);
        }
    }

    fn gauges(&self, host: &Host<Box<dyn Services>>, out: &mut BTreeMap<String, i64>) {
        if let Some(e) = host.service::<Evn>() {
            out.insert("evn_subscriptions".into(), e.subscriptions().count() as i64);
            out.insert("evn_conditions".into(), e.conditions().count() as i64);
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Runs `f` with EVN's core, the zone tree and its runtime half on the node's task.
pub async fn with_evn<T: Send + 'static>(
    h: &NodeHandle,
    f: impl FnOnce(&mut Evn, crate::host::Zones<'_>, &mut EvnGlue, Micros) -> Result<T, EvnCallError>
    + Send
    + 'static,
) -> Result<T, EvnCallError> {
    h.with_glue(f).await?.ok_or(EvnCallError::NotRunning)?
}

/// Subscribes; gives the subscription and its queue.
pub async fn subscribe(
    h: &NodeHandle,
    req: proto::subs::Request,
) -> Result<(proto::Subscription, Arc<Queue>), EvnCallError> {
    with_evn(h, move |e, _, g, now| {
        let s = e.subscribe(req, now)?;
        let q = g.open(&s);
        Ok((s, q))
    })
    .await
}

/// Renews a subscription to the absolute time `expires`.
pub async fn renew(h: &NodeHandle, id: String, expires: Micros) -> Result<Micros, EvnCallError> {
    with_evn(h, move |e, _, g, now| {
        let at = e.renew(&id, expires, now)?;
        if let Some(q) = g.queue(&id) {
            q.set_expires(at);
        }
        Ok(at)
    })
    .await
}

/// Ends a subscription for `reason`. Once this returns, nothing more is
/// delivered for it.
pub async fn end(h: &NodeHandle, id: String, reason: EndReason) -> Result<(), EvnCallError> {
    with_evn(h, move |e, _, g, _| {
        if let Some(q) = g.queues.remove(id.as_str()) {
            q.end(reason);
        }
        if e.end(&id, reason) {
            Ok(())
        } else {
            Err(Fault::UnknownSubscription(id).into())
        }
    })
    .await
}

/// A subscription's state.
pub async fn status(h: &NodeHandle, id: String) -> Result<proto::Subscription, EvnCallError> {
    with_evn(h, move |e, _, _, _| {
        e.subscription(&id)
            .cloned()
            .ok_or_else(|| Fault::UnknownSubscription(id).into())
    })
    .await
}

/// The queue a stream reads subscription `id` from.
pub async fn stream_of(h: &NodeHandle, id: String) -> Result<Arc<Queue>, EvnCallError> {
    with_evn(h, move |e, _, g, _| {
        let Some(s) = e.subscription(&id).cloned() else {
            return Err(Fault::UnknownSubscription(id).into());
        };
        let q = g.open(&s);
        if q.is_push() {
            return Err(EvnCallError::NotStreamed(id));
        }
        Ok(q)
    })
    .await
}

/// Replaces the local table `name` and wakes the evaluator.
pub async fn put_table(h: &NodeHandle, name: String, rows: String) -> Result<usize, EvnCallError> {
    with_evn(h, move |_, _, g, _| {
        let n = g.tables.put(&name, &rows)?;
        g.wake.notify_one();
        Ok(n)
    })
    .await
}

/// Evaluates, every second and whenever a table or the conditions change,
/// each condition whose scope holds this agent, and hands the results to
/// the core. Runs until the node stops.
pub async fn evaluate(h: NodeHandle) {
    let Ok(wake) = with_evn(&h, |_, _, g, _| Ok(g.wake.clone())).await else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVAL_EVERY) => {}
            _ = wake.notified() => {}
        }
        let got = with_evn(&h, |e, z, g, _| {
            let conds = e.to_evaluate(z.leaf());
            let attrs = z.leaf_row().map(|r| r.attrs.clone()).unwrap_or_default();
            Ok((conds, g.tables.named(), attrs))
        })
        .await;
        let (conds, mut named, attrs) = match got {
            Ok(v) => v,
            Err(EvnCallError::Node(NodeError::Stopped)) => return,
            Err(_) => continue,
        };
        if conds.is_empty() {
            continue;
        }
        named.push(tables::table("attrs", vec![attrs]));
        if conds.iter().any(|c| c.sql.contains("components")) {
            let own = crate::chm::own(&h).await.unwrap_or_default();
            named.push(tables::components(&own));
        }
        if conds.iter().any(|c| c.sql.contains("processes")) {
            named.push(
                tokio::task::spawn_blocking(tables::processes)
                    .await
                    .unwrap_or_default(),
            );
        }
        let sqls: Vec<&str> = conds.iter().map(|c| &*c.sql).collect();
        let answers = match zone_sql::adhoc::query_all(&named, &sqls).await {
            Ok(each) => each
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()).and_then(|r| tables::truth(&r)))
                .collect(),
            Err(e) => vec![Err(e.to_string()); conds.len()],
        };
        let results: Vec<_> = conds.iter().map(|c| c.name.clone()).zip(answers).collect();
        let done = with_evn(&h, move |e, mut z, _, _| {
            for (name, r) in results {
                e.set_local(&mut z, &name, r);
            }
            Ok(())
        })
        .await;
        if let Err(EvnCallError::Node(NodeError::Stopped)) = done {
            return;
        }
    }
}
