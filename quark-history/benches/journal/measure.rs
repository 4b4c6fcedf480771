//! The measuring: a stopwatch, latency histograms, timed concurrent runs, and what a run
//! yields.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;

/// The monotonic clock latencies are measured with. The workspace's clippy.toml bans
/// `Instant::now` outside clocks, and says benchmarks may allow it: this is the one place.
#[allow(clippy::disallowed_methods)]
pub(crate) fn stopwatch() -> Instant {
    Instant::now()
}

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

pub(crate) fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<()> {
    into.add(from)
        .map_err(|e| anyhow!("merging histograms: {e:?}"))
}

/// A measured run: what was done, in how long, at what latency.
#[derive(Debug)]
pub(crate) struct Measure {
    pub(crate) clients: usize,
    /// Operations done (commits, events or tasks, per `unit`).
    pub(crate) ops: u64,
    pub(crate) unit: &'static str,
    /// Write transactions committed.
    pub(crate) commits: u64,
    pub(crate) secs: f64,
    /// Latency per commit (per call for claims), µs.
    pub(crate) hist: Histogram<u64>,
}

impl Measure {
    pub(crate) fn throughput(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    pub(crate) fn commits_per_sec(&self) -> f64 {
        self.commits as f64 / self.secs
    }

    pub(crate) fn p50(&self) -> u64 {
        self.hist.value_at_quantile(0.50)
    }

    pub(crate) fn p99(&self) -> u64 {
        self.hist.value_at_quantile(0.99)
    }
}

/// One line of the report.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) backend: &'static str,
    pub(crate) workload: String,
    pub(crate) measure: Measure,
    /// Only the latencies mean something (the claim calls of the claim + complete run, whose
    /// wall time is the complete commits').
    pub(crate) latency_only: bool,
    /// The pgbench run made just before this one, with the same number of clients (PostgreSQL).
    pub(crate) baseline: Option<Arc<Measure>>,
}

/// Runs `op(client, i)` for `i` in `0..per_client` from `clients` concurrent tasks, timing each
/// call. Returns the wall time of the whole run and the merged latencies.
pub(crate) async fn timed<F, Fut>(
    clients: usize,
    per_client: u64,
    op: F,
) -> Result<(f64, Histogram<u64>)>
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
