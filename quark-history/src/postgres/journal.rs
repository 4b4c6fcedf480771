//! Instances and histories where PostgreSQL differs: new instances inserted in one statement, and
//! the append that writes to a known head without reading the instance row first.

use sqlx::{PgConnection, Postgres, Transaction};

use super::PostgresStore;
use super::heads::Head;
use crate::clock::Timestamp;
use crate::commit::{Append, Expected};
use crate::error::{Error, Result};
use crate::event::SCHEMA_VERSION;
use crate::instance::{InstanceStatus, NewInstance};
use crate::plan::{self, Appended, InstanceHead};
use crate::rows::EncodedEvent;
use crate::sql::Row;
use crate::sql::locked::{HEAD_COLUMNS, instance_head};

/// Inserts new instances with their first events and orchestration tasks, leaving out taken ids,
/// in one statement: a `VALUES` one for a single instance (the common case, and the quickest to
/// plan), an `UNNEST` one for a batch. Returns the ids it inserted.
pub(super) async fn insert_instances(
    conn: &mut PgConnection,
    news: &[NewInstance],
    firsts: &[EncodedEvent],
    now: Timestamp,
) -> Result<Vec<String>> {
    if let ([new], [first]) = (news, firsts) {
        let inserted: Option<String> = sqlx::query_scalar(
            "WITH i AS ( \
               INSERT INTO instances (id, instance_type, version, status, input_codec, input, parent_id, queue, \
                 next_seq, history_bytes, last_hash, created_at, updated_at) \
               VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, 2, $8, $9, $10, $10) \
               ON CONFLICT (id) DO NOTHING RETURNING id), \
             h AS ( \
               INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash) \
               SELECT id, 1, 'WorkflowStarted', $11, $12, $13, $10, $9 FROM i), \
             t AS ( \
               INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, payload, traceparent) \
               SELECT 'orchestration', $7, id, $14, $15, $10, ''::bytea, $16 FROM i \
               ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO NOTHING) \
             SELECT id FROM i",
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
        .bind(new.traceparent.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        return Ok(inserted.into_iter().collect());
    }
    let inserted: Vec<String> = sqlx::query_scalar(
            "WITH n AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::int[], $4::smallint[], $5::bytea[],                $6::text[], $7::text[], $8::bigint[], $9::bytea[], $10::smallint[], $11::bytea[], $12::int[],                $13::bigint[], $16::text[]) WITH ORDINALITY AS n(id, instance_type, version, input_codec, input, parent_id,                queue, history_bytes, last_hash, codec, payload, priority, visible_at, traceparent, ord)),              i AS (                INSERT INTO instances (id, instance_type, version, status, input_codec, input, parent_id, queue,                  next_seq, history_bytes, last_hash, created_at, updated_at)                SELECT id, instance_type, version, 'running', input_codec, input, parent_id, queue, 2,                  history_bytes, last_hash, $14, $14 FROM n ORDER BY ord                ON CONFLICT (id) DO NOTHING RETURNING id),              h AS (                INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash)                SELECT n.id, 1, 'WorkflowStarted', $15, n.codec, n.payload, $14, n.last_hash                FROM n JOIN i ON i.id = n.id),              t AS (                INSERT INTO tasks (kind, queue, instance_id, priority, visible_at, created_at, payload, traceparent)                SELECT 'orchestration', n.queue, n.id, n.priority, n.visible_at, $14, ''::bytea, n.traceparent                FROM n JOIN i ON i.id = n.id ORDER BY n.ord                ON CONFLICT (instance_id) WHERE kind = 'orchestration' DO NOTHING)              SELECT id FROM i",
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
        .bind(news.iter().map(|n| n.traceparent.as_deref()).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    Ok(inserted)
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
            status: match head.stream {
                true => InstanceStatus::Stream,
                false => InstanceStatus::Running,
            },
        };
        let planned = plan::append(&store.config, append, Some(&running), now)?;
        if write_append(tx, append, &planned, Some(head)).await? {
            return Ok(done(&planned));
        }
        // Another process appended (or ended the instance) since: read it as it is now.
        store.heads.forget(&append.instance_id);
    }
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {HEAD_COLUMNS} FROM instances WHERE id = $1 FOR UPDATE"
    )))
    .bind(&append.instance_id)
    .fetch_optional(&mut **tx)
    .await?;
    let locked = match row {
        Some(row) => Some(instance_head(&Row::<sqlx::Postgres>::new(row))?.1),
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
        stream: planned.head.status == InstanceStatus::Stream,
    });
    (planned.range, head)
}

/// Writes a planned append's events and the instance's new head in one statement. With
/// `expected_head`, the write happens only if the row still holds that head and has not ended, and
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
           UPDATE instances SET next_seq = $9, last_hash = $10, status = COALESCE($11, status), \
           history_bytes = history_bytes + $12, updated_at = $3, \
           output_codec = COALESCE($13, output_codec), output = COALESCE($14, output) \
           WHERE id = $1 AND ($15::bigint IS NULL OR \
             (next_seq = $15 AND last_hash = $16 AND status IN ('running', 'blocked', 'stream'))) \
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
    .bind(planned.head.written_status())
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
