//! One module per command.

pub mod afc;
pub mod agent;
pub mod dev;
pub mod keys;
pub mod sim;
