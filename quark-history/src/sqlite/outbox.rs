//! The outbox and the inbox where SQLite differs: messages are inserted one statement each, and
//! relays in this process are told of messages written in a caller's transaction before it
//! commits (there is no `NOTIFY`). The rest is shared, in `crate::sql`.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Sqlite, SqliteConnection};

use super::SqliteStore;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::inbox::InboxStore;
use crate::outbox::{MessageRow, OUTBOX_WAKE_QUEUE};
use crate::queue::TaskKind;
use crate::wakeup::Wake;

/// Inserts prepared messages; a taken idempotency key fails the whole transaction.
pub(super) async fn insert_messages(
    conn: &mut SqliteConnection,
    rows: &[MessageRow],
    now: Timestamp,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO outbox (destination, ordering_key, idempotency_key, payload, headers, state, \
             next_attempt_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(&row.destination)
        .bind(&row.ordering_key)
        .bind(&row.idempotency_key)
        .bind(&row.payload)
        .bind(&row.headers)
        .bind(now.as_micros())
        .fetch_optional(&mut *conn)
        .await?;
        ids.push(id.ok_or_else(|| Error::MessageExists {
            key: row.idempotency_key.clone(),
        })?);
    }
    Ok(ids)
}

impl SqliteStore {
    pub(super) fn announce_outbox(&self) {
        self.hub.announce(Wake::Queue {
            queue: OUTBOX_WAKE_QUEUE.to_string(),
            kind: TaskKind::Outbox,
        });
    }
}

impl InboxStore for SqliteStore {
    type Db = sqlx::Sqlite;

    fn begin_write(&self) -> BoxFuture<'_, Result<sqlx::Transaction<'static, sqlx::Sqlite>>> {
        Box::pin(self.begin())
    }

    fn record_in<'a>(
        &'a self,
        conn: &'a mut SqliteConnection,
        message_id: &'a str,
        window: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(crate::sql::record::<Sqlite>(
            conn,
            message_id,
            self.config.clock.now(),
            window,
        ))
    }
}
