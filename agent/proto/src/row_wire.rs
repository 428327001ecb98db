//! Rows on the wire: each row inside a message travels as its own encoding
//! (a length-prefixed byte string), and each distinct encoding is decoded
//! and validated once per process.
//!
//! The same row reaches an agent from many peers (a zone row from every
//! member it gossips with, a leaf row from each sibling), and in the
//! simulator the same row reaches thousands of agents. A row is an
//! immutable value and decoding is a pure function of its bytes, so the
//! decoder keeps the rows it made, by their bytes, while anyone still holds
//! them: equal bytes give the row already decoded and validated, exactly
//! what decoding them again would give, without the allocations. A row
//! keeps its own encoding once made ([`Row::wire`]), so a row sent many
//! times is encoded once.
//!
//! A hit compares the whole encoding, never a hash alone. Entries are weak:
//! the cache never keeps a row alive, and forgets dead entries as it grows.

use crate::message::{RowError, validate_row};
use crate::row::Row;
use rustc_hash::FxHasher;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Shards of the cache, so that threads decoding at once rarely wait.
const SHARDS: usize = 64;
/// A shard forgets its dead entries when it has grown to twice its size
/// after the last purge (and at least this).
const PURGE_AT_LEAST: usize = 256;

#[derive(Default)]
struct Shard {
    rows: rustc_hash::FxHashMap<u64, Weak<Row>>,
    purge_at: usize,
}

fn shards() -> &'static [Mutex<Shard>] {
    static CACHE: OnceLock<Vec<Mutex<Shard>>> = OnceLock::new();
    CACHE.get_or_init(|| (0..SHARDS).map(|_| Mutex::default()).collect())
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    bytes.hash(&mut h);
    h.finish()
}

/// The row these bytes encode, validated as every receiver validates rows.
pub fn decode_row(bytes: &[u8]) -> Result<Arc<Row>, RowDecodeError> {
    let k = hash(bytes);
    let shard = &shards()[(k % SHARDS as u64) as usize];
    let lock = || shard.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(held) = lock().rows.get(&k).and_then(Weak::upgrade)
        && held.wire() == bytes
    {
        return Ok(held);
    }
    let row: Row = postcard::from_bytes(bytes).map_err(|_| RowDecodeError::Malformed)?;
    let row = row.sealed_from_wire(bytes);
    validate_row(&row)?;
    let row = Arc::new(row);
    let mut s = lock();
    s.rows.insert(k, Arc::downgrade(&row));
    if s.rows.len() >= s.purge_at.max(PURGE_AT_LEAST) {
        s.rows.retain(|_, w| w.strong_count() > 0);
        s.purge_at = 2 * s.rows.len();
    }
    Ok(row)
}

/// Why the bytes of one row were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowDecodeError {
    #[error("malformed row")]
    Malformed,
    #[error(transparent)]
    Invalid(#[from] RowError),
}

thread_local! {
    /// The typed reason the last row failed inside a message's decoding
    /// (serde's error carries no payload of ours).
    static FAILED: RefCell<Option<RowDecodeError>> = const { RefCell::new(None) };
}

/// The typed reason of the last row refused on this thread, if any; taken
/// by the message decoder right after a failed decode.
pub(crate) fn take_failure() -> Option<RowDecodeError> {
    FAILED.with(|f| f.borrow_mut().take())
}

struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// `#[serde(with)]` for a message's rows: a sequence of row encodings.
pub(crate) mod rows {
    use super::*;

    pub fn serialize<S: Serializer>(rows: &[Arc<Row>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(rows.iter().map(|r| Raw(r.wire())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Arc<Row>>, D::Error> {
        let raw: Vec<&'de [u8]> = Vec::deserialize(d)?;
        raw.into_iter()
            .map(|b| {
                decode_row(b).map_err(|e| {
                    let msg = e.to_string();
                    FAILED.with(|f| *f.borrow_mut() = Some(e));
                    serde::de::Error::custom(msg)
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::ZonePath;
    use zone_sql::Attrs;

    fn row(load: f64) -> Row {
        let mut a = Attrs::new();
        a.set("load", load);
        Row::new(
            ZonePath::parse("/eu/paris").unwrap(),
            ZonePath::parse("/eu/paris/h7").unwrap(),
            1_700_000_000_000_000,
            a,
            Vec::new(),
        )
    }

    #[test]
    fn equal_bytes_decode_to_one_row_while_it_is_held() {
        let r = row(0.5);
        let a = decode_row(r.wire()).unwrap();
        let b = decode_row(r.wire()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.content_hash(), r.content_hash());
        assert_eq!(a.wire(), r.wire());
        let other = decode_row(row(0.75).wire()).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert_ne!(a.content_hash(), other.content_hash());
    }

    #[test]
    fn invalid_rows_are_refused_each_time() {
        let mut r = row(0.5);
        r.issuer = ZonePath::parse("/us/h1").unwrap();
        let r = r.sealed();
        for _ in 0..2 {
            assert!(matches!(
                decode_row(r.wire()),
                Err(RowDecodeError::Invalid(RowError::IssuerOutside { .. }))
            ));
        }
        assert!(matches!(
            decode_row(&[0xff; 7]),
            Err(RowDecodeError::Malformed)
        ));
    }
}
