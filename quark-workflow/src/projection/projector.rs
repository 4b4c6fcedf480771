//! Running a projection: lease, read a page after the checkpoint, apply it and move the
//! checkpoint in one transaction; catch up, rebuild, wait for a position, report the lag.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use quark_history::{GlobalPosition, ProjectionRecord, ProjectionState, Store, StoreTx, Timestamp};

use super::{Batch, Projection, ProjectionError};

/// Events read and applied per transaction, by default.
pub const DEFAULT_PAGE: u32 = 1000;

/// How long a projector's lease lasts without a step renewing it, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// What one [`Projector::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatchUp {
    /// Applied this many events; the checkpoint is now `checkpoint`.
    Applied {
        /// Events applied.
        events: u64,
        /// The new checkpoint.
        checkpoint: GlobalPosition,
    },
    /// Nothing final after the checkpoint: the read model is up to date.
    CaughtUp,
    /// Another runner holds the lease (or this version is retired): nothing done.
    Busy,
}

/// How far behind a projection version is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Its row.
    pub record: ProjectionRecord,
    /// The next event it has not applied, if any is final: its position and when it was recorded.
    pub next: Option<(GlobalPosition, Timestamp)>,
    /// How long the oldest unapplied event has waited (zero when up to date).
    pub behind: Duration,
    /// How many committed events it has not applied, counted up to [`BEHIND_CAP`] (a count of
    /// that many means "at least").
    pub behind_events: u64,
}

/// The most unapplied events [`Projector::status`] counts.
pub const BEHIND_CAP: u64 = 1_000_000;

/// Runs a [`Projection`] over a store. Each projector has its own lease owner id; several can run
/// one projection, and the lease lets one apply at a time.
pub struct Projector<P: Projection> {
    store: Arc<dyn Store>,
    projection: P,
    owner: String,
    page: u32,
    lease: Duration,
}

impl<P: Projection> std::fmt::Debug for Projector<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("projection", &P::NAME)
            .field("version", &P::VERSION)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl<P: Projection> Projector<P> {
    /// A projector of `projection` over `store`, with a fresh owner id.
    pub fn new(store: Arc<dyn Store>, projection: P) -> Self {
        Projector {
            store,
            projection,
            owner: format!("projector-{}", uuid::Uuid::now_v7()),
            page: DEFAULT_PAGE,
            lease: DEFAULT_LEASE,
        }
    }

    /// Sets the lease owner id (a worker's id, say).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Sets how many events one step applies (at least 1).
    pub fn page(mut self, events: u32) -> Self {
        self.page = events.max(1);
        self
    }

    /// Sets the lease's length.
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = ttl;
        self
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// Registers this version (the first of a name is active; a later one builds beside it) and
    /// returns its row.
    pub async fn register(&self) -> Result<ProjectionRecord, ProjectionError> {
        Ok(self.store.register_projection(P::NAME, P::VERSION).await?)
    }

    /// Applies the next page of events, if this projector can take the lease and there is one.
    pub async fn step(&self) -> Result<CatchUp, ProjectionError> {
        let store = &self.store;
        let Some(record) = store
            .lease_projection(P::NAME, P::VERSION, &self.owner, self.lease)
            .await?
        else {
            return Ok(CatchUp::Busy);
        };
        let mut events = store.read_all(record.checkpoint, self.page).await?;
        open_page(&**store, &mut events).await?;
        let Some(last) = events.last() else {
            return Ok(CatchUp::CaughtUp);
        };
        let (to, at) = (last.position, last.event.recorded_at);
        let mut tx = store.begin_tx().await?;
        let written = async {
            let mut batch = Batch {
                tx: &mut tx,
                events: &events,
                version: P::VERSION,
                name: P::NAME,
            };
            self.projection.apply(&mut batch).await?;
            store
                .advance_projection(
                    &mut tx,
                    P::NAME,
                    P::VERSION,
                    &self.owner,
                    record.checkpoint,
                    to,
                    events.len() as u64,
                    Some(at),
                )
                .await?;
            Ok::<_, ProjectionError>(())
        }
        .await;
        finish(tx, written).await?;
        Ok(CatchUp::Applied {
            events: events.len() as u64,
            checkpoint: to,
        })
    }

    /// Steps until the read model holds every event committed before the call, calling
    /// `progress` with the count and checkpoint after each page; a building version that catches
    /// up becomes the active one. Returns how many events it applied. On PostgreSQL an event
    /// becomes readable in the global order only once every transaction older than it has ended,
    /// so a transaction held open anywhere on the server makes this wait until it ends. Fails if
    /// another runner holds the lease.
    pub async fn catch_up(
        &self,
        mut progress: impl FnMut(u64, GlobalPosition),
    ) -> Result<u64, ProjectionError> {
        let record = self.register().await?;
        let target = self.store.committed_head().await?;
        let mut applied = 0;
        let mut at = record.checkpoint;
        loop {
            match self.step().await? {
                CatchUp::Applied { events, checkpoint } => {
                    applied += events;
                    at = checkpoint;
                    progress(applied, checkpoint);
                }
                CatchUp::CaughtUp if target.is_some_and(|t| at < t) => {
                    // Committed, not final yet: an older transaction is still open.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                CatchUp::CaughtUp => break,
                CatchUp::Busy => return Err(self.busy().await),
            }
        }
        if record.state == ProjectionState::Building {
            self.store.activate_projection(P::NAME, P::VERSION).await?;
            tracing::info!(
                projection = P::NAME,
                version = P::VERSION,
                "caught up; this version is now the active one"
            );
        }
        Ok(applied)
    }

    /// Empties the read model and sets the checkpoint back to the start, in one transaction, then
    /// catches up from zero. Returns how many events it applied.
    pub async fn rebuild(
        &self,
        progress: impl FnMut(u64, GlobalPosition),
    ) -> Result<u64, ProjectionError> {
        self.register().await?;
        let store = &self.store;
        if store
            .lease_projection(P::NAME, P::VERSION, &self.owner, self.lease)
            .await?
            .is_none()
        {
            return Err(self.busy().await);
        }
        let mut tx = store.begin_tx().await?;
        let reset = async {
            self.projection.reset(&mut tx, P::VERSION).await?;
            store
                .reset_projection(
                    &mut tx,
                    P::NAME,
                    P::VERSION,
                    &self.owner,
                    GlobalPosition::START,
                )
                .await?;
            Ok::<_, ProjectionError>(())
        }
        .await;
        finish(tx, reset).await?;
        self.catch_up(progress).await
    }

    /// Applies the events after `from` again (of those committed before the call), calling
    /// `progress` with the count and position after each page. With `dry_run` each page is applied
    /// in a transaction that is rolled back: nothing is written, the checkpoint stays, no lease is
    /// taken, and a page the projection fails on is reported as an error naming its first
    /// position; a way to try a projection's code on the real history. Without `dry_run` the
    /// projection's lease is taken and its checkpoint set back to `from` (only for read models
    /// whose writes are idempotent upserts: others [`rebuild`](Self::rebuild)), then it catches
    /// up. Returns what was applied.
    pub async fn replay(
        &self,
        from: GlobalPosition,
        dry_run: bool,
        mut progress: impl FnMut(u64, GlobalPosition),
    ) -> Result<Replayed, ProjectionError> {
        let store = &self.store;
        let mut report = Replayed::default();
        if !dry_run {
            self.register().await?;
            let Some(record) = store
                .lease_projection(P::NAME, P::VERSION, &self.owner, self.lease)
                .await?
            else {
                return Err(self.busy().await);
            };
            if from > record.checkpoint {
                return Err(ProjectionError::Store(quark_history::Error::Invalid(
                    format!(
                        "projection `{}` v{} is at {}: a replay goes back, not forward past {from}",
                        P::NAME,
                        P::VERSION,
                        record.checkpoint
                    ),
                )));
            }
            let mut tx = store.begin_tx().await?;
            let rewound = store
                .reset_projection(&mut tx, P::NAME, P::VERSION, &self.owner, from)
                .await
                .map_err(ProjectionError::from);
            finish(tx, rewound).await?;
            report.events = self.catch_up(&mut progress).await?;
            return Ok(report);
        }
        let Some(head) = store.committed_head().await? else {
            return Ok(report);
        };
        let mut after = from;
        loop {
            let mut events = store.read_all(after, self.page).await?;
            events.retain(|e| e.position <= head);
            open_page(&**store, &mut events).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Ok(report);
            };
            let mut tx = store.begin_tx().await?;
            let applied = {
                let mut batch = Batch {
                    tx: &mut tx,
                    events: &events,
                    version: P::VERSION,
                    name: P::NAME,
                };
                self.projection.apply(&mut batch).await
            };
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rolling back a dry-run page failed");
            }
            if let Err(e) = applied {
                return Err(ProjectionError::apply(
                    P::NAME,
                    format!(
                        "the page from {} fails (dry run, nothing written): {e}",
                        events[0].position
                    ),
                ));
            }
            for e in &events {
                *report
                    .by_kind
                    .entry(event_kind(&e.event.event))
                    .or_default() += 1;
            }
            report.events += events.len() as u64;
            after = last;
            progress(report.events, last);
        }
    }

    /// Gives up the lease, so another runner can take over at once.
    pub async fn release(&self) -> Result<(), ProjectionError> {
        Ok(self
            .store
            .release_projection(P::NAME, P::VERSION, &self.owner)
            .await?)
    }

    /// Waits until this version has applied every event up to `position` (read your writes),
    /// looking every `every`, at most `timeout`. Someone must be running the projection.
    pub async fn wait_for(
        &self,
        position: GlobalPosition,
        timeout: Duration,
        every: Duration,
    ) -> Result<(), ProjectionError> {
        let started = tokio::time::Instant::now();
        loop {
            let at = self.record().await?.checkpoint;
            if at >= position {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(ProjectionError::Timeout {
                    name: P::NAME.to_string(),
                    target: position,
                    at,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Why this projector could not take the lease, as an error.
    async fn busy(&self) -> ProjectionError {
        let held = match self.record().await {
            Ok(r) if r.state == ProjectionState::Retired => "retired".to_string(),
            Ok(r) => match r.lease_owner {
                Some(owner) => format!(
                    "leased by `{owner}` until {} (store clock)",
                    r.lease_expires_at
                ),
                None => "leased by another runner".to_string(),
            },
            Err(e) => return e,
        };
        ProjectionError::Busy {
            name: P::NAME.to_string(),
            version: P::VERSION,
            held,
        }
    }

    async fn record(&self) -> Result<ProjectionRecord, ProjectionError> {
        self.store
            .list_projections()
            .await?
            .into_iter()
            .find(|r| r.name == P::NAME && r.version == P::VERSION)
            .ok_or_else(|| {
                ProjectionError::apply(P::NAME, format!("version {} is not registered", P::VERSION))
            })
    }

    /// How far behind this version is: the next event it has not applied and how long that event
    /// has waited.
    pub async fn status(&self) -> Result<ProjectionStatus, ProjectionError> {
        let record = self.record().await?;
        let next = self
            .store
            .read_all(record.checkpoint, 1)
            .await?
            .into_iter()
            .next()
            .map(|e| (e.position, e.event.recorded_at));
        let now = self.store.config().clock.now();
        let behind = next.map_or(Duration::ZERO, |(_, at)| {
            Duration::from_micros(now.as_micros().saturating_sub(at.as_micros()).max(0) as u64)
        });
        let behind_events = self
            .store
            .count_after(record.checkpoint, BEHIND_CAP)
            .await?;
        Ok(ProjectionStatus {
            record,
            next,
            behind,
            behind_events,
        })
    }
}

/// Opens the sealed personal fields of a page's entity events (an erased subject's read as
/// redacted), so the projection sees what an entity sees.
pub(super) async fn open_page(
    store: &dyn quark_history::EventLog,
    events: &mut [quark_history::GlobalEvent],
) -> Result<(), ProjectionError> {
    let mut payloads: Vec<&mut quark_history::Payload> = events
        .iter_mut()
        .filter_map(|e| match &mut e.event.event {
            quark_history::HistoryEvent::EntityEvent { data, .. } => Some(data),
            _ => None,
        })
        .collect();
    Ok(crate::entity::open_all(store, &mut payloads).await?)
}

/// Commits `tx` if `written` holds, rolls it back otherwise.
async fn finish(tx: StoreTx, written: Result<(), ProjectionError>) -> Result<(), ProjectionError> {
    match written {
        Ok(()) => Ok(tx.commit().await?),
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(error = %rollback, "rolling back a projection page failed");
            }
            Err(e)
        }
    }
}

/// The version of projection `name` readers should use: the active one, if any.
pub async fn active_version(store: &dyn Store, name: &str) -> Result<Option<u32>, ProjectionError> {
    Ok(store
        .list_projections()
        .await?
        .into_iter()
        .find(|r| r.name == name && r.state == ProjectionState::Active)
        .map(|r| r.version))
}

/// The position in the global order of event `version` of stream `stream` (an entity command's
/// last event, to wait for with [`Projector::wait_for`]).
pub async fn position_of(
    store: &dyn Store,
    stream: &str,
    version: u64,
) -> Result<Option<GlobalPosition>, ProjectionError> {
    Ok(store.event_position(stream, version).await?)
}

impl<P: Projection> Projector<P> {
    /// Makes this version the active one if it is building and has applied every final event:
    /// the switch a versioned rebuild ends with. Returns whether it switched.
    pub async fn promote(&self) -> Result<bool, ProjectionError> {
        let record = self.record().await?;
        if record.state != ProjectionState::Building {
            return Ok(false);
        }
        if !self.store.read_all(record.checkpoint, 1).await?.is_empty() {
            return Ok(false);
        }
        self.store.activate_projection(P::NAME, P::VERSION).await?;
        tracing::info!(
            projection = P::NAME,
            version = P::VERSION,
            "caught up; this version is now the active one"
        );
        Ok(true)
    }
}

/// What [`Projector::replay`] applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Events applied.
    pub events: u64,
    /// In a dry run, how many of each kind (an entity event's type name, else the event's kind).
    pub by_kind: std::collections::BTreeMap<String, u64>,
}

fn event_kind(event: &quark_history::HistoryEvent) -> String {
    match event {
        quark_history::HistoryEvent::EntityEvent { event_type, .. } => event_type.clone(),
        other => other.kind().to_string(),
    }
}

/// The progress callback of the erased [`RunProjection`] methods.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, GlobalPosition) + Send);

/// A projector with its projection's type erased: what a runtime that runs many projections (the
/// worker) holds.
pub trait RunProjection: Send + Sync {
    /// The projection's name.
    fn name(&self) -> &'static str;
    /// Its version.
    fn version(&self) -> u32;
    /// [`Projector::register`].
    fn register(&self) -> BoxFuture<'_, Result<ProjectionRecord, ProjectionError>>;
    /// [`Projector::step`].
    fn step(&self) -> BoxFuture<'_, Result<CatchUp, ProjectionError>>;
    /// [`Projector::promote`].
    fn promote(&self) -> BoxFuture<'_, Result<bool, ProjectionError>>;
    /// [`Projector::status`].
    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ProjectionError>>;
    /// [`Projector::release`].
    fn release(&self) -> BoxFuture<'_, Result<(), ProjectionError>>;
    /// [`Projector::rebuild`].
    fn rebuild<'a>(&'a self, progress: Progress<'a>)
    -> BoxFuture<'a, Result<u64, ProjectionError>>;
    /// [`Projector::replay`].
    fn replay<'a>(
        &'a self,
        from: GlobalPosition,
        dry_run: bool,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<Replayed, ProjectionError>>;
}

impl<P: Projection> RunProjection for Projector<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn version(&self) -> u32 {
        P::VERSION
    }
    fn register(&self) -> BoxFuture<'_, Result<ProjectionRecord, ProjectionError>> {
        Box::pin(Projector::register(self))
    }
    fn step(&self) -> BoxFuture<'_, Result<CatchUp, ProjectionError>> {
        Box::pin(Projector::step(self))
    }
    fn promote(&self) -> BoxFuture<'_, Result<bool, ProjectionError>> {
        Box::pin(Projector::promote(self))
    }
    fn status(&self) -> BoxFuture<'_, Result<ProjectionStatus, ProjectionError>> {
        Box::pin(Projector::status(self))
    }
    fn release(&self) -> BoxFuture<'_, Result<(), ProjectionError>> {
        Box::pin(Projector::release(self))
    }
    fn rebuild<'a>(
        &'a self,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<u64, ProjectionError>> {
        Box::pin(Projector::rebuild(self, progress))
    }
    fn replay<'a>(
        &'a self,
        from: GlobalPosition,
        dry_run: bool,
        progress: Progress<'a>,
    ) -> BoxFuture<'a, Result<Replayed, ProjectionError>> {
        Box::pin(Projector::replay(self, from, dry_run, progress))
    }
}
