//! The claim statement on SQLite: one `UPDATE ... RETURNING` over the claim index, run inside a
//! write transaction (the single writer makes a claimed row everyone else's to skip). The claim
//! around it (rate limits, decoding) is shared, in `crate::sql::queue`. The claim keeps the
//! `visible_at` it replaces in `ready_at` (a SET reads the row as it was), for the queue-wait
//! metric: `RETURNING` sees only the updated row.

use sqlx::Sqlite;

use crate::clock::Timestamp;
use crate::queue::ClaimRequest;
use crate::sql::{Dialect, Stmt};

/// Claims up to `limit` tasks from `queues`; `unlimited_only` leaves out paused and rate-limited
/// queues (the caller took tokens otherwise, and checked the pause).
pub(super) fn claim_stmt(
    request: &ClaimRequest,
    queues: &[String],
    limit: u32,
    now: Timestamp,
    unlimited_only: bool,
) -> Stmt<Sqlite> {
    let kinds: Vec<String> = request.kinds.iter().map(|k| k.as_str().into()).collect();
    let stmt = Stmt::new(
        "UPDATE tasks SET attempts = attempts + 1, lease_owner = $1, ready_at = visible_at, \
           visible_at = $2, rerun = 0 \
         WHERE id IN (SELECT id FROM tasks \
           WHERE queue IN (SELECT value FROM json_each($3)) AND visible_at <= $4 AND NOT cancel_requested \
           AND ($9 = 0 OR queue NOT IN (SELECT queue FROM queue_settings WHERE paused OR rate_limit IS NOT NULL)) \
           AND (json_array_length($5) = 0 OR kind IN (SELECT value FROM json_each($5))) \
           AND (affinity IS NULL OR affinity = $1 OR visible_at <= $6 \
                OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = tasks.affinity AND w.heartbeat_at > $7 AND w.pressure = 0 \
                  AND tasks.queue IN (SELECT value FROM json_each(w.queues)))) \
           ORDER BY priority DESC, visible_at, id LIMIT $8) \
         RETURNING id, attempts, kind, queue, instance_id, priority, created_at, payload, traceparent, ready_at",
    )
    .bind(request.worker.clone())
    .bind((now + request.lease).as_micros());
    let stmt = Sqlite::bind_texts(stmt, queues.to_vec()).bind(now.as_micros());
    Sqlite::bind_texts(stmt, kinds)
        .bind((now - request.affinity_delay).as_micros())
        .bind((now - request.worker_ttl).as_micros())
        .bind(i64::from(limit))
        .bind(unlimited_only)
}
