//! Instances and histories on PostgreSQL.

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::PostgresStore;
use super::heads::Head;
use crate::clock::Timestamp;
use crate::commit::{Append, Expected};
use crate::error::{Error, Result};
use crate::event::{RecordedEvent, SCHEMA_VERSION};
use crate::instance::{
    Created, IdReusePolicy, InstanceFilter, InstanceRecord, InstanceStatus, NewInstance,
};
use crate::journal::{ChainReport, GENESIS, GlobalEvent, GlobalPosition, HistoryRange};
use crate::plan::{self, Appended, InstanceHead};
use crate::rows::{check_size, decode_event, encode_events, first_chain_mismatch, hash32, payload};

const INSTANCE_COLUMNS: &str = "id, instance_type, version, status, input_codec, input, output_codec, output, \
     parent_id, queue, next_seq, history_bytes, affinity, created_at, updated_at";

const EVENT_COLUMNS: &str = "instance_id, seq, schema_version, codec, payload, recorded_at, hash";

fn instance_from_row(row: &PgRow) -> Result<InstanceRecord> {
    let status: String = row.try_get("status")?;
    let output = match row.try_get::<Option<i16>, _>("output_codec")? {
        Some(codec) => Some(payload(codec, row.try_get("output")?)?),
        None => None,
    };
    Ok(InstanceRecord {
        id: row.try_get("id")?,
        instance_type: row.try_get("instance_type")?,
        version: row.try_get::<i32, _>("version")? as u32,
        status: status.parse().map_err(Error::Invalid)?,
        input: payload(row.try_get("input_codec")?, row.try_get("input")?)?,
        output,
        parent_id: row.try_get("parent_id")?,
        queue: row.try_get("queue")?,
        history_len: row.try_get::<i64, _>("next_seq")? as u64 - 1,
        history_bytes: row.try_get::<i64, _>("history_bytes")? as u64,
        affinity: row.try_get("affinity")?,
        created_at: Timestamp::from_micros(row.try_get("created_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
    })
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent> {
    let instance_id: String = row.try_get("instance_id")?;
    let bytes: Vec<u8> = row.try_get("payload")?;
    let hash: Vec<u8> = row.try_get("hash")?;
    decode_event(
        &instance_id,
        row.try_get("seq")?,
        row.try_get("schema_version")?,
        row.try_get("codec")?,
        &bytes,
        row.try_get("recorded_at")?,
        &hash,
    )
}

impl PostgresStore {
    pub(super) async fn create_instance_impl(
        &self,
        new: NewInstance,
        policy: IdReusePolicy,
    ) -> Result<Created> {
        check_size(&self.config, new.input.len())?;
        let now = self.config.clock.now();
        let started = new.started_event();
        let encoded = encode_events(&self.config, GENESIS, 1, std::slice::from_ref(&started))?;
        let first = &encoded[0];
        // One statement, so one round trip and its own transaction: the instance, its first event
        // and its first orchestration task, or nothing if the id is taken.
        let inserted: i64 = sqlx::query_scalar(
            "WITH i AS ( \
               INSERT INTO instances (id, instance_type, version, status, input_codec, input, parent_id, queue, \
                 next_seq, history_bytes, last_hash, created_at, updated_at) \
               VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, 2, $8, $9, $10, $10) \
               ON CONFLICT (id) DO NOTHING RETURNING id), \
             h AS ( \
               INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash) \
               SELECT id, 1, 'WorkflowStarted', $11, $12, $13, $10, $9 FROM i), \
             t AS ( \
               INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, payload) \
               SELECT 'orchestration', $7, id, $14, $15, $10, ''::bytea FROM i \
               ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO NOTHING) \
             SELECT count(*) FROM i",
        )
        .bind(&new.id)
        .bind(&new.instance_type)
        .bind(new.version as i32)
        .bind(new.input.codec().as_i16())
        .bind(new.input.as_bytes())
        .bind(new.parent.as_ref().map(|p| p.instance_id.as_str()))
        .bind(&new.queue)
        .bind(first.bytes.len() as i64)
        .bind(first.hash.as_slice())
        .bind(now.as_micros())
        .bind(SCHEMA_VERSION)
        .bind(first.codec)
        .bind(&first.bytes)
        .bind(new.priority)
        .bind(new.start_at.unwrap_or(now).as_micros())
        .fetch_one(&self.pool)
        .await?;
        if inserted == 0 {
            let Some(existing) = self.get_instance_impl(&new.id).await? else {
                // Deleted between the two statements: report the race as a conflict to retry.
                return Err(Error::DuplicateInstance { id: new.id });
            };
            return match policy {
                IdReusePolicy::ReturnExisting => Ok(Created {
                    instance: existing,
                    created: false,
                }),
                IdReusePolicy::RejectDuplicate => Err(Error::DuplicateInstance { id: new.id }),
            };
        }
        if new.start_at.is_none_or(|at| at <= now) {
            self.announce([(new.queue.clone(), crate::TaskKind::Orchestration)]);
        }
        self.heads
            .learn([(new.id.clone(), Some(started_head(first)))]);
        let instance = new.into_record(first.bytes.len() as u64, now);
        Ok(Created {
            instance,
            created: true,
        })
    }

    /// Creates instances with one statement in one transaction: all of them, or none if one
    /// fails (with `RejectDuplicate`, a taken id).
    pub(super) async fn create_instances_impl(
        &self,
        news: Vec<NewInstance>,
        policy: IdReusePolicy,
    ) -> Result<Vec<Created>> {
        crate::instance::check_distinct(&news)?;
        if news.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.config.clock.now();
        let mut firsts = Vec::with_capacity(news.len());
        for new in &news {
            check_size(&self.config, new.input.len())?;
            let started = new.started_event();
            let mut encoded = encode_events(&self.config, GENESIS, 1, &[started])?;
            firsts.push(encoded.remove(0));
        }
        let mut tx = self.begin().await?;
        let inserted: Vec<String> = sqlx::query_scalar(
            "WITH n AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::smallint[], $5::bytea[],                $6::text[], $7::text[], $8::bigint[], $9::bytea[], $10::smallint[], $11::bytea[], $12::int[],                $13::bigint[]) WITH ORDINALITY AS n(id, instance_type, version, input_codec, input, parent_id,                queue, history_bytes, last_hash, codec, payload, priority, visible_at, ord)),              i AS (                INSERT INTO instances (id, instance_type, version, status, input_codec, input, parent_id, queue,                  next_seq, history_bytes, last_hash, created_at, updated_at)                SELECT id, instance_type, version, 'running', input_codec, input, parent_id, queue, 2,                  history_bytes, last_hash, $14, $14 FROM n ORDER BY ord                ON CONFLICT (id) DO NOTHING RETURNING id),              h AS (                INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash)                SELECT n.id, 1, 'WorkflowStarted', $15, n.codec, n.payload, $14, n.last_hash                FROM n JOIN i ON i.id = n.id),              t AS (                INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, payload)                SELECT 'orchestration', n.queue, n.id, n.priority, n.visible_at, $14, ''::bytea                FROM n JOIN i ON i.id = n.id ORDER BY n.ord                ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO NOTHING)              SELECT id FROM i",
        )
        .bind(news.iter().map(|n| n.id.as_str()).collect::<Vec<_>>())
        .bind(news.iter().map(|n| n.instance_type.as_str()).collect::<Vec<_>>())
        .bind(news.iter().map(|n| n.version as i32).collect::<Vec<_>>())
        .bind(news.iter().map(|n| n.input.codec().as_i16()).collect::<Vec<_>>())
        .bind(news.iter().map(|n| n.input.as_bytes()).collect::<Vec<_>>())
        .bind(
            news.iter()
                .map(|n| n.parent.as_ref().map(|p| p.instance_id.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(news.iter().map(|n| n.queue.as_str()).collect::<Vec<_>>())
        .bind(firsts.iter().map(|f| f.bytes.len() as i64).collect::<Vec<_>>())
        .bind(firsts.iter().map(|f| f.hash.as_slice()).collect::<Vec<_>>())
        .bind(firsts.iter().map(|f| f.codec).collect::<Vec<_>>())
        .bind(firsts.iter().map(|f| f.bytes.as_slice()).collect::<Vec<_>>())
        .bind(news.iter().map(|n| n.priority).collect::<Vec<_>>())
        .bind(
            news.iter()
                .map(|n| n.start_at.unwrap_or(now).as_micros())
                .collect::<Vec<_>>(),
        )
        .bind(now.as_micros())
        .bind(SCHEMA_VERSION)
        .fetch_all(&mut *tx)
        .await?;
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let taken: Vec<&str> = news
            .iter()
            .map(|n| n.id.as_str())
            .filter(|id| !inserted.contains(*id))
            .collect();
        if let (Some(id), IdReusePolicy::RejectDuplicate) = (taken.first(), policy) {
            tx.rollback().await?;
            return Err(Error::DuplicateInstance { id: id.to_string() });
        }
        let mut existing: std::collections::HashMap<String, InstanceRecord> =
            std::collections::HashMap::new();
        if !taken.is_empty() {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ANY($1)"
            )))
            .bind(&taken)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let record = instance_from_row(row)?;
                existing.insert(record.id.clone(), record);
            }
        }
        tx.commit().await?;
        let wake: std::collections::BTreeSet<(String, crate::TaskKind)> = news
            .iter()
            .filter(|n| inserted.contains(&n.id) && n.start_at.is_none_or(|at| at <= now))
            .map(|n| (n.queue.clone(), crate::TaskKind::Orchestration))
            .collect();
        self.announce(wake);
        self.heads.learn(
            news.iter()
                .zip(&firsts)
                .filter(|(n, _)| inserted.contains(&n.id))
                .map(|(n, first)| (n.id.clone(), Some(started_head(first)))),
        );
        news.into_iter()
            .zip(firsts)
            .map(|(new, first)| {
                if !inserted.contains(&new.id) {
                    let instance = existing.remove(&new.id).ok_or_else(|| {
                        // Deleted between the two statements: report the race as a conflict.
                        Error::DuplicateInstance { id: new.id.clone() }
                    })?;
                    return Ok(Created {
                        instance,
                        created: false,
                    });
                }
                Ok(Created {
                    instance: new.into_record(first.bytes.len() as u64, now),
                    created: true,
                })
            })
            .collect()
    }

    pub(super) async fn get_instance_impl(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    pub(super) async fn list_instances_impl(
        &self,
        filter: InstanceFilter,
    ) -> Result<Vec<InstanceRecord>> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let (after_at, after_id) = match &filter.after {
            Some((at, id)) => (Some(at.as_micros()), Some(id.as_str())),
            None => (None, None),
        };
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE \
             ($1::text IS NULL OR instance_type = $1) \
             AND (cardinality($2::text[]) = 0 OR status = ANY($2)) \
             AND ($3::bigint IS NULL OR created_at >= $3) AND ($4::bigint IS NULL OR created_at < $4) \
             AND ($5::bigint IS NULL OR (created_at, id) < ($5, $6::text)) \
             ORDER BY created_at DESC, id DESC LIMIT $7"
        )))
        .bind(filter.instance_type.as_deref())
        .bind(statuses)
        .bind(filter.created_from.map(Timestamp::as_micros))
        .bind(filter.created_until.map(Timestamp::as_micros))
        .bind(after_at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(instance_from_row).collect()
    }

    pub(super) async fn read_history_impl(
        &self,
        instance_id: &str,
        range: HistoryRange,
    ) -> Result<Vec<RecordedEvent>> {
        let (from_seq, until_seq, from_time, until_time) = match range {
            HistoryRange::All => (1, i64::MAX, i64::MIN, i64::MAX),
            HistoryRange::From(seq) => (seq as i64, i64::MAX, i64::MIN, i64::MAX),
            HistoryRange::Seq { from, until } => (
                from as i64,
                until.min(i64::MAX as u64) as i64,
                i64::MIN,
                i64::MAX,
            ),
            HistoryRange::Time { from, until } => {
                (1, i64::MAX, from.as_micros(), until.as_micros())
            }
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM history WHERE instance_id = $1 AND seq >= $2 AND seq < $5 \
             AND recorded_at >= $3 AND recorded_at < $4 ORDER BY seq"
        )))
        .bind(instance_id)
        .bind(from_seq)
        .bind(from_time)
        .bind(until_time)
        .bind(until_seq)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub(super) async fn read_histories_impl(
        &self,
        from: &[(String, u64)],
    ) -> Result<Vec<Vec<RecordedEvent>>> {
        if from.is_empty() {
            return Ok(Vec::new());
        }
        // One index range per instance (a plain join lets the planner hash the whole history).
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT u.ord, h.* FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS u(id, from_seq, ord), \
             LATERAL (SELECT {EVENT_COLUMNS} FROM history WHERE instance_id = u.id AND seq >= u.from_seq \
             ORDER BY seq) AS h ORDER BY u.ord, h.seq"
        )))
        .bind(from.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
        .bind(from.iter().map(|(_, seq)| *seq as i64).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<Vec<RecordedEvent>> = vec![Vec::new(); from.len()];
        for row in &rows {
            let ord: i64 = row.try_get("ord")?;
            out[ord as usize - 1].push(event_from_row(row)?);
        }
        Ok(out)
    }

    pub(super) async fn read_all_impl(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> Result<Vec<GlobalEvent>> {
        // Every transaction older than the oldest one still running has ended, so the events at or
        // below that horizon are final: reading them in (transaction, position) order and resuming
        // from the last one read never skips an event that commits later.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT tx_id::text AS tx, global_position, {EVENT_COLUMNS} FROM history \
             WHERE (tx_id, global_position) > ($1::text::xid8, $2) \
             AND tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY tx_id, global_position LIMIT $3"
        )))
        .bind(after.tx.to_string())
        .bind(after.position)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let tx: String = row.try_get("tx")?;
                Ok(GlobalEvent {
                    position: GlobalPosition {
                        tx: tx
                            .parse()
                            .map_err(|_| Error::Invalid(format!("bad xid8 `{tx}`")))?,
                        position: row.try_get("global_position")?,
                    },
                    event: event_from_row(row)?,
                })
            })
            .collect()
    }

    pub(super) async fn verify_impl(&self, instance_id: &str) -> Result<ChainReport> {
        if self.get_instance_impl(instance_id).await?.is_none() {
            return Err(Error::InstanceNotFound {
                id: instance_id.to_string(),
            });
        }
        let rows = sqlx::query(
            "SELECT seq, codec, payload, hash FROM history WHERE instance_id = $1 ORDER BY seq",
        )
        .bind(instance_id)
        .fetch_all(&self.pool)
        .await?;
        let decoded: Vec<(i64, i16, Vec<u8>, Vec<u8>)> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_>>()?;
        let (events, first_mismatch) = first_chain_mismatch(
            decoded
                .iter()
                .map(|(s, c, b, h)| (*s, *c, b.as_slice(), h.as_slice())),
        );
        Ok(ChainReport {
            instance_id: instance_id.to_string(),
            events,
            first_mismatch,
        })
    }
}

/// The head of an instance just created with `first` as its first event.
fn started_head(first: &crate::rows::EncodedEvent) -> Head {
    Head {
        next_seq: 2,
        last_hash: first.hash,
    }
}

/// Appends one instance's events inside a write transaction. Returns (first seq, last seq), and
/// the instance's head after the append for [`Heads::learn`](super::heads::Heads::learn) once the
/// transaction commits (`None` if it ended).
///
/// If this store knows the instance's head, the append is one statement that writes only if the
/// row still holds that head (see [`super::heads`]); otherwise, or if it no longer does, the row is
/// locked and read first.
pub(super) async fn append_in_tx(
    tx: &mut Transaction<'static, Postgres>,
    store: &PostgresStore,
    append: &Append,
    now: Timestamp,
) -> Result<((u64, u64), Option<Head>)> {
    if let Some(head) = store.heads.get(&append.instance_id)
        && !append.events.is_empty()
        && matches!(append.expected, Expected::Any)
            | matches!(append.expected, Expected::Seq(s) if s == head.next_seq)
    {
        let running = InstanceHead {
            next_seq: head.next_seq,
            last_hash: head.last_hash,
            status: InstanceStatus::Running,
        };
        let planned = plan::append(&store.config, append, Some(&running), now)?;
        if write_append(tx, append, &planned, Some(head)).await? {
            return Ok(done(&planned));
        }
        // Another process appended (or ended the instance) since: read it as it is now.
        store.heads.forget(&append.instance_id);
    }
    let row =
        sqlx::query("SELECT next_seq, last_hash, status FROM instances WHERE id = $1 FOR UPDATE")
            .bind(&append.instance_id)
            .fetch_optional(&mut **tx)
            .await?;
    let locked = match row {
        Some(row) => Some(InstanceHead {
            next_seq: row.try_get::<i64, _>(0)? as u64,
            last_hash: hash32(&row.try_get::<Vec<u8>, _>(1)?),
            status: row
                .try_get::<String, _>(2)?
                .parse()
                .map_err(Error::Invalid)?,
        }),
        None => None,
    };
    let planned = plan::append(&store.config, append, locked.as_ref(), now)?;
    // The row is locked, so the unconditional write matches it.
    if !planned.events.is_empty() && !write_append(tx, append, &planned, None).await? {
        return Err(Error::Invalid(format!(
            "instance {} changed under its row lock",
            append.instance_id
        )));
    }
    Ok(done(&planned))
}

/// What an append reports: its range, and the head to learn (none for an ended instance).
fn done(planned: &Appended) -> ((u64, u64), Option<Head>) {
    let head = (!planned.head.status.is_closed()).then_some(Head {
        next_seq: planned.head.next_seq,
        last_hash: planned.head.last_hash,
    });
    (planned.range, head)
}

/// Writes a planned append's events and the instance's new head in one statement. With
/// `expected_head`, the write happens only if the row still holds that head and is running, and
/// `false` says it did not; without, the row is locked already and the write always happens.
async fn write_append(
    tx: &mut Transaction<'static, Postgres>,
    append: &Append,
    planned: &Appended,
    expected_head: Option<Head>,
) -> Result<bool> {
    let encoded = &planned.events;
    let output = &planned.output;
    // The instance's new head, then the events if it was written: one round trip per append.
    let written = sqlx::query(
        "WITH u AS ( \
           UPDATE instances SET next_seq = $9, last_hash = $10, status = $11, \
           history_bytes = history_bytes + $12, updated_at = $3, \
           output_codec = COALESCE($13, output_codec), output = COALESCE($14, output) \
           WHERE id = $1 AND ($15::bigint IS NULL OR (next_seq = $15 AND last_hash = $16 AND status = 'running')) \
           RETURNING id) \
         INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash) \
         SELECT $1, seq, kind, $2, codec, payload, $3, hash \
         FROM UNNEST($4::bigint[], $5::text[], $6::smallint[], $7::bytea[], $8::bytea[]) AS e(seq, kind, codec, payload, hash) \
         WHERE EXISTS (SELECT 1 FROM u)",
    )
    .bind(&append.instance_id)
    .bind(SCHEMA_VERSION)
    .bind(planned.at.as_micros())
    .bind(encoded.iter().map(|e| e.seq as i64).collect::<Vec<_>>())
    .bind(encoded.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(encoded.iter().map(|e| e.codec).collect::<Vec<_>>())
    .bind(encoded.iter().map(|e| e.bytes.as_slice()).collect::<Vec<_>>())
    .bind(encoded.iter().map(|e| e.hash.as_slice()).collect::<Vec<_>>())
    .bind(planned.head.next_seq as i64)
    .bind(planned.head.last_hash.as_slice())
    .bind(planned.head.status.as_str())
    .bind(planned.added_bytes)
    .bind(output.as_ref().map(|o| o.codec().as_i16()))
    .bind(output.as_ref().map(|o| o.as_bytes()))
    .bind(expected_head.map(|h| h.next_seq as i64))
    .bind(expected_head.map(|h| h.last_hash.to_vec()))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(written == encoded.len() as u64)
}
