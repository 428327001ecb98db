//! The tunables of the layers and their bounds, with the defaults every
//! agent uses. Every buffer a layer keeps is bounded by one of these.

use crate::row::Micros;

const MS: Micros = 1_000;
const S: Micros = 1_000_000;

/// Largest message the application may publish (with `frag`).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// `frag`: largest fragment body; messages up to this travel whole.
    pub frag_size: usize,
    /// `frag`: bytes held in partial messages, all origins together.
    pub frag_budget: usize,
    /// `frag`: partial messages held at once.
    pub frag_partials: usize,
    /// `frag`: a partial message older than this is dropped.
    pub frag_timeout: Micros,
    /// `nak`: messages of one stream held (sent and not yet stable at an
    /// origin; received, for repairing others, at a member), and how far
    /// ahead of the first missing message a member accepts.
    pub nak_window: u64,
    /// `nak`: bytes of one stream held.
    pub nak_bytes: usize,
    /// `nak`: the last messages an origin keeps even when stable, for late
    /// subscribers (the channel's `retain`).
    pub retain: u64,
    /// `nak`: an origin keeps every message at least this long, stable or
    /// not, so that a member it has not heard from yet can still ask.
    pub nak_hold: Micros,
    /// `nak`: first request for a missing message after it is noticed, at
    /// most (half the round trip when that is shorter).
    pub nak_delay: Micros,
    /// `nak`: next request when the first brought nothing, before the round
    /// trip is known, and at most (then twice the round trip).
    pub nak_retry: Micros,
    /// `nak`: the least wait before asking again, whatever the round trip.
    pub nak_retry_min: Micros,
    /// `nak`: member to origin acknowledgements.
    pub ack_period: Micros,
    /// `nak`: origin heartbeats (the last sequence number sent).
    pub beat_period: Micros,
    /// `nak`: a member not heard for this long no longer holds back stability.
    pub member_timeout: Micros,
    /// `nak`: a member further behind than this is cut off.
    pub lag_limit: u64,
    /// `nak`: ... for this long (a member briefly behind holds the
    /// publisher back instead).
    pub lag_grace: Micros,
    /// `nak`: streams a member follows.
    pub max_streams: usize,
    /// `flow`: messages an origin may have outstanding (not yet stable).
    pub flow_window: u64,
    /// `flow`: messages per second an origin may send (0: unlimited).
    pub flow_rate: u64,
    /// `fifo`, `total`: messages held waiting for their turn.
    pub order_buffer: usize,
    /// `total`: the sequencer batches its order messages this long.
    pub order_delay: Micros,
    /// `gossip`: exchanges with a random member.
    pub gossip_period: Micros,
    /// `gossip`: frames held for repairing others.
    pub gossip_buffer: usize,
    /// `gossip`: how far back a digest looks for holes.
    pub gossip_window: u64,
    /// `gossip`: frames sent in answer to one digest.
    pub gossip_budget: usize,
    /// `encrypt`: the key manager rekeys at most this often.
    pub rekey_min: Micros,
    /// `encrypt`: members refresh their registration this often; the
    /// manager drops (and rekeys without) a member silent three times as long.
    pub key_refresh: Micros,
    /// `encrypt`: messages held waiting for a key.
    pub key_wait_buffer: usize,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            frag_size: 16 * 1024,
            frag_budget: 3 * MAX_MESSAGE,
            frag_partials: 64,
            frag_timeout: 30 * S,
            nak_window: 4096,
            nak_bytes: 64 * 1024 * 1024,
            retain: 0,
            nak_hold: 2 * S,
            nak_delay: 40 * MS,
            nak_retry: 120 * MS,
            nak_retry_min: 10 * MS,
            ack_period: 250 * MS,
            beat_period: 300 * MS,
            member_timeout: 5 * S,
            lag_limit: 3072,
            lag_grace: S,
            max_streams: 256,
            flow_window: 1024,
            flow_rate: 0,
            order_buffer: 8192,
            order_delay: 2 * MS,
            gossip_period: 200 * MS,
            gossip_buffer: 4096,
            gossip_window: 256,
            gossip_budget: 64,
            rekey_min: S,
            key_refresh: 5 * S,
            key_wait_buffer: 1024,
        }
    }
}
