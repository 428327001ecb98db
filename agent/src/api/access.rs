//! Who may use the API: the names it answers to (`--api-host`) and the
//! bearer token it may require (`--api-token-file`). The request guard
//! ([`super::guard`]) applies them; the agent and the CLI read them here so
//! both sides parse a token file the same way.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use subtle::ConstantTimeEq;

/// Shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted (it travels in a header).
pub const MAX_TOKEN_LEN: usize = 1024;
/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// Why a name, a token or an exposure was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "--api-host {name:?}: {why}; give a host name (api.example.com) or an IP address, without a port"
    )]
    BadHost { name: String, why: &'static str },
    #[error("cannot read the API token file {path}: {error}")]
    TokenFile { path: String, error: std::io::Error },
    #[error(
        "the API token {0}; make one with `head -c 32 /dev/urandom | base64 > FILE` and keep the file private"
    )]
    BadToken(&'static str),
    #[error(
        "the API on {0} is reachable from other hosts; give it a bearer token with --api-token-file FILE, or serve it on loopback (--api 127.0.0.1:PORT)"
    )]
    NeedsToken(SocketAddr),
}

/// A bearer token. Its text never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// A token from its text, surrounding whitespace removed: at least
    /// [`MIN_TOKEN_LEN`] visible ASCII characters, none of them a space.
    pub fn new(text: &str) -> Result<ApiToken, AccessError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(AccessError::BadToken("is empty"));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AccessError::BadToken(
                "must be printable ASCII without spaces",
            ));
        }
        if t.len() < MIN_TOKEN_LEN {
            return Err(AccessError::BadToken("is shorter than 16 characters"));
        }
        if t.len() > MAX_TOKEN_LEN {
            return Err(AccessError::BadToken("is longer than 1024 characters"));
        }
        Ok(ApiToken(t.to_string()))
    }

    /// Reads a token file (its one line; a trailing newline is fine).
    pub fn read(path: &Path) -> Result<ApiToken, AccessError> {
        let bytes = crate::fsutil::read_bounded(path, MAX_TOKEN_FILE).map_err(|error| {
            AccessError::TokenFile {
                path: path.display().to_string(),
                error,
            }
        })?;
        let text =
            String::from_utf8(bytes).map_err(|_| AccessError::BadToken("file is not text"))?;
        ApiToken::new(&text)
    }

    /// The token's text, to send it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where the two first differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// Who may use the API beyond reaching its address.
#[derive(Clone, Debug, Default)]
pub struct ApiAccess {
    /// Names the API answers to in `Host` besides its own address
    /// (`--api-host`), lower case, without a port.
    pub hosts: Vec<String>,
    /// The token every request but the dashboard page must carry.
    pub token: Option<ApiToken>,
}

impl ApiAccess {
    /// Adds a name given with `--api-host`.
    pub fn allow_host(&mut self, name: &str) -> Result<(), AccessError> {
        let name = host_name(name)?;
        if !self.hosts.contains(&name) {
            self.hosts.push(name);
        }
        Ok(())
    }

    /// Refuses to serve beyond loopback without a token.
    pub fn check_exposure(&self, bound: SocketAddr) -> Result<(), AccessError> {
        if self.token.is_none() && !is_loopback(bound.ip()) {
            return Err(AccessError::NeedsToken(bound));
        }
        Ok(())
    }
}

pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// An `--api-host` name checked and lower-cased: a DNS name, an IPv4
/// address or a bracketed IPv6 address.
fn host_name(text: &str) -> Result<String, AccessError> {
    let bad = |why| AccessError::BadHost {
        name: text.to_string(),
        why,
    };
    let name = text.trim().to_ascii_lowercase();
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    if name.len() > 253 {
        return Err(bad("the name is longer than 253 characters"));
    }
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|_| name.clone())
            .map_err(|_| bad("not an IPv6 address"));
    }
    if name.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok(format!("[{name}]"));
    }
    if name.contains(':') {
        return Err(bad("a port or scheme is not part of a name"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !name.split('.').all(label_ok) {
        return Err(bad(
            "a name is dot-separated labels of letters, digits and '-'",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_compared() {
        let t = ApiToken::new("  0123456789abcdef\n").unwrap();
        assert_eq!(t.secret(), "0123456789abcdef");
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b""));
        assert!(!format!("{t:?}").contains("0123"));
        for bad in ["", "short", "0123456789 abcdef", "0123456789abcdé0"] {
            assert!(ApiToken::new(bad).is_err(), "{bad:?}");
        }
        assert!(ApiToken::new(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn host_names() {
        let mut a = ApiAccess::default();
        a.allow_host("Mon.Example.COM").unwrap();
        a.allow_host("10.0.0.7").unwrap();
        a.allow_host("::1").unwrap();
        a.allow_host("[fe80::2]").unwrap();
        a.allow_host("mon.example.com").unwrap();
        assert_eq!(
            a.hosts,
            ["mon.example.com", "10.0.0.7", "[::1]", "[fe80::2]"]
        );
        for bad in [
            "", "http://x", "x:8080", "a..b", "-a.b", "a b", "[zz]", "x_y.com",
        ] {
            let e = a.allow_host(bad).unwrap_err();
            assert!(e.to_string().contains("--api-host"), "{e}");
        }
    }

    #[test]
    fn only_loopback_goes_without_a_token() {
        let a = ApiAccess::default();
        for ok in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:1"] {
            a.check_exposure(ok.parse().unwrap()).unwrap();
        }
        for exposed in ["0.0.0.0:8080", "[::]:8080", "10.0.0.1:8080"] {
            let e = a.check_exposure(exposed.parse().unwrap()).unwrap_err();
            assert!(e.to_string().contains("--api-token-file"), "{e}");
        }
        let t = ApiAccess {
            token: Some(ApiToken::new("0123456789abcdef").unwrap()),
            ..ApiAccess::default()
        };
        t.check_exposure("0.0.0.0:8080".parse().unwrap()).unwrap();
    }
}
