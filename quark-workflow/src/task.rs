//! The payloads of activity and timer tasks, and the commits that settle them.
//!
//! An orchestration turn enqueues an activity task (`TaskKind::Activity`, on the activity's queue)
//! for every `ActivityScheduled` event it appends, and a timer task (`TaskKind::Timer`, on the
//! orchestration's queue, `visible_at = fire_at`) for every `TimerCreated`. Their payload is
//! [`TaskPayload`] as JSON, tagged by `type`:
//!
//! ```json
//! {"type":"activity","instance_id":"order-1","command":1,"activity":"charge_card",
//!  "input":{"json":{"cents":500}},"orchestration_queue":"default",
//!  "scheduled_at":1764216000000000,
//!  "options":{"queue":null,"retry":{"max_attempts":5,"initial_ms":1000,"max_ms":60000},
//!             "start_to_close_ms":30000,"schedule_to_close_ms":null,"heartbeat_ms":null,
//!             "transactional":false}}
//! {"type":"timer","instance_id":"order-1","command":2,"fire_at":1766808000000000,
//!  "orchestration_queue":"default"}
//! ```
//!
//! Times are microseconds since the Unix epoch; durations are milliseconds. Whoever runs the task
//! (the worker, or the test environment) settles it with [`activity_commit`] or [`timer_commit`]:
//! one commit that appends the result to the instance's history, enqueues its next orchestration
//! turn and completes (or, for a retryable failure, retries) the task.

use std::time::Duration;

use quark_history::{
    ClaimedTask, CommandId, Commit, Expected, FailAction, HistoryEvent, NewTask, Payload, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::definition::ActivityOptions;
use crate::error::ActivityError;

/// What an activity or timer task asks for. Stored as JSON in `NewTask::payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskPayload {
    /// Run an activity.
    Activity(ActivityTask),
    /// Fire a timer.
    Timer(TimerTask),
    /// Run an activity as a job.
    Job(crate::job::JobTask),
    /// Answer a query, or validate and start an update.
    Request(RequestTask),
}

/// A query or an update of `instance_id`, the payload of a [`TaskKind::Request`] task.
///
/// [`TaskKind::Request`]: quark_history::TaskKind::Request
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestTask {
    /// The request's id: its answer is stored under it (for an update, the `update_id` of its
    /// history events).
    pub id: String,
    /// The instance it is for.
    pub instance_id: String,
    /// A query or an update.
    pub kind: RequestKind,
    /// The query's or the update's name.
    pub name: String,
    /// Its argument.
    pub input: Payload,
}

/// Whether a request reads or changes its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A query: answered from the state, recorded nowhere.
    Query,
    /// An update: validated, then recorded and run.
    Update,
}

/// Run activity `activity` with `input` for command `command` of `instance_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityTask {
    /// The instance that scheduled it.
    pub instance_id: String,
    /// The `ActivityScheduled` command id.
    pub command: CommandId,
    /// The registered activity name.
    pub activity: String,
    /// The input.
    pub input: Payload,
    /// The queue of the instance's orchestration tasks (to enqueue the next turn).
    pub orchestration_queue: String,
    /// When the orchestration scheduled it (by history time), for `schedule_to_close`.
    pub scheduled_at: Timestamp,
    /// Retries and timeouts.
    pub options: ActivityOptions,
}

/// Fire timer `command` of `instance_id`. The task becomes visible at `fire_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerTask {
    /// The instance that created it.
    pub instance_id: String,
    /// The `TimerCreated` command id.
    pub command: CommandId,
    /// When it fires.
    pub fire_at: Timestamp,
    /// The queue of the instance's orchestration tasks.
    pub orchestration_queue: String,
}

impl TaskPayload {
    /// The JSON bytes stored in the task.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and JSON payloads always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a stored payload.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub(crate) fn activity_task(task: ActivityTask, queue: &str) -> NewTask {
        let instance = task.instance_id.clone();
        NewTask::new(quark_history::TaskKind::Activity, queue)
            .instance(instance)
            .payload(TaskPayload::Activity(task).to_bytes())
    }

    /// The task that carries `request` on `queue` (its instance's).
    pub(crate) fn request_task(request: RequestTask, queue: &str) -> NewTask {
        let instance = request.instance_id.clone();
        NewTask::new(quark_history::TaskKind::Request, queue)
            .instance(instance)
            .payload(TaskPayload::Request(request).to_bytes())
    }

    pub(crate) fn timer_task(task: TimerTask) -> NewTask {
        let queue = task.orchestration_queue.clone();
        let (instance, at) = (task.instance_id.clone(), task.fire_at);
        NewTask::new(quark_history::TaskKind::Timer, queue)
            .instance(instance)
            .visible_at(at)
            .payload(TaskPayload::Timer(task).to_bytes())
    }
}

/// The commit that settles an activity attempt held under `claimed`.
///
/// Success appends `ActivityCompleted`; a terminal error, exhausted retries or an expired
/// `schedule_to_close` append `ActivityFailed`; both enqueue the next orchestration turn and
/// complete the task. A retryable error with attempts left only releases the task to run again
/// after the policy's backoff (`now` is the caller's clock).
pub fn activity_commit(
    claimed: &ClaimedTask,
    task: &ActivityTask,
    result: Result<Payload, ActivityError>,
    now: Timestamp,
) -> Commit {
    let attempt = claimed.lease.attempt;
    let event = match result {
        Ok(output) => HistoryEvent::ActivityCompleted {
            command: task.command,
            output,
            attempt,
        },
        Err(error) => {
            let deadline = task
                .options
                .schedule_to_close
                .map(|d| task.scheduled_at + d);
            let retry_at = match task.options.retry.jittered_delay_after(
                attempt,
                claimed.lease.task_id as u64 ^ now.as_micros() as u64,
            ) {
                Some(delay) if error.is_retryable() => Some(now + delay),
                _ => None,
            };
            match retry_at {
                Some(at) if deadline.is_none_or(|d| at < d) => {
                    return Commit::new().fail(
                        claimed.lease.clone(),
                        FailAction::Retry {
                            at,
                            error: Some(error.to_string()),
                        },
                    );
                }
                _ => HistoryEvent::ActivityFailed {
                    command: task.command,
                    failure: error.to_failure(),
                    attempt,
                },
            }
        }
    };
    resolve(claimed, &task.instance_id, &task.orchestration_queue, event)
}

/// The commit that fires a timer held under `claimed`.
pub fn timer_commit(claimed: &ClaimedTask, task: &TimerTask) -> Commit {
    let event = HistoryEvent::TimerFired {
        command: task.command,
    };
    resolve(claimed, &task.instance_id, &task.orchestration_queue, event)
}

fn resolve(claimed: &ClaimedTask, instance: &str, queue: &str, event: HistoryEvent) -> Commit {
    Commit::new()
        .append(instance, Expected::Any, [event])
        .enqueue(NewTask::orchestration(queue, instance))
        .complete(claimed.lease.clone())
}

/// `Duration` as integer milliseconds.
pub(crate) mod millis {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// `Option<Duration>` as integer milliseconds or `null`.
pub(crate) mod opt_millis {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_history::{Lease, Settle, TaskKind};

    fn claimed(attempt: u32) -> ClaimedTask {
        ClaimedTask {
            lease: Lease {
                task_id: 7,
                attempt,
                worker: "w".into(),
            },
            kind: TaskKind::Activity,
            queue: "default".into(),
            instance_id: Some("i".into()),
            priority: 0,
            created_at: Timestamp::EPOCH,
            visible_at: Timestamp::EPOCH,
            lease_expires_at: Timestamp::EPOCH,
            payload: Vec::new(),
            traceparent: None,
        }
    }

    fn task() -> ActivityTask {
        ActivityTask {
            instance_id: "i".into(),
            command: 3,
            activity: "charge_card".into(),
            input: Payload::unit(),
            orchestration_queue: "default".into(),
            scheduled_at: Timestamp::EPOCH,
            options: ActivityOptions::default(),
        }
    }

    #[test]
    fn the_payload_format_is_tagged_json_with_millisecond_durations() {
        let p = TaskPayload::Activity(task());
        let json: serde_json::Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(json["type"], "activity");
        assert_eq!(json["options"]["retry"]["initial_ms"], 1000);
        assert_eq!(TaskPayload::from_bytes(&p.to_bytes()).unwrap(), p);
    }

    #[test]
    fn a_retryable_failure_with_attempts_left_is_retried_after_backoff() {
        let now = Timestamp::from_millis(10_000);
        let c = activity_commit(&claimed(1), &task(), Err(ActivityError::message("x")), now);
        assert!(c.appends.is_empty());
        match c.settle {
            Some(Settle::Fail(_, FailAction::Retry { at, .. })) => {
                // The first delay (1 s), less up to a fifth of jitter.
                assert!(
                    at <= Timestamp::from_millis(11_000) && at >= Timestamp::from_millis(10_800),
                    "{at:?}"
                )
            }
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn a_terminal_failure_is_recorded_and_wakes_the_orchestration() {
        let err = ActivityError::message("card declined").terminal();
        let c = activity_commit(&claimed(1), &task(), Err(err), Timestamp::EPOCH);
        assert!(matches!(
            &c.appends[0].events[0],
            HistoryEvent::ActivityFailed { command: 3, failure, .. } if !failure.retryable
        ));
        assert_eq!(c.tasks[0].kind, TaskKind::Orchestration);
        assert!(matches!(c.settle, Some(Settle::Complete(_))));
    }
}
