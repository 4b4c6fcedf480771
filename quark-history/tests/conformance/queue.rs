//! Claiming, leases, fencing, settling and the atomic commit.

use std::time::Duration;

use quark_history::Clock;
use quark_history::testing::TestStore;
use quark_history::{
    AffinityMove, ClaimRequest, Commit, Error, Expected, FailAction, HistoryEvent, HistoryRange,
    NewTask, Payload, QueueStats, TaskKind, WorkerInfo,
};

use crate::support::{claim_all, conformance, start};

conformance!(
    it_claims_in_batches_by_priority_then_age_under_a_lease,
    it_redelivers_after_lease_expiry_and_fences_the_old_holder,
    it_extends_a_lease_only_for_its_holder,
    it_retries_later_dead_letters_and_redrives,
    it_never_leases_two_orchestration_tasks_of_one_instance,
    it_prefers_the_affinity_worker_until_the_delay_or_its_death,
    it_commits_nothing_of_a_turn_whose_append_conflicts,
    it_commits_nothing_of_a_turn_whose_lease_was_lost,
    it_enqueues_a_task_already_leased_to_the_worker_that_will_run_it,
    it_drops_the_outstanding_work_of_an_instance_that_ends,
    it_makes_the_worker_that_completed_a_turn_the_instance_s_affinity,
);

fn activity(queue: &str, n: u8) -> NewTask {
    NewTask::new(TaskKind::Activity, queue).payload(vec![n])
}

async fn it_claims_in_batches_by_priority_then_age_under_a_lease(t: &TestStore) {
    let ids = t
        .store
        .enqueue(vec![
            activity("q", 1),
            activity("q", 2).priority(5),
            activity("q", 3),
            activity("other", 4),
            activity("q", 5).visible_at(t.clock.now() + Duration::from_secs(60)),
            NewTask::new(TaskKind::Job, "q").payload(vec![6]),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 6);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids come back in input order: {ids:?}"
    );

    let only_jobs = t
        .store
        .claim(ClaimRequest::new("w", ["q"]).kinds([TaskKind::Job]))
        .await
        .unwrap();
    assert_eq!(
        only_jobs.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [6]
    );

    let batch = t
        .store
        .claim(ClaimRequest::new("w", ["q"]).limit(2))
        .await
        .unwrap();
    assert_eq!(
        batch.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [2, 1],
        "priority first, then age"
    );
    assert!(
        batch
            .iter()
            .all(|c| c.lease_expires_at == t.clock.now() + Duration::from_secs(30))
    );
    let rest = claim_all(&*t.store, "w", "q").await;
    assert_eq!(
        rest.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [3],
        "the delayed task is not visible"
    );
    assert_eq!(
        t.store.queue_stats("q").await.unwrap(),
        QueueStats {
            pending: 1,
            leased: 4,
            dead: 0,
            ..QueueStats::default()
        }
    );

    t.clock.advance(Duration::from_secs(61));
    // The leases have expired too, so everything on `q` comes back; the delayed task is among them.
    let later = claim_all(&*t.store, "w2", "q").await;
    assert!(later.iter().any(|c| c.payload[0] == 5));
    for task in later {
        t.store
            .commit(Commit::new().complete(task.lease))
            .await
            .unwrap();
    }
    assert_eq!(
        t.store.queue_stats("q").await.unwrap(),
        QueueStats::default()
    );
}

async fn it_redelivers_after_lease_expiry_and_fences_the_old_holder(t: &TestStore) {
    t.store.enqueue(vec![activity("q", 1)]).await.unwrap();
    let lease = ClaimRequest::new("zombie", ["q"]).lease(Duration::from_secs(10));
    let first = t.store.claim(lease.clone()).await.unwrap().remove(0);
    assert_eq!(first.lease.attempt, 1);
    assert!(
        t.store
            .claim(ClaimRequest::new("other", ["q"]))
            .await
            .unwrap()
            .is_empty(),
        "held while the lease lives"
    );

    t.clock.advance(Duration::from_secs(10));
    let second = t
        .store
        .claim(ClaimRequest::new("rescuer", ["q"]))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.lease.task_id, first.lease.task_id);
    assert_eq!(second.lease.attempt, 2);

    // The zombie wakes up and tries to finish: refused, whatever it tries.
    for result in [
        t.store
            .commit(Commit::new().complete(first.lease.clone()))
            .await,
        t.store
            .commit(Commit::new().fail(
                first.lease.clone(),
                FailAction::Dead {
                    error: "late".into(),
                },
            ))
            .await,
    ] {
        match result {
            Err(Error::LeaseLost { task_id, attempt }) => {
                assert_eq!((task_id, attempt), (first.lease.task_id, 1))
            }
            other => panic!("expected LeaseLost, got {other:?}"),
        }
    }
    t.store
        .commit(Commit::new().complete(second.lease.clone()))
        .await
        .unwrap();
    assert!(
        matches!(
            t.store.commit(Commit::new().complete(second.lease)).await,
            Err(Error::LeaseLost { .. })
        ),
        "a task completes once"
    );
    assert_eq!(
        t.store.queue_stats("q").await.unwrap(),
        QueueStats::default()
    );
}

async fn it_extends_a_lease_only_for_its_holder(t: &TestStore) {
    t.store.enqueue(vec![activity("q", 1)]).await.unwrap();
    let task = t
        .store
        .claim(ClaimRequest::new("w", ["q"]).lease(Duration::from_secs(10)))
        .await
        .unwrap()
        .remove(0);
    t.clock.advance(Duration::from_secs(8));
    let until = t
        .store
        .extend_lease(&task.lease, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(until, t.clock.now() + Duration::from_secs(10));
    t.clock.advance(Duration::from_secs(8)); // 16 s after the claim: past the first lease, within the second
    assert!(
        t.store
            .claim(ClaimRequest::new("other", ["q"]))
            .await
            .unwrap()
            .is_empty()
    );

    let mut forged = task.lease.clone();
    forged.worker = "other".into();
    assert!(matches!(
        t.store.extend_lease(&forged, Duration::from_secs(10)).await,
        Err(Error::LeaseLost { .. })
    ));
    t.clock.advance(Duration::from_secs(3));
    let stolen = t
        .store
        .claim(ClaimRequest::new("other", ["q"]))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(stolen.lease.attempt, 2);
    assert!(matches!(
        t.store
            .extend_lease(&task.lease, Duration::from_secs(10))
            .await,
        Err(Error::LeaseLost { .. })
    ));
}

async fn it_retries_later_dead_letters_and_redrives(t: &TestStore) {
    t.store.enqueue(vec![activity("q", 1)]).await.unwrap();
    let task = claim_all(&*t.store, "w", "q").await.remove(0);
    let retry_at = t.clock.now() + Duration::from_secs(5);
    t.store
        .commit(Commit::new().fail(
            task.lease,
            FailAction::Retry {
                at: retry_at,
                error: Some("timeout".into()),
            },
        ))
        .await
        .unwrap();
    assert!(
        claim_all(&*t.store, "w", "q").await.is_empty(),
        "not before the backoff"
    );
    t.clock.advance(Duration::from_secs(5));
    let again = claim_all(&*t.store, "w", "q").await.remove(0);
    assert_eq!(again.lease.attempt, 2);

    t.store
        .commit(Commit::new().fail(
            again.lease,
            FailAction::Dead {
                error: "gave up after 2 attempts".into(),
            },
        ))
        .await
        .unwrap();
    assert!(claim_all(&*t.store, "w", "q").await.is_empty());
    let dead = t.store.list_dead(Some("q"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].error, "gave up after 2 attempts");
    assert_eq!(dead[0].payload, vec![1]);
    assert_eq!(t.store.queue_stats("q").await.unwrap().dead, 1);

    t.store.redrive(dead[0].task_id).await.unwrap();
    assert!(t.store.list_dead(None, 10).await.unwrap().is_empty());
    let revived = claim_all(&*t.store, "w", "q").await.remove(0);
    assert_eq!(revived.lease.task_id, dead[0].task_id);
    assert_eq!(revived.lease.attempt, 1, "attempts start over");
    assert!(matches!(
        t.store.redrive(dead[0].task_id).await,
        Err(Error::TaskNotFound { .. })
    ));
}

async fn it_never_leases_two_orchestration_tasks_of_one_instance(t: &TestStore) {
    start(t, "o").await;
    let turn = claim_all(&*t.store, "w1", "default").await.remove(0);
    // An activity result arrives while the turn runs: it enqueues another orchestration task.
    let result = HistoryEvent::SignalReceived {
        name: "s".into(),
        payload: Payload::unit(),
    };
    let committed = t
        .store
        .commit(
            Commit::new()
                .append("o", Expected::Any, [result])
                .enqueue(NewTask::orchestration("default", "o")),
        )
        .await
        .unwrap();
    assert_eq!(
        committed.task_ids,
        vec![turn.lease.task_id],
        "merged into the instance's one task"
    );
    assert!(
        claim_all(&*t.store, "w2", "default").await.is_empty(),
        "not while the turn holds the instance"
    );

    // The turn was decided on the old history: its append conflicts, and nothing of it lands.
    let stale = t
        .store
        .commit(
            Commit::new()
                .append(
                    "o",
                    Expected::Seq(2),
                    [HistoryEvent::WorkflowCompleted {
                        output: Payload::unit(),
                    }],
                )
                .complete(turn.lease.clone()),
        )
        .await;
    assert!(
        matches!(
            stale,
            Err(Error::Conflict {
                expected: 2,
                actual: 3,
                ..
            })
        ),
        "{stale:?}"
    );
    // Redone on the new history, the turn completes, and the instance runs again at once.
    t.store
        .commit(
            Commit::new()
                .append("o", Expected::Seq(3), [])
                .complete(turn.lease),
        )
        .await
        .unwrap();
    let next = claim_all(&*t.store, "w2", "default").await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].instance_id.as_deref(), Some("o"));
    assert_eq!(next[0].lease.attempt, 2);

    // Two pending enqueues for an idle instance also merge.
    t.store
        .commit(Commit::new().complete(next[0].lease.clone()))
        .await
        .unwrap();
    t.store
        .enqueue(vec![
            NewTask::orchestration("default", "o"),
            NewTask::orchestration("default", "o"),
        ])
        .await
        .unwrap();
    assert_eq!(claim_all(&*t.store, "w3", "default").await.len(), 1);
}

async fn it_prefers_the_affinity_worker_until_the_delay_or_its_death(t: &TestStore) {
    for w in ["a", "b"] {
        t.store
            .heartbeat_worker(WorkerInfo {
                id: w.into(),
                queues: vec!["q".into()],
                labels: "{}".into(),
                heartbeat_at: t.clock.now(),
                load: Default::default(),
            })
            .await
            .unwrap();
    }
    assert_eq!(t.store.list_workers().await.unwrap().len(), 2);
    t.store
        .enqueue(vec![
            activity("q", 1).affinity("a"),
            activity("q", 2).affinity("a"),
        ])
        .await
        .unwrap();
    // a claims every kind, b activities only: both ways of claiming honour affinity.
    let request = |w: &str| {
        let request = ClaimRequest::new(w, ["q"])
            .limit(1)
            .affinity_delay(Duration::from_secs(2));
        match w {
            "a" => request,
            _ => request.kinds([TaskKind::Activity]),
        }
    };

    assert!(
        t.store.claim(request("b")).await.unwrap().is_empty(),
        "b waits for a"
    );
    let by_a = t.store.claim(request("a")).await.unwrap();
    assert_eq!(by_a.len(), 1, "a takes its own at once");
    t.clock.advance(Duration::from_secs(2));
    assert_eq!(
        t.store.claim(request("b")).await.unwrap().len(),
        1,
        "after the delay, anyone may"
    );

    // A worker that deregistered frees its affinity at once.
    t.store
        .enqueue(vec![activity("q", 3).affinity("a")])
        .await
        .unwrap();
    assert!(t.store.claim(request("b")).await.unwrap().is_empty());
    t.store.deregister_worker("a").await.unwrap();
    assert_eq!(t.store.claim(request("b")).await.unwrap().len(), 1);

    // So does one whose heartbeat is older than the liveness window.
    t.store
        .heartbeat_worker(WorkerInfo {
            id: "c".into(),
            queues: vec!["q".into()],
            labels: "{}".into(),
            heartbeat_at: t.clock.now(),
            load: Default::default(),
        })
        .await
        .unwrap();
    t.store
        .enqueue(vec![activity("q", 4).affinity("c")])
        .await
        .unwrap();
    assert!(t.store.claim(request("b")).await.unwrap().is_empty());
    t.clock.advance(Duration::from_secs(1)); // within the 2 s delay, but...
    let mut stale = request("b");
    stale.worker_ttl = Duration::from_millis(500); // ...c's heartbeat is too old for this window
    assert_eq!(t.store.claim(stale).await.unwrap().len(), 1);
}

async fn it_commits_nothing_of_a_turn_whose_append_conflicts(t: &TestStore) {
    start(t, "c").await;
    start(t, "d").await;
    let tasks = claim_all(&*t.store, "w", "default").await;
    let turn = tasks
        .iter()
        .find(|c| c.instance_id.as_deref() == Some("c"))
        .unwrap()
        .clone();
    let result = t
        .store
        .commit(
            Commit::new()
                .append(
                    "d",
                    Expected::Any,
                    [HistoryEvent::SignalReceived {
                        name: "x".into(),
                        payload: Payload::unit(),
                    }],
                )
                .append(
                    "c",
                    Expected::Seq(7),
                    [HistoryEvent::TimerFired { command: 1 }],
                )
                .enqueue(activity("side", 1))
                .complete(turn.lease.clone()),
        )
        .await;
    assert!(matches!(result, Err(Error::Conflict { .. })), "{result:?}");
    assert_eq!(
        t.store
            .read_history("d", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        1,
        "d's append rolled back"
    );
    assert!(
        claim_all(&*t.store, "w", "side").await.is_empty(),
        "no task enqueued"
    );
    // The turn's task is still held by its lease and can be completed properly.
    t.store
        .commit(Commit::new().complete(turn.lease))
        .await
        .unwrap();
}

async fn it_commits_nothing_of_a_turn_whose_lease_was_lost(t: &TestStore) {
    start(t, "l").await;
    let turn = t
        .store
        .claim(ClaimRequest::new("w", ["default"]).lease(Duration::from_secs(1)))
        .await
        .unwrap()
        .remove(0);
    t.clock.advance(Duration::from_secs(2));
    let rescued = claim_all(&*t.store, "w2", "default").await.remove(0);
    let result = t
        .store
        .commit(
            Commit::new()
                .append(
                    "l",
                    Expected::Seq(2),
                    [HistoryEvent::WorkflowCompleted {
                        output: Payload::unit(),
                    }],
                )
                .enqueue(activity("side", 1))
                .complete(turn.lease),
        )
        .await;
    assert!(matches!(result, Err(Error::LeaseLost { .. })), "{result:?}");
    assert_eq!(
        t.store
            .read_history("l", HistoryRange::All)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(claim_all(&*t.store, "w", "side").await.is_empty());
    t.store
        .commit(
            Commit::new()
                .append(
                    "l",
                    Expected::Seq(2),
                    [HistoryEvent::WorkflowCompleted {
                        output: Payload::unit(),
                    }],
                )
                .complete(rescued.lease),
        )
        .await
        .unwrap();
}

async fn it_enqueues_a_task_already_leased_to_the_worker_that_will_run_it(t: &TestStore) {
    start(t, "warm").await;
    let mut own = activity("q", 1);
    own.lease_to = Some(("me".into(), Duration::from_secs(10)));
    let at = t.clock.now() - Duration::from_secs(1);
    let mut commit = Commit::new().enqueue(own).enqueue(activity("q", 2));
    commit = commit.append(
        "warm",
        Expected::Seq(2),
        [HistoryEvent::TimerFired { command: 1 }],
    );
    commit.appends[0].at = Some(at);
    let ids = t.store.commit(commit).await.unwrap().task_ids;
    let history = t
        .store
        .read_history("warm", HistoryRange::From(2))
        .await
        .unwrap();
    assert_eq!(
        history[0].recorded_at, at,
        "recorded at the time the caller gave"
    );

    let others = claim_all(&*t.store, "other", "q").await;
    assert_eq!(
        others.iter().map(|c| c.payload[0]).collect::<Vec<_>>(),
        [2],
        "the leased task is not up for grabs"
    );
    assert_eq!(t.store.queue_stats("q").await.unwrap().leased, 2);
    let lease = quark_history::Lease {
        task_id: ids[0],
        attempt: 1,
        worker: "me".into(),
    };
    t.store
        .extend_lease(&lease, Duration::from_secs(10))
        .await
        .unwrap();
    // If "me" dies, the task comes back like any other whose lease expired.
    t.clock.advance(Duration::from_secs(11));
    let rescued = claim_all(&*t.store, "other", "q").await;
    let rescued: Vec<_> = rescued
        .into_iter()
        .filter(|c| c.lease.task_id == ids[0])
        .collect();
    assert_eq!(rescued.len(), 1);
    assert_eq!(rescued[0].lease.attempt, 2);
    assert!(matches!(
        t.store.commit(Commit::new().complete(lease)).await,
        Err(Error::LeaseLost { .. })
    ));
}

async fn it_drops_the_outstanding_work_of_an_instance_that_ends(t: &TestStore) {
    // Once through `commit`, once through `commit_many` (the batch path on PostgreSQL).
    for batched in [false, true] {
        let (ending, other) = if batched {
            ("b-ends", "b-goes-on")
        } else {
            ("ends", "goes-on")
        };
        start(t, ending).await;
        start(t, other).await;
        let (q, other_q) = (format!("{ending}-work"), format!("{other}-work"));
        let act = |queue: &str, instance: &str, n: u8| activity(queue, n).instance(instance);
        let in_a_year = t.clock.now() + Duration::from_secs(365 * 24 * 3600);
        let timer = |queue: &str, instance: &str| {
            NewTask::new(TaskKind::Timer, queue)
                .instance(instance)
                .visible_at(in_a_year)
        };

        // The ending instance's work: an activity whose worker died (its lease expired), one
        // waiting for a retry, one running, one pending and a timer due in a year.
        t.store
            .enqueue(vec![
                act(&q, ending, 2),
                act(&q, ending, 3),
                act(&q, ending, 7),
            ])
            .await
            .unwrap();
        let claimed = t
            .store
            .claim(ClaimRequest::new("w", [q.as_str()]).lease(Duration::from_secs(60)))
            .await
            .unwrap();
        // `last` is the activity whose result ends the instance, completed by the ending commit.
        let [failing, running, last]: [_; 3] = claimed.try_into().unwrap();
        t.store.enqueue(vec![act(&q, ending, 1)]).await.unwrap();
        let died = t
            .store
            .claim(ClaimRequest::new("gone", [q.as_str()]).lease(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(died.len(), 1);
        t.clock.advance(Duration::from_secs(2));
        t.store
            .commit(Commit::new().fail(
                failing.lease,
                FailAction::Retry {
                    at: t.clock.now() + Duration::from_secs(3600),
                    error: Some("flaky".into()),
                },
            ))
            .await
            .unwrap();
        t.store
            .enqueue(vec![act(&q, ending, 4), timer(&q, ending)])
            .await
            .unwrap();
        // The other instance's work, which must stay.
        t.store
            .enqueue(vec![act(&other_q, other, 5), timer(&other_q, other)])
            .await
            .unwrap();
        let before = t.store.queue_stats(&q).await.unwrap();
        assert_eq!(before.pending + before.leased, 6, "{before:?}");
        let turns_before = t.store.queue_stats("default").await.unwrap();

        // The commit that ends it completes one of its activities and (batched) schedules another:
        // nobody will read that one's result either.
        let mut end = Commit::new()
            .append(
                ending,
                Expected::Any,
                [HistoryEvent::WorkflowTerminated {
                    reason: "enough".into(),
                }],
            )
            .complete(last.lease);
        if batched {
            end = end.enqueue(act(&q, ending, 6));
        }
        let unrelated = Commit::new().append(
            other,
            Expected::Any,
            [HistoryEvent::SignalReceived {
                name: "ping".into(),
                payload: Payload::json(&1).unwrap(),
            }],
        );
        if batched {
            let results = t.store.commit_many(vec![end, unrelated]).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        } else {
            t.store.commit(end).await.unwrap();
            t.store.commit(unrelated).await.unwrap();
        }

        assert_eq!(
            t.store.queue_stats(&q).await.unwrap(),
            QueueStats {
                leased: 1,
                ..QueueStats::default()
            },
            "only the running activity is left"
        );
        assert!(claim_all(&*t.store, "w2", &q).await.is_empty());
        assert!(matches!(
            t.store
                .extend_lease(&running.lease, Duration::from_secs(60))
                .await,
            Err(Error::CancelRequested { .. })
        ));
        // However its attempt ends, it is not retried.
        t.store
            .commit(Commit::new().fail(
                running.lease,
                FailAction::Retry {
                    at: t.clock.now(),
                    error: Some("stopped".into()),
                },
            ))
            .await
            .unwrap();
        assert_eq!(
            t.store.queue_stats(&q).await.unwrap(),
            QueueStats::default()
        );
        assert_eq!(
            t.store.queue_stats(&other_q).await.unwrap(),
            QueueStats {
                pending: 2,
                ..QueueStats::default()
            },
            "the other instance keeps its work"
        );
        assert_eq!(
            t.store.queue_stats("default").await.unwrap(),
            turns_before,
            "orchestration tasks are not touched"
        );
    }

    // An instance with nothing outstanding whose ending commit schedules an activity.
    start(t, "lonely").await;
    t.store
        .commit(
            Commit::new()
                .append(
                    "lonely",
                    Expected::Any,
                    [HistoryEvent::WorkflowTerminated {
                        reason: "enough".into(),
                    }],
                )
                .enqueue(activity("lonely-work", 1).instance("lonely")),
        )
        .await
        .unwrap();
    assert_eq!(
        t.store.queue_stats("lonely-work").await.unwrap(),
        QueueStats::default()
    );
}

async fn it_makes_the_worker_that_completed_a_turn_the_instance_s_affinity(t: &TestStore) {
    start(t, "sticky").await;
    let affinity = async || {
        t.store
            .get_instance("sticky")
            .await
            .unwrap()
            .unwrap()
            .affinity
    };
    assert_eq!(affinity().await, None);
    let claim = async |worker: &str| {
        t.store
            .claim(ClaimRequest::new(worker, ["default"]).affinity_delay(Duration::ZERO))
            .await
            .unwrap()
            .remove(0)
    };
    // A turn that appends, then one that appends nothing, each completed alone.
    let first = claim("w1").await;
    t.store
        .commit(
            Commit::new()
                .append(
                    "sticky",
                    Expected::Seq(2),
                    [HistoryEvent::SignalReceived {
                        name: "go".into(),
                        payload: Payload::json(&1).unwrap(),
                    }],
                )
                .complete(first.lease),
        )
        .await
        .unwrap();
    assert_eq!(affinity().await.as_deref(), Some("w1"));
    t.store
        .enqueue(vec![NewTask::orchestration("default", "sticky")])
        .await
        .unwrap();
    let second = claim("w2").await;
    t.store
        .commit(Commit::new().complete(second.lease.clone()))
        .await
        .unwrap();
    assert_eq!(
        affinity().await.as_deref(),
        Some("w2"),
        "the last turn's worker"
    );
    // w1 kept a warm run of it: it has moved away from w1 (not from w2). An instance without
    // an affinity has moved away from everyone; one that does not exist is not listed.
    start(t, "loose").await;
    let kept: Vec<String> = ["sticky", "loose", "ghost"].map(String::from).to_vec();
    assert_eq!(
        t.store.moved_away("w1", &kept).await.unwrap(),
        ["sticky", "loose"]
    );
    assert_eq!(t.store.moved_away("w2", &kept).await.unwrap(), ["loose"]);
    assert!(t.store.moved_away("w2", &[]).await.unwrap().is_empty());
    // A move is a compare-and-set on the affinity, and takes the pending tasks along.
    assert_eq!(
        t.store
            .move_affinities(&[AffinityMove::new("sticky", "w1", "w3")], None)
            .await
            .unwrap(),
        [false]
    );
    t.store
        .enqueue(vec![NewTask::orchestration("default", "sticky")])
        .await
        .unwrap();
    assert!(
        t.store
            .move_affinities(&[AffinityMove::new("sticky", "w2", "w3")], None)
            .await
            .unwrap()
            == [true]
    );
    assert_eq!(affinity().await.as_deref(), Some("w3"));
    // w3 is a live worker: its affinity holds.
    t.store
        .heartbeat_worker(WorkerInfo {
            id: "w3".into(),
            queues: vec!["default".into()],
            labels: "{}".into(),
            heartbeat_at: t.clock.now(),
            load: Default::default(),
        })
        .await
        .unwrap();
    let by = |w: &str| ClaimRequest::new(w, ["default"]).affinity_delay(Duration::from_secs(60));
    let of = |tasks: Vec<quark_history::ClaimedTask>| -> Vec<Option<String>> {
        tasks.into_iter().map(|c| c.instance_id).collect()
    };
    // ("loose" has no affinity: anyone takes its start.)
    assert_eq!(
        of(t.store.claim(by("w2")).await.unwrap()),
        [Some("loose".to_string())],
        "the pending task moved with it"
    );
    assert_eq!(
        of(t.store.claim(by("w3")).await.unwrap()),
        [Some("sticky".to_string())]
    );
    assert!(
        matches!(
            t.store.commit(Commit::new().complete(second.lease)).await,
            Err(Error::LeaseLost { .. })
        ),
        "a task completes once"
    );
}
