//! The embedded SQLite backend.
//!
//! One writer connection (every write transaction is `BEGIN IMMEDIATE` on it, so writers never
//! deadlock on lock upgrades and commit in position order) and a pool of readers in WAL mode. An
//! in-memory database has a single connection that does both.

mod claim;
mod commit;
mod dialect;
mod outbox;

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::commit::{Commit, Committed};
use crate::error::{Error, Result};
use crate::store::{Store, StoreConfig};
use crate::wakeup::{Hub, Wakeups};

/// A [`Store`] on an embedded SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    config: StoreConfig,
    hub: Hub,
    rate_limited: std::sync::Arc<crate::jobs::LimitedQueues>,
    /// [`Store::location`]: the file's canonical path, or a name of its own for a database in
    /// memory (no other process can open it).
    location: String,
    /// For an in-memory database: a connection that is never used, only kept open. The database
    /// lives as long as one connection to it is open; without this one, a pool that replaced its
    /// only connection (one dropped mid-query by a cancelled task) would open a new, empty one.
    _anchor: Option<std::sync::Arc<tokio::sync::Mutex<sqlx::SqliteConnection>>>,
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
            location: format!("sqlite::memory:{}", uuid::Uuid::now_v7().simple()),
            _anchor: Some(std::sync::Arc::new(tokio::sync::Mutex::new(anchor))),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Opens (creating if missing) the database file at `path`.
    pub async fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let options = SqliteConnectOptions::new().filename(path);
        let store = Self::open_options(options, StoreConfig::default(), true).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens a database by URL (`sqlite://file.db`, `sqlite::memory:`).
    pub async fn open_with(url: &str, config: StoreConfig) -> Result<Self> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Self::in_memory_with(config).await;
        }
        let options = SqliteConnectOptions::from_str(url)?;
        let store = Self::open_options(options, config, true).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens an existing database file by URL without creating it or touching its schema (a
    /// file that does not exist is an error); [`Store::pending_migrations`] says what it lacks.
    pub async fn open_without_migrating(url: &str, config: StoreConfig) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        Self::open_options(options, config, false).await
    }

    async fn open_options(
        options: SqliteConnectOptions,
        config: StoreConfig,
        create: bool,
    ) -> Result<Self> {
        // WAL is a property of the file, set once by the opening that creates or migrates it;
        // an opening that must not touch the file leaves it as it is.
        let options = if create {
            options.journal_mode(SqliteJournalMode::Wal)
        } else {
            options
        };
        let options = options
            .create_if_missing(create)
            // NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power loss
            // can roll back the last transactions, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = connect(SqlitePoolOptions::new().max_connections(1), &options).await?;
        // The file exists now (the writer created it).
        let path = options.get_filename();
        let location = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        let store = SqliteStore {
            location,
            writer,
            reader: connect(
                SqlitePoolOptions::new().max_connections(4),
                &options.read_only(true),
            )
            .await?,
            config,
            hub: Hub::new(),
            rate_limited: Default::default(),
            _anchor: None,
        };
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

impl crate::sql::SqlStore for SqliteStore {
    const CREATES_IN_ONE_STATEMENT: bool = false;

    fn settings(&self) -> &StoreConfig {
        &self.config
    }

    fn place(&self) -> String {
        self.location.clone()
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

    fn wakeups(&self) -> BoxFuture<'_, Result<Wakeups>> {
        Box::pin(async move { Ok(self.hub.subscribe(None)) })
    }

    fn announce_ends(&self, ended: Vec<String>) {
        for instance in ended {
            self.hub.announce(crate::Wake::Ended { instance });
        }
    }

    fn end_wakeups(&self) -> BoxFuture<'_, Result<Wakeups>> {
        Box::pin(async move { Ok(self.hub.subscribe_ends(None)) })
    }

    fn limited_queues(&self) -> &crate::jobs::LimitedQueues {
        &self.rate_limited
    }

    fn claim_stmt(
        request: &crate::ClaimRequest,
        queues: &[String],
        limit: u32,
        now: crate::Timestamp,
        unlimited_only: bool,
    ) -> crate::sql::Stmt<sqlx::Sqlite> {
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
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        commit: Commit,
    ) -> BoxFuture<'_, Result<Committed>> {
        Box::pin(self.commit_tx_impl(tx, commit))
    }

    fn insert_messages<'a>(
        conn: &'a mut sqlx::SqliteConnection,
        rows: &'a [crate::outbox::MessageRow],
        now: crate::Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(outbox::insert_messages(conn, rows, now))
    }
}

/// Connects a pool. Processes that open a new file together race for its first writes (the
/// file's creation, its journal mode): the loser's connection can be refused with SQLITE_BUSY
/// before its busy timeout applies. It tries again, for up to about 20 s, as its migrations wait
/// for another process's.
async fn connect(
    pool: SqlitePoolOptions,
    options: &SqliteConnectOptions,
) -> Result<sqlx::SqlitePool> {
    let mut tries: u64 = 0;
    loop {
        match pool
            .clone()
            .connect_with(options.clone())
            .await
            .map_err(Error::from)
        {
            Ok(connected) => return Ok(connected),
            Err(Error::Transient(e)) if tries < 100 => {
                tries += 1;
                tracing::info!(error = %e, "the database file is busy; connecting again");
                tokio::time::sleep(Duration::from_millis(20 * tries.min(10))).await;
            }
            Err(e) => return Err(e),
        }
    }
}
