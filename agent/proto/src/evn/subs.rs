//! WS-Eventing subscriptions held by one agent: their filters, expiries
//! and delivery modes, and how each one ends, exactly once.
//!
//! Subscriptions are the agent's durable state: they are saved with the
//! service and come back after a restart, with the same ids and expiries.

use super::event::Event;
use super::filter::{Filter, FilterError};
use crate::path::ZonePath;
use crate::row::Micros;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The most subscriptions one agent holds.
pub const MAX_SUBSCRIPTIONS: usize = 4096;
/// The longest expiry a subscription may ask for.
pub const MAX_EXPIRY: Micros = 365 * 86_400_000_000;
/// The expiry of a subscription that names none.
pub const DEFAULT_EXPIRY: Micros = 86_400_000_000;
/// The most bytes of a push URL.
pub const MAX_URL: usize = 2048;

/// How events reach the subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Over a stream the subscriber holds open (server-sent events).
    Stream,
    /// Pushed by HTTP POST to `notify_to`; SubscriptionEnd goes to `end_to`.
    Push {
        notify_to: String,
        end_to: Option<String>,
    },
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The agent stopped the subscription (WS-Eventing `SourceCancelling`).
    SourceCancelling,
    /// The agent is going away for good (`SourceShuttingDown`).
    SourceShuttingDown,
    /// Pushes failed past the retries (`DeliveryFailure`).
    DeliveryFailure,
    /// Its expiry came.
    Expired,
    /// The subscriber unsubscribed.
    Unsubscribed,
}

impl EndReason {
    /// The name on the wire and in the API.
    pub fn name(self) -> &'static str {
        match self {
            EndReason::SourceCancelling => "SourceCancelling",
            EndReason::SourceShuttingDown => "SourceShuttingDown",
            EndReason::DeliveryFailure => "DeliveryFailure",
            EndReason::Expired => "Expired",
            EndReason::Unsubscribed => "Unsubscribed",
        }
    }

    /// Whether WS-Eventing sends a SubscriptionEnd for it (the source ended
    /// it; not an expiry or the subscriber's own Unsubscribe).
    pub fn is_subscription_end(self) -> bool {
        matches!(
            self,
            EndReason::SourceCancelling
                | EndReason::SourceShuttingDown
                | EndReason::DeliveryFailure
        )
    }
}

/// A WS-Eventing fault, by its name in the specification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("InvalidExpirationTime: {0}")]
    InvalidExpirationTime(String),
    #[error("UnsupportedExpirationType: {0}")]
    UnsupportedExpirationType(String),
    #[error("FilteringNotSupported: {0}")]
    FilteringNotSupported(String),
    #[error("FilteringRequestedUnavailable: dialect {0:?} is not supported; use \"sql\"")]
    FilteringRequestedUnavailable(String),
    #[error("CannotProcessFilter: {0}")]
    CannotProcessFilter(String),
    #[error("DeliveryModeRequestedUnavailable: {0}")]
    DeliveryModeRequestedUnavailable(String),
    #[error("InvalidMessage: {0}")]
    InvalidMessage(String),
    #[error("UnableToRenew: {0}")]
    UnableToRenew(String),
    #[error("UnknownSubscription: no subscription {0} at this agent")]
    UnknownSubscription(String),
}

impl Fault {
    /// The fault's name in WS-Eventing.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::InvalidExpirationTime(_) => "InvalidExpirationTime",
            Fault::UnsupportedExpirationType(_) => "UnsupportedExpirationType",
            Fault::FilteringNotSupported(_) => "FilteringNotSupported",
            Fault::FilteringRequestedUnavailable(_) => "FilteringRequestedUnavailable",
            Fault::CannotProcessFilter(_) => "CannotProcessFilter",
            Fault::DeliveryModeRequestedUnavailable(_) => "DeliveryModeRequestedUnavailable",
            Fault::InvalidMessage(_) => "InvalidMessage",
            Fault::UnableToRenew(_) => "UnableToRenew",
            Fault::UnknownSubscription(_) => "UnknownSubscription",
        }
    }
}

impl From<FilterError> for Fault {
    fn from(e: FilterError) -> Fault {
        match e {
            FilterError::Syntax(_) | FilterError::TooLong(_) => {
                Fault::CannotProcessFilter(e.to_string())
            }
            FilterError::Unsupported(_) => Fault::FilteringNotSupported(e.to_string()),
        }
    }
}

/// Parses an expiry as WS-Eventing gives it, or in short form: an
/// `xs:duration` (`PT10M`, `P1DT2H`), a duration (`90s`, `10m`), or an
/// `xs:dateTime` (`2026-12-04T10:00:00Z`). Gives the absolute time.
pub fn parse_expiry(text: &str, now: Micros) -> Result<Micros, Fault> {
    let text = text.trim();
    let invalid = |why: &str| Fault::InvalidExpirationTime(format!("{text:?}: {why}"));
    let span = if let Some(iso) = text.strip_prefix('P') {
        Some(iso_duration(iso, text)?)
    } else if text.contains('T') && text.contains('-') {
        let at = humantime::parse_rfc3339_weak(text)
            .map_err(|e| invalid(&format!("not a date-time: {e}")))?;
        let at = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| invalid("before 1970"))?
            .as_micros() as Micros;
        if at <= now {
            return Err(invalid("that time has passed"));
        }
        if at - now > MAX_EXPIRY {
            return Err(invalid("more than a year ahead"));
        }
        return Ok(at);
    } else {
        Some(
            humantime::parse_duration(text)
                .map_err(|e| invalid(&format!("not a duration or a date-time: {e}")))?
                .as_micros() as Micros,
        )
    };
    let span = span.unwrap_or(0);
    if span == 0 {
        return Err(invalid("the duration must be positive"));
    }
    if span > MAX_EXPIRY {
        return Err(invalid("more than a year"));
    }
    Ok(now.saturating_add(span))
}

/// `xs:duration` after its `P`: days, hours, minutes and seconds. Years
/// and months have no fixed length: unsupported.
fn iso_duration(iso: &str, text: &str) -> Result<Micros, Fault> {
    let invalid = || Fault::InvalidExpirationTime(format!("{text:?} is not an xs:duration"));
    let (date, time) = match iso.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (iso, None),
    };
    let mut total: f64 = 0.0;
    let mut parts = 0;
    let mut take = |part: &str, units: &[(char, f64)], allow_frac: bool| -> Result<(), Fault> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || (allow_frac && c == '.') {
                num.push(c);
                continue;
            }
            let Some((_, scale)) = units.iter().find(|(u, _)| *u == c) else {
                if (c == 'Y' || c == 'M') && units.iter().any(|(u, _)| *u == 'D') {
                    return Err(Fault::UnsupportedExpirationType(format!(
                        "{text:?}: years and months have no fixed length; give days, hours, minutes or seconds"
                    )));
                }
                return Err(invalid());
            };
            let n: f64 = num.parse().map_err(|_| invalid())?;
            total += n * scale;
            parts += 1;
            num.clear();
        }
        if num.is_empty() {
            Ok(())
        } else {
            Err(invalid())
        }
    };
    take(date, &[('W', 604_800e6), ('D', 86_400e6)], false)?;
    if let Some(t) = time {
        if t.is_empty() {
            return Err(invalid());
        }
        take(t, &[('H', 3_600e6), ('M', 60e6), ('S', 1e6)], true)?;
    }
    if parts == 0 || !total.is_finite() {
        return Err(invalid());
    }
    Ok(total.min(Micros::MAX as f64) as Micros)
}

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub filter: Option<String>,
    /// Only events published to this zone or inside it.
    pub zone: Option<ZonePath>,
    pub expires: Micros,
    pub delivery: Delivery,
}

/// One subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    pub id: Arc<str>,
    pub filter: Option<String>,
    pub zone: Option<ZonePath>,
    pub expires: Micros,
    pub delivery: Delivery,
    pub created: Micros,
    /// Events handed out for it.
    pub delivered: u64,
    #[serde(skip)]
    compiled: Option<Filter>,
}

impl Subscription {
    /// Whether `event` is for it.
    pub fn wants(&self, event: &Event) -> bool {
        self.zone.as_ref().is_none_or(|z| z.contains(&event.scope))
            && self.compiled.as_ref().is_none_or(|f| f.matches(event))
    }
}

/// A subscription that ended, to be told once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub id: Arc<str>,
    pub reason: EndReason,
    pub delivery: Delivery,
}

/// The subscriptions of one agent.
#[derive(Debug, Default)]
pub struct Subscriptions {
    subs: BTreeMap<Arc<str>, Subscription>,
    /// Ends not yet taken by the driver.
    ended: Vec<Ended>,
}

impl Subscriptions {
    /// Checks a request and adds the subscription under `id`.
    pub fn subscribe(
        &mut self,
        id: Arc<str>,
        req: Request,
        now: Micros,
    ) -> Result<&Subscription, Fault> {
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(Fault::InvalidMessage(format!(
                "this agent holds {MAX_SUBSCRIPTIONS} subscriptions, the most it keeps; unsubscribe some first"
            )));
        }
        if req.expires <= now || req.expires - now > MAX_EXPIRY {
            return Err(Fault::InvalidExpirationTime(
                "the expiry must be in the future and at most a year ahead".into(),
            ));
        }
        check_delivery(&req.delivery)?;
        let compiled = req.filter.as_deref().map(Filter::compile).transpose()?;
        let sub = Subscription {
            id: id.clone(),
            filter: req.filter,
            zone: req.zone,
            expires: req.expires,
            delivery: req.delivery,
            created: now,
            delivered: 0,
            compiled,
        };
        Ok(self.subs.entry(id).or_insert(sub))
    }

    /// Sets a new expiry; refused for an unknown or ended subscription.
    pub fn renew(&mut self, id: &str, expires: Micros, now: Micros) -> Result<Micros, Fault> {
        let Some(s) = self.subs.get_mut(id) else {
            return Err(Fault::UnableToRenew(format!(
                "no subscription {id} at this agent (never made, expired or ended)"
            )));
        };
        if s.expires <= now {
            return Err(Fault::UnableToRenew(format!(
                "subscription {id} has expired"
            )));
        }
        if expires <= now || expires - now > MAX_EXPIRY {
            return Err(Fault::InvalidExpirationTime(
                "the expiry must be in the future and at most a year ahead".into(),
            ));
        }
        s.expires = expires;
        Ok(expires)
    }

    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.subs.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Subscription> {
        self.subs.values()
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Ends a subscription for `reason`; false when it was not held (so it
    /// ends once whoever asks twice).
    pub fn end(&mut self, id: &str, reason: EndReason) -> bool {
        let Some(s) = self.subs.remove(id) else {
            return false;
        };
        self.ended.push(Ended {
            id: s.id,
            reason,
            delivery: s.delivery,
        });
        true
    }

    /// Ends what has expired by `now`.
    pub fn expire(&mut self, now: Micros) {
        let due: Vec<Arc<str>> = self
            .subs
            .values()
            .filter(|s| s.expires <= now)
            .map(|s| s.id.clone())
            .collect();
        for id in due {
            self.end(&id, EndReason::Expired);
        }
    }

    /// The earliest expiry (`Micros::MAX`: none).
    pub fn next_expiry(&self) -> Micros {
        self.subs
            .values()
            .map(|s| s.expires)
            .min()
            .unwrap_or(Micros::MAX)
    }

    /// The live subscriptions `event` is for, counting the delivery.
    pub fn matching(&mut self, event: &Event, now: Micros) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for s in self.subs.values_mut() {
            if s.expires > now && s.wants(event) {
                s.delivered += 1;
                out.push(s.id.clone());
            }
        }
        out
    }

    /// The next end to tell.
    pub fn take_ended(&mut self) -> Option<Ended> {
        (!self.ended.is_empty()).then(|| self.ended.remove(0))
    }

    /// The subscriptions to save.
    pub fn saved(&self) -> Vec<Subscription> {
        self.subs.values().cloned().collect()
    }

    /// Takes saved subscriptions back: an expired one ends as expired; one
    /// whose filter no longer compiles or whose delivery is no longer
    /// offered ends as cancelled by the source. Each is told once.
    pub fn restore(&mut self, saved: Vec<Subscription>, now: Micros) {
        for mut s in saved.into_iter().take(MAX_SUBSCRIPTIONS) {
            let compiled = s.filter.as_deref().map(Filter::compile).transpose();
            let ok = check_delivery(&s.delivery).is_ok();
            let id = s.id.clone();
            match compiled {
                Ok(c) if ok => s.compiled = c,
                _ => {
                    self.subs.insert(id.clone(), s);
                    self.end(&id, EndReason::SourceCancelling);
                    continue;
                }
            }
            self.subs.insert(id.clone(), s);
        }
        self.expire(now);
    }
}

/// Checks a delivery mode: a push goes to an `http` or `https` URL.
pub fn check_delivery(d: &Delivery) -> Result<(), Fault> {
    if let Delivery::Push { notify_to, end_to } = d {
        for url in std::iter::once(notify_to).chain(end_to) {
            let ok = url.len() <= MAX_URL
                && (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() > "http://".len()
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(Fault::DeliveryModeRequestedUnavailable(format!(
                    "push delivery needs an http:// or https:// URL of at most {MAX_URL} bytes, got {url:?}"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    fn req(expires: Micros) -> Request {
        Request {
            filter: None,
            zone: None,
            expires,
            delivery: Delivery::Stream,
        }
    }

    #[test]
    fn expiries_in_every_accepted_form() {
        let now = 1_893_400_000 * S;
        assert_eq!(parse_expiry("PT10M", now), Ok(now + 600 * S));
        assert_eq!(parse_expiry("P1DT2H", now), Ok(now + 26 * 3600 * S));
        assert_eq!(parse_expiry("PT1.5S", now), Ok(now + 1_500_000));
        assert_eq!(parse_expiry("90s", now), Ok(now + 90 * S));
        let at = parse_expiry("2030-01-01T00:00:00Z", now).unwrap();
        assert_eq!(at, 1_893_456_000 * S);
        assert!(matches!(
            parse_expiry("P1Y", now),
            Err(Fault::UnsupportedExpirationType(_))
        ));
        assert!(matches!(
            parse_expiry("P2M", now),
            Err(Fault::UnsupportedExpirationType(_))
        ));
        for bad in [
            "",
            "soon",
            "PT",
            "P",
            "PTxS",
            "0s",
            "1999-01-01T00:00:00Z",
            "P9999D",
        ] {
            assert!(
                matches!(parse_expiry(bad, now), Err(Fault::InvalidExpirationTime(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn each_subscription_ends_once() {
        let mut s = Subscriptions::default();
        s.subscribe("a".into(), req(10 * S), 0).unwrap();
        s.subscribe("b".into(), req(20 * S), 0).unwrap();
        assert_eq!(s.renew("b", 30 * S, 5 * S), Ok(30 * S));
        assert!(s.end("a", EndReason::Unsubscribed));
        assert!(!s.end("a", EndReason::DeliveryFailure));
        s.expire(29 * S);
        assert!(s.get("b").is_some());
        s.expire(30 * S);
        assert!(s.get("b").is_none());
        let ends: Vec<_> = std::iter::from_fn(|| s.take_ended())
            .map(|e| e.reason)
            .collect();
        assert_eq!(ends, vec![EndReason::Unsubscribed, EndReason::Expired]);
        assert!(matches!(
            s.renew("b", 40 * S, 31 * S),
            Err(Fault::UnableToRenew(_))
        ));
    }

    #[test]
    fn faults_at_subscribe() {
        let mut s = Subscriptions::default();
        let mut r = req(10 * S);
        r.filter = Some("topic = ".into());
        assert!(matches!(
            s.subscribe("x".into(), r, 0),
            Err(Fault::CannotProcessFilter(_))
        ));
        let mut r = req(10 * S);
        r.filter = Some("SUM(x) > 1".into());
        assert!(matches!(
            s.subscribe("x".into(), r, 0),
            Err(Fault::FilteringNotSupported(_))
        ));
        let mut r = req(10 * S);
        r.delivery = Delivery::Push {
            notify_to: "ftp://x".into(),
            end_to: None,
        };
        assert!(matches!(
            s.subscribe("x".into(), r, 0),
            Err(Fault::DeliveryModeRequestedUnavailable(_))
        ));
        assert!(matches!(
            s.subscribe("x".into(), req(0), 5),
            Err(Fault::InvalidExpirationTime(_))
        ));
        assert!(s.is_empty());
    }
}
