//! The simulated network's wire: what travels between two simulated agents
//! is a message's real encoding, made by the sender and decoded, with the
//! receiver's validation, by the addressee, as over QUIC.
//!
//! [`Packet::seal`] and [`Packet::open`] are the two halves of one step
//! (message, bytes, message); a versioned envelope would wrap both.

use crate::message::{DecodeError, Message};

/// A message as it travels: its encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    bytes: Vec<u8>,
    push: bool,
}

impl Packet {
    /// Encodes a message as its sender would put it on the wire.
    pub fn seal(msg: &Message) -> Packet {
        Packet {
            bytes: msg.encode(),
            push: matches!(msg, Message::Push { .. }),
        }
    }

    /// Decodes the bytes as the receiver would: bounded, validated, rows
    /// resealed. A packet that fails here is dropped by the receiver.
    pub fn open(&self) -> Result<Message, DecodeError> {
        Message::decode(&self.bytes)
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
        let p = Packet::seal(&m);
        assert_eq!(p.len(), m.encode().len());
        assert!(!p.is_push());
        assert_eq!(Packet::seal(&p.open().unwrap()), p);
        let push = Packet::seal(&Message::Push {
            target: ZonePath::parse("/a").unwrap(),
            rows: Vec::new(),
        });
        assert!(push.is_push());
    }

    #[test]
    fn garbage_does_not_open() {
        let p = Packet {
            bytes: vec![0xff; 9],
            push: false,
        };
        assert!(p.open().is_err());
    }
}
