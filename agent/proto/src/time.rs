//! Dates as the cores see them: microseconds since the Unix epoch, passed
//! in by the driver (the runtime reads the system clock, the simulator its
//! simulated clocks), and printed for people.

use crate::row::Micros;
use std::time::UNIX_EPOCH;

/// Microseconds in one day.
pub const DAY: Micros = 86_400_000_000;

/// A time as UTC text, e.g. `2025-03-01T12:00:00Z`.
pub fn format_time(t: Micros) -> String {
    let at = UNIX_EPOCH + std::time::Duration::from_micros(t);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400 * 1_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_time(1_700_000_000 * 1_000_000 + 5),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            format_time(4_102_444_799 * 1_000_000),
            "2099-12-31T23:59:59Z"
        );
    }
}
