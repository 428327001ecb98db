//! The built-in replicated service: a key-value store with `put`, `get`,
//! `incr` and `cas`, run behind the [`Endpoint`](super::endpoint::Endpoint).
//!
//! Operations and replies are JSON, the same text the API takes and
//! gives, so a request goes from the client to every member unchanged:
//! `{"op":"put","key":"k","value":"v"}` answers `{"value":"v"}`,
//! `{"op":"incr","key":"n","by":2}` answers `{"value":2}`,
//! `{"op":"cas","key":"k","old":"v","new":"w"}` answers
//! `{"ok":true,"value":"w"}`; a refused operation answers `{"error":..}`.
//!
//! Values are text, or integers once `incr` made them so; `cas` compares
//! the text form. The store is bounded ([`MAX_KEYS`], [`MAX_BYTES`]) the
//! same way on every member, so a full store refuses the same writes
//! everywhere, and its snapshot fits a state transfer.

use super::endpoint::StateMachine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MAX_KEY: usize = 256;
pub const MAX_VALUE: usize = 64 * 1024;
pub const MAX_KEYS: usize = 100_000;
/// Keys and values together: under the state a transfer carries.
pub const MAX_BYTES: usize = 48 * 1024 * 1024;

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KvValue {
    Int(i64),
    Text(String),
}

impl KvValue {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            KvValue::Int(n) => n.to_string().into(),
            KvValue::Text(t) => t.as_str().into(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            KvValue::Int(_) => 8,
            KvValue::Text(t) => t.len(),
        }
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum KvOp {
    Put {
        key: String,
        value: String,
    },
    Get {
        key: String,
    },
    Incr {
        key: String,
        #[serde(default = "one")]
        by: i64,
    },
    Cas {
        key: String,
        old: String,
        new: String,
    },
}

fn one() -> i64 {
    1
}

impl KvOp {
    pub fn key(&self) -> &str {
        match self {
            KvOp::Put { key, .. }
            | KvOp::Get { key }
            | KvOp::Incr { key, .. }
            | KvOp::Cas { key, .. } => key,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an op serializes")
    }

    /// Checks what a member can check before the op is ordered: the same
    /// bounds the store applies.
    pub fn check(&self) -> Result<(), KvError> {
        if self.key().is_empty() || self.key().len() > MAX_KEY {
            return Err(KvError::BadKey(self.key().len()));
        }
        let value = match self {
            KvOp::Put { value, .. } => value.len(),
            KvOp::Cas { old, new, .. } => old.len().max(new.len()),
            _ => 0,
        };
        if value > MAX_VALUE {
            return Err(KvError::ValueTooLarge(value));
        }
        Ok(())
    }
}

/// What the store answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KvReply {
    // Tried in this order when parsed: `value` alone would match them all.
    Error { error: String },
    Cas { ok: bool, value: Option<KvValue> },
    Value { value: Option<KvValue> },
}

impl KvReply {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a reply serializes")
    }
}

/// Why an operation is refused (the same on every member).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("a key is 1 to {MAX_KEY} bytes, not {0}")]
    BadKey(usize),
    #[error("a value is at most {MAX_VALUE} bytes, not {0}")]
    ValueTooLarge(usize),
    #[error("the store is full ({MAX_KEYS} keys or {MAX_BYTES} bytes)")]
    Full,
    #[error("key {0:?} holds text, not an integer")]
    NotAnInteger(String),
    #[error("incr overflows key {0:?}")]
    Overflow(String),
    #[error("not an operation: {0}")]
    BadOp(String),
}

/// The store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<String, KvValue>,
    bytes: usize,
}

impl KvStore {
    /// A store holding at most `key` (the model of one key's history).
    pub fn one(key: &str, value: Option<KvValue>) -> KvStore {
        let mut s = KvStore::default();
        if let Some(v) = value {
            s.bytes = key.len() + v.bytes();
            s.map.insert(key.to_string(), v);
        }
        s
    }

    pub fn get(&self, key: &str) -> Option<&KvValue> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Runs one operation on the store.
    pub fn run(&mut self, op: &KvOp) -> Result<KvReply, KvError> {
        op.check()?;
        Ok(match op {
            KvOp::Get { key } => KvReply::Value {
                value: self.map.get(key).cloned(),
            },
            KvOp::Put { key, value } => {
                let v = KvValue::Text(value.clone());
                self.set(key, v.clone())?;
                KvReply::Value { value: Some(v) }
            }
            KvOp::Incr { key, by } => {
                let now = match self.map.get(key) {
                    None => 0,
                    Some(KvValue::Int(n)) => *n,
                    Some(KvValue::Text(t)) => t
                        .parse::<i64>()
                        .map_err(|_| KvError::NotAnInteger(key.clone()))?,
                };
                let v = KvValue::Int(
                    now.checked_add(*by)
                        .ok_or_else(|| KvError::Overflow(key.clone()))?,
                );
                self.set(key, v.clone())?;
                KvReply::Value { value: Some(v) }
            }
            KvOp::Cas { key, old, new } => {
                let hit = self.map.get(key).is_some_and(|v| v.text() == old.as_str());
                if hit {
                    self.set(key, KvValue::Text(new.clone()))?;
                }
                KvReply::Cas {
                    ok: hit,
                    value: self.map.get(key).cloned(),
                }
            }
        })
    }

    fn set(&mut self, key: &str, v: KvValue) -> Result<(), KvError> {
        let old = self
            .map
            .get(key)
            .map(|o| key.len() + o.bytes())
            .unwrap_or(0);
        let bytes = self.bytes - old + key.len() + v.bytes();
        if (old == 0 && self.map.len() >= MAX_KEYS) || bytes > MAX_BYTES {
            return Err(KvError::Full);
        }
        self.bytes = bytes;
        self.map.insert(key.to_string(), v);
        Ok(())
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, op: &[u8]) -> Vec<u8> {
        let reply = match serde_json::from_slice::<KvOp>(op) {
            Ok(op) => self.run(&op).unwrap_or_else(|e| KvReply::Error {
                error: e.to_string(),
            }),
            Err(e) => KvReply::Error {
                error: KvError::BadOp(e.to_string()).to_string(),
            },
        };
        reply.encode()
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.map).expect("a map serializes")
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let map: BTreeMap<String, KvValue> =
            serde_json::from_slice(state).map_err(|e| format!("not a store snapshot: {e}"))?;
        if map.len() > MAX_KEYS {
            return Err(format!("{} keys in a snapshot", map.len()));
        }
        let mut bytes = 0;
        for (k, v) in &map {
            if k.is_empty() || k.len() > MAX_KEY || v.bytes() > MAX_VALUE {
                return Err("a snapshot holds a key or value over the bounds".into());
            }
            bytes += k.len() + v.bytes();
        }
        if bytes > MAX_BYTES {
            return Err(format!("a {bytes}-byte store in a snapshot"));
        }
        self.map = map;
        self.bytes = bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut KvStore, json: &str) -> String {
        String::from_utf8(s.apply(json.as_bytes())).unwrap()
    }

    #[test]
    fn every_operation_answers_as_the_api_shows() {
        let mut s = KvStore::default();
        assert_eq!(
            run(&mut s, r#"{"op":"get","key":"k"}"#),
            r#"{"value":null}"#
        );
        assert_eq!(
            run(&mut s, r#"{"op":"put","key":"k","value":"v"}"#),
            r#"{"value":"v"}"#
        );
        assert_eq!(
            run(&mut s, r#"{"op":"cas","key":"k","old":"x","new":"w"}"#),
            r#"{"ok":false,"value":"v"}"#
        );
        assert_eq!(
            run(&mut s, r#"{"op":"cas","key":"k","old":"v","new":"w"}"#),
            r#"{"ok":true,"value":"w"}"#
        );
        assert_eq!(run(&mut s, r#"{"op":"incr","key":"n"}"#), r#"{"value":1}"#);
        assert_eq!(
            run(&mut s, r#"{"op":"incr","key":"n","by":41}"#),
            r#"{"value":42}"#
        );
        assert_eq!(
            run(&mut s, r#"{"op":"cas","key":"n","old":"42","new":"0"}"#),
            r#"{"ok":true,"value":"0"}"#
        );
        assert_eq!(run(&mut s, r#"{"op":"incr","key":"n"}"#), r#"{"value":1}"#);
        assert!(run(&mut s, r#"{"op":"incr","key":"k"}"#).contains("not an integer"));
        assert!(run(&mut s, r#"{"op":"drop","key":"k"}"#).contains("error"));
        assert!(run(&mut s, "\u{0}garbage").contains("error"));
        for text in [
            r#"{"error":"x"}"#,
            r#"{"ok":false,"value":null}"#,
            r#"{"value":3}"#,
        ] {
            let r: KvReply = serde_json::from_str(text).unwrap();
            assert_eq!(String::from_utf8(r.encode()).unwrap(), text);
        }
        let big = "x".repeat(MAX_VALUE + 1);
        assert!(
            run(
                &mut s,
                &format!(r#"{{"op":"put","key":"k","value":"{big}"}}"#)
            )
            .contains("at most")
        );
        let mut m = KvStore::default();
        m.run(&KvOp::Put {
            key: "max".into(),
            value: i64::MAX.to_string(),
        })
        .unwrap();
        assert_eq!(
            m.run(&KvOp::Incr {
                key: "max".into(),
                by: 1
            }),
            Err(KvError::Overflow("max".into()))
        );
    }

    #[test]
    fn a_full_store_refuses_new_keys_and_snapshots_round_trip() {
        let mut s = KvStore::default();
        for i in 0..MAX_KEYS {
            s.run(&KvOp::Incr {
                key: format!("k{i}"),
                by: 1,
            })
            .unwrap();
        }
        assert_eq!(
            s.run(&KvOp::Incr {
                key: "one-more".into(),
                by: 1
            }),
            Err(KvError::Full)
        );
        // Existing keys still change.
        s.run(&KvOp::Incr {
            key: "k0".into(),
            by: 1,
        })
        .unwrap();
        let mut t = KvStore::default();
        t.restore(&s.snapshot()).unwrap();
        assert_eq!(s, t);
        assert!(t.restore(b"[1,2]").is_err());
        assert!(t.restore(br#"{"":"empty key"}"#).is_err());
    }
}
