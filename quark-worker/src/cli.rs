//! The `quark` command line. Users who link their own orchestrations build their own binary around
//! [`main`]; the stock `quark` binary is that binary with nothing linked in.
//!
//! This module is a binary's entry point that lives in the library so it can be reused, so it uses
//! `anyhow` like a binary does.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand};
use quark_history::{Payload, Store};
use quark_workflow::Registry;
use serde::Serialize;

mod audit;
mod checkpoint;
mod dlq;
mod duration;
mod entity;
mod events;
mod jobs;
mod logs;
mod open;
mod outbox;
mod output;
mod place;
mod projection;
mod queue;
mod remote;
mod replay;
mod saga;
mod schedule;
mod serve;
#[cfg(feature = "postgres")]
mod shards;
mod tokens;
#[cfg(feature = "postgres")]
pub mod tx;
mod verify;
mod worker_process;
mod workers;
mod workflow;
mod workflow_output;
pub use audit::AuditCommand;
pub use checkpoint::CheckpointCommand;
pub use entity::EntityCommand;
pub use events::{EventsCommand, Filter, Range};
pub use jobs::JobCommand;
pub use logs::LogFormat;
pub use open::{open_store, open_store_read_only};
pub use outbox::OutboxCommand;
pub use output::Output;
pub use projection::ProjectionCommand;
pub use queue::QueueCommand;
pub use replay::ReplayArgs;
pub use saga::{SagaCommand, StuckSaga, stuck_sagas};
pub use schedule::ScheduleCommand;
pub use serve::ServeArgs;
#[cfg(feature = "postgres")]
pub use shards::{ShardArgs, ShardsCommand};
pub use tokens::TokenCommand;
pub use workers::WorkerCommand;
pub use workflow::{ListArgs, WorkflowCommand};

/// Quark: durable execution for Rust.
#[derive(Debug, Parser)]
#[command(name = "quark", version, about)]
pub struct Cli {
    /// The database: `postgres://...` or `sqlite://file.db`. Default: `sqlite://quark.db` in the
    /// current directory.
    // `hide_env_values`: `--help` would print the URL with its password.
    #[arg(
        long,
        env = "QUARK_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_url: Option<String>,
    /// An API server (`quark serve`) to talk to instead of the database, e.g.
    /// `https://quark.internal:7411`: the `workflow`, `job`, `dlq`, `queue`, `schedule` and
    /// `saga` commands go through it.
    #[arg(long, env = "QUARK_SERVER", global = true)]
    pub server: Option<String>,
    /// The token for --server (`quark token create` issues one).
    #[arg(long, env = "QUARK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The certificate authority (PEM) that signed the --server's certificate, when it is not
    /// one the system trusts.
    #[arg(long, env = "QUARK_SERVER_CA", global = true)]
    pub server_ca: Option<std::path::PathBuf>,
    /// The output format, for every command: `table` for people, `json` or `jsonl` (one object a
    /// line) for programs.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t = Output::Table,
        env = "QUARK_OUTPUT",
        global = true
    )]
    pub output: Output,
    /// How logs are written to stderr: `text`, or `json` (one object an event) for a log
    /// pipeline. `RUST_LOG` chooses what is logged (default `warn`).
    #[arg(
        long,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "QUARK_LOG_FORMAT",
        global = true
    )]
    pub log_format: LogFormat,
    /// Exports spans over OTLP (HTTP/protobuf) to this collector, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is appended; the `otel` feature). The service name is `OTEL_SERVICE_NAME`,
    /// or `quark`
    #[cfg(feature = "otel")]
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a worker for the orchestrations and activities linked into this binary until SIGINT or
    /// SIGTERM, then shuts down gracefully (a second Ctrl-C exits at once).
    Worker(WorkerArgs),
    /// Serves the gRPC API (package `quark.v1`, with health and reflection) on the database
    /// until SIGINT or SIGTERM. It needs no workflow code: it starts the types workers registered.
    Serve(serve::ServeArgs),
    /// The API's bearer tokens: create (shown once), list, revoke.
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Applies the schema migrations (the only command that creates or upgrades a schema, besides
    /// `worker` and the commands that write).
    Migrate,
    /// Inspects, starts and replays workflow instances.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Checks an instance's or entity stream's hash chain, or every one's (`--all`), against its
    /// events and the head its row records: names an altered event, missing events and a truncated
    /// history. Fails if any chain is broken.
    Verify {
        /// The instance id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every instance, with a progress bar on a terminal.
        #[arg(long)]
        all: bool,
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
    /// Signed checkpoints over the global order: proof that history was not rewritten, even
    /// with the database's hashes and heads rewritten to match.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// The events of every instance, in the global commit order.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Event-sourced entities: their state now or in the past, and what changed between versions.
    #[command(subcommand)]
    Entity(EntityCommand),
    /// Projections (read models): their versions, checkpoints, lease holders and lag.
    #[command(subcommand)]
    Projection(ProjectionCommand),
    /// Who caused what: the chain of events an id led to.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Two-phase transactions across databases: in-doubt ones, resolving one by hand,
    /// recovery.
    #[cfg(feature = "postgres")]
    #[command(subcommand)]
    Tx(tx::TxCommand),
    /// A sharded deployment as one: its map, adding a shard, listings merged across shards,
    /// an instance found on its shard.
    #[cfg(feature = "postgres")]
    #[command(subcommand)]
    Shards(shards::ShardsCommand),
    /// Prints a shell completion script: `quark completions bash > /etc/bash_completion.d/quark`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `quark worker`: every flag also reads an environment variable, for containers.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    /// Lists the registered workers instead of running one.
    #[command(subcommand)]
    pub command: Option<workers::WorkerCommand>,
    /// The queues to serve.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "default",
        env = "QUARK_QUEUES"
    )]
    pub queues: Vec<String>,
    /// Serves this namespace: each queue is its namespace's (`orders` is `acme::orders`).
    #[arg(long, env = "QUARK_NAMESPACE")]
    pub namespace: Option<String>,
    /// The worker's id. Keep it across restarts: a worker restarted under its id takes back
    /// at once the tasks it held when it died (default: `<host>-<n>`, the smallest `n` no
    /// live worker on this host uses for this database, which a restart finds free again).
    #[arg(long = "worker-id", visible_alias = "id", env = "QUARK_WORKER_ID")]
    pub id: Option<String>,
    /// Where the ids' lock files live (default: `quark-workers` in the temporary directory);
    /// every worker on a host must use the same one.
    #[arg(long, env = "QUARK_WORKER_LOCK_DIR")]
    pub lock_dir: Option<std::path::PathBuf>,
    /// How many activities run at once (each slot is held until the activity's result is
    /// committed).
    #[arg(long, default_value_t = 256, env = "QUARK_ACTIVITY_CONCURRENCY")]
    pub activity_concurrency: usize,
    /// How long a shutdown may take, all of it: in-flight work finishes within it, and what is
    /// still running then is handed back to the queue (`30s`, `2m`).
    #[arg(
        long,
        alias = "shutdown-grace",
        default_value = "30s",
        value_parser = duration::parse,
        env = "QUARK_SHUTDOWN_TIMEOUT"
    )]
    pub shutdown_timeout: Duration,
    /// Serves `/metrics` (Prometheus), `/healthz` and `/readyz` on this address, e.g.
    /// `0.0.0.0:9090`.
    #[arg(long, env = "QUARK_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The memory limit the pressure thresholds are fractions of (`2GiB`, `512MiB`; default:
    /// the control group's limit, else the machine's memory). Refused if above either.
    #[arg(long, value_parser = workers::parse_bytes, env = "QUARK_MEMORY_LIMIT")]
    pub memory_limit: Option<u64>,
    /// The warning, critical and reject thresholds, in percent of the limit (default
    /// `70,85,95`): warning keeps no new warm state and hands affinity away, critical evicts,
    /// reject stops claiming until memory is back under warning.
    #[arg(long, value_parser = workers::parse_thresholds, env = "QUARK_MEMORY_THRESHOLDS")]
    pub memory_thresholds: Option<crate::memory::Thresholds>,
    /// A PostgreSQL database transactional activities may also write in, committed with their
    /// results by two-phase commit: `NAME=postgres://...` (repeat it, or list them
    /// comma-separated). Every worker must name the same ones.
    #[cfg(feature = "postgres")]
    #[arg(
        long = "participant",
        value_name = "NAME=URL",
        value_delimiter = ',',
        env = "QUARK_PARTICIPANTS"
    )]
    pub participants: Vec<String>,
    /// The deployment's shards, in order: `NAME=postgres://...` (repeat it, or list them
    /// comma-separated). Every process must name the same ones in the same order; one whose map
    /// differs from what the databases record refuses to start. `--database` is not used then.
    #[cfg(feature = "postgres")]
    #[arg(
        long = "shard",
        value_name = "NAME=URL",
        value_delimiter = ',',
        env = "QUARK_SHARDS"
    )]
    pub shards: Vec<String>,
    /// The shards this process serves, a worker for each (default: all of them).
    #[cfg(feature = "postgres")]
    #[arg(
        long,
        value_delimiter = ',',
        requires = "shards",
        env = "QUARK_SERVE_SHARDS"
    )]
    pub serve_shards: Vec<String>,
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

impl Command {
    /// Whether the command only reads: it then opens the database without migrating it, and
    /// fails if it is absent or its schema is behind, instead of creating or upgrading it.
    pub fn reads_only(&self) -> bool {
        match self {
            Command::Verify { .. }
            | Command::Dlq(DlqCommand::List { .. })
            | Command::Job(JobCommand::List { .. } | JobCommand::Show { .. })
            | Command::Queue(QueueCommand::Stats { .. })
            | Command::Schedule(ScheduleCommand::List)
            | Command::Outbox(OutboxCommand::List { .. })
            | Command::Checkpoint(_)
            | Command::Events(_)
            | Command::Entity(_)
            | Command::Projection(_)
            | Command::Audit(_)
            | Command::Saga(_)
            | Command::Token(tokens::TokenCommand::List) => true,
            #[cfg(feature = "postgres")]
            Command::Tx(tx::TxCommand::InDoubt { .. }) => true,
            Command::Workflow(w) => w.reads_only(),
            Command::Worker(w) => w.command.is_some(),
            _ => false,
        }
    }

    /// The command's name, as its span is named (`quark outbox`).
    fn name(&self) -> &'static str {
        match self {
            Command::Worker(_) => "worker",
            Command::Migrate => "migrate",
            Command::Serve(_) => "serve",
            Command::Token(_) => "token",
            Command::Workflow(_) => "workflow",
            Command::Verify { .. } => "verify",
            Command::Dlq(_) => "dlq",
            Command::Job(_) => "job",
            Command::Queue(_) => "queue",
            Command::Schedule(_) => "schedule",
            Command::Outbox(_) => "outbox",
            Command::Saga(_) => "saga",
            Command::Checkpoint(_) => "checkpoint",
            Command::Events(_) => "events",
            Command::Entity(_) => "entity",
            Command::Projection(_) => "projection",
            Command::Audit(_) => "audit",
            #[cfg(feature = "postgres")]
            Command::Tx(_) => "tx",
            #[cfg(feature = "postgres")]
            Command::Shards(_) => "shards",
            Command::Completions { .. } => "completions",
        }
    }

    /// Whether the command needs no database at all.
    fn offline(&self) -> bool {
        matches!(
            self,
            Command::Completions { .. }
                | Command::Workflow(WorkflowCommand::Replay { .. })
                | Command::Checkpoint(CheckpointCommand::Keygen { .. })
        )
    }
}

/// Parses the command line, runs it, and reports errors on stderr. The stock `quark` binary: no
/// orchestrations are linked in, so `quark worker`, `quark workflow start` and `quark workflow
/// replay` refuse to run.
pub async fn main() -> ExitCode {
    entry(None).await
}

/// Like [`main`], for a binary that links orchestrations and activities: `quark worker` runs them,
/// `quark workflow start` checks the type against them, and `quark workflow replay` replays
/// exported histories against them.
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
    let cli = Cli::parse();
    let format = cli.log_format;
    #[cfg(feature = "otel")]
    let telemetry = logs::init(format, cli.otlp_endpoint.as_deref());
    #[cfg(not(feature = "otel"))]
    let telemetry = logs::init(format, None);
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            logs::report_failure(format, &e);
            return ExitCode::FAILURE;
        }
    };
    // One span for a command, so that what it creates (a job, a message) starts a trace. Not for
    // a worker: it runs for days, and each task it runs has a span of its own.
    let span = match &cli.command {
        Command::Worker(_) | Command::Serve(_) => tracing::Span::none(),
        command => tracing::info_span!(
            "command",
            "otel.name" = %format_args!("quark {}", command.name())
        ),
    };
    let command = !span.is_none();
    let result = tracing::Instrument::instrument(run(cli, registry), span).await;
    telemetry.shutdown(command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logs::report_failure(format, &e);
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command line with the orchestrations and activities of `registry`, if the binary
/// links any.
pub async fn run(cli: Cli, registry: Option<Registry>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    if cli.command.offline() {
        return run_offline(cli.command, cli.output, registry.as_ref(), &mut stdout);
    }
    #[cfg(feature = "postgres")]
    if let Command::Shards(cmd) = cli.command {
        return shards::run(cmd, registry.as_ref(), cli.output, &mut stdout).await;
    }
    if let Some(url) = cli.server {
        let server = remote::Server {
            url,
            token: cli.token,
            ca: cli.server_ca,
        };
        return remote::run(server, cli.command, cli.output, &mut stdout).await;
    }
    #[cfg(feature = "postgres")]
    if let Command::Worker(args) = &cli.command
        && args.command.is_none()
        && !args.shards.is_empty()
    {
        return worker_process::sharded_worker(args.clone(), registry, cli.output, &mut stdout)
            .await;
    }
    let url = cli.database_url.as_deref();
    let store = if cli.command.reads_only() {
        open_store_read_only(url).await?
    } else {
        open_store(url).await?
    };
    run_on(store, cli.command, cli.output, registry, &mut stdout).await
}

/// The commands that need no database.
fn run_offline(
    command: Command,
    output: Output,
    registry: Option<&Registry>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "quark", out);
            Ok(())
        }
        Command::Workflow(WorkflowCommand::Replay { files, source_root }) => {
            workflow::replay(&files, source_root, registry, output, out)
        }
        Command::Checkpoint(CheckpointCommand::Keygen { out: path }) => {
            checkpoint::keygen(&path, output, out)
        }
        other => bail!("{other:?} needs a database"),
    }
}

/// Runs a command on an open store, writing its output to `out` in the `output` format.
pub async fn run_on(
    store: Arc<dyn Store>,
    command: Command,
    output: Output,
    registry: Option<Registry>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match command {
        command @ Command::Completions { .. } => {
            run_offline(command, output, registry.as_ref(), out)?
        }
        Command::Worker(args) => worker_process::worker(store, args, registry, output, out).await?,
        Command::Serve(args) => serve::run(store, args, output, out).await?,
        Command::Token(cmd) => tokens::run(&store, cmd, output, out).await?,
        Command::Migrate => {
            store.migrate().await?;
            #[derive(Serialize)]
            struct Migrated {
                backend: String,
            }
            let done = Migrated {
                backend: store.backend().to_string(),
            };
            output::one(out, output, &done, |out, d| {
                writeln!(out, "migrations applied ({})", d.backend)?;
                Ok(())
            })?;
        }
        Command::Verify { id, all } => verify::run(&store, id, all, output, out).await?,
        Command::Workflow(cmd) => {
            workflow::run(&store, cmd, registry.as_ref(), output, out).await?
        }
        Command::Schedule(cmd) => {
            let place = place::Place::Database(&store);
            schedule::run(place, cmd, registry.as_ref(), output, out).await?
        }
        Command::Dlq(cmd) => dlq::run(place::Place::Database(&store), cmd, output, out).await?,
        Command::Job(cmd) => {
            jobs::job(
                place::Place::Database(&store),
                cmd,
                registry.as_ref(),
                output,
                out,
            )
            .await?
        }
        Command::Queue(cmd) => queue::run(place::Place::Database(&store), cmd, output, out).await?,
        Command::Outbox(cmd) => outbox::outbox(&store, cmd, output, out).await?,
        Command::Saga(cmd) => saga::saga(place::Place::Database(&store), cmd, output, out).await?,
        Command::Checkpoint(cmd) => checkpoint::run(&store, cmd, output, out).await?,
        Command::Events(cmd) => events::run(&store, cmd, registry.as_ref(), output, out).await?,
        Command::Entity(cmd) => entity::run(&store, cmd, registry.as_ref(), output, out).await?,
        Command::Projection(cmd) => {
            projection::run(&store, cmd, registry.as_ref(), output, out).await?
        }
        Command::Audit(cmd) => audit::run(&store, cmd, output, out).await?,
        #[cfg(feature = "postgres")]
        Command::Tx(cmd) => tx::run(&store, cmd, output, out).await?,
        #[cfg(feature = "postgres")]
        Command::Shards(cmd) => shards::run(cmd, registry.as_ref(), output, out).await?,
    }
    Ok(())
}

fn json_payload(what: &str, text: &str) -> anyhow::Result<Payload> {
    let value: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("the {what} is not valid JSON"))?;
    Ok(Payload::json(&value)?)
}
