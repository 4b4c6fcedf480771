//! Entity streams: the journal of an event-sourced entity, and the snapshots of its state.
//!
//! A stream is an instance whose status is [`InstanceStatus::Stream`](crate::InstanceStatus::Stream)
//! and whose history holds [`HistoryEvent::EntityEvent`](crate::HistoryEvent::EntityEvent)s only.
//! It is appended to like any history, through a [`Commit`](crate::Commit) with
//! [`Expected::Seq`](crate::Expected::Seq): two writers can never both extend it, and one commit can
//! extend several streams (and workflows) atomically. Its version is the number of events it holds.
//! Because it is a history, the global order ([`Store::read_all`](crate::Store::read_all)), the hash
//! chain ([`Store::verify`](crate::Store::verify)) and signed checkpoints cover it with no extra code.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::codec::Payload;
use crate::error::Result;

/// How many snapshots a stream keeps by default: the newest few, so that a read of a recent past
/// version still starts from one.
pub const DEFAULT_SNAPSHOTS_KEPT: u32 = 4;

/// An entity's state at a version of its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream.
    pub stream_id: String,
    /// The version the state is at: it has applied events 1 to `version`.
    pub version: u64,
    /// The schema of the state, as the entity's code declares it. A reader with another schema
    /// ignores the snapshot.
    pub schema: u32,
    /// The state.
    pub state: Payload,
    /// When it was taken (by the store's clock).
    pub taken_at: Timestamp,
}

/// Entity streams and their snapshots. A capability of every [`Store`](crate::Store); sealed.
pub trait StreamStore: Send + Sync {
    /// Creates stream `stream_id` of `entity_type` if it does not exist, and returns its version.
    /// An id held by a workflow instance, or by a stream of another entity type, is refused with
    /// [`Error::Invalid`](crate::Error::Invalid).
    fn open_stream<'a>(
        &'a self,
        stream_id: &'a str,
        entity_type: &'a str,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Stores a snapshot (replacing one at the same version), and deletes the stream's snapshots
    /// older than its newest `keep`. A state larger than the payload limit is refused with
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge).
    fn save_snapshot(&self, snapshot: Snapshot, keep: u32) -> BoxFuture<'_, Result<()>>;

    /// Removes up to `limit` of the oldest events of stream `stream_id` that come before version
    /// `before`, in one short transaction, and moves the start of its hash chain past them (the
    /// chain then links to the hash of the last event removed, so what is left still verifies).
    /// Returns the versions removed, `(first, last)`, or `None` if there was nothing to remove.
    /// Archive the events first: they are gone from the journal and the global order. Refused
    /// for a workflow instance.
    fn truncate_stream<'a>(
        &'a self,
        stream_id: &'a str,
        before: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Option<(u64, u64)>>>;

    /// The newest snapshot of `stream_id` in `schema` at version `at_most` or before, if any.
    fn load_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
        schema: u32,
        at_most: u64,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>>;
}
