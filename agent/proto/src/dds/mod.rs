//! DDS: reliable multicast channels whose properties come from a stack of
//! microprotocol layers chosen when the channel is created, Horus and
//! Ensemble style (`docs/dds.md`).
//!
//! - [`spec`]: stack specifications and the composition rules.
//! - [`layer`]: the [`Layer`] trait and the messages between layers.
//! - [`stack`]: a built stack and the engine that runs it.
//! - [`layers`]: the microprotocols (`frag`, `nak`, `fifo`, `total`,
//!   `encrypt`, `sign`, `flow`, `gossip`).
//! - [`codec`]: the bounded byte codec of headers and messages.

pub mod codec;
pub mod layer;
pub mod layers;
pub mod params;
pub mod spec;
pub mod stack;

pub use layer::{Backpressure, Control, Cx, Dest, Layer, Msg, OriginId};
pub use params::{MAX_MESSAGE, Params};
pub use spec::{LayerKind, Spec, SpecError};
pub use stack::{Delivered, Frame, KeyBook, PinnedKeys, SendError, Stack, StackConfig, StackEvent};
