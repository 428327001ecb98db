//! One set of limits on what a row may hold.
//!
//! The same checks run where rows are made (attribute changes, sensor
//! readings, AFC installs, aggregation output) and where they are received
//! (message decoding), so an agent never issues a row its peers would refuse.
//!
//! A row's budget, [`MAX_ROW_BYTES`], is the sum of its parts' budgets:
//!
//! | part | limit |
//! |---|---|
//! | attributes | [`MAX_ATTRS_BYTES`], [`MAX_ATTRS`] names, each value [`MAX_VALUE_BYTES`], lists [`MAX_LIST_LEN`] |
//! | carried AFCs | [`MAX_ROW_AFC_BYTES`], [`MAX_AFCS_PER_ROW`]; each AFC [`MAX_AFC_BYTES`] |
//! | AFCs of one scope | [`MAX_SCOPE_AFC_BYTES`], [`MAX_AFCS_PER_SCOPE`] live ones |
//! | issuer certificate and signature | `MAX_CERT_BYTES` + `MAX_SIGNATURE` |
//!
//! Every AFC installed at a scope rides in every row of that scope's table,
//! so the scope's set is bounded below the row's AFC budget; the difference
//! leaves room for AFCs on their way up to a higher scope.

use crate::path::MAX_DEPTH;
use crate::security::MAX_CERT_BYTES;
use zone_sql::{Attrs, Value};

/// Largest row accepted, in bytes (an upper bound of its encoding).
pub const MAX_ROW_BYTES: usize = 32 * 1024;
/// Largest attribute map of one row.
pub const MAX_ATTRS_BYTES: usize = 12 * 1024;
/// Most attributes in one row.
pub const MAX_ATTRS: usize = 128;
/// Largest single value.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest list value.
pub const MAX_LIST_LEN: usize = 64;
/// Longest attribute name.
pub const MAX_ATTR_NAME: usize = 64;
/// Most AFCs one row carries.
pub const MAX_AFCS_PER_ROW: usize = 64;
/// Bytes of AFCs one row carries.
pub const MAX_ROW_AFC_BYTES: usize = 14 * 1024;
/// Largest single AFC with its signer's certificate chain.
pub const MAX_AFC_BYTES: usize = 6 * 1024;
/// Bytes of the AFCs (and not yet collected tombstones) installed at one scope.
pub const MAX_SCOPE_AFC_BYTES: usize = 8 * 1024;
/// Live AFCs installed at one scope.
pub const MAX_AFCS_PER_SCOPE: usize = 32;
/// Longest signature accepted (ed25519 signatures are 64 bytes).
pub const MAX_SIGNATURE: usize = 128;
/// Largest member count a row may claim (far above any real system, far
/// below where sums over a full table could overflow).
pub const MAX_NMEMBERS: i64 = 1 << 40;
/// Room kept for the standard attributes of a zone row; AFC outputs share the rest.
pub const SYSTEM_ATTRS_BYTES: usize = 2048;

const _: () = assert!(
    MAX_ATTRS_BYTES + MAX_ROW_AFC_BYTES + MAX_CERT_BYTES + MAX_SIGNATURE + 1024 <= MAX_ROW_BYTES
);
const _: () = assert!(MAX_SCOPE_AFC_BYTES + MAX_AFC_BYTES <= MAX_ROW_AFC_BYTES);

/// Why a row, or a change to one, breaks a limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "attribute name {0:?} is not allowed: use letters, digits and '_', not starting with a digit, at most {MAX_ATTR_NAME} bytes"
    )]
    BadName(String),
    #[error("attribute {0} is reserved: the agent sets it")]
    Reserved(String),
    #[error("attribute {name} must be {expected}, not {found}")]
    ReservedType {
        name: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("attribute {name} is out of range ({detail})")]
    OutOfRange { name: String, detail: String },
    #[error("attribute {name} is {value}: only finite numbers travel")]
    NotFinite { name: String, value: f64 },
    #[error("attribute {name} holds a list of {len} items; the limit is {MAX_LIST_LEN}")]
    ListTooLong { name: String, len: usize },
    #[error(
        "the value of {name} takes {len} bytes; the limit is {MAX_VALUE_BYTES} bytes per value"
    )]
    ValueTooLarge { name: String, len: usize },
    #[error(
        "the row's attributes would take {len} bytes; the limit is {MAX_ATTRS_BYTES} bytes per row (remove or shorten attributes)"
    )]
    AttrsTooLarge { len: usize },
    #[error("the row would hold {count} attributes; the limit is {MAX_ATTRS}")]
    TooManyAttrs { count: usize },
    #[error("attributes not sorted or repeated")]
    Unsorted,
}

impl LimitError {
    /// True when the limit broken is one of size (HTTP 413 rather than 400).
    pub fn is_size(&self) -> bool {
        matches!(
            self,
            LimitError::ListTooLong { .. }
                | LimitError::ValueTooLarge { .. }
                | LimitError::AttrsTooLarge { .. }
                | LimitError::TooManyAttrs { .. }
        )
    }
}

/// Attributes that every agent writes itself, with their types; applications
/// and AFCs may not set them.
pub const RESERVED: &[(&str, Kind)] = &[
    ("name", Kind::Absent),
    ("nmembers", Kind::Int),
    ("depth", Kind::Int),
    ("contacts", Kind::List),
    ("servers", Kind::List),
    ("nreporting", Kind::Int),
    ("nchildren", Kind::Int),
    ("oldest_input", Kind::Time),
    ("afc_errors", Kind::List),
];

/// The type a reserved attribute must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Never in a row (the API adds `name` when it shows one).
    Absent,
    Int,
    List,
    Time,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Absent => "absent",
            Kind::Int => "int",
            Kind::List => "list",
            Kind::Time => "time",
        }
    }

    fn admits(self, v: &Value) -> bool {
        matches!(
            (self, v),
            (Kind::Int, Value::Int(_))
                | (Kind::List, Value::List(_))
                | (Kind::Time, Value::Time(_))
        )
    }
}

/// True for the names of reserved attributes.
pub fn is_reserved(name: &str) -> bool {
    RESERVED.iter().any(|(n, _)| *n == name)
}

/// Checks an attribute name: letters, digits and '_', not starting with a digit.
pub fn check_name(name: &str) -> Result<(), LimitError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ATTR_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(LimitError::BadName(name.to_string()))
    }
}

/// Checks one value under `name`, ignoring whether the name is reserved.
pub fn check_value(name: &str, v: &Value) -> Result<(), LimitError> {
    match v {
        Value::Float(f) if !f.is_finite() => {
            return Err(LimitError::NotFinite {
                name: name.to_string(),
                value: *f,
            });
        }
        Value::List(l) if l.len() > MAX_LIST_LEN => {
            return Err(LimitError::ListTooLong {
                name: name.to_string(),
                len: l.len(),
            });
        }
        _ => {}
    }
    let len = v.encoded_len();
    if len > MAX_VALUE_BYTES {
        return Err(LimitError::ValueTooLarge {
            name: name.to_string(),
            len,
        });
    }
    Ok(())
}

/// Checks the type and range of a reserved attribute's value.
fn check_reserved(name: &str, kind: Kind, v: &Value) -> Result<(), LimitError> {
    if !kind.admits(v) {
        return Err(LimitError::ReservedType {
            name: name.to_string(),
            expected: kind.name(),
            found: v.type_name(),
        });
    }
    let range = |lo: i64, hi: i64| match v {
        Value::Int(i) if *i < lo || *i > hi => Err(LimitError::OutOfRange {
            name: name.to_string(),
            detail: format!("{i} is outside {lo}..={hi}"),
        }),
        _ => Ok(()),
    };
    match name {
        "nmembers" | "nreporting" | "nchildren" => range(0, MAX_NMEMBERS),
        "depth" => range(0, MAX_DEPTH as i64),
        _ => Ok(()),
    }
}

/// Checks a whole attribute map: sorted unique names, each name and value
/// within its limits, reserved attributes of their types, and the totals.
pub fn check_attrs(attrs: &Attrs) -> Result<(), LimitError> {
    if !attrs.is_well_formed() {
        return Err(LimitError::Unsorted);
    }
    if attrs.len() > MAX_ATTRS {
        return Err(LimitError::TooManyAttrs { count: attrs.len() });
    }
    for (n, v) in attrs.iter() {
        check_name(n)?;
        check_value(n, v)?;
        if let Some((_, kind)) = RESERVED.iter().find(|(r, _)| **r == **n) {
            check_reserved(n, *kind, v)?;
        }
    }
    let len = attrs.encoded_len();
    if len > MAX_ATTRS_BYTES {
        return Err(LimitError::AttrsTooLarge { len });
    }
    Ok(())
}

/// Checks one AFC's output row before it joins a zone row: the names may
/// not be reserved and every value must travel.
pub fn check_output(out: &Attrs) -> Result<(), LimitError> {
    for (n, v) in out.iter() {
        check_name(n)?;
        if is_reserved(n) {
            return Err(LimitError::Reserved(n.to_string()));
        }
        check_value(n, v)?;
    }
    Ok(())
}

/// Whether `s` is made only of letters, digits, `.`, `_` and `-`: the
/// names (zones, clusters, clients, groups) that travel in paths, labels
/// and directory entries without quoting.
pub fn plain_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A plain name of 1 to `max` bytes.
pub fn is_plain_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && plain_chars(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_attributes_are_type_checked() {
        let mut a = Attrs::new();
        a.set("nmembers", 3i64);
        a.set("contacts", Value::list(["x"]));
        assert!(check_attrs(&a).is_ok());
        a.set("nmembers", 1.5);
        assert!(matches!(
            check_attrs(&a),
            Err(LimitError::ReservedType { .. })
        ));
        a.set("nmembers", -1i64);
        assert!(matches!(
            check_attrs(&a),
            Err(LimitError::OutOfRange { .. })
        ));
        a.set("nmembers", 1i64);
        a.set("contacts", "x");
        assert!(check_attrs(&a).is_err());
        a.set("contacts", Value::list(["x"]));
        a.set("name", "h1");
        assert!(check_attrs(&a).is_err());
    }

    #[test]
    fn non_finite_long_and_large_values_are_refused() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(
                check_value("x", &Value::Float(bad)),
                Err(LimitError::NotFinite { .. })
            ));
        }
        let long = Value::list((0..65).map(|i| i.to_string()));
        assert!(check_value("x", &long).unwrap_err().is_size());
        let big = Value::Str("a".repeat(MAX_VALUE_BYTES).into());
        assert!(check_value("x", &big).unwrap_err().is_size());
        let mut a = Attrs::new();
        for i in 0..4 {
            a.set(format!("a{i}"), Value::Str("b".repeat(3900).into()));
        }
        assert!(matches!(
            check_attrs(&a),
            Err(LimitError::AttrsTooLarge { .. })
        ));
    }
}
