//! One runner, two drivers: every scenario here runs under the test environment (`TestEnv`: virtual
//! clock, one task at a time, in process) and under a real worker (pools, lease keeping, group
//! commit) on each backend, and must leave the same history and the same outcome under both. Each
//! test also checks the outcome itself, so that two drivers that both did nothing would not pass.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_history::{
    Destination, HistoryEvent, HistoryRange, InstanceStatus, JobState, QueueStats, Store,
};
use quark_worker::{RunningWorker, Worker};
use quark_workflow::runner::Settled;
use quark_workflow::testing::TestEnv;
use quark_workflow::{
    ActivityContext, ActivityError, Client, JobOptions, OrchestrationContext, OrchestrationError,
    Registry, activity, orchestration,
};
use tokio::sync::Notify;

quark_history::backend_tests!(
    it_fails_an_unregistered_activity_into_its_orchestration_under_both_drivers,
    it_times_an_activity_out_the_same_under_both_drivers,
    it_turns_a_panic_into_the_same_failure_under_both_drivers,
    it_fails_an_activity_that_stops_heartbeating_under_both_drivers,
    it_continues_a_warm_instance_in_the_activity_s_commit_under_both_drivers,
    it_reruns_through_the_queue_when_a_warm_continuation_conflicts_under_both_drivers,
    it_drops_the_result_of_an_activity_whose_instance_ended_under_both_drivers,
    it_resumes_a_job_from_its_checkpoint_under_both_drivers,
    it_stops_a_cancelled_running_job_under_both_drivers,
    it_relays_an_activity_s_outbox_message_as_a_signal_under_both_drivers,
);

// -- the code under test ------------------------------------------------------------------------

/// Registered nowhere.
#[activity]
async fn ghost(_ctx: ActivityContext, _n: u32) -> Result<u32, ActivityError> {
    Ok(0)
}

#[activity(start_to_close = "50ms", retry(max_attempts = 1))]
async fn dawdle(_ctx: ActivityContext, _n: u32) -> Result<u32, ActivityError> {
    std::future::pending().await
}

#[activity(retry(max_attempts = 1))]
async fn explode(_ctx: ActivityContext, _n: u32) -> Result<u32, ActivityError> {
    panic!("boom")
}

#[activity(heartbeat = "50ms", retry(max_attempts = 1))]
async fn goes_quiet(ctx: ActivityContext, _n: u32) -> Result<u32, ActivityError> {
    ctx.heartbeat(&1u32);
    std::future::pending().await
}

#[activity]
async fn step(_ctx: ActivityContext, n: u32) -> Result<u32, ActivityError> {
    Ok(n * 10)
}

/// Appends a `poke` signal to its own instance before it returns, so that the commit that would
/// continue the instance here finds its history moved on.
#[activity]
async fn poke(ctx: ActivityContext, _n: u32) -> Result<u32, ActivityError> {
    let store = lock(&STORES)
        .get(&ctx.info().instance_id)
        .cloned()
        .ok_or_else(|| ActivityError::message("no store for this instance").terminal())?;
    Client::new(store)
        .signal(&ctx.info().instance_id, "poke", &"poked".to_string())
        .await
        .map_err(|e| ActivityError::message(e.to_string()))?;
    Ok(7)
}

/// Tells the test it started, then waits for the test's word, whatever happens meanwhile.
#[activity]
async fn linger(_ctx: ActivityContext, key: String) -> Result<u32, ActivityError> {
    let gate = gate(&key);
    gate.started.notify_one();
    gate.release.notified().await;
    Ok(1)
}

/// A job: saves a checkpoint and fails on its first attempt, reports what it resumed from on the
/// next.
#[activity(retry(max_attempts = 3, initial = "1s", max = "1s"))]
async fn resumable(ctx: ActivityContext, key: String) -> Result<(), ActivityError> {
    lock(&RESUMED)
        .entry(key)
        .or_default()
        .push(ctx.resume_from::<String>());
    if ctx.attempt() == 1 {
        ctx.checkpoint(50.0, &"half way".to_string()).await?;
        return Err(ActivityError::message("interrupted"));
    }
    Ok(())
}

/// A job that runs until it is asked to stop.
#[activity(retry(max_attempts = 3, initial = "1s", max = "1s"))]
async fn spin(ctx: ActivityContext, key: String) -> Result<(), ActivityError> {
    gate(&key).started.notify_one();
    // Heartbeat until the stop arrives: each wait on the token is bounded, so that the heartbeats
    // (through which a driver may learn of the stop) keep going.
    loop {
        ctx.heartbeat(&());
        let stop = ctx.cancellation().cancelled();
        if tokio::time::timeout(Duration::from_millis(5), stop)
            .await
            .is_ok()
        {
            return Err(ActivityError::message("stopped on request"));
        }
    }
}

#[orchestration]
async fn one_call(ctx: OrchestrationContext, which: String) -> Result<u32, OrchestrationError> {
    match which.as_str() {
        "ghost" => ctx.call(ghost, &1).await,
        "dawdle" => ctx.call(dawdle, &1).await,
        "explode" => ctx.call(explode, &1).await,
        "goes_quiet" => ctx.call(goes_quiet, &1).await,
        "poke" => {
            let n = ctx.call(poke, &1).await?;
            let poked: String = ctx.wait_for_signal("poke").await?;
            Ok(n + poked.len() as u32)
        }
        other => ctx.call(linger, &other.to_string()).await,
    }
}

/// Sends `greeting` to instance `listener` through the outbox, as a `hello` signal.
#[activity]
async fn tell(ctx: ActivityContext, greeting: String) -> Result<u32, ActivityError> {
    ctx.outbox()
        .send(Destination::signal("listener", "hello"), &greeting)?;
    Ok(1)
}

#[orchestration]
async fn teller(ctx: OrchestrationContext, greeting: String) -> Result<u32, OrchestrationError> {
    ctx.call(tell, &greeting).await
}

#[orchestration]
async fn listener(ctx: OrchestrationContext, _n: u32) -> Result<u32, OrchestrationError> {
    let heard: String = ctx.wait_for_signal("hello").await?;
    Ok(heard.len() as u32)
}

#[orchestration]
async fn three_steps(ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    let a = ctx.call(step, &n).await?;
    let b = ctx.call(step, &a).await?;
    ctx.call(step, &b).await
}

fn registry() -> Registry {
    Registry::new()
        .register(one_call)
        .register(three_steps)
        .register(dawdle)
        .register(explode)
        .register(goes_quiet)
        .register(step)
        .register(poke)
        .register(linger)
        .register(resumable)
        .register(spin)
        .register(tell)
        .register(teller)
        .register(listener)
}

// -- the two drivers ------------------------------------------------------------------------------

/// Stores by instance id, for `poke`.
static STORES: LazyLock<Mutex<HashMap<String, Arc<dyn Store>>>> = LazyLock::new(Mutex::default);
/// What each attempt of `resumable` resumed from, by key.
static RESUMED: LazyLock<Mutex<HashMap<String, Vec<Option<String>>>>> =
    LazyLock::new(Mutex::default);
/// Gates by key, for `linger` and `spin`.
static GATES: LazyLock<Mutex<HashMap<String, Arc<Gate>>>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Gate {
    started: Notify,
    release: Notify,
}

fn gate(key: &str) -> Arc<Gate> {
    Arc::clone(lock(&GATES).entry(key.to_string()).or_default())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(t: &TestStore) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(20))
        .workflows(registry())
        .build()
        .unwrap()
}

/// What a scenario left behind: the instance's history (without times) and its outcome.
#[derive(Debug, PartialEq)]
struct Record {
    history: Vec<HistoryEvent>,
    outcome: Result<u32, String>,
}

async fn record(store: &Arc<dyn Store>, id: &str, outcome: Result<u32, String>) -> Record {
    let history = store.read_history(id, HistoryRange::All).await.unwrap();
    Record {
        history: history.into_iter().map(|e| e.event).collect(),
        outcome,
    }
}

/// Runs `one_call(which)` as instance `id` under the test environment to its end.
async fn under_env(id: &str, which: &str) -> (Record, TestEnv) {
    let env = TestEnv::new(registry()).await.unwrap();
    let id = id.to_string();
    lock(&STORES).insert(id.clone(), Arc::clone(env.store()));
    let handle = one_call::start(env.client(), &id, which.to_string())
        .await
        .unwrap();
    let outcome = handle.result().await.map_err(|e| e.to_string());
    (record(env.store(), &id, outcome).await, env)
}

/// Runs `one_call(which)` as instance `id` under a worker on `t` to its end.
async fn under_worker(t: &TestStore, id: &str, which: &str) -> (Record, RunningWorker) {
    let running = worker(t).start().await.unwrap();
    let id = id.to_string();
    lock(&STORES).insert(id.clone(), Arc::clone(&t.store));
    let client = Client::new(Arc::clone(&t.store));
    let handle = one_call::start(&client, &id, which.to_string())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .expect("the instance ended")
        .map_err(|e| e.to_string());
    (record(&t.store, &id, outcome).await, running)
}

/// The failure an instance's only activity ended with.
fn activity_failure(record: &Record) -> String {
    record
        .history
        .iter()
        .find_map(|e| match e {
            HistoryEvent::ActivityFailed { failure, .. } => Some(failure.message.clone()),
            _ => None,
        })
        .expect("the activity failed")
}

/// Runs `one_call(which)` under both drivers, checks they agree, and returns the record.
async fn both(t: &TestStore, which: &str) -> Record {
    // One id for both drivers (the outcome names it), another for each backend: both backends'
    // tests run at once in this process, and `poke` finds its store by instance id.
    let id = format!("{which}-{}", t.store.backend());
    let (env, _env) = under_env(&id, which).await;
    let (worker, running) = under_worker(t, &id, which).await;
    running.shutdown().await;
    assert_eq!(env, worker, "the two drivers disagree on `{which}`");
    env
}

// -- the scenarios --------------------------------------------------------------------------------

async fn it_fails_an_unregistered_activity_into_its_orchestration_under_both_drivers(
    t: &TestStore,
) {
    let record = both(t, "ghost").await;
    assert!(
        activity_failure(&record).contains("no activity `ghost` is registered"),
        "{record:?}"
    );
    assert!(matches!(
        record.history.last(),
        Some(HistoryEvent::WorkflowFailed { .. })
    ));
    assert!(
        t.store.list_dead(None, 10).await.unwrap().is_empty(),
        "the orchestration decides: nothing is dead-lettered"
    );
}

async fn it_times_an_activity_out_the_same_under_both_drivers(t: &TestStore) {
    let record = both(t, "dawdle").await;
    assert_eq!(
        activity_failure(&record),
        "timed out after 50ms (start_to_close)"
    );
}

async fn it_turns_a_panic_into_the_same_failure_under_both_drivers(t: &TestStore) {
    let record = both(t, "explode").await;
    assert_eq!(activity_failure(&record), "the activity panicked: boom");
}

async fn it_fails_an_activity_that_stops_heartbeating_under_both_drivers(t: &TestStore) {
    let record = both(t, "goes_quiet").await;
    assert_eq!(
        activity_failure(&record),
        "no heartbeat within the heartbeat timeout"
    );
}

async fn it_continues_a_warm_instance_in_the_activity_s_commit_under_both_drivers(t: &TestStore) {
    // Test environment: every task it ran, and how it ended.
    let env = TestEnv::new(registry()).await.unwrap();
    three_steps::start(env.client(), "warm", 1).await.unwrap();
    let ran = env.run_until_idle_settled().await.unwrap();
    let env_outcome = env
        .client()
        .result::<u32>("warm")
        .await
        .map_err(|e| e.to_string());
    let env_record = record(env.store(), "warm", env_outcome).await;

    // Worker: the tasks it completed.
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let handle = three_steps::start(&client, "warm", 1).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle.result())
        .await
        .unwrap()
        .map_err(|e| e.to_string());
    // Counted after the shutdown: the result is announced by the last commit, and the worker
    // counts that commit only once the commit has returned to it; the shutdown waits for that.
    let counted = running.worker().clone();
    running.shutdown().await;
    let completed = counted.metrics().completed;
    let worker_record = record(&t.store, "warm", outcome).await;

    assert_eq!(env_record, worker_record);
    assert_eq!(env_record.outcome, Ok(1000));
    // One turn, then three activities, each committed with the turn it unblocks: no turn goes
    // through the queue again (through the queue it would be seven tasks).
    let kinds: Vec<_> = ran.iter().map(|(task, _)| task.kind).collect();
    assert_eq!(ran.len(), 4, "{kinds:?}");
    assert!(ran.iter().all(|(_, s)| *s == Settled::Committed));
    assert_eq!(completed, 4);
}

async fn it_reruns_through_the_queue_when_a_warm_continuation_conflicts_under_both_drivers(
    t: &TestStore,
) {
    let record = both(t, "poke").await;
    assert_eq!(record.outcome, Ok(7 + "poked".len() as u32));
    let kinds: Vec<&str> = record
        .history
        .iter()
        .map(|e| match e {
            HistoryEvent::SignalReceived { .. } => "signal",
            HistoryEvent::ActivityCompleted { .. } => "completed",
            _ => "other",
        })
        .filter(|k| *k != "other")
        .collect();
    assert_eq!(
        kinds,
        ["signal", "completed"],
        "the signal landed first; the result followed by the queue"
    );
}

async fn it_drops_the_result_of_an_activity_whose_instance_ended_under_both_drivers(t: &TestStore) {
    // Test environment: the activity runs on a spawned driver while the test terminates.
    let env = TestEnv::new(registry()).await.unwrap();
    // One key for both drivers (they run one after the other), so that the histories match.
    let key = format!("linger-{}", t.store.backend());
    one_call::start(env.client(), "ended", key.clone())
        .await
        .unwrap();
    let driver = tokio::spawn({
        let env = env.clone();
        async move { env.run_until_idle_settled().await.unwrap() }
    });
    gate(&key).started.notified().await;
    env.client().terminate("ended", "enough").await.unwrap();
    gate(&key).release.notify_one();
    let ran = driver.await.unwrap();
    let env_record = record(env.store(), "ended", Err("terminated".into())).await;
    assert!(
        ran.iter()
            .any(|(task, s)| task.kind == quark_history::TaskKind::Activity
                && *s == Settled::Dropped),
        "{ran:?}"
    );

    // Worker.
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    one_call::start(&client, "ended", key.clone())
        .await
        .unwrap();
    gate(&key).started.notified().await;
    client.terminate("ended", "enough").await.unwrap();
    gate(&key).release.notify_one();
    eventually("the activity's task is settled", async || {
        t.store.queue_stats("default").await.unwrap() == QueueStats::default()
    })
    .await;
    running.shutdown().await;
    let worker_record = record(&t.store, "ended", Err("terminated".into())).await;

    assert_eq!(env_record, worker_record);
    assert!(
        matches!(
            env_record.history.last(),
            Some(HistoryEvent::WorkflowTerminated { .. })
        ),
        "nothing after the end: {:?}",
        env_record.history
    );
    let status = t.store.get_instance("ended").await.unwrap().unwrap().status;
    assert_eq!(status, InstanceStatus::Terminated);
    assert!(t.store.list_dead(None, 10).await.unwrap().is_empty());
}

async fn it_resumes_a_job_from_its_checkpoint_under_both_drivers(t: &TestStore) {
    let env_key = format!("resume-env-{}", t.store.backend());
    let env = TestEnv::new(registry()).await.unwrap();
    let id = env
        .client()
        .enqueue::<resumable>(&env_key, JobOptions::default())
        .await
        .unwrap();
    env.run_until_idle().await.unwrap();
    env.advance(Duration::from_secs(2)).await.unwrap();
    let env_state = env.client().job(id).await.unwrap().state;

    let worker_key = format!("resume-worker-{}", t.store.backend());
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = client
        .enqueue::<resumable>(&worker_key, JobOptions::default())
        .await
        .unwrap();
    t.advance_until(
        Duration::from_millis(500),
        "the job completed",
        async || client.job(id).await.unwrap().state == JobState::Completed,
    )
    .await;
    running.shutdown().await;

    assert_eq!(env_state, JobState::Completed);
    let resumed = |key: &str| lock(&RESUMED).get(key).cloned().unwrap_or_default();
    assert_eq!(resumed(&env_key), [None, Some("half way".to_string())]);
    assert_eq!(resumed(&env_key), resumed(&worker_key));
}

async fn it_stops_a_cancelled_running_job_under_both_drivers(t: &TestStore) {
    let env_key = format!("spin-env-{}", t.store.backend());
    let env = TestEnv::new(registry()).await.unwrap();
    let env_id = env
        .client()
        .enqueue::<spin>(&env_key, JobOptions::default())
        .await
        .unwrap();
    let driver = tokio::spawn({
        let env = env.clone();
        async move { env.run_until_idle_settled().await.unwrap() }
    });
    gate(&env_key).started.notified().await;
    env.store().cancel_job(env_id.get()).await.unwrap();
    driver.await.unwrap();
    let env_state = env.client().job(env_id).await.unwrap().state;

    let worker_key = format!("spin-worker-{}", t.store.backend());
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let id = client
        .enqueue::<spin>(&worker_key, JobOptions::default())
        .await
        .unwrap();
    gate(&worker_key).started.notified().await;
    t.store.cancel_job(id.get()).await.unwrap();
    eventually("the job stopped", async || {
        client.job(id).await.unwrap().state == JobState::Cancelled
    })
    .await;
    running.shutdown().await;

    assert_eq!(env_state, JobState::Cancelled);
    assert_eq!(lock(&RESUMED).get(&env_key), None, "not a resumable job");
}

async fn it_relays_an_activity_s_outbox_message_as_a_signal_under_both_drivers(t: &TestStore) {
    let env = TestEnv::new(registry()).await.unwrap();
    let heard = listener::start(env.client(), "listener", 0).await.unwrap();
    teller::start(env.client(), "teller", "hi there".to_string())
        .await
        .unwrap();
    let outcome = heard.result().await.map_err(|e| e.to_string());
    let env_record = record(env.store(), "listener", outcome).await;

    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let heard = listener::start(&client, "listener", 0).await.unwrap();
    teller::start(&client, "teller", "hi there".to_string())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), heard.result())
        .await
        .unwrap()
        .map_err(|e| e.to_string());
    running.shutdown().await;
    let worker_record = record(&t.store, "listener", outcome).await;

    assert_eq!(env_record, worker_record);
    assert_eq!(env_record.outcome, Ok("hi there".len() as u32));
}
