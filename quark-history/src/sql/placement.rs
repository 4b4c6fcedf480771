//! Placement, for both databases: the communication sketches workers publish, where each live
//! instance is (its affinity), the moves of instances between workers, and the lease that makes
//! one worker at a time the placement coordinator.
//!
//! A coordinator's moves are fenced by its lease: each takes the lease row in the transaction that
//! moves, and moves nothing if the lease has passed to another worker (a later epoch) or expired.
//! So two workers that both believe they coordinate (one paused past its lease) never both move.

use std::time::Duration;

use super::{Dialect, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::queue::{AffinityMove, Lead, Placed, PublishedSketch};

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

/// Replaces `worker`'s published sketch.
pub(crate) async fn publish_sketch<S: SqlStore>(
    store: &S,
    worker: &str,
    sketch: Vec<u8>,
) -> Result<()> {
    let now = store.settings().clock.now();
    Stmt::<S::Db>::new(
        "INSERT INTO placement_sketches (worker_id, sketch, published_at) VALUES ($1, $2, $3) \
         ON CONFLICT (worker_id) DO UPDATE SET sketch = excluded.sketch, \
         published_at = excluded.published_at",
    )
    .bind(worker)
    .bind(sketch)
    .bind(now.as_micros())
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    Ok(())
}

/// Every published sketch, by worker id.
pub(crate) async fn sketches<S: SqlStore>(store: &S) -> Result<Vec<PublishedSketch>> {
    Stmt::<S::Db>::new(
        "SELECT worker_id, sketch, published_at FROM placement_sketches ORDER BY worker_id",
    )
    .fetch_all(&mut *store.reader().acquire().await?)
    .await?
    .iter()
    .map(|row| {
        Ok(PublishedSketch {
            worker_id: row.get("worker_id")?,
            sketch: row.get("sketch")?,
            published_at: Timestamp::from_micros(row.get("published_at")?),
        })
    })
    .collect()
}

/// Of `instances`, those whose affinity is not `worker`, in the order given.
pub(crate) async fn moved_away<S: SqlStore>(
    store: &S,
    worker: &str,
    instances: &[String],
) -> Result<Vec<String>> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = store.reader().acquire().await?;
    let stmt = Stmt::<S::Db>::new(sql(format!(
        "SELECT id FROM instances WHERE {} AND (affinity IS NULL OR affinity <> $2)",
        S::Db::in_list("id", 1)
    )));
    let gone: std::collections::HashSet<String> = S::Db::bind_texts(stmt, instances.to_vec())
        .bind(worker)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.get::<String>("id"))
        .collect::<Result<_>>()?;
    Ok(instances
        .iter()
        .filter(|id| gone.contains(*id))
        .cloned()
        .collect())
}

/// Of `instances`, the running ones and the entity streams that have an affinity, with it,
/// ordered by id.
pub(crate) async fn affinities<S: SqlStore>(
    store: &S,
    instances: &[String],
) -> Result<Vec<Placed>> {
    if instances.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = store.reader().acquire().await?;
    let stmt = Stmt::<S::Db>::new(sql(format!(
        "SELECT id, affinity, queue FROM instances WHERE {} AND status IN ('running', 'stream') \
         AND affinity IS NOT NULL ORDER BY id",
        S::Db::in_list("id", 1)
    )));
    S::Db::bind_texts(stmt, instances.to_vec())
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| {
            Ok(Placed {
                instance: row.get("id")?,
                worker: row.get("affinity")?,
                queue: row.get("queue")?,
            })
        })
        .collect()
}

/// Moves each instance whose affinity is still its `from` to its `to`, with its pending tasks'
/// affinity, in one transaction. With a `lead`, only while that lead is current: otherwise
/// [`Error::NotLeader`] and nothing moves.
pub(crate) async fn move_affinities<S: SqlStore>(
    store: &S,
    moves: &[AffinityMove],
    lead: Option<&Lead>,
) -> Result<Vec<bool>> {
    let now = store.settings().clock.now();
    let mut tx = store.begin_write().await?;
    if let Some(lead) = lead {
        let current = Stmt::<S::Db>::new(sql(format!(
            "SELECT epoch FROM leaders WHERE role = $1 AND holder = $2 AND epoch = $3 \
             AND expires_at > $4{}",
            S::Db::FOR_UPDATE
        )))
        .bind(lead.role.as_str())
        .bind(lead.holder.as_str())
        .bind(lead.epoch as i64)
        .bind(now.as_micros())
        .fetch_optional(&mut tx)
        .await?;
        if current.is_none() {
            return Err(Error::NotLeader {
                role: lead.role.clone(),
                epoch: lead.epoch,
            });
        }
    }
    // The moves never wait for the instances' traffic: an instance or task row that a commit
    // holds is skipped, and that instance is not moved this time (as if its compare-and-set had
    // lost; the next round decides again). Waiting for them deadlocked with commits, which lock
    // tasks before instances, and with the lease keeper: the whole round failed.
    let mut moved = Vec::with_capacity(moves.len());
    for m in moves {
        let pending = Stmt::<S::Db>::new(
            "SELECT COUNT(*) AS n FROM tasks WHERE instance_id = $1 AND affinity = $2",
        )
        .bind(m.instance.as_str())
        .bind(m.from.as_str())
        .fetch_one(&mut tx)
        .await?
        .get::<i64>("n")?;
        let held: Vec<i64> = Stmt::<S::Db>::new(sql(format!(
            "SELECT id FROM tasks WHERE instance_id = $1 AND affinity = $2 ORDER BY id{}",
            S::Db::SKIP_LOCKED
        )))
        .bind(m.instance.as_str())
        .bind(m.from.as_str())
        .fetch_all(&mut tx)
        .await?
        .iter()
        .map(|row| row.get::<i64>("id"))
        .collect::<Result<_>>()?;
        let instance = Stmt::<S::Db>::new(sql(format!(
            "SELECT id FROM instances WHERE id = $1 AND affinity = $2{}",
            S::Db::SKIP_LOCKED
        )))
        .bind(m.instance.as_str())
        .bind(m.from.as_str())
        .fetch_optional(&mut tx)
        .await?;
        if (held.len() as i64) < pending || instance.is_none() {
            moved.push(false);
            continue;
        }
        Stmt::<S::Db>::new("UPDATE instances SET affinity = $3 WHERE id = $1 AND affinity = $2")
            .bind(m.instance.as_str())
            .bind(m.from.as_str())
            .bind(m.to.as_str())
            .execute(&mut tx)
            .await?;
        // Only the rows held here: touching another could wait for its holder.
        for id in held {
            Stmt::<S::Db>::new("UPDATE tasks SET affinity = $2 WHERE id = $1")
                .bind(id)
                .bind(m.to.as_str())
                .execute(&mut tx)
                .await?;
        }
        moved.push(true);
    }
    tx.commit().await?;
    Ok(moved)
}

/// Takes or renews the lease of `role` for `holder` until `ttl` from now: renewed (same epoch)
/// if `holder` holds it, taken (next epoch) if nobody does or it expired, `None` if another
/// holder's lease is current.
pub(crate) async fn lead<S: SqlStore>(
    store: &S,
    role: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Lead>> {
    let now = store.settings().clock.now();
    let expires_at = Timestamp::from_micros(now.as_micros().saturating_add(micros(ttl)));
    let mut tx = store.begin_write().await?;
    let row = Stmt::<S::Db>::new(sql(format!(
        "SELECT holder, epoch, expires_at FROM leaders WHERE role = $1{}",
        S::Db::FOR_UPDATE
    )))
    .bind(role)
    .fetch_optional(&mut tx)
    .await?;
    let epoch = match row {
        None => {
            let inserted = Stmt::<S::Db>::new(
                "INSERT INTO leaders (role, holder, epoch, expires_at) VALUES ($1, $2, 1, $3) \
                 ON CONFLICT (role) DO NOTHING",
            )
            .bind(role)
            .bind(holder)
            .bind(expires_at.as_micros())
            .execute(&mut tx)
            .await?;
            if inserted == 0 {
                return Ok(None);
            }
            1
        }
        Some(row) => {
            let current: String = row.get("holder")?;
            let epoch: i64 = row.get("epoch")?;
            let until: i64 = row.get("expires_at")?;
            let live = until > now.as_micros();
            let epoch = if current == holder && live {
                epoch
            } else if !live {
                epoch + 1
            } else {
                return Ok(None);
            };
            Stmt::<S::Db>::new(
                "UPDATE leaders SET holder = $2, epoch = $3, expires_at = $4 WHERE role = $1",
            )
            .bind(role)
            .bind(holder)
            .bind(epoch)
            .bind(expires_at.as_micros())
            .execute(&mut tx)
            .await?;
            epoch
        }
    };
    tx.commit().await?;
    Ok(Some(Lead {
        role: role.to_owned(),
        holder: holder.to_owned(),
        epoch: epoch as u64,
        expires_at,
    }))
}

/// Gives up `lead` at once (a graceful stop), so that another worker takes it without waiting
/// for it to expire. A lead that already passed on is left alone.
pub(crate) async fn resign<S: SqlStore>(store: &S, lead: &Lead) -> Result<()> {
    Stmt::<S::Db>::new(
        "UPDATE leaders SET expires_at = 0 WHERE role = $1 AND holder = $2 AND epoch = $3",
    )
    .bind(lead.role.as_str())
    .bind(lead.holder.as_str())
    .bind(lead.epoch as i64)
    .execute(&mut *store.writer().acquire().await?)
    .await?;
    Ok(())
}
