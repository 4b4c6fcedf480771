//! Shards: a database records the map it belongs to the first time a process connects with one,
//! and a process whose map disagrees refuses to start, saying how. The map check runs against
//! three more PostgreSQL servers (`bash .ci/clusters`).

use std::sync::Arc;

use quark_history::shards::{ShardMap, Shards};
use quark_history::testing::{ClusterDatabases, TestStore};
use quark_history::{Store, StoreConfig};

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
