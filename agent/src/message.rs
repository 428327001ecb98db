//! Gossip messages and their bounded wire encoding.
//!
//! An exchange is push-pull in three messages: `Syn` carries the initiator's
//! digest, `SynAck` the rows the initiator lacks plus the list of rows the
//! responder wants, `Ack` those rows. `Push` carries freshly changed rows down
//! a dissemination tree.

use crate::afc::{AfcCert, MAX_AFC_NAME};
use crate::path::ZonePath;
use crate::row::{Micros, Row};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use zone_sql::{MAX_AFC_TEXT, Value};

/// Largest message accepted from the network, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest row accepted, in bytes.
pub const MAX_ROW_BYTES: usize = 16 * 1024;
/// Most AFCs one row may carry.
pub const MAX_AFCS_PER_ROW: usize = 64;
/// Most digest entries or rows in one message.
pub const MAX_ITEMS: usize = 4096;
/// Longest string value or list in a row.
pub const MAX_LIST_LEN: usize = 64;
/// Longest signature accepted (ed25519 signatures are 64 bytes).
pub const MAX_SIGNATURE: usize = 128;

/// One gossip message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Message {
    Syn {
        sender: ZonePath,
        /// The deepest table the sender wants to exchange.
        depth: u8,
        digest: Vec<DigestEntry>,
    },
    SynAck {
        sender: ZonePath,
        rows: Vec<Arc<Row>>,
        wanted: Vec<Wanted>,
    },
    Ack {
        rows: Vec<Arc<Row>>,
    },
    /// Rows to deliver to every agent inside `target`.
    Push {
        target: ZonePath,
        rows: Vec<Arc<Row>>,
    },
}

/// The version of one child row an agent holds: table depth, child name, version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub depth: u8,
    pub name: Arc<str>,
    pub issued: Micros,
    pub issuer_hash: u64,
}

impl DigestEntry {
    pub fn version(&self) -> (Micros, u64) {
        (self.issued, self.issuer_hash)
    }
    fn encoded_len(&self) -> usize {
        1 + 1 + self.name.len() + 10 + 10
    }
}

/// A row the responder wants from the initiator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wanted {
    pub depth: u8,
    pub name: Arc<str>,
}

/// Why bytes from the network were refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("invalid content: {0}")]
    Invalid(String),
}

impl Message {
    /// Rows carried, if any.
    pub fn rows(&self) -> &[Arc<Row>] {
        match self {
            Message::Syn { .. } => &[],
            Message::SynAck { rows, .. } | Message::Ack { rows } | Message::Push { rows, .. } => {
                rows
            }
        }
    }

    /// Rows carried, to replace in place (the simulator swaps decoded rows
    /// for equal copies it already holds).
    pub fn rows_mut(&mut self) -> &mut [Arc<Row>] {
        match self {
            Message::Syn { .. } => &mut [],
            Message::SynAck { rows, .. } | Message::Ack { rows } | Message::Push { rows, .. } => {
                rows
            }
        }
    }

    /// The encoded size in bytes: an upper bound, cheap to compute.
    pub fn encoded_len(&self) -> usize {
        let rows = |rows: &[Arc<Row>]| 3 + rows.iter().map(|r| r.encoded_len()).sum::<usize>();
        1 + match self {
            Message::Syn { sender, digest, .. } => {
                3 + sender.as_str().len()
                    + 1
                    + 3
                    + digest.iter().map(|d| d.encoded_len()).sum::<usize>()
            }
            Message::SynAck {
                sender,
                rows: r,
                wanted,
            } => {
                3 + sender.as_str().len()
                    + rows(r)
                    + 3
                    + wanted.iter().map(|w| 2 + w.name.len()).sum::<usize>()
            }
            Message::Ack { rows: r } => rows(r),
            Message::Push { target, rows: r } => 3 + target.as_str().len() + rows(r),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes and checks a message from untrusted bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let msg: Message =
            postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        msg.validate()?;
        // Rows lose their caches on the wire: recompute them.
        Ok(match msg {
            Message::SynAck {
                sender,
                rows,
                wanted,
            } => Message::SynAck {
                sender,
                rows: reseal(rows),
                wanted,
            },
            Message::Ack { rows } => Message::Ack { rows: reseal(rows) },
            Message::Push { target, rows } => Message::Push {
                target,
                rows: reseal(rows),
            },
            m => m,
        })
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let bad = |s: String| Err(DecodeError::Invalid(s));
        match self {
            Message::Syn { digest, .. } if digest.len() > MAX_ITEMS => {
                return bad(format!("{} digest entries", digest.len()));
            }
            Message::SynAck { wanted, .. } if wanted.len() > MAX_ITEMS => {
                return bad(format!("{} wanted entries", wanted.len()));
            }
            _ => {}
        }
        if self.rows().len() > MAX_ITEMS {
            return bad(format!("{} rows", self.rows().len()));
        }
        for r in self.rows() {
            validate_row(r).map_err(DecodeError::Invalid)?;
        }
        Ok(())
    }
}

fn reseal(rows: Vec<Arc<Row>>) -> Vec<Arc<Row>> {
    rows.into_iter()
        .map(|r| Arc::new(Arc::unwrap_or_clone(r).sealed()))
        .collect()
}

/// Checks a row's shape: the issuer lies inside the zone it speaks for, the
/// attributes are sorted and bounded, the carried AFCs are bounded.
pub fn validate_row(r: &Row) -> Result<(), String> {
    if r.zone.is_root() {
        return Err("a row for the root zone".into());
    }
    if !r.zone.contains(&r.issuer) {
        return Err(format!(
            "issuer {} is outside the zone {} it speaks for",
            r.issuer, r.zone
        ));
    }
    if !r.attrs.is_well_formed() {
        return Err("attributes not sorted or repeated".into());
    }
    for (n, v) in r.attrs.iter() {
        if n.is_empty() || n.len() > 64 {
            return Err(format!("attribute name of {} bytes", n.len()));
        }
        if let Value::List(l) = v
            && l.len() > MAX_LIST_LEN
        {
            return Err(format!("attribute {n} holds a list of {} items", l.len()));
        }
        if let Value::Float(f) = v
            && f.is_nan()
        {
            return Err(format!("attribute {n} is NaN"));
        }
    }
    if r.signature.len() > MAX_SIGNATURE {
        return Err(format!("row signature of {} bytes", r.signature.len()));
    }
    if let Some(c) = &r.cert {
        c.check_bounds()
            .map_err(|e| format!("row certificate: {e}"))?;
    }
    if r.afcs.len() > MAX_AFCS_PER_ROW {
        return Err(format!("{} AFCs in one row", r.afcs.len()));
    }
    for a in r.afcs.iter() {
        validate_afc(a)?;
    }
    let len = r.encoded_len();
    if len > MAX_ROW_BYTES {
        return Err(format!("row of {len} bytes"));
    }
    Ok(())
}

/// Bounds on an AFC's fields (its SQL is checked when the agent stores it).
pub fn validate_afc(a: &AfcCert) -> Result<(), String> {
    if a.name.is_empty() || a.name.len() > MAX_AFC_NAME {
        return Err(format!("AFC name of {} bytes", a.name.len()));
    }
    if a.sql.len() > MAX_AFC_TEXT {
        return Err(format!("AFC text of {} bytes", a.sql.len()));
    }
    if a.signer.len() > 256 || a.signature.len() > MAX_SIGNATURE {
        return Err("oversized AFC signature".into());
    }
    if let Some(c) = &a.cert {
        c.check_bounds()
            .map_err(|e| format!("certificate of AFC {}: {e}", a.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zone_sql::Attrs;

    fn sample_row() -> Arc<Row> {
        let mut a = Attrs::new();
        a.set("load", 0.25);
        a.set("contacts", Value::list(["10.0.0.1:7000", "10.0.0.2:7000"]));
        a.set("os", "linux");
        a.set("nmembers", 16i64);
        Arc::new(Row::new(
            ZonePath::parse("/eu/paris").unwrap(),
            ZonePath::parse("/eu/paris/h7").unwrap(),
            1_700_000_000_000_000,
            a,
            vec![Arc::new(AfcCert::new(
                ZonePath::parse("/eu").unwrap(),
                "load",
                "SELECT AVG(load) AS load",
                12345,
            ))],
        ))
    }

    #[test]
    fn round_trips_and_size_estimate_is_an_upper_bound() {
        let msgs = vec![
            Message::Syn {
                sender: ZonePath::parse("/eu/paris/h7").unwrap(),
                depth: 2,
                digest: vec![DigestEntry {
                    depth: 1,
                    name: "paris".into(),
                    issued: u64::MAX,
                    issuer_hash: u64::MAX,
                }],
            },
            Message::SynAck {
                sender: ZonePath::parse("/eu/paris/h7").unwrap(),
                rows: vec![sample_row(), sample_row()],
                wanted: vec![Wanted {
                    depth: 0,
                    name: "eu".into(),
                }],
            },
            Message::Ack {
                rows: vec![sample_row()],
            },
            Message::Push {
                target: ZonePath::parse("/eu").unwrap(),
                rows: vec![sample_row()],
            },
        ];
        for m in msgs {
            let bytes = m.encode();
            assert!(
                m.encoded_len() >= bytes.len(),
                "estimate {} < actual {}",
                m.encoded_len(),
                bytes.len()
            );
            assert!(m.encoded_len() <= bytes.len() * 2 + 64);
            let back = Message::decode(&bytes).unwrap();
            assert_eq!(back.rows().len(), m.rows().len());
            for (a, b) in back.rows().iter().zip(m.rows()) {
                assert_eq!(a.content_hash(), b.content_hash());
                assert_eq!(a.version(), b.version());
            }
        }
    }

    #[test]
    fn hostile_bytes_are_refused_without_panic() {
        assert!(matches!(
            Message::decode(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = Message::decode(&junk);
        }
        // A row whose issuer lies outside its zone.
        let mut r = Arc::unwrap_or_clone(sample_row());
        r.issuer = ZonePath::parse("/us/h1").unwrap();
        let m = Message::Ack {
            rows: vec![Arc::new(r.sealed())],
        };
        assert!(matches!(
            Message::decode(&m.encode()),
            Err(DecodeError::Invalid(_))
        ));
    }
}
