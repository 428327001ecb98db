//! Wall-clock time for certificates: reading it, and printing it for people.

use crate::row::Micros;
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds in one day.
pub const DAY: Micros = 86_400_000_000;

/// The system clock in microseconds since the Unix epoch.
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}

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
