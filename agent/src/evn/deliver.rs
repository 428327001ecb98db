//! A subscription's queue and its consumers. A queue holds the events
//! matched for one subscription until its consumer takes them: the stream
//! the subscriber holds open (it may reconnect and find them waiting), or
//! a task that pushes each one by HTTP POST to the subscriber's
//! `NotifyTo`, retrying with backoff, and ends the subscription with
//! `DeliveryFailure` when the retries run out.
//!
//! The gate: once a subscription is unsubscribed, ended or past its expiry,
//! its queue hands nothing more out, whatever it still holds.

use super::proto::{self, Delivery, EndReason, Event, Evn};
use crate::clock::now_micros;
use crate::node::Jobs;
use crate::row::Micros;
use armillary_client::types::evn::{EndRecord, EventRecord, Record};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Events one queue holds before the oldest are dropped.
pub const QUEUE: usize = 4096;
/// How long one push may take.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per push before the subscription ends with `DeliveryFailure`.
pub const PUSH_ATTEMPTS: u32 = 5;
/// The first retry's wait; each next one doubles it.
const BACKOFF: Duration = Duration::from_millis(100);

/// What a consumer takes from a queue.
#[derive(Debug, Clone)]
pub enum Item {
    Event(Arc<Event>),
    End(EndReason),
}

/// One subscription's queue.
pub struct Queue {
    pub id: Arc<str>,
    delivery: Delivery,
    items: Mutex<VecDeque<Item>>,
    ready: Notify,
    expires: AtomicU64,
    ended: AtomicBool,
    stats: Arc<Stats>,
}

impl Queue {
    pub fn new(sub: &proto::Subscription, stats: Arc<Stats>) -> Queue {
        Queue::of(sub.id.clone(), sub.delivery.clone(), sub.expires, stats)
    }

    fn of(id: Arc<str>, delivery: Delivery, expires: Micros, stats: Arc<Stats>) -> Queue {
        Queue {
            id,
            delivery,
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            expires: AtomicU64::new(expires),
            ended: AtomicBool::new(false),
            stats,
        }
    }

    /// A queue that holds only the end of a subscription that ended
    /// before its queue was opened.
    pub fn ended(id: Arc<str>, delivery: Delivery, reason: EndReason, stats: Arc<Stats>) -> Queue {
        let q = Queue::of(id, delivery, Micros::MAX, stats);
        q.end(reason);
        q
    }

    pub fn is_push(&self) -> bool {
        matches!(self.delivery, Delivery::Push { .. })
    }

    /// Whether events may still be handed out at `now`.
    pub fn open(&self, now: Micros) -> bool {
        !self.ended.load(Ordering::SeqCst) && now < self.expires.load(Ordering::SeqCst)
    }

    pub fn set_expires(&self, at: Micros) {
        self.expires.store(at, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, item: Item) {
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        let mut q = self.lock();
        if q.len() >= QUEUE {
            q.pop_front();
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(item);
        drop(q);
        self.ready.notify_one();
    }

    /// Closes the gate and queues the end, once.
    pub fn end(&self, reason: EndReason) {
        if self.ended.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut q = self.lock();
        q.retain(|i| matches!(i, Item::End(_)));
        q.push_back(Item::End(reason));
        drop(q);
        self.ready.notify_one();
    }

    /// The next item a consumer may hand out: an event only while the gate
    /// is open, an end always; `Expired` once the expiry has passed.
    pub fn take(&self) -> Option<Item> {
        let now = now_micros();
        let mut q = self.lock();
        if !self.ended.load(Ordering::SeqCst) && now >= self.expires.load(Ordering::SeqCst) {
            q.clear();
            return Some(Item::End(EndReason::Expired));
        }
        while let Some(i) = q.pop_front() {
            match i {
                Item::Event(_) if !self.open(now) => continue,
                i => return Some(i),
            }
        }
        None
    }

    /// Waits for the next item, or until the expiry is due.
    pub async fn next(&self) -> Item {
        loop {
            let ready = self.ready.notified();
            if let Some(i) = self.take() {
                return i;
            }
            let left = self
                .expires
                .load(Ordering::SeqCst)
                .saturating_sub(now_micros())
                .max(1_000);
            let _ = tokio::time::timeout(Duration::from_micros(left), ready).await;
        }
    }
}

/// An event as subscribers get it.
pub fn event_record(e: &Event) -> EventRecord {
    EventRecord {
        id: format!("{}@{}", e.seq, e.origin),
        topic: e.topic.to_string(),
        zone: e.scope.to_string(),
        origin: e.origin.to_string(),
        seq: e.seq,
        time: time_text(e.time),
        data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
        delivered: None,
    }
}

/// A subscription's end as subscribers get it.
pub fn end_record(id: &str, reason: EndReason) -> EndRecord {
    EndRecord {
        id: id.to_string(),
        reason: reason.name().to_string(),
        resumes: false,
    }
}

/// A record as JSON, `type` included.
pub fn record_json(r: Record) -> Value {
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// A time as RFC 3339 text with microseconds.
pub fn time_text(t: Micros) -> String {
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_micros(t)).to_string()
}

/// Push counters.
#[derive(Default)]
pub struct Stats {
    pushed: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    /// Events dropped from full queues (their consumers fell behind).
    dropped: AtomicU64,
}

impl Stats {
    pub fn counters(&self, out: &mut BTreeMap<String, u64>) {
        out.insert(
            "evn_push_delivered".into(),
            self.pushed.load(Ordering::Relaxed),
        );
        out.insert(
            "evn_push_retries".into(),
            self.retries.load(Ordering::Relaxed),
        );
        out.insert(
            "evn_push_failures".into(),
            self.failures.load(Ordering::Relaxed),
        );
        out.insert(
            "evn_queue_dropped".into(),
            self.dropped.load(Ordering::Relaxed),
        );
    }
}

/// POSTs `body` to `url` once; true on a 2xx.
async fn post_once(http: &reqwest::Client, url: &str, body: &Value) -> bool {
    match http.post(url).json(body).send().await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            tracing::debug!(url, status = %r.status(), "push refused");
            false
        }
        Err(e) => {
            tracing::debug!(url, error = %e, "push failed");
            false
        }
    }
}

/// POSTs `body` to `url`, retrying with backoff while `still` holds; true
/// on a 2xx.
async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    stats: &Stats,
    still: impl Fn() -> bool,
) -> bool {
    let mut wait = BACKOFF;
    for attempt in 0..PUSH_ATTEMPTS {
        if !still() {
            return false;
        }
        if attempt > 0 {
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            wait *= 2;
            if !still() {
                return false;
            }
        }
        if post_once(http, url, body).await {
            return true;
        }
    }
    false
}

/// Pushes a subscription's events until it ends; then sends its
/// SubscriptionEnd when the source ended it.
pub async fn push(q: Arc<Queue>, http: reqwest::Client, jobs: Jobs) {
    let Delivery::Push { notify_to, end_to } = q.delivery.clone() else {
        return;
    };
    let stats = q.stats.clone();
    loop {
        match q.next().await {
            Item::Event(e) => {
                let body = record_json(Record::Event(event_record(&e)));
                let gate = || q.open(now_micros());
                if post(&http, &notify_to, &body, &stats, gate).await {
                    stats.pushed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if !q.open(now_micros()) {
                    continue;
                }
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sub = %q.id, url = %notify_to, "pushes keep failing: the subscription ends");
                let id = q.id.clone();
                q.end(EndReason::DeliveryFailure);
                let _ = jobs
                    .run(move |core| {
                        if let Some((host, _)) = core.glue::<super::EvnGlue>() {
                            host.with_service::<Evn, _>(now_micros(), |e, _| {
                                e.end(&id, EndReason::DeliveryFailure)
                            });
                        }
                    })
                    .await;
            }
            Item::End(reason) => {
                if reason.is_subscription_end() {
                    // To EndTo with retries; without one, a single try at
                    // NotifyTo, which may just have failed: sent once
                    // either way.
                    let body = record_json(Record::End(end_record(&q.id, reason)));
                    match &end_to {
                        Some(to) => {
                            let _ = post(&http, to, &body, &stats, || true).await;
                        }
                        None => {
                            let _ = post_once(&http, &notify_to, &body).await;
                        }
                    }
                }
                return;
            }
        }
    }
}
