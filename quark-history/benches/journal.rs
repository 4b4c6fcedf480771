//! Journal and queue throughput and latency on both backends, with a raw PostgreSQL baseline.
//!
//! ```text
//! cargo bench -p quark-history --bench journal
//! cargo bench -p quark-history --bench journal -- --appends 20000 --backend postgres
//! QUARK_BENCH_TASKS=10000 cargo bench -p quark-history --bench journal
//! ```
//!
//! Workloads, on SQLite (a file in a temporary directory, WAL, `synchronous=NORMAL`) and on
//! PostgreSQL (a fresh database from `quark_history::testing::postgres()`), both with the real
//! system clock:
//!
//! - **append, 1 event per commit**: `Commit::new().append(id, Expected::Any, [event])`, from one
//!   task on one instance, then from `--concurrency` tasks each on its own instance;
//! - **append, batched**: `--batch` events per commit, from one task;
//! - **enqueue**: `--tasks` activity tasks in commits of `--enqueue-chunk`;
//! - **claim + complete**: `--workers` loops claim batches of up to `--claim-limit` and complete
//!   each task in a commit of its own;
//! - **baseline**: `pgbench` running a one-row `INSERT` per transaction (autocommit, prepared) into
//!   a table of the same database, in the same invocation: before each PostgreSQL workload, a
//!   pgbench run with the same number of clients, so each ratio compares runs seconds apart. The
//!   same `INSERT` is also timed through sqlx, the driver Quark uses.
//!
//! Latency is per commit (per call for claims), recorded in microseconds with hdrhistogram. The
//! report is a markdown table on stdout; progress goes to stderr.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use hdrhistogram::Histogram;
use quark_history::{
    ClaimRequest, CodecTag, Commit, Expected, HistoryEvent, IdReusePolicy, NewInstance, NewTask,
    Payload, PostgresStore, SqliteStore, Store, StoreConfig, TaskKind, Timestamp, testing,
};

/// A progress line on stderr, stamped with the UTC time of day (to line up with other logs).
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("{} {}", utc_time_of_day(), format_args!($($arg)*))
    };
}

fn utc_time_of_day() -> String {
    let micros = Timestamp::now().as_micros().max(0) as u64;
    let secs = micros / 1_000_000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        micros / 1000 % 1000
    )
}

/// The monotonic clock latencies are measured with. The workspace's clippy.toml bans
/// `Instant::now` outside clocks, and says benchmarks may allow it: this is the one place.
#[allow(clippy::disallowed_methods)]
fn stopwatch() -> Instant {
    Instant::now()
}

const USAGE: &str = "\
usage: cargo bench -p quark-history --bench journal [-- OPTIONS]

Every option can also be set by environment variable QUARK_BENCH_<NAME> (upper case, `-` as `_`),
e.g. QUARK_BENCH_APPENDS=20000. Command-line options win.

  --appends N         single-event appends per append test, and baseline transactions  [5000]
  --concurrency N     tasks (and pgbench clients) in the concurrent append test         [8]
  --batch N           events per commit in the batched append test                      [50]
  --batch-commits N   commits in the batched append test                                [200]
  --tasks N           activity tasks enqueued, then claimed and completed               [5000]
  --enqueue-chunk N   tasks per enqueue commit                                          [500]
  --workers N         concurrent claim + complete loops                                 [4]
  --claim-limit N     tasks per claim                                                   [64]
  --warmup N          untimed appends before the timed ones, per backend                [400]
  --backend B         sqlite, postgres or both                                          [both]
  --help              this text

PostgreSQL: QUARK_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) names the
server; a fresh database is created on it and dropped at the end. pgbench is looked up in
QUARK_BENCH_PGBENCH, then PATH, then /usr/lib/postgresql/*/bin.";

// -- configuration ----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Config {
    appends: u64,
    concurrency: usize,
    batch: usize,
    batch_commits: u64,
    tasks: u64,
    enqueue_chunk: usize,
    workers: usize,
    claim_limit: u32,
    warmup: u64,
    sqlite: bool,
    postgres: bool,
}

impl Config {
    fn from_env_and_args() -> Result<Config> {
        let mut cfg = Config {
            appends: 5_000,
            concurrency: 8,
            batch: 50,
            batch_commits: 200,
            tasks: 5_000,
            enqueue_chunk: 500,
            workers: 4,
            claim_limit: 64,
            warmup: 400,
            sqlite: true,
            postgres: true,
        };
        let names = [
            "appends",
            "concurrency",
            "batch",
            "batch-commits",
            "tasks",
            "enqueue-chunk",
            "workers",
            "claim-limit",
            "warmup",
            "backend",
        ];
        for name in names {
            let var = format!("QUARK_BENCH_{}", name.to_uppercase().replace('-', "_"));
            if let Ok(value) = std::env::var(&var) {
                cfg.set(name, &value)
                    .with_context(|| format!("in ${var}"))?;
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` passes `--bench`; a bare word would be a name filter, which this
            // binary does not have.
            if arg == "--bench" || !arg.starts_with("--") {
                continue;
            }
            let (name, value) = match arg[2..].split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| anyhow!("{arg} needs a value\n\n{USAGE}"))?;
                    (arg[2..].to_string(), value)
                }
            };
            if !names.contains(&name.as_str()) {
                bail!("unknown option --{name}\n\n{USAGE}");
            }
            cfg.set(&name, &value)
                .with_context(|| format!("in --{name}"))?;
        }
        ensure!(
            cfg.appends > 0
                && cfg.concurrency > 0
                && cfg.batch > 0
                && cfg.batch_commits > 0
                && cfg.tasks > 0
                && cfg.enqueue_chunk > 0
                && cfg.workers > 0
                && cfg.claim_limit > 0,
            "sizes must be positive"
        );
        ensure!(
            cfg.appends >= cfg.concurrency as u64,
            "--appends must be at least --concurrency"
        );
        Ok(cfg)
    }

    fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let n = || -> Result<u64> {
            value
                .trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|e| anyhow!("`{value}`: {e}"))
        };
        match name {
            "appends" => self.appends = n()?,
            "concurrency" => self.concurrency = n()? as usize,
            "batch" => self.batch = n()? as usize,
            "batch-commits" => self.batch_commits = n()?,
            "tasks" => self.tasks = n()?,
            "enqueue-chunk" => self.enqueue_chunk = n()? as usize,
            "workers" => self.workers = n()? as usize,
            "claim-limit" => self.claim_limit = u32::try_from(n()?)?,
            "warmup" => self.warmup = n()?,
            "backend" => match value {
                "sqlite" => (self.sqlite, self.postgres) = (true, false),
                "postgres" => (self.sqlite, self.postgres) = (false, true),
                "both" => (self.sqlite, self.postgres) = (true, true),
                _ => bail!("`{value}`: expected sqlite, postgres or both"),
            },
            _ => bail!("unknown option {name}"),
        }
        Ok(())
    }

    /// Per-client operation counts for `clients` clients sharing `total` operations.
    fn split(total: u64, clients: usize) -> u64 {
        (total / clients as u64).max(1)
    }
}

// -- measurements -----------------------------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<()> {
    into.add(from)
        .map_err(|e| anyhow!("merging histograms: {e:?}"))
}

/// A measured run: what was done, in how long, at what latency.
#[derive(Debug)]
struct Measure {
    clients: usize,
    /// Operations done (commits, events or tasks, per `unit`).
    ops: u64,
    unit: &'static str,
    /// Write transactions committed.
    commits: u64,
    secs: f64,
    /// Latency per commit (per call for claims), µs.
    hist: Histogram<u64>,
}

impl Measure {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn commits_per_sec(&self) -> f64 {
        self.commits as f64 / self.secs
    }

    fn p50(&self) -> u64 {
        self.hist.value_at_quantile(0.50)
    }

    fn p99(&self) -> u64 {
        self.hist.value_at_quantile(0.99)
    }
}

/// One line of the report.
#[derive(Debug)]
struct Row {
    backend: &'static str,
    workload: String,
    measure: Measure,
    /// Only the latencies mean something (the claim calls of the claim + complete run, whose
    /// wall time is the complete commits').
    latency_only: bool,
    /// The pgbench run made just before this one, with the same number of clients (PostgreSQL).
    baseline: Option<Arc<Measure>>,
}

/// Runs `op(client, i)` for `i` in `0..per_client` from `clients` concurrent tasks, timing each
/// call. Returns the wall time of the whole run and the merged latencies.
async fn timed<F, Fut>(clients: usize, per_client: u64, op: F) -> Result<(f64, Histogram<u64>)>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let start = stopwatch();
    let mut handles = Vec::with_capacity(clients);
    for client in 0..clients {
        let op = Arc::clone(&op);
        handles.push(tokio::spawn(async move {
            let mut hist = histogram();
            for i in 0..per_client {
                let t0 = stopwatch();
                op(client, i).await?;
                hist.saturating_record(micros(t0.elapsed()));
            }
            Ok::<_, anyhow::Error>(hist)
        }));
    }
    let mut hist = histogram();
    for handle in handles {
        merge(&mut hist, &handle.await??)?;
    }
    Ok((start.elapsed().as_secs_f64(), hist))
}

// -- the workloads ----------------------------------------------------------------------------------

/// The event appended by the append tests: an activity result with a small JSON output.
fn event(command: u64) -> HistoryEvent {
    HistoryEvent::ActivityCompleted {
        command,
        output: Payload::json(&activity_output(command)).expect("json payload"),
        attempt: 1,
    }
}

fn activity_output(command: u64) -> String {
    format!("order {command:08} charged: 42.00 EUR, receipt r-{command:08}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// One event per commit, one task, one instance.
    AppendSequential,
    /// One event per commit, `concurrency` tasks, one instance each.
    AppendConcurrent,
    /// `batch` events per commit, one task.
    AppendBatched,
    /// Activity tasks in bulk.
    Enqueue,
    /// `workers` loops claiming batches and completing each task in its own commit.
    ClaimComplete,
}

impl Workload {
    const ALL: [Workload; 5] = [
        Workload::AppendSequential,
        Workload::AppendConcurrent,
        Workload::AppendBatched,
        Workload::Enqueue,
        Workload::ClaimComplete,
    ];

    fn clients(self, cfg: &Config) -> usize {
        match self {
            Workload::AppendConcurrent => cfg.concurrency,
            Workload::ClaimComplete => cfg.workers,
            _ => 1,
        }
    }
}

/// A store under test.
#[derive(Debug, Clone)]
struct Target {
    store: Arc<dyn Store>,
    backend: &'static str,
}

impl Target {
    fn conc_id(client: usize) -> String {
        format!("conc-{client}")
    }

    fn warm_id(client: usize) -> String {
        format!("warm-{client}")
    }

    /// Creates the instances the workloads append to and warms the connections up, untimed.
    async fn prepare(&self, cfg: &Config) -> Result<()> {
        let c = cfg.concurrency;
        let ids = (0..c)
            .flat_map(|i| [Self::conc_id(i), Self::warm_id(i)])
            .chain(["seq".to_string(), "batch".to_string()]);
        for id in ids {
            self.store
                .create_instance(
                    NewInstance::new(id, "bench", Payload::json(&"input")?),
                    IdReusePolicy::RejectDuplicate,
                )
                .await?;
        }
        progress!(
            "[{}] warm-up: {} appends from {c} tasks",
            self.backend,
            cfg.warmup
        );
        let store = Arc::clone(&self.store);
        timed(c, Config::split(cfg.warmup, c), move |client, i| {
            let store = Arc::clone(&store);
            async move {
                let commit = Commit::new().append(Self::warm_id(client), Expected::Any, [event(i)]);
                store.commit(commit).await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    /// Runs one workload; returns its rows (two for claim + complete).
    async fn run(&self, cfg: &Config, workload: Workload) -> Result<Vec<Row>> {
        let backend = self.backend;
        let row = |workload: String, measure: Measure| Row {
            backend,
            workload,
            measure,
            latency_only: false,
            baseline: None,
        };
        let store = Arc::clone(&self.store);
        match workload {
            Workload::AppendSequential => {
                let n = cfg.appends;
                progress!("[{backend}] append x1, 1 task: {n} commits");
                let (secs, hist) = timed(1, n, move |_, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let commit = Commit::new().append("seq", Expected::Any, [event(i)]);
                        store.commit(commit).await?;
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: 1,
                    ops: n,
                    unit: "commits/s",
                    commits: n,
                    secs,
                    hist,
                };
                Ok(vec![row("append, 1 event/commit".into(), measure)])
            }
            Workload::AppendConcurrent => {
                let c = cfg.concurrency;
                let per = Config::split(cfg.appends, c);
                let n = per * c as u64;
                progress!("[{backend}] append x1, {c} tasks: {n} commits");
                let (secs, hist) = timed(c, per, move |client, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let commit =
                            Commit::new().append(Self::conc_id(client), Expected::Any, [event(i)]);
                        store.commit(commit).await?;
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: c,
                    ops: n,
                    unit: "commits/s",
                    commits: n,
                    secs,
                    hist,
                };
                Ok(vec![row("append, 1 event/commit".into(), measure)])
            }
            Workload::AppendBatched => {
                let batch = cfg.batch as u64;
                let commits = cfg.batch_commits;
                progress!("[{backend}] append x{batch}, 1 task: {commits} commits");
                let (secs, hist) = timed(1, commits, move |_, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let events = (0..batch).map(|k| event(i * batch + k));
                        let commit = Commit::new().append("batch", Expected::Any, events);
                        store.commit(commit).await?;
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: 1,
                    ops: commits * batch,
                    unit: "events/s",
                    commits,
                    secs,
                    hist,
                };
                Ok(vec![row(format!("append, {batch} events/commit"), measure)])
            }
            Workload::Enqueue => {
                let chunk = cfg.enqueue_chunk as u64;
                let total = cfg.tasks;
                let chunks = total.div_ceil(chunk);
                progress!("[{backend}] enqueue: {total} activity tasks in commits of {chunk}");
                let (secs, hist) = timed(1, chunks, move |_, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let n = chunk.min(total - i * chunk);
                        let tasks = (0..n)
                            .map(|k| {
                                let body =
                                    format!(r#"{{"activity":"charge","n":{}}}"#, i * chunk + k);
                                NewTask::new(TaskKind::Activity, "bench")
                                    .instance("seq")
                                    .payload(body.into_bytes())
                            })
                            .collect();
                        let ids = store.enqueue(tasks).await?;
                        ensure!(ids.len() as u64 == n, "enqueued {} of {n}", ids.len());
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: 1,
                    ops: total,
                    unit: "tasks/s",
                    commits: chunks,
                    secs,
                    hist,
                };
                Ok(vec![row(format!("enqueue, {chunk} tasks/commit"), measure)])
            }
            Workload::ClaimComplete => self.claim_complete(cfg).await,
        }
    }

    async fn claim_complete(&self, cfg: &Config) -> Result<Vec<Row>> {
        let backend = self.backend;
        let workers = cfg.workers;
        let limit = cfg.claim_limit;
        let total = cfg.tasks;
        let before = self.store.queue_stats("bench").await?;
        ensure!(
            before.pending == total,
            "[{backend}] expected {total} pending tasks, found {before:?}"
        );
        progress!("[{backend}] claim (<= {limit}) + complete, {workers} workers: {total} tasks");
        let start = stopwatch();
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let store = Arc::clone(&self.store);
            handles.push(tokio::spawn(async move {
                let mut claim_hist = histogram();
                let mut complete_hist = histogram();
                let mut claims = 0u64;
                let worker = format!("bench-worker-{w}");
                loop {
                    let t0 = stopwatch();
                    let request = ClaimRequest::new(worker.as_str(), ["bench"])
                        .kinds([TaskKind::Activity])
                        .limit(limit);
                    let batch = store.claim(request).await?;
                    claim_hist.saturating_record(micros(t0.elapsed()));
                    claims += 1;
                    // Leases last 30 s and nothing fails, so an empty claim means every remaining
                    // task is held by another worker: this one is done.
                    if batch.is_empty() {
                        break;
                    }
                    for task in batch {
                        let t0 = stopwatch();
                        store.commit(Commit::new().complete(task.lease)).await?;
                        complete_hist.saturating_record(micros(t0.elapsed()));
                    }
                }
                Ok::<_, anyhow::Error>((claims, claim_hist, complete_hist))
            }));
        }
        let (mut claims, mut claim_hist, mut complete_hist) = (0, histogram(), histogram());
        for handle in handles {
            let (n, claimed, completed) = handle.await??;
            claims += n;
            merge(&mut claim_hist, &claimed)?;
            merge(&mut complete_hist, &completed)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let completed = complete_hist.len();
        ensure!(
            completed == total,
            "[{backend}] completed {completed} of {total} tasks"
        );
        let after = self.store.queue_stats("bench").await?;
        ensure!(
            after.pending == 0 && after.leased == 0,
            "[{backend}] tasks left on the queue: {after:?}"
        );
        Ok(vec![
            Row {
                backend,
                workload: "claim + complete: complete commit".into(),
                measure: Measure {
                    clients: workers,
                    ops: completed,
                    unit: "tasks/s",
                    commits: completed,
                    secs,
                    hist: complete_hist,
                },
                latency_only: false,
                baseline: None,
            },
            Row {
                backend,
                workload: format!("claim + complete: claim call (<= {limit})"),
                measure: Measure {
                    clients: workers,
                    ops: claims,
                    unit: "claims/s",
                    commits: claims,
                    secs,
                    hist: claim_hist,
                },
                latency_only: true,
                baseline: None,
            },
        ])
    }
}

// -- the backends -----------------------------------------------------------------------------------

async fn run_sqlite(cfg: &Config) -> Result<Vec<Row>> {
    let dir = scratch_dir()?;
    let path = dir.join("bench.db");
    progress!("[sqlite] file {}", path.display());
    let result = async {
        let store = SqliteStore::open(&path).await?;
        let target = Target {
            store: Arc::new(store.clone()),
            backend: "sqlite",
        };
        let mut rows = Vec::new();
        target.prepare(cfg).await?;
        for workload in Workload::ALL {
            rows.extend(target.run(cfg, workload).await?);
        }
        store.close().await;
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        progress!("[sqlite] could not remove {}: {e}", dir.display());
    }
    result
}

fn scratch_dir() -> Result<PathBuf> {
    let stamp = Timestamp::now().as_micros();
    let dir = std::env::temp_dir().join(format!("quark-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn run_postgres(cfg: &Config) -> Result<Vec<Row>> {
    let Some(t) = testing::postgres().await else {
        progress!("[postgres] skipped: PostgreSQL is unreachable (see above)");
        return Ok(Vec::new());
    };
    let result = async {
        let url = t
            .database_url()
            .ok_or_else(|| anyhow!("the test store has no database url"))?;
        progress!("[postgres] database {url}");
        let baseline = Baseline::new(cfg, &t, &url).await?;
        // The test store runs on a manual clock; the benchmark wants the real one.
        let store = PostgresStore::connect_with(&url, StoreConfig::default()).await?;
        let target = Target {
            store: Arc::new(store.clone()),
            backend: "postgres",
        };
        let mut rows = Vec::new();
        target.prepare(cfg).await?;
        // Each workload right after a pgbench run with as many clients, so that both see the same
        // machine (other load, checkpoints) as far as possible.
        for workload in Workload::ALL {
            let paired = baseline.pgbench(workload.clients(cfg))?;
            for mut row in target.run(cfg, workload).await? {
                row.baseline = paired.clone();
                rows.push(row);
            }
        }
        store.pool().close().await;
        // The same INSERT through sqlx, the driver Quark uses.
        let clients: BTreeSet<usize> = [1, cfg.concurrency].into();
        for clients in clients {
            let paired = baseline.pgbench(clients)?;
            let mut row = baseline.sqlx(clients).await?;
            row.baseline = paired;
            rows.push(row);
        }
        baseline.finish();
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    t.cleanup().await;
    result
}

/// The raw one-row INSERT transaction, by pgbench and by sqlx.
#[derive(Debug)]
struct Baseline<'a> {
    t: &'a testing::TestStore,
    url: String,
    insert: Arc<String>,
    transactions: u64,
    pgbench: Option<PathBuf>,
    dir: PathBuf,
    script: PathBuf,
}

impl<'a> Baseline<'a> {
    async fn new(cfg: &Config, t: &'a testing::TestStore, url: &str) -> Result<Baseline<'a>> {
        // A row the size of an encoded append event.
        let payload_len = CodecTag::Json.encode(&event(1))?.len();
        t.execute(
            "CREATE TABLE bench_raw (id BIGSERIAL PRIMARY KEY, instance_id TEXT NOT NULL, payload BYTEA NOT NULL)",
        )
        .await;
        let insert = format!(
            "INSERT INTO bench_raw (instance_id, payload) VALUES ('bench', '{}')",
            "x".repeat(payload_len)
        );
        let dir = scratch_dir()?;
        let script = dir.join("insert.sql");
        std::fs::write(&script, format!("{insert};\n"))?;
        let pgbench = find_pgbench();
        match &pgbench {
            Some(path) => progress!(
                "[postgres] baseline: {} running `INSERT ... ({payload_len} B payload)`",
                path.display()
            ),
            None => progress!(
                "[postgres] baseline SKIPPED: pgbench not found (set QUARK_BENCH_PGBENCH to its path)"
            ),
        }
        Ok(Baseline {
            t,
            url: url.to_string(),
            insert: Arc::new(insert),
            transactions: cfg.appends,
            pgbench,
            dir,
            script,
        })
    }

    fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A pgbench run with `clients` clients, or `None` without pgbench.
    fn pgbench(&self, clients: usize) -> Result<Option<Arc<Measure>>> {
        let Some(pgbench) = &self.pgbench else {
            return Ok(None);
        };
        let per = Config::split(self.transactions, clients);
        progress!(
            "[postgres] baseline: pgbench, {clients} clients, {} transactions",
            per * clients as u64
        );
        let measure = tokio::task::block_in_place(|| {
            pgbench_run(pgbench, &self.url, &self.dir, &self.script, clients, per)
        })?;
        progress!(
            "[postgres]   pgbench: {:.0} tx/s, p50 {} µs, p99 {} µs",
            measure.commits_per_sec(),
            measure.p50(),
            measure.p99()
        );
        Ok(Some(Arc::new(measure)))
    }

    /// The same INSERT through sqlx, on the test store's pool.
    async fn sqlx(&self, clients: usize) -> Result<Row> {
        let per = Config::split(self.transactions, clients);
        progress!(
            "[postgres] raw INSERT through sqlx, {clients} clients, {} transactions",
            per * clients as u64
        );
        // `TestStore::execute` borrows the test store, so the clients are futures polled together
        // on this task rather than spawned tasks. Untimed warm-up first: open the connections.
        join_all((0..clients).map(|_| self.t.execute(&self.insert))).await;
        let start = stopwatch();
        let hists = join_all((0..clients).map(|_| async move {
            let mut hist = histogram();
            for _ in 0..per {
                let t0 = stopwatch();
                self.t.execute(&self.insert).await;
                hist.saturating_record(micros(t0.elapsed()));
            }
            hist
        }))
        .await;
        let secs = start.elapsed().as_secs_f64();
        let mut hist = histogram();
        for h in &hists {
            merge(&mut hist, h)?;
        }
        Ok(Row {
            backend: "postgres",
            workload: "raw 1-row INSERT via sqlx (no Quark)".into(),
            measure: Measure {
                clients,
                ops: per * clients as u64,
                unit: "commits/s",
                commits: per * clients as u64,
                secs,
                hist,
            },
            latency_only: false,
            baseline: None,
        })
    }
}

/// Polls futures concurrently on the current task and collects their outputs in order.
async fn join_all<I, Fut>(futures: I) -> Vec<Fut::Output>
where
    I: IntoIterator<Item = Fut>,
    Fut: Future,
{
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<Fut::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (fut, slot) in futures.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn find_pgbench() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("QUARK_BENCH_PGBENCH") {
        return Some(path.into());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("pgbench");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/pgbench"))
        .filter(|p| p.is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs pgbench with `clients` clients doing `per_client` transactions of `script` each, and reads
/// the throughput from its summary and the latencies from its per-transaction log.
fn pgbench_run(
    pgbench: &Path,
    url: &str,
    dir: &Path,
    script: &Path,
    clients: usize,
    per_client: u64,
) -> Result<Measure> {
    let threads = clients.min(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    );
    // A fresh log directory per run: pgbench names its logs `<prefix>.<pid>[.<thread>]`.
    let logs = dir.join(format!("logs-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&logs)?;
    let output = Command::new(pgbench)
        .args(["-n", "-M", "prepared"])
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={threads}"))
        .arg(format!("--transactions={per_client}"))
        .arg(format!("--file={}", script.display()))
        .arg("--log")
        .arg(format!("--log-prefix={}", logs.join("tx").display()))
        .arg(url)
        .output()
        .with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "pgbench failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let tps: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no `tps = ` line in pgbench's output:\n{stdout}"))?;
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("no transaction count in pgbench's output:\n{stdout}"))?;
    ensure!(
        processed == per_client * clients as u64,
        "pgbench processed {processed} of {} transactions:\n{stdout}",
        per_client * clients as u64
    );

    // Log lines: client_id transaction_no latency_us script_no time_epoch time_us.
    let mut hist = histogram();
    for entry in std::fs::read_dir(&logs)? {
        for line in std::fs::read_to_string(entry?.path())?.lines() {
            let latency = line
                .split_whitespace()
                .nth(2)
                .and_then(|f| f.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("bad pgbench log line `{line}`"))?;
            hist.saturating_record(latency.max(1));
        }
    }
    ensure!(
        hist.len() == processed,
        "pgbench logged {} of {processed} transactions",
        hist.len()
    );
    Ok(Measure {
        clients,
        ops: processed,
        unit: "commits/s",
        commits: processed,
        // pgbench's tps excludes connection set-up, as the Quark runs do (they are warmed up).
        secs: processed as f64 / tps,
        hist,
    })
}

/// Numbers pgbench runs, for their log directories.
static RUNS: AtomicUsize = AtomicUsize::new(0);

// -- the report -------------------------------------------------------------------------------------

fn report(cfg: &Config, rows: &[Row]) {
    println!();
    println!(
        "quark-history journal bench: appends={} concurrency={} batch={}x{} tasks={} \
         (enqueue {}/commit) workers={} claim-limit={} warmup={}",
        cfg.appends,
        cfg.concurrency,
        cfg.batch_commits,
        cfg.batch,
        cfg.tasks,
        cfg.enqueue_chunk,
        cfg.workers,
        cfg.claim_limit,
        cfg.warmup,
    );
    println!();
    println!(
        "| Backend | Workload | Clients | Ops | Throughput | Commits/s | p50 µs | p99 µs \
         | Baseline tx/s | Baseline p50 / p99 µs | Commits/s ÷ baseline | p50 ÷ baseline |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let dash = || "—".to_string();
    for row in rows {
        let m = &row.measure;
        let (throughput, commits) = if row.latency_only {
            (dash(), dash())
        } else {
            (
                format!("{:.0} {}", m.throughput(), m.unit),
                format!("{:.0}", m.commits_per_sec()),
            )
        };
        let (b_tps, b_lat, r_tps, r_p50) = match &row.baseline {
            Some(b) => (
                format!("{:.0}", b.commits_per_sec()),
                format!("{} / {}", b.p50(), b.p99()),
                if row.latency_only {
                    dash()
                } else {
                    format!("{:.2}", m.commits_per_sec() / b.commits_per_sec())
                },
                format!("{:.2}", m.p50() as f64 / b.p50() as f64),
            ),
            None => (dash(), dash(), dash(), dash()),
        };
        println!(
            "| {} | {} | {} | {} | {throughput} | {commits} | {} | {} | {b_tps} | {b_lat} | {r_tps} | {r_p50} |",
            row.backend,
            row.workload,
            m.clients,
            m.ops,
            m.p50(),
            m.p99(),
        );
    }
    println!();
    println!(
        "Baseline: pgbench, one-row INSERT per transaction, same number of clients, run just before \
         the row it is compared with. Commits/s ÷ baseline: higher is better; p50 ÷ baseline: lower \
         is better. The claim-call row gives latencies only: its claims run in the same wall time as \
         the complete commits above it."
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let cfg = Config::from_env_and_args()?;
    let started = stopwatch();
    let mut rows = Vec::new();
    if cfg.sqlite {
        rows.extend(run_sqlite(&cfg).await?);
    }
    if cfg.postgres {
        rows.extend(run_postgres(&cfg).await?);
    }
    report(&cfg, &rows);
    progress!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
