//! The SQL that SQLite and PostgreSQL share, written once.
//!
//! sqlx binds `$N` placeholders on both databases and decodes columns generically, so most
//! statements can be the same text and the same Rust code, generic over the database. What keeps
//! generic sqlx code from being short is that Rust does not carry a trait's `where` clauses over to
//! its users: a function generic over `DB` has to restate `i64: Encode<DB>`, `&mut DB::Connection:
//! Executor<DB>` and the like, every time. Here those bounds are written once, as blanket
//! implementations of small traits whose `Self` is the database ([`Binds`], [`Reads`], [`Runs`]),
//! and [`Dialect`] names them as supertraits, which Rust does carry over. Shared code then only says
//! `DB: Dialect` (or `S: SqlStore`) and reads like plain sqlx code through [`Stmt`].
//!
//! The alternatives were weighed: `sqlx::Any` loses the native types and needs a pool of its own;
//! an enum over the two connections puts a `match` in every statement; repeating the bounds on each
//! function or `impl` block buries the SQL under them.
//!
//! Each capability is one module holding its statements, implemented once for every [`SqlStore`]:
//! [`Store`](crate::Store) itself in `store` (over [`instances`], [`journal`] and [`queue`]),
//! [`JobStore`](crate::JobStore) in [`jobs`], [`CatalogStore`](crate::CatalogStore) in `catalog`, [`TokenStore`](crate::TokenStore) in `tokens`, [`RequestStore`](crate::RequestStore) in `requests`, [`DecisionStore`](crate::two_phase::DecisionStore) in `decisions`, and [`inbox_order`], [`outbox`], [`schedule`]. The
//! dialects differ in what [`Dialect`] and [`SqlStore`] ask of them, and nothing more: row locks
//! (`FOR UPDATE`, `SKIP LOCKED`; SQLite has one writer and needs none), lists (arrays or JSON),
//! array statements where PostgreSQL writes many rows in one, the claim statement, the global
//! order's horizon, the commit path, and how wake-ups are announced and heard.

mod catalog;
pub(crate) mod claim;
pub(crate) mod decisions;
pub(crate) mod enqueue;
mod inbox;
pub(crate) mod inbox_order;
pub(crate) mod instances;
mod job_list;
pub(crate) mod jobs;
pub(crate) mod journal;
pub(crate) mod locked;
pub(crate) mod outbox;
mod placement;
mod projections;
pub(crate) mod queue;
mod queue_settings;
mod requests;
pub(crate) mod schedule;
mod shard_map;
mod store;
mod streams;
mod subjects;
mod tokens;
mod workers;

pub(crate) use inbox::{receive, record};

use futures::future::BoxFuture;
use std::sync::Arc;

use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row as _, SqlSafeStr,
    Transaction, Type,
};

use crate::clock::{Clock, Timestamp};
use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::inbox::InboxStore;
use crate::instance::NewInstance;
use crate::jobs::LimitedQueues;
use crate::journal::GlobalPosition;
use crate::outbox::MessageRow;
use crate::queue::{ClaimRequest, NewTask, TaskKind};
use crate::rows::EncodedEvent;
use crate::store::Backend;
use crate::store::StoreConfig;
use crate::transaction::StoreTx;
use crate::wakeup::Wakeups;

/// A database can bind a `T` as a statement argument.
pub(crate) trait Binds<T>: Database {
    fn bind_to(
        query: Query<'static, Self, Self::Arguments>,
        value: T,
    ) -> Query<'static, Self, Self::Arguments>;
}

impl<DB: Database, T> Binds<T> for DB
where
    T: for<'t> Encode<'t, DB> + Type<DB>,
{
    fn bind_to(
        query: Query<'static, DB, DB::Arguments>,
        value: T,
    ) -> Query<'static, DB, DB::Arguments> {
        query.bind(value)
    }
}

/// A database can decode a column into a `T`.
pub(crate) trait Reads<T>: Database {
    fn read(row: &Self::Row, column: &str) -> sqlx::Result<T>;
}

impl<DB: Database, T> Reads<T> for DB
where
    T: for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    fn read(row: &DB::Row, column: &str) -> sqlx::Result<T> {
        row.try_get(column)
    }
}

/// A database can run a statement on one of its connections.
pub(crate) trait Runs: Database {
    fn fetch_all<'c>(
        conn: &'c mut Self::Connection,
        query: Query<'static, Self, Self::Arguments>,
    ) -> BoxFuture<'c, sqlx::Result<Vec<Self::Row>>>;

    fn fetch_optional<'c>(
        conn: &'c mut Self::Connection,
        query: Query<'static, Self, Self::Arguments>,
    ) -> BoxFuture<'c, sqlx::Result<Option<Self::Row>>>;

    fn execute<'c>(
        conn: &'c mut Self::Connection,
        query: Query<'static, Self, Self::Arguments>,
    ) -> BoxFuture<'c, sqlx::Result<Self::QueryResult>>;
}

impl<DB: Database> Runs for DB
where
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    fn fetch_all<'c>(
        conn: &'c mut DB::Connection,
        query: Query<'static, DB, DB::Arguments>,
    ) -> BoxFuture<'c, sqlx::Result<Vec<DB::Row>>> {
        conn.fetch_all(query)
    }

    fn fetch_optional<'c>(
        conn: &'c mut DB::Connection,
        query: Query<'static, DB, DB::Arguments>,
    ) -> BoxFuture<'c, sqlx::Result<Option<DB::Row>>> {
        conn.fetch_optional(query)
    }

    fn execute<'c>(
        conn: &'c mut DB::Connection,
        query: Query<'static, DB, DB::Arguments>,
    ) -> BoxFuture<'c, sqlx::Result<DB::QueryResult>> {
        conn.execute(query)
    }
}

/// A database the shared SQL runs on: what it binds and decodes, and the few pieces of SQL text
/// that differ.
pub(crate) trait Dialect:
    Runs
    + sqlx::database::HasStatementCache
    + Binds<i64>
    + Binds<i32>
    + Binds<i16>
    + Binds<f64>
    + Binds<bool>
    + Binds<String>
    + for<'a> Binds<&'a str>
    + Binds<Option<String>>
    + Binds<Option<i64>>
    + Binds<Option<i32>>
    + Binds<Option<i16>>
    + Binds<Option<f32>>
    + Binds<Option<Vec<u8>>>
    + Binds<Vec<u8>>
    + for<'a> Binds<&'a [u8]>
    + Reads<i64>
    + Reads<i32>
    + Reads<i16>
    + Reads<f64>
    + Reads<bool>
    + Reads<String>
    + Reads<Option<String>>
    + Reads<Option<i64>>
    + Reads<Option<i32>>
    + Reads<Option<i16>>
    + Reads<Option<f32>>
    + Reads<Option<Vec<u8>>>
    + Reads<Vec<u8>>
{
    /// Appended to a `SELECT` that reads a row it is about to change, so that a concurrent
    /// transaction waits for this one: `FOR UPDATE` on PostgreSQL, nothing on SQLite, where a
    /// write transaction already holds the one write lock.
    const FOR_UPDATE: &'static str;

    /// Whether a prepared statement may be switched to a plan made without its arguments
    /// (PostgreSQL's generic plans); see [`Stmt::planned_each_time`].
    const GENERIC_PLANS: bool;

    /// Appended to a `SELECT` of rows to take, so that rows another transaction holds are passed
    /// over rather than waited for: `FOR UPDATE SKIP LOCKED` on PostgreSQL, nothing on SQLite.
    const SKIP_LOCKED: &'static str;

    /// The expression of a history row's writing transaction id as text (its part of the
    /// global position): `tx_id::text` on PostgreSQL, `'0'` on SQLite.
    const TX_TEXT: &'static str;

    /// Whether a statement can change rows in a `WITH` clause and read the table as it was before
    /// the change (PostgreSQL's data-modifying CTEs); without, the change and the read are two
    /// statements in one transaction.
    const MODIFYING_CTE: bool;

    /// Whether the database has one writer (SQLite), so that a statement that reads rows and then
    /// changes them must take the write lock before it reads, in a `BEGIN IMMEDIATE` transaction:
    /// alone, it would start as a reader and could find at its first write that another process
    /// wrote since. With row locks (PostgreSQL) such a statement runs alone.
    const ONE_WRITER: bool;

    /// Which database this is.
    const BACKEND: Backend;

    /// The schema's migrations, `(version, description, SQL)` each, in order.
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)];

    /// Applies `migrator`'s pending migrations, safely while other processes do the same on the
    /// same database: one applies them, the others wait for it and then find nothing to do.
    fn migrate(pool: &Pool<Self>, migrator: Migrator) -> BoxFuture<'_, Result<()>>;

    /// A query whose one row's `tracked` column says whether the database has sqlx's migrations
    /// table (a database never migrated has none).
    const MIGRATIONS_TRACKED: &'static str;

    /// Between `INSERT INTO t (id, ...)` and its `SELECT`, so that a row can be put back with the
    /// id it had: PostgreSQL's identity columns refuse an explicit id without it.
    const OVERRIDING_ID: &'static str;

    /// The smaller of two values: `LEAST` on PostgreSQL, the scalar `min` on SQLite.
    const LEAST: &'static str;

    /// The larger of two values: `GREATEST` on PostgreSQL, the scalar `max` on SQLite.
    const GREATEST: &'static str;

    /// Frees slots of concurrency key `$1` (limit `$2`) to the oldest waiting jobs of the highest
    /// priority, as the delete trigger does: on PostgreSQL the schema's function, which takes the
    /// key's advisory lock first.
    const PROMOTE: &'static str;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// The condition "`column` is in the list bound as parameter `$param`" (see
    /// [`bind_texts`](Self::bind_texts)): `= ANY($n)` over an array on PostgreSQL, `json_each`
    /// over a JSON array on SQLite, which has no arrays.
    fn in_list(column: &str, param: usize) -> String;

    /// Binds a list of texts as one parameter, for [`in_list`](Self::in_list).
    fn bind_texts(stmt: Stmt<Self>, items: Vec<String>) -> Stmt<Self>;

    /// Binds a list of ids as one parameter, for [`in_list`](Self::in_list).
    fn bind_ids(stmt: Stmt<Self>, ids: Vec<i64>) -> Stmt<Self>;

    /// Reads a column written with [`bind_texts`](Self::bind_texts).
    fn read_texts(row: &Row<Self>, column: &str) -> Result<Vec<String>>;

    /// The statement behind [`Store::read_all`](crate::Store::read_all): up to `limit` events
    /// after `after` in the global order, with the columns `tx` (text), `global_position` and
    /// [`journal::EVENT_COLUMNS`]. It alone says which events are final (the gap-safe horizon).
    fn read_all(after: GlobalPosition, limit: u32) -> Stmt<Self>;

    /// The statement behind [`Store::read_histories`](crate::Store::read_histories), where one
    /// statement reads them all: each event with `ord`, the 1-based index of its request in
    /// `from`. `None`: they are read one by one.
    fn read_histories(from: &[(String, u64)]) -> Option<Stmt<Self>>;

    /// Wraps a write transaction for the caller ([`Store::begin_tx`](crate::Store::begin_tx)).
    fn store_tx(tx: Transaction<'static, Self>, clock: Arc<dyn Clock>) -> StoreTx;

    /// The write transaction inside a [`StoreTx`] of this database.
    fn from_store_tx(tx: StoreTx) -> Result<Transaction<'static, Self>>;

    /// The connection of a [`StoreTx`] of this database, to write in it without ending it.
    fn store_tx_conn(tx: &mut StoreTx) -> Result<&mut Self::Connection>;

    /// Holds the lock `key` on a session of its own (see
    /// [`ShardMapStore::hold_shard_map`](crate::shards::ShardMapStore::hold_shard_map)); a
    /// shared hold that loses its session takes the lock again and is marked stale if the
    /// recorded map is no longer `map`.
    fn hold_shard_map(
        pool: &Pool<Self>,
        key: (i32, i32),
        exclusive: bool,
        map: String,
    ) -> BoxFuture<'static, Result<Option<crate::shards::MapHold>>>;
}

/// One statement and its arguments: `sqlx::query` for code generic over the database.
pub(crate) struct Stmt<DB: Database>(Query<'static, DB, DB::Arguments>);

impl<DB: Dialect> Stmt<DB> {
    pub(crate) fn new(sql: impl SqlSafeStr) -> Self {
        Stmt(sqlx::query(sql))
    }

    pub(crate) fn bind<T>(self, value: T) -> Self
    where
        DB: Binds<T>,
    {
        Stmt(DB::bind_to(self.0, value))
    }

    /// Plans the statement with its arguments every time it runs, instead of preparing it once.
    ///
    /// For the claims, whose best plan depends on how many rows are queued: PostgreSQL switches a
    /// prepared statement to a generic plan after five runs, chosen on the statistics of the moment
    /// (often a table that was nearly empty), and keeps it. A generic outbox claim went from
    /// milliseconds to seconds once tens of thousands of messages were queued, and the relay
    /// from 11,800-13,800 to 180-2,600 messages/s. SQLite plans a statement once whatever its
    /// arguments, so it keeps its prepared statement.
    pub(crate) fn planned_each_time(self) -> Self {
        if !DB::GENERIC_PLANS {
            return self;
        }
        Stmt(self.0.persistent(false))
    }

    pub(crate) async fn fetch_all(self, conn: &mut DB::Connection) -> Result<Vec<Row<DB>>> {
        Ok(DB::fetch_all(conn, self.0)
            .await?
            .into_iter()
            .map(Row)
            .collect())
    }

    pub(crate) async fn fetch_optional(self, conn: &mut DB::Connection) -> Result<Option<Row<DB>>> {
        Ok(DB::fetch_optional(conn, self.0).await?.map(Row))
    }

    pub(crate) async fn fetch_one(self, conn: &mut DB::Connection) -> Result<Row<DB>> {
        let row = DB::fetch_optional(conn, self.0).await?;
        Ok(Row(row.ok_or(sqlx::Error::RowNotFound)?))
    }

    /// Runs it; returns how many rows it changed.
    pub(crate) async fn execute(self, conn: &mut DB::Connection) -> Result<u64> {
        let done = DB::execute(conn, self.0).await?;
        Ok(DB::rows_affected(&done))
    }
}

/// A row of a [`Stmt`]: columns are read by name.
pub(crate) struct Row<DB: Database>(DB::Row);

impl<DB: Dialect> Row<DB> {
    /// A row that plain sqlx code fetched.
    pub(crate) fn new(row: DB::Row) -> Self {
        Row(row)
    }

    pub(crate) fn get<T>(&self, column: &str) -> Result<T>
    where
        DB: Reads<T>,
    {
        Ok(DB::read(&self.0, column)?)
    }
}

/// A store the shared SQL is implemented for: its database, pools, settings and wake-ups, and the
/// few operations whose statements differ in kind between the databases, not in spelling. Write
/// transactions are [`InboxStore::begin_write`] (`BEGIN IMMEDIATE` on SQLite's one writer).
pub(crate) trait SqlStore:
    InboxStore<Db: Dialect> + Sized + std::fmt::Debug + 'static
{
    /// Whether [`insert_instances`](Self::insert_instances) is one statement, atomic by itself,
    /// so that a single instance is created without a transaction around it.
    const CREATES_IN_ONE_STATEMENT: bool;

    /// The settings (the clock, the payload limit).
    fn settings(&self) -> &StoreConfig;

    /// [`Store::location`](crate::Store::location).
    fn place(&self) -> String;

    /// The pool to read from (SQLite: its read-only connections).
    fn reader(&self) -> &Pool<Self::Db>;

    /// The pool to write with outside a transaction (SQLite: its one writer).
    fn writer(&self) -> &Pool<Self::Db>;

    /// Tells waiting workers and relays that work became visible on these queues: in this process
    /// and, on PostgreSQL, in others by `NOTIFY`.
    fn announce(&self, visible: impl IntoIterator<Item = (String, TaskKind)>);

    /// Announces, from inside the caller's transaction `conn`, work it makes visible. SQLite: in
    /// this process at once (a worker that looks before the commit finds nothing and polls
    /// again). PostgreSQL: by a `NOTIFY` sent in the transaction, which the server delivers at its
    /// commit, to this process's listener and to others.
    fn announce_in<'a>(
        &'a self,
        conn: &'a mut <Self::Db as Database>::Connection,
        visible: Vec<(String, TaskKind)>,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = conn;
        self.announce(visible);
        Box::pin(async { Ok(()) })
    }

    /// A subscription to wake-ups: this process's, and on PostgreSQL other processes' by `LISTEN`.
    fn wakeups(&self) -> BoxFuture<'_, Result<Wakeups>>;

    /// Tells those waiting for these instances that they ended: in this process and, on
    /// PostgreSQL, in others by `NOTIFY`.
    fn announce_ends(&self, ended: Vec<String>);

    /// A subscription to the ends of instances, as [`wakeups`](Self::wakeups).
    fn end_wakeups(&self) -> BoxFuture<'_, Result<Wakeups>>;

    /// The rate-limited queues, as last read.
    fn limited_queues(&self) -> &LimitedQueues;

    /// Inserts prepared outbox messages inside a transaction (PostgreSQL: one array statement);
    /// a taken idempotency key fails it.
    fn insert_messages<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        rows: &'a [MessageRow],
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Inserts tasks that are neither orchestrations nor unique inside a transaction; returns
    /// their ids in order. Enqueueing is [`enqueue::enqueue`].
    fn insert_tasks<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        tasks: &'a [NewTask],
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(enqueue::insert_one_by_one::<Self::Db>(conn, tasks, now))
    }

    /// Removes settled tasks from the hot table inside a transaction; the jobs among them are
    /// recorded in `finished_jobs`, unless the store keeps no finished jobs.
    fn finish_tasks<'a>(
        &'a self,
        conn: &'a mut <Self::Db as Database>::Connection,
        tasks: &'a [jobs::Finished],
        now: Timestamp,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(jobs::finish_one_by_one(self, conn, tasks, now))
    }

    /// Inserts new instances (`firsts`: their encoded `WorkflowStarted` events) with their first
    /// orchestration tasks, leaving out those whose id is taken; returns the ids it inserted.
    fn insert_instances<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        news: &'a [NewInstance],
        firsts: &'a [EncodedEvent],
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(instances::insert_one_by_one::<Self>(
            conn, news, firsts, now,
        ))
    }

    /// Learns the heads of instances just created, `(id, hash of the first event)` (PostgreSQL's
    /// appends to a known head read nothing first).
    fn created<'a>(&self, started: impl IntoIterator<Item = (&'a str, [u8; 32])>) {
        let _ = started;
    }

    /// The statement that claims up to `limit` tasks from `queues` for `request` (columns as
    /// [`claim::claimed_tasks`] reads them); `unlimited_only` leaves out paused and rate-limited
    /// queues (the caller took tokens otherwise, and checked the pause).
    fn claim_stmt(
        request: &ClaimRequest,
        queues: &[String],
        limit: u32,
        now: Timestamp,
        unlimited_only: bool,
    ) -> Stmt<Self::Db>;

    /// [`Store::commit`](crate::Store::commit): the commit path, each dialect's own.
    fn write_commit(&self, commit: Commit) -> BoxFuture<'_, Result<Committed>>;

    /// [`Store::commit_many`](crate::Store::commit_many).
    fn write_commits(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>>;

    /// [`Store::commit_tx`](crate::Store::commit_tx), the transaction unwrapped.
    fn write_commit_in(
        &self,
        tx: Transaction<'static, Self::Db>,
        commit: Commit,
    ) -> BoxFuture<'_, Result<Committed>>;
}

/// Runs a statement that takes rows (a claim: it reads them, then changes them) as its own write;
/// see [`Dialect::ONE_WRITER`].
pub(crate) async fn claim<S: SqlStore>(store: &S, stmt: Stmt<S::Db>) -> Result<Vec<Row<S::Db>>> {
    if S::Db::ONE_WRITER {
        let mut tx = store.begin_write().await?;
        let rows = stmt.fetch_all(&mut tx).await?;
        tx.commit().await?;
        Ok(rows)
    } else {
        stmt.fetch_all(&mut *store.writer().acquire().await?).await
    }
}

/// The versions of `migrator`'s migrations missing from `applied` (the versions a database
/// recorded as applied successfully).
pub(crate) fn pending(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> Vec<i64> {
    migrator
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect()
}

/// A backend's embedded migrations, `(version, description, SQL)` each, applied in order.
pub(crate) fn migrator(
    migrations: &[(i64, &'static str, &'static str)],
) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                let description = std::borrow::Cow::Borrowed(description);
                let sql = sql.into_sql_str();
                Migration::new(version, description, MigrationType::Simple, sql, false)
            })
            .collect(),
    )
}
