//! Errors as the user sees them, and small output helpers.

use std::fmt;

/// An error reported to the user, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    msg: String,
    code: u8,
}

impl CliError {
    /// Bad input from the user (exit code 2).
    pub fn usage(msg: impl Into<String>) -> Self {
        CliError {
            msg: msg.into(),
            code: 2,
        }
    }

    /// A failure while doing the work (exit code 1).
    pub fn failed(msg: impl Into<String>) -> Self {
        CliError {
            msg: msg.into(),
            code: 1,
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

pub type CliResult = Result<(), CliError>;

/// Prints a JSON value on one line.
pub fn print_json(v: &impl serde::Serialize) -> CliResult {
    let s = serde_json::to_string(v).map_err(|e| CliError::failed(e.to_string()))?;
    println!("{s}");
    Ok(())
}
