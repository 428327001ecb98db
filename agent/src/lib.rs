//! The Armillary agent: the zone-tree protocol core as a deterministic
//! state machine (no I/O), and the simulator that drives thousands of them.

pub mod afc;
pub mod agent;
pub mod api;
pub mod config;
pub mod fsutil;
pub mod limits;
pub mod message;
pub mod node;
pub mod path;
pub mod row;
pub mod row_wire;
pub mod security;
pub mod sim;
pub mod table;

pub use afc::{AfcCert, AfcState, AfcStore};
pub use agent::{Agent, Event, InstallError, Stats, Transmit};
pub use config::Config;
pub use message::Message;
pub use path::ZonePath;
pub use row::{Micros, Row};
