//! A worker process for the recovery tests: serves the shared workload from the database in
//! `QUARK_DATABASE_URL` with a 30 s lease and a 1 s heartbeat, under `QUARK_WORKER_ID` (default:
//! the worker's own default), with its id locks in `QUARK_WORKER_LOCK_DIR`. It prints
//! `serving <id>` once registered, and stops with SIGTERM (gracefully) or when another process
//! takes its id over (then it exits with failure, saying so).

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use quark_worker::Worker;

/// The lease: long, so that a recovery that waited for it would show.
const LEASE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let url = std::env::var("QUARK_DATABASE_URL").context("QUARK_DATABASE_URL is not set")?;
    let store = quark_worker::cli::open_store(Some(&url)).await?;
    let mut builder = Worker::builder()
        .store(store)
        .workflows(quark_tests::registry())
        .lease(LEASE)
        .heartbeat(HEARTBEAT)
        .poll_interval(Duration::from_millis(50));
    if let Ok(id) = std::env::var("QUARK_WORKER_ID") {
        builder = builder.id(id);
    }
    if let Ok(dir) = std::env::var("QUARK_WORKER_LOCK_DIR") {
        builder = builder.lock_dir(dir);
    }
    let worker = builder.build()?;
    let running = worker.start().await?;
    println!("serving {}", worker.id());
    std::io::stdout().flush()?;
    let taken_over = tokio::select! {
        _ = term.recv() => false,
        () = running.taken_over() => true,
    };
    running.shutdown().await;
    if taken_over {
        bail!("taken over: another process registered {}", worker.id());
    }
    Ok(())
}
