//! The wire envelope: what every message carries before its payload, so a
//! receiver knows how to read it and which core it is for.
//!
//! ```text
//! version: u8 | cluster: u64 | service: u16 | payload     (little-endian)
//! ```
//!
//! An unknown version is refused as such ([`EnvelopeError::Version`]), not
//! as garbage, so that mixed versions during an upgrade are told apart from
//! hostile input; so is another cluster's message
//! ([`EnvelopeError::Cluster`]), which the transport also refuses at the
//! hello. The gossip core's payload is a [`Message`] decoded here,
//! with the receiver's validation; a service's payload is its own to decode.

use super::ServiceId;
use crate::cluster::ClusterId;
use crate::message::{DecodeError, Message};
use crate::refusal::Refusal;

/// The envelope format this build writes and reads. Version 2: the
/// transport carries several envelopes per stream, each after its length.
pub const FORMAT_VERSION: u8 = 2;
/// The gossip core's service id.
pub const GOSSIP: ServiceId = 0;
/// Bytes before the payload.
pub const HEADER_BYTES: usize = 11;

/// An opened envelope.
#[derive(Debug)]
pub enum Envelope<'a> {
    Gossip(Message),
    Service { id: ServiceId, payload: &'a [u8] },
}

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope of {0} bytes is shorter than its header")]
    Short(usize),
    #[error(
        "envelope format version {got}, but this agent reads version {FORMAT_VERSION}; run one version of armillary across the cluster"
    )]
    Version { got: u8 },
    #[error(
        "a message of cluster {got}, but this agent is in cluster {ours}; start agents of one system with the same --cluster-id"
    )]
    Cluster { got: ClusterId, ours: ClusterId },
    #[error(transparent)]
    Gossip(#[from] DecodeError),
}

impl EnvelopeError {
    pub fn refusal(&self) -> Refusal {
        match self {
            EnvelopeError::Version { .. } => Refusal::UnknownVersion,
            EnvelopeError::Cluster { .. } => Refusal::WrongCluster,
            EnvelopeError::Short(_) | EnvelopeError::Gossip(_) => Refusal::MalformedMessage,
        }
    }
}

fn header(cluster: ClusterId, service: ServiceId, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + capacity);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&cluster.0.to_le_bytes());
    out.extend_from_slice(&service.to_le_bytes());
    out
}

/// A gossip message in its envelope.
pub fn seal_gossip(cluster: ClusterId, msg: &Message) -> Vec<u8> {
    msg.encode_after(header(cluster, GOSSIP, msg.encoded_len()))
}

/// A service's encoded payload in its envelope.
pub fn seal(cluster: ClusterId, service: ServiceId, payload: &[u8]) -> Vec<u8> {
    let mut out = header(cluster, service, payload.len());
    out.extend_from_slice(payload);
    out
}

impl<'a> Envelope<'a> {
    /// Reads the header of untrusted bytes for an agent of `cluster` and,
    /// for the gossip core, decodes and validates the message. Never panics.
    pub fn open(bytes: &'a [u8], cluster: ClusterId) -> Result<Envelope<'a>, EnvelopeError> {
        let (id, payload) = Envelope::split(bytes, cluster)?;
        if id == GOSSIP {
            return Ok(Envelope::Gossip(Message::decode(payload)?));
        }
        Ok(Envelope::Service { id, payload })
    }

    /// The service id and the payload, the version and cluster checked.
    pub fn split(bytes: &[u8], cluster: ClusterId) -> Result<(ServiceId, &[u8]), EnvelopeError> {
        // The version first: another version's header may be laid out otherwise.
        match bytes.first() {
            None => return Err(EnvelopeError::Short(0)),
            Some(&v) if v != FORMAT_VERSION => return Err(EnvelopeError::Version { got: v }),
            Some(_) => {}
        }
        if bytes.len() < HEADER_BYTES {
            return Err(EnvelopeError::Short(bytes.len()));
        }
        let mut id8 = [0u8; 8];
        id8.copy_from_slice(&bytes[1..9]);
        let got = ClusterId(u64::from_le_bytes(id8));
        if got != cluster {
            return Err(EnvelopeError::Cluster { got, ours: cluster });
        }
        let id = u16::from_le_bytes([bytes[9], bytes[10]]);
        Ok((id, &bytes[HEADER_BYTES..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::ZonePath;

    #[test]
    fn envelopes_round_trip_and_refuse_other_versions() {
        let m = Message::Ack {
            sender: ZonePath::parse("/a/b").unwrap(),
            rows: Vec::new(),
        };
        let ours = ClusterId::default();
        let sealed = seal_gossip(ours, &m);
        assert_eq!(&sealed[HEADER_BYTES..], &m.encode()[..]);
        assert!(matches!(
            Envelope::open(&sealed, ours),
            Ok(Envelope::Gossip(Message::Ack { .. }))
        ));
        let s = seal(ours, 7, b"hi");
        assert!(matches!(
            Envelope::open(&s, ours),
            Ok(Envelope::Service {
                id: 7,
                payload: b"hi"
            })
        ));
        let mut future = s.clone();
        future[0] = FORMAT_VERSION + 1;
        let e = Envelope::open(&future, ours).unwrap_err();
        assert_eq!(e.refusal(), Refusal::UnknownVersion);
        let other = ClusterId::named("other").unwrap();
        let e = Envelope::open(&s, other).unwrap_err();
        assert_eq!(e.refusal(), Refusal::WrongCluster);
        assert!(e.to_string().contains("--cluster-id"), "{e}");
        assert_eq!(
            Envelope::open(&s[..5], ours).unwrap_err().refusal(),
            Refusal::MalformedMessage
        );
    }
}
