//! Children benchmark: parents that each call three no-op child orchestrations one after the
//! other, run by one in-process worker on PostgreSQL or SQLite. It measures what a child's result
//! costs its parent: through the queue (a turn of the parent claimed after the child's last
//! commit), or continued in the child's commit when the parent is warm on the same worker (local
//! delivery).
//!
//! Reports parents/s under load, the p50/p99 start-to-completion latency of one parent at a time
//! (light load), and the claims per parent.
//!
//! `cargo bench -p quark-worker --bench children -- [--n 1000] [--light 200] [--backend postgres|sqlite]`
//! PostgreSQL: `QUARK_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! the bench creates and drops a database of its own. SQLite: a file in a temporary directory.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quark_history::{PostgresStore, SqliteStore, Store, StoreConfig};
use quark_worker::Worker;
use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Registry, orchestration};
use sqlx::{Connection, Executor, PgConnection};

/// Returns its input.
#[orchestration]
async fn echo(_ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    Ok(n)
}

/// Calls three children, one after the other.
#[orchestration]
async fn three_children(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let id = ctx.instance_id();
    let a: u64 = ctx.call_child_with_id(echo, &format!("{id}-a"), &n).await?;
    let b: u64 = ctx.call_child_with_id(echo, &format!("{id}-b"), &a).await?;
    ctx.call_child_with_id(echo, &format!("{id}-c"), &b).await
}

const USAGE: &str = "cargo bench -p quark-worker --bench children -- [options]
  --n N          parents under load, started together (default 1000)
  --light N      parents one at a time (default 200)
  --backend B    postgres | sqlite (default postgres)";

fn value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

async fn run(store: Arc<dyn Store>, n: u64, light: u64) -> anyhow::Result<()> {
    store.migrate().await?;
    let worker = Worker::builder()
        .store(Arc::clone(&store))
        .poll_interval(Duration::from_millis(50))
        .workflows(Registry::new().register(three_children).register(echo))
        .build()?;
    let running = worker.start().await?;
    let client = Client::new(Arc::clone(&store));

    let mut latency = Histogram::<u64>::new(3)?;
    for i in 0..light {
        let started = Instant::now();
        let handle = three_children::start(&client, format!("light-{i}"), i).await?;
        let out: u64 = handle.result().await?;
        anyhow::ensure!(out == i, "light-{i} returned {out}");
        latency.record(started.elapsed().as_micros() as u64)?;
    }
    let claims_before = running.worker().metrics().claimed;

    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..n {
        handles.push(three_children::start(&client, format!("load-{i}"), i).await?);
    }
    for (i, handle) in handles.into_iter().enumerate() {
        let out: u64 = handle.result().await?;
        anyhow::ensure!(out == i as u64, "load-{i} returned {out}");
    }
    let took = started.elapsed();
    let m = running.worker().metrics();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "under load: {n} parents in {took:.2?}: {:.0} parents/s ({:.0} orchestrations/s with their children)",
        n as f64 / took.as_secs_f64(),
        4.0 * n as f64 / took.as_secs_f64()
    );
    println!(
        "one parent at a time ({light}): p50 {:.2} ms, p99 {:.2} ms",
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99))
    );
    println!(
        "claims per parent under load: {:.2} (a parent and its three children: 7 through the queue)",
        (m.claimed - claims_before) as f64 / n as f64
    );
    running.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let n: u64 = value("--n").map_or(Ok(1000), |v| v.parse())?;
    let light: u64 = value("--light").map_or(Ok(200), |v| v.parse())?;
    let backend = value("--backend").unwrap_or_else(|| "postgres".into());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match backend.as_str() {
            "sqlite" => {
                let dir =
                    std::env::temp_dir().join(format!("quark-children-{}", uuid::Uuid::now_v7()));
                std::fs::create_dir_all(&dir)?;
                let store: Arc<dyn Store> =
                    Arc::new(SqliteStore::open(dir.join("children.db")).await?);
                let result = run(store, n, light).await;
                let _ = std::fs::remove_dir_all(&dir);
                result
            }
            _ => {
                let base = std::env::var("QUARK_TEST_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let db = format!("quark_children_{}", uuid::Uuid::now_v7().simple());
                let mut admin = PgConnection::connect(&base).await?;
                admin
                    .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                    .await?;
                let url = match base.rsplit_once('/') {
                    Some((server, rest)) => {
                        let query = rest.split_once('?').map(|(_, q)| format!("?{q}"));
                        format!("{server}/{db}{}", query.unwrap_or_default())
                    }
                    None => base.clone(),
                };
                let result = async {
                    let store: Arc<dyn Store> =
                        Arc::new(PostgresStore::connect_with(&url, StoreConfig::default()).await?);
                    run(store, n, light).await
                }
                .await;
                let _ = admin
                    .execute(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE {db} WITH (FORCE)"
                    )))
                    .await;
                result
            }
        }
    })
}
