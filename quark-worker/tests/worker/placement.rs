//! Placement, on both backends: a worker's commits record who talks to whom (a parent and its
//! child, an instance and the peer it signals), its heartbeats publish the heaviest pairs
//! through the database, the coordinator moves instances so that pairs that talk sit on one
//! worker, within balance, losing nothing, and a child's end or a signal continues a warm
//! receiver in the sender's commit.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::{TestStore, eventually};
use quark_worker::Worker;
use quark_worker::placement::coordinator::PlacementConfig;
use quark_worker::placement::partition::Options;
use quark_worker::placement::sketch::{SketchEdge, decode};
use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Registry, orchestration};

quark_history::backend_tests!(
    it_publishes_who_talks_to_whom_with_its_heartbeats,
    it_moves_pairs_that_talk_onto_one_worker_and_spreads_them_over_the_workers,
    it_refuses_to_start_with_topology_labels_it_does_not_know,
    it_continues_a_warm_parent_in_its_child_s_last_commit,
    it_continues_a_warm_receiver_of_a_signal_in_its_sender_s_commit,
);

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

/// Waits for signal `go`, then returns it plus `n`.
#[orchestration]
async fn guest(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let go: u64 = ctx.wait_for_signal("go").await?;
    Ok(n + go)
}

/// Starts its guest and waits for its result.
#[orchestration]
async fn host(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    ctx.call_child_with_id(guest, &format!("guest-{n}"), &n)
        .await
}

/// Waits for signal `ping`, then returns it.
#[orchestration]
async fn listener(ctx: OrchestrationContext, _in: ()) -> Result<u64, OrchestrationError> {
    ctx.wait_for_signal("ping").await
}

/// Waits for `go`, then signals `ping` with `n` to each instance named, and returns.
#[orchestration]
async fn pinger(
    ctx: OrchestrationContext,
    input: (u64, Vec<String>),
) -> Result<u64, OrchestrationError> {
    let (n, targets) = input;
    let _: () = ctx.wait_for_signal("go").await?;
    for target in &targets {
        ctx.signal(target, "ping", &n)?;
    }
    Ok(n)
}

async fn published(t: &TestStore) -> Vec<SketchEdge> {
    t.store
        .sketches()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|p| decode(&p.sketch).unwrap().edges)
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

/// A worker that coordinates placement every 50 ms, and moves for any gain (one message between
/// two instances is enough), and whose affinity holds for an hour: a task goes to another worker
/// only if the coordinator moves it.
fn placing_worker(t: &TestStore, id: &str) -> Worker {
    let options = Options {
        min_gain: 0.0,
        min_relative_gain: 0.0,
        ..PlacementConfig::default().options
    };
    Worker::builder()
        .store(Arc::clone(&t.store))
        .id(id)
        .poll_interval(Duration::from_millis(10))
        .heartbeat(Duration::from_millis(50))
        .lease(Duration::from_secs(3600))
        .affinity_delay(Duration::from_secs(3600))
        .without_memory_governor()
        .placement(PlacementConfig {
            every: Duration::from_millis(50),
            check_every: Duration::from_millis(50),
            options,
            ..PlacementConfig::default()
        })
        .workflows(Registry::new().register(host).register(guest))
        .build()
        .unwrap()
}

async fn it_moves_pairs_that_talk_onto_one_worker_and_spreads_them_over_the_workers(t: &TestStore) {
    const PAIRS: u64 = 6;
    let suffix = uuid::Uuid::now_v7();
    let (a_id, b_id) = (format!("a-{suffix}"), format!("b-{suffix}"));
    let a = placing_worker(t, &a_id).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    for n in 0..PAIRS {
        host::start(&client, &format!("host-{n}"), n).await.unwrap();
    }
    let everyone: Vec<String> = (0..PAIRS)
        .flat_map(|n| [format!("host-{n}"), format!("guest-{n}")])
        .collect();
    let placed = async || -> Vec<(String, String)> {
        t.store
            .affinities(&everyone)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.instance, p.worker))
            .collect()
    };
    // Every pair talked on `a` (the host started its guest), which is alone: it holds them all.
    eventually("both ends of every pair ran on a", async || {
        let now = placed().await;
        now.len() == everyone.len() && now.iter().all(|(_, w)| *w == a_id)
    })
    .await;
    assert_eq!(
        a.worker().metrics().placement_moves,
        0,
        "alone, nothing moves"
    );

    // A second worker: the coordinator spreads the pairs over both, keeping each pair together.
    let b = placing_worker(t, &b_id).start().await.unwrap();
    let worker_of = |now: &[(String, String)], id: &str| {
        now.iter()
            .find(|(i, _)| i == id)
            .map(|(_, w)| w.clone())
            .unwrap_or_default()
    };
    eventually("the pairs are spread, each on one worker", async || {
        let now = placed().await;
        let on_b = now.iter().filter(|(_, w)| *w == b_id).count();
        now.len() == everyone.len()
            && (PAIRS as usize - 1..=PAIRS as usize + 1).contains(&on_b)
            && (0..PAIRS).all(|n| {
                worker_of(&now, &format!("host-{n}")) == worker_of(&now, &format!("guest-{n}"))
            })
    })
    .await;
    // The moves are counted a moment after they commit.
    eventually("the moves are counted", async || {
        a.worker().metrics().placement_moves + b.worker().metrics().placement_moves >= PAIRS - 1
    })
    .await;

    // The moved pairs are served where they moved: each guest's turn runs on its worker, and
    // its host's with it; nothing is lost on the way.
    let now = placed().await;
    for n in 0..PAIRS {
        client
            .signal(&format!("guest-{n}"), "go", &100u64)
            .await
            .unwrap();
    }
    for n in 0..PAIRS {
        let result: u64 =
            tokio::time::timeout(Duration::from_secs(60), client.result(&format!("host-{n}")))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(result, n + 100);
    }
    // b serves what moved to it (claimed by b, or a host continued on b in its guest's last
    // commit). Not counted per instance: the coordinator keeps running, and the new traffic may
    // move a pair again before its turns run.
    eventually("b ran turns of the instances moved to it", async || {
        let m = b.worker().metrics();
        m.completed + m.local_deliveries >= 1
    })
    .await;
    assert!(now.iter().any(|(_, w)| *w == b_id));
    b.shutdown().await;
    a.shutdown().await;
}

async fn it_refuses_to_start_with_topology_labels_it_does_not_know(t: &TestStore) {
    let build = |key: &str, value: &str| {
        Worker::builder()
            .store(Arc::clone(&t.store))
            .label("region", "eu")
            .label(key, value)
            .workflows(Registry::new().register(guest))
            .build()
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let err = build("availability_zone", "eu-1a").unwrap_err();
    assert!(
        err.contains("`availability_zone`") && err.contains("use `zone`"),
        "{err}"
    );
    let err = build("rack", "r1").unwrap_err();
    assert!(err.contains("needs `zone`"), "{err}");
    let err = build("zone", "").unwrap_err();
    assert!(err.contains("`zone` is empty"), "{err}");
    assert_eq!(build("zone", "eu-1a"), Ok(()));
    assert_eq!(build("team", "payments"), Ok(()));
}

async fn it_continues_a_warm_parent_in_its_child_s_last_commit(t: &TestStore) {
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .id(format!("local-{}", uuid::Uuid::now_v7()))
        .poll_interval(Duration::from_millis(10))
        .lease(Duration::from_secs(3600))
        .workflows(
            Registry::new()
                .register(host)
                .register(guest)
                .register(caller)
                .register(callee),
        )
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    host::start(&client, "host-7", 7).await.unwrap();
    // Both turns settled: the host's run is warm and idle, the guest waits for its signal.
    eventually("the host started its guest, which waits", async || {
        running.worker().metrics().completed >= 2
    })
    .await;
    let before = running.worker().metrics();
    client.signal("guest-7", "go", &100u64).await.unwrap();
    let result: u64 = tokio::time::timeout(Duration::from_secs(60), client.result("host-7"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, 107);
    // The guest's last turn carried its warm host's next turn: one claim (the guest's), where
    // the queue would have taken two.
    let after = running.worker().metrics();
    assert_eq!(after.local_deliveries - before.local_deliveries, 1);
    assert_eq!(after.claimed - before.claimed, 1);
    // The host's history is what it would be through the queue.
    let kinds: Vec<&'static str> = t
        .store
        .read_history("host-7", quark_history::HistoryRange::All)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(
        kinds,
        [
            "WorkflowStarted",
            "ChildStarted",
            "ChildCompleted",
            "WorkflowCompleted"
        ]
    );

    // A parent turn that starts a child is not continued here: the child (created with its
    // first task before the commit that records its start) could end before that commit. Of
    // `caller`'s two children, only the second's end may be delivered here.
    let before = running.worker().metrics();
    caller::start(&client, "caller-9", 9).await.unwrap();
    let result: u64 = tokio::time::timeout(Duration::from_secs(60), client.result("caller-9"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result, 36);
    let after = running.worker().metrics();
    assert!(after.local_deliveries - before.local_deliveries <= 1);
    // Both children started and ended once. The second child's end may precede its start in
    // the history: the child, created with its first task just before the commit that records
    // its start, can run and end first (the parent keeps the early result until it asks).
    let mut kinds: Vec<&'static str> = t
        .store
        .read_history("caller-9", quark_history::HistoryRange::All)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event.kind())
        .collect();
    assert_eq!(kinds.first(), Some(&"WorkflowStarted"));
    assert_eq!(kinds.last(), Some(&"WorkflowCompleted"));
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "ChildCompleted",
            "ChildCompleted",
            "ChildStarted",
            "ChildStarted",
            "WorkflowCompleted",
            "WorkflowStarted"
        ]
    );
    running.shutdown().await;
}

async fn it_continues_a_warm_receiver_of_a_signal_in_its_sender_s_commit(t: &TestStore) {
    let worker = Worker::builder()
        .store(Arc::clone(&t.store))
        .id(format!("signals-{}", uuid::Uuid::now_v7()))
        .poll_interval(Duration::from_millis(10))
        .lease(Duration::from_secs(3600))
        .workflows(Registry::new().register(listener).register(pinger))
        .build()
        .unwrap();
    let running = worker.start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    listener::start(&client, "listener-1", ()).await.unwrap();
    let targets = vec!["listener-1".to_string(), "nobody-home".to_string()];
    pinger::start(&client, "pinger-1", (5, targets))
        .await
        .unwrap();
    // Both first turns settled: both runs are warm and idle.
    eventually("both instances wait", async || {
        running.worker().metrics().completed >= 2
    })
    .await;
    let before = running.worker().metrics();
    client.signal("pinger-1", "go", &()).await.unwrap();
    for id in ["pinger-1", "listener-1"] {
        let got: u64 = tokio::time::timeout(Duration::from_secs(60), client.result(id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 5, "{id}");
    }
    // The pinger's turn carried the listener's last turn: one claim (the pinger's), where the
    // queue would have taken two; the signal to an instance that does not exist was dropped.
    let after = eventually_metrics(&running, |m| m.signals_dropped >= 1).await;
    assert_eq!(after.local_deliveries - before.local_deliveries, 1);
    assert_eq!(after.claimed - before.claimed, 1);
    assert_eq!(after.signals_dropped - before.signals_dropped, 1);
    let kinds = |id: &'static str| {
        let store = Arc::clone(&t.store);
        async move {
            store
                .read_history(id, quark_history::HistoryRange::All)
                .await
                .unwrap()
                .iter()
                .map(|e| e.event.kind())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        kinds("pinger-1").await,
        [
            "WorkflowStarted",
            "SignalReceived",
            "SignalSent",
            "SignalSent",
            "WorkflowCompleted"
        ]
    );
    assert_eq!(
        kinds("listener-1").await,
        ["WorkflowStarted", "SignalReceived", "WorkflowCompleted"]
    );
    running.shutdown().await;
}

/// The worker's metrics once `ready` holds of them (counters are bumped just after the effect
/// they count).
async fn eventually_metrics(
    running: &quark_worker::RunningWorker,
    ready: impl Fn(&quark_worker::MetricsSnapshot) -> bool,
) -> quark_worker::MetricsSnapshot {
    eventually("the worker's counters caught up", async || {
        ready(&running.worker().metrics())
    })
    .await;
    running.worker().metrics()
}
