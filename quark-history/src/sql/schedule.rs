//! Cron schedules ([`ScheduleStore`]), for both databases. A fire is one write transaction whose
//! first statement is the conditional `UPDATE` of the schedule row. On PostgreSQL a racing fire
//! blocks on the row lock, then re-reads the row, finds `next_at` moved and updates nothing; on
//! SQLite the one writer serializes the two, and the second finds `next_at` moved. Either way the
//! loser enqueues nothing.

use futures::future::BoxFuture;

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::rows::{check_size, check_tasks, visible_queues};
use crate::schedule::{Fire, ScheduleRecord, ScheduleSpec, Upserted};
use crate::store::ScheduleStore;

const COLUMNS: &str = "name, cron, timezone, missed, queue, priority, payload, next_at, \
     last_fired_at, created_at, updated_at";

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// A record from a row of [`COLUMNS`].
fn decode<DB: Dialect>(row: &Row<DB>) -> Result<ScheduleRecord> {
    let name: String = row.get("name")?;
    let missed = row
        .get::<String>("missed")?
        .parse()
        .map_err(|e| Error::Invalid(format!("schedule `{name}`: {e}")))?;
    Ok(ScheduleRecord {
        spec: ScheduleSpec {
            cron: row.get("cron")?,
            timezone: row.get("timezone")?,
            missed,
            queue: row.get("queue")?,
            priority: row.get("priority")?,
            payload: row.get("payload")?,
            name,
        },
        next_at: Timestamp::from_micros(row.get("next_at")?),
        last_fired_at: row
            .get::<Option<i64>>("last_fired_at")?
            .map(Timestamp::from_micros),
        created_at: Timestamp::from_micros(row.get("created_at")?),
        updated_at: Timestamp::from_micros(row.get("updated_at")?),
    })
}

/// Binds a spec's columns as `$1` to `$7`, then `next_at` and `now` as `$8` and `$9`.
fn bind_spec<DB: Dialect>(
    stmt: Stmt<DB>,
    spec: &ScheduleSpec,
    next_at: Timestamp,
    now: Timestamp,
) -> Stmt<DB> {
    stmt.bind(spec.name.as_str())
        .bind(spec.cron.as_str())
        .bind(spec.timezone.as_str())
        .bind(spec.missed.to_string())
        .bind(spec.queue.as_str())
        .bind(spec.priority)
        .bind(spec.payload.as_slice())
        .bind(next_at.as_micros())
        .bind(now.as_micros())
}

/// One round of an upsert; `None` when a concurrent insert of the same name won (PostgreSQL
/// only: on SQLite the write transaction holds the one write lock from its start).
async fn try_upsert<S: SqlStore>(
    store: &S,
    spec: &ScheduleSpec,
    next_at: Timestamp,
) -> Result<Option<Upserted>> {
    let now = store.settings().clock.now();
    let mut tx = store.begin_write().await?;
    let existing = Stmt::<S::Db>::new(sql(format!(
        "SELECT {COLUMNS} FROM schedules WHERE name = $1{}",
        S::Db::FOR_UPDATE
    )))
    .bind(spec.name.as_str())
    .fetch_optional(&mut tx)
    .await?
    .map(|row| decode(&row))
    .transpose()?;
    let upserted = match existing {
        None => {
            let insert = Stmt::<S::Db>::new(
                "INSERT INTO schedules (name, cron, timezone, missed, queue, priority, payload, \
                 next_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                 ON CONFLICT (name) DO NOTHING",
            );
            let inserted = bind_spec(insert, spec, next_at, now)
                .execute(&mut tx)
                .await?;
            if inserted == 0 {
                return Ok(None);
            }
            Upserted::Created
        }
        Some(old) if old.spec == *spec => return Ok(Some(Upserted::Unchanged)),
        Some(old) => {
            let next_at = if old.spec.same_timing(spec) {
                old.next_at
            } else {
                next_at
            };
            let update = Stmt::<S::Db>::new(
                "UPDATE schedules SET cron = $2, timezone = $3, missed = $4, queue = $5, \
                 priority = $6, payload = $7, next_at = $8, updated_at = $9 WHERE name = $1",
            );
            bind_spec(update, spec, next_at, now)
                .execute(&mut tx)
                .await?;
            Upserted::Updated
        }
    };
    tx.commit().await?;
    Ok(Some(upserted))
}

impl<S: SqlStore> ScheduleStore for S {
    fn upsert_schedule(
        &self,
        spec: ScheduleSpec,
        next_at: Timestamp,
    ) -> BoxFuture<'_, Result<Upserted>> {
        Box::pin(async move {
            spec.check()?;
            check_size(self.settings(), spec.payload.len())?;
            // Two processes registering the same new schedule at once: the loser's insert does
            // nothing, and its second round finds (and locks) the winner's row.
            for _ in 0..2 {
                if let Some(upserted) = try_upsert(self, &spec, next_at).await? {
                    return Ok(upserted);
                }
            }
            Err(Error::Invalid(format!(
                "schedule `{}` was removed and re-created while being registered; try again",
                spec.name
            )))
        })
    }

    fn remove_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let removed = Stmt::<S::Db>::new("DELETE FROM schedules WHERE name = $1")
                .bind(name)
                .execute(&mut *self.writer().acquire().await?)
                .await?;
            Ok(removed > 0)
        })
    }

    fn get_schedule<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<ScheduleRecord>>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(sql(format!(
                "SELECT {COLUMNS} FROM schedules WHERE name = $1"
            )))
            .bind(name)
            .fetch_optional(&mut *self.reader().acquire().await?)
            .await?
            .map(|row| decode(&row))
            .transpose()
        })
    }

    fn list_schedules(&self) -> BoxFuture<'_, Result<Vec<ScheduleRecord>>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(sql(format!(
                "SELECT {COLUMNS} FROM schedules ORDER BY name"
            )))
            .fetch_all(&mut *self.reader().acquire().await?)
            .await?
            .iter()
            .map(decode)
            .collect()
        })
    }

    fn due_schedules(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<ScheduleRecord>>> {
        Box::pin(async move {
            Stmt::<S::Db>::new(sql(format!(
                "SELECT {COLUMNS} FROM schedules WHERE next_at <= $1 ORDER BY next_at, name LIMIT $2"
            )))
            .bind(now.as_micros())
            .bind(i64::from(limit))
            .fetch_all(&mut *self.reader().acquire().await?)
            .await?
            .iter()
            .map(decode)
            .collect()
        })
    }

    fn next_schedule_at(&self) -> BoxFuture<'_, Result<Option<Timestamp>>> {
        Box::pin(async move {
            let next: Option<i64> =
                Stmt::<S::Db>::new("SELECT MIN(next_at) AS next_at FROM schedules")
                    .fetch_one(&mut *self.reader().acquire().await?)
                    .await?
                    .get("next_at")?;
            Ok(next.map(Timestamp::from_micros))
        })
    }

    fn fire_schedule(&self, fire: Fire) -> BoxFuture<'_, Result<Option<Vec<i64>>>> {
        Box::pin(async move {
            fire.check()?;
            let now = self.settings().clock.now();
            let mut tx = self.begin_write().await?;
            let template = Stmt::<S::Db>::new(sql(format!(
                "UPDATE schedules SET next_at = $3, last_fired_at = COALESCE($4, last_fired_at) \
                 WHERE name = $1 AND next_at = $2 RETURNING {COLUMNS}"
            )))
            .bind(fire.name.as_str())
            .bind(fire.expected_next_at.as_micros())
            .bind(fire.next_at.as_micros())
            .bind(fire.ticks.last().map(|t| t.as_micros()))
            .fetch_optional(&mut tx)
            .await?;
            let Some(row) = template else {
                // Another worker fired this tick first, or the schedule was changed or removed.
                return Ok(None);
            };
            let spec = decode(&row)?.spec;
            let tasks: Vec<_> = fire.ticks.iter().map(|t| spec.job_at(*t)).collect();
            check_tasks(self.settings(), &tasks)?;
            let ids = super::enqueue::enqueue::<S>(&mut tx, &tasks, now)
                .await?
                .ids;
            tx.commit().await?;
            self.announce(visible_queues(&tasks, now));
            Ok(Some(ids))
        })
    }
}
