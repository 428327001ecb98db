//! A bounded history of the aggregate rows this agent holds, for plots:
//! every sample period, each numeric attribute of each zone row in this
//! agent's tables (and of the root) is kept as a point of that zone's series.
//!
//! Bounds: at most [`MAX_SERIES`] series of at most [`MAX_POINTS`] points
//! each; a series that no longer gets points (its zone or attribute went
//! away) is dropped once its last point is older than the window, and when
//! the series are full a new one waits until an old one goes.

use crate::path::ZonePath;
use crate::row::Micros;
use std::collections::{BTreeMap, VecDeque};
use zone_sql::{Attrs, Value};

/// Series kept at most: zones times numeric attributes.
pub const MAX_SERIES: usize = 4096;
/// Points per series: ten minutes at one point every two seconds.
pub const MAX_POINTS: usize = 300;
/// Shortest time between two samples.
pub const MIN_PERIOD: Micros = 1_000_000;

/// One zone's attribute over time: (time, value), oldest first.
pub type Series = VecDeque<(Micros, f64)>;

/// The aggregate rows' history.
#[derive(Debug)]
pub struct History {
    period: Micros,
    last: Option<Micros>,
    series: BTreeMap<(ZonePath, String), Series>,
    /// New series not kept because the others filled the bound.
    pub dropped: u64,
}

/// The number a plot draws for a value, if it has one.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::Duration(us) => Some(*us as f64 / 1e6),
        _ => None,
    }
}

impl History {
    /// A history sampled every `period` (at least [`MIN_PERIOD`]).
    pub fn new(period: Micros) -> History {
        History {
            period: period.max(MIN_PERIOD),
            last: None,
            series: BTreeMap::new(),
            dropped: 0,
        }
    }

    pub fn period(&self) -> Micros {
        self.period
    }

    /// How far back the history reaches at most.
    pub fn window(&self) -> Micros {
        self.period * MAX_POINTS as Micros
    }

    /// Whether a sample is due at `now`.
    pub fn due(&self, now: Micros) -> bool {
        self.last.is_none_or(|l| now >= l + self.period)
    }

    /// Takes one sample of `rows` (zone, its aggregate row) at `now`.
    pub fn sample<'a>(
        &mut self,
        now: Micros,
        rows: impl IntoIterator<Item = (ZonePath, &'a Attrs)>,
    ) {
        self.last = Some(now);
        // Series whose last point left the window go first, making room.
        let horizon = now.saturating_sub(self.window());
        self.series
            .retain(|_, s| s.back().is_some_and(|(t, _)| *t >= horizon));
        for (zone, attrs) in rows {
            for (name, v) in attrs.iter() {
                let Some(x) = number(v) else { continue };
                let key = (zone.clone(), name.to_string());
                let full = self.series.len() >= MAX_SERIES;
                let s = match self.series.get_mut(&key) {
                    Some(s) => s,
                    None if full => {
                        self.dropped += 1;
                        continue;
                    }
                    None => self.series.entry(key).or_default(),
                };
                if s.len() == MAX_POINTS {
                    s.pop_front();
                }
                s.push_back((now, x));
            }
        }
    }

    /// The zones with a history, in order.
    pub fn zones(&self) -> Vec<ZonePath> {
        let mut z: Vec<ZonePath> = self.series.keys().map(|(z, _)| z.clone()).collect();
        z.dedup();
        z
    }

    /// The series of `zone`: those named in `attrs`, or all when it is
    /// empty, with the points since `since`.
    pub fn of(
        &self,
        zone: &ZonePath,
        attrs: &[String],
        since: Micros,
    ) -> BTreeMap<String, Vec<(Micros, f64)>> {
        self.series
            .range((zone.clone(), String::new())..)
            .take_while(|((z, _), _)| z == zone)
            .filter(|((_, a), _)| attrs.is_empty() || attrs.contains(a))
            .map(|((_, a), s)| {
                let pts = s.iter().filter(|(t, _)| *t >= since).copied().collect();
                (a.clone(), pts)
            })
            .collect()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Value)]) -> Attrs {
        let mut a = Attrs::default();
        for (k, v) in pairs {
            a.set(*k, v.clone());
        }
        a
    }

    fn zone(s: &str) -> ZonePath {
        ZonePath::parse(s).unwrap()
    }

    #[test]
    fn numbers_are_kept_per_zone_and_attribute_and_text_is_not() {
        let mut h = History::new(MIN_PERIOD);
        let r = row(&[
            ("load", Value::Float(0.5)),
            ("nmembers", Value::Int(4)),
            ("name", Value::Str("a".into())),
            ("nan", Value::Float(f64::NAN)),
        ]);
        assert!(h.due(0));
        h.sample(0, [(zone("/a"), &r)]);
        assert!(!h.due(MIN_PERIOD - 1));
        assert!(h.due(MIN_PERIOD));
        h.sample(MIN_PERIOD, [(zone("/a"), &r)]);
        let s = h.of(&zone("/a"), &[], 0);
        assert_eq!(s.keys().collect::<Vec<_>>(), ["load", "nmembers"]);
        assert_eq!(s["nmembers"], vec![(0, 4.0), (MIN_PERIOD, 4.0)]);
        let only = h.of(&zone("/a"), &["load".into()], MIN_PERIOD);
        assert_eq!(only["load"], vec![(MIN_PERIOD, 0.5)]);
        assert!(h.of(&zone("/b"), &[], 0).is_empty());
        assert_eq!(h.zones(), [zone("/a")]);
    }

    #[test]
    fn series_are_bounded_in_length_and_number_and_old_ones_go() {
        let mut h = History::new(MIN_PERIOD);
        let r = row(&[("x", Value::Int(1))]);
        for i in 0..(MAX_POINTS as u64 + 10) {
            h.sample(i * MIN_PERIOD, [(zone("/a"), &r)]);
        }
        assert_eq!(h.of(&zone("/a"), &[], 0)["x"].len(), MAX_POINTS);

        let many: Vec<(String, Value)> = (0..MAX_SERIES + 5)
            .map(|i| (format!("a{i}"), Value::Int(i as i64)))
            .collect();
        let mut big = Attrs::default();
        for (k, v) in &many {
            big.set(k.as_str(), v.clone());
        }
        let t = 1_000 * MIN_PERIOD;
        h.sample(t, [(zone("/b"), &big)]);
        assert_eq!(h.series_count(), MAX_SERIES);
        assert!(h.dropped > 0);
        // Once /a's points are older than the window, its series goes.
        let later = t + h.window() + MIN_PERIOD;
        h.sample(later, std::iter::empty());
        assert_eq!(h.series_count(), 0);
    }
}
