//! The queues' controls, for both databases: pausing a queue and its rate limit, set across every
//! worker (a claim reads them in its own statement, so they hold at once).

use std::time::Duration;

use super::{SqlStore, Stmt};
use crate::error::{Error, Result};
use crate::jobs::{QueueSettings, RateLimit};
use crate::queue::TaskKind;

/// Pauses or resumes claims from a queue; a resumed queue's waiting workers are woken.
pub(crate) async fn set_queue_paused<S: SqlStore>(
    store: &S,
    queue: &str,
    paused: bool,
) -> Result<()> {
    Stmt::<S::Db>::new(
        "INSERT INTO queue_settings (queue, paused) VALUES ($1, $2) \
         ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused",
    )
    .bind(queue)
    .bind(paused)
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    if !paused {
        store.announce(TaskKind::ALL.map(|k| (queue.to_string(), k)));
    }
    Ok(())
}

/// A queue's controls.
pub(crate) async fn queue_settings<S: SqlStore>(store: &S, queue: &str) -> Result<QueueSettings> {
    // The limit is INTEGER (32 bits) on PostgreSQL and 64 on SQLite: read as 64 on both.
    let row = Stmt::<S::Db>::new(
        "SELECT paused, CAST(rate_limit AS BIGINT) AS rate_limit, rate_interval \
         FROM queue_settings WHERE queue = $1",
    )
    .bind(queue)
    .fetch_optional(&mut *store.reader().acquire().await?)
    .await?;
    let Some(row) = row else {
        return Ok(QueueSettings::default());
    };
    let limit: Option<i64> = row.get("rate_limit")?;
    let interval: Option<i64> = row.get("rate_interval")?;
    Ok(QueueSettings {
        paused: row.get("paused")?,
        rate_limit: limit.zip(interval).map(|(l, i)| RateLimit {
            limit: l as u32,
            interval: Duration::from_micros(i as u64),
        }),
    })
}

/// Sets or clears a queue's rate limit; a queue set free wakes its waiting workers.
pub(crate) async fn set_rate_limit<S: SqlStore>(
    store: &S,
    queue: &str,
    limit: Option<RateLimit>,
) -> Result<()> {
    if let Some(l) = limit
        && (l.limit == 0 || l.interval.is_zero())
    {
        return Err(Error::Invalid(
            "a rate limit needs a positive count and interval".into(),
        ));
    }
    Stmt::<S::Db>::new(
        "INSERT INTO queue_settings (queue, rate_limit, rate_interval, tokens, refilled_at) \
         VALUES ($1, $2, $3, COALESCE($2, 0), $4) \
         ON CONFLICT (queue) DO UPDATE SET rate_limit = excluded.rate_limit, \
           rate_interval = excluded.rate_interval, tokens = excluded.tokens, \
           refilled_at = excluded.refilled_at",
    )
    .bind(queue)
    .bind(limit.map(|l| l.limit as i32))
    .bind(limit.map(|l| l.interval.as_micros() as i64))
    .bind(store.settings().clock.now().as_micros())
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    store.limited_queues().invalidate();
    if limit.is_none() {
        store.announce(TaskKind::ALL.map(|k| (queue.to_string(), k)));
    }
    Ok(())
}
