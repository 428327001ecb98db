//! A client of an Armillary agent's HTTP API, for applications and the
//! `armillary` command alike.
//!
//! [`types`] holds the API's requests, replies and stream records; the agent
//! builds its answers from the same types, so a field renamed on one side
//! is renamed on both. [`Client`] (feature `http`, on by default) calls one
//! agent: zone watches, AFCs, EVN subscriptions, events and conditions, CHM
//! lookups, and raw calls for everything else.
//!
//! ```no_run
//! # async fn demo() -> Result<(), armillary_client::ClientError> {
//! use armillary_client::{Client, types::evn::SubscribeRequest};
//! let agent = Client::new("127.0.0.1:8080", None)?;
//! let sub = agent.evn_subscribe(&SubscribeRequest::sql("topic = 'dc/offline'")).await?;
//! let mut events = agent.evn_events(&sub.id).await?;
//! while let Some(record) = events.next().await? {
//!     println!("{record:?}");
//! }
//! # Ok(()) }
//! ```

pub mod types;

#[cfg(feature = "http")]
mod error;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
mod sse;

#[cfg(feature = "http")]
pub use error::ClientError;
#[cfg(feature = "http")]
pub use http::{Client, Method, StatusCode};
#[cfg(feature = "http")]
pub use sse::{EventStream, Records};
