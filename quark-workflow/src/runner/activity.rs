//! Activity and job attempts: under their timeouts, heartbeats and cancellation, with their
//! effects (a transactional attempt's transaction, its outbox messages) committed with the result.

use std::sync::Arc;
use std::time::Duration;

use quark_history::{ClaimedTask, HistoryEvent, Payload, Store, StoreConfig};

use super::{Handled, HandlerError, HostRef, Runner, now};
use crate::activity::{
    ActivityContext, ActivityEffects, ActivityInfo, CancellationToken, HeartbeatSink, JobControl,
    ProgressSink,
};
use crate::definition::ActivityOptions;
use crate::error::ActivityError;
use crate::job::job_commit;
use crate::participant;
use crate::task::{ActivityTask, TaskPayload, activity_commit};

impl Runner {
    /// One activity attempt. Its result goes into the history of the instance that scheduled it;
    /// if that instance is warm here, together with the turn the result unblocks.
    pub(super) async fn activity(
        &self,
        task: ClaimedTask,
        host: HostRef,
    ) -> Result<Handled, HandlerError> {
        let Ok(TaskPayload::Activity(activity)) = TaskPayload::from_bytes(&task.payload) else {
            return Err(HandlerError::Rejected(
                "the activity task's payload cannot be decoded".into(),
            ));
        };
        let info = ActivityInfo::new(
            &activity.instance_id,
            activity.command,
            &activity.activity,
            task.lease.attempt,
        );
        let _turn = transaction_turn(&host, &activity.options).await;
        let effects = self
            .effects_for(host.store(), &activity.options, &task)
            .await?
            .on_entities(self.entities(host.store()))
            .on_shard(self.shard.get().cloned());
        let input = activity.input.clone();
        let Some(result) = self
            .attempt(info, input, &activity.options, &host, None, &effects)
            .await?
        else {
            // The orchestration decides what a missing activity means; it is not retried.
            let error = ActivityError::message(format!(
                "no activity `{}` is registered on the worker that took it",
                activity.activity
            ))
            .terminal();
            let mut commit = activity_commit(&task, &activity, Err(error), now(&host));
            self.news_across_shards(&mut commit, None, &host).await?;
            return Ok(Handled::Commit(commit));
        };
        let result = fit_for_history(host.store().config(), &activity, task.lease.attempt, result);
        let ok = result.is_ok();
        let (mut plain, tx) = effects
            .finish(activity_commit(&task, &activity, result, now(&host)), ok)
            .await?;
        // An entity command run on its entity's shard for an orchestration on another: the
        // result goes back through the outbox.
        let remote = self.elsewhere(&activity.instance_id).await?.is_some();
        self.news_across_shards(&mut plain, None, &host).await?;
        if let Some(tx) = tx {
            // Its writes, its messages and its result: one transaction, fenced by the lease. A
            // lost lease or a failed commit rolls the writes back; the task is released and run
            // again (or, if the lease is gone, by its new holder).
            return match commit_attempt(&host, &effects, &task, tx, plain.clone()).await {
                Ok(_) => Ok(Handled::Settled),
                Err(quark_history::Error::InstanceClosed { .. }) => {
                    // The orchestration ended meanwhile: the writes are rolled back and the
                    // result has nobody to go to; the settle step completes the task.
                    let mut plain = plain;
                    plain.outbox.clear();
                    Ok(Handled::Commit(plain))
                }
                Err(e) => Err(e.into()),
            };
        }
        if !remote && self.commit_continued(&task, &plain, &host).await {
            return Ok(Handled::Settled);
        }
        Ok(Handled::Commit(plain))
    }

    /// One attempt of a job: an activity enqueued on its own, with progress reports and the
    /// checkpoint its last attempt saved.
    pub(super) async fn job(
        &self,
        task: ClaimedTask,
        host: HostRef,
    ) -> Result<Handled, HandlerError> {
        let Ok(TaskPayload::Job(job)) = TaskPayload::from_bytes(&task.payload) else {
            return Err(HandlerError::Rejected(
                "the job's payload cannot be decoded".into(),
            ));
        };
        let info = ActivityInfo::new("", 0, &job.activity, task.lease.attempt);
        // A retried job resumes from the checkpoint its last attempt saved.
        let checkpoint = if task.lease.attempt > 1 {
            host.store()
                .job_progress(task.lease.task_id)
                .await?
                .and_then(|p| p.checkpoint)
        } else {
            None
        };
        let progress: ProgressSink = {
            let host = Arc::clone(&host);
            Arc::new(move |p| {
                let host = Arc::clone(&host);
                Box::pin(async move { host.store().report_progress(host.lease(), p).await })
            })
        };
        let control = JobControl {
            id: task.lease.task_id,
            progress,
            checkpoint,
        };
        let _turn = transaction_turn(&host, &job.options).await;
        let effects = self
            .effects_for(host.store(), &job.options, &task)
            .await?
            .on_entities(self.entities(host.store()))
            .on_shard(self.shard.get().cloned());
        let input = job.input.clone();
        let Some(result) = self
            .attempt(info, input, &job.options, &host, Some(control), &effects)
            .await?
        else {
            return Err(HandlerError::Rejected(format!(
                "no activity `{}` is registered on the worker that took this job",
                job.activity
            )));
        };
        let ok = result.is_ok();
        let (commit, tx) = effects
            .finish(job_commit(&task, &job, result, now(&host)), ok)
            .await?;
        match tx {
            Some(tx) => {
                commit_attempt(&host, &effects, &task, tx, commit).await?;
                Ok(Handled::Settled)
            }
            None => Ok(Handled::Commit(commit)),
        }
    }

    /// One attempt of a registered activity under its timeouts: `None` if it is not registered
    /// here. A missed heartbeat or a start-to-close timeout fires the activity's cancellation token
    /// and fails the attempt (retryably); a panic fails it (retryably); a lost lease abandons it;
    /// an operator's stop fires the token and lets the activity end as it decides.
    async fn attempt(
        &self,
        info: ActivityInfo,
        input: Payload,
        options: &ActivityOptions,
        host: &HostRef,
        job: Option<JobControl>,
        effects: &ActivityEffects,
    ) -> Result<Option<Result<Payload, ActivityError>>, HandlerError> {
        let cancel = CancellationToken::new();
        let beats = Arc::new(tokio::sync::Notify::new());
        let sink: HeartbeatSink = {
            let (beats, host) = (Arc::clone(&beats), Arc::clone(host));
            Arc::new(move |info: &ActivityInfo, progress| {
                beats.notify_one();
                host.heartbeat(info, progress);
            })
        };
        let name = info.activity.clone();
        let mut ctx =
            ActivityContext::new(info, Some(sink), cancel.clone()).with_effects(effects.clone());
        if let Some(job) = job {
            ctx = ctx.with_job(job);
        }
        let Some(run) = self.registry.run_activity(&name, ctx, input) else {
            return Ok(None);
        };
        let start_to_close = options.start_to_close.unwrap_or(Duration::MAX);
        let run = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run));
        let stop = host.stop_requested();
        let stopping = async {
            stop.await;
            cancel.cancel();
            std::future::pending::<()>().await
        };
        let result = tokio::select! {
            result = run => result.unwrap_or_else(|panic| {
                let message = crate::executor::panic_message(panic.as_ref());
                Err(ActivityError::message(format!("the activity panicked: {message}")))
            }),
            () = stopping => unreachable!("pending"),
            () = tokio::time::sleep(start_to_close) => {
                cancel.cancel();
                Err(ActivityError::message(format!("timed out after {start_to_close:?} (start_to_close)")))
            }
            () = missed_heartbeat(options.heartbeat, &beats) => {
                cancel.cancel();
                Err(ActivityError::message("no heartbeat within the heartbeat timeout"))
            }
            () = host.cancelled() => {
                // The lease is gone: whoever holds the task now runs it.
                cancel.cancel();
                return Err(HandlerError::LeaseLost);
            }
        };
        Ok(Some(result))
    }
}

/// An activity's output that is too large to record fails the activity for good instead. The
/// store would refuse the `ActivityCompleted` event, the task would be dead-lettered, and the
/// orchestration would wait for ever without hearing of it; this way it gets a terminal
/// `ActivityFailed` naming the size and the limit, and decides what to do.
fn fit_for_history(
    config: &StoreConfig,
    task: &ActivityTask,
    attempt: u32,
    result: Result<Payload, ActivityError>,
) -> Result<Payload, ActivityError> {
    let limit = config.max_payload_bytes;
    let output = match result {
        // Far below the limit, so is the event that carries it: no need to encode it twice.
        Ok(output) if output.len() <= limit / 2 => return Ok(output),
        Ok(output) => output,
        Err(e) => return Err(e),
    };
    let event = HistoryEvent::ActivityCompleted {
        command: task.command,
        output,
        attempt,
    };
    let size = match config.codec.encode(&event) {
        Ok(bytes) => bytes.len(),
        Err(e) => return Err(ActivityError::from(e).terminal()),
    };
    match event {
        HistoryEvent::ActivityCompleted { output, .. } if size <= limit => Ok(output),
        _ => Err(ActivityError::message(format!(
            "its result is too large to record: {size} bytes as a history event, over the \
             payload limit of {limit} bytes (StoreConfig::max_payload_bytes); store large data \
             elsewhere and return a reference to it"
        ))
        .terminal()),
    }
}

/// For a transactional attempt, waits for the driver's turn to hold a transaction.
async fn transaction_turn(host: &HostRef, options: &ActivityOptions) -> Option<Box<dyn Send>> {
    if options.transactional {
        host.transaction_turn().await
    } else {
        None
    }
}

impl Runner {
    /// The effects of an attempt of `task`, an activity with `options`: a transaction on the
    /// store for a transactional one (see [`ActivityContext::transaction`]), with branches in the
    /// runner's participants (see `ActivityContext::participant`).
    async fn effects_for(
        &self,
        store: &Arc<dyn Store>,
        options: &ActivityOptions,
        task: &ClaimedTask,
    ) -> Result<ActivityEffects, quark_history::Error> {
        if !options.transactional {
            return Ok(ActivityEffects::new(None).on_store(Arc::clone(store)));
        }
        #[cfg(feature = "postgres")]
        let coordinator = self.two_phase.coordinator(store);
        #[cfg(feature = "postgres")]
        if let Some(coordinator) = &coordinator {
            participant::abandon_earlier(coordinator, task.lease.task_id, task.lease.attempt).await;
        }
        #[cfg(not(feature = "postgres"))]
        let _ = task;
        let effects =
            ActivityEffects::new(Some(store.begin_tx().await?)).on_store(Arc::clone(store));
        #[cfg(feature = "postgres")]
        let effects = match coordinator {
            Some(coordinator) => effects.on_two_phase(coordinator),
            None => effects,
        };
        Ok(effects)
    }
}

/// Commits a transactional attempt's `commit` in its transaction `tx`, with its writes in other
/// databases: prepared first, the decision to commit them written in `tx`, finished after.
async fn commit_attempt(
    host: &HostRef,
    effects: &ActivityEffects,
    task: &ClaimedTask,
    mut tx: quark_history::StoreTx,
    commit: quark_history::Commit,
) -> Result<quark_history::Committed, quark_history::Error> {
    let pending =
        participant::prepare(effects, task.lease.task_id, task.lease.attempt, &mut tx).await?;
    let committed = host.commit_tx(tx, commit).await;
    participant::finish(effects, pending, committed.is_ok()).await;
    committed
}

/// Resolves when `every` passes without a heartbeat; never, without a heartbeat timeout.
async fn missed_heartbeat(every: Option<Duration>, beats: &tokio::sync::Notify) {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    while tokio::time::timeout(every, beats.notified()).await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> ActivityTask {
        ActivityTask {
            instance_id: "i".into(),
            command: 1,
            activity: "export".into(),
            input: Payload::unit(),
            orchestration_queue: "default".into(),
            scheduled_at: quark_history::Timestamp::EPOCH,
            options: ActivityOptions::default(),
        }
    }

    /// The size of the event that records `output`.
    fn recorded(config: &StoreConfig, output: &Payload) -> usize {
        let event = HistoryEvent::ActivityCompleted {
            command: 1,
            output: output.clone(),
            attempt: 1,
        };
        config.codec.encode(&event).unwrap().len()
    }

    #[test]
    fn an_output_whose_event_fits_the_limit_exactly_passes_and_one_byte_more_fails_for_good() {
        let output = Payload::json(&"x".repeat(1000)).unwrap();
        let size = recorded(&StoreConfig::default(), &output);
        let config = StoreConfig::default().max_payload_bytes(size);
        let fits = fit_for_history(&config, &task(), 1, Ok(output.clone()));
        assert_eq!(fits.unwrap(), output);

        let config = StoreConfig::default().max_payload_bytes(size - 1);
        let error = fit_for_history(&config, &task(), 1, Ok(output)).unwrap_err();
        assert!(!error.is_retryable());
        let expected = format!(
            "too large to record: {size} bytes as a history event, over the payload limit of {} \
             bytes",
            size - 1
        );
        assert!(error.text().contains(&expected), "{}", error.text());
    }

    #[test]
    fn a_failure_passes_through_untouched() {
        let config = StoreConfig::default().max_payload_bytes(10);
        let error = fit_for_history(&config, &task(), 1, Err(ActivityError::message("nope")));
        let error = error.unwrap_err();
        assert_eq!((error.text(), error.is_retryable()), ("nope", true));
    }
}
