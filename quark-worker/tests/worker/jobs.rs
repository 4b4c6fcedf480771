//! Durable jobs on the worker: activities enqueued on their own, with retries, dead letters,
//! delays, bulk enqueue, and enqueue inside the caller's transaction.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quark_history::sqlx;
use quark_history::testing::TestStore;
use quark_history::{Backend, QueueStats, StoreTx};
use quark_worker::Worker;
use quark_workflow::{ActivityContext, ActivityError, Client, JobOptions, Registry, activity};

quark_history::backend_tests!(
    it_runs_jobs_once_each_retries_them_and_dead_letters_the_hopeless,
    it_runs_a_delayed_job_no_earlier_than_asked,
    it_enqueues_a_job_in_the_callers_transaction_only_if_it_commits,
);

/// Runs per input, shared by the tests of one binary (inputs are unique per test).
fn runs() -> &'static Mutex<BTreeMap<String, u32>> {
    static RUNS: OnceLock<Mutex<BTreeMap<String, u32>>> = OnceLock::new();
    RUNS.get_or_init(Mutex::default)
}

fn count(input: &str) -> u32 {
    runs().lock().unwrap().get(input).copied().unwrap_or(0)
}

#[activity]
async fn record(_ctx: ActivityContext, input: String) -> Result<(), ActivityError> {
    *runs().lock().unwrap().entry(input).or_default() += 1;
    Ok(())
}

#[activity(retry(max_attempts = 5, initial = "1s", max = "1s"))]
async fn flaky(ctx: ActivityContext, input: String) -> Result<u32, ActivityError> {
    *runs().lock().unwrap().entry(input).or_default() += 1;
    if ctx.attempt() < 3 {
        return Err(ActivityError::message("upstream timeout"));
    }
    Ok(ctx.attempt())
}

#[activity(retry(max_attempts = 2, initial = "1s", max = "1s"))]
async fn hopeless(_ctx: ActivityContext, input: String) -> Result<(), ActivityError> {
    Err(ActivityError::message(format!(
        "{input} cannot be processed"
    )))
}

fn worker(t: &TestStore) -> Worker {
    Worker::builder()
        .store(Arc::clone(&t.store))
        .poll_interval(Duration::from_millis(10))
        // Virtual time runs a second a step while jobs run: a lease far longer than the whole
        // run keeps a busy host from losing one (and claiming the job again under a new
        // attempt), so the attempts count exactly.
        .lease(Duration::from_secs(3600))
        .workflows(
            Registry::new()
                .register(record)
                .register(flaky)
                .register(hopeless),
        )
        .build()
        .unwrap()
}

async fn it_runs_jobs_once_each_retries_them_and_dead_letters_the_hopeless(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let tag = format!("{:?}", t.store.backend());
    let inputs: Vec<String> = (0..300).map(|n| format!("{tag}-bulk-{n}")).collect();
    let ids = client
        .enqueue_many::<record>(inputs.clone(), JobOptions::default())
        .await
        .unwrap();
    assert_eq!(ids.len(), 300);
    // The typed stub the macro writes: `activity::enqueue(&client, input, options)`.
    flaky::enqueue(&client, format!("{tag}-flaky"), JobOptions::default())
        .await
        .unwrap();
    let doomed = client
        .enqueue::<hopeless>(&format!("{tag}-doomed"), JobOptions::default())
        .await
        .unwrap();

    t.advance_until(
        Duration::from_secs(1),
        "every job has settled",
        async || {
            let stats = t.store.queue_stats("default").await.unwrap();
            stats
                == QueueStats {
                    pending: 0,
                    leased: 0,
                    dead: 1,
                    ..QueueStats::default()
                }
        },
    )
    .await;
    assert!(
        inputs.iter().all(|i| count(i) == 1),
        "every bulk job ran exactly once"
    );
    assert_eq!(
        count(&format!("{tag}-flaky")),
        3,
        "two retryable failures, then success"
    );
    let dead = t.store.list_dead(Some("default"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task_id, doomed.get());
    assert_eq!(dead[0].attempts, 2);
    assert!(
        dead[0].error.contains("after 2 attempt(s)")
            && dead[0].error.contains("cannot be processed"),
        "{}",
        dead[0].error
    );

    // Re-driven, it gets its attempts back, and dies again: the operator sees the same error.
    t.store.redrive(doomed.get()).await.unwrap();
    t.advance_until(
        Duration::from_secs(1),
        "the re-driven job settled",
        async || {
            t.store.queue_stats("default").await.unwrap()
                == QueueStats {
                    pending: 0,
                    leased: 0,
                    dead: 1,
                    ..QueueStats::default()
                }
                && !t.store.list_dead(None, 10).await.unwrap().is_empty()
        },
    )
    .await;
    running.shutdown().await;
}

async fn it_runs_a_delayed_job_no_earlier_than_asked(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let client = Client::new(Arc::clone(&t.store));
    let input = format!("{:?}-delayed", t.store.backend());
    client
        .enqueue::<record>(
            &input,
            JobOptions::default().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(t.store.queue_stats("default").await.unwrap().pending, 1);
    t.clock.advance(Duration::from_secs(3599));
    // Several polling intervals at 59:59: the job is not visible, so nothing can have run it.
    assert!(
        t.store
            .claim(quark_history::ClaimRequest::new("probe", ["default"]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(count(&input), 0);
    t.clock.advance(Duration::from_secs(1));
    t.advance_until(Duration::from_secs(1), "the delayed job ran", async || {
        count(&input) == 1
    })
    .await;
    running.shutdown().await;
}

/// Runs one statement of the caller's in `tx` (`$1` is the placeholder on PostgreSQL, `?` on
/// SQLite), with `id` bound if given.
async fn exec(tx: &mut StoreTx, postgres: &'static str, sqlite: &'static str, id: Option<&str>) {
    match tx.backend() {
        Backend::Postgres => {
            let mut q = sqlx::query(postgres);
            if let Some(id) = id {
                q = q.bind(id.to_string());
            }
            q.execute(tx.postgres().unwrap()).await.unwrap();
        }
        _ => {
            let mut q = sqlx::query(sqlite);
            if let Some(id) = id {
                q = q.bind(id.to_string());
            }
            q.execute(tx.sqlite().unwrap()).await.unwrap();
        }
    }
}

/// The orders the callers' transactions left, read in a transaction of its own.
async fn orders(client: &Client) -> Vec<String> {
    let mut tx = client.begin_tx().await.unwrap();
    let sql = "SELECT id FROM orders ORDER BY id";
    let ids = match tx.backend() {
        Backend::Postgres => sqlx::query_scalar(sql)
            .fetch_all(tx.postgres().unwrap())
            .await
            .unwrap(),
        _ => sqlx::query_scalar(sql)
            .fetch_all(tx.sqlite().unwrap())
            .await
            .unwrap(),
    };
    tx.rollback().await.unwrap();
    ids
}

/// A job enqueued in the caller's own transaction exists if and only if it commits, the same on
/// both databases.
async fn it_enqueues_a_job_in_the_callers_transaction_only_if_it_commits(t: &TestStore) {
    let client = Client::new(Arc::clone(&t.store));
    let mut tx = client.begin_tx().await.unwrap();
    let create = "CREATE TABLE orders (id TEXT PRIMARY KEY)";
    exec(&mut tx, create, create, None).await;
    tx.commit().await.unwrap();
    let running = worker(t).start().await.unwrap();
    let input = |id: &str| format!("tx-{id}-{}", t.store.backend());
    for (id, commit) in [("rolled-back", false), ("committed", true)] {
        let mut tx = client.begin_tx().await.unwrap();
        let (postgres, sqlite) = (
            "INSERT INTO orders (id) VALUES ($1)",
            "INSERT INTO orders (id) VALUES (?)",
        );
        exec(&mut tx, postgres, sqlite, Some(id)).await;
        let job = client
            .enqueue_tx::<record>(&mut tx, &input(id), JobOptions::default())
            .await
            .unwrap();
        if commit {
            tx.commit().await.unwrap();
            assert!(client.job(job).await.is_ok(), "the committed job exists");
        } else {
            tx.rollback().await.unwrap();
            assert!(
                client.job(job).await.is_err(),
                "the rolled-back job does not"
            );
        }
    }
    // The job's run is counted before its completion commits: wait for both.
    t.advance_until(
        Duration::from_secs(1),
        "the committed job ran and completed",
        async || {
            count(&input("committed")) == 1
                && t.store.queue_stats("default").await.unwrap() == QueueStats::default()
        },
    )
    .await;
    assert_eq!(count(&input("rolled-back")), 0, "no job without its order");
    assert_eq!(orders(&client).await, ["committed"]);
    running.shutdown().await;
}
