//! Job control on real workers: a running job sees its cancellation through its context, a retried
//! job resumes from its checkpoint with its progress readable, a concurrency key holds across
//! workers, and the maintenance pass purges finished jobs past their retention.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_history::{JobState, Store};
use quark_worker::{RunningWorker, Worker};
use quark_workflow::{
    ActivityContext, ActivityError, Client, JobId, JobOptions, Registry, activity,
};

quark_history::backend_tests!(
    it_cancels_a_running_job_through_its_context,
    it_resumes_a_retried_job_from_its_checkpoint_with_progress_readable,
    it_runs_at_most_n_jobs_of_a_concurrency_key_across_workers,
    it_purges_finished_jobs_after_their_retention,
    it_times_out_attempts_and_never_retries_a_terminal_error,
);

/// What the activities saw, per test input (inputs are unique per test and backend).
#[derive(Default)]
struct Seen {
    started: BTreeMap<String, u32>,
    resumed_at: BTreeMap<String, Vec<u32>>,
    running: BTreeMap<String, u32>,
    most_running: BTreeMap<String, u32>,
    finished: BTreeMap<String, u32>,
}

fn seen() -> std::sync::MutexGuard<'static, Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Runs until cancelled, then says so.
#[activity]
async fn stoppable(ctx: ActivityContext, input: String) -> Result<(), ActivityError> {
    *seen().started.entry(input).or_default() += 1;
    ctx.cancellation().cancelled().await;
    Err(ActivityError::message("stopped on request"))
}

/// Processes items 0..10 from its checkpoint on; its first attempt fails at item 5.
#[activity(retry(max_attempts = 3, initial = "1s", max = "1s"))]
async fn resumable(ctx: ActivityContext, input: String) -> Result<u32, ActivityError> {
    let from: u32 = ctx.resume_from().unwrap_or(0);
    seen().resumed_at.entry(input).or_default().push(from);
    for item in from..10 {
        if item == 5 && ctx.attempt() == 1 {
            return Err(ActivityError::message("the source hiccuped"));
        }
        ctx.checkpoint(item as f32 * 10.0, &(item + 1)).await?;
    }
    ctx.progress(100.0, "all 10 items").await?;
    Ok(10)
}

/// Counts how many of its key run at once.
#[activity]
async fn keyed(_ctx: ActivityContext, key: String) -> Result<(), ActivityError> {
    {
        let mut s = seen();
        let running = s.running.entry(key.clone()).or_default();
        *running += 1;
        let now = *running;
        let most = s.most_running.entry(key.clone()).or_default();
        *most = (*most).max(now);
    }
    crate::support::meet(&key).await;
    // Long enough that the other jobs of the key are claimable meanwhile.
    for _ in 0..20 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut s = seen();
    *s.running.get_mut(&key).unwrap() -= 1;
    *s.finished.entry(key).or_default() += 1;
    Ok(())
}

/// Never finishes on its own.
#[activity(retry(max_attempts = 2, initial = "1s", max = "1s"))]
async fn stuck(ctx: ActivityContext, _input: String) -> Result<(), ActivityError> {
    ctx.cancellation().cancelled().await;
    Err(ActivityError::message("gave up when told"))
}

static TERMINAL: AtomicU32 = AtomicU32::new(0);

#[activity(retry(max_attempts = 5))]
async fn refuses(_ctx: ActivityContext, input: String) -> Result<(), ActivityError> {
    TERMINAL.fetch_add(1, Ordering::SeqCst);
    Err(ActivityError::message(format!("{input} is not an image")).terminal())
}

static QUICK: AtomicU32 = AtomicU32::new(0);

#[activity]
async fn quick(_ctx: ActivityContext, _input: String) -> Result<(), ActivityError> {
    QUICK.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

async fn start(t: &TestStore, id: &str) -> RunningWorker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .id(id)
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(50))
        .maintenance(Some(Duration::from_millis(50)))
        .workflows(
            Registry::new()
                .register(stoppable)
                .register(resumable)
                .register(keyed)
                .register(quick)
                .register(stuck)
                .register(refuses),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

fn tag(t: &TestStore, what: &str) -> String {
    format!("{}-{what}", t.store.backend())
}

async fn state(store: &dyn Store, id: JobId) -> JobState {
    store
        .job(id.get())
        .await
        .unwrap()
        .expect("the job exists")
        .state
}

async fn it_cancels_a_running_job_through_its_context(t: &TestStore) {
    let running = start(t, "w1").await;
    let client = Client::new(Arc::clone(&t.store));
    let input = tag(t, "stoppable");
    let id = client
        .enqueue::<stoppable>(&input, JobOptions::default())
        .await
        .unwrap();
    eventually("the job starts", async || {
        seen().started.contains_key(&input)
    })
    .await;
    assert_eq!(state(&*t.store, id).await, JobState::Running);
    assert_eq!(client.cancel_job(id).await.unwrap(), JobState::Cancelling);
    eventually("the job ends cancelled", async || {
        state(&*t.store, id).await == JobState::Cancelled
    })
    .await;
    let job = client.job(id).await.unwrap();
    assert!(
        job.error.as_deref().unwrap().contains("stopped on request"),
        "the activity's own words: {job:?}"
    );
    assert_eq!(seen().started[&input], 1, "never run again");
    running.shutdown().await;
}

async fn it_resumes_a_retried_job_from_its_checkpoint_with_progress_readable(t: &TestStore) {
    let running = start(t, "w1").await;
    let client = Client::new(Arc::clone(&t.store));
    let input = tag(t, "resumable");
    let id = client
        .enqueue::<resumable>(&input, JobOptions::default())
        .await
        .unwrap();
    eventually("the first attempt fails", async || {
        state(&*t.store, id).await == JobState::Retrying
    })
    .await;
    let progress = client.job_progress(id).await.unwrap().unwrap();
    assert_eq!(progress.percent, Some(40.0), "items 0..=4 done");
    t.advance_until(
        Duration::from_millis(200),
        "the retry completes",
        async || state(&*t.store, id).await == JobState::Completed,
    )
    .await;
    assert_eq!(
        seen().resumed_at[&input],
        [0, 5],
        "the retry started where the first attempt stopped"
    );
    let job = client.job(id).await.unwrap();
    let progress = job.progress.unwrap();
    assert_eq!(
        (progress.percent, progress.message.as_deref()),
        (Some(100.0), Some("all 10 items"))
    );
    assert_eq!(job.attempts, 2);
    running.shutdown().await;
}

async fn it_runs_at_most_n_jobs_of_a_concurrency_key_across_workers(t: &TestStore) {
    let (a, b) = (start(t, "w1").await, start(t, "w2").await);
    let client = Client::new(Arc::clone(&t.store));
    let key = tag(t, "tenant");
    let other = tag(t, "other-tenant");
    // The first two jobs of the key wait for each other: two at once is certain.
    crate::support::arrange_meeting(&key, 2);
    let mut ids = client
        .enqueue_many::<keyed>(
            std::iter::repeat_n(key.clone(), 12),
            JobOptions::default().concurrency(key.clone(), 2),
        )
        .await
        .unwrap();
    ids.extend(
        client
            .enqueue_many::<keyed>(
                std::iter::repeat_n(other.clone(), 4),
                JobOptions::default().concurrency(other.clone(), 1),
            )
            .await
            .unwrap(),
    );
    eventually("every job completes", async || {
        let s = seen();
        s.finished.get(&key) == Some(&12) && s.finished.get(&other) == Some(&4)
    })
    .await;
    let (most, most_other) = {
        let s = seen();
        (s.most_running[&key], s.most_running[&other])
    };
    assert_eq!(most, 2, "jobs of the key at once, for a limit of 2");
    assert_eq!(most_other, 1);
    for id in ids {
        eventually("the job is recorded as completed", async || {
            state(&*t.store, id).await == JobState::Completed
        })
        .await;
    }
    a.shutdown().await;
    b.shutdown().await;
}

async fn it_purges_finished_jobs_after_their_retention(t: &TestStore) {
    let running = start(t, "w1").await;
    let client = Client::new(Arc::clone(&t.store));
    let id = client
        .enqueue::<quick>(&tag(t, "quick"), JobOptions::default())
        .await
        .unwrap();
    eventually("the job completes", async || {
        client
            .job(id)
            .await
            .is_ok_and(|j| j.state == JobState::Completed)
    })
    .await;
    t.clock
        .advance(t.store.config().finished_job_retention + Duration::from_secs(1));
    eventually("the maintenance pass purges it", async || {
        t.store.job(id.get()).await.unwrap().is_none()
    })
    .await;
    running.shutdown().await;
}

async fn it_times_out_attempts_and_never_retries_a_terminal_error(t: &TestStore) {
    let running = start(t, "w1").await;
    let client = Client::new(Arc::clone(&t.store));
    let slow = stuck::enqueue(
        &client,
        tag(t, "stuck"),
        JobOptions::default().timeout(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let bad = refuses::enqueue(&client, tag(t, "refuses"), JobOptions::default())
        .await
        .unwrap();
    t.advance_until(Duration::from_millis(500), "both jobs die", async || {
        state(&*t.store, slow).await == JobState::Dead
            && state(&*t.store, bad).await == JobState::Dead
    })
    .await;
    let slow = client.job(slow).await.unwrap();
    assert_eq!(
        slow.attempts, 2,
        "the timeout is per attempt, retried per the policy"
    );
    assert!(
        slow.error
            .as_deref()
            .unwrap()
            .contains("timed out after 50ms"),
        "{slow:?}"
    );
    let bad = client.job(bad).await.unwrap();
    assert_eq!(bad.attempts, 1, "a terminal error is not retried");
    assert!(
        bad.error.as_deref().unwrap().contains("is not an image"),
        "{bad:?}"
    );
    running.shutdown().await;
}
