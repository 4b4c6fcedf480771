//! `quark events replay` and `quark projection rebuild`: events applied again through the code
//! linked into the binary (projections and entities of its `Registry`), with progress.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use quark_history::{GlobalPosition, HistoryEvent, HistoryRange, Store, Timestamp};
use quark_workflow::Registry;
use quark_workflow::entity::At;
use quark_workflow::projection::RunProjection;
use serde::Serialize;

use super::events::parse_time;
use super::output::{self, Output, rfc3339, table, write_table};

/// What `quark events replay` applies again, and from where.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayArgs {
    /// Apply the global order to this projection (registered with `Registry::projection` in a
    /// binary built on `quark_worker::cli::main_with`). Without `--dry-run` its checkpoint is set
    /// back and what follows is applied again: only for read models whose writes are idempotent
    /// upserts (others: `quark projection rebuild`).
    #[arg(long, conflicts_with = "stream")]
    pub into: Option<String>,
    /// Replay one entity stream (`Account/alice`) through its entity's code (registered with
    /// `Registry::entity`): the state after each event. Without `--dry-run` the state at the end
    /// is saved as a fresh snapshot (after a schema change, or a snapshot that does not decode).
    #[arg(long)]
    pub stream: Option<String>,
    /// Start after this global position (`tx:position`; with `--into`).
    #[arg(long, conflicts_with_all = ["from_time", "from_version"])]
    pub after: Option<GlobalPosition>,
    /// Start at the first event recorded at or after this time (RFC 3339).
    #[arg(long, conflicts_with = "from_version")]
    pub from_time: Option<String>,
    /// Start at this version of the stream (with `--stream`; default 1).
    #[arg(long)]
    pub from_version: Option<u64>,
    /// Write nothing: a projection's pages are applied in transactions that are rolled back (its
    /// checkpoint stays, no lease is taken); a stream's state is shown, no snapshot saved.
    #[arg(long)]
    pub dry_run: bool,
}

/// A progress bar on a terminal (hidden otherwise).
fn bar(verb: &str, len: Option<u64>) -> indicatif::ProgressBar {
    let (bar, template) = match len {
        Some(n) => (
            indicatif::ProgressBar::new(n),
            format!("{{bar:40}} {verb} {{pos}}/{{len}} events ({{per_sec}}, {{eta}} left)"),
        ),
        None => (
            indicatif::ProgressBar::no_length(),
            format!("{{spinner}} {verb} {{pos}} events ({{per_sec}})"),
        ),
    };
    bar.with_style(indicatif::ProgressStyle::with_template(&template).expect("a valid template"))
}

fn linked(registry: Option<&Registry>, what: &str) -> anyhow::Result<Registry> {
    registry.cloned().ok_or_else(|| {
        anyhow!(
            "{what} runs the code linked into this binary, and this one has none: build your own \
             with quark_worker::cli::main_with(registry)"
        )
    })
}

/// A projector of registered projection `name`, owned by this command.
fn projector(
    registry: &Registry,
    store: &Arc<dyn Store>,
    name: &str,
) -> anyhow::Result<Arc<dyn RunProjection>> {
    let Some(make) = registry.projections().get(name) else {
        let known: Vec<&str> = registry.projections().keys().map(String::as_str).collect();
        bail!(
            "projection `{name}` is not registered in this binary (Registry::projection); it has {}",
            match known.is_empty() {
                true => "none".to_string(),
                false => known.join(", "),
            }
        );
    };
    let owner = format!("quark-cli-{}", uuid::Uuid::now_v7().simple());
    Ok(make(Arc::clone(store), &owner))
}

/// The position before the first event recorded at or after `t` in the global order.
async fn position_before(store: &Arc<dyn Store>, t: Timestamp) -> anyhow::Result<GlobalPosition> {
    let mut before = GlobalPosition::START;
    loop {
        let page = store.read_all(before, 1000).await?;
        if page.is_empty() {
            return Ok(before);
        }
        for e in page {
            if e.event.recorded_at >= t {
                return Ok(before);
            }
            before = e.position;
        }
    }
}

#[derive(Debug, Serialize)]
struct ProjectionReplay {
    projection: String,
    version: u32,
    from: String,
    events: u64,
    dry_run: bool,
    /// In a dry run, the events by kind (entity events by their type).
    by_kind: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct StreamStep {
    version: u64,
    event_type: String,
    #[serde(serialize_with = "rfc3339")]
    recorded_at: Timestamp,
    /// The entity's state after the event.
    state: serde_json::Value,
}

pub(super) async fn replay(
    store: &Arc<dyn Store>,
    registry: Option<&Registry>,
    args: ReplayArgs,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match (&args.into, &args.stream) {
        (Some(name), None) => {
            if args.from_version.is_some() {
                bail!("--from-version is a version of a stream: use it with --stream");
            }
            let registry = linked(registry, "replaying into a projection")?;
            let projector = projector(&registry, store, name)?;
            let from = match (args.after, &args.from_time) {
                (Some(p), _) => p,
                (None, Some(t)) => position_before(store, parse_time(t)?).await?,
                (None, None) => GlobalPosition::START,
            };
            let total = store.count_after(from, u64::MAX).await?;
            let verb = match args.dry_run {
                true => "tried",
                false => "replayed",
            };
            let progress = bar(verb, Some(total));
            let mut tick = |n: u64, _: GlobalPosition| progress.set_position(n);
            let replayed = projector.replay(from, args.dry_run, &mut tick).await;
            if !args.dry_run
                && let Err(e) = projector.release().await
            {
                tracing::warn!("giving the projection's lease up: {e}");
            }
            progress.finish_and_clear();
            let replayed = replayed?;
            let view = ProjectionReplay {
                projection: name.clone(),
                version: projector.version(),
                from: from.to_string(),
                events: replayed.events,
                dry_run: args.dry_run,
                by_kind: replayed.by_kind,
            };
            output::one(out, output, &view, |out, v| {
                match v.dry_run {
                    true => writeln!(
                        out,
                        "dry run: projection `{}` v{} applied {} events after {} and wrote nothing",
                        v.projection, v.version, v.events, v.from
                    )?,
                    false => writeln!(
                        out,
                        "projection `{}` v{} applied {} events again from {}",
                        v.projection, v.version, v.events, v.from
                    )?,
                }
                for (kind, n) in &v.by_kind {
                    writeln!(out, "  {kind}: {n}")?;
                }
                Ok(())
            })
        }
        (None, Some(stream)) => {
            if args.after.is_some() {
                bail!("--after is a position of the global order: use it with --into");
            }
            let registry = linked(registry, "replaying a stream")?;
            let (entity_type, key) = stream
                .split_once('/')
                .ok_or_else(|| anyhow!("`{stream}` is not a stream id (TYPE/KEY)"))?;
            let Some(instance) = store.get_instance(stream).await? else {
                bail!("no stream `{stream}`");
            };
            let from = match (args.from_version, &args.from_time) {
                (Some(v), _) => v.max(1),
                (None, Some(t)) => {
                    let t = parse_time(t)?;
                    let range = HistoryRange::Time {
                        from: t,
                        until: Timestamp::from_micros(i64::MAX),
                    };
                    match store.read_history(stream, range).await?.first() {
                        Some(e) => e.seq,
                        None => instance.history_len + 1,
                    }
                }
                (None, None) => 1,
            };
            let events = store.read_history(stream, HistoryRange::From(from)).await?;
            let progress = bar("replayed", Some(events.len() as u64));
            let mut steps = Vec::with_capacity(events.len());
            for e in &events {
                let HistoryEvent::EntityEvent { event_type, .. } = &e.event else {
                    bail!(
                        "`{stream}` is not an entity stream (event {} is a {})",
                        e.seq,
                        e.event.kind()
                    );
                };
                let read = registry
                    .read_entity(
                        entity_type,
                        Arc::clone(store),
                        key,
                        Some(At::Version(e.seq)),
                    )
                    .ok_or_else(|| {
                        anyhow!(
                            "entity type `{entity_type}` is not registered in this binary \
                             (Registry::entity)"
                        )
                    })?;
                let (state, _) = read
                    .await
                    .map_err(|e| anyhow!(e))
                    .with_context(|| format!("the state of `{stream}` at version {}", e.seq))?;
                steps.push(StreamStep {
                    version: e.seq,
                    event_type: event_type.clone(),
                    recorded_at: e.recorded_at,
                    state,
                });
                progress.inc(1);
            }
            progress.finish_and_clear();
            let snapshot = match args.dry_run {
                true => None,
                false => Some(
                    registry
                        .snapshot_entity(entity_type, Arc::clone(store), key)
                        .ok_or_else(|| anyhow!("entity type `{entity_type}` is not registered"))?
                        .await
                        .map_err(|e| anyhow!(e))?,
                ),
            };
            output::rows(out, output, &steps, |out, steps| {
                let mut t = table(["version", "event", "recorded at", "state after"]);
                for s in steps {
                    t.add_row([
                        s.version.to_string(),
                        s.event_type.clone(),
                        output::time(s.recorded_at),
                        s.state.to_string(),
                    ]);
                }
                write_table(out, &t)
            })?;
            if output == Output::Table {
                match snapshot {
                    Some(v) if v > 0 => writeln!(out, "snapshot saved at version {v}")?,
                    Some(_) => writeln!(out, "the stream has no events: no snapshot")?,
                    None => writeln!(out, "dry run: no snapshot saved")?,
                }
            }
            Ok(())
        }
        _ => bail!("say what to replay: --into PROJECTION, or --stream TYPE/KEY"),
    }
}

#[derive(Debug, Serialize)]
struct Rebuilt {
    projection: String,
    version: u32,
    events: u64,
}

/// `quark projection rebuild NAME`: empties the read model and builds it again from zero.
pub(super) async fn rebuild(
    store: &Arc<dyn Store>,
    registry: Option<&Registry>,
    name: &str,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let registry = linked(registry, "rebuilding a projection")?;
    let projector = projector(&registry, store, name)?;
    let total = store.count_after(GlobalPosition::START, u64::MAX).await?;
    let progress = bar("rebuilt", Some(total));
    let mut tick = |n: u64, _: GlobalPosition| progress.set_position(n);
    let rebuilt = projector.rebuild(&mut tick).await;
    if let Err(e) = projector.release().await {
        tracing::warn!("giving the projection's lease up: {e}");
    }
    progress.finish_and_clear();
    let events = rebuilt.with_context(|| {
        format!(
            "rebuilding projection `{name}` (a worker that runs it holds its lease: stop it, or \
             let its lease run out)"
        )
    })?;
    let view = Rebuilt {
        projection: name.to_string(),
        version: projector.version(),
        events,
    };
    output::one(out, output, &view, |out, v| {
        writeln!(
            out,
            "projection `{}` v{} rebuilt from zero: {} events applied",
            v.projection, v.version, v.events
        )?;
        Ok(())
    })
}
