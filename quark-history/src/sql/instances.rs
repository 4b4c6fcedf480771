//! Instances, for both databases: created with their first event and first orchestration task,
//! read one at a time and listed (a blocked one with the dead-lettered turn that blocks it), and
//! counted by status. The rows are decoded here once. What differs is how a batch of
//! new instances is inserted ([`SqlStore::insert_instances`]: one `UNNEST` statement on
//! PostgreSQL, a few statements per instance on SQLite).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::event::SCHEMA_VERSION;
use crate::instance::{
    BlockedTurn, Created, IdReusePolicy, InstanceFilter, InstanceRecord, InstanceStatus,
    NewInstance,
};
use crate::journal::GENESIS;
use crate::queue::{NewTask, TaskKind};
use crate::rows::{EncodedEvent, check_size, encode_events, payload};

/// The columns an instance is decoded from ([`instance_from_row`]).
pub(crate) const INSTANCE_COLUMNS: &str = "id, instance_type, version, status, input_codec, input, \
     output_codec, output, parent_id, queue, next_seq, history_bytes, affinity, created_at, updated_at";

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// An instance from a row of [`INSTANCE_COLUMNS`].
pub(crate) fn instance_from_row<DB: Dialect>(row: &Row<DB>) -> Result<InstanceRecord> {
    let status: String = row.get("status")?;
    let output = match row.get::<Option<i16>>("output_codec")? {
        Some(codec) => Some(payload(codec, row.get("output")?)?),
        None => None,
    };
    Ok(InstanceRecord {
        id: row.get("id")?,
        instance_type: row.get("instance_type")?,
        version: row.get::<i32>("version")? as u32,
        status: status.parse().map_err(Error::Invalid)?,
        input: payload(row.get("input_codec")?, row.get("input")?)?,
        output,
        parent_id: row.get("parent_id")?,
        queue: row.get("queue")?,
        history_len: row.get::<i64>("next_seq")? as u64 - 1,
        history_bytes: row.get::<i64>("history_bytes")? as u64,
        affinity: row.get("affinity")?,
        created_at: Timestamp::from_micros(row.get("created_at")?),
        updated_at: Timestamp::from_micros(row.get("updated_at")?),
        blocked: None,
    })
}

/// Fills in [`InstanceRecord::blocked`] for the blocked instances among `records`: the latest
/// dead-lettered turn of each (a turn that new events enqueued while it was blocked may have
/// failed again since). One statement, and none when no record is blocked.
async fn attach_blocked<DB: Dialect>(
    conn: &mut DB::Connection,
    records: &mut [InstanceRecord],
) -> Result<()> {
    let ids: Vec<String> = records
        .iter()
        .filter(|r| r.status == InstanceStatus::Blocked)
        .map(|r| r.id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let stmt = Stmt::<DB>::new(sql(format!(
        "SELECT id, instance_id, error, died_at FROM dead_tasks \
         WHERE kind = 'orchestration' AND {} ORDER BY died_at, id",
        DB::in_list("instance_id", 1)
    )));
    let mut latest: HashMap<String, BlockedTurn> = HashMap::new();
    for row in DB::bind_texts(stmt, ids).fetch_all(conn).await? {
        let turn = BlockedTurn {
            task_id: row.get("id")?,
            error: row.get("error")?,
            since: Timestamp::from_micros(row.get("died_at")?),
        };
        latest.insert(row.get("instance_id")?, turn);
    }
    for record in records {
        if record.status == InstanceStatus::Blocked {
            record.blocked = latest.remove(&record.id);
        }
    }
    Ok(())
}

/// Inserts new instances inside a transaction, a few statements each: the instance row (unless
/// its id is taken), its `WorkflowStarted` event (`firsts`) and its first orchestration task.
/// Returns the ids it inserted. The default of [`SqlStore::insert_instances`].
pub(crate) async fn insert_one_by_one<S: SqlStore>(
    conn: &mut <S::Db as sqlx::Database>::Connection,
    news: &[NewInstance],
    firsts: &[EncodedEvent],
    now: Timestamp,
) -> Result<Vec<String>> {
    let mut inserted = Vec::new();
    for (new, first) in news.iter().zip(firsts) {
        let row = Stmt::<S::Db>::new(
            "INSERT INTO instances (id, instance_type, version, status, input_codec, input, \
             parent_id, queue, next_seq, history_bytes, last_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, 2, $8, $9, $10, $10) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(new.id.as_str())
        .bind(new.instance_type.as_str())
        .bind(new.version as i32)
        .bind(new.input.codec().as_i16())
        .bind(new.input.as_bytes().to_vec())
        .bind(new.parent.as_ref().map(|p| p.instance_id.clone()))
        .bind(new.queue.as_str())
        .bind(first.bytes.len() as i64)
        .bind(first.hash.to_vec())
        .bind(now.as_micros())
        .fetch_optional(&mut *conn)
        .await?;
        if row.is_none() {
            continue;
        }
        Stmt::<S::Db>::new(
            "INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, \
             recorded_at, hash) VALUES ($1, 1, 'WorkflowStarted', $2, $3, $4, $5, $6)",
        )
        .bind(new.id.as_str())
        .bind(SCHEMA_VERSION)
        .bind(first.codec)
        .bind(first.bytes.clone())
        .bind(now.as_micros())
        .bind(first.hash.to_vec())
        .execute(&mut *conn)
        .await?;
        let mut task =
            NewTask::orchestration(new.queue.clone(), new.id.clone()).priority(new.priority);
        task.visible_at = new.start_at;
        task.traceparent = new.traceparent.clone();
        super::enqueue::enqueue::<S>(&mut *conn, std::slice::from_ref(&task), now).await?;
        inserted.push(new.id.clone());
    }
    Ok(inserted)
}

/// Creates instances, all of them or none (with [`IdReusePolicy::RejectDuplicate`], a taken id
/// fails the batch).
pub(crate) async fn create_instances<S: SqlStore>(
    store: &S,
    news: Vec<NewInstance>,
    policy: IdReusePolicy,
) -> Result<Vec<Created>> {
    crate::instance::check_distinct(&news)?;
    if news.is_empty() {
        return Ok(Vec::new());
    }
    let config = store.settings();
    let now = config.clock.now();
    let mut firsts = Vec::with_capacity(news.len());
    for new in &news {
        check_size(config, new.input.len())?;
        crate::rows::check_traceparent(new.traceparent.as_deref())?;
        let mut encoded = encode_events(config, GENESIS, 1, &[new.started_event()])?;
        firsts.push(encoded.remove(0));
    }
    let (inserted, mut existing) = if news.len() == 1 && S::CREATES_IN_ONE_STATEMENT {
        // One statement, atomic by itself: one round trip, no transaction around it.
        let mut conn = store.writer().acquire().await?;
        insert_or_read::<S>(&mut conn, &news, &firsts, policy, now).await?
    } else {
        // A refused batch rolls back with the transaction, dropped on the error.
        let mut tx = store.begin_write().await?;
        let done = insert_or_read::<S>(&mut tx, &news, &firsts, policy, now).await?;
        tx.commit().await?;
        done
    };
    let wake: BTreeSet<(String, TaskKind)> = news
        .iter()
        .filter(|n| inserted.contains(&n.id) && n.start_at.is_none_or(|at| at <= now))
        .map(|n| (n.queue.clone(), TaskKind::Orchestration))
        .collect();
    store.announce(wake);
    store.created(
        news.iter()
            .zip(&firsts)
            .filter(|(n, _)| inserted.contains(&n.id))
            .map(|(n, first)| (n.id.as_str(), first.hash)),
    );
    news.into_iter()
        .zip(firsts)
        .map(|(new, first)| {
            if inserted.contains(&new.id) {
                return Ok(Created {
                    instance: new.into_record(first.bytes.len() as u64, now),
                    created: true,
                });
            }
            // Deleted between the two statements: report the race as a conflict to retry.
            let instance = existing
                .remove(&new.id)
                .ok_or_else(|| Error::DuplicateInstance { id: new.id.clone() })?;
            Ok(Created {
                instance,
                created: false,
            })
        })
        .collect()
}

/// Inserts what it can of `news`; then fails on a taken id under `RejectDuplicate`, or reads the
/// instances that hold the taken ids.
async fn insert_or_read<S: SqlStore>(
    conn: &mut <S::Db as sqlx::Database>::Connection,
    news: &[NewInstance],
    firsts: &[EncodedEvent],
    policy: IdReusePolicy,
    now: Timestamp,
) -> Result<(HashSet<String>, HashMap<String, InstanceRecord>)> {
    let inserted: HashSet<String> = S::insert_instances(&mut *conn, news, firsts, now)
        .await?
        .into_iter()
        .collect();
    let taken: Vec<String> = news
        .iter()
        .filter(|n| !inserted.contains(&n.id))
        .map(|n| n.id.clone())
        .collect();
    let mut existing = HashMap::new();
    if taken.is_empty() {
        return Ok((inserted, existing));
    }
    if policy == IdReusePolicy::RejectDuplicate {
        return Err(Error::DuplicateInstance {
            id: taken[0].clone(),
        });
    }
    let stmt = Stmt::<S::Db>::new(sql(format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE {}",
        S::Db::in_list("id", 1)
    )));
    let mut records = S::Db::bind_texts(stmt, taken)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(instance_from_row)
        .collect::<Result<Vec<_>>>()?;
    attach_blocked::<S::Db>(conn, &mut records).await?;
    existing.extend(records.into_iter().map(|r| (r.id.clone(), r)));
    Ok((inserted, existing))
}

/// One instance, or `None`.
pub(crate) async fn get_instance<S: SqlStore>(
    store: &S,
    id: &str,
) -> Result<Option<InstanceRecord>> {
    let mut conn = store.reader().acquire().await?;
    let row = Stmt::<S::Db>::new(sql(format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(record) = row.as_ref().map(instance_from_row).transpose()? else {
        return Ok(None);
    };
    let mut records = [record];
    attach_blocked::<S::Db>(&mut conn, &mut records).await?;
    let [record] = records;
    Ok(Some(record))
}

/// How many instances have `status`, per queue (queues without one are left out).
pub(crate) async fn count_instances<S: SqlStore>(
    store: &S,
    status: InstanceStatus,
) -> Result<BTreeMap<String, u64>> {
    Stmt::<S::Db>::new(
        "SELECT queue, COUNT(*) AS n FROM instances WHERE status = $1 GROUP BY queue",
    )
    .bind(status.as_str())
    .fetch_all(&mut *store.reader().acquire().await?)
    .await?
    .iter()
    .map(|row| Ok((row.get("queue")?, row.get::<i64>("n")? as u64)))
    .collect()
}

/// Instances matching `filter`, newest first.
pub(crate) async fn list_instances<S: SqlStore>(
    store: &S,
    filter: InstanceFilter,
) -> Result<Vec<InstanceRecord>> {
    let (after_at, after_id) = match &filter.after {
        Some((at, id)) => (Some(at.as_micros()), Some(id.clone())),
        None => (None, None),
    };
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    // The statuses are the last parameter, present only when the filter names some.
    let statuses = match filter.statuses.is_empty() {
        // Entity streams share the table but are not runs: only a filter that names them lists them.
        true => "AND status <> 'stream' ".to_string(),
        false => format!("AND {} ", S::Db::in_list("status", 8)),
    };
    let stmt = Stmt::<S::Db>::new(sql(format!(
        "SELECT {INSTANCE_COLUMNS} FROM instances WHERE \
         ($1 IS NULL OR instance_type = $1) {statuses}\
         AND ($2 IS NULL OR created_at >= $2) AND ($3 IS NULL OR created_at < $3) \
         AND ($4 IS NULL OR (created_at, id) < ($4, $5)) \
         AND ($7 IS NULL OR substr(id, 1, length($7)) = $7) \
         ORDER BY created_at DESC, id DESC LIMIT $6"
    )))
    .bind(filter.instance_type)
    .bind(filter.created_from.map(Timestamp::as_micros))
    .bind(filter.created_until.map(Timestamp::as_micros))
    .bind(after_at)
    .bind(after_id)
    .bind(i64::from(limit))
    .bind(filter.id_prefix);
    let stmt = match filter.statuses.is_empty() {
        true => stmt,
        false => {
            let statuses = filter.statuses.iter().map(|s| s.as_str().to_string());
            S::Db::bind_texts(stmt, statuses.collect())
        }
    };
    let mut conn = store.reader().acquire().await?;
    let mut records = stmt
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(instance_from_row)
        .collect::<Result<Vec<_>>>()?;
    attach_blocked::<S::Db>(&mut conn, &mut records).await?;
    Ok(records)
}
