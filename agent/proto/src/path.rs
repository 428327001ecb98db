//! Zone paths: `/` is the root, `/eu/paris` an internal zone, `/eu/paris/h7` a leaf.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 256;
/// Deepest accepted path, in components.
pub const MAX_DEPTH: usize = 16;
/// Longest accepted component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 64;

/// Why a text is not a zone path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("zone path must start with '/': {0:?}")]
    NotAbsolute(String),
    #[error("zone path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("zone path is deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("zone path {0:?} has an empty component (a doubled or trailing '/')")]
    EmptyComponent(String),
    #[error(
        "zone name {0:?} is not allowed: use letters, digits, '-', '_' and '.', at most {MAX_COMPONENT_LEN} bytes"
    )]
    BadComponent(String),
}

/// A validated, absolute zone path. Cheap to clone.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZonePath(Arc<str>);

impl ZonePath {
    /// The root zone `/`.
    pub fn root() -> Self {
        ZonePath(Arc::from("/"))
    }

    /// Parses and validates a path such as `/eu/paris/h7`.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if text.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if !text.starts_with('/') {
            return Err(PathError::NotAbsolute(text.to_string()));
        }
        if text == "/" {
            return Ok(Self::root());
        }
        let mut depth = 0;
        for c in text[1..].split('/') {
            if c.is_empty() {
                return Err(PathError::EmptyComponent(text.to_string()));
            }
            check_component(c)?;
            depth += 1;
        }
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        Ok(ZonePath(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for use as a row's issuer or a child name.
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        &*self.0 == "/"
    }

    /// Number of components: 0 for the root.
    pub fn depth(&self) -> usize {
        if self.is_root() {
            0
        } else {
            self.0.bytes().filter(|b| *b == b'/').count()
        }
    }

    /// The components, root first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0[1..].split('/').filter(|c| !c.is_empty())
    }

    /// The last component (the name this zone has in its parent's table); empty for the root.
    pub fn name(&self) -> &str {
        if self.is_root() {
            ""
        } else {
            let i = self.0.rfind('/').unwrap_or(0);
            &self.0[i + 1..]
        }
    }

    pub fn parent(&self) -> Option<ZonePath> {
        if self.is_root() {
            return None;
        }
        let i = self.0.rfind('/').unwrap_or(0);
        Some(if i == 0 {
            Self::root()
        } else {
            ZonePath(Arc::from(&self.0[..i]))
        })
    }

    /// The ancestor with `depth` components (`self` when `depth` equals its own depth).
    pub fn ancestor(&self, depth: usize) -> ZonePath {
        if depth == 0 {
            return Self::root();
        }
        let mut seen = 0;
        for (i, b) in self.0.bytes().enumerate().skip(1) {
            if b == b'/' {
                seen += 1;
                if seen == depth {
                    return ZonePath(Arc::from(&self.0[..i]));
                }
            }
        }
        self.clone()
    }

    /// The child zone `self/name`.
    pub fn child(&self, name: &str) -> Result<ZonePath, PathError> {
        check_component(name)?;
        let text = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.0)
        };
        ZonePath::parse(&text)
    }

    /// True when `self` is a direct child of `parent`.
    pub fn is_child_of(&self, parent: &ZonePath) -> bool {
        let (me, p) = (self.0.as_bytes(), parent.0.as_bytes());
        let start = if parent.is_root() { 1 } else { p.len() + 1 };
        me.len() > start
            && me.starts_with(p)
            && me[start - 1] == b'/'
            && !me[start..].contains(&b'/')
    }

    /// True when `self` is `other` or one of its ancestors.
    pub fn contains(&self, other: &ZonePath) -> bool {
        self.is_root()
            || (other.0.starts_with(&*self.0)
                && (other.0.len() == self.0.len() || other.0.as_bytes()[self.0.len()] == b'/'))
    }

    /// The depth of the deepest zone containing both paths.
    pub fn common_depth(&self, other: &ZonePath) -> usize {
        self.components()
            .zip(other.components())
            .take_while(|(a, b)| a == b)
            .count()
    }
}

fn check_component(c: &str) -> Result<(), PathError> {
    let ok = crate::limits::is_plain_name(c, MAX_COMPONENT_LEN) && c != "." && c != "..";
    if ok {
        Ok(())
    } else {
        Err(PathError::BadComponent(c.to_string()))
    }
}

impl fmt::Display for ZonePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ZonePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::str::FromStr for ZonePath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ZonePath::parse(s)
    }
}

impl Serialize for ZonePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ZonePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ZonePath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ZonePath {
        ZonePath::parse(s).unwrap()
    }

    #[test]
    fn parses_and_navigates() {
        let leaf = p("/eu/paris/h7");
        assert_eq!(leaf.depth(), 3);
        assert_eq!(leaf.name(), "h7");
        assert_eq!(leaf.parent().unwrap(), p("/eu/paris"));
        assert_eq!(leaf.ancestor(1), p("/eu"));
        assert_eq!(leaf.ancestor(0), ZonePath::root());
        assert_eq!(leaf.ancestor(3), leaf);
        assert_eq!(p("/eu").parent().unwrap(), ZonePath::root());
        assert!(ZonePath::root().parent().is_none());
        assert_eq!(ZonePath::root().depth(), 0);
        assert_eq!(p("/eu").child("x").unwrap(), p("/eu/x"));
        assert_eq!(ZonePath::root().child("x").unwrap(), p("/x"));
    }

    #[test]
    fn containment_respects_component_boundaries() {
        assert!(p("/eu").contains(&p("/eu/paris")));
        assert!(p("/eu").contains(&p("/eu")));
        assert!(!p("/eu").contains(&p("/europe")));
        assert!(ZonePath::root().contains(&p("/x/y")));
        assert_eq!(p("/a/b/c").common_depth(&p("/a/b/d")), 2);
        assert_eq!(p("/a/b/c").common_depth(&p("/x")), 0);
        assert!(p("/a/b").is_child_of(&p("/a")));
        assert!(p("/a").is_child_of(&ZonePath::root()));
        assert!(!p("/a/b/c").is_child_of(&p("/a")));
        assert!(!p("/ab").is_child_of(&p("/a")));
        assert!(!p("/a").is_child_of(&p("/a")));
    }

    #[test]
    fn rejects_bad_paths() {
        assert!(matches!(
            ZonePath::parse("eu"),
            Err(PathError::NotAbsolute(_))
        ));
        assert!(matches!(
            ZonePath::parse("/eu//x"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            ZonePath::parse("/eu/"),
            Err(PathError::EmptyComponent(_))
        ));
        assert!(matches!(
            ZonePath::parse("/e u"),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            ZonePath::parse("/.."),
            Err(PathError::BadComponent(_))
        ));
        assert!(matches!(
            ZonePath::parse(&"/a".repeat(200)),
            Err(PathError::TooLong)
        ));
        assert!(matches!(
            ZonePath::parse(&"/a".repeat(20)),
            Err(PathError::TooDeep)
        ));
    }
}
