//! What crosses shards: signals between instances on different shards (through the outbox,
//! delivered once into the receiver's shard), children that live with their parent, children
//! named onto another shard (started there, answering back through the outbox, cancelled with
//! their parent), entity commands run on their entity's shard, a projection on every shard, and
//! listings merged across shards.

use super::*;

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
