//! CHM: component records as lookups, listings and watches give them
//! (`/v1/chm/...`).

use serde::{Deserialize, Serialize};

/// A component's health as one agent knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub id: String,
    /// `passing`, `warning`, `critical` or `maintenance`.
    pub status: String,
    pub reason: String,
    /// The zone of its home agent.
    pub zone: String,
    /// RFC 3339, and the same in µs since the epoch.
    pub since: String,
    pub since_us: u64,
    pub observers: Vec<String>,
    /// How old the knowledge is.
    pub age_s: f64,
    pub keywords: Vec<String>,
    pub address: Option<String>,
    pub qos: Qos,
    pub agent: String,
    /// A lookup's level: `weak` or `consensus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// The consensus verdict's number, at the consensus level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The quality of service seen from per-call timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qos {
    pub level: String,
    pub outlier_ratio: f64,
    pub samples: u64,
}

/// A status change, as a watch streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub id: String,
    pub status: String,
    pub previous: String,
    pub time: String,
    pub time_us: u64,
    pub zone: String,
    pub reason: String,
}
