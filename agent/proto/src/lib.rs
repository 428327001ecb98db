//! Armillary's protocol cores as deterministic state machines (no I/O),
//! and the simulator that drives thousands of them in one process. The
//! runtime (`armillary-agent`) drives the same cores over QUIC.

pub mod afc;
pub mod agent;
pub mod config;
pub mod limits;
pub mod message;
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
