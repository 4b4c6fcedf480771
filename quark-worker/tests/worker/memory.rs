//! Memory-aware workers, on both backends: a worker whose memory (scripted through its probe)
//! climbs past each threshold keeps no new warm state, evicts, stops claiming and hands its
//! instances to another worker, then recovers; and a warm run far larger than its peers is
//! evicted once as a suspected leak and rebuilt by replay. Every workflow completes: nothing is
//! lost on the way.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use quark_history::testing::{TestStore, eventually};
use quark_history::{AffinityMove, Pressure, WorkerLoad};
use quark_worker::cli::{Cli, Command, run_on};
use quark_worker::memory::{LeakDetection, MemoryConfig, MemoryProbe};
use quark_worker::placement::coordinator::PlacementConfig;
use quark_worker::{RunningWorker, Worker};
use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Registry, orchestration};

quark_history::backend_tests!(
    it_acts_on_each_memory_threshold_and_loses_no_work,
    it_evicts_a_run_far_larger_than_its_peers_once_and_rebuilds_it,
    it_serves_a_moved_instance_on_its_new_worker_and_drops_the_stale_run,
    it_moves_warm_state_off_a_worker_under_pressure_before_it_evicts,
);

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 1000 * MIB;

/// Memory as a test sets it: a resident size, on a machine of 8 GiB without a control group.
#[derive(Clone, Default)]
struct Scripted(Arc<AtomicU64>);

impl Scripted {
    fn set_percent(&self, percent: u64) {
        self.0.store(LIMIT / 100 * percent, Ordering::SeqCst);
    }
}

impl MemoryProbe for Scripted {
    fn resident(&self) -> io::Result<u64> {
        Ok(self.0.load(Ordering::SeqCst))
    }
    fn group_limit(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
    fn machine(&self) -> io::Result<u64> {
        Ok(8 << 30)
    }
}

/// Waits for signal `go`, then returns it.
#[orchestration]
async fn parked(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let go: u64 = ctx.wait_for_signal("go").await?;
    Ok(n + go)
}

/// Holds 256 KiB in its state across two signals: a run far larger than `parked`'s.
#[orchestration]
async fn hoarder(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let mut hoard = [0u8; 256 * 1024];
    hoard[n as usize] = 1;
    let first: u64 = ctx.wait_for_signal("go").await?;
    let second: u64 = ctx.wait_for_signal("go").await?;
    Ok(first + second + hoard.iter().map(|b| u64::from(*b)).sum::<u64>())
}

fn registry() -> Registry {
    Registry::new().register(parked).register(hoarder)
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7())
}

fn worker(t: &TestStore, id: &str, memory: Option<(MemoryConfig, Scripted)>) -> Worker {
    let builder = Worker::builder()
        .store(Arc::clone(&t.store))
        .id(id)
        .poll_interval(Duration::from_millis(10))
        .lease(Duration::from_secs(3600))
        // Another worker's affinity holds for an hour: a task moves at once only because its
        // worker hands it away.
        .affinity_delay(Duration::from_secs(3600))
        // The governor alone: no coordinator moves state off a worker under pressure (the
        // relief test below turns it on).
        .without_placement()
        .workflows(registry());
    match memory {
        Some((config, probe)) => builder.memory(config).memory_probe(probe),
        None => builder.without_memory_governor(),
    }
    .build()
    .unwrap()
}

/// Samples every 5 ms, unsmoothed: the level follows the script at once.
fn config() -> MemoryConfig {
    MemoryConfig::default()
        .limit(LIMIT)
        .sample_every(Duration::from_millis(5))
        .smoothing(Duration::ZERO)
}

async fn at_level(running: &RunningWorker, level: Pressure) {
    let mut watch = running.worker().watch_pressure();
    tokio::time::timeout(Duration::from_secs(60), watch.wait_for(|p| *p == level))
        .await
        .unwrap_or_else(|_| panic!("the worker never reached {level}"))
        .unwrap();
}

/// `id`'s result, within a minute (a worker that never takes the task must fail the test, not
/// hang it).
async fn result(client: &Client, id: &str) -> u64 {
    tokio::time::timeout(Duration::from_secs(60), client.result::<u64>(id))
        .await
        .unwrap_or_else(|_| panic!("{id} did not complete"))
        .unwrap()
}

/// Runs a `quark` command line against the test's store.
async fn quark(t: &TestStore, args: &[&str]) -> String {
    let cli = Cli::try_parse_from([&["quark"], args].concat()).unwrap();
    let mut out = Vec::new();
    run_on(
        Arc::clone(&t.store),
        cli.command,
        cli.output,
        None,
        &mut out,
    )
    .await
    .unwrap();
    String::from_utf8(out).unwrap()
}

async fn published(t: &TestStore, id: &str) -> WorkerLoad {
    let workers = t.store.list_workers().await.unwrap();
    workers
        .into_iter()
        .find(|w| w.id == id)
        .unwrap_or_else(|| panic!("{id} is not registered"))
        .load
}

async fn it_acts_on_each_memory_threshold_and_loses_no_work(t: &TestStore) {
    let client = Client::new(Arc::clone(&t.store));
    let memory = Scripted::default();
    memory.set_percent(20);
    let a_id = unique("pressured");
    let a = worker(t, &a_id, Some((config(), memory.clone())))
        .start()
        .await
        .unwrap();
    let warm: Vec<String> = (0..3).map(|i| format!("warm-{i}")).collect();
    for (i, id) in warm.iter().enumerate() {
        parked::start(&client, id, i as u64).await.unwrap();
    }
    eventually("three runs are warm", async || {
        a.worker().load().cached_instances == 3
    })
    .await;
    assert_eq!(a.worker().memory().pressure, Pressure::Normal);
    assert!(a.worker().memory().measured);

    // Warning: published at once (not at the next 10 s heartbeat), and no new warm state.
    memory.set_percent(75);
    at_level(&a, Pressure::Warning).await;
    eventually("the warning is published", async || {
        published(t, &a_id).await.pressure == Pressure::Warning
    })
    .await;
    let load = published(t, &a_id).await;
    assert_eq!(load.memory_limit, LIMIT);
    assert_eq!(load.rss_bytes, LIMIT / 100 * 75);
    assert_eq!(load.cached_instances, 3);
    assert!(load.cached_bytes > 0);
    // `quark worker list` shows it, for people and for programs.
    let json: serde_json::Value =
        serde_json::from_str(&quark(t, &["worker", "list", "-o", "json"]).await).unwrap();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == a_id.as_str())
        .unwrap();
    assert_eq!(row["pressure"], "warning");
    assert_eq!(row["rss_bytes"], LIMIT / 100 * 75);
    assert_eq!(row["cached_instances"], 3);
    let table = quark(t, &["worker", "list"]).await;
    let line = table.lines().find(|l| l.starts_with(&a_id)).unwrap();
    assert!(line.contains("warning"), "{table}");
    assert!(line.contains("750.0 MiB / 1000.0 MiB (75%)"), "{table}");
    assert!(line.contains("3 ("), "{table}");
    let settled = a.worker().metrics().completed;
    for id in ["cold-0", "cold-1"] {
        parked::start(&client, id, 10).await.unwrap();
    }
    eventually("the new instances' first turns ran", async || {
        a.worker().metrics().completed >= settled + 2
    })
    .await;
    assert_eq!(
        a.worker().load().cached_instances,
        3,
        "a run was kept warm at warning"
    );

    // Critical: warm state is evicted (memory stays up in the script, so all of it goes).
    memory.set_percent(90);
    at_level(&a, Pressure::Critical).await;
    // The runs leave the cache a moment before the governor counts them: wait for both.
    eventually("the warm runs are evicted and counted", async || {
        a.worker().load().cached_instances == 0 && a.worker().metrics().evicted_runs >= 3
    })
    .await;
    assert_eq!(a.worker().metrics().moved_away, 0, "evicted, not moved");
    assert!(!a.worker().memory().breaker_open);

    // Reject: the breaker opens, the worker claims nothing, and another worker takes its
    // instances at once despite their affinity.
    memory.set_percent(97);
    at_level(&a, Pressure::Reject).await;
    assert!(a.worker().memory().breaker_open);
    assert_eq!(a.worker().metrics().breaker_trips, 1);
    eventually("the reject level is published", async || {
        published(t, &a_id).await.pressure == Pressure::Reject
    })
    .await;
    let claimed_by_a = a.worker().metrics().claimed;
    let b = worker(t, &unique("relief"), None).start().await.unwrap();
    client.signal("warm-0", "go", &100u64).await.unwrap();
    assert_eq!(result(&client, "warm-0").await, 100);
    assert_eq!(
        a.worker().metrics().claimed,
        claimed_by_a,
        "a claimed while its breaker was open"
    );
    assert!(b.worker().metrics().claimed >= 1);
    b.shutdown().await;

    // Down to critical: the breaker stays open until memory is back under warning.
    memory.set_percent(88);
    at_level(&a, Pressure::Critical).await;
    assert!(a.worker().memory().breaker_open);
    memory.set_percent(30);
    at_level(&a, Pressure::Normal).await;
    assert!(!a.worker().memory().breaker_open);

    // Recovered: it claims again and keeps new warm state; everything completes.
    for (i, id) in ["warm-1", "warm-2", "cold-0", "cold-1"].iter().enumerate() {
        client.signal(id, "go", &(i as u64)).await.unwrap();
    }
    for id in ["warm-1", "warm-2", "cold-0", "cold-1"] {
        result(&client, id).await;
    }
    parked::start(&client, "after", 1).await.unwrap();
    eventually("a new run is warm again", async || {
        a.worker()
            .live_instances()
            .iter()
            .any(|l| l.instance_id == "after")
    })
    .await;
    client.signal("after", "go", &1u64).await.unwrap();
    assert_eq!(result(&client, "after").await, 2);
    a.shutdown().await;
}

async fn it_evicts_a_run_far_larger_than_its_peers_once_and_rebuilds_it(t: &TestStore) {
    let client = Client::new(Arc::clone(&t.store));
    let memory = Scripted::default();
    memory.set_percent(10);
    let leaks = LeakDetection {
        factor: 8.0,
        floor: 64 * 1024,
        min_peers: 8,
    };
    let config = config().leaks(leaks);
    let running = worker(t, &unique("leaky"), Some((config, memory)))
        .start()
        .await
        .unwrap();
    for i in 0..8 {
        parked::start(&client, &format!("peer-{i}"), i)
            .await
            .unwrap();
    }
    eventually("the peers are warm", async || {
        running.worker().load().cached_instances == 8
    })
    .await;
    hoarder::start(&client, "hoarder", 3).await.unwrap();
    eventually("the hoarder is flagged and evicted", async || {
        running.worker().metrics().leaks_suspected == 1
            && !running
                .worker()
                .live_instances()
                .iter()
                .any(|l| l.instance_id == "hoarder")
    })
    .await;
    assert!(running.worker().metrics().evicted_runs >= 1);
    assert_eq!(
        running.worker().load().cached_instances,
        8,
        "only the hoarder went"
    );

    // Its next turn replays it into a new run, kept warm again: large state, flagged once.
    client.signal("hoarder", "go", &10u64).await.unwrap();
    eventually("the hoarder is rebuilt", async || {
        running
            .worker()
            .live_instances()
            .iter()
            .any(|l| l.instance_id == "hoarder" && l.footprint > 256 * 1024)
    })
    .await;
    client.signal("hoarder", "go", &20u64).await.unwrap();
    assert_eq!(result(&client, "hoarder").await, 31);
    assert_eq!(running.worker().metrics().leaks_suspected, 1);
    for i in 0..8 {
        client
            .signal(&format!("peer-{i}"), "go", &1u64)
            .await
            .unwrap();
        assert_eq!(result(&client, &format!("peer-{i}")).await, i + 1);
    }
    running.shutdown().await;
}

#[test]
fn the_worker_s_memory_flags_parse_and_bad_ones_are_refused_with_the_reason() {
    let cli = Cli::try_parse_from([
        "quark",
        "worker",
        "--memory-limit",
        "2GiB",
        "--memory-thresholds",
        "60,80,90",
    ])
    .unwrap();
    let Command::Worker(args) = cli.command else {
        panic!("not a worker command");
    };
    assert_eq!(args.memory_limit, Some(2 << 30));
    assert_eq!(args.memory_thresholds.unwrap().critical, 0.8);
    assert!(args.command.is_none());
    let refused = |args: &[&str]| {
        Cli::try_parse_from([&["quark", "worker"], args].concat())
            .unwrap_err()
            .to_string()
    };
    let e = refused(&["--memory-thresholds", "90,80,95"]);
    assert!(e.contains("out of order"), "{e}");
    let e = refused(&["--memory-limit", "lots"]);
    assert!(e.contains("not a size"), "{e}");
    // Listing takes no worker flags.
    let e = refused(&["--memory-limit", "1GiB", "list"]);
    assert!(
        e.contains("cannot be used") || e.contains("unexpected"),
        "{e}"
    );
}

#[tokio::test]
async fn a_worker_limit_above_the_machine_is_refused_at_build() {
    let t = quark_history::testing::sqlite().await;
    let machine = 8u64 << 30;
    let e = Worker::builder()
        .store(Arc::clone(&t.store))
        .workflows(registry())
        .memory(MemoryConfig::default().limit(machine * 2))
        .memory_probe(Scripted::default())
        .build()
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid setting: the memory limit 16.0 GiB is above this machine's memory (8.0 GiB)"
    );
}

async fn it_serves_a_moved_instance_on_its_new_worker_and_drops_the_stale_run(t: &TestStore) {
    let client = Client::new(Arc::clone(&t.store));
    let (a_id, b_id) = (unique("source"), unique("target"));
    let calm = || {
        let memory = Scripted::default();
        memory.set_percent(10);
        Some((config(), memory))
    };
    let a = worker(t, &a_id, calm()).start().await.unwrap();
    parked::start(&client, "mover", 5).await.unwrap();
    eventually("the run is warm on the source", async || {
        a.worker()
            .live_instances()
            .iter()
            .any(|l| l.instance_id == "mover")
    })
    .await;
    let b = worker(t, &b_id, calm()).start().await.unwrap();

    // The move: a compare-and-set on the affinity. The source drops its run, whose state the
    // target will hold from the next turn on.
    assert!(
        !t.store
            .move_affinities(&[AffinityMove::new("mover", &b_id, &a_id)], None)
            .await
            .unwrap()[0],
        "a move from the wrong worker changes nothing"
    );
    assert!(
        t.store
            .move_affinities(&[AffinityMove::new("mover", &a_id, &b_id)], None)
            .await
            .unwrap()[0]
    );
    // The counter is bumped just after the run is dropped: wait for both.
    eventually("the source dropped its stale run", async || {
        a.worker().live_instances().is_empty() && a.worker().metrics().moved_away >= 1
    })
    .await;
    assert_eq!(a.worker().metrics().moved_away, 1);

    // The source is alive and calm, and claims every second: only the affinity (an hour's
    // delay) keeps it from the next turn, which the target runs.
    let claimed_by_a = a.worker().metrics().claimed;
    client.signal("mover", "go", &1u64).await.unwrap();
    assert_eq!(result(&client, "mover").await, 6);
    assert_eq!(a.worker().metrics().claimed, claimed_by_a);
    assert!(b.worker().metrics().claimed >= 1);
    b.shutdown().await;
    a.shutdown().await;
}

async fn it_moves_warm_state_off_a_worker_under_pressure_before_it_evicts(t: &TestStore) {
    const RUNS: usize = 6;
    let client = Client::new(Arc::clone(&t.store));
    let (a_id, b_id) = (unique("pressed"), unique("roomy"));
    // A coordinator that only relieves: no balance to keep and nothing talks, so the only
    // reason to move is memory.
    let relieving = |id: &str, memory: &Scripted| {
        let mut options = PlacementConfig::default().options;
        options.balance.count = false;
        options.balance.memory = false;
        options.balance.cpu = false;
        Worker::builder()
            .store(Arc::clone(&t.store))
            .id(id)
            .poll_interval(Duration::from_millis(10))
            .heartbeat(Duration::from_millis(50))
            .lease(Duration::from_secs(3600))
            .affinity_delay(Duration::from_secs(3600))
            .memory(config())
            .memory_probe(memory.clone())
            .placement(PlacementConfig {
                every: Duration::from_secs(3600),
                check_every: Duration::from_millis(50),
                options,
                ..PlacementConfig::default()
            })
            .workflows(registry())
            .build()
            .unwrap()
    };
    let (a_memory, b_memory) = (Scripted::default(), Scripted::default());
    a_memory.set_percent(50);
    b_memory.set_percent(10);
    let a = relieving(&a_id, &a_memory).start().await.unwrap();
    let ids: Vec<String> = (0..RUNS).map(|n| format!("hoard-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        hoarder::start(&client, id, n as u64).await.unwrap();
    }
    eventually("the hoards are warm on a", async || {
        a.worker().live_instances().len() == RUNS
    })
    .await;
    let b = relieving(&b_id, &b_memory).start().await.unwrap();
    eventually("b is registered", async || {
        t.store
            .list_workers()
            .await
            .unwrap()
            .iter()
            .any(|w| w.id == b_id)
    })
    .await;
    assert!(
        t.store
            .affinities(&ids)
            .await
            .unwrap()
            .iter()
            .all(|p| p.worker == a_id),
        "calm, nothing moves"
    );

    // a passes its warning threshold: the coordinator moves its warm runs to b, which has
    // room, without a turn of theirs running (a hand-over by claims alone would wait for one),
    // and a drops them. a never reaches critical, so it evicts nothing.
    a_memory.set_percent(72);
    at_level(&a, Pressure::Warning).await;
    eventually("every hoard moved to b", async || {
        t.store
            .affinities(&ids)
            .await
            .unwrap()
            .iter()
            .filter(|p| p.worker == b_id)
            .count()
            == RUNS
    })
    .await;
    // Each figure is counted a moment after what it counts: wait for the counts themselves.
    eventually("a dropped the moved runs", async || {
        a.worker().live_instances().is_empty() && a.worker().metrics().moved_away == RUNS as u64
    })
    .await;
    let moves =
        async || a.worker().metrics().placement_moves + b.worker().metrics().placement_moves;
    eventually("the moves are counted", async || {
        moves().await >= RUNS as u64
    })
    .await;
    assert_eq!(moves().await, RUNS as u64, "each hoard moved once");
    assert_eq!(a.worker().metrics().evicted_runs, 0);

    // b serves them: their turns run there, and every one completes.
    let claimed_by_a = a.worker().metrics().claimed;
    for id in &ids {
        client.signal(id, "go", &1u64).await.unwrap();
        client.signal(id, "go", &2u64).await.unwrap();
    }
    for id in &ids {
        // 1 + 2, and the one byte its hoard set.
        assert_eq!(result(&client, id).await, 4);
    }
    assert_eq!(a.worker().metrics().claimed, claimed_by_a);
    b.shutdown().await;
    a.shutdown().await;
}
