//! Workers' registrations, for both databases: the plain heartbeat that registers or refreshes a
//! worker with its load, the listing, and runs of workers ([`Incarnation`]s): registering a run,
//! which takes back the leases of a dead run of the same id at once; its heartbeat, which finds
//! out when another run took the id over; and reaping, which releases the leases of workers whose
//! heartbeats stopped after two of their intervals rather than a whole lease.
//!
//! Releasing a lease here is what its expiry would do, sooner: the task's `visible_at` becomes
//! now. Its `attempts` stays, so the next claim is a new attempt and the old holder's completion,
//! failure and extension (all fenced on the attempt) are refused from then on.

use std::time::Duration;

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::queue::{Incarnation, Pressure, Reaped, Registered, TaskKind, WorkerInfo, WorkerLoad};

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// The columns a heartbeat's [`WorkerLoad`] is written to, in [`bind_load`]'s order.
pub(crate) const LOAD_COLUMNS: &str = "pressure, rss_bytes, memory_limit, cached_instances, cached_bytes, live_entities, entity_bytes";

/// `$first, $first+1, ...`, one placeholder per load column.
pub(crate) fn load_params(first: usize) -> String {
    (0..LOAD_COLUMNS.split(", ").count())
        .map(|i| format!("${}", first + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `column = excluded.column` for every load column, for an upsert.
fn load_from_excluded() -> String {
    LOAD_COLUMNS
        .split(", ")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Binds `load`'s figures in [`LOAD_COLUMNS`]' order.
pub(crate) fn bind_load<DB: Dialect>(stmt: Stmt<DB>, load: &WorkerLoad) -> Stmt<DB> {
    stmt.bind(i64::from(load.pressure.as_i16()))
        .bind(signed(load.rss_bytes))
        .bind(signed(load.memory_limit))
        .bind(signed(load.cached_instances))
        .bind(signed(load.cached_bytes))
        .bind(signed(load.live_entities))
        .bind(signed(load.entity_bytes))
}

/// Reads a row's load columns.
pub(crate) fn read_load<DB: Dialect>(row: &super::Row<DB>) -> Result<WorkerLoad> {
    let unsigned = |column: &str| -> Result<u64> { Ok(row.get::<i64>(column)?.max(0) as u64) };
    Ok(WorkerLoad {
        pressure: Pressure::from_i16(row.get::<i64>("pressure")?.clamp(0, 3) as i16),
        rss_bytes: unsigned("rss_bytes")?,
        memory_limit: unsigned("memory_limit")?,
        cached_instances: unsigned("cached_instances")?,
        cached_bytes: unsigned("cached_bytes")?,
        live_entities: unsigned("live_entities")?,
        entity_bytes: unsigned("entity_bytes")?,
    })
}

/// Registers `run` as the holder of `info.id`. A registration of another run is replaced if it is
/// dead: its heartbeat is older than twice its interval, or it comes from the same scope (whose
/// lock the caller holds, so no process there still has the id). Otherwise the id is in use.
pub(crate) async fn register<S: SqlStore>(
    store: &S,
    info: WorkerInfo,
    run: &Incarnation,
) -> Result<Registered> {
    let now = store.settings().clock.now();
    let mut tx = store.begin_write().await?;
    let row = Stmt::<S::Db>::new(sql(format!(
        "SELECT incarnation, scope, heartbeat_at, heartbeat_interval FROM workers WHERE id = $1{}",
        S::Db::FOR_UPDATE
    )))
    .bind(info.id.as_str())
    .fetch_optional(&mut tx)
    .await?;
    let mut registered = Registered::default();
    let mut visible = Vec::new();
    if let Some(row) = row {
        let token: Option<String> = row.get("incarnation")?;
        if token.as_deref() != Some(run.token.as_str()) {
            let scope: Option<String> = row.get("scope")?;
            // A registration from before incarnations has no interval: judge it by ours.
            let interval = row
                .get::<Option<i64>>("heartbeat_interval")?
                .map_or(run.heartbeat, |us| Duration::from_micros(us.max(0) as u64));
            let expires = Timestamp::from_micros(row.get("heartbeat_at")?) + interval * 2;
            if expires > now && scope.as_deref() != Some(run.scope.as_str()) {
                return Err(Error::WorkerIdInUse {
                    worker_id: info.id,
                    scope: scope.unwrap_or_else(|| "a worker without incarnations".into()),
                    expires_in: expires.since(now),
                });
            }
            registered.replaced = true;
            visible = release::<S::Db>(&mut tx, &info.id, now).await?;
            registered.reclaimed = visible.len() as u64;
        }
    }
    let stmt = Stmt::<S::Db>::new(sql(format!(
        "INSERT INTO workers (id, queues, labels, heartbeat_at, incarnation, scope, heartbeat_interval, \
         {LOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, {}) \
         ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, labels = excluded.labels, \
         heartbeat_at = excluded.heartbeat_at, incarnation = excluded.incarnation, \
         scope = excluded.scope, heartbeat_interval = excluded.heartbeat_interval, {}",
        load_params(8),
        load_from_excluded()
    )))
    .bind(info.id.as_str());
    let stmt = S::Db::bind_texts(stmt, info.queues)
        .bind(info.labels)
        .bind(now.as_micros())
        .bind(run.token.as_str())
        .bind(run.scope.as_str())
        .bind(micros(run.heartbeat));
    bind_load(stmt, &info.load).execute(&mut tx).await?;
    tx.commit().await?;
    store.announce(visible);
    Ok(registered)
}

/// The heartbeat of a registered run. A registration that is gone (reaped while this process
/// stood still) is written again; one that another run holds means this run was taken over.
pub(crate) async fn heartbeat<S: SqlStore>(
    store: &S,
    info: WorkerInfo,
    run: &Incarnation,
) -> Result<()> {
    let now = store.settings().clock.now();
    let mut conn = store.writer().acquire().await?;
    let set_load = LOAD_COLUMNS
        .split(", ")
        .enumerate()
        .map(|(i, column)| format!("{column} = ${}", i + 6))
        .collect::<Vec<_>>()
        .join(", ");
    let stmt = Stmt::<S::Db>::new(sql(format!(
        "UPDATE workers SET queues = $2, labels = $3, heartbeat_at = $4, {set_load} \
         WHERE id = $1 AND incarnation = $5"
    )))
    .bind(info.id.as_str());
    let stmt = S::Db::bind_texts(stmt, info.queues.clone())
        .bind(info.labels.as_str())
        .bind(now.as_micros())
        .bind(run.token.as_str());
    let updated = bind_load(stmt, &info.load).execute(&mut conn).await?;
    if updated > 0 {
        return Ok(());
    }
    let stmt = Stmt::<S::Db>::new(sql(format!(
        "INSERT INTO workers (id, queues, labels, heartbeat_at, incarnation, scope, heartbeat_interval, \
         {LOAD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, {}) ON CONFLICT (id) DO NOTHING",
        load_params(8)
    )))
    .bind(info.id.as_str());
    let stmt = S::Db::bind_texts(stmt, info.queues)
        .bind(info.labels)
        .bind(now.as_micros())
        .bind(run.token.as_str())
        .bind(run.scope.as_str())
        .bind(micros(run.heartbeat));
    let inserted = bind_load(stmt, &info.load).execute(&mut conn).await?;
    if inserted == 0 {
        return Err(Error::Superseded { worker_id: info.id });
    }
    Ok(())
}

/// Removes the registration of `run` (a graceful stop), and only its: a run that was taken over
/// leaves its successor's alone.
pub(crate) async fn retire<S: SqlStore>(
    store: &S,
    worker_id: &str,
    run: &Incarnation,
) -> Result<()> {
    Stmt::<S::Db>::new("DELETE FROM workers WHERE id = $1 AND incarnation = $2")
        .bind(worker_id)
        .bind(run.token.as_str())
        .execute(&mut *store.writer().acquire().await?)
        .await?;
    Ok(())
}

/// The condition "this registration's heartbeats stopped two intervals ago", at `$n`.
fn stopped(param: usize) -> String {
    format!("heartbeat_interval IS NOT NULL AND heartbeat_at + 2 * heartbeat_interval < ${param}")
}

/// Removes the registrations of runs whose heartbeats stopped and releases their leases. Runs
/// registered without an interval (by [`Store::heartbeat_worker`](crate::Store::heartbeat_worker))
/// keep their leases until they expire.
pub(crate) async fn reap<S: SqlStore>(store: &S, caller: &str) -> Result<Vec<Reaped>> {
    let now = store.settings().clock.now();
    // Most of the time nobody died: a read on the small workers table, no write lock.
    let dead = Stmt::<S::Db>::new(sql(format!(
        "SELECT id FROM workers WHERE {} AND id <> $2",
        stopped(1)
    )))
    .bind(now.as_micros())
    .bind(caller)
    .fetch_all(&mut *store.reader().acquire().await?)
    .await?;
    if dead.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = store.begin_write().await?;
    let mut reaped = Vec::new();
    let mut visible = Vec::new();
    for row in dead {
        let worker_id: String = row.get("id")?;
        // Checked again under the write (and the row's) lock: a worker that heartbeated since it
        // was read stays, and of two reapers only one releases.
        let gone = Stmt::<S::Db>::new(sql(format!(
            "DELETE FROM workers WHERE id = $1 AND {}",
            stopped(2)
        )))
        .bind(worker_id.as_str())
        .bind(now.as_micros())
        .execute(&mut tx)
        .await?;
        if gone == 0 {
            continue;
        }
        let released = release::<S::Db>(&mut tx, &worker_id, now).await?;
        reaped.push(Reaped {
            worker_id,
            released: released.len() as u64,
        });
        visible.extend(released);
    }
    tx.commit().await?;
    store.announce(visible);
    Ok(reaped)
}

/// Expires every lease `worker_id` holds; returns the queue and kind of each.
///
/// The rows are locked in id order, as a commit locks the tasks it settles: an update that
/// locked them in scan order could deadlock with a commit holding some of them (PostgreSQL).
async fn release<DB: Dialect>(
    conn: &mut DB::Connection,
    worker_id: &str,
    now: Timestamp,
) -> Result<Vec<(String, TaskKind)>> {
    Stmt::<DB>::new(sql(format!(
        "UPDATE tasks SET visible_at = $2 WHERE id IN (SELECT id FROM tasks \
         WHERE lease_owner = $1 AND visible_at > $2 ORDER BY id{}) \
         RETURNING queue, kind",
        DB::FOR_UPDATE
    )))
    .bind(worker_id)
    .bind(now.as_micros())
    .fetch_all(conn)
    .await?
    .iter()
    .map(|row| {
        let kind: String = row.get("kind")?;
        Ok((row.get("queue")?, kind.parse().map_err(Error::Invalid)?))
    })
    .collect()
}

/// Registers or refreshes a worker.
pub(crate) async fn heartbeat_worker<S: SqlStore>(store: &S, info: WorkerInfo) -> Result<()> {
    let now = store.settings().clock.now();
    let update = load_from_excluded();
    let stmt = Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
        "INSERT INTO workers (id, queues, labels, heartbeat_at, {}) VALUES ($1, $3, $2, $4, {}) \
         ON CONFLICT (id) DO UPDATE SET queues = excluded.queues, labels = excluded.labels, \
         heartbeat_at = excluded.heartbeat_at, {update}",
        LOAD_COLUMNS,
        load_params(5)
    )))
    .bind(info.id)
    .bind(info.labels);
    let stmt = S::Db::bind_texts(stmt, info.queues).bind(now.as_micros());
    bind_load(stmt, &info.load)
        .execute(&mut *store.writer().acquire().await?)
        .await?;
    Ok(())
}

/// Removes a worker's registration.
pub(crate) async fn deregister_worker<S: SqlStore>(store: &S, worker_id: &str) -> Result<()> {
    Stmt::<S::Db>::new("DELETE FROM workers WHERE id = $1")
        .bind(worker_id)
        .execute(&mut *store.writer().acquire().await?)
        .await?;
    Ok(())
}

/// The registered workers, by id.
pub(crate) async fn list_workers<S: SqlStore>(store: &S) -> Result<Vec<WorkerInfo>> {
    Stmt::<S::Db>::new(sqlx::AssertSqlSafe(format!(
        "SELECT id, queues, labels, heartbeat_at, {} FROM workers ORDER BY id",
        LOAD_COLUMNS
    )))
    .fetch_all(&mut *store.reader().acquire().await?)
    .await?
    .iter()
    .map(|row: &Row<S::Db>| {
        Ok(WorkerInfo {
            id: row.get("id")?,
            queues: S::Db::read_texts(row, "queues")?,
            labels: row.get("labels")?,
            heartbeat_at: Timestamp::from_micros(row.get("heartbeat_at")?),
            load: read_load(row)?,
        })
    })
    .collect()
}
