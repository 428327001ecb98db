//! A channel's descriptor: what every agent must agree on, recorded in the
//! zone tree as one string and identified by its hash.
//!
//! ```text
//! name;zone;stack;retain;policy;coordinator
//! prices;/eu;sign:encrypt:fifo:frag:flow:nak:gossip;100;skip;10.0.0.7:4000
//! ```
//!
//! The channel id is the first 8 bytes of the SHA-256 of that text, so two
//! agents that hold the same id hold the same stack; every frame carries the
//! id, and every signature and seal is bound to it.

use super::error::DdsError;
use super::spec::Spec;
use crate::path::ZonePath;
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// Longest channel name.
pub const MAX_NAME: usize = 64;
/// Longest descriptor text.
pub const MAX_DESCRIPTOR: usize = 512;
/// Most messages a channel's origins keep for late subscribers.
pub const MAX_RETAIN: u32 = 4096;

pub type ChannelId = u64;

/// What happens to a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlowPolicy {
    /// The oldest queued message goes, and the subscriber is told how many it missed.
    Skip,
    /// The subscriber is closed, told why.
    Drop,
}

impl SlowPolicy {
    pub fn name(self) -> &'static str {
        match self {
            SlowPolicy::Skip => "skip",
            SlowPolicy::Drop => "drop",
        }
    }

    pub fn parse(s: &str) -> Option<SlowPolicy> {
        match s {
            "skip" => Some(SlowPolicy::Skip),
            "drop" => Some(SlowPolicy::Drop),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub name: Arc<str>,
    pub zone: ZonePath,
    pub spec: Spec,
    pub retain: u32,
    pub policy: SlowPolicy,
    /// The agent that created the channel: `total`'s sequencer, `encrypt`'s key manager.
    pub coordinator: Arc<str>,
}

/// Checks a channel name: letters, digits, `_`, `-`, `.`, at most [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), DdsError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(DdsError::BadName(name.to_string()))
    }
}

impl Descriptor {
    pub fn text(&self) -> String {
        format!(
            "{};{};{};{};{};{}",
            self.name,
            self.zone,
            self.spec,
            self.retain,
            self.policy.name(),
            self.coordinator
        )
    }

    pub fn id(&self) -> ChannelId {
        id_of(&self.text())
    }

    /// Reads a descriptor from untrusted text.
    pub fn parse(text: &str) -> Result<Descriptor, DdsError> {
        let bad = || DdsError::BadDescriptor(text.chars().take(80).collect());
        if text.len() > MAX_DESCRIPTOR {
            return Err(bad());
        }
        let parts: Vec<&str> = text.split(';').collect();
        let [name, zone, spec, retain, policy, coordinator] = parts[..] else {
            return Err(bad());
        };
        check_name(name)?;
        let retain: u32 = retain.parse().map_err(|_| bad())?;
        if retain > MAX_RETAIN || coordinator.is_empty() {
            return Err(bad());
        }
        Ok(Descriptor {
            name: name.into(),
            zone: ZonePath::parse(zone).map_err(|_| bad())?,
            spec: Spec::parse(spec)?,
            retain,
            policy: SlowPolicy::parse(policy).ok_or_else(bad)?,
            coordinator: coordinator.into(),
        })
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The id of a descriptor's text.
pub fn id_of(text: &str) -> ChannelId {
    let h = Sha256::digest(text.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_and_refuse_garbage() {
        let d = Descriptor {
            name: "prices".into(),
            zone: ZonePath::parse("/eu").unwrap(),
            spec: Spec::parse("fifo:nak").unwrap(),
            retain: 10,
            policy: SlowPolicy::Drop,
            coordinator: "10.0.0.1:4000".into(),
        };
        let back = Descriptor::parse(&d.text()).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.id(), d.id());
        for bad in [
            "",
            "a;/;nak;1;skip",
            "a b;/;nak;1;skip;x",
            "a;eu;nak;1;skip;x",
            "a;/;nak:frag;1;skip;x",
            "a;/;nak;99999;skip;x",
            "a;/;nak;1;maybe;x",
            "a;/;nak;1;skip;",
        ] {
            assert!(Descriptor::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Descriptor::parse("a;/;nak:frag;1;skip;x"),
            Err(DdsError::Spec(_))
        ));
    }
}
