//! What Quark is measured doing: appends (one event per commit, concurrent, batched), enqueues,
//! and claims with completions, against one store.

use std::sync::Arc;

use anyhow::{Result, ensure};
use quark_history::{
    ClaimRequest, Commit, Expected, HistoryEvent, IdReusePolicy, NewInstance, NewTask, Payload,
    Store, TaskKind,
};

use crate::config::Config;
use crate::measure::{Measure, Row, histogram, merge, micros, stopwatch, timed};

/// The event appended by the append tests: an activity result with a small JSON output.
pub(crate) fn event(command: u64) -> HistoryEvent {
    HistoryEvent::ActivityCompleted {
        command,
        output: Payload::json(&activity_output(command)).expect("json payload"),
        attempt: 1,
    }
}

fn activity_output(command: u64) -> String {
    format!("order {command:08} charged: 42.00 EUR, receipt r-{command:08}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// One event per commit, one task, one instance.
    AppendSequential,
    /// One event per commit, `concurrency` tasks, one instance each.
    AppendConcurrent,
    /// `batch` events per commit, one task.
    AppendBatched,
    /// Activity tasks in bulk.
    Enqueue,
    /// `workers` loops claiming batches and completing each task in its own commit.
    ClaimComplete,
}

impl Workload {
    pub(crate) const ALL: [Workload; 5] = [
        Workload::AppendSequential,
        Workload::AppendConcurrent,
        Workload::AppendBatched,
        Workload::Enqueue,
        Workload::ClaimComplete,
    ];

    pub(crate) fn clients(self, cfg: &Config) -> usize {
        match self {
            Workload::AppendConcurrent => cfg.concurrency,
            Workload::ClaimComplete => cfg.workers,
            _ => 1,
        }
    }
}

/// A store under test.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) backend: &'static str,
}

impl Target {
    fn conc_id(client: usize) -> String {
        format!("conc-{client}")
    }

    fn warm_id(client: usize) -> String {
        format!("warm-{client}")
    }

    /// Creates the instances the workloads append to and warms the connections up, untimed.
    pub(crate) async fn prepare(&self, cfg: &Config) -> Result<()> {
        let c = cfg.concurrency;
        let ids = (0..c)
            .flat_map(|i| [Self::conc_id(i), Self::warm_id(i)])
            .chain(["seq".to_string(), "batch".to_string()]);
        for id in ids {
            self.store
                .create_instance(
                    NewInstance::new(id, "bench", Payload::json(&"input")?),
                    IdReusePolicy::RejectDuplicate,
                )
                .await?;
        }
        progress!(
            "[{}] warm-up: {} appends from {c} tasks",
            self.backend,
            cfg.warmup
        );
        let store = Arc::clone(&self.store);
        timed(c, Config::split(cfg.warmup, c), move |client, i| {
            let store = Arc::clone(&store);
            async move {
                let commit = Commit::new().append(Self::warm_id(client), Expected::Any, [event(i)]);
                store.commit(commit).await?;
                Ok(())
            }
        })
        .await?;
        Ok(())
    }

    /// Runs one workload; returns its rows (two for claim + complete).
    pub(crate) async fn run(&self, cfg: &Config, workload: Workload) -> Result<Vec<Row>> {
        let backend = self.backend;
        let row = |workload: String, measure: Measure| Row {
            backend,
            workload,
            measure,
            latency_only: false,
            baseline: None,
        };
        let store = Arc::clone(&self.store);
        match workload {
            Workload::AppendSequential => {
                let n = cfg.appends;
                progress!("[{backend}] append x1, 1 task: {n} commits");
                let (secs, hist) = timed(1, n, move |_, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let commit = Commit::new().append("seq", Expected::Any, [event(i)]);
                        store.commit(commit).await?;
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: 1,
                    ops: n,
                    unit: "commits/s",
                    commits: n,
                    secs,
                    hist,
                };
                Ok(vec![row("append, 1 event/commit".into(), measure)])
            }
            Workload::AppendConcurrent => {
                let c = cfg.concurrency;
                let per = Config::split(cfg.appends, c);
                let n = per * c as u64;
                progress!("[{backend}] append x1, {c} tasks: {n} commits");
                let (secs, hist) = timed(c, per, move |client, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let commit =
                            Commit::new().append(Self::conc_id(client), Expected::Any, [event(i)]);
                        store.commit(commit).await?;
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: c,
                    ops: n,
                    unit: "commits/s",
                    commits: n,
                    secs,
                    hist,
                };
                Ok(vec![row("append, 1 event/commit".into(), measure)])
            }
            Workload::AppendBatched => {
                let batch = cfg.batch as u64;
                let commits = cfg.batch_commits;
                progress!("[{backend}] append x{batch}, 1 task: {commits} commits");
                let (secs, hist) = timed(1, commits, move |_, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let events = (0..batch).map(|k| event(i * batch + k));
                        let commit = Commit::new().append("batch", Expected::Any, events);
                        store.commit(commit).await?;
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: 1,
                    ops: commits * batch,
                    unit: "events/s",
                    commits,
                    secs,
                    hist,
                };
                Ok(vec![row(format!("append, {batch} events/commit"), measure)])
            }
            Workload::Enqueue => {
                let chunk = cfg.enqueue_chunk as u64;
                let total = cfg.tasks;
                let chunks = total.div_ceil(chunk);
                progress!("[{backend}] enqueue: {total} activity tasks in commits of {chunk}");
                let (secs, hist) = timed(1, chunks, move |_, i| {
                    let store = Arc::clone(&store);
                    async move {
                        let n = chunk.min(total - i * chunk);
                        let tasks = (0..n)
                            .map(|k| {
                                let body =
                                    format!(r#"{{"activity":"charge","n":{}}}"#, i * chunk + k);
                                NewTask::new(TaskKind::Activity, "bench")
                                    .instance("seq")
                                    .payload(body.into_bytes())
                            })
                            .collect();
                        let ids = store.enqueue(tasks).await?;
                        ensure!(ids.len() as u64 == n, "enqueued {} of {n}", ids.len());
                        Ok(())
                    }
                })
                .await?;
                let measure = Measure {
                    clients: 1,
                    ops: total,
                    unit: "tasks/s",
                    commits: chunks,
                    secs,
                    hist,
                };
                Ok(vec![row(format!("enqueue, {chunk} tasks/commit"), measure)])
            }
            Workload::ClaimComplete => self.claim_complete(cfg).await,
        }
    }

    async fn claim_complete(&self, cfg: &Config) -> Result<Vec<Row>> {
        let backend = self.backend;
        let workers = cfg.workers;
        let limit = cfg.claim_limit;
        let total = cfg.tasks;
        let before = self.store.queue_stats("bench").await?;
        ensure!(
            before.pending == total,
            "[{backend}] expected {total} pending tasks, found {before:?}"
        );
        progress!("[{backend}] claim (<= {limit}) + complete, {workers} workers: {total} tasks");
        let start = stopwatch();
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let store = Arc::clone(&self.store);
            handles.push(tokio::spawn(async move {
                let mut claim_hist = histogram();
                let mut complete_hist = histogram();
                let mut claims = 0u64;
                let worker = format!("bench-worker-{w}");
                loop {
                    let t0 = stopwatch();
                    let request = ClaimRequest::new(worker.as_str(), ["bench"])
                        .kinds([TaskKind::Activity])
                        .limit(limit);
                    let batch = store.claim(request).await?;
                    claim_hist.saturating_record(micros(t0.elapsed()));
                    claims += 1;
                    // Leases last 30 s and nothing fails, so an empty claim means every remaining
                    // task is held by another worker: this one is done.
                    if batch.is_empty() {
                        break;
                    }
                    for task in batch {
                        let t0 = stopwatch();
                        store.commit(Commit::new().complete(task.lease)).await?;
                        complete_hist.saturating_record(micros(t0.elapsed()));
                    }
                }
                Ok::<_, anyhow::Error>((claims, claim_hist, complete_hist))
            }));
        }
        let (mut claims, mut claim_hist, mut complete_hist) = (0, histogram(), histogram());
        for handle in handles {
            let (n, claimed, completed) = handle.await??;
            claims += n;
            merge(&mut claim_hist, &claimed)?;
            merge(&mut complete_hist, &completed)?;
        }
        let secs = start.elapsed().as_secs_f64();
        let completed = complete_hist.len();
        ensure!(
            completed == total,
            "[{backend}] completed {completed} of {total} tasks"
        );
        let after = self.store.queue_stats("bench").await?;
        ensure!(
            after.pending == 0 && after.leased == 0,
            "[{backend}] tasks left on the queue: {after:?}"
        );
        Ok(vec![
            Row {
                backend,
                workload: "claim + complete: complete commit".into(),
                measure: Measure {
                    clients: workers,
                    ops: completed,
                    unit: "tasks/s",
                    commits: completed,
                    secs,
                    hist: complete_hist,
                },
                latency_only: false,
                baseline: None,
            },
            Row {
                backend,
                workload: format!("claim + complete: claim call (<= {limit})"),
                measure: Measure {
                    clients: workers,
                    ops: claims,
                    unit: "claims/s",
                    commits: claims,
                    secs,
                    hist: claim_hist,
                },
                latency_only: true,
                baseline: None,
            },
        ])
    }
}
