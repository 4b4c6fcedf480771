//! Job workflows (DAGs of jobs) on the worker runtime, on both backends: the parallel stage really
//! runs at once, progress is readable while it runs, a failing middle job fails or skips by its
//! rule, and a workflow left by a stopped worker is finished by another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::InstanceStatus;
use quark_history::testing::{TestStore, eventually};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, Job, JobInput, JobStepState, JobWorkflow,
    JobWorkflowReport, JobWorkflowRunError, OnFailure, Registry, activity,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Barrier, watch};

quark_history::backend_tests!(
    it_runs_the_middle_stage_of_a_diamond_at_once_and_shows_progress,
    it_fails_the_workflow_or_skips_dependents_when_a_middle_job_fails,
    it_finishes_on_another_worker_a_workflow_left_by_a_stopped_one,
);

/// Both branches of one diamond meet here; the test opens `release` once it has seen them run.
struct Gate {
    arrived: Barrier,
    release: watch::Sender<bool>,
}

/// Gates and run counts by key: the SQLite and PostgreSQL variants run at once in this process.
fn gate(key: &str) -> Arc<Gate> {
    static GATES: Mutex<BTreeMap<String, Arc<Gate>>> = Mutex::new(BTreeMap::new());
    let mut gates = GATES.lock().unwrap();
    let gate = gates.entry(key.to_string()).or_insert_with(|| {
        Arc::new(Gate {
            arrived: Barrier::new(2),
            release: watch::Sender::new(false),
        })
    });
    Arc::clone(gate)
}

fn runs() -> &'static Mutex<BTreeMap<String, u32>> {
    static RUNS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());
    &RUNS
}

fn runs_of(key: &str) -> u32 {
    runs().lock().unwrap().get(key).copied().unwrap_or(0)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

#[activity]
async fn numbers(_ctx: ActivityContext, n: u64) -> Result<Vec<u64>, ActivityError> {
    Ok((1..=n).collect())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meet {
    key: String,
    by: u64,
}

/// Waits until the other branch has started too (it cannot get past the barrier alone), then for
/// the test's release, then scales the sum of `numbers`.
#[activity]
async fn meet(_ctx: ActivityContext, job: JobInput<Meet>) -> Result<u64, ActivityError> {
    let gate = gate(&job.input.key);
    // A generous bound, not a synchronization: it turns "the branches ran one after the other"
    // into a clear failure instead of a hang.
    tokio::time::timeout(Duration::from_secs(30), gate.arrived.wait())
        .await
        .map_err(|_| {
            ActivityError::message("the other branch never ran while this one did").terminal()
        })?;
    gate.release.subscribe().wait_for(|open| *open).await?;
    let values: Vec<u64> = job.parent("numbers")?;
    Ok(values.iter().sum::<u64>() * job.input.by)
}

#[activity]
async fn add_up(_ctx: ActivityContext, job: JobInput<()>) -> Result<u64, ActivityError> {
    job.parents.keys().map(|p| job.parent::<u64>(p)).sum()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Step {
    key: String,
    fail: bool,
}

/// Counts its runs; fails for good when asked to.
#[activity]
async fn step(_ctx: ActivityContext, s: Step) -> Result<String, ActivityError> {
    *runs().lock().unwrap().entry(s.key.clone()).or_default() += 1;
    if s.fail {
        return Err(ActivityError::message(format!("{} is broken", s.key)).terminal());
    }
    Ok(format!("{} done", s.key))
}

fn registry() -> Registry {
    Registry::new()
        .register(numbers)
        .register(meet)
        .register(add_up)
        .register(step)
}

fn worker(t: &TestStore, queues: &[&str]) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .queues(queues.iter().copied())
        .workflows(registry())
        .build()
        .unwrap()
}

async fn finish(
    t: &TestStore,
    run: &quark_workflow::JobWorkflowHandle,
) -> Result<JobWorkflowReport, JobWorkflowRunError> {
    // Longer than a lease (30 s): a task whose lease must expire before it runs again is slow,
    // not wrong; the assertions after this check that every job ran exactly once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    // The store runs on the test's clock, which stands still unless moved. A task released after
    // a backoff (its commit met a deadlock between two commits of the instance, under load)
    // waits for that clock: it moves here no faster than real time, so leases keep their length.
    let tick = Duration::from_millis(5);
    let result = run.result();
    tokio::pin!(result);
    loop {
        tokio::select! {
            result = &mut result => return result,
            () = tokio::time::sleep(tick) => t.clock.advance(tick),
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "the workflow did not end within 90 s; where it stands:\n{}",
                crate::support::where_it_stands(t, run.id()).await
            );
        }
    }
}

async fn it_runs_the_middle_stage_of_a_diamond_at_once_and_shows_progress(t: &TestStore) {
    let running = worker(t, &["default"]).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let key = unique("diamond");
    let by = |by| Meet {
        key: key.clone(),
        by,
    };
    let dag = JobWorkflow::builder()
        .add("numbers", Job::new(numbers, &4))
        .add(
            "double",
            Job::with_parents(meet, &by(2)).depends_on(["numbers"]),
        )
        .add(
            "triple",
            Job::with_parents(meet, &by(3)).depends_on(["numbers"]),
        )
        .add(
            "total",
            Job::with_parents(add_up, &()).depends_on(["double", "triple"]),
        )
        .build()
        .unwrap();
    let run = client.start_job_workflow("diamond", &dag).await.unwrap();

    // Both branches are held at the gate, together: the progress shows them running.
    eventually("both branches run", async || {
        let p = run.progress().await.unwrap();
        p.in_state("running") == ["double", "triple"]
    })
    .await;
    let p = run.progress().await.unwrap();
    assert_eq!(p.in_state("completed"), ["numbers"]);
    assert_eq!(p.in_state("waiting"), ["total"]);
    assert_eq!((p.finished(), p.total()), (1, 4));
    gate(&key).release.send_replace(true);

    let report = finish(t, &run).await.unwrap();
    assert_eq!(report.output::<u64>("double").unwrap(), 20);
    assert_eq!(report.output::<u64>("triple").unwrap(), 30);
    assert_eq!(report.output::<u64>("total").unwrap(), 50);
    assert!(t.store.verify("diamond").await.unwrap().is_intact());
    running.shutdown().await;
}

/// a -> {b, c} -> d, and an independent e -> f; b is broken.
fn middle_fails(key: &str, rule: OnFailure) -> JobWorkflow {
    let job = |name: &str| {
        Job::new(
            step,
            &Step {
                key: format!("{key}-{name}"),
                fail: name == "b",
            },
        )
    };
    JobWorkflow::builder()
        .on_failure(rule)
        .add("a", job("a"))
        .add("b", job("b").depends_on(["a"]))
        .add("c", job("c").depends_on(["a"]))
        .add("d", job("d").depends_on(["b", "c"]))
        .add("e", job("e"))
        .add("f", job("f").depends_on(["e"]))
        .build()
        .unwrap()
}

async fn it_fails_the_workflow_or_skips_dependents_when_a_middle_job_fails(t: &TestStore) {
    let running = worker(t, &["default"]).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));

    let key = unique("fail");
    let dag = middle_fails(&key, OnFailure::FailWorkflow);
    let run = client.start_job_workflow("fail", &dag).await.unwrap();
    let Err(JobWorkflowRunError::JobFailed { job, error, report }) = finish(t, &run).await else {
        panic!("the broken job should fail the workflow");
    };
    assert_eq!((job.as_str(), error), ("b", format!("{key}-b is broken")));
    assert_eq!(
        report.state("d"),
        Some(&JobStepState::Skipped { cause: "b".into() })
    );
    assert_eq!(runs_of(&format!("{key}-d")), 0);
    assert_eq!(
        client.describe("fail").await.unwrap().status,
        InstanceStatus::Failed
    );

    let key = unique("skip");
    let dag = middle_fails(&key, OnFailure::SkipDependents);
    let run = client.start_job_workflow("skip", &dag).await.unwrap();
    let report = finish(t, &run).await.unwrap();
    assert_eq!(report.in_state("completed"), ["a", "c", "e", "f"]);
    assert_eq!(report.in_state("failed"), ["b"]);
    assert_eq!(report.in_state("skipped"), ["d"]);
    assert_eq!(runs_of(&format!("{key}-d")), 0);
    for job in ["a", "b", "c", "e", "f"] {
        assert_eq!(runs_of(&format!("{key}-{job}")), 1, "{job} ran once");
    }
    assert_eq!(
        client.describe("skip").await.unwrap().status,
        InstanceStatus::Completed
    );
    running.shutdown().await;
}

async fn it_finishes_on_another_worker_a_workflow_left_by_a_stopped_one(t: &TestStore) {
    // The first worker does not serve the `load` queue, so it stops with the loads pending.
    let first = worker(t, &["default"]).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let key = unique("resume");
    let job = |name: &str| {
        Job::new(
            step,
            &Step {
                key: format!("{key}-{name}"),
                fail: false,
            },
        )
    };
    let dag = JobWorkflow::builder()
        .add("extract", job("extract"))
        .add(
            "load_a",
            job("load_a").depends_on(["extract"]).queue("load"),
        )
        .add(
            "load_b",
            job("load_b").depends_on(["extract"]).queue("load"),
        )
        .add("report", job("report").depends_on(["load_a", "load_b"]))
        .build()
        .unwrap();
    let run = client.start_job_workflow("resume", &dag).await.unwrap();
    eventually("both loads are pending", async || {
        t.store.queue_stats("load").await.unwrap().pending == 2
    })
    .await;
    first.shutdown().await;

    let p = run.progress().await.unwrap();
    assert_eq!(p.in_state("completed"), ["extract"]);
    assert_eq!(p.in_state("running"), ["load_a", "load_b"]);
    assert_eq!(
        client.describe("resume").await.unwrap().status,
        InstanceStatus::Running
    );

    // A new worker, with nothing in memory, resumes it from the journal.
    let second = worker(t, &["default", "load"]).start().await.unwrap();
    let report = finish(t, &run).await.unwrap();
    assert!(report.is_finished());
    assert_eq!(report.in_state("completed").len(), 4);
    for job in ["extract", "load_a", "load_b", "report"] {
        assert_eq!(runs_of(&format!("{key}-{job}")), 1, "{job} ran once");
    }
    second.shutdown().await;
}
