//! `commit_many`: many commits, each all or nothing, with the outcome of committing them in order.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    Clock, Commit, Error, Expected, FailAction, HistoryEvent, HistoryRange, InstanceStatus,
    NewTask, Payload, QueueStats, TaskKind,
};

use crate::support::{claim_all, conformance, start};

conformance!(
    it_commits_a_batch_as_if_one_commit_after_another,
    it_cancels_the_activity_an_earlier_commit_of_the_batch_orphaned,
);

fn signal(n: u32) -> HistoryEvent {
    HistoryEvent::SignalReceived {
        name: format!("s{n}"),
        payload: Payload::json(&n).unwrap(),
    }
}

async fn it_commits_a_batch_as_if_one_commit_after_another(t: &TestStore) {
    for id in ["a", "b", "c", "d"] {
        start(t, id).await;
    }
    t.store
        .enqueue(
            (1..=3)
                .map(|n| NewTask::new(TaskKind::Activity, "acts").payload(vec![n]))
                .collect(),
        )
        .await
        .unwrap();
    let turns = claim_all(&*t.store, "w", "default").await;
    let turn = |id: &str| {
        turns
            .iter()
            .find(|c| c.instance_id.as_deref() == Some(id))
            .unwrap()
            .lease
            .clone()
    };
    let acts = claim_all(&*t.store, "w", "acts").await;
    let mut stale = acts[2].lease.clone();
    stale.attempt = 9;
    // An activity result for `b` while its turn runs: the turn must be released to run again.
    t.store
        .commit(
            Commit::new()
                .append("b", Expected::Any, [signal(0)])
                .enqueue(NewTask::orchestration("default", "b")),
        )
        .await
        .unwrap();

    let later = t.clock.now() + Duration::from_secs(60);
    let results = t
        .store
        .commit_many(vec![
            // 0: a's turn, fine.
            Commit::new()
                .append("a", Expected::Seq(2), [signal(1), signal(2)])
                .complete(turn("a")),
            // 1: continues 0 on the same instance: valid only after 0.
            Commit::new()
                .append("a", Expected::Seq(4), [signal(3)])
                .enqueue(NewTask::new(TaskKind::Job, "jobs")),
            // 2: b's turn decided on a stale history: conflicts, and writes nothing.
            Commit::new()
                .append("b", Expected::Seq(2), [signal(4)])
                .enqueue(NewTask::new(TaskKind::Job, "jobs"))
                .complete(turn("b")),
            // 3: c completes...
            Commit::new()
                .append(
                    "c",
                    Expected::Any,
                    [HistoryEvent::WorkflowCompleted {
                        output: Payload::json(&"ok").unwrap(),
                    }],
                )
                .complete(turn("c")),
            // 4: ...so a signal to c after it in the batch is refused.
            Commit::new().append("c", Expected::Any, [signal(5)]),
            // 5: a stale lease.
            Commit::new().complete(stale),
            // 6-7: an activity retried later and one dead-lettered.
            Commit::new().fail(
                acts[0].lease.clone(),
                FailAction::Retry {
                    at: later,
                    error: Some("flaky".into()),
                },
            ),
            Commit::new().fail(
                acts[1].lease.clone(),
                FailAction::Dead {
                    error: "gave up".into(),
                },
            ),
            // 8: an unknown instance.
            Commit::new().append("nobody", Expected::Any, [signal(6)]),
            // 9: b again, with the right sequence number: completes the turn, which runs again.
            Commit::new()
                .append("b", Expected::Seq(3), [signal(7)])
                .complete(turn("b")),
        ])
        .await;
    let summary: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(c) => format!("ok {:?} {}", c.appended, c.task_ids.len()),
            Err(Error::Conflict { .. }) => "conflict".into(),
            Err(Error::InstanceClosed { .. }) => "closed".into(),
            Err(Error::LeaseLost { .. }) => "lease lost".into(),
            Err(Error::InstanceNotFound { .. }) => "not found".into(),
            Err(e) => format!("error {e}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "ok [(2, 3)] 0",
            "ok [(4, 4)] 1",
            "conflict",
            "ok [(2, 2)] 0",
            "closed",
            "lease lost",
            "ok [] 0",
            "ok [] 0",
            "not found",
            "ok [(3, 3)] 0",
        ]
    );
    let kinds = |id: &'static str| async move {
        t.store
            .read_history(id, HistoryRange::All)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds("a").await.len(), 4);
    assert_eq!(kinds("b").await[1..], [signal(0), signal(7)]);
    assert_eq!(
        t.store.get_instance("c").await.unwrap().unwrap().status,
        InstanceStatus::Completed
    );
    assert_eq!(
        t.store
            .get_instance("c")
            .await
            .unwrap()
            .unwrap()
            .output
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "ok"
    );
    // The worker that ran a turn is its instance's affinity, whether or not the turn appended.
    let affinity =
        |id: &'static str| async move { t.store.get_instance(id).await.unwrap().unwrap().affinity };
    for id in ["a", "b", "c"] {
        assert_eq!(affinity(id).await.as_deref(), Some("w"), "{id}");
    }
    assert_eq!(
        affinity("d").await,
        None,
        "d's turn has not been settled yet"
    );
    let settled = t
        .store
        .commit_many(vec![
            Commit::new().complete(turn("d")),
            Commit::new().append("a", Expected::Any, [signal(8)]),
        ])
        .await;
    assert!(settled.iter().all(Result::is_ok), "{settled:?}");
    assert_eq!(affinity("d").await.as_deref(), Some("w"));
    for id in ["a", "b", "c", "d"] {
        assert!(t.store.verify(id).await.unwrap().is_intact(), "{id}");
    }
    assert_eq!(
        claim_all(&*t.store, "w", "jobs").await.len(),
        1,
        "only the live commit's job"
    );
    let again = claim_all(&*t.store, "w2", "default").await;
    assert_eq!(
        again
            .iter()
            .map(|c| c.instance_id.clone().unwrap())
            .collect::<Vec<_>>(),
        ["b"],
        "b runs again"
    );
    assert_eq!(
        t.store.list_dead(Some("acts"), 10).await.unwrap()[0].error,
        "gave up"
    );
    assert_eq!(
        t.store.queue_stats("acts").await.unwrap(),
        QueueStats {
            pending: 1,
            leased: 1,
            dead: 1,
            ..QueueStats::default()
        }
    );
}

/// An activity failed for good by a commit that comes after the one ending its instance is
/// cancelled (the ending asked it to stop), not dead-lettered; failed before, it is dead-lettered.
async fn it_cancels_the_activity_an_earlier_commit_of_the_batch_orphaned(t: &TestStore) {
    let terminate = |id: &str| {
        Commit::new().append(
            id,
            Expected::Any,
            [HistoryEvent::WorkflowTerminated {
                reason: "enough".into(),
            }],
        )
    };
    for (id, ended_first) in [("first", true), ("second", false)] {
        start(t, id).await;
        let queue = format!("{id}-work");
        t.store
            .enqueue(vec![NewTask::new(TaskKind::Activity, &queue).instance(id)])
            .await
            .unwrap();
        let task = claim_all(&*t.store, "w", &queue).await.remove(0);
        let fail = Commit::new().fail(
            task.lease,
            FailAction::Dead {
                error: "boom".into(),
            },
        );
        let batch = if ended_first {
            vec![terminate(id), fail]
        } else {
            vec![fail, terminate(id)]
        };
        let results = t.store.commit_many(batch).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(
            t.store.queue_stats(&queue).await.unwrap(),
            QueueStats {
                dead: u64::from(!ended_first),
                ..QueueStats::default()
            },
            "{id}"
        );
    }
}
