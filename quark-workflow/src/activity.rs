//! What an activity sees while it runs: its attempt, heartbeats and cancellation.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use quark_history::{
    Append, CommandId, Commit, Destination, OutboxMessage, Payload, Received, Store, StoreTx,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ActivityError;
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

/// Records a job's progress durably (the worker writes it under the job's lease).
pub type ProgressSink = Arc<
    dyn Fn(quark_history::Progress) -> BoxFuture<'static, Result<(), quark_history::Error>>
        + Send
        + Sync,
>;

/// What an activity run as a durable job has besides an activity's context.
#[derive(Clone)]
pub struct JobControl {
    /// The job's id.
    pub id: i64,
    /// Where progress reports go.
    pub progress: ProgressSink,
    /// The checkpoint an earlier attempt saved, if any.
    pub checkpoint: Option<Vec<u8>>,
}

impl fmt::Debug for JobControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobControl")
            .field("id", &self.id)
            .field("checkpoint", &self.checkpoint.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// What an attempt leaves to be written with its result: the transaction a transactional
/// activity wrote in, the outbox messages it sent and the entity events it decided. Shared between the runtime, which opens the
/// transaction before the attempt and finishes it with the result's commit, and the attempt's
/// [`ActivityContext`].
#[derive(Clone, Default)]
pub struct ActivityEffects {
    inner: Arc<EffectsInner>,
}

#[derive(Default)]
struct EffectsInner {
    tx: tokio::sync::Mutex<Option<StoreTx>>,
    outbox: std::sync::Mutex<Vec<OutboxMessage>>,
    /// Entity events decided by the attempt, one append per stream, at the version decided on.
    appends: std::sync::Mutex<Vec<Append>>,
    /// The store entity commands read their state from.
    store: Option<Arc<dyn Store>>,
    /// The live entities of the process (a worker's), kept warm between attempts.
    entities: Option<crate::entity::Entities>,
    /// The deployment's shards and the position of the one `store` is, if sharded: an entity
    /// on another shard cannot be written in this attempt's commit.
    shard: Option<(quark_history::shards::Shards, usize)>,
    /// Whether the attempt has a transaction (whether or not it still holds it).
    transactional: bool,
    /// Its branches in other databases, committed by two-phase commit with its result.
    #[cfg(feature = "postgres")]
    two_phase: Option<crate::participant::AttemptBranches>,
}

impl fmt::Debug for ActivityEffects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivityEffects")
            .field("messages", &self.messages().len())
            .finish_non_exhaustive()
    }
}

impl ActivityEffects {
    /// Effects for an attempt that writes in `tx` (a transactional activity) or in no
    /// transaction of its own (`None`).
    pub fn new(tx: Option<StoreTx>) -> Self {
        ActivityEffects {
            inner: Arc::new(EffectsInner {
                transactional: tx.is_some(),
                tx: tokio::sync::Mutex::new(tx),
                outbox: std::sync::Mutex::default(),
                appends: std::sync::Mutex::default(),
                store: None,
                entities: None,
                shard: None,
                #[cfg(feature = "postgres")]
                two_phase: None,
            }),
        }
    }

    /// These effects, writing in other databases through `coordinator`'s participants
    /// ([`ActivityContext::participant`]). Only a transactional attempt's: its engine
    /// transaction records the decision. Call it before the effects are shared.
    #[cfg(feature = "postgres")]
    pub fn on_two_phase(mut self, coordinator: quark_history::two_phase::Coordinator) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner)
            && inner.transactional
        {
            inner.two_phase = Some(crate::participant::AttemptBranches::new(coordinator));
        }
        self
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn two_phase(&self) -> Option<&crate::participant::AttemptBranches> {
        self.inner.two_phase.as_ref()
    }

    /// Whether the attempt is a transactional activity's.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn is_transactional(&self) -> bool {
        self.inner.transactional
    }

    /// These effects, with `store` for the entity commands the attempt runs
    /// ([`ActivityContext::entity`]). Call it before the effects are shared.
    pub fn on_store(mut self, store: Arc<dyn Store>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.store = Some(store);
        }
        self
    }

    pub(crate) fn store(&self) -> Option<&Arc<dyn Store>> {
        self.inner.store.as_ref()
    }

    /// These effects, on shard `here` of `shards`: an entity command on an entity of another
    /// shard is refused. Call it before the effects are shared.
    pub(crate) fn on_shard(
        mut self,
        shard: Option<(quark_history::shards::Shards, usize)>,
    ) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.shard = shard;
        }
        self
    }

    /// The name of the shard `stream` lives on, if the attempt is sharded and it is not this
    /// attempt's.
    pub(crate) async fn shard_elsewhere(
        &self,
        stream: &str,
    ) -> quark_history::Result<Option<String>> {
        let Some((shards, here)) = &self.inner.shard else {
            return Ok(None);
        };
        let there = shards.locate(stream).await?;
        Ok((there != *here).then(|| shards.map().names()[there].clone()))
    }

    /// These effects, reading entity states through `entities` (kept warm between attempts)
    /// rather than loading them from the store each time. Call it before the effects are
    /// shared.
    pub fn on_entities(mut self, entities: crate::entity::Entities) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.entities = Some(entities);
        }
        self
    }

    pub(crate) fn entities(&self) -> Option<&crate::entity::Entities> {
        self.inner.entities.as_ref()
    }

    /// The entity appends decided so far.
    pub(crate) fn appends(&self) -> std::sync::MutexGuard<'_, Vec<Append>> {
        self.inner.appends.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn messages(&self) -> std::sync::MutexGuard<'_, Vec<OutboxMessage>> {
        self.inner.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After the attempt: `commit` (its result) with the messages it sent if it `succeeded`, and
    /// the transaction to write it in. A failed attempt's messages are dropped and its
    /// transaction is rolled back here; its result is committed on its own.
    pub async fn finish(
        &self,
        mut commit: Commit,
        succeeded: bool,
    ) -> Result<(Commit, Option<StoreTx>), quark_history::Error> {
        let messages = std::mem::take(&mut *self.messages());
        let appends = std::mem::take(&mut *self.appends());
        // The attempt is over, so nothing else holds the lock; a task the activity spawned and
        // left running with the transaction loses it.
        let tx = self.inner.tx.try_lock().ok().and_then(|mut tx| tx.take());
        if !succeeded {
            // Its branches in other databases roll back with it (their sessions close).
            #[cfg(feature = "postgres")]
            if let Some(two_phase) = &self.inner.two_phase {
                two_phase.clear();
            }
            if let Some(tx) = tx {
                tx.rollback().await?;
            }
            return Ok((commit, None));
        }
        commit.outbox.extend(messages);
        // The entity events land with the result or not at all: a stream that moved on since
        // they were decided fails the commit with a conflict, and the attempt runs again.
        commit.appends.extend(appends);
        Ok((commit, tx))
    }
}

/// The context of one activity attempt.
#[derive(Clone)]
pub struct ActivityContext {
    info: ActivityInfo,
    heartbeat: Option<HeartbeatSink>,
    cancel: CancellationToken,
    job: Option<JobControl>,
    effects: ActivityEffects,
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
            job: None,
            effects: ActivityEffects::default(),
        }
    }

    /// The effects the attempt writes with its result.
    pub(crate) fn effects(&self) -> &ActivityEffects {
        &self.effects
    }

    /// This context writing its effects (transaction, outbox messages) to `effects`.
    pub fn with_effects(mut self, effects: ActivityEffects) -> Self {
        self.effects = effects;
        self
    }

    /// The database transaction of a transactional activity (`#[activity(transactional)]`): run
    /// your statements on [`StoreTx::postgres`] or [`StoreTx::sqlite`]. They commit in one
    /// transaction with the activity's completion event and its outbox messages, or not at all: a
    /// failed attempt, a crash or a lost lease rolls them back, and a completed activity is never
    /// run again, so they happen exactly once. Keep the guard for as short as you can; on SQLite
    /// the transaction holds the database's only writer.
    ///
    /// An activity that is not transactional gets a terminal error.
    pub async fn transaction(
        &self,
    ) -> Result<tokio::sync::MappedMutexGuard<'_, StoreTx>, ActivityError> {
        let guard = self.effects.inner.tx.lock().await;
        tokio::sync::MutexGuard::try_map(guard, Option::as_mut).map_err(|_| {
            ActivityError::message(format!(
                "activity `{}` has no transaction: declare it #[activity(transactional)]",
                self.info.activity
            ))
            .terminal()
        })
    }

    /// The outbox: messages sent here are written with the activity's result (in its transaction,
    /// for a transactional activity) and relayed after it commits. A failed attempt sends none.
    pub fn outbox(&self) -> ActivityOutbox<'_> {
        ActivityOutbox { ctx: self }
    }

    /// The inbox of a transactional activity: run a message's effects once per message id.
    pub fn inbox(&self) -> ActivityInbox<'_> {
        ActivityInbox {
            ctx: self,
            window: quark_history::DEFAULT_INBOX_WINDOW,
        }
    }

    /// This context for an attempt of a durable job.
    pub fn with_job(mut self, job: JobControl) -> Self {
        self.job = Some(job);
        self
    }

    /// The job's id, when the activity runs as a durable job.
    pub fn job_id(&self) -> Option<i64> {
        self.job.as_ref().map(|j| j.id)
    }

    /// Reports progress: `percent` done (0 to 100) and a short note. For a job it is stored, and
    /// readable with `Client::job` and `quark job show`, before this returns; for an activity in
    /// an orchestration it is a heartbeat.
    pub async fn progress(
        &self,
        percent: f32,
        message: impl Into<String>,
    ) -> Result<(), ActivityError> {
        self.report(percent, message.into(), None).await
    }

    /// Saves a checkpoint (small: a cursor, a count, a file offset) with the progress so far. A
    /// later attempt of the same job, after a failure or a crash, gets it from
    /// [`resume_from`](Self::resume_from). Outside a job it is a heartbeat.
    pub async fn checkpoint<T: Serialize>(
        &self,
        percent: f32,
        state: &T,
    ) -> Result<(), ActivityError> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| ActivityError::message(format!("checkpoint: {e}")).terminal())?;
        self.report(percent, String::new(), Some(bytes)).await
    }

    /// The checkpoint the last attempt of this job saved, if any: where to resume.
    pub fn resume_from<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = self.job.as_ref()?.checkpoint.as_ref()?;
        serde_json::from_slice(bytes).ok()
    }

    async fn report(
        &self,
        percent: f32,
        message: String,
        checkpoint: Option<Vec<u8>>,
    ) -> Result<(), ActivityError> {
        let Some(job) = &self.job else {
            self.heartbeat(&(percent, message));
            return Ok(());
        };
        let progress = quark_history::Progress {
            percent: Some(percent.clamp(0.0, 100.0)),
            message: (!message.is_empty()).then_some(message),
            checkpoint,
            updated_at: quark_history::Timestamp::EPOCH,
        };
        (job.progress)(progress)
            .await
            .map_err(|e| ActivityError::message(format!("progress could not be saved: {e}")))
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

/// Sends outbox messages with an activity's result. See [`ActivityContext::outbox`].
#[derive(Debug, Clone, Copy)]
pub struct ActivityOutbox<'a> {
    ctx: &'a ActivityContext,
}

impl ActivityOutbox<'_> {
    /// Sends `message` (JSON) to `destination`, with a fresh idempotency key and the
    /// destination's ordering key.
    pub fn send<T: Serialize + ?Sized>(
        &self,
        destination: Destination,
        message: &T,
    ) -> Result<(), ActivityError> {
        let message = OutboxMessage::json(destination, message)
            .map_err(|e| ActivityError::message(format!("outbox message: {e}")).terminal())?;
        self.message(message);
        Ok(())
    }

    /// Sends a message built in full (ordering key, idempotency key, headers).
    pub fn message(&self, message: OutboxMessage) {
        self.ctx.effects.messages().push(message);
    }
}

/// Receives messages once per id in a transactional activity. See [`ActivityContext::inbox`].
#[derive(Debug, Clone, Copy)]
pub struct ActivityInbox<'a> {
    ctx: &'a ActivityContext,
    window: std::time::Duration,
}

impl ActivityInbox<'_> {
    /// Sets the deduplication window (default [`DEFAULT_INBOX_WINDOW`](quark_history::DEFAULT_INBOX_WINDOW), 7 days).
    pub fn window(mut self, window: std::time::Duration) -> Self {
        self.window = window;
        self
    }

    /// Runs `handler` in the activity's transaction unless `message_id` was received within the
    /// window. The id commits with the handler's writes and the activity's result; a handler that
    /// fails leaves neither behind. A duplicate is reported as [`Received::Duplicate`] and the
    /// handler does not run.
    pub async fn once<T>(
        &self,
        message_id: &str,
        handler: impl AsyncFnOnce(&mut StoreTx) -> Result<T, ActivityError>,
    ) -> Result<Received<T>, ActivityError> {
        let mut tx = self.ctx.transaction().await?;
        tx.once(message_id, self.window, handler).await
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
