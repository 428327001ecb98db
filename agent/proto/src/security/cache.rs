//! A bounded set of things already verified, keyed by a secret-keyed 128-bit
//! hash of their exact bytes.
//!
//! The keys are two SipHash states with random keys drawn per set, so an
//! attacker who does not know them cannot aim a forgery at a cached entry; a
//! hit means the very bytes were verified before.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Mutex;

/// The identity of verified bytes.
pub type CacheKey = (u64, u64);

/// A bounded set of verified keys; the oldest entries leave first.
pub struct VerifiedSet {
    hash: (RandomState, RandomState),
    inner: Mutex<Inner>,
    cap: usize,
}

#[derive(Default)]
struct Inner {
    keys: HashSet<CacheKey>,
    order: VecDeque<CacheKey>,
}

/// Feeds the same bytes to two independently keyed hashers.
pub struct PairHasher(std::hash::DefaultHasher, std::hash::DefaultHasher);

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
        self.1.write(bytes);
    }
    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

impl VerifiedSet {
    pub fn new(cap: usize) -> VerifiedSet {
        VerifiedSet {
            hash: (RandomState::new(), RandomState::new()),
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
        }
    }

    /// The key of whatever `feed` writes into the hasher.
    pub fn key(&self, feed: impl FnOnce(&mut PairHasher)) -> CacheKey {
        let mut h = PairHasher(self.hash.0.build_hasher(), self.hash.1.build_hasher());
        feed(&mut h);
        (h.0.finish(), h.1.finish())
    }

    pub fn contains(&self, key: CacheKey) -> bool {
        self.lock().keys.contains(&key)
    }

    pub fn insert(&self, key: CacheKey) {
        let mut inner = self.lock();
        if !inner.keys.insert(key) {
            return;
        }
        inner.order.push_back(key);
        while inner.order.len() > self.cap {
            if let Some(old) = inner.order.pop_front() {
                inner.keys.remove(&old);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The set holds no invariant a panic could break: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    #[test]
    fn bounded_and_keyed_by_content() {
        let s = VerifiedSet::new(2);
        let k = |x: &str| s.key(|h| x.hash(h));
        assert_eq!(k("a"), k("a"));
        assert_ne!(k("a"), k("b"));
        s.insert(k("a"));
        s.insert(k("b"));
        s.insert(k("b"));
        assert!(s.contains(k("a")));
        s.insert(k("c"));
        assert_eq!(s.len(), 2);
        assert!(!s.contains(k("a")));
        assert!(s.contains(k("c")));
        // Another set draws other hash keys.
        let t = VerifiedSet::new(2);
        assert_ne!(t.key(|h| "a".hash(h)), k("a"));
    }
}
