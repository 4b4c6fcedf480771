//! Durability under fire, on PostgreSQL with real worker processes: workers killed with SIGKILL at
//! random, and every database connection terminated mid-run. Every orchestration must complete
//! exactly once with the right result, every history must verify, and no task may be left behind.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{HistoryEvent, HistoryRange, InstanceStatus, QueueStats, Store};
use quark_tests::Dice;
use quark_workflow::Client;

const ORCHESTRATIONS: u64 = 200;

fn spawn_worker(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_crash-worker"))
        .env("QUARK_DATABASE_URL", url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a crash-worker")
}

/// Worker processes, killed when dropped: a failing test leaves none behind holding connections.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

async fn start_all(t: &TestStore) {
    let client = Client::new(Arc::clone(&t.store));
    for n in 0..ORCHESTRATIONS {
        quark_tests::crash_order::start(&client, format!("crash-{n}"), n)
            .await
            .unwrap();
    }
}

async fn completed(store: &dyn Store) -> usize {
    let done = store
        .list_instances(quark_history::InstanceFilter {
            statuses: vec![InstanceStatus::Completed],
            limit: 1000,
            ..Default::default()
        })
        .await;
    done.map(|d| d.len()).unwrap_or(0)
}

/// Every instance completed once with the right output, its history is contiguous and verifies,
/// and the queue is empty.
async fn check_everything(store: &dyn Store) {
    for n in 0..ORCHESTRATIONS {
        let id = format!("crash-{n}");
        let record = store.get_instance(&id).await.unwrap().unwrap();
        assert_eq!(record.status, InstanceStatus::Completed, "{id}");
        assert_eq!(
            record.output.unwrap().decode::<u64>().unwrap(),
            quark_tests::expected(n),
            "{id}"
        );
        let history = store.read_history(&id, HistoryRange::All).await.unwrap();
        let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=history.len() as u64).collect::<Vec<_>>(),
            "{id}: gaps"
        );
        let completions = history
            .iter()
            .filter(|e| matches!(e.event, HistoryEvent::WorkflowCompleted { .. }))
            .count();
        assert_eq!(completions, 1, "{id} completed exactly once");
        // Each command resolved once: no activity result recorded twice.
        let resolved: Vec<u64> = history
            .iter()
            .filter(|e| {
                matches!(
                    e.event,
                    HistoryEvent::ActivityCompleted { .. } | HistoryEvent::TimerFired { .. }
                )
            })
            .filter_map(|e| e.event.command())
            .collect();
        let unique: BTreeSet<u64> = resolved.iter().copied().collect();
        assert_eq!(
            resolved.len(),
            unique.len(),
            "{id}: a command resolved twice"
        );
        assert!(
            store.verify(&id).await.unwrap().is_intact(),
            "{id}: hash chain"
        );
    }
    assert_eq!(
        store.queue_stats("default").await.unwrap(),
        QueueStats::default(),
        "tasks left behind"
    );
}

async fn wait_for_all(store: &dyn Store, mut chaos: impl AsyncFnMut()) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let done = completed(store).await;
        if done as u64 == ORCHESTRATIONS {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {done} of {ORCHESTRATIONS} completed in 240 s"
        );
        chaos().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_orchestration_completes_once_while_workers_are_killed_at_random() {
    let Some(_one_at_a_time) = crate::support::slow_suite("crash: workers killed").await else {
        return;
    };
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    start_all(&t).await;
    let mut workers = Workers((0..3).map(|_| spawn_worker(&url)).collect());
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let mut kills = 0;
    wait_for_all(&*t.store, async || {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let victim = dice.roll(workers.0.len());
        let mut dead = workers.0.swap_remove(victim);
        dead.kill().expect("SIGKILL a worker"); // Child::kill is SIGKILL on Unix
        dead.wait().unwrap();
        kills += 1;
        workers.0.push(spawn_worker(&url));
    })
    .await;
    drop(workers);
    assert!(
        kills >= 3,
        "the test killed {kills} workers; it proves little below 3"
    );
    eprintln!("crash loop: {kills} workers killed with SIGKILL");
    check_everything(&*t.store).await;
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_orchestration_completes_while_database_connections_are_terminated() {
    let Some(_one_at_a_time) = crate::support::slow_suite("crash: connections terminated").await
    else {
        return;
    };
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    start_all(&t).await;
    let workers = Workers((0..2).map(|_| spawn_worker(&url)).collect());
    let mut terminated = 0;
    wait_for_all(&*t.store, async || {
        tokio::time::sleep(Duration::from_millis(400)).await;
        terminated += t
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND application_name = 'quark'",
            )
            .await;
    })
    .await;
    drop(workers);
    assert!(
        terminated >= 3,
        "only {terminated} connections were terminated"
    );
    eprintln!("database faults: {terminated} connections terminated");
    check_everything(&*t.store).await;
    t.cleanup().await;
}
