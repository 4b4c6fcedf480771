//! The `quark` command line. Users who link their own orchestrations build their own binary around
//! [`main`]; the stock `quark` binary is that binary with nothing linked in.
//!
//! This module is a binary's entry point that lives in the library so it can be reused, so it uses
//! `anyhow` like a binary does.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use quark_history::{
    HistoryRange, IdReusePolicy, InstanceFilter, InstanceStatus, NewInstance, Payload, Store,
    StoreConfig,
};
use quark_workflow::{Client, Registry};

mod jobs;
mod outbox;
pub use jobs::{JobCommand, QueueCommand};
mod saga;
pub use saga::{SagaCommand, StuckSaga, stuck_sagas};
mod schedule;
pub use outbox::OutboxCommand;
pub use schedule::ScheduleCommand;

/// Quark: durable execution for Rust.
#[derive(Debug, Parser)]
#[command(name = "quark", version, about)]
pub struct Cli {
    /// The database: `postgres://...` or `sqlite://file.db`. Default: `sqlite://quark.db` in the
    /// current directory.
    #[arg(long, env = "QUARK_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a worker for the orchestrations and activities linked into this binary until SIGINT or
    /// SIGTERM, then shuts down gracefully.
    Worker {
        /// The queues to serve.
        #[arg(long, value_delimiter = ',', default_value = "default")]
        queues: Vec<String>,
        /// The worker's id. Keep it across restarts: a worker restarted under its id takes back
        /// at once the tasks it held when it died (default: `<host>-<n>`, the smallest `n` no
        /// live worker on this host uses for this database, which a restart finds free again).
        #[arg(long = "worker-id", visible_alias = "id", env = "QUARK_WORKER_ID")]
        id: Option<String>,
        /// Where the ids' lock files live (default: `quark-workers` in the temporary directory);
        /// every worker on a host must use the same one.
        #[arg(long, env = "QUARK_WORKER_LOCK_DIR")]
        lock_dir: Option<std::path::PathBuf>,
        /// How many activities run at once (each slot is held until the activity's result is
        /// committed).
        #[arg(long, default_value_t = 256)]
        activity_concurrency: usize,
        /// How long in-flight work may take to finish at shutdown, in seconds.
        #[arg(long, default_value_t = 30)]
        shutdown_grace: u64,
        /// Serves `/metrics` (Prometheus), `/healthz` and `/readyz` on this address, e.g.
        /// `0.0.0.0:9090`.
        #[arg(long, env = "QUARK_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Applies the schema migrations.
    Migrate,
    /// Inspects workflow instances.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Checks an instance's hash chain.
    Verify {
        /// The instance id.
        id: String,
    },
    /// The dead-letter list.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Durable jobs: enqueue, list, show, cancel, retry, pause, resume.
    #[command(subcommand)]
    Job(JobCommand),
    /// Queues: statistics, pause and resume, rate limits.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Cron schedules of durable jobs.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// The transactional outbox: list messages, re-drive dead ones, send one.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Sagas: list those whose compensation never succeeded.
    #[command(subcommand)]
    Saga(SagaCommand),
}

/// `quark workflow ...`
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Starts an instance of a registered orchestration.
    Start {
        /// The orchestration type.
        #[arg(long = "type")]
        instance_type: String,
        /// The instance id.
        id: String,
        /// The input, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// The queue of its orchestration tasks.
        #[arg(long, default_value = "default")]
        queue: String,
    },
    /// Sends a signal.
    Signal {
        /// The instance id.
        id: String,
        /// The signal's name.
        name: String,
        /// The signal's value, as JSON.
        #[arg(long, default_value = "null")]
        value: String,
    },
    /// Requests cancellation; the orchestration may compensate before it ends.
    Cancel {
        /// The instance id.
        id: String,
        /// Why.
        #[arg(long, default_value = "cancelled from the command line")]
        reason: String,
    },
    /// Stops an instance at once, running no more of its code.
    Terminate {
        /// The instance id.
        id: String,
        /// Why.
        #[arg(long, default_value = "terminated from the command line")]
        reason: String,
    },
    /// Lists instances, newest first.
    List {
        /// Only this orchestration type.
        #[arg(long = "type")]
        instance_type: Option<String>,
        /// Only these statuses (running, blocked, completed, failed, cancelled, terminated,
        /// continued_as_new).
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this cursor (printed at the end of the previous page).
        #[arg(long)]
        after: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Shows one instance.
    Describe {
        /// The instance id.
        id: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Prints an instance's history; `--output json` writes what the Replayer reads.
    History {
        /// The instance id.
        id: String,
        #[command(flatten)]
        output: OutputArg,
    },
}

/// `quark dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead tasks, oldest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Puts dead tasks back on their queues (also `redrive`). Re-driving a dead turn unblocks
    /// its instance, and its next turn runs the code deployed now.
    #[command(alias = "redrive")]
    Retry {
        /// The task ids.
        #[arg(required = true)]
        task_ids: Vec<i64>,
    },
}

/// `--output table|json`
#[derive(Debug, Clone, Args)]
pub struct OutputArg {
    /// The output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Parses the command line, runs it, and reports errors on stderr. The stock `quark` binary: no
/// orchestrations are linked in, so `quark worker` and `quark workflow start` refuse to run.
pub async fn main() -> ExitCode {
    entry(None).await
}

/// Like [`main`], for a binary that links orchestrations and activities: `quark worker` runs them,
/// and `quark workflow start` checks the type against them.
///
/// ```no_run
/// # use quark_workflow::Registry;
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     let registry = Registry::new(); // .register(process_order).register(charge_card) ...
///     quark_worker::cli::main_with(registry).await
/// }
/// ```
pub async fn main_with(registry: Registry) -> ExitCode {
    entry(Some(registry)).await
}

async fn entry(registry: Option<Registry>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        // The application may have installed its own subscriber before calling `main_with`: keep
        // it rather than fail.
        .try_init()
        .ok();
    match run(Cli::parse(), registry).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quark: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens the store a command line points at.
pub async fn open_store(database_url: Option<&str>) -> anyhow::Result<Arc<dyn Store>> {
    let url = database_url.unwrap_or("sqlite://quark.db");
    quark_history::open(url, StoreConfig::default())
        .await
        .with_context(|| format!("opening {}", redact(url)))
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_string(),
        },
        _ => url.to_string(),
    }
}

/// Runs a parsed command line with the orchestrations and activities of `registry`, if the binary
/// links any.
pub async fn run(cli: Cli, registry: Option<Registry>) -> anyhow::Result<()> {
    let store = open_store(cli.database_url.as_deref()).await?;
    run_on(store, cli.command, registry, &mut std::io::stdout()).await
}

/// Runs a command on an open store, writing its output to `out`.
pub async fn run_on(
    store: Arc<dyn Store>,
    command: Command,
    registry: Option<Registry>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        Command::Worker {
            queues,
            id,
            lock_dir,
            activity_concurrency,
            shutdown_grace,
            metrics_addr,
        } => {
            let Some(registry) = registry else {
                bail!(
                    "no orchestrations or activities are linked into this binary; build your own \
                     with quark_worker::cli::main_with(registry)"
                );
            };
            let mut builder = crate::Worker::builder()
                .store(Arc::clone(&store))
                .queues(queues)
                .workflows(registry)
                .concurrency(quark_history::TaskKind::Activity, activity_concurrency)
                .shutdown_grace(std::time::Duration::from_secs(shutdown_grace));
            if let Some(id) = id {
                builder = builder.id(id);
            }
            if let Some(dir) = lock_dir {
                builder = builder.lock_dir(dir);
            }
            if let Some(addr) = metrics_addr {
                builder = builder.metrics_addr(addr);
            }
            let worker = builder.build()?;
            let running = worker.start().await?;
            writeln!(out, "worker {} serving; Ctrl-C to stop", worker.id())?;
            if let Some(addr) = running.metrics_addr() {
                writeln!(
                    out,
                    "metrics and health on http://{addr}/metrics, /healthz, /readyz"
                )?;
            }
            let taken_over = tokio::select! {
                () = crate::shutdown_signal() => false,
                () = running.taken_over() => true,
            };
            if taken_over {
                running.shutdown().await;
                bail!(
                    "worker {} stopped: another process registered its id (a restart of it, while \
                     this one was thought dead); its tasks were taken back",
                    worker.id()
                );
            }
            writeln!(
                out,
                "stopping: finishing the tasks in hand (up to {shutdown_grace} s); Ctrl-C again to exit at once"
            )?;
            tokio::select! {
                () = running.shutdown() => {}
                () = crate::shutdown_signal() => {
                    // Nothing is lost: the leases of the tasks in hand run out, and other workers
                    // (or this one, restarted) take them over.
                    eprintln!("quark: interrupted again; exiting without waiting for the tasks in hand");
                    std::process::exit(130);
                }
            }
            writeln!(out, "worker stopped: {:?}", worker.metrics())?;
        }
        Command::Migrate => {
            store.migrate().await?;
            writeln!(out, "migrations applied ({})", store.backend())?;
        }
        Command::Verify { id } => {
            let report = store.verify(&id).await?;
            match report.first_mismatch {
                None => writeln!(out, "{id}: {} events, hash chain intact", report.events)?,
                Some(seq) => bail!(
                    "{id}: hash chain broken at event {seq}; events from {seq} on are unverified"
                ),
            }
        }
        Command::Workflow(cmd) => workflow(&store, cmd, registry.as_ref(), out).await?,
        Command::Schedule(cmd) => schedule::run(&store, cmd, registry.as_ref(), out).await?,
        Command::Dlq(DlqCommand::List {
            queue,
            limit,
            output,
        }) => {
            let dead = store.list_dead(queue.as_deref(), limit).await?;
            if output.output == Output::Json {
                let rows: Vec<_> = dead
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "task_id": d.task_id, "kind": d.kind.as_str(), "queue": d.queue,
                            "instance_id": d.instance_id, "attempts": d.attempts, "error": d.error,
                            "died_at": d.died_at.to_string(),
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<13}  {:<12}  {:>8}  {:<27}  error",
                    "task", "kind", "queue", "attempts", "died at"
                )?;
                for d in dead {
                    writeln!(
                        out,
                        "{:>8}  {:<13}  {:<12}  {:>8}  {}  {}",
                        d.task_id, d.kind, d.queue, d.attempts, d.died_at, d.error
                    )?;
                }
            }
        }
        Command::Dlq(DlqCommand::Retry { task_ids }) => {
            for id in task_ids {
                store
                    .redrive(id)
                    .await
                    .with_context(|| format!("re-driving task {id}"))?;
                writeln!(out, "task {id} is back on its queue")?;
            }
        }
        Command::Job(cmd) => jobs::job(&store, cmd, registry.as_ref(), out).await?,
        Command::Queue(cmd) => jobs::queue(&store, cmd, out).await?,
        Command::Outbox(cmd) => outbox::outbox(&store, cmd, out).await?,
        Command::Saga(cmd) => saga::saga(&store, cmd, out).await?,
    }
    Ok(())
}

fn json_payload(what: &str, text: &str) -> anyhow::Result<Payload> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("the {what} is not valid JSON"))?;
    Ok(Payload::json(&value)?)
}

async fn workflow(
    store: &Arc<dyn Store>,
    cmd: WorkflowCommand,
    registry: Option<&Registry>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let client = Client::new(Arc::clone(store));
    match cmd {
        WorkflowCommand::Start {
            instance_type,
            id,
            input,
            queue,
        } => {
            if !registry.is_some_and(|r| r.has_orchestration(&instance_type)) {
                bail!(
                    "no orchestration `{instance_type}` is linked into this binary; nothing was started \
                     (build your own binary with quark_worker::cli::main_with(registry))"
                );
            }
            let input = json_payload("input", &input)?;
            let mut new = NewInstance::new(&id, &instance_type, input);
            new.queue = queue;
            store
                .create_instance(new, IdReusePolicy::RejectDuplicate)
                .await?;
            writeln!(out, "started {id} ({instance_type})")?;
        }
        WorkflowCommand::Signal { id, name, value } => {
            let value = json_payload("signal's value", &value)?;
            let value: serde_json::Value = value.decode()?;
            client.signal(&id, &name, &value).await?;
            writeln!(out, "signalled {id}: {name}")?;
        }
        WorkflowCommand::Cancel { id, reason } => {
            client.cancel(&id, &reason).await?;
            writeln!(out, "cancellation requested for {id}")?;
        }
        WorkflowCommand::Terminate { id, reason } => {
            client.terminate(&id, &reason).await?;
            writeln!(out, "terminated {id}")?;
        }
        WorkflowCommand::List {
            instance_type,
            status,
            limit,
            after,
            output,
        } => {
            let statuses = status
                .iter()
                .map(|s| s.parse::<InstanceStatus>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let after = after.map(|c| parse_cursor(&c)).transpose()?;
            let page = store
                .list_instances(InstanceFilter {
                    instance_type,
                    statuses,
                    after,
                    limit,
                    ..Default::default()
                })
                .await?;
            if output.output == Output::Json {
                serde_json::to_writer_pretty(&mut *out, &page)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<40}  {:<20}  {:<16}  {:>7}  created",
                "id", "type", "status", "events"
            )?;
            for i in &page {
                writeln!(
                    out,
                    "{:<40}  {:<20}  {:<16}  {:>7}  {}",
                    i.id, i.instance_type, i.status, i.history_len, i.created_at
                )?;
            }
            if page.len() as u32 == limit
                && let Some(last) = page.last()
            {
                writeln!(
                    out,
                    "\nmore: --after {}/{}",
                    last.created_at.as_micros(),
                    last.id
                )?;
            }
        }
        WorkflowCommand::Describe { id, output } => {
            let Some(i) = store.get_instance(&id).await? else {
                bail!("no instance `{id}`")
            };
            if output.output == Output::Json {
                serde_json::to_writer_pretty(&mut *out, &i)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(
                out,
                "id:       {}\ntype:     {} (version {})\nstatus:   {}",
                i.id, i.instance_type, i.version, i.status
            )?;
            if let Some(turn) = &i.blocked {
                writeln!(
                    out,
                    "blocked:  since {}, by dead turn {} (fix the code, deploy it, then \
                     `quark dlq redrive {}`)\nerror:    {}",
                    turn.since, turn.task_id, turn.task_id, turn.error
                )?;
            }
            writeln!(
                out,
                "created:  {}\nupdated:  {}",
                i.created_at, i.updated_at
            )?;
            writeln!(
                out,
                "history:  {} events, {} bytes",
                i.history_len, i.history_bytes
            )?;
            writeln!(out, "input:    {:?}", i.input)?;
            if let Some(o) = &i.output {
                writeln!(out, "output:   {o:?}")?;
            }
            if let Some(p) = &i.parent_id {
                writeln!(out, "parent:   {p}")?;
            }
        }
        WorkflowCommand::History { id, output } => {
            let Some(instance) = store.get_instance(&id).await? else {
                bail!("no instance `{id}`");
            };
            let history = read_history_with_progress(&**store, &id, instance.history_len).await?;
            if output.output == Output::Json {
                serde_json::to_writer_pretty(&mut *out, &history)?;
                writeln!(out)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:>5}  {:<27}  {:<20}  detail",
                "seq", "recorded at", "event"
            )?;
            for e in history {
                let detail = serde_json::to_value(&e.event)?;
                let detail = detail
                    .as_object()
                    .and_then(|o| o.values().next())
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let detail: String = detail.chars().take(100).collect();
                writeln!(
                    out,
                    "{:>5}  {}  {:<20}  {}",
                    e.seq,
                    e.recorded_at,
                    e.event.kind(),
                    detail
                )?;
            }
        }
    }
    Ok(())
}

/// Reads a history in pages, with a progress bar on the terminal for long ones.
async fn read_history_with_progress(
    store: &dyn Store,
    id: &str,
    len: u64,
) -> anyhow::Result<Vec<quark_history::RecordedEvent>> {
    const PAGE: u64 = 2_000;
    let bar = if len > PAGE {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("reading {id}"));
    let mut history = Vec::with_capacity(len as usize);
    loop {
        let from = history.len() as u64 + 1;
        let range = HistoryRange::Seq {
            from,
            until: from + PAGE,
        };
        let page = store.read_history(id, range).await?;
        let done = (page.len() as u64) < PAGE;
        bar.inc(page.len() as u64);
        history.extend(page);
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(history)
}

fn parse_cursor(cursor: &str) -> anyhow::Result<(quark_history::Timestamp, String)> {
    let (at, id) = cursor
        .split_once('/')
        .context("a cursor looks like MICROS/ID")?;
    Ok((
        quark_history::Timestamp::from_micros(at.parse().context("a cursor starts with a number")?),
        id.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_hides_passwords_in_urls() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://quark.db"), "sqlite://quark.db");
    }

    #[test]
    fn it_parses_list_cursors() {
        let (at, id) = parse_cursor("123/order-1").unwrap();
        assert_eq!((at.as_micros(), id.as_str()), (123, "order-1"));
        assert!(parse_cursor("order-1").is_err());
    }
}
