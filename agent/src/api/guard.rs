//! The request guard: what every request must show before a handler runs.
//!
//! Any web page the operator visits can make the browser send requests to
//! the local API. The guard keeps such pages out:
//! - `Host` must name this API (421 otherwise), so a page cannot reach it
//!   through a name of its own that it re-points at this host (DNS rebinding);
//! - with a token, `Authorization: Bearer <token>` (401 otherwise), except
//!   for the dashboard page itself;
//! - a body must be declared `application/json` (415 otherwise): a page on
//!   another origin can send that only after a CORS preflight, which this API
//!   never grants (it sends no `Access-Control-Allow-*` header at all).
//!
//! Refusals are counted under `rejected` (`api_bad_host`,
//! `api_unauthorized`, `api_bad_content_type`).

use super::access::{ApiAccess, is_loopback};
use super::error::{ApiError, status_of};
use crate::Refusal;
use crate::node::NodeHandle;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The one media type request bodies may have.
pub const JSON: &str = "application/json";

/// The guard of one API: its rules and the node that counts refusals.
#[derive(Clone)]
pub(crate) struct Guard {
    rules: Arc<Rules>,
    handle: NodeHandle,
}

/// What requests are checked against: the address the API is bound to and
/// who may use it.
struct Rules {
    bound: SocketAddr,
    access: ApiAccess,
}

/// Why a request was refused, with what the answer tells.
#[derive(Debug, PartialEq, Eq)]
enum Denied {
    NoHost,
    BadHost(String),
    NoToken,
    WrongToken,
    NotJson(Option<String>),
}

impl Denied {
    /// The reason it is counted under, which also gives its status.
    fn refusal(&self) -> Refusal {
        match self {
            Denied::NoHost | Denied::BadHost(_) => Refusal::ApiBadHost,
            Denied::NoToken | Denied::WrongToken => Refusal::ApiUnauthorized,
            Denied::NotJson(_) => Refusal::ApiBadContentType,
        }
    }
}

impl Guard {
    pub fn new(bound: SocketAddr, access: ApiAccess, handle: NodeHandle) -> Guard {
        Guard {
            rules: Arc::new(Rules { bound, access }),
            handle,
        }
    }
}

impl Rules {
    /// The names this API answers to, for messages.
    fn own_names(&self) -> String {
        let ip = self.bound.ip();
        let mut names: Vec<String> = if ip.is_unspecified() {
            vec!["localhost".into(), "any IP address of this host".into()]
        } else if is_loopback(ip) {
            vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()]
        } else {
            vec![shown_ip(ip)]
        };
        names.extend(self.access.hosts.iter().cloned());
        names.join(", ")
    }

    /// Whether `host` (a `Host` value: name or address, maybe a port) names
    /// this API. The port is not compared: the browser always sends the one
    /// it connected to, and a forwarded port may differ from ours; a forged
    /// name is what DNS rebinding makes.
    fn host_ok(&self, host: &str) -> bool {
        if host.contains('@') {
            return false;
        }
        let Ok(auth) = host.parse::<Authority>() else {
            return false;
        };
        let name = auth.host().to_ascii_lowercase();
        if self.access.hosts.contains(&name) {
            return true;
        }
        let bound = self.bound.ip();
        let anywhere = bound.is_unspecified();
        if name == "localhost" {
            return anywhere || is_loopback(bound);
        }
        let literal = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
        let ip: Option<IpAddr> = match literal {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
            None => name.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
        };
        // An address cannot be re-pointed: a page that sends it came from it.
        ip.is_some_and(|ip| {
            let ip = ip.to_canonical();
            anywhere || ip == bound.to_canonical() || (is_loopback(bound) && ip.is_loopback())
        })
    }

    fn check(
        &self,
        method: &Method,
        path: &str,
        authority: Option<&Authority>,
        headers: &HeaderMap,
    ) -> Result<(), Denied> {
        let mut hosts = headers.get_all(HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(h), None) => h
                .to_str()
                .map_err(|_| Denied::BadHost("(not text)".into()))?,
            (None, _) => return Err(Denied::NoHost),
            (Some(_), Some(_)) => {
                return Err(Denied::BadHost("(more than one Host header)".into()));
            }
        };
        if !self.host_ok(host) {
            return Err(Denied::BadHost(shortened(host)));
        }
        if let Some(a) = authority
            && !self.host_ok(a.as_str())
        {
            return Err(Denied::BadHost(shortened(a.as_str())));
        }
        let dashboard = path == "/" && (method == Method::GET || method == Method::HEAD);
        if let Some(token) = &self.access.token
            && !dashboard
        {
            let presented = headers
                .get(AUTHORIZATION)
                .ok_or(Denied::NoToken)?
                .as_bytes();
            let bearer = presented
                .split_at_checked(7)
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
                .map(|(_, t)| t.trim_ascii())
                .ok_or(Denied::WrongToken)?;
            if !token.matches(bearer) {
                return Err(Denied::WrongToken);
            }
        }
        if has_body(headers) {
            let ty = headers
                .get(CONTENT_TYPE)
                .map(|v| shortened(&String::from_utf8_lossy(v.as_bytes())));
            if !ty.as_deref().is_some_and(is_json) {
                return Err(Denied::NotJson(ty));
            }
        }
        Ok(())
    }

    fn refuse(&self, r: &Denied) -> Response {
        let status = status_of(r.refusal());
        let message = match r {
            Denied::NoHost => format!(
                "the request has no Host header; send one naming this API ({})",
                self.own_names()
            ),
            Denied::BadHost(h) => format!(
                "this API does not answer to the host {h:?}; reach it as {}, \
                     or start the agent with --api-host NAME to allow another name",
                self.own_names()
            ),
            Denied::NoToken => {
                "this API needs a bearer token: send `Authorization: Bearer <token>` \
                 (the CLI reads it from ARMILLARY_API_TOKEN or --api-token-file FILE)"
                    .to_string()
            }
            Denied::WrongToken => {
                "the bearer token is not this API's: send `Authorization: Bearer <token>` \
                 with the token in the agent's --api-token-file"
                    .to_string()
            }
            Denied::NotJson(ty) => format!(
                "send the request body as JSON with `Content-Type: {JSON}` (it came {})",
                match ty {
                    Some(t) => format!("as {t:?}"),
                    None => "without a content type".to_string(),
                }
            ),
        };
        let mut res = ApiError::new(status, message).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"armillary\""),
            );
        }
        res
    }
}

/// Longest piece of a refused header quoted back in a message.
const QUOTED: usize = 100;

/// A header value as quoted in a message: at most [`QUOTED`] characters.
fn shortened(v: &str) -> String {
    match v.char_indices().nth(QUOTED) {
        Some((i, _)) => format!("{}...", &v[..i]),
        None => v.to_string(),
    }
}

fn shown_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Whether the request carries a body: a non-zero length or a chunked one.
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(TRANSFER_ENCODING)
        || h.get(CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) != Some(0))
}

/// `application/json`, parameters allowed (`; charset=utf-8`).
fn is_json(ty: &str) -> bool {
    ty.split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(JSON))
}

/// The middleware: refuses and counts what the guard does not let through.
pub(crate) async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let checked = g.rules.check(
        req.method(),
        req.uri().path(),
        req.uri().authority(),
        req.headers(),
    );
    match checked {
        Ok(()) => next.run(req).await,
        Err(r) => {
            tracing::debug!(refusal = ?r, "API request refused");
            g.handle.count_rejected(r.refusal()).await;
            g.rules.refuse(&r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::access::ApiToken;

    fn rules(bound: &str, hosts: &[&str], token: Option<&str>) -> Rules {
        let mut access = ApiAccess {
            token: token.map(|t| ApiToken::new(t).unwrap()),
            ..ApiAccess::default()
        };
        for h in hosts {
            access.allow_host(h).unwrap();
        }
        Rules {
            bound: bound.parse().unwrap(),
            access,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn get(r: &Rules, pairs: &[(&'static str, &str)]) -> Result<(), Denied> {
        r.check(&Method::GET, "/v1/status", None, &headers(pairs))
    }

    #[test]
    fn loopback_answers_to_loopback_names_only() {
        let r = rules("127.0.0.1:8080", &[], None);
        for ok in [
            "localhost:8080",
            "LOCALHOST:8080",
            "localhost",
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "127.0.0.1:9000",
        ] {
            assert_eq!(get(&r, &[("host", ok)]), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "localhost.evil.example",
            "localhost.",
            "10.0.0.1:8080",
            "127.1:8080",
            "user@localhost:8080",
            "",
        ] {
            assert!(
                matches!(get(&r, &[("host", bad)]), Err(Denied::BadHost(_))),
                "{bad}"
            );
        }
        assert_eq!(get(&r, &[]), Err(Denied::NoHost));
        let long = format!("{}.example", "a".repeat(300));
        let Err(Denied::BadHost(quoted)) = get(&r, &[("host", &long)]) else {
            panic!("a long foreign name is refused");
        };
        assert_eq!(quoted.len(), QUOTED + 3);
        assert!(matches!(
            get(&r, &[("host", "localhost"), ("host", "localhost")]),
            Err(Denied::BadHost(_))
        ));
        // An absolute request URI names the host too.
        let evil: Authority = "evil.example:8080".parse().unwrap();
        assert!(matches!(
            r.check(
                &Method::GET,
                "/",
                Some(&evil),
                &headers(&[("host", "localhost")])
            ),
            Err(Denied::BadHost(_))
        ));
    }

    #[test]
    fn listed_names_and_wildcard_binding() {
        let r = rules(
            "0.0.0.0:8080",
            &["mon.example.com"],
            Some("0123456789abcdef"),
        );
        let auth = ("authorization", "Bearer 0123456789abcdef");
        for ok in [
            "mon.example.com:8080",
            "MON.example.com",
            "mon.example.com:443",
            "10.1.2.3:8080",
            "[fe80::1]:8080",
            "localhost:8080",
        ] {
            assert_eq!(get(&r, &[("host", ok), auth]), Ok(()), "{ok}");
        }
        for bad in ["other.example.com:8080", "example.com"] {
            assert!(matches!(
                get(&r, &[("host", bad), auth]),
                Err(Denied::BadHost(_))
            ));
        }
        // Bound to one address: that address, not another or loopback.
        let r = rules("10.1.2.3:8080", &[], Some("0123456789abcdef"));
        assert_eq!(get(&r, &[("host", "10.1.2.3:8080"), auth]), Ok(()));
        for bad in ["10.1.2.4:8080", "localhost:8080", "127.0.0.1:8080"] {
            assert!(matches!(
                get(&r, &[("host", bad), auth]),
                Err(Denied::BadHost(_))
            ));
        }
        let msg = r.refuse(&Denied::BadHost("x".into()));
        assert_eq!(msg.status(), StatusCode::MISDIRECTED_REQUEST);
    }

    #[test]
    fn tokens() {
        let r = rules("127.0.0.1:8080", &[], Some("0123456789abcdef"));
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(get(&r, &[host]), Err(Denied::NoToken));
        for wrong in [
            "Bearer 0123456789abcdeX",
            "Basic 0123456789abcdef",
            "0123456789abcdef",
            "Bearer",
        ] {
            assert_eq!(
                get(&r, &[host, ("authorization", wrong)]),
                Err(Denied::WrongToken),
                "{wrong}"
            );
        }
        for right in ["Bearer 0123456789abcdef", "bearer  0123456789abcdef "] {
            assert_eq!(get(&r, &[host, ("authorization", right)]), Ok(()));
        }
        // The dashboard page is served without it; nothing else is.
        assert_eq!(r.check(&Method::GET, "/", None, &headers(&[host])), Ok(()));
        assert_eq!(
            r.check(&Method::POST, "/", None, &headers(&[host])),
            Err(Denied::NoToken)
        );
        assert_eq!(
            r.check(&Method::GET, "/metrics", None, &headers(&[host])),
            Err(Denied::NoToken)
        );
        let res = r.refuse(&Denied::NoToken);
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        assert!(res.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn bodies_must_be_json() {
        let r = rules("127.0.0.1:8080", &[], None);
        let post = |pairs: &[(&'static str, &str)]| {
            let mut all = vec![("host", "localhost:8080")];
            all.extend_from_slice(pairs);
            r.check(&Method::POST, "/v1/afcs", None, &headers(&all))
        };
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
        ] {
            assert_eq!(
                post(&[("content-length", "2"), ("content-type", ok)]),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "",
        ] {
            assert_eq!(
                post(&[("content-length", "2"), ("content-type", bad)]),
                Err(Denied::NotJson(Some(bad.to_string()))),
                "{bad}"
            );
        }
        assert_eq!(post(&[("content-length", "2")]), Err(Denied::NotJson(None)));
        assert_eq!(
            post(&[
                ("transfer-encoding", "chunked"),
                ("content-type", "text/plain")
            ]),
            Err(Denied::NotJson(Some("text/plain".into())))
        );
        // No body, no type needed (GET, DELETE without a body).
        assert_eq!(post(&[("content-length", "0")]), Ok(()));
        assert_eq!(post(&[]), Ok(()));
        let res = r.refuse(&Denied::NotJson(Some("text/plain".into())));
        assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
