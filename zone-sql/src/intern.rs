//! Interned attribute names: one shared allocation per distinct name.
//!
//! Rows arrive from the network carrying the same few dozen names over and
//! over (`nmembers`, `load`, `contacts`, ...). Decoding each into its own
//! `Arc<str>` costs an allocation per attribute per row, and frames then
//! compare the names byte by byte. Interned names cost one hash lookup, are
//! shared by every row that carries them, and compare by pointer.
//!
//! The table is bounded ([`MAX_INTERNED`] names of at most
//! [`MAX_INTERNED_LEN`] bytes): past the bound, or for a longer name, a name
//! gets an allocation of its own, which is only slower. Hostile peers can
//! fill the table with junk names, never grow it.
//!
//! Each thread keeps a cache in front of the process-wide table, so the hot
//! path takes no lock and every thread hands out the same allocation.

use crate::value::Name;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Deserializer};
use std::cell::RefCell;
use std::sync::{Mutex, OnceLock};

/// Most distinct names the process keeps.
pub const MAX_INTERNED: usize = 16_384;
/// Longest name that is interned, in bytes.
pub const MAX_INTERNED_LEN: usize = 64;

fn global() -> &'static Mutex<FxHashSet<Name>> {
    static TABLE: OnceLock<Mutex<FxHashSet<Name>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

thread_local! {
    static LOCAL: RefCell<FxHashSet<Name>> = RefCell::default();
}

/// The process's shared copy of `s` (a fresh one past the bounds).
pub fn intern(s: &str) -> Name {
    if s.len() > MAX_INTERNED_LEN {
        return Name::from(s);
    }
    LOCAL.with(|local| {
        if let Some(n) = local.borrow().get(s) {
            return n.clone();
        }
        let n = {
            let mut table = global().lock().unwrap_or_else(|e| e.into_inner());
            match table.get(s) {
                Some(n) => n.clone(),
                None if table.len() < MAX_INTERNED => {
                    let n = Name::from(s);
                    table.insert(n.clone());
                    n
                }
                None => return Name::from(s),
            }
        };
        local.borrow_mut().insert(n.clone());
        n
    })
}

/// A name decoded through the interner (`#[serde(deserialize_with)]` and
/// element type of decoded lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interned(pub Name);

impl<'de> Deserialize<'de> for Interned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Interned;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Interned, E> {
                Ok(Interned(intern(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Decodes a name through the interner.
pub fn deserialize_name<'de, D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
    Interned::deserialize(d).map(|n| n.0)
}

/// Decodes `(name, T)` pairs with interned names.
pub fn deserialize_named<'de, D, T>(d: D) -> Result<Vec<(Name, T)>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let v: Vec<(Interned, T)> = Vec::deserialize(d)?;
    Ok(v.into_iter().map(|(n, t)| (n.0, t)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn equal_names_share_one_allocation_across_threads() {
        let a = intern("load");
        let b = std::thread::spawn(|| intern("load")).join().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "load");
    }

    #[test]
    fn long_names_are_not_kept() {
        let long = "x".repeat(MAX_INTERNED_LEN + 1);
        assert!(!Arc::ptr_eq(&intern(&long), &intern(&long)));
        assert_eq!(&*intern(&long), long);
    }

    #[test]
    fn decoded_pairs_are_interned() {
        let v: Vec<(Name, i64)> = deserialize_named(&mut serde_json::Deserializer::from_str(
            r#"[["cpu",1],["cpu",2]]"#,
        ))
        .unwrap();
        assert!(Arc::ptr_eq(&v[0].0, &v[1].0));
        assert!(Arc::ptr_eq(&v[0].0, &intern("cpu")));
    }
}
