//! AFCs as `/v1/afcs` lists them.

use serde::{Deserialize, Serialize};

/// One aggregation function certificate and its state at this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfcInfo {
    pub name: String,
    pub scope: String,
    pub sql: String,
    /// `active`, `faulty`, `rejected`, ...
    pub state: String,
    pub reason: Option<String>,
    /// µs since the epoch.
    pub issued: u64,
    pub expires: Option<u64>,
    pub signer: String,
    pub removed: bool,
}
