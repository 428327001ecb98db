//! The seam between protocol cores and what drives them.
//!
//! Every protocol is a [`Core`]: typed messages and the time in
//! ([`Core::handle`], [`Core::handle_timeout`]); messages to send, events and
//! its next wake-up out ([`Core::poll_transmit`], [`Core::poll_event`],
//! [`Core::poll_timeout`]), in the style of quinn-proto. The gossip core is
//! the first; every other protocol is a [`Service`] beside it, which reads
//! the zone tree and publishes its own attributes through [`Zones`].
//!
//! A [`Host`] holds one agent's cores, the gossip core and its
//! [`Services`], and routes what arrives by the envelope's service id
//! ([`envelope`]). The runtime and the simulator drive hosts; neither knows
//! any service by name.

pub mod envelope;
mod services;
mod zones;

pub use envelope::{Envelope, EnvelopeError, FORMAT_VERSION, GOSSIP};
pub use services::{ServiceEvent, Services};
pub use zones::{PublishError, Zones};

use crate::gossip::Agent;
use crate::message::Message;
use crate::refusal::Refusal;
use crate::row::Micros;
use std::sync::Arc;

/// The id of a service in the envelope; [`GOSSIP`] is the gossip core's.
pub type ServiceId = u16;

/// Who sent a message: the transport address it came from, and the
/// identity the transport authenticated (the zone named in the peer's
/// certificate; None in insecure mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub addr: Arc<str>,
    pub identity: Option<Arc<str>>,
}

impl Peer {
    /// A peer known by its address alone (insecure mode, the simulator).
    pub fn at(addr: Arc<str>) -> Peer {
        Peer {
            addr,
            identity: None,
        }
    }
}

/// A message a core wants sent to the agent at address `to`.
#[derive(Debug, Clone)]
pub struct Transmit<M> {
    pub to: Arc<str>,
    pub msg: M,
}

/// A protocol core: a deterministic state machine without I/O. `Cx` is
/// what the host lends it on every input: nothing for the gossip core,
/// the zone tree ([`Zones`]) for a service.
pub trait Core {
    type Msg;
    type Event;
    type Cx<'a>;

    /// Handles one message from `from` at `now`.
    fn handle(&mut self, now: Micros, from: &Peer, msg: Self::Msg, cx: Self::Cx<'_>);
    /// Runs what is due at `now`.
    fn handle_timeout(&mut self, now: Micros, cx: Self::Cx<'_>);
    /// The next time [`Core::handle_timeout`] must be called (`Micros::MAX`: never).
    fn poll_timeout(&self) -> Micros;
    fn poll_transmit(&mut self) -> Option<Transmit<Self::Msg>>;
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// A protocol that runs beside the gossip core on every agent: its own
/// module, its own envelope id and attribute prefix; it reads the zone tree
/// and publishes `NAME_...` attributes in this agent's leaf row.
pub trait Service: for<'a> Core<Cx<'a> = Zones<'a>> + Send + 'static {
    /// Its envelope id (not [`GOSSIP`]).
    const ID: ServiceId;
    /// Its name: the prefix of the attributes it publishes (`NAME_...`)
    /// and the name of its state file in the data directory.
    const NAME: &'static str;

    /// Built-in aggregations every zone evaluates after the system AFC:
    /// AFC SQL whose outputs are all named `NAME_...`. They are part of the
    /// service, so every agent running it evaluates the same ones.
    fn aggregations() -> Vec<String> {
        Vec::new()
    }

    fn encode(msg: &Self::Msg) -> Vec<u8>;
    /// Decodes a message from untrusted bytes; never panics.
    fn decode(bytes: &[u8]) -> Result<Self::Msg, Refusal>;

    /// The durable state to keep across a restart, encoded; None when the
    /// service keeps nothing. The driver writes it when it changes.
    fn save(&self) -> Option<Vec<u8>> {
        None
    }

    /// Restores what [`Service::save`] gave, before the service takes its
    /// first input (the gossip core's security is already on). Saved bytes
    /// are untrusted: a refusal drops them and is counted.
    fn restore(&mut self, state: &[u8], zones: Zones<'_>) -> Result<(), Refusal> {
        let _ = (state, zones);
        Ok(())
    }
}

impl Core for Agent {
    type Msg = Message;
    type Event = crate::gossip::Event;
    type Cx<'a> = ();

    fn handle(&mut self, now: Micros, from: &Peer, msg: Message, _: ()) {
        self.handle_message(now, &from.addr, msg);
    }

    fn handle_timeout(&mut self, now: Micros, _: ()) {
        Agent::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Micros {
        Agent::poll_timeout(self)
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Message>> {
        Agent::poll_transmit(self)
    }

    fn poll_event(&mut self) -> Option<crate::gossip::Event> {
        Agent::poll_event(self)
    }
}

/// What a host hands its driver to send: the sealed envelope's bytes.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub to: Arc<str>,
    pub bytes: Vec<u8>,
    /// An eager push of the gossip core (counted apart).
    pub push: bool,
}

/// One agent's cores: the gossip core and the services beside it.
pub struct Host<S> {
    pub gossip: Agent,
    pub services: S,
}

impl<S: Services> Host<S> {
    /// One agent's cores; the services' built-in aggregations are handed
    /// to the gossip core.
    ///
    /// # Panics
    /// When a service's built-in aggregation is invalid: a fault of the
    /// service itself, which any test of it shows.
    pub fn new(mut gossip: Agent, services: S) -> Host<S> {
        if let Err(e) = gossip.set_service_aggregations(services.aggregations()) {
            panic!("{e}");
        }
        Host { gossip, services }
    }

    /// The service of type `T`, if this host runs it.
    pub fn service<T: Service>(&self) -> Option<&T> {
        self.services.service(T::ID)?.downcast_ref()
    }

    /// Calls `f` with the service of type `T` and its view of the zone tree
    /// at `now`, as an input of the driver's (the runtime's API, a
    /// simulator scenario); None when this host does not run `T`. The
    /// driver then drains what the call made the service send.
    pub fn with_service<T: Service, R>(
        &mut self,
        now: Micros,
        f: impl FnOnce(&mut T, Zones<'_>) -> R,
    ) -> Option<R> {
        let s = self.services.service_mut(T::ID)?.downcast_mut::<T>()?;
        Some(f(s, Zones::new(&mut self.gossip, T::NAME, now)))
    }

    /// Opens an envelope and hands its message to the core it is for.
    pub fn handle(&mut self, now: Micros, from: &Peer, bytes: &[u8]) -> Result<(), Refusal> {
        let cluster = self.gossip.config().cluster;
        match Envelope::open(bytes, cluster).map_err(|e| e.refusal())? {
            Envelope::Gossip(msg) => {
                self.gossip.handle_message(now, &from.addr, msg);
                Ok(())
            }
            Envelope::Service { id, payload } => self.handle_service(now, from, id, payload),
        }
    }

    /// Hands a service's payload to the service `id`.
    pub fn handle_service(
        &mut self,
        now: Micros,
        from: &Peer,
        id: ServiceId,
        payload: &[u8],
    ) -> Result<(), Refusal> {
        self.services
            .handle(id, now, from, payload, &mut self.gossip)
    }

    /// Hands each service its saved state, before any input: state a
    /// service refuses is dropped, logged and counted.
    pub fn restore<'s>(
        &mut self,
        now: Micros,
        saved: impl IntoIterator<Item = (&'s str, &'s [u8])>,
    ) {
        for (name, state) in saved {
            if let Err(why) = self.services.restore(name, state, now, &mut self.gossip) {
                tracing::warn!(service = name, %why, "saved service state dropped");
                self.gossip.reject(Refusal::InvalidSavedState);
            }
        }
    }

    /// Runs what is due at `now` in every core.
    pub fn handle_timeout(&mut self, now: Micros) {
        if self.gossip.poll_timeout() <= now {
            self.gossip.handle_timeout(now);
        }
        self.services.handle_timeout(now, &mut self.gossip);
    }

    /// The earliest wake-up any core wants.
    pub fn poll_timeout(&self) -> Micros {
        self.gossip.poll_timeout().min(self.services.poll_timeout())
    }

    /// The next message any core wants sent, sealed: gossip first.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        let cluster = self.gossip.config().cluster;
        if let Some(t) = self.gossip.poll_transmit() {
            return Some(Outgoing {
                push: matches!(t.msg, Message::Push { .. }),
                bytes: envelope::seal_gossip(cluster, &t.msg),
                to: t.to,
            });
        }
        self.services.poll_transmit().map(|(id, t)| Outgoing {
            to: t.to,
            bytes: envelope::seal(cluster, id, &t.msg),
            push: false,
        })
    }
}
