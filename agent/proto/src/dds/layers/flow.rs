//! `flow`: an origin's credit window and rate. An origin may have at most
//! `flow_window` messages outstanding, sent but not yet stable, as `nak`
//! below reports ([`Control::Stable`]); and, when set, at most `flow_rate`
//! messages per second (a token bucket of one second's burst). Beyond
//! either the application's message is refused with
//! [`Backpressure`] rather than queued, so the publisher decides to wait
//! or drop. A slow member cannot hold the window shut for long: `nak` cuts
//! off a member that lags or goes silent, and stability moves on without it.
//!
//! Header: one byte, `0`.

use crate::dds::layer::{Backpressure, Control, Cx, Dest, Layer, Msg};
use crate::dds::params::Params;
use crate::dds::spec::LayerKind;
use crate::row::Micros;

pub struct Flow {
    window: u64,
    rate: u64,
    sent: u64,
    stable: u64,
    tokens: f64,
    refilled: Micros,
}

impl Flow {
    pub fn new(p: &Params) -> Flow {
        Flow {
            window: p.flow_window.max(1),
            rate: p.flow_rate,
            sent: 0,
            stable: 0,
            tokens: p.flow_rate as f64,
            refilled: 0,
        }
    }

    fn tokens_at(&self, now: Micros) -> f64 {
        let dt = now.saturating_sub(self.refilled) as f64 / 1e6;
        (self.tokens + dt * self.rate as f64).min(self.rate as f64)
    }
}

impl Layer for Flow {
    fn kind(&self) -> LayerKind {
        LayerKind::Flow
    }

    fn admit(&self, now: Micros, _: usize) -> Result<(), Backpressure> {
        let outstanding = self.sent - self.stable.min(self.sent);
        if outstanding >= self.window {
            return Err(Backpressure::Window {
                outstanding,
                window: self.window,
            });
        }
        if self.rate > 0 && self.tokens_at(now) < 1.0 {
            return Err(Backpressure::Rate { rate: self.rate });
        }
        Ok(())
    }

    fn down(&mut self, mut msg: Msg, cx: &mut Cx<'_>) {
        if msg.dest == Dest::All {
            self.sent += 1;
            if self.rate > 0 {
                self.tokens = self.tokens_at(cx.now) - 1.0;
                self.refilled = cx.now;
            }
        }
        msg.push(vec![0]);
        cx.down(msg);
    }

    fn up(&mut self, header: &[u8], msg: Msg, cx: &mut Cx<'_>) {
        if header != [0] {
            return cx.refuse("bad_header");
        }
        cx.up(msg);
    }

    fn control(&mut self, ctl: &Control, _: &mut Cx<'_>) {
        if let Control::Stable { upto } = ctl {
            self.stable = self.stable.max(*upto);
        }
    }

    fn counters(&self, out: &mut Vec<(&'static str, u64)>) {
        out.extend([
            ("sent", self.sent),
            ("outstanding", self.sent - self.stable.min(self.sent)),
        ]);
    }
}
