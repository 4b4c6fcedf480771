//! Shards: a database records the map it belongs to the first time a process connects with one,
//! and a process whose map disagrees refuses to start, saying how. The map check runs against
//! three more PostgreSQL servers (`bash .ci/clusters`).

use std::sync::Arc;

use quark_history::shards::{ShardCursor, ShardMap, Shards, connect_stores};
use quark_history::testing::{ClusterDatabases, TestStore, eventually};
use quark_history::{IdReusePolicy, NewInstance, Payload, Store, StoreConfig};

use crate::support::conformance;

conformance!(a_database_records_the_first_map_it_is_claimed_with);

async fn a_database_records_the_first_map_it_is_claimed_with(t: &TestStore) {
    let map = ShardMap::new(["a", "b", "c"]).unwrap();
    assert_eq!(
        t.store.claim_shard(&map, 1).await.unwrap(),
        (map.clone(), 1)
    );
    let other = ShardMap::new(["a", "b"]).unwrap();
    assert_eq!(
        t.store.claim_shard(&other, 0).await.unwrap(),
        (map, 1),
        "the first claim stands"
    );
}

async fn connect(dbs: &ClusterDatabases, order: &[(usize, &str)]) -> Result<Shards, String> {
    Shards::connect(
        order.iter().map(|(i, name)| (*name, dbs.urls[*i].as_str())),
        StoreConfig::default(),
    )
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_shard_map_disagrees_refuses_to_start_and_says_which() {
    let Some(dbs) = ClusterDatabases::create(3).await else {
        return;
    };
    let deployment = [(0, "s0"), (1, "s1"), (2, "s2")];
    let shards = connect(&dbs, &deployment).await.unwrap();
    assert_eq!(shards.map().names(), ["s0", "s1", "s2"]);
    // Each instance is on one shard, and ids spread over all three.
    let mut used = [false; 3];
    for n in 0..60 {
        used[shards.shard_of(&format!("order-{n}"))] = true;
    }
    assert_eq!(used, [true; 3]);
    // The same map again, from another process: fine.
    connect(&dbs, &deployment).await.unwrap();

    let missing = connect(&dbs, &[(0, "s0"), (1, "s1")]).await.unwrap_err();
    assert!(missing.contains("shard(s) `s2` are missing"), "{missing}");
    let order = connect(&dbs, &[(0, "s0"), (1, "s2"), (2, "s1")])
        .await
        .unwrap_err();
    assert!(order.contains("another order"), "{order}");
    let extra = connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2"), (2, "s3")])
        .await
        .unwrap_err();
    assert!(
        extra.contains("names shard(s) `s3` that the deployment does not have"),
        "{extra}"
    );
    // The right names, but two databases swapped: s1's database configured as s2.
    let swapped = connect(&dbs, &[(0, "s0"), (2, "s1"), (1, "s2")])
        .await
        .unwrap_err();
    assert!(
        swapped.contains("configured as shard `s1`") && swapped.contains("is shard `s2`"),
        "{swapped}"
    );
    // Stores given by hand must match the map's length.
    let stores: Vec<Arc<dyn Store>> = shards.stores()[..2].to_vec();
    let short = Shards::check(shards.map().clone(), stores)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        short.contains("names 3 shard(s) but 2 database(s)"),
        "{short}"
    );
    drop(shards);
    dbs.cleanup().await;
}

/// The stores of `dbs` (as `(name, store)`), migrated, without any check or hold: what `quark
/// shards add` starts from.
async fn stores(dbs: &ClusterDatabases, names: &[&str]) -> Vec<(String, Arc<dyn Store>)> {
    let (_, stores) = connect_stores(
        names.iter().zip(&dbs.urls).map(|(n, u)| (*n, u.as_str())),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    names.iter().map(|n| n.to_string()).zip(stores).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_shard_spreads_new_instances_and_leaves_existing_ones_where_they_are() {
    let Some(dbs) = ClusterDatabases::create(4).await else {
        return;
    };
    let three = ["s0", "s1", "s2"];
    let four = ["s0", "s1", "s2", "s3"];
    let shards = connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2")])
        .await
        .unwrap();
    // Instances created under three shards, among them ids that a fourth shard would take
    // (about a quarter), and a child of one of those.
    let ids: Vec<String> = (0..40).map(|n| format!("old-{n}")).collect();
    let four_map = ShardMap::new(four).unwrap();
    let moved: Vec<&String> = ids.iter().filter(|id| four_map.shard_of(id) == 3).collect();
    assert!(moved.len() >= 4, "only {} of 40 ids move", moved.len());
    for id in &ids {
        shards
            .store_for(id)
            .create_instance(
                NewInstance::new(id.as_str(), "t", Payload::json(&()).unwrap()),
                IdReusePolicy::RejectDuplicate,
            )
            .await
            .unwrap();
    }
    let child = format!("{}:3", moved[0]);
    shards
        .store_for(moved[0])
        .create_instance(
            NewInstance::new(child.as_str(), "t", Payload::json(&()).unwrap()),
            IdReusePolicy::RejectDuplicate,
        )
        .await
        .unwrap();

    // While a process routes by three shards, adding a fourth is refused, and nothing changes.
    let s3_store = || async {
        let (_, mut s) = connect_stores([("s3", dbs.urls[3].as_str())], StoreConfig::default())
            .await
            .unwrap();
        s.pop().unwrap()
    };
    let busy = Shards::add_shard(stores(&dbs, &three).await, "s3", s3_store().await)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        busy.contains("shard `s0`") && busy.contains("in use by a worker or client"),
        "{busy}"
    );
    connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2")])
        .await
        .unwrap();
    drop(shards);

    // Without it, the shard is added: every database records the map with its history.
    let shards = Shards::add_shard(stores(&dbs, &three).await, "s3", s3_store().await)
        .await
        .unwrap();
    assert_eq!(shards.map().to_string(), "s0,s1,s2,s3;3");
    assert_eq!(shards.map().generations(), 2);
    assert_eq!(
        (0..4)
            .map(|p| shards.map().generation_of(p))
            .collect::<Vec<_>>(),
        [1, 1, 1, 2]
    );
    // A process with the old map refuses, and says how to get the new one.
    let old = connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2")])
        .await
        .unwrap_err();
    assert!(old.contains("shard(s) `s3` are missing"), "{old}");
    // One with the new names gets the deployment's history.
    let again = connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2"), (3, "s3")])
        .await
        .unwrap();
    assert_eq!(again.map(), shards.map());

    // Existing instances are found where they are, their children with them; new ids whose
    // key went to the fourth shard are created there.
    for id in &ids {
        let at = shards.locate(id).await.unwrap();
        let was = ShardMap::new(three).unwrap().shard_of(id);
        assert_eq!(at, was, "{id} stays on its shard");
    }
    assert_eq!(
        shards.locate(&child).await.unwrap(),
        shards.locate(moved[0]).await.unwrap()
    );
    let mut fresh = Vec::new();
    for id in (0..200).map(|n| format!("new-{n}")) {
        if four_map.shard_of(&id) == 3 {
            fresh.push(shards.locate(&id).await.unwrap());
        }
    }
    assert!(
        !fresh.is_empty() && fresh.iter().all(|s| *s == 3),
        "{fresh:?}"
    );

    // Run again (as after a cut-short run), it changes nothing.
    drop(again);
    drop(shards);
    let rerun = Shards::add_shard(stores(&dbs, &three).await, "s3", s3_store().await)
        .await
        .unwrap();
    assert_eq!(rerun.map().to_string(), "s0,s1,s2,s3;3");
    drop(rerun);
    dbs.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addition_cut_short_is_refused_until_it_is_run_again_and_a_used_database_is_never_added()
{
    let Some(dbs) = ClusterDatabases::create(4).await else {
        return;
    };
    let three = ["s0", "s1", "s2"];
    let from = ShardMap::new(three).unwrap();
    let to = from.with_shard("s3").unwrap();
    drop(
        connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2")])
            .await
            .unwrap(),
    );
    let existing = stores(&dbs, &three).await;

    // A database that holds instances is not a new shard.
    let (_, mut used) = connect_stores([("s3", dbs.urls[3].as_str())], StoreConfig::default())
        .await
        .unwrap();
    let used = used.pop().unwrap();
    used.create_instance(
        NewInstance::new("someone", "t", Payload::json(&()).unwrap()),
        IdReusePolicy::RejectDuplicate,
    )
    .await
    .unwrap();
    let refused = Shards::add_shard(existing.clone(), "s3", Arc::clone(&used))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("holds instances already"), "{refused}");
    assert_eq!(
        existing[0].1.claim_shard(&from, 0).await.unwrap().0,
        from,
        "nothing was changed"
    );

    // An addition that stopped after the first shard: every process refuses, saying so.
    let fresh = ClusterDatabases::create(1).await.unwrap();
    existing[0].1.replace_shard_map(&from, &to).await.unwrap();
    let half = connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2")])
        .await
        .unwrap_err();
    assert!(half.contains("`s3` are missing"), "{half}");
    let (_, mut new) = connect_stores([("s3", fresh.urls[0].as_str())], StoreConfig::default())
        .await
        .unwrap();
    let shards = Shards::add_shard(existing, "s3", new.pop().unwrap())
        .await
        .unwrap();
    assert_eq!(shards.map(), &to);
    drop(shards);
    fresh.cleanup().await;
    dbs.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shards_events_read_as_one_feed_each_once_and_in_its_own_order() {
    let Some(dbs) = ClusterDatabases::create(3).await else {
        return;
    };
    let shards = connect(&dbs, &[(0, "s0"), (1, "s1"), (2, "s2")])
        .await
        .unwrap();
    let mut written = 0;
    for n in 0..30 {
        let id = format!("feed-{n}");
        let store = shards.store_for(&id);
        store
            .create_instance(
                NewInstance::new(id.as_str(), "t", Payload::json(&n).unwrap()),
                IdReusePolicy::RejectDuplicate,
            )
            .await
            .unwrap();
        written += 1;
        if n % 3 == 0 {
            store
                .commit(quark_history::Commit::new().append(
                    id.as_str(),
                    quark_history::Expected::Any,
                    [quark_history::HistoryEvent::SignalReceived {
                        name: "x".into(),
                        payload: Payload::json(&n).unwrap(),
                    }],
                ))
                .await
                .unwrap();
            written += 1;
        }
    }
    // Read in small pages, the cursor passed on as text, as a reader that restarts would.
    let mut cursor = ShardCursor::start();
    let mut seen: Vec<(usize, String, u64)> = Vec::new();
    let mut last: Vec<Option<quark_history::GlobalPosition>> = vec![None; 3];
    // An empty page means nothing more is final yet (a transaction elsewhere on the server,
    // another test's, may hold the gap-safe horizon back): a reader asks again later.
    eventually("every event is final and read", async || {
        loop {
            let (page, next) = shards.read_all(&cursor, 4).await.unwrap();
            if page.is_empty() {
                return seen.len() >= written;
            }
            assert!(page.len() <= 4);
            for e in page {
                assert_eq!(e.shard, shards.shard_of(&e.event.event.instance_id));
                assert!(
                    last[e.shard] < Some(e.event.position),
                    "shard {} out of its order",
                    e.shard
                );
                last[e.shard] = Some(e.event.position);
                seen.push((e.shard, e.event.event.instance_id, e.event.event.seq));
            }
            cursor = next.to_string().parse().unwrap();
            assert_eq!(cursor, next);
        }
    })
    .await;
    assert_eq!(seen.len(), written, "every event once");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), written, "no event twice");
    assert!(last.iter().all(Option::is_some), "all three shards read");
    assert!("1:2,x".parse::<ShardCursor>().is_err());
    drop(shards);
    dbs.cleanup().await;
}
