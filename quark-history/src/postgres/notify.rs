//! `NOTIFY` after commit and a self-healing `LISTEN`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{mpsc, oneshot};

use crate::TaskKind;
use crate::error::Result;
use crate::wakeup::{Hub, Wake};

pub(super) const CHANNEL: &str = "quark_tasks";

/// The least time between two `NOTIFY` batches: other processes hear of new tasks at most this
/// late (this process hears at once, through its hub).
const NOTIFY_INTERVAL: Duration = Duration::from_millis(2);

/// The payload of a notice: `origin|kind|queue` (queue names may contain `|`, so they come last).
pub(super) fn notice(origin: &str, kind: TaskKind, queue: &str) -> String {
    format!("{origin}|{kind}|{queue}")
}

/// The kind a notice of an instance's end carries in place of a task kind: `origin|ended|id`.
const ENDED: &str = "ended";

/// What a notice tells.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Notice {
    /// Tasks of a kind became visible on a queue.
    Queue(String, TaskKind),
    /// An instance ended.
    Ended(String),
}

impl Notice {
    fn payload(&self, origin: &str) -> String {
        match self {
            Notice::Queue(queue, kind) => notice(origin, *kind, queue),
            Notice::Ended(instance) => format!("{origin}|{ENDED}|{instance}"),
        }
    }
}

/// Sends coalesced `NOTIFY`s off the commit path and owns the shared listener.
#[derive(Debug)]
pub(super) struct Notifier {
    tx: mpsc::UnboundedSender<Notice>,
    /// Tags this store's notices so its own listener can ignore their echo.
    origin: String,
    listener: Mutex<Weak<ListenerTask>>,
}

impl Notifier {
    pub(super) fn start(pool: PgPool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Notice>();
        let origin = uuid::Uuid::now_v7().simple().to_string();
        let tag = origin.clone();
        tokio::spawn(async move {
            // Whatever arrives while one NOTIFY is in flight goes out together in the next.
            while let Some(first) = rx.recv().await {
                let mut notices = BTreeSet::from([first]);
                while let Ok(notice) = rx.try_recv() {
                    notices.insert(notice);
                }
                let payloads: Vec<String> = notices.iter().map(|n| n.payload(&tag)).collect();
                if let Err(e) = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                    .bind(CHANNEL)
                    .bind(&payloads)
                    .execute(&pool)
                    .await
                {
                    // A lost notice costs one polling interval of latency, nothing more.
                    tracing::debug!(error = %e, "NOTIFY failed; pollers will find the tasks, waiters the ends");
                }
                // Each NOTIFY takes a cluster-wide lock at commit: send at most one batch per
                // interval, and let what arrives meanwhile ride along with the next.
                tokio::time::sleep(NOTIFY_INTERVAL).await;
            }
        });
        Notifier {
            tx,
            origin,
            listener: Mutex::new(Weak::new()),
        }
    }

    /// Queues a notice for tasks of `kind` on `queue`.
    pub(super) fn send(&self, queue: String, kind: TaskKind) {
        let _ = self.tx.send(Notice::Queue(queue, kind));
    }

    /// Queues a notice that `instance` ended.
    pub(super) fn send_end(&self, instance: String) {
        let _ = self.tx.send(Notice::Ended(instance));
    }

    /// The running listener, started if none is. Resolves once `LISTEN` is in effect.
    pub(super) async fn listener(&self, pool: &PgPool, hub: &Hub) -> Result<Arc<dyn Send + Sync>> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = {
            let mut slot = self.listener.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(task) = slot.upgrade() {
                return Ok(task);
            }
            let task = Arc::new(ListenerTask(tokio::spawn(listen(
                pool.clone(),
                hub.clone(),
                self.origin.clone(),
                ready_tx,
            ))));
            *slot = Arc::downgrade(&task);
            task
        };
        match ready_rx.await {
            Ok(Ok(())) => Ok(task),
            Ok(Err(e)) => Err(e.into()),
            // The task ended before it was ready: the pool is closed.
            Err(_) => Err(sqlx::Error::PoolClosed.into()),
        }
    }
}

/// Aborts the listener when the last subscriber is gone.
#[derive(Debug)]
struct ListenerTask(tokio::task::JoinHandle<()>);

impl Drop for ListenerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen(pool: PgPool, hub: Hub, origin: String, ready: oneshot::Sender<sqlx::Result<()>>) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(50);
    while !pool.is_closed() {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        match ready.take() {
            Some(ready) => {
                let _ = ready.send(Ok(()));
            }
            // Notices sent while we were away are gone: tell subscribers to poll.
            None => hub.announce(Wake::MayHaveMissed),
        }
        backoff = Duration::from_millis(50);
        loop {
            match listener.try_recv().await {
                Ok(Some(notice)) => {
                    // `origin|kind|queue`: queue names may contain `|`, so they come last.
                    let mut parts = notice.payload().splitn(3, '|');
                    if let (Some(from), Some(kind), Some(name)) =
                        (parts.next(), parts.next(), parts.next())
                        && from != origin
                    {
                        if kind == ENDED {
                            hub.announce(Wake::Ended {
                                instance: name.to_string(),
                            });
                        } else if let Ok(kind) = kind.parse::<TaskKind>() {
                            hub.announce(Wake::Queue {
                                queue: name.to_string(),
                                kind,
                            });
                        }
                    }
                }
                // The connection dropped and was re-established; notices may be lost.
                Ok(None) => hub.announce(Wake::MayHaveMissed),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}
