//! The outbox ([`OutboxStore`]), for both databases. A claim takes heads of ordering keys; on
//! PostgreSQL with `FOR UPDATE SKIP LOCKED`, where a row that another relay leased meanwhile fails
//! the re-checked `next_attempt_at <= now` and is left out; on SQLite writers are serialized, so
//! the head-of-key condition alone keeps two relays off one key. A key's next message only becomes
//! a head once the previous one is no longer pending, which keeps a key in order across relays.
//!
//! A claim (and a hand-over) can take a *window* of a key: its head and the due messages right
//! behind it, all under one lease (one owner, one expiry) that the head alone carries: the messages
//! behind a pending head cannot be claimed, so they are read and not written until they are
//! settled. The lease fences the whole window's settle, one transaction instead of one per message.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Dialect, Row, SqlStore, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::outbox::{
    ClaimedMessage, Delivery, OUTBOX_WAKE_QUEUE, OutboxClaim, OutboxFilter, OutboxLease,
    OutboxMessage, OutboxRecord, UNBOUNDED_BYTES, WindowOutcome, decode_headers, prepare,
};
use crate::queue::TaskKind;
use crate::store::OutboxStore;

/// The claim's candidate condition: pending, due (or its lease lost), the head of its key, and no
/// other message of its key under a live lease (one can be, after a re-drive put an older message
/// back in front of it).
const HEAD_CONDITION: &str = "o.state = 'pending' AND o.next_attempt_at <= $1 \
     AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' \
       AND p.ordering_key = o.ordering_key AND p.id <> o.id \
       AND (p.id < o.id OR (p.lease_owner IS NOT NULL AND p.next_attempt_at > $1)))";

/// Settles a held message (`$1` id, `$2` attempt, `$3` worker are the fence).
const FENCE: &str = "id = $1 AND attempts = $2 AND lease_owner = $3 AND state = 'pending'";

/// Whether `p` is not due (`$1` is now): waiting for a retry, or under a lease other than this
/// one (`$3` the worker, `$4` the expiry). Only a window's first message is leased; the window's
/// own lease does not make it late.
const LATE: &str = "p.next_attempt_at > $1 AND NOT (p.lease_owner IS NOT NULL \
     AND p.lease_owner = $3 AND p.next_attempt_at = $4)";

/// The columns of a message a window reads.
const WINDOW_COLUMNS: &str = "id, attempts, destination, ordering_key, idempotency_key, payload, \
     headers, created_at, next_attempt_at, lease_owner";

/// The pending messages of each key in `keys` (a condition on `p.ordering_key`), each with its
/// place in its key (`rn`), how many before it, itself included, are not due (`late`, see
/// [`LATE`]), and the payload bytes before it (`before`); [`lease_windows`] keeps the windows.
fn window_of(keys: &str) -> String {
    format!(
        "SELECT p.*, \
           row_number() OVER (PARTITION BY p.ordering_key ORDER BY p.id) AS rn, \
           sum(CASE WHEN {LATE} THEN 1 ELSE 0 END) \
             OVER (PARTITION BY p.ordering_key ORDER BY p.id) AS late, \
           sum(length(p.payload)) OVER (PARTITION BY p.ordering_key ORDER BY p.id) \
             - length(p.payload) AS before \
         FROM (SELECT {WINDOW_COLUMNS} FROM outbox WHERE state = 'pending') p WHERE {keys}"
    )
}

/// [`window_of`] for one key (`$2`), which numbers only the key's first `$5` pending messages: the
/// key's index stops after them. Numbering all of them read and sorted the whole backlog: a
/// hand-over behind 1,000 pending messages took 6.7 ms, against 1.8 ms this way.
fn window_of_key() -> String {
    format!(
        "SELECT p.*, row_number() OVER (ORDER BY p.id) AS rn, \
           sum(CASE WHEN {LATE} THEN 1 ELSE 0 END) OVER (ORDER BY p.id) AS late, \
           sum(length(p.payload)) OVER (ORDER BY p.id) - length(p.payload) AS before \
         FROM (SELECT {WINDOW_COLUMNS} FROM outbox \
           WHERE state = 'pending' AND ordering_key = $2 ORDER BY id LIMIT $5) p"
    )
}

/// What to lease and read: `$2` of the statements.
enum Heads<'a> {
    /// Up to this many keys' heads ([`HEAD_CONDITION`]), locked (PostgreSQL) so that two claimers
    /// take different keys.
    Claim(u32),
    /// The head of this key, if it is due: a hand-over. Not SKIP LOCKED: a head locked by a
    /// claimer must not be passed over for the messages behind it.
    Key(&'a str),
}

/// Leases the `heads` (to `worker` until `expires`: `$3`, `$4`) and reads the windows behind them:
/// the first `messages` (`$5`) of each key, stopping before the first one that is not due and
/// before the first one whose predecessors in the window carry `bytes` (`$6`) payload bytes or
/// more (the first always goes). A window never skips a message its key has to deliver first, and
/// holds a bounded number of bytes.
///
/// Only a head is written. Its messages are returned as claimed under the lease, each with the
/// attempt it is about to make: a head's is counted as it is leased, the others' when they are
/// settled. The re-checked `next_attempt_at <= $1` leaves out a head that another relay leased
/// meanwhile. On PostgreSQL one statement leases and reads (the read sees the rows as they were
/// before); on SQLite, two in the caller's write transaction (the read sees the heads leased).
async fn lease_windows<S: SqlStore>(
    conn: &mut <S::Db as sqlx::Database>::Connection,
    heads: Heads<'_>,
    (now, worker, expires): (Timestamp, &str, Timestamp),
    (messages, bytes): (u32, u64),
) -> Result<Vec<ClaimedMessage>> {
    let lease = match heads {
        Heads::Claim(_) => format!(
            "WITH c AS (SELECT o.id FROM outbox o WHERE {HEAD_CONDITION} \
               ORDER BY o.next_attempt_at, o.id LIMIT $2{}) \
             UPDATE outbox SET lease_owner = $3, attempts = attempts + 1, next_attempt_at = $4 \
             WHERE id IN (SELECT id FROM c) AND state = 'pending' AND next_attempt_at <= $1 \
             RETURNING ordering_key",
            S::Db::SKIP_LOCKED
        ),
        Heads::Key(_) => "UPDATE outbox SET lease_owner = $3, attempts = attempts + 1, \
               next_attempt_at = $4 \
             WHERE id = (SELECT min(p.id) FROM outbox p WHERE p.state = 'pending' \
               AND p.ordering_key = $2) AND next_attempt_at <= $1 AND state = 'pending' \
             RETURNING ordering_key"
            .to_string(),
    };
    let read = |numbered: String, cond: &str| {
        format!(
            "SELECT w.id, w.attempts + CASE WHEN w.lease_owner IS NOT NULL \
               AND w.lease_owner = $3 AND w.next_attempt_at = $4 THEN 0 ELSE 1 END AS attempts, \
               w.destination, w.ordering_key, w.idempotency_key, w.payload, w.headers, \
               w.created_at, $4 AS next_attempt_at \
             FROM ({numbered}) w \
             WHERE w.rn <= $5 AND w.late = 0 AND (w.rn = 1 OR w.before < $6){cond} ORDER BY w.id"
        )
    };
    let bind_heads = |stmt: Stmt<S::Db>| match heads {
        Heads::Claim(limit) => stmt.bind(i64::from(limit)),
        Heads::Key(key) => stmt.bind(key),
    };
    let numbered = |keys: &str| match heads {
        Heads::Claim(_) => window_of(keys),
        Heads::Key(_) => window_of_key(),
    };
    let mut keys = None;
    let text = if S::Db::MODIFYING_CTE {
        let numbered = numbered("p.ordering_key IN (SELECT ordering_key FROM l)");
        // The windows of the keys whose heads the lease took (none if it took none).
        format!(
            "WITH l AS ({lease}) {}",
            read(
                numbered,
                " AND w.ordering_key IN (SELECT ordering_key FROM l)"
            )
        )
    } else {
        let leased = bind_heads(Stmt::<S::Db>::new(sql(lease)).bind(now.as_micros()))
            .bind(worker)
            .bind(expires.as_micros())
            .planned_each_time()
            .fetch_all(&mut *conn)
            .await?;
        if leased.is_empty() {
            return Ok(Vec::new());
        }
        match heads {
            Heads::Claim(_) => {
                // The keys just leased (`$7`).
                keys = Some(
                    leased
                        .iter()
                        .map(|row| row.get::<String>("ordering_key"))
                        .collect::<Result<Vec<_>>>()?,
                );
                read(numbered(&S::Db::in_list("p.ordering_key", 7)), "")
            }
            Heads::Key(_) => read(numbered(""), ""),
        }
    };
    let mut stmt = bind_heads(Stmt::<S::Db>::new(sql(text)).bind(now.as_micros()))
        .bind(worker)
        .bind(expires.as_micros())
        .bind(i64::from(messages.max(1)))
        .bind(byte_bound(bytes));
    if let Some(keys) = keys {
        stmt = S::Db::bind_texts(stmt, keys);
    }
    let rows = stmt
        // A plan made while the outbox was nearly empty once read the whole table per window.
        .planned_each_time()
        .fetch_all(conn)
        .await?;
    rows.iter().map(|row| claimed(worker, row)).collect()
}

/// A window's byte bound as the statements bind it.
fn byte_bound(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// A claimed message from a row that [`lease_windows`] read; its lease expires at `next_attempt_at`.
fn claimed<DB: Dialect>(worker: &str, row: &Row<DB>) -> Result<ClaimedMessage> {
    Ok(ClaimedMessage {
        lease: OutboxLease {
            id: row.get("id")?,
            attempt: row.get::<i32>("attempts")? as u32,
            worker: worker.to_string(),
        },
        destination: row.get::<String>("destination")?.parse()?,
        ordering_key: row.get("ordering_key")?,
        idempotency_key: row.get("idempotency_key")?,
        payload: row.get("payload")?,
        headers: decode_headers(&row.get::<String>("headers")?),
        created_at: Timestamp::from_micros(row.get("created_at")?),
        lease_expires_at: Timestamp::from_micros(row.get("next_attempt_at")?),
    })
}

fn record<DB: Dialect>(row: &Row<DB>) -> Result<OutboxRecord> {
    Ok(OutboxRecord {
        id: row.get("id")?,
        destination: row.get::<String>("destination")?.parse()?,
        ordering_key: row.get("ordering_key")?,
        idempotency_key: row.get("idempotency_key")?,
        payload: row.get("payload")?,
        headers: decode_headers(&row.get::<String>("headers")?),
        state: row.get::<String>("state")?.parse()?,
        attempts: row.get::<i32>("attempts")? as u32,
        next_attempt_at: Timestamp::from_micros(row.get("next_attempt_at")?),
        lease_owner: row.get("lease_owner")?,
        last_error: row.get("last_error")?,
        created_at: Timestamp::from_micros(row.get("created_at")?),
        sent_at: row
            .get::<Option<i64>>("sent_at")?
            .map(Timestamp::from_micros),
    })
}

fn announce_outbox<S: SqlStore>(store: &S) {
    store.announce(vec![(OUTBOX_WAKE_QUEUE.to_string(), TaskKind::Outbox)]);
}

impl<S: SqlStore> OutboxStore for S {
    fn send(&self, messages: Vec<OutboxMessage>) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            let rows = prepare(self.settings(), &messages)?;
            // A transaction, though it may be one statement: a taken key must undo the other rows.
            let mut tx = self.begin_write().await?;
            let ids = S::insert_messages(&mut tx, &rows, self.settings().clock.now()).await?;
            tx.commit().await?;
            if !ids.is_empty() {
                announce_outbox(self);
            }
            Ok(ids)
        })
    }

    fn claim_outbox(&self, claim: OutboxClaim) -> BoxFuture<'_, Result<Vec<ClaimedMessage>>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let expires = now + claim.lease;
            let heads = Heads::Claim(claim.limit);
            let lease = (now, claim.worker.as_str(), expires);
            let window = (claim.window, claim.window_bytes);
            if S::Db::MODIFYING_CTE {
                // One statement: no transaction around it.
                let mut conn = self.writer().acquire().await?;
                return lease_windows::<S>(&mut conn, heads, lease, window).await;
            }
            let mut tx = self.begin_write().await?;
            let out = lease_windows::<S>(&mut tx, heads, lease, window).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    fn settle_outbox<'a>(
        &'a self,
        lease: &'a OutboxLease,
        delivery: Delivery,
    ) -> BoxFuture<'a, Result<Option<ClaimedMessage>>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let mut tx = self.begin_write().await?;
            let (set, extra): (&str, Option<String>) = match &delivery {
                Delivery::Sent { .. } => (
                    "state = 'sent', sent_at = $4, lease_owner = NULL, last_error = NULL, next_attempt_at = $4",
                    None,
                ),
                Delivery::Retry { error, .. } => (
                    "lease_owner = NULL, next_attempt_at = $4, last_error = COALESCE($5, last_error)",
                    error.clone(),
                ),
                Delivery::Dead { error } => (
                    "state = 'dead', lease_owner = NULL, next_attempt_at = $4, last_error = $5",
                    Some(error.clone()),
                ),
            };
            let at = match &delivery {
                Delivery::Retry { at, .. } => *at,
                _ => now,
            };
            let settled = Stmt::<S::Db>::new(sql(format!(
                "UPDATE outbox SET {set} WHERE {FENCE} RETURNING ordering_key"
            )))
            .bind(lease.id)
            .bind(i64::from(lease.attempt))
            .bind(lease.worker.as_str())
            .bind(at.as_micros())
            .bind(extra)
            .fetch_optional(&mut tx)
            .await?;
            let Some(settled) = settled else {
                return Err(Error::LeaseLost {
                    task_id: lease.id,
                    attempt: lease.attempt,
                });
            };
            let key: String = settled.get("ordering_key")?;
            let mut next = None;
            if let Delivery::Sent {
                next_lease: Some(lease_for),
            } = &delivery
            {
                // The key's next message, as a hand-over of a window of one.
                next = lease_windows::<S>(
                    &mut tx,
                    Heads::Key(&key),
                    (now, &lease.worker, now + *lease_for),
                    (1, UNBOUNDED_BYTES),
                )
                .await?
                .pop();
            }
            tx.commit().await?;
            let free = match &delivery {
                Delivery::Sent { next_lease } => next_lease.is_none(),
                Delivery::Retry { at, .. } => *at <= now,
                Delivery::Dead { .. } => true,
            };
            if free {
                announce_outbox(self);
            }
            Ok(next)
        })
    }

    fn settle_outbox_window<'a>(
        &'a self,
        window: &'a [ClaimedMessage],
        outcome: WindowOutcome,
    ) -> BoxFuture<'a, Result<Vec<ClaimedMessage>>> {
        Box::pin(settle_window(self, window, outcome))
    }

    fn list_outbox(&self, filter: OutboxFilter) -> BoxFuture<'_, Result<Vec<OutboxRecord>>> {
        Box::pin(async move {
            let mut text = String::from(
                "SELECT id, destination, ordering_key, idempotency_key, payload, headers, state, \
                 attempts, next_attempt_at, lease_owner, last_error, created_at, sent_at \
                 FROM outbox WHERE 1 = 1",
            );
            let mut n = 0;
            if filter.state.is_some() {
                n += 1;
                text.push_str(&format!(" AND state = ${n}"));
            }
            if filter.ordering_key.is_some() {
                n += 1;
                text.push_str(&format!(" AND ordering_key = ${n}"));
            }
            text.push_str(&format!(" ORDER BY id DESC LIMIT {}", filter.limit));
            let mut stmt = Stmt::<S::Db>::new(sql(text));
            if let Some(state) = filter.state {
                stmt = stmt.bind(state.as_str());
            }
            if let Some(key) = filter.ordering_key {
                stmt = stmt.bind(key);
            }
            let rows = stmt.fetch_all(&mut *self.reader().acquire().await?).await?;
            rows.iter().map(record).collect()
        })
    }

    fn redrive_message(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let now = self.settings().clock.now();
            let done = Stmt::<S::Db>::new(
                "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = $2, lease_owner = NULL \
                 WHERE id = $1 AND state = 'dead'",
            )
            .bind(id)
            .bind(now.as_micros())
            .execute(&mut *self.writer().acquire().await?)
            .await?;
            if done == 0 {
                return Err(Error::MessageNotFound { id, state: "dead " });
            }
            announce_outbox(self);
            Ok(())
        })
    }

    fn purge_outbox(&self, retention: Duration, limit: u32) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let before = self.settings().clock.now() - retention;
            Stmt::<S::Db>::new(sql(format!(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE state = 'sent' \
                 AND sent_at < $1 ORDER BY sent_at LIMIT $2{})",
                S::Db::SKIP_LOCKED
            )))
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .execute(&mut *self.writer().acquire().await?)
            .await
        })
    }

    fn purge_inbox(&self, window: Duration, limit: u32) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let before = self.settings().clock.now() - window;
            // Small batches of old rows, skipping any a concurrent purge holds: the hot path only
            // inserts new ids and never waits for this.
            Stmt::<S::Db>::new(sql(format!(
                "DELETE FROM inbox WHERE message_id IN (SELECT message_id FROM inbox \
                 WHERE received_at < $1 ORDER BY received_at LIMIT $2{})",
                S::Db::SKIP_LOCKED
            )))
            .bind(before.as_micros())
            .bind(i64::from(limit))
            .execute(&mut *self.writer().acquire().await?)
            .await
        })
    }
}

/// [`OutboxStore::settle_outbox_window`]: the window's rows are those of its key and id range
/// that still carry its lease (owner and expiry); each change below must find all the rows it
/// means, or the lease was lost and the transaction is dropped unwritten.
async fn settle_window<S: SqlStore>(
    store: &S,
    window: &[ClaimedMessage],
    outcome: WindowOutcome,
) -> Result<Vec<ClaimedMessage>> {
    let Some(first) = window.first() else {
        return Ok(Vec::new());
    };
    let key = first.ordering_key.as_str();
    let (worker, expires) = (first.lease.worker.as_str(), first.lease_expires_at);
    if window
        .iter()
        .any(|m| m.ordering_key != key || m.lease.worker != worker || m.lease_expires_at != expires)
        || window.windows(2).any(|w| w[0].lease.id >= w[1].lease.id)
        || outcome.sent + usize::from(outcome.failed.is_some()) > window.len()
    {
        return Err(Error::Invalid(
            "a window is one key's messages of one lease, in id order, settled once each".into(),
        ));
    }
    let now = store.settings().clock.now();
    let lost = || Error::LeaseLost {
        task_id: first.lease.id,
        attempt: first.lease.attempt,
    };
    let mut tx = store.begin_write().await?;
    // The lease is the head's (the window's first message): still ours, and locked (PostgreSQL)
    // until this settles, or nothing is written.
    let held = Stmt::<S::Db>::new(sql(format!(
        "SELECT id FROM outbox WHERE id = $1 AND lease_owner = $2 AND next_attempt_at = $3 \
         AND state = 'pending'{}",
        S::Db::FOR_UPDATE
    )))
    .bind(first.lease.id)
    .bind(worker)
    .bind(expires.as_micros())
    .fetch_optional(&mut tx)
    .await?;
    if held.is_none() {
        return Err(lost());
    }
    // The pending rows of `window[range]`, by id (a message of the key committed later with an id
    // inside the window's range is not the window's), and by id range too, so that whatever plan
    // the statement keeps, it reads the window's rows and not the key's whole backlog. A head's
    // attempt was counted when it was leased; the others' are counted here, when they are tried.
    let rows = |set: &str, range: std::ops::Range<usize>| {
        let window = &window[range];
        let ids = window.iter().map(|m| m.lease.id).collect();
        S::Db::bind_ids(
            Stmt::<S::Db>::new(sql(format!(
                "UPDATE outbox SET {set}, \
                   attempts = attempts + CASE WHEN id = $2 THEN 0 ELSE 1 END \
                 WHERE {} AND ordering_key = $3 AND id >= $4 AND id <= $5 AND state = 'pending'",
                S::Db::in_list("id", 1)
            ))),
            ids,
        )
        .bind(first.lease.id)
        .bind(key)
        .bind(window[0].lease.id)
        .bind(window[window.len() - 1].lease.id)
    };
    let mut tried = outcome.sent;
    if outcome.sent > 0 {
        let done = rows(
            "state = 'sent', sent_at = $6, lease_owner = NULL, last_error = NULL, next_attempt_at = $6",
            0..outcome.sent,
        )
        .bind(now.as_micros())
        .execute(&mut tx)
        .await?;
        if done != outcome.sent as u64 {
            return Err(lost());
        }
    }
    let mut free = outcome.next.is_none();
    if let Some(failed) = &outcome.failed {
        let (set, at, error) = match failed {
            Delivery::Retry { at, error } => (
                "lease_owner = NULL, next_attempt_at = $6, last_error = COALESCE($7, last_error)",
                *at,
                error.clone(),
            ),
            Delivery::Dead { error } => (
                "state = 'dead', lease_owner = NULL, next_attempt_at = $6, last_error = $7",
                now,
                Some(error.clone()),
            ),
            Delivery::Sent { .. } => {
                return Err(Error::Invalid(
                    "a window's failed message cannot be settled as sent".into(),
                ));
            }
        };
        free = !matches!(failed, Delivery::Retry { at, .. } if *at > now);
        let done = rows(set, tried..tried + 1)
            .bind(at.as_micros())
            .bind(error)
            .execute(&mut tx)
            .await?;
        if done != 1 {
            return Err(lost());
        }
        tried += 1;
    }
    if tried == 0 {
        // Nothing tried: the head back in line, due now, and the claim that took it not counted.
        // The messages behind it were never leased and keep their rows as they are.
        let done = Stmt::<S::Db>::new(
            "UPDATE outbox SET lease_owner = NULL, attempts = attempts - 1, next_attempt_at = $2 \
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(first.lease.id)
        .bind(now.as_micros())
        .execute(&mut tx)
        .await?;
        if done != 1 {
            return Err(lost());
        }
    }
    let mut next = Vec::new();
    if let (Some(following), true) = (outcome.next, tried == window.len()) {
        next = lease_windows::<S>(
            &mut tx,
            Heads::Key(key),
            (now, worker, now + following.lease),
            (following.messages, following.bytes),
        )
        .await?;
        free = next.is_empty();
    }
    tx.commit().await?;
    if free {
        announce_outbox(store);
    }
    Ok(next)
}
