//! Histories read back, for both databases: one instance's events by sequence number or time,
//! many histories at once, the global order and the hash chain check. The rows are decoded here
//! once; what differs is the statement of the global order (its gap-safe horizon) and whether many
//! histories take one statement ([`Dialect::read_all`], [`Dialect::read_histories`]).

use super::{Dialect, Row, SqlStore, Stmt};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::journal::{ChainReport, GlobalEvent, GlobalPosition, HistoryRange};
use crate::rows::{check_chain, decode_event, hash32};

/// The columns an event is decoded from ([`event_from_row`]).
pub(crate) const EVENT_COLUMNS: &str =
    "instance_id, seq, schema_version, codec, payload, recorded_at, hash";

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// An event from a row of [`EVENT_COLUMNS`].
pub(crate) fn event_from_row<DB: Dialect>(row: &Row<DB>) -> Result<RecordedEvent> {
    let instance_id: String = row.get("instance_id")?;
    let bytes: Vec<u8> = row.get("payload")?;
    let hash: Vec<u8> = row.get("hash")?;
    decode_event(
        &instance_id,
        row.get("seq")?,
        row.get("schema_version")?,
        row.get("codec")?,
        &bytes,
        row.get("recorded_at")?,
        &hash,
    )
}

/// Part of a history, in sequence order.
pub(crate) async fn read_history<S: SqlStore>(
    store: &S,
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
        HistoryRange::Time { from, until } => (1, i64::MAX, from.as_micros(), until.as_micros()),
    };
    Stmt::<S::Db>::new(sql(format!(
        "SELECT {EVENT_COLUMNS} FROM history WHERE instance_id = $1 AND seq >= $2 AND seq < $5 \
         AND recorded_at >= $3 AND recorded_at < $4 ORDER BY seq"
    )))
    .bind(instance_id)
    .bind(from_seq)
    .bind(from_time)
    .bind(until_time)
    .bind(until_seq)
    .fetch_all(&mut *store.reader().acquire().await?)
    .await?
    .iter()
    .map(event_from_row)
    .collect()
}

/// Many histories from a sequence number on each, in the order asked.
pub(crate) async fn read_histories<S: SqlStore>(
    store: &S,
    from: &[(String, u64)],
) -> Result<Vec<Vec<RecordedEvent>>> {
    if from.is_empty() {
        return Ok(Vec::new());
    }
    let Some(stmt) = S::Db::read_histories(from) else {
        let mut out = Vec::with_capacity(from.len());
        for (instance_id, seq) in from {
            out.push(read_history(store, instance_id, HistoryRange::From(*seq)).await?);
        }
        return Ok(out);
    };
    let rows = stmt
        .fetch_all(&mut *store.reader().acquire().await?)
        .await?;
    let mut out: Vec<Vec<RecordedEvent>> = vec![Vec::new(); from.len()];
    for row in &rows {
        let ord: i64 = row.get("ord")?;
        out[ord as usize - 1].push(event_from_row(row)?);
    }
    Ok(out)
}

/// Up to `limit` events after `after` in the global order, never past the horizon below which
/// every event is final.
pub(crate) async fn read_all<S: SqlStore>(
    store: &S,
    after: GlobalPosition,
    limit: u32,
) -> Result<Vec<GlobalEvent>> {
    S::Db::read_all(after, limit)
        .fetch_all(&mut *store.reader().acquire().await?)
        .await?
        .iter()
        .map(|row| {
            Ok(GlobalEvent {
                position: position_from_row(row)?,
                event: event_from_row(row)?,
            })
        })
        .collect()
}

/// A global position from a row's `tx` (text) and `global_position` columns.
pub(crate) fn position_from_row<DB: Dialect>(row: &Row<DB>) -> Result<GlobalPosition> {
    let tx: String = row.get("tx")?;
    Ok(GlobalPosition {
        tx: tx
            .parse()
            .map_err(|_| Error::Invalid(format!("bad transaction id `{tx}`")))?,
        position: row.get("global_position")?,
    })
}

/// Recomputes an instance's hash chain.
pub(crate) async fn verify<S: SqlStore>(store: &S, instance_id: &str) -> Result<ChainReport> {
    // The head and the rows in one statement, so in one snapshot: an append between two reads
    // would look like a break.
    let rows = Stmt::<S::Db>::new(
        "SELECT i.next_seq, i.last_hash, i.first_seq, i.base_hash, h.seq, h.codec, h.payload, h.hash \
         FROM instances i LEFT JOIN history h ON h.instance_id = i.id \
         WHERE i.id = $1 ORDER BY h.seq",
    )
    .bind(instance_id)
    .fetch_all(&mut *store.reader().acquire().await?)
    .await?;
    let Some(first) = rows.first() else {
        return Err(Error::InstanceNotFound {
            id: instance_id.to_string(),
        });
    };
    let head = (
        first.get::<i64>("next_seq")? as u64,
        hash32(&first.get::<Vec<u8>>("last_hash")?),
    );
    let mut decoded: Vec<(i64, i16, Vec<u8>, Vec<u8>)> = Vec::with_capacity(rows.len());
    for r in &rows {
        // An instance without any event left is one row of NULLs.
        if let Some(seq) = r.get::<Option<i64>>("seq")? {
            decoded.push((seq, r.get("codec")?, r.get("payload")?, r.get("hash")?));
        }
    }
    let start = (
        first.get::<i64>("first_seq")? as u64,
        first
            .get::<Option<Vec<u8>>>("base_hash")?
            .map_or(crate::journal::GENESIS, |h| hash32(&h)),
    );
    let (events, problem) = check_chain(
        decoded
            .iter()
            .map(|(s, c, b, h)| (*s, *c, b.as_slice(), h.as_slice())),
        start,
        head,
    );
    Ok(ChainReport {
        instance_id: instance_id.to_string(),
        events,
        first_mismatch: problem.map(|p| p.first_untrusted()),
        problem,
    })
}
