//! CHM over DNS: `ID.component.armillary.` and `KEYWORD.service.armillary.`
//! answered from lookups and provider searches, so that any program with a
//! resolver finds healthy components (the way Consul's DNS interface does).
//!
//! - `ID.component.armillary.` A (or AAAA) with the component's address, and
//!   SRV with its port, when the component is passing;
//! - `KEYWORD.service.armillary.` SRV (and A/AAAA) of the passing providers,
//!   nearest first (SRV priority 0, 1, 2, ... in that order);
//! - a name nobody knows is NXDOMAIN; a component that is not passing, or has
//!   no address, answers NOERROR with no records; names outside
//!   `armillary.` are REFUSED.
//!
//! Every record has TTL 0: health changes within seconds, and a resolver
//! that caches would hand out a critical component's address.

use super::{ChmCallError, lookup, providers};
use crate::node::NodeHandle;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::{Server, net::NetError};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The zone this server is authoritative for.
pub const DOMAIN: &str = "armillary.";
/// Providers in one answer without EDNS: a 512-byte UDP answer holds three
/// SRV records and their addresses with room to spare.
const PLAIN_ANSWERS: usize = 3;
/// Providers in one answer at most.
const MAX_ANSWERS: usize = 32;
/// Bytes one provider adds to an answer (SRV and A, names compressed).
const ANSWER_BYTES: usize = 64;
/// How long a TCP client may stay silent before it is dropped.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// What a query name asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    Component(String),
    Service(String),
}

/// Why a name has no question in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOurs {
    /// Under `armillary.` but not a form this server answers: NXDOMAIN.
    Unknown,
    /// Outside `armillary.`: REFUSED.
    Outside,
}

/// Reads a query name (any case, with or without the final dot).
pub fn question(name: &str) -> Result<Question, NotOurs> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    match labels.as_slice() {
        [.., "armillary"] => {}
        _ => return Err(NotOurs::Outside),
    }
    match labels.as_slice() {
        [id, "component", "armillary"] => Ok(Question::Component((*id).to_string())),
        [kw, "service", "armillary"] => Ok(Question::Service((*kw).to_string())),
        _ => Err(NotOurs::Unknown),
    }
}

/// A component's address split into where it answers: an IP or a host name,
/// and a port when it has one.
fn endpoint(address: &str) -> (Host, Option<u16>) {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return (Host::Ip(sa.ip()), Some(sa.port()));
    }
    if let Ok(ip) = address.parse::<IpAddr>() {
        return (Host::Ip(ip), None);
    }
    match address.rsplit_once(':') {
        Some((h, p)) => (Host::Name(h.to_string()), p.parse().ok()),
        None => (Host::Name(address.to_string()), None),
    }
}

enum Host {
    Ip(IpAddr),
    Name(String),
}

/// The records of one answer.
#[derive(Debug, Default)]
pub struct Answer {
    /// NOERROR unless set.
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
}

fn address_record(name: &Name, ip: IpAddr) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), 0, rdata)
}

fn wants_address(t: RecordType, ip: &IpAddr) -> bool {
    match t {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// Adds one passing component at `rank` to `out`, for a query of type `t`
/// on `qname`.
fn add(out: &mut Answer, qname: &Name, t: RecordType, id: &str, address: &str, rank: usize) {
    let (host, port) = endpoint(address);
    // The SRV target: the component's own name when its address is an IP
    // (its A record then comes along), else the host name it gave.
    let target = match &host {
        Host::Ip(_) => Name::from_ascii(format!("{id}.component.{DOMAIN}")),
        Host::Name(h) => Name::from_ascii(format!("{}.", h.trim_end_matches('.'))),
    };
    let Ok(target) = target else {
        return;
    };
    if let (Some(port), true) = (port, matches!(t, RecordType::SRV | RecordType::ANY)) {
        let srv = SRV::new(rank.min(u16::MAX as usize) as u16, 1, port, target.clone());
        out.answers
            .push(Record::from_rdata(qname.clone(), 0, RData::SRV(srv)));
        if let Host::Ip(ip) = host {
            out.additionals.push(address_record(&target, ip));
        }
        return;
    }
    if let Host::Ip(ip) = host
        && wants_address(t, &ip)
    {
        out.answers.push(address_record(qname, ip));
    }
}

/// The negative answers' SOA: minimum TTL 0, so that resolvers do not cache
/// "no such component" either.
fn soa() -> Record {
    let origin = Name::from_ascii(DOMAIN).expect("the domain is a name");
    let mname = Name::from_ascii(format!("ns.{DOMAIN}")).expect("a name");
    let rname = Name::from_ascii(format!("hostmaster.{DOMAIN}")).expect("a name");
    Record::from_rdata(origin, 0, RData::SOA(SOA::new(mname, rname, 1, 0, 0, 0, 0)))
}

/// Answers `question` from this agent's view of the zone tree.
async fn answer(
    node: &NodeHandle,
    qname: &Name,
    t: RecordType,
    q: Question,
    limit: usize,
) -> Answer {
    let mut out = Answer::default();
    match q {
        Question::Component(id) => match lookup(node, id).await {
            Ok(r) => {
                if let (super::proto::Status::Passing, Some(a)) = (r.status, &r.address) {
                    add(&mut out, qname, t, r.id.as_str(), a, 0);
                }
            }
            Err(ChmCallError::NotFound(_) | ChmCallError::Chm(_)) => {
                out.code = ResponseCode::NXDomain
            }
            Err(e) => {
                tracing::debug!(error = %e, "DNS lookup failed");
                out.code = ResponseCode::ServFail
            }
        },
        Question::Service(kw) => match providers(node, kw, limit).await {
            // The core's providers are passing (and not severe) already.
            Ok(rs) => {
                if rs.is_empty() {
                    out.code = ResponseCode::NXDomain;
                }
                for (rank, r) in rs.iter().enumerate() {
                    if let Some(a) = &r.address {
                        add(&mut out, qname, t, r.id.as_str(), a, rank);
                    }
                }
            }
            Err(ChmCallError::Chm(_)) => out.code = ResponseCode::NXDomain,
            Err(e) => {
                tracing::debug!(error = %e, "DNS provider search failed");
                out.code = ResponseCode::ServFail
            }
        },
    }
    out
}

/// The request handler over one agent.
struct Handler {
    node: NodeHandle,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.authoritative = true;
        let edns = request.edns.as_ref().map(|e| {
            let mut r = Edns::new();
            r.set_max_payload(e.max_payload().max(512));
            r
        });
        let (a, ours) = self.respond(request).await;
        meta.response_code = a.code;
        // Negative answers in our zone carry its SOA (minimum TTL 0).
        let soa = if ours && a.answers.is_empty() {
            vec![soa()]
        } else {
            Vec::new()
        };
        let r = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            meta,
            &a.answers,
            &[],
            &soa,
            &a.additionals,
        );
        match response.send_response(r).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "cannot send a DNS answer");
                hickory_server::proto::op::Header {
                    metadata: meta,
                    counts: Default::default(),
                }
                .into()
            }
        }
    }
}

impl Handler {
    /// The answer to `request`, and whether its name is in our zone.
    async fn respond(&self, request: &Request) -> (Answer, bool) {
        let refuse = |code| {
            let a = Answer {
                code,
                ..Answer::default()
            };
            (a, false)
        };
        let query = match request.request_info() {
            Ok(info)
                if request.metadata.message_type == MessageType::Query
                    && request.metadata.op_code == OpCode::Query =>
            {
                info.query.clone()
            }
            _ => return refuse(ResponseCode::NotImp),
        };
        let q = match question(&query.name().to_string()) {
            Ok(q) if query.query_class() == DNSClass::IN => q,
            Ok(_) | Err(NotOurs::Outside) => return refuse(ResponseCode::Refused),
            Err(NotOurs::Unknown) => {
                let a = Answer {
                    code: ResponseCode::NXDomain,
                    ..Answer::default()
                };
                return (a, true);
            }
        };
        let limit = match &request.edns {
            None => PLAIN_ANSWERS,
            Some(e) => (usize::from(e.max_payload()) / ANSWER_BYTES).clamp(1, MAX_ANSWERS),
        };
        let qname = query.original().name().clone();
        let a = answer(&self.node, &qname, query.query_type(), q, limit).await;
        (a, true)
    }
}

/// A DNS server over one agent, on UDP and TCP at the same address.
pub struct DnsServer {
    server: Server<Handler>,
    addr: SocketAddr,
}

/// Why the DNS server did not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve DNS on {addr}: {source}; pick another address with --dns")]
pub struct DnsError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

impl DnsServer {
    /// Binds `addr` (UDP and TCP; port 0 picks one) and answers from `node`.
    pub async fn bind(addr: SocketAddr, node: NodeHandle) -> Result<DnsServer, DnsError> {
        let err = |source| DnsError { addr, source };
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(err)?;
        let bound = udp.local_addr().map_err(err)?;
        let tcp = tokio::net::TcpListener::bind(bound)
            .await
            .map_err(|source| DnsError {
                addr: bound,
                source,
            })?;
        let mut server = Server::new(Handler { node });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, 16);
        Ok(DnsServer {
            server,
            addr: bound,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering and waits for the server's tasks.
    pub async fn shutdown(mut self) -> Result<(), NetError> {
        self.server.shutdown_gracefully().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_questions_in_any_case() {
        assert_eq!(
            question("Web-1.Component.Armillary."),
            Ok(Question::Component("web-1".into()))
        );
        assert_eq!(
            question("web.service.armillary"),
            Ok(Question::Service("web".into()))
        );
        assert_eq!(question("x.y.service.armillary."), Err(NotOurs::Unknown));
        assert_eq!(question("armillary."), Err(NotOurs::Unknown));
        assert_eq!(question("example.com."), Err(NotOurs::Outside));
        assert_eq!(question("."), Err(NotOurs::Outside));
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn a_passing_component_answers_its_address_and_port() {
        let q = name("web-1.component.armillary.");
        let mut a = Answer::default();
        add(&mut a, &q, RecordType::A, "web-1", "10.0.0.7:8080", 0);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(
            a.answers[0].data.ip_addr(),
            Some("10.0.0.7".parse().unwrap())
        );
        assert_eq!(a.answers[0].ttl, 0);

        let mut s = Answer::default();
        add(&mut s, &q, RecordType::SRV, "web-1", "10.0.0.7:8080", 2);
        let RData::SRV(srv) = &s.answers[0].data else {
            panic!("not an SRV: {:?}", s.answers[0]);
        };
        assert_eq!((srv.priority, srv.port), (2, 8080));
        assert_eq!(srv.target, q);
        assert_eq!(s.additionals.len(), 1, "the target's address comes along");

        // An AAAA query on an IPv4 component has no records.
        let mut six = Answer::default();
        add(&mut six, &q, RecordType::AAAA, "web-1", "10.0.0.7:8080", 0);
        assert!(six.answers.is_empty());
    }

    #[test]
    fn a_host_name_address_is_the_srv_target() {
        let q = name("db.service.armillary.");
        let mut s = Answer::default();
        add(
            &mut s,
            &q,
            RecordType::SRV,
            "db-1",
            "db1.example.net:5432",
            0,
        );
        let RData::SRV(srv) = &s.answers[0].data else {
            panic!("not an SRV");
        };
        assert_eq!(srv.target, name("db1.example.net."));
        assert!(s.additionals.is_empty());
    }
}
