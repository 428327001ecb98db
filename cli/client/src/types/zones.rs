//! Zone watches (`/v1/watch`): a zone's row or table as it changes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One record of a zone watch, by the stream's event name.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchRecord {
    /// The zone's row changed (`row`).
    Row(RowChange),
    /// The zone's table changed (`table`).
    Table(TableChange),
    /// The watcher fell behind and missed this many changes (`lagged`).
    Lagged { missed: u64 },
    /// A record this client does not know.
    Other(String, Value),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    pub zone: String,
    /// µs since the epoch.
    pub time: u64,
    pub attrs: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChange {
    pub zone: String,
    pub time: u64,
    pub rows: Value,
}

impl WatchRecord {
    /// The record of SSE event `name` with `data`.
    pub fn of(name: &str, data: Value) -> WatchRecord {
        let parsed = match name {
            "row" => serde_json::from_value(data.clone())
                .map(WatchRecord::Row)
                .ok(),
            "table" => serde_json::from_value(data.clone())
                .map(WatchRecord::Table)
                .ok(),
            "lagged" => data["missed"]
                .as_u64()
                .map(|missed| WatchRecord::Lagged { missed }),
            _ => None,
        };
        parsed.unwrap_or_else(|| WatchRecord::Other(name.to_string(), data))
    }
}
