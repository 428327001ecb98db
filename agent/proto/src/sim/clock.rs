//! Simulated clocks: each agent reads its own clock, off the world's by an
//! offset and drifting at a constant rate, as hosts' clocks do.
//!
//! World time starts at 0; an agent's clock reads
//! `EPOCH + offset + t + t * drift_ppm / 10^6` at world time `t`. Starting
//! at a real date gives timestamps the size they have in real rows (their
//! encoded length counts) and lets certificates be valid; no wall clock is
//! read, so runs stay deterministic.

use crate::row::Micros;

/// What every agent's clock reads at world time 0 without offset:
/// 2026-01-01T00:00:00Z.
pub const EPOCH: Micros = 1_767_225_600_000_000;

/// The largest drift a simulated clock is given (parts per million; a
/// quartz clock without NTP drifts by tens of ppm).
pub const MAX_DRIFT_PPM: i32 = 100;

const MILLION: i128 = 1_000_000;

/// One agent's clock as the world sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clock {
    /// Microseconds this clock is ahead of the world's (behind if negative).
    pub offset: i64,
    /// Parts per million this clock runs fast (slow if negative).
    pub drift_ppm: i32,
}

impl Clock {
    /// What this clock reads at world time `t`.
    pub fn local(&self, t: Micros) -> Micros {
        let t = t as i128;
        let drift = (t * self.drift_ppm as i128).div_euclid(MILLION);
        let l = EPOCH as i128 + self.offset as i128 + t + drift;
        l.clamp(0, Micros::MAX as i128) as Micros
    }

    /// The first world time at which this clock reads `local` or later
    /// (0 if it already did at the start). `local(world(x)) >= x`, so an
    /// agent woken at `world(deadline)` finds its deadline passed.
    pub fn world(&self, local: Micros) -> Micros {
        let d = local as i128 - EPOCH as i128 - self.offset as i128;
        if d <= 0 {
            return 0;
        }
        if self.drift_ppm == 0 {
            return d as Micros;
        }
        // Far beyond any run: no need to be exact.
        if d > (Micros::MAX / 4) as i128 {
            return Micros::MAX;
        }
        let rate = MILLION + self.drift_ppm as i128;
        let mut t = ((d * MILLION + rate - 1) / rate) as Micros;
        // Rounding leaves at most a step or two to correct; `local` is
        // non-decreasing (the drift is far below one).
        while self.local(t) < local {
            t += 1;
        }
        while t > 0 && self.local(t - 1) >= local {
            t -= 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_inverse_and_monotonic() {
        let clocks = [
            Clock::default(),
            Clock {
                offset: -2_000_000,
                drift_ppm: -MAX_DRIFT_PPM,
            },
            Clock {
                offset: 1_999_999,
                drift_ppm: MAX_DRIFT_PPM,
            },
            Clock {
                offset: 7,
                drift_ppm: 3,
            },
        ];
        for c in clocks {
            let mut last = 0;
            for t in (0..200_000_000u64).step_by(999_983).chain([1, 2, 3]) {
                let l = c.local(t);
                let w = c.world(l);
                assert!(w <= t, "{c:?} t {t} -> {l} -> {w}");
                assert!(c.local(w) >= l);
                assert!(w == 0 || c.local(w - 1) < l);
                if t > 3 {
                    assert!(l >= last);
                    last = l;
                }
            }
        }
        assert_eq!(Clock::default().local(5), EPOCH + 5);
        assert_eq!(Clock::default().world(EPOCH + 5), 5);
        assert_eq!(Clock::default().world(3), 0);
        let fast = Clock {
            offset: 0,
            drift_ppm: 100,
        };
        assert_eq!(fast.local(1_000_000_000), EPOCH + 1_000_100_000);
    }
}
