//! The Armillary agent's runtime: it drives the protocol cores of
//! `armillary-proto` over QUIC with tokio, keeps the data directory, serves
//! the HTTP API and reads the sensors. The protocol modules are re-exported
//! here so that the binary and the tests name one crate.

pub mod api;
pub mod chm;
pub mod clock;
pub mod crm;
pub mod dds;
pub mod evn;
pub mod fsutil;
pub mod keys;
pub mod node;

pub use armillary_proto::{
    afc, cluster, config, gossip, host, limits, message, path, refusal, row, row_wire, sim, table,
    time,
};

/// The security layer of `armillary-proto`, with the keys directory the
/// runtime reads and writes and the wall clock certificates are checked against.
pub mod security {
    pub use crate::clock::now_micros;
    pub use crate::keys::{ANCHOR_FILE, KeysDir, KeysError};
    pub use armillary_proto::security::*;
}

pub use afc::{AfcCert, AfcState, AfcStore};
pub use cluster::ClusterId;
pub use config::Config;
pub use gossip::{Agent, Event, InstallError, Stats, Transmit};
pub use message::Message;
pub use path::ZonePath;
pub use refusal::Refusal;
pub use row::{Micros, Row};
