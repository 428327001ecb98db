//! The deterministic simulator: thousands of protocol cores in one process.

mod pool;
pub mod scenario;
pub mod tree;
pub mod world;

pub use scenario::{Report, Scenario, run};
pub use world::{NetConfig, World, available_threads};
