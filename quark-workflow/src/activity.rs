//! What an activity sees while it runs: its attempt, heartbeats and cancellation.

use std::fmt;
use std::sync::Arc;

use quark_history::{CommandId, Payload};
use serde::Serialize;
use tokio::sync::watch;

/// Identifies one attempt of one activity.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActivityInfo {
    /// The instance that scheduled it.
    pub instance_id: String,
    /// The `ActivityScheduled` command id.
    pub command: CommandId,
    /// The activity's registered name.
    pub activity: String,
    /// The attempt, from 1.
    pub attempt: u32,
}

impl ActivityInfo {
    /// An attempt of `activity` for command `command` of `instance_id`.
    pub fn new(instance_id: &str, command: CommandId, activity: &str, attempt: u32) -> Self {
        ActivityInfo {
            instance_id: instance_id.to_string(),
            command,
            activity: activity.to_string(),
            attempt,
        }
    }
}

/// Receives heartbeats: the worker extends the task's lease, the test environment records them.
pub type HeartbeatSink = Arc<dyn Fn(&ActivityInfo, Option<Payload>) + Send + Sync>;

/// The context of one activity attempt.
#[derive(Clone)]
pub struct ActivityContext {
    info: ActivityInfo,
    heartbeat: Option<HeartbeatSink>,
    cancel: CancellationToken,
}

impl fmt::Debug for ActivityContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityContext")
            .field("info", &self.info)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl ActivityContext {
    /// A context for `info`; heartbeats go to `heartbeat`, if any.
    pub fn new(
        info: ActivityInfo,
        heartbeat: Option<HeartbeatSink>,
        cancel: CancellationToken,
    ) -> Self {
        ActivityContext {
            info,
            heartbeat,
            cancel,
        }
    }

    /// Which attempt this is, from 1. Use it to make a retried effect idempotent.
    pub fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// The attempt's identity.
    pub fn info(&self) -> &ActivityInfo {
        &self.info
    }

    /// Reports that the activity is alive, with optional progress (for a long activity with a
    /// heartbeat timeout, call it more often than that timeout).
    pub fn heartbeat<P: Serialize>(&self, progress: &P) {
        if let Some(sink) = &self.heartbeat {
            sink(&self.info, Payload::json(progress).ok());
        }
    }

    /// The token that is cancelled when the attempt should stop (lost lease, shutdown, timeout).
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the attempt should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// A cancellation signal shared by clones.
#[derive(Debug, Clone)]
pub struct CancellationToken {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for CancellationToken {
    fn default() -> Self {
        CancellationToken {
            tx: Arc::new(watch::Sender::new(false)),
        }
    }
}

impl CancellationToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels it, waking every waiter.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    /// Whether it is cancelled.
    pub fn is_cancelled(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once it is cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we borrow it.
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn cancellation_wakes_a_waiter_and_heartbeats_reach_the_sink() {
        let token = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let sink: HeartbeatSink = Arc::new(move |info, p| {
            sink_seen.lock().unwrap().push((info.attempt, p));
        });
        let ctx =
            ActivityContext::new(ActivityInfo::new("i", 1, "a", 2), Some(sink), token.clone());
        ctx.heartbeat(&50u8);
        assert_eq!(
            seen.lock().unwrap()[0],
            (2, Some(Payload::json(&50u8).unwrap()))
        );
        let waiter = tokio::spawn({
            let t = token.clone();
            async move { t.cancelled().await }
        });
        assert!(!ctx.is_cancelled());
        token.cancel();
        waiter.await.unwrap();
        assert!(ctx.is_cancelled());
    }
}
