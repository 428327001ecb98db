//! What a member delivered in its current view, and what of it is not yet
//! known to be held by every member (unstable): the part a view change
//! must carry to the survivors that lack it.
//!
//! Invariants:
//! - `fifo_done[r]` and `total_done` count what the view's stacks
//!   delivered here; entries are numbered from 1 without gaps.
//! - An entry leaves the log once every member's reported progress covers
//!   it (stable); a total-stream entry also waits until it was handed to
//!   the application (safe messages wait for stability to be handed).
//! - The bytes of the entries held are counted, so the sender can be held
//!   back and a member that holds stability back for long can be excluded.

use super::wire::{Entry, FlushState, Mode, Stream};
use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct Log {
    pub fifo_done: Vec<u64>,
    pub total_done: u64,
    /// Total-stream entries handed to the application.
    pub total_app: u64,
    /// Each member's last reported progress (this member's own is live).
    known: Vec<(Vec<u64>, u64)>,
    fifo: Vec<VecDeque<Entry>>,
    /// Unstable or not yet handed total-stream entries, by idx.
    total: VecDeque<Entry>,
    bytes: usize,
    me: usize,
}

impl Log {
    pub fn new(members: usize, me: usize) -> Log {
        Log {
            fifo_done: vec![0; members],
            total_done: 0,
            total_app: 0,
            known: vec![(vec![0; members], 0); members],
            fifo: vec![VecDeque::new(); members],
            total: VecDeque::new(),
            bytes: 0,
            me,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.total.len() + self.fifo.iter().map(VecDeque::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// This member's rank in the view.
    pub fn me(&self) -> usize {
        self.me
    }

    /// Records a delivered entry (numbered by the caller as the next one).
    pub fn push(&mut self, e: Entry) {
        self.bytes += e.data.len();
        match e.stream {
            Stream::Fifo => {
                let r = e.rank as usize;
                self.fifo_done[r] = e.idx;
                self.known[self.me].0[r] = e.idx;
                self.fifo[r].push_back(e);
            }
            Stream::Total => {
                self.total_done = e.idx;
                self.known[self.me].1 = e.idx;
                self.total.push_back(e);
            }
        }
    }

    /// Records what the member at `rank` reported, and drops what became
    /// stable. Counts above what was ever delivered are not believed.
    pub fn progress(&mut self, rank: usize, fifo: &[u64], total: u64) {
        if rank >= self.known.len() || rank == self.me {
            return;
        }
        let k = &mut self.known[rank];
        for (r, c) in fifo.iter().enumerate().take(k.0.len()) {
            k.0[r] = k.0[r].max(*c);
        }
        k.1 = k.1.max(total);
        self.collect();
    }

    /// The fifo messages of `rank`, and the total-stream position, every
    /// member holds.
    pub fn fifo_stable(&self, rank: usize) -> u64 {
        self.known.iter().map(|k| k.0[rank]).min().unwrap_or(0)
    }

    pub fn total_stable(&self) -> u64 {
        self.known.iter().map(|k| k.1).min().unwrap_or(0)
    }

    /// The lowest reported total progress and who reported it (the member
    /// holding stability back), when it lags this member.
    pub fn laggard(&self) -> Option<usize> {
        let (r, lowest) = self
            .known
            .iter()
            .enumerate()
            .map(|(r, k)| (r, k.1 + k.0.iter().sum::<u64>()))
            .min_by_key(|(_, v)| *v)?;
        let mine = self.total_done + self.fifo_done.iter().sum::<u64>();
        (lowest < mine).then_some(r)
    }

    /// The next total-stream entry to hand to the application, when its
    /// turn has come (a safe one once stable).
    pub fn next_for_app(&self) -> Option<&Entry> {
        let e = self.total.iter().find(|e| e.idx == self.total_app + 1)?;
        (e.mode != Mode::Safe || e.idx <= self.total_stable()).then_some(e)
    }

    pub fn handed(&mut self, idx: u64) {
        self.total_app = self.total_app.max(idx);
        self.collect();
    }

    /// Total-stream entries delivered but not handed yet, in order.
    pub fn unhanded(&self) -> Vec<Entry> {
        self.total
            .iter()
            .filter(|e| e.idx > self.total_app)
            .cloned()
            .collect()
    }

    fn collect(&mut self) {
        for r in 0..self.fifo.len() {
            let s = self.fifo_stable(r);
            while self.fifo[r].front().is_some_and(|e| e.idx <= s) {
                let e = self.fifo[r].pop_front().expect("front");
                self.bytes -= e.data.len();
            }
        }
        let s = self.total_stable().min(self.total_app);
        while self.total.front().is_some_and(|e| e.idx <= s) {
            let e = self.total.pop_front().expect("front");
            self.bytes -= e.data.len();
        }
    }

    /// What this member reports when it promises.
    pub fn flush_state(&self) -> FlushState {
        let mut entries: Vec<Entry> = self.fifo.iter().flatten().cloned().collect();
        entries.extend(self.total.iter().cloned());
        FlushState {
            fifo: self.fifo_done.clone(),
            total: self.total_done,
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn e(stream: Stream, rank: u32, idx: u64, mode: Mode) -> Entry {
        Entry {
            stream,
            rank,
            idx,
            seq: idx,
            mode,
            data: Arc::from(&b"abcd"[..]),
        }
    }

    #[test]
    fn entries_leave_once_every_member_reports_them() {
        let mut l = Log::new(3, 0);
        l.push(e(Stream::Fifo, 1, 1, Mode::Fifo));
        l.push(e(Stream::Fifo, 1, 2, Mode::Fifo));
        assert_eq!(l.len(), 2);
        l.progress(1, &[0, 2, 0], 0);
        assert_eq!(l.len(), 2, "member 2 has not reported");
        l.progress(2, &[0, 1, 0], 0);
        assert_eq!(l.len(), 1);
        assert_eq!(l.bytes(), 4);
        assert_eq!(l.flush_state().entries[0].idx, 2);
    }

    #[test]
    fn a_safe_message_waits_for_every_member_and_holds_back_later_ones() {
        let mut l = Log::new(2, 0);
        l.push(e(Stream::Total, 0, 1, Mode::Safe));
        l.push(e(Stream::Total, 1, 2, Mode::Total));
        assert!(l.next_for_app().is_none());
        l.progress(1, &[0, 0], 1);
        assert_eq!(l.next_for_app().map(|e| e.idx), Some(1));
        l.handed(1);
        assert_eq!(l.next_for_app().map(|e| e.idx), Some(2));
        l.handed(2);
        assert_eq!(l.len(), 1, "entry 2 is not yet held by member 1");
    }

    #[test]
    fn the_member_that_holds_stability_back_is_found() {
        let mut l = Log::new(3, 0);
        l.push(e(Stream::Total, 0, 1, Mode::Total));
        l.progress(1, &[0, 0, 0], 1);
        assert_eq!(l.laggard(), Some(2));
        l.progress(2, &[0, 0, 0], 1);
        assert_eq!(l.laggard(), None);
    }
}
