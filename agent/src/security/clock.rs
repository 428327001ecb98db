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
    let secs = t / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_date(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Count from 0000-03-01 so that the leap day ends each 400-year cycle's years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
