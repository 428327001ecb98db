//! Armillary's protocol cores as deterministic state machines (no I/O),
//! and the simulator that drives thousands of them in one process. The
//! runtime (`armillary-agent`) drives the same cores over QUIC.

pub mod afc;
pub mod chm;
pub mod cluster;
pub mod config;
pub mod crm;
pub mod dds;
pub mod evn;
pub mod gossip;
pub mod host;
pub mod limits;
pub mod message;
pub mod path;
pub mod refusal;
pub mod row;
pub mod row_wire;
pub mod security;
pub mod sim;
pub mod table;
pub mod time;

pub use afc::{AfcCert, AfcState, AfcStore};
pub use cluster::ClusterId;
pub use config::Config;
pub use gossip::{Agent, Event, InstallError, Stats, Transmit};
pub use message::Message;
pub use path::ZonePath;
pub use refusal::Refusal;
pub use row::{Micros, Row};
