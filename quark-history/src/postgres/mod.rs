//! The PostgreSQL backend.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`; every write is one `READ COMMITTED` transaction; wake-ups are
//! `NOTIFY`s sent after commit, coalesced by a background task, and received by one `LISTEN`
//! connection per store that reconnects by itself.

mod batch;
mod claim;
mod commit;
mod dialect;
mod heads;
mod journal;
mod notify;
mod outbox;
mod queue;
mod shard_hold;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::store::{Store, StoreConfig};
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

impl crate::sql::SqlStore for PostgresStore {
    const CREATES_IN_ONE_STATEMENT: bool = true;

    fn settings(&self) -> &StoreConfig {
        &self.config
    }

    fn place(&self) -> String {
        let options = self.pool.connect_options();
        let server = match options.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", options.get_host(), options.get_port()),
        };
        format!(
            "postgres://{server}/{}",
            options.get_database().unwrap_or_default()
        )
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

    fn announce_in<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        visible: Vec<(String, crate::TaskKind)>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let notices: Vec<String> = visible
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
            Ok(())
        })
    }

    fn wakeups(&self) -> BoxFuture<'_, Result<Wakeups>> {
        Box::pin(async move {
            let listener = self.notifier.listener(&self.pool, &self.hub).await?;
            Ok(self.hub.subscribe(Some(listener)))
        })
    }

    fn announce_ends(&self, ended: Vec<String>) {
        for instance in ended {
            self.notifier.send_end(instance.clone());
            self.hub.announce(crate::Wake::Ended { instance });
        }
    }

    fn end_wakeups(&self) -> BoxFuture<'_, Result<Wakeups>> {
        Box::pin(async move {
            let listener = self.notifier.listener(&self.pool, &self.hub).await?;
            Ok(self.hub.subscribe_ends(Some(listener)))
        })
    }

    fn limited_queues(&self) -> &crate::jobs::LimitedQueues {
        &self.rate_limited
    }

    fn insert_instances<'a>(
        conn: &'a mut sqlx::PgConnection,
        news: &'a [crate::NewInstance],
        firsts: &'a [crate::rows::EncodedEvent],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(journal::insert_instances(conn, news, firsts, now))
    }

    fn created<'a>(&self, started: impl IntoIterator<Item = (&'a str, [u8; 32])>) {
        self.heads.learn(started.into_iter().map(|(id, last_hash)| {
            let head = heads::Head {
                next_seq: 2,
                last_hash,
                stream: false,
            };
            (id.to_string(), Some(head))
        }));
    }

    fn claim_stmt(
        request: &crate::ClaimRequest,
        queues: &[String],
        limit: u32,
        now: crate::Timestamp,
        unlimited_only: bool,
    ) -> crate::sql::Stmt<sqlx::Postgres> {
        claim::claim_stmt(request, queues, limit, now, unlimited_only)
    }

    fn write_commit(&self, commit: Commit) -> BoxFuture<'_, Result<Committed>> {
        Box::pin(self.commit_impl(commit))
    }

    fn write_commits(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>> {
        Box::pin(self.commit_many_impl(commits))
    }

    fn write_commit_in(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        commit: Commit,
    ) -> BoxFuture<'_, Result<Committed>> {
        Box::pin(self.commit_tx_impl(tx, commit))
    }

    fn insert_messages<'a>(
        conn: &'a mut sqlx::PgConnection,
        rows: &'a [crate::outbox::MessageRow],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(outbox::insert_messages(conn, rows, now))
    }

    fn insert_tasks<'a>(
        conn: &'a mut sqlx::PgConnection,
        tasks: &'a [crate::NewTask],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(queue::insert_plain(conn, tasks, now))
    }

    fn finish_tasks<'a>(
        &'a self,
        conn: &'a mut sqlx::PgConnection,
        tasks: &'a [crate::sql::jobs::Finished],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(queue::finish_tasks(conn, self, tasks, now))
    }
}
