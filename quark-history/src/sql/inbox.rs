//! The inbox's record of message ids, for both databases.

use std::time::Duration;

use sqlx::Database;

use super::{Dialect, Stmt};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::inbox::DEFAULT_INBOX_WINDOW;

/// Records `id` inside the transaction on `conn` unless it was recorded within `window` (an older
/// record is renewed); `true` if it is new (or expired). A concurrent transaction recording the
/// same id makes this one wait for its outcome.
pub(crate) async fn record<DB: Dialect>(
    conn: &mut <DB as Database>::Connection,
    id: &str,
    now: Timestamp,
    window: Duration,
) -> Result<bool> {
    let row = Stmt::<DB>::new(
        "INSERT INTO inbox (message_id, received_at) VALUES ($1, $2) \
         ON CONFLICT (message_id) DO UPDATE SET received_at = excluded.received_at \
         WHERE inbox.received_at < $3 RETURNING 1",
    )
    .bind(id)
    .bind(now.as_micros())
    .bind((now - window).as_micros())
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// Records a commit's inbox ids; a duplicate within the default window fails it.
pub(crate) async fn receive<DB: Dialect>(
    conn: &mut <DB as Database>::Connection,
    ids: &[String],
    now: Timestamp,
) -> Result<()> {
    for id in ids {
        if !record::<DB>(conn, id, now, DEFAULT_INBOX_WINDOW).await? {
            return Err(Error::AlreadyReceived {
                message_id: id.clone(),
            });
        }
    }
    Ok(())
}
