//! An urgent event: small, one-time, with system-wide meaning, published
//! to a zone scope by one agent (its origin) and signed by it.
//!
//! Identity is `(origin, seq)`: an origin numbers its events from its own
//! clock (never below the last number it used), so a restarted agent does
//! not reuse a number its peers still hold as seen.

use super::seal::{self, MAX_PROOF, SealError};
use crate::path::ZonePath;
use crate::row::Micros;
use crate::security::{Certificate, Trust};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The most bytes of an event's JSON payload.
pub const MAX_DATA: usize = 8 * 1024;
/// The most bytes of a topic.
pub const MAX_TOPIC: usize = 128;
/// The topic prefix of condition transitions, which only an agent makes,
/// for its own subscribers.
pub const RESERVED_TOPIC: &str = "condition/";
/// The longest time to live an event may ask for.
pub const MAX_TTL: Micros = 3_600_000_000;
/// The time to live of an event that names none.
pub const DEFAULT_TTL: Micros = 60_000_000;

/// Who published an event and its number there.
pub type EventId = (Arc<str>, u64);

/// An urgent event as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The origin agent's leaf zone.
    pub origin: Arc<str>,
    pub seq: u64,
    /// The zone every agent of which is to get it.
    pub scope: ZonePath,
    pub topic: Arc<str>,
    /// JSON text, at most [`MAX_DATA`] bytes.
    pub data: Arc<str>,
    /// When the origin published it (its clock).
    pub time: Micros,
    /// How long after `time` it is still delivered.
    pub ttl: Micros,
    /// The origin's certificate, postcard-encoded (empty when insecure).
    #[serde(with = "serde_bytes_vec")]
    pub proof: Vec<u8>,
    /// ed25519 over [`Event::signing_bytes`] (empty when insecure).
    #[serde(with = "serde_bytes_vec")]
    pub sig: Vec<u8>,
}

/// Why an event is refused, where it is made or where it arrives.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the topic is empty or longer than {MAX_TOPIC} bytes, or has control characters")]
    BadTopic,
    #[error(
        "topics under `{RESERVED_TOPIC}` are the agents' own condition transitions; pick another topic"
    )]
    ReservedTopic,
    #[error("the payload is {0} bytes; an event carries at most {MAX_DATA} bytes of JSON")]
    TooLarge(usize),
    #[error("the payload is not JSON: {0}")]
    NotJson(String),
    #[error("the time to live must be between 1 ms and {} s", MAX_TTL / 1_000_000)]
    BadTtl,
    #[error("the event is not signed, and this cluster signs its events")]
    Unsigned,
    #[error("the event's signature or certificate does not check: {0}")]
    BadSignature(String),
    #[error("the event has expired")]
    Expired,
    #[error("the event was published further ahead of this agent's clock than the skew allowed")]
    FromFuture,
}

impl Event {
    /// Its identity, `(origin, seq)`.
    pub fn id(&self) -> EventId {
        (self.origin.clone(), self.seq)
    }

    /// When it stops being delivered, on the origin's clock.
    pub fn expires(&self) -> Micros {
        self.time.saturating_add(self.ttl)
    }

    /// Checks what the origin chose: the same checks where an event is
    /// made as where it arrives.
    pub fn check_shape(&self) -> Result<(), EventError> {
        check_topic(&self.topic)?;
        check_data(&self.data)?;
        if self.ttl == 0 || self.ttl > MAX_TTL {
            return Err(EventError::BadTtl);
        }
        if self.proof.len() > MAX_PROOF || self.sig.len() > 64 {
            return Err(EventError::BadSignature("oversized proof".into()));
        }
        Ok(())
    }

    /// The bytes the origin signs: every field but the signature.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.data.len() + self.proof.len());
        b.extend_from_slice(b"armillary-evn-event-v1\0");
        for s in [
            &*self.origin,
            self.scope.as_str(),
            &*self.topic,
            &*self.data,
        ] {
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        }
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(&self.time.to_le_bytes());
        b.extend_from_slice(&self.ttl.to_le_bytes());
        b.extend_from_slice(&self.proof);
        b
    }

    /// Signs it with the origin's key, carrying its certificate.
    pub fn sign(&mut self, key: &SigningKey, cert: &Certificate) {
        self.proof = postcard::to_allocvec(cert).unwrap_or_default();
        self.sig = seal::sign(&self.signing_bytes(), key, cert).1;
    }

    /// Checks the signature against the certificate it carries, the
    /// certificate against `trust`, and that it names the origin's zone.
    pub fn verify(&self, trust: &Trust, now: Micros) -> Result<(), EventError> {
        seal::verify(
            &self.signing_bytes(),
            &self.proof,
            &self.sig,
            &self.origin,
            trust,
            now,
        )
        .map_err(|e| match e {
            SealError::Unsigned => EventError::Unsigned,
            SealError::Bad(m) => EventError::BadSignature(m.to_string()),
        })
    }
}

/// Checks a topic: 1 to [`MAX_TOPIC`] bytes, no control characters.
pub fn check_topic(topic: &str) -> Result<(), EventError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC || topic.chars().any(char::is_control) {
        return Err(EventError::BadTopic);
    }
    if topic.starts_with(RESERVED_TOPIC) {
        return Err(EventError::ReservedTopic);
    }
    Ok(())
}

/// Checks a payload: JSON text of at most [`MAX_DATA`] bytes.
pub fn check_data(data: &str) -> Result<(), EventError> {
    if data.len() > MAX_DATA {
        return Err(EventError::TooLarge(data.len()));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(data)
        .map_err(|e| EventError::NotJson(e.to_string()))?;
    Ok(())
}

/// Byte vectors as postcard byte strings.
mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        <&[u8]>::deserialize(d).map(<[u8]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{CertKind, Identity};

    const DAY: Micros = 86_400_000_000;

    fn event() -> Event {
        Event {
            origin: "/eu/a".into(),
            seq: 7,
            scope: ZonePath::parse("/eu").unwrap(),
            topic: "dc/offline".into(),
            data: r#"{"dc":"cleveland"}"#.into(),
            time: DAY,
            ttl: DEFAULT_TTL,
            proof: Vec::new(),
            sig: Vec::new(),
        }
    }

    #[test]
    fn signed_by_its_origin_and_checked_against_the_authority() {
        let root = Identity::new_root(&ZonePath::root(), 0, 10 * DAY);
        let a = root
            .new_child(CertKind::Agent, "/eu/a", 0, 10 * DAY)
            .unwrap();
        let b = root
            .new_child(CertKind::Agent, "/eu/b", 0, 10 * DAY)
            .unwrap();
        let trust = root.trust().unwrap();
        let mut e = event();
        assert_eq!(e.verify(&trust, DAY), Err(EventError::Unsigned));
        e.sign(&a.key, &a.cert);
        e.verify(&trust, DAY).expect("signed by its origin");
        // Changed on the way, or signed by another agent: refused.
        let mut changed = e.clone();
        changed.data = r#"{"dc":"sunnyvale"}"#.into();
        assert!(matches!(
            changed.verify(&trust, DAY),
            Err(EventError::BadSignature(_))
        ));
        let mut other = event();
        other.sign(&b.key, &b.cert);
        assert!(matches!(
            other.verify(&trust, DAY),
            Err(EventError::BadSignature(_))
        ));
    }

    #[test]
    fn shape_is_bounded() {
        let mut e = event();
        e.check_shape().unwrap();
        e.data = format!("\"{}\"", "x".repeat(MAX_DATA)).into();
        assert!(matches!(e.check_shape(), Err(EventError::TooLarge(_))));
        e = event();
        e.data = "{not json".into();
        assert!(matches!(e.check_shape(), Err(EventError::NotJson(_))));
        e = event();
        e.ttl = MAX_TTL + 1;
        assert_eq!(e.check_shape(), Err(EventError::BadTtl));
        e = event();
        e.topic = "".into();
        assert_eq!(e.check_shape(), Err(EventError::BadTopic));
    }
}
