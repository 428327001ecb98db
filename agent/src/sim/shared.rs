//! One copy of each distinct row in the simulated world.
//!
//! Every agent decodes and validates every message it receives, and a real
//! agent keeps the rows it decoded. A hundred thousand agents in one
//! process holding their own copies would need ten times the memory (and
//! run several times slower for the cache misses), so once a message is
//! decoded its rows are swapped for an equal copy already held in the
//! world, when there is one. Rows are immutable values: what an agent does
//! with the copy is what it would do with the row it decoded.

use crate::message::Message;
use crate::row::Row;
use rustc_hash::FxHashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

/// Shards of the map, so that the threads of a window rarely wait.
const SHARDS: usize = 64;

/// The rows decoded so far that some agent or message still holds.
pub(crate) struct SharedRows {
    shards: Vec<Mutex<FxHashMap<u64, Weak<Row>>>>,
}

/// A row's identity: one issuer issues one row per zone and issue time
/// (its issue times only grow), and a row's zone is the issuer's ancestor
/// at the row's depth. Every field here is cached in the row, so matching
/// costs no pass over its strings; the issuer and content are known by
/// their 64-bit hashes, whose collision among the rows of one simulation
/// is far less likely than a hardware fault.
fn key(r: &Row) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    (r.issued, r.issuer_hash(), r.content_hash(), r.depth()).hash(&mut h);
    h.finish()
}

fn same(a: &Row, b: &Row) -> bool {
    a.issued == b.issued
        && a.issuer_hash() == b.issuer_hash()
        && a.content_hash() == b.content_hash()
        && a.depth() == b.depth()
        && a.encoded_len() == b.encoded_len()
}

impl SharedRows {
    pub(crate) fn new() -> SharedRows {
        SharedRows {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(FxHashMap::default()))
                .collect(),
        }
    }

    /// The world's copy of `row`: an equal row already held, or `row`
    /// itself, remembered.
    fn share(&self, row: Arc<Row>) -> Arc<Row> {
        let k = key(&row);
        let mut shard = self.shards[(k % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(held) = shard.get(&k).and_then(Weak::upgrade)
            && same(&held, &row)
        {
            return held;
        }
        shard.insert(k, Arc::downgrade(&row));
        row
    }

    /// Swaps `msg`'s rows for the world's copies.
    pub(crate) fn share_rows(&self, msg: &mut Message) {
        for r in msg.rows_mut() {
            *r = self.share(r.clone());
        }
    }

    /// Forgets rows nobody holds any more.
    pub(crate) fn purge(&self) {
        for s in &self.shards {
            s.lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, w| w.strong_count() > 0);
        }
    }
}
