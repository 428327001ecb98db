//! Balanced zone hierarchies for simulation.

use crate::path::ZonePath;

/// Leaf paths of `agents` agents under a hierarchy with at most `branching`
/// children per zone, as shallow as possible and full at the bottom.
///
/// Zone names are `z0`, `z1`, ... and agent names `a0`, `a1`, ... within their
/// parent; paths are returned sorted, so an agent's index is its rank.
pub fn balanced(agents: usize, branching: usize) -> Vec<ZonePath> {
    let branching = branching.max(2);
    let mut levels = 1;
    let mut cap = branching;
    while cap < agents {
        levels += 1;
        cap = cap.saturating_mul(branching);
    }
    let mut out = Vec::with_capacity(agents);
    split(&ZonePath::root(), agents, levels, branching, &mut out);
    out.sort();
    out
}

fn split(zone: &ZonePath, n: usize, levels: usize, b: usize, out: &mut Vec<ZonePath>) {
    if levels == 1 {
        for i in 0..n {
            out.push(zone.child(&format!("a{i:02}")).expect("valid name"));
        }
        return;
    }
    let below = b.pow(levels as u32 - 1);
    let children = n.div_ceil(below).max(1);
    for c in 0..children {
        let share = n / children + usize::from(c < n % children);
        let child = zone.child(&format!("z{c:02}")).expect("valid name");
        split(&child, share, levels - 1, b, out);
    }
}

/// Number of zone tables an agent holds in this hierarchy (its depth).
pub fn levels(leaves: &[ZonePath]) -> usize {
    leaves.iter().map(|l| l.depth()).max().unwrap_or(0)
}

/// One configuration per leaf, as the tests and scenarios start them: each
/// agent's randomness derived from `seed` and its index, and the next leaf
/// (wrapping) as its seed to join through.
pub fn configs(leaves: &[ZonePath], seed: u64) -> Vec<crate::Config> {
    let n = leaves.len();
    leaves
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut c = crate::Config::new(l.clone(), l.as_arc().clone());
            c.rng_seed = seed ^ (i as u64 * 7919);
            c.seeds = vec![leaves[(i + 1) % n].as_arc().clone()];
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_balanced_and_bounded() {
        let t = balanced(100, 16);
        assert_eq!(t.len(), 100);
        assert_eq!(levels(&t), 2);
        let t = balanced(1000, 10);
        assert_eq!(levels(&t), 3);
        // No zone has more than `branching` children.
        let mut counts = std::collections::HashMap::new();
        for l in &t {
            *counts.entry(l.parent().unwrap()).or_insert(0) += 1;
        }
        assert!(counts.values().all(|c| *c <= 10));
        let t = balanced(16, 16);
        assert_eq!(levels(&t), 1);
        let mut u = t.clone();
        u.dedup();
        assert_eq!(u.len(), 16);
    }
}
