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

/// A progress line on stderr, stamped with the UTC time of day (to line up with other logs).
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("{} {}", $crate::utc_time_of_day(), format_args!($($arg)*))
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

mod backends;
mod baseline;
mod config;
mod measure;
mod report;
mod workload;

use anyhow::Result;
use quark_history::Timestamp;

use crate::backends::{run_postgres, run_sqlite};
use crate::config::Config;
use crate::measure::stopwatch;
use crate::report::report;

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
