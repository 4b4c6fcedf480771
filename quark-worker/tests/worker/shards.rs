//! A deployment of three shards on three PostgreSQL servers (`bash .ci/clusters`): a worker per
//! shard, a client that routes by instance id, signals between instances on different shards
//! (through the outbox, delivered once into the receiver's shard), children that live with their
//! parent, children named onto another shard (started there and answering back through the
//! outbox, and cancelled with their parent), entity commands run on their entity's shard for an
//! orchestration on another, and listings merged across shards.

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
async fn instances_on_three_shards_signal_each_other_once_and_list_as_one() {
    let Some(dbs) = ClusterDatabases::create(3).await else {
        return;
    };
    let shards = first_shards(&dbs, 3).await;
    let client = ShardedClient::new(shards.clone());

    // Pairs p-i <-> q-i; started before any worker runs, so every partner exists.
    const PAIRS: u32 = 20;
    let mut handles = Vec::new();
    let mut crossing = 0;
    for i in 0..PAIRS {
        let (p, q) = (format!("p-{i}"), format!("q-{i}"));
        if shards.shard_of(&p) != shards.shard_of(&q) {
            crossing += 1;
        }
        handles.push(ping::start(&client, &p, (q.clone(), i)).await.unwrap());
        handles.push(
            ping::start(&client, &q, (p.clone(), 100 + i))
                .await
                .unwrap(),
        );
    }
    assert!(
        crossing >= 5,
        "only {crossing} of {PAIRS} pairs cross shards"
    );
    // Parents whose explicit child ids live on other shards: one whose child answers, one
    // whose child waits until the parent is cancelled.
    let elsewhere = |parent: &str, name: &str| {
        (0..)
            .map(|n| format!("{name}-{n}"))
            .find(|id| shards.shard_of(id) != shards.shard_of(parent))
            .unwrap()
    };
    let (remote, gated) = ("remote-1", "gated-1");
    let (child_id, gate_id) = (elsewhere(remote, "child"), elsewhere(gated, "gate"));
    let remote_handle = remote_parent::start(&client, remote, child_id.clone())
        .await
        .unwrap();
    gate_parent::start(&client, gated, gate_id.clone())
        .await
        .unwrap();

    // One worker per shard, each on its own database.
    let workers = start_workers(&shards).await;

    for (k, handle) in handles.into_iter().enumerate() {
        let i = k as u32 / 2;
        let (mine, theirs) = if k % 2 == 0 {
            (i, 100 + i)
        } else {
            (100 + i, i)
        };
        let out = tokio::time::timeout(Duration::from_secs(60), handle.result())
            .await
            .expect("every ping completes")
            .unwrap();
        assert_eq!(out, mine * 2 + theirs);
    }
    // Each instance lives on its shard alone, received exactly one ping, and its child is on
    // the same shard.
    for i in 0..PAIRS {
        for id in [format!("p-{i}"), format!("q-{i}")] {
            let home = shards.shard_of(&id);
            for (position, store) in shards.stores().iter().enumerate() {
                let found = store.get_instance(&id).await.unwrap().is_some();
                assert_eq!(found, position == home, "{id} on shard {position}");
            }
            let history = shards
                .store(home)
                .read_history(&id, HistoryRange::All)
                .await
                .unwrap();
            let pings = history
                .iter()
                .filter(|e| matches!(e.event, HistoryEvent::SignalReceived { .. }))
                .count();
            assert_eq!(pings, 1, "{id} received {pings} pings");
            let children = client
                .shard(home)
                .list(InstanceFilter {
                    id_prefix: Some(format!("{id}:")),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(children.len(), 1, "{id}'s child is on its shard");
        }
    }

    // The child on another shard ran there, as the parent's child, and its end came back
    // once.
    let out = tokio::time::timeout(Duration::from_secs(60), remote_handle.result())
        .await
        .expect("the remote parent completes")
        .unwrap();
    assert_eq!(out, 2);
    let child = shards
        .store_for(&child_id)
        .get_instance(&child_id)
        .await
        .unwrap()
        .expect("the child is on its own shard");
    assert_eq!(child.status, InstanceStatus::Completed);
    assert_eq!(child.parent_id.as_deref(), Some(remote));
    assert!(
        shards
            .store_for(remote)
            .get_instance(&child_id)
            .await
            .unwrap()
            .is_none(),
        "the child is not on its parent's shard"
    );
    let ends = shards
        .store_for(remote)
        .read_history(remote, HistoryRange::All)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::ChildCompleted { .. }))
        .count();
    assert_eq!(ends, 1, "the child's end reached its parent once");

    // Cancelling a parent cancels its child on another shard.
    eventually("the gate child runs on its shard", async || {
        client
            .describe(&gate_id)
            .await
            .is_ok_and(|r| r.status == InstanceStatus::Running)
    })
    .await;
    client
        .client_for(gated)
        .await
        .unwrap()
        .cancel(gated, "test")
        .await
        .unwrap();
    eventually("the gate child is cancelled with its parent", async || {
        client
            .describe(&gate_id)
            .await
            .is_ok_and(|r| r.status == InstanceStatus::Cancelled)
    })
    .await;
    assert_eq!(
        client.describe(gated).await.unwrap().status,
        InstanceStatus::Cancelled
    );

    // A listing merges all three shards, newest first, as one database would list them.
    let all = client
        .list(InstanceFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.len() as u32,
        4 * PAIRS + 4,
        "pings, their children, and the two parents with theirs"
    );
    let ids: BTreeSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "no instance listed twice");
    assert!(
        all.windows(2)
            .all(|w| (w[0].created_at, &w[0].id) >= (w[1].created_at, &w[1].id))
    );
    let on_every_shard: BTreeSet<usize> = all.iter().map(|r| shards.shard_of(&r.id)).collect();
    assert_eq!(on_every_shard.len(), 3);
    let page = client
        .list(InstanceFilter {
            limit: 7,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page,
        all[..7].to_vec(),
        "a page is the newest of all shards"
    );

    teardown(workers, client, shards, dbs).await;
}

/// A TCP proxy in front of one PostgreSQL server: the shard is "down" when the proxy cuts every
/// connection and refuses new ones, as a network partition or a stopped server would.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn to(target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (up, links) = (Arc::clone(&up), Arc::clone(&links));
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::Acquire) {
                        continue; // dropped: the connection is refused
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        Proxy {
            port,
            up,
            links,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::Release);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

/// The first ids `prefix-N` whose shard is `shard`.
fn ids_on(shards: &Shards, prefix: &str, shard: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|k| format!("{prefix}-{k}"))
        .filter(|id| shards.shard_of(id) == shard)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestration_runs_entity_commands_on_the_entitys_shard_once() {
    let Some(dbs) = ClusterDatabases::create(3).await else {
        return;
    };
    let shards = first_shards(&dbs, 3).await;
    let client = ShardedClient::new(shards.clone());
    let id = "count-1";
    let key = (0..)
        .map(|n| format!("tally-{n}"))
        .find(|k| shards.shard_of(&format!("Tally/{k}")) != shards.shard_of(id))
        .unwrap();
    let stream = format!("Tally/{key}");
    // An instance on the orchestration's shard, and a tally that lives there too.
    let id_beside = (0..)
        .map(|n| format!("beside-{n}"))
        .find(|id| shards.shard_of(id) != shards.shard_of(&stream))
        .unwrap();
    let near = (0..)
        .map(|n| format!("near-{n}"))
        .find(|k| shards.shard_of(&format!("Tally/{k}")) == shards.shard_of("add-here"))
        .unwrap();
    for url in &dbs.urls {
        let pool = quark_history::sqlx::PgPool::connect(url).await.unwrap();
        quark_history::sqlx::query(
            "CREATE TABLE tally_totals (key TEXT PRIMARY KEY, total BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    // The client reaches the entity on its shard too.
    assert_eq!(
        client
            .entity::<Tally>(&key)
            .await
            .unwrap()
            .call(&Add(10))
            .await
            .unwrap(),
        10
    );
    let handle = count_up::start(&client, id, key.clone()).await.unwrap();
    let workers = start_workers(&shards).await;
    let out = tokio::time::timeout(Duration::from_secs(60), handle.result())
        .await
        .expect("the orchestration completes")
        .unwrap();
    assert_eq!(out, (13, 17, "17 cannot go down by 100".to_string()));

    // The entity's events are on its shard alone, each once; the orchestration heard each
    // reply once.
    for (position, store) in shards.stores().iter().enumerate() {
        let found = store.get_instance(&stream).await.unwrap().is_some();
        assert_eq!(
            found,
            position == shards.shard_of(&stream),
            "{stream} on {position}"
        );
    }
    let tally = client.entity::<Tally>(&key).await.unwrap();
    assert_eq!(tally.state().await.unwrap(), 17);
    assert_eq!(tally.version().await.unwrap(), 3, "10, 3 and 4, each once");
    let replies = shards
        .store_for(id)
        .read_history(id, HistoryRange::All)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::ActivityCompleted { .. }))
        .count();
    assert_eq!(replies, 3);

    // More tallies, over every shard: the projection, running on each shard, sees each event
    // once, and each tally's total is on its own shard's database.
    for k in 1..=12 {
        client
            .entity::<Tally>(format!("spread-{k}"))
            .await
            .unwrap()
            .call(&Add(k))
            .await
            .unwrap();
    }
    let totals = async || {
        let mut rows: Vec<(usize, String, i64)> = Vec::new();
        for (shard, url) in dbs.urls.iter().enumerate() {
            let pool = quark_history::sqlx::PgPool::connect(url).await.unwrap();
            let found: Vec<(String, i64)> =
                quark_history::sqlx::query_as("SELECT key, total FROM tally_totals")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            rows.extend(found.into_iter().map(|(k, t)| (shard, k, t)));
        }
        rows
    };
    eventually("each shard's projection caught up", async || {
        totals().await.iter().map(|(_, _, t)| t).sum::<i64>() == 17 + (1..=12).sum::<i64>()
    })
    .await;
    let rows = totals().await;
    assert_eq!(rows.len(), 13, "one row a tally: {rows:?}");

    // An activity writes entities of its own shard only: one on another shard is refused,
    // saying where it lives, and nothing is written.
    let refused = add_from_activity::start(&client, &id_beside, key.clone())
        .await
        .unwrap()
        .result()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("entity `{stream}` lives on shard")),
        "{refused}"
    );
    let here = add_from_activity::start(&client, "add-here", near.clone())
        .await
        .unwrap();
    assert_eq!(here.result().await.unwrap(), 1);
    assert_eq!(
        client
            .entity::<Tally>(&key)
            .await
            .unwrap()
            .version()
            .await
            .unwrap(),
        3,
        "the refused command wrote nothing"
    );
    for (shard, key, _) in &rows {
        assert_eq!(*shard, shards.shard_of(&format!("Tally/{key}")), "{key}");
    }
    let used: BTreeSet<usize> = rows.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(used.len(), 3, "tallies on every shard");
    quark_history::testing::outboxes_relayed(shards.stores()).await;
    for store in shards.stores() {
        assert_eq!(
            store.queue_stats("default").await.unwrap(),
            QueueStats::default()
        );
    }
    teardown(workers, client, shards, dbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_takes_new_instances_and_the_old_ones_run_on_where_they_are() {
    let Some(dbs) = ClusterDatabases::create(4).await else {
        return;
    };
    let three = ["s0", "s1", "s2"];
    let urls = |n: usize| {
        three
            .iter()
            .copied()
            .zip(dbs.urls.iter().map(String::as_str))
            .take(n)
    };
    let shards = first_shards(&dbs, 3).await;
    let client = ShardedClient::new(shards.clone());
    // Before the addition: ping pairs and gates, waiting in their queues.
    const PAIRS: u32 = 12;
    let pair = |prefix: &str, i: u32| (format!("{prefix}p-{i}"), format!("{prefix}q-{i}"));
    for i in 0..PAIRS {
        let (p, q) = pair("old-", i);
        ping::start(&client, &p, (q.clone(), i)).await.unwrap();
        ping::start(&client, &q, (p, 100 + i)).await.unwrap();
    }
    let old_gates: Vec<String> = (0..24).map(|n| format!("old-gate-{n}")).collect();
    for id in &old_gates {
        gate::start(&client, id, ()).await.unwrap();
    }
    let where_before = |id: &str| shards.shard_of(id);
    let before: Vec<(String, usize)> = old_gates
        .iter()
        .cloned()
        .chain((0..PAIRS).flat_map(|i| {
            let (p, q) = pair("old-", i);
            [p, q]
        }))
        .map(|id| {
            let at = where_before(&id);
            (id, at)
        })
        .collect();
    drop(client);
    drop(shards);

    let (_, existing) = quark_history::shards::connect_stores(urls(3), StoreConfig::default())
        .await
        .unwrap();
    let (_, mut new) = quark_history::shards::connect_stores(
        [("s3", dbs.urls[3].as_str())],
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let shards = Shards::add_shard(
        three.iter().map(|n| n.to_string()).zip(existing).collect(),
        "s3",
        new.pop().unwrap(),
    )
    .await
    .unwrap();
    let moved = before
        .iter()
        .filter(|(id, _)| shards.shard_of(id) == 3)
        .count();
    assert!(
        moved >= 3,
        "only {moved} of the old ids would go to the new shard"
    );
    let client = ShardedClient::new(shards.clone());
    let workers = start_workers(&shards).await;

    // New instances after it, some of them on the new shard; one opens the old gates.
    let new_gates: Vec<String> = (0..24).map(|n| format!("new-gate-{n}")).collect();
    for id in &new_gates {
        gate::start(&client, id, ()).await.unwrap();
    }
    for i in 0..PAIRS {
        let (p, q) = pair("new-", i);
        ping::start(&client, &p, (q.clone(), i)).await.unwrap();
        ping::start(&client, &q, (p, 100 + i)).await.unwrap();
    }
    let all_gates: Vec<String> = old_gates.iter().chain(&new_gates).cloned().collect();
    let opener = open_gates::start(&client, "opener", all_gates.clone())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), opener.result())
        .await
        .expect("the opener completes")
        .unwrap();
    eventually("every instance completes", async || {
        let done = client
            .list(InstanceFilter {
                statuses: vec![InstanceStatus::Completed],
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        // Gates, pings and their children, and the opener.
        done.len() == all_gates.len() + 8 * PAIRS as usize + 1
    })
    .await;
    // The old ones completed where they were created, their children with them; the new ones
    // where the four-shard map puts them, the new shard among them.
    for (id, at) in &before {
        let record = shards.store(*at).get_instance(id).await.unwrap();
        assert_eq!(
            record.map(|r| r.status),
            Some(InstanceStatus::Completed),
            "{id} on its old shard"
        );
    }
    for i in 0..PAIRS {
        for prefix in ["old-", "new-"] {
            let (p, _) = pair(prefix, i);
            let home = shards.locate(&p).await.unwrap();
            let children = client
                .shard(home)
                .list(InstanceFilter {
                    id_prefix: Some(format!("{p}:")),
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(children.len(), 1, "{p}'s child is on its shard");
        }
    }
    let mut on_new = 0;
    for id in new_gates.iter().cloned().chain((0..PAIRS).flat_map(|i| {
        let (p, q) = pair("new-", i);
        [p, q]
    })) {
        let at = shards.shard_of(&id);
        assert!(
            shards.store(at).get_instance(&id).await.unwrap().is_some(),
            "{id} on shard {at}"
        );
        on_new += usize::from(at == 3);
    }
    assert!(on_new >= 3, "only {on_new} new instances on the new shard");
    teardown(workers, client, shards, dbs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_goes_down_stalls_only_its_own_instances_and_resumes() {
    let Some(dbs) = ClusterDatabases::create(3).await else {
        return;
    };
    // s2 is reached through the proxy.
    let url: url_parts::Url = url_parts::parse(&dbs.urls[2]);
    let proxy = Proxy::to(format!("127.0.0.1:{}", url.port).parse().unwrap()).await;
    let s2 = url.with_port(proxy.port);
    let shards = Shards::connect(
        [
            ("s0", dbs.urls[0].as_str()),
            ("s1", dbs.urls[1].as_str()),
            ("s2", s2.as_str()),
        ],
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let client = ShardedClient::new(shards.clone());
    let workers = start_workers(&shards).await;
    // Gates on s2 wait for a signal (their first turns may run before s2 goes down or after it
    // is back: either way the signal opens them).
    let gates = ids_on(&shards, "gate", 2, 4);
    let mut gate_handles = Vec::new();
    for id in &gates {
        gate_handles.push(gate::start(&client, id, ()).await.unwrap());
    }
    proxy.down();

    // The shards that are up go on: pairs across s0 and s1 complete, and an instance on s0
    // opens the gates (its signals wait in s0's outbox).
    let (up0, up1) = (ids_on(&shards, "a", 0, 6), ids_on(&shards, "b", 1, 6));
    let mut staying = Vec::new();
    for (x, y) in up0.iter().zip(&up1) {
        staying.push(ping::start(&client, x, (y.clone(), 1)).await.unwrap());
        staying.push(ping::start(&client, y, (x.clone(), 2)).await.unwrap());
    }
    let opener_id = &ids_on(&shards, "opener", 0, 1)[0];
    let opener = open_gates::start(&client, opener_id, gates.clone())
        .await
        .unwrap();
    for handle in staying {
        tokio::time::timeout(Duration::from_secs(60), handle.result())
            .await
            .expect("pairs on the shards that are up complete while s2 is down")
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), opener.result())
        .await
        .expect("the opener on s0 completes while s2 is down")
        .unwrap();
    let pending = shards
        .store(0)
        .list_outbox(
            quark_history::OutboxFilter::default().state(quark_history::MessageState::Pending),
        )
        .await
        .unwrap()
        .len();
    assert_eq!(
        pending,
        gates.len(),
        "the signals to s2 wait in s0's outbox"
    );
    assert!(
        client.describe(&gates[0]).await.is_err(),
        "s2 cannot be read"
    );

    proxy.up();
    for (id, handle) in gates.iter().zip(gate_handles) {
        tokio::time::timeout(Duration::from_secs(60), handle.result())
            .await
            .expect("s2's gates open once it is back")
            .unwrap();
        let history = shards
            .store(2)
            .read_history(id, HistoryRange::All)
            .await
            .unwrap();
        let signals = history
            .iter()
            .filter(|e| matches!(e.event, HistoryEvent::SignalReceived { .. }))
            .count();
        assert_eq!(signals, 1, "{id} received its signal once");
    }
    for worker in workers {
        worker.shutdown().await;
    }
    drop(client);
    drop(shards);
    drop(proxy);
    dbs.cleanup().await;
}

/// The host's port of a test URL, and the URL with another port.
mod url_parts {
    pub(super) struct Url {
        pub(super) port: u16,
        text: String,
    }

    pub(super) fn parse(url: &str) -> Url {
        let port = url
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("a test cluster URL on 127.0.0.1:PORT");
        Url {
            port,
            text: url.to_owned(),
        }
    }

    impl Url {
        pub(super) fn with_port(&self, port: u16) -> String {
            self.text.replacen(
                &format!("127.0.0.1:{}", self.port),
                &format!("127.0.0.1:{port}"),
                1,
            )
        }
    }
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
