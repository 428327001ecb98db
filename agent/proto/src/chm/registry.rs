//! Components and their checks, validated: what the runtime registers on
//! behalf of a process or service, and the health the core keeps for each.
//!
//! The core runs no check itself. It says which checks are due
//! ([`super::Chm::poll_check`]), the runtime runs them and reports each
//! outcome ([`super::Chm::record_check`]), or a component sends heartbeats
//! for a TTL check; the core applies the thresholds, TTL expiry,
//! maintenance and deregistration after a critical period.

use crate::row::Micros;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest component id: `[a-z0-9][a-z0-9._-]{0,63}`.
pub const MAX_ID: usize = 64;
/// Most keywords one component has, and the longest keyword.
pub const MAX_KEYWORDS: usize = 8;
pub const MAX_KEYWORD: usize = 32;
/// Longest `host:port` address, HTTP URL and command.
pub const MAX_ADDRESS: usize = 128;
pub const MAX_URL: usize = 512;
pub const MAX_COMMAND: usize = 1024;
/// Bytes of check output kept (longer output is cut).
pub const MAX_OUTPUT: usize = 4096;
/// Bytes of a maintenance reason and of a status reason.
pub const MAX_REASON: usize = 128;
/// Most components one agent holds.
pub const MAX_COMPONENTS: usize = 64;
/// Bounds of check intervals, timeouts and TTLs.
pub const MIN_INTERVAL: Micros = 100_000;
pub const MAX_INTERVAL: Micros = 24 * 3600 * 1_000_000;
/// Largest `failures_before_critical` and `successes_before_passing`.
pub const MAX_THRESHOLD: u32 = 100;
/// Shortest `deregister_after`.
pub const MIN_DEREGISTER_AFTER: Micros = 1_000_000;

/// A component's id: lower-case letters, digits, `.`, `_` and `-`,
/// starting with a letter or a digit, at most [`MAX_ID`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ComponentId(Arc<str>);

impl ComponentId {
    pub fn parse(s: &str) -> Result<ComponentId, RegistryError> {
        if is_name(s, MAX_ID) {
            Ok(ComponentId(s.into()))
        } else {
            Err(RegistryError::BadId(cut(s, 80)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ComponentId {
    type Error = RegistryError;
    fn try_from(s: String) -> Result<Self, RegistryError> {
        ComponentId::parse(&s)
    }
}

impl From<ComponentId> for String {
    fn from(id: ComponentId) -> String {
        id.0.to_string()
    }
}

/// `[a-z0-9][a-z0-9._-]*` of at most `max` bytes: ids and keywords.
pub fn is_name(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// What the agent checks to judge a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// GET the URL: 2xx passing, 429 warning, anything else or a timeout critical.
    Http { url: String },
    /// Open a TCP connection to `host:port`: passing when it connects.
    Tcp { addr: String },
    /// Run a command: exit 0 passing, 1 warning, anything else critical.
    Cmd { command: String },
    /// The component sends heartbeats; none within `ttl` is critical.
    Ttl { ttl: Micros },
}

impl Check {
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Http { .. } => "http",
            Check::Tcp { .. } => "tcp",
            Check::Cmd { .. } => "cmd",
            Check::Ttl { .. } => "ttl",
        }
    }
}

/// A check with its schedule and thresholds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub check: Check,
    /// Time between two runs (not used by TTL checks).
    pub interval: Micros,
    /// How long one run may take before it counts as critical.
    pub timeout: Micros,
    /// Consecutive critical outcomes before the status turns critical.
    pub failures_before_critical: u32,
    /// Consecutive passing outcomes before the status turns passing.
    pub successes_before_passing: u32,
}

impl CheckSpec {
    /// A check with the defaults: every 10 s, 5 s timeout, thresholds 1.
    pub fn new(check: Check) -> CheckSpec {
        CheckSpec {
            check,
            interval: 10_000_000,
            timeout: 5_000_000,
            failures_before_critical: 1,
            successes_before_passing: 1,
        }
    }
}

/// A component as registered with its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: ComponentId,
    pub keywords: Vec<String>,
    /// Where clients reach it, `host:port`.
    pub address: Option<String>,
    pub check: CheckSpec,
    /// Deregister it once it has been critical this long.
    pub deregister_after: Option<Micros>,
    /// Its verdicts are agreed in a group (the consensus level).
    #[serde(default)]
    pub consensus: bool,
}

impl Registration {
    pub fn new(id: ComponentId, check: CheckSpec) -> Registration {
        Registration {
            id,
            keywords: Vec::new(),
            address: None,
            check,
            deregister_after: None,
            consensus: false,
        }
    }

    /// Checks every field, saying what to fix.
    pub fn validate(&self) -> Result<(), RegistryError> {
        ComponentId::parse(self.id.as_str())?;
        if self.keywords.len() > MAX_KEYWORDS {
            return Err(RegistryError::TooManyKeywords(self.keywords.len()));
        }
        if let Some(k) = self.keywords.iter().find(|k| !is_name(k, MAX_KEYWORD)) {
            return Err(RegistryError::BadKeyword(cut(k, 80)));
        }
        if let Some(a) = &self.address {
            check_host_port(a).map_err(|why| RegistryError::BadAddress {
                addr: cut(a, 80),
                why,
            })?;
        }
        let c = &self.check;
        match &c.check {
            Check::Http { url } => check_url(url).map_err(|why| RegistryError::BadUrl {
                url: cut(url, 80),
                why,
            })?,
            Check::Tcp { addr } => {
                check_host_port(addr).map_err(|why| RegistryError::BadAddress {
                    addr: cut(addr, 80),
                    why,
                })?
            }
            Check::Cmd { command } => {
                if command.trim().is_empty() || command.len() > MAX_COMMAND {
                    return Err(RegistryError::BadCommand(command.len()));
                }
            }
            Check::Ttl { ttl } => span("ttl", *ttl)?,
        }
        if !matches!(c.check, Check::Ttl { .. }) {
            span("interval", c.interval)?;
            span("timeout", c.timeout)?;
        }
        for (name, n) in [
            ("failures_before_critical", c.failures_before_critical),
            ("successes_before_passing", c.successes_before_passing),
        ] {
            if !(1..=MAX_THRESHOLD).contains(&n) {
                return Err(RegistryError::BadThreshold { name, value: n });
            }
        }
        if let Some(d) = self.deregister_after
            && !(MIN_DEREGISTER_AFTER..=MAX_INTERVAL).contains(&d)
        {
            return Err(RegistryError::BadDuration {
                name: "deregister_after",
                value: d,
                min: MIN_DEREGISTER_AFTER,
            });
        }
        Ok(())
    }
}

fn span(name: &'static str, value: Micros) -> Result<(), RegistryError> {
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&value) {
        Ok(())
    } else {
        Err(RegistryError::BadDuration {
            name,
            value,
            min: MIN_INTERVAL,
        })
    }
}

/// `host:port` with a host name, an IPv4 address or a bracketed IPv6 one.
pub fn check_host_port(a: &str) -> Result<(), &'static str> {
    if a.len() > MAX_ADDRESS {
        return Err("longer than 128 bytes");
    }
    let (host, port) = a.rsplit_once(':').ok_or("no :port")?;
    if port.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
        return Err("the port is not a number from 1 to 65535");
    }
    let host = match host.strip_prefix('[') {
        Some(h) => {
            let h = h
                .strip_suffix(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            return h
                .parse::<std::net::Ipv6Addr>()
                .map(|_| ())
                .map_err(|_| "not an IPv6 address in [ ]");
        }
        None => host,
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err("the host has characters other than letters, digits, '.' and '-'")
    }
}

fn check_url(url: &str) -> Result<(), &'static str> {
    if url.len() > MAX_URL {
        return Err("longer than 512 bytes");
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("it must start with http:// or https://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err("it has no host");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it has spaces or control characters");
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Why a registration or a request about a component was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "bad component id {0:?}: use lower-case letters, digits, '.', '_' and '-', starting with a letter or a digit, at most {MAX_ID} bytes"
    )]
    BadId(String),
    #[error("{0} keywords: a component has at most {MAX_KEYWORDS}")]
    TooManyKeywords(usize),
    #[error(
        "bad keyword {0:?}: use lower-case letters, digits, '.', '_' and '-', starting with a letter or a digit, at most {MAX_KEYWORD} bytes"
    )]
    BadKeyword(String),
    #[error("bad address {addr:?}: {why}; give host:port")]
    BadAddress { addr: String, why: &'static str },
    #[error("bad URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("bad command ({0} bytes): give a non-empty command of at most {MAX_COMMAND} bytes")]
    BadCommand(usize),
    #[error("bad {name} ({value} µs): give a duration from {min} µs to {MAX_INTERVAL} µs (24 h)")]
    BadDuration {
        name: &'static str,
        value: Micros,
        min: Micros,
    },
    #[error("bad {name} {value}: give a count from 1 to {MAX_THRESHOLD}")]
    BadThreshold { name: &'static str, value: u32 },
    #[error("no component {0} is registered with this agent")]
    Unknown(ComponentId),
    #[error("component {0} has a {1} check: only TTL checks take heartbeats")]
    NotTtl(ComponentId, &'static str),
    #[error(
        "this agent already holds {MAX_COMPONENTS} components: deregister one before registering another"
    )]
    Full,
    #[error(
        "the agent's components would take {needed} bytes of their {limit}-byte share of its row: register fewer, or shorten ids, keywords and addresses"
    )]
    RowBudget { needed: usize, limit: usize },
}

/// A component's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }

    /// One letter, as the leaf row carries it.
    pub(crate) fn letter(self) -> char {
        match self {
            Status::Passing => 'p',
            Status::Warning => 'w',
            Status::Critical => 'c',
        }
    }

    pub(crate) fn from_letter(c: char) -> Option<Status> {
        match c {
            'p' => Some(Status::Passing),
            'w' => Some(Status::Warning),
            'c' => Some(Status::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason of a component that is not reachable because its agent is not.
pub const AGENT_UNREACHABLE: &str = "agent unreachable";

/// A component's health as its agent judges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// What the component is reported as: the checked status, or critical
    /// while in maintenance.
    pub status: Status,
    /// Since when it has had this status.
    pub since: Micros,
    /// Why it has this status; set when the status changes.
    pub reason: String,
    /// The status the check says, maintenance aside.
    pub checked: Status,
    /// The reason for maintenance, while in maintenance.
    pub maintenance: Option<String>,
    /// When the last outcome was recorded.
    pub last_check: Option<Micros>,
    /// Consecutive outcomes for the thresholds.
    pub failures: u32,
    pub successes: u32,
}

impl Health {
    /// A component's health before any check: critical, as Consul starts it.
    pub fn new(now: Micros) -> Health {
        Health {
            status: Status::Critical,
            since: now,
            reason: "not checked yet".into(),
            checked: Status::Critical,
            maintenance: None,
            last_check: None,
            failures: 0,
            successes: 0,
        }
    }

    /// Applies one outcome with the thresholds; returns the previous
    /// reported status when the reported status changed.
    pub fn record(
        &mut self,
        now: Micros,
        outcome: Status,
        reason: &str,
        spec: &CheckSpec,
    ) -> Option<Status> {
        let first = self.last_check.replace(now).is_none();
        let next = match outcome {
            Status::Passing => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                if self.successes >= spec.successes_before_passing {
                    Status::Passing
                } else {
                    self.checked
                }
            }
            Status::Warning => {
                self.successes = 0;
                self.failures = 0;
                Status::Warning
            }
            Status::Critical => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                if self.failures >= spec.failures_before_critical {
                    Status::Critical
                } else {
                    self.checked
                }
            }
        };
        if next == self.checked {
            // The first outcome replaces "not checked yet", even when it
            // keeps the status (a component that starts critical says why).
            if first && self.maintenance.is_none() {
                self.reason = cut(reason, MAX_REASON);
            }
            return None;
        }
        self.checked = next;
        if self.maintenance.is_some() {
            return None;
        }
        self.change(now, next, reason)
    }

    /// Puts the component in maintenance (critical with its reason) or takes it out.
    pub fn set_maintenance(&mut self, now: Micros, reason: Option<String>) -> Option<Status> {
        match reason {
            Some(r) => {
                let why = format!("maintenance: {r}");
                self.maintenance = Some(r);
                self.change(now, Status::Critical, &why)
            }
            None => {
                self.maintenance.take()?;
                let checked = self.checked;
                self.change(now, checked, "maintenance ended")
            }
        }
    }

    fn change(&mut self, now: Micros, to: Status, reason: &str) -> Option<Status> {
        let prev = self.status;
        let moved = prev != to;
        self.reason = cut(reason, MAX_REASON);
        if moved {
            self.status = to;
            self.since = now;
            return Some(prev);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(id: &str, check: Check) -> Registration {
        Registration::new(ComponentId::parse(id).unwrap(), CheckSpec::new(check))
    }

    #[test]
    fn ids_keywords_and_addresses_are_checked() {
        for good in ["a", "web-1", "db.primary", "0_x", &"a".repeat(64)] {
            assert!(ComponentId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Web", "-a", ".a", "a b", "é", &"a".repeat(65)] {
            let e = ComponentId::parse(bad).unwrap_err();
            assert!(e.to_string().contains("lower-case letters"), "{e}");
        }
        let mut r = reg(
            "web",
            Check::Tcp {
                addr: "h:80".into(),
            },
        );
        assert!(r.validate().is_ok());
        r.keywords = vec!["Bad".into()];
        assert!(matches!(r.validate(), Err(RegistryError::BadKeyword(_))));
        r.keywords = (0..9).map(|i| format!("k{i}")).collect();
        assert!(matches!(
            r.validate(),
            Err(RegistryError::TooManyKeywords(9))
        ));
        r.keywords.clear();
        for (addr, ok) in [
            ("10.0.0.1:8080", true),
            ("[::1]:53", true),
            ("host.example:1", true),
            ("host", false),
            ("host:0", false),
            ("host:99999", false),
            ("[::1:53", false),
            ("ho st:80", false),
        ] {
            r.address = Some(addr.into());
            assert_eq!(r.validate().is_ok(), ok, "{addr}");
        }
    }

    #[test]
    fn checks_and_durations_are_checked() {
        let e = reg(
            "a",
            Check::Http {
                url: "ftp://x".into(),
            },
        )
        .validate();
        assert!(e.unwrap_err().to_string().contains("http://"));
        assert!(
            reg(
                "a",
                Check::Http {
                    url: "http://h:1/x".into()
                }
            )
            .validate()
            .is_ok()
        );
        assert!(
            reg(
                "a",
                Check::Cmd {
                    command: " ".into()
                }
            )
            .validate()
            .is_err()
        );
        assert!(reg("a", Check::Ttl { ttl: 10 }).validate().is_err());
        let mut r = reg(
            "a",
            Check::Cmd {
                command: "true".into(),
            },
        );
        r.check.interval = 0;
        let e = r.validate().unwrap_err();
        assert!(e.to_string().contains("bad interval"), "{e}");
        r.check.interval = 1_000_000;
        r.check.failures_before_critical = 0;
        assert!(matches!(
            r.validate(),
            Err(RegistryError::BadThreshold { .. })
        ));
        r.check.failures_before_critical = 2;
        r.deregister_after = Some(1);
        assert!(r.validate().is_err());
    }

    #[test]
    fn the_first_outcome_says_why_a_component_stays_critical() {
        let spec = CheckSpec::new(Check::Tcp { addr: "h:1".into() });
        let mut h = Health::new(0);
        assert_eq!(h.record(1, Status::Critical, "refused", &spec), None);
        assert_eq!(
            (h.status, h.since, h.reason.as_str()),
            (Status::Critical, 0, "refused")
        );
        // Later outcomes that keep the status leave the reason alone.
        assert_eq!(h.record(2, Status::Critical, "timed out", &spec), None);
        assert_eq!(h.reason, "refused");
    }

    #[test]
    fn thresholds_and_maintenance() {
        let mut spec = CheckSpec::new(Check::Tcp { addr: "h:1".into() });
        spec.failures_before_critical = 3;
        spec.successes_before_passing = 2;
        let mut h = Health::new(0);
        assert_eq!(h.record(1, Status::Passing, "ok", &spec), None);
        assert_eq!(
            h.record(2, Status::Passing, "ok", &spec),
            Some(Status::Critical)
        );
        assert_eq!((h.status, h.since), (Status::Passing, 2));
        assert_eq!(h.record(3, Status::Critical, "down", &spec), None);
        assert_eq!(h.record(4, Status::Critical, "down", &spec), None);
        assert_eq!(
            h.record(5, Status::Critical, "refused", &spec),
            Some(Status::Passing)
        );
        assert_eq!((h.status, h.reason.as_str()), (Status::Critical, "refused"));
        assert_eq!(
            h.record(6, Status::Warning, "429", &spec),
            Some(Status::Critical)
        );
        assert_eq!(
            h.set_maintenance(7, Some("upgrade".into())),
            Some(Status::Warning)
        );
        assert_eq!(h.reason, "maintenance: upgrade");
        // Outcomes during maintenance change what the check says only.
        h.record(8, Status::Passing, "ok", &spec);
        assert_eq!(h.record(9, Status::Passing, "ok", &spec), None);
        assert_eq!((h.status, h.checked), (Status::Critical, Status::Passing));
        assert_eq!(h.set_maintenance(10, None), Some(Status::Critical));
        assert_eq!((h.status, h.since), (Status::Passing, 10));
    }
}
