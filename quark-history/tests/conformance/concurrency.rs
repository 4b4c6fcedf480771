//! Racing claimers, appenders and readers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::{Raw, TestStore};
use quark_history::{
    ClaimRequest, Commit, Error, Expected, GlobalPosition, HistoryEvent, NewTask, Payload, Store,
    TaskKind,
};

use crate::support::{conformance, start};

conformance!(
    it_hands_each_task_to_exactly_one_of_many_concurrent_claimers,
    it_lets_exactly_one_of_many_racing_appenders_win,
    it_reads_every_event_once_while_writers_race_the_reader,
);

async fn it_hands_each_task_to_exactly_one_of_many_concurrent_claimers(t: &TestStore) {
    const TASKS: usize = 300;
    let tasks: Vec<NewTask> = (0..TASKS)
        .map(|_| NewTask::new(TaskKind::Activity, "q"))
        .collect();
    t.store.enqueue(tasks).await.unwrap();
    let mut claimers = Vec::new();
    for w in 0..6 {
        let store = Arc::clone(&t.store);
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim(ClaimRequest::new(format!("w{w}"), ["q"]).limit(7))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                for task in batch {
                    mine.push(task.lease.task_id);
                    store
                        .commit(Commit::new().complete(task.lease))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        TASKS,
        "every task was run once: no task twice, none lost"
    );
    assert_eq!(unique.len(), TASKS);
}

async fn it_lets_exactly_one_of_many_racing_appenders_win(t: &TestStore) {
    start(t, "race").await;
    for round in 0..10u64 {
        let expected = 2 + round;
        let mut racers = Vec::new();
        for r in 0..5u32 {
            let store = Arc::clone(&t.store);
            racers.push(tokio::spawn(async move {
                let event = HistoryEvent::SignalReceived {
                    name: format!("r{r}"),
                    payload: Payload::unit(),
                };
                store
                    .commit(Commit::new().append("race", Expected::Seq(expected), [event]))
                    .await
            }));
        }
        let mut wins = 0;
        for racer in racers {
            match racer.await.unwrap() {
                Ok(_) => wins += 1,
                Err(Error::Conflict { .. }) => {}
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
    }
    let history = t
        .store
        .read_history("race", quark_history::HistoryRange::All)
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    assert!(t.store.verify("race").await.unwrap().is_intact());
}

/// Reads the global stream until `expected` events were seen or the writers are done and a read
/// comes back empty. Returns each event's (instance, seq) in the order read.
async fn drain(
    store: &dyn Store,
    after: &mut GlobalPosition,
    seen: &mut Vec<(String, u64)>,
) -> usize {
    let page = store.read_all(*after, 64).await.unwrap();
    let n = page.len();
    for g in page {
        assert!(g.position > *after, "positions only move forward");
        *after = g.position;
        seen.push((g.event.instance_id, g.event.seq));
    }
    n
}

/// Reads until `count` events were seen, or 30 s passed. On PostgreSQL an event becomes readable
/// once every older transaction in the cluster has ended, and other tests may hold some open.
async fn drain_until(
    store: &dyn Store,
    after: &mut GlobalPosition,
    seen: &mut Vec<(String, u64)>,
    count: usize,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < count && tokio::time::Instant::now() < deadline {
        if drain(store, after, seen).await == 0 {
            tokio::task::yield_now().await;
        }
    }
    // One more read: anything beyond `count` would be a duplicate.
    drain(store, after, seen).await;
}

fn assert_each_once(seen: &[(String, u64)], expected: usize) {
    let unique: BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no event is read twice");
    assert_eq!(seen.len(), expected, "no event is skipped");
    // Per instance, events come in sequence order.
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (instance, seq) in seen {
        let prev = last.insert(instance, *seq).unwrap_or(0);
        assert_eq!(*seq, prev + 1, "{instance} out of order");
    }
}

async fn it_reads_every_event_once_while_writers_race_the_reader(t: &TestStore) {
    const WRITERS: usize = 6;
    const COMMITS: usize = 20;
    for w in 0..WRITERS {
        start(t, &format!("w{w}")).await;
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = Arc::clone(&t.store);
        writers.push(tokio::spawn(async move {
            for n in 0..COMMITS {
                let event = HistoryEvent::SignalReceived {
                    name: format!("{n}"),
                    payload: Payload::unit(),
                };
                store
                    .commit(Commit::new().append(format!("w{w}"), Expected::Any, [event]))
                    .await
                    .unwrap();
            }
        }));
    }
    let mut seen = Vec::new();
    let mut after = GlobalPosition::START;
    while writers.iter().any(|w| !w.is_finished()) {
        drain(&*t.store, &mut after, &mut seen).await;
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    drain_until(&*t.store, &mut after, &mut seen, WRITERS * (COMMITS + 1)).await;
    assert_each_once(&seen, WRITERS * (COMMITS + 1));
}

/// PostgreSQL only: writers that hold their transactions open while later writers commit. A reader
/// that resumed from the highest position it saw would skip their events for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_never_skips_an_event_that_commits_after_later_positions() {
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let Raw::Postgres(pool) = t.raw().clone() else {
        unreachable!()
    };
    const SLOW: usize = 3;
    const FAST: usize = 30;
    start(&t, "fast").await;
    let mut seen = Vec::new();
    let mut after = GlobalPosition::START;
    drain(&*t.store, &mut after, &mut seen).await;

    // Slow writers take their positions first and keep their transactions open.
    let mut held = Vec::new();
    for s in 0..SLOW {
        let mut tx = pool.begin().await.unwrap();
        let event = serde_json::to_vec(&HistoryEvent::SignalReceived {
            name: "slow".into(),
            payload: Payload::unit(),
        })
        .unwrap();
        sqlx::query(
            "INSERT INTO history (instance_id, seq, kind, schema_version, codec, payload, recorded_at, hash) \
             VALUES ($1, 1, 'SignalReceived', 1, 1, $2, 0, '\\x00')",
        )
        .bind(format!("slow{s}"))
        .bind(event)
        .execute(&mut *tx)
        .await
        .unwrap();
        held.push(tx);
    }
    // Fast writers commit events with larger positions while the reader keeps reading.
    for n in 0..FAST {
        let event = HistoryEvent::SignalReceived {
            name: format!("{n}"),
            payload: Payload::unit(),
        };
        t.store
            .commit(Commit::new().append("fast", Expected::Any, [event]))
            .await
            .unwrap();
        drain(&*t.store, &mut after, &mut seen).await;
    }
    for tx in held {
        tx.commit().await.unwrap();
    }
    drain_until(&*t.store, &mut after, &mut seen, 1 + FAST + SLOW).await;
    assert_each_once(&seen, 1 + FAST + SLOW);
    t.cleanup().await;
}
