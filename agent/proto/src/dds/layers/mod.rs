//! The microprotocols, one module each.

pub mod encrypt;
pub mod fifo;
pub mod flow;
pub mod frag;
pub mod gossip;
pub mod nak;
pub mod sign;
pub mod total;

#[cfg(test)]
mod tests;

use super::layer::Layer;
use super::spec::{LayerKind, Spec};
use super::stack::StackConfig;

/// A new layer of kind `k` for the stack `spec` configured by `cfg`.
pub fn make(k: LayerKind, spec: &Spec, cfg: &StackConfig) -> Box<dyn Layer> {
    let p = &cfg.params;
    match k {
        LayerKind::Sign => Box::new(sign::Sign::new(
            cfg.channel,
            cfg.signer.clone(),
            cfg.proof.clone(),
            cfg.keys.clone(),
        )),
        LayerKind::Encrypt => Box::new(encrypt::Encrypt::new(
            cfg.channel,
            cfg.local.clone(),
            cfg.coordinator.clone(),
            p,
        )),
        LayerKind::Total => Box::new(total::Total::new(
            cfg.local.clone(),
            cfg.coordinator.clone(),
            p,
        )),
        LayerKind::Fifo => Box::new(fifo::Fifo::new(p)),
        LayerKind::Frag => Box::new(frag::Frag::new(p)),
        LayerKind::Flow => Box::new(flow::Flow::new(p)),
        LayerKind::Nak => {
            let mut nak = nak::Nak::new(cfg.local.clone(), cfg.sync_all, p);
            // Gossip below gets its rounds to repair before nak asks.
            nak.patient(spec.has(LayerKind::Gossip));
            Box::new(nak)
        }
        LayerKind::Gossip => Box::new(gossip::Gossip::new(cfg.local.clone(), p)),
    }
}
