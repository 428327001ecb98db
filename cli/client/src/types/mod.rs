//! The API's types, shared by the agent (which answers with them) and the
//! client (which reads them).

pub mod afc;
pub mod chm;
pub mod evn;
pub mod zones;

use serde::{Deserialize, Serialize};

/// An error reply: `{"error": "what happened and what to do"}`, with the
/// WS-Eventing fault's name for EVN's faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}
