//! The event log: the part of a store that event-sourced entities and projections run on.
//!
//! Entities need far less than the whole journal and queue: append events to streams at an
//! expected version (several streams at once, all or nothing, with an optional inbox id), read a
//! stream, keep snapshots, keep subjects' data keys, and read every stream's events in one global
//! order. [`EventLog`] is that contract. Every [`Store`](crate::Store) is one (SQLite and
//! PostgreSQL, where entity events share the journal with workflows); a log that is not a whole
//! store, such as Redis Streams ([`RedisLog`](crate::RedisLog), feature `redis`), implements it
//! alone. Code written against `dyn EventLog` runs on all of them, and the entity conformance
//! suite runs against each.

use std::fmt;

use futures::future::BoxFuture;

use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::journal::{GlobalEvent, GlobalPosition, HistoryRange};
use crate::store::StoreConfig;
use crate::stream::StreamStore;
use crate::subject::SubjectStore;

/// An append-only log of entity streams: what [`Entities`] and projections need of a store.
///
/// The rules every implementation keeps (the conformance suite checks them):
/// - an append names the version it expects the stream to be at; if the stream has moved, the
///   append fails with [`Error::Conflict`](crate::Error::Conflict) and writes nothing;
/// - a commit's appends to several streams, and its inbox id, land together or not at all; an
///   inbox id seen before fails the commit with
///   [`Error::AlreadyReceived`](crate::Error::AlreadyReceived);
/// - versions are gapless from 1; the global order never passes an event that can still commit
///   before it.
///
/// [`Entities`]: https://docs.rs/quark-workflow/latest/quark_workflow/entity/struct.Entities.html
pub trait EventLog: StreamStore + SubjectStore + Send + Sync + fmt::Debug + 'static {
    /// Where the log is kept: `sqlite`, `postgres`, `redis`.
    fn log_backend(&self) -> &'static str;

    /// The settings: codec, payload limit, clock, master key.
    fn log_config(&self) -> &StoreConfig;

    /// Commits `commits`, each all or nothing, in order, and returns each one's result. A log that
    /// is not a whole store takes appends to entity streams and an inbox id only, and refuses
    /// anything else in a commit (tasks, settlements) with
    /// [`Error::Invalid`](crate::Error::Invalid).
    fn append_commits(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>>;

    /// Part of stream `stream_id`, in version order (empty for a stream that does not exist).
    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        range: HistoryRange,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>>;

    /// How many events stream `stream_id` has had appended (its version; 0 if it does not exist).
    /// Retention does not lower it.
    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64>>;

    /// Up to `limit` events after `after` in the global order of every stream.
    fn read_log(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>>>;
}

impl<S: crate::Store + ?Sized> EventLog for S {
    fn log_backend(&self) -> &'static str {
        match self.backend() {
            crate::Backend::Sqlite => "sqlite",
            crate::Backend::Postgres => "postgres",
        }
    }

    fn log_config(&self) -> &StoreConfig {
        self.config()
    }

    fn append_commits(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>> {
        if commits.len() == 1 {
            let commit = commits.into_iter().next().expect("one commit");
            return Box::pin(async move { vec![self.commit(commit).await] });
        }
        self.commit_many(commits)
    }

    fn read_stream<'a>(
        &'a self,
        stream_id: &'a str,
        range: HistoryRange,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        self.read_history(stream_id, range)
    }

    fn stream_version<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            Ok(self
                .get_instance(stream_id)
                .await?
                .map_or(0, |r| r.history_len))
        })
    }

    fn read_log(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>>> {
        self.read_all(after, limit)
    }
}
