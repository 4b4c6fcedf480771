//! Job workflows (DAGs of jobs) on the test environment: results flowing from parents to
//! children, the parallel stage scheduled at once, the failure rules, retries before a job counts
//! as failed, progress while it runs, and replay of the recorded histories.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use quark_history::{HistoryEvent, InstanceStatus, RecordedEvent};
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, ClientError, Job, JobInput, JobStepState, JobWorkflow,
    JobWorkflowRunError, OnFailure, Registry, Replayer, RetryPolicy, activity,
};
use serde::{Deserialize, Serialize};

/// Attempts per key: tests run in parallel, so each counts under keys of its own.
fn attempts() -> &'static Mutex<BTreeMap<String, u32>> {
    static ATTEMPTS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());
    &ATTEMPTS
}

fn count_attempt(key: &str) -> u32 {
    let mut map = attempts().lock().unwrap();
    let n = map.entry(key.to_string()).or_default();
    *n += 1;
    *n
}

fn attempts_of(key: &str) -> u32 {
    attempts().lock().unwrap().get(key).copied().unwrap_or(0)
}

#[activity]
async fn numbers(_ctx: ActivityContext, n: u64) -> Result<Vec<u64>, ActivityError> {
    Ok((1..=n).collect())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scale {
    by: u64,
    key: String,
}

/// Sums its parent `numbers` and multiplies by its own factor.
#[activity]
async fn scale(_ctx: ActivityContext, job: JobInput<Scale>) -> Result<u64, ActivityError> {
    count_attempt(&job.input.key);
    let values: Vec<u64> = job.parent("numbers")?;
    Ok(values.iter().sum::<u64>() * job.input.by)
}

/// Adds up every parent's output, and says which parents it saw.
#[activity]
async fn total(_ctx: ActivityContext, job: JobInput<()>) -> Result<String, ActivityError> {
    let mut sum = 0;
    for name in job.parents.keys() {
        sum += job.parent::<u64>(name)?;
    }
    let seen: Vec<&str> = job.parents.keys().map(String::as_str).collect();
    Ok(format!("{sum} from {}", seen.join("+")))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Flaky {
    key: String,
    /// Attempts that fail before one succeeds (`u32::MAX`: never).
    failures: u32,
    terminal: bool,
}

#[activity(retry(max_attempts = 5, initial = "1s", max = "10s"))]
async fn flaky(_ctx: ActivityContext, f: Flaky) -> Result<u32, ActivityError> {
    let attempt = count_attempt(&f.key);
    if attempt <= f.failures {
        let e = ActivityError::message(format!("{} broke on attempt {attempt}", f.key));
        return Err(if f.terminal { e.terminal() } else { e });
    }
    Ok(attempt)
}

fn registry() -> Registry {
    Registry::new()
        .register(numbers)
        .register(scale)
        .register(total)
        .register(flaky)
}

fn diamond(key: &str) -> JobWorkflow {
    let by = |by: u64| Scale {
        by,
        key: format!("{key}-{by}"),
    };
    JobWorkflow::builder()
        .add("numbers", Job::new(numbers, &4))
        .add(
            "double",
            Job::with_parents(scale, &by(2)).depends_on(["numbers"]),
        )
        .add(
            "triple",
            Job::with_parents(scale, &by(3)).depends_on(["numbers"]),
        )
        .add(
            "total",
            Job::with_parents(total, &()).depends_on(["double", "triple"]),
        )
        .build()
        .unwrap()
}

fn kinds(history: &[RecordedEvent]) -> Vec<&'static str> {
    history.iter().map(|e| e.event.kind()).collect()
}

fn assert_replays(history: &[RecordedEvent]) {
    let report = Replayer::new(registry()).replay(history).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test]
async fn a_diamond_passes_results_down_and_schedules_its_middle_stage_at_once() {
    let env = TestEnv::new(registry()).await.unwrap();
    let run = env
        .client()
        .start_job_workflow("diamond", &diamond("diamond"))
        .await
        .unwrap();
    let report = run.result().await.unwrap();
    // numbers = 1..=4 (sum 10); double = 20, triple = 30; total sees both.
    assert_eq!(report.output::<Vec<u64>>("numbers").unwrap(), [1, 2, 3, 4]);
    assert_eq!(report.output::<u64>("double").unwrap(), 20);
    assert_eq!(report.output::<u64>("triple").unwrap(), 30);
    assert_eq!(
        report.output::<String>("total").unwrap(),
        "50 from double+triple"
    );
    assert!(report.is_finished() && report.stopped_by.is_none());

    // Both middle jobs were scheduled by one turn, before either had a result: they can run at
    // once on any workers (the worker test shows them overlapping).
    let history = env.client().history("diamond").await.unwrap();
    let scheduled: Vec<u64> = history
        .iter()
        .filter(|e| {
            matches!(&e.event, HistoryEvent::ActivityScheduled { activity, .. } if activity == "scale")
        })
        .map(|e| e.seq)
        .collect();
    assert_eq!(scheduled.len(), 2, "{:?}", kinds(&history));
    assert_eq!(scheduled[1], scheduled[0] + 1, "{:?}", kinds(&history));
    let first_result = history
        .iter()
        .filter(|e| e.seq > scheduled[0])
        .find(|e| matches!(e.event, HistoryEvent::ActivityCompleted { .. }))
        .unwrap();
    assert!(first_result.seq > scheduled[1]);
    assert_eq!(
        history
            .iter()
            .filter(|e| matches!(e.event, HistoryEvent::ActivityScheduled { .. }))
            .count(),
        4,
        "each job ran once"
    );
    assert_replays(&history);
}

/// a -> {b, c} -> d, with an independent branch e -> f; b fails for good.
fn middle_fails(key: &str, rule: OnFailure) -> JobWorkflow {
    let flaky_job = |name: &str, failures: u32| {
        Job::new(
            flaky,
            &Flaky {
                key: format!("{key}-{name}"),
                failures,
                terminal: true,
            },
        )
    };
    JobWorkflow::builder()
        .on_failure(rule)
        .add("a", flaky_job("a", 0))
        .add("b", flaky_job("b", u32::MAX).depends_on(["a"]))
        .add("c", flaky_job("c", 0).depends_on(["a"]))
        .add("d", flaky_job("d", 0).depends_on(["b", "c"]))
        .add("e", flaky_job("e", 0))
        .add("f", flaky_job("f", 0).depends_on(["e"]))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_failing_middle_job_fails_the_workflow_under_the_fail_rule_naming_the_job() {
    let env = TestEnv::new(registry()).await.unwrap();
    let dag = middle_fails("failrule", OnFailure::FailWorkflow);
    let run = env.client().start_job_workflow("fail", &dag).await.unwrap();
    let err = run.result().await.unwrap_err();
    let JobWorkflowRunError::JobFailed { job, error, report } = err else {
        panic!("expected the job to fail the workflow, got {err:?}");
    };
    assert_eq!(job, "b");
    assert_eq!(error, "failrule-b broke on attempt 1");
    assert_eq!(report.stopped_by.as_deref(), Some("b"));
    assert_eq!(
        report.state("d"),
        Some(&JobStepState::Skipped { cause: "b".into() })
    );
    assert_eq!(attempts_of("failrule-d"), 0, "d never ran");
    // c was scheduled with b, so it ran to its end; nothing started after the failure.
    assert!(matches!(
        report.state("c"),
        Some(JobStepState::Completed { .. })
    ));
    assert!(report.is_finished());

    let record = env.client().describe("fail").await.unwrap();
    assert_eq!(record.status, InstanceStatus::Failed);
    // The instance's own failure names the job, for whoever reads it without this SDK.
    let plain = env.client().result::<serde_json::Value>("fail").await;
    let Err(ClientError::Failed { failure, .. }) = plain else {
        panic!("{plain:?}");
    };
    assert_eq!(
        failure.message,
        "job `b` (activity `flaky`) failed: failrule-b broke on attempt 1"
    );
    assert_replays(&env.client().history("fail").await.unwrap());
}

#[tokio::test]
async fn a_failing_middle_job_skips_its_dependents_under_the_skip_rule_and_the_rest_goes_on() {
    let env = TestEnv::new(registry()).await.unwrap();
    let dag = middle_fails("skiprule", OnFailure::SkipDependents);
    let run = env.client().start_job_workflow("skip", &dag).await.unwrap();
    let report = run.result().await.unwrap();
    assert_eq!(report.in_state("completed"), ["a", "c", "e", "f"]);
    assert_eq!(report.in_state("failed"), ["b"]);
    assert_eq!(report.in_state("skipped"), ["d"]);
    assert_eq!(
        report.state("b"),
        Some(&JobStepState::Failed {
            error: "skiprule-b broke on attempt 1".into()
        })
    );
    assert_eq!(report.stopped_by, None);
    assert_eq!(attempts_of("skiprule-d"), 0, "d never ran");
    assert_eq!(
        env.client().describe("skip").await.unwrap().status,
        InstanceStatus::Completed
    );
    let e = report.output::<u32>("d").unwrap_err();
    assert_eq!(
        e.to_string(),
        "job `d` did not complete: it is skipped (`b` failed)"
    );
}

#[tokio::test]
async fn a_job_is_retried_by_its_policy_before_it_counts_as_failed() {
    let env = TestEnv::new(registry()).await.unwrap();
    let job = |key: &str, max_attempts: u32| {
        let flaky_job = Flaky {
            key: key.into(),
            failures: 2,
            terminal: false,
        };
        Job::new(flaky, &flaky_job).retry(RetryPolicy::new(
            max_attempts,
            Duration::from_secs(1),
            Duration::from_secs(5),
        ))
    };
    let dag = JobWorkflow::builder()
        .on_failure(OnFailure::SkipDependents)
        .add("enough", job("retry-enough", 3))
        .add("too_few", job("retry-too-few", 2))
        .build()
        .unwrap();
    let report = env
        .client()
        .start_job_workflow("retries", &dag)
        .await
        .unwrap()
        .result()
        .await
        .unwrap();
    assert_eq!(report.output::<u32>("enough").unwrap(), 3, "third attempt");
    assert_eq!(attempts_of("retry-enough"), 3);
    assert_eq!(
        report.state("too_few"),
        Some(&JobStepState::Failed {
            error: "retry-too-few broke on attempt 2".into()
        })
    );
    assert_eq!(attempts_of("retry-too-few"), 2, "its two attempts, no more");
    let history = env.client().history("retries").await.unwrap();
    let failed_at = history.iter().find_map(|e| match &e.event {
        HistoryEvent::ActivityFailed { attempt, .. } => Some(*attempt),
        _ => None,
    });
    assert_eq!(
        failed_at,
        Some(2),
        "the failure was recorded once, after the retries"
    );
}

#[tokio::test]
async fn progress_shows_each_job_while_the_workflow_runs_and_the_history_replays() {
    let env = TestEnv::new(registry()).await.unwrap();
    let slow = Flaky {
        key: "progress-slow".into(),
        failures: 1,
        terminal: false,
    };
    let dag = JobWorkflow::builder()
        .add("numbers", Job::new(numbers, &3))
        .add(
            "slow",
            Job::new(flaky, &slow).retry(RetryPolicy::new(
                3,
                Duration::from_secs(60),
                Duration::from_secs(60),
            )),
        )
        .add(
            "after",
            Job::with_parents(
                scale,
                &Scale {
                    by: 2,
                    key: "progress-after".into(),
                },
            )
            .depends_on(["numbers"]),
        )
        .add("last", Job::new(numbers, &1).depends_on(["slow", "after"]))
        .build()
        .unwrap();
    let run = env
        .client()
        .start_job_workflow("progress", &dag)
        .await
        .unwrap();

    // Nothing journaled yet: every job waits.
    let before = run.progress().await.unwrap();
    assert_eq!(
        before.in_state("waiting"),
        ["numbers", "slow", "after", "last"]
    );

    // Run what can run without moving the clock: `slow` waits a minute for its retry.
    env.run_until_idle().await.unwrap();
    let mid = run.progress().await.unwrap();
    assert_eq!(mid.in_state("completed"), ["numbers", "after"]);
    assert_eq!(mid.in_state("running"), ["slow"]);
    assert_eq!(mid.in_state("waiting"), ["last"]);
    assert_eq!((mid.finished(), mid.total()), (2, 4));
    // A replay of the unfinished history, from every prefix, makes the same decisions.
    assert_replays(&env.client().history("progress").await.unwrap());

    let done = run.result().await.unwrap();
    assert!(done.is_finished());
    assert_eq!(done.output::<u32>("slow").unwrap(), 2);
    assert_eq!(
        run.progress().await.unwrap(),
        done,
        "progress of a finished run is its report"
    );
    assert_replays(&env.client().history("progress").await.unwrap());
}

#[tokio::test]
async fn a_workflow_started_with_an_invalid_declaration_fails_with_the_reason() {
    // Code other than the builder (the CLI, another language) may write the input: it is checked
    // again when the workflow runs.
    let env = TestEnv::new(registry()).await.unwrap();
    let input = serde_json::json!({"jobs": [{
        "name": "a", "activity": "numbers", "input": {"json": 1},
        "options": {"queue": null, "retry": {"max_attempts": 1, "initial_ms": 1, "max_ms": 1},
                    "start_to_close_ms": null, "schedule_to_close_ms": null,
                    "heartbeat_ms": null, "transactional": false},
        "depends_on": ["a"], "on_failure": "fail_workflow", "with_parents": false
    }]});
    let dag: JobWorkflow = serde_json::from_value(input).unwrap();
    let run = env.client().start_job_workflow("bad", &dag).await.unwrap();
    let err = run.result().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid job workflow: the dependencies form a cycle: a -> a"),
        "{err}"
    );
}

#[tokio::test]
async fn a_cancelled_workflow_starts_no_more_jobs_and_ends_cancelled() {
    let env = TestEnv::new(registry()).await.unwrap();
    let slow = Flaky {
        key: "cancel-slow".into(),
        failures: 1,
        terminal: false,
    };
    let dag = JobWorkflow::builder()
        .add("slow", Job::new(flaky, &slow))
        .add(
            "never",
            Job::new(
                flaky,
                &Flaky {
                    key: "cancel-never".into(),
                    failures: 0,
                    terminal: false,
                },
            )
            .depends_on(["slow"]),
        )
        .build()
        .unwrap();
    let run = env
        .client()
        .start_job_workflow("cancel", &dag)
        .await
        .unwrap();
    // `slow` failed once and waits a second for its retry.
    env.run_until_idle().await.unwrap();
    assert_eq!(run.progress().await.unwrap().in_state("running"), ["slow"]);
    run.cancel("not needed any more").await.unwrap();
    let err = run.result().await.unwrap_err();
    assert!(
        matches!(&err, JobWorkflowRunError::Client(ClientError::Cancelled { reason, .. }) if reason == "not needed any more"),
        "{err:?}"
    );
    assert_eq!(
        attempts_of("cancel-never"),
        0,
        "nothing started after the request"
    );
    assert_eq!(
        env.client().describe("cancel").await.unwrap().status,
        InstanceStatus::Cancelled
    );
}
