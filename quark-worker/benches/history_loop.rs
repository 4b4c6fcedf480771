//! Long-history benchmark: one orchestration that loops N times over a no-op activity (2N + 2
//! events), run by one in-process worker on SQLite and PostgreSQL.
//!
//! Reports the cost of an iteration early in the loop and late in it (the median gap between
//! consecutive activity results, over a window of iterations, from the history's own recorded
//! times), their ratio, and the whole run's rate. A worker that replayed the history every turn
//! would show the late iterations costing hundreds of times the early ones; a live instance keeps
//! them flat. Then the `Replayer` checks the recorded history (every prefix) and its time is shown.
//!
//! The early and late windows are seconds apart, and on a shared host the cost of a commit (an
//! fsync, on SQLite) drifts by more than 1.5 times within seconds. So the bench also measures a
//! baseline at the same moment: when the loop has twice `--probe` iterations left, a fresh instance of the same orchestration starts and loops `--probe` times beside it, and the
//! iterations during the probe's run are compared with the probe's own, from its 10th on. Both instances share the worker and the host then, and differ only in the length of
//! their histories.
//!
//! `cargo bench -p quark-worker --bench history_loop -- [--n 5000] [--window 100] [--warmup 2000] [--backend both|postgres|sqlite] [--warm N] [--probe 200]`
//! (`--warmup N`: another instance loops N times first, so that both windows are measured on a
//! database in use rather than the early one on a fresh file.)
//! (`--warm 0` keeps no instance live: every turn replays, as before live instances; `--probe 0`
//! runs no probe.)
//! PostgreSQL: `QUARK_TEST_DATABASE_URL`; the bench creates and drops a database of its own.
#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use quark_history::{HistoryEvent, PostgresStore, RecordedEvent, SqliteStore, Store, StoreConfig};
use quark_worker::Worker;
use quark_workflow::WarmLimits;
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
    /// Iterations of the probe: a fresh instance run beside the loop's last iterations.
    probe: u64,
    backends: Vec<&'static str>,
}

fn args() -> Args {
    let mut a = Args {
        n: 5000,
        warmup: 2000,
        window: 100,
        warm: None,
        probe: 200,
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
            "--probe" => a.probe = value().parse().expect("--probe N"),
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
    let probing = a.probe > 0 && a.n > 2 * a.probe;
    if probing {
        // The probe starts when the loop has twice its iterations left, so that it ends first.
        let events_then = 2 * (a.n - 2 * a.probe) + 1;
        while client.describe("loop").await.unwrap().history_len < events_then {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let probe = long_loop::start(&client, "probe", a.probe).await.unwrap();
        assert_eq!(probe.result().await.unwrap(), (0..a.probe).sum::<u64>());
    }
    let sum = handle.result().await.unwrap();
    let took = started.elapsed();
    assert_eq!(sum, (0..a.n).sum::<u64>());
    worker.shutdown().await;

    let history = client.history("loop").await.unwrap();
    let done = completions(&history);
    let gaps = gaps_between(&done);
    let w = a.window.min(gaps.len() / 4).max(1);
    let early = median(gaps[10.min(gaps.len())..(10 + w).min(gaps.len())].to_vec());
    let late = median(gaps[gaps.len().saturating_sub(w)..].to_vec());

    // The same moment: the probe's iterations from its 10th on, and the loop's over that time.
    let (beside, probe_early) = if probing {
        let probe = completions(&client.history("probe").await.unwrap());
        let (from, to) = (probe[10.min(probe.len() - 1)], probe[probe.len() - 1]);
        let beside: Vec<u64> = done
            .windows(2)
            .filter(|w| w[0] >= from && w[1] <= to)
            .map(|w| u64::try_from(w[1] - w[0]).unwrap_or(0))
            .collect();
        (
            median(beside),
            median(gaps_between(&probe)[10.min(probe.len() - 1)..].to_vec()),
        )
    } else {
        (0.0, 0.0)
    };

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
        "| {backend} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} |",
        a.n,
        history.len(),
        early,
        late,
        late / early.max(1.0),
        beside,
        probe_early,
        beside / probe_early.max(1.0),
        a.n as f64 / took.as_secs_f64(),
        replay_took.as_secs_f64() * 1000.0,
    );
}

/// The time each activity result of `history` was recorded: one per iteration.
fn completions(history: &[RecordedEvent]) -> Vec<i64> {
    history
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::ActivityCompleted { .. }))
        .map(|e| e.recorded_at.as_micros())
        .collect()
}

/// The gaps between consecutive times, in microseconds.
fn gaps_between(times: &[i64]) -> Vec<u64> {
    times
        .windows(2)
        .map(|w| u64::try_from(w[1] - w[0]).unwrap_or(0))
        .collect()
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "| backend | iterations | events | early iteration µs (median of {w} from the 10th) | late iteration µs (median of the last {w}) | late / early | late iteration beside the probe µs | the probe's iteration µs | beside / probe | iterations/s | Replayer ms |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
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
