//! The deterministic simulator: thousands of protocol cores in one process.

pub mod clock;
pub mod keys;
pub mod oracle;
mod pool;
pub mod scenario;
pub mod tree;
pub mod wire;
pub mod world;

pub use clock::{Clock, EPOCH, MAX_DRIFT_PPM};
pub use scenario::{Report, Scenario, run};
pub use wire::Packet;
pub use world::{NetConfig, NetStats, WireStats, World, available_threads};
