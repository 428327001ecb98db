//! `GET /v1/watch`: server-sent events for changes of one zone.
//!
//! Events: `row` (`{"zone","time","attrs"}`, the first one at once with the
//! current row), with `table=true` also `table` (`{"zone","time","rows"}`, the
//! whole child table after each change), and `lagged` (`{"missed": n}`) when
//! the subscriber fell behind; the current row follows a `lagged` event.

use super::ApiState;
use super::error::ApiError;
use super::tables::{parse_zone, row_json};
use crate::node::{Change, NodeHandle, now_micros};
use crate::path::ZonePath;
use crate::row::Micros;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use zone_sql::Attrs;
use zone_sql::json::attrs_to_json;

/// How often an idle stream sends a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub struct WatchParams {
    zone: Option<String>,
    #[serde(default)]
    table: bool,
}

pub async fn watch(
    State(s): State<ApiState>,
    q: Result<Query<WatchParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let q = q?;
    let zone = parse_zone(q.zone.as_deref().unwrap_or("/"))?;
    // Subscribe before reading the current state, so no change falls between.
    let rx = s.handle.subscribe();
    let leaf = s.handle.info().leaf.clone();
    let mut w = Watcher {
        handle: s.handle.clone(),
        rx,
        // The leaf's own row is not aggregated: it changes with its parent's table.
        leaf_parent: if zone == leaf { zone.parent() } else { None },
        zone,
        table: q.table,
        last_row: None,
        last_table: None,
        queue: VecDeque::new(),
        closing: Box::pin(ApiState::closed(s.closing.clone())),
    };
    w.refresh(now_micros()).await?;
    let stream = futures_util::stream::unfold(w, |mut w| async move {
        let ev = w.next().await?;
        Some((Ok(ev), w))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive")))
}

/// One subscriber's state.
struct Watcher {
    handle: NodeHandle,
    rx: broadcast::Receiver<Change>,
    zone: ZonePath,
    leaf_parent: Option<ZonePath>,
    table: bool,
    last_row: Option<Attrs>,
    last_table: Option<Vec<JsonValue>>,
    queue: VecDeque<Event>,
    closing: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Watcher {
    /// The next event; `None` ends the stream (server closing, node stopped).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(ev);
            }
            let change = tokio::select! {
                _ = &mut self.closing => return None,
                c = self.rx.recv() => c,
            };
            let step = match change {
                Ok(Change::Row { zone, attrs, time }) if zone == self.zone => {
                    self.push_row(attrs, time);
                    Ok(())
                }
                Ok(Change::Table { zone, time }) => self.table_changed(&zone, time).await,
                Ok(_) => Ok(()),
                Err(RecvError::Lagged(missed)) => {
                    self.push("lagged", json!({ "missed": missed }));
                    self.refresh(now_micros()).await
                }
                Err(RecvError::Closed) => return None,
            };
            if step.is_err() {
                return None;
            }
        }
    }

    /// Queues the current row (when it differs from the last one sent) and,
    /// with `table`, the current table.
    async fn refresh(&mut self, time: Micros) -> Result<(), ApiError> {
        let attrs = self.handle.zone_row(self.zone.clone()).await?;
        self.push_row(attrs, time);
        if self.table {
            self.push_table(time).await?;
        }
        Ok(())
    }

    async fn table_changed(&mut self, zone: &ZonePath, time: Micros) -> Result<(), ApiError> {
        if self.table && *zone == self.zone {
            self.push_table(time).await?;
        }
        if self.leaf_parent.as_ref() == Some(zone) {
            let attrs = self.handle.zone_row(self.zone.clone()).await?;
            self.push_row(attrs, time);
        }
        Ok(())
    }

    fn push_row(&mut self, attrs: Attrs, time: Micros) {
        if self.last_row.as_ref() == Some(&attrs) {
            return;
        }
        let data = json!({
            "zone": self.zone,
            "time": time,
            "attrs": attrs_to_json(&attrs),
        });
        self.last_row = Some(attrs);
        self.push("row", data);
    }

    async fn push_table(&mut self, time: Micros) -> Result<(), ApiError> {
        let rows = self.handle.table(self.zone.clone()).await?;
        let rows: Vec<JsonValue> = rows
            .iter()
            .map(|r| JsonValue::Object(row_json(r)))
            .collect();
        if self.last_table.as_ref() == Some(&rows) {
            return Ok(());
        }
        self.push(
            "table",
            json!({ "zone": self.zone, "time": time, "rows": &rows }),
        );
        self.last_table = Some(rows);
        Ok(())
    }

    fn push(&mut self, name: &str, data: JsonValue) {
        self.queue
            .push_back(Event::default().event(name).data(data.to_string()));
    }
}
