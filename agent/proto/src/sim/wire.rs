//! The simulated network's wire: what travels between two simulated agents
//! is a message's real encoding, made by the sender and decoded, with the
//! receiver's validation, by the addressee, as over QUIC.
//!
//! [`Packet::seal`] and [`Packet::open`] are the two halves of one step
//! (message, envelope bytes, message), through the envelope codec the
//! runtime uses ([`crate::host::envelope`]).

use crate::cluster::ClusterId;
use crate::host::Outgoing;
use crate::host::envelope::{self, Envelope, EnvelopeError};
use crate::message::Message;

/// A message as it travels: its envelope's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    bytes: Vec<u8>,
    push: bool,
}

impl Packet {
    /// Encodes a gossip message as a sender of `cluster` would put it on the wire.
    pub fn seal(cluster: ClusterId, msg: &Message) -> Packet {
        Packet {
            bytes: envelope::seal_gossip(cluster, msg),
            push: matches!(msg, Message::Push { .. }),
        }
    }

    /// What a host sealed.
    pub fn from_outgoing(out: Outgoing) -> Packet {
        Packet {
            bytes: out.bytes,
            push: out.push,
        }
    }

    /// Opens the envelope as the receiver would: a gossip message bounded,
    /// validated, rows resealed; a service's payload as it came. A packet
    /// that fails here is dropped by the receiver.
    pub fn open(&self, cluster: ClusterId) -> Result<Envelope<'_>, EnvelopeError> {
        Envelope::open(&self.bytes, cluster)
    }

    /// The bytes on the wire.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length on the wire in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// True for an eager push (`Message::Push`), counted apart.
    pub fn is_push(&self) -> bool {
        self.push
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::ZonePath;

    #[test]
    fn sealed_messages_open_to_the_same_bytes() {
        let m = Message::Ack {
            sender: ZonePath::parse("/a/b").unwrap(),
            rows: Vec::new(),
        };
        let p = Packet::seal(ClusterId::default(), &m);
        assert_eq!(p.len(), envelope::HEADER_BYTES + m.encode().len());
        assert!(!p.is_push());
        let Ok(Envelope::Gossip(back)) = p.open(ClusterId::default()) else {
            panic!("a gossip envelope")
        };
        assert_eq!(Packet::seal(ClusterId::default(), &back), p);
        let push = Packet::seal(
            ClusterId::default(),
            &Message::Push {
                target: ZonePath::parse("/a").unwrap(),
                rows: Vec::new(),
            },
        );
        assert!(push.is_push());
    }

    #[test]
    fn garbage_does_not_open() {
        let p = Packet {
            bytes: vec![0xff; 9],
            push: false,
        };
        assert!(p.open(ClusterId::default()).is_err());
    }
}
