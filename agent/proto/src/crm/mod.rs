//! CRM: small process groups with virtual synchrony (first seed, section
//! 5.2), built on DDS's layer engine (`docs/crm.md`).
//!
//! - [`member`]: members, views and ballots.
//! - [`wire`]: the messages between agents and their bounded codec.
//! - [`log`]: what a member delivered in its view and what is unstable.
//! - [`window`]: group-wide flow control, a member's own unstable messages.
//! - [`group`]: one member's state machine of one group: delivery in
//!   fifo, total and safe order over the view's DDS stacks, and the view
//!   change (a flush decided by single-decree Paxos among the view).
//! - [`check`]: checkers of recorded histories (view synchrony, total
//!   order, no duplication or creation, self-delivery).
//! - [`service`]: the [`Crm`] service, the groups of one agent.
//! - [`endpoint`]: the replicated endpoint: a deterministic service
//!   behind a client table, answering each request exactly once.
//! - [`external`]: the endpoint with its service run by a separate
//!   process, which answers each ordered request later.
//! - [`kv`]: the built-in service, a key-value store.
//! - [`linear`]: a linearizability checker for the endpoint's histories.

pub mod check;
pub mod endpoint;
pub mod external;
pub mod group;
pub mod kv;
pub mod linear;
pub mod log;
pub mod member;
pub mod service;
pub mod window;
pub mod wire;

#[cfg(test)]
mod tests;

pub use endpoint::{Endpoint, Reply, Request, StateMachine};
pub use external::{External, Logged, MachineError};
pub use group::{Group, GroupConfig, GroupEvent, GroupStats, Phase, Rejoin, Replica, SendRefused};
pub use kv::{KvOp, KvReply, KvStore, KvValue};
pub use member::{Ballot, MemberId, View};
pub use service::{Crm, CrmConfig, CrmError, EventsReady, GROUPS_AFC, GroupInfo, check_name};
pub use wire::{CrmMsg, Mode};
