//! `quark --server URL workflow ...`: the workflow commands through the API (`quark serve`)
//! instead of the database, with a token (`--token`, `QUARK_TOKEN`). They print what the same
//! commands print on the database.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use quark_history::InstanceFilter;
use quark_workflow::{Connection, StartOptions};

use super::output::Output;
use super::workflow::{WorkflowCommand, ask};
use super::workflow_output::{Changed, print_changed, print_describe, print_history, print_list};
use super::{Command, json_payload};
use crate::service::RemoteClient;

/// Where the API is, and how to talk to it.
#[derive(Debug, Clone)]
pub(super) struct Server {
    pub(super) url: String,
    pub(super) token: Option<String>,
    pub(super) ca: Option<PathBuf>,
}

pub(super) async fn run(
    server: Server,
    command: Command,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if !api_backed(&command) {
        return Err(refused(&command));
    }
    let tls = match &server.ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| {
                format!(
                    "reading the server's certificate authority {}",
                    path.display()
                )
            })?;
            Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
        }
        None if server.url.starts_with("https:") => {
            Some(tonic::transport::ClientTlsConfig::new().with_enabled_roots())
        }
        None => None,
    };
    let remote = RemoteClient::connect(&server.url, server.token.as_deref(), tls).await?;
    let place = super::place::Place::Server(&remote);
    match command {
        Command::Workflow(command) => workflow(&remote, command, output, out).await,
        Command::Job(command) => super::jobs::job(place, command, None, output, out).await,
        Command::Dlq(command) => super::dlq::run(place, command, output, out).await,
        Command::Queue(command) => super::queue::run(place, command, output, out).await,
        Command::Schedule(command) => super::schedule::run(place, command, None, output, out).await,
        Command::Saga(command) => super::saga::saga(place, command, output, out).await,
        other => Err(refused(&other)),
    }
}

/// Whether `command` has its calls in the API (and so goes through a server).
fn api_backed(command: &Command) -> bool {
    matches!(
        command,
        Command::Workflow(_)
            | Command::Job(_)
            | Command::Dlq(_)
            | Command::Queue(_)
            | Command::Schedule(_)
            | Command::Saga(_)
    )
}

/// The error of a command that works on the database only.
fn refused(command: &Command) -> anyhow::Error {
    anyhow::anyhow!(
        "`quark {}` works on the database (--database-url); through --server, `quark workflow`, \
         `job`, `dlq`, `queue`, `schedule` and `saga` go through the API",
        command.name()
    )
}

async fn workflow(
    remote: &RemoteClient,
    command: WorkflowCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let changed = match command {
        WorkflowCommand::Start {
            instance_type,
            id,
            input,
            queue,
        } => {
            let input = json_payload("input", &input)?;
            let mut options = StartOptions::default();
            options.queue = queue;
            // The server's id: a namespace's token's plain id comes back qualified.
            let started = remote
                .start_instance(&instance_type, 0, id, input, options)
                .await?;
            Changed::started(started, instance_type)
        }
        WorkflowCommand::Signal { id, name, value } => {
            let value = json_payload("signal's value", &value)?;
            remote.signal_payload(&id, &name, value).await?;
            Changed::signalled(id, name)
        }
        cmd @ (WorkflowCommand::Query { .. } | WorkflowCommand::Update { .. }) => {
            return ask(remote, cmd, output, out).await;
        }
        WorkflowCommand::Cancel { id, reason } => {
            remote.cancel(&id, &reason).await?;
            Changed::cancel_requested(id)
        }
        WorkflowCommand::Terminate { id, reason } => {
            remote.terminate(&id, &reason).await?;
            Changed::terminated(id)
        }
        WorkflowCommand::Describe { id, at, at_time } => {
            if at.is_some() || at_time.is_some() {
                bail!(
                    "`describe --at` reads the history itself: it needs the database (--database-url)"
                );
            }
            let instance = remote.describe(&id).await?;
            return print_describe(out, output, instance);
        }
        WorkflowCommand::List(args) => {
            // The server reads the cursor itself.
            let filter = InstanceFilter {
                after: None,
                ..args.filter()?
            };
            let (page, _next) = remote.list(&filter, args.after).await?;
            return print_list(out, output, page, args.limit);
        }
        WorkflowCommand::History { id } => {
            let history = remote.history(&id).await?;
            return print_history(out, output, &history);
        }
        WorkflowCommand::Replay { .. } => {
            bail!("`workflow replay` runs here, on exported files: it needs no --server")
        }
    };
    print_changed(out, output, &changed)
}
