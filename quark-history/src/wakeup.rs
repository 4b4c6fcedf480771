//! Wake-ups: telling idle pollers that tasks became visible.
//!
//! Each store has an in-process hub. A commit that enqueues visible tasks announces their queues on
//! the hub after it commits; on PostgreSQL it also sends `NOTIFY` (after commit, coalesced, off the
//! commit path) and a listener feeds other processes' notices into the hub. Notices are hints:
//! pollers still poll on a timer, because a notice can be lost (a dropped connection, a lagging
//! subscriber). A subscriber is told when that may have happened ([`Wake::MayHaveMissed`]).
//!
//! The ends of instances go the same ways on a channel of their own, so that a caller awaiting a
//! result is told at once while workers' pollers never hear of them.

use std::time::Duration;

use tokio::sync::broadcast;

/// A notice to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wake {
    /// Tasks of this kind became visible on this queue.
    Queue {
        /// The queue.
        queue: String,
        /// The kind of the tasks.
        kind: crate::TaskKind,
    },
    /// Notices may have been lost (the listener reconnected, or this subscriber lagged): poll every
    /// queue, or look at every instance awaited.
    MayHaveMissed,
    /// An instance ended (completed, failed, cancelled, terminated or continued as new). Only
    /// subscribers to ends ([`Store::watch_ends`](crate::Store::watch_ends)) get it.
    Ended {
        /// The instance.
        instance: String,
    },
}

/// The in-process hub of a store.
#[derive(Debug, Clone)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Wake>,
    ends: broadcast::Sender<Wake>,
}

impl Hub {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        let (ends, _) = broadcast::channel(1024);
        Hub { tx, ends }
    }

    /// Tells the subscribers to wake-ups; [`Wake::MayHaveMissed`] goes to the subscribers to
    /// ends as well, and [`Wake::Ended`] to them only.
    pub(crate) fn announce(&self, wake: Wake) {
        // No subscriber is not an error: nobody is idle, nobody waits.
        match wake {
            Wake::Ended { .. } => {
                let _ = self.ends.send(wake);
            }
            Wake::MayHaveMissed => {
                let _ = self.ends.send(Wake::MayHaveMissed);
                let _ = self.tx.send(wake);
            }
            Wake::Queue { .. } => {
                let _ = self.tx.send(wake);
            }
        }
    }

    pub(crate) fn subscribe_ends(
        &self,
        keepalive: Option<std::sync::Arc<dyn Send + Sync>>,
    ) -> Wakeups {
        Wakeups {
            rx: self.ends.subscribe(),
            _keepalive: keepalive,
        }
    }

    pub(crate) fn subscribe(&self, keepalive: Option<std::sync::Arc<dyn Send + Sync>>) -> Wakeups {
        Wakeups {
            rx: self.tx.subscribe(),
            _keepalive: keepalive,
        }
    }
}

/// A subscription to wake-ups. Dropping it unsubscribes.
pub struct Wakeups {
    rx: broadcast::Receiver<Wake>,
    // Keeps a backend's listener task alive while someone subscribes.
    _keepalive: Option<std::sync::Arc<dyn Send + Sync>>,
}

impl std::fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakeups").finish_non_exhaustive()
    }
}

impl Wakeups {
    /// The next notice. Waits forever if the store is gone and nothing more can come.
    pub async fn recv(&mut self) -> Wake {
        match self.rx.recv().await {
            Ok(wake) => wake,
            Err(broadcast::error::RecvError::Lagged(_)) => Wake::MayHaveMissed,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// The next notice, or `None` after `timeout` (the polling fallback's interval).
    pub async fn wait(&mut self, timeout: Duration) -> Option<Wake> {
        tokio::time::timeout(timeout, self.recv()).await.ok()
    }

    /// A notice already waiting, without blocking.
    pub fn try_recv(&mut self) -> Option<Wake> {
        match self.rx.try_recv() {
            Ok(wake) => Some(wake),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(Wake::MayHaveMissed),
            Err(_) => None,
        }
    }
}
