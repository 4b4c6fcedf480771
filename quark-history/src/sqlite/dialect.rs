//! What the shared SQL asks of SQLite ([`Dialect`]): no row locks (every write transaction holds
//! the one writer), JSON arrays for lists, and a global order that needs no horizon.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::Sqlite;
use sqlx::migrate::Migrator;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::journal::GlobalPosition;
use crate::sql::journal::EVENT_COLUMNS;
use crate::sql::{Dialect, Row, Stmt};
use crate::store::Backend;
use crate::transaction::{StoreTx, TxInner};

/// The schema's migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
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
    (
        7,
        "claim ready_at",
        include_str!("../../migrations/sqlite/0007_claim_ready_at.sql"),
    ),
    (
        9,
        "worker incarnations",
        include_str!("../../migrations/sqlite/0009_worker_incarnations.sql"),
    ),
    (
        10,
        "traceparent",
        include_str!("../../migrations/sqlite/0010_traceparent.sql"),
    ),
    (
        11,
        "streams",
        include_str!("../../migrations/sqlite/0011_streams.sql"),
    ),
    (
        12,
        "projections",
        include_str!("../../migrations/sqlite/0012_projections.sql"),
    ),
    (
        13,
        "subject keys",
        include_str!("../../migrations/sqlite/0013_subject_keys.sql"),
    ),
    (
        14,
        "stream retention",
        include_str!("../../migrations/sqlite/0014_stream_retention.sql"),
    ),
    (
        15,
        "worker load",
        include_str!("../../migrations/sqlite/0015_worker_load.sql"),
    ),
    (
        16,
        "placement sketches",
        include_str!("../../migrations/sqlite/0016_placement_sketches.sql"),
    ),
    (
        17,
        "leaders",
        include_str!("../../migrations/sqlite/0017_leaders.sql"),
    ),
    (
        18,
        "catalog",
        include_str!("../../migrations/sqlite/0018_catalog.sql"),
    ),
    (
        19,
        "api tokens",
        include_str!("../../migrations/sqlite/0019_api_tokens.sql"),
    ),
    (
        20,
        "request answers",
        include_str!("../../migrations/sqlite/0020_request_answers.sql"),
    ),
    (
        21,
        "token namespaces",
        include_str!("../../migrations/sqlite/0021_token_namespaces.sql"),
    ),
    (
        22,
        "two-phase commit decisions",
        include_str!("../../migrations/sqlite/0022_two_phase.sql"),
    ),
    (
        23,
        "shard map",
        include_str!("../../migrations/sqlite/0023_shard_map.sql"),
    ),
];

/// A JSON array of `items`, for [`Dialect::in_list`].
fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

impl Dialect for Sqlite {
    // Every write transaction is `BEGIN IMMEDIATE` on the one writer: it holds every row already.
    const FOR_UPDATE: &'static str = "";
    const GENERIC_PLANS: bool = false;
    const SKIP_LOCKED: &'static str = "";
    const MODIFYING_CTE: bool = false;
    const TX_TEXT: &'static str = "'0'";
    const ONE_WRITER: bool = true;
    const BACKEND: Backend = Backend::Sqlite;
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = MIGRATIONS;
    fn migrate(pool: &sqlx::SqlitePool, migrator: Migrator) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Every process that opens the file migrates it, and sqlx takes no lock on SQLite:
            // two processes started together both found migration 1 pending and one of them died
            // on "table instances already exists". All of it runs in one `BEGIN IMMEDIATE`
            // transaction, so the processes take turns on the write lock, and the ones after the
            // first read the migrations table only once they hold it, and find nothing to do
            // (sqlx's own transaction per migration becomes a savepoint inside it). SQLite's DDL
            // is transactional, so a failed run leaves nothing half-applied.
            let mut tx = loop {
                match pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(Error::from)
                {
                    Ok(tx) => break tx,
                    // The busy timeout ran out while another process migrates a large database:
                    // wait for it again rather than give up.
                    Err(Error::Transient(e)) => {
                        tracing::info!(error = %e, "waiting for another process's migrations")
                    }
                    Err(e) => return Err(e),
                }
            };
            // `run_direct`, sqlx's `run` on a connection: `run` itself asks for an `Acquire` that a
            // boxed future cannot name (sqlx's own comment on `run_direct` says as much).
            migrator.run_direct(None, &mut *tx, false).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    const MIGRATIONS_TRACKED: &'static str = "SELECT EXISTS (SELECT 1 FROM sqlite_master \
         WHERE type = 'table' AND name = '_sqlx_migrations') AS tracked";
    const OVERRIDING_ID: &'static str = "";
    const LEAST: &'static str = "min";
    const GREATEST: &'static str = "max";
    // The statement of the delete trigger: writers are serialized, so the count is exact.
    const PROMOTE: &'static str = "UPDATE tasks SET held = NULL, visible_at = held_visible_at, \
        held_visible_at = NULL WHERE id IN (SELECT id FROM tasks \
          WHERE concurrency_key = $1 AND held = 'concurrency' ORDER BY priority DESC, id \
          LIMIT max(0, $2 - (SELECT count(*) FROM tasks WHERE concurrency_key = $1 AND held IS NULL)))";

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn in_list(column: &str, param: usize) -> String {
        format!("{column} IN (SELECT value FROM json_each(${param}))")
    }

    fn bind_texts(stmt: Stmt<Self>, items: Vec<String>) -> Stmt<Self> {
        stmt.bind(json_list(&items))
    }

    fn bind_ids(stmt: Stmt<Self>, ids: Vec<i64>) -> Stmt<Self> {
        stmt.bind(json_list(&ids))
    }

    fn read_texts(row: &Row<Self>, column: &str) -> Result<Vec<String>> {
        serde_json::from_str(&row.get::<String>(column)?).map_err(|e| Error::Invalid(e.to_string()))
    }

    fn read_all(after: GlobalPosition, limit: u32) -> Stmt<Self> {
        // Writers are serialized and a reader sees only committed transactions, so positions
        // become visible in order and reading past the last one seen skips nothing.
        Stmt::new(sqlx::AssertSqlSafe(format!(
            "SELECT '0' AS tx, global_position, {EVENT_COLUMNS} FROM history \
             WHERE global_position > $1 ORDER BY global_position LIMIT $2"
        )))
        .bind(after.position)
        .bind(i64::from(limit))
    }

    fn read_histories(_: &[(String, u64)]) -> Option<Stmt<Self>> {
        // Reads are local: one statement per history costs no round trips.
        None
    }

    fn store_tx(tx: sqlx::Transaction<'static, Self>, clock: Arc<dyn Clock>) -> StoreTx {
        StoreTx::from_sqlite(tx, clock)
    }

    fn store_tx_conn(tx: &mut StoreTx) -> Result<&mut sqlx::SqliteConnection> {
        tx.sqlite()
    }

    /// One process has a SQLite database: nothing to hold against.
    fn hold_shard_map(
        _pool: &sqlx::SqlitePool,
        _key: (i32, i32),
        _exclusive: bool,
        _map: String,
    ) -> BoxFuture<'static, Result<Option<crate::shards::MapHold>>> {
        Box::pin(async { Ok(Some(crate::shards::MapHold::new(Default::default(), None))) })
    }

    fn from_store_tx(tx: StoreTx) -> Result<sqlx::Transaction<'static, Self>> {
        match tx.inner {
            TxInner::Sqlite(tx) => Ok(tx),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Invalid(
                "a transaction of another store was handed to the SQLite store".into(),
            )),
        }
    }
}
