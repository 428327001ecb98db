//! The HTTP client of one agent's API.

use crate::ClientError;
use crate::sse::{EventStream, Records};
use crate::types::ErrorBody;
use crate::types::afc::AfcInfo;
use crate::types::chm::ComponentRecord;
use crate::types::evn::{
    ConditionInstalled, ConditionList, ConditionRemoved, ConditionRequest, PublishRequest,
    Published, Record, RenewRequest, Renewed, SubscribeRequest, SubscriptionInfo, TableInfo,
    TableRequest, Unsubscribed,
};
use crate::types::zones::WatchRecord;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
pub use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

/// How long a request may take (an ad-hoc query runs at most 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest stream record read: an 8 KiB event with its envelope, or a
/// zone table.
pub const MAX_RECORD: usize = 1 << 20;

/// A connection to one agent's API.
#[derive(Clone, Debug)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
}

impl Client {
    /// The agent at `api` (`host:port` or an `http://` URL), sending the
    /// bearer `token` when given.
    pub fn new(api: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let text = api.trim();
        let full = if text.contains("://") {
            text.to_string()
        } else {
            format!("http://{text}")
        };
        let base = Url::parse(&full)
            .ok()
            .filter(|u| u.scheme() == "http" && u.host().is_some())
            .ok_or_else(|| ClientError::BadAddress(text.to_string()))?;
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            let mut v =
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| ClientError::BadToken)?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .default_headers(headers)
            .build()
            .map_err(|e| ClientError::Transport {
                api: text.to_string(),
                cause: e.to_string(),
            })?;
        Ok(Client { base, http })
    }

    /// The address, for messages.
    pub fn shown(&self) -> String {
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

    /// Sends one request; its status and body.
    pub async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<(StatusCode, String), ClientError> {
        let mut req = self
            .http
            .request(method, self.url(segments, query))
            .timeout(REQUEST_TIMEOUT);
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| self.unreachable(e))?;
        Ok((status, text))
    }

    /// Sends a request and reads the reply as `T`; an error reply is
    /// [`ClientError::Api`] with the agent's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let (status, text) = self.send(method, segments, query, body).await?;
        self.reply(status, &text)
    }

    /// [`Client::call`] with `body` sent as JSON.
    pub async fn call_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: &B,
    ) -> Result<T, ClientError> {
        let text = serde_json::to_string(body).map_err(|e| ClientError::Decode {
            api: self.shown(),
            why: e.to_string(),
        })?;
        self.call(method, segments, &[], Some(text)).await
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        self.call(Method::GET, segments, query, None).await
    }

    /// [`Client::call`] for a request the agent may answer 503 to while it
    /// is busy (a publisher held back by flow control): waits and tries
    /// again, backing off, for up to `patience`.
    pub async fn call_when_ready<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: String,
        patience: Duration,
    ) -> Result<T, ClientError> {
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

    fn reply<T: DeserializeOwned>(&self, status: StatusCode, text: &str) -> Result<T, ClientError> {
        if !status.is_success() {
            return Err(api_error(status, text));
        }
        serde_json::from_str(text).map_err(|e| ClientError::Decode {
            api: self.shown(),
            why: e.to_string(),
        })
    }

    /// Opens a long-lived GET of server-sent events, checking its status.
    pub async fn stream(
        &self,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<EventStream, ClientError> {
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
        Ok(EventStream::new(resp, MAX_RECORD, self.shown()))
    }

    /// A transport failure, naming the address.
    pub fn unreachable(&self, e: reqwest::Error) -> ClientError {
        let api = self.shown();
        if e.is_connect() {
            ClientError::Unreachable {
                api,
                cause: root_cause(&e),
            }
        } else if e.is_timeout() {
            ClientError::Timeout { api }
        } else {
            ClientError::Transport {
                api,
                cause: root_cause(&e),
            }
        }
    }

    // ---- zone tree ----

    /// Follows zone `zone`'s row and table as they change.
    pub async fn watch(&self, zone: &str) -> Result<Records<WatchRecord>, ClientError> {
        Ok(self
            .stream(&["v1", "watch"], &[("zone", zone)])
            .await?
            .typed())
    }

    /// The AFCs this agent holds, in `zone` when given.
    pub async fn afcs(&self, zone: Option<&str>) -> Result<Vec<AfcInfo>, ClientError> {
        let q: Vec<(&str, &str)> = zone.map(|z| ("zone", z)).into_iter().collect();
        self.get(&["v1", "afcs"], &q).await
    }

    // ---- CHM ----

    /// Component `id`'s health, looked up from this agent.
    pub async fn chm_lookup(&self, id: &str) -> Result<ComponentRecord, ClientError> {
        self.get(&["v1", "chm", "lookup", id], &[]).await
    }

    // ---- EVN ----

    pub async fn evn_subscribe(
        &self,
        req: &SubscribeRequest,
    ) -> Result<SubscriptionInfo, ClientError> {
        self.call_json(Method::POST, &["v1", "evn", "subscriptions"], req)
            .await
    }

    /// Renew, with an expiry as [`SubscribeRequest::expires`] takes it.
    pub async fn evn_renew(&self, id: &str, expires: Value) -> Result<Renewed, ClientError> {
        let req = RenewRequest {
            expires: Some(expires),
        };
        self.call_json(
            Method::POST,
            &["v1", "evn", "subscriptions", id, "renew"],
            &req,
        )
        .await
    }

    /// GetStatus.
    pub async fn evn_status(&self, id: &str) -> Result<SubscriptionInfo, ClientError> {
        self.get(&["v1", "evn", "subscriptions", id], &[]).await
    }

    /// Unsubscribe: once it returns, nothing more is delivered.
    pub async fn evn_unsubscribe(&self, id: &str) -> Result<Unsubscribed, ClientError> {
        self.call(
            Method::DELETE,
            &["v1", "evn", "subscriptions", id],
            &[],
            None,
        )
        .await
    }

    /// A streamed subscription's events, then its end.
    pub async fn evn_events(&self, id: &str) -> Result<Records<Record>, ClientError> {
        Ok(self
            .stream(&["v1", "evn", "subscriptions", id, "events"], &[])
            .await?
            .typed())
    }

    pub async fn evn_publish(&self, req: &PublishRequest) -> Result<Published, ClientError> {
        self.call_json(Method::POST, &["v1", "evn", "events"], req)
            .await
    }

    /// Replaces this agent's local table `name` with `rows` (an array of
    /// objects).
    pub async fn evn_table_put(&self, name: &str, rows: Value) -> Result<TableInfo, ClientError> {
        self.call_json(
            Method::PUT,
            &["v1", "evn", "tables", name],
            &TableRequest { rows },
        )
        .await
    }

    pub async fn evn_condition_add(
        &self,
        req: &ConditionRequest,
    ) -> Result<ConditionInstalled, ClientError> {
        self.call_json(Method::POST, &["v1", "evn", "conditions"], req)
            .await
    }

    pub async fn evn_conditions(&self) -> Result<ConditionList, ClientError> {
        self.get(&["v1", "evn", "conditions"], &[]).await
    }

    pub async fn evn_condition_remove(&self, name: &str) -> Result<ConditionRemoved, ClientError> {
        self.call(
            Method::DELETE,
            &["v1", "evn", "conditions", name],
            &[],
            None,
        )
        .await
    }
}

/// The deepest cause of an error, which says what actually went wrong
/// ("Connection refused" rather than "error sending request").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// An error reply: the agent's message and fault.
fn api_error(status: StatusCode, text: &str) -> ClientError {
    let body: Option<ErrorBody> = serde_json::from_str(text).ok();
    let (message, fault) = match body {
        Some(b) => (b.error, b.fault),
        None => {
            let t = text.trim();
            let m = if t.is_empty() {
                format!("the agent answered {status}")
            } else {
                format!(
                    "the agent answered {status}: {}",
                    t.chars().take(300).collect::<String>()
                )
            };
            (m, None)
        }
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
        fault,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_urls() {
        let c = Client::new("127.0.0.1:9000", None).unwrap();
        assert_eq!(
            c.url(&["v1", "attrs", "a b"], &[("zone", "/eu")]).as_str(),
            "http://127.0.0.1:9000/v1/attrs/a%20b?zone=%2Feu"
        );
        let c = Client::new("http://host:1/prefix/", None).unwrap();
        assert_eq!(
            c.url(&["v1", "status"], &[]).as_str(),
            "http://host:1/prefix/v1/status"
        );
        assert!(
            Client::new("not an address", None)
                .unwrap_err()
                .is_bad_input()
        );
        assert!(Client::new("https://x:1", None).unwrap_err().is_bad_input());
    }

    #[test]
    fn error_replies_keep_the_message_and_fault() {
        let e = api_error(
            StatusCode::BAD_REQUEST,
            r#"{"error":"UnableToRenew: no such","fault":"UnableToRenew"}"#,
        );
        assert_eq!(e.to_string(), "UnableToRenew: no such");
        assert_eq!(
            (e.fault(), e.status(), e.is_bad_input()),
            (Some("UnableToRenew"), Some(400), true)
        );
        let e = api_error(StatusCode::SERVICE_UNAVAILABLE, "");
        assert!(!e.is_bad_input());
        assert!(e.to_string().contains("503"), "{e}");
    }
}
