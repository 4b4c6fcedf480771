//! A worker process for the crash tests: runs the shared workload (the orchestrations of `crash.rs`,
//! the jobs of `job_crash.rs`) against the database in `QUARK_DATABASE_URL` with short leases, until
//! it is killed or told to stop (SIGTERM: a graceful shutdown). With `QUARK_CRASH_AT` set, it
//! aborts at that point of the first attempt of a transactional activity (`transactional_crash.rs`).
//! With `QUARK_SHARDS` (`name=url,...`) it serves those shards instead, a worker for each of
//! `QUARK_SERVE_SHARDS` (default: all), as `shard_crash.rs` needs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quark_history::shards::Shards;
use quark_history::{PostgresStore, Store, StoreConfig};
use quark_tests::CrashAt;
use quark_worker::{FaultPoint, Worker, WorkerBuilder};

fn builder(store: Arc<dyn Store>) -> WorkerBuilder {
    Worker::builder()
        .store(store)
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Listen before connecting: a worker told to stop while it starts then stops gracefully too,
    // rather than dying of the signal's default action.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let workers = match std::env::var("QUARK_SHARDS") {
        Ok(specs) => {
            let specs: Vec<(String, String)> = specs
                .split(',')
                .map(|s| s.split_once('=').context("QUARK_SHARDS: name=url,..."))
                .map(|p| p.map(|(n, u)| (n.to_owned(), u.to_owned())))
                .collect::<anyhow::Result<_>>()?;
            let shards = Shards::connect(specs, StoreConfig::default()).await?;
            let serve: Vec<String> = match std::env::var("QUARK_SERVE_SHARDS") {
                Ok(names) => names.split(',').map(str::to_owned).collect(),
                Err(_) => shards.map().names().to_vec(),
            };
            let mut workers = Vec::new();
            for name in &serve {
                let position = shards
                    .map()
                    .names()
                    .iter()
                    .position(|n| n == name)
                    .context("QUARK_SERVE_SHARDS names a shard not in QUARK_SHARDS")?;
                let store = Arc::clone(shards.store(position));
                workers.push(builder(store).shard(shards.clone(), name).build()?);
            }
            workers
        }
        Err(_) => {
            let url =
                std::env::var("QUARK_DATABASE_URL").context("QUARK_DATABASE_URL is not set")?;
            let store = PostgresStore::connect_with(&url, StoreConfig::default()).await?;
            vec![builder(Arc::new(store)).build()?]
        }
    };
    let mut running = Vec::new();
    for worker in &workers {
        running.push(worker.start().await?);
    }
    term.recv().await;
    for worker in running {
        worker.shutdown().await;
    }
    Ok(())
}
