//! Queries and updates on the worker runtime, on both backends: updates interleaved with the
//! signals of a warm instance's turns, updates sent at once from several callers (each applied
//! once, in some order), and the queue left empty.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{HistoryEvent, HistoryRange, QueueStats};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, ClientError, OrchestrationContext, OrchestrationError,
    Query, Registry, Signal, Update, activity, orchestration,
};

quark_history::backend_tests!(
    it_interleaves_updates_with_the_turns_of_a_warm_instance,
    it_applies_concurrent_updates_each_once,
);

const VALUE: Query<(), u64> = Query::new("value");
/// Adds twice its argument (doubled by an activity); answers the new value.
const ADD_TWICE: Update<u64, u64> = Update::new("add_twice");
const TICK: Signal<u64> = Signal::new("tick");

#[activity]
async fn double(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(2 * n)
}

/// Adds each tick's value until a tick of 0; updates add through an activity meanwhile.
#[orchestration]
async fn counter(ctx: OrchestrationContext, start: u64) -> Result<u64, OrchestrationError> {
    let value = std::rc::Rc::new(std::cell::Cell::new(start));
    let v = value.clone();
    ctx.on_query(VALUE, move |()| v.get());
    let v = value.clone();
    ctx.on_update(ADD_TWICE, move |ctx, n| {
        let v = v.clone();
        async move {
            let doubled = ctx.call(double, &n).await?;
            v.set(v.get() + doubled);
            Ok(v.get())
        }
    })
    .validate(|n| match n {
        0 => Err("adding nothing is not an update".into()),
        _ => Ok(()),
    });
    loop {
        match ctx.wait_for(TICK).await? {
            0 => return Ok(value.get()),
            n => value.set(value.get() + n),
        }
    }
}

fn worker(t: &TestStore) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        .lease(Duration::from_secs(3600))
        .workflows(Registry::new().register(counter).register(double))
        .build()
        .unwrap()
}

/// `f` within 20 s, or the test fails.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("no answer within 20 s")
}

async fn it_interleaves_updates_with_the_turns_of_a_warm_instance(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    counter::start(&client, "counter-1", &10).await.unwrap();
    let mut expected = 10;
    for n in 1..=4u64 {
        client.send("counter-1", TICK, &n).await.unwrap();
        expected += n;
        // A request waits for no turn: ask until the tick's turn is in.
        within(async { while client.query("counter-1", VALUE, &()).await.unwrap() != expected {} })
            .await;
        let after = within(client.update("counter-1", ADD_TWICE, &n))
            .await
            .unwrap();
        expected += 2 * n;
        assert_eq!(after, expected);
    }
    match within(client.update("counter-1", ADD_TWICE, &0)).await {
        Err(ClientError::Rejected { reason, .. }) => {
            assert_eq!(reason, "adding nothing is not an update")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    client.send("counter-1", TICK, &0).await.unwrap();
    assert_eq!(
        within(client.result::<u64>("counter-1")).await.unwrap(),
        expected
    );

    let history = t
        .store
        .read_history("counter-1", HistoryRange::All)
        .await
        .unwrap();
    let accepted = history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::UpdateAccepted { .. }))
        .count();
    assert_eq!(accepted, 4, "the rejected update left no trace");
    assert!(t.store.verify("counter-1").await.unwrap().is_intact());
    assert_eq!(
        t.store.queue_stats("default").await.unwrap(),
        QueueStats::default(),
        "no request task left behind"
    );
    running.shutdown().await;
}

async fn it_applies_concurrent_updates_each_once(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    counter::start(&client, "counter-2", &0).await.unwrap();
    let updates = (1..=6u64).map(|n| {
        let client = client.clone();
        tokio::spawn(async move { client.update("counter-2", ADD_TWICE, &n).await })
    });
    let updates: Vec<_> = updates.collect();
    // An update whose commit lost to others too often is retried after a backoff, in the
    // store's time: move it on until every update is answered.
    t.advance_until(
        Duration::from_millis(500),
        "every update answered",
        async || updates.iter().all(|u| u.is_finished()),
    )
    .await;
    let mut answers = Vec::new();
    for u in updates {
        answers.push(u.await.unwrap().unwrap());
    }
    answers.sort_unstable();
    // Each update saw the ones before it: the answers are the running sums of some order.
    let total: u64 = (1..=6).map(|n| 2 * n).sum();
    assert_eq!(answers.last(), Some(&total));
    assert_eq!(
        answers
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        6,
        "{answers:?}"
    );
    assert_eq!(
        within(client.query("counter-2", VALUE, &())).await.unwrap(),
        total
    );
    client.send("counter-2", TICK, &0).await.unwrap();
    assert_eq!(
        within(client.result::<u64>("counter-2")).await.unwrap(),
        total
    );
    running.shutdown().await;
}
