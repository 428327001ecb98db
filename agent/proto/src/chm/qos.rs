//! QoS diagnosis of a provider from its consumers' calls, as the
//! self-healing seed does it.
//!
//! A consumer stamps each call: T1 when it sends the request and T4 when
//! the response arrives (its clock), T2 when the provider receives the
//! request and T3 when it answers (the provider's clock). From them:
//! QoS1 = T3 − T2 (computation), QoS2 = T2 − T1 (request), QoS3 = T4 − T3
//! (response) and QoS4 = (T4 − T1) − QoS1 (communication). QoS2 and QoS3
//! cross the two clocks, so they are corrected by the offset between them,
//! estimated as Cristian does from the call with the shortest round trip:
//! θ = ((T2 − T1) − (T4 − T3)) / 2.
//!
//! Each parameter has a reference right outer fence, Q3 + 3·IQR of a
//! reference window; the share of the recent window above it (the worst
//! parameter's) gives the level: under 5% ok, 5 to 10% moderate, over 10%
//! severe; with fewer than 20 samples the level is unknown. When the share
//! lies between 3% and 5% the fence is re-baselined on the recent window.
//!
//! The reference of each consumer is kept in a DDSketch per parameter, so
//! the agent of the provider merges the consumers' references into one
//! fence and their recent windows into one share ([`Merged`]).

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

/// Samples before a level is known.
pub const MIN_SAMPLES: u64 = 20;
/// Samples in the reference window and in the recent window.
pub const REFERENCE: usize = 100;
pub const RECENT: usize = 100;
/// Samples between two checks for a re-baseline.
pub const REBASELINE_EVERY: u64 = 50;
/// Calls the clock offset is estimated over.
pub const OFFSET_WINDOW: usize = 64;
/// The fence: Q3 plus this many interquartile ranges.
pub const FENCE_IQRS: f64 = 3.0;
/// Consumers whose diagnoses the provider's agent merges.
pub const MAX_CONSUMERS: usize = 32;

/// One call's timestamps, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub t1: i64,
    pub t2: i64,
    pub t3: i64,
    pub t4: i64,
}

/// Why a sample was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QosError {
    #[error("t4 is before t1: the response cannot arrive before the request leaves")]
    ResponseBeforeRequest,
    #[error("t3 is before t2: the provider cannot answer before it receives the request")]
    AnswerBeforeReceipt,
    #[error(
        "t3 - t2 is longer than t4 - t1: the provider cannot compute for longer than the whole call took"
    )]
    ComputationLongerThanCall,
    #[error("the call took longer than an hour; give timestamps in microseconds")]
    TooLong,
}

/// The four QoS parameters of one call, in microseconds.
pub type Params = [f64; 4];

impl Sample {
    pub fn check(&self) -> Result<(), QosError> {
        if self.t4 < self.t1 {
            return Err(QosError::ResponseBeforeRequest);
        }
        if self.t3 < self.t2 {
            return Err(QosError::AnswerBeforeReceipt);
        }
        let (call, work) = (
            self.t4 as i128 - self.t1 as i128,
            self.t3 as i128 - self.t2 as i128,
        );
        if work > call {
            return Err(QosError::ComputationLongerThanCall);
        }
        if call > 3_600_000_000 {
            return Err(QosError::TooLong);
        }
        Ok(())
    }

    /// Round trip without the provider's time: the offset estimate is
    /// best from the call where it is shortest.
    fn round_trip(&self) -> i64 {
        (self.t4 - self.t1) - (self.t3 - self.t2)
    }

    /// Provider clock minus consumer clock, if the call were symmetric.
    fn offset(&self) -> f64 {
        ((self.t2 - self.t1) as f64 - (self.t4 - self.t3) as f64) / 2.0
    }

    /// The parameters with the clocks `offset` apart (provider minus consumer).
    pub fn params(&self, offset: f64) -> Params {
        let qos1 = (self.t3 - self.t2) as f64;
        let qos4 = (self.t4 - self.t1) as f64 - qos1;
        let qos2 = ((self.t2 - self.t1) as f64 - offset).clamp(0.0, qos4);
        [qos1, qos2, qos4 - qos2, qos4]
    }
}

/// Cristian's estimate of the offset between a consumer's and a
/// provider's clocks, from the recent call with the shortest round trip.
#[derive(Debug, Clone, Default)]
pub struct Offset {
    calls: VecDeque<Sample>,
}

impl Offset {
    /// Adds a checked sample; returns the current estimate.
    pub fn add(&mut self, s: Sample) -> f64 {
        if self.calls.len() == OFFSET_WINDOW {
            self.calls.pop_front();
        }
        self.calls.push_back(s);
        self.estimate()
    }

    pub fn estimate(&self) -> f64 {
        self.calls
            .iter()
            .min_by_key(|s| s.round_trip())
            .map_or(0.0, Sample::offset)
    }
}

/// A provider's degradation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Unknown,
    Moderate,
    Severe,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Unknown => "unknown",
            Level::Moderate => "moderate",
            Level::Severe => "severe",
        }
    }

    pub(crate) fn letter(self) -> char {
        match self {
            Level::Ok => 'o',
            Level::Unknown => 'u',
            Level::Moderate => 'm',
            Level::Severe => 's',
        }
    }

    pub(crate) fn from_letter(c: char) -> Option<Level> {
        match c {
            'o' => Some(Level::Ok),
            'u' => Some(Level::Unknown),
            'm' => Some(Level::Moderate),
            's' => Some(Level::Severe),
            _ => None,
        }
    }

    /// The level of an outlier share over `samples` samples.
    pub fn of(ratio: f64, samples: u64) -> Level {
        if samples < MIN_SAMPLES {
            Level::Unknown
        } else if ratio < 0.05 {
            Level::Ok
        } else if ratio <= 0.10 {
            Level::Moderate
        } else {
            Level::Severe
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known of a provider's QoS.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QosView {
    pub level: Level,
    pub outlier_ratio: f64,
    pub samples: u64,
}

impl QosView {
    pub const UNKNOWN: QosView = QosView {
        level: Level::Unknown,
        outlier_ratio: 0.0,
        samples: 0,
    };

    fn of(ratio: f64, samples: u64) -> QosView {
        QosView {
            level: Level::of(ratio, samples),
            outlier_ratio: ratio,
            samples,
        }
    }
}

fn sketches() -> [DDSketch; 4] {
    std::array::from_fn(|_| DDSketch::new(SketchConfig::new(ALPHA, 2048, 1.0e-9)))
}

/// The sketches' relative accuracy.
const ALPHA: f64 = 0.01;

/// Q3 + 3·IQR of a sketch, widened by the sketch's relative error (its
/// quantiles are within `ALPHA` of the true ones, so a window of equal
/// values would otherwise find itself above its own fence).
fn fence_of(s: &DDSketch) -> Option<f64> {
    let q1 = s.quantile(0.25).ok()??;
    let q3 = s.quantile(0.75).ok()??;
    Some((q3 + FENCE_IQRS * (q3 - q1)) * (1.0 + 2.0 * ALPHA) + 1.0)
}

/// The diagnosis of one provider from one consumer's calls.
#[derive(Clone)]
pub struct Diagnosis {
    reference: [DDSketch; 4],
    reference_len: usize,
    fence: Option<Params>,
    recent: VecDeque<Params>,
    total: u64,
    rebaselines: u64,
}

impl Default for Diagnosis {
    fn default() -> Self {
        Diagnosis {
            reference: sketches(),
            reference_len: 0,
            fence: None,
            recent: VecDeque::with_capacity(RECENT),
            total: 0,
            rebaselines: 0,
        }
    }
}

impl Diagnosis {
    /// Adds one call's parameters.
    pub fn add(&mut self, p: Params) {
        self.total += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(p);
        if self.reference_len < REFERENCE {
            self.reference_len += 1;
            for (s, v) in self.reference.iter_mut().zip(p) {
                s.add(v);
            }
            self.fence = self.compute_fence();
        } else if self.total.is_multiple_of(REBASELINE_EVERY) {
            let r = self.ratio_against(self.fence);
            if (0.03..0.05).contains(&r) && self.recent.len() == RECENT {
                self.rebaseline();
            }
        }
    }

    fn compute_fence(&self) -> Option<Params> {
        let mut f = [0.0; 4];
        for (slot, s) in f.iter_mut().zip(&self.reference) {
            *slot = fence_of(s)?;
        }
        Some(f)
    }

    /// The fence is taken again from the recent window.
    fn rebaseline(&mut self) {
        self.rebaselines += 1;
        self.reference = sketches();
        for p in &self.recent {
            for (s, v) in self.reference.iter_mut().zip(p) {
                s.add(*v);
            }
        }
        self.reference_len = self.recent.len();
        self.fence = self.compute_fence();
    }

    /// The worst parameter's outlier count in the recent window.
    fn outliers(&self, fence: Option<Params>) -> usize {
        let Some(f) = fence else { return 0 };
        (0..4)
            .map(|k| self.recent.iter().filter(|p| p[k] > f[k]).count())
            .max()
            .unwrap_or(0)
    }

    fn ratio_against(&self, fence: Option<Params>) -> f64 {
        if self.recent.is_empty() {
            return 0.0;
        }
        self.outliers(fence) as f64 / self.recent.len() as f64
    }

    pub fn view(&self) -> QosView {
        QosView::of(self.ratio_against(self.fence), self.total)
    }

    pub fn samples(&self) -> u64 {
        self.total
    }

    pub fn rebaselines(&self) -> u64 {
        self.rebaselines
    }
}

/// A provider's diagnoses from each of its consumers' agents, merged: one
/// fence from the merged reference sketches, one share over every recent
/// window.
#[derive(Clone, Default)]
pub struct Merged {
    by_consumer: BTreeMap<Arc<str>, (Diagnosis, u64)>,
    clock: u64,
}

impl Merged {
    /// Adds calls reported through consumer agent `from`.
    pub fn add(&mut self, from: &Arc<str>, params: impl IntoIterator<Item = Params>) {
        self.clock += 1;
        if !self.by_consumer.contains_key(from) && self.by_consumer.len() == MAX_CONSUMERS {
            // The consumer heard from longest ago makes room.
            let oldest = self
                .by_consumer
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.by_consumer.remove(&k);
            }
        }
        let clock = self.clock;
        let (d, seen) = self.by_consumer.entry(from.clone()).or_default();
        *seen = clock;
        for p in params {
            d.add(p);
        }
    }

    pub fn view(&self) -> QosView {
        let mut merged = sketches();
        let mut total = 0;
        for (d, _) in self.by_consumer.values() {
            total += d.total;
            for (m, s) in merged.iter_mut().zip(&d.reference) {
                // One configuration everywhere: merging cannot fail.
                let _ = m.merge(s);
            }
        }
        let mut fence = [0.0; 4];
        let known = merged
            .iter()
            .zip(fence.iter_mut())
            .all(|(s, f)| fence_of(s).map(|v| *f = v).is_some());
        let fence = known.then_some(fence);
        let (mut out, mut n) = (0usize, 0usize);
        for (d, _) in self.by_consumer.values() {
            out += d.outliers(fence);
            n += d.recent.len();
        }
        let ratio = if n == 0 { 0.0 } else { out as f64 / n as f64 };
        QosView::of(ratio, total)
    }

    pub fn is_empty(&self) -> bool {
        self.by_consumer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` calls, the share `slow` of them (evenly spread) ten times slower
    /// to compute; the provider's clock `skew` µs ahead.
    fn calls(n: usize, slow: f64, skew: i64) -> Vec<Sample> {
        let mut every = Vec::new();
        let mut owed = 0.0;
        for i in 0..n {
            owed += slow;
            let is_slow = owed >= 1.0;
            if is_slow {
                owed -= 1.0;
            }
            let t1 = 1_000_000 * i as i64;
            let jitter = (i as i64 * 7919) % 2_000;
            let work = if is_slow { 100_000 } else { 9_000 + jitter };
            let t2 = t1 + 2_000 + jitter / 4 + skew;
            let t3 = t2 + work;
            let t4 = t3 - skew + 2_000 + jitter / 3;
            every.push(Sample { t1, t2, t3, t4 });
        }
        every
    }

    fn diagnose(samples: &[Sample]) -> QosView {
        let mut off = Offset::default();
        let mut d = Diagnosis::default();
        for s in samples {
            s.check().expect("valid");
            let o = off.add(*s);
            d.add(s.params(o));
        }
        d.view()
    }

    #[test]
    fn shares_of_slow_calls_give_the_seed_levels() {
        for (share, level) in [
            (0.0, Level::Ok),
            (0.02, Level::Ok),
            (0.04, Level::Ok),
            (0.07, Level::Moderate),
            (0.10, Level::Moderate),
            (0.15, Level::Severe),
            (0.20, Level::Severe),
        ] {
            let v = diagnose(&calls(400, share, 0));
            assert_eq!(v.level, level, "share {share}: {v:?}");
            assert_eq!(v.samples, 400);
            assert!((v.outlier_ratio - share).abs() < 0.011, "{share}: {v:?}");
        }
        assert_eq!(diagnose(&calls(19, 0.5, 0)).level, Level::Unknown);
    }

    #[test]
    fn a_clock_offset_is_corrected() {
        let skew = 3_600_000_000 / 2;
        let s = calls(50, 0.0, skew);
        let mut off = Offset::default();
        for c in &s {
            off.add(*c);
        }
        let p = s[10].params(off.estimate());
        // Request and response take their real 2 ms or so, not half an hour.
        assert!(p[1] < 5_000.0 && p[2] < 5_000.0, "{p:?}");
        assert_eq!(p[1] + p[2], p[3]);
        assert_eq!(diagnose(&s).level, Level::Ok);
    }

    #[test]
    fn impossible_samples_are_refused() {
        let s = |t1, t2, t3, t4| Sample { t1, t2, t3, t4 }.check();
        assert_eq!(s(10, 0, 1, 5), Err(QosError::ResponseBeforeRequest));
        assert_eq!(s(0, 5, 4, 10), Err(QosError::AnswerBeforeReceipt));
        assert_eq!(s(0, 0, 20, 10), Err(QosError::ComputationLongerThanCall));
        assert_eq!(s(0, -500, -495, 10), Ok(()));
    }

    #[test]
    fn between_three_and_five_percent_the_fence_is_rebaselined() {
        let mut d = Diagnosis::default();
        // A reference of fast calls, then calls that take a little longer
        // with 4% of them slow: the fence moves to the recent calls.
        for s in calls(100, 0.0, 0) {
            d.add(s.params(0.0));
        }
        for s in calls(300, 0.04, 0) {
            d.add(s.params(0.0));
        }
        assert!(d.rebaselines() >= 1);
        assert_eq!(d.view().level, Level::Ok);
    }

    #[test]
    fn consumers_merge_into_one_view() {
        let mut m = Merged::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        m.add(&a, calls(200, 0.0, 0).iter().map(|s| s.params(0.0)));
        assert_eq!(m.view().level, Level::Ok);
        m.add(&b, calls(200, 0.30, 0).iter().map(|s| s.params(0.0)));
        let v = m.view();
        assert_eq!(v.samples, 400);
        // Half the recent calls come from b, 30% of them slow.
        assert!((v.outlier_ratio - 0.15).abs() < 0.02, "{v:?}");
        assert_eq!(v.level, Level::Severe);
    }
}
