//! Gossip over QUIC: one endpoint per agent, one connection per peer reused
//! for every message, one unidirectional stream per batch of messages.
//!
//! A stream carries the messages queued for its peer while the previous
//! stream was being written, each as `len: u32 (little-endian) | envelope`
//! (at most [`MAX_BATCH`] messages and about [`BATCH_BYTES`]): under load
//! the per-stream cost is shared by many messages, and an idle peer still
//! gets each message at once.
//!
//! Nothing here grows without bound: each peer has a short send queue
//! (a full queue drops the message, which gossip repairs next round), the
//! inbound queue to the protocol core is bounded the same way, messages are
//! read up to the size limit, and QUIC flow control bounds what a peer may
//! send before we read it.

use super::tls;
use crate::Refusal;
use crate::cluster::ClusterId;
use crate::host::{Envelope, FORMAT_VERSION, Peer, ServiceId};
use crate::message::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages queued per peer before new ones are dropped. Above DDS's
/// `nak` window (4,096 by default): a publisher's whole window fits in
/// every link's queue, so that its flow control, not a full queue at its
/// own agent, holds it back.
const PEER_QUEUE: usize = 8192;
/// Messages written on one stream at most.
pub const MAX_BATCH: usize = 256;
/// A batch takes no further message once it holds this many bytes.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Size of the peer map at which closed entries are dropped.
const PEER_MAP_PRUNE: usize = 256;
/// A peer task with nothing to send for this long closes.
const PEER_IDLE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HELLO: usize = 16 * 1024;
const HELLO_LABEL: &[u8] = b"EXPORTER-armillary-hello";

/// Proves who we are on a connection, and checks who the peer is.
///
/// Each side signs the TLS session's exported keying material for its own
/// role, so a hello cannot be replayed on another connection or reflected.
pub trait PeerAuth: Send + Sync + 'static {
    /// Our hello for a connection whose binding (for our role) is `binding`.
    fn hello(&self, binding: &[u8]) -> Vec<u8>;
    /// Checks the peer's hello against the binding of its role; returns its name.
    fn check(&self, hello: &[u8], binding: &[u8]) -> Result<String, Refusal>;
}

/// A message from the network, its envelope opened: a gossip message
/// decoded and bounded, or a service's payload for its core to decode.
pub struct Inbound {
    pub from: Peer,
    pub body: Body,
}

/// What an envelope held.
pub enum Body {
    Gossip(Message),
    Service { id: ServiceId, payload: Vec<u8> },
}

/// Counters of the transport, exported with the core's.
#[derive(Default)]
pub struct NetCounters {
    pub sent: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub received: AtomicU64,
    pub received_bytes: AtomicU64,
    pub send_dropped: AtomicU64,
    pub send_failed: AtomicU64,
    pub connects: AtomicU64,
    /// Connections to a peer that restarted, reset by it (QUIC stateless
    /// reset) instead of waiting out the idle timeout.
    pub peer_resets: AtomicU64,
    rejected: Mutex<BTreeMap<Refusal, u64>>,
}

impl NetCounters {
    pub fn reject(&self, reason: Refusal) {
        *self
            .rejected
            .lock()
            .expect("counter lock")
            .entry(reason)
            .or_default() += 1;
    }

    pub fn add_counters(&self, out: &mut BTreeMap<String, u64>) {
        for (k, v) in [
            ("net_msgs_sent", &self.sent),
            ("net_bytes_sent", &self.sent_bytes),
            ("net_msgs_received", &self.received),
            ("net_bytes_received", &self.received_bytes),
            ("net_send_dropped", &self.send_dropped),
            ("net_send_failed", &self.send_failed),
            ("net_connects", &self.connects),
            ("net_peer_resets", &self.peer_resets),
        ] {
            out.insert(k.to_string(), v.load(Ordering::Relaxed));
        }
    }

    pub fn add_rejected(&self, out: &mut BTreeMap<String, u64>) {
        for (k, v) in self.rejected.lock().expect("counter lock").iter() {
            *out.entry(k.label().to_string()).or_default() += v;
        }
    }
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {err}; is another agent using it?")]
    Bind {
        addr: SocketAddr,
        #[source]
        err: std::io::Error,
    },
}

struct Shared {
    endpoint: quinn::Endpoint,
    counters: Arc<NetCounters>,
    auth: Option<Arc<dyn PeerAuth>>,
    /// Our cluster: peers and messages of another are refused.
    cluster: ClusterId,
    /// The format version our hellos announce ([`FORMAT_VERSION`]; tests
    /// play a peer of another release).
    hello_version: AtomicU8,
    inbound: mpsc::Sender<Inbound>,
    max_message: usize,
    /// Peers we refuse to talk to (fault injection for partition tests).
    blocked: RwLock<HashSet<SocketAddr>>,
    /// Share of outgoing messages dropped, in millionths (fault injection
    /// for loss tests).
    loss_ppm: std::sync::atomic::AtomicU32,
    /// Tasks that hold the endpoint, stopped on close so the socket is freed.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Shared {
    fn spawn(self: &Arc<Self>, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(f).abort_handle();
        let mut tasks = self.tasks.lock().expect("tasks lock");
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    fn stop_tasks(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }

    /// Our hello for a connection whose binding (for our role) is `binding`.
    fn hello(&self, binding: &[u8]) -> Vec<u8> {
        let auth = self.auth.as_ref().map(|a| a.hello(binding));
        hello_frame(
            self.hello_version.load(Ordering::Relaxed),
            self.cluster,
            auth.as_deref().unwrap_or_default(),
        )
    }

    /// Checks the peer's hello; returns its certified name, with keys.
    fn check_hello(&self, frame: &[u8], binding: &[u8]) -> Result<Option<String>, Refusal> {
        let auth = open_hello(frame, self.cluster)?;
        match &self.auth {
            // A peer without keys says hello with no authentication at all.
            Some(_) if auth.is_empty() => Err(Refusal::UnauthenticatedPeer),
            Some(a) => a.check(auth, binding).map(Some),
            None => Ok(None),
        }
    }

    fn is_blocked(&self, a: &SocketAddr) -> bool {
        let b = self.blocked.read().expect("blocked lock");
        !b.is_empty() && b.contains(a)
    }
}

/// The QUIC endpoint of one agent.
pub struct Transport {
    shared: Arc<Shared>,
    peers: Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Transport {
    /// Binds `listen` and starts accepting for an agent of `cluster`;
    /// decoded messages go to `inbound`. With a `reset_key` kept across
    /// restarts, connections peers still hold to this address's previous
    /// run are reset at their first packet (QUIC stateless reset).
    pub fn bind(
        listen: SocketAddr,
        reset_key: Option<[u8; 32]>,
        auth: Option<Arc<dyn PeerAuth>>,
        cluster: ClusterId,
        inbound: mpsc::Sender<Inbound>,
        counters: Arc<NetCounters>,
        max_message: usize,
    ) -> Result<Transport, TransportError> {
        let (server, client) = tls::configs()?;
        let bind_err = |err| TransportError::Bind { addr: listen, err };
        let mut endpoint = match reset_key {
            None => quinn::Endpoint::server(server, listen).map_err(bind_err)?,
            Some(k) => {
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k);
                // Connection ids carry a keyed hash that the endpoint checks
                // before anything else: the next run must know the key too,
                // or it drops the old connections' packets unanswered.
                let tag = ring::hmac::sign(&key, b"armillary connection ids");
                let cid_key = u64::from_le_bytes(tag.as_ref()[..8].try_into().expect("8 bytes"));
                let mut config = quinn::EndpointConfig::new(Arc::new(key));
                config.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                let socket = std::net::UdpSocket::bind(listen).map_err(bind_err)?;
                let runtime = Arc::new(quinn::TokioRuntime);
                quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind_err)?
            }
        };
        endpoint.set_default_client_config(client);
        let shared = Arc::new(Shared {
            endpoint,
            counters,
            auth,
            cluster,
            hello_version: AtomicU8::new(FORMAT_VERSION),
            inbound,
            max_message,
            blocked: RwLock::new(HashSet::new()),
            loss_ppm: std::sync::atomic::AtomicU32::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let accept_task = tokio::spawn(accept_loop(shared.clone()));
        Ok(Transport {
            shared,
            peers: Mutex::new(HashMap::new()),
            accept_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Queues a sealed envelope for the agent at `to`; drops it when that
    /// peer's queue is full.
    pub fn send(&self, to: &str, bytes: Vec<u8>) {
        let Ok(addr) = to.parse::<SocketAddr>() else {
            self.shared.counters.reject(Refusal::BadContactAddress);
            return;
        };
        if self.shared.is_blocked(&addr) {
            self.shared
                .counters
                .send_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let loss = self.shared.loss_ppm.load(Ordering::Relaxed);
        if loss > 0 && rand::random_range(0..1_000_000) < loss {
            return;
        }
        if self.queue(addr).try_send(bytes).is_err() {
            self.shared
                .counters
                .send_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The send queue of one peer, started on first use.
    fn queue(&self, addr: SocketAddr) -> mpsc::Sender<Vec<u8>> {
        let mut peers = self.peers.lock().expect("peers lock");
        match peers.get(&addr) {
            Some(tx) if !tx.is_closed() => tx.clone(),
            _ => {
                // Peers whose task ended (idle, or gone) leave the map now and
                // then, so it holds about the peers in use.
                if peers.len() >= PEER_MAP_PRUNE {
                    peers.retain(|_, tx| !tx.is_closed());
                }
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                self.shared.spawn(peer_task(self.shared.clone(), addr, rx));
                peers.insert(addr, tx.clone());
                tx
            }
        }
    }

    /// Announces another format version in the hellos of new connections:
    /// how tests play a peer of another release.
    pub fn announce_version(&self, version: u8) {
        self.shared.hello_version.store(version, Ordering::Relaxed);
    }

    /// Sends bytes as they are, unchecked: how tests play a hostile peer.
    pub fn send_bytes(&self, to: SocketAddr, bytes: Vec<u8>) {
        let _ = self.queue(to).try_send(bytes);
    }

    /// Refuses all traffic to and from these addresses until [`Transport::unblock_all`].
    pub fn block(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        self.shared
            .blocked
            .write()
            .expect("blocked lock")
            .extend(addrs);
    }

    /// Drops each outgoing message with probability `p` (0 turns it off):
    /// message loss, for tests and soaks.
    pub fn set_loss(&self, p: f64) {
        let ppm = (p.clamp(0.0, 1.0) * 1e6) as u32;
        self.shared.loss_ppm.store(ppm, Ordering::Relaxed);
    }

    pub fn unblock_all(&self) {
        self.shared.blocked.write().expect("blocked lock").clear();
    }

    /// Drops every connection at once, without waiting (a crash, in tests).
    pub fn shutdown_now(&self) {
        self.accept_task.abort();
        self.peers.lock().expect("peers lock").clear();
        self.shared.endpoint.close(0u32.into(), b"gone");
        self.shared.stop_tasks();
    }

    /// Closes every connection and waits briefly for peers to hear it.
    pub async fn close(&self) {
        self.accept_task.abort();
        self.peers.lock().expect("peers lock").clear();
        self.shared.endpoint.close(0u32.into(), b"shutdown");
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
    }
}

/// Which end of a connection we are.
#[derive(Clone, Copy)]
enum Role {
    Client,
    Server,
}

/// The TLS session's exported keying material for our role and the peer's:
/// what each side's hello signs.
fn bindings(conn: &quinn::Connection, role: Role) -> Result<([u8; 32], [u8; 32]), Refusal> {
    let export = |label: &[u8]| {
        let mut out = [0u8; 32];
        conn.export_keying_material(&mut out, HELLO_LABEL, label)
            .map(|_| out)
            .map_err(|_| Refusal::BadHello)
    };
    let (client, server) = (export(b"client")?, export(b"server")?);
    Ok(match role {
        Role::Client => (client, server),
        Role::Server => (server, client),
    })
}

/// The hello each side sends first on a connection: the envelope format
/// version, the cluster id, then (with keys) the authentication.
fn hello_frame(version: u8, cluster: ClusterId, auth: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + auth.len());
    out.push(version);
    out.extend_from_slice(&cluster.0.to_le_bytes());
    out.extend_from_slice(auth);
    out
}

/// Checks a peer's hello for an agent of `cluster`: the version first
/// (another version's hello may be laid out otherwise), then the cluster.
/// Returns the authentication that follows.
fn open_hello(frame: &[u8], cluster: ClusterId) -> Result<&[u8], Refusal> {
    match frame.first() {
        None => return Err(Refusal::BadHello),
        Some(&v) if v != FORMAT_VERSION => return Err(Refusal::UnknownVersion),
        Some(_) => {}
    }
    let id: [u8; 8] = frame
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .ok_or(Refusal::BadHello)?;
    if ClusterId(u64::from_le_bytes(id)) != cluster {
        return Err(Refusal::WrongCluster);
    }
    Ok(&frame[9..])
}

/// Runs one side's hello exchange under the timeout; returns the peer's
/// certified name (None in insecure mode). A failure is counted under its
/// reason and closes the connection.
async fn authenticate(
    shared: &Shared,
    conn: &quinn::Connection,
    exchange: impl std::future::Future<Output = Result<Option<String>, Refusal>>,
) -> Result<Option<String>, Refusal> {
    let remote = conn.remote_address();
    let reason = match tokio::time::timeout(HELLO_TIMEOUT, exchange).await {
        Ok(Ok(peer)) => {
            tracing::debug!(%remote, ?peer, "peer said hello");
            return Ok(peer);
        }
        Ok(Err(reason)) => reason,
        Err(_) => Refusal::HelloTimeout,
    };
    tracing::warn!(%remote, %reason, "refused a peer at the hello");
    shared.counters.reject(reason);
    conn.close(1u32.into(), reason.label().as_bytes());
    Err(reason)
}

/// Sends queued messages to one peer over one reused connection, those
/// queued together on one stream.
async fn peer_task(shared: Arc<Shared>, addr: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    let mut conn: Option<quinn::Connection> = None;
    loop {
        let first = match tokio::time::timeout(PEER_IDLE, rx.recv()).await {
            Ok(Some(b)) => b,
            _ => break,
        };
        let mut count: u64 = 1;
        let mut frames = Vec::with_capacity(4 + first.len());
        push_frame(&mut frames, &first);
        while count < MAX_BATCH as u64 && frames.len() < BATCH_BYTES {
            let Ok(b) = rx.try_recv() else { break };
            push_frame(&mut frames, &b);
            count += 1;
        }
        forget_closed(&shared, &mut conn);
        if conn.is_none() {
            match connect(&shared, addr).await {
                Ok(c) => conn = Some(c),
                Err(reason) => {
                    tracing::debug!(%addr, %reason, "cannot reach peer");
                    let stale = drop_queued(&mut rx);
                    shared
                        .counters
                        .send_failed
                        .fetch_add(count + stale, Ordering::Relaxed);
                    continue;
                }
            }
        }
        let c = conn.as_ref().expect("connected above");
        let len = frames.len() as u64 - 4 * count;
        let sent = async {
            let mut s = c.open_uni().await.ok()?;
            s.write_all(&frames).await.ok()?;
            s.finish().ok()
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, sent).await {
            Ok(Some(())) => {
                shared.counters.sent.fetch_add(count, Ordering::Relaxed);
                shared.counters.sent_bytes.fetch_add(len, Ordering::Relaxed);
            }
            _ => {
                let stale = drop_queued(&mut rx);
                shared
                    .counters
                    .send_failed
                    .fetch_add(count + stale, Ordering::Relaxed);
                forget_closed(&shared, &mut conn);
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        c.close(0u32.into(), b"idle");
    }
}

/// Drops what was queued for a peer while it could not be reached: as
/// stale as the batch that failed (the protocols repair both), and it
/// would hold a restarted peer's first messages back by a connect
/// timeout per batch. Gives how many went.
fn drop_queued(rx: &mut mpsc::Receiver<Vec<u8>>) -> u64 {
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// Appends one message to a stream's bytes: its length, then itself.
fn push_frame(out: &mut Vec<u8>, msg: &[u8]) {
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(msg);
}

/// How a stream's next message could not be read.
enum ReadFailure {
    /// Its length is over the limit: the rest of the stream is refused.
    TooLong,
    /// The stream ended inside a message, or was reset.
    Truncated,
}

/// Reads the next message of a stream; `None` at its clean end.
async fn read_frame(
    stream: &mut quinn::RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, ReadFailure> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(_) => return Err(ReadFailure::Truncated),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(ReadFailure::TooLong);
    }
    let mut buf = vec![0u8; len];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|_| ReadFailure::Truncated)?;
    Ok(Some(buf))
}

/// Forgets a connection that has closed, counting those the peer reset
/// because it restarted.
fn forget_closed(shared: &Shared, conn: &mut Option<quinn::Connection>) {
    let Some(reason) = conn.as_ref().and_then(|c| c.close_reason()) else {
        return;
    };
    if matches!(reason, quinn::ConnectionError::Reset) {
        shared.counters.peer_resets.fetch_add(1, Ordering::Relaxed);
    }
    *conn = None;
}

/// Why a peer could not be reached.
#[derive(Debug, thiserror::Error)]
enum Unreached {
    #[error("bad address")]
    BadAddress,
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed")]
    Failed,
    #[error("refused at the hello: {0}")]
    Refused(Refusal),
}

async fn connect(shared: &Shared, addr: SocketAddr) -> Result<quinn::Connection, Unreached> {
    let connecting = shared
        .endpoint
        .connect(addr, tls::SERVER_NAME)
        .map_err(|_| Unreached::BadAddress)?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| Unreached::Timeout)?
        .map_err(|_| Unreached::Failed)?;
    shared.counters.connects.fetch_add(1, Ordering::Relaxed);
    let hello = async {
        let (ours, theirs) = bindings(&conn, Role::Client)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|_| Refusal::BadHello)?;
        send.write_all(&shared.hello(&ours))
            .await
            .map_err(|_| Refusal::BadHello)?;
        let _ = send.finish();
        let reply = recv
            .read_to_end(MAX_HELLO)
            .await
            .map_err(|_| Refusal::BadHello)?;
        shared.check_hello(&reply, &theirs)
    };
    authenticate(shared, &conn, hello)
        .await
        .map_err(Unreached::Refused)?;
    Ok(conn)
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        if shared.is_blocked(&incoming.remote_address()) {
            incoming.refuse();
            continue;
        }
        shared.spawn(serve_connection(shared.clone(), incoming));
    }
}

async fn serve_connection(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let Ok(Ok(conn)) = tokio::time::timeout(CONNECT_TIMEOUT, incoming).await else {
        return;
    };
    let mut from = Peer::at(conn.remote_address().to_string().into());
    let hello = async {
        let (ours, theirs) = bindings(&conn, Role::Server)?;
        // A peer that starts sending before it says hello is refused.
        let (mut send, mut recv) = tokio::select! {
            bi = conn.accept_bi() => bi.map_err(|_| Refusal::BadHello)?,
            _ = conn.accept_uni() => return Err(Refusal::UnauthenticatedPeer),
        };
        let got = recv
            .read_to_end(MAX_HELLO)
            .await
            .map_err(|_| Refusal::BadHello)?;
        let peer = shared.check_hello(&got, &theirs)?;
        send.write_all(&shared.hello(&ours))
            .await
            .map_err(|_| Refusal::BadHello)?;
        let _ = send.finish();
        Ok(peer)
    };
    match authenticate(&shared, &conn, hello).await {
        Ok(peer) => from.identity = peer.map(Into::into),
        Err(_) => return,
    }
    let remote = conn.remote_address();
    loop {
        let Ok(mut stream) = conn.accept_uni().await else {
            return;
        };
        if shared.is_blocked(&remote) {
            conn.close(2u32.into(), b"blocked");
            return;
        }
        let read = read_stream(&shared, &from, &mut stream);
        if tokio::time::timeout(CONNECT_TIMEOUT, read).await.is_err() {
            shared.counters.reject(Refusal::TruncatedMessage);
        }
    }
}

/// Reads every message of one stream and hands each to the core.
async fn read_stream(shared: &Shared, from: &Peer, stream: &mut quinn::RecvStream) {
    loop {
        let bytes = match read_frame(stream, shared.max_message).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(ReadFailure::TooLong) => {
                shared.counters.reject(Refusal::OversizedMessage);
                let _ = stream.stop(3u32.into());
                return;
            }
            Err(ReadFailure::Truncated) => {
                shared.counters.reject(Refusal::TruncatedMessage);
                return;
            }
        };
        shared.counters.received.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .received_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let body = match Envelope::open(&bytes, shared.cluster) {
            Ok(Envelope::Gossip(msg)) => Body::Gossip(msg),
            Ok(Envelope::Service { id, payload }) => Body::Service {
                id,
                payload: payload.to_vec(),
            },
            Err(e) => {
                let reason = e.refusal();
                tracing::debug!(from = %from.addr, %reason, error = %e, "message refused");
                shared.counters.reject(reason);
                continue;
            }
        };
        let inbound = Inbound {
            from: from.clone(),
            body,
        };
        if shared.inbound.try_send(inbound).is_err() {
            shared.counters.reject(Refusal::InboundQueueFull);
        }
    }
}
