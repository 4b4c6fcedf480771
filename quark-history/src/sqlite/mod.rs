//! The embedded SQLite backend.
//!
//! One writer connection (every write transaction is `BEGIN IMMEDIATE` on it, so writers never
//! deadlock on lock upgrades and commit in position order) and a pool of readers in WAL mode. An
//! in-memory database has a single connection that does both.

mod claim;
mod commit;
mod jobs;
mod journal;
mod outbox;
pub(crate) use outbox::record as record_inbox;
mod queue;

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::instance::{Created, IdReusePolicy, InstanceFilter, InstanceRecord, NewInstance};
use crate::journal::{ChainReport, GlobalEvent, GlobalPosition, HistoryRange};
use crate::queue::{ClaimRequest, ClaimedTask, DeadTask, Lease, QueueStats, WorkerInfo};
use crate::store::{Backend, Store, StoreConfig};
use crate::wakeup::{Hub, Wakeups};

/// A [`Store`] on an embedded SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    config: StoreConfig,
    hub: Hub,
    rate_limited: std::sync::Arc<crate::jobs::LimitedQueues>,
    /// For an in-memory database: a connection that is never used, only kept open. The database
    /// lives as long as one connection to it is open; without this one, a pool that replaced its
    /// only connection (one dropped mid-query by a cancelled task) would open a new, empty one.
    _anchor: Option<std::sync::Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>>,
}

/// The schema's migrations, in order.
fn migrator() -> Migrator {
    crate::sql::migrator(&[
        (
            1,
            "journal and queue",
            include_str!("../../migrations/sqlite/0001_journal_and_queue.sql"),
        ),
        (
            2,
            "jobs",
            include_str!("../../migrations/sqlite/0002_jobs.sql"),
        ),
        (
            3,
            "schedules",
            include_str!("../../migrations/sqlite/0003_schedules.sql"),
        ),
        (
            4,
            "outbox",
            include_str!("../../migrations/sqlite/0004_outbox.sql"),
        ),
        (
            5,
            "inbox order",
            include_str!("../../migrations/sqlite/0005_inbox_order.sql"),
        ),
        (
            6,
            "tasks by instance",
            include_str!("../../migrations/sqlite/0006_tasks_by_instance.sql"),
        ),
    ])
}

impl SqliteStore {
    /// A fresh in-memory database with the default settings.
    pub async fn in_memory() -> Result<Self> {
        Self::in_memory_with(StoreConfig::default()).await
    }

    /// A fresh in-memory database.
    pub async fn in_memory_with(config: StoreConfig) -> Result<Self> {
        let options = SqliteConnectOptions::from_str("sqlite::memory:")?;
        let anchor = sqlx::ConnectOptions::connect(&options).await?;
        // One connection in the pool: one writer, as on a file.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        let store = SqliteStore {
            writer: pool.clone(),
            reader: pool,
            config,
            hub: Hub::new(),
            rate_limited: Default::default(),
            _anchor: Some(std::sync::Arc::new(tokio::sync::Mutex::new(anchor))),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Opens (creating if missing) the database file at `path`.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let options = SqliteConnectOptions::new().filename(path);
        Self::open_options(options, StoreConfig::default()).await
    }

    /// Opens a database by URL (`sqlite://file.db`, `sqlite::memory:`).
    pub async fn open_with(url: &str, config: StoreConfig) -> Result<Self> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Self::in_memory_with(config).await;
        }
        let options = SqliteConnectOptions::from_str(url)?;
        Self::open_options(options, config).await
    }

    async fn open_options(options: SqliteConnectOptions, config: StoreConfig) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power loss
            // can roll back the last transactions, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let store = SqliteStore {
            writer,
            reader: SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.read_only(true))
                .await?,
            config,
            hub: Hub::new(),
            rate_limited: Default::default(),
            _anchor: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A write transaction on the single writer.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The writer pool, for tests that edit rows behind the engine's back.
    #[cfg(feature = "test-util")]
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn migrate(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            migrator().run(&self.writer).await?;
            Ok(())
        })
    }

    fn pending_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            // A database never migrated has no table to read; that is "all pending", not an error.
            let tracked: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                 WHERE type = 'table' AND name = '_sqlx_migrations')",
            )
            .fetch_one(&self.reader)
            .await?;
            let applied: Vec<i64> = if tracked {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&self.reader)
                    .await?
            } else {
                Vec::new()
            };
            Ok(crate::sql::pending(&migrator(), &applied))
        })
    }

    fn create_instance(
        &self,
        new: NewInstance,
        policy: IdReusePolicy,
    ) -> BoxFuture<'_, Result<Created>> {
        Box::pin(self.create_instance_impl(new, policy))
    }

    fn create_instances(
        &self,
        new: Vec<NewInstance>,
        policy: IdReusePolicy,
    ) -> BoxFuture<'_, Result<Vec<Created>>> {
        Box::pin(self.create_instances_impl(new, policy))
    }

    fn get_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<InstanceRecord>>> {
        Box::pin(self.get_instance_impl(id))
    }

    fn list_instances(&self, filter: InstanceFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>>> {
        Box::pin(self.list_instances_impl(filter))
    }

    fn read_history<'a>(
        &'a self,
        instance_id: &'a str,
        range: HistoryRange,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(self.read_history_impl(instance_id, range))
    }

    fn read_all(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>>> {
        Box::pin(self.read_all_impl(after, limit))
    }

    fn verify<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<ChainReport>> {
        Box::pin(self.verify_impl(instance_id))
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Committed>> {
        Box::pin(self.commit_impl(commit))
    }

    fn commit_many(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>> {
        Box::pin(self.commit_many_impl(commits))
    }

    fn begin_tx(&self) -> BoxFuture<'_, Result<crate::StoreTx>> {
        Box::pin(async move {
            Ok(crate::StoreTx::from_sqlite(
                self.begin().await?,
                std::sync::Arc::clone(&self.config.clock),
            ))
        })
    }

    fn commit_tx(&self, tx: crate::StoreTx, commit: Commit) -> BoxFuture<'_, Result<Committed>> {
        Box::pin(async move {
            match tx.inner {
                crate::transaction::TxInner::Sqlite(tx) => self.commit_tx_impl(tx, commit).await,
                #[allow(unreachable_patterns)]
                _ => Err(crate::Error::Invalid(
                    "a transaction of another store was handed to the SQLite store".into(),
                )),
            }
        })
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Vec<ClaimedTask>>> {
        Box::pin(self.claim_impl(request))
    }

    fn extend_lease<'a>(
        &'a self,
        lease: &'a Lease,
        lease_for: Duration,
    ) -> BoxFuture<'a, Result<crate::Timestamp>> {
        Box::pin(self.extend_lease_impl(lease, lease_for))
    }

    fn queue_stats<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats>> {
        Box::pin(self.queue_stats_impl(queue))
    }

    fn list_dead<'a>(
        &'a self,
        queue: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadTask>>> {
        Box::pin(self.list_dead_impl(queue, limit))
    }

    fn redrive(&self, task_id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.redrive_impl(task_id))
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Wakeups>> {
        Box::pin(async move { Ok(self.hub.subscribe(None)) })
    }

    fn heartbeat_worker(&self, info: WorkerInfo) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.heartbeat_worker_impl(info))
    }

    fn deregister_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM workers WHERE id = ?1")
                .bind(worker_id)
                .execute(&self.writer)
                .await?;
            Ok(())
        })
    }

    fn list_workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>>> {
        Box::pin(self.list_workers_impl())
    }
}

impl crate::sql::Dialect for sqlx::Sqlite {
    // Every write transaction is `BEGIN IMMEDIATE` on the one writer: it holds every row already.
    const FOR_UPDATE: &'static str = "";
    const SKIP_LOCKED: &'static str = "";
    const ONE_WRITER: bool = true;

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl crate::sql::SqlStore for SqliteStore {
    fn settings(&self) -> &StoreConfig {
        &self.config
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn announce(&self, visible: impl IntoIterator<Item = (String, crate::TaskKind)>) {
        for (queue, kind) in visible {
            self.hub.announce(crate::Wake::Queue { queue, kind });
        }
    }

    fn insert_messages<'a>(
        conn: &'a mut sqlx::SqliteConnection,
        rows: &'a [crate::outbox::MessageRow],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(outbox::insert_messages(conn, rows, now))
    }

    fn enqueue<'a>(
        conn: &'a mut sqlx::SqliteConnection,
        tasks: &'a [crate::NewTask],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move { Ok(queue::enqueue_in_tx(conn, tasks, now).await?.0) })
    }
}
