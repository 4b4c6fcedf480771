//! What Quark is measured against: the raw one-row INSERT transaction, by pgbench and by sqlx.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, anyhow, ensure};
use quark_history::{CodecTag, testing};

use crate::backends::scratch_dir;
use crate::config::Config;
use crate::measure::{Measure, Row, histogram, merge, micros, stopwatch};
use crate::workload::event;

/// The raw one-row INSERT transaction, by pgbench and by sqlx.
#[derive(Debug)]
pub(crate) struct Baseline<'a> {
    t: &'a testing::TestStore,
    url: String,
    insert: Arc<String>,
    transactions: u64,
    pgbench: Option<PathBuf>,
    dir: PathBuf,
    script: PathBuf,
}

impl<'a> Baseline<'a> {
    pub(crate) async fn new(
        cfg: &Config,
        t: &'a testing::TestStore,
        url: &str,
    ) -> Result<Baseline<'a>> {
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

    pub(crate) fn finish(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A pgbench run with `clients` clients, or `None` without pgbench.
    pub(crate) fn pgbench(&self, clients: usize) -> Result<Option<Arc<Measure>>> {
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
    pub(crate) async fn sqlx(&self, clients: usize) -> Result<Row> {
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
