//! Runs of a worker id: a restart takes its leases back at once, fencing the old attempts; a live
//! run elsewhere keeps its id; a worker whose heartbeats stop loses its leases after two
//! intervals, not a whole lease.

use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{
    ClaimRequest, Clock, Commit, Error, Incarnation, NewTask, Pressure, TaskKind, WorkerInfo,
    WorkerLoad,
};

use crate::support::conformance;

conformance!(
    it_gives_a_restarted_worker_its_leases_back_at_once_and_fences_the_old_run,
    it_refuses_an_id_that_a_live_run_in_another_scope_holds_until_it_stops_heartbeating,
    it_releases_the_leases_of_a_worker_two_heartbeats_after_it_stopped,
    it_publishes_a_worker_s_load_and_hands_its_affinity_away_under_pressure,
    it_frees_a_task_whose_affinity_worker_does_not_serve_its_queue,
);

const HEARTBEAT: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(30);

fn info(t: &TestStore, id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        queues: vec!["q".into()],
        labels: "{}".into(),
        heartbeat_at: t.clock.now(),
        load: Default::default(),
    }
}

async fn claim(t: &TestStore, worker: &str) -> Vec<quark_history::ClaimedTask> {
    t.store
        .claim(ClaimRequest::new(worker, ["q"]).lease(LEASE))
        .await
        .unwrap()
}

async fn enqueue(t: &TestStore, n: u8) {
    let tasks = (0..n)
        .map(|i| NewTask::new(TaskKind::Activity, "q").payload(vec![i]))
        .collect();
    t.store.enqueue(tasks).await.unwrap();
}

async fn it_gives_a_restarted_worker_its_leases_back_at_once_and_fences_the_old_run(t: &TestStore) {
    let first = Incarnation::new("host-a", HEARTBEAT);
    let registered = t.store.register_worker(info(t, "w"), &first).await.unwrap();
    assert!(!registered.replaced);
    enqueue(t, 2).await;
    let held = claim(t, "w").await;
    assert_eq!(held.len(), 2);

    // The process dies and starts again at once, in the same scope: its heartbeat is fresh, but
    // the scope's lock says the old run is gone.
    t.clock.advance(Duration::from_millis(100));
    let second = Incarnation::new("host-a", HEARTBEAT);
    let registered = t
        .store
        .register_worker(info(t, "w"), &second)
        .await
        .unwrap();
    assert!(registered.replaced);
    assert_eq!(registered.reclaimed, 2);
    let again = claim(t, "w").await;
    assert_eq!(again.len(), 2, "claimable at once, not after the lease");
    assert!(again.iter().all(|c| c.lease.attempt == 2), "{again:?}");

    // The old run, were it alive, can neither commit nor extend, and learns it was replaced.
    let old = held[0].lease.clone();
    assert!(matches!(
        t.store.commit(Commit::new().complete(old.clone())).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        t.store.extend_lease(&old, LEASE).await,
        Err(Error::LeaseLost { .. })
    ));
    assert!(matches!(
        t.store.heartbeat_run(info(t, "w"), &first).await,
        Err(Error::Superseded { .. })
    ));
    // Its retirement leaves the new run's registration alone.
    t.store.retire_run("w", &first).await.unwrap();
    t.store.heartbeat_run(info(t, "w"), &second).await.unwrap();
    assert_eq!(t.store.list_workers().await.unwrap().len(), 1);
    for task in again {
        t.store
            .commit(Commit::new().complete(task.lease))
            .await
            .unwrap();
    }
    t.store.retire_run("w", &second).await.unwrap();
    assert!(t.store.list_workers().await.unwrap().is_empty());
}

async fn it_refuses_an_id_that_a_live_run_in_another_scope_holds_until_it_stops_heartbeating(
    t: &TestStore,
) {
    let live = Incarnation::new("host-a", HEARTBEAT);
    t.store.register_worker(info(t, "w"), &live).await.unwrap();
    enqueue(t, 1).await;
    let held = claim(t, "w").await;
    assert_eq!(held.len(), 1);

    let elsewhere = Incarnation::new("host-b", HEARTBEAT);
    t.clock.advance(HEARTBEAT);
    t.store.heartbeat_run(info(t, "w"), &live).await.unwrap();
    t.clock.advance(HEARTBEAT);
    match t.store.register_worker(info(t, "w"), &elsewhere).await {
        Err(Error::WorkerIdInUse {
            worker_id,
            expires_in,
            ..
        }) => {
            assert_eq!(worker_id, "w");
            assert_eq!(expires_in, HEARTBEAT);
        }
        other => panic!("a live run's id was taken: {other:?}"),
    }
    // Nothing changed: the live run keeps its registration and its lease.
    t.store.heartbeat_run(info(t, "w"), &live).await.unwrap();
    t.store
        .extend_lease(&held[0].lease, LEASE)
        .await
        .expect("the live run still holds its lease");

    // Once its heartbeats have stopped for two intervals, the id is free.
    t.clock.advance(HEARTBEAT * 2 + Duration::from_millis(1));
    let registered = t
        .store
        .register_worker(info(t, "w"), &elsewhere)
        .await
        .unwrap();
    assert_eq!(registered.reclaimed, 1);
    assert!(matches!(
        t.store.heartbeat_run(info(t, "w"), &live).await,
        Err(Error::Superseded { .. })
    ));
}

async fn it_releases_the_leases_of_a_worker_two_heartbeats_after_it_stopped(t: &TestStore) {
    let dying = Incarnation::new("host-a", HEARTBEAT);
    let living = Incarnation::new("host-b", HEARTBEAT);
    t.store
        .register_worker(info(t, "dying"), &dying)
        .await
        .unwrap();
    t.store
        .register_worker(info(t, "living"), &living)
        .await
        .unwrap();
    enqueue(t, 3).await;
    assert_eq!(claim(t, "dying").await.len(), 3);

    // One interval and a half without a heartbeat: not dead yet.
    t.clock.advance(HEARTBEAT + HEARTBEAT / 2);
    t.store
        .heartbeat_run(info(t, "living"), &living)
        .await
        .unwrap();
    assert!(t.store.reap_workers("living").await.unwrap().is_empty());
    assert!(claim(t, "living").await.is_empty());

    // Past two intervals: reaped once, however many reap, and its tasks are claimable at once.
    t.clock.advance(HEARTBEAT);
    t.store
        .heartbeat_run(info(t, "living"), &living)
        .await
        .unwrap();
    let reaped = t.store.reap_workers("living").await.unwrap();
    assert_eq!(reaped.len(), 1, "{reaped:?}");
    assert_eq!(
        (reaped[0].worker_id.as_str(), reaped[0].released),
        ("dying", 3)
    );
    assert!(t.store.reap_workers("living").await.unwrap().is_empty());
    let taken = claim(t, "living").await;
    assert_eq!(taken.len(), 3, "long before the 30 s lease");
    assert!(taken.iter().all(|c| c.lease.attempt == 2));
    let workers: Vec<String> = t
        .store
        .list_workers()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(workers, ["living"]);

    // A worker registered the old way (no interval) keeps its leases until they run out.
    t.store.heartbeat_worker(info(t, "legacy")).await.unwrap();
    enqueue(t, 1).await;
    assert_eq!(claim(t, "legacy").await.len(), 1);
    t.clock.advance(HEARTBEAT * 10);
    t.store
        .heartbeat_run(info(t, "living"), &living)
        .await
        .unwrap();
    assert!(t.store.reap_workers("living").await.unwrap().is_empty());
    assert!(claim(t, "living").await.is_empty());
}

async fn it_publishes_a_worker_s_load_and_hands_its_affinity_away_under_pressure(t: &TestStore) {
    let (a, b) = (
        Incarnation::new("host-a", HEARTBEAT),
        Incarnation::new("host-b", HEARTBEAT),
    );
    t.store.register_worker(info(t, "a"), &a).await.unwrap();
    t.store.register_worker(info(t, "b"), &b).await.unwrap();
    let affine = |n: u8| {
        NewTask::new(TaskKind::Activity, "q")
            .payload(vec![n])
            .affinity("a")
    };
    let by_b = || {
        ClaimRequest::new("b", ["q"])
            .lease(LEASE)
            .affinity_delay(Duration::from_secs(60))
    };
    t.store.enqueue(vec![affine(1)]).await.unwrap();
    assert!(
        t.store.claim(by_b()).await.unwrap().is_empty(),
        "a live worker without pressure keeps its affinity"
    );

    // a reports a warning: its figures are published, and its affinity is free at once.
    let load = WorkerLoad {
        pressure: Pressure::Warning,
        rss_bytes: 750 << 20,
        memory_limit: 1 << 30,
        cached_instances: 1_234,
        cached_bytes: 300 << 20,
        live_entities: 56,
        entity_bytes: 7 << 20,
    };
    let mut loaded = info(t, "a");
    loaded.load = load;
    t.store.heartbeat_run(loaded, &a).await.unwrap();
    let listed = t.store.list_workers().await.unwrap();
    let row = listed.iter().find(|w| w.id == "a").unwrap();
    assert_eq!(row.load, load);
    assert_eq!(
        listed.iter().find(|w| w.id == "b").unwrap().load,
        WorkerLoad::default()
    );
    let taken = t.store.claim(by_b()).await.unwrap();
    assert_eq!(taken.len(), 1, "b takes a's task without waiting");

    // Back to normal (a registration overwrites the figures too): the affinity holds again.
    let mut calm = info(t, "a");
    calm.load.rss_bytes = 100 << 20;
    t.store.heartbeat_run(calm, &a).await.unwrap();
    t.store.enqueue(vec![affine(2)]).await.unwrap();
    assert!(t.store.claim(by_b()).await.unwrap().is_empty());
    assert_eq!(
        t.store.list_workers().await.unwrap()[0].load.pressure,
        Pressure::Normal
    );
}

/// A task's affinity holds only on a worker that could claim it: one whose live registration
/// does not list the task's queue leaves it to the others at once.
async fn it_frees_a_task_whose_affinity_worker_does_not_serve_its_queue(t: &TestStore) {
    let a = Incarnation::new("host-a", HEARTBEAT);
    let mut registered = info(t, "a");
    registered.queues = vec!["q".into(), "r".into()];
    t.store.register_worker(registered, &a).await.unwrap();
    let on = |queue: &str| NewTask::new(TaskKind::Activity, queue).affinity("a");
    t.store
        .enqueue(vec![on("q"), on("elsewhere")])
        .await
        .unwrap();
    let by_b = ClaimRequest::new("b", ["q", "elsewhere"])
        .lease(LEASE)
        .affinity_delay(Duration::from_secs(60));
    let taken = t.store.claim(by_b).await.unwrap();
    let queues: Vec<&str> = taken.iter().map(|c| c.queue.as_str()).collect();
    assert_eq!(
        queues,
        ["elsewhere"],
        "a serves q, so its task there waits for it; it does not serve `elsewhere`"
    );
}
