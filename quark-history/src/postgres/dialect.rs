//! What the shared SQL asks of PostgreSQL ([`Dialect`]): row locks, arrays for lists, the
//! gap-safe horizon of the global order and the one-statement read of many histories.

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::{Connection, Postgres};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::journal::GlobalPosition;
use crate::sql::journal::EVENT_COLUMNS;
use crate::sql::{Dialect, Row, Stmt};
use crate::store::Backend;
use crate::transaction::{StoreTx, TxInner};

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// The schema's migrations, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
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
    (
        12,
        "worker incarnations",
        include_str!("../../migrations/postgres/0012_worker_incarnations.sql"),
    ),
    (
        13,
        "traceparent",
        include_str!("../../migrations/postgres/0013_traceparent.sql"),
    ),
    (
        14,
        "streams",
        include_str!("../../migrations/postgres/0014_streams.sql"),
    ),
    (
        15,
        "projections",
        include_str!("../../migrations/postgres/0015_projections.sql"),
    ),
    (
        16,
        "subject keys",
        include_str!("../../migrations/postgres/0016_subject_keys.sql"),
    ),
    (
        17,
        "stream retention",
        include_str!("../../migrations/postgres/0017_stream_retention.sql"),
    ),
    (
        18,
        "worker load",
        include_str!("../../migrations/postgres/0018_worker_load.sql"),
    ),
    (
        19,
        "placement sketches",
        include_str!("../../migrations/postgres/0019_placement_sketches.sql"),
    ),
    (
        20,
        "leaders",
        include_str!("../../migrations/postgres/0020_leaders.sql"),
    ),
    (
        21,
        "catalog",
        include_str!("../../migrations/postgres/0021_catalog.sql"),
    ),
    (
        22,
        "api tokens",
        include_str!("../../migrations/postgres/0022_api_tokens.sql"),
    ),
    (
        23,
        "request answers",
        include_str!("../../migrations/postgres/0023_request_answers.sql"),
    ),
    (
        24,
        "token namespaces",
        include_str!("../../migrations/postgres/0024_token_namespaces.sql"),
    ),
    (
        25,
        "two-phase commit decisions",
        include_str!("../../migrations/postgres/0025_two_phase.sql"),
    ),
    (
        26,
        "shard map",
        include_str!("../../migrations/postgres/0026_shard_map.sql"),
    ),
];

/// The advisory lock that migration runs take turns on ("quark_mi" in ASCII). Advisory locks are
/// per database, so databases on one server migrate independently.
const MIGRATION_LOCK: i64 = 0x7175_6172_6b5f_6d69;

impl Dialect for Postgres {
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const GENERIC_PLANS: bool = true;
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const MODIFYING_CTE: bool = true;
    const TX_TEXT: &'static str = "tx_id::text";
    const ONE_WRITER: bool = false;
    const BACKEND: Backend = Backend::Postgres;
    const MIGRATIONS: &'static [(i64, &'static str, &'static str)] = MIGRATIONS;
    fn migrate(pool: &sqlx::PgPool, mut migrator: Migrator) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // The lock is a session's, so it is taken on a connection of the migration's own and
            // released by closing it, whatever happens: sqlx's own lock, taken on a pooled
            // connection, stays with that connection when a migration fails or the call is
            // cancelled, and every later migration, in any process, then waits for it forever.
            // Processes that come second wait on the lock, then find nothing left to do.
            let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
            let run = async {
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut conn)
                    .await?;
                migrator.set_locking(false);
                // `run_direct`: see the SQLite dialect.
                migrator.run_direct(None, &mut conn, false).await?;
                Ok::<_, Error>(())
            }
            .await;
            // Ending the session releases the lock; if the connection is broken, the server ends
            // the session (and the lock) when it notices.
            let _ = conn.close().await;
            run
        })
    }

    const MIGRATIONS_TRACKED: &'static str =
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS tracked";
    const OVERRIDING_ID: &'static str = " OVERRIDING SYSTEM VALUE";
    const LEAST: &'static str = "LEAST";
    const GREATEST: &'static str = "GREATEST";
    const PROMOTE: &'static str = "SELECT quark_concurrency_promote($1, $2)";

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn in_list(column: &str, param: usize) -> String {
        format!("{column} = ANY(${param})")
    }

    fn bind_texts(stmt: Stmt<Self>, items: Vec<String>) -> Stmt<Self> {
        stmt.bind(items)
    }

    fn bind_ids(stmt: Stmt<Self>, ids: Vec<i64>) -> Stmt<Self> {
        stmt.bind(ids)
    }

    fn read_texts(row: &Row<Self>, column: &str) -> Result<Vec<String>> {
        row.get(column)
    }

    fn read_all(after: GlobalPosition, limit: u32) -> Stmt<Self> {
        // Every transaction older than the oldest one still running has ended, so the events at
        // or below that horizon are final: reading them in (transaction, position) order and
        // resuming from the last one read never skips an event that commits later.
        Stmt::new(sql(format!(
            "SELECT tx_id::text AS tx, global_position, {EVENT_COLUMNS} FROM history \
             WHERE (tx_id, global_position) > ($1::text::xid8, $2) \
             AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tx_id, global_position LIMIT $3"
        )))
        .bind(after.tx.to_string())
        .bind(after.position)
        .bind(i64::from(limit))
    }

    fn read_histories(from: &[(String, u64)]) -> Option<Stmt<Self>> {
        // One index range per instance (a plain join lets the planner hash the whole history).
        let stmt = Stmt::new(sql(format!(
            "SELECT u.ord, h.* FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS u(id, from_seq, ord), \
             LATERAL (SELECT {EVENT_COLUMNS} FROM history WHERE instance_id = u.id AND seq >= u.from_seq \
             ORDER BY seq) AS h ORDER BY u.ord, h.seq"
        )))
        .bind(from.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>())
        .bind(from.iter().map(|(_, seq)| *seq as i64).collect::<Vec<_>>());
        Some(stmt)
    }

    fn store_tx(tx: sqlx::Transaction<'static, Self>, clock: Arc<dyn Clock>) -> StoreTx {
        StoreTx::from_postgres(tx, clock)
    }

    fn store_tx_conn(tx: &mut StoreTx) -> Result<&mut sqlx::PgConnection> {
        tx.postgres()
    }

    fn hold_shard_map(
        pool: &sqlx::PgPool,
        key: (i32, i32),
        exclusive: bool,
        map: String,
    ) -> BoxFuture<'static, Result<Option<crate::shards::MapHold>>> {
        super::shard_hold::hold(pool.connect_options().as_ref().clone(), key, exclusive, map)
    }

    fn from_store_tx(tx: StoreTx) -> Result<sqlx::Transaction<'static, Self>> {
        match tx.inner {
            TxInner::Postgres(tx) => Ok(tx),
            #[allow(unreachable_patterns)]
            _ => Err(Error::Invalid(
                "a transaction of another store was handed to the PostgreSQL store".into(),
            )),
        }
    }
}
