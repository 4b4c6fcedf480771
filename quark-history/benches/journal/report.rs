//! The report: a markdown table on stdout.

use crate::config::Config;
use crate::measure::Row;

pub(crate) fn report(cfg: &Config, rows: &[Row]) {
    println!();
    println!(
        "quark-history journal bench: appends={} concurrency={} batch={}x{} tasks={} \
         (enqueue {}/commit) workers={} claim-limit={} warmup={}",
        cfg.appends,
        cfg.concurrency,
        cfg.batch_commits,
        cfg.batch,
        cfg.tasks,
        cfg.enqueue_chunk,
        cfg.workers,
        cfg.claim_limit,
        cfg.warmup,
    );
    println!();
    println!(
        "| Backend | Workload | Clients | Ops | Throughput | Commits/s | p50 µs | p99 µs \
         | Baseline tx/s | Baseline p50 / p99 µs | Commits/s ÷ baseline | p50 ÷ baseline |"
    );
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let dash = || "—".to_string();
    for row in rows {
        let m = &row.measure;
        let (throughput, commits) = if row.latency_only {
            (dash(), dash())
        } else {
            (
                format!("{:.0} {}", m.throughput(), m.unit),
                format!("{:.0}", m.commits_per_sec()),
            )
        };
        let (b_tps, b_lat, r_tps, r_p50) = match &row.baseline {
            Some(b) => (
                format!("{:.0}", b.commits_per_sec()),
                format!("{} / {}", b.p50(), b.p99()),
                if row.latency_only {
                    dash()
                } else {
                    format!("{:.2}", m.commits_per_sec() / b.commits_per_sec())
                },
                format!("{:.2}", m.p50() as f64 / b.p50() as f64),
            ),
            None => (dash(), dash(), dash(), dash()),
        };
        println!(
            "| {} | {} | {} | {} | {throughput} | {commits} | {} | {} | {b_tps} | {b_lat} | {r_tps} | {r_p50} |",
            row.backend,
            row.workload,
            m.clients,
            m.ops,
            m.p50(),
            m.p99(),
        );
    }
    println!();
    println!(
        "Baseline: pgbench, one-row INSERT per transaction, same number of clients, run just before \
         the row it is compared with. Commits/s ÷ baseline: higher is better; p50 ÷ baseline: lower \
         is better. The claim-call row gives latencies only: its claims run in the same wall time as \
         the complete commits above it."
    );
}
