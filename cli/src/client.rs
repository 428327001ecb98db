//! The client of an agent's HTTP API, shared by the operator commands
//! (`zones`, `query`, `afc install|list|remove`, `watch`, `set`, `unset`).

use crate::output::CliError;
use armillary_agent::api::{ApiToken, JSON};
use clap::Args;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Where the API is when neither `--api` nor `ARMILLARY_API` says.
pub const DEFAULT_API: &str = "127.0.0.1:8080";
/// How long a request may take (an ad-hoc query runs at most 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A connection to one agent's API.
#[derive(Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
}

impl Client {
    pub fn new(args: &ApiArgs) -> Result<Client, CliError> {
        let text = args.api.trim();
        let full = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let base = Url::parse(&full)
            .ok()
            .filter(|u| u.scheme() == "http" && u.host().is_some())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "--api {text:?} is not an address; give host:port such as 127.0.0.1:8080 (plain http)"
                ))
            })?;
        let mut headers = HeaderMap::new();
        if let Some(t) = args.token()? {
            let mut v = HeaderValue::from_str(&format!("Bearer {}", t.secret()))
                .map_err(|_| CliError::usage("the API token is not a valid header value"))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| CliError::failed(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { base, http })
    }

    /// The address as the user gave it, for messages.
    fn shown(&self) -> String {
        let mut s = self.base.to_string();
        if s.ends_with('/') {
            s.pop();
        }
        s
    }

    /// The URL of `segments` (each percent-encoded) below the base.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
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
        let (status, text) = self.send(method, segments, query, body).await?;
        self.reply(status, &text)
    }

    /// [`Client::call`] for a request the agent may answer 503 to while it
    /// is busy (a publisher held back by flow control): waits and tries
    /// again, backing off, for up to `patience`.
    pub async fn call_when_ready(
        &self,
        method: Method,
        segments: &[&str],
        body: String,
        patience: Duration,
    ) -> Result<Value, CliError> {
        let end = tokio::time::Instant::now() + patience;
        let mut nap = Duration::from_millis(5);
        loop {
            let (status, text) = self
                .send(method.clone(), segments, &[], Some(body.clone()))
                .await?;
            if status != StatusCode::SERVICE_UNAVAILABLE || tokio::time::Instant::now() >= end {
                return self.reply(status, &text);
            }
            tokio::time::sleep(nap).await;
            nap = (nap * 2).min(Duration::from_millis(500));
        }
    }

    /// Sends one request; its status and body.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<(StatusCode, String), CliError> {
        let mut req = self
            .http
            .request(method, self.url(segments, query))
            .timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, JSON).body(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        Ok((status, text))
    }

    /// A reply's JSON, or the API error it carries.
    fn reply(&self, status: StatusCode, text: &str) -> Result<Value, CliError> {
        if !status.is_success() {
            return Err(api_error(status, text));
        }
        serde_json::from_str(text).map_err(|e| {
            CliError::failed(format!(
                "the agent at {} sent a reply that is not JSON ({e}); is this an Armillary API?",
                self.shown()
            ))
        })
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value, CliError> {
        self.call(Method::GET, segments, query, None).await
    }

    /// Opens a long-lived GET (server-sent events), checking its status.
    pub async fn stream(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, CliError> {
        let resp = self
            .http
            .get(self.url(segments, query))
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(api_error(status, &text));
        }
        Ok(resp)
    }

    /// A transport failure, naming the address and what to do.
    pub fn unreachable(&self, e: reqwest::Error) -> CliError {
        let api = self.shown();
        if e.is_connect() {
            return CliError::failed(format!(
                "cannot reach the agent API at {api} ({}). Is an agent running there? \
                 Start one with `armillary agent`, or a local demo system with `armillary dev`; \
                 point --api or ARMILLARY_API at another address",
                root_cause(&e)
            ));
        }
        if e.is_timeout() {
            return CliError::failed(format!(
                "the agent API at {api} did not answer in time; is the agent overloaded?"
            ));
        }
        CliError::failed(format!(
            "request to the agent API at {api} failed: {}",
            root_cause(&e)
        ))
    }
}

/// The deepest cause of an error, which says what actually went wrong
/// ("Connection refused" rather than "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// An error reply: the server's message, exit code 2 for 4xx.
fn api_error(status: StatusCode, text: &str) -> CliError {
    let msg = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let t = text.trim();
            if t.is_empty() {
                format!("the agent answered {status}")
            } else {
                format!(
                    "the agent answered {status}: {}",
                    t.chars().take(300).collect::<String>()
                )
            }
        });
    if status.is_client_error() {
        CliError::usage(msg)
    } else {
        CliError::failed(msg)
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
    fn addresses_and_urls() {
        let c = client("127.0.0.1:9000").unwrap();
        assert_eq!(
            c.url(&["v1", "attrs", "a b"], &[("zone", "/eu")]).as_str(),
            "http://127.0.0.1:9000/v1/attrs/a%20b?zone=%2Feu"
        );
        let c = client("http://host:1/prefix/").unwrap();
        assert_eq!(
            c.url(&["v1", "status"], &[]).as_str(),
            "http://host:1/prefix/v1/status"
        );
        assert_eq!(client("not an address").err().unwrap().exit_code(), 2);
        assert_eq!(client("https://x:1").err().unwrap().exit_code(), 2);
    }

    #[test]
    fn error_replies_keep_the_message() {
        let e = api_error(StatusCode::NOT_FOUND, r#"{"error":"no such zone"}"#);
        assert_eq!((e.to_string().as_str(), e.exit_code()), ("no such zone", 2));
        let e = api_error(StatusCode::SERVICE_UNAVAILABLE, "");
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("503"), "{e}");
    }
}
