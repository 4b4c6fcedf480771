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

/// `tx:position`, as the command line reads it.
impl std::fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.tx, self.position)
    }
}

impl std::str::FromStr for GlobalPosition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a global position (tx:position, e.g. 0:1200)");
        let (tx, position) = s.split_once(':').ok_or_else(bad)?;
        Ok(GlobalPosition {
            tx: tx.parse().map_err(|_| bad())?,
            position: position.parse().map_err(|_| bad())?,
        })
    }
}

/// Calls `each` with every event of the global order after `after`, up to and including `until`
/// (`None`: up to the last final event), in order, reading `page` events at a time. The first error
/// `each` returns ends the scan and is returned, in the caller's own error type.
pub async fn scan_range<E: From<crate::Error>>(
    store: &dyn crate::Store,
    after: GlobalPosition,
    until: Option<GlobalPosition>,
    page: u32,
    mut each: impl FnMut(&GlobalEvent) -> Result<(), E> + Send,
) -> Result<(), E> {
    let mut from = after;
    loop {
        let events = store.read_all(from, page).await?;
        let Some(last) = events.last() else {
            return Ok(());
        };
        from = last.position;
        for e in &events {
            if until.is_some_and(|u| e.position > u) {
                return Ok(());
            }
            each(e)?;
        }
        if events.len() < page as usize {
            return Ok(());
        }
    }
}

/// An event read from the global stream.
#[derive(Debug, Clone, PartialEq)]
pub struct GlobalEvent {
    /// Where it stands; pass the last one to the next `read_all` call.
    pub position: GlobalPosition,
    /// The event.
    pub event: RecordedEvent,
}

/// The result of checking an instance's hash chain against its events and against the head its
/// instance row records (the next sequence number and the last event's hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainReport {
    /// The instance.
    pub instance_id: String,
    /// How many events were read, up to the first problem.
    pub events: u64,
    /// The first event that cannot be trusted, if any: every event from it on is unverified.
    pub first_mismatch: Option<u64>,
    /// What is wrong, if anything.
    pub problem: Option<ChainBreak>,
}

impl ChainReport {
    /// Whether the whole chain holds, up to the recorded head.
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// How a history's hash chain is broken.
///
/// A rewrite of events together with their hashes and the instance's head is consistent by
/// construction: the chain cannot see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChainBreak {
    /// Event `seq`'s stored hash is not the hash of its content after the event before it: it was
    /// changed (or its hash was).
    Altered {
        /// The event.
        seq: u64,
    },
    /// Events `from` up to (not including) `until` are missing: rows were deleted.
    Missing {
        /// The first missing event.
        from: u64,
        /// The next event present.
        until: u64,
    },
    /// The history ends at event `last`, but the instance records `recorded` events: the events
    /// after `last` were deleted.
    Truncated {
        /// The last event present.
        last: u64,
        /// How many events the instance's head records.
        recorded: u64,
    },
    /// The chain holds and passes through the head the instance records, but goes on after it:
    /// events `recorded + 1` to `last` were added behind the engine's back.
    Beyond {
        /// The last event present.
        last: u64,
        /// How many events the instance's head records.
        recorded: u64,
    },
    /// The chain holds by itself, but does not pass through the head the instance records: some
    /// event, which one cannot be told, was rewritten with its hash and every hash after it.
    HeadMismatch {
        /// The last event present.
        last: u64,
        /// How many events the instance's head records.
        recorded: u64,
    },
}

impl ChainBreak {
    /// The first event that cannot be trusted.
    pub fn first_untrusted(&self) -> u64 {
        match *self {
            ChainBreak::Altered { seq } => seq,
            ChainBreak::Missing { from, .. } => from,
            ChainBreak::Truncated { last, .. } => last + 1,
            ChainBreak::Beyond { recorded, .. } => recorded + 1,
            ChainBreak::HeadMismatch { .. } => 1,
        }
    }
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ChainBreak::Altered { seq } => write!(
                f,
                "event {seq} was altered: its hash does not match its content"
            ),
            ChainBreak::Missing { from, until } if until == from + 1 => {
                write!(f, "event {from} is missing")
            }
            ChainBreak::Missing { from, until } => {
                write!(f, "events {from} to {} are missing", until - 1)
            }
            ChainBreak::Truncated { last, recorded } => write!(
                f,
                "truncated: the history ends at event {last}, the instance records {recorded} \
                 (events {} to {recorded} are missing)",
                last + 1
            ),
            ChainBreak::Beyond { last, recorded } => write!(
                f,
                "events {} to {last} were added after the head the instance records (event \
                 {recorded})",
                recorded + 1
            ),
            ChainBreak::HeadMismatch { last, recorded } => write!(
                f,
                "the chain (to event {last}) does not pass through the head the instance records \
                 (event {recorded} and its hash): an event was rewritten with the hashes after it"
            ),
        }
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

/// The bytes of lowercase or uppercase hex text; an odd length or a non-hex digit is refused.
pub(crate) fn from_hex(s: &str) -> crate::Result<Vec<u8>> {
    let bad = || crate::Error::Invalid(format!("not hex: `{s}`"));
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        assert_eq!(
            from_hex(&to_hex(&[0, 1, 254, 255])).unwrap(),
            [0, 1, 254, 255]
        );
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }
}
