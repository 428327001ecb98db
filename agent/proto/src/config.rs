//! Protocol settings of one agent.

use crate::cluster::ClusterId;
use crate::path::ZonePath;
use crate::row::Micros;
use std::sync::Arc;

/// Settings of the protocol core. Times are in microseconds.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cluster this agent belongs to: every envelope carries it, and
    /// agents of other clusters are refused.
    pub cluster: ClusterId,
    /// This agent's leaf zone, e.g. `/eu/paris/h7`.
    pub leaf: ZonePath,
    /// The address other agents gossip to (goes into `contacts`).
    pub addr: Arc<str>,
    /// The address of this agent's API, if any (goes into `servers`).
    pub api_addr: Option<Arc<str>>,
    /// Addresses to gossip with while the agent knows nobody.
    pub seeds: Vec<Arc<str>>,
    /// Length of a gossip round.
    pub round: Micros,
    /// Representatives per zone (`contacts` holds this many).
    pub reps: usize,
    /// Push changed rows eagerly down a dissemination tree (gossip alone when false).
    pub push: bool,
    /// Push bytes allowed per round; beyond it, gossip repairs.
    pub push_budget: usize,
    /// Rows learnt by gossip younger than this many rounds carry the push
    /// on into the receiver's zone (a lost push is repaired within a round
    /// or two instead of the many rounds gossip alone needs).
    pub push_carry_rounds: u64,
    /// Delay to coalesce changes before re-aggregating and pushing.
    pub coalesce: Micros,
    /// Failure timeout in rounds: `fail_base + fail_per_log2 * log2(members)`.
    pub fail_base: u64,
    pub fail_per_log2: u64,
    /// Rows issued further than this ahead of the local clock are refused.
    pub max_skew: Micros,
    /// Largest message this agent sends.
    pub max_message: usize,
    /// Most children one zone table holds.
    pub max_children: usize,
    /// How long AFC tombstones are kept.
    pub tombstone_keep: Micros,
    /// Chance per round of an exchange with a random seed even when the
    /// agent knows others: it merges groups that started apart (an agent
    /// whose first contacts happened to miss part of the system) and costs
    /// one extra exchange every 1/p rounds.
    pub seed_probe: f64,
    /// Seed of the agent's random choices.
    pub rng_seed: u64,
    /// Report zone changes as events (the simulator, which has no
    /// subscribers, turns this off).
    pub events: bool,
}

impl Config {
    /// Sane defaults for an agent at `leaf` reachable at `addr`.
    pub fn new(leaf: ZonePath, addr: impl Into<Arc<str>>) -> Config {
        Config {
            cluster: ClusterId::default(),
            leaf,
            addr: addr.into(),
            api_addr: None,
            seeds: Vec::new(),
            round: 1_000_000,
            reps: 3,
            push: true,
            push_budget: 256 * 1024,
            push_carry_rounds: 3,
            coalesce: 5_000,
            fail_base: 8,
            fail_per_log2: 2,
            max_skew: 10_000_000,
            max_message: 64 * 1024,
            max_children: 1024,
            tombstone_keep: 24 * 3600 * 1_000_000,
            seed_probe: 1.0 / 32.0,
            rng_seed: 0,
            events: true,
        }
    }

    /// The failure timeout of a table whose zone has `members` agents.
    pub fn fail_timeout(&self, members: u64) -> Micros {
        let log2 = 64 - members.max(2).leading_zeros() as u64;
        (self.fail_base + self.fail_per_log2 * log2) * self.round
    }
}
