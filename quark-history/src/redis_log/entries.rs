//! Reading Redis stream entries: an entry's fields, an event's record, global positions.

use std::collections::BTreeMap;

use redis::{FromRedisValue, Value};

use super::bad_reply;
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::journal::{GlobalEvent, GlobalPosition};
use crate::rows::decode_event;

/// A stream entry's fields, by name.
pub(crate) type Fields = BTreeMap<String, Vec<u8>>;

/// The fields of a stream entry, by name (the reply's buffers are moved, not copied).
pub(crate) fn fields(value: Value) -> Result<Fields> {
    let Value::Array(items) = value else {
        return Err(bad_reply("a stream entry", &value));
    };
    let mut out = BTreeMap::new();
    let mut items = items.into_iter();
    while let Some(name) = items.next() {
        let Some(v) = items.next() else {
            return Err(bad_reply("a stream entry's fields", &name));
        };
        let name = String::from_redis_value(name).map_err(|e| parse_error("a field name", e))?;
        let v = Vec::<u8>::from_redis_value(v).map_err(|e| parse_error("a field value", e))?;
        out.insert(name, v);
    }
    Ok(out)
}

fn parse_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Log {
        backend: "redis",
        message: format!("unexpected reply for {what}: {e}"),
        retryable: false,
    }
}

/// Entries of an `XRANGE` or `XREADGROUP` stream reply: `(id, fields)`.
pub(crate) fn entries(value: Value) -> Result<Vec<(String, Fields)>> {
    let Value::Array(items) = value else {
        return match value {
            Value::Nil => Ok(Vec::new()),
            other => Err(bad_reply("a stream range", &other)),
        };
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(parts) = item else {
                return Err(bad_reply("a stream entry", &item));
            };
            let mut parts = parts.into_iter();
            let (Some(id), Some(f), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(parse_error("a stream entry", "not an id and its fields"));
            };
            let id = String::from_redis_value(id).map_err(|e| parse_error("an entry id", e))?;
            Ok((id, fields(f)?))
        })
        .collect()
}

/// A field as a number.
pub(super) fn number<T: std::str::FromStr>(
    f: &BTreeMap<String, Vec<u8>>,
    name: &str,
    what: &str,
) -> Result<T> {
    std::str::from_utf8(f.get(name).map(Vec::as_slice).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("{what}: field `{name}` is missing or not a number")))
}

/// An event as an entry keeps it (field `r`; its hash is field `h`, which the scripts read): one
/// field to parse per event rather than one per column.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Record {
    /// The event schema it was written with.
    pub(crate) schema: i16,
    /// The codec of `bytes`.
    pub(crate) codec: i16,
    /// When it was appended, in microseconds.
    pub(crate) at: i64,
    /// The encoded [`HistoryEvent`](crate::HistoryEvent).
    pub(crate) bytes: Vec<u8>,
}

/// The record of an entry.
pub(crate) fn record(stream: &str, seq: u64, f: &Fields) -> Result<Record> {
    let stored = f
        .get("r")
        .ok_or_else(|| Error::Invalid(format!("event {seq} of stream `{stream}` has no record")))?;
    postcard::from_bytes(stored).map_err(|e| {
        Error::Invalid(format!(
            "event {seq} of stream `{stream}`: its record does not decode: {e}"
        ))
    })
}

/// A stored event from an entry's fields.
pub(super) fn recorded(stream: &str, seq: u64, f: &Fields) -> Result<RecordedEvent> {
    let r = record(stream, seq, f)?;
    let empty = Vec::new();
    decode_event(
        stream,
        seq as i64,
        r.schema,
        r.codec,
        &r.bytes,
        r.at,
        f.get("h").unwrap_or(&empty),
    )
}

/// A global position from a Redis stream id `MS-SEQ`.
pub(super) fn position(id: &str) -> Result<GlobalPosition> {
    let bad = || Error::Invalid(format!("`{id}` is not a Redis stream id"));
    let (ms, seq) = id.split_once('-').ok_or_else(bad)?;
    Ok(GlobalPosition {
        tx: ms.parse().map_err(|_| bad())?,
        position: seq.parse().map_err(|_| bad())?,
    })
}

/// The Redis stream id of a global position.
pub(super) fn stream_id(p: GlobalPosition) -> String {
    format!("{}-{}", p.tx, p.position)
}

/// An entry of the global stream as an event in the global order.
pub(super) fn global_event(id: &str, f: &BTreeMap<String, Vec<u8>>) -> Result<GlobalEvent> {
    let stream = String::from_utf8(f.get("s").cloned().unwrap_or_default())
        .map_err(|_| Error::Invalid(format!("global entry {id}: the stream id is not UTF-8")))?;
    let seq: u64 = number(f, "v", &format!("global entry {id}"))?;
    Ok(GlobalEvent {
        position: position(id)?,
        event: recorded(&stream, seq, f)?,
    })
}
