//! A shard map's lock, held on a session of its own: an advisory lock, released with the
//! session, so a process that dies lets go of it at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::error::Result;
use crate::shards::MapHold;

/// How often a shared hold makes sure its session is alive.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Takes lock `key` (exclusively: only if nobody holds it; shared: waiting for an exclusive
/// holder to finish) on a new session; a shared hold is kept, and taken again if its session
/// is lost, by a task that the hold stops when dropped.
pub(super) fn hold(
    options: PgConnectOptions,
    key: (i32, i32),
    exclusive: bool,
    map: String,
) -> BoxFuture<'static, Result<Option<MapHold>>> {
    Box::pin(async move {
        let mut conn = options.connect().await?;
        if exclusive {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(key.0)
                .bind(key.1)
                .fetch_one(&mut conn)
                .await?;
            if !got {
                let _ = conn.close().await;
                return Ok(None);
            }
            return Ok(Some(MapHold::new(Arc::default(), Some(Box::new(conn)))));
        }
        lock_shared(&mut conn, key).await?;
        let stale = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep(conn, options, key, map, Arc::clone(&stale)));
        Ok(Some(MapHold::new(
            stale,
            Some(Box::new(AbortOnDrop(keeper))),
        )))
    })
}

async fn lock_shared(conn: &mut PgConnection, key: (i32, i32)) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
        .bind(key.0)
        .bind(key.1)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Keeps a shared hold: checks the session every [`CHECK_EVERY`]; if it is lost (the server
/// restarted, the network dropped it), the lock went with it, so it connects again, takes the
/// lock again, and reads the recorded map: if it changed meanwhile (a shard was added while
/// this process held nothing), the hold is marked stale and routing refuses.
async fn keep(
    mut conn: PgConnection,
    options: PgConnectOptions,
    key: (i32, i32),
    map: String,
    stale: Arc<AtomicBool>,
) {
    loop {
        // A liveness check's period, not a synchronization.
        tokio::time::sleep(CHECK_EVERY).await;
        if conn.ping().await.is_ok() {
            continue;
        }
        tracing::warn!("lost the session that holds the shard map's lock; taking it again");
        conn = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Ok(mut fresh) = options.connect().await else {
                continue;
            };
            if lock_shared(&mut fresh, key).await.is_err() {
                continue;
            }
            let recorded: Option<String> =
                match sqlx::query_scalar("SELECT names FROM shard_map WHERE one = 1")
                    .fetch_optional(&mut fresh)
                    .await
                {
                    Ok(recorded) => recorded,
                    Err(_) => continue,
                };
            if recorded.as_deref() != Some(map.as_str()) {
                tracing::error!(
                    recorded = recorded.as_deref().unwrap_or(""),
                    ours = %map,
                    "the deployment's shard map changed while this process held nothing; \
                     it refuses to route until restarted with the new map"
                );
                stale.store(true, Ordering::Release);
            }
            break fresh;
        };
    }
}

/// Stops the keeper (and so ends its session and the lock) when the hold is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
