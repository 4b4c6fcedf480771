//! Orchestrations end to end on the worker runtime: macros, replay, activities with retries,
//! durable timers and signals, on both backends, with the store's clock as virtual time.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_history::{HistoryEvent, HistoryRange, QueueStats};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    activity, orchestration,
};

quark_history::backend_tests!(
    it_runs_an_order_through_retries_a_timer_and_a_signal,
    it_fails_an_unknown_orchestration_type_clearly,
    it_fires_a_thousand_timers_due_at_once_and_none_early,
    it_delivers_cancellation_and_termination_to_running_orchestrations,
    it_lets_a_child_finish_after_its_parent_was_terminated,
    it_cancels_the_running_activity_of_a_terminated_orchestration,
    it_does_not_start_the_activities_of_a_turn_that_ends_its_orchestration,
    it_hands_over_a_result_when_the_end_is_announced_without_looking_again,
);

/// Starts a `patient` child and waits for it.
#[orchestration]
async fn guardian(ctx: OrchestrationContext, what: String) -> Result<String, OrchestrationError> {
    ctx.call_child_with_id(patient, "ward", &what).await
}

#[orchestration]
async fn nap(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    ctx.sleep(Duration::from_secs(3600)).await?;
    Ok(n)
}

#[activity]
async fn undo(_ctx: ActivityContext, what: String) -> Result<String, ActivityError> {
    Ok(format!("undid {what}"))
}

/// Waits for approval; if cancelled meanwhile, compensates and ends as cancelled.
#[orchestration]
async fn patient(ctx: OrchestrationContext, what: String) -> Result<String, OrchestrationError> {
    match ctx.wait_for_signal::<bool>("approve").await {
        Ok(_) => Ok(format!("{what} approved")),
        Err(OrchestrationError::Cancelled { reason }) => {
            ctx.call(undo, &what).await?;
            Err(OrchestrationError::Cancelled { reason })
        }
        Err(e) => Err(e),
    }
}

#[activity(retry(max_attempts = 5, initial = "1s", max = "10s"))]
async fn flaky_charge(ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
    if ctx.attempt() < 3 {
        return Err(ActivityError::message("card network hiccup"));
    }
    Ok(format!("receipt-{cents}"))
}

#[activity]
async fn ship(_ctx: ActivityContext, receipt: String) -> Result<String, ActivityError> {
    Ok(format!("shipped against {receipt}"))
}

#[orchestration]
async fn order(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
    let receipt = ctx.call(flaky_charge, &cents).await?;
    ctx.sleep(Duration::from_secs(3600)).await?;
    let approved: bool = ctx.wait_for_signal("approve").await?;
    if !approved {
        return Ok("not approved".into());
    }
    ctx.call(ship, &receipt).await
}

fn worker(t: &TestStore) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        // Virtual time jumps up to 30 s at a step while tasks run: leases far longer than a step
        // keep a busy host from losing them, and so an activity's attempts count exactly.
        .lease(Duration::from_secs(3600))
        .workflows(
            Registry::new()
                .register(order)
                .register(flaky_charge)
                .register(ship)
                .register(nap)
                .register(patient)
                .register(guardian)
                .register(undo),
        )
        .build()
        .unwrap()
}

async fn it_runs_an_order_through_retries_a_timer_and_a_signal(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let handle = order::start(&client, "order-7", 700).await.unwrap();

    let waiting_for_signal = async || {
        let history = t
            .store
            .read_history("order-7", HistoryRange::All)
            .await
            .unwrap();
        history
            .iter()
            .any(|e| matches!(e.event, HistoryEvent::TimerFired { .. }))
    };
    t.advance_until(
        Duration::from_secs(30),
        "the timer fired",
        waiting_for_signal,
    )
    .await;
    handle.signal("approve", &true).await.unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output, "shipped against receipt-700");

    let history = t
        .store
        .read_history("order-7", HistoryRange::All)
        .await
        .unwrap();
    let charged = history.iter().find_map(|e| match &e.event {
        HistoryEvent::ActivityCompleted { attempt, .. } => Some(*attempt),
        _ => None,
    });
    assert_eq!(charged, Some(3), "two retryable failures, then success");
    assert!(t.store.verify("order-7").await.unwrap().is_intact());
    assert_eq!(
        t.store.queue_stats("default").await.unwrap(),
        QueueStats::default(),
        "no task left behind"
    );
    let m = running.worker().metrics();
    assert_eq!(m.failed, 0);
    assert_eq!((m.retried, m.lease_lost), (2, 0), "{m:?}");
    running.shutdown().await;
}

async fn it_fails_an_unknown_orchestration_type_clearly(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    t.store
        .create_instance(
            quark_history::NewInstance::new(
                "stray",
                "nobody_registered_this",
                quark_history::Payload::unit(),
            ),
            quark_history::IdReusePolicy::RejectDuplicate,
        )
        .await
        .unwrap();
    t.advance_until(
        Duration::from_secs(30),
        "the task is dead-lettered",
        async || !t.store.list_dead(None, 10).await.unwrap().is_empty(),
    )
    .await;
    let dead = t.store.list_dead(None, 10).await.unwrap();
    assert!(
        dead[0].error.contains("nobody_registered_this"),
        "{}",
        dead[0].error
    );
    assert_eq!(
        t.store
            .read_history("stray", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        1,
        "nothing else was written"
    );
    let stray = t.store.get_instance("stray").await.unwrap().unwrap();
    assert_eq!(
        stray.status,
        quark_history::InstanceStatus::Blocked,
        "not lost: blocked until a worker with the code re-drives it"
    );
    running.shutdown().await;
}

async fn count(t: &TestStore, status: quark_history::InstanceStatus) -> usize {
    let filter = quark_history::InstanceFilter {
        statuses: vec![status],
        limit: 5000,
        ..Default::default()
    };
    t.store.list_instances(filter).await.unwrap().len()
}

async fn it_fires_a_thousand_timers_due_at_once_and_none_early(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    for n in 0..1000 {
        nap::start(&client, format!("nap-{n}"), n).await.unwrap();
    }
    // Every instance reaches its timer; the timers are due in an hour of virtual time. (The
    // queue's count alone is not enough: under load a turn whose commit failed waits out a short
    // backoff as a pending task of its own, in place of its timer.)
    let ids: Vec<(String, u64)> = (0..1000).map(|n| (format!("nap-{n}"), 2)).collect();
    let all_waiting = async || {
        let waiting = t.store.queue_stats("default").await.unwrap();
        if waiting.pending != 1000 || waiting.leased != 0 {
            return false;
        }
        let seconds = t.store.read_histories(&ids).await.unwrap();
        seconds.iter().all(|events| {
            matches!(
                events.as_slice(),
                [e] if matches!(e.event, quark_history::HistoryEvent::TimerCreated { .. })
            )
        })
    };
    eventually("every instance waits on its timer", all_waiting).await;
    t.clock.advance(Duration::from_secs(3599));
    // At 59:59 no timer is visible, so no worker can fire one early.
    let early = t
        .store
        .claim(quark_history::ClaimRequest::new("probe", ["default"]).limit(1000))
        .await
        .unwrap();
    assert!(
        early.is_empty(),
        "{} tasks were claimable early: {:?}",
        early.len(),
        early
            .iter()
            .map(|t| (t.kind, t.instance_id.clone(), t.visible_at, t.lease.attempt))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count(t, quark_history::InstanceStatus::Completed).await,
        0,
        "a timer fired early"
    );
    t.clock.advance(Duration::from_secs(1));
    eventually("every timer fired", async || {
        count(t, quark_history::InstanceStatus::Completed).await == 1000
    })
    .await;
    assert_eq!(
        t.store.queue_stats("default").await.unwrap(),
        QueueStats::default()
    );
    running.shutdown().await;
}

async fn it_delivers_cancellation_and_termination_to_running_orchestrations(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let cancelled = patient::start(&client, "p-cancel", "the booking".to_string())
        .await
        .unwrap();
    let terminated = patient::start(&client, "p-term", "the order".to_string())
        .await
        .unwrap();
    t.advance_until(
        Duration::from_secs(30),
        "both wait for their signal",
        async || {
            t.store.queue_stats("default").await.unwrap() == QueueStats::default()
                && t.store
                    .read_history("p-term", HistoryRange::All)
                    .await
                    .unwrap()
                    .len()
                    == 1
                && t.store
                    .read_history("p-cancel", HistoryRange::All)
                    .await
                    .unwrap()
                    .len()
                    == 1
        },
    )
    .await;
    cancelled
        .cancel("customer changed their mind")
        .await
        .unwrap();
    terminated.terminate("operator cleanup").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), cancelled.result())
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("customer changed their mind"), "{e}");
    let history = t
        .store
        .read_history("p-cancel", HistoryRange::All)
        .await
        .unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.event.kind()).collect();
    assert!(
        kinds.contains(&"ActivityCompleted"),
        "compensation ran: {kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"WorkflowCancelled"));
    let e = tokio::time::timeout(Duration::from_secs(20), terminated.result())
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("operator cleanup"), "{e}");
    let history = t
        .store
        .read_history("p-term", HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|e| e.event.kind()).collect::<Vec<_>>(),
        ["WorkflowStarted", "WorkflowTerminated"]
    );
    running.shutdown().await;
}

async fn it_lets_a_child_finish_after_its_parent_was_terminated(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let parent = guardian::start(&client, "guardian", "the house".to_string())
        .await
        .unwrap();
    t.advance_until(
        Duration::from_secs(30),
        "the child waits for its signal",
        async || {
            t.store.get_instance("ward").await.unwrap().is_some()
                && t.store.queue_stats("default").await.unwrap() == QueueStats::default()
        },
    )
    .await;
    parent.terminate("parent went away").await.unwrap();
    client.signal("ward", "approve", &true).await.unwrap();
    let child = patient::handle(&client, "ward");
    let out = tokio::time::timeout(Duration::from_secs(20), child.result())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, "the house approved", "the child's own end landed");
    let parent = t.store.get_instance("guardian").await.unwrap().unwrap();
    assert_eq!(parent.status, quark_history::InstanceStatus::Terminated);
    assert!(
        t.store.list_dead(None, 10).await.unwrap().is_empty(),
        "nothing was dead-lettered"
    );
    running.shutdown().await;
}

/// What `waits_for_cancellation` saw, by the token it was given (the SQLite and PostgreSQL tests
/// run at once in one process): how many attempts started, and how many saw their cancellation.
static SEEN: std::sync::Mutex<Vec<(String, u32, u32)>> = std::sync::Mutex::new(Vec::new());

fn seen(token: &str) -> (u32, u32) {
    let seen = SEEN.lock().unwrap();
    seen.iter()
        .find(|(t, _, _)| t == token)
        .map_or((0, 0), |(_, started, cancelled)| (*started, *cancelled))
}

fn see(token: &str, started: u32, cancelled: u32) {
    let mut seen = SEEN.lock().unwrap();
    match seen.iter_mut().find(|(t, _, _)| t == token) {
        Some(entry) => {
            entry.1 += started;
            entry.2 += cancelled;
        }
        None => seen.push((token.to_string(), started, cancelled)),
    }
}

/// A token no other test of this process uses.
fn fresh_token(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n}")
}

/// A worker running `stuck`, `fire_and_forget` and their activity, renewing leases (and so
/// learning of cancellations) every `heartbeat`.
async fn cancellation_worker(t: &TestStore, heartbeat: Duration) -> quark_worker::RunningWorker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .heartbeat(heartbeat)
        .workflows(
            Registry::new()
                .register(stuck)
                .register(fire_and_forget)
                .register(waits_for_cancellation),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

async fn history_kinds(t: &TestStore, id: &str) -> Vec<&'static str> {
    let history = t.store.read_history(id, HistoryRange::All).await.unwrap();
    history.iter().map(|e| e.event.kind()).collect()
}

/// Runs until it is cancelled, then fails (retryably, were it retried).
#[activity]
async fn waits_for_cancellation(ctx: ActivityContext, token: String) -> Result<(), ActivityError> {
    see(&token, 1, 0);
    ctx.cancellation().cancelled().await;
    see(&token, 0, 1);
    Err(ActivityError::message("stopped"))
}

#[orchestration]
async fn stuck(ctx: OrchestrationContext, token: String) -> Result<(), OrchestrationError> {
    ctx.call(waits_for_cancellation, &token).await
}

async fn it_cancels_the_running_activity_of_a_terminated_orchestration(t: &TestStore) {
    let token = fresh_token("run");
    let running = cancellation_worker(t, Duration::from_millis(50)).await;
    let client = Client::new(Arc::clone(&t.store));
    let handle = stuck::start(&client, "stuck", token.clone()).await.unwrap();
    eventually("the activity runs", async || seen(&token).0 == 1).await;

    handle.terminate("operator cleanup").await.unwrap();
    // Without the store asking it to stop, the activity would run until its lease was lost.
    eventually("the running activity sees its cancellation", async || {
        seen(&token).1 == 1
    })
    .await;
    eventually("its task is settled", async || {
        t.store.queue_stats("default").await.unwrap() == QueueStats::default()
    })
    .await;
    assert_eq!(seen(&token), (1, 1), "one attempt, not retried");
    assert!(
        t.store.list_dead(None, 10).await.unwrap().is_empty(),
        "nothing was dead-lettered"
    );
    assert_eq!(
        history_kinds(t, "stuck").await,
        ["WorkflowStarted", "ActivityScheduled", "WorkflowTerminated"]
    );
    running.shutdown().await;
}

/// Schedules an activity and returns without waiting for it.
#[orchestration]
async fn fire_and_forget(
    ctx: OrchestrationContext,
    token: String,
) -> Result<(), OrchestrationError> {
    let _never_awaited = ctx.call(waits_for_cancellation, &token);
    Ok(())
}

async fn it_does_not_start_the_activities_of_a_turn_that_ends_its_orchestration(t: &TestStore) {
    let token = fresh_token("forgotten");
    // A 10 s heartbeat: a started activity would still be running, leased, below.
    let running = cancellation_worker(t, Duration::from_secs(10)).await;
    let client = Client::new(Arc::clone(&t.store));
    let handle = fire_and_forget::start(&client, "forgetful", token.clone())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), handle.result())
        .await
        .unwrap()
        .unwrap();
    // The commit that completed the instance deleted the activity's task: nothing is leased to
    // this worker, and nothing waits in the queue.
    assert_eq!(
        t.store.queue_stats("default").await.unwrap(),
        QueueStats::default()
    );
    assert_eq!(seen(&token), (0, 0), "the activity never started");
    assert_eq!(
        history_kinds(t, "forgetful").await,
        ["WorkflowStarted", "ActivityScheduled", "WorkflowCompleted"]
    );
    running.shutdown().await;
}

async fn it_hands_over_a_result_when_the_end_is_announced_without_looking_again(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    // Clients that look at the instance only once an hour unless told of its end: the result
    // arrives within the test's minute only if the end is announced. One shares the worker's
    // store (this process); on PostgreSQL another has a store of its own, as another process
    // would, and hears of the end through the database.
    let here = Client::new(Arc::clone(&t.store)).result_look_every(Duration::from_secs(3600));
    let mut clients = vec![("this process", here)];
    if let Some(url) = t.database_url() {
        let own = quark_history::PostgresStore::connect_with(
            &url,
            quark_history::StoreConfig::default().clock(t.clock.clone()),
        )
        .await
        .unwrap();
        let elsewhere = Client::new(Arc::new(own)).result_look_every(Duration::from_secs(3600));
        clients.push(("another store", elsewhere));
    }
    for (i, (who, client)) in clients.into_iter().enumerate() {
        let id = format!("announced-{i}");
        // Held so that the store listens already: the waiter's first look comes at once.
        let _listening = client.store().watch_ends().await.unwrap();
        let handle = patient::start(&client, id.clone(), "leave".to_string())
            .await
            .unwrap();
        // The waiter looks (the instance runs) while the first turn runs, before the signal
        // that ends the instance is sent.
        let waiter = tokio::spawn(async move { handle.result().await });
        // Its first turn done (the worker that ran it is the instance's affinity), it waits for
        // approval.
        eventually("the patient waits for approval", async || {
            client.describe(&id).await.unwrap().affinity.is_some()
        })
        .await;
        client.signal(&id, "approve", &true).await.unwrap();
        let output = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .unwrap_or_else(|_| panic!("{who}: the result waited for its next look"))
            .unwrap()
            .unwrap();
        assert_eq!(output, "leave approved", "{who}");
    }
    running.shutdown().await;
}
