//! `quark worker`: a worker on the database, or one for each shard this process serves
//! (`--shard`), from start to a graceful shutdown on SIGINT or SIGTERM.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use quark_history::Store;
use quark_workflow::Registry;
use serde::Serialize;

use super::output::Output;
use super::{WorkerArgs, duration, workers};

/// How long a worker that has spent its shutdown timeout still gets to hand its tasks back and
/// deregister (a few statements) before the process exits without them.
const HAND_BACK: Duration = Duration::from_secs(5);

pub(super) async fn worker(
    store: Arc<dyn Store>,
    args: WorkerArgs,
    registry: Option<Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if let Some(command) = args.command.clone() {
        return workers::run(&store, command, output, out).await;
    }
    let registry = linked(registry)?;
    let worker = worker_builder(store, &args, registry, true)?.build()?;
    serve_workers(vec![worker], args.shutdown_timeout, output, out).await
}

/// The registry a worker runs, or why there is none.
fn linked(registry: Option<Registry>) -> anyhow::Result<Registry> {
    registry.ok_or_else(|| {
        anyhow::anyhow!(
            "no orchestrations or activities are linked into this binary; build your own \
             with quark_worker::cli::main_with(registry)"
        )
    })
}

/// A worker on `store` with the command line's settings; `first` gets the metrics address (one
/// process serves it once).
fn worker_builder(
    store: Arc<dyn Store>,
    args: &WorkerArgs,
    registry: Registry,
    first: bool,
) -> anyhow::Result<crate::WorkerBuilder> {
    let mut builder = crate::Worker::builder()
        .store(store)
        .queues(args.queues.clone())
        .workflows(registry)
        .concurrency(quark_history::TaskKind::Activity, args.activity_concurrency)
        .shutdown_grace(args.shutdown_timeout);
    if let Some(id) = &args.id {
        builder = builder.id(id.clone());
    }
    #[cfg(feature = "postgres")]
    if !args.participants.is_empty() {
        builder = builder.participants(super::tx::participants(&args.participants)?);
    }
    if let Some(ns) = &args.namespace {
        builder = builder.namespace(ns.clone());
    }
    if let Some(dir) = &args.lock_dir {
        builder = builder.lock_dir(dir.clone());
    }
    if let Some(addr) = args.metrics_addr.filter(|_| first) {
        builder = builder.metrics_addr(addr);
    }
    Ok(builder.memory(crate::memory::MemoryConfig {
        limit: args.memory_limit,
        thresholds: args.memory_thresholds.unwrap_or_default(),
        ..Default::default()
    }))
}

/// `quark worker --shard ...`: a worker for each shard it serves, in this process.
#[cfg(feature = "postgres")]
pub(super) async fn sharded_worker(
    args: WorkerArgs,
    registry: Option<Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let specs = super::shards::parse_specs(&args.shards)?;
    let shards =
        quark_history::shards::Shards::connect(specs, quark_history::StoreConfig::default())
            .await?;
    // The map is checked first: a process with the wrong map must say so, whatever else.
    let registry = linked(registry)?;
    let serve: Vec<String> = if args.serve_shards.is_empty() {
        shards.map().names().to_vec()
    } else {
        args.serve_shards.clone()
    };
    let mut workers = Vec::new();
    for name in &serve {
        let Some(position) = shards.map().names().iter().position(|n| n == name) else {
            bail!(
                "--serve-shards names `{name}`, which is not in the shard map [{}]",
                shards.map().names().join(", ")
            );
        };
        let store = Arc::clone(shards.store(position));
        let builder = worker_builder(store, &args, registry.clone(), workers.is_empty())?
            .shard(shards.clone(), name);
        workers.push(builder.build()?);
    }
    serve_workers(workers, args.shutdown_timeout, output, out).await
}

/// Starts `workers`, serves until SIGINT or SIGTERM (or one is taken over), then shuts them all
/// down within `shutdown_timeout`.
async fn serve_workers(
    workers: Vec<crate::Worker>,
    shutdown_timeout: Duration,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // Listening from here on: a second Ctrl-C that comes right after the first, before the
    // shutdown below waits for it, is kept rather than lost.
    let mut signals =
        crate::shutdown::ShutdownSignals::new().context("listening for Ctrl-C and SIGTERM")?;
    let mut running = Vec::new();
    let mut ids = Vec::new();
    for worker in &workers {
        let started = worker.start().await?;
        ids.push(worker.id().to_string());
        announce(
            out,
            output,
            &Lifecycle::Serving {
                worker_id: worker.id().to_string(),
                metrics_addr: started.metrics_addr().map(|a| a.to_string()),
            },
        )?;
        running.push(started);
    }
    let taken_over = {
        let taken = futures::future::select_all(running.iter().map(|r| Box::pin(r.taken_over())));
        tokio::select! {
            () = signals.recv() => None,
            ((), i, _) = taken => Some(i),
        }
    };
    if let Some(i) = taken_over {
        futures::future::join_all(running.into_iter().map(|r| r.shutdown())).await;
        bail!(
            "worker {} stopped: another process registered its id (a restart of it, while \
             this one was thought dead); its tasks were taken back",
            ids[i]
        );
    }
    for worker_id in &ids {
        announce(
            out,
            output,
            &Lifecycle::Stopping {
                worker_id: worker_id.clone(),
                shutdown_timeout: duration::show(shutdown_timeout),
            },
        )?;
    }
    // The worker's own waits share one deadline (`shutdown_grace`); this bounds the rest (handing
    // tasks back, deregistering), so the whole shutdown has one deadline whatever the database does.
    tokio::select! {
        _ = futures::future::join_all(running.into_iter().map(|r| r.shutdown())) => {}
        () = tokio::time::sleep(shutdown_timeout + HAND_BACK) => {
            eprintln!(
                "quark: shutdown did not finish within {} (+{} to hand tasks back); exiting",
                duration::show(shutdown_timeout),
                duration::show(HAND_BACK)
            );
            std::process::exit(1);
        }
        () = signals.recv() => {
            // Nothing is lost: the leases of the tasks in hand run out, and other workers
            // (or this one, restarted) take them over.
            eprintln!("quark: interrupted again; exiting without waiting for the tasks in hand");
            std::process::exit(130);
        }
    }
    for worker_id in ids {
        announce(out, output, &Lifecycle::Stopped { worker_id })?;
    }
    Ok(())
}

/// What a running worker says as it goes: a line of text, or of JSON in the `json` and `jsonl`
/// formats (a stream, so one object a line in both).
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Lifecycle {
    Serving {
        worker_id: String,
        metrics_addr: Option<String>,
    },
    Stopping {
        worker_id: String,
        shutdown_timeout: String,
    },
    Stopped {
        worker_id: String,
    },
}

fn announce(out: &mut dyn Write, output: Output, event: &Lifecycle) -> anyhow::Result<()> {
    if output != Output::Table {
        serde_json::to_writer(&mut *out, event)?;
        writeln!(out)?;
    } else {
        match event {
            Lifecycle::Serving {
                worker_id,
                metrics_addr,
            } => {
                writeln!(out, "worker {worker_id} serving; Ctrl-C to stop")?;
                if let Some(addr) = metrics_addr {
                    writeln!(
                        out,
                        "metrics and health on http://{addr}/metrics, /healthz, /readyz"
                    )?;
                }
            }
            Lifecycle::Stopping {
                shutdown_timeout, ..
            } => writeln!(
                out,
                "stopping: finishing the tasks in hand (up to {shutdown_timeout}); Ctrl-C again \
                 to exit at once"
            )?,
            Lifecycle::Stopped { worker_id } => writeln!(out, "worker {worker_id} stopped")?,
        }
    }
    // Whoever reads the lines (a supervisor, a test) sees each when it happens.
    out.flush()?;
    Ok(())
}
