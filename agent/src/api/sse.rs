//! Server-sent event answers: a source drawn from batch by batch until it
//! ends or the server shuts down, kept alive while idle.

use super::ApiState;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a source gives next: events to send, and whether the stream ends
/// after them.
pub struct Batch {
    pub events: Vec<Event>,
    pub last: bool,
}

impl Batch {
    /// Events with more to come.
    pub fn more(events: Vec<Event>) -> Batch {
        Batch {
            events,
            last: false,
        }
    }

    /// The stream's last events.
    pub fn last(events: Vec<Event>) -> Batch {
        Batch { events, last: true }
    }
}

/// `first`, then each batch `next` draws from `source` (which it hands
/// back with the batch; `None` ends the stream at once), until a batch is
/// the last or the server shuts down.
pub fn stream<S, F, Fut>(
    closing: watch::Receiver<bool>,
    first: Vec<Event>,
    source: S,
    next: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>>
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(S, Batch)>> + Send,
{
    let closing = Box::pin(ApiState::closed(closing));
    let state = (Some(source), closing, VecDeque::from(first), next);
    let events = futures_util::stream::unfold(
        state,
        |(mut source, mut closing, mut pending, mut next)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok(e), (source, closing, pending, next)));
                }
                let s = source.take()?;
                let (s, batch) = tokio::select! {
                    b = next(s) => b?,
                    _ = &mut closing => return None,
                };
                pending.extend(batch.events);
                if !batch.last {
                    source = Some(s);
                }
            }
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}
