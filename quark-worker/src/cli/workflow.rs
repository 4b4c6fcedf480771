//! `quark workflow ...`: instances from the command line, and replaying exported histories.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use quark_history::{
    HistoryRange, InstanceFilter, InstanceStatus, RecordedEvent, Store, Timestamp, TypeKind,
};
use quark_workflow::{Client, Connection, Registry, ReplayReport, Replayer, StartOptions};
use serde::Serialize;

use super::output::{self, Output};
use super::workflow_output::{
    Answered, Changed, print_answer, print_changed, print_describe, print_history, print_list,
};
use super::{duration, json_payload};

/// `quark workflow ...`
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Starts an instance of an orchestration linked into this binary or registered by a worker
    /// (then at the version and on the queue that worker's code declares).
    Start {
        /// The orchestration type.
        #[arg(long = "type")]
        instance_type: String,
        /// The instance id.
        id: String,
        /// The input, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// The queue of its orchestration tasks (default: the orchestration's own).
        #[arg(long)]
        queue: Option<String>,
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
    /// Asks a query of an instance: a worker that runs its code answers from the instance's
    /// state (its final state, once it has ended). Nothing is recorded. Prints the answer.
    Query {
        /// The instance id.
        id: String,
        /// The query's name, as the orchestration declares it.
        name: String,
        /// Its argument, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// How long to wait for a worker's answer.
        #[arg(long, default_value = "30s", value_parser = duration::parse)]
        timeout: std::time::Duration,
    },
    /// Sends an update to a running instance and prints its result: its validator may reject
    /// it (and nothing is recorded); once accepted, it is recorded and its handler runs.
    Update {
        /// The instance id.
        id: String,
        /// The update's name, as the orchestration declares it.
        name: String,
        /// Its argument, as JSON.
        #[arg(long, default_value = "null")]
        input: String,
        /// An id for it (default: a new one, printed on a timeout): sent again with the same
        /// id, an update is not applied twice, and the command waits for the first one's result.
        #[arg(long)]
        update_id: Option<String>,
        /// How long to wait for its result.
        #[arg(long, default_value = "30s", value_parser = duration::parse)]
        timeout: std::time::Duration,
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
    List(ListArgs),
    /// Shows one instance; with `--at` or `--at-time`, as it stood then (read from its history:
    /// its status, what it waited for, what it had received).
    Describe {
        /// The instance id.
        id: String,
        /// After this many events of its history.
        #[arg(long, conflicts_with = "at_time")]
        at: Option<u64>,
        /// After every event recorded at or before this time (RFC 3339).
        #[arg(long)]
        at_time: Option<String>,
    },
    /// Prints an instance's history. `--output json` writes the file `quark workflow replay`
    /// and the `Replayer` read: an array of recorded events as the store keeps them (times in
    /// microseconds since the epoch, the one exception to RFC 3339 in this CLI's JSON, so that
    /// exports stay byte-compatible with `Client::history` and checked-in histories).
    History {
        /// The instance id.
        id: String,
    },
    /// Replays exported histories (`quark workflow history ID --output json > FILE`) against the
    /// orchestrations linked into this binary: a divergence means this code would block those
    /// instances. Fails if any history does not replay.
    Replay {
        /// The history files: JSON arrays of recorded events, or one event a line.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where call sites' source files are looked up, to show the lines that diverge
        /// (default: the current directory and its ancestors).
        #[arg(long)]
        source_root: Option<PathBuf>,
    },
}

impl WorkflowCommand {
    pub(super) fn reads_only(&self) -> bool {
        matches!(
            self,
            WorkflowCommand::List { .. }
                | WorkflowCommand::Describe { .. }
                | WorkflowCommand::History { .. }
                | WorkflowCommand::Replay { .. }
        )
    }
}

/// Which instances a listing shows, and where its page starts.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only this orchestration type.
    #[arg(long = "type")]
    pub instance_type: Option<String>,
    /// Only these statuses (running, blocked, completed, failed, cancelled, terminated,
    /// continued_as_new).
    #[arg(long, value_delimiter = ',')]
    pub status: Vec<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Continue after this cursor (printed at the end of the previous page; in JSON, each
    /// row's `cursor`).
    #[arg(long)]
    pub after: Option<String>,
    /// Only instances whose id starts with this.
    #[arg(long)]
    pub id_prefix: Option<String>,
}

impl ListArgs {
    /// The filter these arguments make: statuses and cursor read, or a clear error.
    pub(super) fn filter(&self) -> anyhow::Result<InstanceFilter> {
        let statuses = self
            .status
            .iter()
            .map(|s| s.parse::<InstanceStatus>().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let after = self.after.as_deref().map(parse_cursor).transpose()?;
        Ok(InstanceFilter {
            instance_type: self.instance_type.clone(),
            statuses,
            after,
            limit: self.limit,
            id_prefix: self.id_prefix.clone(),
            ..Default::default()
        })
    }
}

/// The outcome of replaying one history file.
#[derive(Debug, Serialize)]
struct Replayed {
    file: String,
    ok: bool,
    /// How many events were replayed (all of them, if `ok`).
    events: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_patch_branches: Option<Vec<String>>,
    /// Why not, if not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(super) async fn run(
    store: &Arc<dyn Store>,
    cmd: WorkflowCommand,
    registry: Option<&Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let client = Client::new(Arc::clone(store));
    let changed = match cmd {
        WorkflowCommand::Start {
            instance_type,
            id,
            input,
            queue,
        } => {
            let linked = registry.and_then(|r| {
                r.catalog("")
                    .into_iter()
                    .find(|t| t.kind == TypeKind::Orchestration && t.name == instance_type)
            });
            let known = match linked {
                Some(t) => Some(t),
                None => {
                    store
                        .registered_type(TypeKind::Orchestration, &instance_type)
                        .await?
                }
            };
            let Some(known) = known else {
                bail!(
                    "no orchestration `{instance_type}` is linked into this binary or registered by \
                     a worker of this database; nothing was started (start a worker that runs it, \
                     or build your own binary with quark_worker::cli::main_with(registry))"
                );
            };
            let input = json_payload("input", &input)?;
            client
                .start_by_name(
                    &instance_type,
                    known.version,
                    &id,
                    input,
                    StartOptions::default().queue(queue.unwrap_or(known.queue)),
                )
                .await?;
            Changed::started(id, instance_type)
        }
        WorkflowCommand::Signal { id, name, value } => {
            let value = json_payload("signal's value", &value)?;
            let value: serde_json::Value = value.decode()?;
            client.signal(&id, &name, &value).await?;
            Changed::signalled(id, name)
        }
        cmd @ (WorkflowCommand::Query { .. } | WorkflowCommand::Update { .. }) => {
            return ask(&client, cmd, output, out).await;
        }
        WorkflowCommand::Cancel { id, reason } => {
            client.cancel(&id, &reason).await?;
            Changed::cancel_requested(id)
        }
        WorkflowCommand::Terminate { id, reason } => {
            client.terminate(&id, &reason).await?;
            Changed::terminated(id)
        }
        WorkflowCommand::List(args) => {
            let page = store.list_instances(args.filter()?).await?;
            return print_list(out, output, page, args.limit);
        }
        WorkflowCommand::Describe { id, at, at_time } => {
            let Some(i) = store.get_instance(&id).await? else {
                bail!("no instance `{id}`")
            };
            if at.is_none() && at_time.is_none() {
                return print_describe(out, output, i);
            }
            let history = read_history_with_progress(&**store, &id, i.history_len).await?;
            let version = match (at, at_time) {
                (Some(v), _) if v > history.len() as u64 => {
                    bail!(
                        "instance `{id}` has {} events: there is no version {v}",
                        history.len()
                    )
                }
                (Some(v), _) => v,
                (None, Some(t)) => {
                    let t = super::events::parse_time(&t)?;
                    history
                        .iter()
                        .take_while(|e| e.recorded_at <= t)
                        .last()
                        .map_or(0, |e| e.seq)
                }
                (None, None) => unreachable!("checked above"),
            };
            let Some(past) = quark_workflow::workflow_at(&history, version) else {
                bail!(
                    "`{id}` is not a workflow instance (an entity stream? see `quark entity show`)"
                );
            };
            return output::one(out, output, &past, describe_past);
        }
        WorkflowCommand::History { id } => {
            let Some(instance) = store.get_instance(&id).await? else {
                bail!("no instance `{id}`");
            };
            let history = read_history_with_progress(&**store, &id, instance.history_len).await?;
            return print_history(out, output, &history);
        }
        WorkflowCommand::Replay { files, source_root } => {
            return replay(&files, source_root, registry, output, out);
        }
    };
    print_changed(out, output, &changed)
}

fn describe_past(out: &mut dyn Write, w: &quark_workflow::WorkflowAt) -> anyhow::Result<()> {
    writeln!(
        out,
        "id:       {}\ntype:     {}\nat:       event {} of its history{}\nstatus:   {}",
        w.instance_id,
        w.instance_type,
        w.version,
        w.at.map_or(String::new(), |t| format!(", recorded {}", output::time(t))),
        w.status
    )?;
    for a in &w.pending_activities {
        writeln!(
            out,
            "waiting:  activity {} (command {}), since {}",
            a.name,
            a.command,
            output::time(a.since)
        )?;
    }
    for t in &w.pending_timers {
        writeln!(
            out,
            "waiting:  timer (command {}), due {}",
            t.command,
            output::time(t.fire_at)
        )?;
    }
    for c in &w.pending_children {
        writeln!(
            out,
            "waiting:  child {} (command {}), since {}",
            c.name,
            c.command,
            output::time(c.since)
        )?;
    }
    for (name, seen) in &w.signals {
        writeln!(
            out,
            "signal:   {name} x{} (last: {})",
            seen.count, seen.last
        )?;
    }
    for (what, n) in &w.done {
        writeln!(out, "done:     {n} {what}")?;
    }
    if let Some(reason) = &w.cancel_requested {
        writeln!(out, "cancel:   requested ({reason})")?;
    }
    if let Some(output) = &w.output {
        writeln!(out, "output:   {output}")?;
    }
    if let Some(f) = &w.failure {
        writeln!(out, "failure:  {}", f.message)?;
    }
    Ok(())
}

/// `quark workflow replay`: every file replayed, then an error if any did not replay.
pub(super) fn replay(
    files: &[PathBuf],
    source_root: Option<PathBuf>,
    registry: Option<&Registry>,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let Some(registry) = registry else {
        bail!(
            "no orchestrations are linked into this binary, so there is no code to replay against \
             (build your own binary with quark_worker::cli::main_with(registry))"
        );
    };
    let mut replayer = Replayer::new(registry.clone());
    if let Some(root) = source_root {
        replayer = replayer.source_root(root);
    }
    let mut results = Vec::with_capacity(files.len());
    for file in files {
        let history = read_history_file(file)?;
        let report = replayer
            .replay(&history)
            .with_context(|| format!("replaying {}", file.display()))?;
        let file = file.display().to_string();
        results.push(match report {
            ReplayReport::Ok {
                events,
                old_branches,
                ..
            } => Replayed {
                file,
                ok: true,
                events,
                old_patch_branches: (!old_branches.is_empty())
                    .then(|| old_branches.into_iter().collect()),
                error: None,
            },
            ReplayReport::Diverged(d) => Replayed {
                file,
                ok: false,
                events: d.prefix,
                old_patch_branches: None,
                error: Some(d.to_string()),
            },
            ReplayReport::Panicked { prefix, message } => Replayed {
                file,
                ok: false,
                events: prefix,
                old_patch_branches: None,
                error: Some(format!("the code panicked: {message}")),
            },
            other => Replayed {
                file,
                ok: false,
                events: 0,
                old_patch_branches: None,
                error: Some(format!("{other:?}")),
            },
        });
    }
    output::rows(out, output, &results, |out, results| {
        for r in results {
            match &r.error {
                None => writeln!(out, "{}: replays ({} events)", r.file, r.events)?,
                Some(e) => writeln!(out, "{}: DIVERGES after {} events: {e}", r.file, r.events)?,
            }
        }
        Ok(())
    })?;
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!(
            "{failed} of {} histories do not replay against this binary's code",
            results.len()
        );
    }
    Ok(())
}

/// A history file as `quark workflow history` writes it: a JSON array, or one event a line.
fn read_history_file(path: &Path) -> anyhow::Result<Vec<RecordedEvent>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a history (a JSON array of recorded events, as `quark workflow \
                 history ID --output json` writes)",
                path.display()
            )
        });
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line).with_context(|| {
                format!(
                    "{} line {}: not a recorded event (a history is a JSON array of them, or \
                     one a line)",
                    path.display(),
                    n + 1
                )
            })
        })
        .collect()
}

/// Reads a history in pages, with a progress bar on the terminal for long ones.
async fn read_history_with_progress(
    store: &dyn Store,
    id: &str,
    len: u64,
) -> anyhow::Result<Vec<RecordedEvent>> {
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

pub(super) fn parse_cursor(cursor: &str) -> anyhow::Result<(Timestamp, String)> {
    let (at, id) = cursor
        .split_once('/')
        .context("a cursor looks like MICROS/ID")?;
    Ok((
        Timestamp::from_micros(at.parse().context("a cursor starts with a number")?),
        id.to_string(),
    ))
}

/// `quark workflow query|update` through `connection` (the database's client, or a server's):
/// the request, waited for at most its `--timeout`, and its answer printed.
pub(super) async fn ask(
    connection: &dyn Connection,
    cmd: WorkflowCommand,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let answered = match cmd {
        WorkflowCommand::Query {
            id,
            name,
            input,
            timeout,
        } => {
            let input = json_payload("query's argument", &input)?;
            let asked = connection.query_payload(&id, &name, input);
            let answer = within(timeout, asked, || no_answer(&id, None)).await??;
            Answered::query(id, name, &answer)
        }
        WorkflowCommand::Update {
            id,
            name,
            input,
            update_id,
            timeout,
        } => {
            let input = json_payload("update's argument", &input)?;
            let update_id = update_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let sent = connection.update_payload(&id, &update_id, &name, input);
            let result = within(timeout, sent, || no_answer(&id, Some(&update_id))).await??;
            Answered::update(id, name, update_id, &result)
        }
        other => anyhow::bail!("`{other:?}` is not a query or an update"),
    };
    print_answer(out, output, answered)
}

/// `call`'s outcome, or the error `late` makes if it takes longer than `timeout`.
async fn within<T>(
    timeout: std::time::Duration,
    call: impl std::future::Future<Output = T>,
    late: impl FnOnce() -> anyhow::Error,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| late())
}

/// The error of a query or an update nobody answered in time.
fn no_answer(id: &str, update_id: Option<&str>) -> anyhow::Error {
    match update_id {
        None => anyhow::anyhow!(
            "no worker answered the query to `{id}` in time: is a worker that runs its \
             orchestration serving its queue?"
        ),
        Some(update_id) => anyhow::anyhow!(
            "no result for update `{update_id}` of `{id}` in time; it may still be applied when \
             a worker takes it: run the command again with --update-id {update_id} to wait for \
             its result without sending it twice"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_parses_list_cursors() {
        let (at, id) = parse_cursor("123/order-1").unwrap();
        assert_eq!((at.as_micros(), id.as_str()), (123, "order-1"));
        assert!(parse_cursor("order-1").is_err());
    }
}
