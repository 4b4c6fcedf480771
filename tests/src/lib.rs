//! The workload of the end-to-end tests, shared by the test harness and the `crash-worker` binary
//! it starts and kills.

pub mod ledger;

use std::str::FromStr;
use std::time::Duration;

use tokio::sync::OnceCell;

use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry, activity,
    orchestration,
};

/// Adds one.
#[activity(retry(max_attempts = 10, initial = "50ms", max = "500ms"))]
pub async fn increment(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n + 1)
}

/// Doubles.
#[activity(retry(max_attempts = 10, initial = "50ms", max = "500ms"))]
pub async fn double(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n * 2)
}

/// Three activities around a durable timer: `((n + 1) * 2 + 1)`.
#[orchestration]
pub async fn crash_order(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let a = ctx.call(increment, &n).await?;
    ctx.sleep(Duration::from_millis(100)).await?;
    let b = ctx.call(double, &a).await?;
    ctx.call(increment, &b).await
}

/// What [`crash_order`] returns for `n`.
pub fn expected(n: u64) -> u64 {
    (n + 1) * 2 + 1
}

/// The sharded crash loop's workload: pings its partner (often on another shard) with `n`,
/// waits for the partner's ping, then runs [`crash_order`] twice as a child: once named by Quark
/// (so on its own shard), once named `{partner}:order` (so on the partner's shard: started there
/// and answering back through the outbox). Last, deposits `n` into the [`ledger::Account`] named
/// by its own id, whose stream is on whatever shard its id maps to. Returns
/// `2 * `[`expected`]`(n) + n` plus the partner's number.
#[orchestration]
pub async fn shard_ping(
    ctx: OrchestrationContext,
    (partner, n): (String, u64),
) -> Result<u64, OrchestrationError> {
    ctx.signal(&partner, "ping", &n)?;
    let theirs: u64 = ctx.wait_for_signal("ping").await?;
    let ordered = ctx.call_child(crash_order, &n).await?;
    let across = ctx
        .call_child_with_id(crash_order, &format!("{partner}:order"), &n)
        .await?;
    let deposited = ctx
        .entity::<ledger::Account>(ctx.instance_id())
        .call(&ledger::Deposit(n as i64))
        .await?
        .map_err(OrchestrationError::Failed)?;
    Ok(ordered + across + theirs + deposited as u64)
}

/// The table where every run of [`logged_job`] leaves a row, created by the job crash test. The
/// times come from PostgreSQL's clock, so they compare with the test's own records.
pub const JOB_RUNS_DDL: &str = "CREATE TABLE job_runs (\
    job BIGINT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL, \
    started_at TIMESTAMPTZ NOT NULL)";

/// The connection pool [`logged_job`] writes its run log through: its own, not the store's, the
/// way a job's side effects would go to an application's database.
async fn run_log() -> Result<&'static sqlx::PgPool, ActivityError> {
    static POOL: OnceCell<sqlx::PgPool> = OnceCell::const_new();
    let error = |e: &dyn std::fmt::Display| ActivityError::message(format!("run log: {e}"));
    POOL.get_or_try_init(async || {
        let url = std::env::var("QUARK_DATABASE_URL").map_err(|e| error(&e))?;
        // A run's row is visible to the test as soon as its insert returns; only a crash of
        // PostgreSQL itself, which the test does not cause, could lose it. So no flush per run,
        // which would only load the machine.
        let options = sqlx::postgres::PgConnectOptions::from_str(&url)
            .map_err(|e| error(&e))?
            .options([("synchronous_commit", "off")]);
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| error(&e))
    })
    .await
}

/// A job for the job crash test: records that it started (job number, attempt, process, PostgreSQL
/// time), then does a little work. The retry policy is generous, so that runs cut short by killed
/// workers never use up a job's attempts.
#[activity(retry(max_attempts = 1000, initial = "50ms", max = "500ms"))]
pub async fn logged_job(ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    sqlx::query(
        "INSERT INTO job_runs (job, attempt, pid, started_at) VALUES ($1, $2, $3, clock_timestamp())",
    )
    .bind(n as i64)
    .bind(ctx.attempt() as i32)
    .bind(std::process::id() as i32)
    .execute(run_log().await?)
    .await
    .map_err(|e| ActivityError::message(format!("run log: {e}")))?;
    // The work: some arithmetic the optimizer cannot drop (xorshift rounds).
    let mut x = n | 1;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    Ok(std::hint::black_box(x))
}

/// The table [`post_entry`] writes to, in the engine's own database: one row per run that
/// committed.
pub const LEDGER_DDL: &str = "CREATE TABLE ledger (\
    entry TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL)";

/// Where a crash-worker dies on the first attempt of a transactional activity, read from
/// `QUARK_CRASH_AT` (`before_write`, `after_write`, `before_commit`, `after_commit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashAt {
    /// In the activity, before its write.
    BeforeWrite,
    /// In the activity, after its write (and its outbox message), before it returns.
    AfterWrite,
    /// In the runtime, after the activity returned, before its transaction commits.
    BeforeCommit,
    /// In the runtime, right after its transaction committed.
    AfterCommit,
}

impl CrashAt {
    /// Every point, in order.
    pub const ALL: [CrashAt; 4] = [
        CrashAt::BeforeWrite,
        CrashAt::AfterWrite,
        CrashAt::BeforeCommit,
        CrashAt::AfterCommit,
    ];

    /// The name `QUARK_CRASH_AT` takes.
    pub fn name(self) -> &'static str {
        match self {
            CrashAt::BeforeWrite => "before_write",
            CrashAt::AfterWrite => "after_write",
            CrashAt::BeforeCommit => "before_commit",
            CrashAt::AfterCommit => "after_commit",
        }
    }

    /// The point this process was told to crash at, if any.
    pub fn configured() -> Option<CrashAt> {
        let name = std::env::var("QUARK_CRASH_AT").ok()?;
        CrashAt::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Ends the process at once (no unwinding, no cleanup: a crash) if this is the configured
    /// point and the first attempt.
    pub fn crash_here(self, attempt: u32) {
        if attempt == 1 && CrashAt::configured() == Some(self) {
            eprintln!("crash-worker: crashing at {}", self.name());
            std::process::abort();
        }
    }
}

/// A transactional activity: writes a ledger row and sends an outbox message in the engine's
/// transaction, crashing where `QUARK_CRASH_AT` says on its first attempt. Returns the attempt
/// that committed.
#[activity(
    transactional,
    retry(max_attempts = 10, initial = "50ms", max = "500ms")
)]
pub async fn post_entry(ctx: ActivityContext, entry: String) -> Result<u32, ActivityError> {
    CrashAt::BeforeWrite.crash_here(ctx.attempt());
    {
        let mut tx = ctx.transaction().await?;
        sqlx::query("INSERT INTO ledger (entry, attempt, pid) VALUES ($1, $2, $3)")
            .bind(&entry)
            .bind(ctx.attempt() as i32)
            .bind(std::process::id() as i32)
            .execute(tx.postgres()?)
            .await?;
    }
    ctx.outbox()
        .send(quark_history::Destination::callback("ledger"), &entry)?;
    CrashAt::AfterWrite.crash_here(ctx.attempt());
    Ok(ctx.attempt())
}

/// Posts one ledger entry.
#[orchestration]
pub async fn post_once(
    ctx: OrchestrationContext,
    entry: String,
) -> Result<u32, OrchestrationError> {
    ctx.call(post_entry, &entry).await
}

/// A job for the recovery tests: its first attempt never ends (the worker running it is killed
/// holding it), a later one returns at once. Returns the attempt that finished.
#[activity(retry(max_attempts = 100, initial = "10ms", max = "100ms"))]
pub async fn stuck_first_time(ctx: ActivityContext, _n: u64) -> Result<u32, ActivityError> {
    if ctx.attempt() == 1 {
        std::future::pending::<()>().await;
    }
    Ok(ctx.attempt())
}

/// The registry the crash workers run.
pub fn registry() -> Registry {
    Registry::new()
        .register(crash_order)
        .register(shard_ping)
        .register(increment)
        .register(double)
        .register(logged_job)
        .register(post_once)
        .register(post_entry)
        .register(stuck_first_time)
        .entity_command::<ledger::Account, ledger::Deposit>()
}

/// A small deterministic pseudo-random sequence (xorshift), so a failing run can be reproduced.
#[derive(Debug)]
pub struct Dice(pub u64);

impl Dice {
    /// A number in `0..n`.
    pub fn roll(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Whether to skip a slow suite (a crash loop, a chaos test): `true`, after saying so on the
/// terminal, when `QUARK_SKIP_SLOW` is set (to anything but `0`), for quicker local runs. CI runs
/// every suite: `.ci/run` refuses to start with `QUARK_SKIP_SLOW` set, and so does this when `CI`
/// is set.
pub fn skip_slow(suite: &str) -> bool {
    use std::io::Write;

    let skip = std::env::var_os("QUARK_SKIP_SLOW").is_some_and(|v| !v.is_empty() && v != "0");
    if skip {
        assert!(
            std::env::var_os("CI").is_none(),
            "QUARK_SKIP_SLOW is set under CI, where the slow suites must run"
        );
        // Straight to the terminal: the test harness captures eprintln!, not this.
        let _ = writeln!(
            std::io::stderr(),
            "quark: slow suite SKIPPED (QUARK_SKIP_SLOW=1): {suite}"
        );
    }
    skip
}

/// The book's chapters, compiled and run as doctests (`cargo test -p quark-tests --doc`): every
/// ```` ```rust ```` block of `book/src` is a test against the current API, so the guide cannot
/// drift from the code. A block marked `ignore` says why next to it.
#[cfg(doctest)]
mod book {
    macro_rules! chapters {
        ($($name:ident => $file:literal),* $(,)?) => {
            $(
                #[doc = include_str!(concat!("../../book/src/", $file))]
                mod $name {}
            )*
        };
    }

    chapters! {
        introduction => "introduction.md",
        getting_started => "getting_started.md",
        concepts => "concepts.md",
        workflows => "workflows.md",
        queries_and_updates => "queries_and_updates.md",
        determinism => "determinism.md",
        testing => "testing.md",
        versioning => "versioning.md",
        jobs => "jobs.md",
        schedules => "schedules.md",
        job_workflows => "job_workflows.md",
        journal => "journal.md",
        sagas => "sagas.md",
        outbox => "outbox.md",
        transactional => "transactional.md",
        two_phase => "two_phase.md",
        shards => "shards.md",
        entities => "entities.md",
        api => "api.md",
        console => "console.md",
        configuration => "configuration.md",
        placement => "placement.md",
        placebench => "placebench.md",
        deployment => "deployment.md",
        cli => "cli.md",
        performance => "performance.md",
        performance_lab => "performance_lab.md",
    }
}

#[cfg(test)]
mod book_tests {
    /// A chapter left out of the list above would have its snippets go uncompiled, and one left
    /// out of `SUMMARY.md` would be missing from the built book.
    #[test]
    fn every_chapter_is_in_the_summary_and_compiled_as_a_doctest() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src");
        let summary = std::fs::read_to_string(dir.join("SUMMARY.md")).unwrap();
        let this = include_str!("lib.rs");
        let mut chapters = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if !name.ends_with(".md") || name == "SUMMARY.md" {
                continue;
            }
            chapters += 1;
            assert!(
                this.contains(&format!("=> \"{name}\"")),
                "book/src/{name} is not compiled as a doctest: add it to `chapters!` in tests/src/lib.rs"
            );
            assert!(
                summary.contains(&format!("]({name})")),
                "book/src/{name} is not in book/src/SUMMARY.md"
            );
        }
        assert!(
            chapters > 10,
            "found only {chapters} chapters in {}",
            dir.display()
        );
    }
}
