//! # quark-history
//!
//! The journal and the shared queue that everything in Quark stands on.
//!
//! - **The event model**: [`HistoryEvent`], versioned ([`SCHEMA_VERSION`]) and encoded with a
//!   [`Codec`] ([`Json`] by default, [`Postcard`] for compact binary).
//! - **The [`Store`] trait**, with two backends behind features: embedded SQLite (`sqlite`, the
//!   default; a file or in memory) and PostgreSQL (`postgres`). Both pass one conformance suite.
//! - **Instances and histories**: create with an id reuse policy, append with an expected sequence
//!   number ([`Expected`]), read whole, from a sequence number or by time, list by type, status and
//!   time.
//! - **The queue**: enqueue, claim in batches under a lease, extend, complete, fail, retry,
//!   dead-letter and re-drive; the attempt number is a fencing token ([`Lease`]). A dead-lettered
//!   orchestration turn blocks its instance ([`InstanceStatus::Blocked`]) in the same
//!   transaction, and re-driving it unblocks the instance in the re-drive's.
//! - **The atomic [`Commit`]**: appends, enqueues and settles a task in one transaction.
//! - **Transactions the caller writes in** ([`Store::begin_tx`], [`Store::commit_tx`]): the
//!   caller's own rows and a commit, together or not at all.
//! - **The transactional outbox and the inbox** ([`Commit::send`], [`Store::send_tx`], [`Inbox::once`]):
//!   messages written in the same transaction as the change that caused them, relayed in order
//!   per key with leases; message ids deduplicated by the consumer in its own transaction, and
//!   applied in sequence order per key with [`SequencedInbox`] (gaps held, then declared lost).
//! - **Wake-ups** ([`Wakeups`]), the gap-safe global order ([`Store::read_all`]) and a per-instance
//!   blake3 hash chain ([`Store::verify`]).
//! - **Entity streams** ([`StreamStore`]): the event-sourced journal of application state, in the
//!   same history table as the workflows (appended with an expected version, chained, in the global
//!   order), with versioned [`Snapshot`]s.
//! - **Projection checkpoints** ([`ProjectionStore`]): leased, moved in the read model's own
//!   transaction (exactly once), versioned so a new read model builds beside the active one.
//! - **Subject keys** ([`SubjectStore`]): a data key per person, wrapped with the operator's
//!   [`MasterKey`], for personal fields sealed in entity events; erasing a subject deletes its key.
//! - **Cron schedules** ([`ScheduleSpec`]): stored with their next tick, fired by a compare-and-set
//!   ([`ScheduleStore::fire_schedule`]) that enqueues each tick's job exactly once among racing workers.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> quark_history::Result<()> {
//! use quark_history::{
//!     ClaimRequest, Commit, Expected, HistoryEvent, HistoryRange, IdReusePolicy, NewInstance,
//!     Payload, SqliteStore, Store,
//! };
//!
//! let store = SqliteStore::in_memory().await?;
//! let input = Payload::json(&"hello").unwrap();
//! store
//!     .create_instance(NewInstance::new("greet-1", "greet", input), IdReusePolicy::RejectDuplicate)
//!     .await?;
//!
//! // A worker claims the orchestration task and commits a turn.
//! let task = store.claim(ClaimRequest::new("worker-a", ["default"])).await?.remove(0);
//! let output = Payload::json(&"hello, world").unwrap();
//! store
//!     .commit(
//!         Commit::new()
//!             .append("greet-1", Expected::Seq(2), [HistoryEvent::WorkflowCompleted { output }])
//!             .complete(task.lease),
//!     )
//!     .await?;
//!
//! let history = store.read_history("greet-1", HistoryRange::All).await?;
//! assert_eq!(history.len(), 2);
//! assert!(store.verify("greet-1").await?.is_intact());
//! # Ok(())
//! # }
//! ```

mod catalog;
pub mod checkpoint;
mod clock;
mod codec;
mod commit;
mod error;
mod event;
mod event_log;
mod inbox;
mod inbox_order;
mod instance;
mod jobs;
mod journal;
mod namespace;
mod outbox;
mod plan;
mod projection;
mod queue;
#[cfg(feature = "redis")]
mod redis_log;
mod requests;
mod schedule;
pub mod shards;
mod sql;
mod store;
mod stream;
mod subject;
mod tokens;
mod transaction;
pub mod two_phase;
mod wakeup;

#[cfg(feature = "postgres")]
mod postgres;
mod rows;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "test-util")]
pub mod testing;

/// The store's traits, whose methods a concrete store ([`SqliteStore`], [`PostgresStore`]) is used
/// through: `use quark_history::prelude::*;`. A `dyn Store` needs none of them in scope.
pub mod prelude {
    pub use crate::catalog::CatalogStore;
    pub use crate::inbox::InboxStore;
    pub use crate::inbox_order::SequencedStore;
    pub use crate::projection::ProjectionStore;
    pub use crate::requests::RequestStore;
    pub use crate::shards::ShardMapStore;
    pub use crate::store::{JobStore, OutboxStore, ScheduleStore, Store};
    pub use crate::stream::StreamStore;
    pub use crate::subject::SubjectStore;
    pub use crate::tokens::TokenStore;
    pub use crate::two_phase::DecisionStore;
}

pub use catalog::{CatalogStore, RegisteredType, TypeKind};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use codec::{Codec, CodecError, CodecTag, Json, Payload, Postcard};
pub use commit::{Append, Commit, Committed, Expected, Settle};
pub use error::{Error, Result};
pub use event::{
    CallSite, CommandId, Failure, HistoryEvent, ParentRef, RecordedEvent, SCHEMA_VERSION,
};
pub use event_log::EventLog;
pub use inbox::{DEFAULT_INBOX_WINDOW, Inbox, InboxStore, Received};
pub use inbox_order::{
    Arrival, DEFAULT_GAP_TIMEOUT, Delivered, DuplicateOf, GapSweep, LostGap, SeqReceipt,
    SequencedInbox, SequencedStore,
};
pub use instance::{
    BlockedTurn, Created, IdReusePolicy, InstanceFilter, InstanceRecord, InstanceStatus,
    NewInstance,
};
pub use jobs::{
    Enqueued, JobFilter, JobInfo, JobState, Progress, Purged, QueueSettings, RateLimit, UniqueKey,
    UniquePolicy,
};
pub use journal::{ChainBreak, ChainReport, GlobalEvent, GlobalPosition, HistoryRange, scan_range};
pub use namespace::{MAX_NAMESPACE, NAMESPACE_SEPARATOR, check_namespace, namespace_of, qualify};
pub use outbox::{
    ClaimedMessage, Delivery, Destination, MessageState, NextWindow, OUTBOX_WAKE_QUEUE,
    OutboxClaim, OutboxFilter, OutboxLease, OutboxMessage, OutboxRecord, WindowOutcome,
};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use projection::{ProjectionRecord, ProjectionState, ProjectionStore};
pub use queue::{
    AffinityMove, ClaimRequest, ClaimedTask, DeadTask, FailAction, Incarnation, Lead, Lease,
    MAX_TRACEPARENT, NewTask, Placed, Pressure, PublishedSketch, QueueStats, Reaped, Registered,
    TaskKind, WorkerInfo, WorkerLoad, is_storable_traceparent,
};
#[cfg(feature = "redis")]
pub use redis_log::{DEFAULT_PREFIX as DEFAULT_REDIS_PREFIX, GroupEntry, LeaseToken, RedisLog};
pub use requests::{ANSWERS_KEPT_FOR, Answer, RequestStore};
pub use schedule::{Fire, Missed, ScheduleRecord, ScheduleSpec, Upserted};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
/// The `sqlx` this crate is built on: for code that writes in the engine's transactions
/// ([`Inbox::once`] handlers, [`StoreTx::postgres`]) without a version mismatch.
pub use sqlx;
pub use store::{
    Backend, DEFAULT_MAX_PAYLOAD_BYTES, JobStore, OutboxStore, ScheduleStore, Store, StoreConfig,
};
pub use stream::{DEFAULT_SNAPSHOTS_KEPT, Snapshot, StreamStore};
pub use subject::{DataKey, MasterKey, SubjectKey, SubjectStore};
pub use tokens::{Scope, TokenRecord, TokenStore};
pub use transaction::StoreTx;
pub use wakeup::{Wake, Wakeups};

/// Opens a store from a URL: `sqlite::memory:`, `sqlite://path/to/file.db` (created if missing) or
/// `postgres://...`, applying migrations.
pub async fn open(url: &str, config: StoreConfig) -> Result<std::sync::Arc<dyn Store>> {
    #[cfg(feature = "sqlite")]
    if url.starts_with("sqlite:") {
        return Ok(std::sync::Arc::new(
            SqliteStore::open_with(url, config).await?,
        ));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(std::sync::Arc::new(
            PostgresStore::connect_with(url, config).await?,
        ));
    }
    let _ = config;
    Err(Error::Invalid(format!(
        "unsupported database url `{url}`: expected sqlite:... or postgres://... (with the matching feature enabled)"
    )))
}
