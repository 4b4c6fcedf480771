//! `quark shards ...`: a sharded deployment as one: its map (`show`), adding a shard (`add`),
//! and the reads that merge the shards (`list`) or find an instance's shard for it (`describe`,
//! `history`). They talk to every shard's database; `--database` is not used.

use std::io::Write;
use std::sync::Arc;

use clap::{Args, Subcommand};
use quark_history::StoreConfig;
use quark_history::shards::{ShardCursor, Shards, connect_stores};
use quark_workflow::{Registry, ShardedClient};
use serde::Serialize;

use super::output::{self, Output, table, write_table};
use super::workflow::{self, ListArgs, WorkflowCommand};
use super::workflow_output::print_list;

/// The deployment's shards, as its workers name them.
#[derive(Debug, Clone, Args)]
pub struct ShardArgs {
    /// A shard: `NAME=postgres://...`, in the map's order (repeat it, or list them
    /// comma-separated in `QUARK_SHARDS`, as for `quark worker`).
    #[arg(
        long = "shard",
        value_name = "NAME=URL",
        value_delimiter = ',',
        env = "QUARK_SHARDS",
        required = true
    )]
    pub shards: Vec<String>,
}

/// `quark shards ...`
#[derive(Debug, Subcommand)]
pub enum ShardsCommand {
    /// The shard map: each shard's database, and the generation it joined in.
    Show {
        /// The shards.
        #[command(flatten)]
        shards: ShardArgs,
    },
    /// Adds a shard (an empty PostgreSQL database) at the end of the map. New instances spread
    /// over every shard at once; existing ones stay where they are. Refuses while any worker or
    /// client still routes by the current map: stop them, add, start them with the new shard.
    /// Safe to run again if it was cut short.
    Add {
        /// The new shard: `NAME=postgres://...`.
        #[arg(value_name = "NAME=URL")]
        new: String,
        /// The current shards.
        #[command(flatten)]
        shards: ShardArgs,
    },
    /// Instances on every shard, merged newest first, as one database would list them.
    List {
        /// The shards.
        #[command(flatten)]
        shards: ShardArgs,
        /// Which instances.
        #[command(flatten)]
        list: ListArgs,
    },
    /// One instance, from the shard it lives on (as `quark workflow describe`).
    Describe {
        /// The shards.
        #[command(flatten)]
        shards: ShardArgs,
        /// The instance id.
        id: String,
    },
    /// The events of every shard as one feed: each shard's in its global order (gap-safe, as
    /// `quark events`), the shards interleaved by recording time. Resume with the cursor a page
    /// ends with (in JSON, each row's `cursor`): a position per shard.
    Events {
        /// The shards.
        #[command(flatten)]
        shards: ShardArgs,
        /// Continue after this cursor.
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// An instance's history, from the shard it lives on (as `quark workflow history`).
    History {
        /// The shards.
        #[command(flatten)]
        shards: ShardArgs,
        /// The instance id.
        id: String,
    },
}

/// One shard in `quark shards show`.
#[derive(Debug, Serialize)]
struct ShardView {
    name: String,
    position: usize,
    /// The generation it joined in (1: the deployment's first).
    generation: usize,
    database: String,
}

/// One event in `quark shards events`.
#[derive(Debug, Serialize)]
struct EventLine {
    shard: String,
    /// `tx:position` on its shard.
    position: String,
    instance_id: String,
    seq: u64,
    #[serde(serialize_with = "output::rfc3339")]
    recorded_at: quark_history::Timestamp,
    kind: &'static str,
    /// The cursor to resume after this event.
    cursor: String,
}

/// `(name, url)` pairs from `NAME=URL` specifications.
pub(crate) fn parse_specs(specs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    specs
        .iter()
        .map(|spec| {
            spec.split_once('=')
                .filter(|(name, url)| !name.is_empty() && !url.is_empty())
                .map(|(name, url)| (name.to_owned(), url.to_owned()))
                .ok_or_else(|| {
                    anyhow::anyhow!("`{spec}` is not a shard: write NAME=postgres://...")
                })
        })
        .collect()
}

async fn connect(args: &ShardArgs) -> anyhow::Result<Shards> {
    Ok(Shards::connect(parse_specs(&args.shards)?, StoreConfig::default()).await?)
}

pub(super) async fn run(
    cmd: ShardsCommand,
    registry: Option<&Registry>,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        ShardsCommand::Show { shards } => show(&connect(&shards).await?, output, out),
        ShardsCommand::Add { new, shards } => {
            let [(name, url)]: [(String, String); 1] = parse_specs(&[new])?
                .try_into()
                .map_err(|_| anyhow::anyhow!("name one new shard"))?;
            let (map, stores) =
                connect_stores(parse_specs(&shards.shards)?, StoreConfig::default()).await?;
            let existing = map.names().iter().cloned().zip(stores).collect();
            let (_, mut new_store) =
                connect_stores([(name.as_str(), url)], StoreConfig::default()).await?;
            let new_store = new_store.pop().expect("one store");
            let shards = Shards::add_shard(existing, &name, new_store).await?;
            show(&shards, output, out)
        }
        ShardsCommand::List { shards, list } => {
            let client = ShardedClient::new(connect(&shards).await?);
            let page = client.list(list.filter()?).await?;
            print_list(out, output, page, list.limit)
        }
        ShardsCommand::Describe { shards, id } => {
            let shards = connect(&shards).await?;
            let store = Arc::clone(shards.locate_store(&id).await?);
            let cmd = WorkflowCommand::Describe {
                id,
                at: None,
                at_time: None,
            };
            workflow::run(&store, cmd, registry, output, out).await
        }
        ShardsCommand::Events {
            shards,
            after,
            limit,
        } => {
            let shards = connect(&shards).await?;
            let mut cursor: ShardCursor = after.as_deref().unwrap_or("").parse()?;
            let (page, next) = shards.read_all(&cursor, limit).await?;
            let lines: Vec<EventLine> = page
                .into_iter()
                .map(|e| {
                    cursor.advance(e.shard, e.event.position);
                    EventLine {
                        shard: shards.map().names()[e.shard].clone(),
                        position: e.event.position.to_string(),
                        instance_id: e.event.event.instance_id,
                        seq: e.event.event.seq,
                        recorded_at: e.event.event.recorded_at,
                        kind: e.event.event.event.kind(),
                        cursor: cursor.to_string(),
                    }
                })
                .collect();
            output::rows(out, output, &lines, |out, lines| {
                let mut t = table(["shard", "position", "instance", "seq", "kind", "recorded"]);
                for l in lines {
                    t.add_row([
                        l.shard.clone(),
                        l.position.clone(),
                        l.instance_id.clone(),
                        l.seq.to_string(),
                        l.kind.to_string(),
                        output::time(l.recorded_at),
                    ]);
                }
                write_table(out, &t)?;
                if lines.len() as u32 == limit {
                    writeln!(out, "\nmore: --after {next}")?;
                }
                Ok(())
            })
        }
        ShardsCommand::History { shards, id } => {
            let shards = connect(&shards).await?;
            let store = Arc::clone(shards.locate_store(&id).await?);
            workflow::run(
                &store,
                WorkflowCommand::History { id },
                registry,
                output,
                out,
            )
            .await
        }
    }
}

fn show(shards: &Shards, output: Output, out: &mut dyn Write) -> anyhow::Result<()> {
    let map = shards.map();
    let views: Vec<ShardView> = map
        .names()
        .iter()
        .enumerate()
        .map(|(position, name)| ShardView {
            name: name.clone(),
            position,
            generation: map.generation_of(position),
            database: shards.store(position).location(),
        })
        .collect();
    output::rows(out, output, &views, |out, views| {
        let mut t = table(["shard", "position", "generation", "database"]);
        for v in views {
            t.add_row([
                v.name.clone(),
                v.position.to_string(),
                v.generation.to_string(),
                v.database.clone(),
            ]);
        }
        write_table(out, &t)
    })
}
