//! Typed attribute values and attribute maps: the cells and rows of zone tables.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// An attribute name. Cheap to clone; rows share the names they carry.
pub type Name = Arc<str>;

/// One attribute value.
///
/// The set is small on purpose: every value must fit a bounded row and map
/// one-to-one onto an Arrow type for ad-hoc queries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum Value {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Arc<str>),
    /// A point in time, microseconds since the Unix epoch.
    Time(i64),
    /// A span of time in microseconds.
    Duration(i64),
    /// A small list of strings (contact addresses, component names, ...).
    List(Arc<[Arc<str>]>),
}

impl Value {
    /// The name of this value's type, as used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Time(_) => "time",
            Value::Duration(_) => "duration",
            Value::List(_) => "list",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A numeric view of the value (ints, floats, times and durations).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) | Value::Time(i) | Value::Duration(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// A list built from string slices.
    pub fn list<I, S>(items: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: Into<Arc<str>>,
    {
        Value::List(items.into_iter().map(Into::into).collect())
    }

    /// An estimate of the encoded size in bytes, used to bound rows.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Bool(_) => 2,
            Value::Int(_) | Value::Time(_) | Value::Duration(_) => 9,
            Value::Float(_) => 9,
            Value::Str(s) => 3 + s.len(),
            Value::List(l) => 3 + l.iter().map(|s| 2 + s.len()).sum::<usize>(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::Time(us) => {
                let t =
                    std::time::UNIX_EPOCH + std::time::Duration::from_micros((*us).max(0) as u64);
                write!(f, "{}", humantime::format_rfc3339_micros(t))
            }
            Value::Duration(us) => {
                let d = std::time::Duration::from_micros(us.unsigned_abs());
                let sign = if *us < 0 { "-" } else { "" };
                write!(f, "{sign}{}", humantime::format_duration(d))
            }
            Value::List(items) => {
                f.write_str("[")?;
                for (i, s) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(s)?;
                }
                f.write_str("]")
            }
        }
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}

/// The attributes of one row: a map from name to value, kept sorted by name.
///
/// Rows are small (tens of attributes), so a sorted vector beats a tree map
/// for both lookup and memory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Attrs(
    #[serde(deserialize_with = "crate::intern::deserialize_named")] Vec<(Name, Value)>,
);

impl Attrs {
    pub fn new() -> Self {
        Attrs(Vec::new())
    }

    /// Builds a row from entries already sorted by unique name; callers that
    /// know the order up front skip the per-entry binary search of `set`.
    pub(crate) fn from_sorted(entries: Vec<(Name, Value)>) -> Self {
        let a = Attrs(entries);
        debug_assert!(a.is_well_formed());
        a
    }

    /// The entries, sorted by name.
    pub fn entries(&self) -> &[(Name, Value)] {
        &self.0
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Sets `name` to `value`, replacing any previous value.
    pub fn set(&mut self, name: impl Into<Name>, value: impl Into<Value>) {
        let name = name.into();
        let value = value.into();
        match self.0.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<Value> {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Name, &Value)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn names(&self) -> impl Iterator<Item = &Name> {
        self.0.iter().map(|(n, _)| n)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An estimate of the encoded size in bytes, used to bound rows.
    pub fn encoded_len(&self) -> usize {
        2 + self
            .0
            .iter()
            .map(|(n, v)| 1 + n.len() + v.encoded_len())
            .sum::<usize>()
    }

    /// True when every entry is sorted by a unique name (checked on decode).
    pub fn is_well_formed(&self) -> bool {
        self.0.windows(2).all(|w| w[0].0 < w[1].0)
    }
}

impl<N: Into<Name>, V: Into<Value>> FromIterator<(N, V)> for Attrs {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        let mut a = Attrs::new();
        for (n, v) in iter {
            a.set(n, v);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_stay_sorted_and_unique() {
        let mut a = Attrs::new();
        a.set("b", 2i64);
        a.set("a", 1i64);
        a.set("b", 3i64);
        assert_eq!(a.len(), 2);
        assert!(a.is_well_formed());
        assert_eq!(a.get("b"), Some(&Value::Int(3)));
        assert_eq!(a.remove("a"), Some(Value::Int(1)));
        assert_eq!(a.get("a"), None);
    }

    #[test]
    fn values_display_for_humans() {
        assert_eq!(Value::list(["a", "b"]).to_string(), "[a, b]");
        assert_eq!(Value::Null.to_string(), "NULL");
        assert_eq!(Value::Duration(1_500_000).to_string(), "1s 500ms");
    }
}
