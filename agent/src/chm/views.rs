//! CHM as the API and the CLI show it: JSON objects with the keys the
//! interface names (`id`, `status`, `reason`, `zone`, `since`, `observers`,
//! `age_s`, `keywords`, `address`, `qos`).

use super::proto::{Check, Health, QosView, Record, Registration, StatusChange};
use crate::row::Micros;
use armillary_client::types::chm as types;
use serde_json::{Value, json};
use std::time::{Duration, UNIX_EPOCH};

/// A time in microseconds since the epoch, as RFC 3339 text.
pub fn time(us: Micros) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

pub fn qos(q: &QosView) -> Value {
    serde_json::to_value(qos_info(q)).unwrap_or(Value::Null)
}

fn qos_info(q: &QosView) -> types::Qos {
    types::Qos {
        level: q.level.as_str().to_string(),
        outlier_ratio: q.outlier_ratio,
        samples: q.samples,
    }
}

/// A record of a lookup, a listing or a provider search.
pub fn component(r: &Record) -> types::ComponentRecord {
    types::ComponentRecord {
        id: r.id.as_str().to_string(),
        status: r.status.as_str().to_string(),
        reason: r.reason.clone(),
        zone: r.zone.to_string(),
        since: time(r.since),
        since_us: r.since,
        observers: r.observers.iter().map(|o| o.to_string()).collect(),
        age_s: r.age as f64 / 1e6,
        keywords: r.keywords.clone(),
        address: r.address.clone(),
        qos: qos_info(&r.qos),
        agent: r.agent.to_string(),
        level: None,
        epoch: None,
    }
}

/// [`component`] as JSON.
pub fn record(r: &Record) -> Value {
    serde_json::to_value(component(r)).unwrap_or(Value::Null)
}

/// A status change, as `watch` prints it.
pub fn change(c: &StatusChange) -> Value {
    let c = types::StatusChange {
        id: c.id.as_str().to_string(),
        status: c.status.as_str().to_string(),
        previous: c.previous.as_str().to_string(),
        time: time(c.time),
        time_us: c.time,
        zone: c.zone.to_string(),
        reason: c.reason.clone(),
    };
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// A component of this agent, with its registration and its check's output.
#[derive(Debug, Clone)]
pub struct Own {
    pub registration: Registration,
    pub health: Health,
    pub output: String,
    pub qos: QosView,
}

fn secs(us: Micros) -> String {
    humantime::format_duration(Duration::from_micros(us)).to_string()
}

pub fn own(o: &Own) -> Value {
    let r = &o.registration;
    let c = &r.check;
    let (kind, target) = match &c.check {
        Check::Http { url } => ("http", json!(url)),
        Check::Tcp { addr } => ("tcp", json!(addr)),
        Check::Cmd { command } => ("cmd", json!(command)),
        Check::Ttl { ttl } => ("ttl", json!(secs(*ttl))),
    };
    let h = &o.health;
    json!({
        "id": r.id.as_str(),
        "status": h.status.as_str(),
        "reason": h.reason,
        "since": time(h.since),
        "since_us": h.since,
        "checked": h.checked.as_str(),
        "maintenance": h.maintenance,
        "last_check": h.last_check.map(time),
        "output": o.output,
        "keywords": r.keywords,
        "address": r.address,
        "check": {
            "kind": kind,
            kind: target,
            "interval": secs(c.interval),
            "timeout": secs(c.timeout),
            "failures_before_critical": c.failures_before_critical,
            "successes_before_passing": c.successes_before_passing,
        },
        "deregister_after": r.deregister_after.map(secs),
        "qos": qos(&o.qos),
    })
}
