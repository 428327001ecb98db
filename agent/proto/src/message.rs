//! Gossip messages and their bounded wire encoding.
//!
//! An exchange is push-pull in three messages: `Syn` carries the initiator's
//! digest, `SynAck` the rows the initiator lacks plus the list of rows the
//! responder wants, `Ack` those rows. `Push` carries freshly changed rows down
//! a dissemination tree.

use crate::afc::{AfcCert, MAX_AFC_NAME};
use crate::limits::{
    self, LimitError, MAX_AFC_BYTES, MAX_AFCS_PER_ROW, MAX_ROW_AFC_BYTES, MAX_ROW_BYTES,
    MAX_SIGNATURE,
};
use crate::path::{MAX_COMPONENT_LEN, ZonePath};
use crate::row::{MAX_INPUTS, Micros, Row};
use crate::row_wire::{self, RowDecodeError};
use crate::security::SecurityError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use zone_sql::MAX_AFC_TEXT;

/// Largest message accepted from the network, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// Most digest entries or rows in one message.
pub const MAX_ITEMS: usize = 4096;

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
        #[serde(with = "crate::row_wire::rows")]
        rows: Vec<Arc<Row>>,
        wanted: Vec<Wanted>,
    },
    Ack {
        sender: ZonePath,
        #[serde(with = "crate::row_wire::rows")]
        rows: Vec<Arc<Row>>,
    },
    /// Rows to deliver to every agent inside `target`.
    Push {
        target: ZonePath,
        #[serde(with = "crate::row_wire::rows")]
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
    /// Encoded size in bytes: an upper bound.
    pub fn encoded_len(&self) -> usize {
        1 + 1 + self.name.len() + 10 + 10
    }
}

/// A row the responder wants from the initiator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wanted {
    pub depth: u8,
    pub name: Arc<str>,
}

impl Wanted {
    /// Encoded size in bytes: an upper bound.
    pub fn encoded_len(&self) -> usize {
        1 + 2 + self.name.len()
    }
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
    #[error("invalid row: {0}")]
    Row(#[from] RowError),
}

impl Message {
    /// Rows carried, if any.
    pub fn rows(&self) -> &[Arc<Row>] {
        match self {
            Message::Syn { .. } => &[],
            Message::SynAck { rows, .. }
            | Message::Ack { rows, .. }
            | Message::Push { rows, .. } => rows,
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
                    + wanted.iter().map(|w| w.encoded_len()).sum::<usize>()
            }
            Message::Ack { sender, rows: r } => 3 + sender.as_str().len() + rows(r),
            Message::Push { target, rows: r } => 3 + target.as_str().len() + rows(r),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Sized once from the upper bound: no regrowth while encoding.
        self.encode_after(Vec::with_capacity(self.encoded_len()))
    }

    /// Appends the encoding to `out` (an envelope's header).
    pub fn encode_after(&self, out: Vec<u8>) -> Vec<u8> {
        postcard::to_extend(self, out).unwrap_or_default()
    }

    /// Decodes and checks a message from untrusted bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        // Rows are decoded, validated and sealed one by one as their own
        // encodings (`row_wire`); a refused row refuses the message.
        let _ = row_wire::take_failure();
        let msg: Message =
            postcard::from_bytes(bytes).map_err(|e| match row_wire::take_failure() {
                Some(RowDecodeError::Invalid(r)) => DecodeError::Row(r),
                _ => DecodeError::Malformed(e.to_string()),
            })?;
        msg.validate()?;
        Ok(msg)
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
        Ok(())
    }
}

/// Why a row breaks the rules every receiver applies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("a row for the root zone")]
    RootRow,
    #[error("issuer {issuer} is outside the zone {zone} it speaks for")]
    IssuerOutside { issuer: ZonePath, zone: ZonePath },
    #[error(transparent)]
    Attrs(#[from] LimitError),
    #[error("row signature of {0} bytes; the limit is {MAX_SIGNATURE}")]
    Signature(usize),
    #[error("row certificate: {0}")]
    Cert(SecurityError),
    #[error("{0} inputs listed, or a malformed input name; the limit is {MAX_INPUTS}")]
    Inputs(usize),
    #[error("{0} AFCs in one row; the limit is {MAX_AFCS_PER_ROW}")]
    TooManyAfcs(usize),
    #[error("AFCs of {0} bytes in one row; the limit is {MAX_ROW_AFC_BYTES}")]
    AfcBytes(usize),
    #[error(transparent)]
    Afc(#[from] AfcError),
    #[error("row of {0} bytes; the limit is {MAX_ROW_BYTES}")]
    TooLarge(usize),
}

/// Why an AFC breaks the bounds on its fields.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AfcError {
    #[error("AFC name of {0} bytes; give 1 to {MAX_AFC_NAME}")]
    Name(usize),
    #[error("AFC text of {0} bytes; the limit is {MAX_AFC_TEXT}")]
    Text(usize),
    #[error("oversized AFC signature or signer")]
    Signature,
    #[error("certificate of AFC {name}: {error}")]
    Cert { name: String, error: SecurityError },
    #[error("AFC {name} takes {len} bytes with its certificate; the limit is {MAX_AFC_BYTES}")]
    TooLarge { name: String, len: usize },
}

/// Checks a row's shape: the issuer lies inside the zone it speaks for, the
/// attributes pass [`limits::check_attrs`], the carried AFCs are bounded.
pub fn validate_row(r: &Row) -> Result<(), RowError> {
    if r.zone.is_root() {
        return Err(RowError::RootRow);
    }
    if !r.zone.contains(&r.issuer) {
        return Err(RowError::IssuerOutside {
            issuer: r.issuer.clone(),
            zone: r.zone.clone(),
        });
    }
    limits::check_attrs(&r.attrs)?;
    if r.signature.len() > MAX_SIGNATURE {
        return Err(RowError::Signature(r.signature.len()));
    }
    if let Some(c) = &r.cert {
        c.check_bounds().map_err(RowError::Cert)?;
    }
    if r.inputs.len() > MAX_INPUTS
        || r.inputs
            .iter()
            .any(|(n, _)| n.is_empty() || n.len() > MAX_COMPONENT_LEN)
        || !r
            .inputs
            .windows(2)
            .all(|w| crate::table::cmp_names(&w[0].0, &w[1].0).is_lt())
    {
        return Err(RowError::Inputs(r.inputs.len()));
    }
    if r.afcs.len() > MAX_AFCS_PER_ROW {
        return Err(RowError::TooManyAfcs(r.afcs.len()));
    }
    let mut afc_bytes = 0;
    for a in r.afcs.iter() {
        validate_afc(a)?;
        afc_bytes += a.encoded_len();
    }
    if afc_bytes > MAX_ROW_AFC_BYTES {
        return Err(RowError::AfcBytes(afc_bytes));
    }
    let len = r.encoded_len();
    if len > MAX_ROW_BYTES {
        return Err(RowError::TooLarge(len));
    }
    Ok(())
}

/// Bounds on an AFC's fields (its SQL is checked when the agent stores it).
pub fn validate_afc(a: &AfcCert) -> Result<(), AfcError> {
    if a.name.is_empty() || a.name.len() > MAX_AFC_NAME {
        return Err(AfcError::Name(a.name.len()));
    }
    if a.sql.len() > MAX_AFC_TEXT {
        return Err(AfcError::Text(a.sql.len()));
    }
    if a.signer.len() > 256 || a.signature.len() > MAX_SIGNATURE {
        return Err(AfcError::Signature);
    }
    if let Some(c) = &a.cert {
        c.check_bounds().map_err(|error| AfcError::Cert {
            name: a.name.to_string(),
            error,
        })?;
    }
    let len = a.encoded_len();
    if len > MAX_AFC_BYTES {
        return Err(AfcError::TooLarge {
            name: a.name.to_string(),
            len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zone_sql::{Attrs, Value};

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
                sender: ZonePath::parse("/eu/paris/h7").unwrap(),
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
            sender: ZonePath::parse("/eu/paris/h7").unwrap(),
            rows: vec![Arc::new(r.sealed())],
        };
        assert!(matches!(
            Message::decode(&m.encode()),
            Err(DecodeError::Row(RowError::IssuerOutside { .. }))
        ));
    }
}
