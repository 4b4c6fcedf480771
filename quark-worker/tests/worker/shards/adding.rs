//! A shard added to a deployment whose instances wait: the old ones run on where they are, the
//! new ones spread over all the shards.

use super::*;

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
