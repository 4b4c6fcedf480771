//! Durable jobs: unique keys, concurrency keys, cancellation, holds, progress, rate limits, the
//! record of finished jobs and its retention.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Clock, Commit, Enqueued, Error, FailAction, JobFilter, JobState, NewTask, Progress, RateLimit,
    TaskKind, UniqueKey, UniquePolicy,
};

use crate::support::{claim_all, conformance};

conformance!(
    it_deduplicates_jobs_by_unique_key_with_each_policy,
    it_gives_a_unique_key_to_exactly_one_of_many_racing_enqueuers,
    it_runs_at_most_n_jobs_of_a_concurrency_key,
    it_cancels_pending_jobs_at_once_and_running_jobs_through_their_worker,
    it_pauses_and_resumes_jobs_and_queues,
    it_records_progress_under_the_lease_and_keeps_the_checkpoint_for_retries,
    it_enforces_a_queue_rate_limit_across_claimers,
    it_keeps_finished_jobs_for_the_retention_then_purges_them_in_batches,
    it_lists_jobs_by_state_and_queue_newest_first,
    it_rejects_keys_on_tasks_that_cannot_take_them,
);

/// Claims every job visible on `jobs` for `worker`, naming the kind (the claim of one queue and
/// one kind, which is what a worker's poller makes).
async fn claim_jobs(
    store: &dyn quark_history::Store,
    worker: &str,
) -> Vec<quark_history::ClaimedTask> {
    store
        .claim(
            quark_history::ClaimRequest::new(worker, ["jobs"])
                .kinds([TaskKind::Job])
                .limit(1000),
        )
        .await
        .expect("claim")
}

fn job(n: u8) -> NewTask {
    NewTask::new(TaskKind::Job, "jobs").payload(vec![n])
}

async fn state(t: &TestStore, id: i64) -> JobState {
    t.store
        .job(id)
        .await
        .unwrap()
        .expect("the job exists")
        .state
}

async fn it_deduplicates_jobs_by_unique_key_with_each_policy(t: &TestStore) {
    let key = |policy| UniqueKey::new("report:7").policy(policy);
    let first = t
        .store
        .commit(Commit::new().enqueue(job(1).unique(key(UniquePolicy::Reject))))
        .await
        .unwrap();
    let id = first.task_ids[0];
    assert_eq!(first.outcome(0), Enqueued::New);

    match t
        .store
        .enqueue(vec![job(2).unique(key(UniquePolicy::Reject))])
        .await
    {
        Err(Error::Duplicate { key, existing }) => {
            assert_eq!((key.as_str(), existing), ("report:7", id))
        }
        other => panic!("expected a duplicate error, got {other:?}"),
    }
    let kept = t
        .store
        .commit(Commit::new().enqueue(job(3).unique(key(UniquePolicy::Keep))))
        .await
        .unwrap();
    assert_eq!(
        (kept.task_ids[0], kept.outcome(0)),
        (id, Enqueued::Existing)
    );
    let replaced = t
        .store
        .commit(Commit::new().enqueue(job(4).unique(key(UniquePolicy::Replace)).priority(9)))
        .await
        .unwrap();
    assert_eq!(
        (replaced.task_ids[0], replaced.outcome(0)),
        (id, Enqueued::Replaced)
    );
    let jobs = t.store.list_jobs(JobFilter::default()).await.unwrap();
    assert_eq!(jobs.len(), 1, "one job, whatever the duplicates: {jobs:?}");

    // Claimed, the holder is no longer replaced, only kept.
    let claimed = claim_all(&*t.store, "w", "jobs").await;
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (claimed[0].payload.as_slice(), claimed[0].priority),
        (&[4u8][..], 9),
        "the replacement's payload and priority"
    );
    let again = t
        .store
        .commit(Commit::new().enqueue(job(5).unique(key(UniquePolicy::Replace))))
        .await
        .unwrap();
    assert_eq!(again.outcome(0), Enqueued::Existing);

    // A key held until its job finishes is free once it has.
    t.store
        .commit(Commit::new().complete(claimed[0].lease.clone()))
        .await
        .unwrap();
    let next = t
        .store
        .commit(Commit::new().enqueue(job(6).unique(key(UniquePolicy::Reject))))
        .await
        .unwrap();
    assert_eq!(next.outcome(0), Enqueued::New);
    assert_ne!(next.task_ids[0], id);

    // A key with a window stays taken for the window, finished or not.
    let windowed = || {
        job(7).unique(
            UniqueKey::new("daily")
                .policy(UniquePolicy::Keep)
                .window(Duration::from_secs(3600)),
        )
    };
    let daily = t.store.enqueue(vec![windowed()]).await.unwrap()[0];
    t.store.cancel_job(daily).await.unwrap();
    t.clock.advance(Duration::from_secs(3599));
    let during = t
        .store
        .commit(Commit::new().enqueue(windowed()))
        .await
        .unwrap();
    assert_eq!(
        (during.task_ids[0], during.outcome(0)),
        (daily, Enqueued::Existing)
    );
    t.clock.advance(Duration::from_secs(1));
    let after = t
        .store
        .commit(Commit::new().enqueue(windowed()))
        .await
        .unwrap();
    assert_eq!(after.outcome(0), Enqueued::New);
    assert_ne!(after.task_ids[0], daily);
}

async fn it_gives_a_unique_key_to_exactly_one_of_many_racing_enqueuers(t: &TestStore) {
    let mut racers = Vec::new();
    for n in 0..8u8 {
        let store = Arc::clone(&t.store);
        racers.push(tokio::spawn(async move {
            store
                .commit(
                    Commit::new()
                        .enqueue(job(n).unique(UniqueKey::new("once").policy(UniquePolicy::Keep))),
                )
                .await
                .unwrap()
        }));
    }
    let mut ids = BTreeSet::new();
    let mut new = 0;
    for racer in racers {
        let committed = racer.await.unwrap();
        ids.insert(committed.task_ids[0]);
        new += usize::from(committed.outcome(0) == Enqueued::New);
    }
    assert_eq!(ids.len(), 1, "every racer got the one job's id: {ids:?}");
    assert_eq!(new, 1, "exactly one racer inserted it");
    assert_eq!(
        t.store.list_jobs(JobFilter::default()).await.unwrap().len(),
        1
    );
}

async fn it_runs_at_most_n_jobs_of_a_concurrency_key(t: &TestStore) {
    let mut tasks: Vec<NewTask> = (0..5).map(|n| job(n).concurrency("tenant-1", 2)).collect();
    tasks.push(job(9).concurrency("tenant-2", 2));
    let ids = t.store.enqueue(tasks).await.unwrap();
    let stats = t.store.queue_stats("jobs").await.unwrap();
    assert_eq!((stats.pending, stats.held), (3, 3), "{stats:?}");
    assert_eq!(state(t, ids[2]).await, JobState::Waiting);

    let first = claim_all(&*t.store, "w", "jobs").await;
    let got: BTreeSet<u8> = first.iter().map(|c| c.payload[0]).collect();
    assert_eq!(
        got,
        BTreeSet::from([0, 1, 9]),
        "two of tenant-1, oldest first"
    );
    assert!(claim_all(&*t.store, "w", "jobs").await.is_empty());

    // A retry keeps its slot; a completion frees it for the next in line.
    let by_payload = |n: u8| {
        first
            .iter()
            .find(|c| c.payload[0] == n)
            .unwrap()
            .lease
            .clone()
    };
    t.store
        .commit(Commit::new().fail(
            by_payload(0),
            FailAction::Retry {
                at: t.clock.now(),
                error: Some("flaky".into()),
            },
        ))
        .await
        .unwrap();
    let retried = claim_all(&*t.store, "w", "jobs").await;
    assert_eq!(
        retried.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [0]
    );
    t.store
        .commit(Commit::new().complete(by_payload(1)))
        .await
        .unwrap();
    let next = claim_all(&*t.store, "w", "jobs").await;
    assert_eq!(next.iter().map(|c| c.payload[0]).collect::<Vec<_>>(), [2]);

    // A dead job frees its slot too; a lost lease does not (the job still needs its slot).
    t.store
        .commit(Commit::new().fail(
            retried[0].lease.clone(),
            FailAction::Dead {
                error: "broken".into(),
            },
        ))
        .await
        .unwrap();
    let after_dead = claim_all(&*t.store, "w", "jobs").await;
    assert_eq!(
        after_dead.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [3]
    );
    t.clock.advance(Duration::from_secs(31));
    let redelivered: BTreeSet<u8> = claim_all(&*t.store, "w2", "jobs")
        .await
        .iter()
        .map(|c| c.payload[0])
        .collect();
    assert_eq!(
        redelivered,
        BTreeSet::from([2, 3, 9]),
        "expired leases, not job 4"
    );
    assert_eq!(state(t, ids[4]).await, JobState::Waiting);
}

async fn it_cancels_pending_jobs_at_once_and_running_jobs_through_their_worker(t: &TestStore) {
    let ids = t.store.enqueue(vec![job(1), job(2), job(3)]).await.unwrap();
    assert_eq!(
        t.store.cancel_job(ids[0]).await.unwrap(),
        JobState::Cancelled
    );
    let job0 = t.store.job(ids[0]).await.unwrap().unwrap();
    assert_eq!(job0.state, JobState::Cancelled);
    assert!(
        job0.finished_at.is_some() && job0.error.is_some(),
        "{job0:?}"
    );

    let claimed = claim_all(&*t.store, "w", "jobs").await;
    assert_eq!(
        claimed.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [2, 3],
        "a cancelled job is never claimed"
    );
    for c in &claimed {
        assert_eq!(
            t.store.cancel_job(c.lease.task_id).await.unwrap(),
            JobState::Cancelling
        );
    }
    assert_eq!(state(t, ids[1]).await, JobState::Cancelling);
    // The worker hears of it at its next lease extension, and its lease still holds.
    match t
        .store
        .extend_lease(&claimed[0].lease, Duration::from_secs(30))
        .await
    {
        Err(Error::CancelRequested { task_id }) => assert_eq!(task_id, ids[1]),
        other => panic!("expected CancelRequested, got {other:?}"),
    }
    // However the attempt fails, a cancelled job ends cancelled, never retried.
    t.store
        .commit(Commit::new().fail(
            claimed[0].lease.clone(),
            FailAction::Retry {
                at: t.clock.now(),
                error: Some("stopped".into()),
            },
        ))
        .await
        .unwrap();
    let job1 = t.store.job(ids[1]).await.unwrap().unwrap();
    assert_eq!(job1.state, JobState::Cancelled);
    assert!(
        job1.error.as_deref().unwrap().contains("stopped"),
        "{job1:?}"
    );
    // A job that completes before it notices is completed.
    t.store
        .commit(Commit::new().complete(claimed[1].lease.clone()))
        .await
        .unwrap();
    assert_eq!(state(t, ids[2]).await, JobState::Completed);
    assert!(claim_all(&*t.store, "w", "jobs").await.is_empty());

    match t.store.cancel_job(ids[2]).await {
        Err(Error::JobState {
            state: JobState::Completed,
            ..
        }) => {}
        other => panic!("a completed job cannot be cancelled, got {other:?}"),
    }
    assert!(matches!(
        t.store.cancel_job(999_999).await,
        Err(Error::TaskNotFound { .. })
    ));

    // A worker that dies while its job is being cancelled: the job is not run again, and the
    // maintenance pass records it as cancelled.
    let id = t.store.enqueue(vec![job(4)]).await.unwrap()[0];
    let held = claim_all(&*t.store, "doomed", "jobs").await;
    assert_eq!(held.len(), 1);
    t.store.cancel_job(id).await.unwrap();
    t.clock.advance(Duration::from_secs(31));
    assert!(claim_all(&*t.store, "w", "jobs").await.is_empty());
    assert_eq!(t.store.purge_finished(100).await.unwrap().cancelled, 1);
    assert_eq!(state(t, id).await, JobState::Cancelled);
}

async fn it_pauses_and_resumes_jobs_and_queues(t: &TestStore) {
    let later = t.clock.now() + Duration::from_secs(60);
    let ids = t
        .store
        .enqueue(vec![job(1), job(2), job(3).visible_at(later)])
        .await
        .unwrap();
    t.store.pause_job(ids[0]).await.unwrap();
    t.store.pause_job(ids[0]).await.unwrap(); // idempotent
    t.store.pause_job(ids[2]).await.unwrap();
    assert_eq!(state(t, ids[0]).await, JobState::Paused);
    let claimed = claim_all(&*t.store, "w", "jobs").await;
    assert_eq!(
        claimed.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [2]
    );
    match t.store.pause_job(ids[1]).await {
        Err(Error::JobState {
            state: JobState::Running,
            ..
        }) => {}
        other => panic!("a running job cannot be paused, got {other:?}"),
    }
    t.store.resume_job(ids[0]).await.unwrap();
    t.store.resume_job(ids[2]).await.unwrap();
    assert_eq!(
        state(t, ids[2]).await,
        JobState::Scheduled,
        "it keeps its own time"
    );
    assert!(matches!(
        t.store.resume_job(ids[0]).await,
        Err(Error::JobState { .. })
    ));

    t.store.set_queue_paused("jobs", true).await.unwrap();
    let stats = t.store.queue_stats("jobs").await.unwrap();
    assert!(stats.paused && stats.pending == 2, "{stats:?}");
    assert!(t.store.queue_settings("jobs").await.unwrap().paused);
    assert!(
        claim_all(&*t.store, "w", "jobs").await.is_empty(),
        "nothing is claimed from a paused queue"
    );
    assert!(
        claim_jobs(&*t.store, "w").await.is_empty(),
        "nor by a claim of one kind"
    );
    t.store.set_queue_paused("jobs", false).await.unwrap();
    let resumed = claim_jobs(&*t.store, "w").await;
    assert_eq!(
        resumed.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [1]
    );
    for c in claimed.into_iter().chain(resumed) {
        t.store
            .commit(Commit::new().complete(c.lease))
            .await
            .unwrap();
    }
    t.clock.advance(Duration::from_secs(60));
    let claimed = claim_all(&*t.store, "w", "jobs").await;
    assert_eq!(
        claimed.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [3]
    );
}

async fn it_records_progress_under_the_lease_and_keeps_the_checkpoint_for_retries(t: &TestStore) {
    let id = t.store.enqueue(vec![job(1)]).await.unwrap()[0];
    let first = claim_all(&*t.store, "w", "jobs").await.remove(0);
    let report = |percent, checkpoint: Option<&str>| Progress {
        percent: Some(percent),
        message: Some(format!("{percent}%")),
        checkpoint: checkpoint.map(|c| c.as_bytes().to_vec()),
        ..Progress::default()
    };
    t.store
        .report_progress(&first.lease, report(40.0, Some("row=400")))
        .await
        .unwrap();
    t.store
        .report_progress(&first.lease, report(50.0, None))
        .await
        .unwrap();
    let progress = t.store.job_progress(id).await.unwrap().unwrap();
    assert_eq!(progress.percent, Some(50.0));
    assert_eq!(
        progress.checkpoint.as_deref(),
        Some(&b"row=400"[..]),
        "kept"
    );
    assert_eq!(
        t.store
            .job(id)
            .await
            .unwrap()
            .unwrap()
            .progress
            .unwrap()
            .message
            .as_deref(),
        Some("50%")
    );

    // The attempt fails; the retry resumes from the checkpoint; the old attempt is fenced off.
    t.store
        .commit(Commit::new().fail(
            first.lease.clone(),
            FailAction::Retry {
                at: t.clock.now(),
                error: None,
            },
        ))
        .await
        .unwrap();
    let second = claim_all(&*t.store, "w", "jobs").await.remove(0);
    assert_eq!(second.lease.attempt, 2);
    assert!(matches!(
        t.store
            .report_progress(&first.lease, report(99.0, None))
            .await,
        Err(Error::LeaseLost { .. })
    ));
    let progress = t.store.job_progress(id).await.unwrap().unwrap();
    assert_eq!(
        (progress.percent, progress.checkpoint.as_deref()),
        (Some(50.0), Some(&b"row=400"[..]))
    );
    assert!(matches!(
        t.store
            .report_progress(
                &second.lease,
                Progress {
                    checkpoint: Some(vec![0; 3 * 1024 * 1024]),
                    ..Progress::default()
                }
            )
            .await,
        Err(Error::PayloadTooLarge { .. })
    ));
}

async fn it_enforces_a_queue_rate_limit_across_claimers(t: &TestStore) {
    t.store.enqueue((0..20).map(job).collect()).await.unwrap();
    let limit = RateLimit {
        limit: 4,
        interval: Duration::from_secs(1),
    };
    t.store.set_rate_limit("jobs", Some(limit)).await.unwrap();
    assert_eq!(
        t.store.queue_settings("jobs").await.unwrap().rate_limit,
        Some(limit)
    );
    // Worker a claims every kind, b jobs only: the two ways of claiming share the bucket.
    let claim = |worker: &'static str| {
        let store = Arc::clone(&t.store);
        async move {
            match worker {
                "a" => claim_all(&*store, worker, "jobs").await.len(),
                _ => claim_jobs(&*store, worker).await.len(),
            }
        }
    };
    let (a, b) = tokio::join!(claim("a"), claim("b"));
    assert_eq!(a + b, 4, "one bucket for every claimer ({a} + {b})");
    assert_eq!(claim("a").await, 0);
    t.clock.advance(Duration::from_millis(500));
    assert_eq!(claim("b").await, 2, "refilled in proportion");
    t.clock.advance(Duration::from_secs(10));
    assert_eq!(claim("a").await, 4, "never more than the bucket holds");
    t.store.set_rate_limit("jobs", None).await.unwrap();
    assert_eq!(claim("b").await, 10);
    assert!(matches!(
        t.store
            .set_rate_limit(
                "jobs",
                Some(RateLimit {
                    limit: 0,
                    interval: Duration::from_secs(1)
                })
            )
            .await,
        Err(Error::Invalid(_))
    ));
}

async fn it_keeps_finished_jobs_for_the_retention_then_purges_them_in_batches(t: &TestStore) {
    let ids = t.store.enqueue((0..5).map(job).collect()).await.unwrap();
    for c in claim_all(&*t.store, "w", "jobs").await {
        t.store
            .report_progress(&c.lease, Progress::default())
            .await
            .unwrap();
        t.store
            .commit(Commit::new().complete(c.lease))
            .await
            .unwrap();
    }
    let done = t
        .store
        .list_jobs(JobFilter {
            states: vec![JobState::Completed],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 5);
    assert!(
        done.iter()
            .all(|j| j.finished_at.is_some() && j.error.is_none())
    );
    assert_eq!(
        t.store.purge_finished(2).await.unwrap().jobs,
        0,
        "within retention"
    );

    t.clock
        .advance(t.store.config().finished_job_retention + Duration::from_secs(1));
    let mut purged = Vec::new();
    loop {
        let p = t.store.purge_finished(2).await.unwrap();
        purged.push(p.jobs);
        if p.jobs < 2 {
            break;
        }
    }
    assert_eq!(purged, [2, 2, 1]);
    assert!(t.store.job(ids[0]).await.unwrap().is_none());
    assert!(t.store.job_progress(ids[0]).await.unwrap().is_none());
}

async fn it_lists_jobs_by_state_and_queue_newest_first(t: &TestStore) {
    let later = t.clock.now() + Duration::from_secs(60);
    let ids = t
        .store
        .enqueue(vec![
            job(1),
            job(2).visible_at(later),
            NewTask::new(TaskKind::Job, "mail").payload(vec![3]),
            NewTask::new(TaskKind::Activity, "jobs").payload(vec![4]),
        ])
        .await
        .unwrap();
    let all = t.store.list_jobs(JobFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[1], ids[0]],
        "jobs only, newest first"
    );
    let scheduled = t
        .store
        .list_jobs(JobFilter {
            queue_prefix: None,
            queue: Some("jobs".into()),
            states: vec![JobState::Scheduled],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(
        (scheduled[0].id, scheduled[0].run_at),
        (ids[1], Some(later))
    );
    let page = t
        .store
        .list_jobs(JobFilter {
            before_id: Some(ids[2]),
            limit: 1,
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|j| j.id).collect::<Vec<_>>(), [ids[1]]);
    // A queue prefix (a namespace's) keeps the queues it starts; with a state, both hold.
    let by_prefix = async |prefix: &str, states: Vec<JobState>| {
        t.store
            .list_jobs(JobFilter {
                queue_prefix: Some(prefix.into()),
                states,
                ..JobFilter::default()
            })
            .await
            .unwrap()
            .iter()
            .map(|j| (j.id, j.queue.clone()))
            .collect::<Vec<_>>()
    };
    let queues: Vec<(i64, String)> = all.iter().map(|j| (j.id, j.queue.clone())).collect();
    let jo = by_prefix("jo", vec![]).await;
    assert_eq!(
        jo,
        queues
            .iter()
            .filter(|(_, q)| q.starts_with("jo"))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert!(!jo.is_empty() && jo.len() < queues.len(), "{queues:?}");
    assert_eq!(
        by_prefix("jo", vec![JobState::Scheduled]).await,
        [(ids[1], "jobs".to_string())]
    );
    assert!(by_prefix("zz", vec![]).await.is_empty());
    let mail = claim_all(&*t.store, "w", "mail").await.remove(0);
    t.store
        .commit(Commit::new().fail(mail.lease, FailAction::Dead { error: "no".into() }))
        .await
        .unwrap();
    let dead = t
        .store
        .list_jobs(JobFilter {
            states: vec![JobState::Dead, JobState::Running],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].state), (ids[2], JobState::Dead));
}

async fn it_rejects_keys_on_tasks_that_cannot_take_them(t: &TestStore) {
    let bad = [
        NewTask::new(TaskKind::Activity, "q").unique(UniqueKey::new("k")),
        job(1).concurrency("k", 0),
        job(1).unique(UniqueKey::new("")),
    ];
    for task in bad {
        assert!(
            matches!(
                t.store.enqueue(vec![task.clone()]).await,
                Err(Error::Invalid(_))
            ),
            "{task:?}"
        );
    }
    assert!(
        t.store
            .list_jobs(JobFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
}
