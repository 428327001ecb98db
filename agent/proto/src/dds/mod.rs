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
//! - [`channel`]: channel descriptors, as the zone tree records them.
//! - [`wire`]: the channel protocol's messages between agents.
//! - [`service`]: the [`Dds`] service, channels over the zone tree, and
//!   the API the runtime serves.

pub mod certs;
pub mod channel;
pub mod codec;
pub mod error;
pub mod layer;
pub mod layers;
pub mod params;
pub mod service;
pub mod spec;
pub mod stack;
pub mod wire;

pub use certs::CertKeys;
pub use channel::{ChannelId, Descriptor, SlowPolicy};
pub use error::DdsError;
pub use layer::{Backpressure, Control, Cx, Dest, Layer, Msg, OriginId};
pub use params::{MAX_MESSAGE, Params};
pub use service::{
    CHANNELS_AFC, ChannelInfo, CloseReason, Dds, DdsConfig, DdsEvent, DdsStats, Delivery, SubId,
    SubscribeOpts, TreeInfo, Unsent,
};
pub use spec::{LayerKind, Spec, SpecError};
pub use stack::{Delivered, Frame, KeyBook, PinnedKeys, SendError, Stack, StackConfig, StackEvent};
pub use wire::{DdsMsg, FrameMsg};
