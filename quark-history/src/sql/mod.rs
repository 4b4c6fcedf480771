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
//! Each capability is one module holding its statements ([`inbox_order`], [`outbox`], [`schedule`]),
//! implemented once for every [`SqlStore`]. The dialects differ in what [`Dialect`] and
//! [`SqlStore`] ask of them, and nothing more: row locks (`FOR UPDATE`, `SKIP LOCKED`; SQLite has
//! one writer and needs none), array statements, and how wake-ups are announced.

pub(crate) mod claim;
mod inbox;
pub(crate) mod inbox_order;
pub(crate) mod jobs;
pub(crate) mod outbox;
pub(crate) mod schedule;

pub(crate) use inbox::{receive, record};

use futures::future::BoxFuture;
use sqlx::query::Query;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Row as _, SqlSafeStr,
    Type,
};

use crate::clock::Timestamp;
use crate::error::Result;
use crate::inbox::InboxStore;
use crate::outbox::MessageRow;
use crate::queue::{NewTask, TaskKind};
use crate::store::StoreConfig;

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
    + Binds<i64>
    + Binds<i32>
    + Binds<bool>
    + Binds<String>
    + for<'a> Binds<&'a str>
    + Binds<Option<String>>
    + Binds<Option<i64>>
    + Binds<Option<f32>>
    + Binds<Option<Vec<u8>>>
    + Binds<Vec<u8>>
    + for<'a> Binds<&'a [u8]>
    + Reads<i64>
    + Reads<i32>
    + Reads<bool>
    + Reads<String>
    + Reads<Option<String>>
    + Reads<Option<i64>>
    + Reads<Option<f32>>
    + Reads<Option<Vec<u8>>>
    + Reads<Vec<u8>>
{
    /// Appended to a `SELECT` that reads a row it is about to change, so that a concurrent
    /// transaction waits for this one: `FOR UPDATE` on PostgreSQL, nothing on SQLite, where a
    /// write transaction already holds the one write lock.
    const FOR_UPDATE: &'static str;

    /// Appended to a `SELECT` of rows to take, so that rows another transaction holds are passed
    /// over rather than waited for: `FOR UPDATE SKIP LOCKED` on PostgreSQL, nothing on SQLite.
    const SKIP_LOCKED: &'static str;

    /// Whether the database has one writer (SQLite), so that a statement that reads rows and then
    /// changes them must take the write lock before it reads, in a `BEGIN IMMEDIATE` transaction:
    /// alone, it would start as a reader and could find at its first write that another process
    /// wrote since. With row locks (PostgreSQL) such a statement runs alone.
    const ONE_WRITER: bool;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
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
    pub(crate) fn get<T>(&self, column: &str) -> Result<T>
    where
        DB: Reads<T>,
    {
        Ok(DB::read(&self.0, column)?)
    }
}

/// A store the shared SQL is implemented for: its database, pools, settings and wake-ups. Write
/// transactions are [`InboxStore::begin_write`] (`BEGIN IMMEDIATE` on SQLite's one writer).
pub(crate) trait SqlStore: InboxStore<Db: Dialect> + 'static {
    /// The settings (the clock, the payload limit).
    fn settings(&self) -> &StoreConfig;

    /// The pool to read from (SQLite: its read-only connections).
    fn reader(&self) -> &Pool<Self::Db>;

    /// The pool to write with outside a transaction (SQLite: its one writer).
    fn writer(&self) -> &Pool<Self::Db>;

    /// Tells waiting workers and relays that work became visible on these queues: in this process
    /// and, on PostgreSQL, in others by `NOTIFY`.
    fn announce(&self, visible: impl IntoIterator<Item = (String, TaskKind)>);

    /// Inserts prepared outbox messages inside a transaction (PostgreSQL: one array statement);
    /// a taken idempotency key fails it.
    fn insert_messages<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        rows: &'a [MessageRow],
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Enqueues tasks inside a transaction; returns their ids.
    fn enqueue<'a>(
        conn: &'a mut <Self::Db as Database>::Connection,
        tasks: &'a [NewTask],
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<i64>>>;
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

/// A backend's embedded migrations, `(version, description, SQL)` each, applied in order.
/// The versions of `migrator`'s migrations missing from `applied` (the versions a database
/// recorded as applied successfully).
pub(crate) fn pending(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> Vec<i64> {
    migrator
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect()
}

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
