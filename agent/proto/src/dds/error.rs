//! Why a DDS operation was refused: one typed error for the runtime's API
//! and CLI to map (an unknown channel is a 404 and exit status 2, a bad
//! stack a 400 and exit status 2, backpressure a 503 to retry).

use super::spec::SpecError;
use super::stack::SendError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DdsError {
    #[error("bad stack: {0}")]
    Spec(#[from] SpecError),
    #[error(
        "channel name {0:?} is not allowed: use letters, digits, '_', '-' and '.', at most 64 bytes"
    )]
    BadName(String),
    #[error(
        "unknown channel {0:?}: create it first (armillary dds create), or wait for the zone tree to carry it here"
    )]
    UnknownChannel(String),
    #[error("channel {0:?} exists already")]
    Exists(String),
    #[error(
        "zone {zone} is not on this agent's path: a channel is created in a zone that holds its creator"
    )]
    ZoneNotOnPath { zone: String },
    #[error("retain {0} is above the limit of 4096 messages")]
    RetainTooLarge(u32),
    #[error("this agent holds its most channels ({0})")]
    TooManyChannels(usize),
    #[error("unknown subscriber {0}")]
    UnknownSubscriber(u64),
    #[error("a channel descriptor that does not parse: {0:?}")]
    BadDescriptor(String),
    #[error(
        "a stack with sign needs agents with certificates: start them with keys (armillary keys, or armillary dev --secure)"
    )]
    NoSigningKey,
    #[error("the service has not started yet (it learns its address at its first timeout)")]
    NotStarted,
    #[error(transparent)]
    Send(#[from] SendError),
}
