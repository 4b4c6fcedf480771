//! Durable jobs under fire, on PostgreSQL with real worker processes: 10,000 bulk-enqueued jobs
//! drain while workers are killed with SIGKILL at random. Every job must be completed exactly once,
//! none lost and none dead-lettered, and none may run after it was completed. A job whose worker
//! died mid-run runs again (at least once, not exactly once); the test counts those and prints them.
//!
//! The test learns when a job was completed from the database, not from the engine: a trigger
//! records every job row deleted from `tasks` (completing a job deletes its row), stamped by
//! PostgreSQL's clock, the clock the jobs' own run log (`job_runs`) is stamped by.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use quark_tests::{Dice, logged_job};
use quark_workflow::runner::TaskPayload;
use quark_workflow::{Client, JobOptions};
use sqlx::PgPool;

const JOBS: u64 = 10_000;
const WORKERS: usize = 3;
/// How long the drain may take, kills included, before the test fails.
const DRAIN_DEADLINE: Duration = Duration::from_secs(150);

/// The run log, and the trigger that records completions.
const INSTRUMENT: [&str; 4] = [
    quark_tests::JOB_RUNS_DDL,
    "CREATE TABLE job_completions (task_id BIGINT NOT NULL, payload BYTEA NOT NULL, \
     completed_at TIMESTAMPTZ NOT NULL)",
    "CREATE FUNCTION record_job_completion() RETURNS trigger LANGUAGE plpgsql AS $$ \
     BEGIN INSERT INTO job_completions VALUES (OLD.id, OLD.payload, clock_timestamp()); \
     RETURN OLD; END $$",
    "CREATE TRIGGER job_completed AFTER DELETE ON tasks FOR EACH ROW WHEN (OLD.kind = 'job') \
     EXECUTE FUNCTION record_job_completion()",
];

/// Microseconds since the Unix epoch of a `timestamptz` column, as SQL.
fn micros(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000000)::bigint")
}

/// The worker processes. Dropping them (a failed assertion, say) kills them, so that no worker
/// outlives its test.
struct Workers {
    url: String,
    children: Vec<Child>,
}

impl Workers {
    fn start(url: &str, n: usize) -> Self {
        let mut w = Workers {
            url: url.to_string(),
            children: Vec::new(),
        };
        for _ in 0..n {
            w.spawn();
        }
        w
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_crash-worker"))
            .env("QUARK_DATABASE_URL", &self.url)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a crash-worker");
        self.children.push(child);
    }

    /// SIGKILLs worker `i` and starts another in its place.
    fn kill_and_replace(&mut self, i: usize) {
        let mut victim = self.children.swap_remove(i);
        victim.kill().expect("SIGKILL a worker"); // Child::kill is SIGKILL on Unix
        victim.wait().unwrap();
        self.spawn();
    }

    /// SIGTERM to every worker, once each has registered (so it is past its start), then waits for
    /// each to shut down gracefully and exit with success.
    async fn stop(mut self, pool: &PgPool) {
        let registered = async || {
            let labels: Vec<String> = sqlx::query_scalar("SELECT labels FROM workers")
                .fetch_all(pool)
                .await
                .unwrap();
            self.children.iter().all(|c| {
                let pid = format!("\"pid\":\"{}\"", c.id());
                labels.iter().any(|l| l.contains(&pid))
            })
        };
        quark_history::testing::eventually("every worker has registered", registered).await;
        for child in &self.children {
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("run kill -TERM");
            assert!(sent.success(), "kill -TERM {}", child.id());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for child in &mut self.children {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(status.success(), "a worker exited with {status} on SIGTERM");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a worker did not stop within 30 s of SIGTERM"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.children.clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Kills a random worker every 200–600 ms, and starts a replacement, until no job is left in
/// `tasks`. Returns the number of kills.
async fn drain_under_fire(pool: &PgPool, workers: &mut Workers) -> u32 {
    let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
    let mut dice = Dice(0x2545_F491_4F6C_DD1D);
    let mut kills = 0;
    loop {
        let left = count(pool, "SELECT count(*) FROM tasks WHERE kind = 'job'").await;
        if left == 0 {
            return kills;
        }
        if tokio::time::Instant::now() >= deadline {
            let completed = count(pool, "SELECT count(*) FROM job_completions").await;
            let runs = count(pool, "SELECT count(*) FROM job_runs").await;
            panic!(
                "{left} of {JOBS} jobs still queued after {DRAIN_DEADLINE:?} \
                 ({completed} completions, {runs} runs, {kills} workers killed)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200 + dice.roll(400) as u64)).await;
        let victim = dice.roll(workers.children.len());
        workers.kill_and_replace(victim);
        kills += 1;
    }
}

/// Up to ten items of a list of offenders, for an assertion message.
fn some<T: std::fmt::Debug>(items: &[T]) -> String {
    format!(
        "{} in all, first ones: {:?}",
        items.len(),
        &items[..items.len().min(10)]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_completes_once_and_never_runs_after_while_workers_are_killed() {
    let Some(_one_at_a_time) = crate::support::slow_suite("job crash loop").await else {
        return;
    };
    let Some(t) = quark_history::testing::postgres().await else {
        return;
    };
    let url = t.database_url().unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    for sql in INSTRUMENT {
        t.execute(sql).await;
    }
    let client = Client::new(Arc::clone(&t.store));
    let mut enqueued = 0;
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(2_500) {
        let ids = client
            .enqueue_many::<logged_job>(chunk.to_vec(), JobOptions::default())
            .await
            .unwrap();
        enqueued += ids.len() as u64;
    }
    assert_eq!(enqueued, JOBS);

    let started = tokio::time::Instant::now();
    let mut workers = Workers::start(&url, WORKERS);
    let kills = drain_under_fire(&pool, &mut workers).await;
    let drained = started.elapsed();
    workers.stop(&pool).await;
    assert!(
        kills >= 5,
        "the test killed {kills} workers; it proves little below 5"
    );

    // Nothing dead-lettered, nothing left behind.
    let dead: Vec<(i64, String)> = sqlx::query_as("SELECT id, error FROM dead_tasks")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(dead.is_empty(), "dead-lettered jobs: {}", some(&dead));
    assert_eq!(count(&pool, "SELECT count(*) FROM tasks").await, 0);

    // Completed exactly once each.
    let rows: Vec<(i64, Vec<u8>, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT task_id, payload, {} FROM job_completions",
        micros("completed_at")
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut completed: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for (task_id, payload, at) in rows {
        let Ok(TaskPayload::Job(job)) = TaskPayload::from_bytes(&payload) else {
            panic!("task {task_id}: not a job payload");
        };
        let n: u64 = job.input.decode().unwrap();
        completed.entry(n).or_default().push(at);
    }
    let lost: Vec<u64> = (0..JOBS).filter(|n| !completed.contains_key(n)).collect();
    assert!(lost.is_empty(), "jobs never completed: {}", some(&lost));
    let twice: Vec<(&u64, usize)> = completed
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(n, at)| (n, at.len()))
        .collect();
    assert!(twice.is_empty(), "jobs completed twice: {}", some(&twice));
    assert_eq!(completed.len() as u64, JOBS, "completions of unknown jobs");

    // Ran at least once, each run under its own attempt, and none after the job was completed.
    let rows: Vec<(i64, i32, i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT job, attempt, pid, {} FROM job_runs ORDER BY job, started_at",
        micros("started_at")
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    let total_runs = rows.len();
    let mut runs: BTreeMap<u64, Vec<(i32, i32, i64)>> = BTreeMap::new();
    for (job, attempt, pid, at) in rows {
        runs.entry(job as u64).or_default().push((attempt, pid, at));
    }
    let never_ran: Vec<u64> = (0..JOBS).filter(|n| !runs.contains_key(n)).collect();
    assert!(
        never_ran.is_empty(),
        "completed without a run: {}",
        some(&never_ran)
    );
    let mut late = Vec::new();
    let mut same_attempt = Vec::new();
    for (job, job_runs) in &runs {
        let done = completed[job][0];
        for &(attempt, pid, at) in job_runs {
            if at >= done {
                late.push(format!(
                    "job {job} attempt {attempt} (pid {pid}) started {} µs after its completion",
                    at - done
                ));
            }
        }
        let mut attempts: Vec<i32> = job_runs.iter().map(|r| r.0).collect();
        attempts.sort_unstable();
        attempts.dedup();
        if attempts.len() < job_runs.len() {
            same_attempt.push((*job, job_runs.clone()));
        }
    }
    assert!(late.is_empty(), "runs after completion: {}", some(&late));
    assert!(
        same_attempt.is_empty(),
        "two runs under one attempt (one lease claimed twice): {}",
        some(&same_attempt)
    );

    let again = runs.values().filter(|r| r.len() > 1).count();
    let most = runs.values().map(Vec::len).max().unwrap_or(0);
    eprintln!(
        "job crash loop: {JOBS} jobs drained in {:.1} s by {WORKERS} workers, {kills} killed with \
         SIGKILL; {total_runs} runs, {again} jobs ran more than once (at most {most} times)",
        drained.as_secs_f64()
    );
    pool.close().await;
    t.cleanup().await;
}
