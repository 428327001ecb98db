//! The deterministic simulator: thousands of protocol cores in one process.

pub mod scenario;
pub mod tree;
pub mod world;

pub use scenario::{Report, Scenario, run};
pub use world::{NetConfig, World};
