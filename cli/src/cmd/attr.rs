//! `armillary set ATTR VALUE` and `armillary unset ATTR`: this agent's own
//! attributes, which go into its leaf row.

use crate::client::{ApiArgs, Client, block_on};
use crate::output::CliResult;
use clap::Args;
use reqwest::Method;
use serde_json::Value;

#[derive(Args)]
pub struct SetArgs {
    /// Attribute name: letters, digits and '_'.
    attr: String,
    /// The value, as JSON when it parses (42, 1.5, true, "x", ["a","b"]),
    /// otherwise as a string.
    #[arg(allow_hyphen_values = true)]
    value: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct UnsetArgs {
    /// Attribute name.
    attr: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// The JSON a command-line value stands for.
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

pub fn set(a: SetArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    let body = parse_value(&a.value).to_string();
    block_on(async move {
        client
            .call(Method::PUT, &["v1", "attrs", &a.attr], &[], Some(body))
            .await?;
        Ok(())
    })
}

pub fn unset(a: UnsetArgs) -> CliResult {
    let client = Client::new(&a.api)?;
    block_on(async move {
        let reply = client
            .call(Method::DELETE, &["v1", "attrs", &a.attr], &[], None)
            .await?;
        if reply["removed"] == false {
            eprintln!("note: {} was not set", a.attr);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_json_when_they_parse() {
        assert_eq!(parse_value("42"), json!(42));
        assert_eq!(parse_value("-1.5"), json!(-1.5));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("\"x\""), json!("x"));
        assert_eq!(parse_value("[\"a\",\"b\"]"), json!(["a", "b"]));
        assert_eq!(parse_value("web"), json!("web"));
        assert_eq!(parse_value("eu west"), json!("eu west"));
    }
}
