//! Instances and histories on SQLite.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::commit::{Append, Expected};
use crate::error::{Error, Result};
use crate::event::RecordedEvent;
use crate::instance::{
    Created, IdReusePolicy, InstanceFilter, InstanceRecord, InstanceStatus, NewInstance,
};
use crate::journal::{ChainReport, GENESIS, GlobalEvent, GlobalPosition, HistoryRange};
use crate::plan::{self, EventRow, InstanceHead, InstanceWrite};
use crate::queue::NewTask;
use crate::rows::{check_size, decode_event, first_chain_mismatch, payload};

const INSTANCE_COLUMNS: &str = "id, instance_type, version, status, input_codec, input, output_codec, output, \
     parent_id, queue, next_seq, history_bytes, affinity, created_at, updated_at";

const EVENT_COLUMNS: &str = "instance_id, seq, schema_version, codec, payload, recorded_at, hash";

fn instance_from_row(row: &SqliteRow) -> Result<InstanceRecord> {
    let status: String = row.try_get("status")?;
    let output = match row.try_get::<Option<i16>, _>("output_codec")? {
        Some(codec) => Some(payload(codec, row.try_get("output")?)?),
        None => None,
    };
    Ok(InstanceRecord {
        id: row.try_get("id")?,
        instance_type: row.try_get("instance_type")?,
        version: row.try_get::<i64, _>("version")? as u32,
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

fn event_from_row(row: &SqliteRow) -> Result<RecordedEvent> {
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

impl SqliteStore {
    pub(super) async fn create_instance_impl(
        &self,
        new: NewInstance,
        policy: IdReusePolicy,
    ) -> Result<Created> {
        self.create_instances_impl(vec![new], policy)
            .await
            .map(|mut created| created.remove(0))
    }

    /// Creates instances in one transaction: all of them, or none if one fails.
    pub(super) async fn create_instances_impl(
        &self,
        news: Vec<NewInstance>,
        policy: IdReusePolicy,
    ) -> Result<Vec<Created>> {
        crate::instance::check_distinct(&news)?;
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(news.len());
        let mut wake = Vec::new();
        for new in news {
            let created = self.create_in_tx(&mut tx, new.clone(), policy, now).await?;
            if created.created && new.start_at.is_none_or(|at| at <= now) {
                wake.push(new.queue);
            }
            out.push(created);
        }
        tx.commit().await?;
        wake.sort();
        wake.dedup();
        for queue in wake {
            self.hub.announce(crate::Wake::Queue {
                queue,
                kind: crate::TaskKind::Orchestration,
            });
        }
        Ok(out)
    }

    async fn create_in_tx(
        &self,
        tx: &mut sqlx::SqliteConnection,
        new: NewInstance,
        policy: IdReusePolicy,
        now: crate::Timestamp,
    ) -> Result<Created> {
        check_size(&self.config, new.input.len())?;
        let existing = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
        )))
        .bind(&new.id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            return match policy {
                IdReusePolicy::ReturnExisting => Ok(Created {
                    instance: instance_from_row(&row)?,
                    created: false,
                }),
                IdReusePolicy::RejectDuplicate => Err(Error::DuplicateInstance { id: new.id }),
            };
        }
        sqlx::query(
            "INSERT INTO instances (id, instance_type, version, status, input_codec, input, parent_id, queue, \
             next_seq, last_hash, created_at, updated_at) VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, 1, ?8, ?9, ?9)",
        )
        .bind(&new.id)
        .bind(&new.instance_type)
        .bind(i64::from(new.version))
        .bind(new.input.codec().as_i16())
        .bind(new.input.as_bytes())
        .bind(new.parent.as_ref().map(|p| p.instance_id.as_str()))
        .bind(&new.queue)
        .bind(GENESIS.as_slice())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        let append = Append {
            instance_id: new.id.clone(),
            expected: Expected::Seq(1),
            events: vec![new.started_event()],
            at: None,
        };
        let fresh = InstanceHead {
            next_seq: 1,
            last_hash: GENESIS,
            status: InstanceStatus::Running,
        };
        let started = plan::append(&self.config, &append, Some(&fresh), now)?;
        let instance = InstanceWrite {
            id: new.id.clone(),
            head: started.head,
            added_bytes: started.added_bytes,
            output: None,
            updated_at: started.at,
        };
        let events: Vec<EventRow> = started
            .events
            .into_iter()
            .map(|encoded| EventRow {
                instance_id: new.id.clone(),
                at: started.at,
                encoded,
            })
            .collect();
        super::commit::write_appends(&mut *tx, &events, &[instance]).await?;
        let mut task =
            NewTask::orchestration(new.queue.clone(), new.id.clone()).priority(new.priority);
        task.visible_at = new.start_at;
        super::queue::enqueue_in_tx(&mut *tx, &[task], now).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
        )))
        .bind(&new.id)
        .fetch_one(&mut *tx)
        .await?;
        let instance = instance_from_row(&row)?;
        Ok(Created {
            instance,
            created: true,
        })
    }

    pub(super) async fn get_instance_impl(&self, id: &str) -> Result<Option<InstanceRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = ?1"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(instance_from_row).transpose()
    }

    pub(super) async fn list_instances_impl(
        &self,
        filter: InstanceFilter,
    ) -> Result<Vec<InstanceRecord>> {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let statuses =
            serde_json::to_string(&statuses).map_err(|e| Error::Invalid(e.to_string()))?;
        let (after_at, after_id) = match &filter.after {
            Some((at, id)) => (Some(at.as_micros()), Some(id.as_str())),
            None => (None, None),
        };
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances WHERE \
             (?1 IS NULL OR instance_type = ?1) \
             AND (json_array_length(?2) = 0 OR status IN (SELECT value FROM json_each(?2))) \
             AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR created_at < ?4) \
             AND (?5 IS NULL OR (created_at, id) < (?5, ?6)) \
             ORDER BY created_at DESC, id DESC LIMIT ?7"
        )))
        .bind(filter.instance_type.as_deref())
        .bind(statuses)
        .bind(filter.created_from.map(Timestamp::as_micros))
        .bind(filter.created_until.map(Timestamp::as_micros))
        .bind(after_at)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
            "SELECT {EVENT_COLUMNS} FROM history WHERE instance_id = ?1 AND seq >= ?2 AND seq < ?5 \
             AND recorded_at >= ?3 AND recorded_at < ?4 ORDER BY seq"
        )))
        .bind(instance_id)
        .bind(from_seq)
        .bind(from_time)
        .bind(until_time)
        .bind(until_seq)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub(super) async fn read_all_impl(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> Result<Vec<GlobalEvent>> {
        // Writers are serialized and a reader sees only committed transactions, so positions
        // become visible in order and reading past the last one seen skips nothing.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT global_position, {EVENT_COLUMNS} FROM history WHERE global_position > ?1 \
             ORDER BY global_position LIMIT ?2"
        )))
        .bind(after.position)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(GlobalEvent {
                    position: GlobalPosition {
                        tx: 0,
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
            "SELECT seq, codec, payload, hash FROM history WHERE instance_id = ?1 ORDER BY seq",
        )
        .bind(instance_id)
        .fetch_all(&self.reader)
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
