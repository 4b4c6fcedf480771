//! Reading the journal: one history, a time range, the global order, and the hash chain.

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::event::RecordedEvent;

/// Which part of a history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HistoryRange {
    /// The whole history.
    #[default]
    All,
    /// Events with `seq >= from`.
    From(u64),
    /// Events with `from <= seq < until`: a page.
    Seq {
        /// Inclusive start.
        from: u64,
        /// Exclusive end.
        until: u64,
    },
    /// Events recorded in `[from, until)`.
    Time {
        /// Inclusive start.
        from: Timestamp,
        /// Exclusive end.
        until: Timestamp,
    },
}

/// A position in the global, commit-ordered stream of all events.
///
/// On PostgreSQL it is the pair (writing transaction id, insert position): every event of a
/// transaction older than the oldest running one is final, so reading in this order below that
/// horizon never skips an event that commits later. On SQLite writers are serialized, and the
/// transaction part is 0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct GlobalPosition {
    /// The writing transaction's id (PostgreSQL `xid8`), 0 on SQLite.
    pub tx: u64,
    /// The insert position.
    pub position: i64,
}

impl GlobalPosition {
    /// Before every event.
    pub const START: GlobalPosition = GlobalPosition { tx: 0, position: 0 };
}

/// An event read from the global stream.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalEvent {
    /// Where it stands; pass the last one to the next `read_all` call.
    pub position: GlobalPosition,
    /// The event.
    pub event: RecordedEvent,
}

/// The result of checking an instance's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// The instance.
    pub instance_id: String,
    /// How many events were checked.
    pub events: u64,
    /// The first event whose stored hash does not match its recomputed hash, if any. Every event
    /// after it is unverified.
    pub first_mismatch: Option<u64>,
}

impl ChainReport {
    /// Whether the whole chain holds.
    pub fn is_intact(&self) -> bool {
        self.first_mismatch.is_none()
    }
}

/// The hash of an event's link in its instance's chain:
/// `blake3(previous || seq (8 bytes, big-endian) || codec tag (2 bytes) || encoded event)`.
pub(crate) fn chain_hash(previous: &[u8; 32], seq: u64, codec: i16, bytes: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(previous);
    h.update(&seq.to_be_bytes());
    h.update(&codec.to_be_bytes());
    h.update(bytes);
    *h.finalize().as_bytes()
}

/// The previous hash of event 1.
pub(crate) const GENESIS: [u8; 32] = [0; 32];

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
