//! EVN: WS-Eventing subscriptions, urgent events, local tables and
//! distributed conditions (`/v1/evn/...`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/evn/subscriptions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Only events published to this zone or inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// A duration (`10m`, `PT10M`), a date-time, or milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    /// Shorthand for a push delivery to this URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_to: Option<String>,
}

impl SubscribeRequest {
    /// A streamed subscription with a SQL filter.
    pub fn sql(filter: &str) -> SubscribeRequest {
        SubscribeRequest {
            filter: Some(Filter::Sql(filter.to_string())),
            ..SubscribeRequest::default()
        }
    }
}

/// A filter: SQL text, or an expression in a named dialect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Filter {
    Sql(String),
    Dialect {
        #[serde(default)]
        dialect: Option<String>,
        expr: String,
    },
}

/// How events reach the subscriber: `stream` (SSE) or `push` (POST).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_to: Option<String>,
}

/// A subscription's state (Subscribe's reply and GetStatus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    pub id: String,
    /// RFC 3339.
    pub expires: String,
    pub expires_in_ms: u64,
    pub filter: Option<String>,
    pub zone: Option<String>,
    pub delivery: DeliveryInfo,
    pub delivered: u64,
    pub created: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryInfo {
    pub mode: String,
    pub notify_to: Option<String>,
    pub end_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionList {
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// `POST /v1/evn/subscriptions/{id}/renew`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewed {
    pub id: String,
    pub expires: String,
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    pub id: String,
    pub ended: bool,
}

/// One record of a subscription's stream (and of a push).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    Event(EventRecord),
    End(EndRecord),
}

/// An event as subscribers get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// `SEQ@ORIGIN`.
    pub id: String,
    pub topic: String,
    pub zone: String,
    pub origin: String,
    pub seq: u64,
    /// Its publication, RFC 3339 on the origin's clock.
    pub time: String,
    pub data: Value,
    /// When it was delivered here (in the agent's recent events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<String>,
}

/// A subscription's end (SubscriptionEnd, or the stream's last record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndRecord {
    pub id: String,
    /// `SourceShuttingDown`, `SourceCancelling`, `DeliveryFailure`,
    /// `Expired` or `Unsubscribed`.
    pub reason: String,
    /// Only this stream ends: the agent stops, the subscription is kept and
    /// may be streamed again after its restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resumes: bool,
}

/// `POST /v1/evn/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub zone: String,
    pub topic: String,
    #[serde(default)]
    pub data: Value,
    /// A duration (`30s`); default one minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub id: String,
    pub origin: String,
    pub seq: u64,
    pub zone: String,
    pub topic: String,
    pub signed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<EventRecord>,
}

/// `PUT /v1/evn/tables/{name}`: the table's rows, objects of one shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRequest {
    pub rows: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    pub table: String,
    pub rows: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableList {
    pub tables: Vec<TableInfo>,
}

/// `POST /v1/evn/conditions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionRequest {
    pub name: String,
    pub zone: String,
    pub sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u64>,
    /// How long the threshold must hold before it fires (`30s`).
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionInstalled {
    pub name: String,
    pub installed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionRemoved {
    pub name: String,
    pub removed: bool,
}

/// A condition and its scope-wide answer as one agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionInfo {
    pub name: String,
    pub zone: String,
    pub sql: String,
    pub min: u64,
    pub for_ms: u64,
    pub keep_firing_for_ms: u64,
    /// `firing`, `pending` or `cleared`.
    pub state: String,
    pub value: Option<bool>,
    pub hits: Option<u64>,
    pub contributors: Option<u64>,
    pub expected: Option<u64>,
    /// Some of the agents that did not contribute.
    pub missing: Option<Vec<String>>,
    pub staleness_ms: Option<u64>,
    pub evaluated_here: bool,
    /// This agent's own result, or why it has none.
    pub local: Option<bool>,
    pub local_error: Option<String>,
    pub since: Option<String>,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionList {
    pub conditions: Vec<ConditionInfo>,
}

/// The `data` of a condition transition (topic `condition/NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// `firing` or `cleared`.
    pub state: String,
    pub contributors: u64,
    pub expected: u64,
    pub hits: u64,
    pub missing: Vec<String>,
}
