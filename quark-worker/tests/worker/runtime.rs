//! The worker runtime against both backends, with plain handlers (no orchestrations).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_history::{ClaimRequest, Commit, FailAction, NewTask, QueueStats, Store, TaskKind};
use quark_worker::{Handled, HandlerError, Worker};

quark_history::backend_tests!(
    it_runs_every_task_once_and_completes_it,
    it_dead_letters_a_rejected_task_and_retries_a_failed_one_after_a_backoff,
    it_cancels_a_task_whose_lease_was_taken_over,
    it_hands_unfinished_tasks_back_at_shutdown,
);

async fn drained(store: &dyn Store, queue: &str) -> bool {
    store.queue_stats(queue).await.unwrap() == QueueStats::default()
}

async fn it_runs_every_task_once_and_completes_it(t: &TestStore) {
    let runs: Arc<Mutex<BTreeMap<u16, u32>>> = Arc::default();
    let seen = Arc::clone(&runs);
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .queues(["jobs"])
        .handle(
            TaskKind::Job,
            move |task: quark_history::ClaimedTask, _cx: quark_worker::TaskContext| {
                let n = u16::from_be_bytes([task.payload[0], task.payload[1]]);
                *seen.lock().unwrap().entry(n).or_default() += 1;
                let commit = Commit::new().complete(task.lease.clone());
                async move { Ok::<_, HandlerError>(Handled::Commit(commit)) }
            },
            8,
        )
        .claim_batch(16)
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    let tasks = (0..500u16)
        .map(|n| NewTask::new(TaskKind::Job, "jobs").payload(n.to_be_bytes().to_vec()))
        .collect();
    t.store.enqueue(tasks).await.unwrap();
    // The counters move just after each commit returns: wait for both.
    eventually("the queue is drained and counted", async || {
        drained(&*t.store, "jobs").await && running.worker().metrics().completed == 500
    })
    .await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 500, "every task ran");
    assert!(runs.values().all(|&n| n == 1), "no task ran twice");
    let m = running.worker().metrics();
    assert_eq!(
        (m.claimed, m.completed, m.failed, m.lease_lost),
        (500, 500, 0, 0)
    );
    running.shutdown().await;
    assert!(
        t.store.list_workers().await.unwrap().is_empty(),
        "deregistered at shutdown"
    );
}

async fn it_dead_letters_a_rejected_task_and_retries_a_failed_one_after_a_backoff(t: &TestStore) {
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .queues(["jobs"])
        .poll_interval(Duration::from_millis(20))
        .handle(
            TaskKind::Job,
            |task: quark_history::ClaimedTask, _cx: quark_worker::TaskContext| {
                let result = match (task.payload.as_slice(), task.lease.attempt) {
                    (b"poison", _) => {
                        Err(HandlerError::Rejected("cannot decode the payload".into()))
                    }
                    (b"flaky", 1) => Err(HandlerError::Other("connection reset".into())),
                    _ => Ok(Handled::Commit(Commit::new().complete(task.lease.clone()))),
                };
                async move { result }
            },
            4,
        )
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    t.store
        .enqueue(vec![
            NewTask::new(TaskKind::Job, "jobs").payload(b"poison".to_vec()),
            NewTask::new(TaskKind::Job, "jobs").payload(b"flaky".to_vec()),
        ])
        .await
        .unwrap();
    eventually("one dead, one retried", async || {
        running.worker().metrics().failed == 1 && running.worker().metrics().retried == 1
    })
    .await;
    let dead = t.store.list_dead(Some("jobs"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, b"poison");
    assert_eq!(dead[0].error, "cannot decode the payload");
    // The flaky task waits out its backoff (on the store's clock) before it runs again.
    assert_eq!(t.store.queue_stats("jobs").await.unwrap().pending, 1);
    t.clock.advance(Duration::from_secs(2));
    eventually("the flaky task succeeded", async || {
        running.worker().metrics().completed == 1
    })
    .await;
    assert_eq!(
        t.store.queue_stats("jobs").await.unwrap(),
        QueueStats {
            pending: 0,
            leased: 0,
            dead: 1,
            ..QueueStats::default()
        }
    );
    running.shutdown().await;
}

async fn it_cancels_a_task_whose_lease_was_taken_over(t: &TestStore) {
    let observed = Arc::new(tokio::sync::Notify::new());
    let saw = Arc::clone(&observed);
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .queues(["jobs"])
        .heartbeat(Duration::from_millis(20))
        .handle(
            TaskKind::Job,
            move |task: quark_history::ClaimedTask, cx: quark_worker::TaskContext| {
                let saw = Arc::clone(&saw);
                let commit = Commit::new().complete(task.lease.clone());
                async move {
                    cx.cancelled().await;
                    saw.notify_one();
                    Ok::<_, HandlerError>(Handled::Commit(commit))
                }
            },
            1,
        )
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    t.store
        .enqueue(vec![NewTask::new(TaskKind::Job, "jobs")])
        .await
        .unwrap();
    eventually("the worker holds the task", async || {
        running.worker().metrics().claimed == 1
    })
    .await;
    // The worker keeps extending its lease; jump the clock past it until another claimer wins.
    let mut stolen = Vec::new();
    eventually("another worker took the task over", async || {
        t.clock.advance(Duration::from_secs(31));
        stolen = t
            .store
            .claim(ClaimRequest::new("thief", ["jobs"]))
            .await
            .unwrap();
        !stolen.is_empty()
    })
    .await;
    assert_eq!(stolen[0].lease.attempt, 2);
    tokio::time::timeout(Duration::from_secs(20), observed.notified())
        .await
        .expect("the handler saw the cancellation");
    eventually("the lost lease is counted", async || {
        running.worker().metrics().lease_lost >= 1
    })
    .await;
    assert_eq!(
        running.worker().metrics().completed,
        0,
        "the zombie's completion was refused"
    );
    t.store
        .commit(Commit::new().complete(stolen.remove(0).lease))
        .await
        .unwrap();
    running.shutdown().await;
}

async fn it_hands_unfinished_tasks_back_at_shutdown(t: &TestStore) {
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .queues(["jobs"])
        .shutdown_grace(Duration::from_millis(50))
        .handle(
            TaskKind::Job,
            |_task: quark_history::ClaimedTask, _cx: quark_worker::TaskContext| {
                // Never finishes on its own.
                futures::future::pending::<Result<Handled, HandlerError>>()
            },
            2,
        )
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    t.store
        .enqueue(
            (0..3)
                .map(|_| NewTask::new(TaskKind::Job, "jobs"))
                .collect(),
        )
        .await
        .unwrap();
    eventually("two tasks are running", async || {
        running.worker().metrics().claimed == 2
    })
    .await;
    running.shutdown().await;
    // Both running tasks were released at once (not after their 30 s lease), with the third untouched.
    let back = t
        .store
        .claim(ClaimRequest::new("next", ["jobs"]).limit(10))
        .await
        .unwrap();
    assert_eq!(back.len(), 3);
    assert_eq!(back.iter().filter(|c| c.lease.attempt == 2).count(), 2);
    for c in back {
        t.store
            .commit(Commit::new().fail(
                c.lease,
                FailAction::Dead {
                    error: "test over".into(),
                },
            ))
            .await
            .unwrap();
    }
}

#[test]
fn a_worker_can_be_built_outside_a_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = rt.block_on(quark_history::testing::sqlite());
    // Building spawns nothing; only `start` needs the runtime.
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .handle(
            TaskKind::Job,
            |task: quark_history::ClaimedTask, _cx: quark_worker::TaskContext| async move {
                Ok::<_, HandlerError>(Handled::Commit(Commit::new().complete(task.lease)))
            },
            1,
        )
        .build()
        .unwrap();
    let running = rt.block_on(worker.start()).unwrap();
    rt.block_on(
        t.store
            .enqueue(vec![NewTask::new(TaskKind::Job, "default")]),
    )
    .unwrap();
    rt.block_on(eventually("the job ran", async || {
        running.worker().metrics().completed == 1
    }));
    rt.block_on(running.shutdown());
}

#[tokio::test]
async fn a_builders_options_apply_whatever_their_order() {
    let t = quark_history::testing::sqlite().await;
    let registry = || quark_workflow::Registry::new();
    // The concurrency before the handlers it is for, and the store last...
    let first = Worker::builder()
        .concurrency(TaskKind::Activity, 3)
        .workflows(registry())
        .store(Arc::clone(&t.store))
        .build()
        .unwrap();
    // ... or the other way round: the same worker.
    let second = Worker::builder()
        .store(Arc::clone(&t.store))
        .workflows(registry())
        .concurrency(TaskKind::Activity, 3)
        .build()
        .unwrap();
    for worker in [&first, &second] {
        assert_eq!(worker.concurrency(TaskKind::Activity), Some(3));
        assert_eq!(worker.concurrency(TaskKind::Orchestration), Some(256));
    }
    // A concurrency for tasks that nothing handles is a mistake, said at build time.
    let err = Worker::builder()
        .store(Arc::clone(&t.store))
        .workflows(registry())
        .concurrency(TaskKind::Outbox, 2)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("which have no handler"), "{err}");
}
