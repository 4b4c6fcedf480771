//! The PostgreSQL backend.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`; every write is one `READ COMMITTED` transaction; wake-ups are
//! `NOTIFY`s sent after commit, coalesced by a background task, and received by one `LISTEN`
//! connection per store that reconnects by itself.

mod batch;
mod claim;
mod commit;
mod heads;
mod jobs;
mod journal;
mod notify;
mod outbox;
pub(crate) use outbox::record as record_inbox;
mod queue;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::instance::{Created, IdReusePolicy, InstanceFilter, InstanceRecord, NewInstance};
use crate::journal::{ChainReport, GlobalEvent, GlobalPosition, HistoryRange};
use crate::queue::{ClaimRequest, ClaimedTask, DeadTask, Lease, QueueStats, WorkerInfo};
use crate::store::{Backend, Store, StoreConfig};
use crate::wakeup::{Hub, Wakeups};

/// A [`Store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    config: StoreConfig,
    hub: Hub,
    notifier: Arc<notify::Notifier>,
    rate_limited: Arc<crate::jobs::LimitedQueues>,
    heads: Arc<heads::Heads>,
}

/// The schema's migrations, in order.
fn migrator() -> Migrator {
    crate::sql::migrator(&[
        (
            1,
            "journal and queue",
            include_str!("../../migrations/postgres/0001_journal_and_queue.sql"),
        ),
        (
            2,
            "leaner writes",
            include_str!("../../migrations/postgres/0002_leaner_writes.sql"),
        ),
        (
            3,
            "queue vacuum",
            include_str!("../../migrations/postgres/0003_queue_vacuum.sql"),
        ),
        (
            4,
            "jobs",
            include_str!("../../migrations/postgres/0004_jobs.sql"),
        ),
        (
            5,
            "schedules",
            include_str!("../../migrations/postgres/0005_schedules.sql"),
        ),
        (
            6,
            "outbox",
            include_str!("../../migrations/postgres/0006_outbox.sql"),
        ),
        (
            7,
            "inbox order",
            include_str!("../../migrations/postgres/0007_inbox_order.sql"),
        ),
        (
            8,
            "claim by kind",
            include_str!("../../migrations/postgres/0008_claim_by_kind.sql"),
        ),
        (
            9,
            "instances room to update",
            include_str!("../../migrations/postgres/0009_instances_room_to_update.sql"),
        ),
        (
            10,
            "tasks by instance",
            include_str!("../../migrations/postgres/0010_tasks_by_instance.sql"),
        ),
    ])
}

impl PostgresStore {
    /// Connects with the default settings and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, StoreConfig::default()).await
    }

    /// Connects and applies the migrations.
    pub async fn connect_with(url: &str, config: StoreConfig) -> Result<Self> {
        let store = Self::connect_without_migrating(url, config).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without touching the schema; call [`Store::migrate`] (or `quark migrate`) first.
    pub async fn connect_without_migrating(url: &str, config: StoreConfig) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name("quark");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A ping before each use costs a round trip, but without it every connection that died
            // in the pool (a database restart, a failover) fails one caller's operation.
            .test_before_acquire(true)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self::from_pool(pool, config))
    }

    /// A store on an existing pool (no migrations are applied).
    pub fn from_pool(pool: PgPool, config: StoreConfig) -> Self {
        let hub = Hub::new();
        PostgresStore {
            notifier: Arc::new(notify::Notifier::start(pool.clone())),
            pool,
            config,
            hub,
            rate_limited: Arc::default(),
            heads: Arc::default(),
        }
    }

    /// The connection pool, for code that shares the engine's database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Enqueues tasks inside the caller's own transaction on this database: they exist if and only
    /// if that transaction commits (the outbox pattern for jobs). Idle workers hear of them by a
    /// `NOTIFY` sent in the same transaction, which PostgreSQL delivers at commit.
    pub async fn enqueue_in(
        &self,
        conn: &mut sqlx::PgConnection,
        tasks: Vec<crate::NewTask>,
    ) -> Result<Vec<i64>> {
        crate::rows::check_tasks(&self.config, &tasks)?;
        let now = self.config.clock.now();
        let ids = queue::enqueue_in_tx(&mut *conn, &tasks, now).await?.ids;
        let notices: Vec<String> = crate::rows::visible_queues(&tasks, now)
            .into_iter()
            .map(|(queue, kind)| notify::notice("tx", kind, &queue))
            .collect();
        if !notices.is_empty() {
            sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(notify::CHANNEL)
                .bind(&notices)
                .execute(&mut *conn)
                .await?;
        }
        Ok(ids)
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Announces visible tasks in this process at once and to other processes by `NOTIFY`.
    fn announce(&self, visible: impl IntoIterator<Item = (String, crate::TaskKind)>) {
        for (queue, kind) in visible {
            self.notifier.send(queue.clone(), kind);
            self.hub.announce(crate::Wake::Queue { queue, kind });
        }
    }
}

impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn migrate(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            migrator().run(&self.pool).await?;
            Ok(())
        })
    }

    fn pending_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            // A database never migrated has no table to read; that is "all pending", not an error.
            let tracked: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(&self.pool)
                    .await?;
            let applied: Vec<i64> = if tracked {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&self.pool)
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

    fn read_histories<'a>(
        &'a self,
        from: &'a [(String, u64)],
    ) -> BoxFuture<'a, Result<Vec<Vec<RecordedEvent>>>> {
        Box::pin(self.read_histories_impl(from))
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
            Ok(crate::StoreTx::from_postgres(
                self.begin().await?,
                Arc::clone(&self.config.clock),
            ))
        })
    }

    fn commit_tx(&self, tx: crate::StoreTx, commit: Commit) -> BoxFuture<'_, Result<Committed>> {
        Box::pin(async move {
            match tx.inner {
                crate::transaction::TxInner::Postgres(tx) => self.commit_tx_impl(tx, commit).await,
                #[allow(unreachable_patterns)]
                _ => Err(crate::Error::Invalid(
                    "a transaction of another store was handed to the PostgreSQL store".into(),
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
        Box::pin(async move {
            let listener = self.notifier.listener(&self.pool, &self.hub).await?;
            Ok(self.hub.subscribe(Some(listener)))
        })
    }

    fn heartbeat_worker(&self, info: WorkerInfo) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.heartbeat_worker_impl(info))
    }

    fn deregister_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM workers WHERE id = $1")
                .bind(worker_id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn list_workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>>> {
        Box::pin(self.list_workers_impl())
    }
}

impl crate::sql::Dialect for sqlx::Postgres {
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const ONE_WRITER: bool = false;

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl crate::sql::SqlStore for PostgresStore {
    fn settings(&self) -> &StoreConfig {
        &self.config
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn announce(&self, visible: impl IntoIterator<Item = (String, crate::TaskKind)>) {
        PostgresStore::announce(self, visible);
    }

    fn insert_messages<'a>(
        conn: &'a mut sqlx::PgConnection,
        rows: &'a [crate::outbox::MessageRow],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(outbox::insert_messages(conn, rows, now))
    }

    fn enqueue<'a>(
        conn: &'a mut sqlx::PgConnection,
        tasks: &'a [crate::NewTask],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move { Ok(queue::enqueue_in_tx(conn, tasks, now).await?.ids) })
    }
}
