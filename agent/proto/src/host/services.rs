//! The services an agent runs beside its gossip core, as one value the
//! host drives without knowing them: none (`()`), or a tuple of
//! [`Service`]s, each reached by its envelope id.

use super::zones::Zones;
use super::{Peer, Service, ServiceId, Transmit};
use crate::gossip::Agent;
use crate::refusal::Refusal;
use crate::row::Micros;
use std::any::Any;

/// An event of some service, for a driver that knows it to downcast.
pub struct ServiceEvent {
    pub service: ServiceId,
    pub event: Box<dyn Any + Send>,
}

/// A set of services. Each call lends them the gossip core's zone tree.
pub trait Services: Send + 'static {
    /// Hands `payload` to the service `id`; refused when no service has
    /// that id or the payload does not decode.
    fn handle(
        &mut self,
        id: ServiceId,
        now: Micros,
        from: &Peer,
        payload: &[u8],
        gossip: &mut Agent,
    ) -> Result<(), Refusal>;
    /// Runs what is due at `now` in every service.
    fn handle_timeout(&mut self, now: Micros, gossip: &mut Agent);
    /// The earliest wake-up any service wants (`Micros::MAX`: none).
    fn poll_timeout(&self) -> Micros;
    /// The next message any service wants sent, encoded, with its id.
    fn poll_transmit(&mut self) -> Option<(ServiceId, Transmit<Vec<u8>>)>;
    fn poll_event(&mut self) -> Option<ServiceEvent>;
    /// The names of the services, each the name of its state file.
    fn names(&self) -> Vec<&'static str>;
    /// The built-in aggregations of the services, each with its service's name.
    fn aggregations(&self) -> Vec<(&'static str, String)>;
    /// The service `id`, for a driver that knows its type to downcast
    /// (see [`super::Host::with_service`]).
    fn service(&self, id: ServiceId) -> Option<&dyn Any>;
    fn service_mut(&mut self, id: ServiceId) -> Option<&mut dyn Any>;
    /// The durable state of each service that keeps some, by name.
    fn save(&self) -> Vec<(&'static str, Vec<u8>)>;
    /// Hands saved state to the service `name`.
    fn restore(
        &mut self,
        name: &str,
        state: &[u8],
        now: Micros,
        gossip: &mut Agent,
    ) -> Result<(), Refusal>;
}

impl Services for () {
    fn handle(
        &mut self,
        _: ServiceId,
        _: Micros,
        _: &Peer,
        _: &[u8],
        _: &mut Agent,
    ) -> Result<(), Refusal> {
        Err(Refusal::UnknownService)
    }

    fn handle_timeout(&mut self, _: Micros, _: &mut Agent) {}

    fn poll_timeout(&self) -> Micros {
        Micros::MAX
    }

    fn poll_transmit(&mut self) -> Option<(ServiceId, Transmit<Vec<u8>>)> {
        None
    }

    fn poll_event(&mut self) -> Option<ServiceEvent> {
        None
    }

    fn names(&self) -> Vec<&'static str> {
        Vec::new()
    }

    fn aggregations(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    fn service(&self, _: ServiceId) -> Option<&dyn Any> {
        None
    }

    fn service_mut(&mut self, _: ServiceId) -> Option<&mut dyn Any> {
        None
    }

    fn save(&self) -> Vec<(&'static str, Vec<u8>)> {
        Vec::new()
    }

    fn restore(&mut self, _: &str, _: &[u8], _: Micros, _: &mut Agent) -> Result<(), Refusal> {
        Err(Refusal::UnknownService)
    }
}

impl<S: Services + ?Sized> Services for Box<S> {
    fn handle(
        &mut self,
        id: ServiceId,
        now: Micros,
        from: &Peer,
        payload: &[u8],
        gossip: &mut Agent,
    ) -> Result<(), Refusal> {
        (**self).handle(id, now, from, payload, gossip)
    }

    fn handle_timeout(&mut self, now: Micros, gossip: &mut Agent) {
        (**self).handle_timeout(now, gossip)
    }

    fn poll_timeout(&self) -> Micros {
        (**self).poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<(ServiceId, Transmit<Vec<u8>>)> {
        (**self).poll_transmit()
    }

    fn poll_event(&mut self) -> Option<ServiceEvent> {
        (**self).poll_event()
    }

    fn names(&self) -> Vec<&'static str> {
        (**self).names()
    }

    fn aggregations(&self) -> Vec<(&'static str, String)> {
        (**self).aggregations()
    }

    fn service(&self, id: ServiceId) -> Option<&dyn Any> {
        (**self).service(id)
    }

    fn service_mut(&mut self, id: ServiceId) -> Option<&mut dyn Any> {
        (**self).service_mut(id)
    }

    fn save(&self) -> Vec<(&'static str, Vec<u8>)> {
        (**self).save()
    }

    fn restore(
        &mut self,
        name: &str,
        state: &[u8],
        now: Micros,
        gossip: &mut Agent,
    ) -> Result<(), Refusal> {
        (**self).restore(name, state, now, gossip)
    }
}

/// One service's share of each call, for the tuple impls.
fn handle_one<S: Service>(
    s: &mut S,
    now: Micros,
    from: &Peer,
    payload: &[u8],
    gossip: &mut Agent,
) -> Result<(), Refusal> {
    let msg = S::decode(payload)?;
    s.handle(now, from, msg, Zones::new(gossip, S::NAME, now));
    Ok(())
}

fn timeout_one<S: Service>(s: &mut S, now: Micros, gossip: &mut Agent) {
    if s.poll_timeout() <= now {
        s.handle_timeout(now, Zones::new(gossip, S::NAME, now));
    }
}

fn transmit_one<S: Service>(s: &mut S) -> Option<(ServiceId, Transmit<Vec<u8>>)> {
    s.poll_transmit().map(|t| {
        (
            S::ID,
            Transmit {
                to: t.to,
                msg: S::encode(&t.msg),
            },
        )
    })
}

fn event_one<S: Service>(s: &mut S) -> Option<ServiceEvent>
where
    S::Event: Send + 'static,
{
    s.poll_event().map(|e| ServiceEvent {
        service: S::ID,
        event: Box::new(e),
    })
}

macro_rules! tuple_services {
    ($($s:ident . $i:tt),+) => {
        impl<$($s: Service),+> Services for ($($s,)+)
        where
            $($s::Event: Send + 'static,)+
        {
            fn handle(
                &mut self,
                id: ServiceId,
                now: Micros,
                from: &Peer,
                payload: &[u8],
                gossip: &mut Agent,
            ) -> Result<(), Refusal> {
                $(if id == $s::ID {
                    return handle_one(&mut self.$i, now, from, payload, gossip);
                })+
                Err(Refusal::UnknownService)
            }

            fn handle_timeout(&mut self, now: Micros, gossip: &mut Agent) {
                $(timeout_one(&mut self.$i, now, gossip);)+
            }

            fn poll_timeout(&self) -> Micros {
                Micros::MAX$(.min(self.$i.poll_timeout()))+
            }

            fn poll_transmit(&mut self) -> Option<(ServiceId, Transmit<Vec<u8>>)> {
                $(if let Some(t) = transmit_one(&mut self.$i) {
                    return Some(t);
                })+
                None
            }

            fn poll_event(&mut self) -> Option<ServiceEvent> {
                $(if let Some(e) = event_one(&mut self.$i) {
                    return Some(e);
                })+
                None
            }

            fn names(&self) -> Vec<&'static str> {
                vec![$($s::NAME),+]
            }

            fn aggregations(&self) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                $(out.extend($s::aggregations().into_iter().map(|sql| ($s::NAME, sql)));)+
                out
            }

            fn service(&self, id: ServiceId) -> Option<&dyn Any> {
                $(if id == $s::ID {
                    return Some(&self.$i);
                })+
                None
            }

            fn service_mut(&mut self, id: ServiceId) -> Option<&mut dyn Any> {
                $(if id == $s::ID {
                    return Some(&mut self.$i);
                })+
                None
            }

            fn save(&self) -> Vec<(&'static str, Vec<u8>)> {
                let mut out = Vec::new();
                $(if let Some(b) = self.$i.save() {
                    out.push(($s::NAME, b));
                })+
                out
            }

            fn restore(
                &mut self,
                name: &str,
                state: &[u8],
                now: Micros,
                gossip: &mut Agent,
            ) -> Result<(), Refusal> {
                $(if name == $s::NAME {
                    return self.$i.restore(state, Zones::new(gossip, $s::NAME, now));
                })+
                Err(Refusal::UnknownService)
            }
        }
    };
}

tuple_services!(A.0);
tuple_services!(A.0, B.1);
tuple_services!(A.0, B.1, C.2);
tuple_services!(A.0, B.1, C.2, D.3);
