//! A zone table: one row per child zone, newest version of each kept.

use crate::path::ZonePath;
use crate::row::{Micros, Row};
use std::sync::Arc;
use zone_sql::Frame;

/// What happened to a row offered to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Not newer than the held version.
    Stale,
    /// The very version held already.
    Same,
    /// Newer; `content_changed` says whether it says anything new.
    Accepted { content_changed: bool },
    /// The table is full and the row names a new child.
    Full,
}

/// The child table of one zone.
#[derive(Debug)]
pub struct ZoneTable {
    pub zone: ZonePath,
    rows: Vec<Arc<Row>>,
    content_version: u64,
    /// No row was issued before this (a lower bound): lets the per-round
    /// expiry and freshness checks skip touching every row.
    oldest: Micros,
}

impl ZoneTable {
    pub fn new(zone: ZonePath) -> Self {
        ZoneTable {
            zone,
            rows: Vec::new(),
            content_version: 0,
            oldest: Micros::MAX,
        }
    }

    /// Rows sorted by child name.
    pub fn rows(&self) -> &[Arc<Row>] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Moves whenever a child is added or removed or a row's content changes.
    pub fn content_version(&self) -> u64 {
        self.content_version
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.rows.binary_search_by(|r| cmp_names(r.name(), name))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Row>> {
        self.find(name).ok().map(|i| &self.rows[i])
    }

    /// Keeps `row` if it is newer than the held version of its child.
    pub fn offer(&mut self, row: Arc<Row>, max_rows: usize) -> Offer {
        let issued = row.issued;
        let offer = self.place(row, max_rows);
        if matches!(offer, Offer::Accepted { .. }) {
            self.oldest = self.oldest.min(issued);
        }
        offer
    }

    fn place(&mut self, row: Arc<Row>, max_rows: usize) -> Offer {
        match self.find(row.name()) {
            Ok(i) => {
                let held = &self.rows[i];
                if row.version() == held.version() {
                    return Offer::Same;
                }
                if row.version() < held.version() {
                    return Offer::Stale;
                }
                let content_changed = row.content_hash() != held.content_hash();
                self.rows[i] = row;
                if content_changed {
                    self.content_version += 1;
                }
                Offer::Accepted { content_changed }
            }
            Err(i) => {
                if self.rows.len() >= max_rows {
                    return Offer::Full;
                }
                self.rows.insert(i, row);
                self.content_version += 1;
                Offer::Accepted {
                    content_changed: true,
                }
            }
        }
    }

    /// Drops rows issued before `cutoff`, except the child named `keep`; returns the dropped rows.
    pub fn expire(&mut self, cutoff: Micros, keep: &str) -> Vec<Arc<Row>> {
        if self.oldest >= cutoff {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        self.rows.retain(|r| {
            let stale = r.issued < cutoff && r.name() != keep;
            if stale {
                dropped.push(r.clone());
            }
            !stale
        });
        if !dropped.is_empty() {
            self.content_version += 1;
        }
        self.oldest = self.oldest_issued().unwrap_or(Micros::MAX);
        dropped
    }

    /// How many rows were issued at or after `since`.
    pub fn fresh_count(&mut self, since: Micros) -> usize {
        if self.oldest >= since {
            return self.rows.len();
        }
        self.oldest = self.oldest_issued().unwrap_or(Micros::MAX);
        self.rows.iter().filter(|r| r.issued >= since).count()
    }

    /// The earliest issue time among the rows.
    pub fn oldest_issued(&self) -> Option<Micros> {
        self.rows.iter().map(|r| r.issued).min()
    }

    /// A columnar view of the rows for evaluation. Not cached: the agent
    /// evaluates only when the content moved, and 100,000 simulated agents
    /// holding a frame per table would cost gigabytes.
    pub fn frame(&self) -> Frame {
        Frame::from_rows(self.rows.iter().map(|r| &r.attrs))
    }
}

/// Orders child names. Names are short, so an inline byte loop beats a call
/// into the C library's memcmp, which dominated table lookups.
#[inline]
pub fn cmp_names(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zone_sql::Attrs;

    fn row(name: &str, issuer: &str, issued: Micros, load: f64) -> Arc<Row> {
        let mut a = Attrs::new();
        a.set("load", load);
        Arc::new(Row::new(
            ZonePath::parse(&format!("/z/{name}")).unwrap(),
            ZonePath::parse(issuer).unwrap(),
            issued,
            a,
            vec![],
        ))
    }

    #[test]
    fn keeps_newest_version_and_tracks_content() {
        let mut t = ZoneTable::new(ZonePath::parse("/z").unwrap());
        assert_eq!(
            t.offer(row("b", "/z/b", 10, 1.0), 16),
            Offer::Accepted {
                content_changed: true
            }
        );
        t.offer(row("a", "/z/a", 10, 1.0), 16);
        assert_eq!(t.rows()[0].name(), "a");
        let v = t.content_version();
        assert_eq!(t.offer(row("b", "/z/b", 5, 9.0), 16), Offer::Stale);
        assert_eq!(
            t.offer(row("b", "/z/b", 11, 1.0), 16),
            Offer::Accepted {
                content_changed: false
            }
        );
        assert_eq!(t.content_version(), v);
        t.offer(row("b", "/z/b", 12, 2.0), 16);
        assert!(t.content_version() > v);
        assert_eq!(t.offer(row("c", "/z/c", 12, 2.0), 2), Offer::Full);
        let dropped = t.expire(11, "a");
        assert!(dropped.is_empty());
        let dropped = t.expire(13, "a");
        assert_eq!(dropped.len(), 1);
        assert_eq!(t.len(), 1);
    }
}
