//! Stack specifications: the text `sign:encrypt:fifo:frag:flow:nak:gossip`,
//! layers named top to bottom, and the composition rules a stack must
//! follow. A spec that breaks a rule is refused with the rule's name and
//! the fix; a valid spec has one canonical text, which is what channels
//! record and hash.
//!
//! # The rules
//!
//! | rule | why |
//! | --- | --- |
//! | every name is a known layer | |
//! | no layer twice | each layer keeps per-origin state; two would fight over it |
//! | `fifo` and `total` exclusive | `total` already delivers each origin's messages in its order |
//! | `fifo` and `total` above `nak` | ordering over a lossy stream waits forever at the first loss |
//! | `frag` above `nak` | `nak` then repairs single fragments; below it a lost fragment costs the whole message |
//! | `flow` directly above `nak` | it counts `nak`'s messages against `nak`'s stability; a layer between would change the units |
//! | `gossip` the lowest layer | it repairs frames as they travel between agents, before `nak` asks the origin |
//! | `sign` and `encrypt` above `frag`, `flow`, `nak` and `gossip` | one signature or seal per message, not per fragment, and the per-frame layers stay readable to every member that repairs |

use std::fmt;

/// The layers a stack may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LayerKind {
    Sign,
    Encrypt,
    Total,
    Fifo,
    Frag,
    Flow,
    Nak,
    Gossip,
}

impl LayerKind {
    pub const ALL: [LayerKind; 8] = [
        LayerKind::Sign,
        LayerKind::Encrypt,
        LayerKind::Total,
        LayerKind::Fifo,
        LayerKind::Frag,
        LayerKind::Flow,
        LayerKind::Nak,
        LayerKind::Gossip,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Sign => "sign",
            LayerKind::Encrypt => "encrypt",
            LayerKind::Total => "total",
            LayerKind::Fifo => "fifo",
            LayerKind::Frag => "frag",
            LayerKind::Flow => "flow",
            LayerKind::Nak => "nak",
            LayerKind::Gossip => "gossip",
        }
    }

    pub fn parse(name: &str) -> Option<LayerKind> {
        LayerKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Layers that work on frames as they travel (below the security layers).
    fn per_frame(self) -> bool {
        matches!(
            self,
            LayerKind::Frag | LayerKind::Flow | LayerKind::Nak | LayerKind::Gossip
        )
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The longest spec text accepted.
pub const MAX_SPEC_TEXT: usize = 128;

/// Why a spec was refused: each variant names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "empty stack: name at least one layer, top to bottom, separated by ':' (e.g. fifo:nak)"
    )]
    Empty,
    #[error("stack spec of {0} bytes; the limit is {MAX_SPEC_TEXT}")]
    TooLong(usize),
    #[error(
        "unknown layer {name:?} at position {position}; the layers are sign, encrypt, total, fifo, frag, flow, nak, gossip"
    )]
    UnknownLayer { name: String, position: usize },
    #[error("layer {0} appears twice; each layer may appear once")]
    Duplicate(LayerKind),
    #[error(
        "fifo and total together: total already delivers each origin's messages in order; keep one"
    )]
    FifoWithTotal,
    #[error(
        "{layer} needs nak below it: ordering over a lossy stream would wait forever at the first loss (e.g. {layer}:nak)"
    )]
    OrderWithoutNak { layer: LayerKind },
    #[error("{layer} is below nak: ordering must sit above reliability (move {layer} above nak)")]
    OrderBelowNak { layer: LayerKind },
    #[error(
        "frag is below nak: nak must sit below frag so that it repairs single fragments rather than whole messages (e.g. frag:nak)"
    )]
    FragBelowNak,
    #[error(
        "flow must sit directly above nak: it counts nak's messages against nak's stability (e.g. flow:nak)"
    )]
    FlowNotOverNak,
    #[error(
        "gossip must be the lowest layer: it repairs frames as they travel between agents (e.g. nak:gossip)"
    )]
    GossipNotLowest,
    #[error(
        "{layer} is below {below}: sign and encrypt must sit above frag, flow, nak and gossip, so that they act once per message and members can repair frames without keys"
    )]
    SecurityTooLow { layer: LayerKind, below: LayerKind },
}

/// A valid stack, top to bottom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spec {
    layers: Vec<LayerKind>,
}

impl Spec {
    /// Parses and validates `text` (layer names top to bottom, `:` between).
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        if text.len() > MAX_SPEC_TEXT {
            return Err(SpecError::TooLong(text.len()));
        }
        let text = text.trim();
        if text.is_empty() {
            return Err(SpecError::Empty);
        }
        let mut layers = Vec::new();
        for (i, part) in text.split(':').enumerate() {
            let name = part.trim();
            let kind = LayerKind::parse(name).ok_or_else(|| SpecError::UnknownLayer {
                name: name.to_string(),
                position: i + 1,
            })?;
            if layers.contains(&kind) {
                return Err(SpecError::Duplicate(kind));
            }
            layers.push(kind);
        }
        Spec::from_layers(layers)
    }

    /// Validates a list of layers, top to bottom.
    pub fn from_layers(layers: Vec<LayerKind>) -> Result<Spec, SpecError> {
        use LayerKind::*;
        if layers.is_empty() {
            return Err(SpecError::Empty);
        }
        let pos = |k: LayerKind| layers.iter().position(|&l| l == k);
        for (i, k) in layers.iter().enumerate() {
            if layers[..i].contains(k) {
                return Err(SpecError::Duplicate(*k));
            }
        }
        if pos(Fifo).is_some() && pos(Total).is_some() {
            return Err(SpecError::FifoWithTotal);
        }
        let nak = pos(Nak);
        for order in [Fifo, Total] {
            if let Some(o) = pos(order) {
                match nak {
                    None => return Err(SpecError::OrderWithoutNak { layer: order }),
                    Some(n) if o > n => return Err(SpecError::OrderBelowNak { layer: order }),
                    _ => {}
                }
            }
        }
        if let (Some(f), Some(n)) = (pos(Frag), nak)
            && f > n
        {
            return Err(SpecError::FragBelowNak);
        }
        if let Some(f) = pos(Flow)
            && nak != Some(f + 1)
        {
            return Err(SpecError::FlowNotOverNak);
        }
        if let Some(g) = pos(Gossip)
            && g + 1 != layers.len()
        {
            return Err(SpecError::GossipNotLowest);
        }
        for sec in [Sign, Encrypt] {
            if let Some(s) = pos(sec)
                && let Some(below) = layers[..s].iter().find(|k| k.per_frame())
            {
                return Err(SpecError::SecurityTooLow {
                    layer: sec,
                    below: *below,
                });
            }
        }
        Ok(Spec { layers })
    }

    /// The layers, top to bottom.
    pub fn layers(&self) -> &[LayerKind] {
        &self.layers
    }

    pub fn has(&self, k: LayerKind) -> bool {
        self.layers.contains(&k)
    }

    /// The layers from `nak` down: what a relay runs to repair its zone.
    /// The rules keep them below every layer that needs a key, so a relay
    /// holds no key. None without `nak`.
    pub fn repair_part(&self) -> Option<Spec> {
        let at = self.layers.iter().position(|&k| k == LayerKind::Nak)?;
        Spec::from_layers(self.layers[at..].to_vec()).ok()
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            f.write_str(l.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_specs_parse_and_print_canonically() {
        for text in [
            "nak",
            "fifo:nak",
            "total:nak",
            "sign:encrypt:fifo:frag:flow:nak:gossip",
            "encrypt:sign:total:frag:nak",
            "frag:nak:gossip",
            "gossip",
            "encrypt",
            "fifo:flow:nak",
            "frag",
        ] {
            let s = Spec::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.to_string(), text);
        }
        assert_eq!(Spec::parse(" fifo : nak ").unwrap().to_string(), "fifo:nak");
    }

    #[test]
    fn every_rule_is_named_when_broken() {
        let cases: &[(&str, SpecError)] = &[
            ("", SpecError::Empty),
            (
                "fifo:nack",
                SpecError::UnknownLayer {
                    name: "nack".into(),
                    position: 2,
                },
            ),
            ("nak:nak", SpecError::Duplicate(LayerKind::Nak)),
            ("fifo:total:nak", SpecError::FifoWithTotal),
            (
                "fifo",
                SpecError::OrderWithoutNak {
                    layer: LayerKind::Fifo,
                },
            ),
            (
                "nak:total",
                SpecError::OrderBelowNak {
                    layer: LayerKind::Total,
                },
            ),
            ("sign:encrypt:fifo:nak:frag", SpecError::FragBelowNak),
            ("flow:fifo:nak", SpecError::FlowNotOverNak),
            ("flow", SpecError::FlowNotOverNak),
            ("gossip:nak", SpecError::GossipNotLowest),
            (
                "frag:sign:nak",
                SpecError::SecurityTooLow {
                    layer: LayerKind::Sign,
                    below: LayerKind::Frag,
                },
            ),
            (
                "fifo:nak:encrypt",
                SpecError::SecurityTooLow {
                    layer: LayerKind::Encrypt,
                    below: LayerKind::Nak,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Spec::parse(text).as_ref(), Err(want), "{text}");
            assert!(!want.to_string().is_empty());
        }
        let full = Spec::parse("sign:encrypt:fifo:frag:flow:nak:gossip").unwrap();
        assert_eq!(full.repair_part().unwrap().to_string(), "nak:gossip");
        assert_eq!(Spec::parse("encrypt").unwrap().repair_part(), None);
        let long = "nak:".repeat(40);
        assert!(matches!(Spec::parse(&long), Err(SpecError::TooLong(_))));
        // The message tells the fix.
        let e = Spec::parse("sign:encrypt:fifo:nak:frag").unwrap_err();
        assert!(e.to_string().contains("frag:nak"), "{e}");
    }
}
