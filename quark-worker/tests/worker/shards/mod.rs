//! A deployment of three shards on three PostgreSQL servers (`bash .ci/clusters`): a worker per
//! shard and a client that routes by instance id. What crosses shards (`across`), a shard added
//! (`adding`), a shard down (`down`), and workers refused a shard here.

mod across;
mod adding;
mod down;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quark_history::shards::Shards;
use quark_history::testing::{ClusterDatabases, eventually};
use quark_history::{
    HistoryEvent, HistoryRange, InstanceFilter, InstanceStatus, QueueStats, StoreConfig,
};
use quark_worker::Worker;
use quark_workflow::entity::{Command, Decision, Entity};
use quark_workflow::projection::{Batch, Projection, ProjectionError};
use quark_workflow::{
    ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry,
    ShardedClient, activity, orchestration,
};
use serde::{Deserialize, Serialize};

#[orchestration]
async fn echo(_ctx: OrchestrationContext, n: u32) -> Result<u32, OrchestrationError> {
    Ok(n * 2)
}

/// Pings its partner, waits for the partner's ping, then asks a child (named by Quark, so on
/// this shard) to double its number.
#[orchestration]
async fn ping(
    ctx: OrchestrationContext,
    (partner, n): (String, u32),
) -> Result<u32, OrchestrationError> {
    ctx.signal(&partner, "ping", &n)?;
    let theirs: u32 = ctx.wait_for_signal("ping").await?;
    let doubled = ctx.call_child(echo, &n).await?;
    Ok(doubled + theirs)
}

/// Names its child explicitly, onto another shard.
#[orchestration]
async fn remote_parent(
    ctx: OrchestrationContext,
    child_id: String,
) -> Result<u32, OrchestrationError> {
    ctx.call_child_with_id(echo, &child_id, &1).await
}

/// A counter that refuses to go below zero.
struct Tally;

#[derive(Debug, Serialize, Deserialize)]
struct Add(i64);

impl Entity for Tally {
    const TYPE: &'static str = "Tally";
    type State = i64;
    type Event = i64;
    type Rejection = String;
    fn apply(state: &mut i64, event: &i64) {
        *state += event;
    }
}

impl Command<Tally> for Add {
    const NAME: &'static str = "Add";
    type Reply = i64;
    fn handle(&self, state: &i64) -> Result<Decision<i64, i64>, String> {
        if state + self.0 < 0 {
            return Err(format!("{state} cannot go down by {}", -self.0));
        }
        Ok(Decision::emit([self.0]).reply(state + self.0))
    }
}

/// Each tally's total, in the database of the shard the tally lives on: a projection over all
/// events runs on every shard, over that shard's events, with its checkpoint there.
struct TallyTotals;

impl Projection for TallyTotals {
    const NAME: &'static str = "tally_totals";

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        for e in batch.entity_events::<Tally>()? {
            let sql = format!(
                "INSERT INTO tally_totals (key, total) VALUES ('{}', {}) \
                 ON CONFLICT (key) DO UPDATE SET total = tally_totals.total + {}",
                e.key, e.event.event, e.event.event
            );
            quark_history::sqlx::query(quark_history::sqlx::AssertSqlSafe(sql))
                .execute(batch.tx().postgres()?)
                .await?;
        }
        Ok(())
    }
}

/// Adds one to tally `key` from an activity (whose writes go with its result, in its shard).
#[activity]
async fn add_one_here(ctx: ActivityContext, key: String) -> Result<i64, ActivityError> {
    ctx.entity::<Tally>(&key)
        .call(&Add(1))
        .await
        .map_err(|e| ActivityError::message(e.to_string()).terminal())
}

#[orchestration]
async fn add_from_activity(
    ctx: OrchestrationContext,
    key: String,
) -> Result<i64, OrchestrationError> {
    ctx.call(add_one_here, &key).await
}

/// Adds 3 and 4 to tally `key`, then tries to take 100 away.
#[orchestration]
async fn count_up(
    ctx: OrchestrationContext,
    key: String,
) -> Result<(i64, i64, String), OrchestrationError> {
    let tally = ctx.entity::<Tally>(key);
    let three = tally.call(&Add(3)).await?;
    let four = tally.call(&Add(4)).await?;
    let refused = tally.call(&Add(-100)).await?;
    Ok((
        three.map_err(OrchestrationError::Failed)?,
        four.map_err(OrchestrationError::Failed)?,
        refused.err().unwrap_or_default(),
    ))
}

/// Waits for its signal.
#[orchestration]
async fn gate(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let () = ctx.wait_for_signal("open").await?;
    Ok(())
}

/// Waits on a [`gate`] child named onto another shard.
#[orchestration]
async fn gate_parent(
    ctx: OrchestrationContext,
    child_id: String,
) -> Result<(), OrchestrationError> {
    ctx.call_child_with_id(gate, &child_id, &()).await
}

/// Opens `gates` (on whatever shard they are).
#[orchestration]
async fn open_gates(
    ctx: OrchestrationContext,
    gates: Vec<String>,
) -> Result<(), OrchestrationError> {
    for id in &gates {
        ctx.signal(id, "open", &())?;
    }
    Ok(())
}

/// A worker for each shard, on its database; relayed signals retried every half second at most
/// (a shard that is down comes back within seconds in these tests).
async fn start_workers(shards: &Shards) -> Vec<quark_worker::RunningWorker> {
    let mut workers = Vec::new();
    for (position, name) in shards.map().names().iter().enumerate() {
        let worker = Worker::builder()
            .store(Arc::clone(shards.store(position)))
            .shard(shards.clone(), name)
            .poll_interval(Duration::from_millis(20))
            .outbox(
                quark_worker::OutboxRelay::new()
                    .backoff(Duration::from_millis(50), Duration::from_millis(500))
                    .max_attempts(1000),
            )
            .workflows(registry())
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        workers.push(worker);
    }
    workers
}

/// Stops the workers, lets go of the shards (and their map locks), and drops the databases.
async fn teardown(
    workers: Vec<quark_worker::RunningWorker>,
    client: ShardedClient,
    shards: Shards,
    dbs: ClusterDatabases,
) {
    for worker in workers {
        worker.shutdown().await;
    }
    drop(client);
    drop(shards);
    dbs.cleanup().await;
}

/// A deployment of the first `n` databases of `dbs`, named `s0`, `s1`, ...
async fn first_shards(dbs: &ClusterDatabases, n: usize) -> Shards {
    let named = dbs.urls[..n]
        .iter()
        .enumerate()
        .map(|(i, url)| (format!("s{i}"), url.as_str()));
    Shards::connect(named, StoreConfig::default())
        .await
        .unwrap()
}

fn registry() -> Registry {
    Registry::new()
        .register(echo)
        .register(ping)
        .register(remote_parent)
        .register(gate)
        .register(gate_parent)
        .register(count_up)
        .register(add_one_here)
        .register(add_from_activity)
        .entity_command::<Tally, Add>()
        .projection(TallyTotals)
        .register(open_gates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_an_unknown_shard_or_on_another_shards_store_is_refused() {
    let Some(dbs) = ClusterDatabases::create(2).await else {
        return;
    };
    let shards = Shards::connect(
        [("s0", &dbs.urls[0]), ("s1", &dbs.urls[1])],
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let build = |position: usize, name: &str| {
        Worker::builder()
            .store(Arc::clone(shards.store(position)))
            .shard(shards.clone(), name)
            .workflows(registry())
            .build()
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let unknown = build(0, "s9");
    assert!(
        unknown.contains("shard `s9` is not in the shard map [s0, s1]"),
        "{unknown}"
    );
    let wrong = build(0, "s1");
    assert!(
        wrong.contains("a worker of shard `s1` must work from that shard's store"),
        "{wrong}"
    );
    drop(shards);
    dbs.cleanup().await;
}
