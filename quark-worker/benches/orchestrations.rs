//! Orchestration benchmark: N orchestrations of three no-op activities each, on PostgreSQL and
//! SQLite, run by one in-process worker.
//!
//! Reports orchestrations/s and steps/s (turns + activities) under load, p50/p99 start-to-completion
//! latency under load and at light load (one orchestration at a time), and enqueue-to-start latency
//! of a task at light load.
//!
//! Ends with a drain of bulk-enqueued no-op jobs; with `--open-tx`, on PostgreSQL, the drain is run
//! a second time while another connection holds a transaction open (a snapshot that holds back the
//! xmin horizon, so vacuum cannot clean the queue table), and both rates and their ratio are shown.
//!
//! `cargo bench -p quark-worker --bench orchestrations -- [--n 2000] [--jobs 20000] [--light 200] [--backend both|postgres|sqlite] [--open-tx]`
//! PostgreSQL: `QUARK_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! the bench creates and drops a database of its own.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quark_history::{
    Commit, InstanceFilter, InstanceStatus, NewTask, PostgresStore, SqliteStore, Store,
    StoreConfig, TaskKind,
};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    activity, orchestration,
};
use sqlx::{Connection, Executor, PgConnection};

#[activity]
async fn noop(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n)
}

#[orchestration]
async fn three_steps(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let a = ctx.call(noop, &n).await?;
    let b = ctx.call(noop, &a).await?;
    ctx.call(noop, &b).await
}

/// The job handler's slots and the claim batch by default, as a worker tuned for many short jobs
/// would set them (the library defaults are 32 job slots and claims of up to 64).
const JOB_SLOTS: usize = 4096;
const CLAIM_BATCH: u32 = 2048;

const USAGE: &str = "cargo bench -p quark-worker --bench orchestrations -- [options]
  --n N                 orchestrations under load (default 2000)
  --jobs N              no-op jobs bulk-enqueued, then drained (default 20000)
  --light N             orchestrations and tasks one at a time, at light load (default 200)
  --backend B           both | postgres | sqlite (default both)
  --open-tx             PostgreSQL: drain the jobs again while another connection holds a
                        transaction open, and show both rates and their ratio
  --job-slots N         jobs one worker runs at once (default 4096)
  --claim-batch N       the most tasks one claim takes (default 2048)
  --workers N           workers draining the jobs (default 1; extra ones serve jobs only)
  --start-batch N       each of the 8 starting clients starts N orchestrations per call
                        (Client::start_many, one transaction); default 1 (Client::start)
  --orchestration-slots N  orchestration turns the worker runs at once (default: the worker's)
  --activity-slots N    activities the worker runs at once (default: the worker's)
  --retention SECS      how long finished jobs are kept in finished_jobs (default 86400, the
                        store's default; 0 keeps no record, the fastest setting)";

struct Args {
    n: u64,
    jobs: u64,
    light: u64,
    backends: Vec<&'static str>,
    open_tx: bool,
    retention: Duration,
    job_slots: usize,
    claim_batch: u32,
    workers: usize,
    start_batch: u64,
    orchestration_slots: Option<usize>,
    activity_slots: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        n: 2000,
        jobs: 20_000,
        light: 200,
        backends: vec!["postgres", "sqlite"],
        open_tx: false,
        retention: StoreConfig::default().finished_job_retention,
        job_slots: JOB_SLOTS,
        start_batch: 1,
        claim_batch: CLAIM_BATCH,
        workers: 1,
        orchestration_slots: None,
        activity_slots: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--open-tx" => {
                a.open_tx = true;
                i += 1;
                continue;
            }
            "--n" => a.n = value.parse().expect("--n N"),
            "--jobs" => a.jobs = value.parse().expect("--jobs N"),
            "--light" => a.light = value.parse().expect("--light N"),
            "--job-slots" => a.job_slots = value.parse().expect("--job-slots N"),
            "--claim-batch" => a.claim_batch = value.parse().expect("--claim-batch N"),
            "--workers" => a.workers = value.parse().expect("--workers N"),
            "--start-batch" => a.start_batch = value.parse().expect("--start-batch N"),
            "--orchestration-slots" => {
                a.orchestration_slots = Some(value.parse().expect("--orchestration-slots N"))
            }
            "--activity-slots" => {
                a.activity_slots = Some(value.parse().expect("--activity-slots N"))
            }
            "--retention" => {
                a.retention = Duration::from_secs(value.parse().expect("--retention SECS"))
            }
            "--backend" => {
                a.backends = match value.as_str() {
                    "postgres" => vec!["postgres"],
                    "sqlite" => vec!["sqlite"],
                    _ => vec!["postgres", "sqlite"],
                }
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

async fn start_worker(
    store: &Arc<dyn Store>,
    waits: tokio::sync::mpsc::UnboundedSender<Duration>,
    a: &Args,
    workflows: bool,
) -> quark_worker::RunningWorker {
    let mut builder = Worker::builder().store(Arc::clone(store));
    if workflows {
        builder = builder.workflows(Registry::new().register(three_steps).register(noop));
        if let Some(n) = a.orchestration_slots {
            builder = builder.concurrency(TaskKind::Orchestration, n);
        }
        if let Some(n) = a.activity_slots {
            builder = builder.concurrency(TaskKind::Activity, n);
        }
    }
    builder
        .handle(
            TaskKind::Job,
            move |task: quark_history::ClaimedTask, cx: quark_worker::TaskContext| {
                let waits = waits.clone();
                async move {
                    let _ = waits.send(cx.store().config().clock.now().since(task.created_at));
                    Ok(quark_worker::Handled::Commit(
                        Commit::new().complete(task.lease.clone()),
                    ))
                }
            },
            a.job_slots,
        )
        .claim_batch(a.claim_batch)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap()
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

async fn completed(
    store: &dyn Store,
    created_from: quark_history::Timestamp,
) -> Vec<quark_history::InstanceRecord> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_instances(InstanceFilter {
                statuses: vec![InstanceStatus::Completed],
                created_from: Some(created_from),
                after: after.clone(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            return all;
        }
        after = page.last().map(|i| (i.created_at, i.id.clone()));
        all.extend(page);
    }
}

/// Whether any instance is still running: one index probe, so that waiting for the load to finish
/// does not compete with it (listing every running instance did, for a seventh of a core).
async fn any_running(store: &dyn Store) -> bool {
    !store
        .list_instances(InstanceFilter {
            statuses: vec![InstanceStatus::Running],
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
}

struct Row {
    backend: &'static str,
    workload: String,
    rate: String,
    p50: f64,
    p99: f64,
}

/// Jobs per second.
struct Drain {
    enqueued: f64,
    drained: f64,
}

/// Bulk-enqueues `jobs` no-op jobs in commits of 5,000, then times the worker emptying the queue.
async fn drain(store: &dyn Store, jobs: u64) -> Drain {
    let enqueue_started = Instant::now();
    let mut left = jobs;
    while left > 0 {
        let chunk = left.min(5_000);
        let tasks = (0..chunk)
            .map(|_| NewTask::new(TaskKind::Job, "default"))
            .collect();
        store.enqueue(tasks).await.unwrap();
        left -= chunk;
    }
    let enqueued = enqueue_started.elapsed();
    let drain_started = Instant::now();
    loop {
        let stats = store.queue_stats("default").await.unwrap();
        if stats.pending == 0 && stats.leased == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Drain {
        enqueued: jobs as f64 / enqueued.as_secs_f64(),
        drained: jobs as f64 / drain_started.elapsed().as_secs_f64(),
    }
}

/// How far behind the transaction of backend `pid` holds the xmin horizon, in transactions (from
/// a connection of its own: the holder's view of `pg_stat_activity` is frozen by its snapshot).
async fn xmin_age(url: &str, pid: i32) -> Option<i32> {
    let mut observer = PgConnection::connect(url).await.unwrap();
    let age = sqlx::query_scalar("SELECT age(backend_xmin) FROM pg_stat_activity WHERE pid = $1")
        .bind(pid)
        .fetch_optional(&mut observer)
        .await
        .unwrap()
        .flatten();
    let _ = observer.close().await;
    age
}

/// The drain again, while another connection holds a REPEATABLE READ transaction open with a
/// snapshot taken: vacuum can remove no row version that dies meanwhile, so every claimed and
/// completed job leaves dead tuples in the queue table and its indexes for the whole drain (the
/// case that collapses the throughput of queues that update rows in place).
async fn drain_with_open_transaction(store: &dyn Store, url: &str, jobs: u64) -> Drain {
    let mut holder = PgConnection::connect(url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    holder
        .execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .unwrap();
    // The first statement takes the snapshot, which holds the horizon until the transaction ends.
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert!(
        xmin_age(url, pid).await.is_some(),
        "the open transaction holds no snapshot (backend_xmin is null): the measurement would mean nothing"
    );
    eprintln!("[postgres] drain again, a transaction open on backend {pid}");
    let held = drain(store, jobs).await;
    let age = xmin_age(url, pid)
        .await
        .expect("the snapshot was held to the end");
    eprintln!(
        "[postgres] at the end of the drain, the open transaction held the xmin horizon {age} transactions back"
    );
    holder.execute("ROLLBACK").await.unwrap();
    holder.close().await.unwrap();
    held
}

async fn bench(
    backend: &'static str,
    store: Arc<dyn Store>,
    pg_url: Option<&str>,
    a: &Args,
    rows: &mut Vec<Row>,
) {
    let (tx, mut waits) = tokio::sync::mpsc::unbounded_channel();
    let running = start_worker(&store, tx.clone(), a, true).await;
    let client = Client::new(Arc::clone(&store));

    // Light load first, on an idle database: one orchestration at a time.
    let mut light = histogram();
    for i in 0..a.light {
        let handle = three_steps::start(&client, format!("light-{i}"), i)
            .await
            .unwrap();
        let id = handle.id().to_string();
        loop {
            let r = store.get_instance(&id).await.unwrap().unwrap();
            if r.status.is_closed() {
                light
                    .record(r.updated_at.since(r.created_at).as_micros() as u64)
                    .unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    // Where the time of one orchestration goes: the gap before each journaled event.
    let last = format!("light-{}", a.light.saturating_sub(1));
    let timeline = store
        .read_history(&last, quark_history::HistoryRange::All)
        .await
        .unwrap();
    let steps: Vec<String> = timeline
        .windows(2)
        .map(|w| {
            let gap = w[1].recorded_at.since(w[0].recorded_at).as_micros() as u64;
            format!("{} +{:.2}ms", w[1].event.kind(), ms(gap))
        })
        .collect();
    eprintln!(
        "[{backend}] one orchestration at light load: {}",
        steps.join(", ")
    );
    rows.push(Row {
        backend,
        workload: format!(
            "{} orchestrations one at a time (start to completion)",
            a.light
        ),
        rate: "-".into(),
        p50: ms(light.value_at_quantile(0.5)),
        p99: ms(light.value_at_quantile(0.99)),
    });

    // The same as the caller sees it: from `start` to `result` returning, one at a time.
    let mut awaited = histogram();
    for i in 0..a.light {
        let began = Instant::now();
        let handle = three_steps::start(&client, format!("awaited-{i}"), i)
            .await
            .unwrap();
        handle.result().await.unwrap();
        awaited.record(began.elapsed().as_micros() as u64).unwrap();
    }
    rows.push(Row {
        backend,
        workload: format!(
            "{} orchestrations one at a time (start to Client::result returning)",
            a.light
        ),
        rate: "-".into(),
        p50: ms(awaited.value_at_quantile(0.5)),
        p99: ms(awaited.value_at_quantile(0.99)),
    });

    // Enqueue to start, at light load: one job at a time, idle worker.
    let mut e2s = histogram();
    for _ in 0..a.light {
        store
            .enqueue(vec![NewTask::new(TaskKind::Job, "default")])
            .await
            .unwrap();
        let waited = waits.recv().await.unwrap();
        e2s.record(waited.as_micros().max(1) as u64).unwrap();
        // Let the worker go idle again, as at light load.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    rows.push(Row {
        backend,
        workload: format!(
            "{} tasks enqueued one at a time (enqueue to start)",
            a.light
        ),
        rate: "-".into(),
        p50: ms(e2s.value_at_quantile(0.5)),
        p99: ms(e2s.value_at_quantile(0.99)),
    });
    // Throughput: start N orchestrations from 8 concurrent clients, wait for all to complete.
    eprintln!("[{backend}] {} orchestrations of 3 activities", a.n);
    let t0 = store.config().clock.now();
    let started = Instant::now();
    let mut starters = Vec::new();
    for c in 0..8u64 {
        let client = client.clone();
        let (n, batch) = (a.n, a.start_batch);
        starters.push(tokio::spawn(async move {
            let mut i = c;
            while i < n {
                if batch <= 1 {
                    three_steps::start(&client, format!("load-{i}"), i)
                        .await
                        .unwrap();
                    i += 8;
                    continue;
                }
                let mut starts = Vec::new();
                while i < n && (starts.len() as u64) < batch {
                    starts.push((format!("load-{i}"), i));
                    i += 8;
                }
                client
                    .start_many::<three_steps>(starts, Default::default())
                    .await
                    .unwrap();
            }
        }));
    }
    for s in starters {
        s.await.unwrap();
    }
    let start_secs = started.elapsed().as_secs_f64();
    while any_running(&*store).await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = completed(&*store, t0).await;
    assert_eq!(done.len() as u64, a.n, "every orchestration completed");
    let last = done.iter().map(|i| i.updated_at).max().unwrap();
    let secs = last.since(t0).as_secs_f64();
    let mut lat = histogram();
    for i in &done {
        lat.record(i.updated_at.since(i.created_at).as_micros() as u64)
            .unwrap();
    }
    let m = running.worker().metrics();
    rows.push(Row {
        backend,
        workload: format!(
            "{} orchestrations x 3 activities (start to completion{})",
            a.n,
            if a.start_batch > 1 {
                format!("; started {} per call", a.start_batch)
            } else {
                String::new()
            }
        ),
        rate: format!(
            "{:.0} orch/s, {:.0} steps/s (starts alone: {:.0}/s)",
            a.n as f64 / secs,
            (a.n * 7) as f64 / secs,
            a.n as f64 / start_secs
        ),
        p50: ms(lat.value_at_quantile(0.5)),
        p99: ms(lat.value_at_quantile(0.99)),
    });
    eprintln!("[{backend}] worker counters: {m:?}");

    // Drain: bulk-enqueue no-op jobs, then time the worker emptying the queue.
    let mut extra = Vec::new();
    for _ in 1..a.workers {
        extra.push(start_worker(&store, tx.clone(), a, false).await);
    }
    eprintln!(
        "[{backend}] drain of {} bulk-enqueued no-op jobs: {} worker(s), {} job slots each, claims of {}",
        a.jobs, a.workers, a.job_slots, a.claim_batch
    );
    let normal = drain(&*store, a.jobs).await;
    rows.push(Row {
        backend,
        workload: format!(
            "{} no-op jobs bulk-enqueued, then drained ({} worker(s) x {} slots, claims of {})",
            a.jobs, a.workers, a.job_slots, a.claim_batch
        ),
        rate: format!(
            "{:.0} jobs/s drained (enqueue: {:.0} jobs/s)",
            normal.drained, normal.enqueued
        ),
        p50: f64::NAN,
        p99: f64::NAN,
    });
    if a.open_tx {
        match pg_url {
            Some(url) => {
                let held = drain_with_open_transaction(&*store, url, a.jobs).await;
                // Once more without the open transaction, so that the held drain is compared
                // with drains on either side of it, not only with the first (which ran on a
                // table not yet churned).
                let after = drain(&*store, a.jobs).await;
                let baseline = (normal.drained + after.drained) / 2.0;
                let ratio = held.drained / baseline;
                eprintln!(
                    "[{backend}] drain: {:.0} jobs/s before and {:.0} after, {:.0} jobs/s with a \
                     transaction open on another connection in between: {:.0}% of their mean",
                    normal.drained,
                    after.drained,
                    held.drained,
                    ratio * 100.0
                );
                rows.push(Row {
                    backend,
                    workload: format!(
                        "{} no-op jobs drained while another connection holds a transaction open",
                        a.jobs
                    ),
                    rate: format!(
                        "{:.0} jobs/s drained, {:.0}% of the mean of the drains before and after it (enqueue: {:.0} jobs/s)",
                        held.drained,
                        ratio * 100.0,
                        held.enqueued
                    ),
                    p50: f64::NAN,
                    p99: f64::NAN,
                });
            }
            None => eprintln!("[{backend}] --open-tx is a PostgreSQL measurement; skipped"),
        }
    }
    for w in extra {
        w.shutdown().await;
    }
    running.shutdown().await;
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let a = args();
    let mut rows = Vec::new();
    for backend in a.backends.clone() {
        match backend {
            "postgres" => {
                let t = quark_history::testing::postgres()
                    .await
                    .expect("PostgreSQL for the benchmark");
                let url = t.database_url().unwrap();
                let store: Arc<dyn Store> = Arc::new(
                    PostgresStore::connect_with(
                        &url,
                        StoreConfig::default().finished_job_retention(a.retention),
                    )
                    .await
                    .unwrap(),
                );
                bench("postgres", store, Some(&url), &a, &mut rows).await;
                t.cleanup().await;
            }
            _ => {
                let dir = std::env::temp_dir().join(format!("quark-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let url = format!("sqlite://{}", dir.join("bench.db").display());
                let config = StoreConfig::default().finished_job_retention(a.retention);
                let store: Arc<dyn Store> =
                    Arc::new(SqliteStore::open_with(&url, config).await.unwrap());
                bench("sqlite", store, None, &a, &mut rows).await;
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    println!(
        "\n| backend | workload | throughput | p50 ms | p99 ms |\n| --- | --- | --- | --- | --- |"
    );
    for r in rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} |",
            r.backend, r.workload, r.rate, r.p50, r.p99
        );
    }
}
