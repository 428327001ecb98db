//! Named timers: each pending deadline has a key that says what it is for,
//! so a core sets, moves and cancels its timers by name and reports the
//! earliest as its wake-up.

use crate::row::Micros;
use std::collections::{BTreeMap, BTreeSet};

/// A set of named deadlines; setting a name again moves its deadline.
#[derive(Debug, Clone)]
pub struct Timers<K: Ord + Clone> {
    by_time: BTreeSet<(Micros, K)>,
    by_name: BTreeMap<K, Micros>,
}

impl<K: Ord + Clone> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            by_time: BTreeSet::new(),
            by_name: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> Timers<K> {
    /// Sets timer `name` to fire at `at`, replacing its earlier deadline.
    pub fn set(&mut self, name: K, at: Micros) {
        if let Some(old) = self.by_name.insert(name.clone(), at) {
            self.by_time.remove(&(old, name.clone()));
        }
        self.by_time.insert((at, name));
    }

    /// Cancels timer `name`; returns whether it was pending.
    pub fn cancel(&mut self, name: &K) -> bool {
        match self.by_name.remove(name) {
            Some(at) => {
                self.by_time.remove(&(at, name.clone()));
                true
            }
            None => false,
        }
    }

    /// The earliest deadline (`Micros::MAX`: none).
    pub fn next(&self) -> Micros {
        self.by_time.first().map_or(Micros::MAX, |(at, _)| *at)
    }

    /// Removes and returns the earliest timer due at `now`, with its deadline.
    pub fn pop_due(&mut self, now: Micros) -> Option<(K, Micros)> {
        let (at, _) = self.by_time.first()?;
        if *at > now {
            return None;
        }
        let (at, name) = self.by_time.pop_first()?;
        self.by_name.remove(&name);
        Some((name, at))
    }

    /// Moves every pending deadline by `delta` later (after a pause).
    pub fn delay_all(&mut self, delta: Micros) {
        let moved: Vec<(K, Micros)> = self
            .by_name
            .iter()
            .map(|(k, at)| (k.clone(), at.saturating_add(delta)))
            .collect();
        self.by_time.clear();
        self.by_name.clear();
        for (k, at) in moved {
            self.set(k, at);
        }
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let drop: Vec<K> = self.by_name.keys().filter(|k| !keep(k)).cloned().collect();
        for k in drop {
            self.cancel(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_order_and_move_by_name() {
        let mut t: Timers<&str> = Timers::default();
        t.set("probe", 30);
        t.set("ttl", 10);
        t.set("probe", 5);
        assert_eq!(t.next(), 5);
        assert_eq!(t.pop_due(4), None);
        assert_eq!(t.pop_due(20), Some(("probe", 5)));
        assert_eq!(t.pop_due(20), Some(("ttl", 10)));
        assert_eq!(t.next(), Micros::MAX);
        t.set("a", 1);
        t.delay_all(100);
        assert_eq!(t.next(), 101);
        assert!(t.cancel(&"a") && !t.cancel(&"a"));
        assert_eq!(t.next(), Micros::MAX);
    }
}
