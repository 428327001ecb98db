//! What a service sees of its agent: the zone tree, read-only, and its own
//! attributes in this agent's leaf row.

use crate::gossip::Agent;
use crate::limits::LimitError;
use crate::path::ZonePath;
use crate::row::{Micros, Row};
use std::sync::Arc;
use zone_sql::{Attrs, Value};

/// Why a service could not publish an attribute.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    #[error(
        "attribute {name} is not under this service's prefix {prefix}_; a service publishes only its own attributes"
    )]
    ForeignPrefix { name: String, prefix: &'static str },
    /// A reserved name, a bad value, or a row that would grow past its limits.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// The zone tree as this agent's gossip core holds it, lent to the service
/// named `prefix` for one input.
pub struct Zones<'a> {
    gossip: &'a mut Agent,
    prefix: &'static str,
    now: Micros,
}

impl<'a> Zones<'a> {
    pub(super) fn new(gossip: &'a mut Agent, prefix: &'static str, now: Micros) -> Zones<'a> {
        Zones {
            gossip,
            prefix,
            now,
        }
    }

    /// The time of the input this view is lent for (the agent's clock).
    pub fn now(&self) -> Micros {
        self.now
    }

    /// This agent's leaf zone.
    pub fn leaf(&self) -> &ZonePath {
        self.gossip.leaf()
    }

    /// This agent's gossip address.
    pub fn addr(&self) -> &Arc<str> {
        &self.gossip.config().addr
    }

    /// The zones whose tables this agent holds, root first.
    pub fn zones(&self) -> &[ZonePath] {
        self.gossip.zones()
    }

    /// The child rows of `zone` (one per child zone), if `zone` is one of
    /// [`Zones::zones`].
    pub fn members(&self, zone: &ZonePath) -> Option<&[Arc<Row>]> {
        self.gossip.table(zone)
    }

    /// The contacts of `zone`: its representatives, from this agent's own
    /// evaluation for a zone on its path, from the zone's row for a child
    /// of one. Empty when the agent knows nothing of `zone`.
    pub fn contacts(&self, zone: &ZonePath) -> Vec<Arc<str>> {
        if let Some(attrs) = self.gossip.zone_row(zone) {
            return match attrs.get("contacts") {
                Some(Value::List(l)) => l.to_vec(),
                _ => Vec::new(),
            };
        }
        self.gossip
            .row_of(zone)
            .map(|r| r.contacts().to_vec())
            .unwrap_or_default()
    }

    /// This agent's aggregate row of `zone`, for a zone on its path.
    pub fn aggregate(&self, zone: &ZonePath) -> Option<&Attrs> {
        self.gossip.zone_row(zone)
    }

    /// This agent's own leaf row as last issued.
    pub fn leaf_row(&self) -> Option<&Arc<Row>> {
        self.gossip.row_of(self.gossip.leaf())
    }

    /// The prefix every attribute this service publishes begins with: its
    /// name and `_`.
    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    /// Publishes `name = value` in this agent's leaf row. The name must
    /// begin with the service's prefix (`chm_...` for `chm`) and pass the
    /// row limits; it travels with the next flush.
    pub fn publish(&mut self, name: &str, value: Value) -> Result<(), PublishError> {
        self.own(name)?;
        self.gossip.set_attr(self.now, name, value)?;
        Ok(())
    }

    /// Replaces this service's aggregations with `programs` (AFC SQL whose
    /// outputs are all `NAME_...`): every zone on this agent's path
    /// evaluates them after the system AFC. A service whose aggregations
    /// follow its own replicated state sets the same list on every agent.
    pub fn set_aggregations(
        &mut self,
        programs: Vec<String>,
    ) -> Result<(), crate::gossip::ServiceAggregationError> {
        self.gossip
            .replace_service_aggregations(self.prefix, programs)
    }

    /// The gossip core's settings (round, failure timeouts, skew bound).
    pub fn config(&self) -> &crate::config::Config {
        self.gossip.config()
    }

    /// Removes an attribute this service published; returns whether it was set.
    pub fn unpublish(&mut self, name: &str) -> Result<bool, PublishError> {
        self.own(name)?;
        Ok(self.gossip.unset_attr(self.now, name))
    }

    fn own(&self, name: &str) -> Result<(), PublishError> {
        let ours = name
            .strip_prefix(self.prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('_'));
        if ours {
            Ok(())
        } else {
            Err(PublishError::ForeignPrefix {
                name: name.to_string(),
                prefix: self.prefix,
            })
        }
    }
}
