//! EVN's messages between agents.

use super::condition::Condition;
use super::event::{Event, EventId};
use crate::path::ZonePath;
use crate::row::Micros;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The most bytes of one EVN message.
pub const MAX_MSG: usize = 64 * 1024;
/// The most event ids one digest lists.
pub const MAX_DIGEST: usize = 512;
/// The most events one reply carries.
pub const MAX_REPLY_EVENTS: usize = 64;
/// The most bytes of events one reply carries.
pub const REPLY_BYTES: usize = 48 * 1024;

/// A condition's digest entry: name, version, setter.
pub type CondVersion = (Arc<str>, Micros, Arc<str>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EvnMsg {
    /// An event pushed down the tree: the receiver spreads it in `down`
    /// (a zone it belongs to), or routes it on toward the event's scope.
    Push { event: Event, down: ZonePath },
    /// Anti-entropy: what the sender (at `leaf`) holds.
    Digest {
        leaf: ZonePath,
        events: Vec<EventId>,
        conds: Vec<CondVersion>,
    },
    /// What the receiver of a digest has that the sender lacked, and what
    /// it wants of the sender's. A reply that wants nothing gets none.
    Reply {
        events: Vec<Event>,
        conds: Vec<Condition>,
        want_events: Vec<EventId>,
        want_conds: Vec<Arc<str>>,
    },
}

/// Why bytes are not an EVN message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("EVN message of {0} bytes, more than {MAX_MSG}")]
    TooLarge(usize),
    #[error("malformed EVN message")]
    Malformed,
    #[error("EVN message lists more than its bounds allow")]
    OverBound,
}

impl EvnMsg {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes untrusted bytes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<EvnMsg, DecodeError> {
        if bytes.len() > MAX_MSG {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let msg: EvnMsg = postcard::from_bytes(bytes).map_err(|_| DecodeError::Malformed)?;
        let ok = match &msg {
            EvnMsg::Push { .. } => true,
            EvnMsg::Digest { events, conds, .. } => {
                events.len() <= MAX_DIGEST
                    && conds.len()
                        <= super::condition::MAX_CONDITIONS + super::condition::MAX_TOMBSTONES
            }
            EvnMsg::Reply {
                events,
                conds,
                want_events,
                want_conds,
            } => {
                events.len() <= MAX_REPLY_EVENTS
                    && want_events.len() <= MAX_DIGEST
                    && conds.len()
                        <= super::condition::MAX_CONDITIONS + super::condition::MAX_TOMBSTONES
                    && want_conds.len()
                        <= super::condition::MAX_CONDITIONS + super::condition::MAX_TOMBSTONES
            }
        };
        if ok {
            Ok(msg)
        } else {
            Err(DecodeError::OverBound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_bytes() {
        let m = EvnMsg::Digest {
            leaf: ZonePath::parse("/eu/a").unwrap(),
            events: vec![("/eu/b".into(), 3)],
            conds: vec![("conns".into(), 9, "/eu/a".into())],
        };
        assert_eq!(EvnMsg::decode(&m.encode()), Ok(m));
        assert_eq!(EvnMsg::decode(&[0xff, 1, 2]), Err(DecodeError::Malformed));
        assert!(matches!(
            EvnMsg::decode(&vec![0; MAX_MSG + 1]),
            Err(DecodeError::TooLarge(_))
        ));
        let over = EvnMsg::Digest {
            leaf: ZonePath::root(),
            events: (0..=MAX_DIGEST as u64)
                .map(|i| (Arc::from("/a"), i))
                .collect(),
            conds: Vec::new(),
        };
        assert_eq!(EvnMsg::decode(&over.encode()), Err(DecodeError::OverBound));
        for n in 0..64 {
            let _ = EvnMsg::decode(&vec![n as u8; n]);
        }
    }
}
