//! Byte fields in serde: base64 text in human-readable formats (the JSON key
//! files an operator reads), plain bytes on the wire (postcard).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

/// Longest byte field accepted when decoding (keys are 32 bytes, signatures 64).
const MAX_BYTES: usize = 256;

/// Base64 text of `bytes` (standard alphabet, padded).
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Bytes of base64 text.
pub fn decode(text: &str) -> Result<Vec<u8>, String> {
    if text.len() > MAX_BYTES * 2 {
        return Err(format!("{} characters of base64 is too long", text.len()));
    }
    STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))
}

pub fn serialize<S: Serializer, T: AsRef<[u8]>>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&encode(v.as_ref()))
    } else {
        s.serialize_bytes(v.as_ref())
    }
}

/// A byte string of any length up to [`MAX_BYTES`].
pub fn deserialize_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    if d.is_human_readable() {
        d.deserialize_str(BytesVisitor)
    } else {
        d.deserialize_bytes(BytesVisitor)
    }
}

/// Exactly 32 bytes (an ed25519 public key).
pub fn deserialize_key<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    let v = deserialize_vec(d)?;
    let n = v.len();
    v.try_into()
        .map_err(|_| de::Error::custom(format!("a key is 32 bytes, not {n}")))
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "at most {MAX_BYTES} bytes, or their base64 text")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        if v.len() > MAX_BYTES {
            return Err(E::custom(format!("{} bytes is too long", v.len())));
        }
        Ok(v.to_vec())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<u8>, E> {
        let bytes = decode(v).map_err(E::custom)?;
        self.visit_bytes(&bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            if out.len() == MAX_BYTES {
                return Err(de::Error::custom("byte string too long"));
            }
            out.push(b);
        }
        Ok(out)
    }
}
