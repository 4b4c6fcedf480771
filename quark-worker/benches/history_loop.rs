//! Long-history benchmark: one orchestration that loops N times over a no-op activity (2N + 2
//! events), run by one in-process worker on SQLite and PostgreSQL.
//!
//! Reports the cost of an iteration early in the loop and late in it (the median gap between
//! consecutive activity results, over a window of iterations, from the history's own recorded
//! times), their ratio, and the whole run's rate. A worker that replayed the history every turn
//! would show the late iterations costing hundreds of times the early ones; a live instance keeps
//! them flat. Then the `Replayer` checks the recorded history (every prefix) and its time is shown.
//!
//! `cargo bench -p quark-worker --bench history_loop -- [--n 5000] [--window 100] [--warmup 2000] [--backend both|postgres|sqlite] [--warm N]`
//! (`--warmup N`: another instance loops N times first, so that both windows are measured on a
//! database in use rather than the early one on a fresh file.)
//! (`--warm 0` keeps no instance live: every turn replays, as before live instances).
//! PostgreSQL: `QUARK_TEST_DATABASE_URL`; the bench creates and drops a database of its own.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::sync::Arc;
use std::time::Instant;

use quark_history::{HistoryEvent, PostgresStore, SqliteStore, Store, StoreConfig};
use quark_worker::Worker;
use quark_workflow::runner::WarmLimits;
use quark_workflow::{
    ActivityContext, ActivityError, Client, OrchestrationContext, OrchestrationError, Registry,
    Replayer, activity, orchestration,
};

#[activity]
async fn noop(_ctx: ActivityContext, n: u64) -> Result<u64, ActivityError> {
    Ok(n)
}

#[orchestration]
async fn long_loop(ctx: OrchestrationContext, n: u64) -> Result<u64, OrchestrationError> {
    let mut sum = 0;
    for i in 0..n {
        sum += ctx.call(noop, &i).await?;
    }
    Ok(sum)
}

struct Args {
    n: u64,
    /// Iterations of another instance run first, so that the measured loop starts on a database
    /// that is already in use (its files, caches and queue tables past their first growth): the
    /// figure is about the cost of this instance's history, not of a fresh file.
    warmup: u64,
    window: usize,
    warm: Option<usize>,
    backends: Vec<&'static str>,
}

fn args() -> Args {
    let mut a = Args {
        n: 5000,
        warmup: 2000,
        window: 100,
        warm: None,
        backends: vec!["sqlite", "postgres"],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().expect("a value after the option");
        match arg.as_str() {
            "--n" => a.n = value().parse().expect("--n N"),
            "--window" => a.window = value().parse().expect("--window N"),
            "--warmup" => a.warmup = value().parse().expect("--warmup N"),
            "--warm" => a.warm = Some(value().parse().expect("--warm N")),
            "--backend" => {
                a.backends = match value().as_str() {
                    "postgres" => vec!["postgres"],
                    "sqlite" => vec!["sqlite"],
                    _ => vec!["sqlite", "postgres"],
                }
            }
            "--bench" => {}
            other => panic!("unknown option {other}"),
        }
    }
    a
}

fn registry() -> Registry {
    Registry::new().register(long_loop).register(noop)
}

/// The median of `gaps`, in microseconds.
fn median(mut gaps: Vec<u64>) -> f64 {
    gaps.sort_unstable();
    gaps.get(gaps.len() / 2).copied().unwrap_or(0) as f64
}

async fn bench(backend: &str, store: Arc<dyn Store>, a: &Args) {
    let mut builder = Worker::builder()
        .store(Arc::clone(&store))
        .workflows(registry());
    if let Some(n) = a.warm {
        builder = builder.warm_limits(WarmLimits {
            instances: n,
            ..WarmLimits::default()
        });
    }
    let worker = builder.build().unwrap().start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    if a.warmup > 0 {
        let warmup = long_loop::start(&client, "warmup", a.warmup).await.unwrap();
        warmup.result().await.unwrap();
    }
    let started = Instant::now();
    let handle = long_loop::start(&client, "loop", a.n).await.unwrap();
    let sum = handle.result().await.unwrap();
    let took = started.elapsed();
    assert_eq!(sum, (0..a.n).sum::<u64>());
    worker.shutdown().await;

    let history = client.history("loop").await.unwrap();
    // The time each activity result was recorded: one per iteration.
    let done: Vec<i64> = history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::ActivityCompleted { .. }))
        .map(|e| e.recorded_at.as_micros())
        .collect();
    let gaps: Vec<u64> = done
        .windows(2)
        .map(|w| u64::try_from(w[1] - w[0]).unwrap_or(0))
        .collect();
    let w = a.window.min(gaps.len() / 4).max(1);
    let early = median(gaps[10.min(gaps.len())..(10 + w).min(gaps.len())].to_vec());
    let late = median(gaps[gaps.len().saturating_sub(w)..].to_vec());

    // The median iteration across the run, in tenths, to show where any growth sets in.
    let tenth = (gaps.len() / 10).max(1);
    let profile: Vec<String> = gaps
        .chunks(tenth)
        .map(|c| format!("{:.0}", median(c.to_vec())))
        .collect();
    eprintln!(
        "{backend}: median iteration µs by tenth of the run: {}",
        profile.join(" ")
    );

    let replay_started = Instant::now();
    let report = Replayer::new(registry()).replay(&history).unwrap();
    let replay_took = replay_started.elapsed();
    assert!(report.is_ok(), "{report:?}");

    println!(
        "| {backend} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} |",
        a.n,
        history.len(),
        early,
        late,
        late / early.max(1.0),
        a.n as f64 / took.as_secs_f64(),
        replay_took.as_secs_f64() * 1000.0,
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "| backend | iterations | events | early iteration µs (median of {w} from the 10th) | late iteration µs (median of the last {w}) | late / early | iterations/s | Replayer ms |\n| --- | --- | --- | --- | --- | --- | --- | --- |",
        w = a.window
    );
    for backend in a.backends.clone() {
        match backend {
            "postgres" => {
                let t = quark_history::testing::postgres()
                    .await
                    .expect("PostgreSQL for the benchmark");
                let url = t.database_url().unwrap();
                let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&url).await.unwrap());
                bench("postgres", store, &a).await;
                t.cleanup().await;
            }
            _ => {
                let dir = std::env::temp_dir().join(format!("quark-loop-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let url = format!("sqlite://{}", dir.join("loop.db").display());
                let store: Arc<dyn Store> = Arc::new(
                    SqliteStore::open_with(&url, StoreConfig::default())
                        .await
                        .unwrap(),
                );
                bench("sqlite", store, &a).await;
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
}
