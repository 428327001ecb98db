//! The client of an agent's HTTP API, shared by the operator commands
//! (`zones`, `query`, `afc install|list|remove`, `watch`, `set`, `unset`).

use crate::output::CliError;
use armillary_agent::api::ApiToken;
use armillary_client::ClientError;
use clap::Args;
use reqwest::Method;
use serde_json::Value;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Where the API is when neither `--api` nor `ARMILLARY_API` says.
pub const DEFAULT_API: &str = "127.0.0.1:8080";

/// The environment variable that holds the API's bearer token.
pub const TOKEN_ENV: &str = "ARMILLARY_API_TOKEN";

/// The `--api` and `--api-token-file` flags of every client command.
#[derive(Args, Clone, Debug, Default)]
pub struct ApiArgs {
    /// The agent's HTTP API: host:port or a URL.
    #[arg(long = "api", env = "ARMILLARY_API", default_value = DEFAULT_API, value_name = "ADDR")]
    pub api: String,
    /// A file holding the API's bearer token [default: the token in
    /// ARMILLARY_API_TOKEN, if set].
    #[arg(long = "api-token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ApiArgs {
    /// The token to send: from `--api-token-file`, else `ARMILLARY_API_TOKEN`.
    fn token(&self) -> Result<Option<ApiToken>, CliError> {
        if let Some(f) = &self.token_file {
            return ApiToken::read(f)
                .map(Some)
                .map_err(|e| CliError::usage(format!("--api-token-file: {e}")));
        }
        match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => ApiToken::new(&t)
                .map(Some)
                .map_err(|e| CliError::usage(format!("{TOKEN_ENV}: {e}"))),
            _ => Ok(None),
        }
    }
}

/// A connection to one agent's API: the client library's, with its errors
/// as the CLI reports them (exit code 2 for refused input).
#[derive(Clone)]
pub struct Client {
    inner: armillary_client::Client,
}

impl Client {
    pub fn new(args: &ApiArgs) -> Result<Client, CliError> {
        let token = args.token()?;
        let inner = armillary_client::Client::new(&args.api, token.as_ref().map(|t| t.secret()))
            .map_err(|e| match e {
                ClientError::BadAddress(_) => CliError::usage(format!("--api {e}")),
                e => e.into(),
            })?;
        Ok(Client { inner })
    }

    /// Sends a request and returns the JSON reply; API errors carry the
    /// server's message (exit code 2 for 4xx, 1 otherwise).
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<Value, CliError> {
        Ok(self.inner.call(method, segments, query, body).await?)
    }

    /// [`Client::call`] for a request the agent may answer 503 to while it
    /// is busy: waits and tries again, backing off, for up to `patience`.
    pub async fn call_when_ready(
        &self,
        method: Method,
        segments: &[&str],
        body: String,
        patience: Duration,
    ) -> Result<Value, CliError> {
        Ok(self
            .inner
            .call_when_ready(method, segments, body, patience)
            .await?)
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, CliError> {
        self.call(Method::GET, segments, query, None).await
    }
}

/// The typed client's calls (`stream`, `send`, `evn_subscribe`, ...); the
/// methods above answer JSON for the commands that print it as it comes.
impl std::ops::Deref for Client {
    type Target = armillary_client::Client;

    fn deref(&self) -> &armillary_client::Client {
        &self.inner
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        if e.is_bad_input() {
            CliError::usage(e.to_string())
        } else {
            CliError::failed(e.to_string())
        }
    }
}

/// Runs a client command on a small single-threaded runtime.
pub fn block_on(f: impl Future<Output = Result<(), CliError>>) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(api: &str) -> Result<Client, CliError> {
        Client::new(&ApiArgs {
            api: api.into(),
            token_file: None,
        })
    }

    #[test]
    fn bad_addresses_are_bad_input() {
        assert!(client("127.0.0.1:9000").is_ok());
        let e = client("not an address").err().unwrap();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("--api "), "{e}");
        assert_eq!(client("https://x:1").err().unwrap().exit_code(), 2);
    }
}
