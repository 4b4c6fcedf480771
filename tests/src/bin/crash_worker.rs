//! A worker process for the crash tests: runs the shared workload (the orchestrations of `crash.rs`,
//! the jobs of `job_crash.rs`) against the database in `QUARK_DATABASE_URL` with short leases, until
//! it is killed or told to stop (SIGTERM: a graceful shutdown). With `QUARK_CRASH_AT` set, it
//! aborts at that point of the first attempt of a transactional activity (`transactional_crash.rs`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quark_history::{PostgresStore, StoreConfig};
use quark_tests::CrashAt;
use quark_worker::{FaultPoint, Worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Listen before connecting: a worker told to stop while it starts then stops gracefully too,
    // rather than dying of the signal's default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let url = std::env::var("QUARK_DATABASE_URL").context("QUARK_DATABASE_URL is not set")?;
    let store = PostgresStore::connect_with(&url, StoreConfig::default()).await?;
    let worker = Worker::builder()
        .store(Arc::new(store))
        .workflows(quark_tests::registry())
        // How the tests tell which process a registration is (the id is `<host>-<n>`, reused by
        // a restarted worker).
        .label("pid", std::process::id().to_string())
        .lease(Duration::from_secs(2))
        .heartbeat(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(50))
        .affinity_delay(Duration::from_millis(200))
        .fault_hook(|point, attempt| match point {
            FaultPoint::BeforeTransactionalCommit => CrashAt::BeforeCommit.crash_here(attempt),
            FaultPoint::AfterTransactionalCommit => CrashAt::AfterCommit.crash_here(attempt),
            _ => {}
        })
        .build()?;
    worker
        .run_until(async move {
            term.recv().await;
        })
        .await?;
    Ok(())
}
