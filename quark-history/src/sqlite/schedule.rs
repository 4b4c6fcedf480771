//! Cron schedules on SQLite. Every write is `BEGIN IMMEDIATE` on the one writer connection, so
//! two fires of one schedule are serialized and the second finds `next_at` moved.

use super::SqliteStore;
use super::queue::enqueue_in_tx;
use crate::clock::Timestamp;
use crate::error::Result;
use crate::rows::{check_size, check_tasks, visible_queues};
use crate::schedule::{Fire, ScheduleRecord, ScheduleSpec, Upserted, decode, schedule_columns};
use crate::wakeup::Wake;

impl SqliteStore {
    pub(super) async fn upsert_schedule_impl(
        &self,
        spec: ScheduleSpec,
        next_at: Timestamp,
    ) -> Result<Upserted> {
        spec.check()?;
        check_size(&self.config, spec.payload.len())?;
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let existing = sqlx::query(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE name = ?1"
        ))
        .bind(&spec.name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| decode(&row))
        .transpose()?;
        let upserted = match existing {
            None => {
                sqlx::query(
                    "INSERT INTO schedules (name, cron, timezone, missed, queue, priority, payload, next_at, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
                )
                .bind(&spec.name)
                .bind(&spec.cron)
                .bind(&spec.timezone)
                .bind(spec.missed.to_string())
                .bind(&spec.queue)
                .bind(spec.priority)
                .bind(&spec.payload)
                .bind(next_at.as_micros())
                .bind(now.as_micros())
                .execute(&mut *tx)
                .await?;
                Upserted::Created
            }
            Some(old) if old.spec == spec => return Ok(Upserted::Unchanged),
            Some(old) => {
                let next_at = if old.spec.same_timing(&spec) {
                    old.next_at
                } else {
                    next_at
                };
                sqlx::query(
                    "UPDATE schedules SET cron = ?2, timezone = ?3, missed = ?4, queue = ?5, priority = ?6, \
                     payload = ?7, next_at = ?8, updated_at = ?9 WHERE name = ?1",
                )
                .bind(&spec.name)
                .bind(&spec.cron)
                .bind(&spec.timezone)
                .bind(spec.missed.to_string())
                .bind(&spec.queue)
                .bind(spec.priority)
                .bind(&spec.payload)
                .bind(next_at.as_micros())
                .bind(now.as_micros())
                .execute(&mut *tx)
                .await?;
                Upserted::Updated
            }
        };
        tx.commit().await?;
        Ok(upserted)
    }

    pub(super) async fn remove_schedule_impl(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM schedules WHERE name = ?1")
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(super) async fn get_schedule_impl(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE name = ?1"
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?
        .map(|row| decode(&row))
        .transpose()
    }

    pub(super) async fn list_schedules_impl(&self) -> Result<Vec<ScheduleRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules ORDER BY name"
        ))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(decode)
        .collect()
    }

    pub(super) async fn due_schedules_impl(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<ScheduleRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            schedule_columns!(),
            " FROM schedules WHERE next_at <= ?1 ORDER BY next_at, name LIMIT ?2"
        ))
        .bind(now.as_micros())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?
        .iter()
        .map(decode)
        .collect()
    }

    pub(super) async fn next_schedule_at_impl(&self) -> Result<Option<Timestamp>> {
        let next: Option<i64> = sqlx::query_scalar("SELECT MIN(next_at) FROM schedules")
            .fetch_one(&self.reader)
            .await?;
        Ok(next.map(Timestamp::from_micros))
    }

    pub(super) async fn fire_schedule_impl(&self, fire: Fire) -> Result<Option<Vec<i64>>> {
        fire.check()?;
        let now = self.config.clock.now();
        let mut tx = self.begin().await?;
        let template = sqlx::query(concat!(
            "UPDATE schedules SET next_at = ?3, last_fired_at = COALESCE(?4, last_fired_at) \
             WHERE name = ?1 AND next_at = ?2 RETURNING ",
            schedule_columns!()
        ))
        .bind(&fire.name)
        .bind(fire.expected_next_at.as_micros())
        .bind(fire.next_at.as_micros())
        .bind(fire.ticks.last().map(|t| t.as_micros()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = template else {
            // Another worker fired this tick first, or the schedule was changed or removed.
            return Ok(None);
        };
        let spec = decode(&row)?.spec;
        let tasks: Vec<_> = fire.ticks.iter().map(|t| spec.job_at(*t)).collect();
        check_tasks(&self.config, &tasks)?;
        let ids = enqueue_in_tx(&mut tx, &tasks, now).await?;
        tx.commit().await?;
        for (queue, kind) in visible_queues(&tasks, now) {
            self.hub.announce(Wake::Queue { queue, kind });
        }
        Ok(Some(ids.0))
    }
}
