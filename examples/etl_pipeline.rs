//! An ETL pipeline as a job workflow: a DAG of jobs, run durably on embedded SQLite.
//!
//! `fetch` pulls a day's sales from a (synthetic, and flaky: its first attempt times out) source;
//! four transforms then run at once on its output (revenue by region, top products, daily totals,
//! a quality check); `aggregate` combines their results into a summary. A side branch fetches
//! exchange rates from a service that is down: that job is declared `SkipDependents`, so when it
//! fails for good its dependent (`revenue_in_eur`) is skipped and the rest of the pipeline goes on.
//!
//! Progress is printed as jobs start and finish, read from the workflow's journal. Interrupt it
//! with Ctrl-C and run it again with the same file: it resumes the pipeline where it stopped.
//!
//! Run it with `cargo run -p quark-examples --example etl_pipeline [path/to/file.db]` (default: a
//! file in the system's temporary directory).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quark_history::{InstanceFilter, InstanceStatus, SqliteStore, Store};
use quark_worker::Worker;
use quark_workflow::{
    ActivityContext, ActivityError, Client, JOB_WORKFLOW, Job, JobInput, JobStepState, JobWorkflow,
    JobWorkflowHandle, JobWorkflowRunError, OnFailure, Registry, RetryPolicy, activity,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Source {
    rows: usize,
    seed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sale {
    day: u32,
    region: String,
    product: String,
    units: u32,
    cents: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Quality {
    rows: usize,
    rejected: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Summary {
    rows: usize,
    rejected: usize,
    revenue_cents: u64,
    best_region: String,
    top_product: String,
    busiest_day: u32,
}

const REGIONS: [&str; 4] = ["north", "south", "east", "west"];
const PRODUCTS: [&str; 6] = ["kettle", "toaster", "blender", "grinder", "scale", "mixer"];

/// Stands in for real work, so that the progress can be watched.
async fn work(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Generates `rows` sales from `seed` (the same every time: a retried fetch returns the same data).
fn generate(source: &Source) -> Vec<Sale> {
    let mut state = source.seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    (0..source.rows)
        .map(|_| {
            // About one row in fifty has no units: a bad row the quality check rejects.
            let units = if next(50) == 0 { 0 } else { 1 + next(4) as u32 };
            Sale {
                day: 1 + next(30) as u32,
                region: REGIONS[next(4) as usize].to_string(),
                product: PRODUCTS[next(6) as usize].to_string(),
                units,
                cents: u64::from(units) * (500 + next(4_500)),
            }
        })
        .collect()
}

#[activity(
    retry(max_attempts = 4, initial = "300ms", max = "2s"),
    start_to_close = "30s"
)]
async fn fetch_sales(ctx: ActivityContext, source: Source) -> Result<Vec<Sale>, ActivityError> {
    work(300).await;
    if ctx.attempt() == 1 {
        return Err(ActivityError::message("sales API timed out (attempt 1)"));
    }
    Ok(generate(&source))
}

fn sales<I>(job: &JobInput<I>) -> Result<Vec<Sale>, ActivityError> {
    job.parent("fetch")
}

// ANCHOR: transform
#[activity]
async fn revenue_by_region(
    _ctx: ActivityContext,
    job: JobInput<()>,
) -> Result<BTreeMap<String, u64>, ActivityError> {
    work(900).await;
    let mut by = BTreeMap::new();
    for s in sales(&job)? {
        *by.entry(s.region).or_insert(0) += s.cents;
    }
    Ok(by)
}
// ANCHOR_END: transform

#[activity]
async fn top_products(
    _ctx: ActivityContext,
    job: JobInput<usize>,
) -> Result<Vec<(String, u64)>, ActivityError> {
    work(600).await;
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    for s in sales(&job)? {
        *by.entry(s.product).or_insert(0) += s.cents;
    }
    let mut ranked: Vec<(String, u64)> = by.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(job.input);
    Ok(ranked)
}

#[activity]
async fn daily_totals(_ctx: ActivityContext, job: JobInput<()>) -> Result<Vec<u64>, ActivityError> {
    work(1200).await;
    let mut days = vec![0u64; 31];
    for s in sales(&job)? {
        days[s.day as usize] += s.cents;
    }
    Ok(days)
}

#[activity]
async fn quality_check(_ctx: ActivityContext, job: JobInput<()>) -> Result<Quality, ActivityError> {
    work(400).await;
    let rows = sales(&job)?;
    let rejected = rows.iter().filter(|s| s.units == 0).count();
    Ok(Quality {
        rows: rows.len(),
        rejected,
    })
}

/// The exchange-rate service is down today.
#[activity]
async fn fetch_fx_rates(_ctx: ActivityContext, currency: String) -> Result<f64, ActivityError> {
    work(200).await;
    Err(ActivityError::message(format!(
        "rates service unavailable for {currency}"
    )))
}

#[activity]
async fn convert(_ctx: ActivityContext, job: JobInput<()>) -> Result<u64, ActivityError> {
    let rate: f64 = job.parent("fx_rates")?;
    let by_region: BTreeMap<String, u64> = job.parent("revenue_by_region")?;
    Ok((by_region.values().sum::<u64>() as f64 * rate) as u64)
}

#[activity]
async fn aggregate(_ctx: ActivityContext, job: JobInput<()>) -> Result<Summary, ActivityError> {
    work(300).await;
    let by_region: BTreeMap<String, u64> = job.parent("revenue_by_region")?;
    let top: Vec<(String, u64)> = job.parent("top_products")?;
    let days: Vec<u64> = job.parent("daily_totals")?;
    let quality: Quality = job.parent("quality_check")?;
    let best_region = by_region
        .iter()
        .max_by_key(|(_, cents)| **cents)
        .map(|(r, _)| r.clone())
        .unwrap_or_default();
    let busiest_day = (0..days.len()).max_by_key(|&d| days[d]).unwrap_or_default() as u32;
    Ok(Summary {
        rows: quality.rows,
        rejected: quality.rejected,
        revenue_cents: by_region.values().sum(),
        best_region,
        top_product: top.first().map(|(p, _)| p.clone()).unwrap_or_default(),
        busiest_day,
    })
}

// ANCHOR: pipeline
fn pipeline() -> anyhow::Result<JobWorkflow> {
    let transform = |job: Job| job.depends_on(["fetch"]);
    Ok(JobWorkflow::builder()
        .add(
            "fetch",
            Job::new(
                fetch_sales,
                &Source {
                    rows: 3_000,
                    seed: 2026,
                },
            ),
        )
        .add(
            "revenue_by_region",
            transform(Job::with_parents(revenue_by_region, &())),
        )
        .add(
            "top_products",
            transform(Job::with_parents(top_products, &3)),
        )
        .add(
            "daily_totals",
            transform(Job::with_parents(daily_totals, &())),
        )
        .add(
            "quality_check",
            transform(Job::with_parents(quality_check, &())),
        )
        .add(
            "aggregate",
            Job::with_parents(aggregate, &()).depends_on([
                "revenue_by_region",
                "top_products",
                "daily_totals",
                "quality_check",
            ]),
        )
        // A side branch that may fail without stopping the pipeline.
        .add(
            "fx_rates",
            Job::new(fetch_fx_rates, &"EUR".to_string())
                .retry(RetryPolicy::new(
                    2,
                    Duration::from_millis(300),
                    Duration::from_secs(1),
                ))
                .on_failure(OnFailure::SkipDependents),
        )
        .add(
            "revenue_in_eur",
            Job::with_parents(convert, &()).depends_on(["fx_rates", "revenue_by_region"]),
        )
        .build()?)
}
// ANCHOR_END: pipeline

/// A short description of a job's output.
fn brief(output: &serde_json::Value) -> String {
    match output {
        serde_json::Value::Array(items) => format!("{} items", items.len()),
        serde_json::Value::Object(fields) if fields.len() > 3 => format!("{} fields", fields.len()),
        other => {
            let text = other.to_string();
            if text.len() > 60 {
                format!("{}...", &text[..text.floor_char_boundary(57)])
            } else {
                text
            }
        }
    }
}

/// Prints the jobs whose state changed since `seen`; returns whether the workflow has ended.
async fn show_progress(
    client: &Client,
    run: &JobWorkflowHandle,
    seen: &mut BTreeMap<String, &'static str>,
) -> anyhow::Result<bool> {
    // Whether it ended is read first, so that the progress printed last is the final one.
    let closed = client.describe(run.id()).await?.status.is_closed();
    let progress = run.progress().await?;
    for job in &progress.jobs {
        let label = job.state.label();
        if seen.get(&job.name) == Some(&label) {
            continue;
        }
        seen.insert(job.name.clone(), label);
        let what = match &job.state {
            JobStepState::Waiting => continue,
            JobStepState::Running => "running".to_string(),
            JobStepState::Completed { output } => format!("done: {}", brief(output)),
            JobStepState::Failed { error } => format!("FAILED: {error}"),
            JobStepState::Skipped { cause } => format!("skipped: `{cause}` failed"),
            other => other.to_string(),
        };
        println!(
            "  [{}/{}] {:<18} {what}",
            progress.finished(),
            progress.total(),
            job.name
        );
    }
    Ok(closed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        std::env::temp_dir()
            .join("quark-etl-pipeline.db")
            .display()
            .to_string()
    });
    let sqlite = Arc::new(
        SqliteStore::open(&path)
            .await
            .with_context(|| format!("opening {path}"))?,
    );
    let store: Arc<dyn Store> = sqlite.clone();
    let client = Client::new(Arc::clone(&store));

    // Resume an unfinished pipeline, or start a new one.
    let unfinished = store
        .list_instances(InstanceFilter {
            instance_type: Some(JOB_WORKFLOW.into()),
            statuses: vec![InstanceStatus::Running],
            limit: 1,
            ..Default::default()
        })
        .await?;
    let run = match unfinished.first() {
        Some(found) => {
            println!("resuming {} from {path}", found.id);
            client.job_workflow(&found.id)
        }
        None => {
            let dag = pipeline()?;
            let id = format!("etl-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
            println!("starting {id} in {path}; stages:");
            for (i, stage) in dag.stages().iter().enumerate() {
                println!("  {}: {}", i + 1, stage.join(", "));
            }
            client.start_job_workflow(&id, &dag).await?
        }
    };

    let registry = Registry::new()
        .register(fetch_sales)
        .register(revenue_by_region)
        .register(top_products)
        .register(daily_totals)
        .register(quality_check)
        .register(fetch_fx_rates)
        .register(convert)
        .register(aggregate);
    let worker = Worker::builder()
        .store(Arc::clone(&store))
        .workflows(registry)
        .poll_interval(Duration::from_millis(50))
        .shutdown_grace(Duration::from_secs(5))
        .build()?
        .start()
        .await?;

    let mut seen = BTreeMap::new();
    // One listener for the whole run: a Ctrl-C that comes while the progress is being read is
    // not lost.
    let stop = quark_worker::shutdown_signal();
    tokio::pin!(stop);
    let interrupted = loop {
        if show_progress(&client, &run, &mut seen).await? {
            break false;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = &mut stop => break true,
        }
    };
    worker.shutdown().await;
    // The worker finishes what it has in hand before it stops, which may have been the end.
    let ended = client.describe(run.id()).await?.status.is_closed();
    let outcome = if interrupted && !ended {
        None
    } else {
        show_progress(&client, &run, &mut seen).await?;
        Some(run.result().await)
    };
    // Closing checkpoints SQLite's write-ahead log into the file, for the next run to read.
    sqlite.close().await;
    let Some(outcome) = outcome else {
        println!(
            "\ninterrupted; run again with {path} to resume {}",
            run.id()
        );
        return Ok(());
    };

    let report = match outcome {
        Ok(report) => report,
        Err(JobWorkflowRunError::JobFailed { job, error, .. }) => {
            anyhow::bail!("the pipeline failed at `{job}`: {error}")
        }
        Err(e) => return Err(e.into()),
    };
    let summary: Summary = report.output("aggregate")?;
    println!("\nsummary of {}:", run.id());
    println!(
        "  {} rows ({} rejected by the quality check)",
        summary.rows, summary.rejected
    );
    println!(
        "  revenue {}.{:02}, best region {}, top product {}, busiest day {}",
        summary.revenue_cents / 100,
        summary.revenue_cents % 100,
        summary.best_region,
        summary.top_product,
        summary.busiest_day
    );
    println!(
        "  completed: {}; failed: {}; skipped: {}",
        report.in_state("completed").join(", "),
        report.in_state("failed").join(", "),
        report.in_state("skipped").join(", ")
    );
    Ok(())
}
