//! The workloads on each backend: SQLite in a scratch file, PostgreSQL in a fresh database with
//! the baseline run beside each workload.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use quark_history::{PostgresStore, SqliteStore, StoreConfig, Timestamp, testing};

use crate::baseline::Baseline;
use crate::config::Config;
use crate::measure::Row;
use crate::workload::{Target, Workload};

pub(crate) async fn run_sqlite(cfg: &Config) -> Result<Vec<Row>> {
    let dir = scratch_dir()?;
    let path = dir.join("bench.db");
    progress!("[sqlite] file {}", path.display());
    let result = async {
        let store = SqliteStore::open(&path).await?;
        let target = Target {
            store: Arc::new(store.clone()),
            backend: "sqlite",
        };
        let mut rows = Vec::new();
        target.prepare(cfg).await?;
        for workload in Workload::ALL {
            rows.extend(target.run(cfg, workload).await?);
        }
        store.close().await;
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        progress!("[sqlite] could not remove {}: {e}", dir.display());
    }
    result
}

pub(crate) fn scratch_dir() -> Result<PathBuf> {
    let stamp = Timestamp::now().as_micros();
    let dir = std::env::temp_dir().join(format!("quark-bench-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub(crate) async fn run_postgres(cfg: &Config) -> Result<Vec<Row>> {
    let Some(t) = testing::postgres().await else {
        progress!("[postgres] skipped: PostgreSQL is unreachable (see above)");
        return Ok(Vec::new());
    };
    let result = async {
        let url = t
            .database_url()
            .ok_or_else(|| anyhow!("the test store has no database url"))?;
        progress!("[postgres] database {url}");
        let baseline = Baseline::new(cfg, &t, &url).await?;
        // The test store runs on a manual clock; the benchmark wants the real one.
        let store = PostgresStore::connect_with(&url, StoreConfig::default()).await?;
        let target = Target {
            store: Arc::new(store.clone()),
            backend: "postgres",
        };
        let mut rows = Vec::new();
        target.prepare(cfg).await?;
        // Each workload right after a pgbench run with as many clients, so that both see the same
        // machine (other load, checkpoints) as far as possible.
        for workload in Workload::ALL {
            let paired = baseline.pgbench(workload.clients(cfg))?;
            for mut row in target.run(cfg, workload).await? {
                row.baseline = paired.clone();
                rows.push(row);
            }
        }
        store.pool().close().await;
        // The same INSERT through sqlx, the driver Quark uses.
        let clients: BTreeSet<usize> = [1, cfg.concurrency].into();
        for clients in clients {
            let paired = baseline.pgbench(clients)?;
            let mut row = baseline.sqlx(clients).await?;
            row.baseline = paired;
            rows.push(row);
        }
        baseline.finish();
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    t.cleanup().await;
    result
}
