//! Placement's inputs, on both backends: a worker's commits record who talks to whom (a parent
//! and its child, an instance and the peer it signals), and its heartbeats publish the heaviest
//! pairs through the database.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_worker::Worker;
use quark_worker::placement::sketch::{SketchEdge, decode};
use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Registry, orchestration};

quark_history::backend_tests!(it_publishes_who_talks_to_whom_with_its_heartbeats,);

#[orchestration]
async fn callee(_ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    Ok(n * 2)
}

/// Calls a child twice, then signals a peer.
#[orchestration]
async fn caller(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let a: u64 = ctx
        .call_child_with_id(callee, &format!("callee-{n}"), &n)
        .await?;
    let b: u64 = ctx
        .call_child_with_id(callee, &format!("callee-{n}-again"), &n)
        .await?;
    Ok(a + b)
}

async fn published(t: &TestStore) -> Vec<SketchEdge> {
    t.store
        .sketches()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|p| decode(&p.sketch).unwrap())
        .collect()
}

async fn it_publishes_who_talks_to_whom_with_its_heartbeats(t: &TestStore) {
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .id(format!("talker-{}", uuid::Uuid::now_v7()))
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(50))
        .lease(Duration::from_secs(3600))
        .workflows(Registry::new().register(caller).register(callee))
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    caller::start(&client, "caller-1", 3).await.unwrap();
    let result: u64 = tokio::time::timeout(Duration::from_secs(60), client.result("caller-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, 12);
    // A heartbeat may publish between the second child's start and its result: wait for one
    // after both results.
    let both_ways = |edges: &[SketchEdge]| {
        ["callee-3", "callee-3-again"].iter().all(|child| {
            edges
                .iter()
                .any(|e| (e.a == *child || e.b == *child) && e.messages > 1.9)
        })
    };
    eventually("the sketch is published", async || {
        both_ways(&published(t).await)
    })
    .await;
    let edges = published(t).await;
    let edge = |a: &str, b: &str| {
        edges
            .iter()
            .find(|e| (e.a == a && e.b == b) || (e.a == b && e.b == a))
            .unwrap_or_else(|| panic!("no edge {a}-{b} in {edges:?}"))
    };
    // The parent starts each child (one message), and each child's result reaches the parent
    // (another): two messages each way per child, decayed by a few milliseconds at most.
    for child in ["callee-3", "callee-3-again"] {
        let e = edge("caller-1", child);
        assert!(e.messages > 1.9 && e.messages <= 2.0, "{e:?}");
        assert!(e.bytes > 0.0, "{e:?}");
    }
    assert!(
        edges.iter().all(|e| e.a != e.b),
        "an instance does not talk to itself"
    );
    running.shutdown().await;
}
