//! The outbox and the inbox where PostgreSQL differs: messages are inserted with one `UNNEST`
//! statement, and messages written in a caller's transaction are announced by a `NOTIFY` in that
//! transaction. The rest is shared, in `crate::sql`.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{PgConnection, Postgres};

use super::PostgresStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::inbox::InboxStore;
use crate::outbox::MessageRow;

/// Inserts prepared messages in one statement; a taken idempotency key fails the transaction.
pub(super) async fn insert_messages(
    conn: &mut PgConnection,
    rows: &[MessageRow],
    now: Timestamp,
) -> Result<Vec<i64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let inserted: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO outbox (destination, ordering_key, idempotency_key, payload, headers, state, \
         next_attempt_at, created_at) \
         SELECT d, k, i, p, h, 'pending', $1, $1 FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[]) \
         WITH ORDINALITY AS t(d, k, i, p, h, ord) ORDER BY ord \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, idempotency_key",
    )
    .bind(now.as_micros())
    .bind(rows.iter().map(|r| r.destination.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.ordering_key.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.idempotency_key.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.payload.as_slice()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.headers.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let by_key: HashMap<String, i64> = inserted.into_iter().map(|(id, k)| (k, id)).collect();
    let mut ids = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashSet::new();
    for row in rows {
        match by_key.get(&row.idempotency_key) {
            Some(id) if seen.insert(*id) => ids.push(*id),
            _ => {
                return Err(Error::MessageExists {
                    key: row.idempotency_key.clone(),
                });
            }
        }
    }
    Ok(ids)
}

impl InboxStore for PostgresStore {
    type Db = sqlx::Postgres;

    fn begin_write(&self) -> BoxFuture<'_, Result<sqlx::Transaction<'static, sqlx::Postgres>>> {
        Box::pin(self.begin())
    }

    fn record_in<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(crate::sql::record::<Postgres>(
            conn,
            message_id,
            self.config.clock.now(),
            window,
        ))
    }
}
