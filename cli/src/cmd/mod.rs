//! One module per command.

pub mod afc;
pub mod sim;
