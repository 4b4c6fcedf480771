//! The projection conformance suite, on SQLite and PostgreSQL: a balance read model built from
//! entity events, exactly once and in order, under leases, versions, rebuilds and (on PostgreSQL)
//! a writer holding its transaction open while the projection runs.

use std::sync::Arc;
use std::time::Duration;

use quark_history::testing::TestStore;
use quark_history::{Backend, Error, GlobalPosition, StoreTx};
use quark_workflow::entity::{Command, Decision, Entities, Entity};
use quark_workflow::projection::{
    Batch, CatchUp, Projection, ProjectionError, ProjectionState, Projector, active_version,
    position_of,
};
use serde::{Deserialize, Serialize};

quark_history::backend_tests!(
    it_applies_every_event_once_in_order_and_resumes_from_its_checkpoint,
    it_lets_one_runner_apply_at_a_time_and_fences_one_whose_lease_ran_out,
    it_builds_a_new_version_beside_the_active_one_and_switches_when_caught_up,
    it_rebuilds_from_zero_to_the_same_model,
    it_waits_for_a_commands_events_and_reports_how_far_behind_it_is,
    it_equals_a_rebuild_after_writers_held_transactions_open_while_it_ran,
);

struct Account;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Balance {
    cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum AccountEvent {
    Deposited(i64),
}

impl Entity for Account {
    const TYPE: &'static str = "Account";
    type State = Balance;
    type Event = AccountEvent;
    type Rejection = String;
    fn apply(state: &mut Balance, AccountEvent::Deposited(c): &AccountEvent) {
        state.cents += c;
    }
}

struct Deposit(i64);

impl Command<Account> for Deposit {
    const NAME: &'static str = "Deposit";
    type Reply = ();
    fn handle(&self, _: &Balance) -> Result<Decision<AccountEvent, ()>, String> {
        Ok(Decision::emit([AccountEvent::Deposited(self.0)]))
    }
}

/// Runs one statement on the read model's transaction, on either database.
async fn exec(tx: &mut StoreTx, sql: String) -> Result<(), ProjectionError> {
    let sql = quark_history::sqlx::AssertSqlSafe(sql);
    match tx.backend() {
        Backend::Postgres => {
            quark_history::sqlx::query(sql)
                .execute(tx.postgres()?)
                .await?;
        }
        _ => {
            quark_history::sqlx::query(sql)
                .execute(tx.sqlite()?)
                .await?;
        }
    }
    Ok(())
}

/// Balances per account, and a log of every event applied (no key: a double application shows).
struct Balances<const V: u32>;

impl<const V: u32> Projection for Balances<V> {
    const NAME: &'static str = "balances";
    const VERSION: u32 = V;

    async fn apply(&self, batch: &mut Batch<'_>) -> Result<(), ProjectionError> {
        let version = batch.version();
        for e in batch.entity_events::<Account>()? {
            let key = e.key;
            let AccountEvent::Deposited(cents) = e.event.event;
            exec(
                batch.tx(),
                format!(
                    "INSERT INTO balances_v{version} (account, cents) VALUES ('{key}', {cents}) \
                     ON CONFLICT (account) DO UPDATE SET cents = balances_v{version}.cents + {cents}"
                ),
            )
            .await?;
            exec(
                batch.tx(),
                format!(
                    "INSERT INTO applied_v{version} (account, version, pos) VALUES ('{key}', {}, {})",
                    e.event.version, e.position.position
                ),
            )
            .await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut StoreTx, version: u32) -> Result<(), ProjectionError> {
        exec(tx, format!("DELETE FROM balances_v{version}")).await?;
        exec(tx, format!("DELETE FROM applied_v{version}")).await
    }
}

async fn tables(t: &TestStore, version: u32) {
    t.execute(&format!(
        "CREATE TABLE balances_v{version} (account TEXT PRIMARY KEY, cents BIGINT NOT NULL)"
    ))
    .await;
    t.execute(&format!(
        "CREATE TABLE applied_v{version} (account TEXT NOT NULL, version BIGINT NOT NULL, \
         pos BIGINT NOT NULL)"
    ))
    .await;
}

async fn deposit(t: &TestStore, entities: &Entities, key: &str, cents: i64) -> u64 {
    let account = entities.entity::<Account>(key);
    account.call(&Deposit(cents)).await.unwrap();
    let _ = t;
    account.version().await.unwrap()
}

/// The read model of `version`, as "account=cents" in account order.
async fn model(t: &TestStore, version: u32) -> Vec<String> {
    let rows = t
        .scalar(&format!("SELECT COUNT(*) FROM balances_v{version}"))
        .await;
    let mut out = Vec::new();
    for i in 0..rows {
        let cents = t
            .scalar(&format!(
                "SELECT cents FROM balances_v{version} ORDER BY account LIMIT 1 OFFSET {i}"
            ))
            .await;
        out.push(format!("#{i}={cents}"));
    }
    out
}

/// How many events were applied more than once.
async fn doubled(t: &TestStore, version: u32) -> i64 {
    t.scalar(&format!(
        "SELECT COUNT(*) FROM (SELECT account, version FROM applied_v{version} \
         GROUP BY account, version HAVING COUNT(*) > 1) d"
    ))
    .await
}

async fn it_applies_every_event_once_in_order_and_resumes_from_its_checkpoint(t: &TestStore) {
    tables(t, 1).await;
    let entities = Entities::new(Arc::clone(&t.store));
    for round in 1..=5 {
        for key in ["a", "b", "c"] {
            deposit(t, &entities, key, round).await;
        }
    }
    let first = Projector::new(Arc::clone(&t.store), Balances::<1>).page(4);
    // Pages of at most 4 (on PostgreSQL a transaction open elsewhere on the server can end one
    // early: the global order stops before what is not final yet).
    let mut counts = vec![0];
    assert_eq!(first.catch_up(|n, _| counts.push(n)).await.unwrap(), 15);
    assert!(
        counts.windows(2).all(|w| w[1] - w[0] <= 4) && counts.len() >= 5,
        "15 events in pages of 4: {counts:?}"
    );
    assert_eq!(model(t, 1).await, ["#0=15", "#1=15", "#2=15"]);
    // Each stream's events were applied in its order.
    assert_eq!(
        t.scalar(
            "SELECT COUNT(*) FROM applied_v1 a JOIN applied_v1 b ON a.account = b.account \
             AND a.version < b.version AND a.pos > b.pos"
        )
        .await,
        0
    );
    first.release().await.unwrap();

    // More events; another runner resumes from the checkpoint and applies only those.
    deposit(t, &entities, "a", 100).await;
    deposit(t, &entities, "d", 7).await;
    let second = Projector::new(Arc::clone(&t.store), Balances::<1>);
    assert_eq!(second.catch_up(|_, _| {}).await.unwrap(), 2);
    assert_eq!(model(t, 1).await, ["#0=115", "#1=15", "#2=15", "#3=7"]);
    assert_eq!(doubled(t, 1).await, 0);
    assert_eq!(second.step().await.unwrap(), CatchUp::CaughtUp);
    let status = second.status().await.unwrap();
    assert_eq!(status.record.applied, 17);
    assert_eq!(status.next, None);
}

async fn it_lets_one_runner_apply_at_a_time_and_fences_one_whose_lease_ran_out(t: &TestStore) {
    tables(t, 1).await;
    let entities = Entities::new(Arc::clone(&t.store));
    for i in 1..=3 {
        deposit(t, &entities, "a", i).await;
    }
    // (Final once no older transaction is open anywhere on the server.)
    quark_history::testing::eventually("the deposits are final", async || {
        t.store
            .read_all(GlobalPosition::START, 100)
            .await
            .unwrap()
            .len()
            == 3
    })
    .await;
    let a = Projector::new(Arc::clone(&t.store), Balances::<1>)
        .owner("a")
        .lease(Duration::from_secs(10));
    let b = Projector::new(Arc::clone(&t.store), Balances::<1>)
        .owner("b")
        .lease(Duration::from_secs(10));
    a.register().await.unwrap();
    // a holds the lease: b does nothing.
    let store = &t.store;
    let leased = store
        .lease_projection("balances", 1, "a", Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let page = store.read_all(leased.checkpoint, 100).await.unwrap();
    assert_eq!(b.step().await.unwrap(), CatchUp::Busy);

    // a stalls past its lease; b takes over and applies the page.
    t.clock.advance(Duration::from_secs(11));
    assert_eq!(b.catch_up(|_, _| {}).await.unwrap(), 3);

    // a wakes up and writes the page it read: the checkpoint refuses it, and its writes roll back.
    let mut tx = store.begin_tx().await.unwrap();
    exec(
        &mut tx,
        "INSERT INTO applied_v1 (account, version, pos) VALUES ('a', 1, 0)".into(),
    )
    .await
    .unwrap();
    let last = page.last().unwrap();
    let refused = store
        .advance_projection(
            &mut tx,
            "balances",
            1,
            "a",
            leased.checkpoint,
            last.position,
            page.len() as u64,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(refused, Error::ProjectionMoved { .. }),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(doubled(t, 1).await, 0);
    assert_eq!(model(t, 1).await, ["#0=6"]);
    // And a, the lease gone, does nothing until b's runs out too.
    assert_eq!(a.step().await.unwrap(), CatchUp::Busy);
}

async fn it_builds_a_new_version_beside_the_active_one_and_switches_when_caught_up(t: &TestStore) {
    tables(t, 1).await;
    tables(t, 2).await;
    let entities = Entities::new(Arc::clone(&t.store));
    deposit(t, &entities, "a", 5).await;
    let v1 = Projector::new(Arc::clone(&t.store), Balances::<1>);
    v1.catch_up(|_, _| {}).await.unwrap();
    deposit(t, &entities, "a", 6).await;

    let v2 = Projector::new(Arc::clone(&t.store), Balances::<2>).page(1);
    assert_eq!(
        v2.register().await.unwrap().state,
        ProjectionState::Building
    );
    // While v2 builds, readers keep reading v1.
    assert!(matches!(v2.step().await.unwrap(), CatchUp::Applied { .. }));
    assert_eq!(
        active_version(&*t.store, "balances").await.unwrap(),
        Some(1)
    );
    assert_eq!(model(t, 2).await, ["#0=5"]);

    v2.catch_up(|_, _| {}).await.unwrap();
    assert_eq!(
        active_version(&*t.store, "balances").await.unwrap(),
        Some(2)
    );
    assert_eq!(model(t, 2).await, ["#0=11"]);
    let states: Vec<_> = t
        .store
        .list_projections()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.version, r.state))
        .collect();
    assert_eq!(
        states,
        [(1, ProjectionState::Retired), (2, ProjectionState::Active)]
    );
    // A retired version is not advanced any more.
    assert_eq!(v1.step().await.unwrap(), CatchUp::Busy);
}

async fn it_rebuilds_from_zero_to_the_same_model(t: &TestStore) {
    tables(t, 1).await;
    let entities = Entities::new(Arc::clone(&t.store));
    for i in 0..30 {
        deposit(t, &entities, ["a", "b"][i % 2], i as i64).await;
    }
    let p = Projector::new(Arc::clone(&t.store), Balances::<1>).page(7);
    p.catch_up(|_, _| {}).await.unwrap();
    let built = model(t, 1).await;
    let mut seen = Vec::new();
    assert_eq!(p.rebuild(|n, _| seen.push(n)).await.unwrap(), 30);
    assert_eq!(seen, [7, 14, 21, 28, 30]);
    assert_eq!(model(t, 1).await, built);
    assert_eq!(doubled(t, 1).await, 0);
    assert_eq!(p.status().await.unwrap().record.applied, 30);
}

async fn it_waits_for_a_commands_events_and_reports_how_far_behind_it_is(t: &TestStore) {
    tables(t, 1).await;
    let entities = Entities::new(Arc::clone(&t.store));
    let p = Projector::new(Arc::clone(&t.store), Balances::<1>);
    p.catch_up(|_, _| {}).await.unwrap();
    let version = deposit(t, &entities, "a", 5).await;
    let position = position_of(&*t.store, "Account/a", version)
        .await
        .unwrap()
        .unwrap();
    t.clock.advance(Duration::from_secs(3));
    // Not applied yet: 3 s behind, and a wait for it times out.
    // (Final once no older transaction is open anywhere on the server.)
    quark_history::testing::eventually("the deposit is final", async || {
        p.status().await.unwrap().next.is_some()
    })
    .await;
    let status = p.status().await.unwrap();
    assert_eq!(status.next.map(|n| n.0), Some(position));
    assert_eq!(status.behind, Duration::from_secs(3));
    assert_eq!(status.behind_events, 1);
    let waited = p
        .wait_for(
            position,
            Duration::from_millis(50),
            Duration::from_millis(10),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(waited, ProjectionError::Timeout { .. }),
        "{waited:?}"
    );
    // Once a runner applies it (another one: this one gives up its lease), the wait returns and
    // the lag is gone.
    p.release().await.unwrap();
    let runner = {
        let store = Arc::clone(&t.store);
        tokio::spawn(async move {
            Projector::new(store, Balances::<1>)
                .catch_up(|_, _| {})
                .await
        })
    };
    p.wait_for(position, Duration::from_secs(30), Duration::from_millis(5))
        .await
        .unwrap();
    runner.await.unwrap().unwrap();
    assert_eq!(model(t, 1).await, ["#0=5"]);
    let caught_up = p.status().await.unwrap();
    assert_eq!(
        (caught_up.behind, caught_up.behind_events),
        (Duration::ZERO, 0)
    );
    assert!(position > GlobalPosition::START);
}

async fn it_equals_a_rebuild_after_writers_held_transactions_open_while_it_ran(t: &TestStore) {
    tables(t, 1).await;
    let entities = Entities::new(Arc::clone(&t.store));
    let p = Projector::new(Arc::clone(&t.store), Balances::<1>).page(3);
    deposit(t, &entities, "a", 1).await;
    p.catch_up(|_, _| {}).await.unwrap();

    // On PostgreSQL a writer can hold its transaction open while later ones commit: the
    // projection must not pass it, or the events it commits later would be skipped for good.
    let held = match t.store.backend() {
        Backend::Postgres => {
            let mut tx = t.store.begin_tx().await.unwrap();
            let conn = tx.postgres().unwrap();
            quark_history::sqlx::query("SELECT pg_current_xact_id()")
                .execute(&mut *conn)
                .await
                .unwrap();
            Some(tx)
        }
        _ => None,
    };
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let entities = entities.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let key = format!("k{}", (w + i) % 3);
                    entities
                        .entity::<Account>(key)
                        .call(&Deposit(1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // The projection runs while they write.
    let mut applied = 0;
    for _ in 0..20 {
        if let CatchUp::Applied { events, .. } = p.step().await.unwrap() {
            applied += events;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    if let Some(tx) = held {
        // Everything after the open transaction waits behind it.
        assert_eq!(p.step().await.unwrap(), CatchUp::CaughtUp);
        assert_eq!(applied, 0, "nothing passes an open transaction");
        tx.rollback().await.unwrap();
    }
    p.catch_up(|_, _| {}).await.unwrap();
    let live = model(t, 1).await;
    assert_eq!(
        t.scalar("SELECT CAST(SUM(cents) AS BIGINT) FROM balances_v1")
            .await,
        41,
        "{live:?}"
    );
    p.rebuild(|_, _| {}).await.unwrap();
    assert_eq!(model(t, 1).await, live);
    assert_eq!(doubled(t, 1).await, 0);
}
