//! Running commands on entities, and reading their state now or at any past point.

use std::marker::PhantomData;
use std::sync::Arc;

use quark_history::{
    Commit, DEFAULT_SNAPSHOTS_KEPT, Error, EventLog, Expected, HistoryEvent, HistoryRange,
    Received, Snapshot, Store, Timestamp,
};

use super::cache::{Cache, LiveEntity, Slot};
use super::error::{EntityError, from_store};
use super::load::{Loaded, StoredEvent, encode_state, events, load};
use super::{Command, Entity, personal, stream_id};
use crate::runner::{Committer, WarmLimits};

/// How many times a command is decided before [`EntityError::Contended`]: each conflict with
/// another writer costs one.
pub const MAX_CONFLICT_RETRIES: u32 = 16;

/// Where a command comes from, stamped on the events it appends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallMeta {
    /// What caused the command: a message id, a workflow step, another event.
    pub causation: Option<String>,
    /// The conversation it belongs to, carried unchanged from cause to effect.
    pub correlation: Option<String>,
}

impl CallMeta {
    /// Caused by `id`.
    pub fn caused_by(id: impl Into<String>) -> Self {
        CallMeta {
            causation: Some(id.into()),
            correlation: None,
        }
    }

    /// In conversation `id`.
    pub fn correlated(mut self, id: impl Into<String>) -> Self {
        self.correlation = Some(id.into());
        self
    }
}

/// A point in a stream's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// After its first `n` events (0: the empty state).
    Version(u64),
    /// After every event appended at or before this time.
    Time(Timestamp),
}

/// What changed between two versions of an entity.
#[derive(Debug, Clone)]
pub struct EntityDiff<E: Entity> {
    /// The state at the earlier version.
    pub before: E::State,
    /// The state at the later version.
    pub after: E::State,
    /// The events between them, in order.
    pub events: Vec<StoredEvent<E::Event>>,
}

/// Runs commands on entities over a store, keeping the recently used ones warm. Clones share the
/// cache.
#[derive(Clone)]
pub struct Entities {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the streams are.
    log: Arc<dyn EventLog>,
    /// The same, when it is a whole store (retention needs its projections' checkpoints).
    store: Option<Arc<dyn Store>>,
    cache: Cache,
    /// Concurrent commands' appends share transactions (on PostgreSQL).
    committer: Committer,
    /// Appends under way: a lone one goes straight to the store, without the hop to a lane.
    in_flight: std::sync::atomic::AtomicUsize,
}

/// Committer lanes, and the most commits one transaction takes.
const LANES: usize = 4;
const MAX_BATCH: usize = 128;

impl Inner {
    async fn commit(&self, commit: Commit) -> quark_history::Result<quark_history::Committed> {
        use std::sync::atomic::Ordering;
        struct Done<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let alone = self.in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let _done = Done(&self.in_flight);
        if alone {
            let mut results = self.log.append_commits(vec![commit]).await;
            return results
                .pop()
                .unwrap_or_else(|| Err(Error::Invalid("the log returned no result".into())));
        }
        if !self.committer.started() {
            self.committer
                .start_lanes(Arc::clone(&self.log), LANES, MAX_BATCH);
        }
        self.committer.commit(commit).await
    }
}

impl std::fmt::Debug for Entities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entities")
            .field("log", &self.inner.log)
            .finish_non_exhaustive()
    }
}

impl Entities {
    /// Entities over `store`, keeping at most [`WarmLimits::default`] live.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Entities::with_limits(store, WarmLimits::default())
    }

    /// Entities over `store`, keeping at most `limits` live.
    pub fn with_limits(store: Arc<dyn Store>, limits: WarmLimits) -> Self {
        Entities::build(Arc::clone(&store) as Arc<dyn EventLog>, Some(store), limits)
    }

    /// Entities over an event log that is not a whole store (Redis Streams:
    /// [`RedisLog`](quark_history::RedisLog)), keeping at most `limits` live. Everything but
    /// retention works as on a store; calls from activities and orchestrations need the
    /// workflows' store and go through [`Entities::new`].
    pub fn on_log(log: Arc<dyn EventLog>, limits: WarmLimits) -> Self {
        Entities::build(log, None, limits)
    }

    fn build(log: Arc<dyn EventLog>, store: Option<Arc<dyn Store>>, limits: WarmLimits) -> Self {
        Entities {
            inner: Arc::new(Inner {
                log,
                store,
                cache: Cache::new(limits),
                committer: Committer::new(),
                in_flight: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// The log the streams are in.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.inner.log
    }

    /// The store, if the log is a whole store.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.inner.store.as_ref()
    }

    /// Entity `E`'s instance `key`.
    pub fn entity<E: Entity>(&self, key: impl Into<String>) -> EntityRef<E> {
        let key = key.into();
        EntityRef {
            stream: stream_id::<E>(&key),
            key,
            entities: self.clone(),
            entity: PhantomData,
        }
    }

    /// The slot of `stream` in the cache.
    pub(super) fn slot(&self, stream: &str) -> Slot {
        self.inner.cache.slot(stream)
    }

    /// Commits through the group committer.
    pub(super) async fn commit(
        &self,
        commit: Commit,
    ) -> quark_history::Result<quark_history::Committed> {
        self.inner.commit(commit).await
    }

    /// The entities kept live, with their footprints.
    pub fn live(&self) -> Vec<LiveEntity> {
        self.inner.cache.live()
    }

    /// How many entities are kept live, and their footprints in bytes.
    pub fn live_size(&self) -> (usize, usize) {
        self.inner.cache.size()
    }

    /// Keeps no new entities live past their command (`false`: the process is short of
    /// memory), or keeps them again (`true`). Entities live already stay.
    pub fn admit_new(&self, admit: bool) {
        self.inner.cache.admit_new(admit);
    }

    /// Drops live entities to free `bytes` of footprint: the most bytes per unit of locality
    /// lost first, never one a command holds. Their next commands load them again.
    pub fn shed(&self, bytes: usize) -> crate::runner::live::Evicted {
        self.inner.cache.shed(bytes)
    }

    /// Whether the entity of `stream` (`TYPE/key`) is live in this process.
    pub fn is_live(&self, stream: &str) -> bool {
        self.inner.cache.is_live(stream)
    }

    /// Drops the live states of `streams` (`TYPE/key`) that no command holds: another process
    /// serves those entities now, and the copies here only hold memory. Their next commands here,
    /// if any, load them again.
    pub fn drop_live(&self, streams: &[String]) -> crate::runner::live::Evicted {
        self.inner.cache.drop_streams(streams)
    }

    /// Erases subject `subject` (a person): deletes the data key that seals their
    /// [`Personal`](super::Personal) fields, in every entity's events and snapshots, and drops
    /// the states this process keeps warm. From then on those fields read as
    /// [`Personal::Redacted`](super::Personal::Redacted); every event, snapshot and hash stays, so
    /// entities load, projections rebuild and `quark verify` passes. Returns `false` if the
    /// subject had no key (never seen, or erased already). Other processes drop their warm
    /// states when they evict them: erase through the process that serves the subject, or
    /// restart the others, if their memory must forget at once.
    pub async fn erase_subject(
        &self,
        subject: &str,
    ) -> std::result::Result<bool, quark_history::Error> {
        let erased = self.inner.log.erase_subject(subject).await?;
        self.inner.cache.clear();
        Ok(erased)
    }
}

/// One entity: entity type `E`, one key.
pub struct EntityRef<E: Entity> {
    entities: Entities,
    key: String,
    stream: String,
    entity: PhantomData<fn() -> E>,
}

impl<E: Entity> Clone for EntityRef<E> {
    fn clone(&self) -> Self {
        EntityRef {
            entities: self.entities.clone(),
            key: self.key.clone(),
            stream: self.stream.clone(),
            entity: PhantomData,
        }
    }
}

impl<E: Entity> std::fmt::Debug for EntityRef<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityRef")
            .field("stream", &self.stream)
            .finish()
    }
}

type Result<T, E> = std::result::Result<T, EntityError<<E as Entity>::Rejection>>;

impl<E: Entity> EntityRef<E> {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stream's id (`TYPE/key`).
    pub fn stream_id(&self) -> &str {
        &self.stream
    }

    fn store(&self) -> &dyn EventLog {
        &*self.entities.inner.log
    }

    /// The log the stream is in.
    pub(super) fn log(&self) -> &dyn EventLog {
        self.store()
    }

    /// After `loaded` was appended to from version `from`: a snapshot if one is due, and the
    /// live entity's figures.
    pub(super) async fn after_append(&self, loaded: &mut Loaded<E>, from: u64) {
        let footprint = self.snapshot_if_due(loaded, from).await;
        self.entities
            .inner
            .cache
            .note(&self.stream, loaded.version, footprint);
    }

    /// Runs `command`: decides it against the current state and appends its events at the version
    /// that state is at. See [`call_with`](Self::call_with).
    pub async fn call<C: Command<E>>(&self, command: &C) -> Result<C::Reply, E> {
        self.call_with(command, CallMeta::default()).await
    }

    /// Runs `command`, stamping its events with `meta`. On a conflict with another writer it
    /// catches up on the events it missed and decides again, up to [`MAX_CONFLICT_RETRIES`]
    /// times. A refusal appends nothing and returns the handler's error; so does every other
    /// error.
    pub async fn call_with<C: Command<E>>(
        &self,
        command: &C,
        meta: CallMeta,
    ) -> Result<C::Reply, E> {
        match self.run(command, &meta, None).await? {
            Received::First(reply) => Ok(reply),
            // Without a message id nothing is deduplicated.
            Received::Duplicate => Err(EntityError::Store(Error::Invalid(
                "a command without a message id was taken for a duplicate".into(),
            ))),
        }
    }

    /// Runs `command` once per `message_id`: the inbox for messages from outside (a broker, a
    /// webhook, another service) that may arrive more than once. The id is recorded in the same
    /// commit as the command's events, so however often the message comes and however many
    /// processes receive it, its events are appended once; a repeat within the inbox window
    /// ([`DEFAULT_INBOX_WINDOW`](quark_history::DEFAULT_INBOX_WINDOW)) returns
    /// [`Received::Duplicate`] and appends nothing. The events are caused by the message id
    /// unless `meta` says otherwise. A refusal, or a decision without events, records nothing.
    pub async fn call_once<C: Command<E>>(
        &self,
        message_id: &str,
        command: &C,
        meta: CallMeta,
    ) -> Result<Received<C::Reply>, E> {
        let meta = CallMeta {
            causation: meta.causation.or_else(|| Some(message_id.to_string())),
            ..meta
        };
        self.run(command, &meta, Some(message_id)).await
    }

    async fn run<C: Command<E>>(
        &self,
        command: &C,
        meta: &CallMeta,
        message_id: Option<&str>,
    ) -> Result<Received<C::Reply>, E> {
        let slot = self.entities.inner.cache.slot(&self.stream);
        let mut held = slot.lock().await;
        let outcome = self
            .decide_and_append(&mut held, command, meta, message_id)
            .await;
        if let Err(e) = &outcome
            && !matches!(e, EntityError::Rejected(_))
        {
            // The journal may differ from the state kept (a commit whose outcome is unknown, an
            // event that did not decode): load it afresh next time.
            *held = None;
        }
        outcome
    }

    async fn decide_and_append<C: Command<E>>(
        &self,
        held: &mut Option<Box<dyn std::any::Any + Send>>,
        command: &C,
        meta: &CallMeta,
        message_id: Option<&str>,
    ) -> Result<Received<C::Reply>, E> {
        let store = self.store();
        let mut attempts = 0;
        // Whether the state was read from the journal during this call: a kept state may be
        // behind what other processes appended.
        let mut fresh = held.is_none();
        loop {
            attempts += 1;
            let loaded = self.loaded(held, true).await?;
            let decision = command.handle(&loaded.state);
            // An append finds out at its commit whether the state was current; a refusal or a
            // reply without events would not. Confirm them against the journal (one read of the
            // events after the kept version) and decide again if anything was missed.
            let appends = matches!(&decision, Ok(d) if !d.events.is_empty());
            if !appends && !fresh {
                fresh = true;
                let seen = loaded.version;
                self.catch_up(loaded).await?;
                if loaded.version != seen {
                    continue;
                }
            }
            let decision = decision.map_err(EntityError::Rejected)?;
            if decision.events.is_empty() {
                return Ok(Received::First(decision.reply));
            }
            let mut recorded = Vec::with_capacity(decision.events.len());
            // Whether an event is stored without a personal field (its subject is erased), so
            // that applying it as decided would keep in memory what the journal does not hold.
            let mut stored_differs = false;
            for event in &decision.events {
                let (data, redacted) =
                    personal::encode_sealed::<E, _>(store, &self.key, event).await?;
                stored_differs |= redacted;
                recorded.push(HistoryEvent::EntityEvent {
                    event_type: E::event_type(event),
                    data,
                    causation: meta.causation.clone(),
                    correlation: meta.correlation.clone(),
                });
            }
            let from = loaded.version;
            let appended_bytes: usize = recorded
                .iter()
                .map(|e| match e {
                    HistoryEvent::EntityEvent { data, .. } => data.as_bytes().len(),
                    _ => 0,
                })
                .sum();
            let mut commit =
                Commit::new().append(self.stream.as_str(), Expected::Seq(from + 1), recorded);
            if let Some(id) = message_id {
                commit = commit.receive(id);
            }
            match self.entities.inner.commit(commit).await {
                Ok(_) if stored_differs => {
                    // Read back what was stored, at the next load.
                    *held = None;
                    return Ok(Received::First(decision.reply));
                }
                Ok(_) => {
                    for event in &decision.events {
                        E::apply(&mut loaded.state, event);
                    }
                    loaded.version = from + decision.events.len() as u64;
                    loaded.tail_bytes += appended_bytes;
                    self.after_append(loaded, from).await;
                    return Ok(Received::First(decision.reply));
                }
                Err(Error::AlreadyReceived { .. }) => return Ok(Received::Duplicate),
                Err(Error::Conflict { .. }) if attempts < MAX_CONFLICT_RETRIES => {
                    self.catch_up(loaded).await?;
                    fresh = true;
                }
                Err(Error::Conflict { .. }) => {
                    return Err(EntityError::Contended {
                        stream: self.stream.clone(),
                        attempts,
                    });
                }
                Err(e) => return Err(from_store(e)),
            }
        }
    }

    /// The state kept in `held`, loaded (and, `for_write`, the stream opened) if there is none.
    /// A kept state is not brought up to date here: a write finds out at its commit, a read
    /// catches up itself.
    pub(super) async fn loaded<'h>(
        &self,
        held: &'h mut Option<Box<dyn std::any::Any + Send>>,
        for_write: bool,
    ) -> Result<&'h mut Loaded<E>, E> {
        let usable = held
            .as_ref()
            .is_some_and(|b| b.downcast_ref::<Loaded<E>>().is_some());
        if !usable {
            let loaded = load::<E, E::Rejection>(self.store(), &self.stream, None).await?;
            let footprint = encode_state::<E>(self.store(), &loaded.state)
                .map(|p| p.as_bytes().len())
                .ok();
            self.entities
                .inner
                .cache
                .note(&self.stream, loaded.version, footprint);
            *held = Some(Box::new(loaded));
        }
        let Some(loaded) = held.as_mut().and_then(|b| b.downcast_mut::<Loaded<E>>()) else {
            return Err(EntityError::Store(Error::Invalid(format!(
                "the state of `{}` was not kept",
                self.stream
            ))));
        };
        if for_write && !loaded.opened {
            let version = self
                .store()
                .open_stream(&self.stream, E::TYPE)
                .await
                .map_err(from_store)?;
            loaded.opened = true;
            // Someone appended between the load and the open: catch up before deciding.
            if version > loaded.version {
                self.catch_up(loaded).await?;
            }
        }
        Ok(loaded)
    }

    /// Applies the events appended after `loaded`'s version.
    pub(super) async fn catch_up(&self, loaded: &mut Loaded<E>) -> Result<(), E> {
        for e in events::<E, E::Rejection>(self.store(), &self.stream, loaded.version, None).await?
        {
            E::apply(&mut loaded.state, &e.event);
            loaded.version = e.version;
            loaded.tail_bytes += e.size;
        }
        Ok(())
    }

    /// Snapshots the state if its version passed a multiple of [`Entity::SNAPSHOT_EVERY`] since
    /// `from`; returns the state's encoded size if it was measured. A snapshot that fails to save
    /// is logged, not an error: the events are in, and the next load reads more of them.
    async fn snapshot_if_due(&self, loaded: &mut Loaded<E>, from: u64) -> Option<usize> {
        let every = E::SNAPSHOT_EVERY;
        let by_count = every > 0 && from / every != loaded.version / every;
        let by_size = E::SNAPSHOT_BYTES > 0 && loaded.tail_bytes >= E::SNAPSHOT_BYTES;
        if !by_count && !by_size {
            return None;
        }
        loaded.tail_bytes = 0;
        match self.save_snapshot(loaded).await {
            Ok(size) => Some(size),
            Err(e) => {
                tracing::warn!(stream = %self.stream, version = loaded.version, "snapshot not saved: {e}");
                None
            }
        }
    }

    /// Stores a snapshot of `loaded`; returns its encoded size.
    async fn save_snapshot(&self, loaded: &Loaded<E>) -> std::result::Result<usize, Error> {
        let store = self.store();
        let state = personal::encode::<E, _>(store, &self.key, &loaded.state).await?;
        let size = state.as_bytes().len();
        let snapshot = Snapshot {
            stream_id: self.stream.clone(),
            version: loaded.version,
            schema: E::SCHEMA,
            state,
            taken_at: store.log_config().clock.now(),
        };
        store
            .save_snapshot(snapshot, DEFAULT_SNAPSHOTS_KEPT)
            .await?;
        Ok(size)
    }

    /// Snapshots the current state now, at the current version (replacing a snapshot at that
    /// version), and returns the version: after a change of [`Entity::SCHEMA`] or when a stored
    /// snapshot no longer decodes, so that loads start from a snapshot again without waiting for
    /// the next one. A stream without events is not snapshotted (0).
    pub async fn snapshot(&self) -> Result<u64, E> {
        let slot: Slot = self.entities.inner.cache.slot(&self.stream);
        let mut held = slot.lock().await;
        let saved = async {
            let loaded = self.loaded(&mut held, false).await?;
            self.catch_up(loaded).await?;
            if loaded.version > 0 {
                self.save_snapshot(loaded).await.map_err(from_store)?;
                loaded.tail_bytes = 0;
            }
            Ok::<_, EntityError<E::Rejection>>(loaded.version)
        }
        .await;
        if saved.is_err() {
            *held = None;
        }
        saved
    }

    /// The current state and its version, for a decision made elsewhere (an activity's, whose
    /// events are appended with its result): the kept state brought up to date with the journal
    /// (one read of the events after it), or loaded; a snapshot is taken if one is due. The kept
    /// state is not changed by what the caller decides: the next read catches up on whatever
    /// was appended.
    pub(crate) async fn current_loaded(&self) -> Result<Loaded<E>, E> {
        let slot: Slot = self.entities.inner.cache.slot(&self.stream);
        let mut held = slot.lock().await;
        let read = async {
            let loaded = self.loaded(&mut held, false).await?;
            let before = loaded.version;
            self.catch_up(loaded).await?;
            if loaded.version != before {
                self.after_append(loaded, before).await;
            }
            Ok::<_, EntityError<E::Rejection>>(loaded.clone())
        }
        .await;
        if read.is_err() {
            *held = None;
        }
        read
    }

    /// The current state: the kept one brought up to date with the journal (one read of the
    /// events after it), or loaded. A key never written to has the default state.
    pub async fn state(&self) -> Result<E::State, E> {
        Ok(self.current().await?.0)
    }

    /// The current version: how many events the stream holds.
    pub async fn version(&self) -> Result<u64, E> {
        Ok(self.current().await?.1)
    }

    async fn current(&self) -> Result<(E::State, u64), E> {
        let slot: Slot = self.entities.inner.cache.slot(&self.stream);
        let mut held = slot.lock().await;
        let read = async {
            let loaded = self.loaded(&mut held, false).await?;
            self.catch_up(loaded).await?;
            Ok::<_, EntityError<E::Rejection>>((loaded.state.clone(), loaded.version))
        }
        .await;
        match read {
            Ok((state, version)) => {
                self.entities.inner.cache.note(&self.stream, version, None);
                Ok((state, version))
            }
            Err(e) => {
                *held = None;
                Err(e)
            }
        }
    }

    /// The state at a past point, and the version it is at, read from the journal (the live
    /// state is neither used nor changed). A version past the stream's end is refused.
    pub async fn state_at(&self, at: At) -> Result<(E::State, u64), E> {
        let version = match at {
            At::Version(v) => v,
            At::Time(t) => self.version_at(t).await?,
        };
        let loaded = load::<E, E::Rejection>(self.store(), &self.stream, Some(version)).await?;
        if loaded.version < version {
            let length = self
                .store()
                .stream_version(&self.stream)
                .await
                .map_err(from_store)?;
            return Err(EntityError::Store(Error::Invalid(
                match version <= length {
                    true => format!(
                        "stream `{}` cannot be read at version {version}: retention removed events \
                     before it, and no snapshot at or before it is left",
                        self.stream
                    ),
                    false => format!(
                        "stream `{}` has {length} events: there is no version {version}",
                        self.stream
                    ),
                },
            )));
        }
        Ok((loaded.state, loaded.version))
    }

    /// The version the stream was at, at time `t`: its last event appended at or before `t`.
    async fn version_at(&self, t: Timestamp) -> Result<u64, E> {
        let until = Timestamp::from_micros(t.as_micros().saturating_add(1));
        let upto = self
            .store()
            .read_stream(
                &self.stream,
                HistoryRange::Time {
                    from: Timestamp::from_micros(i64::MIN),
                    until,
                },
            )
            .await
            .map_err(from_store)?;
        Ok(upto.last().map_or(0, |e| e.seq))
    }

    /// The events of versions `from + 1` to `to` and the states at both ends.
    pub async fn diff(&self, from: u64, to: u64) -> Result<EntityDiff<E>, E> {
        if from > to {
            return Err(EntityError::Store(Error::Invalid(format!(
                "a diff runs forward: version {from} is after {to}"
            ))));
        }
        let (before, _) = self.state_at(At::Version(from)).await?;
        let events = events::<E, E::Rejection>(self.store(), &self.stream, from, Some(to)).await?;
        let mut after = before.clone();
        for e in &events {
            E::apply(&mut after, &e.event);
        }
        if events.len() as u64 != to - from {
            return Err(EntityError::Store(Error::Invalid(format!(
                "stream `{}` has {} events: there is no version {to}",
                self.stream,
                from + events.len() as u64
            ))));
        }
        Ok(EntityDiff {
            before,
            after,
            events,
        })
    }

    /// The stream's events with versions in `(after, until]` (`until: None`: to the end).
    pub async fn events(
        &self,
        after: u64,
        until: Option<u64>,
    ) -> Result<Vec<StoredEvent<E::Event>>, E> {
        events::<E, E::Rejection>(self.store(), &self.stream, after, until).await
    }
}
