//! Group-wide flow control: the messages a member sent in its current view
//! that some member does not hold yet.
//!
//! A member's own log bounds only what it holds; under a sustained flood
//! every member's log stays below that bound while the frames in flight
//! fill the agents' queues, heartbeats wait behind them, members suspect
//! each other, and the flush of the view change that follows carries
//! everything unstable. So each sender keeps a window: it takes a new
//! message only while fewer than `window` of its own (and fewer than
//! `window_bytes`) are unstable, that is, not yet reported held by every
//! member. What the group holds unstable is then at most the sum of its
//! members' windows, whatever the load, and the slowest member paces every
//! sender, as a credit scheme would, with no message of its own.
//!
//! The same record times each unstable message, so a member that keeps one
//! unstable for longer than the group's lag grace is found and excluded
//! rather than holding every sender back forever.
//!
//! Invariants:
//! - `sent[s]` holds, oldest first, the send time and size of each own
//!   message of stream `s` not yet stable, in send order (for the fifo
//!   stream: those numbered above `fifo_stable`);
//! - `positions` holds the total-order positions of the own total-stream
//!   messages delivered here and not yet stable, in order;
//! - a record lives for one view: a new view starts it empty (the old
//!   view's undelivered messages go again through the pending queue).

use super::log::Log;
use super::wire::Stream;
use crate::row::Micros;
use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct Window {
    sent: [VecDeque<(Micros, usize)>; 2],
    fifo_stable: u64,
    positions: VecDeque<u64>,
    bytes: usize,
}

impl Window {
    /// A message of `len` bytes was handed to the stream's stack.
    pub fn sent(&mut self, now: Micros, stream: Stream, len: usize) {
        self.sent[stream as usize].push_back((now, len));
        self.bytes += len;
    }

    /// This member delivered its own total-stream message at `position`.
    pub fn delivered_total(&mut self, position: u64) {
        self.positions.push_back(position);
    }

    /// Drops what `log` now knows every member holds.
    pub fn settle(&mut self, log: &Log) {
        let fifo = log.fifo_stable(log.me());
        while self.fifo_stable < fifo && self.pop(Stream::Fifo) {
            self.fifo_stable += 1;
        }
        let total = log.total_stable();
        while self.positions.front().is_some_and(|p| *p <= total) {
            self.positions.pop_front();
            self.pop(Stream::Total);
        }
    }

    fn pop(&mut self, stream: Stream) -> bool {
        let Some((_, len)) = self.sent[stream as usize].pop_front() else {
            return false;
        };
        self.bytes -= len;
        true
    }

    /// Whether `queued` more messages fit beside those unstable.
    pub fn has_room(&self, queued: usize, max: usize, max_bytes: usize) -> bool {
        self.len() + queued < max && self.bytes < max_bytes
    }

    /// Own messages not yet held by every member.
    pub fn len(&self) -> usize {
        self.sent[0].len() + self.sent[1].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest own message not yet held by every member was sent.
    pub fn oldest(&self) -> Option<Micros> {
        self.sent
            .iter()
            .filter_map(|q| q.front().map(|(t, _)| *t))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crm::wire::{Entry, Mode};
    use std::sync::Arc;

    fn entry(stream: Stream, rank: u32, idx: u64) -> Entry {
        Entry {
            stream,
            rank,
            idx,
            seq: idx,
            mode: if stream == Stream::Fifo {
                Mode::Fifo
            } else {
                Mode::Total
            },
            data: Arc::from(&[0u8; 10][..]),
        }
    }

    #[test]
    fn a_message_leaves_the_window_once_every_member_holds_it() {
        let mut log = Log::new(2, 0);
        let mut w = Window::default();
        w.sent(10, Stream::Fifo, 10);
        w.sent(20, Stream::Total, 10);
        w.sent(30, Stream::Fifo, 10);
        assert_eq!((w.len(), w.bytes(), w.oldest()), (3, 30, Some(10)));
        log.push(entry(Stream::Fifo, 0, 1));
        log.push(entry(Stream::Total, 0, 1));
        w.delivered_total(1);
        w.settle(&log);
        assert_eq!(w.len(), 3, "delivered here, not yet at the other member");
        log.progress(1, &[1, 0], 0);
        w.settle(&log);
        assert_eq!((w.len(), w.oldest()), (2, Some(20)));
        log.progress(1, &[1, 0], 1);
        w.settle(&log);
        assert_eq!((w.len(), w.bytes(), w.oldest()), (1, 10, Some(30)));
    }

    #[test]
    fn total_positions_held_by_all_free_only_own_messages() {
        let mut log = Log::new(2, 1);
        let mut w = Window::default();
        w.sent(5, Stream::Total, 10);
        // Position 1 is the other member's, position 2 this member's.
        log.push(entry(Stream::Total, 0, 1));
        log.push(entry(Stream::Total, 1, 2));
        w.delivered_total(2);
        log.progress(0, &[0, 0], 1);
        w.settle(&log);
        assert_eq!(w.len(), 1, "only position 1 is stable");
        log.progress(0, &[0, 0], 2);
        w.settle(&log);
        assert!(w.is_empty());
        assert_eq!(w.oldest(), None);
    }
}
