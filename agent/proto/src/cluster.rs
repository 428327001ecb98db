//! The cluster id: which system an agent belongs to. Every envelope and
//! hello carries it, so that two systems sharing a network (a test and a
//! production cluster, two tenants) never mix their zone trees.

use std::fmt;

/// The name a cluster has unless told otherwise: every agent started
/// without `--cluster-id` belongs to it, so dev setups keep working.
pub const DEFAULT_CLUSTER: &str = "armillary";
/// Longest cluster name accepted.
pub const MAX_CLUSTER_NAME: usize = 64;

/// A cluster's id on the wire: the 64-bit FNV-1a hash of its name, the
/// same on every build and platform.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

/// Why a cluster name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterNameError {
    #[error("the cluster id is empty; name the cluster, e.g. `--cluster-id prod`")]
    Empty,
    #[error("the cluster id {0:?} is longer than {MAX_CLUSTER_NAME} bytes")]
    TooLong(String),
    #[error("the cluster id {0:?} has characters other than letters, digits, `-`, `_` and `.`")]
    BadChar(String),
}

impl ClusterId {
    /// The id of the cluster named `name` (letters, digits, `-`, `_`, `.`).
    pub fn named(name: &str) -> Result<ClusterId, ClusterNameError> {
        if name.is_empty() {
            return Err(ClusterNameError::Empty);
        }
        if name.len() > MAX_CLUSTER_NAME {
            return Err(ClusterNameError::TooLong(name.to_string()));
        }
        if !crate::limits::plain_chars(name) {
            return Err(ClusterNameError::BadChar(name.to_string()));
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok(ClusterId(h))
    }
}

impl Default for ClusterId {
    fn default() -> ClusterId {
        ClusterId::named(DEFAULT_CLUSTER).expect("the default cluster name is valid")
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({:016x})", self.0)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_names_checked() {
        // FNV-1a of "armillary": fixed, whatever the build.
        assert_eq!(ClusterId::default(), ClusterId::named("armillary").unwrap());
        assert_eq!(ClusterId::named("a").unwrap().0, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(ClusterId::named("prod").unwrap(), ClusterId::default());
        assert_eq!(ClusterId::named(""), Err(ClusterNameError::Empty));
        assert!(matches!(
            ClusterId::named("a b"),
            Err(ClusterNameError::BadChar(_))
        ));
        assert!(matches!(
            ClusterId::named(&"x".repeat(65)),
            Err(ClusterNameError::TooLong(_))
        ));
    }
}
