//! The channel protocol's messages between agents, in the service envelope.
//!
//! ```text
//! 0 join     descriptor: str
//! 1 joined   id: u64, member: u8
//! 2 leave    id: u64
//! 3 frame    id: u64, origin: str, inc, cast: u8, ttl: u8, bytes: rest
//! ```
//!
//! A frame's bytes are what the bottom of its origin's stack wrote; relays
//! forward them untouched.

use super::channel::{ChannelId, MAX_DESCRIPTOR};
use super::codec::{DecodeError, Reader, Writer};
use std::sync::Arc;

/// Largest frame accepted (a fragment of the largest size with its headers).
pub const MAX_FRAME: usize = 1024 * 1024;
const MAX_ADDR: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdsMsg {
    /// A child asks to be fed the channel (refreshed while it wants it).
    Join {
        descriptor: String,
    },
    /// The parent's answer, and its heartbeat: whether it is a member (holds
    /// the streams, so can repair).
    Joined {
        id: ChannelId,
        member: bool,
    },
    Leave {
        id: ChannelId,
    },
    Frame(FrameMsg),
}

/// A frame of a channel's stack on its way between agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMsg {
    pub id: ChannelId,
    /// The stream it belongs to: its origin agent and the incarnation there.
    pub origin: Arc<str>,
    pub inc: u64,
    /// For every member (relayed along the tree), or for the addressee alone.
    pub cast: bool,
    /// Relay hops left.
    pub ttl: u8,
    pub bytes: Vec<u8>,
}

impl DdsMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            DdsMsg::Join { descriptor } => {
                w.u8(0).str(descriptor);
            }
            DdsMsg::Joined { id, member } => {
                w.u8(1).raw(&id.to_le_bytes()).u8(*member as u8);
            }
            DdsMsg::Leave { id } => {
                w.u8(2).raw(&id.to_le_bytes());
            }
            DdsMsg::Frame(f) => {
                w.u8(3)
                    .raw(&f.id.to_le_bytes())
                    .str(&f.origin)
                    .varint(f.inc)
                    .u8(f.cast as u8)
                    .u8(f.ttl)
                    .raw(&f.bytes);
            }
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Result<DdsMsg, DecodeError> {
        let mut r = Reader::new(b);
        let flag = |v: u8| match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag")),
        };
        let m = match r.u8()? {
            0 => DdsMsg::Join {
                descriptor: r.str(MAX_DESCRIPTOR)?.to_string(),
            },
            1 => DdsMsg::Joined {
                id: u64::from_le_bytes(r.array()?),
                member: flag(r.u8()?)?,
            },
            2 => DdsMsg::Leave {
                id: u64::from_le_bytes(r.array()?),
            },
            3 => {
                let id = u64::from_le_bytes(r.array()?);
                let origin: Arc<str> = r.str(MAX_ADDR)?.into();
                let inc = r.varint()?;
                let cast = flag(r.u8()?)?;
                let ttl = r.u8()?;
                let rest = r.rest();
                if rest.len() > MAX_FRAME {
                    return Err(DecodeError::TooLong {
                        len: rest.len() as u64,
                        max: MAX_FRAME,
                    });
                }
                DdsMsg::Frame(FrameMsg {
                    id,
                    origin,
                    inc,
                    cast,
                    ttl,
                    bytes: rest.to_vec(),
                })
            }
            t => return Err(DecodeError::BadTag(t)),
        };
        r.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            DdsMsg::Join {
                descriptor: "a;/;nak;0;skip;x".into(),
            },
            DdsMsg::Joined {
                id: 9,
                member: true,
            },
            DdsMsg::Leave { id: 3 },
            DdsMsg::Frame(FrameMsg {
                id: 1,
                origin: "x:1".into(),
                inc: 77,
                cast: true,
                ttl: 9,
                bytes: vec![1, 2, 3],
            }),
        ] {
            assert_eq!(DdsMsg::decode(&m.encode()).unwrap(), m);
        }
    }

    proptest! {
        #[test]
        fn hostile_messages_never_panic(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = DdsMsg::decode(&b);
        }
    }
}
