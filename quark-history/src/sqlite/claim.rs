//! Claims and leases on SQLite: one `UPDATE ... RETURNING` over the claim index inside the write
//! transaction (the single writer makes a claimed row everyone else's to skip), and the lease
//! extensions that keep a claim. The rows to claim are picked in a materialized CTE, so that
//! `RETURNING` can report the `visible_at` each claim replaced (for the queue-wait metric):
//! SQLite's `RETURNING` sees only the updated row.

use std::time::Duration;

use super::SqliteStore;
use super::queue::json_list;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::queue::{ClaimRequest, ClaimedTask, Lease};

impl SqliteStore {
    pub(super) async fn claim_impl(&self, request: ClaimRequest) -> Result<Vec<ClaimedTask>> {
        let now = self.config.clock.now();
        let limited = self.rate_limited_among(&request.queues).await?;
        let mut tx = self.begin().await?;
        // Queues without a rate limit: one statement, which leaves out paused and limited queues.
        let mut tasks =
            claim_from(&mut tx, &request, &request.queues, request.limit, now, true).await?;
        // Rate-limited queues take their grant from the shared bucket first.
        for queue in limited {
            let want = request.limit.saturating_sub(tasks.len() as u32);
            if want == 0 {
                break;
            }
            let Some(grant) = self.take_tokens(&mut tx, &queue, want, now).await? else {
                continue;
            };
            let claimed = if grant > 0 {
                claim_from(
                    &mut tx,
                    &request,
                    std::slice::from_ref(&queue),
                    grant,
                    now,
                    false,
                )
                .await?
            } else {
                Vec::new()
            };
            self.return_tokens(&mut tx, &queue, grant - claimed.len() as u32)
                .await?;
            tasks.extend(claimed);
        }
        tx.commit().await?;
        tasks.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.lease.task_id.cmp(&b.lease.task_id))
        });
        Ok(tasks)
    }

    pub(super) async fn extend_lease_impl(
        &self,
        lease: &Lease,
        lease_for: Duration,
    ) -> Result<Timestamp> {
        let expires = self.config.clock.now() + lease_for;
        let cancelled: Option<bool> = sqlx::query_scalar(
            "UPDATE tasks SET visible_at = ?4 WHERE id = ?1 AND attempts = ?2 AND lease_owner = ?3 \
             RETURNING cancel_requested",
        )
        .bind(lease.task_id)
        .bind(i64::from(lease.attempt))
        .bind(&lease.worker)
        .bind(expires.as_micros())
        .fetch_optional(&self.writer)
        .await?;
        match cancelled {
            None => Err(Error::LeaseLost {
                task_id: lease.task_id,
                attempt: lease.attempt,
            }),
            Some(true) => Err(Error::CancelRequested {
                task_id: lease.task_id,
            }),
            Some(false) => Ok(expires),
        }
    }
}

/// Claims up to `limit` tasks from `queues`; `unlimited_only` leaves out paused and rate-limited
/// queues (the caller took tokens otherwise, and checked the pause).
async fn claim_from(
    conn: &mut sqlx::SqliteConnection,
    request: &ClaimRequest,
    queues: &[String],
    limit: u32,
    now: Timestamp,
    unlimited_only: bool,
) -> Result<Vec<ClaimedTask>> {
    let expires = now + request.lease;
    let kinds: Vec<&str> = request.kinds.iter().map(|k| k.as_str()).collect();
    let rows = sqlx::query(
        "WITH picked AS MATERIALIZED (SELECT id, visible_at FROM tasks \
           WHERE queue IN (SELECT value FROM json_each(?3)) AND visible_at <= ?4 AND NOT cancel_requested \
           AND (?9 = 0 OR queue NOT IN (SELECT queue FROM queue_settings WHERE paused OR rate_limit IS NOT NULL)) \
           AND (json_array_length(?5) = 0 OR kind IN (SELECT value FROM json_each(?5))) \
           AND (affinity IS NULL OR affinity = ?1 OR visible_at <= ?6 \
                OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = tasks.affinity AND w.heartbeat_at > ?7)) \
           ORDER BY priority DESC, visible_at, id LIMIT ?8) \
         UPDATE tasks SET attempts = attempts + 1, lease_owner = ?1, visible_at = ?2, rerun = 0 \
         WHERE id IN (SELECT id FROM picked) \
         RETURNING id, attempts, kind, queue, instance_id, priority, created_at, payload, \
           (SELECT p.visible_at FROM picked p WHERE p.id = tasks.id) AS ready_at",
    )
    .bind(&request.worker)
    .bind(expires.as_micros())
    .bind(json_list(queues))
    .bind(now.as_micros())
    .bind(json_list(&kinds))
    .bind((now - request.affinity_delay).as_micros())
    .bind((now - request.worker_ttl).as_micros())
    .bind(i64::from(limit))
    .bind(unlimited_only)
    .fetch_all(&mut *conn)
    .await?;
    crate::sql::claim::claimed_tasks::<sqlx::Sqlite>(rows, &request.worker, expires)
}
