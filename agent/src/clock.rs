//! The wall clock: the one place the runtime reads the time it passes to
//! the protocol cores and checks certificates against.

use armillary_proto::row::Micros;
use std::time::{SystemTime, UNIX_EPOCH};

/// The system clock in microseconds since the Unix epoch.
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as Micros)
        .unwrap_or(0)
}
