//! Shards under fire: three PostgreSQL servers (`bash .ci/clusters`), worker processes that each
//! serve two of the three shards, killed with SIGKILL at random, and instances that signal
//! partners on other shards, run a child on their own shard and one on their partner's, and
//! deposit into an account whose stream is often on a third (all through the outbox). Every
//! orchestration completes exactly once with the right result, each receives its partner's ping,
//! each child's end and the deposit's reply exactly once, each deposit is applied once, and
//! nothing is left in any shard's queue or outbox.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quark_history::shards::Shards;
use quark_history::testing::ClusterDatabases;
use quark_history::{
    HistoryEvent, HistoryRange, InstanceFilter, InstanceStatus, QueueStats, StoreConfig,
};
use quark_tests::Dice;
use quark_tests::ledger::Account;
use quark_workflow::ShardedClient;

const PAIRS: u64 = 60;

fn spawn_worker(shards: &str, serve: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_crash-worker"))
        .env("QUARK_SHARDS", shards)
        .env("QUARK_SERVE_SHARDS", serve)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start a crash-worker")
}

/// Worker processes with the shards each serves, killed when dropped.
struct Workers(Vec<(Child, &'static str)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (w, _) in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

fn pair(n: u64) -> [(String, String, u64); 2] {
    let (p, q) = (format!("p-{n}"), format!("q-{n}"));
    [(p.clone(), q.clone(), n), (q, p, 1000 + n)]
}

async fn completed(client: &ShardedClient) -> usize {
    client
        .list(InstanceFilter {
            statuses: vec![InstanceStatus::Completed],
            instance_type: Some("shard_ping".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .map(|l| l.len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sharded_orchestration_completes_once_while_workers_are_killed() {
    let Some(_one_at_a_time) = crate::support::slow_suite("shards: workers killed").await else {
        return;
    };
    let Some(dbs) = ClusterDatabases::create(3).await else {
        return;
    };
    let names = ["s0", "s1", "s2"];
    let shards = Shards::connect(
        names.iter().zip(&dbs.urls).map(|(n, u)| (*n, u.as_str())),
        StoreConfig::default(),
    )
    .await
    .unwrap();
    let spec = names
        .iter()
        .zip(&dbs.urls)
        .map(|(n, u)| format!("{n}={u}"))
        .collect::<Vec<_>>()
        .join(",");
    let client = ShardedClient::new(shards.clone());
    let mut crossing = 0;
    for n in 0..PAIRS {
        let [a, b] = pair(n);
        if shards.shard_of(&a.0) != shards.shard_of(&b.0) {
            crossing += 1;
        }
        for (id, partner, number) in [a, b] {
            quark_tests::shard_ping::start(&client, &id, (partner, number))
                .await
                .unwrap();
        }
    }
    assert!(crossing >= PAIRS / 3, "only {crossing} pairs cross shards");

    // Each process serves two shards; every shard is served by two processes.
    const SUBSETS: [&str; 3] = ["s0,s1", "s1,s2", "s2,s0"];
    let mut workers = Workers(
        SUBSETS
            .iter()
            .map(|s| (spawn_worker(&spec, s), *s))
            .collect(),
    );
    let mut dice = Dice(0x2545_F491_4F6C_DD1D);
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while completed(&client).await < 2 * PAIRS as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} completed in 240 s",
            completed(&client).await,
            2 * PAIRS
        );
        // The chaos cadence, not a synchronization: a worker dies every 500 ms.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = dice.roll(workers.0.len());
        let (mut dead, serves) = workers.0.swap_remove(victim);
        dead.kill().expect("SIGKILL a worker");
        dead.wait().unwrap();
        kills += 1;
        workers.0.push((spawn_worker(&spec, serves), serves));
    }
    // The last relays (pings to partners that completed meanwhile find them closed: dropped).
    quark_history::testing::outboxes_relayed(shards.stores()).await;
    drop(workers);
    assert!(
        kills >= 3,
        "the test killed {kills} workers; it proves little below 3"
    );

    let mut deposits_across = 0;
    for n in 0..PAIRS {
        for (id, partner, number) in pair(n) {
            let store = shards.store_for(&id);
            let record = store.get_instance(&id).await.unwrap().unwrap();
            assert_eq!(record.status, InstanceStatus::Completed, "{id}");
            let partner_number = if number >= 1000 {
                number - 1000
            } else {
                number + 1000
            };
            assert_eq!(
                record.output.unwrap().decode::<u64>().unwrap(),
                2 * quark_tests::expected(number) + number + partner_number,
                "{id}"
            );
            let history = store.read_history(&id, HistoryRange::All).await.unwrap();
            let count =
                |f: fn(&HistoryEvent) -> bool| history.iter().filter(|e| f(&e.event)).count();
            assert_eq!(
                count(|e| matches!(e, HistoryEvent::SignalReceived { .. })),
                1,
                "{id} got its ping once"
            );
            assert_eq!(
                count(|e| matches!(e, HistoryEvent::WorkflowCompleted { .. })),
                1,
                "{id} completed once"
            );
            assert_eq!(
                count(|e| matches!(e, HistoryEvent::ChildCompleted { .. })),
                2,
                "{id} heard of each child's end once"
            );
            // Its deposit, applied once on the account's shard.
            let account = client.entity::<Account>(&id).await.unwrap();
            assert_eq!(
                (
                    account.state().await.unwrap().cents,
                    account.version().await.unwrap()
                ),
                (number as i64, 1),
                "{id}'s deposit"
            );
            if shards.shard_of(account.stream_id()) != shards.shard_of(&id) {
                deposits_across += 1;
            }
            assert!(
                store.verify(&id).await.unwrap().is_intact(),
                "{id}: hash chain"
            );
            // On its shard: its own child, and the one its partner started (`{id}:order`).
            let children = store
                .list_instances(InstanceFilter {
                    id_prefix: Some(format!("{id}:")),
                    ..Default::default()
                })
                .await
                .unwrap();
            let parents: BTreeSet<Option<&str>> =
                children.iter().map(|c| c.parent_id.as_deref()).collect();
            assert!(
                children.len() == 2
                    && children
                        .iter()
                        .all(|c| c.status == InstanceStatus::Completed)
                    && parents == BTreeSet::from([Some(id.as_str()), Some(partner.as_str())]),
                "{id}'s child and its partner's completed on its shard: {children:?}"
            );
        }
    }
    for (name, store) in names.iter().zip(shards.stores()) {
        assert_eq!(
            store.queue_stats("default").await.unwrap(),
            QueueStats::default(),
            "tasks left behind on {name}"
        );
    }
    assert!(
        deposits_across >= PAIRS / 2,
        "only {deposits_across} deposits crossed shards"
    );
    eprintln!(
        "shard crash loop: {} orchestrations on 3 shards, {crossing} of {PAIRS} pairs and \
         {deposits_across} deposits across shards, {kills} workers killed with SIGKILL",
        2 * PAIRS
    );
    drop(client);
    drop(shards);
    dbs.cleanup().await;
}
