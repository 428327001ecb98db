//! Server-sent events as the agent streams them: each record's event name
//! and JSON data, each record bounded in size.

use crate::ClientError;
use crate::types::evn::Record;
use crate::types::zones::WatchRecord;
use serde_json::Value;
use std::marker::PhantomData;

/// The raw records of one stream: `(event name, JSON data)`.
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    max: usize,
    api: String,
}

impl EventStream {
    pub(crate) fn new(resp: reqwest::Response, max: usize, api: String) -> EventStream {
        EventStream {
            resp,
            buf: Vec::new(),
            max,
            api,
        }
    }

    /// Bounds each record to `max` bytes (the API's own bound by default).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The next record; `Ok(None)` when the agent closed the stream.
    pub async fn next_raw(&mut self) -> Result<Option<(String, Value)>, ClientError> {
        loop {
            if let Some(r) = take_record(&mut self.buf) {
                return Ok(Some(r));
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    if self.buf.len() > self.max {
                        return Err(ClientError::RecordTooLarge(self.max >> 10));
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(ClientError::Transport {
                        api: self.api.clone(),
                        cause: crate::http::root_cause(&e),
                    });
                }
            }
        }
    }

    /// These records read as `T`.
    pub fn typed<T: FromRecord>(self) -> Records<T> {
        Records {
            raw: self,
            _t: PhantomData,
        }
    }
}

/// A stream of typed records.
pub struct Records<T> {
    raw: EventStream,
    _t: PhantomData<T>,
}

impl<T: FromRecord> Records<T> {
    /// The next record; `Ok(None)` when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<T>, ClientError> {
        loop {
            let Some((name, data)) = self.raw.next_raw().await? else {
                return Ok(None);
            };
            if let Some(t) = T::from_record(&name, data).map_err(|why| ClientError::Decode {
                api: self.raw.api.clone(),
                why,
            })? {
                return Ok(Some(t));
            }
        }
    }
}

/// A record type of some stream, read from its event name and data;
/// `Ok(None)` skips a record of no interest.
pub trait FromRecord: Sized {
    fn from_record(name: &str, data: Value) -> Result<Option<Self>, String>;
}

impl FromRecord for Record {
    fn from_record(name: &str, data: Value) -> Result<Option<Record>, String> {
        match name {
            "event" | "end" => serde_json::from_value(data)
                .map(Some)
                .map_err(|e| e.to_string()),
            _ => Ok(None),
        }
    }
}

impl FromRecord for WatchRecord {
    fn from_record(name: &str, data: Value) -> Result<Option<WatchRecord>, String> {
        Ok(Some(WatchRecord::of(name, data)))
    }
}

impl FromRecord for (String, Value) {
    fn from_record(name: &str, data: Value) -> Result<Option<(String, Value)>, String> {
        Ok(Some((name.to_string(), data)))
    }
}

/// Takes the next complete record (name, JSON data) out of `buf`, skipping
/// comments (keep-alives) and records without data.
pub fn take_record(buf: &mut Vec<u8>) -> Option<(String, Value)> {
    loop {
        let end = buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = buf.drain(..end + 2).collect();
        // A whole record: cutting at the blank line never splits a character.
        let block = String::from_utf8_lossy(&block[..end]);
        let mut name = String::from("message");
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        if data.is_empty() {
            continue;
        }
        if let Ok(v) = serde_json::from_str(&data) {
            return Some((name, v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_records_and_skips_keep_alives() {
        let mut buf = b": keep-alive\n\nevent: row\ndata: {\"time\":1}\n\nevent: lag".to_vec();
        let (name, data) = take_record(&mut buf).unwrap();
        assert_eq!((name.as_str(), data), ("row", json!({"time": 1})));
        assert!(take_record(&mut buf).is_none());
        assert_eq!(buf, b"event: lag");
    }

    #[test]
    fn evn_records_read_by_their_type() {
        let e = json!({"type": "event", "id": "1@/a", "topic": "t", "zone": "/", "origin": "/a",
                       "seq": 1, "time": "2026-12-04T00:00:00Z", "data": {"x": 1}});
        match Record::from_record("event", e).unwrap() {
            Some(Record::Event(ev)) => assert_eq!((ev.seq, ev.data["x"].as_i64()), (1, Some(1))),
            other => panic!("{other:?}"),
        }
        let end = json!({"type": "end", "id": "s", "reason": "Expired"});
        match Record::from_record("end", end).unwrap() {
            Some(Record::End(x)) => assert_eq!((x.reason.as_str(), x.resumes), ("Expired", false)),
            other => panic!("{other:?}"),
        }
        assert!(Record::from_record("keep", json!(1)).unwrap().is_none());
        assert!(Record::from_record("event", json!({"type": "event"})).is_err());
    }
}
